"""A kernel under a real jupyter_server 2 moves between local hosts behind one websocket."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import pytest_asyncio
from gateways import (
    JupyterServer,
    interrupt_then_restart,
    reclaim,
    serving,
    until,
    until_held,
)
from kernelws import KernelSocket

# one server for the module's tests: each starts with no kernel and no host
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

NOTICE = 8.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_server(tmp_path_factory, request):
    srv = JupyterServer(tmp_path_factory.mktemp("provisioner"))
    async with serving(request, srv):
        yield srv


@pytest_asyncio.fixture(loop_scope="module")
async def server(shared_server):
    """The shared server; what a test left running is shut down after it."""
    yield shared_server
    status, kernels = await shared_server.request("GET", "/api/kernels")
    assert status == 200, kernels
    for kernel in kernels:
        status, _ = await shared_server.request("DELETE", f"/api/kernels/{kernel['id']}")
        assert status == 204
    await until(lambda: not shared_server.hosts(), 30, "a kernel's host was not released")


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
        await until_held(server, kernel_id)
        sent = time.monotonic()
        out, reply = await ws.run("print(x)", timeout=60)
        first_after = time.monotonic()
        assert out.strip() == "42", out
        assert reply["status"] == "ok"
        # one new host, this kernel's (the old one may still be there until its release)
        moved_to = [h for h in server.hosts() if h.id != old.id]
        assert [h.meta.get("owner") for h in moved_to] == [kernel_id], server.hosts()

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

    # the move released the old host: its record and the tombstone the agent leaves at its
    # deadline are both gone (the deadline alone removes only the record)
    registry = server.hosts_root / "registry"
    await until(lambda: not list(registry.glob(f"{old.id}.*")), 30, f"{old.id} not released")
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


async def test_shutdown_during_a_move_gives_both_hosts_back(server):
    status, kernel = await server.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, server.tail())
    kernel_id = kernel["id"]
    [old] = server.hosts()
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        await ws.run("x = 42")
        # a running cell holds the move at its snapshot, once the new kernel is up
        busy = asyncio.Event()
        cell = asyncio.create_task(ws.run("import time; time.sleep(60)", timeout=90, started=busy))
        await asyncio.wait_for(busy.wait(), 30)
        await reclaim(old, 30)
        started = f"kernel {kernel_id} runs on"
        await until(lambda: server.tail(100_000).count(started) == 2, 20, "no new kernel")
        assert len(server.hosts()) == 2

        # the user shuts the kernel down before the move is done
        status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
        assert status == 204
        cell.cancel()
        await asyncio.gather(cell, return_exceptions=True)
    # neither the old host nor the one the move had already started on is kept
    await until(lambda: not server.hosts(), 15, f"hosts kept: {server.hosts()}")
    status, kernels = await server.request("GET", "/api/kernels")
    assert status == 200 and kernels == []
