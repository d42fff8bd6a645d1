"""HostWatcher: one poll of each host's agent per interval, cached, with events.

The model is KubeSpawner's reflector: instead of every server, kernel and the controller
asking each agent on their own, one watcher per provider asks every watched host's agent
for its status once per `interval`, keeps the answer, counts failed polls once per host, and
tells subscribers when a host gets a reclaim notice (`notice`) or is lost (`lost`: its
record is gone, or `lost_after` polls in a row went unanswered). A notice the agent pushes
to the hub goes into the same cache (`push_notice`), so it is told once, whichever came
first. A cloud's rebalance recommendation (EC2: the host is at higher risk of
interruption) is told once per host too (`rebalance`), from the agent's status, its push
or the cloud's own channel (`push_rebalance`); the provider decides what it means.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..agent.client import AgentClient, AgentError
from ..agent.host import Host

log = logging.getLogger(__name__)

NOTICE = "notice"
LOST = "lost"
REBALANCE = "rebalance"


class WatchedProvider(Protocol):
    """What the watcher needs of a provider."""

    def agent(self, host: Host) -> AgentClient: ...

    async def get(self, host_id: str) -> Host | None: ...


@dataclasses.dataclass
class HostState:
    """What the watcher last learnt about one host."""

    host: Host
    #: the agent's last answer to GET /status (None before the first answer)
    status: dict[str, Any] | None = None
    #: the reclaim notice ({"deadline", "time", ...}), from a poll or the agent's push
    notice: dict[str, Any] | None = None
    #: the cloud's rebalance recommendation (what the agent or the cloud said of it)
    rebalance: dict[str, Any] | None = None
    #: polls in a row the agent did not answer
    failures: int = 0
    #: the host is gone (its record vanished, or `lost_after` polls failed); no more polls
    lost: bool = False
    #: time.monotonic() of the last poll, answered or not (0: never polled)
    polled: float = 0.0

    def process(self, name: str) -> dict[str, Any] | None:
        """The agent's record of process `name` at the last answer (None: none known)."""
        return ((self.status or {}).get("processes") or {}).get(name)


@dataclasses.dataclass(frozen=True)
class HostEvent:
    kind: str  # NOTICE, LOST or REBALANCE
    host: Host
    #: the notice (NOTICE, and LOST after one), the recommendation (REBALANCE)
    notice: dict[str, Any] | None = None


Subscriber = Callable[[HostEvent], Any]


class HostWatcher:
    """Polls the agents of the hosts it watches; see the module's docstring."""

    def __init__(self, provider: WatchedProvider, interval: float = 5, lost_after: int = 3):
        self.provider = provider
        self.interval = interval
        self.lost_after = lost_after
        self._states: dict[str, HostState] = {}
        self._polls: dict[str, asyncio.Future] = {}
        self._subscribers: list[tuple[Subscriber, str | None]] = []
        self._task: asyncio.Task | None = None

    # -- what is watched ------------------------------------------------------------

    def watch(self, host: Host) -> HostState:
        """Watch `host` from now on (idempotent); returns its cached state."""
        state = self._states.get(host.id)
        if state is None:
            state = self._states[host.id] = HostState(host)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # (a provider may outlive an event loop: tests, asyncio.run per CLI call)
            self._polls.clear()
            self._task = loop.create_task(self._run())
        return state

    def forget(self, host_id: str) -> None:
        """Stop watching (the host was released): no event comes for it afterwards."""
        self._states.pop(host_id, None)

    def state(self, host_id: str) -> HostState | None:
        return self._states.get(host_id)

    def hosts(self) -> list[Host]:
        return [s.host for s in self._states.values()]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- subscribers --------------------------------------------------------------------

    def subscribe(self, callback: Subscriber, host_id: str | None = None) -> Callable[[], None]:
        """Call `callback(event)` for every event (of `host_id` only, if given); a coroutine
        it returns runs as a task. Returns a function that unsubscribes."""
        entry = (callback, host_id)
        self._subscribers.append(entry)
        return lambda: self._subscribers.remove(entry) if entry in self._subscribers else None

    def queue(self, host_id: str | None = None) -> tuple[asyncio.Queue, Callable[[], None]]:
        """Events (of `host_id` only, if given) as an asyncio queue, and its unsubscribe."""
        q: asyncio.Queue[HostEvent] = asyncio.Queue()
        return q, self.subscribe(q.put_nowait, host_id)

    def _publish(self, event: HostEvent) -> None:
        for callback, host_id in list(self._subscribers):
            if host_id is not None and host_id != event.host.id:
                continue
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:
                log.exception("host watcher subscriber %r failed on %s", callback, event)

    # -- what is learnt --------------------------------------------------------------------

    def push_notice(self, host_id: str, notice: dict[str, Any]) -> bool:
        """A notice the agent pushed; True if it is news (a first or an earlier deadline)."""
        state = self._states.get(host_id)
        return state is not None and self._note_notice(state, notice)

    def push_rebalance(self, host_id: str, info: dict[str, Any]) -> bool:
        """A rebalance recommendation (the agent's push, the cloud's event); True if news."""
        state = self._states.get(host_id)
        return state is not None and self._note_rebalance(state, info)

    def mark_lost(self, host_id: str) -> bool:
        """The cloud says the host is gone (terminated without notice): lost now, without
        waiting for polls to fail; True if it is news."""
        state = self._states.get(host_id)
        if state is None or state.lost:
            return False
        self._note_lost(state)
        return True

    def _note_notice(self, state: HostState, notice: dict[str, Any] | None) -> bool:
        if not notice or state.lost:
            return False
        old = state.notice
        if old is not None and old["deadline"] <= notice["deadline"]:
            return False  # the same notice again (or a later one: the earlier stands)
        state.notice = dict(notice)
        self._publish(HostEvent(NOTICE, state.host, state.notice))
        return True

    def _note_rebalance(self, state: HostState, info: dict[str, Any] | None) -> bool:
        if info is None or state.lost or state.rebalance is not None:
            return False  # once per host, whichever channel told first
        state.rebalance = dict(info) if isinstance(info, dict) else {"detail": info}
        self._publish(HostEvent(REBALANCE, state.host, state.rebalance))
        return True

    def _note_lost(self, state: HostState) -> None:
        if not state.lost:
            state.lost = True
            self._publish(HostEvent(LOST, state.host, state.notice))

    async def refresh(self, host: Host, max_age: float = 0) -> HostState:
        """The state of `host` (watched from now on), polled now unless the last poll is
        younger than `max_age` seconds; a poll already under way is shared, not repeated."""
        state = self.watch(host)
        if state.lost or (state.polled and time.monotonic() - state.polled < max_age):
            return state
        await self._poll(state)
        return self._states.get(host.id, state)

    async def _poll(self, state: HostState) -> None:
        host_id = state.host.id
        future = self._polls.get(host_id)
        if future is None:
            future = self._polls[host_id] = asyncio.ensure_future(self._poll_once(state))
            future.add_done_callback(lambda _: self._polls.pop(host_id, None))
        await asyncio.shield(future)

    async def _poll_once(self, state: HostState) -> None:
        try:
            status = await self.provider.agent(state.host).status(quick=True)
        except AgentError as e:
            error: AgentError | None = e
        else:
            error = None
        state.polled = time.monotonic()
        if self._states.get(state.host.id) is not state:
            return  # released (or re-watched) meanwhile: nothing to tell
        if error is None:
            state.status, state.failures = status, 0
            self._note_notice(state, status.get("notice"))
            self._note_rebalance(state, status.get("rebalance"))
            return
        state.failures += 1
        log.debug("poll %d of %s failed: %s", state.failures, state.host.id, error)
        gone = await self.provider.get(state.host.id) is None
        if self._states.get(state.host.id) is state and (gone or state.failures >= self.lost_after):
            self._note_lost(state)

    async def _run(self) -> None:
        while self._states:
            started = time.monotonic()
            due = [
                s
                for s in self._states.values()
                if not s.lost and started - s.polled >= self.interval * 0.5
            ]
            await asyncio.gather(*(self._poll(s) for s in due), return_exceptions=True)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
