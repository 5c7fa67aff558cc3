-- wrk script of the whole-gateway benchmark (benches/wrk/run).
--
-- Every request is a POST of a ~100-byte OpenAI chat body to the URL's path, on kept-alive
-- connections. BENCH_HEADER="Name: value", when set, adds that header (the key of key-auth, or a
-- proxy's own bearer key).
-- At the end it prints one machine-readable line (latencies in microseconds), e.g.
--   BENCH requests=160000 duration_us=8000000 rps=20000.0 p50_us=80 p99_us=210 ...

wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write a haiku about fast gateways."}]}'
wrk.headers["Content-Type"] = "application/json"

local extra = os.getenv("BENCH_HEADER")
if extra ~= nil and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  if name == nil then
    error("BENCH_HEADER must be 'Name: value'")
  end
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f max_us=%d "
      .. "connect_errors=%d read_errors=%d write_errors=%d status_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
