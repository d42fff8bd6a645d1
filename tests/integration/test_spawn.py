"""Spawning through the real hub, proxy and jupyterhub-singleuser on a local host."""

import aiohttp
import pytest

pytestmark = pytest.mark.integration


async def test_spawn_and_reach_through_proxy(hub_factory):
    hub = await hub_factory()
    model = await hub.spawn("alice")
    assert model["ready"]
    token = await hub.user_token("alice")
    async with aiohttp.ClientSession() as s:
        async with s.get(
            hub.url + "/user/alice/api/status", headers={"Authorization": f"token {token}"}
        ) as resp:
            assert resp.status == 200
            assert "started" in await resp.json()
    info = await hub.server_info("alice")
    assert info["state"] == "Running"
    assert info["host_id"].startswith("local-")
    assert info["address"].startswith(hub.first_host)
    # the server runs under the host's agent, not the hub
    assert [h["id"] for h in hub.hosts()] == [info["host_id"]]

    status, _ = await hub.api("DELETE", "/users/alice/server")
    assert status in (202, 204)
