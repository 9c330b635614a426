-- Task submissions spread over 8 service queues (so over the shards): every
-- request is a new task, acknowledged once durable.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/api/tasks",
    { ["Content-Type"] = "application/json" },
    '{"type":"embed","service":"svc-' .. (counter % 8) .. '",' ..
    '"payload":{"text":"a paragraph to embed, about this long","n":' .. counter .. '}}')
end
