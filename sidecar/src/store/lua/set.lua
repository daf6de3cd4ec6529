-- Write one state key. KEYS[1] = key.
-- ARGV[1] = value, ARGV[2] = expected version ('' = none), ARGV[3] = '1' for first-write,
-- ARGV[4] = TTL in seconds ('0' = persistent).
-- Returns the new version, or 0 when the precondition failed (nothing is changed then).
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
local version = false
if kind == 'hash' then
  version = redis.call('HGET', key, 'version')
end
if ARGV[2] ~= '' then
  if version ~= ARGV[2] then
    return 0
  end
elseif ARGV[3] == '1' and kind ~= 'none' then
  return 0
end
if kind ~= 'none' and kind ~= 'hash' then
  redis.call('DEL', key)
end
redis.call('HSET', key, 'data', ARGV[1])
local new_version = redis.call('HINCRBY', key, 'version', 1)
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', key, ttl)
else
  redis.call('PERSIST', key)
end
return new_version
