"""Web apps across reclaims: the Shiny app and the RStudio stand-in, notice -> first answer
at the same URL from the app on the new host, next to a cold start of the app on a new
server (what a user has otherwise: a new server, the app started again, its state lost).

A real hub, CHP and local hosts (tests/realhub.py, synced home). alice's server runs the
`shiny` entry (an app whose page names its R process) and the RStudio stand-in
(tests/standin: rsession's suspend contract, an R variable `x`); her host is reclaimed
ROUNDS times with a NOTICE s notice while both URLs are polled every 100 ms; an answer
counts once it comes from a new R process. Baseline: a new user's server started through
the hub REST API, from the start request to each app's first answer (the request that
makes jupyter-server-proxy start it). Writes the section "Web apps across reclaims" of
benchmarks/results.md.

    .venv/bin/python benchmarks/apps.py [--rounds 3] [--notice 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from realhub import RealHub  # noqa: E402
from results import replace_section  # noqa: E402

SECTION = "## Web apps across reclaims (Shiny, RStudio stand-in)"
STANDIN = HERE.parent / "tests" / "standin" / "rsession"
# a Shiny app whose page says which R process served it (the UI is built per request)
SHINY_APP = """library(shiny)
ui <- function(req) fluidPage(p(paste0("pid=", Sys.getpid(), ";")))
shinyApp(ui, function(input, output, session) {})
"""
READING = (
    "Reading it: the move's notice → new host is slower than a cold start (a pre-copy, the "
    "freeze with the RStudio suspend, the final delta, then the apps' restart), but the old "
    "app answers meanwhile, so what a user waits is the longest time without an answer, and "
    "the session's `x` and the app's files come back."
)
URLS = {"shiny": "shiny/", "rstudio": "rstudio/eval?code=paste(Sys.getpid(),%20x)"}


def config(workdir: Path) -> str:
    extra = workdir / "jupyter-config"
    extra.mkdir()
    servers = {"rstudio": {"command": [str(STANDIN), "{port}"], "timeout": 30}}
    (extra / "jupyter_server_config.json").write_text(
        json.dumps({"ServerProxy": {"servers": servers}})
    )
    return f"""
import os
os.environ["JUPYTER_CONFIG_PATH"] = "{extra}"
c.MigratingSpawner.home_mode = "synced"
"""


def pid_of(app: str, body: str) -> tuple[str, str] | None:
    """(the R process that answered, the variable x) or None when it is no app answer."""
    if app == "shiny":
        found = re.search(r"pid=(\d+);", body)
        return (found.group(1), "-") if found else None
    found = re.search(r'"(\d+) (\S+)"', body)
    return (found.group(1), found.group(2)) if found else None


async def answer(hub: RealHub, user: str, token: str, app: str) -> tuple[str, str] | None:
    try:
        status, body = await hub.request("GET", f"/user/{user}/{URLS[app]}", token, timeout=60)
    except (aiohttp.ClientError, asyncio.TimeoutError):  # mid-move: not yet
        return None
    return pid_of(app, body) if status == 200 and isinstance(body, str) else None


async def first_new_answer(
    hub: RealHub, token: str, app: str, old_pid: str, since: float
) -> tuple[float, float, str, str]:
    """Seconds from `since` to the first answer from another R process, the longest time
    between two answers (the old app's last, the new one's first: what a user waits),
    its pid and x."""
    deadline = time.monotonic() + 180
    last, gap = since, 0.0
    while time.monotonic() < deadline:
        got = await answer(hub, "alice", token, app)
        if got:
            gap, last = max(gap, time.time() - last), time.time()
        if got and got[0] != old_pid:
            return time.time() - since, gap, *got
    raise TimeoutError(f"{app} did not answer from a new process:\n{hub.tail()}")


async def until_answer(hub: RealHub, user: str, token: str, app: str) -> tuple[str, str]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = await answer(hub, user, token, app)
        if got:
            return got
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{app} of {user} did not answer:\n{hub.tail()}")


async def write_app(hub: RealHub, user: str, token: str) -> None:
    """The Shiny app (SHINY_APP) into ~/shiny-app, before the app's first start."""
    for folder, body in (("shiny-app", None), ("shiny-app/app.R", SHINY_APP)):
        model = {"type": "directory"} if body is None else {"type": "file", "format": "text"}
        if body is not None:
            model["content"] = body
        status, data = await hub.request("PUT", f"/user/{user}/api/contents/{folder}", token, model)
        assert status in (200, 201), data


async def running_elsewhere(hub: RealHub, old: str, since: float) -> float:
    """Seconds from `since` until the control API says alice runs on another host."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        info = await hub.server_info("alice")
        if info["state"] == "Running" and info["host_id"] != old:
            return time.time() - since
        await asyncio.sleep(0.1)
    raise TimeoutError(f"alice did not move from {old}:\n{hub.tail()}")


async def reclaims(hub: RealHub, rounds: int, notice: float) -> list[dict]:
    await hub.spawn("alice")
    token = await hub.user_token("alice")
    await write_app(hub, "alice", token)
    status, data = await hub.request(
        "GET", "/user/alice/rstudio/eval?code=x%20%3C-%2042", token, timeout=60
    )
    assert status == 200, data
    pids = {app: (await until_answer(hub, "alice", token, app))[0] for app in URLS}
    rows = []
    for _ in range(rounds):
        old = (await hub.server_info("alice"))["host_id"]
        since = time.time()
        status, data = await hub.migrate_api(
            "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": notice}
        )
        assert status == 202, data
        *results, moved = await asyncio.gather(
            *(first_new_answer(hub, token, app, pids[app], since) for app in URLS),
            running_elsewhere(hub, old, since),
        )
        row = {"kept": {}, "moved": moved}
        for app, (seconds, gap, pid, x) in zip(URLS, results, strict=True):
            row[app] = seconds
            row[app + " gap"] = gap
            pids[app] = pid
            row["kept"][app] = x
        print(row, flush=True)
        rows.append(row)
    return rows


async def cold_starts(hub: RealHub, rounds: int) -> list[dict]:
    """A new server for a new user each time, then each app's first answer (each app
    timed from its own first request, plus the server's start)."""
    rows = []
    for i in range(rounds):
        user = f"cold{i}"
        token = await hub.user_token(user)
        since = time.time()
        await hub.spawn(user)
        server = time.time() - since
        row = {"server": server}
        await write_app(hub, user, token)  # the same app (not timed)
        for app in URLS:
            started = time.time()
            if app == "rstudio":  # the session's variable (lost at the next cold start)
                status, data = await hub.request(
                    "GET", f"/user/{user}/rstudio/eval?code=x%20%3C-%2042", token, timeout=60
                )
                assert status == 200, data
            await until_answer(hub, user, token, app)
            row[app] = server + time.time() - started
        print(row, flush=True)
        rows.append(row)
        await hub.api("DELETE", f"/users/{user}/server")
        for _ in range(600):  # stopped (its checkpoint taken) before the next start is timed
            _, model = await hub.api("GET", f"/users/{user}")
            if not model["servers"] and not model.get("pending"):
                break
            await asyncio.sleep(0.2)
    return rows


def span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def table(moved: list[dict], cold: list[dict]) -> str:
    lines = [
        "| app | reclaimed: notice → first answer from the new host "
        "| longest time without an answer | kept "
        "| baseline: cold start on a new server → first answer | kept |",
        "|---|---|---|---|---|---|",
    ]
    for app, name, baseline_kept in (
        ("shiny", "Shiny app (`/user/NAME/shiny/`)", "its files only with a shared home"),
        ("rstudio", "RStudio stand-in (`/user/NAME/rstudio/`)", "files only; `x` lost"),
    ):
        if app == "shiny":
            kept = "its app (`~/shiny-app`, in the home)"
        else:
            values = {r["kept"][app] for r in moved}
            kept = "`x` = 42 each time" if values == {"42"} else f"NO: x = {sorted(values)}"
        lines.append(
            f"| {name} | {span([r[app] for r in moved])} "
            f"| {span([r[app + ' gap'] for r in moved])} | {kept} "
            f"| {span([r[app] for r in cold])} | {baseline_kept} |"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="reclaims (and cold starts)")
    parser.add_argument("--notice", type=float, default=10, help="seconds of notice")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        hub = RealHub(workdir, config(workdir))
        hub.start()
        try:
            await hub.wait_up()
            moved = await reclaims(hub, args.rounds, args.notice)
            cold = await cold_starts(hub, args.rounds)
        finally:
            hub.stop()
            hub.kill_proxy()
            hub.release_all_hosts()
    text = table(moved, cold)
    print(text)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    server = span([r["moved"] for r in moved])
    section = (
        f"{SECTION}\n\n`benchmarks/apps.py` on {stamp}; Python {platform.python_version()}, "
        "2 cores shared with other work. A real hub (synced home); alice's server runs the "
        "Shiny app (`shiny` entry; its page names the R process that served it) and the "
        "RStudio stand-in (tests/standin: rsession's suspend/resume contract, `x <- 42` "
        f"in its session). Her host is reclaimed {args.rounds} times with a "
        f"{args.notice:.0f} s notice while both URLs are polled every 100 ms through the "
        "proxy; an answer counts once it comes from the new host's R process (the old "
        "one answers until the freeze); the longest time without an answer is the longest "
        "time between two answers, so what a user of the app waits. The move starts at "
        "the notice; the hub reported "
        f"the server Running on the new host after {server}. Baseline: a new server "
        "started through the hub REST API (a new local host): the server's start plus "
        "the app's own start from its first request (jupyter-server-proxy starts it "
        "then), i.e. what a user has after a lost host without moves, not counting the "
        "time until they notice. Median (min, max) "
        f"of {args.rounds}.\n\n{text}\n\n{READING}\n"
    )
    replace_section(section)
    return 0 if all(r["kept"]["rstudio"] == "42" for r in moved) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
