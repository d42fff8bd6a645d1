"""Web apps of a user server (behind jupyter-server-proxy) across a move.

At the freeze (`ServerState.checkpoint(freeze=True)`, a move or a stop) this writes what ran
into `~/.local/share/jupyter-migrating/apps.json`, which moves with the home:

- the named jupyter-server-proxy entries whose process was running (`/user/NAME/shiny/`),
- processes the server started that listen on a TCP port (an app reached through
  `/user/NAME/proxy/PORT/`, or through the TCP gateway): command, folder, environment,
- RStudio: every `rsession` under this server is suspended as `rstudio-server
  suspend-session` does (SIGUSR1), forced after `rstudio_suspend_grace` seconds, or
  earlier when the move's deadline is near (SIGUSR2, as `force-suspend-session`: the
  running R code is interrupted; `cooperative_until`), and waited for
  until it has exited, so its state (`~/.local/share/rstudio/sessions/active/session-*/
  suspended-session-data/`) is in the home before the final checkpoint. The R version is
  recorded: a resume needs the same major.minor.

The restore on the new server starts them again: named entries through the server's own
URL (jupyter-server-proxy starts the process on the first request; RStudio then resumes the
suspended session), port processes with the same command in the same folder (paths under
the old home mapped to the new one). `notes` are what the user must be told.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from tornado.routing import Router

APPS_FILE = "apps.json"
RSESSION = "rsession"
KERNEL_FILE = re.compile(r"kernel-[^/]*\.json$")
#: seconds a forced suspend (SIGUSR2) may need to write the session and exit
FORCE_RESERVE = 3.0


def cooperative_until(now: float, grace: float, until: float) -> float:
    """When the cooperative suspend (SIGUSR1) stops waiting: after `grace`, or earlier
    when the move's deadline `until` is near, so the forced suspend still has
    FORCE_RESERVE seconds (half the time left, when less is left) to write the session.
    The deadline is hard (the host goes): a forced suspend keeps the variables, a session
    still running at the deadline loses them."""
    return max(now, min(now + grace, until - min(FORCE_RESERVE, (until - now) / 2)))


def r_version() -> str | None:
    """This host's R major.minor, or None without R."""
    try:
        out = subprocess.run(
            ["Rscript", "-e", "cat(R.version$major, R.version$minor, sep='.')"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ".".join(out.strip().split(".")[:2]) or None


def version_note(saved: str | None, here: str | None) -> str | None:
    """What to tell a user whose RStudio session was saved under R `saved` and resumes
    under R `here` (RStudio resumes a session only under the same major.minor)."""
    if not saved or saved == here:
        return None
    return (
        f"RStudio: your session was suspended under R {saved}, and this host has "
        f"{'R ' + here if here else 'no R'}; RStudio may not resume it (files are kept)."
    )


def map_home(value: str, old: str, new: str) -> str:
    """A path under the old host's home, on the new host."""
    if old and old != new and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old) :]
    return value


def named_processes(web_app) -> dict[str, dict]:
    """jupyter-server-proxy's named entries: name -> its per-entry state (`proc` while
    its process was started). Read from the server's routing rules, where the proxy put
    each entry's handler (at `{base_url}{name}/(.*)`) with its state."""
    found: dict[str, dict] = {}
    base_url = web_app.settings.get("base_url", "/")

    def walk(router) -> None:
        for rule in getattr(router, "rules", []):
            target = rule.target
            if isinstance(target, Router):
                walk(target)
            elif isinstance(target, type) and "state" in (rule.target_kwargs or {}):
                pattern = getattr(getattr(rule.matcher, "regex", None), "pattern", "")
                if hasattr(target, "ensure_process") and pattern.startswith(base_url):
                    name = pattern[len(base_url) :].split("/")[0]
                    found[name] = rule.target_kwargs["state"]

    walk(web_app.wildcard_router)
    walk(web_app.default_router)
    return found


def _alive(proc: Any) -> bool:
    """A jupyter-server-proxy process (simpervisor's SupervisedProcess) that runs."""
    return bool(getattr(proc, "running", False))


class AppState:
    """What a server's web apps need across a move (see the module's docstring)."""

    def __init__(self, serverapp, root: Path):
        self.app = serverapp
        self.root = root
        self.log = serverapp.log
        self.started: list[asyncio.Future | asyncio.subprocess.Process] = []

    # -- freeze ---------------------------------------------------------------------

    async def freeze(self, until: float, grace: float) -> dict[str, Any]:
        """Record the running apps, suspend RStudio sessions; returns the report."""
        me = psutil.Process()
        named = {
            name: state
            for name, state in named_processes(self.app.web_app).items()
            if _alive(state.get("proc"))
        }
        children = me.children(recursive=True)
        excluded = self._excluded_pids(named, children)
        rsessions = [p for p in children if _name(p) == RSESSION]
        listening = [self._describe(p) for p in children if p.pid not in excluded]
        report: dict[str, Any] = {
            "named": sorted(named),
            "processes": [d for d in listening if d],
            "home": os.environ.get("HOME", ""),
            "rstudio": [],
            "notes": [],
            "time": time.time(),
        }
        if rsessions:
            report["r_version"] = await asyncio.to_thread(r_version)
            results = await asyncio.gather(*(self._suspend(p, until, grace) for p in rsessions))
            report["rstudio"] = list(results)
            for result in results:
                if result.get("note"):
                    report["notes"].append(result["note"])
        _write(self.root / APPS_FILE, report)
        return report

    def _excluded_pids(self, named: dict[str, dict], children: list) -> set[int]:
        """Processes that come back by other means: kernels (restored under their ids),
        Jupyter kernels of others (papermill's: a connection file `kernel-*.json`) and
        named proxy entries (started again through their URL), the last two with their
        children. A process a user's cell started is not excluded: it is started again."""
        manager = self.app.kernel_manager
        pids = set()
        for kernel_id in list(manager.list_kernel_ids()):
            pid = getattr(getattr(manager.get_kernel(kernel_id), "provisioner", None), "pid", None)
            if pid:
                pids.add(pid)
        roots = [state["proc"].pid for state in named.values() if state["proc"].pid]
        for proc in children:
            try:
                if proc.pid not in pids and any(KERNEL_FILE.search(a) for a in proc.cmdline()):
                    roots.append(proc.pid)
            except psutil.Error:
                pass
        for pid in roots:
            try:
                pids.add(pid)
                pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def _describe(self, proc: psutil.Process) -> dict[str, Any] | None:
        """A process that listens on a TCP port: enough to start it again."""
        try:
            ports = sorted(
                {
                    c.laddr.port
                    for c in proc.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN
                }
            )
            if not ports:
                return None
            return {
                "ports": ports,
                "cmd": proc.cmdline(),
                "cwd": proc.cwd(),
                "env": proc.environ(),
            }
        except psutil.Error:
            return None

    async def _suspend(self, proc: psutil.Process, until: float, grace: float) -> dict[str, Any]:
        """SIGUSR1 (cooperative), SIGUSR2 at the grace or near the deadline (forced,
        `cooperative_until`), then wait for the exit."""
        result: dict[str, Any] = {"pid": proc.pid, "forced": False, "suspended": False}
        began = time.time()
        try:
            proc.send_signal(signal.SIGUSR1)
            if not await _exited(proc, cooperative_until(began, grace, until)):
                result["forced"] = True
                waited = time.time() - began
                proc.send_signal(signal.SIGUSR2)
                await _exited(proc, until)
        except psutil.NoSuchProcess:
            pass
        result["suspended"] = _gone(proc)
        if not result["suspended"]:
            result["note"] = (
                "RStudio: your R session did not suspend before the move; its variables "
                "and running code are lost (files are kept)."
            )
        elif result["forced"]:
            result["note"] = (
                f"RStudio: your R session was busy and was force-suspended after "
                f"{waited:.0f} s; the code it was running was interrupted and did not "
                "finish. Its variables were kept (objects behind external pointers, such "
                "as database connections, come back invalid)."
            )
        return result

    # -- restore --------------------------------------------------------------------

    async def restore(self) -> dict[str, Any]:
        """Start again what ran at the freeze; returns what was started and the notes."""
        path = self.root / APPS_FILE
        if not path.exists():
            return {"named": [], "processes": [], "notes": []}
        saved = json.loads(path.read_text())
        path.unlink()  # once: a later restart of this server starts nothing it did not run
        report: dict[str, Any] = {"named": saved.get("named", []), "processes": [], "notes": []}
        if saved.get("rstudio"):
            here = await asyncio.to_thread(r_version)
            note = version_note(saved.get("r_version"), here)
            if note:
                report["notes"].append(note)
        for name in saved.get("named", []):
            self.started.append(asyncio.ensure_future(self._open(name)))
        old_home, new_home = saved.get("home", ""), os.environ.get("HOME", "")
        for desc in saved.get("processes", []):
            started = await self._start(desc, old_home, new_home)
            if started:
                report["processes"].append(started)
        if report["named"] or report["processes"]:
            what = [*report["named"], *(f"port {p['ports'][0]}" for p in report["processes"])]
            report["notes"].append(
                "Web apps started again on the new host: " + ", ".join(what) + "."
            )
        return report

    async def _open(self, name: str) -> None:
        """A request to the entry's own URL: jupyter-server-proxy starts its process."""
        app = self.app
        url = f"http://{app.ip or '127.0.0.1'}:{app.port}{app.base_url}{name}/"
        headers = {"Authorization": f"token {os.environ.get('JUPYTERHUB_API_TOKEN', '')}"}
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(120)
                ) as resp:
                    self.log.info("started %s again: %s answers %s", name, url, resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            self.log.warning("could not start %s again: %s", name, e)

    async def _start(self, desc: dict, old_home: str, new_home: str) -> dict | None:
        cmd = [map_home(arg, old_home, new_home) for arg in desc["cmd"]]
        env = {k: map_home(v, old_home, new_home) for k, v in desc.get("env", {}).items()}
        cwd = map_home(desc.get("cwd") or new_home, old_home, new_home)
        if not os.path.isdir(cwd):
            cwd = new_home
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as e:
            self.log.warning("could not start %s again: %s", cmd, e)
            return None
        self.started.append(proc)
        await _listening(proc.pid, desc["ports"], time.time() + 10)
        return {"ports": desc["ports"], "cmd": cmd, "pid": proc.pid}


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # exited; its parent reaps it
    except psutil.NoSuchProcess:
        return True


async def _exited(proc: psutil.Process, until: float) -> bool:
    while time.time() < until:
        if _gone(proc):
            return True
        await asyncio.sleep(0.05)
    return _gone(proc)


async def _listening(pid: int, ports: list[int], until: float) -> None:
    """Wait (bounded) until a started process listens again: the route, and the TCP
    gateway's held connections, are released right after the restore."""
    while time.time() < until:
        try:
            proc = psutil.Process(pid)
            tree = [proc, *proc.children(recursive=True)]
            listening = {
                c.laddr.port
                for p in tree
                for c in p.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
        except psutil.Error:
            return
        if set(ports) <= listening:
            return
        await asyncio.sleep(0.05)


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
