"""A real hub on the `ec2` provider in a simulated region: moto's server plus the machine
simulator, real CHP, jupyterhub-singleuser and a kernel on the simulated instances.

The first test's hub hears of the cloud through instance metadata only (no SQS queue), in
order: a spawn is a spot instance with the hub's tags and the server runs on it; a spot
interruption moves the server (same URL, file and `x` kept, no failed request of a polling
client) to another instance type (the interrupted one is avoided); while the old instance
waits for its end, a capacity error on the first type makes the next spawn take the second
type (its progress says so); a rebalance recommendation moves nothing (move_on_rebalance
is off there); a restarted hub finds its instances by tag but not the interrupted one; the
simulator terminates that one at the deadline, and the hub's EC2 calls (recorded by a proxy
in front of its endpoint) never asked to terminate it.

The second test's hub has the S3 store (synced homes) and the EventBridge -> SQS channel:
a rebalance recommendation moves the server to the other type at once; with no spot
capacity in either type the next spawn is on-demand and its progress says so; an instance
terminated without a notice (its state-change event on EventBridge) brings the server
back from its last checkpoint on another instance, and its events say what was lost.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import requests
from ec2world import AMI, ec2_world, wait_for
from gateways import until
from kernelws import KernelSocket
from motoserver import moto_environ
from test_move import Poller, read_file, wait_moved, write_file

from migrating_spawner.hosts.cloudevents import STATE_CHANGE, put_rule
from migrating_spawner.hosts.ec2 import TAG

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NOTICE = 15

HUB_CONFIG = """
c.MigratingController.provider_class = "migrating_spawner.hosts.ec2.EC2HostProvider"
c.EC2HostProvider.endpoint_url = "{ec2_url}"
c.EC2HostProvider.region = "us-east-1"
c.EC2HostProvider.image_id = "{ami}"
c.EC2HostProvider.hub_name = "test-hub"
c.EC2HostProvider.agent_port = {agent_port}
c.EC2HostProvider.python = "{python}"
c.EC2HostProvider.boot_timeout = 60
c.EC2HostProvider.instance_types = {{"small": {{"types": ["t3.medium", "t3a.medium"]}}}}
c.EC2HostProvider.watch_interval = 1
"""

CLOUD_CONFIG = """
c.MigratingSpawner.home_mode = "synced"
c.MigratingSpawner.precopy_interval = 0
c.MigratingController.store_class = "migrating_spawner.checkpoint.s3.S3CheckpointStore"
c.S3CheckpointStore.bucket = "{bucket}"
c.S3CheckpointStore.endpoint_url = "{moto_url}"
c.CloudEventsChannel.queue_url = "{queue}"
c.CloudEventsChannel.endpoint_url = "{moto_url}"
c.CloudEventsChannel.wait_seconds = 2
"""


class TerminationRecorder:
    """The hub's EC2 endpoint: a proxy in front of the simulator's that notes every
    instance the hub asks to terminate (moto keeps no record of who asked)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.terminated: list[tuple[float, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if b"Action=TerminateInstances" in body:
                    for key, value in parse_qsl(body.decode()):
                        if key.startswith("InstanceId."):
                            recorder.terminated.append((time.time(), value))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length", "connection"}
                }
                answer = requests.post(
                    recorder.upstream + self.path, data=body, headers=headers, timeout=60
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "text/xml"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        return [iid for _, iid in self.terminated]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def instance_of(world, host_id: str) -> dict:
    return world.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG}host-id", "Values": [host_id]}]
    )["Reservations"][0]["Instances"][0]


async def wait_log(hub, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in hub.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"not in the hub's log: {text!r}\n{hub.tail()}"
        await asyncio.sleep(0.3)


def print_region(world) -> None:
    print("===== simulator log =====\n" + world.log())
    for inst in world.instances().values():
        for log in sorted(Path(inst["root"]).rglob("*.log")):
            print(f"===== {log} =====\n{log.read_text(errors='replace')[-3000:]}")


async def test_servers_on_simulated_spot_instances(hub_factory, tmp_path):
    with ec2_world(tmp_path / "region") as world, moto_environ(world.moto):
        recorder = TerminationRecorder(world.sim_ec2_url)
        config = HUB_CONFIG.format(
            ec2_url=recorder.url,
            ami=AMI,
            agent_port=world.agent_port,
            python=sys.executable,
        )
        hub = await hub_factory(config + "c.EC2HostProvider.move_on_rebalance = False\n")
        try:
            await scenario(hub, world, recorder)
        except BaseException:
            print_region(world)
            raise
        finally:
            hub.stop()  # before its region goes
            recorder.close()


async def scenario(hub, world, recorder):
    await hub.spawn("alice")
    before = await hub.server_info("alice")
    assert before["provider"] == "ec2" and before["host_id"].startswith("ec2-")
    instances = world.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG}host-id", "Values": [before["host_id"]]}]
    )["Reservations"][0]["Instances"]
    old = instances[0]
    iid = old["InstanceId"]
    tags = {t["Key"]: t["Value"] for t in old["Tags"]}
    assert old["InstanceLifecycle"] == "spot" and old["InstanceType"] == "t3.medium"
    assert (tags[TAG + "hub"], tags[TAG + "user"], tags[TAG + "server"]) == (
        "test-hub",
        "alice",
        "",
    )
    # the server listens on the simulated instance's own address
    assert before["address"].split(":")[0] == world.instances()[iid]["address"]

    token = await hub.user_token("alice")
    await write_file(hub, "alice", token, "notes.txt", "written on the first instance")
    session = await hub.new_session("alice", token, "work.ipynb")
    kernel_id = session["kernel"]["id"]
    base = hub.url + "/user/alice"
    async with KernelSocket(base, kernel_id, token) as kernel:
        await kernel.run("x = 42")

    poller = Poller(hub.url + "/user/alice/api/status", token)
    task = asyncio.create_task(poller.run())
    await until(lambda: len(poller.codes) >= 3, 30, "the poller got no answer")
    # through instance metadata only: the agent polls it and pushes the notice
    notice = world.sim("interrupt", iid, "--notice", str(NOTICE))
    deadline = time.monotonic() + 60
    while True:
        after = await hub.server_info("alice")
        if after["host_id"] != before["host_id"] and after["state"] == "Running":
            break
        assert time.monotonic() < deadline, f"no move: {after}\n{hub.tail()}"
        await asyncio.sleep(0.3)
    moved_at = len(poller.codes)
    await until(lambda: len(poller.codes) >= moved_at + 3, 30, "no answer after the move")
    poller.stop()
    await task
    assert time.time() < notice["deadline"], "the move must end before the deadline"
    # the hub moved off but left the interrupted instance to the cloud
    assert world.moto_instance(iid)["State"]["Name"] == "running"

    assert poller.errors == [] and set(poller.codes) == {200}, (poller.errors, poller.codes)
    assert await read_file(hub, "alice", token, "notes.txt") == "written on the first instance"
    async with KernelSocket(base, kernel_id, token) as kernel:
        out, _ = await kernel.run("print(x)")
    assert out.strip() == "42"
    new = world.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG}host-id", "Values": [after["host_id"]]}]
    )["Reservations"][0]["Instances"][0]
    # the interrupted type is avoided for a while
    assert new["InstanceType"] == "t3a.medium" and new["InstanceLifecycle"] == "spot"
    assert after["address"].split(":")[0] == world.instances()[new["InstanceId"]]["address"]

    # meanwhile (the old instance still runs): no spot capacity for the type not
    # interrupted lately, so the next spawn takes the other one, and the user is told
    world.sim("capacity-error", "t3a.medium")
    await hub.spawn("bob")
    info = await hub.server_info("bob")
    messages = [e["message"] for e in info["events"]]
    assert (
        "No spot capacity for t3a.medium (InsufficientInstanceCapacity): trying t3.medium"
        in messages
    ), messages
    bob = world.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG}host-id", "Values": [info["host_id"]]}]
    )["Reservations"][0]["Instances"][0]
    assert (bob["InstanceType"], bob["InstanceLifecycle"]) == ("t3.medium", "spot")

    # a rebalance recommendation (metadata: the agent's status) with move_on_rebalance off:
    # the hub hears of it and moves nothing
    world.sim("rebalance", bob["InstanceId"])
    await wait_log(hub, f"rebalance recommendation for {info['host_id']}: not moving")
    still = await hub.server_info("bob")
    assert (still["host_id"], still["state"]) == (info["host_id"], "Running"), still

    # a restarted hub finds its instances by tag, and not the interrupted one it gave up
    # (no orphan to terminate: that is the cloud's, at the deadline)
    await hub.restart()
    status, hosts = await hub.migrate_api("GET", "/hosts")
    assert status == 200, hosts
    assert sorted((h["id"], tuple(h["servers"])) for h in hosts["hosts"]) == sorted(
        [(after["host_id"], ("alice/",)), (info["host_id"], ("bob/",))]
    )
    assert (await hub.server_info("alice"))["state"] == "Running"
    assert await read_file(hub, "alice", token, "notes.txt") == "written on the first instance"

    await asyncio.to_thread(
        wait_for,
        lambda: world.moto_instance(iid)["State"]["Name"] == "terminated",
        NOTICE + 15,
        "the simulator did not terminate the old instance",
    )
    assert time.time() >= notice["deadline"]
    # the hub asked EC2 to terminate none of its interrupted instance (the cloud ends it)
    assert iid not in recorder.ids(), recorder.terminated


async def test_cloud_events_rebalance_loss_and_on_demand(hub_factory, tmp_path):
    with ec2_world(tmp_path / "region") as world, moto_environ(world.moto):
        s3, sqs = world.moto.client("s3"), world.moto.client("sqs")
        events = world.moto.client("events")
        bucket = f"hub-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(Bucket=bucket)
        queue = sqs.create_queue(QueueName=f"hub-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        put_rule(events, arn["Attributes"]["QueueArn"])
        config = HUB_CONFIG.format(
            ec2_url=world.sim_ec2_url, ami=AMI, agent_port=world.agent_port, python=sys.executable
        ) + CLOUD_CONFIG.format(bucket=bucket, moto_url=world.moto.endpoint_url, queue=queue)
        hub = await hub_factory(config)
        try:
            await cloud_scenario(hub, world, events)
        except BaseException:
            print_region(world)
            raise
        finally:
            hub.stop()


async def cloud_scenario(hub, world, events):
    await hub.spawn("alice")
    first = await hub.server_info("alice")
    old = instance_of(world, first["host_id"])
    assert (old["InstanceType"], old["InstanceLifecycle"]) == ("t3.medium", "spot")
    token = await hub.user_token("alice")
    await write_file(hub, "alice", token, "notes.txt", "before the rebalance")
    session = await hub.new_session("alice", token, "work.ipynb")
    kernel_id = session["kernel"]["id"]
    base = hub.url + "/user/alice"
    async with KernelSocket(base, kernel_id, token) as kernel:
        await kernel.run("x = 42")

    # a rebalance recommendation (metadata and EventBridge both): a move, at once, to the
    # type not at risk; the old instance is the hub's to end (no interruption came)
    world.sim("rebalance", old["InstanceId"])
    moved = await wait_moved(hub, "alice", first["host_id"], timeout=90)
    new = instance_of(world, moved["host_id"])
    assert (new["InstanceType"], new["InstanceLifecycle"]) == ("t3a.medium", "spot")
    moves = [e["message"] for e in moved["events"] if e["message"].startswith("Moved to")]
    assert len(moves) == 1, moved["events"]
    await asyncio.to_thread(
        wait_for,
        lambda: world.moto_instance(old["InstanceId"])["State"]["Name"] == "terminated",
        30,
        "the hub did not terminate the instance it moved off",
    )
    assert await read_file(hub, "alice", token, "notes.txt") == "before the rebalance"

    # no spot capacity in either type: on-demand, and the user's progress says so
    world.sim("capacity-error", "t3.medium")
    world.sim("capacity-error", "t3a.medium")
    await hub.spawn("bob")
    bob = await hub.server_info("bob")
    messages = [e["message"] for e in bob["events"]]
    assert any(
        m.startswith("No spot capacity for any of t3.medium, t3a.medium")
        and m.endswith(": starting an on-demand instance instead")
        for m in messages
    ), messages
    assert bob["market"] == "on-demand"
    assert "InstanceLifecycle" not in instance_of(world, bob["host_id"])  # on-demand
    world.sim("capacity-error", "t3.medium", "--clear")
    world.sim("capacity-error", "t3a.medium", "--clear")

    # alice's instance ends without any notice: the cloud's state change says so
    await write_file(hub, "alice", token, "late.txt", "after the last checkpoint")
    lost_iid = new["InstanceId"]
    world.ec2.terminate_instances(InstanceIds=[lost_iid])
    answer = events.put_events(
        Entries=[
            {
                "Source": "aws.ec2",
                "DetailType": STATE_CHANGE,
                "Detail": json.dumps({"instance-id": lost_iid, "state": "shutting-down"}),
            }
        ]
    )
    assert answer["FailedEntryCount"] == 0
    back = await wait_moved(hub, "alice", moved["host_id"], timeout=120)
    messages = [e["message"] for e in back["events"]]
    assert f"Host {moved['host_id']} was lost without notice: restoring" in messages, messages
    assert any("files changed after" in m and "were lost" in m for m in messages), messages
    # from the last checkpoint: the file written before it, not the one after
    assert await read_file(hub, "alice", token, "notes.txt") == "before the rebalance"
    status, _ = await hub.request("GET", "/user/alice/api/contents/late.txt", token)
    assert status == 404
    async with KernelSocket(base, kernel_id, token) as kernel:
        out, _ = await kernel.run("print(x)")
    assert out.strip() == "42"
