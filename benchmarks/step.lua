-- wrk script: POST a step body to many sessions, round-robin.
-- usage: wrk -s step.lua URL -- SESSIONS_FILE BODY_FILE [PATH_TEMPLATE]
-- SESSIONS_FILE holds one session id per line; PATH_TEMPLATE defaults to
-- /v1/sessions/%s/step. Prints one "BENCH {json}" line when done.
local ids = {}
local body = nil
local template = "/v1/sessions/%s/step"
local counter = 0

local function read_all(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("*a")
  f:close()
  return s
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  body = read_all(args[2])
  if args[3] then template = args[3] end
  -- threads start at different offsets so they do not hit one session together
  counter = math.random(0, #ids - 1)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  return wrk.format("POST", string.format(template, id), nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect + e.read + e.write + e.timeout, e.status))
end
