"""The jupyter-server extension in every migrating user server.

It keeps the server's live state in files under the home, so that state moves with the home
(copied in `synced` mode, simply there in `shared` mode):

    ~/.local/share/jupyter-migrating/
        sessions.json            notebook path -> session id, kernel id and name
        terminals.json           terminal names and working directories
        kernels/<kernel id>/     each kernel's namespace (kernel_provisioner.state)

`POST api/migrating/checkpoint` writes it (the final snapshot of a move, or a suspend);
`POST api/migrating/restore` re-creates sessions and kernels with the same ids and restores
their namespaces on the new host (the move, and a resume after a stop, call it before the
server is reported ready). Between moves, idle kernels that ran something are snapshotted
every `snapshot_interval` seconds, so a host lost without notice loses little.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from kernel_provisioner import state as kernel_state

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


class ServerState:
    """Snapshots and restores of this server's sessions, kernels and terminals."""

    def __init__(self, serverapp, root: Path, snapshot_interval: float = 30):
        self.app = serverapp
        self.root = root
        self.snapshot_interval = snapshot_interval
        self.log = serverapp.log
        self.restoring = False
        self.last_restore: dict[str, Any] | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._snapshotted_activity: dict[str, Any] = {}

    @property
    def kernels(self):
        return self.app.kernel_manager

    async def _run_in_kernel(
        self, kernel_id: str, code: str, timeout: float, expressions: dict | None = None
    ) -> dict[str, Any]:
        client = self.kernels.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=timeout)
            reply = await client.execute_interactive(
                code,
                silent=True,
                store_history=False,
                allow_stdin=False,
                user_expressions=expressions or {},
                timeout=timeout,
            )
            content = reply["content"]
            if content["status"] != "ok":
                raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
            return content.get("user_expressions", {})
        finally:
            client.stop_channels()

    async def _last_cell(self, kernel_id: str) -> str:
        """The source of the cell a Python kernel ran last (the one an interrupt stopped)."""
        try:
            found = await self._run_in_kernel(kernel_id, "", 5, {"cell": "In[-1] if In else ''"})
            return ast.literal_eval(found["cell"]["data"]["text/plain"])
        except Exception:
            return ""

    async def _wait_idle(self, kernel_id: str, until: float) -> bool:
        kernel = self.kernels.get_kernel(kernel_id)
        while getattr(kernel, "execution_state", "idle") == "busy" and time.time() < until:
            await asyncio.sleep(0.1)
        return getattr(kernel, "execution_state", "idle") != "busy"

    # -- checkpoint -----------------------------------------------------------

    async def checkpoint(self, timeout: float = 30) -> dict[str, Any]:
        """Write sessions, terminals and every kernel's namespace; wait for busy kernels."""
        async with self._lock:
            until = time.time() + timeout
            report: dict[str, Any] = {"kernels": {}, "time": time.time()}
            sessions = await self.app.session_manager.list_sessions()
            _write_json(self.root / "sessions.json", sessions)
            _write_json(self.root / "terminals.json", self._terminals())
            for kernel_id in list(self.kernels.list_kernel_ids()):
                report["kernels"][kernel_id] = await self._snapshot_kernel(kernel_id, until)
            self.last_checkpoint = report
            return report

    async def _snapshot_kernel(self, kernel_id: str, until: float) -> dict[str, Any]:
        kernel = self.kernels.get_kernel(kernel_id)
        language = kernel.kernel_spec.language if kernel.kernel_spec else ""
        if not kernel_state.supported(language):
            return {"ok": False, "reason": f"no state support for {language or 'this kernel'}"}
        interrupted = False
        if not await self._wait_idle(kernel_id, until):
            # the deadline will not wait for the running cell: stop it, keep the rest
            await self.kernels.interrupt_kernel(kernel_id)
            interrupted = True
            await self._wait_idle(kernel_id, time.time() + 5)
            if language.startswith("python"):
                interrupted = await self._last_cell(kernel_id) or True
        target = self.root / "kernels" / kernel_id
        started = time.monotonic()
        try:
            code = kernel_state.snapshot_code(language, str(target))
            await self._run_in_kernel(kernel_id, code, max(5.0, until - time.time()))
            result = json.loads((target / "snapshot-report.json").read_text())
        except Exception as e:
            self.log.error("snapshot of kernel %s failed: %s", kernel_id, e)
            return {"ok": False, "reason": str(e), "interrupted": interrupted}
        self._snapshotted_activity[kernel_id] = kernel.last_activity
        result["interrupted"] = interrupted
        result["seconds"] = time.monotonic() - started
        return result

    def _terminals(self) -> list[dict[str, Any]]:
        manager = self.app.web_app.settings.get("terminal_manager")
        if manager is None:
            return []
        return [
            {"name": name, "cwd": getattr(term, "cwd", None)}
            for name, term in manager.terminals.items()
        ]

    # -- restore ------------------------------------------------------------

    async def restore(self, timeout: float = 60) -> dict[str, Any]:
        """Re-create sessions and kernels with their old ids, then restore namespaces."""
        async with self._lock:
            self.restoring = True
            try:
                report = await self._restore(timeout)
            finally:
                self.restoring = False
            self.last_restore = report
            return report

    async def _restore(self, timeout: float) -> dict[str, Any]:
        report: dict[str, Any] = {"kernels": {}, "sessions": 0, "terminals": 0}
        sessions_file = self.root / "sessions.json"
        if not sessions_file.exists():
            return report
        sessions = json.loads(sessions_file.read_text())
        for session in sessions:
            kernel = session.get("kernel") or {}
            kernel_id, name = kernel.get("id"), kernel.get("name")
            if not kernel_id:
                continue
            if kernel_id not in self.kernels:
                path = os.path.dirname(session.get("path") or "")
                await self.kernels.start_kernel(kernel_id=kernel_id, kernel_name=name, path=path)
                report["kernels"][kernel_id] = await self._restore_kernel(kernel_id, timeout)
            await self.app.session_manager.save_session(
                session["id"],
                path=session.get("path"),
                name=session.get("name"),
                type=session.get("type"),
                kernel_id=kernel_id,
            )
            report["sessions"] += 1
        report["terminals"] = self._restore_terminals()
        return report

    async def _restore_kernel(self, kernel_id: str, timeout: float) -> dict[str, Any]:
        kernel = self.kernels.get_kernel(kernel_id)
        language = kernel.kernel_spec.language if kernel.kernel_spec else ""
        source = self.root / "kernels" / kernel_id
        if not kernel_state.supported(language) or not (source / "snapshot-report.json").exists():
            why = "no snapshot of it" if kernel_state.supported(language) else "not supported"
            return {"ok": False, "reason": f"restarted fresh: its state could not be kept ({why})"}
        try:
            code = kernel_state.restore_code(language, str(source))
            await self._run_in_kernel(kernel_id, code, timeout)
            return json.loads((source / "restore-report.json").read_text())
        except Exception as e:
            self.log.error("restore of kernel %s failed: %s", kernel_id, e)
            return {"ok": False, "reason": str(e)}

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

    async def snapshot_loop(self) -> None:
        """Snapshot idle kernels that ran something since their last snapshot."""
        while True:
            await asyncio.sleep(self.snapshot_interval)
            if self.restoring or self._lock.locked():
                continue
            try:
                for kernel_id in list(self.kernels.list_kernel_ids()):
                    kernel = self.kernels.get_kernel(kernel_id)
                    if kernel.execution_state != "idle":
                        continue
                    if self._snapshotted_activity.get(kernel_id) == kernel.last_activity:
                        continue
                    async with self._lock:
                        await self._snapshot_kernel(kernel_id, time.time() + 30)
                    _write_json(
                        self.root / "sessions.json", await self.app.session_manager.list_sessions()
                    )
            except Exception:
                self.log.exception("background kernel snapshot failed")


class CheckpointHandler(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        report = await self.settings["migrating_state"].checkpoint(float(body.get("timeout", 30)))
        self.finish(json.dumps(report, default=str))


class RestoreHandler(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        report = await self.settings["migrating_state"].restore(float(body.get("timeout", 60)))
        self.finish(json.dumps(report, default=str))


class StatusHandler(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        state: ServerState = self.settings["migrating_state"]
        self.finish(
            json.dumps(
                {
                    "restoring": state.restoring,
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
    base = url_path_join(serverapp.web_app.settings["base_url"], "api/migrating")
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (base + "/checkpoint", CheckpointHandler),
            (base + "/restore", RestoreHandler),
            (base + "/status", StatusHandler),
        ],
    )


async def _start_jupyter_server_extension(serverapp) -> None:
    state: ServerState = serverapp.web_app.settings["migrating_state"]
    if state.snapshot_interval > 0:
        state._snapshot_task = asyncio.ensure_future(state.snapshot_loop())
