"""Many moves at once, and a hub that dies in the middle of one."""

import asyncio
import os
import signal
import time

import pytest
from test_move import read_file, write_file

pytestmark = pytest.mark.integration

USERS = [f"user{i}" for i in range(5)]


async def wait_running_elsewhere(hub, user, old_host, timeout):
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = await hub.server_info(user)
        if info["state"] == "Running" and info["host_id"] not in (None, old_host):
            return info
        await asyncio.sleep(0.5)
    raise AssertionError(f"{user} did not come back: {info}\n{hub.tail(120)}")


async def test_five_servers_reclaimed_at_once_all_come_back(hub_factory):
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "synced"\nc.MigratingController.max_concurrent_moves = 3'
    )
    await asyncio.gather(*(hub.spawn(u) for u in USERS))
    tokens = {u: await hub.user_token(u) for u in USERS}
    for u in USERS:
        await write_file(hub, u, tokens[u], "mine.txt", f"belongs to {u}")
    before = {u: (await hub.server_info(u))["host_id"] for u in USERS}
    assert len(set(before.values())) == 5

    replies = await asyncio.gather(
        *(
            hub.migrate_api("POST", f"/hosts/{h}/reclaim", body={"notice_seconds": 15})
            for h in before.values()
        )
    )
    assert all(status == 202 for status, _ in replies), replies
    after = await asyncio.gather(*(wait_running_elsewhere(hub, u, before[u], 120) for u in USERS))
    for u, info in zip(USERS, after, strict=True):
        assert await read_file(hub, u, tokens[u], "mine.txt") == f"belongs to {u}"
        assert info["host_id"] not in before.values()
    await asyncio.sleep(3)
    hosts = {h["id"] for h in hub.hosts()}
    assert hosts == {info["host_id"] for info in after}, "old hosts must be gone"


def agent_pids(hub) -> set[int]:
    """Agents running from this hub's host folder, found by their command line."""
    root = str(hub.workdir / "hosts")
    pids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if "migrating_spawner.agent.server" in cmdline and root in cmdline:
            pids.add(int(pid))
    return pids


async def test_hub_killed_mid_move_recovers_without_orphans(hub_factory):
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "synced"\nc.MigratingSpawner.precopy_interval = 2'
    )
    await hub.spawn("erin")
    token = await hub.user_token("erin")
    await write_file(hub, "erin", token, "thesis.txt", "chapter one")
    await asyncio.sleep(3)  # a pre-copy has run
    old = (await hub.server_info("erin"))["host_id"]

    status, _ = await hub.migrate_api("POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 25})
    assert status == 202
    # kill the hub once the move has a new host, before the cut-over
    for _ in range(200):
        if len(hub.hosts()) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(hub.hosts()) == 2, "the move never acquired a new host"
    hub.stop(signal.SIGKILL)

    hub.start()
    await hub.wait_up()
    info = await wait_running_elsewhere(hub, "erin", old, 90)
    assert await read_file(hub, "erin", token, "thesis.txt") == "chapter one"

    # no orphans: once the old host's deadline has passed, exactly the serving host is left
    await asyncio.sleep(max(0, 27 - 0))
    assert [h["id"] for h in hub.hosts()] == [info["host_id"]]
    assert len(agent_pids(hub)) == 1
