"""Kernels on the one move engine (migrating_spawner.moving) that moves user servers.

- ``KernelServer`` is a ``MovableKernel`` as a ``MovableServer``: launch = start the kernel
  on the new host and wait for its kernel_info, snapshot = the kernel's namespace (a busy
  cell may go on until near the deadline), restore = into the new kernel, switch = the
  kernel's host and target, kill = its process on the old host. Its files live on storage
  every host sees, so the home steps are never called (``home_mode`` "shared").
- ``RelayHold`` is the route hold: the kernel's relay queues requests (and answers
  heartbeats) from the freeze until the relay points at the new kernel.
- ``KernelMover``: one ``MoveScheduler`` per host provider and event loop (a gateway
  process has one of each), fed by the provider's host watcher: a notice moves the kernels
  on that host, a host lost without one brings them back from their last snapshot.

Nothing here imports core.py (which builds on this): a kernel is seen as ``MovingKernel``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from migrating_spawner.hosts.base import Host, HostProvider
from migrating_spawner.move import SHORT_NOTICE, Move
from migrating_spawner.moving import Clock, MovableServer, MoveRecord, MoveScheduler

#: without a deadline, seconds a move retries a snapshot after the cell timeout
MOVE_RETRY_SECONDS = 10.0
#: seconds before the deadline at which the old kernel is frozen even if the new one is
#: not up yet: a busy cell needs them to be interrupted and the namespace to be written
FREEZE_MARGIN = 5.0
#: kernel moves run at once in one process; more wait, the nearest deadline first
MOVE_WORKERS = 8


class MovingKernel(Protocol):
    """What the adapter needs of a kernel (``core.MovableKernel``; tests hand in a fake)."""

    kernel_id: str
    host: Host | None
    target: dict[str, Any] | None
    stopping: bool
    timings: Any  # KernelTimings: cell_timeout
    moves: list[dict[str, Any]]
    relay: Any  # KernelRelay: pause(), shutdown_requested
    log: logging.Logger

    async def launch_on(self, host: Host) -> dict[str, Any]: ...
    async def precopy_snapshot(self, timeout: float) -> dict[str, Any] | None: ...
    async def restore_ahead(
        self, target: dict[str, Any], snap: dict[str, Any]
    ) -> dict[str, Any] | None: ...
    async def freeze_for_move(self, deadline: float) -> tuple[dict[str, Any] | None, str]: ...
    async def restore_after_move(
        self, target: dict[str, Any], snap: dict[str, Any] | None, notice: str
    ) -> dict[str, Any] | None: ...
    async def restore_after_loss(self, target: dict[str, Any]) -> dict[str, Any] | None: ...
    async def process_running(self, host: Host | None) -> bool: ...
    async def stop_on(self, host: Host) -> None: ...
    async def reopen_relay(self) -> None: ...
    def release_soon(self, host: Host) -> None: ...
    async def snapshot_loop(self) -> None: ...


class KernelServer:
    """One kernel as the move engine's ``MovableServer``."""

    home_mode = "shared"  # the kernel's files are on storage every host sees (work_root)
    checkpoint_id: str | None = None
    check_pending = False  # no hub checks kernels at its start

    def __init__(self, kernel: MovingKernel) -> None:
        self.kernel = kernel
        self.log = kernel.log
        self._record: MoveRecord | None = None
        self._entry: dict[str, Any] | None = None  # this move's line in kernel.moves
        self._started = 0.0
        self._next: dict[str, Any] | None = None  # the new kernel's connection info
        self._frozen: tuple[dict[str, Any] | None, str] | None = None  # freeze_for_move's
        self._precopy: dict[str, Any] | None = None  # the move's pre-copy snapshot report
        # the freeze's snapshot waits for a pre-copy still running in the kernel: two
        # snapshots of one folder at once could commit the older one last
        self._snapshotting = asyncio.Lock()
        self._snapshots: asyncio.Task | None = None

    @property
    def key(self) -> str:
        return self.kernel.kernel_id

    @property
    def host(self) -> Host | None:
        return self.kernel.host

    @property
    def port(self) -> int:
        return int((self.kernel.target or {}).get("shell_port") or 0)

    @property
    def kernel_state_timeout(self) -> float:
        # the move's budget for the snapshot: a busy cell's time and the retries after it
        return self.kernel.timings.cell_timeout + MOVE_RETRY_SECONDS + 1

    @property
    def movable(self) -> bool:
        kernel = self.kernel
        # a kernel asked to exit (a shutdown or a restart) is not moved: a move would
        # snapshot a dying kernel and start a new one
        return (
            kernel.target is not None
            and kernel.host is not None
            and not kernel.stopping
            and not kernel.relay.shutdown_requested
        )

    def emit(self, message: str, progress: int | None = None, level: str = "info") -> None:
        self.log.log(logging.getLevelName(level.upper()), "kernel %s: %s", self.key, message)

    def saved_move(self) -> MoveRecord | None:
        # kept in memory only: a gateway that restarts takes over kernels, not their moves
        return self._record

    def persist_move(self, record: MoveRecord | None) -> None:
        if record is not None:
            if self._entry is None:
                self._started = time.monotonic()
                self._entry = {
                    "reason": record.reason,
                    "from": record.old_host.id if record.old_host else None,
                    "started": time.time(),
                }
            self._record = record
            return
        entry, done = self._entry, self._record
        if entry is not None and done is not None:
            if done.switched and done.new_host is not None:
                seconds = round(time.monotonic() - self._started, 3)
                entry.update(to=done.new_host.id, seconds=seconds)
                self.log.warning(
                    "kernel %s: moved %s -> %s in %.2f s",
                    self.key,
                    entry["from"],
                    done.new_host.id,
                    seconds,
                )
            else:
                entry["error"] = "the move did not complete; the kernel stays where it was"
            self.kernel.moves.append(entry)
        self._record = self._entry = self._next = self._frozen = self._precopy = None

    def checkpoint_time(self, checkpoint_id: str) -> float | None:
        return None

    async def server_alive(self, host: Host | None, retries: int = 0) -> bool:
        return await self.kernel.process_running(host)

    async def launch(self, host: Host) -> int:
        self._next = await self.kernel.launch_on(host)  # it answers kernel_info already
        return int(self._next["shell_port"])

    async def wait_ready(self, host: Host, port: int, timeout: float | None = None) -> None:
        return None

    async def checkpoint_home(self, host: Host, reason: str) -> str:
        raise NotImplementedError("a kernel has no home of its own to checkpoint")

    async def restore_home(self, host: Host, checkpoint: Any, /, current: Any = None) -> Any:
        raise NotImplementedError("a kernel has no home of its own to restore")

    async def precopy_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        """Snapshot the kernel while it serves (the relay is not paused): the freeze's
        snapshot then writes only what cells change from now on (the mutation rule)."""
        async with self._snapshotting:
            self._precopy = await self.kernel.precopy_snapshot(timeout)
        if self._precopy is None:
            return {}  # none taken (R), or it failed: the freeze takes it whole
        report = self._precopy
        if self._entry is not None:
            self._entry["precopy"] = _summary(report, ("ok", "mode", "written_bytes", "error"))
        return {"kernels": {self.key: report}}

    async def prestart_kernels(self, host: Host, port: int) -> dict[str, Any]:
        """Restore the pre-copy into the kernel just launched on the new host (nobody
        reaches it before the switch): the freeze's restore then loads only the variables
        whose entries changed. A failure costs only that: the final restore is whole."""
        assert self._next is not None, "launch() first"
        if self._precopy is None:
            return {}
        report = await self.kernel.restore_ahead(self._next, self._precopy) or {"ok": False}
        if self._entry is not None:
            self._entry["prestart"] = _summary(report, ("ok", "mode", "loaded_bytes", "error"))
        return {"kernels": {self.key: report}}

    async def snapshot_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        async with self._snapshotting:
            self._frozen = await self.kernel.freeze_for_move(time.time() + timeout + 1)
        snap, notice = self._frozen
        if self._entry is not None:
            self._entry["snapshot"] = snap
            if snap is None:
                self._entry["snapshot_error"] = notice
        return {"kernels": {self.key: {"failed": True, "reason": notice} if snap is None else {}}}

    async def restore_kernels(self, host: Host, port: int, final: bool = True) -> None:
        assert self._next is not None, "launch() first"
        if final and self._frozen is not None:
            report = await self.kernel.restore_after_move(self._next, *self._frozen)
        else:  # the old kernel was gone before its snapshot
            report = await self.kernel.restore_after_loss(self._next)
        if self._entry is not None:
            self._entry["restore"] = report

    async def kill_server(self, host: Host) -> None:
        await self.kernel.stop_on(host)

    async def switch_to(self, host: Host, port: int, record: MoveRecord) -> None:
        self.kernel.host, self.kernel.target = host, self._next
        self._record = record

    async def end_after_failed_move(self, message: str, kernels_saved: bool) -> None:
        # no new kernel came up: the relay stops holding; the kernel manager finds the
        # kernel dead at its next poll (its snapshot stays where the freeze wrote it)
        self.emit(message, level="error")
        await self.kernel.reopen_relay()

    async def rearm_route(self) -> None:
        await self.kernel.reopen_relay()

    async def release_host(self, host: Host) -> None:
        self.kernel.release_soon(host)

    def start_precopy(self) -> None:
        if self.kernel.stopping:
            return
        if self._snapshots is None or self._snapshots.done():
            self._snapshots = asyncio.ensure_future(self.kernel.snapshot_loop())

    def stop_precopy(self) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
            self._snapshots = None


def _summary(report: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """What a move's record keeps of a kernel state report."""
    return {k: report[k] for k in keys if k in report}


class RelayHold:
    """The route hold of a kernel: its relay."""

    async def hold(self, server: Any, /) -> None:
        # requests queue in the relay; heartbeats are still answered
        server.kernel.relay.pause()
        server.log.info("kernel %s: holding requests in the relay", server.key)

    async def release(self, server: Any, /) -> None:
        await server.kernel.reopen_relay()


class KernelMover:
    """The move engine of one process's kernels on one host provider."""

    def __init__(
        self,
        provider: HostProvider,
        log: logging.Logger | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.provider = provider
        self.loop = asyncio.get_running_loop()
        self.scheduler = MoveScheduler(
            make_move=self._make_move, workers=MOVE_WORKERS, clock=clock, log=log
        )
        self.scheduler.routes = RelayHold()
        self.scheduler.start()
        # a notice moves the kernels on its host; a host lost without one, too, from their
        # last snapshots
        self._follow = asyncio.ensure_future(
            self.scheduler.follow(provider.watcher, on_lost=self.scheduler.host_lost)
        )

    async def stop(self) -> None:
        self._follow.cancel()
        await asyncio.gather(self._follow, return_exceptions=True)
        await self.scheduler.stop()

    def _make_move(self, server: MovableServer, reason: str, deadline: float) -> Move:
        return Move.scheduled(
            self.scheduler,
            self.provider,
            FREEZE_MARGIN,
            server,
            reason,
            deadline,
            short_notice=SHORT_NOTICE,
        )


_MOVERS: dict[int, KernelMover] = {}


def mover_for(provider: HostProvider, log: logging.Logger | None = None) -> KernelMover:
    """The ``KernelMover`` of ``provider`` in the running event loop (made on first use)."""
    mover = _MOVERS.get(id(provider))
    if (
        mover is None
        or mover.provider is not provider
        or mover.loop is not asyncio.get_running_loop()
    ):
        mover = _MOVERS[id(provider)] = KernelMover(provider, log)
    return mover
