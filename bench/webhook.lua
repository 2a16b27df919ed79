-- wrk script: POST pre-signed Stripe events, each wrk thread walking its own stride of the file
-- (WEBHOOK_FILE: one "payload<TAB>signature" per line), so every request carries its own event id.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  payloads, sigs = {}, {}
  for line in io.lines(os.getenv("WEBHOOK_FILE")) do
    local p, s = line:match("^(.-)\t(.*)$")
    payloads[#payloads + 1] = p
    sigs[#sigs + 1] = s
  end
  nthreads = tonumber(os.getenv("WRK_THREADS") or "2")
  idx = ((tid or 0) % #payloads) + 1
end

function request()
  local i = idx
  idx = idx + nthreads
  if idx > #payloads then idx = ((idx - 1) % #payloads) + 1 end
  return wrk.format("POST", "/v1/webhooks/stripe",
    {["Content-Type"] = "application/json", ["Stripe-Signature"] = sigs[i]}, payloads[i])
end
