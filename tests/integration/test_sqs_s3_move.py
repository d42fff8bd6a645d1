"""A real hub whose checkpoints live in S3 and whose notices come through EventBridge -> SQS.

moto plays AWS (S3, EventBridge, SQS); hosts are local (the ec2 provider has tests of its
own). The notice is an "EC2 Spot Instance Interruption Warning" put on EventBridge, which
moto's rule delivers to the queue the hub long-polls; the agents move the home (and the
kernel's state, which lives in it) through the bucket themselves.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kernelws import KernelSocket
from motoserver import moto_environ, moto_server  # noqa: F401  (pytest fixture)
from test_move import read_file, wait_moved, wait_released, write_file

from migrating_spawner.hosts.cloudevents import INTERRUPTION, put_rule

pytestmark = pytest.mark.integration

HUB_CONFIG = """
c.MigratingSpawner.home_mode = "synced"
c.MigratingController.store_class = "migrating_spawner.checkpoint.s3.S3CheckpointStore"
c.S3CheckpointStore.bucket = "{bucket}"
c.S3CheckpointStore.endpoint_url = "{endpoint}"
c.CloudEventsChannel.queue_url = "{queue}"
c.CloudEventsChannel.endpoint_url = "{endpoint}"
c.CloudEventsChannel.wait_seconds = 2

from migrating_spawner.hosts.cloudevents import CloudEventsChannel
from migrating_spawner.hosts.local import LocalHostProvider


class LocalHostsWithCloudEvents(LocalHostProvider):
    # what EC2HostProvider does: the SQS channel feeds this provider's host watcher
    def start(self, notify_url=""):
        channel = CloudEventsChannel(parent=self, log=self.log)
        return super().start(notify_url) + channel.start(self.watcher)


c.MigratingController.provider_class = LocalHostsWithCloudEvents
"""


async def test_servers_move_with_their_home_through_s3_on_an_eventbridge_notice(
    hub_factory,
    moto_server,  # noqa: F811
):
    s3, sqs, events = (moto_server.client(n) for n in ("s3", "sqs", "events"))
    bucket = f"hub-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=f"hub-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    put_rule(events, arn["Attributes"]["QueueArn"])
    config = HUB_CONFIG.format(bucket=bucket, endpoint=moto_server.endpoint_url, queue=queue)
    with moto_environ(moto_server):  # the hub and its agents: credentials from the env
        hub = await hub_factory(config)

    await hub.spawn("alice")
    token = await hub.user_token("alice")
    await write_file(hub, "alice", token, "notes.txt", "kept in S3")
    session = await hub.new_session("alice", token, "work.ipynb")
    base = hub.url + "/user/alice"
    async with KernelSocket(base, session["kernel"]["id"], token) as kernel:
        await kernel.run("x = 42")
    before = await hub.server_info("alice")

    # the cloud's warning, twice (EventBridge delivers at least once)
    for _ in range(2):
        answer = events.put_events(
            Entries=[
                {
                    "Source": "aws.ec2",
                    "DetailType": INTERRUPTION,
                    "Detail": json.dumps(
                        {"instance-id": before["host_id"], "instance-action": "terminate"}
                    ),
                }
            ]
        )
        assert answer["FailedEntryCount"] == 0
    after = await wait_moved(hub, "alice", before["host_id"], timeout=90)

    assert await read_file(hub, "alice", token, "notes.txt") == "kept in S3"
    async with KernelSocket(base, session["kernel"]["id"], token) as kernel:
        out, _ = await kernel.run("print(x)")
        assert out.strip() == "42"
    # the home went through the bucket, none of it through a local checkpoint folder
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    assert any(k.startswith("jupyterhub-migrating/chunks/") for k in keys), keys
    manifests = [k for k in keys if k.startswith("jupyterhub-migrating/manifests/alice%2F/")]
    assert manifests, keys
    assert not (hub.workdir / "checkpoints" / "chunks").exists()
    # two deliveries, one move
    moves = [e["message"] for e in after["events"] if e["message"].startswith("Moved to")]
    assert len(moves) == 1, after["events"]
    await wait_released(hub, before["host_id"])
    assert (await hub.server_info("alice"))["host_id"] == after["host_id"]
