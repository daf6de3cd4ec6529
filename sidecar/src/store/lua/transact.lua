-- Apply a transaction atomically. KEYS[i] is the key of operation i; ARGV holds four values per
-- operation: kind ('u' upsert / 'd' delete), value, expected version ('' = none), and
-- first-write flag and TTL packed as '<0|1>:<ttl seconds>'.
-- Every precondition is checked first, against the state the earlier operations would leave;
-- only when all hold is anything written. Returns 0 on success, else the index of the first
-- operation whose precondition failed.
local n = #KEYS
local state = {}

local function current(key)
  local s = state[key]
  if s == nil then
    local kind = redis.call('TYPE', key)['ok']
    local version = false
    if kind == 'hash' then
      version = redis.call('HGET', key, 'version')
    end
    s = {exists = kind ~= 'none', version = version}
    state[key] = s
  end
  return s
end

for i = 1, n do
  local base = (i - 1) * 4
  local kind, etag, flags = ARGV[base + 1], ARGV[base + 3], ARGV[base + 4]
  local s = current(KEYS[i])
  if etag ~= '' then
    if s.version ~= etag then
      return i
    end
  elseif kind == 'u' and string.sub(flags, 1, 1) == '1' and s.exists then
    return i
  end
  if kind == 'u' then
    s.exists = true
    s.version = tostring((tonumber(s.version) or 0) + 1)
  else
    s.exists = false
    s.version = false
  end
end

for i = 1, n do
  local key = KEYS[i]
  local base = (i - 1) * 4
  if ARGV[base + 1] == 'u' then
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'none' and kind ~= 'hash' then
      redis.call('DEL', key)
    end
    redis.call('HSET', key, 'data', ARGV[base + 2])
    redis.call('HINCRBY', key, 'version', 1)
    local ttl = tonumber(string.sub(ARGV[base + 4], 3))
    if ttl > 0 then
      redis.call('EXPIRE', key, ttl)
    else
      redis.call('PERSIST', key)
    end
  else
    redis.call('DEL', key)
  end
end
return 0
