"""A simulated EC2 region for tests: moto's server plus `jupyterhub-migrate-ec2-sim run`.

    with ec2_world(tmp) as world:      # moto on a free port, the simulator beside it
        world.ec2                      # boto3 EC2 client straight to moto
        world.sim_ec2_url              # the EC2 endpoint the hub uses (capacity errors)
        world.sim("interrupt", iid, "--notice", "20")
        world.instances()              # the simulator's view (GET /instances)

Instances get 127.0.0.2 up (local hosts of test hubs use 127.0.0.20 and up, 127.N.0.20
up on pytest-xdist worker N); their
metadata services and agents listen on ports free on all of them. Stopping the world stops
the simulator, which kills every simulated instance's processes.

The instances' folders are in a folder of their own under /tmp that others may traverse
(pytest's are root's alone), since their agents run users' servers as unprivileged unix
users; the users they made (`useradd`, comment "jupyterhub user ...") are deleted when the
world stops. Their servers run this venv's Python and may keep shared homes in the test's
folder: folders above the interpreter and above `root` that keep others out (here /root,
pyenv's home, and pytest's 0700 folders) let others through (o+x, not listing) while the
world runs, and get their mode back after. `firewall=True` lets the simulator run the user
data's iptables rule for each instance's metadata address (removed at the instance's end).

The hub configs of the tests and benchmarks in this region come from one builder:

    ec2_config(world, hub_name="test-hub")        # the ec2 provider on the world's endpoint
    cloud_config(moto_url, *cloud_resources(moto)) # S3 store (synced homes) + SQS channel
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from motoserver import MotoServer, running_moto
from realhub import free_port

from migrating_spawner.hosts.cloudevents import put_rule

VENV_BIN = Path(sys.executable).parent
FIRST_ADDRESS = "127.0.0.2"
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 20)]
#: the mark of test modules that use a world (or `interpreter_reachable`): a world makes unix
#: users, deletes the ones made while it ran and opens folders' modes, so under pytest-xdist
#: one worker runs all these modules, one after another
SHARES_THE_MACHINE = pytest.mark.xdist_group("ec2-world")
AMI = "ami-12c6146b"  # one of moto's
#: the one profile of the region's hubs: two spot types (the second one takes over from an
#: interrupted or capacity-less first)
TYPES = ("t3.medium", "t3a.medium")


@dataclass
class World:
    moto: MotoServer
    root: Path
    agent_port: int
    imds_port: int = 0
    proc: subprocess.Popen | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ec2(self) -> Any:
        return self.moto.client("ec2")

    @property
    def sim_ec2_url(self) -> str:
        return self.info["ec2_url"]

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.moto.env()}
        env.pop("AWS_ENDPOINT_URL", None)  # every client here names its endpoint
        env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
        return env

    def sim(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(VENV_BIN / "jupyterhub-migrate-ec2-sim"), "--state-dir", str(self.root), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def instances(self) -> dict[str, dict[str, Any]]:
        answer = requests.get(self.info["control_url"] + "/instances", timeout=10).json()
        return {i["instance_id"]: i for i in answer["instances"]}

    def moto_instance(self, instance_id: str) -> dict[str, Any]:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])
        return found["Reservations"][0]["Instances"][0]

    def log(self) -> str:
        try:
            return (self.root / "sim.log").read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def interpreter_reachable(*more: Path) -> Iterator[None]:
    """Let unprivileged users through the folders above this venv's Python and above `more`
    (o+x, not listing) for a while; their modes are restored after.

    The grant is kept while it lasts: every pytest that starts on this machine (another
    engineer's, the CI's) sets /tmp/pytest-of-root back to 0700, which cut a running
    world's users off their homes ("Permission denied" at a move's new server start)."""
    changed: dict[Path, int] = {}
    folders = {
        p for path in (Path(sys.executable), *more) for p in Path(os.path.realpath(path)).parents
    }
    done = threading.Event()

    def grant() -> None:
        for folder in sorted(f for f in folders if f.is_dir()):
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod((mode & 0o7777) | 0o001)
                changed.setdefault(folder, mode & 0o7777)

    def keep() -> None:
        while not done.wait(0.2):
            with contextlib.suppress(OSError):
                grant()

    keeper = threading.Thread(target=keep, name="ec2world-reach", daemon=True)
    try:
        grant()
        keeper.start()
        yield
    finally:
        done.set()
        if keeper.is_alive():
            keeper.join(5)
        for folder, mode in changed.items():
            with contextlib.suppress(OSError):
                folder.chmod(mode)


@contextlib.contextmanager
def made_users_removed() -> Iterator[None]:
    """Delete the unix users simulated instances made (comment "jupyterhub user ...")
    while this lasted."""
    users_before = {u.pw_name for u in pwd.getpwall()}
    try:
        yield
    finally:
        for user in pwd.getpwall():
            if user.pw_name not in users_before and user.pw_gecos.startswith("jupyterhub user "):
                # --force: a server of it may still be dying (userdel refuses then)
                subprocess.run(
                    ["userdel", "--force", user.pw_name], capture_output=True, timeout=30
                )


@contextlib.contextmanager
def ec2_world(root: Path, firewall: bool = False) -> Iterator[World]:
    machines = Path(tempfile.mkdtemp(prefix="ec2sim-machines-"))
    machines.chmod(0o711)  # users' servers reach their homes inside, nothing else
    try:
        # `root` and the folders above it too: the test's own (pytest's are 0700), where a
        # hub beside the world keeps shared homes, or a kernel its working folder
        with (
            made_users_removed(),
            interpreter_reachable(root / "inside"),
            _ec2_world(root, machines, firewall) as world,
        ):
            yield world
    finally:
        shutil.rmtree(machines, ignore_errors=True)


@contextlib.contextmanager
def _ec2_world(root: Path, machines: Path, firewall: bool) -> Iterator[World]:
    with running_moto() as moto:
        moto.reset()  # moto's servers in one process share their state: start clean
        world = World(moto, root, agent_port=free_port(*ADDRESSES))
        imds_port = world.imds_port = free_port(*ADDRESSES)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / "sim.log", "ab") as out:
            world.proc = subprocess.Popen(
                [
                    str(VENV_BIN / "jupyterhub-migrate-ec2-sim"),
                    "--state-dir",
                    str(root),
                    "run",
                    "--moto-url",
                    moto.endpoint_url,
                    "--first-address",
                    FIRST_ADDRESS,
                    "--imds-port",
                    str(imds_port),
                    "--machines-dir",
                    str(machines),
                    *(["--firewall"] if firewall else []),
                    "--boot-delay",
                    "0",
                ],
                env=world.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while not (root / "sim.json").exists():
                assert world.proc.poll() is None, world.log()
                assert time.monotonic() < deadline, "simulator did not start:\n" + world.log()
                time.sleep(0.1)
            world.info = json.loads((root / "sim.json").read_text())
            yield world
        finally:
            world.proc.terminate()
            try:
                world.proc.wait(30)
            except subprocess.TimeoutExpired:
                world.proc.kill()
                world.proc.wait()


def wait_for(condition, timeout: float = 60, message: str = "") -> Any:
    """Poll `condition` (a callable) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"{condition} did not come true")
        time.sleep(0.2)


def ec2_config(
    world: World,
    *,
    ec2_url: str = "",
    hub_name: str = "test-hub",
    boot_timeout: float = 60,
    watch_interval: float = 1,
    types: tuple[str, ...] = TYPES,
) -> str:
    """The hub config of the `ec2` provider in `world` (its endpoint: the simulator's, with
    its capacity errors, unless `ec2_url` names a proxy in front of it)."""
    return f"""
c.MigratingController.provider_class = "migrating_spawner.hosts.ec2.EC2HostProvider"
c.EC2HostProvider.endpoint_url = "{ec2_url or world.sim_ec2_url}"
c.EC2HostProvider.region = "us-east-1"
c.EC2HostProvider.image_id = "{AMI}"
c.EC2HostProvider.hub_name = "{hub_name}"
c.EC2HostProvider.agent_port = {world.agent_port}
c.EC2HostProvider.python = "{sys.executable}"
c.EC2HostProvider.boot_timeout = {boot_timeout}
c.EC2HostProvider.instance_types = {{"small": {{"types": {list(types)!r}}}}}
c.EC2HostProvider.watch_interval = {watch_interval}
"""


def cloud_resources(moto: MotoServer, prefix: str = "hub") -> tuple[str, str]:
    """A fresh bucket and SQS queue in moto, the queue fed by the EventBridge rules for
    EC2's interruption, rebalance and state-change events: (bucket, queue URL)."""
    s3, sqs = moto.client("s3"), moto.client("sqs")
    bucket = f"{prefix}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=f"{prefix}-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    put_rule(moto.client("events"), arn["Attributes"]["QueueArn"])
    return bucket, queue


def cloud_config(
    moto_url: str,
    bucket: str,
    queue: str,
    *,
    wait_seconds: float = 2,
    precopy_interval: float | None = None,
) -> str:
    """The hub config of the S3 checkpoint store (synced homes) and the EventBridge -> SQS
    channel on moto (`precopy_interval`: seconds between pre-copy checkpoints, 0 none,
    None the spawner's default)."""
    precopy = (
        ""
        if precopy_interval is None
        else f"c.MigratingSpawner.precopy_interval = {precopy_interval}"
    )
    return f"""
c.MigratingSpawner.home_mode = "synced"
{precopy}
c.MigratingController.store_class = "migrating_spawner.checkpoint.s3.S3CheckpointStore"
c.S3CheckpointStore.bucket = "{bucket}"
c.S3CheckpointStore.endpoint_url = "{moto_url}"
c.CloudEventsChannel.queue_url = "{queue}"
c.CloudEventsChannel.endpoint_url = "{moto_url}"
c.CloudEventsChannel.wait_seconds = {wait_seconds}
"""
