"""The move scheduler and the move itself, with a fake provider, proxy, server and clock.

No processes: every step a move takes is a fake that records itself in `world.log` and can
be made to wait (`world.gate(step)`), and the clock only moves when a test advances it. A
hub restart is a second scheduler and a second server object that see only what the first
ones persisted (the move record and the host in the server's state).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from migrating_spawner.hosts.base import Host, HostError
from migrating_spawner.move import Move
from migrating_spawner.moving import Clock, MoveError, MoveRecord, MoveScheduler

MARGIN = 3.0
log = logging.getLogger("test_scheduler")


class FakeClock(Clock):
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for at, future in list(self._sleepers):
            if at <= self.now:
                self._sleepers.remove((at, future))
                if not future.done():
                    future.set_result(None)


class World:
    """Hosts, server processes and the hub database, shared by both hub lives."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.running: set[str] = set()  # host ids with a server process
        self.state: dict[str, dict[str, Any]] = {}  # server key -> persisted state
        self.committed: list[tuple[str, str]] = []  # (reason, checkpoint id)
        self.failing: set[str] = set()  # steps that raise HostError
        self.ready_failures = 0  # this many new servers do not answer (after their gate)
        self._gates: dict[str, asyncio.Event] = {}
        self._reached: dict[str, asyncio.Event] = {}
        self._hosts = 0

    def new_host(self) -> Host:
        host = Host(
            id=f"h{self._hosts}", address=f"10.0.0.{self._hosts}", agent_url="", agent_token=""
        )
        self._hosts += 1
        self.hosts[host.id] = host
        return host

    def gate(self, step: str) -> None:
        """From now on `step` waits until open(step)."""
        self._gates[step] = asyncio.Event()

    def open(self, step: str) -> None:
        self._gates.pop(step).set()

    async def reached(self, step: str) -> None:
        await asyncio.wait_for(self._event(step).wait(), 5)

    def _event(self, step: str) -> asyncio.Event:
        return self._reached.setdefault(step, asyncio.Event())

    async def step(self, name: str) -> None:
        self.log.append(name)
        self._event(name).set()
        if name in self.failing:
            raise HostError(f"{name} failed")
        gate = self._gates.get(name)
        if gate is not None:
            await gate.wait()

    def before(self, a: str, b: str) -> bool:
        return self.log.index(a) < self.log.index(b)


class FakeProvider:
    def __init__(self, world: World) -> None:
        self.world = world

    async def take(self, instance_type: str = "", market: str = "", owner: str = "") -> Host:
        await self.world.step("acquire")
        return self.world.new_host()


class FakeRoutes:
    def __init__(self, world: World) -> None:
        self.world = world
        self.held: set[str] = set()
        self.dead = False

    async def hold(self, server: Any) -> None:
        await self.world.step("hold")
        self.held.add(server.key)

    async def release(self, server: Any) -> None:
        if self.dead:
            return
        await self.world.step("release route")
        self.held.discard(server.key)


class FakeServer:
    """A MovableServer; `dead` stands for a hub process that was killed."""

    home_mode = "synced"
    kernel_state_timeout = 10.0
    log = log

    def __init__(self, world: World, key: str = "erin/") -> None:
        self.world = world
        self.key = key
        self.dead = False
        self.stopping = False
        self.check_pending = False
        self.events: list[str] = []
        self.ready_timeouts: list[float | None] = []
        self.ended: tuple[str, bool] | None = None  # end_after_failed_move's arguments
        saved = world.state.setdefault(key, {})
        self.host: Host | None = saved.get("host")
        self.port = saved.get("port", 0)
        self.checkpoint_id = saved.get("checkpoint_id")

    @classmethod
    async def running(cls, world: World, key: str = "erin/") -> FakeServer:
        host = world.new_host()
        world.running.add(host.id)
        world.state[key] = {"host": host, "port": 1000, "checkpoint_id": "c-start"}
        return cls(world, key)

    @property
    def movable(self) -> bool:
        return self.host is not None and not self.stopping

    def emit(self, message: str, progress: int | None = None, level: str = "info") -> None:
        self.events.append(message)

    def _persist(self, **fields: Any) -> None:
        if not self.dead:
            self.world.state[self.key].update(fields)

    def saved_move(self) -> MoveRecord | None:
        record = self.world.state[self.key].get("move")
        return MoveRecord.from_dict(record) if record else None

    def persist_move(self, record: MoveRecord | None) -> None:
        # the spawner's save_state: its whole state, the checkpoint id it has in memory too
        self._persist(move=record.to_dict() if record else None, checkpoint_id=self.checkpoint_id)

    def checkpoint_time(self, checkpoint_id: str) -> float | None:
        return None

    async def server_alive(self, host: Host | None, retries: int = 0) -> bool:
        return host is not None and host.id in self.world.running

    async def launch(self, host: Host) -> int:
        await self.world.step("launch")
        self.world.running.add(host.id)
        return 2000

    async def wait_ready(self, host: Host, port: int, timeout: float | None = None) -> None:
        self.ready_timeouts.append(timeout)
        await self.world.step("ready")
        if self.world.ready_failures:
            self.world.ready_failures -= 1
            raise HostError(f"server on {host.id} did not answer in time")

    async def checkpoint_home(self, host: Host, reason: str) -> str:
        await self.world.step(reason)
        checkpoint_id = f"c{len(self.world.committed)}"
        self.world.committed.append((reason, checkpoint_id))
        self.checkpoint_id = checkpoint_id  # in memory: the next save_state writes it
        return checkpoint_id

    async def restore_home(self, host: Host, checkpoint_id: str, current: Any = None) -> Any:
        await self.world.step(f"restore {checkpoint_id}")
        return checkpoint_id

    async def precopy_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        self.world.log.append("precopy kernels")
        return {}  # no kernels to pre-copy: the steps stay those of a move without

    async def prestart_kernels(self, host: Host, port: int) -> dict[str, Any]:
        raise AssertionError("nothing was pre-copied")

    async def snapshot_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        await self.world.step("snapshot kernels")
        return {"kernels": {}}

    async def restore_kernels(self, host: Host, port: int, final: bool = True) -> None:
        await self.world.step(f"restore kernels final={final}")

    async def kill_server(self, host: Host) -> None:
        await self.world.step(f"kill {host.id}")
        self.world.running.discard(host.id)

    async def switch_to(self, host: Host, port: int, record: MoveRecord) -> None:
        self.host, self.port = host, port
        self._persist(host=host, port=port, move=record.to_dict(), checkpoint_id=self.checkpoint_id)
        await self.world.step(f"switch {host.id}")

    async def rearm_route(self) -> None:
        await self.world.step(f"rearm {self.host.id}")

    async def end_after_failed_move(self, message: str, kernels_saved: bool) -> None:
        if self.dead:
            return
        await self.world.step("end server")
        self.ended = (message, kernels_saved)
        self.host = None
        self._persist(host=None, checkpoint_id=self.checkpoint_id)

    async def release_host(self, host: Host) -> None:
        if self.dead:
            return
        await self.world.step(f"release {host.id}")
        self.world.hosts.pop(host.id, None)
        self.world.running.discard(host.id)

    def start_precopy(self) -> None:
        self.world.log.append("start precopy")

    def stop_precopy(self) -> None:
        self.world.log.append("stop precopy")


class Hub:
    """One hub process: a scheduler with real Move objects over the fakes."""

    def __init__(self, world: World, clock: FakeClock, started: bool = True) -> None:
        self.world = world
        self.clock = clock
        self.routes = FakeRoutes(world)
        self.provider = FakeProvider(world)
        self.started = started
        self.moves: list[Move] = []
        self.short_notice = 0.0  # MigratingController.short_notice_seconds
        self.scheduler = MoveScheduler(
            make_move=self._make_move,
            workers=2,
            clock=clock,
            log=log,
            hub_started=lambda: self.started,
        )
        self.scheduler.routes = self.routes

    def _make_move(self, server, reason: str, deadline: float) -> Move:
        move = Move(
            server,
            self.routes,
            self.provider,
            reason,
            deadline,
            MARGIN,
            self.clock,
            short_notice=self.short_notice,
        )
        self.moves.append(move)
        return move

    def add(self, server: FakeServer) -> FakeServer:
        self.scheduler.register(server)
        return server

    async def kill(self, *servers: FakeServer) -> None:
        """SIGKILL: nothing this process does from now on reaches the world."""
        for server in servers:
            server.dead = True
        self.routes.dead = True
        await self.scheduler.stop()


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def hub(world, clock):
    hub = Hub(world, clock)
    hub.scheduler.start()
    yield hub
    await hub.scheduler.stop()


async def test_a_move_holds_only_for_the_cut_over(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    old = server.host
    result = await hub.scheduler.schedule(server, "test", clock.time() + 100)

    new = server.host
    assert result["from"] == old.id and result["to"] == new.id != old.id
    # the new server was ready before the route was held; the old one stopped under the hold
    assert world.before("ready", "hold")
    assert world.before("hold", "move final") and world.before("move final", f"kill {old.id}")
    assert world.before(f"switch {new.id}", "release route")
    assert world.before("release route", f"release {old.id}")
    assert old.id not in world.hosts and world.state[server.key]["move"] is None
    assert not hub.scheduler.is_moving(server.key) and not hub.routes.held


async def test_the_hold_is_accounted_step_by_step(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    result = await hub.scheduler.schedule(server, "test", clock.time() + 100)
    (move,) = hub.moves
    assert list(move.hold_steps) == [
        "hold the route",
        "check the old server",
        "kernel snapshot",
        "final checkpoint",
        "stop the old server",
        "commit the record",
        "wait for the new server",
        "home restore",
        "kernel restore",
        "switch",
        "release the route",
    ]
    # the steps add up to the hold, nothing counted twice or left out
    assert sum(move.hold_steps.values()) == pytest.approx(result["hold"])


@pytest.mark.parametrize("notice", [5, 100])
async def test_a_short_notice_starts_the_new_server_before_any_precopy(hub, world, clock, notice):
    hub.short_notice = 10.0
    server = hub.add(await FakeServer.running(world))
    await hub.scheduler.schedule(server, "test", clock.time() + notice)
    (move,) = hub.moves
    if notice - MARGIN < hub.short_notice:
        # neither the kernels nor the home are pre-copied: the new server starts from the
        # last checkpoint, and the freeze's final checkpoint and kernel snapshot carry the rest
        assert "move pre-copy" not in world.log and "precopy kernels" not in world.log
        assert world.before("restore c-start", "launch")
        assert "short notice" in move.steps
        assert any(
            e.startswith("Short notice (5 s): starting the new server") for e in server.events
        )
        assert world.before("launch", "snapshot kernels")
        assert world.before("launch", "move final")
    else:
        assert world.before("precopy kernels", "move pre-copy")
        assert world.before("move pre-copy", "launch")
        assert "short notice" not in move.steps


async def test_a_short_notice_without_any_checkpoint_still_brings_the_home_first(hub, world, clock):
    # the new server reads its home when it starts (cookie secret, config): with no
    # checkpoint yet, the move's first one is taken and restored before the launch
    hub.short_notice = 10.0
    server = hub.add(await FakeServer.running(world))
    server.checkpoint_id = None
    await hub.scheduler.schedule(server, "test", clock.time() + 5)
    assert "precopy kernels" not in world.log
    assert world.before("move pre-copy", "launch")


async def test_a_failed_move_leaves_the_old_server_serving_and_saved(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    old = server.host
    world.failing.add("launch")
    with pytest.raises(MoveError, match="launch failed"):
        await hub.scheduler.schedule(server, "test", clock.time() + 100)
    assert server.host is old and world.running == {old.id}
    assert "hold" not in world.log and world.state[server.key]["move"] is None
    assert set(world.hosts) == {old.id}  # the new host went back
    # the background pre-copy the move stopped runs again
    assert world.log.index("start precopy") > world.log.index("stop precopy")


async def test_deadline_before_the_new_server_is_ready(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    old = server.host
    world.gate("ready")
    assert hub.scheduler.on_notice(old.id, clock.time() + 20) == [server.key]
    move = asyncio.ensure_future(hub.scheduler.wait_for(server))
    await world.reached("ready")
    assert "hold" not in world.log  # the old server still serves

    clock.advance(20 - MARGIN)  # the freeze point: the old host dies soon
    await world.reached(f"kill {old.id}")
    assert world.before("hold", "snapshot kernels") and world.before(
        "snapshot kernels", "move final"
    )
    assert "switch h1" not in world.log  # requests wait in the hold for the new server

    world.open("ready")
    await move
    final = dict(world.committed)["move final"]
    assert world.before(f"kill {old.id}", f"restore {final}")
    assert world.before(f"restore {final}", "restore kernels final=True")
    assert server.host.id != old.id and "release route" in world.log


async def test_notice_during_pre_copy_freezes_by_its_deadline(hub, world, clock):
    # a user's `migrate` (no deadline to speak of) is pre-copying when the host's notice
    # comes: the move must freeze by the notice, and the pre-copy must not commit after it
    server = hub.add(await FakeServer.running(world))
    old = server.host
    world.gate("move pre-copy")
    moving = hub.scheduler.schedule(server, "requested by erin")
    await world.reached("move pre-copy")

    assert hub.scheduler.on_notice(old.id, clock.time() + 15) == [server.key]
    clock.advance(15 - MARGIN)
    await world.reached(f"kill {old.id}")
    world.open("move pre-copy")
    await moving

    assert [reason for reason, _ in world.committed] == ["move final"]
    assert world.before("stop precopy", "move pre-copy")  # the background loop stopped first
    assert f"restore {world.committed[0][1]}" in world.log
    assert server.checkpoint_id == world.committed[0][1]


async def test_two_notices_for_one_host_make_one_move_by_the_nearer_deadline(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    old = server.host
    world.gate("ready")
    first = hub.scheduler.on_notice(old.id, clock.time() + 120)
    await world.reached("ready")
    second = hub.scheduler.on_notice(old.id, clock.time() + 10)
    assert first == second == [server.key]
    # the user was told 120 s: the nearer deadline is told too, once
    again = hub.scheduler.on_notice(old.id, clock.time() + 10)
    assert again == [server.key]
    shorter = [e for e in server.events if "notice is shorter" in e]
    assert shorter == ["The reclaim notice is shorter than first said: the host goes in 10 s"]

    clock.advance(10 - MARGIN)
    await world.reached(f"kill {old.id}")
    world.open("ready")
    await hub.scheduler.wait_for(server)
    assert world.log.count("acquire") == 1 and len(hub.moves) == 1
    assert hub.moves[0].deadline == clock.time() + MARGIN


async def test_a_host_that_dies_during_the_move_is_told_as_a_loss(hub, world, clock):
    # alive when the move began, gone by the freeze (a 0 s notice, or a crash during the
    # pre-copy): no final checkpoint, so the user must be told what the last one misses
    server = hub.add(await FakeServer.running(world))
    old = server.host
    world.gate("move pre-copy")
    assert hub.scheduler.on_notice(old.id, clock.time() + 20) == [server.key]
    await world.reached("move pre-copy")
    world.running.discard(old.id)  # the host died
    clock.advance(20 - MARGIN)
    await world.reached(f"kill {old.id}")
    world.open("move pre-copy")
    await hub.scheduler.wait_for(server)

    assert world.committed == []  # neither the pre-copy nor a final checkpoint
    assert server.host.id != old.id
    lost = [e for e in server.events if "were lost" in e]
    assert lost and "gone before its final checkpoint" in lost[0], server.events
    assert "restore kernels final=False" in world.log


async def test_a_notice_at_its_deadline_says_now(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    old = server.host
    assert hub.scheduler.on_notice(old.id, clock.time()) == [server.key]
    assert server.events[0] == f"Host {old.id} will be reclaimed now: moving"
    await hub.scheduler.wait_for(server)


async def test_a_stopping_server_is_not_moved(hub, world, clock):
    server = hub.add(await FakeServer.running(world))
    server.stopping = True
    assert hub.scheduler.on_notice(server.host.id, clock.time() + 30) == []
    assert not hub.scheduler.is_moving(server.key)


async def test_a_queued_move_of_a_server_that_began_stopping_is_dropped(world, clock):
    hub = Hub(world, clock)
    server = hub.add(await FakeServer.running(world))
    moving = hub.scheduler.schedule(server, "requested by erin")
    server.stopping = True  # stop() began while the move waited for a worker
    hub.scheduler.start()
    try:
        with pytest.raises(MoveError, match="stopping"):
            await moving
    finally:
        await hub.scheduler.stop()
    assert "acquire" not in world.log and world.running == {server.host.id}
    assert not hub.scheduler.is_moving(server.key)


# -- a hub restart at each step -------------------------------------------------------


async def restart_at(step: str, world: World, clock: FakeClock, *, started: bool = True):
    """Run a move until `step`, kill the hub there, start a new one on the same world."""
    first = Hub(world, clock)
    first.scheduler.start()
    server = first.add(await FakeServer.running(world))
    old = server.host
    world.gate(step)
    first.scheduler.on_notice(old.id, clock.time() + 60)
    await world.reached(step)
    await first.kill(server)
    second = Hub(world, clock, started=started)
    second.scheduler.start()
    return second, second.add(FakeServer(world, server.key)), old


def new_host_of(world: World, old: Host) -> str:
    return "h1" if old.id == "h0" else "h0"


@pytest.mark.parametrize("step", ["move pre-copy", "ready", "move final"])
async def test_restart_before_the_old_server_stopped_keeps_it(step, world, clock):
    hub, server, old = await restart_at(step, world, clock)
    assert server.saved_move() is not None and server.host.id == old.id
    try:
        assert await hub.scheduler.settle(server) is None
    finally:
        await hub.scheduler.stop()
    half_made = new_host_of(world, old)
    assert world.log[-2:] == [f"release {half_made}", f"rearm {old.id}"]
    assert half_made not in world.hosts and server.saved_move() is None
    assert not hub.scheduler.is_moving(server.key)
    assert "the server stays where it was" in server.events[-1]


async def test_restart_after_the_old_server_stopped_moves_from_the_final_checkpoint(world, clock):
    # killed after the final checkpoint and the old server's kill, before the switch: the
    # final checkpoint's id was only in that hub's memory until the freeze persisted it
    hub, server, old = await restart_at("restore kernels final=True", world, clock)
    final = dict(world.committed)["move final"]
    assert server.checkpoint_id == final and server.saved_move().final_checkpoint == final
    world.log.clear()
    world.open("restore kernels final=True")
    try:
        assert await hub.scheduler.settle(server) is None
        assert hub.scheduler.is_moving(server.key)
        await asyncio.wait_for(hub.scheduler.wait_for(server), 10)
    finally:
        await hub.scheduler.stop()
    half_made = new_host_of(world, old)
    assert world.log[0] == f"release {half_made}"
    assert "rearm" not in " ".join(world.log)
    move = hub.moves[0]
    assert move.reason == f"reclaim notice for {old.id}"  # the same move, going on
    # the new host gets the final checkpoint and the kernels their final snapshot; no
    # checkpoint is taken again (the old server is stopped)
    assert f"restore {final}" in world.log and "restore c-start" not in world.log
    assert "restore kernels final=True" in world.log
    assert "restore kernels final=False" not in world.log
    assert [reason for reason, _ in world.committed].count("move final") == 1
    assert server.host.id not in (old.id, half_made) and server.host.id in world.running
    assert old.id not in world.hosts and server.saved_move() is None
    said = "\n".join(server.events)
    assert "were lost" not in said and move.lost is None, said
    assert f"after its final checkpoint {final}" in said, said
    assert "nothing was lost" in said, said


async def test_restart_after_the_old_server_stopped_during_hub_start_reports_stopped(world, clock):
    hub, server, old = await restart_at("restore kernels final=True", world, clock, started=False)
    try:
        assert await hub.scheduler.settle(server) == 1
    finally:
        await hub.scheduler.stop()
    assert new_host_of(world, old) not in world.hosts
    assert not hub.scheduler.is_moving(server.key)
    final = dict(world.committed)["move final"]
    assert world.state[server.key]["checkpoint_id"] == final
    # the record stays for the hub's stop (spawner.stop: the kernels are not stale)
    kept = server.saved_move()
    assert kept.final_checkpoint == final and kept.kernels_saved and not kept.switched
    assert f"after its final checkpoint {final}" in server.events[-1]
    assert "the next start resumes from it" in server.events[-1]


async def test_restart_after_the_switch_keeps_the_new_server(world, clock):
    hub, server, old = await restart_at("release route", world, clock)
    new = new_host_of(world, old)
    assert server.host.id == new and server.saved_move().switched
    try:
        assert await hub.scheduler.settle(server) is None
    finally:
        await hub.scheduler.stop()
    assert world.log[-2:] == [f"release {old.id}", f"rearm {new}"]
    assert old.id not in world.hosts and server.saved_move() is None
    assert server.events[-1] == "Move finished after a hub restart"


async def test_settle_and_recover_decide_once(world, clock):
    # poll() settles a dead server now and asks recover() for a live one: both paths end
    # in the same policy, and running both at once releases the half-made host once
    hub, server, old = await restart_at("ready", world, clock)
    try:
        hub.scheduler.recover(server)
        answers = await asyncio.gather(hub.scheduler.settle(server), hub.scheduler.settle(server))
        await asyncio.sleep(0)
    finally:
        await hub.scheduler.stop()
    assert answers == [None, None]
    assert world.log.count(f"release {new_host_of(world, old)}") == 1


async def test_a_notice_while_settling_waits_for_the_settle(world, clock):
    # the restarted hub's notice poll must not start a move while the settle still
    # releases the half-made host and re-arms the route of the old server
    hub, server, old = await restart_at("ready", world, clock)
    half_made = new_host_of(world, old)
    world.gate(f"release {half_made}")
    try:
        settling = asyncio.ensure_future(hub.scheduler.settle(server))
        await world.reached(f"release {half_made}")
        assert hub.scheduler.is_moving(server.key)
        assert hub.scheduler.on_notice(old.id, clock.time() + 30) == [server.key]
        assert hub.moves == [] and not hub.scheduler._moves
        world.open(f"release {half_made}")
        assert await settling is None
        assert not hub.scheduler.is_moving(server.key)
        # the next notice (the poller's) moves it
        hub.scheduler.on_notice(old.id, clock.time() + 30)
        assert hub.scheduler.is_moving(server.key)
        settled_at = len(world.log)
        for _ in range(100):
            if "acquire" in world.log[settled_at:]:
                break
            await asyncio.sleep(0)
        assert "acquire" in world.log[settled_at:]  # after the settle, not during it
    finally:
        await hub.scheduler.stop()


def _members(protocol: type) -> dict[str, Any]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) or isinstance(v, property)}
    return {n: getattr(protocol, n, None) for n in names if not n.startswith("_")}


@pytest.mark.parametrize(
    "implementation, protocol",
    [
        ("migrating_spawner.spawner:MigratingSpawner", "MovableServer"),
        ("proxy_plugin.proxy:MigratingProxy", "RouteHold"),
        ("migrating_spawner.moving:NoRouteHold", "RouteHold"),
        ("migrating_spawner.move:Move", "MoveRun"),
        ("kernel_provisioner.moving:KernelServer", "MovableServer"),
        ("kernel_provisioner.moving:RelayHold", "RouteHold"),
    ],
)
def test_the_real_classes_implement_the_protocols(implementation, protocol):
    import importlib
    import inspect

    from migrating_spawner.moving import protocol as protocols

    module, name = implementation.split(":")
    cls = getattr(importlib.import_module(module), name)
    proto = getattr(protocols, protocol)
    for member, spec in _members(proto).items():
        if member in getattr(proto, "__annotations__", {}) and not callable(spec):
            continue  # a data attribute, set per instance
        assert hasattr(cls, member), f"{name} lacks {member}"
        if callable(spec) and not isinstance(spec, property):
            want = list(inspect.signature(spec).parameters.values())
            have = list(inspect.signature(getattr(cls, member)).parameters.values())
            assert len(have) >= len(want), f"{name}.{member}{have} is not {want}"
            for w, h in zip(want, have, strict=False):
                # positional-only in the protocol: any name will do
                if w.kind is not w.POSITIONAL_ONLY:
                    assert h.name == w.name, f"{name}.{member}{have} is not {want}"
            assert inspect.iscoroutinefunction(getattr(cls, member)) == (
                inspect.iscoroutinefunction(spec)
            ), f"{name}.{member}: async or not, as the protocol says"


async def test_cancel_drops_a_queued_move_and_aborts_a_running_one(hub, world, clock):
    first, second, third = [hub.add(await FakeServer.running(world, f"u{i}/")) for i in range(3)]
    world.gate("acquire")
    moves = [hub.scheduler.schedule(s, "migrate") for s in (first, second, third)]
    await world.reached("acquire")  # two workers: the third move waits in the queue
    assert await hub.scheduler.cancel(third.key)
    assert not hub.scheduler.is_moving(third.key)
    with pytest.raises(MoveError, match="cancelled"):
        await moves[2]
    assert await hub.scheduler.cancel(first.key)  # running: it aborts
    with pytest.raises(MoveError, match="cancelled"):
        await moves[0]
    assert not hub.scheduler.is_moving(first.key) and first.saved_move() is None
    world.open("acquire")
    await moves[1]
    # only the move that was not cancelled ran
    assert len(hub.moves) == 2 and third.host.id in world.running
    assert not await hub.scheduler.cancel(third.key)  # nothing to cancel any more


async def test_a_notice_move_starts_past_the_worker_limit_before_its_deadline(hub, world, clock):
    """Two workers busy: a third notice's move waits only until `urgent_lead` seconds before
    its deadline, so its old host still answers for the final checkpoint."""
    servers = [hub.add(await FakeServer.running(world, f"u{i}/")) for i in range(3)]
    world.gate("acquire")
    for server in servers[:2]:
        hub.scheduler.on_notice(server.host.id, clock.time() + 100)

    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    await settle()
    assert world.log.count("acquire") == 2
    third = servers[2]
    old = third.host
    hub.scheduler.on_notice(old.id, clock.time() + 100)
    await settle()
    assert world.log.count("acquire") == 2, "queued: 100 s left, more than urgent_lead"
    clock.advance(100 - hub.scheduler.urgent_lead + 1)
    await settle()
    assert world.log.count("acquire") == 3, "started beside the two running moves"
    world.open("acquire")
    await hub.scheduler.wait_for(third)
    assert third.host.id != old.id
    assert [reason for reason, _ in world.committed].count("move final") == 3


async def frozen_before_the_new_server_is_ready(hub, world, clock):
    """A notice's move, frozen at its deadline (the old server stopped) while the first
    new server has not answered yet. Returns the server, its old host and the move."""
    server = hub.add(await FakeServer.running(world))
    old = server.host
    world.gate("ready")
    hub.scheduler.on_notice(old.id, clock.time() + 20)
    move = asyncio.ensure_future(hub.scheduler.wait_for(server))
    await world.reached("ready")
    clock.advance(20 - MARGIN)
    await world.reached(f"kill {old.id}")
    return server, old, move


async def test_a_new_server_that_fails_after_the_freeze_is_tried_again_elsewhere(hub, world, clock):
    server, old, move = await frozen_before_the_new_server_is_ready(hub, world, clock)
    world.ready_failures = 1
    world.open("ready")  # ... and then that server does not answer in time
    await move

    final = dict(world.committed)["move final"]
    assert server.host.id == "h2" and world.running >= {"h2"}
    # the route was held from the freeze until the switch to the second new host, never
    # released in between (to the old, stopped server)
    assert world.log.count("release route") == 1
    assert world.before("switch h2", "release route")
    assert "release h1" in world.log and world.before("release h1", "restore " + final)
    # the second new server starts on the final checkpoint's files
    second_launch = [i for i, name in enumerate(world.log) if name == "launch"][1]
    assert world.log.index(f"restore {final}") < second_launch
    assert "restore kernels final=True" in world.log and "restore kernels final=False" not in (
        world.log
    )
    # each new server got the move's own ready timeout, not the hub's http_timeout
    assert server.ready_timeouts == [180.0, 180.0]
    assert hub.moves[-1].attempts == 2 and len(hub.moves) == 1
    said = "\n".join(server.events)
    assert "nothing was lost" in said and "were lost" not in said, said
    assert "trying another host (2 of 3)" in said and f"final checkpoint {final}" in said, said
    assert said.count("Moved to h2") == 1


async def test_a_move_that_fails_on_every_new_host_ends_the_server_with_its_checkpoint(
    hub, world, clock
):
    server, old, move = await frozen_before_the_new_server_is_ready(hub, world, clock)
    world.ready_failures = 99
    world.open("ready")
    await move

    final = dict(world.committed)["move final"]
    assert "release route" not in world.log  # never routed back to the stopped server
    assert [h for h in ("h1", "h2", "h3") if f"release {h}" in world.log] == ["h1", "h2", "h3"]
    assert server.ended is not None
    message, kernels_saved = server.ended
    assert kernels_saved and final in message and "next start resumes" in message, message
    assert "Nothing was lost" in message
    assert world.state[server.key]["move"] is None and not hub.scheduler.is_moving(server.key)
