-- Heartbeats for workers bench-0 .. bench-(N-1), chosen at random.
local n = tonumber(os.getenv("WORKERS") or "1000")
request = function()
  local id = "bench-" .. math.random(0, n - 1)
  return wrk.format("POST", "/api/worker/heartbeat",
    { ["Content-Type"] = "application/json" },
    '{"worker_id":"' .. id .. '","status":"healthy","current_load":0.3,"active_requests":2}')
end
