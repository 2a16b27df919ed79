-- wrk script for `make loadtest` (bench/loadtest.py): one route of the mixed workload at a constant rate.
--
-- wrk itself is closed-loop (each connection sends as soon as its last answer arrives). Here every wrk
-- thread keeps a schedule instead: LT_RATE requests/s for the whole process, split evenly over
-- WRK_THREADS threads, one slot every 1/rate seconds; `delay()` (called by wrk before each request of
-- a connection) waits for the next free slot. So the rate is held as long as a connection is free when
-- a slot comes; when the server falls behind, late slots are sent at once (no request is skipped), the
-- achieved rate drops below LT_RATE, and bench/loadtest.py reports the run as not holding its rate.
-- The clock is CLOCK_MONOTONIC through LuaJIT's FFI (wrk's Lua has no wall clock finer than a second).
--
-- LT_ROUTE: quote | me | order | greeks | login. LT_TOKENS: one bearer token per line. LT_USERS: one
-- "email<TAB>password" per line (login). LT_RUN: a run id in the orders' Idempotency-Keys.
-- When the run ends, LT_STATS receives one JSON object: requests, duration, status counts, socket
-- errors and latency percentiles (microseconds, from the send of a request to its last byte).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } lt_timespec;
int clock_gettime(int clk_id, lt_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("lt_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local symbols = {"AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "TSLA", "META", "SPY"}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local function lines(path)
  local out = {}
  if path and path ~= "" then
    for line in io.lines(path) do
      if line ~= "" then out[#out + 1] = line end
    end
  end
  return out
end

function init(args)
  route = os.getenv("LT_ROUTE")
  nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
  interval = 1000.0 * nthreads / tonumber(os.getenv("LT_RATE"))  -- ms between this thread's slots
  run = os.getenv("LT_RUN") or "run"
  tid = tid or 0
  auth = {}
  for _, token in ipairs(lines(os.getenv("LT_TOKENS"))) do auth[#auth + 1] = "Bearer " .. token end
  users = {}
  for _, line in ipairs(lines(os.getenv("LT_USERS"))) do
    local email, password = line:match("^(.-)\t(.*)$")
    users[#users + 1] = string.format('{"email":"%s","password":"%s"}', email, password)
  end
  counter = 0
  statuses = {}
  next_at = nil
end

function delay()
  local t = now_ms()
  if next_at == nil then next_at = t + interval * tid / nthreads end -- threads' slots interleave
  local wait = next_at - t
  next_at = next_at + interval
  if wait < 0 then return 0 end
  return wait
end

local greeks_body = '{"arguments":{"option_type":"call","spot":101.5,"strike":100,"t_years":0.25,' ..
  '"rate":0.03,"dividend_yield":0.01,"sigma":0.22}}'

function request()
  counter = counter + 1
  local n = counter * nthreads + tid
  if route == "quote" then
    return wrk.format("GET", "/v1/market-data/quotes/" .. symbols[(n % #symbols) + 1],
      {["Authorization"] = auth[(n % #auth) + 1]})
  elseif route == "me" then
    return wrk.format("GET", "/v1/auth/me", {["Authorization"] = auth[(n % #auth) + 1]})
  elseif route == "order" then
    local body = string.format(
      '{"symbol":"%s","qty":"1","side":"buy","type":"market","time_in_force":"day"}',
      symbols[(n % #symbols) + 1])
    return wrk.format("POST", "/v1/orders", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = auth[(n % #auth) + 1],
      ["Idempotency-Key"] = "lt-" .. run .. "-" .. tid .. "-" .. counter,
    }, body)
  elseif route == "greeks" then
    return wrk.format("POST", "/v1/tools/greeks/execute", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = auth[(n % #auth) + 1],
    }, greeks_body)
  elseif route == "login" then
    return wrk.format("POST", "/v1/auth/login", {["Content-Type"] = "application/json"},
      users[(n % #users) + 1])
  end
  error("unknown LT_ROUTE " .. tostring(route))
end

function response(status, headers, body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(total) do parts[#parts + 1] = string.format('"%s":%d', code, n) end
  local e = summary.errors
  local out = io.open(os.getenv("LT_STATS"), "w")
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"status":{%s},"socket_errors":{"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d},"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, table.concat(parts, ","), e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
  out:close()
end
