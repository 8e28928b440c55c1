-- wrk script: POST /sync with a fixed JSON body.
-- Usage: wrk ... -s bench/lib/post_sync.lua http://127.0.0.1:PORT/sync -- ITERATIONS [DATA]
-- ITERATIONS defaults to 1000, DATA to "benchmark payload" (plain ASCII, no JSON escaping).

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  local iterations = tonumber(args[1] or "1000")
  if iterations == nil then
    error("post_sync.lua: ITERATIONS must be a number, got " .. tostring(args[1]))
  end
  local data = args[2] or "benchmark payload"
  -- wrk.init builds the request after init() returns, so the body set here is used.
  wrk.body = string.format('{"data":"%s","iterations":%d}', data, iterations)
end
