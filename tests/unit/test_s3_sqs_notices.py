"""The EventBridge -> SQS notice channel (hosts/cloudevents.py) against moto, no hub.

Events go in as EC2 would send them: `put_events` on the default bus, an EventBridge rule
with the queue as its target (moto 5.2.5 delivers them; its bodies carry no `account`). The
channel's long poll feeds a real HostWatcher, whose agent polls are the metadata channel.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest
from motoserver import moto_environ, moto_server  # noqa: F401  (pytest fixture)

from migrating_spawner.hosts.base import Host
from migrating_spawner.hosts.cloudevents import (
    INTERRUPTION,
    REBALANCE,
    STATE_CHANGE,
    CloudEventsChannel,
    parse_event,
    put_rule,
)
from migrating_spawner.hosts.watcher import LOST, NOTICE, HostWatcher
from migrating_spawner.hosts.watcher import REBALANCE as REBALANCE_EVENT
from migrating_spawner.moving import MoveScheduler

EVENT_TIME = "2026-12-01T16:00:00Z"
EVENT_EPOCH = 1796140800.0  # EVENT_TIME


class FakeAgent:
    """The agent's GET /status: its metadata poll's notice, once armed."""

    def __init__(self) -> None:
        self.notice: dict[str, Any] | None = None
        self.polls = 0

    async def status(self, quick: bool = False) -> dict[str, Any]:
        self.polls += 1
        return {"processes": {}, "notice": self.notice}


class FakeProvider:
    def __init__(self) -> None:
        self.agents: dict[str, FakeAgent] = {}

    def agent(self, host: Host) -> FakeAgent:
        return self.agents.setdefault(host.id, FakeAgent())

    async def get(self, host_id: str) -> Host | None:
        return None


def instance(n: int, *, by_meta: bool = False) -> Host:
    iid = f"i-{n:017x}"
    host_id = f"ec2-host-{n}" if by_meta else iid
    meta = {"instance_id": iid} if by_meta else {}
    return Host(id=host_id, address=f"10.0.0.{n}", agent_url="", agent_token="", meta=meta)


def iid(host: Host) -> str:
    return host.meta.get("instance_id", host.id)


@pytest.fixture
def aws(moto_server):  # noqa: F811
    """A queue fed by the channel's EventBridge rule; a channel reading it."""
    sqs, events = moto_server.client("sqs"), moto_server.client("events")
    url = sqs.create_queue(QueueName=f"notices-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule = f"rule-{uuid.uuid4().hex[:8]}"
    put_rule(events, arn, name=rule)
    with moto_environ(moto_server):
        channel = CloudEventsChannel(queue_url=url, endpoint_url=moto_server.endpoint_url)
        channel.wait_seconds = 2  # a long poll that ends soon when nothing comes
        yield {"sqs": sqs, "events": events, "url": url, "channel": channel}
    events.remove_targets(Rule=rule, Ids=["queue"])
    events.delete_rule(Name=rule)
    sqs.delete_queue(QueueUrl=url)


def put(events, detail_type: str, host: Host, **detail: str) -> None:
    """An EC2 event on the default bus, as AWS sends it (`account` is moto's to add)."""
    answer = events.put_events(
        Entries=[
            {
                "Source": "aws.ec2",
                "DetailType": detail_type,
                "Detail": json.dumps({"instance-id": iid(host), **detail}),
                "Resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{iid(host)}"],
                "Time": EVENT_TIME,
            }
        ]
    )
    assert answer["FailedEntryCount"] == 0


async def receive(channel: CloudEventsChannel, watcher: HostWatcher, expect: int, **kw) -> None:
    """Long-poll until `expect` more events were handled."""
    target = len(channel.handled) + expect
    for _ in range(10):
        await channel.receive_once(watcher, **kw)
        if len(channel.handled) >= target:
            return
    raise AssertionError(f"only {channel.handled} handled")


def test_parse_event_needs_no_account():
    body = {
        "detail-type": INTERRUPTION,
        "source": "aws.ec2",
        "time": EVENT_TIME,
        "detail": {"instance-id": "i-0abc", "instance-action": "stop"},
    }
    event = parse_event(json.dumps(body))
    assert (event.instance_id, event.time, event.action) == ("i-0abc", EVENT_EPOCH, "stop")
    # no instance-id in the detail: the instance ARN in resources names it
    rebalance = {
        "detail-type": REBALANCE,
        "resources": ["arn:aws:ec2:eu-west-1:1:instance/i-0def"],
        "detail": {},
    }
    assert parse_event(rebalance, now=5.0).instance_id == "i-0def"
    assert parse_event(rebalance, now=5.0).time == 5.0  # no time: when it was received
    for junk in ("not json", "[]", json.dumps({"detail-type": "Other"}), json.dumps({})):
        assert parse_event(junk) is None
    assert parse_event({"detail-type": STATE_CHANGE, "detail": {"state": "terminated"}}) is None


async def test_each_event_kind_gives_its_watcher_event(aws):
    channel, events = aws["channel"], aws["events"]
    watcher = HostWatcher(FakeProvider(), interval=3600)
    spot, rebal, lost, noticed, other = (
        instance(1),
        instance(2, by_meta=True),
        *map(instance, (3, 4, 5)),
    )
    seen: list[tuple[str, str, Any]] = []
    watcher.subscribe(lambda e: seen.append((e.kind, e.host.id, e.notice)))
    for host in (spot, rebal, lost, noticed):
        watcher.watch(host)

    put(events, INTERRUPTION, spot, **{"instance-action": "terminate"})
    await receive(channel, watcher, 1)
    assert seen == [(NOTICE, spot.id, watcher.state(spot.id).notice)]
    notice = watcher.state(spot.id).notice
    assert notice["deadline"] == EVENT_EPOCH + 120 and notice["source"] == "eventbridge"

    put(events, REBALANCE, rebal)  # its host is known by meta["instance_id"]
    put(events, REBALANCE, rebal)  # delivered again: told once
    await receive(channel, watcher, 2)
    # a rebalance is no notice: its own event, once (the provider decides on a move)
    assert seen[1:] == [(REBALANCE_EVENT, rebal.id, watcher.state(rebal.id).rebalance)]
    assert watcher.state(rebal.id).rebalance["source"] == "eventbridge"
    assert watcher.state(rebal.id).notice is None
    del seen[1:]

    put(events, STATE_CHANGE, lost, state="running")
    put(events, STATE_CHANGE, lost, state="shutting-down")  # no notice came: lost
    put(events, STATE_CHANGE, lost, state="terminated")  # told once
    watcher.push_notice(noticed.id, {"deadline": EVENT_EPOCH + 120})
    put(events, STATE_CHANGE, noticed, state="terminated")  # ends after its notice: no loss
    put(events, INTERRUPTION, other)  # an instance of someone else's
    await receive(channel, watcher, 5)
    assert [s for s in seen if s[0] == LOST] == [(LOST, lost.id, None)]
    assert watcher.state(lost.id).lost and not watcher.state(noticed.id).lost
    whats = {(e.instance_id, what) for e, what in channel.handled}
    assert (iid(other), "not ours") in whats and (iid(noticed), "ending after its notice") in whats
    # every message was deleted once handled
    left = aws["sqs"].receive_message(QueueUrl=aws["url"], WaitTimeSeconds=0)
    assert left.get("Messages", []) == []
    await watcher.stop()


async def test_an_event_before_its_host_is_watched_counts_once_it_is(aws):
    """A warning may come before the hub watches the host (a server just started, a hub
    just restarted): it is kept and applied when the host is watched."""
    channel, events = aws["channel"], aws["events"]
    watcher = HostWatcher(FakeProvider(), interval=3600)
    early = instance(8)
    put(events, INTERRUPTION, early, **{"instance-action": "terminate"})
    await receive(channel, watcher, 1)
    assert channel.handled[-1][1] == "not ours"
    watcher.watch(early)
    channel.retry_pending(watcher)
    assert watcher.state(early.id).notice["deadline"] == EVENT_EPOCH + 120
    assert channel.handled[-1][1] == "notice"
    channel.pending_seconds = 0  # kept no longer: another workload's instance is dropped
    put(events, INTERRUPTION, instance(9))
    await receive(channel, watcher, 1)
    channel.retry_pending(watcher)
    assert channel._pending == []
    await watcher.stop()


class FakeServer:
    def __init__(self, key: str, host: Host) -> None:
        self.key, self.host = key, host
        self.movable, self.check_pending, self.home_mode = True, False, "synced"
        self.checkpoint_id = "c1"
        self.events: list[str] = []

    def emit(self, message: str, level: str = "info") -> None:
        self.events.append(message)


class FakeMove:
    def __init__(self, server: FakeServer, reason: str, deadline: float, done: asyncio.Event):
        self.server, self.reason, self.deadline, self.done = server, reason, deadline, done

    def tighten(self, deadline: float) -> None:
        self.deadline = min(self.deadline, deadline)

    async def run(self) -> dict[str, Any]:
        await self.done.wait()
        self.server.host = instance(99)  # moved: the old host serves nothing any more
        return {}


async def test_both_channels_together_give_one_move(aws):
    """The agent's metadata poll and the EventBridge event for the same interruption, in
    either order and repeated, make one move (the earlier deadline)."""
    channel, events = aws["channel"], aws["events"]
    provider = FakeProvider()
    watcher = HostWatcher(provider, interval=0.05)
    host = instance(7)
    server = FakeServer("alice/", host)
    moves: list[FakeMove] = []
    done = asyncio.Event()

    def make_move(s, reason, deadline):
        moves.append(FakeMove(s, reason, deadline, done))
        return moves[-1]

    scheduler = MoveScheduler(make_move=make_move, workers=2)
    scheduler.register(server)
    scheduler.start()
    follow = asyncio.create_task(scheduler.follow(watcher))
    try:
        watcher.watch(host)
        # the metadata channel: the agent's poll sees the instance-action (a later deadline)
        provider.agent(host).notice = {"deadline": EVENT_EPOCH + 125, "source": "metadata"}
        await asyncio.wait_for(_until(lambda: moves), 5)
        # the cloud's event (earlier deadline), twice, and the agent's push again
        put(events, INTERRUPTION, host, **{"instance-action": "terminate"})
        put(events, INTERRUPTION, host, **{"instance-action": "terminate"})
        await receive(channel, watcher, 2)
        watcher.push_notice(host.id, {"deadline": EVENT_EPOCH + 125})
        await polls(provider.agent(host), 3)  # watcher rounds: room for a second move
        assert len(moves) == 1
        assert moves[0].deadline == EVENT_EPOCH + 120  # tightened to the earlier one
        done.set()
        await scheduler.wait_for(server)
        await polls(provider.agent(host), 3)  # the notice still stands: it moves nothing
        assert len(moves) == 1
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await scheduler.stop()
        await watcher.stop()


async def polls(agent: FakeAgent, n: int) -> None:
    """Wait for `n` more watcher polls of this agent (each follow round re-reads them)."""
    target = agent.polls + n
    await asyncio.wait_for(_until(lambda: agent.polls >= target), 5)


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.02)


async def test_a_stopping_hub_does_not_wait_out_the_long_poll(aws):
    """The receive runs in a daemon thread: cancelling the channel returns at once, and
    nothing joins that thread at exit (asyncio.to_thread's would be)."""
    channel = aws["channel"]
    channel.wait_seconds = 20
    watcher = HostWatcher(FakeProvider(), interval=3600)
    task = asyncio.create_task(channel.run(watcher))

    def polling() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "sqs-receive"]

    await asyncio.wait_for(_until(polling), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    threads = polling()
    assert threads and all(t.daemon and t.is_alive() for t in threads)
