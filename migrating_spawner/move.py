"""One move of one server from its host to a new one.

The order keeps the hold short: the new host is acquired, the home pre-copied and the new
server started while the old one still serves. Only the cut-over is held: the final
(delta) checkpoint, stopping the old server, restoring the delta, and re-pointing the
route. If the old host dies first, the server comes back from the last good checkpoint and
the user is told what was lost.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .agent.client import AgentClient, AgentError
from .checkpoint import CheckpointError
from .hosts.base import Host, HostError

if TYPE_CHECKING:
    from .controller import MigratingController
    from .spawner import MigratingSpawner


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


class Move:
    def __init__(
        self,
        controller: MigratingController,
        spawner: MigratingSpawner,
        reason: str,
        deadline: float,
    ):
        self.controller = controller
        self.spawner = spawner
        self.reason = reason
        self.deadline = deadline
        self.old: Host | None = spawner.host
        self.new: Host | None = None
        self.held = False
        self.hold_started: float | None = None
        self.precopy_task: asyncio.Future | None = None
        self.timings: dict[str, float] = {}
        self.lost: str | None = None  # what the user lost, said in their log

    @property
    def proxy(self):
        return self.spawner.user.settings.get("proxy") or self.controller.app.proxy

    def _left(self) -> float:
        return self.deadline - time.time()

    async def _old_alive(self) -> bool:
        if self.old is None:
            return False
        try:
            status = await AgentClient(self.old, timeout=3, retries=0).process("server")
        except AgentError:
            return False
        return bool(status and status["running"])

    async def run(self) -> dict[str, Any]:
        spawner = self.spawner
        started = time.monotonic()
        spawner.emit(f"Moving ({self.reason}); {max(0, self._left()):.0f} s to go", level="warning")
        self.final_id: str | None = None
        self.frozen = False
        self.kernels_saved = False
        try:
            prepare = asyncio.ensure_future(self._prepare())
            # the old host dies at the deadline: freeze it (hold, final checkpoint, stop)
            # while it still answers, even if the new server is not ready yet
            freeze_at = self._left() - self.controller.final_checkpoint_margin
            done, _ = await asyncio.wait([prepare], timeout=max(0.0, freeze_at))
            if not done:
                spawner.emit("Deadline near: holding requests until the new server is ready")
                await self._freeze()
            await prepare
            await self._cut_over()
        except BaseException:
            if not prepare.done():
                prepare.cancel()
            await self._abort()
            raise
        spawner.move_record = None
        spawner.save_state()
        if self.old is not None:
            await spawner._release_quietly(self.old)
        self.timings["total"] = time.monotonic() - started
        message = f"Moved to {self.new.id} ({self.new.address}) in {self.timings['total']:.1f} s"
        if self.lost:
            message += f"; {self.lost}"
        spawner.emit(message, level="warning" if self.lost else "info")
        spawner.start_precopy()
        return {"from": self.old.id if self.old else None, "to": self.new.id, **self.timings}

    async def _prepare(self) -> None:
        """Everything that can happen while the old server still serves."""
        spawner = self.spawner
        old_alive = await self._old_alive()
        if not old_alive:
            self._note_loss("the old host was gone before the move")
            # nothing serves the route any more: requests wait for the new server instead
            # of getting the proxy's 503 (the freeze re-checks and saves what it still can)
            await self._hold()
        instance_type = self.old.instance_type if self.old else ""
        self.new = await self.controller.provider.acquire(instance_type)
        spawner.move_record = {
            "reason": self.reason,
            "deadline": self.deadline,
            "old_host": self.old.to_dict() if self.old else None,
            "new_host": self.new.to_dict(),
            "phase": "preparing",
        }
        spawner.save_state()
        spawner.emit(f"New host {self.new.id} at {self.new.address}")
        self.current_files = None
        if spawner.home_mode == "synced":
            if old_alive and not self.frozen:
                # a task the freeze can cancel: a pre-copy committed after the final
                # checkpoint would make an older state look like the latest
                self.precopy_task = asyncio.ensure_future(
                    spawner.checkpoint_home(self.old, reason="move pre-copy")
                )
                try:
                    await self.precopy_task
                except (HostError, CheckpointError, asyncio.CancelledError) as e:
                    spawner.log.warning("pre-copy for the move ended early: %r", e)
            if spawner.checkpoint_id:
                self.current_files = await spawner.restore_home(self.new, spawner.checkpoint_id)
        self.port = await spawner.launch(self.new)
        await spawner.wait_ready(self.new, self.port)
        spawner.emit(f"Server ready on {self.new.address}:{self.port}; switching over")

    async def _freeze(self) -> None:
        """Hold the route, take the final checkpoint, stop the old server. Runs once."""
        if self.frozen:
            return
        self.frozen = True
        spawner = self.spawner
        if self.precopy_task is not None and not self.precopy_task.done():
            self.precopy_task.cancel()
        await self._hold()
        old_alive = await self._old_alive()
        if old_alive:
            self.kernels_saved = await self._snapshot_kernels()
        if spawner.home_mode == "synced" and old_alive:
            try:
                self.final_id = await asyncio.wait_for(
                    spawner.checkpoint_home(self.old, reason="move final"),
                    max(1.0, self._left()),
                )
            except (HostError, CheckpointError, asyncio.TimeoutError) as e:
                self._note_loss(f"the final checkpoint failed ({e})")
        if self.old is not None:
            # SIGKILL, no grace: a clean shutdown would close websockets with 1001,
            # which JupyterLab does not retry; a dropped connection it does
            try:
                await AgentClient(self.old, timeout=5, retries=0).stop_process("server", grace=0)
            except AgentError:
                pass

    async def _hold(self) -> None:
        """Hold the route (once): requests wait in the proxy's hold server."""
        if self.hold_started is not None:
            return
        self.hold_started = time.monotonic()
        if hasattr(self.proxy, "hold"):
            await self.proxy.hold(self.spawner)
            self.held = True

    async def _cut_over(self) -> None:
        """The held part: final delta, stop the old server, restore, re-point, release."""
        spawner = self.spawner
        await self._freeze()
        if self.final_id:
            await spawner.restore_home(self.new, self.final_id, current=self.current_files)
        elif spawner.home_mode == "synced" and spawner.checkpoint_id and self.current_files is None:
            await spawner.restore_home(self.new, spawner.checkpoint_id)
        # without a final snapshot the kernels come back from an older one: say how old
        await spawner.restore_kernels(self.new, self.port, final=self.kernels_saved)
        await self._switch()
        if self.held:
            await self.proxy.release(spawner)
            self.held = False
        self.timings["hold"] = time.monotonic() - self.hold_started

    async def _snapshot_kernels(self) -> bool:
        """The final kernel snapshot on the old server, written into the home; whether it
        was taken (kernels whose snapshot failed say so themselves at the restore)."""
        spawner = self.spawner
        budget = max(2.0, min(spawner.kernel_state_timeout, self._left() - 1))
        try:
            report = await spawner.server_api(
                self.old,
                spawner.port,
                "POST",
                "migrating/checkpoint",
                {"timeout": budget, "freeze": True},
                timeout=budget + 10,
            )
        except (HostError, OSError, asyncio.TimeoutError) as e:
            spawner.emit(f"Kernel state could not be saved: {e}", level="warning")
            return False
        for kernel_id, result in report.get("kernels", {}).items():
            if result.get("failed"):
                spawner.emit(
                    f"Kernel {kernel_id[:8]}: {result.get('reason')}; the new host restores "
                    "an older state of it, and the notebook will say how old",
                    level="warning",
                )
            cell = result.get("interrupted")
            if cell:
                which = f": {cell.strip().splitlines()[0][:80]!r}" if isinstance(cell, str) else ""
                spawner.emit(
                    f"Kernel {kernel_id[:8]} was busy at the deadline; the cell it was running "
                    f"was interrupted and did not finish{which}",
                    level="warning",
                )
        return True

    async def _switch(self) -> None:
        """Point the hub's record and the proxy route at the new server."""
        spawner = self.spawner
        spawner.host = self.new
        spawner.ip = self.new.address
        spawner.port = self.port
        spawner.server.ip = self.new.address
        spawner.server.port = self.port
        spawner.move_record["phase"] = "switched"
        spawner.save_state()  # also commits the server row
        await self.proxy.add_user(spawner.user, spawner.name)

    def _note_loss(self, why: str) -> None:
        spawner = self.spawner
        if spawner.home_mode != "synced":
            return
        if spawner.checkpoint_id:
            try:
                created = self.controller.load_checkpoint(
                    spawner.key, spawner.checkpoint_id
                ).created
                since = f"after {_clock(created)}"
            except CheckpointError:
                since = f"since checkpoint {spawner.checkpoint_id}"
            self.lost = f"{why}: files changed {since} were lost"
        else:
            self.lost = f"{why}: no checkpoint existed"
        spawner.emit(self.lost, level="warning")

    async def _abort(self) -> None:
        """The move failed: the old server (if not yet frozen) keeps serving; the new host goes."""
        spawner = self.spawner
        if self.frozen:
            spawner.emit(
                f"The move failed after the old server was stopped; your files are in "
                f"checkpoint {spawner.checkpoint_id}: start the server again to resume",
                level="error",
            )
        if self.held:
            try:
                await self.proxy.release(spawner)
            except Exception as e:
                spawner.log.error("could not release the hold of %s: %s", spawner._log_name, e)
        if self.new is not None and spawner.host is not self.new:
            await spawner._release_quietly(self.new)
        spawner.move_record = None
        spawner.save_state()


async def drop_interrupted_move(spawner: MigratingSpawner) -> None:
    """The hub restarted mid-move and the old server is gone: free the half-made host."""
    record = spawner.move_record or {}
    if record.get("phase") == "switched":
        return  # the new host is the server's own now
    if record.get("new_host"):
        await spawner._release_quietly(Host.from_dict(record["new_host"]))
    spawner.move_record = None
    spawner.emit(
        "A move was interrupted by a hub restart and the old host is gone; "
        "start the server again to resume from its last checkpoint",
        level="warning",
    )


async def settle_interrupted_move(controller: MigratingController, spawner: MigratingSpawner):
    """The hub restarted during a move. Keep whichever server is whole; free the other host.

    - switched: the new server is the one; release the old host.
    - not switched, old server alive: drop the half-made new host; a notice still standing
      starts a fresh move at the next poll.
    - not switched, old server gone: move again from the last checkpoint.
    """
    record = spawner.move_record or {}
    new = Host.from_dict(record["new_host"]) if record.get("new_host") else None
    old = Host.from_dict(record["old_host"]) if record.get("old_host") else None
    spawner.log.warning("settling the interrupted move of %s: %s", spawner._log_name, record)
    if record.get("phase") == "switched":
        if old:
            await spawner._release_quietly(old)
        spawner.move_record = None
        spawner.save_state()
        spawner.emit("Move finished after a hub restart")
        return
    if new and (spawner.host is None or new.id != spawner.host.id):
        await spawner._release_quietly(new)
    spawner.move_record = None
    spawner.save_state()
    try:
        status = await AgentClient(spawner.host, timeout=3, retries=1).process("server")
        alive = bool(status and status["running"])
    except (AgentError, HostError):
        alive = False
    if alive:
        spawner.emit("A move was interrupted by a hub restart; the server stays where it was")
        # re-arm the proxy route in case it was held by the previous hub process
        await (spawner.user.settings.get("proxy") or controller.app.proxy).add_user(
            spawner.user, spawner.name
        )
    else:
        spawner.emit("A move was interrupted by a hub restart and the old host is gone")
        controller.schedule_move(spawner, "resume after hub restart", time.time())
