-- wrk script for `kvrouter bench`: small non-streaming chat completions, each carrying an
-- x-session-id from a rotating set of keys so the router's consistent-hash path is exercised.
-- Usage: wrk -t1 -c64 -d10s -s router/tooling/bench/wrk_post.lua http://127.0.0.1:PORT -- KEYS
-- Requests are formatted once in init(); done() prints one JSON line with the totals.

local requests = {}
local count = 0
local index = 0

local body = '{"model":"sim-model","messages":[{"role":"user","content":"hi"}],'
  .. '"max_tokens":4,"stream":false}'

function init(args)
  local keys = tonumber(args[1]) or 64
  for k = 0, keys - 1 do
    requests[k + 1] = wrk.format("POST", "/v1/chat/completions", {
      ["Content-Type"] = "application/json",
      ["x-session-id"] = "bench-" .. k,
    }, body)
  end
  count = #requests
end

function request()
  index = index % count + 1
  return requests[index]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
