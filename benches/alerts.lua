-- wrk script for scripts/bench-alerts: POST /api/v2/alerts (Alertmanager's push API, the body
-- Prometheus sends) in batches of BATCH alerts drawn in turn from 1,000 distinct alerts
-- (50 nodes x 20 alert names). AUTH, when set, is sent as a bearer token.
local batch = tonumber(os.getenv("BATCH") or "10")
local auth = os.getenv("AUTH") or ""
local names = {}
for i = 1, 20 do names[i] = string.format("BenchAlert%02d", i) end

local alerts = {}
for n = 1, 50 do
  for a = 1, 20 do
    alerts[#alerts + 1] = string.format(
      '{"labels":{"alertname":"%s","instance":"node-%02d:9100","job":"node","severity":"%s"},' ..
      '"annotations":{"summary":"bench alert %d on node-%02d"},"startsAt":"2026-12-06T00:00:00Z",' ..
      '"generatorURL":"http://prometheus:9090/graph"}',
      names[a], n, (a % 5 == 0) and "critical" or "warning", a, n)
  end
end

-- Precomputed bodies: the i-th body holds alerts i*batch .. i*batch+batch-1 (mod 1,000).
local bodies = {}
local count = math.floor(#alerts / batch)
if count < 1 then count = 1 end
for i = 0, count - 1 do
  local parts = {}
  for k = 0, batch - 1 do
    parts[#parts + 1] = alerts[((i * batch + k) % #alerts) + 1]
  end
  bodies[#bodies + 1] = "[" .. table.concat(parts, ",") .. "]"
end

local headers = { ["Content-Type"] = "application/json" }
if auth ~= "" then headers["Authorization"] = "Bearer " .. auth end

local counter = 0
request = function()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  return wrk.format("POST", "/api/v2/alerts", headers, body)
end
