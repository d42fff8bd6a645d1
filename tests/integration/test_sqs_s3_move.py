"""A real hub whose checkpoints live in S3 and whose notices come through EventBridge -> SQS.

moto plays AWS (S3, EventBridge, SQS); hosts are local (the ec2 provider has tests of its
own). The notice is an "EC2 Spot Instance Interruption Warning" put on EventBridge, which
moto's rule delivers to the queue the hub long-polls; the agents move the home (and the
kernel's state, which lives in it) through the bucket themselves.
"""

from __future__ import annotations

import json

import pytest
from ec2world import cloud_config, cloud_resources
from kernelws import KernelSocket
from motoserver import moto_environ, moto_server  # noqa: F401  (pytest fixture)
from test_move import read_file, wait_moved, wait_released, write_file

from migrating_spawner.hosts.cloudevents import INTERRUPTION

pytestmark = pytest.mark.integration

PROVIDER_CONFIG = """
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
    s3, events = moto_server.client("s3"), moto_server.client("events")
    bucket, queue = cloud_resources(moto_server)
    config = cloud_config(moto_server.endpoint_url, bucket, queue) + PROVIDER_CONFIG
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
