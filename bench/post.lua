-- wrk script: POST one AdmissionReview body on every request, optionally stop
-- after a fixed number of responses, and print exact figures as one JSON line.
--   wrk ... -s bench/post.lua URL -- BODY_FILE [MAX_RESPONSES]
-- wrk's own summary rounds percentiles and counts only status >= 400 as
-- errors; the soak needs "zero non-2xx" and the report exact p50/p99, so both
-- are computed here.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = "application/json"
  limit = tonumber(args[2] or "0")
  responses = 0
  non2xx = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if limit > 0 and responses >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local bad, seen = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    seen = seen + thread:get("responses")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "responses": %d, "duration_us": %d, "bytes": %d, ' ..
    '"non2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, seen, summary.duration, summary.bytes, bad, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
