"""What the kernel relay costs per message, and how fast it hands queued requests over.

Real ipykernel kernels through jupyter_client on loopback. Round trips (execute of `pass`,
kernel_info) straight to the kernel and through a KernelRelay in front of the same kernel,
interleaved in the same run so warm-up and noise hit both alike, for the two ways a relay
forwards: to a kernel started with the relay's key (as MovableKernel starts every kernel:
frames pass as they are) and to a kernel with a key of its own (frames re-signed both ways,
as after a move to such a kernel); then, for a request queued
while the relay is paused (as during a move), the time from `resume()` on a new kernel with
a new key and new ports to its reply. Writes the section "## Kernel relay overhead" of
benchmarks/results.md.

    .venv/bin/python benchmarks/relay_latency.py [--rounds 200] [--resumes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jupyter_client import AsyncKernelClient, AsyncKernelManager  # noqa: E402
from results import replace_section  # noqa: E402

from kernel_provisioner.relay import KernelRelay  # noqa: E402

HEADING = "## Kernel relay overhead"


async def client(info: dict) -> AsyncKernelClient:
    kc = AsyncKernelClient()
    kc.load_connection_info(info)
    kc.start_channels()
    await kc.wait_for_ready(timeout=30)
    return kc


async def execute_reply(kc: AsyncKernelClient, msg_id: str) -> dict:
    while True:
        reply = await kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


async def round_trip(kc: AsyncKernelClient, kind: str) -> float:
    t0 = time.perf_counter()
    if kind == "execute":
        await execute_reply(kc, kc.execute("pass", store_history=False))
    else:
        await kc.kernel_info(reply=True, timeout=30)
    return time.perf_counter() - t0


async def overhead(pairs: list[tuple[str, KernelRelay, AsyncKernelManager]], rounds: int):
    """Rows (mode, kind, direct median, relay median, direct p95, relay p95): each round
    trip straight to a kernel is followed by one through its relay, all modes interleaved."""
    clients = []
    for mode, relay, km in pairs:
        clients.append(
            (mode, await client(km.get_connection_info()), await client(relay.connection_info))
        )
    rows = []
    try:
        for kind in ("execute", "kernel_info"):
            times = {(mode, path): [] for mode, _, _ in pairs for path in ("direct", "relay")}
            for _ in range(rounds):
                for mode, direct, relayed in clients:
                    times[mode, "direct"].append(await round_trip(direct, kind))
                    times[mode, "relay"].append(await round_trip(relayed, kind))
            for mode, _, _ in pairs:
                d, r = (statistics.median(times[mode, k]) for k in ("direct", "relay"))
                pd, pr = (
                    statistics.quantiles(times[mode, k], n=20)[-1] for k in ("direct", "relay")
                )
                rows.append((mode, kind, d, r, pd, pr))
    finally:
        for _, direct, relayed in clients:
            direct.stop_channels()
            relayed.stop_channels()
    return rows


async def new_kernel(key: bytes | None = None) -> AsyncKernelManager:
    km = AsyncKernelManager(kernel_name="python3")
    if key is not None:
        km.session.key = key  # the connection file the kernel reads carries it
    await km.start_kernel()
    return km


async def resume_delays(relay: KernelRelay, kms: list[AsyncKernelManager], n: int) -> list[float]:
    """Pause, queue one execute, resume on a fresh kernel: resume() -> its reply. Every
    kernel started goes into `kms` (the caller shuts them down)."""
    kc = await client(relay.connection_info)
    delays = []
    try:
        for _ in range(n):
            relay.pause()
            msg_id = kc.execute("pass", store_history=False)
            while relay.stats["queued"] == 0:
                await asyncio.sleep(0.005)
            kms.append(await new_kernel())
            (await client(kms[-1].get_connection_info())).stop_channels()  # up, as after a restore
            t0 = time.perf_counter()
            resumed = relay.resume(kms[-1].get_connection_info())
            await execute_reply(kc, msg_id)
            delays.append(time.perf_counter() - t0)
            await resumed
            await kms[-2].shutdown_kernel(now=True)  # the kernel it moved from
    finally:
        kc.stop_channels()
    return delays


async def measure(rounds: int, resumes: int) -> str:
    same = KernelRelay()
    other = KernelRelay()
    kms = [await new_kernel(same.key), await new_kernel()]
    pairs = [("relay's key", same, kms[0]), ("own key (re-signed)", other, kms[1])]
    for _, relay, km in pairs:
        await relay.start()
        relay.retarget(km.get_connection_info())
    try:
        rows = await overhead(pairs, rounds)
        delays = await resume_delays(other, kms, resumes)
    finally:
        for _, relay, _ in pairs:
            await relay.stop()
        for km in kms:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ms = 1e3
    lines = [
        HEADING,
        "",
        f"`benchmarks/relay_latency.py`, {when}, {platform.machine()}, Python "
        f"{platform.python_version()}. Real ipykernel kernels through jupyter_client on "
        f"loopback; {rounds} round trips each way, direct and through the relay interleaved "
        "in one run. *Kernel key*: the relay's (MovableKernel starts every kernel with it: "
        "frames pass as they are, the relay only checks what clients sign) or the kernel's "
        "own (every frame re-signed both ways, as after a move to a kernel started elsewhere). "
        "The relay reads its sockets from the event loop directly (no zmq.asyncio futures).",
        "",
        "| message | kernel key | direct, median | relay, median | relay / direct | direct, p95 "
        "| relay, p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, kind, d, r, pd, pr in rows:
        lines.append(
            f"| {kind} | {mode} | {d * ms:.2f} ms | {r * ms:.2f} ms | {r / d:.2f}× "
            f"| {pd * ms:.2f} ms | {pr * ms:.2f} ms |"
        )
    lines += [
        "",
        f"A request queued while the relay is paused (a move) is answered "
        f"{statistics.median(delays) * ms:.1f} ms (median; max {max(delays) * ms:.1f} ms, "
        f"{len(delays)} resumes) after `resume()` re-targets the relay to a new kernel with "
        "a new key and new ports.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="round trips per kind and path")
    ap.add_argument("--resumes", type=int, default=10, help="pause/queue/resume cycles")
    ap.add_argument("--output", type=Path, default=None, help="write here, not results.md")
    args = ap.parse_args()
    text = asyncio.run(measure(args.rounds, args.resumes))
    print(text)
    if args.output:
        args.output.write_text(text)
    else:
        replace_section(text)


if __name__ == "__main__":
    main()
