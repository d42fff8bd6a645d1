"""EC2HostProvider with simulated instances, no hub: moto's server, the machine simulator
(instances boot their user data: the real agent registers with its bootstrap token and
polls instance metadata), and the registration endpoint on a tornado app of its own.

One acquire serves the module: the instance is spot with the tags; the agent registered
and answers with the derived secret; the spent bootstrap token, a wrong one and an
instance the hub did not launch are refused; a provider made afresh (a restarted hub)
finds the host by tag; a release terminates the instance (its processes end with it).
A kernel that MigratingProvisioner's MovableKernel starts on an ec2 host runs as its hub
user's unprivileged unix user (KERNEL_USERNAME), with the uid derived from the name; with
the S3 store as its state store, a spot interruption (metadata) moves it to another ec2
host with its variables, its snapshot carried through the bucket (each host keeps the
kernel's folder on its own disk). Servers' interruptions are in test_ec2_hub.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from ec2world import AMI, SHARES_THE_MACHINE, ec2_world, wait_for
from gateways import until
from motoserver import moto_environ
from realhub import free_port
from test_movable_kernel import client, run
from tornado import web

from kernel_provisioner.core import KernelTimings, MovableKernel
from kernel_provisioner.settings import KernelHostSettings
from migrating_spawner.agent.client import AgentError
from migrating_spawner.agent.users import stable_id, unix_name
from migrating_spawner.checkpoint import SignedCheckpoints
from migrating_spawner.checkpoint.s3 import S3CheckpointStore
from migrating_spawner.hosts.ec2 import TAG, EC2HostProvider, _Bootstrap
from migrating_spawner.kernelstate.transfer import KernelStateTransfer, key_of
from migrating_spawner.service.registration import registration_handlers

pytestmark = [pytest.mark.timeout(300), SHARES_THE_MACHINE]


class Notices(web.RequestHandler):
    def initialize(self, seen):
        self.seen = seen

    def post(self):
        self.seen.append((self.request.headers.get("Authorization"), json.loads(self.request.body)))
        self.set_status(202)


class FakeController:
    """What registration_handlers need of the controller."""

    def __init__(self, provider):
        self.provider = provider
        self.log = logging.getLogger("test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with ec2_world(tmp_path_factory.mktemp("ec2")) as world:
        with moto_environ(world.moto):
            yield world


def make_provider(world, tmp, api_port, profile="lab"):
    return EC2HostProvider(
        endpoint_url=world.sim_ec2_url,
        region="us-east-1",
        image_id=AMI,
        hub_name="test-hub",
        secret_file=str(tmp / "ec2-secret"),
        agent_port=world.agent_port,
        python=sys.executable,
        install_command="pip install jupyterhub-migrating-spawner",
        hub_api_url=f"http://127.0.0.1:{api_port}/api/",
        instance_types={profile: {"types": ["m6i.large", "m5.large"]}},
        boot_timeout=60,
    )


async def register(api_port, body):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{api_port}/api/hosts/register", json=body) as r:
            return r.status, await r.json()


def serve_registration(provider, api_port, notices):
    """The hub's side of a registration (and its notices endpoint), started."""
    app = web.Application(
        [
            *registration_handlers("/api/", FakeController(provider)),
            ("/api/notices", Notices, {"seen": notices}),
        ]
    )
    server = app.listen(api_port, "127.0.0.1")
    provider.start(f"http://127.0.0.1:{api_port}/api/notices")
    return server


async def test_an_ec2_host_from_launch_to_release(world, tmp_path):
    api_port = free_port()
    provider = make_provider(world, tmp_path, api_port)
    notices: list = []
    server = serve_registration(provider, api_port, notices)
    said: list[str] = []
    try:
        host = await provider.acquire("lab", owner="alice/", progress=said.append)
        iid = host.meta["instance_id"]
        instance = world.moto_instance(iid)
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert instance["InstanceLifecycle"] == "spot" and host.market == "spot"
        assert (tags[TAG + "hub"], tags[TAG + "host-id"], tags[TAG + "user"]) == (
            "test-hub",
            host.id,
            "alice",
        )
        sim = world.instances()[iid]
        assert host.address == sim["address"] and host.address.startswith("127.0.0.")
        assert said[-1].startswith(f"Instance {iid} (m6i.large, spot) launched")
        # the agent answers with the secret the registration handed out, and only with it
        status = await provider.agent(host).status()
        assert status["host_id"] == host.id
        volumes = world.ec2.describe_volumes(
            Filters=[{"Name": f"tag:{TAG}host-id", "Values": [host.id]}]
        )["Volumes"]
        assert volumes, "the root volume carries the host's tags"

        # the token in the user data was spent
        user_data = base64.b64decode(
            world.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"][
                "Value"
            ]
        ).decode()
        config = json.loads(user_data.split("content: |\n", 1)[1].splitlines()[0])
        assert config["host_id"] == host.id
        replay = {
            "host_id": host.id,
            "bootstrap_token": config["bootstrap_token"],
            "instance_id": iid,
            "address": host.address,
        }
        assert (await register(api_port, replay))[0] == 403
        # a wrong token for a host being launched, and a right one for a foreign instance
        foreign = world.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]
        loop = asyncio.get_running_loop()
        provider._bootstraps["ec2-pending"] = _Bootstrap(
            hashlib.sha256(b"right").digest(), time.time() + 60, loop.create_future()
        )
        wrong = {**replay, "host_id": "ec2-pending", "bootstrap_token": "wrong"}
        assert await register(api_port, wrong) == (
            403,
            {"status": 403, "message": "unknown host or wrong bootstrap token"},
        )
        provider._bootstraps["ec2-pending"].used = False
        other = {**wrong, "bootstrap_token": "right", "instance_id": foreign["InstanceId"]}
        status, answer = await register(api_port, other)
        assert (status, answer["message"]) == (
            403,
            f"instance {foreign['InstanceId']} was not launched by this hub",
        )
        assert (await register(api_port, {**other, "bootstrap_token": "right"}))[0] == 403

        # a restarted hub: a provider made afresh finds the host by its tags
        again = make_provider(world, tmp_path, api_port)
        found = await again.get(host.id)
        assert found is not None and (found.address, found.agent_token, found.market) == (
            host.address,
            host.agent_token,
            "spot",
        )
        assert [h.id for h in await again.list_hosts()] == [host.id]

        # the agent polls instance metadata for notices; a release terminates
        assert world.instances()[iid]["metadata_hits"].get("spot/instance-action", 0) >= 1
        await provider.release(host)
        await asyncio.to_thread(
            wait_for,
            lambda: world.instances()[iid]["state"] == "terminated",
            30,
            "the simulator did not end the released instance",
        )
        assert world.moto_instance(iid)["State"]["Name"] == "terminated"
        with pytest.raises(AgentError):
            await provider.agent(host).status(quick=True)
    finally:
        server.stop()


ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def ec2_kernel(world, provider, kernel_id, **kw):
    # its working folder where the user's uid reaches it (the world lets others through)
    return MovableKernel(
        provider,
        kernel_id,
        "python",
        str(world.root / "kernel-state" / kernel_id),
        work_dir=str(world.root / "kernel-files" / kernel_id),
        timings=KernelTimings(snapshot_interval=0, start_timeout=60, notice_poll_interval=0.5),
        **kw,
    )


async def test_a_kernel_on_an_ec2_host_runs_as_its_hub_user(world, tmp_path):
    api_port = free_port()
    provider = make_provider(world, tmp_path, api_port, profile="small")  # kernels' default
    server = serve_registration(provider, api_port, [])
    kernel = ec2_kernel(world, provider, "k-ec2")
    try:
        # the user comes from the gateway client's KERNEL_USERNAME
        info = await kernel.start(ARGV, {"KERNEL_USERNAME": "carol"})
        assert kernel.user == "carol" and kernel.to_info()["user"] == "carol"
        kc = await client(info)
        try:
            out, reply = await run(kc, "import os; print(os.getuid(), os.getgid())")
        finally:
            kc.stop_channels()
        assert reply["status"] == "ok", reply
        uid = stable_id(unix_name("carol"))
        assert out.split() == [str(uid), str(uid)]  # never root; the same uid on every host
        assert Path(kernel.work_dir).stat().st_uid == uid
    finally:
        await kernel.shutdown(grace=0)
        server.stop()


async def interrupted_and_moved(world, kernel, old):
    """A 60 s spot interruption of `old` told through metadata alone; returns the notice
    once the kernel has moved off it."""
    notice = world.sim("interrupt", old.meta["instance_id"], "--notice", "60", "--only", "metadata")
    await until(
        lambda: kernel.moves and kernel.moves[-1].get("from") == old.id,
        55,
        "the kernel did not move off its interrupted host",
    )
    return notice


async def test_a_kernel_moves_between_ec2_hosts_with_its_state_through_s3(world, tmp_path):
    bucket = "kernels-" + tmp_path.name.lower()[-20:].strip("_-")
    world.moto.client("s3").create_bucket(Bucket=bucket)
    store = S3CheckpointStore(bucket=bucket, endpoint_url=world.moto.endpoint_url)
    api_port = free_port()
    provider = make_provider(world, tmp_path, api_port, profile="small")
    provider.watch_interval = 0.5
    server = serve_registration(provider, api_port, [])
    transfer = KernelStateTransfer(SignedCheckpoints(store, b"kernel-secret"))
    kernel = ec2_kernel(world, provider, "k-s3", transfer=transfer)
    try:
        info = await kernel.start(ARGV, {"KERNEL_USERNAME": "dora"})
        old = kernel.host
        kc = await client(info)
        try:
            _, reply = await run(kc, "x = 42; blob = bytes(range(256)) * 4096")
            assert reply["status"] == "ok", reply
            notice = await interrupted_and_moved(world, kernel, old)
            assert time.time() < notice["deadline"]
            out, reply = await run(kc, "import os; print(x, len(blob), os.getuid())")
        finally:
            kc.stop_channels()
        assert reply["status"] == "ok", reply
        assert out.split() == ["42", str(256 * 4096), str(stable_id(unix_name("dora")))]
        # through the bucket: the kernel's signed snapshot, and each host's own folder
        assert store.list_checkpoints(key_of("k-s3")), "no kernel snapshot in the bucket"
        assert kernel.state_dir_on(kernel.host) != kernel.state_dir_on(old)
        assert kernel.state_dir_on(kernel.host).startswith(kernel.host.disk)
        assert not Path(kernel.state_dir).exists()  # nothing went through the shared folder
        record = kernel.moves[-1]
        assert record.get("to") == kernel.host.id != old.id, record
        assert "snapshot_error" not in record and (record.get("restore") or {}).get("ok"), record
    finally:
        await kernel.shutdown(grace=0)
        server.stop()
    assert store.list_checkpoints(key_of("k-s3")) == []  # its snapshots go with it


async def test_a_gateways_kernels_on_ec2_hosts_register_with_the_gateway_itself(world, tmp_path):
    # a gateway process's settings, as a kernelspec's provisioner config would give them:
    # the ec2 provider, the S3 store, and its own registration endpoint (no hub here)
    bucket = "gw-" + tmp_path.name.lower()[-20:].strip("_-")
    world.moto.client("s3").create_bucket(Bucket=bucket)
    port = free_port()
    settings = KernelHostSettings(
        host_provider_class=EC2HostProvider,
        host_provider_config={
            "endpoint_url": world.sim_ec2_url,
            "region": "us-east-1",
            "image_id": AMI,
            "hub_name": "gateway-" + tmp_path.name[-12:],
            "secret_file": str(tmp_path / "ec2-secret"),
            "agent_port": world.agent_port,
            "python": sys.executable,
            "install_command": "true",
            "instance_types": {"small": {"types": ["m6i.large", "m5.large"]}},
            "boot_timeout": 60,
        },
        registration_ip="127.0.0.1",
        registration_port=port,
        state_store_class=S3CheckpointStore,
        state_store_config={"bucket": bucket, "endpoint_url": world.moto.endpoint_url},
        state_secret_file=str(tmp_path / "kernel-secret"),
        state_root=str(world.root / "kernel-state"),
        work_root=str(world.root / "kernel-files"),
        notice_poll_interval=0.5,
        snapshot_interval=0,
    )
    kernel = settings.new_kernel("k-gw", "python")
    provider = settings.provider
    assert provider.api_url == f"http://127.0.0.1:{port}/api/"
    try:
        info = await kernel.start(ARGV, {"KERNEL_USERNAME": "erin"})
        old = kernel.host
        kc = await client(info)
        try:
            _, reply = await run(kc, "x = 42")
            assert reply["status"] == "ok", reply
            await interrupted_and_moved(world, kernel, old)
            out, reply = await run(kc, "print(x)")
        finally:
            kc.stop_channels()
        assert reply["status"] == "ok" and out.strip() == "42", (out, reply)
        record = kernel.moves[-1]
        assert record.get("to") == kernel.host.id != old.id, record
        # both instances registered here: the one it moved to too
        assert kernel.host.meta.get("instance_id") != old.meta["instance_id"]
        assert (record.get("restore") or {}).get("ok"), record
    finally:
        await kernel.shutdown(grace=0)
        for host in await provider.list_hosts():
            await provider.release(host)
