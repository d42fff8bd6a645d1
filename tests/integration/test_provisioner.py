"""A kernel under a real jupyter_server 2 moves between local hosts behind one websocket."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from kernelws import KernelSocket
from realhub import free_port

from migrating_spawner.hosts.base import Host
from migrating_spawner.hosts.local import LocalHostProvider

pytestmark = pytest.mark.integration

NOTICE = 8.0


class Server:
    """A real `jupyter server` with a migrating-provisioner kernelspec on JUPYTER_PATH."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.hosts_root = tmp / "hosts"
        base = random.randrange(100, 240)
        self.addresses = [f"127.0.{base}.{i}" for i in range(10, 14)]
        self.agent_port = free_port(*self.addresses)
        self.token = secrets.token_hex(16)
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        spec_dir = tmp / "jupyter" / "kernels" / "moving"
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (moving)",
            "language": "python",
            "metadata": {
                "kernel_provisioner": {
                    "provisioner_name": "migrating-provisioner",
                    "config": {
                        "root_dir": str(self.hosts_root),
                        "first_address": self.addresses[0],
                        "agent_port": self.agent_port,
                        "notice_poll_interval": 0.2,
                    },
                }
            },
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        (tmp / "notebooks").mkdir()
        self.log_path = tmp / "server.log"
        self._log = open(self.log_path, "ab")
        env = {
            **os.environ,
            "JUPYTER_PATH": str(tmp / "jupyter"),
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={tmp / 'notebooks'}",
            "--ServerApp.log_level=DEBUG",
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def request(self, method: str, path: str, body=None):
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method,
                self.url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(60),
            ) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if text else None

    async def wait_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited:\n{self.tail()}")
            try:
                status, _ = await self.request("GET", "/api/status")
                if status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"jupyter server did not answer:\n{self.tail()}")

    def hosts(self) -> list[Host]:
        hosts = []
        for path in sorted((self.hosts_root / "registry").glob("*.json")):
            try:
                hosts.append(Host.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError):
                pass  # being written or removed right now
        return hosts

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        # whatever hosts are left (a failed test): agents and their kernels go too
        provider = LocalHostProvider(root_dir=str(self.hosts_root))
        for host in provider._read_registry():
            await provider.release(host)


@pytest.fixture
async def server(tmp_path, request):
    srv = Server(tmp_path)
    try:
        await srv.wait_up()
        yield srv
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(f"\n===== jupyter server log =====\n{srv.tail(200)}")
            for log in sorted((srv.hosts_root / "logs").glob("*.log")):
                print(f"===== agent log {log.name} =====\n{log.read_text()[-3000:]}")
        await srv.stop()


async def test_kernel_moves_behind_one_websocket(server):
    status, kernel = await server.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, server.tail())
    kernel_id = kernel["id"]
    [old] = server.hosts()

    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        out, reply = await ws.run("x = 42")
        assert reply["status"] == "ok", out
        last_before = time.monotonic()

        async with aiohttp.ClientSession() as http:
            async with http.post(
                old.agent_url + "/reclaim",
                json={"notice_seconds": NOTICE},
                headers={"Authorization": f"token {old.agent_token}"},
            ) as resp:
                assert resp.status == 202, await resp.text()
        reclaimed = time.monotonic()

        # the move is under way once a second host is being acquired
        while len(server.hosts()) < 2:
            assert time.monotonic() - reclaimed < 10, "the move did not begin"
            await asyncio.sleep(0.02)
        sent = time.monotonic()
        out, reply = await ws.run("print(x)", timeout=60)
        first_after = time.monotonic()
        assert out.strip() == "42", out
        assert reply["status"] == "ok"
        hosts = server.hosts()
        assert [h.id for h in hosts] != [old.id]

        # and it stays on the same websocket afterwards
        out, _ = await ws.run("x + 1")
        assert out.strip() == "43"

    print(
        f"\nkernel move: queued cell answered {first_after - sent:.2f} s after it was sent; "
        f"gap between replies {first_after - last_before:.2f} s "
        f"(reclaim -> move start {sent - reclaimed:.2f} s)"
    )

    status, kernels = await server.request("GET", "/api/kernels")
    assert status == 200
    assert [k["id"] for k in kernels] == [kernel_id]

    # the old host is gone by its deadline (released right after the move)
    await asyncio.sleep(max(0.0, reclaimed + NOTICE + 0.5 - time.monotonic()))
    assert old.id not in [h.id for h in server.hosts()]
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http:
            await http.get(old.agent_url + "/status", timeout=aiohttp.ClientTimeout(2))
    [new] = server.hosts()

    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    deadline = time.monotonic() + 15
    while server.hosts() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert server.hosts() == [], f"host {new.id} not released"
    assert not (server.hosts_root / "kernel-state" / kernel_id).exists()


async def test_restart_and_interrupt_keep_the_websocket(server):
    status, kernel = await server.request("POST", "/api/kernels", {"name": "moving"})
    assert status == 201, (kernel, server.tail())
    kernel_id = kernel["id"]
    [host] = server.hosts()
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        await ws.run("x = 42")
        # interrupt: an interrupt_request to the kernel on its host (no local process)
        cell = asyncio.create_task(ws.run("import time; time.sleep(30)"))
        await asyncio.sleep(1.5)
        status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
        assert status == 204
        out, reply = await asyncio.wait_for(cell, 15)
        assert reply["status"] == "error" and "KeyboardInterrupt" in out, out

        # restart: a fresh kernel on the same host behind the same relay and websocket
        status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/restart")
        assert status == 200
        assert [h.id for h in server.hosts()] == [host.id]
        out, _ = await ws.run("print('x' in dir())")
        assert out.strip() == "False"
    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    assert server.hosts() == []
