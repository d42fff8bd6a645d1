"""Kernels on the one move engine: KernelServer (a kernel as a MovableServer), RelayHold and
KernelMover, with the fake world, provider and clock of test_scheduler.py and a fake kernel.

No processes: the kernel's steps (start on a host, snapshot, restore, kill, re-point the
relay) are fakes that record themselves in `world.log`; the scheduler, the Move and the
adapter are the real ones, fed by a fake host watcher.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from test_scheduler import FakeClock, FakeProvider, World

from kernel_provisioner.core import KernelTimings
from kernel_provisioner.moving import FREEZE_MARGIN, KernelMover, KernelServer
from migrating_spawner.hosts.base import Host
from migrating_spawner.hosts.watcher import LOST, NOTICE, HostEvent

log = logging.getLogger("test_kernel_server")


class FakeRelay:
    def __init__(self, world: World) -> None:
        self.world = world
        self.paused = False
        self.shutdown_requested = False

    def pause(self) -> None:
        self.world.log.append("pause relay")
        self.paused = True


class FakeKernel:
    """A MovingKernel whose steps go into the world's log."""

    timings = KernelTimings()
    log = log

    def __init__(self, world: World, kernel_id: str = "k1") -> None:
        self.world = world
        self.kernel_id = kernel_id
        self.host: Host | None = world.new_host()
        world.running.add(self.host.id)
        self.target: dict[str, Any] | None = {"shell_port": 100, "on": self.host.id}
        self.stopping = False
        self.moves: list[dict[str, Any]] = []
        self.relay = FakeRelay(world)
        self.snapshot: tuple[dict[str, Any] | None, str] = ({"ok": True}, "")
        self.precopy: dict[str, Any] | None = {"ok": True, "mode": "full", "written_bytes": 9}
        self.restored: tuple[Any, ...] | None = None
        self.relay_points_at: dict[str, Any] | None = self.target

    async def launch_on(self, host: Host) -> dict[str, Any]:
        await self.world.step("launch")
        self.world.running.add(host.id)
        return {"shell_port": 200, "on": host.id}

    async def precopy_snapshot(self, timeout: float) -> dict[str, Any] | None:
        await self.world.step("precopy")
        return self.precopy

    async def restore_ahead(
        self, target: dict[str, Any], snap: dict[str, Any]
    ) -> dict[str, Any] | None:
        await self.world.step("restore ahead")
        return {"ok": True, "mode": "full"}

    async def freeze_for_move(self, deadline: float) -> tuple[dict[str, Any] | None, str]:
        await self.world.step("snapshot")
        return self.snapshot

    async def restore_after_move(
        self, target: dict[str, Any], snap: dict[str, Any] | None, notice: str
    ) -> dict[str, Any] | None:
        await self.world.step("restore")
        self.restored = (target, snap, notice)
        return {"ok": True}

    async def restore_after_loss(self, target: dict[str, Any]) -> dict[str, Any] | None:
        await self.world.step("restore last snapshot")
        self.restored = (target,)
        return {"ok": True}

    async def process_running(self, host: Host | None) -> bool:
        return host is not None and host.id in self.world.running

    async def stop_on(self, host: Host) -> None:
        await self.world.step(f"kill {host.id}")
        self.world.running.discard(host.id)

    async def reopen_relay(self) -> None:
        await self.world.step("reopen relay")
        self.relay.paused = False
        self.relay_points_at = self.target

    def release_soon(self, host: Host) -> None:
        self.world.log.append(f"release {host.id}")
        self.world.running.discard(host.id)

    async def snapshot_loop(self) -> None:
        self.world.log.append("snapshots on")
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.world.log.append("snapshots off")


class FakeWatcher:
    """The provider's host watcher, as KernelMover uses it: events, and a cache."""

    interval = 1.0

    def __init__(self) -> None:
        self.subscribers: list[Any] = []
        self.notices: dict[str, dict[str, Any]] = {}

    def subscribe(self, callback: Any, host_id: str | None = None) -> Any:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def watch(self, host: Host) -> Any:
        return type("State", (), {"notice": self.notices.get(host.id), "lost": False})()

    def publish(self, kind: str, host: Host, notice: dict[str, Any] | None = None) -> None:
        if notice:
            self.notices[host.id] = notice
        for callback in list(self.subscribers):
            callback(HostEvent(kind, host, notice))


class Provider(FakeProvider):
    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.watcher = FakeWatcher()


@pytest.fixture
async def mover():
    world, clock = World(), FakeClock()
    mover = KernelMover(Provider(world), log, clock=clock)
    await asyncio.sleep(0)  # the mover subscribes to the watcher
    yield mover, world, clock, kernel_on(mover, world)
    await mover.stop()


def kernel_on(mover: KernelMover, world: World) -> FakeKernel:
    kernel = FakeKernel(world)
    kernel.server = KernelServer(kernel)
    mover.scheduler.register(kernel.server)
    kernel.server.start_precopy()
    return kernel


def notice(mover: KernelMover, clock: FakeClock, host: Host, seconds: float) -> None:
    """The watcher learns that `host` goes in `seconds`."""
    mover.provider.watcher.publish(NOTICE, host, {"deadline": clock.time() + seconds})


async def moved(kernel: FakeKernel, count: int = 1, timeout: float = 5) -> dict[str, Any]:
    """The record of the kernel's move number `count`, once it has ended."""

    async def wait() -> None:
        while len(kernel.moves) < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)
    return kernel.moves[-1]


async def test_a_notice_moves_the_kernel_and_holds_only_for_the_cut_over(mover):
    mover, world, clock, kernel = mover
    old = kernel.host
    await asyncio.sleep(0)
    notice(mover, clock, old, 20)
    assert kernel.server.key in mover.scheduler._moves  # moving from the notice on

    record = await moved(kernel)
    new = kernel.host
    assert new.id != old.id and record["from"] == old.id and record["to"] == new.id
    # the new kernel starts while the old one serves; the relay holds only from the freeze
    assert world.before("launch", "pause relay")
    assert world.log.index("pause relay") < world.log.index("snapshot")
    assert world.before("snapshot", f"kill {old.id}")
    assert world.before(f"kill {old.id}", "restore")
    assert world.before("restore", "reopen relay")
    # restored from this move's snapshot into the new kernel, the relay re-pointed at it
    assert kernel.restored == (kernel.target, {"ok": True}, "")
    assert kernel.target == {"shell_port": 200, "on": new.id}
    assert kernel.relay_points_at == kernel.target and not kernel.relay.paused
    await asyncio.sleep(0)
    assert f"release {old.id}" in world.log
    # background snapshots stop for the move and start again after it
    assert world.log.count("snapshots on") == 2
    assert world.before("snapshots off", "pause relay")


async def test_the_freeze_comes_by_the_deadline_if_the_new_kernel_is_slow(mover):
    mover, world, clock, kernel = mover
    old = kernel.host
    world.gate("launch")
    notice(mover, clock, old, 20)
    await world.reached("launch")
    assert "pause relay" not in world.log  # the old kernel still serves
    clock.advance(20 - FREEZE_MARGIN)
    await world.reached("snapshot")
    assert world.before("pause relay", "snapshot")
    world.open("launch")
    record = await moved(kernel)
    assert record["to"] == kernel.host.id != old.id


async def test_a_lost_host_brings_the_kernel_back_from_its_last_snapshot(mover):
    mover, world, clock, kernel = mover
    old = kernel.host
    world.running.discard(old.id)  # the host died with its kernel
    mover.provider.watcher.publish(LOST, old)
    record = await moved(kernel)
    assert record["to"] == kernel.host.id != old.id
    # requests wait from the start (nothing serves them), nothing is snapshotted, the new
    # kernel gets the last snapshot there is
    assert world.before("pause relay", "launch")
    assert "snapshot" not in world.log
    assert "restore last snapshot" in world.log and "restore" not in world.log
    assert kernel.restored == (kernel.target,)


async def test_a_failed_start_leaves_the_kernel_where_it_was(mover):
    mover, world, clock, kernel = mover
    old, target = kernel.host, kernel.target
    world.failing.add("launch")
    notice(mover, clock, old, 20)
    record = await moved(kernel)
    assert "error" in record and "to" not in record
    assert kernel.host is old and kernel.target == target
    assert old.id in world.running and "snapshot" not in world.log
    [new_id] = [h for h in world.hosts if h != old.id]
    assert f"release {new_id}" in world.log  # the new host went back
    assert not mover.scheduler.is_moving(kernel.server.key)
    assert world.log.count("snapshots on") == 2  # the old kernel goes on being saved


async def test_cancel_during_the_snapshot_gives_the_new_host_back(mover):
    """What MovableKernel.shutdown does when a move is under way."""
    mover, world, clock, kernel = mover
    old = kernel.host
    world.gate("snapshot")
    notice(mover, clock, old, 20)
    await world.reached("snapshot")
    assert await mover.scheduler.cancel(kernel.server.key)
    assert not mover.scheduler.is_moving(kernel.server.key)
    [new_id] = [h for h in world.hosts if h != old.id]
    assert f"release {new_id}" in world.log
    assert kernel.host is old and not kernel.relay.paused  # the hold ended
    assert "restore" not in world.log


async def test_a_kernel_asked_to_exit_is_not_moved(mover):
    mover, world, clock, kernel = mover
    kernel.relay.shutdown_requested = True
    notice(mover, clock, kernel.host, 20)
    clock.advance(mover.provider.watcher.interval)  # the standing notice is looked at again
    await asyncio.sleep(0.05)
    assert not mover.scheduler.is_moving(kernel.server.key)
    assert "launch" not in world.log and "acquire" not in world.log


async def test_a_failed_move_is_tried_again_while_the_notice_stands(mover):
    """MoveScheduler.follow (the hub's controller follows its watcher the same way)."""
    mover, world, clock, kernel = mover
    old = kernel.host
    world.failing.add("launch")
    notice(mover, clock, old, 60)
    first = await moved(kernel)
    assert "error" in first and kernel.host is old
    world.failing.clear()
    # no new event: the notice stands in the watcher's cache, looked at each interval
    clock.advance(mover.provider.watcher.interval)
    second = await moved(kernel, 2)
    assert second["to"] == kernel.host.id != old.id


async def test_a_kernel_is_precopied_and_restored_ahead_before_the_freeze(mover):
    mover, world, clock, kernel = mover
    await asyncio.sleep(0)
    notice(mover, clock, kernel.host, 60)
    record = await moved(kernel)
    # pre-copy while it serves, the new kernel gets it before the switch; the freeze's
    # snapshot and restore come after (the delta)
    assert world.before("precopy", "launch")
    assert world.before("launch", "restore ahead")
    assert world.before("restore ahead", "pause relay")
    assert world.before("snapshot", "restore")
    assert record["precopy"] == {"ok": True, "mode": "full", "written_bytes": 9}
    assert record["prestart"] == {"ok": True, "mode": "full"}


async def test_no_precopy_on_a_short_notice_or_when_none_was_taken(mover):
    mover, world, clock, kernel = mover
    await asyncio.sleep(0)
    notice(mover, clock, kernel.host, FREEZE_MARGIN + 3)  # less than SHORT_NOTICE to go
    record = await moved(kernel)
    assert "precopy" not in world.log and "restore ahead" not in world.log
    assert "precopy" not in record and "prestart" not in record
    # a kernel whose pre-copy was not taken (busy, or R) is restored whole, not ahead
    kernel.precopy = None
    notice(mover, clock, kernel.host, 60)
    record = await moved(kernel, count=2)
    assert world.log.count("precopy") == 1 and "restore ahead" not in world.log
    assert "prestart" not in record
