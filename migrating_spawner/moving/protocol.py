"""What the move engine needs from a server and from the proxy, and nothing more.

`MigratingSpawner` implements `MovableServer`; `MigratingProxy` implements `RouteHold`
(`NoRouteHold` stands in when the hub runs a proxy that cannot hold). The engine depends on
these protocols only, never on the classes, so the import graph has no circle.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..hosts.base import Host
from .record import MoveRecord


class MovableServer(Protocol):
    """One server that the scheduler can move from its host to another."""

    key: str  # "user/server": the name in the checkpoint store and the API
    host: Host | None  # where it serves now
    port: int
    home_mode: str  # "shared" or "synced" (the home moves with checkpoints)
    checkpoint_id: str | None  # the last good checkpoint of its home
    kernel_state_timeout: float
    log: logging.Logger | logging.LoggerAdapter

    @property
    def movable(self) -> bool:
        """Running, and not stopping: a stop takes its own checkpoint and ends the server."""

    @property
    def check_pending(self) -> bool:
        """The hub's startup check of this server runs (it must not move under it)."""

    def emit(self, message: str, progress: int | None = None, level: str = "info") -> None:
        """Tell the user (the server's event log) and the hub log."""

    def saved_move(self) -> MoveRecord | None:
        """The move record kept in the server's state (a hub restart finds it there)."""

    def persist_move(self, record: MoveRecord | None) -> None:
        """Keep (or clear) the move record in the server's state, written through now."""

    def checkpoint_time(self, checkpoint_id: str) -> float | None:
        """When a checkpoint was taken (None: unknown)."""

    async def server_alive(self, host: Host | None, retries: int = 0) -> bool:
        """Whether the server process runs on `host`."""

    async def launch(self, host: Host) -> int:
        """Start the server on `host`; returns its port."""

    async def wait_ready(self, host: Host, port: int, timeout: float | None = None) -> None:
        """Wait until the server on host:port answers, `timeout` seconds at most (raises if
        it exits or does not answer in time)."""

    async def checkpoint_home(self, host: Host, reason: str) -> str:
        """Snapshot the home on `host`; returns the checkpoint id."""

    async def restore_home(self, host: Host, checkpoint: Any, /, current: Any = None) -> Any:
        """Restore a checkpoint (its id) into the home on `host` (`current`: what is there
        already, as the last restore returned it)."""

    async def precopy_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        """A move's pre-copy: snapshot the kernels of the server on host:port into its home
        while they keep serving (no freeze); returns the per-kernel reports ({} if it
        cannot pre-copy kernels)."""

    async def prestart_kernels(self, host: Host, port: int) -> dict[str, Any]:
        """On the new server at host:port: start the kernels under their ids and restore
        the pre-copy snapshots into them, ahead of the freeze; returns per-kernel reports."""

    async def snapshot_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        """Freeze and snapshot the kernels of the server on host:port into its home."""

    async def restore_kernels(self, host: Host, port: int, final: bool = True) -> Any:
        """Bring the kernels back on the server at host:port (`final`: from a freeze);
        returns the restore's report (per kernel: mode delta|full, loaded_bytes), or None."""

    async def kill_server(self, host: Host) -> None:
        """Stop the server on `host` at once (no grace; never raises)."""

    async def switch_to(self, host: Host, port: int, record: MoveRecord) -> None:
        """Point the hub's record and the route at host:port, keeping `record` with it."""

    async def end_after_failed_move(self, message: str, kernels_saved: bool) -> None:
        """A move stopped the old server and could start it on no new host: end the server
        as a stop that kept its work (the route removed, never sent back to the old host;
        the next start resumes from the checkpoint); tell the user `message`."""

    async def rearm_route(self) -> None:
        """Point the route at the server where it is now (a dead hub may have held it)."""

    async def release_host(self, host: Host) -> None:
        """Give `host` back to the provider (never raises)."""

    def start_precopy(self) -> None:
        """(Re)start the background checkpoints of the home."""

    def stop_precopy(self) -> None:
        """Stop the background checkpoints (one under way is cancelled, not committed)."""


class MoveRun(Protocol):
    """One move under way, as the scheduler sees it (move.Move)."""

    deadline: float

    async def run(self) -> dict[str, Any]: ...

    def tighten(self, deadline: float) -> None: ...


class RouteHold(Protocol):
    """Requests for a server's route wait (instead of failing) between hold and release."""

    # the server (or its route spec): MigratingProxy calls its parameter `spawner`
    async def hold(self, server: Any, /) -> None: ...

    async def release(self, server: Any, /) -> None: ...


class NoRouteHold:
    """A proxy that cannot hold: requests during the cut-over get the proxy's error."""

    async def hold(self, server: Any) -> None:
        return None

    async def release(self, server: Any) -> None:
        return None
