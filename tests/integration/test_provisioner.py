"""A kernel under a real jupyter_server 2 moves between local hosts behind one websocket."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from gateways import JupyterServer, call_failed, start_all, stop_all
from kernelws import KernelSocket

pytestmark = pytest.mark.integration

NOTICE = 8.0


@pytest.fixture
async def server(tmp_path, request):
    srv = JupyterServer(tmp_path)
    try:
        await start_all(srv)
        yield srv
    finally:
        await stop_all(srv, failed=call_failed(request))
    assert srv.hosts() == [], "hosts left after the server stopped"


async def test_kernel_moves_behind_one_websocket(server):
    status, kernel = await server.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, server.tail())
    kernel_id = kernel["id"]
    [old] = server.hosts()

    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        out, reply = await ws.run("x = 42")
        assert reply["status"] == "ok", out
        last_before = time.monotonic()

        async with aiohttp.ClientSession() as http:
            async with http.post(
                old.agent_url + "/reclaim",
                json={"notice_seconds": NOTICE},
                headers={"Authorization": f"token {old.agent_token}"},
            ) as resp:
                assert resp.status == 202, await resp.text()
        reclaimed = time.monotonic()

        # the move is under way once a second host is being acquired
        while len(server.hosts()) < 2:
            assert time.monotonic() - reclaimed < 10, "the move did not begin"
            await asyncio.sleep(0.02)
        sent = time.monotonic()
        out, reply = await ws.run("print(x)", timeout=60)
        first_after = time.monotonic()
        assert out.strip() == "42", out
        assert reply["status"] == "ok"
        hosts = server.hosts()
        assert [h.id for h in hosts] != [old.id]

        # and it stays on the same websocket afterwards
        out, _ = await ws.run("x + 1")
        assert out.strip() == "43"

    print(
        f"\nkernel move: queued cell answered {first_after - sent:.2f} s after it was sent; "
        f"gap between replies {first_after - last_before:.2f} s "
        f"(reclaim -> move start {sent - reclaimed:.2f} s)"
    )

    status, kernels = await server.request("GET", "/api/kernels")
    assert status == 200
    assert [k["id"] for k in kernels] == [kernel_id]

    # the old host is gone by its deadline (released right after the move)
    await asyncio.sleep(max(0.0, reclaimed + NOTICE + 0.5 - time.monotonic()))
    assert old.id not in [h.id for h in server.hosts()]
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http:
            await http.get(old.agent_url + "/status", timeout=aiohttp.ClientTimeout(2))
    [new] = server.hosts()

    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    deadline = time.monotonic() + 15
    while server.hosts() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert server.hosts() == [], f"host {new.id} not released"
    assert not (server.hosts_root / "kernel-state" / kernel_id).exists()


async def test_restart_and_interrupt_keep_the_websocket(server):
    status, kernel = await server.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, server.tail())
    kernel_id = kernel["id"]
    [host] = server.hosts()
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        await ws.run("x = 42")
        # interrupt: an interrupt_request to the kernel on its host (no local process)
        cell = asyncio.create_task(ws.run("import time; time.sleep(30)"))
        await asyncio.sleep(1.5)
        status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
        assert status == 204
        out, reply = await asyncio.wait_for(cell, 15)
        assert reply["status"] == "error" and "KeyboardInterrupt" in out, out

        # restart: a fresh kernel on the same host behind the same relay and websocket
        status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/restart")
        assert status == 200
        assert [h.id for h in server.hosts()] == [host.id]
        out, _ = await ws.run("print('x' in dir())")
        assert out.strip() == "False"
    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    assert server.hosts() == []
