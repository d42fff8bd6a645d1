"""`make demo-aws` as the README has a new user walk it: examples/aws/demo.sh starts moto's
server, the machine simulator and the hub; a user logs in at the login page, starts a
server from the spawn form, keeps a file and `x = 42`; `jupyterhub-migrate info` names the
instance, `jupyterhub-migrate-ec2-sim interrupt <it> --notice 30` reclaims it, and the same
URL and kernel answer from another simulated instance with the file and `x`, while a client
polling through the proxy sees no failed request. Ctrl-C ends everything demo.sh started.

The demo runs from a copy of examples/aws (its var/ folder is the copy's own) on ports of
this worker's range; instances boot at once (`EC2SIM_BOOT_DELAY=0`: the walk, not the 40 s
boot, is what is tested).
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import psutil
import pytest
from ec2world import SHARES_THE_MACHINE, interpreter_reachable, made_users_removed
from kernelws import KernelSocket
from realhub import NODE_BIN, ROOT, VENV_BIN, RealHub, free_port, until
from test_move import Poller, read_file, wait_moved, write_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420), SHARES_THE_MACHINE]

EXAMPLE = ROOT / "examples" / "aws"


class Demo:
    """The running demo, with the REST helpers of a test hub (the same requests)."""

    request = RealHub.request
    api = RealHub.api
    migrate_api = RealHub.migrate_api
    server_info = RealHub.server_info
    user_token = RealHub.user_token
    new_session = RealHub.new_session

    def __init__(self, folder: Path):
        self.folder = folder
        self.url = f"http://127.0.0.1:{free_port()}"
        self.admin_token = secrets.token_hex(16)
        self.log_path = folder / "demo.log"
        self.env = {
            **os.environ,
            "PATH": f"{NODE_BIN}:{VENV_BIN}:{os.environ['PATH']}",
            "HUB_BIND_URL": self.url,
            "MOTO_PORT": str(free_port()),
            "PROXY_API_PORT": str(free_port()),
            "HUB_PORT": str(free_port()),
            "MIGRATE_API_PORT": str(free_port()),
            "AGENT_PORT": str(free_port("127.0.0.100", "127.0.0.101", "127.0.0.102")),
            "DEMO_ADMIN_TOKEN": self.admin_token,
            "EC2SIM_BOOT_DELAY": "0",
        }
        self.sim_env = {**self.env, "JUPYTERHUB_MIGRATE_EC2SIM_DIR": str(folder / "var/ec2sim")}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["sh", str(self.folder / "demo.sh")],
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the terminal's process group: this one
        )

    def ctrl_c(self, timeout: float = 90) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"demo.sh did not end at Ctrl-C:\n{self.tail()}") from None

    def tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        sim = (self.folder / "var" / "ec2sim.log").read_text(errors="replace")[-3000:]
        return "\n".join(text) + "\n--- ec2sim.log ---\n" + sim

    def cli(self, *args: str, sim: bool = False) -> str:
        tool = "jupyterhub-migrate-ec2-sim" if sim else "jupyterhub-migrate"
        env = dict(self.sim_env if sim else self.env)
        env.update(JUPYTERHUB_URL=self.url, JUPYTERHUB_API_TOKEN=self.admin_token)
        done = subprocess.run(
            [str(VENV_BIN / tool), *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    async def up(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"demo.sh ended:\n{self.tail()}"
        try:
            status, _ = await self.api("GET", "/", timeout=5)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        return status == 200

    async def log_in_and_spawn(self, user: str, password: str, profile: str) -> None:
        """The login page, then the spawn form, as a browser posts them."""
        # unsafe: keep the cookies of a hub at an IP address, as a browser does
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{self.url}/hub/login") as r:
                xsrf = re.search(r'name="_xsrf" value="([^"]+)"', await r.text())[1]
            form = {"username": user, "password": password, "_xsrf": xsrf}
            async with browser.post(f"{self.url}/hub/login", data=form) as r:
                assert r.status == 200 and "/hub/login" not in str(r.url), await r.text()
            async with browser.get(f"{self.url}/hub/spawn") as r:
                page = await r.text()
                assert f'value="{profile}"' in page, page  # the profile is offered
                # the form posts to its action (JupyterHub puts the _xsrf token there)
                form = re.search(r'<form[^>]*id="spawn_form"[^>]*>', page, re.S)[0]
                action = html.unescape(re.search(r'action="([^"]+)"', form)[1])
            async with browser.post(urljoin(str(r.url), action), data={"profile": profile}) as r:
                assert r.status == 200, await r.text()


def started_in(folder: Path) -> list[dict]:
    """The processes running from `folder` (their working folder or command line in it)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmdline or (proc.info["cwd"] or "").startswith(str(folder)):
            found.append(proc.info)
    return found


async def test_make_demo_aws_walk_survives_an_interruption(tmp_path):
    folder = tmp_path / "aws"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("var"))
    demo = Demo(folder)
    with made_users_removed(), interpreter_reachable(folder / "var" / "x"):
        demo.start()
        try:
            await until(demo.up, 120, "the demo's hub to answer")
            await demo.log_in_and_spawn("alice", "migrate-me", "spot-lab")

            async def ready():
                _, model = await demo.api("GET", "/users/alice")
                server = model["servers"].get("")
                assert server or model.get("pending"), f"spawn failed:\n{demo.tail()}"
                return server and server["ready"]

            await until(ready, 180, "alice's server on a simulated instance")
            info = json.loads(demo.cli("info", "alice", "--json"))
            old_instance, old_host = info["instance_id"], info["host_id"]
            assert info["provider"] == "ec2" and old_instance.startswith("i-"), info
            assert old_instance in demo.cli("list", sim=True)

            token = await demo.user_token("alice")
            await write_file(demo, "alice", token, "kept.txt", "written before the move")
            session = await demo.new_session("alice", token, "walk.ipynb")
            kernel_id = session["kernel"]["id"]
            base = f"{demo.url}/user/alice"
            async with KernelSocket(base, kernel_id, token) as kernel:
                _, reply = await kernel.run("x = 42")
                assert reply["status"] == "ok", reply

            poller = Poller(f"{base}/api/status", token)
            polling = asyncio.create_task(poller.run())
            demo.cli("interrupt", old_instance, "--notice", "30", sim=True)
            moved = await wait_moved(demo, "alice", old_host, timeout=120)
            poller.stop()
            await polling

            assert moved["instance_id"] != old_instance, moved
            assert await read_file(demo, "alice", token, "kept.txt") == "written before the move"
            async with KernelSocket(base, kernel_id, token) as kernel:
                out, reply = await kernel.run("print(x)")
            assert reply["status"] == "ok" and out.strip() == "42", (out, reply)
            assert poller.codes and set(poller.codes) == {200}, (poller.codes, poller.errors)
            assert not poller.errors, poller.errors
        finally:
            code = demo.ctrl_c()
    # everything demo.sh started has ended: the hub, the simulator with its instances, moto
    log = demo.log_path.read_text(errors="replace")
    assert "Cleaning up single-user servers..." in log and "...done" in log, (code, demo.tail())
    assert "Traceback" not in log, (
        code,
        demo.tail(),
    )
    assert "alice: Stopped: files and 1 kernel(s) kept in checkpoint" in log  # the hub's stop
    assert not started_in(folder), started_in(folder)
    for port in ("HUB_BIND_URL", "MOTO_PORT"):
        value = demo.env[port].rsplit(":", 1)[-1]
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as s:
                await s.get(f"http://127.0.0.1:{value}/", timeout=aiohttp.ClientTimeout(5))
