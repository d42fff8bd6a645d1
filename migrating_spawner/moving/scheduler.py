"""The hub-side move scheduler: notice intake, a queue, workers, recovery after a restart.

One per hub. It is the one place that knows whether a server is moving. It sees servers
only as `MovableServer`s and the proxy only as a `RouteHold`; the controller hands in the
provider, the hold and the hub's start signal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..hosts.watcher import LOST, NOTICE, HostEvent, HostWatcher
from .clock import Clock
from .protocol import MovableServer, MoveRun, NoRouteHold, RouteHold
from .record import MoveRecord


class MoveError(Exception):
    """A move could not be completed."""


async def _no_wait() -> None:
    return None


class MoveScheduler:
    """Queue moves nearest deadline first and run `workers` of them at once."""

    def __init__(
        self,
        *,
        make_move: Callable[[MovableServer, str, float], MoveRun],
        workers: int = 4,
        urgent_lead: float = 60.0,
        clock: Clock | None = None,
        log: logging.Logger | None = None,
        hub_started: Callable[[], bool] = lambda: True,
        wait_hub_started: Callable[[], Awaitable[None]] = _no_wait,
    ):
        self.routes: RouteHold = NoRouteHold()  # the proxy hands itself in (see controller)
        self._make_move = make_move
        self.workers = workers
        # a notice's move still queued this many seconds before its deadline starts anyway:
        # the worker limit bounds load, it must never cost a server its final checkpoint
        self.urgent_lead = urgent_lead
        self.clock = clock or Clock()
        self.log = log or logging.getLogger(__name__)
        self.hub_started = hub_started
        self._wait_hub_started = wait_hub_started
        self.servers: dict[str, MovableServer] = {}
        self._moves: dict[str, asyncio.Future] = {}
        self._deadlines: dict[str, float] = {}  # of queued and running moves
        self._running: dict[str, MoveRun] = {}
        self._taken: set[str] = set()  # keys whose queued move a worker (or urgency) took
        self._urgent: set[asyncio.Task] = set()  # timers of notice moves still queued
        # called with (server, move, result, error) as each move ends (history, metrics)
        self.listeners: list[Callable[[MovableServer, MoveRun, Any, Any], None]] = []
        self._runs: dict[str, asyncio.Future] = {}  # the task of each running move
        # host id -> {"deadline", "moving": [server keys]}: what on_notice answered
        self._notices: dict[str, dict[str, Any]] = {}
        # moves queue up from the start; workers take them once the hub has started
        self._queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._recovering: set[str] = set()
        self._settling: dict[str, asyncio.Future] = {}

    # -- servers ------------------------------------------------------------------

    def register(self, server: MovableServer) -> None:
        self.servers[server.key] = server

    def forget(self, key: str) -> None:
        """The server is gone for good (a kernel shut down): no notice moves it any more."""
        self.servers.pop(key, None)

    def servers_on(self, host_id: str) -> list[MovableServer]:
        return [s for s in self.servers.values() if s.host and s.host.id == host_id]

    def is_moving(self, key: str) -> bool:
        """Whether a move of this server is queued or running, or a move a hub restart cut
        short is being settled: the one answer (poll() says alive, notices wait)."""
        return key in self._moves or key in self._settling

    # -- workers ------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        tasks = self._tasks + list(self._urgent)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    async def wait_checked(self, server: MovableServer, timeout: float = 120) -> None:
        """Wait while the hub's startup check of this server runs (it must not move then)."""
        deadline = self.clock.monotonic() + timeout
        while server.check_pending and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.2)

    async def _worker(self) -> None:
        await self._wait_hub_started()
        while True:
            deadline, _, server, reason, future = await self._queue.get()
            await self._run(server, reason, deadline, future)

    async def _run(
        self, server: MovableServer, reason: str, deadline: float, future: asyncio.Future
    ) -> None:
        """Run one queued move, unless it was cancelled or already taken."""
        if self._moves.get(server.key) is not future or server.key in self._taken:
            return  # cancelled while it waited, or started early by its deadline
        self._taken.add(server.key)
        try:
            if not server.movable:
                # a stop began while the move waited: the stop ends the server, with
                # its own checkpoint; a move would race it for the host
                raise MoveError(f"{server.key} is stopping; not moved")
            await self.wait_checked(server)
            move = self._make_move(server, reason, self._deadlines.get(server.key, deadline))
            self._running[server.key] = move
            run = self._runs[server.key] = asyncio.ensure_future(move.run())
            try:
                result = await run
            except asyncio.CancelledError:
                if not run.cancelled() or asyncio.current_task().cancelling():
                    raise  # the scheduler stops (its own cancel reaches the move too)
                raise MoveError(f"the move of {server.key} was cancelled") from None
        except Exception as e:
            self.log.exception("move of %s failed", server.key)
            server.emit(f"Move failed: {e}", level="error")
            self._tell(server, self._running.get(server.key), None, e)
            if not future.done():
                future.set_exception(e if isinstance(e, MoveError) else MoveError(str(e)))
                future.exception()  # retrieved: callers may not await it
        else:
            self._tell(server, self._running.get(server.key), result, None)
            if not future.done():
                future.set_result(result)
        finally:
            self._runs.pop(server.key, None)
            self._running.pop(server.key, None)
            self._deadlines.pop(server.key, None)
            self._moves.pop(server.key, None)
            self._taken.discard(server.key)

    def _tell(self, server: MovableServer, move: Any, result: Any, error: Any) -> None:
        """A move ended: its listeners hear it (history, metrics) before its callers."""
        if move is None:
            return  # no move was made (e.g. the server began stopping)
        for listener in self.listeners:
            try:
                listener(server, move, result, error)
            except Exception:
                self.log.exception("move listener %r failed for %s", listener, server.key)

    # -- moves ---------------------------------------------------------------------

    def schedule(
        self, server: MovableServer, reason: str, deadline: float | None = None
    ) -> asyncio.Future:
        """Queue a move; the nearest deadline goes first. Returns a future of its result."""
        if server.key in self._moves:
            return self._moves[server.key]
        future = asyncio.get_running_loop().create_future()
        self._moves[server.key] = future  # is_moving (and so poll()) says so from now on
        deadline = deadline or self.clock.time() + 3600
        self._deadlines[server.key] = deadline
        self._queue.put_nowait((deadline, next(self._order), server, reason, future))
        return future

    def _start_by_deadline(self, server: MovableServer, reason: str) -> None:
        """A notice's move waits for a worker at most until `urgent_lead` seconds before
        its deadline; then it runs beside the others, past the worker limit."""
        future = self._moves[server.key]

        async def start_by() -> None:
            await self._wait_hub_started()
            while self._moves.get(server.key) is future and server.key not in self._taken:
                left = self._deadlines.get(server.key, 0) - self.clock.time() - self.urgent_lead
                if left <= 0:
                    self.log.warning(
                        "%d moves running (max %d): starting the move of %s now, %.0f s "
                        "before its host is reclaimed",
                        len(self._taken),
                        self.workers,
                        server.key,
                        self._deadlines.get(server.key, 0) - self.clock.time(),
                    )
                    await self._run(server, reason, self._deadlines[server.key], future)
                    return
                await self.clock.sleep(min(left, 1.0))  # re-read: a notice may tighten it

        task = asyncio.ensure_future(start_by())
        self._urgent.add(task)
        task.add_done_callback(self._urgent.discard)

    def _tighten(self, server: MovableServer, deadline: float) -> None:
        """A notice for a server already moving: its move freezes by the nearer deadline,
        and a deadline a second or more nearer than the one the user was told is told."""
        key = server.key
        told = self._deadlines.get(key)
        if told is None or deadline < told:
            self._deadlines[key] = deadline
            move = self._running.get(key)
            if move is not None:
                move.tighten(deadline)
            if told is not None and told - deadline >= 1:
                seconds = max(0, round(deadline - self.clock.time()))
                server.emit(
                    f"The reclaim notice is shorter than first said: the host goes in {seconds} s",
                    level="warning",
                )

    async def cancel(self, key: str) -> bool:
        """Cancel a queued or running move of `key` and wait until it has ended (a running
        one aborts: the new host goes back); whether there was one."""
        future = self._moves.get(key)
        if future is None:
            return False
        run = self._runs.get(key)
        if run is None:  # still queued: the worker that takes it skips it
            self._moves.pop(key, None)
            self._deadlines.pop(key, None)
            if not future.done():
                future.set_exception(MoveError(f"the move of {key} was cancelled"))
                future.exception()
            return True
        run.cancel()
        await asyncio.wait([future])
        return True

    async def wait_for(self, server: MovableServer) -> None:
        settling = self._settling.get(server.key)
        if settling:
            await asyncio.wait([settling])
        future = self._moves.get(server.key)
        if future:
            await asyncio.wait([future])

    # -- notices ---------------------------------------------------------------------

    def on_notice(self, host_id: str, deadline: float) -> list[str]:
        """A host will be reclaimed at `deadline`: move every server on it.

        The one intake for every notice: the agent's push, the poller and the API's reclaim
        call all come here, in any order and as often as they like. Keyed by host, it is
        idempotent: each caller gets the same answer, the servers moving off that host
        (whoever scheduled their moves first).
        """
        self._forget_old_notices()
        intake = self._notices.setdefault(host_id, {"deadline": deadline, "moving": []})
        intake["deadline"] = min(intake["deadline"], deadline)
        moving = intake["moving"]
        for server in self.servers_on(host_id):
            if self.is_moving(server.key):
                # a settle under way: the next notice (the poller's) starts the move
                self._tighten(server, intake["deadline"])
            else:
                if not server.movable:
                    continue
                # a first notice, or a move of it that failed: (re)try while the host lives
                seconds = round(intake["deadline"] - self.clock.time())
                when = f"in {seconds} s" if seconds > 0 else "now"
                server.emit(
                    f"Host {host_id} will be reclaimed {when}: moving",
                    level="warning",
                )
                reason = f"reclaim notice for {host_id}"
                self.schedule(server, reason, intake["deadline"])
                self._start_by_deadline(server, reason)
            # moving now (also a `migrate`, or a notice taken a moment ago): every caller
            # hears of it
            if server.key not in moving:
                moving.append(server.key)
        return list(moving)

    async def follow(
        self,
        watcher: HostWatcher,
        on_lost: Callable[[MovableServer], Any] | None = None,
    ) -> None:
        """Take notices from a host watcher (its polls and the agents' pushes): at once, from
        its events, and again each of its intervals while one stands, so a move of it that
        failed is tried again. With `on_lost`, a server whose host the watcher calls lost
        goes there (the hub leaves that to poll()). Runs until cancelled."""
        await self._wait_hub_started()

        def on_event(event: HostEvent) -> None:
            if event.kind == NOTICE and event.notice:
                self.on_notice(event.host.id, event.notice["deadline"])
            elif event.kind == LOST and on_lost is not None:
                for server in self.servers_on(event.host.id):
                    if server.movable and not self.is_moving(server.key):
                        on_lost(server)

        unsubscribe = watcher.subscribe(on_event)
        try:
            while True:
                for server in list(self.servers.values()):
                    host = server.host
                    if host is None or not server.movable or self.is_moving(server.key):
                        continue
                    state = watcher.watch(host)
                    if state.notice:
                        self.on_notice(host.id, state.notice["deadline"])
                    elif state.lost and on_lost is not None:
                        on_lost(server)
                await self.clock.sleep(watcher.interval)
        finally:
            unsubscribe()

    def _forget_old_notices(self, keep: float = 600) -> None:
        # host ids are never reused: a notice long past its deadline has nothing to tell
        now = self.clock.time()
        for host_id in [h for h, n in self._notices.items() if n["deadline"] < now - keep]:
            del self._notices[host_id]

    # -- a host lost, a move cut short by a hub restart ------------------------------

    def host_lost(self, server: MovableServer) -> int | None:
        """The server's host vanished without notice: move it from its last checkpoint.

        Returns what poll() answers: None (a move is under way) or 1 (stopped; the next
        start resumes from the checkpoint).
        """
        where = server.host.id if server.host else "?"
        if server.home_mode == "synced" and not server.checkpoint_id:
            server.emit(f"Host {where} was lost and no checkpoint exists", level="error")
            return 1
        if not self.hub_started() or server.check_pending:
            # the hub is checking servers at start and would stop this one mid-move;
            # let it: the checkpoint stays and the next start resumes from it
            server.emit(f"Host {where} was lost while the hub was down", level="warning")
            return 1
        server.emit(f"Host {where} was lost without notice: restoring", level="warning")
        self.schedule(server, f"host {where} lost", self.clock.time())
        return None

    async def settle(self, server: MovableServer) -> int | None:
        """The one policy for a move a hub restart cut short; returns what poll() answers.

        Whichever host does not serve is released and the record cleared. Then:
        - the server runs where the record says it serves (the new host once the phase is
          `switched`, the old one before): it stays there, its route re-armed (the dead
          hub may have left it at its hold server); a notice still standing starts a fresh
          move at the next poll;
        - it does not run, stopped by the move after its final checkpoint (the record names
          it and the server's checkpoint is it): the move goes on from that checkpoint,
          nothing lost (or, while the hub still checks its servers at start, stopped: the
          next start resumes from it);
        - it does not run otherwise: its host is lost, and `host_lost` decides (a move from
          the last checkpoint, or stopped while the hub still checks its servers at start).
        Runs once per server at a time, whoever asks (poll() or `recover`).
        """
        task = self._settling.get(server.key)
        if task is None:
            task = asyncio.ensure_future(self._settle(server))
            self._settling[server.key] = task
            task.add_done_callback(lambda _: self._settling.pop(server.key, None))
        return await asyncio.shield(task)

    async def _settle(self, server: MovableServer) -> int | None:
        record = server.saved_move()
        if record is None:
            return None  # settled already
        self.log.warning("settling the interrupted move of %s: %s", server.key, record)
        serving = server.host
        spare = record.old_host if record.switched else record.new_host
        if spare is not None and (serving is None or spare.id != serving.id):
            await server.release_host(spare)
        server.persist_move(None)
        alive = await server.server_alive(serving, retries=1)
        final = record.final_checkpoint
        if not alive and not record.switched and final and final == server.checkpoint_id:
            # the old server was stopped after the move's final checkpoint: the move goes on
            # from it and says nothing was lost (Move._prepare reads the record kept here)
            said = (
                f"A move was interrupted by a hub restart after its final checkpoint {final} "
                "(taken while requests were held; the old server is stopped)"
            )
            kept = MoveRecord(
                record.reason,
                record.deadline,
                record.old_host,
                final_checkpoint=final,
                kernels_saved=record.kernels_saved,
            )
            server.persist_move(kept)
            if not self.hub_started() or server.check_pending:
                # as host_lost: the hub's startup check stops it, the next start resumes.
                # The kept record tells that stop the kernels' final snapshot is in the
                # checkpoint (not stale); the stop's clear_state drops it
                server.emit(f"{said}: nothing was lost; the next start resumes from it")
                return 1
            server.emit(f"{said}: the move goes on from it")
            self.schedule(server, record.reason, self.clock.time())
            return None
        if alive:
            await server.rearm_route()
            server.emit(
                "Move finished after a hub restart"
                if record.switched
                else "A move was interrupted by a hub restart; the server stays where it was"
            )
            return None
        server.emit("A move was interrupted by a hub restart and the server's host is gone")
        return self.host_lost(server)

    def recover(self, server: MovableServer) -> None:
        """After a hub restart in the middle of a move: settle it, once, after start."""
        if server.key in self._recovering:
            return
        self._recovering.add(server.key)
        task = asyncio.ensure_future(self._recover(server))
        task.add_done_callback(lambda _: self._recovering.discard(server.key))

    async def _recover(self, server: MovableServer) -> None:
        try:
            await self._wait_hub_started()
            await self.wait_checked(server)
            await self.settle(server)
        except Exception:
            self.log.exception("could not settle the interrupted move of %s", server.key)
