"""A real hub on the `ec2` provider in a simulated region: moto's server plus the machine
simulator, real CHP, jupyterhub-singleuser and a kernel on the simulated instances.

One hub serves the module's single test, in order: a spawn is a spot instance with the
hub's tags and the server runs on it; a spot interruption given through instance metadata
only (no SQS queue here) moves the server (same URL, file and `x` kept, no failed request
of a polling client) to another instance type (the interrupted one is avoided); while the
old instance waits for its end, a capacity error on the first type makes the next spawn
take the second type (its progress says so), and a restarted hub finds its instances by
tag but not the interrupted one; the simulator terminates that one at the deadline, the
hub never did.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from ec2world import AMI, ec2_world, wait_for
from gateways import until
from kernelws import KernelSocket
from motoserver import moto_environ
from test_move import Poller, read_file, write_file

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


async def test_servers_on_simulated_spot_instances(hub_factory, tmp_path):
    with ec2_world(tmp_path / "region") as world, moto_environ(world.moto):
        config = HUB_CONFIG.format(
            ec2_url=world.sim_ec2_url,
            ami=AMI,
            agent_port=world.agent_port,
            python=sys.executable,
        )
        hub = await hub_factory(config)
        try:
            await scenario(hub, world)
        except BaseException:
            print("===== simulator log =====\n" + world.log())
            for inst in world.instances().values():
                for log in sorted(Path(inst["root"]).rglob("*.log")):
                    print(f"===== {log} =====\n{log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            hub.stop()  # before its region goes


async def scenario(hub, world):
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
