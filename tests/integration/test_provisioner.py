"""A kernel under a real jupyter_server 2 moves between local hosts behind one websocket."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from gateways import (
    JupyterServer,
    call_failed,
    interrupt_then_restart,
    reclaim,
    start_all,
    stop_all,
    until,
)
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

        await reclaim(old, NOTICE)
        reclaimed = time.monotonic()
        # the move is under way once a second host is being acquired
        await until(lambda: len(server.hosts()) >= 2, 10, "the move did not begin")
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
    await until(lambda: not server.hosts(), 15, f"host {new.id} not released")
    assert not (server.hosts_root / "kernel-state" / kernel_id).exists()


async def test_restart_and_interrupt_keep_the_websocket(server):
    status, kernel = await server.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, server.tail())
    kernel_id = kernel["id"]
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        await interrupt_then_restart(server, ws, kernel_id)
    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    assert server.hosts() == []
