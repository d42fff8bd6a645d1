"""Web apps behind jupyter-server-proxy across moves, through the real hub, CHP and servers.

One hub for the module (suite time): alice's synced server runs the Shiny app (`shiny`
entry), the RStudio stand-in at /user/alice/rstudio/ (tests/standin: the same contract as
rsession) and a port app a cell started (/user/alice/proxy/PORT/). Reclaims move it; the
same URLs answer from the new host, and the Shiny page in chromium reconnects by itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from kernelws import KernelSocket
from labpage import chromium_page, wait_for
from realhub import free_port, module_hub
from test_move import wait_moved, write_file
from test_tcp_gateway import free_block, talk

from migrating_spawner.service import cli
from migrating_spawner.tcpgateway import TCPGateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

STANDIN = Path(__file__).resolve().parents[1] / "standin" / "rsession"
GRACE = 2
POOL = free_block(2)
# the stand-in's port, fixed (as RStudio's 8787) and on every address of its host, so a
# gateway port can point at it across moves
RPORT = free_port()
# an SSH-like service: it speaks first, naming the address it was reached at (its host)
ECHO = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port}))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"SSH-2.0-echo " + c.getsockname()[0].encode() + b"\\n")
    c.sendall(c.makefile("rb").readline())
    c.close()
"""


def config(workdir: Path) -> str:
    # the stand-in as jupyter-server-proxy's `rstudio` entry, as jupyter-rsession-proxy
    # registers rserver (a Jupyter config folder the hub hands every server)
    extra = workdir / "jupyter-config"
    extra.mkdir()
    servers = {
        "rstudio": {"command": [str(STANDIN), "{port}", "0.0.0.0"], "port": RPORT, "timeout": 30}
    }
    (extra / "jupyter_server_config.json").write_text(
        json.dumps({"ServerProxy": {"servers": servers}})
    )
    return f"""
import os
os.environ["JUPYTER_CONFIG_PATH"] = "{extra}" + os.pathsep + os.environ["JUPYTER_CONFIG_PATH"]
c.MigratingSpawner.home_mode = "synced"
c.MigratingSpawner.rstudio_suspend_grace = {GRACE}
# the freeze's time (3 s by default): the grace, and the forced suspend's time after it
c.MigratingController.final_checkpoint_margin = {GRACE + 3}
c.TCPGateway.enabled = True
c.TCPGateway.port_range = "{POOL[0]}-{POOL[1]}"
c.TCPGateway.bind_ip = "127.0.0.1"
c.TCPGateway.allowed_cidrs = ["127.0.0.0/8"]
c.TCPGateway.state_dir = "{workdir / "gateway"}"
"""


# HAProxy outlives hubs (as CHP does): stopped after the hub
hub = module_hub(
    config,
    "apps-hub",
    cleanup=lambda w: TCPGateway(state_dir=str(w / "gateway")).process.stop(),
    server_extensions=("jupyter_server_proxy",),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(hub):
    await hub.spawn("alice")
    return await hub.user_token("alice")


async def get(hub, token, path, timeout=60):
    return await hub.request("GET", f"/user/alice/{path}", token, timeout=timeout)


async def reclaim(hub, notice=10):
    before = await hub.server_info("alice")
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": notice}
    )
    assert status == 202, data
    return before, await wait_moved(hub, "alice", before["host_id"])


def events(info):
    return [e["message"] for e in info.get("events", [])]


async def test_apps_answer_at_the_same_urls_after_a_reclaim(hub, alice):
    await write_file(hub, "alice", alice, "hello.txt", "moved with the home")
    # the Shiny app, started by its first request
    status, page = await get(hub, alice, "shiny/")
    assert status == 200 and "A Shiny app that moves" in page
    # the RStudio stand-in: an R variable
    status, info = await get(hub, alice, "rstudio/")
    assert status == 200 and info["resumed"] is False, info
    assert (await get(hub, alice, "rstudio/eval?code=x%20%3C-%2042"))[1] == "[1] 42"
    # an app a cell started, reached through /proxy/PORT/
    port = free_port()
    status, session = await hub.request(
        "POST",
        "/user/alice/api/sessions",
        alice,
        {"path": "a.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
    )
    async with KernelSocket(hub.url + "/user/alice", session["kernel"]["id"], alice) as k:
        await k.run(
            "import subprocess, sys\n"
            f"app = subprocess.Popen([sys.executable, '-m', 'http.server', '{port}',"
            " '--bind', '127.0.0.1'])"
        )
    await until_ok(hub, alice, f"proxy/{port}/")

    async with chromium_page() as page:
        await login(page, hub)
        await page.goto(hub.url + "/user/alice/shiny/")
        await page.wait_for_selector("#twice:has-text('2 x n = 42')")
        await page.evaluate("window.__not_reloaded = true")
        await page.evaluate(
            "$(document).on('shiny:connected', () => { window.__reconnected = true; })"
        )
        before, after = await reclaim(hub)
        # the same page, a new input: answered by the app on the new host (no reload)
        # Shiny's client reconnects by itself (an input changed while it is disconnected
        # is dropped by the client: wait for the reconnect)
        await wait_for(
            page,
            "() => window.__reconnected === true && Shiny.shinyapp.isConnected()",
            None,
            bool,
        )
        await page.fill("#n", "5")
        await wait_for(
            page,
            "() => [document.querySelector('#twice').innerText,"
            " document.querySelector('#where').innerText]",
            None,
            lambda v: v == ["2 x n = 10", after["host_id"]],
        )
        assert await page.evaluate("window.__not_reloaded") is True

    assert after["host_id"] != before["host_id"]
    status, page = await get(hub, alice, "shiny/")
    assert status == 200 and "A Shiny app that moves" in page
    status, info = await get(hub, alice, "rstudio/")
    assert status == 200, info
    assert info["resumed"] is True and info["forced"] is False and info["variables"] == ["x"]
    assert (await get(hub, alice, "rstudio/eval?code=x"))[1] == "[1] 42"
    status, listing = await until_ok(hub, alice, f"proxy/{port}/")
    assert "hello.txt" in listing  # the app runs again, in the moved home
    said = events(await hub.server_info("alice"))
    assert any("started again" in m and "shiny" in m and f"port {port}" in m for m in said), said


async def test_a_busy_rstudio_session_is_force_suspended_and_the_user_told(hub, alice, capsys):
    """Also the TCP gateway: ports of alice's server (an SSH-like service, the RStudio
    stand-in's HTTP port) keep their gateway addresses across the move, and a connection
    made during the move reaches the new host."""
    # the SSH-like service, started by a cell, reached through a gateway port
    target = free_port()
    status, session = await hub.request(
        "POST",
        "/user/alice/api/sessions",
        alice,
        {"path": "b.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
    )
    async with KernelSocket(hub.url + "/user/alice", session["kernel"]["id"], alice) as k:
        await k.run(
            "import subprocess, sys\n"
            f"echo = subprocess.Popen([sys.executable, '-c', {ECHO.format(port=target)!r}])"
        )
    status, port = await hub.migrate_api("POST", "/gateway/alice", alice, {"target_port": target})
    assert status == 201, port
    old = (await hub.server_info("alice"))["address"].split(":")[0]
    assert await until_banner(port["port"], old)
    # bob may not connect alice's server; the pool (2 ports) runs out with a clear error
    bob = await hub.user_token("bob")
    status, data = await hub.migrate_api("POST", "/gateway/alice", bob, {"target_port": 22})
    assert status == 404, data
    # bad input is refused, saying why
    for body, says in (
        ({"target_port": "22"}, "integer"),
        ({"target_port": 70000}, "1-65535"),
        ({"target_port": 22, "port": 22}, "unknown field"),
        ({"target_port": 22, "allowed_cidrs": "127.0.0.1"}, "list of networks"),
        ({"target_port": 22, "allowed_cidrs": ["10.0.0.0/8"]}, "outside the gateway's"),
    ):
        status, data = await hub.migrate_api("POST", "/gateway/alice", alice, body)
        assert status == 400 and says in data["message"], (body, data)
    status, second = await hub.migrate_api("POST", "/gateway/alice", alice, {"target_port": 22})
    assert status == 201, second
    status, data = await hub.migrate_api("POST", "/gateway/alice", alice, {"target_port": 23})
    assert status == 503 and "exhausted" in data["message"], data
    status, _ = await hub.migrate_api("DELETE", f"/gateway/alice/{second['port']}", alice)
    assert status == 200

    assert (await get(hub, alice, "rstudio/eval?code=y%20%3C-%207"))[1] == "[1] 7"
    # the stand-in's own port through the gateway (the CLI verb), reachable from
    # 127.0.0.1 only (its own allowed_cidrs): the same R session
    code, out, err = await run_cli(
        capsys,
        hub,
        alice,
        *("gateway", "connect", "alice", "--target-port", str(RPORT)),
        *("--allowed-cidrs", "127.0.0.1/32"),
    )
    assert code == 0, err
    rstudio = json.loads(out)["port"]
    assert rstudio == second["port"]  # the port given back is the free one
    assert json.loads(out)["allowed_cidrs"] == ["127.0.0.1/32"]
    assert await gateway_get(rstudio, "eval?code=y") == "[1] 7"
    assert await talk(rstudio, source="127.0.0.2", timeout=5) == b""  # refused
    # busy: R runs code at its top level, so the cooperative suspend (SIGUSR1) waits
    assert (await get(hub, alice, "rstudio/run?code=Sys.sleep(600);%20z%20%3C-%201"))[1]
    during = asyncio.ensure_future(connect_while_moving(hub, alice, port["port"]))
    before, after = await reclaim(hub)
    new = after["address"].split(":")[0]
    # made while the server moved, answered by the new host at the same gateway port
    assert await during == f"SSH-2.0-echo {new}\nping\n".encode()
    assert await talk(port["port"]) == f"SSH-2.0-echo {new}\nping\n".encode()
    status, info = await get(hub, alice, "rstudio/")
    assert status == 200 and info["resumed"] is True and info["forced"] is True, info
    assert sorted(info["variables"]) == ["x", "y"]  # z: the interrupted code never finished
    # the same gateway port reaches the resumed session on the new host
    assert await gateway_get(rstudio, "eval?code=y") == "[1] 7"
    assert json.loads(await gateway_get(rstudio, ""))["resumed"] is True
    said = events(await hub.server_info("alice"))
    assert any("force-suspended" in m and "interrupted" in m for m in said), said


async def run_cli(capsys, hub, token, *argv):
    """`jupyterhub-migrate ... --json` in this process (it blocks: beside the loop)."""
    argv = ("--url", hub.url, "--token", token, *argv, "--json")
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def gateway_get(port, path, timeout=30):
    """GET http://127.0.0.1:PORT/PATH through a gateway port: the body once it answers 200
    (a route retargeted just now may reach an app still starting: retried, bounded)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                url = f"http://127.0.0.1:{port}/{path}"
                async with session.get(url, timeout=aiohttp.ClientTimeout(10)) as resp:
                    if resp.status == 200:
                        return await resp.text()
                    failure = f"{resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                failure = repr(e)
            assert time.monotonic() < deadline, f"gateway port {port}: {failure}"
            await asyncio.sleep(0.2)


async def until_ok(hub, token, path, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        status, body = await get(hub, token, path)
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, (status, body)
            return status, body
        await asyncio.sleep(0.2)


async def login(page, hub):
    await page.goto(hub.url + "/hub/login")
    await page.fill("input#username_input", "alice")
    await page.fill("input#password_input", "pw")
    await page.click("#login_submit")
    await page.wait_for_url(lambda url: "/hub/login" not in url)


async def until_banner(port, address, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await talk(port) == f"SSH-2.0-echo {address}\nping\n".encode():
            return True
        await asyncio.sleep(0.2)
    return False


async def connect_while_moving(hub, token, port):
    """A new connection to gateway port `port` as soon as the gateway says that port is
    moving (the gateway reports it once HAProxy holds it)."""
    while True:
        _, data = await hub.migrate_api("GET", "/gateway/alice", token)
        if {p["port"]: p["state"] for p in data["ports"]}[port] == "moving":
            return await talk(port)
        await asyncio.sleep(0.05)
