"""Server start on a loaded machine: what a move's ready-wait must allow for.

A move starts a jupyter-server on the new host and waits for it
(`MigratingController.move_ready_timeout`). The new-user walk saw that wait give up at 30 s
(JupyterHub's `Spawner.http_timeout`) with the load average at 10 on 2 cores. This script
starts the same `jupyter server` as benchmarks/server_start.py N times as the machine is,
then N times beside B busy-looping processes (B + the rest of the machine's load), and
reports the time from exec to the first answer of /api.

    .venv/bin/python benchmarks/server_start_load.py [--runs 3] [--burners 8]

It writes the section "## Server start under load" of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile

from results import replace_section
from server_start import start_once


def burn() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burners", type=int, default=8)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    loads: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        name = "as the machine is"
        rows[name] = [start_once(env, tmp, timeout=300, kill=True)[0] for _ in range(args.runs)]
        loads[name] = os.getloadavg()[0]
        burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
        for p in burners:
            p.start()
        try:
            name = f"beside {args.burners} busy loops"
            rows[name] = [start_once(env, tmp, timeout=300, kill=True)[0] for _ in range(args.runs)]
            loads[name] = os.getloadavg()[0]
        finally:
            for p in burners:
                p.terminate()
                p.join()
    lines = [
        "## Server start under load",
        "",
        f"`jupyter server` with this venv's extensions on {os.cpu_count()} cores, {args.runs}",
        "starts each: time from exec to the first answer of /api (what a move's ready-wait",
        "waits for); the 1-minute load average at the end of each set.",
        "",
        "| machine | median (s) | max (s) | load average |",
        "|---|---|---|---|",
    ]
    for name, runs in rows.items():
        lines.append(
            f"| {name} | {statistics.median(runs):.1f} | {max(runs):.1f} | {loads[name]:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(text)


if __name__ == "__main__":
    main()
