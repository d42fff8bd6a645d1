"""MovableKernel itself, on real local hosts (agents) with real ipykernel kernels: the paths
no gateway can steer into on purpose, such as a shutdown in the middle of a move, and a
kernel taken over by a new process after its owning one died, with its snapshots in S3
(moto's server on loopback)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid

import pytest
from gateways import until
from jupyter_client import AsyncKernelClient
from motoserver import moto_environ, running_moto
from realhub import free_port

from kernel_provisioner.core import KernelTimings, MovableKernel
from kernel_provisioner.settings import KernelHostSettings
from migrating_spawner.checkpoint import SignedCheckpoints
from migrating_spawner.checkpoint.s3 import S3CheckpointStore
from migrating_spawner.hosts.local import LocalHostProvider
from migrating_spawner.kernelstate.transfer import KernelStateTransfer, key_of

pytestmark = pytest.mark.integration

ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@pytest.fixture
async def settings(tmp_path):
    first = "127.0.77.10"
    settings = KernelHostSettings(
        root_dir=str(tmp_path / "hosts"),
        first_address=first,
        agent_port=free_port(first, "127.0.77.11", "127.0.77.12"),
        notice_poll_interval=0.2,
        log=logging.getLogger("test.movable"),
    )
    yield settings
    provider = settings.provider
    for host in await provider.list_hosts():
        await provider.release(host)


async def client(info: dict) -> AsyncKernelClient:
    kc = AsyncKernelClient()
    kc.load_connection_info(info)
    kc.start_channels()
    await kc.wait_for_ready(timeout=30)
    return kc


async def test_shutdown_during_a_move_gives_both_hosts_back(settings, caplog):
    caplog.set_level(logging.INFO, "test.movable")
    kernel = settings.new_kernel(str(uuid.uuid4()), "python")
    provider = settings.provider
    kc = await client(await kernel.start(ARGV))
    try:
        [old] = await provider.list_hosts()
        # a busy cell that ignores interrupts holds the move at its snapshot
        kc.execute("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN)\n")
        kc.execute("time.sleep(60)")
        await provider.simulated_cloud.reclaim(old, 60)
        started = f"kernel {kernel.kernel_id} runs on"

        def new_kernel_up() -> bool:
            return sum(started in r.getMessage() for r in caplog.records) == 2

        await until(new_kernel_up, 20, "the move started no kernel on a new host")
        assert kernel.moving and kernel.host.id == old.id  # still waiting for the snapshot

        await kernel.shutdown(grace=0)
        assert await provider.list_hosts() == []
        assert kernel.host is None and not kernel.moving
    finally:
        kc.stop_channels()
        await kernel.shutdown(grace=0)


async def test_a_kernel_asked_to_exit_is_not_moved(settings, caplog):
    caplog.set_level(logging.INFO, "test.movable")
    kernel = settings.new_kernel(str(uuid.uuid4()), "python")
    provider = settings.provider
    kc = await client(await kernel.start(ARGV))
    try:
        [host] = await provider.list_hosts()
        # a client (the gateway's kernel manager) asks the kernel to exit, as a DELETE does;
        # before the gateway has noticed the exit, the host gets a notice
        kc.shutdown()
        await until(lambda: kernel.relay.shutdown_requested, 5, "the relay saw no shutdown")
        await provider.simulated_cloud.reclaim(host, 30)
        # the watch polls every 0.2 s: seven polls see the notice, none moves a kernel that
        # is on its way out (a move would snapshot a dead kernel and start a new one)
        await asyncio.sleep(1.5)
        assert not kernel.moving and kernel.moves == []
        assert [h.id for h in await provider.list_hosts()] == [host.id]
        assert "moving off" not in caplog.text
    finally:
        kc.stop_channels()
        await kernel.shutdown(grace=0)
    assert await provider.list_hosts() == []


async def run(kc: AsyncKernelClient, code: str, timeout: float = 60) -> tuple[str, dict]:
    """Execute `code` through the relay: (its stream output, its execute_reply content)."""
    msg_id = kc.execute(code)
    out, idle = [], False
    while not idle:
        msg = await kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
    while True:
        reply = await kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return "".join(out), reply["content"]


async def test_a_move_without_a_snapshot_says_it_restored_an_older_one(settings, caplog):
    caplog.set_level(logging.INFO, "test.movable")
    kernel = settings.new_kernel(str(uuid.uuid4()), "python")
    kernel.timings.snapshot_interval = 0.5
    provider = settings.provider
    kc = await client(await kernel.start(ARGV))
    try:
        [old] = await provider.list_hosts()
        await run(kc, "x = 1")
        await until(lambda: kernel.good_snapshot is not None, 15, "no background snapshot")
        kernel.timings.snapshot_interval = 0  # none after this: y is only in the kernel itself
        await run(kc, "y = 2")
        # a cell that ignores interrupts holds the kernel past the host's deadline
        kc.execute(
            "import time\nt = time.time()\nwhile time.time() - t < 60:\n"
            "    try:\n        time.sleep(1)\n    except KeyboardInterrupt:\n        pass\n"
        )
        await provider.simulated_cloud.reclaim(old, 6)
        await until(lambda: kernel.moves, 30, "the kernel did not move")
        assert "snapshot failed: None" not in caplog.text
        assert "no snapshot for the move: the kernel did not answer" in caplog.text
        out, reply = await run(kc, "print(x, 'y' in dir())")
        assert reply["status"] == "ok", out
        assert out.splitlines()[-1] == "1 False", out
        # the user is told it is an older state, how old, and what is lost
        assert "could not be saved now (the kernel did not answer" in out, out
        assert "continues from its last snapshot, taken at" in out, out
        assert "after cell [1]): what the cells after [1] did is lost" in out, out
    finally:
        kc.stop_channels()
        await kernel.shutdown(grace=0)
    assert await provider.list_hosts() == []


# a kernel that starts 4 s late once SLOW_START names a file that exists: the window in
# which a move's new kernel is not up yet, after the pre-copy
SLOW_ARGV = [
    "sh",
    "-c",
    'if [ -e "$SLOW_START" ]; then sleep 4; fi; exec "$0" -m ipykernel_launcher -f "$1"',
    sys.executable,
    "{connection_file}",
]
BIG, SMALL = 40_000_000, 4_000_000  # bytes: an array no cell touches, one a cell mutates


async def test_the_freeze_ships_only_what_cells_changed_after_the_precopy(settings, tmp_path):
    slow = tmp_path / "slow"
    kernel = settings.new_kernel(str(uuid.uuid4()), "python")
    kernel.timings.snapshot_interval = 0  # the only snapshots: the move's
    provider = settings.provider
    kc = await client(await kernel.start(SLOW_ARGV, {"SLOW_START": str(slow)}))
    try:
        [old] = await provider.list_hosts()
        _, reply = await run(
            kc,
            "import numpy as np\n"
            f"big = np.arange({BIG // 8}, dtype=np.float64)\n"
            f"a = np.zeros({SMALL // 8})\n"
            "d = {'k': 0}\nr = 'old'",
        )
        assert reply["status"] == "ok", reply
        slow.touch()  # the move's new kernel starts 4 s late
        await provider.simulated_cloud.reclaim(old, 40)
        await until(lambda: kernel.good_snapshot is not None, 30, "no pre-copy snapshot")
        # after the pre-copy, while the new kernel starts: a dict mutated, an array
        # mutated in place, a name rebound
        for cell in ("d['k'] = 1", "a[0] = 7", "r = 'new'"):
            _, reply = await run(kc, cell)
            assert reply["status"] == "ok", reply
        await until(lambda: kernel.moves, 60, "the kernel did not move")
        out, reply = await run(kc, "print(d['k'], a[0], r, float(big[-1]), big.nbytes)")
        assert reply["status"] == "ok", out
        assert out.split() == ["1", "7.0", "new", str(float(BIG // 8 - 1)), str(BIG)], out
    finally:
        kc.stop_channels()
        await kernel.shutdown(grace=0)
    [record] = kernel.moves
    assert record["to"] != old.id, record
    # the pre-copy held everything; the freeze wrote the mutated array and the small ones
    # (by the mutation rule), not the array no cell touched
    assert record["precopy"]["ok"] and record["precopy"]["written_bytes"] >= BIG, record
    assert record["prestart"]["ok"], record
    snap = record["snapshot"]
    assert snap["mode"] == "delta" and SMALL <= snap["written_bytes"] < BIG, snap
    restore = record["restore"]
    assert restore["ok"] and restore["mode"] == "delta", restore
    assert SMALL <= restore["loaded_bytes"] < BIG, restore


async def test_a_precopy_that_cannot_be_restored_ahead_falls_back_to_a_whole_restore(
    settings, tmp_path
):
    slow = tmp_path / "slow"
    kernel = settings.new_kernel(str(uuid.uuid4()), "python")
    kernel.timings.snapshot_interval = 0
    provider = settings.provider
    kc = await client(await kernel.start(SLOW_ARGV, {"SLOW_START": str(slow)}))
    try:
        [old] = await provider.list_hosts()
        await run(kc, "x = 42")
        slow.touch()
        await provider.simulated_cloud.reclaim(old, 40)
        await until(lambda: kernel.good_snapshot is not None, 30, "no pre-copy snapshot")
        # the pre-copy's folder is broken before the new kernel restores it ahead
        index = os.path.join(kernel.state_dir, "index.json")
        with open(index, "w") as f:
            f.write("{not json")
        await run(kc, "y = 1")
        await until(lambda: kernel.moves, 60, "the kernel did not move")
        out, reply = await run(kc, "print(x, y)")
        assert reply["status"] == "ok" and out.split() == ["42", "1"], out
    finally:
        kc.stop_channels()
        await kernel.shutdown(grace=0)
    [record] = kernel.moves
    assert record["precopy"]["ok"] and not record["prestart"]["ok"], record
    # the freeze's snapshot is then restored whole, and says so
    assert record["restore"]["ok"] and record["restore"]["mode"] == "full", record


# The first owner of a kernel (a gateway process): it starts the kernel with its snapshots
# in S3, runs x = 42, waits for the background snapshot, prints what a successor needs
# (MovableKernel.to_info, as get_provisioner_info keeps it) and dies without cleaning up.
FIRST_OWNER = """
import asyncio, json, os, sys
from jupyter_client import AsyncKernelClient
from kernel_provisioner.core import KernelTimings, MovableKernel
from migrating_spawner.checkpoint import SignedCheckpoints
from migrating_spawner.checkpoint.s3 import S3CheckpointStore
from migrating_spawner.hosts.local import LocalHostProvider
from migrating_spawner.kernelstate.transfer import KernelStateTransfer

args = json.loads(sys.argv[1])

async def main():
    provider = LocalHostProvider(**args["provider"])
    store = S3CheckpointStore(bucket=args["bucket"], endpoint_url=args["endpoint"])
    transfer = KernelStateTransfer(SignedCheckpoints(store, args["secret"].encode()))
    timings = KernelTimings(notice_poll_interval=0.2, snapshot_interval=0.3)
    kernel = MovableKernel(
        provider, args["kernel_id"], "python", args["state_dir"], transfer=transfer,
        timings=timings,
    )
    kc = AsyncKernelClient()
    kc.load_connection_info(await kernel.start(args["argv"]))
    kc.start_channels()
    await kc.wait_for_ready(timeout=30)
    reply = await kc.execute_interactive("x = 42", timeout=30)
    assert reply["content"]["status"] == "ok", reply
    while kernel.good_snapshot is None:
        await asyncio.sleep(0.1)
    print(json.dumps(kernel.to_info()), flush=True)
    os._exit(0)  # as a gateway that is killed: relay, watch and snapshots end, no release

asyncio.run(main())
"""


async def test_a_kernel_taken_over_by_a_new_process_comes_back_from_its_s3_snapshot(
    settings, caplog
):
    caplog.set_level(logging.INFO, "test.movable")
    kernel_id = str(uuid.uuid4())
    state_dir = os.path.join(settings.state_root, kernel_id)
    provider_config = {
        "root_dir": settings.root_dir,
        "first_address": settings.first_address,
        "agent_port": settings.agent_port,
        "watch_interval": 0.2,
    }
    with running_moto() as moto, moto_environ(moto):
        moto.client("s3").create_bucket(Bucket="kernels")
        args = {
            "provider": provider_config,
            "bucket": "kernels",
            "endpoint": moto.endpoint_url,
            "secret": "kernel-secret",
            "kernel_id": kernel_id,
            "state_dir": state_dir,
            "argv": ARGV,
        }
        first = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", FIRST_OWNER, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert first.returncode == 0, first.stderr
        info = json.loads(first.stdout.splitlines()[-1])
        store = S3CheckpointStore(bucket="kernels", endpoint_url=moto.endpoint_url)
        assert store.list_checkpoints(key_of(kernel_id)), "no snapshot in the bucket"

        # the new owner: a provider, a store client and a transfer of its own, the same
        # secret; it takes the kernel over as load_provisioner_info does
        provider = LocalHostProvider(**provider_config, log=settings.log)
        transfer = KernelStateTransfer(SignedCheckpoints(store, b"kernel-secret"))
        kernel = MovableKernel.from_info(
            provider,
            kernel_id,
            info,
            transfer=transfer,
            timings=KernelTimings(notice_poll_interval=0.2, snapshot_interval=0),
            log=settings.log,
        )
        await kernel.reattach(info["host_id"], info["target"])
        kc = await client(kernel.relay.connection_info)
        try:
            old = kernel.host
            out, reply = await run(kc, "print(x)")
            assert out.strip() == "42", out  # the same kernel, through the rebound relay
            # its host vanishes: the agent and the kernel die, nobody gives notice
            proc = await provider.agent(old).process(kernel.process)
            os.killpg(os.getpgid(proc["pid"]), signal.SIGKILL)
            os.killpg(old.meta["agent_pid"], signal.SIGKILL)
            out, reply = await run(kc, "print(x)", timeout=90)
            assert reply["status"] == "ok", out
            assert out.splitlines()[-1] == "42", out
            assert "went away without notice" in out and "from its last snapshot" in out, out
            assert kernel.host.id != old.id
            # a restart drops the snapshots of the namespace before it: a later owner
            # must not bring them back
            await kernel.stop_kernel(grace=0)
            await kernel.start(ARGV)
            assert store.list_checkpoints(key_of(kernel_id)) == []
        finally:
            kc.stop_channels()
            await kernel.shutdown(grace=0)
