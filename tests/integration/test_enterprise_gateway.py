"""Enterprise Gateway 3.3 with MigratingProcessProxy, run as examples/enterprise-gateway says.

`run.sh` starts Enterprise Gateway from its own venv (.venv-eg, made by `make test`) and
JupyterLab in front of it with `--gateway-url`; the tests talk to JupyterLab only, the way a
browser does, and reclaim the kernel's host through its agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from kernelws import KernelSocket
from realhub import free_port

from migrating_spawner.hosts.base import Host
from migrating_spawner.hosts.local import LocalHostProvider

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "enterprise-gateway"
EG_VENV = ROOT / ".venv-eg"
NOTICE = 8.0

if not (EG_VENV / "bin" / "jupyter-enterprisegateway").exists():
    pytest.skip(
        "Enterprise Gateway's venv .venv-eg is missing: `make test` (or `make install-eg`) "
        "creates it",
        allow_module_level=True,
    )


class Example:
    """examples/enterprise-gateway/run.sh on free ports."""

    def __init__(self, extra_kernels: Path) -> None:
        self.kernel_hosts = LocalHostProvider(root_dir=str(EXAMPLE / "var" / "kernel-hosts"))
        self.gateway_port = free_port("127.0.0.1")
        self.port = free_port("127.0.0.1")
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.log_path = EXAMPLE / "var" / "run.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")
        env = {
            **os.environ,
            "GATEWAY_PORT": str(self.gateway_port),
            "LAB_PORT": str(self.port),
            "LAB_TOKEN": self.token,
            # run.sh puts the example's folder first; these come after it
            "JUPYTER_PATH": str(extra_kernels),
        }
        self.proc = subprocess.Popen(
            [str(EXAMPLE / "run.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def request(self, method: str, path: str, body=None, *, base: str = ""):
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method,
                (base or self.url) + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(60),
            ) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if text else None

    async def wait_up(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"run.sh exited:\n{self.tail()}")
            try:
                if (await self.request("GET", "/api/status"))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"JupyterLab did not answer:\n{self.tail()}")

    def hosts(self) -> list[Host]:
        return self.kernel_hosts._read_registry()

    async def release_all(self) -> None:
        for host in self.hosts():
            await self.kernel_hosts.release(host)

    def tail(self, n: int = 60) -> str:
        out = []
        for path in (self.log_path, EXAMPLE / "var" / "gateway.log"):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"===== {path.name} =====\n" + "\n".join(lines))
        return "\n".join(out)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


async def reclaim(host: Host, notice: float = NOTICE) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            host.agent_url + "/reclaim",
            json={"notice_seconds": notice},
            headers={"Authorization": f"token {host.agent_token}"},
        ) as resp:
            assert resp.status == 202, await resp.text()


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture
async def example(request, tmp_path):
    # a kernelspec with a mistake in its process_proxy config, for the error test
    broken = tmp_path / "kernels" / "python3-broken"
    broken.mkdir(parents=True)
    spec = json.loads((EXAMPLE / "kernels" / "python3-moving" / "kernel.json").read_text())
    spec["metadata"]["process_proxy"]["config"]["root_dirr"] = "/tmp/typo"
    (broken / "kernel.json").write_text(json.dumps(spec))
    # and one that snapshots an idle kernel every second, for the lost-host test
    fast = tmp_path / "kernels" / "python3-fastsnap"
    fast.mkdir(parents=True)
    spec = json.loads((EXAMPLE / "kernels" / "python3-moving" / "kernel.json").read_text())
    spec["metadata"]["process_proxy"]["config"].update(
        snapshot_interval=1.0, notice_poll_interval=0.5
    )
    (fast / "kernel.json").write_text(json.dumps(spec))
    ex = Example(tmp_path)
    # an earlier run killed hard may have left hosts behind
    await ex.release_all()
    shutil.rmtree(Path(ex.kernel_hosts.root_dir) / "logs", ignore_errors=True)
    try:
        await ex.wait_up()
        yield ex
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(f"\n{ex.tail(200)}")
            for log in sorted((Path(ex.kernel_hosts.root_dir) / "logs").glob("*.log")):
                print(f"===== agent log {log.name} =====\n{log.read_text()[-3000:]}")
        await ex.stop()
        await ex.release_all()


async def new_kernel(ex: Example) -> str:
    status, kernel = await ex.request("POST", "/api/kernels", {"name": "python3-moving"})
    assert status == 201, (kernel, ex.tail())
    return kernel["id"]


async def test_kernel_moves_behind_one_websocket(example):
    kernel_id = await new_kernel(example)
    [old] = example.hosts()
    async with KernelSocket(example.url, kernel_id, example.token) as ws:
        out, reply = await ws.run("x = 42\nexec('ghost = (i for i in range(3))')")
        assert reply["status"] == "ok", out
        last_before = time.monotonic()
        await reclaim(old)
        reclaimed = time.monotonic()
        await until(lambda: len(example.hosts()) >= 2, 10, "the move did not begin")
        sent = time.monotonic()
        # sent during the move, on the same websocket: answered once the kernel has moved
        out, reply = await ws.run("print(x)", timeout=60)
        first_after = time.monotonic()
        assert reply["status"] == "ok"
        # the user is told, in this cell, what could not move
        assert out.splitlines()[-1] == "42", out
        assert "ghost" in out and "could not be brought along" in out, out
        out, _ = await ws.run("x + 1")
        assert out.strip() == "43"
    print(
        f"\nEnterprise Gateway kernel move: queued cell answered {first_after - sent:.2f} s "
        f"after it was sent; gap between replies {first_after - last_before:.2f} s "
        f"(reclaim -> move start {sent - reclaimed:.2f} s)"
    )
    # the old host is given back (by its deadline at the latest)
    await until(
        lambda: old.id not in [h.id for h in example.hosts()],
        max(1.0, reclaimed + NOTICE + 1 - time.monotonic()),
        "the old host was not released",
    )
    # one kernel, the same id, in JupyterLab and in the gateway
    for base in (example.url, example.gateway_url):
        status, kernels = await example.request("GET", "/api/kernels", base=base)
        assert status == 200 and [k["id"] for k in kernels] == [kernel_id], kernels

    status, _ = await example.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    await until(lambda: not example.hosts(), 15, "the kernel's host was not released")


async def test_interrupt_restart_and_gateway_exit(example):
    kernel_id = await new_kernel(example)
    [host] = example.hosts()
    async with KernelSocket(example.url, kernel_id, example.token) as ws:
        await ws.run("x = 42")
        cell = asyncio.create_task(ws.run("import time; time.sleep(30)"))
        await asyncio.sleep(1.5)
        status, _ = await example.request("POST", f"/api/kernels/{kernel_id}/interrupt")
        assert status == 204
        out, reply = await asyncio.wait_for(cell, 15)
        assert reply["status"] == "error" and "KeyboardInterrupt" in out, out

        # a restart: a new process proxy adopts the kernel, on the same host and relay
        status, _ = await example.request("POST", f"/api/kernels/{kernel_id}/restart")
        assert status == 200, example.tail()
        out, _ = await ws.run("print('x' in dir())", timeout=30)
        assert out.strip() == "False"
        await asyncio.sleep(1)
        assert [h.id for h in example.hosts()] == [host.id]

    # a second kernel, then the gateway exits: both hosts are given back
    await new_kernel(example)
    assert len(example.hosts()) == 2
    await example.stop()
    assert example.hosts() == [], example.tail()


async def test_bad_process_proxy_config_is_a_clear_error(example):
    status, body = await example.request("POST", "/api/kernels", {"name": "python3-broken"})
    assert status == 500, body
    # jupyter_server 2's gateway client drops the gateway's reason from its message, so ask
    # the gateway itself for what a client is told
    body = {"name": "python3-broken"}
    status, body = await example.request("POST", "/api/kernels", body, base=example.gateway_url)
    assert status == 500, body
    assert "unknown process_proxy config ['root_dirr']" in body["reason"], body
    assert example.hosts() == []
    status, kernels = await example.request("GET", "/api/kernels")
    assert status == 200 and kernels == []


async def test_host_lost_without_notice_comes_back_from_its_last_snapshot(example):
    status, kernel = await example.request("POST", "/api/kernels", {"name": "python3-fastsnap"})
    assert status == 201, kernel
    kernel_id = kernel["id"]
    [old] = example.hosts()
    async with KernelSocket(example.url, kernel_id, example.token) as ws:
        out, _ = await ws.run("x = 42\nimport os\nprint(os.getpid())")
        kernel_pid = int(out.split()[-1])
        state = Path(example.kernel_hosts.root_dir) / "kernel-state" / kernel_id
        report = state / "snapshot-report.json"
        await until(report.exists, 15, "no background snapshot of the idle kernel")

        # the host vanishes: its agent and the kernel die, nobody gives notice
        os.killpg(os.getpgid(kernel_pid), signal.SIGKILL)
        os.killpg(old.meta["agent_pid"], signal.SIGKILL)
        lost = time.monotonic()
        out, reply = await ws.run("print(x)", timeout=60)
        back = time.monotonic()
        assert reply["status"] == "ok", out
        assert out.splitlines()[-1] == "42", out
        assert "went away without notice" in out and "from its last snapshot" in out, out
        assert old.id not in [h.id for h in example.hosts()]
    print(f"\nhost lost without notice: the kernel answered again after {back - lost:.2f} s")
    status, _ = await example.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204
    await until(lambda: not example.hosts(), 15, "the kernel's host was not released")
