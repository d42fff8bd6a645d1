-- The TCP gateway's hold (migrating_spawner/tcpgateway): a new connection to a port whose
-- server is moving (its HAProxy server in the DRAIN state) waits here until the gateway sets
-- the server ready on its new host, at most `hold_ms`; then it goes on to the backend.
-- Ports not in use (MAINT) and ports in use (UP) pass at once.
core.register_action("hold", { "tcp-req" }, function(txn, hold_ms)
  local be = core.backends["p" .. txn.f:dst_port()]
  if be == nil then return end
  local srv = be.servers["s"]
  local deadline = core.now().sec * 1000 + core.now().usec / 1000 + tonumber(hold_ms)
  while srv:get_stats()["status"] == "DRAIN" do
    if core.now().sec * 1000 + core.now().usec / 1000 >= deadline then return end
    core.msleep(20)
  end
end, 1)
