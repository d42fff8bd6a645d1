"""Warm hosts: notice -> first 200 from the new host with 0 and 1 spare hosts, 40 s boots.

Each hub is a real JupyterHub (real CHP, MigratingProxy, local hosts 127.0.0.N,
`home_mode = "synced"`) whose local hosts take `--boot` seconds (40: a spot instance) to
boot before their agent starts (`LocalHostProvider.boot_delay`). `alice` is spawned, then
her host is reclaimed with a 120 s notice (AWS's) and, once she has moved, with a 5 s notice,
while a client GETs /user/alice/api/status every 100 ms through the proxy. Once with
`spare_hosts = {"small": 0}`, once with 1 (before each reclaim the spare host is ready).

Measured per reclaim: notice -> first 200 from the new server; the hold (hub log `Holding`
-> `Released`); the longest time between two 200s the client saw; failed requests; whether
the new host was a spare one. benchmarks/freeze.py calls `spare_rows` and `table` for its
"### Spare hosts" table; alone, this writes the section "## Warm hosts" of results.md.

    .venv/bin/python benchmarks/freeze_spare.py [--boot 40] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from move import USER, Poller, _log_lines  # noqa: E402
from realhub import RealHub  # noqa: E402
from results import replace_section  # noqa: E402

SECTION = "## Warm hosts"
NOTICES = (120.0, 5.0)


@dataclass
class Row:
    spares: int
    notice: float
    to_new_200: float | None = None
    hold: float | None = None
    longest_wait: float | None = None
    requests: int = 0
    failed: int = 0
    spare_taken: bool = False
    early_freeze: bool = False
    margin: float | None = None  # final_checkpoint_margin, if not the default (3 s)
    #: how the new server started: "standby" (a spare's process started ahead, the new
    #: server first on a short notice: the defaults) or "as before" (neither)
    start: str = "standby"
    notes: list[str] = field(default_factory=list)


def _spare_ready(hub: RealHub, since: float) -> bool:
    return any(" spare host " in line and " ready" in line for _, line in _log_lines(hub, since))


async def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(what)


async def reclaim(hub: RealHub, token: str, spares: int, notice: float, log) -> Row:
    row = Row(spares, notice)
    before = await hub.server_info(USER)
    old_host = before["host_id"]
    poller = Poller(f"{hub.url}/user/{USER}/api/status", token)
    task = asyncio.create_task(poller.run())
    try:
        await _wait(
            lambda: _true(any(a.status == 200 for a in poller.answers)), 30, "no 200 before"
        )
        old_started = next(a.started for a in poller.answers if a.status == 200)
        t0 = time.time()
        status, data = await hub.migrate_api(
            "POST", f"/hosts/{old_host}/reclaim", body={"notice_seconds": notice}
        )
        if status != 202:
            raise RuntimeError(f"reclaim answered {status}: {data}")

        async def moved() -> bool:
            return any(a.status == 200 and a.started != old_started for a in poller.answers)

        await _wait(moved, notice + 180, f"{USER} did not move:\n{hub.tail(40)}")
        await asyncio.sleep(1.5)
    finally:
        poller.stop()
        await task
    answers = poller.answers
    row.requests = len(answers)
    row.failed = sum(1 for a in answers if a.status != 200)
    new = [a.done for a in answers if a.status == 200 and a.started != old_started]
    row.to_new_200 = min(new) - t0
    ok = sorted(a.done for a in answers if a.status == 200)
    row.longest_wait = max((b - a for a, b in zip(ok, ok[1:], strict=False)), default=None)
    lines = _log_lines(hub, t0)
    spec = f"/user/{USER}/"
    held = next((ts for ts, line in lines if f"Holding {spec} " in line), None)
    released = next(
        (ts for ts, line in lines if f"Released {spec} " in line and held and ts >= held), None
    )
    if held is not None and released is not None:
        row.hold = released - held
    row.spare_taken = any("took spare host" in line for _, line in lines)
    info = await hub.server_info(USER)
    events = [e for e in info.get("events", []) if e.get("time", 0) >= t0 - 1]
    row.early_freeze = any("Deadline near" in e["message"] for e in events)
    log(f"  {spares} spare, notice {notice:g} s: {row}")
    return row


async def _true(value: bool) -> bool:
    return value


async def run_hub(
    spares: int,
    boot: float,
    workdir: Path,
    log,
    notices: tuple[float, ...] = NOTICES,
    margin: float | None = None,
    start: str = "standby",
) -> list[Row]:
    # "as before": no standby process on spares, pre-copies first whatever the notice
    before = ["c.LocalHostProvider.spare_standby_modules = []"]
    before.append("c.MigratingController.short_notice_seconds = 0")
    extra = "\n".join(
        [
            *([f"c.MigratingController.final_checkpoint_margin = {margin}"] if margin else []),
            *(before if start == "as before" else []),
            'c.MigratingSpawner.home_mode = "synced"',
            "c.MigratingSpawner.precopy_interval = 5",
            f"c.LocalHostProvider.boot_delay = {boot}",
            f'c.LocalHostProvider.spare_hosts = {{"small": {spares}}}',
            "c.Spawner.start_timeout = 300",
        ]
    )
    workdir.mkdir(parents=True)
    hub = RealHub(workdir, extra)
    rows = []
    try:
        hub.start()
        await hub.wait_up()
        started = time.time()
        if spares:
            await _wait(lambda: _true(_spare_ready(hub, started)), boot + 60, "no spare host")
        since = time.time()  # the spawn takes that spare; its replacement is ready after this
        await hub.spawn(USER)
        token = await hub.user_token(USER)
        for notice in notices:
            if spares:
                await _wait(
                    lambda since=since: _true(_spare_ready(hub, since)),
                    boot + 60,
                    "no spare host again",
                )
            since = time.time()
            rows.append(await reclaim(hub, token, spares, notice, log))
            rows[-1].margin = margin
            rows[-1].start = start
    finally:
        hub.stop()
        hub.kill_proxy()
        hub.release_all_hosts()
    return rows


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def table(rows: list[dict]) -> str:
    """The "### Spare hosts" table of `spare_rows`' rows, with what it says and costs."""
    boot = rows[0]["boot"] if rows else 40.0
    lines = [
        "### Spare hosts",
        "",
        f"`benchmarks/freeze_spare.py`: real JupyterHub and CHP, MigratingProxy, local hosts "
        f"that boot in {boot:g} s (`LocalHostProvider.boot_delay`, as a spot instance boots), "
        '`home_mode = "synced"`; `alice` is reclaimed with a 120 s notice, then (moved) with a '
        "5 s notice, while a client GETs /user/alice/api/status every 100 ms through the "
        "proxy; one hub per spare count (`spare_hosts`), one run per row. *Freeze margin*: "
        "`final_checkpoint_margin`, how long before the deadline the old server is frozen "
        "whether or not the new one is ready. *New server*: *standby* is the defaults (each "
        "spare keeps a server process started ahead, `spare_standby_modules`; a move with "
        "less than `short_notice_seconds`, 10 s, before its freeze starts the new server "
        "before any pre-copy); *as before* turns both off (no standby, pre-copies first), in "
        "the same run.",
        "",
        "| spare hosts | new server | notice | freeze margin | notice → 200 from new host "
        "| hold | longest client wait | spare taken | frozen before the new server was ready "
        "| requests | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['spares']} | {r.get('start', 'standby') if r['spares'] else '–'} "
            f"| {r['notice']:g} s | {r['margin'] or 3:g} s "
            f"| {_s(r['to_new_200'])} | {_s(r['hold'])} | {_s(r['longest_wait'])} "
            f"| {'yes' if r['spare_taken'] else 'no'} | {'yes' if r['early_freeze'] else 'no'} "
            f"| {r['requests']} | {r['failed']} |"
        )
    lines += [
        "",
        "Cost next to the saving: a spare host is a host running all the time, idle: one "
        "host-hour per hour for each instance type kept (`spare_hosts`), at that type's "
        "price (on ec2 its spot or on-demand hourly price; `host.meta.hourly_price` where "
        "the provider knows it). What it saves is the boot on every move and every start "
        f"(here {boot:g} s each), and with a short notice the difference between the hold "
        "above and a server that was down for the boot.",
    ]
    return "\n".join(lines) + "\n"


async def spare_rows(args: Any = None) -> list[dict]:
    """Every row (a dict per reclaim): 0 and 1 spare hosts, 120 s and 5 s notices, and the
    5 s notice again with the freeze margin at 1 s and as before. `--short` runs only the
    5 s notices with a spare (the defaults, then as before)."""
    boot = float(getattr(args, "boot", 40.0) or 40.0)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="spare-bench-") as tmp:
        if getattr(args, "short", False):
            for start in ("standby", "as before"):
                print(f"spare hosts: 1, {start}, 5 s notice", flush=True)
                where = Path(tmp) / f"hub-{start.replace(' ', '-')}"
                rows += await run_hub(1, boot, where, print, (5.0,), start=start)
            return [{**dataclasses.asdict(r), "boot": boot} for r in rows]
        for spares in (0, 1):
            print(f"spare hosts: {spares}", flush=True)
            rows += await run_hub(spares, boot, Path(tmp) / f"hub{spares}", print)
        # the same with the freeze sized to what it needs here, not the default 3 s
        print("spare hosts: 1, final_checkpoint_margin = 1", flush=True)
        rows += await run_hub(1, boot, Path(tmp) / "hub1m", print, (5.0,), margin=1.0)
        # the baseline: the 5 s notice without a standby process, pre-copies first
        print("spare hosts: 1, as before (no standby, no short-notice start)", flush=True)
        rows += await run_hub(1, boot, Path(tmp) / "hub1b", print, (5.0,), start="as before")
    return [{**dataclasses.asdict(r), "boot": boot} for r in rows]


async def standalone(args) -> str:
    began = time.monotonic()
    # CPU-bound loops beside the run, as on a machine shared with other work
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        rows = await spare_rows(args)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (time.monotonic() - began) / 60
    beside = f", beside {args.load} busy loops" if args.load else ""
    head = (
        f"{SECTION}\n\nRun {when} ({minutes:.1f} min{beside}); nproc 2, Python "
        f"{platform.python_version()}.\n\n"
    )
    return head + table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boot", type=float, default=40.0, help="seconds a new host boots")
    ap.add_argument("--output", type=Path, default=None, help="write here, not results.md")
    ap.add_argument("--load", type=int, default=0, help="busy loops running beside it")
    ap.add_argument("--short", action="store_true", help="only the 5 s notices with a spare")
    args = ap.parse_args()
    text = asyncio.run(standalone(args))
    print(text)
    if args.output:
        args.output.write_text(text)
    else:
        replace_section(text)


if __name__ == "__main__":
    main()
