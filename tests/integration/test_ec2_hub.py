"""A real hub on the `ec2` provider in a simulated region: moto's server plus the machine
simulator, real CHP, jupyterhub-singleuser and a kernel on the simulated instances.

The first test's hub hears of the cloud through instance metadata only (no SQS queue, and
the simulator puts no EventBridge event), in order: a spawn is a spot instance with the
hub's tags and the server runs on it; a spot interruption moves the server (same URL, file
and `x` kept, no failed request of a polling client) to another instance type (the
interrupted one is avoided); while the old instance waits for its end, a capacity error on
the first type makes the next spawn take the second type (its progress says so); a rebalance
recommendation moves nothing (move_on_rebalance is off there); a restarted hub finds its
instances by tag but not the interrupted one; the simulator terminates that one at the
deadline, and the hub's EC2 calls (recorded by a proxy in front of its endpoint) never asked
to terminate it.

The second test's hub has the S3 store (synced homes) and the EventBridge -> SQS channel:
a rebalance recommendation moves the server to the other type at once; with no spot
capacity in either type the next spawn is on-demand and its progress says so; an instance
terminated without a notice (its state-change event on EventBridge) brings the server
back from its last checkpoint on another instance, and its events say what was lost; a spot
interruption told through EventBridge alone (the instance's metadata never announces it,
as where metadata is blocked) moves the server again with its file and `x`, before the
deadline, and the hub leaves that instance to the cloud.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import requests
from ec2world import (
    SHARES_THE_MACHINE,
    cloud_config,
    cloud_resources,
    ec2_config,
    ec2_world,
    wait_for,
)
from gateways import until
from kernelws import KernelSocket
from motoserver import moto_environ
from test_move import Poller, read_file, wait_moved, write_file

from migrating_spawner.hosts.cloudevents import STATE_CHANGE
from migrating_spawner.hosts.ec2 import TAG

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), SHARES_THE_MACHINE]

#: the first test's notice: long enough for a move under load (a first start of the
#: user's server on a new instance took 28 s here beside other tests), which the test
#: waits for at its end (the simulator terminates the old instance at the deadline)
NOTICE = 60


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
        config = ec2_config(world, ec2_url=recorder.url)
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
    # through instance metadata only (no EventBridge event either): the agent polls it and
    # pushes the notice
    notice = world.sim("interrupt", iid, "--notice", str(NOTICE), "--only", "metadata")
    assert notice["channels"] == ["metadata"]
    deadline = time.monotonic() + NOTICE
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
        events = world.moto.client("events")
        bucket, queue = cloud_resources(world.moto)
        config = ec2_config(world) + cloud_config(
            world.moto.endpoint_url, bucket, queue, precopy_interval=0
        )
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
    # the machine is gone (the simulator ended it) before the cloud's event says so: a hub
    # that hears first and still reaches the agent saves a final checkpoint, and nothing
    # is lost (a loaded run did exactly that)
    await asyncio.to_thread(
        wait_for,
        lambda: world.instances()[lost_iid]["state"] == "terminated",
        30,
        "the simulator did not end the terminated instance's machine",
    )
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
    said = "\n".join(messages)  # in full: a list's repr is cut short in the report
    assert f"Host {moved['host_id']} was lost without notice: restoring" in messages, said
    assert any("files changed after" in m and "were lost" in m for m in messages), said
    # from the last checkpoint: the file written before it, not the one after
    assert await read_file(hub, "alice", token, "notes.txt") == "before the rebalance"
    status, _ = await hub.request("GET", "/user/alice/api/contents/late.txt", token)
    assert status == 404
    async with KernelSocket(base, kernel_id, token) as kernel:
        out, _ = await kernel.run("print(x)")
    # x from the last background snapshot; the kernel's first output may tell the loss
    *told, value = out.strip().splitlines()
    assert value == "42", out
    assert not told or "restored from its last background snapshot" in " ".join(told), out

    # a spot interruption told through EventBridge -> SQS alone: the instance's metadata
    # never announces it (as where metadata is blocked), and that is enough
    gone_iid = instance_of(world, back["host_id"])["InstanceId"]
    notice = world.sim("interrupt", gone_iid, "--notice", "90", "--only", "eventbridge")
    assert notice["channels"] == ["eventbridge"]
    again = await wait_moved(hub, "alice", back["host_id"], timeout=90)
    assert instance_of(world, again["host_id"])["InstanceId"] != gone_iid
    assert time.time() < notice["deadline"], "the move must end before the deadline"
    assert world.moto_instance(gone_iid)["State"]["Name"] == "running"  # the cloud's to end
    assert await read_file(hub, "alice", token, "notes.txt") == "before the rebalance"
    async with KernelSocket(base, kernel_id, token) as kernel:
        out, _ = await kernel.run("print(x)")
    assert out.strip() == "42"
