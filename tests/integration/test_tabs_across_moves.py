"""Every tab gets its replies across a move, once: a tab whose socket is closed while its
cell runs (another tab of the same kernel staying open), and two tabs whose cells are held
at the freeze. jupyter_server alone drops the first (it buffers only when a kernel's last
socket closes, and in the memory of the old server) and had one buffer per kernel."""

import asyncio
import time

import aiohttp
import pytest
from kernelconn import KernelConnection
from latch import Latch
from realhub import until
from test_move import wait_moved

pytestmark = pytest.mark.integration


async def wait_event(hub, user, words, timeout=60):
    deadline = time.monotonic() + timeout
    while not any(
        any(w in e["message"] for w in words) for e in (await hub.server_info(user))["events"]
    ):
        assert time.monotonic() < deadline, f"no event with {words}"
        await asyncio.sleep(0.1)


async def frozen(status_url: str, token: str) -> bool:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"token {token}"}
        async with session.get(status_url, headers=headers) as resp:
            return resp.status == 200 and (await resp.json())["frozen"]


async def test_each_tab_gets_its_replies_once_across_moves(hub_factory):
    hub = await hub_factory('c.MigratingSpawner.home_mode = "synced"')
    await hub.spawn("tia")
    token = await hub.user_token("tia")
    session = await hub.new_session("tia", token, "tabs.ipynb")
    kernel_id = session["kernel"]["id"]
    base = hub.url + "/user/tia"
    tabs = [KernelConnection(base, kernel_id, token, f"tab {i}") for i in "abc"]
    a, b, c = tabs
    latch = Latch()
    await latch.start()
    for tab in tabs:
        await tab.start()
    try:
        await a.run("import socket\nn = 0")
        # tab a's cell runs through the start of the move, until the latch lets it go; its
        # socket closes meanwhile, while b and c stay connected
        slow = await a.send(f"{latch.wait_code()}\nn += 1\nprint('slow', n)")
        await a.pause()
        before = await hub.server_info("tia")
        old = before["host_id"]
        status, data = await hub.migrate_api("POST", "/servers/tia/migrate")
        assert status == 202, data
        await wait_event(hub, "tia", ["Holding", "switching over"])
        # until the old server's freeze has begun (asked directly: the proxy holds its
        # route): messages sent before it reach the old kernel, which would run them
        status_url = f"http://{before['address']}/user/tia/api/migrating/status"
        await until(lambda: frozen(status_url, token), 30, "the old server's freeze")
        # the freeze waits for the slow cell: these are held, two tabs on one kernel
        held = {b: [], c: []}
        for i in range(3):
            for tab in (b, c):
                held[tab].append(await tab.send(f"n += 1\nprint('{tab.label}', {i})"))
        await latch.release()
        await wait_moved(hub, "tia", old, timeout=90)
        await a.resume()
        assert await a.wait([slow], timeout=30, complete=True), a.describe()
        for tab, cells in held.items():
            assert await tab.wait(cells, timeout=30, complete=True), (tab.label, tab.describe())
        status, report = await hub.request("GET", "/user/tia/api/migrating/status", token)
        assert status == 200, report
        assert report["last_restore"]["redelivered"] == 6, report["last_restore"]
        # a later move replays nothing again
        old = (await hub.server_info("tia"))["host_id"]
        status, data = await hub.migrate_api("POST", "/servers/tia/migrate")
        assert status == 202, data
        await wait_moved(hub, "tia", old, timeout=90)
        out, _ = await b.run("print(n)")
        await a.run("print('a is back')")
    finally:
        for tab in tabs:
            await tab.close()
        await latch.close()
    assert a.output(slow).strip() == "slow 1", a.output(slow)
    for tab, cells in held.items():
        assert [tab.output(m).strip() for m in cells] == [f"{tab.label} {i}" for i in range(3)]
    everything = {m: t.replies[m] for t in tabs for m in t.sent}
    assert all(len(r) == 1 for r in everything.values()), {
        m: len(r) for m, r in everything.items() if len(r) != 1
    }
    # each held cell ran once, after the slow one: 1 + 6
    assert out.strip() == "7", out
