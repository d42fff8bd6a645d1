"""HostWatcher against real agents of LocalHostProvider hosts (127.0.0.236 and up)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from agent_util import free_port, pid_gone, two_host_provider, wait_for

from migrating_spawner.hosts.local import LocalHostProvider
from migrating_spawner.hosts.watcher import LOST, NOTICE, HostEvent

FIRST = "127.0.0.236"


@pytest.fixture
async def provider(tmp_path: Path):
    p = two_host_provider(
        tmp_path,
        FIRST,
        # the tests drive the polls themselves (refresh); the loop must not add its own
        watch_interval=3600,
        lost_after_polls=3,
        agent_probe_timeout=1,
    )
    yield p
    await p.watcher.stop()
    for host in await p.list_hosts():
        await p.release(host)


async def next_event(queue: asyncio.Queue) -> HostEvent:
    return await asyncio.wait_for(queue.get(), 20)


async def test_a_notice_is_published_once(provider: LocalHostProvider):
    host = await provider.acquire()
    events, _ = provider.watcher.queue(host.id)
    state = await provider.watcher.refresh(host)
    assert state.status["host_id"] == host.id and state.notice is None
    assert state.process("server") is None

    notice = await provider.simulated_cloud.reclaim(host, 60)
    for _ in range(3):  # every poll sees the notice; it is told once
        await provider.watcher.refresh(host)
    event = await next_event(events)
    assert (event.kind, event.host.id) == (NOTICE, host.id)
    assert event.notice["deadline"] == notice["deadline"]
    assert provider.watcher.state(host.id).notice["deadline"] == notice["deadline"]
    # the agent's push of the same notice is no news either
    assert provider.watcher.push_notice(host.id, notice) is False
    assert events.empty()


async def test_the_agents_push_feeds_the_cache(provider: LocalHostProvider):
    host = await provider.acquire()
    provider.watcher.watch(host)
    seen: list[HostEvent] = []
    provider.watcher.subscribe(seen.append)
    # the cloud's notice reaches the hub by the agent's push before any poll
    notice = await provider.simulated_cloud.reclaim(host, 60)
    assert provider.watcher.push_notice(host.id, notice) is True
    assert provider.watcher.state(host.id).notice["deadline"] == notice["deadline"]
    assert [e.kind for e in seen] == [NOTICE]
    # the poll then finds the same notice: no second event
    await provider.watcher.refresh(host)
    assert [e.kind for e in seen] == [NOTICE]
    # an earlier deadline is news
    sooner = await provider.simulated_cloud.reclaim(host, 30)
    await provider.watcher.refresh(host)
    assert [e.kind for e in seen] == [NOTICE, NOTICE]
    assert seen[-1].notice["deadline"] == sooner["deadline"] < notice["deadline"]


async def test_failures_are_counted_once_and_lost_is_told_once(provider: LocalHostProvider):
    host = await provider.acquire()
    other = await provider.acquire()
    events, _ = provider.watcher.queue()
    watcher = provider.watcher
    await watcher.refresh(host)
    await watcher.refresh(other)
    # the agent stops answering, its record stays (a hung host, not a reclaimed one)
    os.kill(host.meta["agent_pid"], signal.SIGSTOP)
    try:
        # three callers at once (a spawner's poll, the controller, a kernel): one poll
        await asyncio.gather(*(watcher.refresh(host) for _ in range(3)))
        assert watcher.state(host.id).failures == 1
        assert not watcher.state(host.id).lost
        await watcher.refresh(host)
        assert events.empty()
        await watcher.refresh(host)  # the third failed poll in a row
        event = await next_event(events)
        assert (event.kind, event.host.id) == (LOST, host.id)
        state = await watcher.refresh(host)  # lost hosts are no longer polled
        assert state.lost and state.failures == 3
        assert events.empty()
        # the other host is not affected
        assert (await watcher.refresh(other)).failures == 0
    finally:
        os.kill(host.meta["agent_pid"], signal.SIGCONT)


async def test_an_answer_resets_the_failures(provider: LocalHostProvider):
    host = await provider.acquire()
    watcher = provider.watcher
    os.kill(host.meta["agent_pid"], signal.SIGSTOP)
    try:
        await watcher.refresh(host)
        await watcher.refresh(host)
        assert watcher.state(host.id).failures == 2
    finally:
        os.kill(host.meta["agent_pid"], signal.SIGCONT)
    state = await watcher.refresh(host)
    assert state.failures == 0 and not state.lost and state.status["host_id"] == host.id


async def test_a_host_that_ended_is_lost_at_the_first_failed_poll(
    provider: LocalHostProvider,
):
    host = await provider.acquire()
    seen: list[HostEvent] = []
    provider.watcher.subscribe(seen.append, host.id)
    await provider.watcher.refresh(host)
    await provider.simulated_cloud.reclaim(host, 0)  # the host ends at once
    assert wait_for(lambda: pid_gone(host.meta["agent_pid"]), timeout=15)
    assert await provider.get(host.id) is None
    state = await provider.watcher.refresh(host)
    assert state.lost and state.failures == 1
    # a poll may have seen the notice before the host ended; lost comes once, last
    assert [e.kind for e in seen] in ([LOST], [NOTICE, LOST])


async def test_a_released_host_is_forgotten_without_events(provider: LocalHostProvider):
    host = await provider.acquire()
    events, _ = provider.watcher.queue()
    await provider.watcher.refresh(host)
    await provider.release(host)
    assert provider.watcher.state(host.id) is None
    assert events.empty()


async def test_the_loop_polls_each_watched_host(tmp_path: Path):
    provider = LocalHostProvider(
        root_dir=str(tmp_path / "hosts"),
        first_address="127.0.0.238",
        max_hosts=1,
        agent_port=free_port("127.0.0.238"),
        watch_interval=0.2,
    )
    host = await provider.acquire()
    try:
        events, _ = provider.watcher.queue(host.id)
        provider.watcher.watch(host)  # nobody calls refresh: the watcher's own loop polls
        await provider.simulated_cloud.reclaim(host, 60)
        event = await next_event(events)
        assert event.kind == NOTICE and provider.watcher.state(host.id).status is not None
    finally:
        await provider.watcher.stop()
        await provider.release(host)
