"""Move downtime with kernel state: how long the route is held when a kernel holds N MB.

A real hub, CHP and local hosts (synced homes); a notebook kernel builds a numpy array of
N MB over its websocket; the host is reclaimed with a 20 s notice; the hold (hub log
"Holding" to "Released") and the kernel's first answer after the move are measured, and
the array is checked on the new host. Prints a table and writes the section "Move downtime
with kernel state" of benchmarks/results.md.

    .venv/bin/python benchmarks/kernel_move.py [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from kernelws import KernelSocket  # noqa: E402
from move import _log_lines  # noqa: E402
from realhub import RealHub  # noqa: E402
from results import replace_section  # noqa: E402

SECTION = "## Move downtime with kernel state"
SYNCED = 'c.MigratingSpawner.home_mode = "synced"\n'


@contextlib.asynccontextmanager
async def notebook_kernel(workdir: Path, config: str = SYNCED, user: str = "alice"):
    """A real hub (CHP, local hosts) with `user`'s server and one notebook kernel; yields
    (hub, token, the server's URL, kernel id) and stops it all (hosts included)."""
    hub = RealHub(workdir, config)
    hub.start()
    try:
        await hub.wait_up()
        await hub.spawn(user)
        token = await hub.user_token(user)
        session = await hub.new_session(user, token, "b.ipynb")
        yield hub, token, f"{hub.url}/user/{user}", session["kernel"]["id"]
    finally:
        hub.stop()
        hub.kill_proxy()
        hub.release_all_hosts()


async def reclaim(hub: RealHub, notice: float, user: str = "alice") -> tuple[str, float]:
    """Reclaim `user`'s host with `notice` seconds: (that host's id, when)."""
    old = (await hub.server_info(user))["host_id"]
    since = time.time()
    status, _ = await hub.migrate_api(
        "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": notice}
    )
    assert status == 202
    return old, since


async def moved(hub: RealHub, old: str, timeout: float, user: str = "alice") -> None:
    """Until `user`'s server runs on a host other than `old`."""
    deadline = time.monotonic() + timeout
    while True:
        info = await hub.server_info(user)
        if info["state"] == "Running" and info["host_id"] != old:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no move in {timeout:.0f} s: {info}")
        await asyncio.sleep(0.05)


def hold_seconds(hub: RealHub, since: float, user: str = "alice") -> float | None:
    """The route's hold of the move after `since`: hub log "Holding" to "Released"."""
    lines = _log_lines(hub, since)
    held = next((ts for ts, line in lines if f"Holding /user/{user}/" in line), None)
    released = next((ts for ts, line in lines if f"Released /user/{user}/" in line and held), None)
    return (released - held) if held and released else None


async def one_case(size_mb: int, workdir: Path) -> dict:
    async with notebook_kernel(workdir) as (hub, token, base, kernel_id):
        code = f"import numpy as np\narr = np.full({size_mb} * 2**20 // 8, 7.0)\nx = 42"
        async with KernelSocket(base, kernel_id, token) as kernel:
            await kernel.run(code, timeout=300)
        old, since = await reclaim(hub, 20)
        await moved(hub, old, 300)
        moved_after = time.time() - since
        async with KernelSocket(base, kernel_id, token) as kernel:
            out, _ = await kernel.run("print(x, arr.nbytes // 2**20, arr[-1])", timeout=120)
        answered = time.time() - since
        return {
            "size": size_mb,
            "hold": hold_seconds(hub, since),
            "moved": moved_after,
            "answered": answered,
            "intact": out.split() == ["42", str(size_mb), "7.0"],
        }


def table(rows: list[dict]) -> str:
    lines = [
        "| kernel state | hold (hold → release) | notice → new host running "
        "| notice → kernel answers | variables intact |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        hold = f"{r['hold']:.2f} s" if r["hold"] is not None else "no hold logged"
        lines.append(
            f"| {r['size']} MB | {hold} | {r['moved']:.2f} s | {r['answered']:.2f} s "
            f"| {'yes' if r['intact'] else 'NO'} |"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="kernel state sizes in MB")
    args = parser.parse_args()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(await one_case(size, Path(tmp)))
            print(rows[-1], flush=True)
    text = table(rows)
    print(text)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{SECTION}\n\nRun {stamp} by `benchmarks/kernel_move.py`; Python "
        f"{platform.python_version()}, 2 cores. Synced home, notice 20 s, a numpy array "
        "of the given size in one notebook kernel; the kernel snapshot is taken in the "
        "freeze (inside the hold) and restored on the new server before release.\n\n"
        f"{text}\n"
    )
    replace_section(section)
    return 0 if all(r["intact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
