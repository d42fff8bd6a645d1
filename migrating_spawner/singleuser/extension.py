"""The jupyter-server extension in every migrating user server.

It keeps the server's live state in files under the home, so that state moves with the home
(copied in `synced` mode, simply there in `shared` mode):

    ~/.local/share/jupyter-migrating/
        sessions.json            notebook path -> session id, kernel id and name
        terminals.json           terminal names and working directories
        kernels/<kernel id>/     each kernel's namespace (migrating_spawner.kernelstate)

`POST api/migrating/checkpoint` writes it (the final snapshot of a move, or a suspend);
`POST api/migrating/restore` re-creates sessions and kernels with the same ids and restores
their namespaces on the new host (the move, and a resume after a stop, call it before the
server is reported ready). A move's pre-copy calls `POST api/migrating/prestart` on the new
server first: it starts the kernels under their ids and restores the pre-copy snapshots
into them, so the restore in the freeze only applies each kernel's delta. Between moves,
idle kernels that ran something are snapshotted every `snapshot_interval` seconds, so a
host lost without notice loses little.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .. import kernelstate as kernel_state
from .apps import AppState
from .connection import migrating_connection
from .gate import Gate
from .kernelclient import until_connected

#: where the state lives, relative to the home
STATE_SUBDIR = ".local/share/jupyter-migrating"


def state_dir() -> Path:
    default = Path.home() / STATE_SUBDIR
    return Path(os.environ.get("JUPYTERHUB_MIGRATING_STATE_DIR", default))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


class ServerState:
    """Snapshots and restores of this server's sessions, kernels and terminals."""

    def __init__(self, serverapp, root: Path, snapshot_interval: float = 30):
        self.app = serverapp
        self.root = root
        self.snapshot_interval = snapshot_interval
        self.log = serverapp.log
        self.gate = Gate(self.log)
        self.apps = AppState(serverapp, root)  # web apps behind jupyter-server-proxy
        self.restoring = False
        self.last_restore: dict[str, Any] | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        #: kernels started ahead by a move's pre-copy (not reachable until the move switches
        #: the route here): kernel id -> the report of the restore into it
        self.prestarted: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        self._snapshotted_activity: dict[str, Any] = {}
        # other extensions' work saved with the server: `await hook(until) -> dict` runs
        # during a freeze beside the kernel snapshots, `await hook(final) -> dict` after a
        # restore; their dicts go into the report (batch jobs: migrating_spawner.batch)
        self.freeze_hooks: list[Callable[[float], Awaitable[dict]]] = []
        self.restore_hooks: list[Callable[[bool], Awaitable[dict]]] = []

    @property
    def kernels(self):
        return self.app.kernel_manager

    def _kernel_dir(self, kernel_id: str) -> Path:
        return self.root / "kernels" / kernel_id

    async def _run_in_kernel(self, kernel_id: str, code: str, timeout: float) -> None:
        client = self.kernels.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            await until_connected(client, timeout)
            reply = await client.execute_interactive(
                code, silent=True, store_history=False, allow_stdin=False, timeout=timeout
            )
            content = reply["content"]
            if content["status"] == "aborted":
                # ipykernel aborts what was queued behind an interrupted cell
                raise RuntimeError("the kernel aborted the request (it was just interrupted)")
            if content["status"] != "ok":
                raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
        finally:
            client.stop_channels()

    async def _wait_idle(self, kernel_id: str, until: float) -> bool:
        kernel = self.kernels.get_kernel(kernel_id)
        while getattr(kernel, "execution_state", "idle") == "busy" and time.time() < until:
            await asyncio.sleep(0.1)
        return getattr(kernel, "execution_state", "idle") != "busy"

    # -- checkpoint -----------------------------------------------------------

    async def checkpoint(
        self, timeout: float = 30, freeze: bool = False, rstudio_grace: float = 10
    ) -> dict[str, Any]:
        """Write sessions, terminals and every kernel's namespace; wait for busy kernels.

        With `freeze` (a move or a stop: this server is about to go), messages browsers
        send from now on are held, and written into the home once the websockets are closed.
        Its web apps are recorded and RStudio sessions suspended (`rstudio_grace`: seconds
        before a suspend is forced), alongside the kernels' snapshots.
        """
        if freeze:
            self.gate.freeze()
        async with self._lock:
            until = time.time() + timeout
            report: dict[str, Any] = {"kernels": {}, "time": time.time()}
            apps = asyncio.ensure_future(self.apps.freeze(until, rstudio_grace)) if freeze else None
            sessions = await self.app.session_manager.list_sessions()
            _write_json(self.root / "sessions.json", sessions)
            _write_json(self.root / "kernels.json", self._kernel_list())
            _write_json(self.root / "terminals.json", self._terminals())
            hooks = [asyncio.ensure_future(h(until)) for h in self.freeze_hooks if freeze]
            for kernel_id in list(self.kernels.list_kernel_ids()):
                report["kernels"][kernel_id] = await self._snapshot_kernel(
                    kernel_id, until, interrupt=freeze
                )
            for result in await asyncio.gather(*hooks, return_exceptions=True):
                if isinstance(result, BaseException):
                    self.log.error("a freeze hook failed: %r", result)
                else:
                    report.update(result)
            if apps is not None:
                try:
                    report["apps"] = await apps
                except Exception as e:  # the kernels' state must not depend on the apps'
                    self.log.exception("recording the web apps failed")
                    report["apps"] = {"notes": [f"Web apps could not be recorded: {e}"]}
            if freeze:
                # a client that stops reading never answers the close: wait only while the
                # deadline allows
                report["held_messages"] = await self.gate.seal(
                    self.root / "held-messages.json", timeout=min(3.0, until - time.time())
                )
            self.last_checkpoint = report
            return report

    def _kernel_list(self) -> list[dict[str, Any]]:
        """Every kernel, with or without a session (nbclient, `jupyter console --existing`)."""
        return [
            {"id": kernel_id, "name": self.kernels.get_kernel(kernel_id).kernel_name}
            for kernel_id in self.kernels.list_kernel_ids()
        ]

    async def _snapshot_kernel(
        self, kernel_id: str, until: float, interrupt: bool = True
    ) -> dict[str, Any]:
        """Snapshot one kernel; a failure is retried while time allows, and if it still
        fails it is recorded, so the restore says how old the state it brings back is.
        Without `interrupt` (a move's pre-copy: the kernel goes on serving) a busy kernel
        is left alone: its running cell is never cut short, and the freeze snapshots it."""
        kernel = self.kernels.get_kernel(kernel_id)
        language = kernel.kernel_spec.language if kernel.kernel_spec else ""
        if not kernel_state.supported(language):
            return {"ok": False, "reason": f"no state support for {language or 'this kernel'}"}
        if not interrupt and getattr(kernel, "execution_state", "idle") == "busy":
            return {"ok": False, "busy": True, "reason": "busy: the freeze snapshots it"}
        interrupted: str | bool = False
        target = self._kernel_dir(kernel_id)
        started = time.monotonic()
        error = "no time left to take it"
        # a running cell gets half of the time left; the snapshot needs the rest
        cell_until = until - max(1.0, (until - time.time()) / 2)
        while True:
            if not await self._wait_idle(kernel_id, cell_until if interrupt else until):
                if not interrupt:
                    return {"ok": False, "busy": True, "reason": "busy: the freeze snapshots it"}
                interrupted = await self._interrupt(kernel_id) or interrupted or True
                await self._wait_idle(kernel_id, until - 0.5)
            try:
                code = kernel_state.snapshot_code(language, str(target))
                await self._run_in_kernel(kernel_id, code, max(1.0, until - time.time()))
                result = json.loads((target / "snapshot-report.json").read_text())
                if result.get("ok"):
                    break
                error = result.get("error") or "the snapshot did not finish"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            self.log.warning("snapshot of kernel %s failed: %s", kernel_id, error)
            if time.time() > until - 1:
                _write_json(
                    target / "snapshot-failed.json",
                    {"time": time.time(), "error": error, "interrupted": bool(interrupted)},
                )
                return {
                    "ok": False,
                    "failed": True,
                    "reason": f"snapshot failed: {error}",
                    "interrupted": interrupted,
                }
            await asyncio.sleep(0.2)  # retry: e.g. the request came back aborted
        (target / "snapshot-failed.json").unlink(missing_ok=True)
        self._snapshotted_activity[kernel_id] = kernel.last_activity
        result["interrupted"] = interrupted
        result["seconds"] = time.monotonic() - started
        return result

    async def _interrupt(self, kernel_id: str) -> str:
        """Stop the cell running on `kernel_id` (the deadline will not wait for it); its own
        output says why. Returns its code, when a browser sent it."""
        running = self.gate.running_cell(kernel_id)
        if running:
            header, conn, code = running
            self.gate.tell(conn, header, f"[{kernel_state.INTERRUPTED}]")
        await self.kernels.interrupt_kernel(kernel_id)
        return running[2] if running else ""

    def _terminals(self) -> list[dict[str, Any]]:
        manager = self.app.web_app.settings.get("terminal_manager")
        if manager is None:
            return []
        return [
            {"name": name, "cwd": getattr(term, "cwd", None)}
            for name, term in manager.terminals.items()
        ]

    # -- restore ------------------------------------------------------------

    async def restore(
        self, timeout: float = 60, final: bool = True, delivered: list[str] | None = None
    ) -> dict[str, Any]:
        """Re-create sessions and kernels with their old ids, then restore namespaces.

        `final` says the snapshots were taken as the previous server stopped; when they were
        not (its host was lost), each kernel's user is told how old the restored state is.
        `delivered`: seals whose held messages were redelivered before (not again).
        """
        async with self._lock:
            self.restoring = True
            try:
                report = await self._restore(timeout, final, delivered or [])
            finally:
                self.restoring = False
            for hook in self.restore_hooks:
                try:
                    report.update(await hook(final))
                except Exception:
                    self.log.exception("a restore hook failed")
            self.last_restore = report
            return report

    def _saved_kernels(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The kernels the last checkpoint names, and the folder each session's kernel ran in."""
        sessions_file, kernels_file = self.root / "sessions.json", self.root / "kernels.json"
        sessions = json.loads(sessions_file.read_text()) if sessions_file.exists() else []
        kernels = json.loads(kernels_file.read_text()) if kernels_file.exists() else []
        known = {k["id"] for k in kernels}
        for session in sessions:  # checkpoints older than kernels.json name kernels here only
            kernel = session.get("kernel") or {}
            if kernel.get("id") and kernel["id"] not in known:
                kernels.append({"id": kernel["id"], "name": kernel.get("name")})
                known.add(kernel["id"])
        paths = {
            (s.get("kernel") or {}).get("id"): os.path.dirname(s.get("path") or "")
            for s in sessions
        }
        return kernels, paths

    async def _restore(self, timeout: float, final: bool, delivered: list[str]) -> dict[str, Any]:
        report: dict[str, Any] = {"kernels": {}, "sessions": 0, "terminals": 0}
        kernels, paths = self._saved_kernels()
        wanted = {k["id"] for k in kernels}
        ahead, self.prestarted = self.prestarted, {}
        for kernel_id in [k for k in ahead if k not in wanted and k in self.kernels]:
            await self.kernels.shutdown_kernel(kernel_id, now=True)  # closed during the move
        for kernel in kernels:
            kernel_id = kernel["id"]
            pre = ahead.get(kernel_id)
            running = kernel_id in self.kernels
            precopy = None
            if pre is not None and pre.get("ok") and running:
                precopy = "used"  # the pre-copy's kernel: the restore applies only the delta
            elif pre is None and running:
                continue
            else:
                if running:  # started ahead, but its pre-copy restore failed
                    await self.kernels.shutdown_kernel(kernel_id, now=True)
                if pre is not None and pre.get("ok"):
                    precopy = "fallback: the kernel started ahead was gone"
                elif pre is not None:
                    precopy = pre.get("whole") or (
                        f"fallback: the restore of the pre-copy failed ({pre.get('error')})"
                    )
                elif ahead:
                    precopy = "fallback: a kernel the pre-copy did not know"
                await self._start_saved(kernel, paths)
            result = await self._restore_kernel(kernel_id, timeout, final)
            if precopy:
                result["precopy"] = precopy
            report["kernels"][kernel_id] = result
            if result.get("message"):
                self.gate.announce(kernel_id, result["message"])
        sessions_file = self.root / "sessions.json"
        for session in json.loads(sessions_file.read_text()) if sessions_file.exists() else []:
            kernel_id = (session.get("kernel") or {}).get("id")
            if not kernel_id or kernel_id not in self.kernels:
                continue
            await self.app.session_manager.save_session(
                session["id"],
                path=session.get("path"),
                name=session.get("name"),
                type=session.get("type"),
                kernel_id=kernel_id,
            )
            report["sessions"] += 1
        report["terminals"] = self._restore_terminals()
        report["seal"], report["redelivered"] = await self.gate.redeliver(
            self.kernels, self.root / "held-messages.json", skip=delivered
        )
        try:
            report["apps"] = await self.apps.restore()
        except Exception as e:
            self.log.exception("starting the web apps again failed")
            report["apps"] = {"notes": [f"Web apps could not be started again: {e}"]}
        return report

    async def _start_saved(self, kernel: dict[str, Any], paths: dict[str, str]) -> None:
        """Start a kernel the last checkpoint names, under its id, in its session's folder."""
        await self.kernels.start_kernel(
            kernel_id=kernel["id"], kernel_name=kernel.get("name"), path=paths.get(kernel["id"], "")
        )

    async def _restore_kernel(
        self, kernel_id: str, timeout: float, final: bool, ahead: bool = False
    ) -> dict[str, Any]:
        """Restore one kernel's namespace; the report's `message` is what the user must know
        (`ahead`: a move's pre-copy, before the home is final; see `prestart`)."""
        kernel = self.kernels.get_kernel(kernel_id)
        language = kernel.kernel_spec.language if kernel.kernel_spec else ""
        source = self._kernel_dir(kernel_id)
        if not kernel_state.supported(language):
            why = f"{language or 'this kernel'} kernels cannot keep their state"
        elif not (source / "index.json").exists():
            why = "no snapshot of it was taken"
        else:
            why = ""
        if why:
            message = f"This kernel was moved to another machine and starts fresh: {why}."
            return {"ok": False, "error": why, "reason": message, "message": message}
        try:
            code = kernel_state.restore_code(language, str(source), ahead=ahead)
            await self._run_in_kernel(kernel_id, code, timeout)
            result = json.loads((source / "restore-report.json").read_text())
        except Exception as e:
            self.log.error("restore of kernel %s failed: %s", kernel_id, e)
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        notes = [kernel_state.lost_message(result)]
        failed = source / "snapshot-failed.json"
        if result.get("ok") and failed.exists():
            # the last snapshot failed: what came back is older, and the user must know
            failure = json.loads(failed.read_text())
            taken = result.get("snapshot_time")
            age = f"taken at {_clock(taken)}, " if taken else ""
            result["stale"] = {**failure, "snapshot_time": taken}
            notes.insert(
                0,
                f"This kernel's last snapshot failed at {_clock(failure['time'])} "
                f"({failure['error']}); its state was restored from an older one ({age}"
                f"{max(0, failure['time'] - (taken or failure['time'])):.0f} s earlier): "
                "what ran after that is lost.",
            )
        elif result.get("ok") and not final:
            taken = result.get("snapshot_time")
            at = f"taken at {_clock(taken)}" if taken else "taken earlier"
            result["stale"] = {"error": "the host was lost before a final snapshot"}
            notes.insert(
                0,
                f"This kernel's host was lost before its state could be saved; it was "
                f"restored from its last background snapshot ({at}): what ran after that "
                "is lost, and cell numbers continue from there.",
            )
        result["message"] = " ".join(n for n in notes if n) or None
        if not result.get("ok"):
            result["reason"] = result["message"]
        return result

    async def prestart(self, timeout: float = 60) -> dict[str, Any]:
        """A move's pre-copy, on the new server: start the Python kernels the old server's
        pre-copy snapshot names, under their ids, and restore those snapshots into them.
        Nobody reaches them before the move switches the route here; its `restore` then
        only applies each kernel's delta, and a kernel whose restore failed here is started
        again fresh there and restored whole. Other kernels are restored whole there."""
        async with self._lock:
            report: dict[str, Any] = {"kernels": {}}
            kernels, paths = self._saved_kernels()
            specs = self.kernels.kernel_spec_manager
            for kernel in kernels:
                kernel_id = kernel["id"]
                if kernel_id in self.kernels or kernel_id in self.prestarted:
                    continue
                name = kernel.get("name") or self.kernels.default_kernel_name
                try:
                    language = specs.get_kernel_spec(name).language
                except Exception as e:  # its restore says so, as without a pre-copy
                    language = f"unknown ({type(e).__name__})"
                if not kernel_state.precopies(language):
                    whole = f"not pre-copied: {language} kernels are restored whole"
                    self.prestarted[kernel_id] = {"ok": False, "whole": whole}
                    report["kernels"][kernel_id] = {"ok": False, "error": whole}
                    continue
                try:
                    await self._start_saved(kernel, paths)
                    result = await self._restore_kernel(kernel_id, timeout, True, ahead=True)
                except Exception as e:
                    result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                if not result.get("ok"):
                    self.log.warning(
                        "pre-copy restore of kernel %s failed: %s", kernel_id, result.get("error")
                    )
                self.prestarted[kernel_id] = result
                report["kernels"][kernel_id] = {
                    k: result.get(k) for k in ("ok", "error", "mode", "seconds")
                }
            return report

    def _restore_terminals(self) -> int:
        manager = self.app.web_app.settings.get("terminal_manager")
        terminals_file = self.root / "terminals.json"
        if manager is None or not terminals_file.exists():
            return 0
        count = 0
        for term in json.loads(terminals_file.read_text()):
            if term["name"] in manager.terminals:
                continue
            try:
                manager.create(name=term["name"], cwd=term.get("cwd"))
                # its processes could not move: say so where the user will look
                manager.get_terminal(term["name"]).ptyproc.write(
                    "echo '[moved to a new host: processes of this terminal did not move]'\r"
                )
                count += 1
            except Exception as e:
                self.log.warning("could not re-create terminal %s: %s", term["name"], e)
        return count

    # -- background snapshots ------------------------------------------------------

    def _may_snapshot(self) -> bool:
        """Whether this server's own state is what the home should keep. Not while a move
        freezes it or restores into it, and not on a move's new server between the
        pre-copy's kernels started ahead and the restore: their state is the pre-copy's,
        and the sessions are not back yet, so a snapshot then would overwrite the old
        server's final one (the shared home, or files the final delta leaves alone)."""
        return not (self.gate.frozen or self.restoring or self.prestarted)

    async def snapshot_loop(self) -> None:
        """Snapshot idle kernels that ran something since their last snapshot."""
        while True:
            await asyncio.sleep(self.snapshot_interval)
            if self._lock.locked() or not self._may_snapshot():
                continue
            try:
                for kernel_id in list(self.kernels.list_kernel_ids()):
                    kernel = self.kernels.get_kernel(kernel_id)
                    if kernel.execution_state != "idle":
                        continue
                    if self._snapshotted_activity.get(kernel_id) == kernel.last_activity:
                        continue
                    async with self._lock:
                        if not self._may_snapshot():  # a prestart came while we waited
                            break
                        await self._snapshot_kernel(kernel_id, time.time() + 30)
                        sessions = await self.app.session_manager.list_sessions()
                        _write_json(self.root / "sessions.json", sessions)
                        _write_json(self.root / "kernels.json", self._kernel_list())
            except Exception:
                self.log.exception("background kernel snapshot failed")


def _seconds(body: dict[str, Any], key: str, default: float) -> float:
    """A number of seconds from a request's JSON body (400 if it is not one)."""
    try:
        return float(body.get(key, default))
    except (TypeError, ValueError):
        raise web.HTTPError(400, f"{key} must be a number of seconds") from None


class CheckpointHandler(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        report = await self.settings["migrating_state"].checkpoint(
            _seconds(body, "timeout", 30),
            freeze=bool(body.get("freeze")),
            rstudio_grace=_seconds(body, "rstudio_suspend_grace", 10),
        )
        self.finish(json.dumps(report, default=str))


class RestoreHandler(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        report = await self.settings["migrating_state"].restore(
            _seconds(body, "timeout", 60),
            final=bool(body.get("final", True)),
            delivered=[str(seal) for seal in body.get("delivered") or []],
        )
        self.finish(json.dumps(report, default=str))


class PrestartHandler(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        report = await self.settings["migrating_state"].prestart(_seconds(body, "timeout", 60))
        self.finish(json.dumps(report, default=str))


class StatusHandler(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        state: ServerState = self.settings["migrating_state"]
        self.finish(
            json.dumps(
                {
                    "restoring": state.restoring,
                    # a move's freeze began: what browsers send now is held for the new host
                    "frozen": state.gate.frozen,
                    "last_restore": state.last_restore,
                    "last_checkpoint": state.last_checkpoint,
                },
                default=str,
            )
        )


def _jupyter_server_extension_points():
    return [{"module": "migrating_spawner.singleuser.extension"}]


def _load_jupyter_server_extension(serverapp) -> None:
    interval = float(os.environ.get("JUPYTERHUB_MIGRATING_SNAPSHOT_INTERVAL", "30"))
    state = ServerState(serverapp, state_dir(), snapshot_interval=interval)
    serverapp.web_app.settings["migrating_state"] = state
    settings = serverapp.web_app.settings
    base_class = settings["kernel_websocket_connection_class"]
    settings["kernel_websocket_connection_class"] = migrating_connection(base_class, state.gate)
    if settings["kernel_websocket_connection_class"] is not base_class:
        state.gate.take_buffering(serverapp.kernel_manager)
    base = url_path_join(serverapp.web_app.settings["base_url"], "api/migrating")
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (base + "/checkpoint", CheckpointHandler),
            (base + "/restore", RestoreHandler),
            (base + "/prestart", PrestartHandler),
            (base + "/status", StatusHandler),
        ],
    )


async def _start_jupyter_server_extension(serverapp) -> None:
    state: ServerState = serverapp.web_app.settings["migrating_state"]
    if state.snapshot_interval > 0:
        state._snapshot_task = asyncio.ensure_future(state.snapshot_loop())
