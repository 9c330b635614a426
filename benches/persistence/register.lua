-- Registrations with ids unique per connection: every request is a new worker.
local counter = 0
local tag = ""
setup = function(thread)
  thread:set("tag", tostring(math.random(1, 1e9)))
end
request = function()
  counter = counter + 1
  local id = "reg-" .. tag .. "-" .. counter .. "-" .. math.random(1, 1e9)
  return wrk.format("POST", "/api/worker/register",
    { ["Content-Type"] = "application/json" },
    '{"worker_id":"' .. id .. '","tunnel_url":"http://' .. id .. ':8000",' ..
    '"capabilities":{"cpu_cores":8,"ram":"16GB","worker_type":"cpu"}}')
end
