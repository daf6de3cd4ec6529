-- Read one state key. KEYS[1] = key.
-- Returns nil when absent, else {data, version, pttl}. A plain string (legacy layout) has no
-- version.
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
if kind == 'none' then
  return nil
end
local pttl = redis.call('PTTL', key)
if kind == 'hash' then
  local fields = redis.call('HMGET', key, 'data', 'version')
  return {fields[1], fields[2], pttl}
end
if kind == 'string' then
  return {redis.call('GET', key), false, pttl}
end
return redis.error_reply('key ' .. key .. ' holds a ' .. kind .. ', not state')
