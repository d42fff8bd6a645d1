"""`jupyterhub-migrate` against a real hub and its real `migrate` service: tables and JSON,
flags before or after the verb, the environment, what it tells about reclaims and moves, the
errors the service answers, the service's root answering the hub's health check, and a 0 s
notice moving to a fresh address. (Errors that need no hub are in tests/unit/test_cli.py.)"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from realhub import module_hub
from test_move import wait_moved

from migrating_spawner.agent.client import AgentClient
from migrating_spawner.hosts.base import Host
from migrating_spawner.service import cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# one hub for the tests that look at their own user's server only (each a user of its
# own); the tables test, which lists every server and host, has a hub of its own
hub = module_hub(folder="cli")


async def run_cli(capsys, hub, *argv: str, token: str = "") -> tuple[int, str, str]:
    return await run_bare(capsys, "--url", hub.url, "--token", token or hub.admin_token, *argv)


async def run_bare(capsys, *argv: str) -> tuple[int, str, str]:
    # the CLI blocks (requests): beside the loop of the test
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)


async def stop_server(hub, user: str) -> dict:
    status, _ = await hub.api("DELETE", f"/users/{user}/server")
    assert status in (202, 204)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = await hub.server_info(user)
        if info["state"] in ("Stopped", "Suspended"):
            return info
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user} did not stop: {info}")


async def test_tables_json_and_flags(hub_factory, capsys, monkeypatch):
    hub = await hub_factory()
    await hub.spawn("alice")
    await hub.spawn("bob")
    await stop_server(hub, "bob")
    alice = await hub.server_info("alice")
    [host] = hub.hosts()  # bob's went back at the stop

    code, out, err = await run_cli(capsys, hub, "hosts")
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == ["ID", "ADDRESS", "INSTANCE_TYPE", "MARKET", "SERVERS"]
    assert row.split() == [host[k] for k in ("id", "address", "instance_type", "market")] + [
        "alice/"
    ]
    assert row.index(host["address"]) == header.index("ADDRESS")  # columns line up

    # --json prints the service's own answer
    code, out, _ = await run_cli(capsys, hub, "--json", "list")
    status, servers = await hub.migrate_api("GET", "/servers")
    assert code == 0 and status == 200
    for answer in (servers, printed := json.loads(out)):
        for server in answer["servers"]:
            server.pop("uptime")  # a clock, read twice
    assert printed == servers
    assert [(s["user"], s["state"]) for s in servers["servers"]] == [
        ("alice", "Running"),
        ("bob", "Suspended"),
    ]
    # a stopped server has no host: dashes
    code, out, _ = await run_cli(capsys, hub, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["USER", "SERVER", "STATE", "HOST_ID", "ADDRESS"]
    assert lines[1].split() == ["alice", "Running", alice["host_id"], alice["address"]]
    assert lines[2].split() == ["bob", "Suspended", "-", "-"]  # stop = suspend

    code, out, _ = await run_cli(capsys, hub, "info", "alice")
    assert code == 0
    facts = dict(
        line.split(":", 1) for line in out.splitlines()[: out.splitlines().index("Events:")]
    )
    facts = {k: v.strip() for k, v in facts.items()}
    assert facts["State"] == "Running" and facts["Host"] == alice["host_id"]
    # a clock and h:mm:ss, not epoch seconds; `-` for what is empty, never None
    assert facts["Started"] == cli.clock(alice["started"]), out
    assert facts["Uptime"].endswith(" since it started (moves included)"), out
    assert "None" not in out and "{" not in out
    printed = out.splitlines()
    printed = printed[printed.index("Events:") + 1 :]
    # the service's events of the server, oldest first (more may have come since)
    events = (await hub.server_info("alice"))["events"]
    wanted = [f"  {cli.clock(e['time'])}  {e['message']}" for e in events]
    assert printed and printed == wanted[: len(printed)], out
    # a move of a suspended server: use resume
    code, out, err = await run_cli(capsys, hub, "migrate", "bob")
    assert (code, out) == (1, "")
    assert err.strip() == (
        "jupyterhub-migrate: 409: bob/ is not running: it is Suspended, so there is nothing "
        "to move; resume it instead (`jupyterhub-migrate resume bob/` or Resume on the page)"
    )

    # flags before or after the verb
    for argv in (
        ["--url", hub.url, "--token", hub.admin_token, "info", "alice", "--json"],
        ["--json", "info", "alice", "--url", hub.url, "--token", hub.admin_token],
        ["info", "--token", hub.admin_token, "alice", "--url", hub.url, "--json"],
        ["--json", "--url", hub.url, "info", "--token", hub.admin_token, "alice"],
    ):
        code, out, err = await run_bare(capsys, *argv)
        assert (code, err) == (0, ""), argv
        assert json.loads(out)["host_id"] == alice["host_id"], argv

    # URL and token from the environment; flags win over it
    monkeypatch.setenv("JUPYTERHUB_URL", hub.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.admin_token)
    code, out, _ = await run_bare(capsys, "--json", "hosts")
    assert code == 0 and [h["id"] for h in json.loads(out)["hosts"]] == [host["id"]]
    code, _, err = await run_bare(capsys, "--token", "wrong", "hosts")
    assert code == 1
    assert err.strip() == "jupyterhub-migrate: 403: invalid or expired token"


async def test_errors_the_service_answers(hub, capsys):
    dana = await hub.user_token("dana")
    status, token = await hub.api(
        "POST", "/users/dana/tokens", body={"scopes": ["read:users!user=dana"]}
    )
    assert status == 201
    narrow = token["token"]

    async def error(*argv: str, token: str = "") -> str:
        code, out, err = await run_cli(capsys, hub, *argv, token=token)
        assert (code, out) == (1, ""), (argv, out, err)
        return err.strip().removeprefix("jupyterhub-migrate: ")

    assert await error("info", "carol") == "404: no server carol/"
    assert await error("--json", "reclaim", "gone") == "404: no host gone"
    # the service refuses a notice longer than an hour (the CLI says so before asking:
    # tests/unit/test_cli.py)
    status, answer = await hub.migrate_api(
        "POST", "/hosts/gone/reclaim", body={"notice_seconds": 3601}
    )
    assert (status, answer["message"]) == (
        400,
        "notice_seconds must be between 0 and 3600 seconds",
    )
    # a plain user's own token: their servers (one, never started), no hosts
    code, out, _ = await run_cli(capsys, hub, "list", token=dana)
    assert code == 0, out
    assert [line.split() for line in out.splitlines()[1:]] == [["dana", "Stopped", "-", "-"]]
    assert await error("hosts", token=dana) == "403: this needs the admin:servers scope"
    # a token without access to the service
    assert await error("list", token=narrow) == (
        "403: user dana may not use this service: its token lacks the scope "
        "access:services!service=migrate"
    )

    # the hub's URL with a wrong path: the hub answers, but not the service's JSON
    url = hub.url + "/nope"
    code, out, err = await run_bare(capsys, "--url", url, "--token", dana, "list")
    assert (code, out) == (1, "")
    assert err.strip().startswith(
        f"jupyterhub-migrate: {url} is not a JupyterHub with the `migrate` service: "
        f"GET {url}/services/migrate/api/servers answered 404 (text/html)"
    ), err


def host_record(hub, host_id: str) -> Host:
    [record] = [h for h in hub.hosts() if h["id"] == host_id]
    return Host.from_dict(record)


async def test_every_notice_caller_hears_which_servers_move(hub, capsys):
    await hub.spawn("nell")
    before = await hub.server_info("nell")
    # the cloud's notice first (the agent pushes it to the hub): the move is scheduled
    await AgentClient(host_record(hub, before["host_id"])).reclaim(30)
    for _ in range(100):
        if (await hub.server_info("nell"))["state"] == "Floating":
            break
        await asyncio.sleep(0.1)
    # then the API's reclaim of the same host: it is told about the move already under way
    code, out, err = await run_cli(capsys, hub, "reclaim", before["host_id"], "--notice", "20")
    assert (code, err) == (0, "")
    assert out.strip().endswith("; moving nell/"), out
    code, out, _ = await run_cli(capsys, hub, "--json", "reclaim", before["host_id"])
    assert code == 0 and json.loads(out)["moving"] == ["nell/"]
    await wait_moved(hub, "nell", before["host_id"])


async def test_migrate_says_from_where_and_to_where(hub, capsys):
    await hub.spawn("mia")
    first = await hub.server_info("mia")
    # a plain user moves their own server with their own token
    mia = await hub.user_token("mia")
    code, out, err = await run_cli(capsys, hub, "migrate", "mia", token=mia)
    assert (code, err) == (0, "")
    assert out.strip() == f"mia: moving from {first['host_id']} ({first['address']})"
    second = await wait_moved(hub, "mia", first["host_id"])

    code, out, err = await run_cli(capsys, hub, "migrate", "mia", "--wait", token=mia)
    assert (code, err) == (0, "")
    third = await hub.server_info("mia")
    assert third["host_id"] != second["host_id"]
    assert out.strip() == (
        f"mia: moved from {second['host_id']} to {third['host_id']} ({third['address']})"
    )


async def test_service_root_answers_the_health_check(hub):
    # the hub's own check: a GET on the service's URL, no token
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{hub.service_port}/services/migrate/") as resp:
            assert resp.status == 200
            assert (await resp.json())["service"] == "migrate"


async def test_zero_notice_moves_to_an_address_not_in_use(hub, capsys):
    await hub.spawn("zoe")
    before = await hub.server_info("zoe")
    code, out, err = await run_cli(capsys, hub, "reclaim", before["host_id"], "--notice", "0")
    assert (code, err) == (0, ""), out
    after = await wait_moved(hub, "zoe", before["host_id"])
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
