"""The history of each server: every move, suspend, resume, cancel and loss.

One JSON-lines file per server under `history_dir` (by default beside the hub's sqlite
database), appended to as things happen, so the history survives a hub restart. What a
move or a start learns on the way (bytes a checkpoint sent, variables a restore could not
bring back, a cell a freeze interrupted) is noted per server and goes into the next entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jupyterhub.app import JupyterHub
from traitlets import Integer, List, Unicode
from traitlets.config import LoggingConfigurable

#: entry kinds
MOVE, SUSPEND, RESUME, CANCEL, LOSS = "move", "suspend", "resume", "cancel", "loss"


def reason_kind(reason: str) -> str:
    """The one-word reason of a move from the engine's text ("reclaim notice for h-1",
    "requested by alice", "host h-1 lost", ...)."""
    text = reason.lower()
    if "rebalance" in text:
        return "rebalance"
    if text.startswith("reclaim notice"):
        return "reclaim notice"
    if text.startswith("host ") and "lost" in text:
        return "host lost"
    if text.startswith("requested"):
        return "request"
    if "idle" in text:
        return "idle cull"
    return text or "unknown"


def requester() -> tuple[str, str] | None:
    """(kind, name) of whoever asked the hub to stop the server being stopped now.

    JupyterHub passes no requester to `Spawner.stop`; its stop runs awaited from the API
    or page handler that took the request, so that handler's `current_user` is on the
    await chain (frames, not tasks, link it: `stop_single_user` awaits `user.stop`)."""
    frame = sys._getframe(1)
    while frame is not None:
        handler = frame.f_locals.get("self")
        user = getattr(handler, "_jupyterhub_user", None) if handler is not None else None
        if user is not None and hasattr(handler, "request"):
            kind = getattr(user, "kind", "user")
            return kind, user.name
        frame = frame.f_back
    return None


def hub_shutting_down() -> bool:
    """Whether the hub is shutting down: its `cleanup` (Ctrl-C, SIGTERM or exit) is under
    way in some task, stopping every server (each in a task of its own, so `requester`
    finds no handler for those stops)."""
    ends = {JupyterHub.cleanup.__code__, JupyterHub.shutdown_cancel_tasks.__code__}
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop
        return False
    for task in tasks:
        coro = task.get_coro()
        while coro is not None:
            if getattr(coro, "cr_code", None) in ends:
                return True
            coro = getattr(coro, "cr_await", None)
    return False


def human_bytes(n: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def checkpoint_summary(manifest: Any) -> dict[str, Any]:
    """What a user is told of a checkpoint: id, time, size of the home it holds."""
    files = [f for f in manifest.files.values() if f.get("type", "file") == "file"]
    return {
        "id": manifest.id,
        "time": manifest.created,
        "bytes": sum(int(f.get("size") or 0) for f in files),
        "files": len(files),
        "reason": manifest.meta.get("reason"),
    }


def _empty_lost() -> dict[str, Any]:
    return {"files": None, "variables": {}, "interrupted_cells": [], "kernels_fresh": []}


class ServerHistory(LoggingConfigurable):
    """The history of each server, in a file of its own."""

    history_dir = Unicode(
        help="""Folder of the servers' histories (one JSON-lines file per server).

        Defaults to `migrating-history/` beside the hub's sqlite database (the hub's working
        directory for another database), so it survives hub restarts as the database does.
        """
    ).tag(config=True)

    max_entries = Integer(
        1000, help="Entries kept per server; the oldest go first once a file holds more."
    ).tag(config=True)

    idle_cullers = List(
        Unicode(),
        default_value=["idle-culler", "cull-idle", "jupyterhub-idle-culler"],
        help="""JupyterHub services whose stop of a server is an idle cull (the reason
        the history gives that suspend). Other stops are requests of whoever asked.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # per server: what the next entry should tell (checkpoint bytes, losses)
        self._notes: dict[str, dict[str, Any]] = {}

    @property
    def folder(self) -> Path:
        if self.history_dir:
            return Path(self.history_dir)
        db_url = JupyterHub.instance().db_url if JupyterHub.initialized() else ""
        if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
            return Path(os.path.abspath(db_url[len("sqlite:///") :])).parent / "migrating-history"
        return Path(os.path.abspath("migrating-history"))

    def _path(self, key: str) -> Path:
        return self.folder / (quote(key, safe="") + ".jsonl")

    # -- notes taken on the way -------------------------------------------------------

    def _note(self, key: str) -> dict[str, Any]:
        return self._notes.setdefault(key, {"bytes": 0, "lost": _empty_lost()})

    def note_checkpoint(self, key: str, stats: dict[str, Any]) -> None:
        """A checkpoint of `key`'s home was committed (its agent's stats)."""
        self._note(key)["bytes"] += int(stats.get("bytes_uploaded") or 0)

    def note_snapshot(self, key: str, report: dict[str, Any]) -> None:
        """A freeze's kernel report: cells it interrupted."""
        lost = self._note(key)["lost"]
        for kernel_id, result in (report.get("kernels") or {}).items():
            cell = result.get("interrupted")
            if cell:
                text = cell if isinstance(cell, str) else ""
                lost["interrupted_cells"].append({"kernel_id": kernel_id, "cell": text})

    def note_restore(self, key: str, report: dict[str, Any]) -> None:
        """A restore's kernel report: variables that did not come back, fresh kernels."""
        lost = self._note(key)["lost"]
        for kernel_id, result in (report.get("kernels") or {}).items():
            if not result.get("ok", False):
                lost["kernels_fresh"].append(kernel_id)
            elif result.get("lost"):
                lost["variables"][kernel_id] = sorted(result["lost"])

    def note_files_lost(self, key: str, text: str) -> None:
        self._note(key)["lost"]["files"] = text

    def lost_variables(self, entry: dict[str, Any]) -> int:
        return sum(len(names) for names in entry["lost"]["variables"].values())

    # -- entries --------------------------------------------------------------------------

    def record(self, key: str, kind: str, reason: str, **fields: Any) -> dict[str, Any]:
        """Append an entry for `key` (taking the notes gathered since the last one)."""
        notes = self._notes.pop(key, None) or {"bytes": 0, "lost": _empty_lost()}
        lost = notes["lost"]
        if fields.get("lost_files"):
            lost["files"] = fields.pop("lost_files")
            # when the lost changes start (a checkpoint's time): the page says it in its clock
            lost["files_since"] = fields.pop("lost_since", None)
        fields.pop("lost_files", None)
        fields.pop("lost_since", None)
        entry: dict[str, Any] = {
            "id": secrets.token_hex(6),
            "time": time.time(),
            "kind": kind,
            "reason": reason,
            "detail": "",
            "by": None,
            "outcome": "ok",
            "error": None,
            "from_host": None,
            "to_host": None,
            "hold_seconds": None,
            "duration_seconds": None,
            "bytes_moved": notes["bytes"] or None,
            "checkpoint_id": None,
            "lost": lost,
        }
        entry.update(fields)
        try:
            self._append(key, entry)
        except OSError as e:  # history must never fail a move or a stop
            self.log.error("could not write the history of %s: %s", key, e)
        return entry

    def _append(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
        if self.max_entries and path.stat().st_size > 2000 * self.max_entries:
            # roughly too long: keep the newest max_entries (rare, so a rewrite is fine)
            entries = self.entries(key)[-self.max_entries :]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(e, default=str) + "\n" for e in entries))
            tmp.replace(path)

    def entries(self, key: str, limit: int | None = None) -> list[dict[str, Any]]:
        """`key`'s entries, oldest first (the last `limit` only, if given)."""
        try:
            lines = self._path(key).read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash mid-write
        return entries[-limit:] if limit else entries

    def forget(self, key: str) -> None:
        """The server is deleted: its history goes too."""
        self._notes.pop(key, None)
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    # -- from the move engine ---------------------------------------------------------------

    def on_move(
        self, server: Any, move: Any, result: Any, error: BaseException | None
    ) -> dict[str, Any]:
        """A finished move (the scheduler's listener): its entry."""
        timings = getattr(move, "timings", {}) or {}
        old, new = getattr(move, "old", None), getattr(move, "new", None)
        reason = str(getattr(move, "reason", ""))
        fields: dict[str, Any] = {
            "detail": reason,
            "from_host": old.id if old else None,
            "to_host": new.id if new and error is None else None,
            "hold_seconds": timings.get("hold"),
            # where the hold went, step by step (seconds)
            "hold_steps": {
                k: round(v, 4) for k, v in (getattr(move, "hold_steps", None) or {}).items()
            }
            or None,
            "duration_seconds": timings.get("total"),
            "checkpoint_id": getattr(move, "final_id", None),
            "lost_files": getattr(move, "lost", None),
            "lost_since": getattr(move, "lost_since", None),
            # per kernel: pre-copy, freeze delta and restore mode (issue 14's pre-copy)
            "kernel_state": getattr(move, "kernel_state", None) or None,
        }
        if reason.startswith("requested by "):
            fields["by"] = reason[len("requested by ") :]
        if getattr(move, "attempts", 1) > 1:
            # new hosts tried: the first one's server did not come up after the freeze
            fields["new_hosts_tried"] = move.attempts
        if error is not None:
            fields.update(outcome="failed", error=str(error))
        return self.record(server.key, MOVE, reason_kind(reason), **fields)
