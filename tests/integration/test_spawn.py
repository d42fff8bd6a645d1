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


async def test_users_see_and_act_on_their_own_servers_only(hub_factory):
    hub = await hub_factory()
    await hub.spawn("alice")
    await hub.spawn("bob")
    alice = await hub.user_token("alice")
    bob_host = (await hub.server_info("bob"))["host_id"]

    status, data = await hub.migrate_api("GET", "/servers", alice)
    assert status == 200
    assert [s["user"] for s in data["servers"]] == ["alice"]
    status, _ = await hub.migrate_api("GET", "/servers/bob/", alice)
    assert status == 404
    status, _ = await hub.migrate_api("POST", "/servers/bob/migrate", alice)
    assert status == 404
    status, _ = await hub.migrate_api("GET", "/hosts", alice)
    assert status == 403
    status, _ = await hub.migrate_api(
        "POST", f"/hosts/{bob_host}/reclaim", alice, {"notice_seconds": 1}
    )
    assert status == 403
    status, _ = await hub.migrate_api("GET", "/servers", "not-a-token")
    assert status == 403

    # bad input is refused with a clear message, and nothing happens
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{bob_host}/reclaim", body={"notice_seconds": "soon"}
    )
    assert status == 400 and "notice_seconds" in data["message"]
    status, data = await hub.migrate_api("POST", "/hosts/no-such-host/reclaim", body={})
    assert status == 404
    # an agent push with the wrong host secret is refused
    status, _ = await hub.migrate_api(
        "POST", "/notices", "wrong", {"host_id": bob_host, "deadline": 0}
    )
    assert status == 403
    assert (await hub.server_info("bob"))["state"] == "Running"

    # the admin sees both, and the hosts they run on
    status, data = await hub.migrate_api("GET", "/hosts")
    assert status == 200
    assert sorted(s for h in data["hosts"] for s in h["servers"]) == ["alice/", "bob/"]


async def test_profile_is_checked_before_a_host_and_the_hub_warns_of_nothing(hub_factory):
    hub = await hub_factory()
    await hub.spawn("alice", options={"profile": "lab-small"})
    # the server writes its state mid-move too (the hub's session, not Spawner.db)
    status, data = await hub.migrate_api("POST", "/servers/alice/migrate?wait=true", body={})
    assert status == 200, data
    log = hub.log_path.read_text(errors="replace")
    assert "Received unhandled user_options" not in log
    assert "Spawner.db is deprecated" not in log
    hosts = [h["id"] for h in hub.hosts()]

    # a REST spawn with a profile that is not offered: a clear 400, and no host asked for
    await hub.api("POST", "/users/bob")
    status, data = await hub.api("POST", "/users/bob/server", body={"profile": "nope"})
    assert status == 400, (status, data)
    assert "Unknown profile 'nope'. Choose one of: lab-small" in data["message"], data
    _, bob = await hub.api("GET", "/users/bob")
    assert bob["servers"] == {} and not bob["pending"]
    assert [h["id"] for h in hub.hosts()] == hosts
