"""Enterprise Gateway 3.3 with MigratingProcessProxy, run as examples/enterprise-gateway says.

`run.sh` starts Enterprise Gateway from its own venv (.venv-eg, made by `make test`) and
JupyterLab in front of it with `--gateway-url`; the tests talk to JupyterLab only, the way a
browser does, and reclaim the kernel's host through its agent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import pytest_asyncio
from gateways import (
    CULLING,
    EG_EXAMPLE,
    EG_VENV,
    USES_THE_EG_EXAMPLE,
    EnterpriseGatewayExample,
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

# one example for the module's tests but the two that need their own (a gateway exit, the
# culler): each test starts with no kernel and no host (the `example` fixture sees to it)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    USES_THE_EG_EXAMPLE,
]

NOTICE = 8.0

if not (EG_VENV / "bin" / "jupyter-enterprisegateway").exists():
    pytest.skip(
        "Enterprise Gateway's venv .venv-eg is missing: `make test` (or `make install-eg`) "
        "creates it",
        allow_module_level=True,
    )


def example_with_kernelspecs(tmp) -> EnterpriseGatewayExample:
    ex = EnterpriseGatewayExample(tmp)
    # a kernelspec with a mistake in its process_proxy config, for the error test
    spec = ex.moving_kernelspec()
    spec["metadata"]["process_proxy"]["config"]["root_dirr"] = "/tmp/typo"
    ex.add_kernelspec("python3-broken", spec)
    # and one that snapshots an idle kernel every second, for the lost-host test
    spec = ex.moving_kernelspec()
    spec["metadata"]["process_proxy"]["config"].update(
        snapshot_interval=1.0, notice_poll_interval=0.5
    )
    ex.add_kernelspec("python3-fastsnap", spec)
    return ex


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_example(request, tmp_path_factory):
    ex = example_with_kernelspecs(tmp_path_factory.mktemp("eg"))
    await ex.clean()
    async with serving(request, ex, timeout=90):
        yield ex


@pytest_asyncio.fixture(loop_scope="module")
async def example(shared_example):
    """The shared example; what a test left running is shut down after it."""
    yield shared_example
    status, kernels = await shared_example.request("GET", "/api/kernels")
    assert status == 200, kernels
    for kernel in kernels:
        status, _ = await shared_example.request("DELETE", f"/api/kernels/{kernel['id']}")
        assert status == 204
    await until(lambda: not shared_example.hosts(), 30, "a kernel's host was not released")


@pytest_asyncio.fixture(loop_scope="module")
async def own_example(request, tmp_path, shared_example):
    """An example of its own, for a test that stops it (the shared one is stopped first:
    examples share var/, the gateway's log and its hosts' registry)."""
    await shared_example.stop()
    ex = example_with_kernelspecs(tmp_path)
    await ex.clean()
    async with serving(request, ex, timeout=90):
        yield ex


async def new_kernel(ex: EnterpriseGatewayExample) -> str:
    status, kernel = await ex.request("POST", "/api/kernels", {"name": "python3-moving"})
    assert status == 201, kernel
    return kernel["id"]


async def test_kernel_moves_behind_one_websocket(example):
    kernel_id = await new_kernel(example)
    [old] = example.hosts()
    async with KernelSocket(example.url, kernel_id, example.token) as ws:
        # 50 MB to carry: the move lasts long enough for the restarter to poll during it
        out, reply = await ws.run(
            "x = 42\nexec('ghost = (i for i in range(3))')\nblob = bytes(50 * 2**20)"
        )
        assert reply["status"] == "ok", out
        last_before = time.monotonic()
        await reclaim(old, NOTICE)
        reclaimed = time.monotonic()
        await until_held(example, kernel_id)
        sent = time.monotonic()
        # sent during the move, on the same websocket: answered once the kernel has moved
        out, reply = await ws.run("print(x)", timeout=60)
        first_after = time.monotonic()
        assert reply["status"] == "ok"
        # the user is told, in this cell, what could not move
        assert out.splitlines()[-1] == "42", out
        assert "ghost" in out and "could not be brought along" in out, out
        out, _ = await ws.run("x + 1")
        assert out.strip() == "43"
    print(
        f"\nEnterprise Gateway kernel move: queued cell answered {first_after - sent:.2f} s "
        f"after it was sent; gap between replies {first_after - last_before:.2f} s "
        f"(reclaim -> move start {sent - reclaimed:.2f} s)"
    )
    # Enterprise Gateway's restarter polled the kernel during the move and saw it alive
    gateway_log = (EG_EXAMPLE / "var" / "gateway.log").read_text()
    assert "KernelRestarter: restarting kernel" not in gateway_log
    assert "moved local-" in gateway_log
    # the old host is given back (by its deadline at the latest)
    await until(
        lambda: old.id not in [h.id for h in example.hosts()],
        max(1.0, reclaimed + NOTICE + 1 - time.monotonic()),
        "the old host was not released",
    )
    # one kernel, the same id, in JupyterLab and in the gateway
    for status, kernels in (
        await example.request("GET", "/api/kernels"),
        await example.gateway("GET", "/api/kernels"),
    ):
        assert status == 200 and [k["id"] for k in kernels] == [kernel_id], kernels

    status, _ = await example.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    await until(lambda: not example.hosts(), 15, "the kernel's host was not released")


async def test_a_reclaim_during_a_long_cell_costs_only_that_cell(example):
    kernel_id = await new_kernel(example)
    gateway_log = EG_EXAMPLE / "var" / "gateway.log"
    since = gateway_log.stat().st_size  # this test's part of the shared log
    await long_cell_at_a_notice(example, kernel_id, notice=10)
    assert b"snapshot failed" not in gateway_log.read_bytes()[since:]


async def test_files_written_by_relative_path_survive_three_moves(example):
    kernel_id = await new_kernel(example)
    await files_survive_moves(example, kernel_id, moves=3)
    # they live on storage every host sees, under the kernel's id
    assert (example.hosts_root / "kernel-files" / kernel_id / "f3.txt").read_text() == "3"


async def test_bad_process_proxy_config_is_a_clear_error(example):
    status, body = await example.request("POST", "/api/kernels", {"name": "python3-broken"})
    assert status == 500, body
    # jupyter_server 2's gateway client drops the gateway's reason from its message, so ask
    # the gateway itself for what a client is told
    status, body = await example.gateway("POST", "/api/kernels", {"name": "python3-broken"})
    assert status == 500, body
    assert "unknown process_proxy config ['root_dirr']" in body["reason"], body
    assert example.hosts() == []
    status, kernels = await example.request("GET", "/api/kernels")
    assert status == 200 and kernels == []


async def test_host_lost_without_notice_comes_back_from_its_last_snapshot(example):
    status, kernel = await example.request("POST", "/api/kernels", {"name": "python3-fastsnap"})
    assert status == 201, kernel
    kernel_id = kernel["id"]
    [old] = example.hosts()
    async with KernelSocket(example.url, kernel_id, example.token) as ws:
        out, _ = await ws.run("x = 42\nimport os\nprint(os.getpid())")
        kernel_pid = int(out.split()[-1])
        state = example.hosts_root / "kernel-state" / kernel_id
        report = state / "snapshot-report.json"
        await until(report.exists, 15, "no background snapshot of the idle kernel")

        # the host vanishes: its agent and the kernel die, nobody gives notice
        os.killpg(os.getpgid(kernel_pid), signal.SIGKILL)
        os.killpg(old.meta["agent_pid"], signal.SIGKILL)
        lost = time.monotonic()
        out, reply = await ws.run("print(x)", timeout=60)
        back = time.monotonic()
        assert reply["status"] == "ok", out
        assert out.splitlines()[-1] == "42", out
        assert "went away without notice" in out and "from its last snapshot" in out, out
        # the move gives the old host back in the background
        await until(lambda: old.id not in [h.id for h in example.hosts()], 15, "old host kept")
    print(f"\nhost lost without notice: the kernel answered again after {back - lost:.2f} s")
    status, _ = await example.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    await until(lambda: not example.hosts(), 15, "the kernel's host was not released")


async def test_interrupt_restart_and_gateway_exit(own_example):
    example = own_example
    kernel_id = await new_kernel(example)
    [host] = example.hosts()
    async with KernelSocket(example.url, kernel_id, example.token) as ws:
        # the restart builds a new process proxy, which adopts the kernel (same host, relay)
        await interrupt_then_restart(example, ws, kernel_id)
        await asyncio.sleep(1)  # past the old proxy's cleanup: the host is still the kernel's
        assert [h.id for h in example.hosts()] == [host.id]

    # a second kernel, then the gateway exits: both hosts are given back
    await new_kernel(example)
    assert len(example.hosts()) == 2
    await example.stop(release_hosts=False)
    assert example.hosts() == []


@pytest_asyncio.fixture(loop_scope="module")
async def culling_example(request, tmp_path, shared_example):
    """The example with Enterprise Gateway's culler on, also for kernels with a client (the
    shared one stopped: one var/ for both)."""
    await shared_example.stop()
    ex = EnterpriseGatewayExample(tmp_path, gateway_options=CULLING)
    await ex.clean()
    async with serving(request, ex, timeout=90):
        yield ex


async def test_the_culler_spares_a_moving_kernel_and_culls_an_idle_one(culling_example):
    kernel_id = await new_kernel(culling_example)
    gateway_log = EG_EXAMPLE / "var" / "gateway.log"
    await culler_spares_a_moving_kernel(
        culling_example, kernel_id, lambda: gateway_log.read_text(errors="replace")
    )
