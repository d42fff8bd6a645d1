"""Issue 14's freeze benchmark: a move's hold with kernel state pre-copied, side by side.

Kernel part (this file): a real hub, CHP and local hosts (synced homes); one notebook
kernel holds N MB (a float64 array of N - 10 MB and a 10 MB array `w`); its host is
reclaimed with a 60 s notice. Per size, in one run:

- pre-copy (a): no cell runs after the notice; (b): one cell changes `w` (10 MB, in place)
  right after the pre-copy, during the move;
- the full-restore path (`MigratingSpawner.kernel_precopy = False`, case b's cell too);
- hold (hub log "Holding" to "Released") and notice -> the kernel's first answer on the
  new host; the freeze's delta (bytes the freeze snapshot wrote, from the move's history
  entry) and what the restore loaded;
- the physical bound: delta bytes / measured write bandwidth + delta bytes / measured read
  bandwidth (a file of 512 MB in the same file system, page cache as the snapshot uses) +
  the measured switch (the median round trip of a trivial cell on the moved kernel);
- through plain kernels (benchmarks/kernel_state.py's bench_size): our first (full)
  snapshot and restore next to dill.dump_module / load_module of the same namespace, and an
  incremental snapshot after one int changed.

The spare-host part (notice -> first 200 with 0 and 1 spare hosts, 5 s notice) is WARM's,
in benchmarks/freeze_spare.py when present (`--part spare`). Writes the section
"## Freeze and warm hosts (issue 14)" of benchmarks/results.md.

    .venv/bin/python benchmarks/freeze.py [--sizes 10,100,1000,4000] [--part kernel,spare]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [
    str(HERE),
    str(HERE.parent / "tests"),
    str(HERE.parent / "tests" / "integration"),
    str(HERE.parent),
]

from kernel_move import SYNCED, hold_seconds, moved, notebook_kernel, reclaim  # noqa: E402
from kernel_state import bench_size  # noqa: E402
from kernelws import KernelSocket  # noqa: E402
from results import RESULTS, replace_section  # noqa: E402
from test_precopy_move import history_entry, wait_event  # noqa: E402

SECTION = "## Freeze and warm hosts (issue 14)"
MB = 1_000_000
NOTICE = 90


def disk_bandwidth(folder: Path, size: int = 512 * MB) -> tuple[float, float]:
    """(write, read) bytes per second of a file in `folder`, through the page cache."""
    path = folder / "bandwidth.bin"
    block = os.urandom(8 * MB)
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    write = size / (time.perf_counter() - t)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MB):
            pass
    read = size / (time.perf_counter() - t)
    path.unlink()
    return write, read


async def one_move(size_mb: int, case: str, precopy: bool, workdir: Path) -> dict:
    config = SYNCED + f"c.MigratingSpawner.kernel_precopy = {precopy}\n"
    config += "c.MigratingSpawner.kernel_state_timeout = 240\n"
    async with notebook_kernel(workdir, config) as (hub, token, base, kernel_id):
        big = max(0, size_mb - 10) * MB // 8
        code = (
            f"import numpy as np\nbig = np.full({big}, 7.0)\nw = np.zeros({10 * MB // 8})\nx = 42"
        )
        async with KernelSocket(base, kernel_id, token) as kernel:
            await kernel.run(code, timeout=600)
            old, since = await reclaim(hub, NOTICE)
            if case == "b":
                if precopy:
                    await wait_event(hub, "alice", "Kernels pre-copied")
                await kernel.run("w += 1", timeout=600)
        await moved(hub, old, NOTICE + 120)
        async with KernelSocket(base, kernel_id, token) as kernel:
            out, _ = await kernel.run("print(x, big.nbytes + w.nbytes, float(w[0]))", timeout=300)
            answered = time.time() - since
            rtts = []
            for _ in range(10):
                t = time.perf_counter()
                await kernel.run("1")
                rtts.append(time.perf_counter() - t)
        entry = await history_entry(hub, "alice")
        state = ((entry.get("kernel_state") or {}).get("kernels") or {}).get(kernel_id, {})
        want_w = "1.0" if case == "b" else "0.0"
        return {
            "size": size_mb,
            "case": case,
            "path": "pre-copy" if precopy else "full restore",
            "hold": hold_seconds(hub, since),
            "answered": answered,
            "intact": out.split() == ["42", str(big * 8 + 10 * MB), want_w],
            "output": out,
            "freeze_bytes": (state.get("freeze") or {}).get("written_bytes"),
            "freeze_mode": (state.get("freeze") or {}).get("mode"),
            "restore_mode": (state.get("restore") or {}).get("mode"),
            "loaded": (state.get("restore") or {}).get("loaded_bytes"),
            "switch": statistics.median(rtts),
            "steps": entry.get("hold_steps") or {},
        }


def kernel_rows(args) -> tuple[list[dict], list[dict], tuple[float, float]]:
    rows, dill_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bandwidth = disk_bandwidth(Path(tmp))
    print(f"page cache write {bandwidth[0] / MB:.0f} MB/s, read {bandwidth[1] / MB:.0f} MB/s")
    for size in [int(s) for s in args.sizes.split(",")]:
        runs = [(c, True) for c in args.cases.split(",")]
        if not args.no_full:
            runs.append(("b", False))
        for case, precopy in runs:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    row = asyncio.run(one_move(size, case, precopy, Path(tmp)))
                except Exception as e:  # one failed case must not lose the others
                    print(f"{size} MB {case} precopy={precopy}: {e!r}", flush=True)
                    row = {"size": size, "case": case, "error": f"{type(e).__name__}: {e}"}
                    row["path"] = "pre-copy" if precopy else "full restore"
                    rows.append(row)
                    continue
            delta = row["freeze_bytes"] or 0
            row["bound"] = delta / bandwidth[0] + delta / bandwidth[1] + row["switch"]
            rows.append(row)
            print(row, flush=True)
        if not args.no_dill:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    dill_rows.append(bench_size(size, Path(tmp)))
                except Exception as e:
                    print(f"{size} MB dill comparison: {e!r}", flush=True)
                    continue
            print(dill_rows[-1], flush=True)
    return rows, dill_rows, bandwidth


def _s(v) -> str:
    return f"{v:.2f} s" if isinstance(v, (int, float)) else "-"


def _mb(v) -> str:
    return f"{v / MB:.1f} MB" if isinstance(v, (int, float)) else "-"


def kernel_table(rows: list[dict]) -> str:
    lines = [
        "| kernel state | case | path | hold | notice → kernel answers | freeze wrote "
        "| restore loaded | bound | hold / bound | intact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['size']} MB | ({r['case']}) | {r['path']} | failed: "
                f"{r['error'][:120]} | | | | | | |"
            )
            continue
        ratio = f"{r['hold'] / r['bound']:.1f}x" if r["hold"] and r["bound"] else "-"
        case = "(a) no cell" if r["case"] == "a" else "(b) 10 MB changed"
        path = r["path"] + (f" ({r['restore_mode']})" if r["restore_mode"] else "")
        lines.append(
            f"| {r['size']} MB | {case} | {path} | {_s(r['hold'])} | {_s(r['answered'])} "
            f"| {_mb(r['freeze_bytes'])} | {_mb(r['loaded'])} | {_s(r['bound'])} | {ratio} "
            f"| {'yes' if r['intact'] else 'NO'} |"
        )
    return "\n".join(lines)


def steps_table(rows: list[dict]) -> str:
    """Each run's hold, step by step (the move's history entry: `hold_steps`), in ms."""
    steps: list[str] = []
    for r in rows:
        steps += [k for k in r.get("steps") or {} if k not in steps]
    lines = [
        "| kernel state | case | path | " + " | ".join(steps) + " | hold |",
        "|---|---|---|" + "---|" * (len(steps) + 1),
    ]
    for r in rows:
        if "error" in r:
            continue
        case = "(a)" if r["case"] == "a" else "(b)"
        cells = [f"{1000 * r['steps'][k]:.0f}" if k in r["steps"] else "-" for k in steps]
        lines.append(
            f"| {r['size']} MB | {case} | {r['path']} | "
            + " | ".join(cells)
            + f" | {1000 * r['hold']:.0f} |"
        )
    return "\n".join(lines)


def _spread(times: list[float]) -> str:
    return f"{_s(statistics.median(times))} ({min(times):.2f}-{max(times):.2f})"


def dill_table(rows: list[dict]) -> str:
    lines = [
        "| namespace | our snapshot (full) | dill.dump_module | ratio "
        "| our restore (median, range) | dill.load_module (median, range) | ratio "
        "| incremental (1 int changed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {_s(r['snapshot'])} | {_s(r['dump_module'])} "
            f"| {r['snapshot'] / r['dump_module']:.2f}x | {_spread(r['restore_all'])} "
            f"| {_spread(r['load_all'])} | {r['restore'] / r['load_module']:.2f}x "
            f"| {r['incremental']:.3f} s, {r['incremental_written'] / 1e3:.1f} kB written |"
        )
    return "\n".join(lines)


def _subsections(results: str) -> dict[str, str]:
    """The "### " subsections of this benchmark's section in results.md, by heading."""
    start = results.find(SECTION + "\n")
    if start == -1:
        return {}
    end = results.find("\n## ", start + len(SECTION))
    body = results[start + len(SECTION) : end if end != -1 else None]
    out = {}
    for chunk in body.split("\n### ")[1:]:
        heading = "### " + chunk.split("\n", 1)[0]
        out[heading] = ("### " + chunk).strip()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,4000", help="kernel state, MB")
    parser.add_argument("--cases", default="a,b", help="a: no cell; b: 10 MB changed")
    parser.add_argument("--part", default="kernel,spare")
    parser.add_argument("--no-full", action="store_true", help="skip the full-restore path")
    parser.add_argument("--no-dill", action="store_true", help="skip the dill comparison")
    parser.add_argument("--boot", type=float, default=40, help="simulated boot, s (spare)")
    parser.add_argument("--output", help="write the section here instead of results.md")
    args = parser.parse_args()
    started = time.time()
    parts = []
    ok = True
    if "kernel" in args.part:
        rows, dill_rows, (wbw, rbw) = kernel_rows(args)
        ok = all(r.get("intact") for r in rows)
        parts.append(
            "### Kernel state: pre-copy and delta\n\n"
            f"Synced home, notice {NOTICE} s, one kernel; state N MB = an array of N - 10 MB "
            "plus a 10 MB array `w`; case (b) runs `w += 1` right after the pre-copy "
            "(on the full-restore path: right after the notice). *Freeze wrote*: bytes the "
            "freeze's snapshot wrote (the delta); *restore loaded*: bytes the new kernel "
            "loaded in the hold. *Bound* = delta / write bandwidth + delta / read bandwidth "
            f"(measured here: {wbw / MB:.0f} MB/s and {rbw / MB:.0f} MB/s through the page "
            "cache) + the switch (median round trip of a trivial cell on the moved kernel).\n\n"
            + kernel_table(rows)
        )
        parts.append(
            "### Where the hold goes\n\n"
            "The same runs, the hold's steps in milliseconds as the move timed them (its "
            "history entry's `hold_steps`; hub to agent and server calls, each a round trip "
            "on loopback). *Hold* is from the proxy's log (`Holding` to `Released`).\n\n"
            + steps_table(rows)
        )
        if dill_rows:
            parts.append(
                "### Full snapshots against dill\n\n"
                "Plain kernels (benchmarks/kernel_state.py's namespace: 4 arrays and 6,000 "
                "small objects); ours and dill's alike: wall clock at the client of one execute "
                "in a fresh kernel (imports included).\n\n" + dill_table(dill_rows)
            )
    if "spare" in args.part:
        try:
            import freeze_spare  # WARM's part of issue 14's benchmark
        except ImportError:
            parts.append("### Spare hosts\n\n(benchmarks/freeze_spare.py is not there yet)")
        else:
            parts.append(freeze_spare.table(asyncio.run(freeze_spare.spare_rows(args))))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run = (
        f"Run {stamp} by `benchmarks/freeze.py --part {args.part}` "
        f"({(time.time() - started) / 60:.0f} min); Python {platform.python_version()}, "
        f"{os.cpu_count()} cores."
    )
    # a part not run this time keeps its subsection from the last run
    mine = {}
    for part in parts:
        heading, body = part.split("\n", 1)
        mine[heading] = f"{heading}\n\n{run}\n{body}"
    kept = {h: t for h, t in _subsections(RESULTS.read_text()).items() if h not in mine}
    section = f"{SECTION}\n\n" + "\n\n".join([*mine.values(), *kept.values()]).strip() + "\n"
    print(section)
    if args.output:
        Path(args.output).write_text(section)
    else:
        replace_section(section)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
