"""`jupyterhub-migrate` against a real hub: what it tells about reclaims and moves, the
service's root answering the hub's health check, and a 0 s notice moving to a fresh address."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from test_move import wait_moved

from migrating_spawner.agent.client import AgentClient
from migrating_spawner.hosts.base import Host
from migrating_spawner.service import cli

pytestmark = pytest.mark.integration


async def run_cli(capsys, hub, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, ["--url", hub.url, "--token", hub.admin_token, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def host_record(hub, host_id: str) -> Host:
    [record] = [h for h in hub.hosts() if h["id"] == host_id]
    return Host.from_dict(record)


async def test_every_notice_caller_hears_which_servers_move(hub_factory, capsys):
    hub = await hub_factory()
    await hub.spawn("alice")
    before = await hub.server_info("alice")
    # the cloud's notice first (the agent pushes it to the hub): the move is scheduled
    await AgentClient(host_record(hub, before["host_id"])).reclaim(30)
    for _ in range(100):
        if (await hub.server_info("alice"))["state"] == "Floating":
            break
        await asyncio.sleep(0.1)
    # then the API's reclaim of the same host: it is told about the move already under way
    code, out, err = await run_cli(capsys, hub, "reclaim", before["host_id"], "--notice", "20")
    assert (code, err) == (0, "")
    assert out.strip().endswith("; moving alice/"), out
    code, out, _ = await run_cli(capsys, hub, "--json", "reclaim", before["host_id"])
    assert code == 0 and json.loads(out)["moving"] == ["alice/"]
    await wait_moved(hub, "alice", before["host_id"])


async def test_migrate_says_from_where_and_to_where(hub_factory, capsys):
    hub = await hub_factory()
    await hub.spawn("alice")
    first = await hub.server_info("alice")
    code, out, err = await run_cli(capsys, hub, "migrate", "alice")
    assert (code, err) == (0, "")
    assert out.strip() == f"alice: moving from {first['host_id']} ({first['address']})"
    second = await wait_moved(hub, "alice", first["host_id"])

    code, out, err = await run_cli(capsys, hub, "migrate", "alice", "--wait")
    assert (code, err) == (0, "")
    third = await hub.server_info("alice")
    assert third["host_id"] != second["host_id"]
    assert out.strip() == (
        f"alice: moved from {second['host_id']} to {third['host_id']} ({third['address']})"
    )


async def test_service_root_answers_the_health_check(hub_factory):
    hub = await hub_factory()
    # the hub's own check: a GET on the service's URL, no token
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{hub.service_port}/services/migrate/") as resp:
            assert resp.status == 200
            assert (await resp.json())["service"] == "migrate"


async def test_zero_notice_moves_to_an_address_not_in_use(hub_factory, capsys):
    hub = await hub_factory()
    await hub.spawn("alice")
    before = await hub.server_info("alice")
    code, out, err = await run_cli(capsys, hub, "reclaim", before["host_id"], "--notice", "0")
    assert (code, err) == (0, ""), out
    after = await wait_moved(hub, "alice", before["host_id"])
    # the old host's address stays out of use until its release: the release's shutdown
    # goes to no other host's agent
    assert after["address"].split(":")[0] != before["address"].split(":")[0]
    released = f"released local host {before['host_id']}"
    for _ in range(300):
        if released in hub.log_path.read_text():
            break
        await asyncio.sleep(0.1)
    log = hub.log_path.read_text()
    assert released in log
    refused = [line for line in log.splitlines() if "did not take the shutdown" in line]
    assert not [line for line in refused if "403" in line], refused
