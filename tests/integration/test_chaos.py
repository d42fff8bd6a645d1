"""Many moves at once, and a hub that dies in the middle of one."""

import asyncio
import json
import os
import signal
import sqlite3
import time

import pytest
from kernelconn import run_cell
from test_move import read_file, wait_released, write_file

pytestmark = pytest.mark.integration

USERS = [f"user{i}" for i in range(5)]


async def wait_running_elsewhere(hub, user, old_host, timeout):
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = await hub.server_info(user)
        if info["state"] == "Running" and info["host_id"] not in (None, old_host):
            return info
        await asyncio.sleep(0.2)
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
    # the moves gave the old hosts back (released, not only ended at their deadline)
    await asyncio.gather(*(wait_released(hub, h, 10) for h in before.values()))
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


async def wait_for(condition, timeout: float, what: str, hub) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}\n{hub.tail(120)}")


def saved_move(hub, user: str) -> dict | None:
    """The move record in the hub database's spawner state (what a restarted hub reads)."""
    db = sqlite3.connect(f"file:{hub.workdir / 'jupyterhub.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT spawners.state FROM spawners JOIN users ON spawners.user_id = users.id "
            "WHERE users.name = ?",
            (user,),
        ).fetchall()
    except sqlite3.OperationalError:  # the hub is writing
        return None
    finally:
        db.close()
    for (state,) in rows:
        move = json.loads(state or "{}").get("move")
        if move:
            return move
    return None


def messages(info) -> list[str]:
    return [e["message"] for e in info.get("events", [])]


async def test_hub_killed_mid_move_recovers_without_orphans(hub_factory):
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "synced"\nc.MigratingSpawner.precopy_interval = 2'
    )
    await hub.spawn("erin")
    token = await hub.user_token("erin")
    await write_file(hub, "erin", token, "thesis.txt", "chapter one")
    # a pre-copy has run (every 2 s)
    await wait_for(lambda: "(pre-copy):" in hub.log_path.read_text(), 30, "no pre-copy", hub)
    old = (await hub.server_info("erin"))["host_id"]

    status, _ = await hub.migrate_api("POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 25})
    assert status == 202
    # kill the hub once the move's record (with its new host) is in the database, before
    # the cut-over: a kill between acquiring the host and saving the record would test the
    # orphan path instead, and pass just as well
    record = None
    for _ in range(400):
        record = saved_move(hub, "erin")
        if record and record.get("new_host"):
            break
        await asyncio.sleep(0.025)
    assert record and record["phase"] == "preparing", f"no move record saved: {record}"
    hub.stop(signal.SIGKILL)
    half_made = record["new_host"]["id"]

    hub.start()
    await hub.wait_up()
    info = await wait_running_elsewhere(hub, "erin", old, 90)
    assert await read_file(hub, "erin", token, "thesis.txt") == "chapter one"

    # the interrupted-move path ran: the restarted hub settled the record (the old server
    # still ran, so it stayed there and the half-made host went), then the notice that
    # still stands moved it once more, to a third host
    assert "settling the interrupted move of erin/" in hub.log_path.read_text()
    said = messages(info)
    settled = said.index("A move was interrupted by a hub restart; the server stays where it was")
    assert any(m.startswith(f"Moving (reclaim notice for {old})") for m in said[settled:]), said
    assert info["host_id"] != half_made
    assert half_made not in {h["id"] for h in hub.hosts()}, "the half-made host was not released"

    # no orphans: once the old host's deadline has passed, exactly the serving host is left
    await wait_for(
        lambda: [h["id"] for h in hub.hosts()] == [info["host_id"]] and len(agent_pids(hub)) == 1,
        60,
        f"hosts left: {hub.hosts()}",
        hub,
    )


SLOWSTART = os.path.join(os.path.dirname(os.path.dirname(__file__)), "standin", "slowstart")


async def test_hub_killed_after_the_final_checkpoint_resumes_from_it(hub_factory, tmp_path):
    # hana's second start (the move's new host) never answers: the freeze (3 s into a 6 s
    # notice) takes the final checkpoint and stops the old server; the hub is killed then,
    # before any switch. The final checkpoint's id must have reached the database.
    hub = await hub_factory(
        f"""
c.MigratingSpawner.home_mode = "synced"
c.MigratingSpawner.precopy_interval = 3600
c.MigratingSpawner.cmd = ["{SLOWSTART}", "jupyterhub-singleuser"]
c.MigratingSpawner.environment = {{
    "SLOW_START_COUNTER": "{tmp_path / "starts"}",
    "SLOW_START_PLAN": "hana:2",
    "SLOW_START_FAIL_AFTER": "300",
}}
"""
    )
    await hub.spawn("hana")
    token = await hub.user_token("hana")
    old = (await hub.server_info("hana"))["host_id"]
    await write_file(hub, "hana", token, "late.txt", "written just before the notice")
    # a kernel variable set just before the notice: the freeze's final kernel snapshot has it
    kernel_id = (await hub.new_session("hana", token, "work.ipynb"))["kernel"]["id"]
    out = await run_cell(hub.url + "/user/hana", kernel_id, token, "v = 'set before'\nprint(v)")
    assert out.strip() == "set before", out
    status, _ = await hub.migrate_api("POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 6})
    assert status == 202
    # the final checkpoint is committed (the hub logs it), then the freeze stops the old
    # server and writes the record naming it: kill the hub once it is there (or 5 s on)
    await wait_for(lambda: "(move final):" in hub.log_path.read_text(), 60, "no final", hub)
    record = None
    for _ in range(200):
        record = saved_move(hub, "hana")
        if record and record.get("final_checkpoint"):
            break
        await asyncio.sleep(0.025)
    hub.stop(signal.SIGKILL)
    assert record and record["phase"] == "preparing", record

    hub.start()
    await hub.wait_up()
    deadline = time.monotonic() + 120
    info = await hub.server_info("hana")
    # Running with a stop pending is the startup check's stop still under way (the old
    # host is gone, so its agent calls time out): wait for it and the start after it
    while time.monotonic() < deadline and (info["state"] != "Running" or info["pending"]):
        if info["state"] in ("Suspended", "Stopped"):
            # the hub's startup check reported it stopped: the next start resumes it
            await hub.spawn("hana")
        await asyncio.sleep(0.5)
        info = await hub.server_info("hana")
    assert info["state"] == "Running" and info["host_id"] != old, info
    assert await read_file(hub, "hana", token, "late.txt") == "written just before the notice"
    said = messages(info)
    assert not any("were lost" in m for m in said), said
    final = record.get("final_checkpoint")
    assert final and any(f"after its final checkpoint {final}" in m for m in said), said
    # the kernel comes back under its id with the variable, and nothing says its state is
    # older than it is: when the hub's startup check reported it stopped, the hub's stop
    # (whose own kernel snapshot fails: the old server is dead) kept the freeze's snapshot
    assert record.get("kernels_saved") is True, record
    stale = ("no kernel snapshot", "is lost", "older one", "last background snapshot")
    assert not any(s in m for m in said for s in stale), said
    out = await run_cell(hub.url + "/user/hana", kernel_id, token, "print(v)", timeout=90)
    assert out.strip() == "set before", out
