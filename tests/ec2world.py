"""A simulated EC2 region for tests: moto's server plus `jupyterhub-migrate-ec2-sim run`.

    with ec2_world(tmp) as world:      # moto on a free port, the simulator beside it
        world.ec2                      # boto3 EC2 client straight to moto
        world.sim_ec2_url              # the EC2 endpoint the hub uses (capacity errors)
        world.sim("interrupt", iid, "--notice", "20")
        world.instances()              # the simulator's view (GET /instances)

Instances get 127.0.0.2 up (local hosts of test hubs use 127.0.0.20 and up); their
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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from motoserver import MotoServer, running_moto
from realhub import free_port

VENV_BIN = Path(sys.executable).parent
FIRST_ADDRESS = "127.0.0.2"
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 20)]
AMI = "ami-12c6146b"  # one of moto's


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
    (o+x, not listing) for a while; their modes are restored after."""
    changed = []
    folders = {
        p for path in (Path(sys.executable), *more) for p in Path(os.path.realpath(path)).parents
    }
    try:
        for folder in sorted(f for f in folders if f.is_dir()):
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod((mode & 0o7777) | 0o001)
                changed.append((folder, mode & 0o7777))
        yield
    finally:
        for folder, mode in changed:
            folder.chmod(mode)


@contextlib.contextmanager
def ec2_world(root: Path, firewall: bool = False) -> Iterator[World]:
    users_before = {u.pw_name for u in pwd.getpwall()}
    machines = Path(tempfile.mkdtemp(prefix="ec2sim-machines-"))
    machines.chmod(0o711)  # users' servers reach their homes inside, nothing else
    try:
        # `root`'s folders too: the test's own (pytest's are 0700), where a hub beside the
        # world keeps shared homes
        with interpreter_reachable(root), _ec2_world(root, machines, firewall) as world:
            yield world
    finally:
        shutil.rmtree(machines, ignore_errors=True)
        for user in pwd.getpwall():
            if user.pw_name not in users_before and user.pw_gecos.startswith("jupyterhub user "):
                # --force: a server of it may still be dying (userdel refuses then)
                subprocess.run(
                    ["userdel", "--force", user.pw_name], capture_output=True, timeout=30
                )


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
