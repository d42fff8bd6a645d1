"""One move of one server from its host to a new one.

The order keeps the hold short: the new host is acquired, the home pre-copied and the new
server started while the old one still serves. Only the cut-over is held: the final
(delta) checkpoint, stopping the old server, restoring the delta, and re-pointing the
route. If the old host dies first, the server comes back from the last good checkpoint and
the user is told what was lost.

A move sees its server, the proxy and the provider only through the protocols in
moving/protocol.py (and HostProvider.take: a spare host at once, if one is kept).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from .checkpoint import CheckpointError
from .hosts.base import Host, HostError, HostProvider
from .moving.clock import Clock
from .moving.protocol import MovableServer, RouteHold
from .moving.record import SWITCHED, MoveRecord
from .moving.scheduler import MoveError, MoveScheduler

#: seconds between a move's start and its freeze below which it starts the new server
#: before any pre-copy (`MigratingController.short_notice_seconds`; kernels' moves too)
SHORT_NOTICE = 10.0


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _nth(n: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(n, f"{n}th")


class Move:
    def __init__(
        self,
        server: MovableServer,
        routes: RouteHold,
        provider: HostProvider,
        reason: str,
        deadline: float,
        margin: float,
        clock: Clock | None = None,
        ready_timeout: float = 180.0,
        tries: int = 3,
        short_notice: float = 0.0,
    ):
        self.server = server
        self.routes = routes
        self.provider = provider
        self.reason = reason
        self.deadline = deadline
        self.margin = margin  # freeze this many seconds before the deadline
        self.clock = clock or Clock()
        # seconds a new server gets to answer; hosts tried in all once the old server no
        # longer serves (the first new host, then others from the committed checkpoint)
        self.ready_timeout = ready_timeout
        self.tries = max(1, tries)
        # with less than this before the freeze, pre-copies cost the new server's start
        # more time than they save the freeze: the new server starts first
        self.short_notice = short_notice
        self.attempts = 1
        self.old_stopped = False  # the old server no longer serves: never route back to it
        self.old: Host | None = server.host
        self.new: Host | None = None
        self.record: MoveRecord | None = None
        self.held = False
        self.hold_started: float | None = None
        self.precopy_task: asyncio.Future | None = None
        self.timings: dict[str, float] = {}
        #: seconds of each step inside the hold, in order (history: where a hold goes)
        self.hold_steps: dict[str, float] = {}
        self._last_mark: float | None = None
        self.lost: str | None = None  # what the user lost, said in their log
        self.lost_since: float | None = None  # the checkpoint time `lost` counts from
        self.final_id: str | None = None
        self.frozen = False
        self.kernels_saved = False
        self.current_files: Any = None
        self.port: int | None = None
        #: the kernels' pre-copy and delta: what the history entry records (per kernel:
        #: precopy written_bytes, freeze mode/changed/written_bytes, restore mode/why/loaded)
        self.kernel_state: dict[str, Any] = {}
        self._precopied = False
        #: the steps this move took, in order (what tests and the log read)
        self.steps: list[str] = []
        self._sooner = asyncio.Event()  # a notice brought the deadline forward

    @classmethod
    def scheduled(
        cls,
        scheduler: MoveScheduler,
        provider: HostProvider,
        margin: float,
        server: MovableServer,
        reason: str,
        deadline: float,
        ready_timeout: float = 180.0,
        tries: int = 3,
        short_notice: float = 0.0,
    ) -> Move:
        """A move for `scheduler` to run (its `make_move`): with its route hold and clock."""
        return cls(
            server,
            scheduler.routes,
            provider,
            reason,
            deadline,
            margin,
            scheduler.clock,
            ready_timeout=ready_timeout,
            tries=tries,
            short_notice=short_notice,
        )

    def tighten(self, deadline: float) -> None:
        """A notice came in during the move (e.g. a `migrate` whose host is now being
        reclaimed): freeze by the nearer deadline."""
        if deadline < self.deadline:
            self.deadline = deadline
            self._sooner.set()

    def _left(self) -> float:
        return self.deadline - self.clock.time()

    async def run(self) -> dict[str, Any]:
        server = self.server
        started = self.clock.monotonic()
        server.emit(f"Moving ({self.reason}); {max(0, self._left()):.0f} s to go", level="warning")
        # a background pre-copy still running could commit after the final checkpoint
        # and make an older state look like the latest
        server.stop_precopy()
        prepare = asyncio.ensure_future(self._prepare())
        try:
            await self._freeze_by_deadline(prepare)
            await prepare
            await self._cut_over()
        except Exception as e:
            if not prepare.done():
                prepare.cancel()
            if not (self.frozen or self.old_stopped) or server.host is self.new:
                await self._abort()
                raise
            # the old server is stopped (or frozen): the route stays held and the move
            # goes on to another host from the checkpoint it has, never back to the old one
            try:
                await self._retry_elsewhere(e)
            except asyncio.CancelledError:
                await self._abort()
                raise
        except BaseException:
            if not prepare.done():
                prepare.cancel()
            await self._abort()
            raise
        server.persist_move(None)
        if self.old is not None:
            await server.release_host(self.old)
        self.steps.append("released old host")
        self.timings["total"] = self.clock.monotonic() - started
        message = f"Moved to {self.new.id} ({self.new.address}) in {self.timings['total']:.1f} s"
        if self.attempts > 1:
            message += f" (on the {_nth(self.attempts)} new host tried)"
            if not self.lost:
                message += "; nothing was lost"
        if self.lost:
            message += f"; {self.lost}"
        server.emit(message, level="warning" if self.lost else "info")
        server.start_precopy()
        return {"from": self.old.id if self.old else None, "to": self.new.id, **self.timings}

    async def _freeze_by_deadline(self, prepare: asyncio.Future) -> None:
        """The old host dies at the deadline: freeze it (hold, final checkpoint, stop)
        while it still answers, even if the new server is not ready yet."""
        while not prepare.done():
            self._sooner.clear()
            timer = asyncio.ensure_future(self.clock.sleep(max(0.0, self._left() - self.margin)))
            sooner = asyncio.ensure_future(self._sooner.wait())
            try:
                await asyncio.wait([prepare, timer, sooner], return_when=asyncio.FIRST_COMPLETED)
                due = timer.done()
            finally:
                timer.cancel()
                sooner.cancel()
            if due and not prepare.done():
                self.server.emit("Deadline near: holding requests until the new server is ready")
                await self._freeze()
                return

    async def _prepare(self) -> None:
        """Everything that can happen while the old server still serves."""
        server = self.server
        old_alive = await server.server_alive(self.old)
        earlier = server.saved_move()
        final = earlier.final_checkpoint if earlier else None
        if not old_alive and final and final == server.checkpoint_id:
            # a move a hub restart cut short had stopped the old server after its final
            # checkpoint (scheduler.settle kept it): this move goes on from it
            self.old_stopped = True
            self.final_id, self.kernels_saved = final, earlier.kernels_saved
            self.record = MoveRecord(
                self.reason,
                self.deadline,
                self.old,
                final_checkpoint=final,
                kernels_saved=self.kernels_saved,
            )
            server.emit(
                f"The old server was stopped after the final checkpoint {self.final_id}, "
                "taken while requests were held: restoring it; nothing was lost"
            )
            await self._hold()
        elif not old_alive:
            self.old_stopped = True
            self._note_loss("the old host was gone before the move")
            # nothing serves the route any more: requests wait for the new server instead
            # of getting the proxy's 503 (the freeze re-checks and saves what it still can)
            await self._hold()
        instance_type = self.old.instance_type if self.old else ""
        self.new = await self.provider.take(instance_type, owner=server.key)
        if self.record is None:
            self.record = MoveRecord(self.reason, self.deadline, self.old, self.new)
        self.record.new_host = self.new  # a freeze before this kept its final checkpoint
        server.persist_move(self.record)
        self.steps.append("acquired")
        server.emit(f"New host {self.new.id} at {self.new.address}")
        precopy = old_alive and not self.frozen
        precopy_home = precopy
        if precopy and self._left() - self.margin < self.short_notice:
            precopy = False
            # the new server reads its home at start (its cookie secret, its config): it
            # starts from the last checkpoint, or, if there is none, from this first one
            precopy_home = server.checkpoint_id is None
            self.steps.append("short notice")
            server.emit(
                f"Short notice ({max(0.0, self._left()):.0f} s): starting the new server "
                "first; the freeze moves its kernels whole and the files changed since "
                + ("this first checkpoint" if precopy_home else "the last checkpoint")
            )
        if precopy:
            # before the home pre-copy, which then carries the kernels' snapshots along
            await self._precopy_kernels()
        if server.home_mode == "synced":
            if precopy_home:
                # a task the freeze can cancel: a pre-copy committed after the final
                # checkpoint would make an older state look like the latest
                self.precopy_task = asyncio.ensure_future(
                    server.checkpoint_home(self.old, reason="move pre-copy")
                )
                try:
                    await self.precopy_task
                    self.steps.append("pre-copied")
                except (HostError, CheckpointError, asyncio.CancelledError) as e:
                    server.log.warning("pre-copy for the move ended early: %r", e)
            if server.checkpoint_id:
                self.current_files = await server.restore_home(self.new, server.checkpoint_id)
        self.port = await server.launch(self.new)
        self.steps.append("launched")
        await server.wait_ready(self.new, self.port, self.ready_timeout)
        self.steps.append("ready")
        if self._precopied and not self.frozen:
            await self._prestart_kernels()
        server.emit(f"Server ready on {self.new.address}:{self.port}; switching over")

    async def _freeze(self) -> None:
        """Hold the route, take the final checkpoint, stop the old server. Runs once."""
        if self.frozen:
            return
        self.frozen = True
        server = self.server
        if self.precopy_task is not None and not self.precopy_task.done():
            self.precopy_task.cancel()
        await self._hold()
        old_alive = await server.server_alive(self.old)
        self._mark("check the old server")
        if old_alive:
            self.kernels_saved = await self._snapshot_kernels()
        self._mark("kernel snapshot")
        if server.home_mode == "synced" and old_alive:
            try:
                self.final_id = await asyncio.wait_for(
                    server.checkpoint_home(self.old, reason="move final"),
                    max(1.0, self._left()),
                )
            except (HostError, CheckpointError, asyncio.TimeoutError) as e:
                # a timeout's text is empty: say what ran out
                why = str(e) or "not done by the deadline"
                self._note_loss(f"the final checkpoint failed ({why})")
        elif not old_alive and self.lost is None and not self.final_id:
            # it died after the move began (e.g. a 0 s notice, or during the pre-copy):
            # the new host gets the last checkpoint, and the user must hear what that misses
            self._note_loss("the old host was gone before its final checkpoint")
        self._mark("final checkpoint")
        if self.old is not None:
            # SIGKILL, no grace: a clean shutdown would close websockets with 1001,
            # which JupyterLab does not retry; a dropped connection it does
            await server.kill_server(self.old)
        self.old_stopped = True
        self._mark("stop the old server")
        if self.final_id:
            # one commit in the hold: the final checkpoint's id (only in memory until now)
            # and the record naming it, so a hub restart before the switch resumes from it
            if self.record is None:  # frozen before the new host was acquired
                self.record = MoveRecord(self.reason, self.deadline, self.old)
            self.record.final_checkpoint = self.final_id
            self.record.kernels_saved = self.kernels_saved
            server.persist_move(self.record)
        self._mark("commit the record")
        self.steps.append("frozen")

    async def _hold(self) -> None:
        """Hold the route (once): requests wait in the proxy's hold server."""
        if self.hold_started is not None:
            return
        self.hold_started = self._last_mark = self.clock.monotonic()
        await self.routes.hold(self.server)
        self.held = True
        self.steps.append("held")
        self._mark("hold the route")

    async def _cut_over(self) -> None:
        """The held part: final delta, stop the old server, restore, re-point, release."""
        server = self.server
        await self._freeze()
        # frozen before the new server was ready: the rest of its start
        self._mark("wait for the new server")
        if self.final_id:
            await server.restore_home(self.new, self.final_id, current=self.current_files)
        elif server.home_mode == "synced" and server.checkpoint_id and self.current_files is None:
            await server.restore_home(self.new, server.checkpoint_id)
        self._mark("home restore")
        # without a final snapshot the kernels come back from an older one: say how old
        restored = await server.restore_kernels(self.new, self.port, final=self.kernels_saved)
        self._note_kernels("restore", restored, ("mode", "why", "precopy", "loaded_bytes"))
        self._mark("kernel restore")
        self.record.phase = SWITCHED
        await server.switch_to(self.new, self.port, self.record)
        self.steps.append("switched")
        self._mark("switch")
        if self.held:
            await self.routes.release(server)
            self.held = False
            self.steps.append("released")
            self._mark("release the route")
        self.timings["hold"] = self.clock.monotonic() - self.hold_started

    def _mark(self, step: str) -> None:
        """Add the time since the last mark to `step` in `hold_steps` (inside the hold)."""
        if self._last_mark is None:
            return
        now = self.clock.monotonic()
        self.hold_steps[step] = self.hold_steps.get(step, 0.0) + now - self._last_mark
        self._last_mark = now

    async def _precopy_kernels(self) -> None:
        """Snapshot the old server's kernels while they keep serving, so the freeze only
        ships what cells change from now on (a failure costs only that: the freeze then
        takes and restores whole snapshots, as without a pre-copy)."""
        server = self.server
        budget = max(2.0, min(server.kernel_state_timeout, self._left() - self.margin - 1))
        try:
            report = await server.precopy_kernels(self.old, server.port, budget)
        except (HostError, OSError, asyncio.TimeoutError) as e:
            server.log.warning("kernel pre-copy for the move failed: %r", e)
            self.kernel_state["precopy_error"] = str(e)
            return
        self._note_kernels("precopy", report, ("mode", "written_bytes", "seconds"))
        kernels = report.get("kernels") or {}
        self._precopied = any(r.get("ok") for r in kernels.values())
        if self._precopied:
            self.steps.append("kernels pre-copied")
            size = sum(r.get("written_bytes") or 0 for r in kernels.values())
            server.emit(
                f"Kernels pre-copied ({size / 1e6:.0f} MB written); what cells change from "
                "now on moves in the freeze"
            )

    async def _prestart_kernels(self) -> None:
        """On the new server: the kernels start under their ids with the pre-copy restored
        (nobody reaches them before the switch); the freeze's restore applies the delta."""
        server = self.server
        try:
            report = await server.prestart_kernels(self.new, self.port)
        except (HostError, OSError, asyncio.TimeoutError) as e:
            server.log.warning("kernel prestart for the move failed: %r", e)
            self.kernel_state["prestart_error"] = str(e)
            return
        self._note_kernels("prestart", report, ("ok", "error", "mode", "seconds"))
        self.steps.append("kernels prestarted")

    def _note_kernels(self, phase: str, report: Any, keys: tuple[str, ...]) -> None:
        kernels = (report or {}).get("kernels") or {}
        for kernel_id, result in kernels.items():
            mine = self.kernel_state.setdefault("kernels", {}).setdefault(kernel_id, {})
            mine[phase] = {k: result.get(k) for k in keys if k in result}
            if phase == "freeze":
                mine[phase]["changed"] = result.get("changed")

    async def _snapshot_kernels(self) -> bool:
        """The final kernel snapshot on the old server, written into the home; whether it
        was taken (kernels whose snapshot failed say so themselves at the restore)."""
        server = self.server
        budget = max(2.0, min(server.kernel_state_timeout, self._left() - 1))
        try:
            report = await server.snapshot_kernels(self.old, server.port, budget)
        except (HostError, OSError, asyncio.TimeoutError) as e:
            server.emit(f"Kernel state could not be saved: {e}", level="warning")
            return False
        self._note_kernels("freeze", report, ("mode", "why", "written_bytes", "seconds"))
        for kernel_id, result in report.get("kernels", {}).items():
            if result.get("failed"):
                server.emit(
                    f"Kernel {kernel_id[:8]}: {result.get('reason')}; the new host restores "
                    "an older state of it, and the notebook will say how old",
                    level="warning",
                )
            cell = result.get("interrupted")
            if cell:
                which = f": {cell.strip().splitlines()[0][:80]!r}" if isinstance(cell, str) else ""
                server.emit(
                    f"Kernel {kernel_id[:8]} was busy at the deadline; the cell it was running "
                    f"was interrupted and did not finish{which}",
                    level="warning",
                )
        return True

    def _note_loss(self, why: str) -> None:
        server = self.server
        if server.home_mode != "synced":
            return
        if server.checkpoint_id:
            created = server.checkpoint_time(server.checkpoint_id)
            since = (
                f"after {_clock(created)}"
                if created is not None
                else f"since checkpoint {server.checkpoint_id}"
            )
            self.lost = f"{why}: files changed {since} were lost"
            self.lost_since = created
        else:
            self.lost = f"{why}: no checkpoint existed"
        server.emit(self.lost, level="warning")

    async def _retry_elsewhere(self, error: Exception) -> None:
        """The old server no longer serves and the new one failed: keep the route held and
        start the server on another host from the checkpoint the move has (its final one,
        when the freeze took it), up to `tries` hosts in all; then end it (_give_up)."""
        server = self.server
        if self.old is not None and not self.old_stopped:
            await server.kill_server(self.old)  # a freeze cut short: frozen, not serving
            self.old_stopped = True
        checkpoint = self.final_id or server.checkpoint_id
        if self.final_id:
            source = f"the final checkpoint {self.final_id}, taken while requests were held"
        elif server.home_mode == "synced" and checkpoint:
            source = f"checkpoint {checkpoint}"
        else:
            source = "its home on shared storage"
        while True:
            server.log.warning(
                "move of %s, new host %d failed: %r", server.key, self.attempts, error
            )
            failed, self.new = self.new, None
            if failed is not None:
                await server.release_host(failed)
            if self.attempts >= self.tries:
                await self._give_up(error, checkpoint)
                raise MoveError(
                    f"the server did not come up on {self.tries} new hosts: {error}"
                ) from error
            self.attempts += 1
            kept = "" if self.lost else "; nothing was lost"
            server.emit(
                f"The new server did not come up ({error}). Requests stay held: trying "
                f"another host ({self.attempts} of {self.tries}) from {source}{kept}",
                level="warning",
            )
            self.steps.append("retry")
            try:
                await self._start_elsewhere(checkpoint)
                await self._cut_over()
                return
            except Exception as e:
                error = e

    async def _start_elsewhere(self, checkpoint: str | None) -> None:
        """A retry: another host, the checkpoint restored, the server started and ready."""
        server = self.server
        instance_type = self.old.instance_type if self.old else ""
        self.new = await self.provider.take(instance_type, owner=server.key)
        if self.record is None:  # the first host was never acquired
            self.record = MoveRecord(self.reason, self.deadline, self.old, self.new)
        self.record.new_host = self.new
        server.persist_move(self.record)
        self.steps.append("acquired")
        server.emit(f"New host {self.new.id} at {self.new.address}")
        self.current_files = None
        if server.home_mode == "synced" and checkpoint:
            # before the start, as a resume does; the cut-over's restore then finds it there
            self.current_files = await server.restore_home(self.new, checkpoint)
        self.port = await server.launch(self.new)
        self.steps.append("launched")
        await server.wait_ready(self.new, self.port, self.ready_timeout)
        self.steps.append("ready")

    async def _give_up(self, error: BaseException | str, checkpoint: str | None) -> None:
        """No new host's server came up: end the server as a stop that kept its work. The
        route is not released to the old, stopped server: the hub's stop removes it (held
        requests get one 503, then JupyterHub's own "not running" page)."""
        server = self.server
        self.steps.append("gave up")
        if server.home_mode == "synced" and checkpoint:
            what = "files and kernels" if self.kernels_saved else "files"
            kept = f"your {what} are in checkpoint {checkpoint}"
        else:
            kept = "your files are on shared storage" + (
                ", the kernels' state in the home" if self.kernels_saved else ""
            )
        lost = f" ({self.lost})" if self.lost else " Nothing was lost"
        message = (
            f"The move failed ({error}) after the old server was stopped, on "
            f"{self.attempts} new host(s); the server is stopped.{lost}: {kept}, and the next "
            "start resumes from it."
        )
        server.persist_move(None)
        await server.end_after_failed_move(message, kernels_saved=self.kernels_saved)

    async def _abort(self) -> None:
        """The move failed or was cancelled: the old server (if not yet stopped) keeps
        serving; the new host goes. A stopped old server gets no route back (_give_up)."""
        server = self.server
        self.steps.append("aborted")
        switched = self.new is not None and server.host is self.new
        if self.new is not None and not switched:
            await server.release_host(self.new)
        if self.old_stopped and not switched:
            await self._give_up("cancelled", self.final_id or server.checkpoint_id)
            return
        if self.held:
            try:
                await self.routes.release(server)
            except Exception as e:
                server.log.error("could not release the hold of %s: %s", server.key, e)
        server.persist_move(None)
        server.start_precopy()  # the old server goes on serving: keep its home saved
