-- Delete one state key. KEYS[1] = key, ARGV[1] = expected version ('' = unconditional).
-- Returns 1 when deleted (or absent without an etag), 0 when the precondition failed.
local key = KEYS[1]
if ARGV[1] ~= '' then
  if redis.call('TYPE', key)['ok'] ~= 'hash' or redis.call('HGET', key, 'version') ~= ARGV[1] then
    return 0
  end
end
redis.call('DEL', key)
return 1
