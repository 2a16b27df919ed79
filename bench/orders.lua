-- wrk script: POST /v1/orders as a pool of users (ORDERS_TOKENS: one bearer token per line).
--
-- ORDERS_MODE=unique: every request a market order under a new Idempotency-Key,
--   "bench-<ORDERS_RUN>-<thread>-<counter>" (8-64 chars of [A-Za-z0-9-]), symbols rotating.
-- ORDERS_MODE=replay: user i always sends key "replay-<ORDERS_RUN>-<i>" with the same body, an order the
--   bench placed before the run, so every answer is the stored one (Idempotent-Replayed: true).
-- Each wrk thread walks its own stride of the users. Status codes and replayed answers are counted per
-- thread and written as JSON to ORDERS_STATS when the run ends (wrk's own count lumps 2xx together).
local threads = {}
local symbols = {"AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "TSLA", "META", "SPY"}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local function body_for(symbol)
  return string.format(
    '{"symbol":"%s","qty":"1","side":"buy","type":"market","time_in_force":"day"}', symbol)
end

function init(args)
  auth = {}
  for line in io.lines(os.getenv("ORDERS_TOKENS")) do
    auth[#auth + 1] = "Bearer " .. line
  end
  bodies = {}
  for i, s in ipairs(symbols) do bodies[i] = body_for(s) end
  mode = os.getenv("ORDERS_MODE") or "unique"
  run = os.getenv("ORDERS_RUN") or "run"
  nthreads = tonumber(os.getenv("WRK_THREADS") or "2")
  tid = tid or 0
  counter = 0
  statuses = {}
  replayed = 0
end

function request()
  counter = counter + 1
  local user = ((counter * nthreads + tid) % #auth) + 1
  local key, body
  if mode == "replay" then
    key = "replay-" .. run .. "-" .. user
    body = bodies[((user - 1) % #bodies) + 1]
  else
    key = "bench-" .. run .. "-" .. tid .. "-" .. counter
    body = bodies[(counter % #bodies) + 1]
  end
  return wrk.format("POST", "/v1/orders", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth[user],
    ["Idempotency-Key"] = key,
  }, body)
end

function response(status, headers, body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
  local flag = headers["idempotent-replayed"] or headers["Idempotent-Replayed"]
  if flag == "true" then replayed = replayed + 1 end
end

function done(summary, latency, requests)
  local total, replays = {}, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + n
    end
    replays = replays + thread:get("replayed")
  end
  local parts = {}
  for code, n in pairs(total) do parts[#parts + 1] = string.format('"%s":%d', code, n) end
  local out = io.open(os.getenv("ORDERS_STATS"), "w")
  out:write(string.format('{"status":{%s},"replayed":%d,"requests":%d,"duration_us":%d}\n',
    table.concat(parts, ","), replays, summary.requests, summary.duration))
  out:close()
end
