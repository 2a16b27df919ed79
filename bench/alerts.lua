-- wrk script: POST /v1/alerts/discord as a pool of users (ALERTS_TOKENS: one bearer token per line; every
-- user has a Discord webhook set).
--
-- Every request's content is unique, "bench <ALERTS_RUN> t<thread> n<counter>: AAPL crossed 190.05", so
-- none falls in the 60-second per-user dedup window (an identical one would answer "deduplicated").
-- Each wrk thread walks its own stride of the users. Status codes and "deduplicated" answers are counted
-- per thread and written as JSON to ALERTS_STATS when the run ends (wrk's own count lumps 2xx together).
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  auth = {}
  for line in io.lines(os.getenv("ALERTS_TOKENS")) do
    auth[#auth + 1] = "Bearer " .. line
  end
  run = os.getenv("ALERTS_RUN") or "run"
  nthreads = tonumber(os.getenv("WRK_THREADS") or "2")
  tid = tid or 0
  counter = 0
  statuses = {}
  deduplicated = 0
end

function request()
  counter = counter + 1
  local user = ((counter * nthreads + tid) % #auth) + 1
  local body = string.format(
    '{"content":"bench %s t%d n%d: AAPL crossed 190.05"}', run, tid, counter)
  return wrk.format("POST", "/v1/alerts/discord", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth[user],
  }, body)
end

function response(status, headers, body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
  if status == 202 and string.find(body, '"deduplicated"', 1, true) then
    deduplicated = deduplicated + 1
  end
end

function done(summary, latency, requests)
  local total, dedup = {}, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + n
    end
    dedup = dedup + thread:get("deduplicated")
  end
  local parts = {}
  for code, n in pairs(total) do parts[#parts + 1] = string.format('"%s":%d', code, n) end
  local out = io.open(os.getenv("ALERTS_STATS"), "w")
  out:write(string.format('{"status":{%s},"deduplicated":%d,"requests":%d,"duration_us":%d}\n',
    table.concat(parts, ","), dedup, summary.requests, summary.duration))
  out:close()
end
