"""Move downtime with synced homes: hold time, time to the new host, failed requests.

Each case starts a real hub (real CHP, local hosts 127.0.0.N) in a temp folder, spawns
`alice` with `home_mode = "synced"`, writes N MB of random bytes straight into her home on
the host's disk, waits until the background pre-copy has taken them, then reclaims her host
(POST /services/migrate/api/hosts/<id>/reclaim) while a client polls
/user/alice/api/status every 100 ms through the proxy with a user token.

Measured per case:

- hold: "Holding /user/alice/" to "Released /user/alice/ to ..." in the hub log
  (MigratingProxy only; plain CHP has no hold);
- longest client wait: the longest time between two consecutive 200 answers the client saw;
- notice -> new 200: from sending the reclaim POST to the first 200 answered by the new
  server (its /api/status "started" differs from the old server's);
- notice -> API: from the reclaim POST to the control API reporting the new host_id;
- move total: the spawner's "Moved to ... in X s" event (move start to old host released);
- final delta: bytes read by the held "move final" checkpoint;
- requests and failures (non-200 answers or exceptions) seen by the client.

Usage::

    .venv/bin/python benchmarks/move.py                    # 10 MB, 100 MB, 1 GB; writes results.md
    .venv/bin/python benchmarks/move.py --sizes 10,100     # fewer sizes
    .venv/bin/python benchmarks/move.py --quick            # 10 MB smoke test, results.md untouched
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from realhub import RealHub  # noqa: E402
from results import replace_section  # noqa: E402

USER = "alice"
SECTION = "## Move downtime (synced homes)"
FILE_MB = 10  # the home is written as files of (at most) this many MB
POLL_EVERY = 0.1

_LOG_TS = re.compile(r"\[(\w) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
_CKPT = re.compile(
    r"checkpoint \S+ of \S+ \((?P<reason>[^)]*)\): (?P<files>\d+) files, "
    r"(?P<read>\d+) bytes read, (?P<sent>\d+) bytes sent"
)
_MOVED = re.compile(r"Moved to (\S+) .* in ([\d.]+) s")


@dataclass
class Case:
    size_mb: int
    notice: float
    proxy: str  # "migrating" or "chp"

    @property
    def label(self) -> str:
        proxy = "MigratingProxy" if self.proxy == "migrating" else "plain CHP"
        return f"{_size(self.size_mb)} / notice {self.notice:g} s / {proxy}"


@dataclass
class Answer:
    sent: float  # time.time()
    done: float
    status: int | None  # None: exception
    started: str | None = None
    error: str | None = None


@dataclass
class Result:
    case: Case
    hold: float | None = None
    longest_wait: float | None = None
    longest_request: float | None = None
    to_new_200: float | None = None
    to_api: float | None = None
    move_total: float | None = None
    final_read: int | None = None
    final_sent: int | None = None
    requests: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    freeze_early: bool = False
    files_ok: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _size(mb: int) -> str:
    return f"{mb // 1000} GB" if mb >= 1000 and mb % 1000 == 0 else f"{mb} MB"


def _secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _mb(value: int | None) -> str:
    return "–" if value is None else f"{value / 1e6:.1f} MB"


# -- the polling client -------------------------------------------------------------------


class Poller:
    """GET /user/alice/api/status every 100 ms through the proxy, recording every answer."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as s:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    async with s.get(
                        self.url, headers=headers, timeout=aiohttp.ClientTimeout(70)
                    ) as resp:
                        body = await resp.read()
                        started = None
                        if resp.status == 200:
                            try:
                                started = (await resp.json(content_type=None)).get("started")
                            except ValueError:
                                started = body[:40].decode(errors="replace")
                        self.answers.append(Answer(sent, time.time(), resp.status, started))
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    self.answers.append(Answer(sent, time.time(), None, error=type(e).__name__))
                await asyncio.sleep(POLL_EVERY)

    def stop(self) -> None:
        self._stop.set()


# -- hub log ---------------------------------------------------------------------------------


def _log_lines(hub: RealHub, since: float = 0.0) -> list[tuple[float, str]]:
    """(epoch time, line) of every hub log line stamped at or after `since`."""
    out = []
    try:
        text = hub.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        m = _LOG_TS.search(line)
        if not m:
            continue
        ts = dt.datetime.strptime(m.group(2), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        if ts >= since - 0.002:
            out.append((ts, line))
    return out


def _checkpoints(hub: RealHub, since: float, reason: str) -> list[dict[str, int]]:
    found = []
    for _, line in _log_lines(hub, since):
        m = _CKPT.search(line)
        if m and m.group("reason") == reason:
            found.append({k: int(m.group(k)) for k in ("files", "read", "sent")})
    return found


async def wait_precopied(hub: RealHub, since: float, timeout: float = 240) -> None:
    """Wait until pre-copies that began after `since` have read every written file.

    The first pre-copy after the write reads the new files; files modified within 2 s of
    being read are re-read by the next one, so wait for a later pre-copy that reads
    (almost) nothing: the move's own pre-copy and final checkpoint then start from there.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _checkpoints(hub, since, "pre-copy")
        if len(done) >= 2 and done[-1]["read"] < 1_000_000:
            return
        if len(done) >= 4:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no settled pre-copy after {timeout} s:\n{hub.tail(30)}")


# -- one case ----------------------------------------------------------------------------------


def write_home(home: Path, size_mb: int) -> None:
    folder = home / "bench-data"
    folder.mkdir(parents=True, exist_ok=True)
    left = size_mb
    i = 0
    while left > 0:
        mb = min(FILE_MB, left)
        with open(folder / f"blob{i:04d}.bin", "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1_000_000))
        left -= mb
        i += 1


def home_bytes(home: Path) -> int:
    folder = home / "bench-data"
    if not folder.is_dir():
        return -1
    return sum(p.stat().st_size for p in folder.iterdir())


async def run_case(case: Case, workdir: Path, log=print) -> Result:
    result = Result(case)
    extra = "\n".join(
        [
            'c.MigratingSpawner.home_mode = "synced"',
            "c.MigratingSpawner.precopy_interval = 5",
            *(
                ['c.JupyterHub.proxy_class = "configurable-http-proxy"']
                if case.proxy == "chp"
                else []
            ),
        ]
    )
    workdir.mkdir(parents=True)
    hub = RealHub(workdir, extra)
    poller: Poller | None = None
    task: asyncio.Task | None = None
    try:
        t = time.time()
        hub.start()
        await hub.wait_up()
        log(f"  hub up in {time.time() - t:.1f} s")
        await hub.spawn(USER)
        token = await hub.user_token(USER)
        before = await hub.server_info(USER)
        old_host = before["host_id"]
        home = workdir / "hosts" / "disks" / old_host / "home" / USER
        log(f"  spawned on {old_host}; writing {_size(case.size_mb)} into {home}")
        t = time.time()
        await asyncio.to_thread(write_home, home, case.size_mb)
        written = time.time()
        log(f"  written in {written - t:.1f} s; waiting for the pre-copy")
        await wait_precopied(hub, written)
        log(
            f"  pre-copied after {time.time() - written:.1f} s; "
            f"reclaiming with {case.notice:g} s notice"
        )

        poller = Poller(f"{hub.url}/user/{USER}/api/status", token)
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1.0)
        old_started = next((a.started for a in poller.answers if a.status == 200), None)
        if old_started is None:
            raise RuntimeError(f"the client got no 200 before the notice: {poller.answers}")

        t0 = time.time()
        status, data = await hub.migrate_api(
            "POST", f"/hosts/{old_host}/reclaim", body={"notice_seconds": case.notice}
        )
        if status != 202:
            raise RuntimeError(f"reclaim answered {status}: {data}")

        # the control API reports the new host
        limit = time.monotonic() + case.notice + 120
        info = before
        while time.monotonic() < limit:
            info = await hub.server_info(USER)
            if info["host_id"] != old_host and info["state"] == "Running":
                result.to_api = time.time() - t0
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"{USER} did not move: {info}\n{hub.tail(40)}")

        # the client gets a 200 from the new server
        limit = time.monotonic() + 60
        while time.monotonic() < limit:
            if any(a.status == 200 and a.started != old_started for a in poller.answers):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        poller.stop()
        await task
        task = None

        answers = [a for a in poller.answers]
        result.requests = len(answers)
        bad = [a for a in answers if a.status != 200]
        result.failed = len(bad)
        for a in bad:
            key = str(a.status) if a.status is not None else (a.error or "error")
            result.failures[key] = result.failures.get(key, 0) + 1
        new_200 = [a for a in answers if a.status == 200 and a.started != old_started]
        if new_200:
            result.to_new_200 = min(a.done for a in new_200) - t0
        ok_times = sorted(a.done for a in answers if a.status == 200)
        gaps = [b - a for a, b in zip(ok_times, ok_times[1:], strict=False)]
        result.longest_wait = max(gaps) if gaps else None
        result.longest_request = max(a.done - a.sent for a in answers) if answers else None

        # the hub's account of it
        info = await hub.server_info(USER)
        events = [e for e in info.get("events", []) if e.get("time", 0) >= t0 - 1]
        result.freeze_early = any("Deadline near" in e["message"] for e in events)
        moved = [e["message"] for e in events if e["message"].startswith("Moved to")]
        if moved:
            m = _MOVED.search(moved[-1])
            if m:
                result.move_total = float(m.group(2))
            if ";" in moved[-1]:
                result.notes.append(moved[-1])
        else:
            result.notes.append("no 'Moved to' event")
        lines = _log_lines(hub, t0)
        spec = f"/user/{USER}/"
        held = next((ts for ts, line in lines if f"Holding {spec} " in line), None)
        released = next(
            (ts for ts, line in lines if f"Released {spec} " in line and held and ts >= held),
            None,
        )
        if held is not None and released is not None:
            result.hold = released - held
        elif case.proxy == "migrating":
            result.notes.append("no Holding/Released lines in the hub log")
        final = _checkpoints(hub, t0, "move final")
        if final:
            result.final_read = final[-1]["read"]
            result.final_sent = final[-1]["sent"]
        for _ts, line in lines:
            if " Held request " in line or ("Forwarding " in line and " failed" in line):
                result.notes.append(line.split("]", 1)[-1].strip())
        new_home = workdir / "hosts" / "disks" / info["host_id"] / "home" / USER
        got = home_bytes(new_home)
        result.files_ok = got == case.size_mb * 1_000_000
        if not result.files_ok:
            result.notes.append(f"new home holds {got} bytes of bench-data, not {case.size_mb} MB")
    except Exception as e:
        result.error = f"{type(e).__name__}: {e}"
        log(traceback.format_exc())
        log(hub.tail(60))
    finally:
        if task is not None and poller is not None:
            poller.stop()
            try:
                await asyncio.wait_for(task, 75)
            except Exception:
                task.cancel()
        hub.stop()
        hub.kill_proxy()
        hub.release_all_hosts()
    return result


# -- report ---------------------------------------------------------------------------------


HEADER = (
    "| home | notice | proxy | hold (proxy log) | longest client wait | notice → 200 from new host "
    "| notice → API new host | move total | final delta read | requests | failed |"
)


def table(results: list[Result]) -> str:
    rows = [HEADER, "|" + "---|" * 11]
    for r in results:
        c = r.case
        proxy = "MigratingProxy" if c.proxy == "migrating" else "plain CHP"
        if r.error:
            rows.append(
                f"| {_size(c.size_mb)} | {c.notice:g} s | {proxy} | error: {r.error[:80]} "
                "| | | | | | | |"
            )
            continue
        failed = str(r.failed)
        if r.failures:
            failed += " (" + ", ".join(f"{k}×{v}" for k, v in sorted(r.failures.items())) + ")"
        hold = _secs(r.hold) if c.proxy == "migrating" else "no hold"
        if r.freeze_early:
            hold += " ¹"
        rows.append(
            f"| {_size(c.size_mb)} | {c.notice:g} s | {proxy} | {hold} | {_secs(r.longest_wait)} "
            f"| {_secs(r.to_new_200)} | {_secs(r.to_api)} | {_secs(r.move_total)} "
            f"| {_mb(r.final_read)} | {r.requests} | {failed} |"
        )
    return "\n".join(rows)


def ratios(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        if r.case.proxy != "chp" or r.error:
            continue
        twin = next(
            (
                m
                for m in results
                if m.case.proxy == "migrating"
                and m.case.size_mb == r.case.size_mb
                and m.case.notice == r.case.notice
                and not m.error
            ),
            None,
        )
        if twin is None:
            continue
        if twin.failed:
            ratio = f"{r.failed / twin.failed:.1f}×"
        else:
            ratio = "∞ (MigratingProxy: 0)" if r.failed else "equal (both 0)"
        out.append(
            f"- {_size(r.case.size_mb)}, notice {r.case.notice:g} s: plain CHP {r.failed} failed "
            f"of {r.requests} requests, MigratingProxy {twin.failed} of {twin.requests}: {ratio}; "
            f"longest client wait {_secs(r.longest_wait)} vs {_secs(twin.longest_wait)}."
        )
    return out


def notes(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        for n in dict.fromkeys(r.notes):
            out.append(f"- {r.case.label}: {n}")
    return out


def section(results: list[Result], elapsed: float) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = ", " + line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [
        SECTION,
        "",
        f"Run {now} by `benchmarks/move.py` ({elapsed / 60:.1f} min); machine: nproc "
        f"{os.cpu_count()}{cpu}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}. Local hosts (127.0.0.N), real JupyterHub and CHP, "
        '`home_mode = "synced"`, `precopy_interval = 5`; the home is random bytes in '
        f"{FILE_MB} MB files, pre-copied before the notice; one run per row.",
        "",
        table(results),
        "",
        "- hold: hub log `Holding /user/alice/` → `Released /user/alice/ to …`. "
        "¹ the deadline came before the new server was ready, so the route was held "
        "(and the old server frozen) early: the hold includes starting the new server.",
        "- longest client wait: longest time between two 200 answers of the client "
        "(GET /user/alice/api/status every 100 ms, user token, through the proxy).",
        "- notice → 200 from new host: reclaim POST sent → first 200 whose `started` is the "
        "new server's; notice → API: → `GET /services/migrate/api/servers/alice/` reports the "
        "new host_id.",
        "- move total: the `Moved to … in X s` event (move start → old host released).",
        "- final delta read: bytes the held `move final` checkpoint read.",
    ]
    r = ratios(results)
    if r:
        parts += ["", "Failed requests, plain CHP vs MigratingProxy, same run:", "", *r]
    n = notes(results)
    if n:
        parts += ["", "Notes:", "", *n]
    return "\n".join(parts) + "\n"


# -- main ---------------------------------------------------------------------------------


def cases_for(sizes: list[int], quick: bool) -> list[Case]:
    if quick:
        s = sizes[0]
        return [Case(s, 20, "migrating"), Case(s, 20, "chp")]
    cases = [Case(s, 20, "migrating") for s in sizes]
    if 100 in sizes:
        cases.append(Case(100, 5, "migrating"))
    for s in (100, 10):
        if s in sizes:
            cases.append(Case(s, 20, "chp"))
    if 100 in sizes:
        cases.append(Case(100, 5, "chp"))
    return cases


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="home sizes in MB, e.g. 10,100,1000")
    parser.add_argument(
        "--quick", action="store_true", help="one size (10 MB), both proxies; no results.md"
    )
    parser.add_argument(
        "--output", default=None, help="results file (default benchmarks/results.md)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10" if args.quick else "10,100,1000")).split(",")]
    cases = cases_for(sizes, args.quick)
    output = Path(args.output) if args.output else (None if args.quick else HERE / "results.md")

    root = Path(tempfile.mkdtemp(prefix="bench-move-"))
    results = []
    began = time.monotonic()
    try:
        for i, case in enumerate(cases):
            print(f"[{i + 1}/{len(cases)}] {case.label}", flush=True)
            t = time.monotonic()
            r = await run_case(case, root / f"case{i}", log=lambda s: print(s, flush=True))
            results.append(r)
            print(
                f"  done in {time.monotonic() - t:.0f} s: hold {_secs(r.hold)}, "
                f"failed {r.failed}/{r.requests}" + (f", ERROR {r.error}" if r.error else ""),
                flush=True,
            )
            shutil.rmtree(root / f"case{i}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = section(results, time.monotonic() - began)
    print()
    print(text)
    if output:
        replace_section(text, output)
        print(f"written to {output}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
