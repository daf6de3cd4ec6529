-- wrk workloads for bench/bench.py: one script, the workload and peer chosen by arguments.
--
--   wrk -t T -c C -d D -s bench/wrk/workloads.lua http://127.0.0.1:PORT \
--       -- PEER WORKLOAD KEYS CHECK C
--
-- PEER is statecar or webdis; WORKLOAD is get, save, etag, bulk, tx or mixed; KEYS is the size
-- of the key space (key-0000 ...). With CHECK "check" (else "-"), every response's status is
-- checked against the ones the workload expects (wrk itself only counts statuses >= 400) and a
-- wrong one counts as an error in the summary; bench.py passes it in --smoke runs. C is the
-- number of connections.
--
-- etag (statecar only) needs one connection per wrk thread (-t C -c C): each connection owns
-- the keys whose number is congruent to its index modulo C, all at version 1 when the run
-- starts, and sends each save with first-write and the etag it knows is current; after a 204
-- it adds one to that key's etag. So every request is expected to succeed.

local STORE = "/v1.0/state/statestore"
local VALUE_SIZE = 100

-- The value stored under key number n: a 100-byte JSON object. bench.py writes the same.
local function value(n)
  local head = string.format('{"id":"key-%04d","pad":"', n)
  return head .. string.rep("x", VALUE_SIZE - #head - 2) .. '"}'
end

-- A value in a webdis URL: every byte but letters, digits and - _ percent-encoded.
local function urlencode(s)
  return (s:gsub("[^%w%-_]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local function key(n) return string.format("key-%04d", n) end

local keys = 10000
local counter = 0
local threads = {}
local check = false
-- A global, so that done() can read it from each thread.
unexpected = 0
local last_etag_key = nil
local etags = {}
local own = {}
local pos = 1

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local get_headers = {}
local json_headers = { ["Content-Type"] = "application/json" }

local function rnd() return math.random(0, keys - 1) end

local builders = {
  statecar = {
    get = function()
      return wrk.format("GET", STORE .. "/" .. key(rnd()), get_headers, nil)
    end,
    save = function()
      local n = rnd()
      local body = '[{"key":"' .. key(n) .. '","value":' .. value(n) .. '}]'
      return wrk.format("POST", STORE, json_headers, body)
    end,
    etag = function()
      local n = own[pos]
      last_etag_key = n
      local body = '[{"key":"' .. key(n) .. '","value":' .. value(n) .. ',"etag":"' .. etags[n]
        .. '","options":{"concurrency":"first-write"}}]'
      return wrk.format("POST", STORE, json_headers, body)
    end,
    bulk = function()
      local ks = {}
      for i = 1, 10 do ks[i] = '"' .. key(rnd()) .. '"' end
      local body = '{"keys":[' .. table.concat(ks, ",") .. ']}'
      return wrk.format("POST", STORE .. "/bulk", json_headers, body)
    end,
    tx = function()
      local a, b = rnd(), rnd()
      local body = '{"operations":[{"operation":"upsert","request":{"key":"' .. key(a)
        .. '","value":' .. value(a) .. '}},{"operation":"upsert","request":{"key":"' .. key(b)
        .. '","value":' .. value(b) .. '}}]}'
      return wrk.format("POST", STORE .. "/transaction", json_headers, body)
    end,
  },
  webdis = {
    get = function()
      return wrk.format("GET", "/GET/plain:" .. key(rnd()), get_headers, nil)
    end,
    save = function()
      local n = rnd()
      return wrk.format("PUT", "/SET/plain:" .. key(n), get_headers, value(n))
    end,
    bulk = function()
      local ks = {}
      for i = 1, 10 do ks[i] = "plain:" .. key(rnd()) end
      return wrk.format("GET", "/MGET/" .. table.concat(ks, "/"), get_headers, nil)
    end,
    tx = function()
      local a, b = rnd(), rnd()
      local path = "/MSET/plain:" .. key(a) .. "/" .. urlencode(value(a)) .. "/plain:" .. key(b)
        .. "/" .. urlencode(value(b))
      return wrk.format("GET", path, get_headers, nil)
    end,
  },
}

local function mixed(peer)
  local get, save = builders[peer].get, builders[peer].save
  return function()
    if math.random(1, 10) == 1 then return save() end
    return get()
  end
end
builders.statecar.mixed = mixed("statecar")
builders.webdis.mixed = mixed("webdis")

local build = builders.statecar.get

-- wrk calls request() once in its main Lua state before init() runs anywhere; this default
-- serves that call.
function request()
  return (build())
end

function init(args)
  local peer, workload = args[1], args[2]
  keys = tonumber(args[3]) or keys
  check = args[4] == "check"
  math.randomseed(os.time() * 1000 + index)
  local b = builders[peer] and builders[peer][workload]
  if not b then
    error("no workload " .. tostring(workload) .. " for peer " .. tostring(peer))
  end
  build = b
  if workload == "etag" then
    -- One connection per thread: wrk's thread count is the connection count.
    local conns = tonumber(args[5])
    for n = index, keys - 1, conns do
      table.insert(own, n)
      etags[n] = 1
    end
  end
  -- Several connections share a thread, so a response is checked against every status its
  -- workload can answer with: a mixed load's GETs (200) and saves (204) cannot be told apart.
  local accepted = { [200] = true }
  if peer == "statecar" and workload ~= "get" and workload ~= "bulk" then
    accepted = { [204] = true }
    if workload == "mixed" then accepted[200] = true end
  end
  if check or workload == "etag" then
    response = function(status, headers, body)
      if workload == "etag" and status == 204 then
        etags[last_etag_key] = etags[last_etag_key] + 1
        pos = pos % #own + 1
      end
      -- webdis answers a Redis error with 200 and [false, "ERR ..."].
      if not accepted[status] or (peer == "webdis" and body:find("[false,", 1, true)) then
        unexpected = unexpected + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local wrong = 0
  for _, t in ipairs(threads) do
    wrong = wrong + (t:get("unexpected") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"unexpected_status":%d,'
      .. '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, wrong, latency:percentile(50), latency:percentile(99), latency.max))
end
