"""Batch jobs across reclaims: a 20-cell notebook, 0, 1 and 3 reclaims at random cells.

Three ways to get a complete output notebook:

- ours: `MigratingScheduler` + `ResumableExecutionManager`; a reclaim is a 2 s notice (the
  job pauses at the next cell boundary or its running cell is interrupted at the deadline),
  then the job's process and kernel are killed and the job resumed, as after a move (the
  move of the server itself, ~5 s, is in "Move downtime" and not counted here);
- plain jupyter-scheduler (`DefaultExecutionManager`): a reclaim loses the job; it is
  created again by hand and runs from the start;
- papermill: the run is killed and started again from scratch.

Real job processes and kernels on this machine, no hub. Cells of 5 s as the issue asks
(`--cell-seconds`; about 20 minutes in all; 0.5 for a quick look); the re-done work is
counted in cells. Prints a table and writes the section "Batch jobs across reclaims" of
benchmarks/results.md.

    .venv/bin/python benchmarks/batch.py [--cells 20] [--cell-seconds 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import psutil
from jupyter_scheduler.environments import CondaEnvironmentManager
from jupyter_scheduler.executors import DefaultExecutionManager
from jupyter_scheduler.models import CreateJob
from jupyter_scheduler.orm import create_tables

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from jobnotebook import counter_notebook, ran  # noqa: E402
from results import replace_section  # noqa: E402

from migrating_spawner.batch.scheduler import MigratingScheduler  # noqa: E402

SECTION = "## Batch jobs across reclaims"
NOTICE = 2.0


def notebook(counter: Path, cells: int, seconds: float) -> nbformat.NotebookNode:
    bodies = [f"import time; time.sleep({seconds})\nv{i} = {i}" for i in range(1, cells + 1)]
    return counter_notebook(bodies, counter)


def kill_tree(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    procs = [*proc.children(recursive=True), proc]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


async def wait_cell(counter: Path, cell: int) -> None:
    while cell not in ran(counter):
        await asyncio.sleep(0.02)


def new_scheduler(work: Path, manager) -> MigratingScheduler:
    root = work / "home"
    root.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{work}/scheduler.sqlite"
    create_tables(db_url)
    s = MigratingScheduler(
        root_dir=str(root), environments_manager=CondaEnvironmentManager(), db_url=db_url
    )
    s.staging_path = str(work / "staging")
    s.execution_manager_class = manager
    s.pause_poll_interval = 0.05
    return s


def submit(s, nb, name: str) -> str:
    path = Path(s.root_dir) / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    model = CreateJob(
        input_uri=path.name, runtime_environment_name="python", name=name, output_formats=[]
    )
    return s.create_job(model)


async def wait_done(s, job_id: str) -> None:
    while s.get_job(job_id, job_files=False).status not in ("COMPLETED", "FAILED"):
        await asyncio.sleep(0.05)
    assert s.get_job(job_id, job_files=False).status == "COMPLETED"


async def ours(work: Path, nb_of, cells: list[int]) -> tuple[float, int]:
    s = new_scheduler(work, MigratingScheduler.execution_manager_class.default_value)
    counter = work / "counter.txt"
    t0 = time.monotonic()
    job_id = submit(s, nb_of(counter), "ours")
    for cell in cells:
        await wait_cell(counter, cell)
        await s.pause_running(time.time() + NOTICE)
        run = s.job_folder(job_id).run() or {}
        kill_tree(run.get("pid") or s.job_pid(job_id))
        s.resume_orphans(lambda job: "a reclaim", here_only=True)
    await wait_done(s, job_id)
    return time.monotonic() - t0, len(ran(counter))


async def plain_scheduler(work: Path, nb_of, cells: list[int]) -> tuple[float, int]:
    s = new_scheduler(work, DefaultExecutionManager)
    counter = work / "counter.txt"
    t0 = time.monotonic()
    job_id = submit(s, nb_of(counter), "plain")
    for n, cell in enumerate(cells):
        await wait_cell(counter, cell)
        kill_tree(s.job_pid(job_id))  # the job stays IN_PROGRESS: created again by hand
        job_id = submit(s, nb_of(counter), f"plain{n}")
    await wait_done(s, job_id)
    return time.monotonic() - t0, len(ran(counter))


async def papermill(work: Path, nb_of, cells: list[int]) -> tuple[float, int]:
    counter = work / "counter.txt"
    src, out = work / "in.ipynb", work / "out.ipynb"
    nbformat.write(nb_of(counter), str(src))
    cmd = [sys.executable, "-m", "papermill", str(src), str(out), "--cwd", str(work)]
    t0 = time.monotonic()
    for cell in cells:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_cell(counter, cell)
        kill_tree(proc.pid)
        proc.wait()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.to_thread(proc.wait)
    assert proc.returncode == 0
    return time.monotonic() - t0, len(ran(counter))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--cell-seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    def nb_of(counter):
        return notebook(counter, args.cells, args.cell_seconds)

    rows = []
    for k in (0, 1, 3):
        cells = sorted(rng.sample(range(2, args.cells), k))
        row = {"reclaims": k, "cells": cells}
        for name, fn in (("ours", ours), ("plain", plain_scheduler), ("papermill", papermill)):
            with tempfile.TemporaryDirectory() as d:
                seconds, ran = await fn(Path(d), nb_of, cells)
            row[name] = (seconds, ran - args.cells)
            print(k, name, f"{seconds:.1f} s", f"{ran - args.cells} cells re-run", flush=True)
        rows.append(row)

    lines = [
        SECTION,
        "",
        f"`benchmarks/batch.py`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores. "
        f"{args.cells} cells of {args.cell_seconds:g} s, "
        f"reclaims at random cells (seed {args.seed}) with a "
        f"{NOTICE:.0f} s notice for ours; time to a complete output notebook, and cells run "
        "more than once. Ours resumes the job's process and kernel on this machine (the "
        "server's own move, a few seconds, comes on top); plain jupyter-scheduler and "
        "papermill lose the run at a reclaim and start again from the first cell.",
        "",
        "| reclaims (at cells) | ours | plain jupyter-scheduler, re-created "
        "| papermill, from scratch |",
        "|---|---|---|---|",
    ]
    for r in rows:
        at = ", ".join(map(str, r["cells"])) or "-"
        cols = [f"{r[n][0]:.1f} s, {r[n][1]} re-run" for n in ("ours", "plain", "papermill")]
        lines.append(f"| {r['reclaims']} ({at}) | " + " | ".join(cols) + " |")
    replace_section("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
