"""A kernel under Jupyter Kernel Gateway 3 moves between local hosts while a websocket opened
through a `jupyter server --gateway-url` in front of the gateway stays open."""

from __future__ import annotations

import time

import aiohttp
import pytest
import pytest_asyncio
from gateways import (
    CULLING,
    GatewayClient,
    KernelGateway,
    culler_spares_a_moving_kernel,
    files_survive_moves,
    interrupt_then_restart,
    long_cell_at_a_notice,
    reclaim,
    serving,
    until,
    until_held,
)
from kernelws import KernelSocket

# one gateway (and front) for the module's tests but the culler's: each test starts with
# no kernel and no host (the `servers` fixture sees to it)
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

NOTICE = 8.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_servers(tmp_path_factory, request):
    """(front, gateway): Kernel Gateway with the migrating-provisioner kernelspec, and a
    jupyter server with --gateway-url in front of it."""
    tmp = tmp_path_factory.mktemp("kernel-gateway")
    gateway = KernelGateway(tmp)
    front = GatewayClient(tmp, gateway)
    async with serving(request, gateway, front):
        yield front, gateway


@pytest_asyncio.fixture(loop_scope="module")
async def servers(shared_servers):
    """The shared servers; what a test left running is shut down after it."""
    yield shared_servers
    front, gateway = shared_servers
    for kernel_id in await kernel_ids(front):
        status, _ = await front.request("DELETE", f"/api/kernels/{kernel_id}")
        assert status == 204
    await until(lambda: not gateway.hosts(), 30, "a kernel's host was not released")


async def kernel_ids(server) -> list[str]:
    status, kernels = await server.request("GET", "/api/kernels")
    assert status == 200, kernels
    return [k["id"] for k in kernels]


def gateway_websockets(gateway, kernel_id: str) -> int:
    """How many kernel websockets the gateway accepted for `kernel_id` (its access log)."""
    return gateway.tail(100_000).count(f"101 GET /api/kernels/{kernel_id}/channels")


async def test_kernel_moves_behind_the_gateway_on_one_websocket(servers):
    front, gateway = servers
    status, kernel = await front.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, front.tail(), gateway.tail())
    kernel_id = kernel["id"]
    [old] = gateway.hosts()

    async with KernelSocket(front.url, kernel_id, front.token) as ws:
        out, reply = await ws.run("x = 42")
        assert reply["status"] == "ok", out
        last_before = time.monotonic()

        await reclaim(old, NOTICE)
        reclaimed = time.monotonic()
        # the move is under way once a second host is being acquired
        await until_held(gateway, kernel_id)
        sent = time.monotonic()
        out, reply = await ws.run("print(x)", timeout=60)
        first_after = time.monotonic()
        assert out.strip() == "42", out
        assert reply["status"] == "ok"
        # one new host, this kernel's (the old one may still be there until its release)
        moved_to = [h for h in gateway.hosts() if h.id != old.id]
        assert [h.meta.get("owner") for h in moved_to] == [kernel_id], gateway.hosts()

        # the same websocket goes on working
        out, _ = await ws.run("x + 1")
        assert out.strip() == "43"
        assert not ws.ws.closed
        # and so did the front server's own websocket to the gateway (no reconnect)
        assert gateway_websockets(gateway, kernel_id) == 1, gateway.tail()

    print(
        f"\nkernel move through Kernel Gateway + gateway client: queued cell answered "
        f"{first_after - sent:.2f} s after it was sent; gap between replies "
        f"{first_after - last_before:.2f} s (reclaim -> move start {sent - reclaimed:.2f} s)"
    )

    # one kernel, the same id, on both servers
    assert await kernel_ids(front) == [kernel_id]
    assert await kernel_ids(gateway) == [kernel_id]

    # the move released the old host: its record and the tombstone the agent leaves at its
    # deadline are both gone (the deadline alone removes only the record)
    registry = gateway.hosts_root / "registry"
    await until(lambda: not list(registry.glob(f"{old.id}.*")), 30, f"{old.id} not released")
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http:
            await http.get(old.agent_url + "/status", timeout=aiohttp.ClientTimeout(2))
    [new] = gateway.hosts()
    assert new.id != old.id

    status, _ = await front.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    await until(lambda: not gateway.hosts(), 15, "hosts not released")
    assert await kernel_ids(gateway) == []
    assert not (gateway.hosts_root / "kernel-state" / kernel_id).exists()


async def new_kernel(front) -> str:
    status, kernel = await front.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, kernel
    return kernel["id"]


async def test_a_reclaim_during_a_long_cell_costs_only_that_cell(servers):
    front, gateway = servers
    since = gateway.log_path.stat().st_size  # this test's part of the shared log
    await long_cell_at_a_notice(front, await new_kernel(front), notice=10)
    assert b"snapshot failed" not in gateway.log_path.read_bytes()[since:]


async def test_files_written_by_relative_path_survive_three_moves(servers):
    front, gateway = servers
    kernel_id = await new_kernel(front)
    await files_survive_moves(front, kernel_id, moves=3)
    assert (gateway.hosts_root / "kernel-files" / kernel_id / "f3.txt").read_text() == "3"


async def test_restart_and_interrupt_through_the_gateway_keep_the_websocket(servers):
    front, gateway = servers
    status, kernel = await front.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, front.tail(), gateway.tail())
    kernel_id = kernel["id"]
    async with KernelSocket(front.url, kernel_id, front.token) as ws:
        await interrupt_then_restart(front, ws, kernel_id)
        out, _ = await ws.run("y = 7; print(y * 6)")
        assert out.strip() == "42"
        assert not ws.ws.closed
        assert gateway_websockets(gateway, kernel_id) == 1, gateway.tail()
    assert await kernel_ids(gateway) == [kernel_id]
    status, _ = await front.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    await until(lambda: not gateway.hosts(), 15, "hosts not released")


@pytest_asyncio.fixture(loop_scope="module")
async def culling_gateway(tmp_path, request):
    """Kernel Gateway with its culler on, also for kernels with a client."""
    gateway = KernelGateway(tmp_path, extra_args=CULLING)
    async with serving(request, gateway):
        yield gateway


async def test_the_culler_spares_a_moving_kernel_and_culls_an_idle_one(culling_gateway):
    status, kernel = await culling_gateway.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, culling_gateway.tail())
    log = culling_gateway.log_path
    await culler_spares_a_moving_kernel(
        culling_gateway, kernel["id"], lambda: log.read_text(errors="replace")
    )
