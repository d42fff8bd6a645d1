"""Reclaim notices from the cloud itself: EC2 events through EventBridge into an SQS queue.

The second notice channel beside each host's own (its agent polls instance metadata and
pushes): EventBridge rules send "EC2 Spot Instance Interruption Warning", "EC2 Instance
Rebalance Recommendation" and "EC2 Instance State-change Notification" to a queue the hub
long-polls, so notices arrive where a host cannot reach its metadata or the hub. Both
channels feed the same cache, the provider's HostWatcher, which tells each notice once:

- an interruption warning is a notice with a deadline (the event's time + 120 s, AWS's
  warning): `watcher.push_notice`, the same intake as the agent's push (the earlier
  deadline stands; the same one again is no news);
- a rebalance recommendation is `watcher.push_rebalance`, the same intake as the agent's
  (its push and its status), so it is told once however it came; the provider decides
  whether to move proactively (EC2HostProvider.move_on_rebalance);
- a state change to shutting-down/terminated/stopping/stopped of a host with no notice
  means the host is gone without warning: `watcher.mark_lost` (the server comes back from
  its last checkpoint); with a notice standing the move already takes care of it.

Events of instances the watcher does not watch are kept for `pending_seconds` and applied
once their host is watched (a warning may come before a new server's host is), then dropped
(an account has other instances); messages that are not EC2 events are dropped. The
`account` key is not needed. One queue per hub: each message is deleted once handled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..agent.host import Host
from .watcher import HostWatcher

INTERRUPTION = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE = "EC2 Instance State-change Notification"
DETAIL_TYPES = (INTERRUPTION, REBALANCE, STATE_CHANGE)
#: states in which an instance no longer serves
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
#: AWS's spot interruption warning comes this long before the instance is taken
AWS_NOTICE_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class CloudEvent:
    """One EC2 event, as much of it as a move needs."""

    detail_type: str
    instance_id: str
    time: float  # epoch seconds the event was emitted
    action: str = ""  # interruption: terminate | stop | hibernate
    state: str = ""  # state change: pending | running | shutting-down | terminated | ...
    id: str = ""


def _epoch(value: Any, default: float) -> float:
    if not isinstance(value, str) or not value:
        return default
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def parse_event(body: str | bytes | dict[str, Any], now: float | None = None) -> CloudEvent | None:
    """The EC2 event in an SQS message body (EventBridge's JSON), or None if it is none.

    Only `detail-type`, `detail.instance-id` (else the instance ARN in `resources`) and
    `time` are read; `account`, `region` and the rest may be missing.
    """
    now = time.time() if now is None else now
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(body, dict) or body.get("detail-type") not in DETAIL_TYPES:
        return None
    detail = body.get("detail") if isinstance(body.get("detail"), dict) else {}
    instance_id = detail.get("instance-id")
    if not isinstance(instance_id, str) or not instance_id:
        arns = [r for r in body.get("resources") or () if isinstance(r, str)]
        instance_id = next((a.rsplit("/", 1)[1] for a in arns if ":instance/" in a), "")
    if not instance_id:
        return None
    return CloudEvent(
        detail_type=body["detail-type"],
        instance_id=instance_id,
        time=_epoch(body.get("time"), now),
        action=str(detail.get("instance-action") or ""),
        state=str(detail.get("state") or ""),
        id=str(body.get("id") or ""),
    )


def notice_of(event: CloudEvent, notice_seconds: float = AWS_NOTICE_SECONDS) -> dict[str, Any]:
    """The watcher's notice for an interruption warning (same shape as the agent's push)."""
    return {
        "deadline": event.time + notice_seconds,
        "time": event.time,
        "action": event.action or "terminate",
        "source": "eventbridge",
    }


#: the EventBridge rule's pattern: the three kinds of EC2 event this channel reads
EVENT_PATTERN = {"source": ["aws.ec2"], "detail-type": list(DETAIL_TYPES)}


def put_rule(events: Any, queue_arn: str, name: str = "jupyterhub-migrating-ec2") -> None:
    """Create (or update) the EventBridge rule that sends EC2 events to the queue, with a
    boto3 `events` client (demos, tests; on AWS the queue also needs a policy letting
    events.amazonaws.com send to it, see examples/aws/)."""
    events.put_rule(Name=name, EventPattern=json.dumps(EVENT_PATTERN), State="ENABLED")
    events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": queue_arn}])


def host_of(watcher: HostWatcher, instance_id: str) -> Host | None:
    """The watched host that is this instance (its id, or meta["instance_id"])."""
    for host in watcher.hosts():
        if host.id == instance_id or host.meta.get("instance_id") == instance_id:
            return host
    return None


def in_daemon_thread(fn: Callable[..., Any], /, **kwargs: Any) -> asyncio.Future:
    """Run a blocking call in a daemon thread of its own. For the long poll: the threads of
    asyncio.to_thread are joined at exit, so a hub stopping would wait out the poll."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled: nobody waits for it
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(**kwargs), None
        except BaseException as e:  # handed to the awaiting task
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop has closed meanwhile

    threading.Thread(target=work, name="sqs-receive", daemon=True).start()
    return future


class CloudEventsChannel(LoggingConfigurable):
    """Long-polls an SQS queue of EC2 events and feeds the host watcher (see module doc)."""

    queue_url = Unicode(
        "",
        config=True,
        help="""URL of the SQS queue the EventBridge rules send EC2 events to (one queue
        per hub; see examples/aws/README.md). Empty: this channel is off and notices come
        from the hosts' metadata only.""",
    )

    region = Unicode("", config=True, help="AWS region of the queue; empty: boto3's default.")

    endpoint_url = Unicode(
        "", config=True, help="SQS endpoint URL; empty: AWS's own (set it for moto)."
    )

    wait_seconds = Integer(
        20,
        config=True,
        help="Seconds one receive waits for a message (SQS long polling, at most 20).",
    )

    notice_seconds = Float(
        AWS_NOTICE_SECONDS,
        config=True,
        help="""Seconds from an interruption warning's time to the instance's end (AWS
        gives two minutes). The metadata channel's own deadline, when earlier, stands.""",
    )

    retry_seconds = Float(
        5.0, config=True, help="Seconds to wait after a failed receive before the next."
    )

    pending_seconds = Float(
        AWS_NOTICE_SECONDS,
        config=True,
        help="""Seconds an event for an instance that is no watched host is kept and tried
        again each second: a host is watched from its server's start or the hub's first
        round after a restart, and its warning may come before that. Then it is dropped
        (another workload's instance).""",
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._client = None
        #: what each handled event became (for logs and tests): (event, what)
        self.handled: list[tuple[CloudEvent, str]] = []
        #: events of instances not watched (yet), in arrival order: (event, when received)
        self._pending: list[tuple[CloudEvent, float]] = []

    @property
    def client(self):
        if self._client is None:
            self._client = boto3.session.Session().client(
                "sqs",
                region_name=self.region or None,
                endpoint_url=self.endpoint_url or None,
                config=Config(
                    connect_timeout=10,
                    read_timeout=self.wait_seconds + 10,  # a long poll is no timeout
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )
        return self._client

    # -- what an event does ---------------------------------------------------------------

    def handle(self, event: CloudEvent, watcher: HostWatcher) -> str:
        """Feed one event to the watcher; returns what it did (for the log)."""
        host = host_of(watcher, event.instance_id)
        if host is None:
            return "not ours"
        state = watcher.state(host.id)
        if event.detail_type == INTERRUPTION:
            news = watcher.push_notice(host.id, notice_of(event, self.notice_seconds))
            return "notice" if news else "notice known"
        if event.detail_type == REBALANCE:
            info = {"time": event.time, "source": "eventbridge"}
            return "rebalance" if watcher.push_rebalance(host.id, info) else "rebalance known"
        if event.state in GONE_STATES:
            if state is not None and state.notice:
                return "ending after its notice"
            return "lost" if watcher.mark_lost(host.id) else "lost known"
        return "state ignored"

    async def receive_once(self, watcher: HostWatcher) -> int:
        """One long poll: handle what came and delete it; returns the number of messages."""
        reply = await in_daemon_thread(
            self.client.receive_message,
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
        )
        messages = reply.get("Messages") or []
        done = []
        for message in messages:
            event = parse_event(message.get("Body", ""))
            if event is None:
                self.log.warning("SQS %s: not an EC2 event, dropped", message.get("MessageId"))
            else:
                self._take(event, watcher)
            done.append({"Id": str(len(done)), "ReceiptHandle": message["ReceiptHandle"]})
        if done:
            await asyncio.to_thread(
                self.client.delete_message_batch, QueueUrl=self.queue_url, Entries=done
            )
        return len(messages)

    def _take(self, event: CloudEvent, watcher: HostWatcher) -> None:
        what = self.handle(event, watcher)
        self.handled.append((event, what))
        self.log.info("%s for %s: %s", event.detail_type, event.instance_id, what)
        if what == "not ours":
            self._pending.append((event, time.monotonic()))

    def retry_pending(self, watcher: HostWatcher) -> None:
        """Apply kept events whose instance is watched now; drop those kept too long."""
        now, keep = time.monotonic(), []
        for event, received in self._pending:
            if host_of(watcher, event.instance_id) is not None:
                self._take(event, watcher)
            elif now - received < self.pending_seconds:
                keep.append((event, received))
        self._pending = keep

    async def run(self, watcher: HostWatcher) -> None:
        """Receive until cancelled; a failed receive is logged and tried again. Kept
        events are tried again every second meanwhile."""

        async def retry() -> None:
            while True:
                await asyncio.sleep(1)
                self.retry_pending(watcher)

        retrying = asyncio.create_task(retry())
        try:
            while True:
                try:
                    await self.receive_once(watcher)
                except (ClientError, BotoCoreError) as e:
                    self.log.warning("SQS receive from %s failed: %s", self.queue_url, e)
                    await asyncio.sleep(self.retry_seconds)
        finally:
            retrying.cancel()

    def start(self, watcher: HostWatcher) -> list[asyncio.Task]:
        """The channel's task (none when `queue_url` is empty), for HostProvider.start()."""
        if not self.queue_url:
            return []
        return [asyncio.create_task(self.run(watcher))]
