"""What the hub tells about its servers: each server's history and the Prometheus metrics,
fed by the move engine (a scheduler listener) and by the spawner's stops and starts.

The controller builds one `Observer` (`controller.observer`); spawners and the API reach it
there. Nothing here moves anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jupyterhub import orm

from . import metrics
from .history import ServerHistory

__all__ = ["Observer"]


class Observer:
    """The history and the metrics of one hub's servers."""

    def __init__(self, controller: Any, history: ServerHistory):
        self.controller = controller
        self.history = history
        self._following = False
        self._pushing = False
        controller.scheduler.listeners.append(self.on_move)
        metrics.watch(self._hosts, self._suspended)

    # -- fed by the engine and the spawner ---------------------------------------------

    def on_move(self, server: Any, move: Any, result: Any, error: BaseException | None) -> None:
        entry = self.history.on_move(server, move, result, error)
        metrics.count_move(entry["reason"], entry["outcome"], getattr(move, "timings", {}))
        metrics.LOST_VARIABLES.inc(self.history.lost_variables(entry))

    def checkpoint(self, key: str, reason: str, stats: dict[str, Any]) -> None:
        """A home checkpoint was committed: its bytes count, and a move's or a stop's go
        into that entry's `bytes_moved` (background pre-copies only into the metric)."""
        metrics.CHECKPOINT_BYTES.inc(int(stats.get("bytes_uploaded") or 0))
        if reason.startswith("move") or reason == "stop":
            self.history.note_checkpoint(key, stats)

    def record(self, key: str, kind: str, reason: str, **fields: Any) -> dict[str, Any]:
        entry = self.history.record(key, kind, reason, **fields)
        metrics.LOST_VARIABLES.inc(self.history.lost_variables(entry))
        return entry

    def follow_notices(self, watcher: Any) -> None:
        """Count every notice the host watcher takes in, once (it tells each once)."""
        if not self._following:
            self._following = True
            watcher.subscribe(self._on_host_event)

    @contextmanager
    def pushing(self) -> Iterator[None]:
        """Notices the watcher tells meanwhile came from an agent's push (not its poll)."""
        self._pushing = True
        try:
            yield
        finally:
            self._pushing = False

    def _on_host_event(self, event: Any) -> None:
        if event.kind == "notice" and event.notice:
            # a notice may name its own source (e.g. eventbridge); else how it came
            source = event.notice.get("source") or ("push" if self._pushing else "poll")
            metrics.NOTICES.labels(source=source).inc()

    # -- gauges, read at scrape time ---------------------------------------------------

    def _hosts(self) -> list[tuple[str, str, str]]:
        provider = self.controller.provider.name
        return [
            (provider, s.host.market, s.host.instance_type or "default")
            for s in self.controller.spawners.values()
            if s.host is not None
        ]

    def _suspended(self) -> int:
        db = self.controller.app.db
        count = 0
        for orm_spawner in db.query(orm.Spawner).filter(orm.Spawner.server_id.is_(None)):
            if (orm_spawner.state or {}).get("checkpoint_id"):
                count += 1
        return count
