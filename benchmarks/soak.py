"""Long-session soak: the long-session test of issue 8, with more steps.

For each home mode, a real hub (tests/realhub.py) and one user whose notebook kernel, R
kernel and session-less kernel go through N seeded steps (moves of all three kinds,
stop/start cycles, hub restarts), with work between the steps and cells sent during them,
checked after every step by tests/session_oracle.py. Prints a table (steps, moves,
failures, seconds) and the failures, and writes the section "## Long-session soak" of
benchmarks/results.md.

    .venv/bin/python benchmarks/soak.py [--steps 20] [--modes synced,shared] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "integration")]

from realhub import RealHub  # noqa: E402
from results import replace_section  # noqa: E402
from session_oracle import LongSession, Unavailable, hub_config, plan  # noqa: E402

SECTION = "## Long-session soak"


def split(steps: int) -> tuple[int, int, int]:
    """Moves, stop/starts and hub restarts for `steps` steps, in the test's proportions
    (5 : 2 : 1), at least one of each and every kind of move."""
    restarts = max(1, steps // 8)
    stops = max(1, steps // 4)
    return max(3, steps - stops - restarts), stops, restarts


async def one_mode(home_mode: str, seed: int, steps: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        hub = RealHub(Path(tmp), hub_config(home_mode))
        hub.start()
        started = time.monotonic()
        try:
            await hub.wait_up()
            session = LongSession(hub, seed)
            order = plan(session.rng, *split(steps))
            try:
                result = await asyncio.wait_for(session.run(order), timeout)
            except asyncio.TimeoutError:
                result = {
                    "steps": "?",
                    "planned": len(order),
                    "moves": session.moves,
                    "failures": session.failures + [f"the soak did not end in {timeout:.0f} s"],
                    "seconds": time.monotonic() - started,
                }
            return {"mode": home_mode, "seed": seed, "order": order, **result}
        finally:
            hub.stop()
            hub.kill_proxy()
            hub.release_all_hosts()


def table(rows: list[dict]) -> str:
    lines = [
        "| home mode | seed | steps done / planned | moves | failures | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['seed']} | {r['steps']} / {r['planned']} | {r['moves']} "
            f"| {len(r['failures'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def details(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append(f"- {r['mode']}, order: {', '.join(r['order'])}")
        out.extend(f"  - {line}" for line in r["failures"])
    return "\n".join(out)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per home mode")
    parser.add_argument("--modes", default="synced,shared", help="home modes, comma separated")
    parser.add_argument("--seed", type=int, default=1, help="the seed of the step order")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per home mode")
    parser.add_argument("--output", help="write the section to this file instead")
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        try:
            rows.append(await one_mode(mode, args.seed, args.steps, args.timeout))
        except Unavailable as e:
            print(f"{mode}: cannot run here: {e}")
            return 2
        print(table(rows[-1:]), flush=True)
    text = table(rows)
    print(text)
    print(details(rows))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    git = ["git", "-C", str(HERE.parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True
    )
    code = commit.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")
    section = (
        f"{SECTION}\n\nRun {stamp} by `benchmarks/soak.py --steps {args.steps} --seed "
        f"{args.seed}` on {code}; Python {platform.python_version()}, 2 cores. One user, "
        "a notebook kernel, an R kernel and a kernel with no session; the steps are moves (reclaim "
        "with 15 s notice, `migrate`, reclaim with 0 s notice), stop/start and hub restarts "
        "in a seeded order, with work between the steps and cells sent during them; after "
        "every step the variables, files, working directories, execution counts and "
        "answers to every cell are checked against an oracle (tests/session_oracle.py); a "
        "failure is a difference the server did not tell the user about.\n\n"
        f"{text}\n\nFailures:\n\n{details(rows)}\n"
    )
    if args.output:
        replace_section(section, Path(args.output))
    else:
        replace_section(section)
    return 0 if all(not r["failures"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
