-- Heartbeats spread over N pre-registered workers (ids bench-0 .. bench-(N-1)).
local n = tonumber(os.getenv("WORKERS") or "1000")
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = (i + 1) % n
  local body = string.format('{"worker_id":"bench-%d","status":"healthy","current_load":0.35,"available_memory":"48GB","loaded_models":["llama3:8b"],"active_requests":2,"gpu_utilization":0.6,"services_status":{"llm-inference":"running"}}', i)
  return wrk.format(nil, "/api/worker/heartbeat", nil, body)
end
