"""Real notebook servers and kernel gateways for tests, each one process with a log file.

- `JupyterServer`: a plain jupyter_server 2 whose kernels use the migrating-provisioner
  kernelspec directly.
- `KernelGateway`: Jupyter Kernel Gateway 3 with that kernelspec (the kernels move behind it).
- `GatewayClient`: `jupyter server` (or `jupyter lab`) with `--gateway-url` in front of a
  gateway; it runs no kernels itself.
- `EnterpriseGatewayExample`: examples/enterprise-gateway/run.sh, Enterprise Gateway 3.3
  from .venv-eg with JupyterLab in front, as the example's README runs it.

Another gateway is one more subclass of `ServerProcess` with its own `command()`. Every process
a test starts, the test stops: `stop()` ends the process (SIGTERM, then SIGKILL) and then
releases whatever local hosts (agents and their kernels) are left under its `hosts_root`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kernelws import KernelSocket, execute_request
from realhub import free_port

from migrating_spawner.hosts.base import Host
from migrating_spawner.hosts.local import LocalHostProvider

MOVING_KERNEL = "moving"


def write_moving_kernelspec(
    jupyter_path: Path,
    hosts_root: Path,
    name: str = MOVING_KERNEL,
    notice_poll_interval: float = 0.2,
) -> dict[str, Any]:
    """Write `<jupyter_path>/kernels/<name>/kernel.json`: ipykernel under the
    migrating-provisioner on local hosts under `hosts_root` (fresh loopback addresses and an
    agent port free on them). Returns the kernelspec."""
    base = random.randrange(100, 240)
    addresses = [f"127.0.{base}.{i}" for i in range(10, 14)]
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (moving)",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "migrating-provisioner",
                "config": {
                    "root_dir": str(hosts_root),
                    "first_address": addresses[0],
                    "agent_port": free_port(*addresses),
                    "notice_poll_interval": notice_poll_interval,
                },
            }
        },
    }
    spec_dir = jupyter_path / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return spec


class ServerProcess:
    """One server process on 127.0.0.1 with a token; subclasses give `command()`.

    Its files live in `<tmp>/<name>/` (log, Jupyter config and runtime folders). `hosts_root`
    is the local host provider's root of the kernels it runs, if any.
    """

    name = "server"
    #: a GET that answers 200 once the server is ready
    status_path = "/api/status"

    def __init__(self, tmp: Path, *, name: str = "", hosts_root: Path | None = None):
        self.name = name or self.name
        self.dir = tmp / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hosts_root = hosts_root
        self.token = secrets.token_hex(16)
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(self.dir / "config"),
            "JUPYTER_RUNTIME_DIR": str(self.dir / "runtime"),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> ServerProcess:
        assert self.proc is None, "started already"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float = 60
    ) -> tuple[int, Any]:
        """An API call with the server's token: (status, decoded JSON body or None)."""
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method,
                self.url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(timeout),
            ) as resp:
                text = await resp.text()
                try:
                    data = json.loads(text) if text else None
                except ValueError:
                    data = text
                return resp.status, data

    async def wait_up(self, timeout: float = 60) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                status, _ = await self.request("GET", self.status_path, timeout=5)
                if status == 200:
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer in {timeout:.0f} s:\n{self.tail()}")

    def hosts(self) -> list[Host]:
        """The local hosts of this server's kernels (the provider's registry records)."""
        if self.hosts_root is None:
            return []
        hosts = []
        for path in sorted((self.hosts_root / "registry").glob("*.json")):
            try:
                hosts.append(Host.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError):
                pass  # being written or removed right now
        return hosts

    def kernel_log(self) -> str:
        """The log of the process that runs this server's kernel provisioners."""
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def report(self, n: int = 200) -> str:
        """Its log and its hosts' agent logs, for a failed test."""
        parts = [f"===== {self.name} log =====\n{self.tail(n)}"]
        if self.hosts_root is not None:
            for log in sorted((self.hosts_root / "logs").glob("*.log")):
                parts.append(f"===== agent log {log.name} =====\n{log.read_text()[-3000:]}")
        return "\n".join(parts)

    async def stop(self, release_hosts: bool = True) -> list[str]:
        """End the process; then release the hosts it left (unless a test checks them).
        Returns the ids of the hosts it left: a server that exits cleanly leaves none."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)
        if self._log is not None:
            self._log.close()
            self._log = None
        left = [host.id for host in self.hosts()]
        if release_hosts:
            await self.release_hosts()
        return left

    async def release_hosts(self) -> None:
        """Whatever hosts are left (a failed test): their agents and kernels go too."""
        if self.hosts_root is None or not (self.hosts_root / "registry").exists():
            return
        provider = LocalHostProvider(root_dir=str(self.hosts_root))
        for host in provider._read_registry():
            await provider.release(host)


def _root_flag(app: str) -> list[str]:
    return [f"--{app}.allow_root=True"] if os.geteuid() == 0 else []


class MovingKernelServer(ServerProcess):
    """A server whose kernels use the migrating-provisioner kernelspec on its JUPYTER_PATH,
    on local hosts under its own folder."""

    def __init__(
        self,
        tmp: Path,
        *,
        name: str = "",
        kernel: str = MOVING_KERNEL,
        extra_args: tuple[str, ...] = (),
    ):
        super().__init__(tmp, name=name, hosts_root=tmp / (name or self.name) / "hosts")
        self.jupyter_path = self.dir / "jupyter"
        self.kernel = kernel
        self.kernelspec = write_moving_kernelspec(self.jupyter_path, self.hosts_root, kernel)
        self.extra_args = list(extra_args)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "JUPYTER_PATH": str(self.jupyter_path)}


class JupyterServer(MovingKernelServer):
    """`python -m jupyter_server` with the migrating-provisioner kernelspec."""

    name = "jupyter-server"

    def command(self) -> list[str]:
        root_dir = self.dir / "notebooks"
        root_dir.mkdir(exist_ok=True)
        return [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.log_level=DEBUG",
            *_root_flag("ServerApp"),
            *self.extra_args,
        ]


class KernelGateway(MovingKernelServer):
    """Jupyter Kernel Gateway 3 (`python -m kernel_gateway`, websocket personality) with the
    migrating-provisioner kernelspec; it lists its kernels (GatewayClient needs
    GET /api/kernels)."""

    name = "kernel-gateway"
    status_path = "/api/kernelspecs"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={self.port}",
            "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={self.token}",
            f"--KernelGatewayApp.default_kernel_name={self.kernel}",
            "--JupyterWebsocketPersonality.list_kernels=True",
            "--KernelGatewayApp.log_level=DEBUG",
            *self.extra_args,
        ]


class GatewayClient(ServerProcess):
    """`jupyter server` (or `jupyter lab`, ``app="lab"``) with ``--gateway-url`` pointing at
    `gateway` and the gateway's token; its own token for the test's requests. Its kernels
    are the gateway's: `hosts()` are the gateway's hosts."""

    name = "gateway-client"

    def __init__(
        self,
        tmp: Path,
        gateway: ServerProcess,
        *,
        name: str = "",
        app: str = "server",
        extra_args: tuple[str, ...] = (),
    ):
        super().__init__(tmp, name=name, hosts_root=None)
        self.gateway = gateway
        self.app = app
        self.extra_args = list(extra_args)
        self.root_dir = self.dir / "notebooks"
        self.root_dir.mkdir(exist_ok=True)

    def hosts(self) -> list[Host]:
        return self.gateway.hosts()

    def kernel_log(self) -> str:
        return self.gateway.kernel_log()

    def command(self) -> list[str]:
        module = {"server": "jupyter_server", "lab": "jupyterlab"}[self.app]
        return [
            sys.executable,
            "-m",
            module,
            f"--gateway-url={self.gateway.url}",
            f"--GatewayClient.auth_token={self.gateway.token}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.log_level=DEBUG",
            *_root_flag("ServerApp"),
            *self.extra_args,
        ]


ROOT = Path(__file__).resolve().parents[1]
EG_EXAMPLE = ROOT / "examples" / "enterprise-gateway"
#: the mark of test modules that run the example itself (its `var/` folder, its kernels'
#: fixed addresses 127.0.0.60 up and agent port): under pytest-xdist one worker runs them all
USES_THE_EG_EXAMPLE = pytest.mark.xdist_group("eg-example")
EG_VENV = ROOT / ".venv-eg"


class EnterpriseGatewayExample(ServerProcess):
    """`examples/enterprise-gateway/run.sh` on free ports: Enterprise Gateway 3.3 (from
    .venv-eg) with MigratingProcessProxy kernels, and JupyterLab in front (``url``, ``token``).

    Kernelspecs given to `add_kernelspec()` before `start()` come after the example's own on
    JUPYTER_PATH. Its hosts live where the example keeps them (``var/kernel-hosts``).
    """

    name = "enterprise-gateway-example"

    def __init__(self, tmp: Path, *, name: str = "", gateway_options: tuple[str, ...] = ()):
        super().__init__(tmp, name=name, hosts_root=EG_EXAMPLE / "var" / "kernel-hosts")
        self.gateway_options = gateway_options
        self.gateway_port = free_port("127.0.0.1")
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.jupyter_path = self.dir / "jupyter"

    @staticmethod
    def moving_kernelspec() -> dict[str, Any]:
        """The example's kernelspec (a copy to change)."""
        return json.loads((EG_EXAMPLE / "kernels" / "python3-moving" / "kernel.json").read_text())

    def add_kernelspec(self, name: str, spec: dict[str, Any]) -> None:
        spec_dir = self.jupyter_path / "kernels" / name
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

    def command(self) -> list[str]:
        return [str(EG_EXAMPLE / "run.sh")]

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "GATEWAY_PORT": str(self.gateway_port),
            "LAB_PORT": str(self.port),
            "LAB_TOKEN": self.token,
            "JUPYTER_PATH": str(self.jupyter_path),
            "EG_OPTS": " ".join(self.gateway_options),
        }

    async def clean(self) -> None:
        """Release hosts an earlier run killed hard left behind; drop old agent logs."""
        await self.release_hosts()
        shutil.rmtree(self.hosts_root / "logs", ignore_errors=True)

    async def gateway(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to Enterprise Gateway itself, not through JupyterLab."""
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.gateway_url + path, json=body) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if text else None

    def kernel_log(self) -> str:
        # Enterprise Gateway (which runs the process proxies) logs to the example's var/
        gateway_log = EG_EXAMPLE / "var" / "gateway.log"
        return gateway_log.read_text(errors="replace") if gateway_log.exists() else ""

    def report(self, n: int = 200) -> str:
        gateway_log = EG_EXAMPLE / "var" / "gateway.log"
        text = gateway_log.read_text(errors="replace") if gateway_log.exists() else ""
        gateway = "\n".join(text.splitlines()[-n:])
        return f"{super().report(n)}\n===== gateway.log =====\n{gateway}"


async def reclaim(host: Host, notice: float) -> None:
    """Give `host` notice through its agent, as the cloud would."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            host.agent_url + "/reclaim",
            json={"notice_seconds": notice},
            headers={"Authorization": f"token {host.agent_token}"},
        ) as resp:
            if resp.status != 202:
                raise RuntimeError(f"reclaim of {host.id}: {resp.status} {await resp.text()}")


async def interrupt_then_restart(server: ServerProcess, ws: Any, kernel_id: str) -> None:
    """Through `server`'s REST API, interrupt a running cell, then restart the kernel: the
    open websocket `ws` sees both, and the restarted kernel is fresh on the same host."""
    [host] = server.hosts()
    await ws.run("x = 42")
    # interrupt: an interrupt_request to the kernel on its host (there is no local process)
    cell = asyncio.create_task(ws.run("import time; time.sleep(30)"))
    await asyncio.sleep(1.5)
    status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
    assert status == 204
    out, reply = await asyncio.wait_for(cell, 15)
    assert reply["status"] == "error" and "KeyboardInterrupt" in out, out
    # restart: a fresh kernel on the same host behind the same relay and websocket
    status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/restart")
    assert status == 200
    out, _ = await ws.run("print('x' in dir())", timeout=30)
    assert out.strip() == "False"
    assert [h.id for h in server.hosts()] == [host.id]


#: a cell that runs 30 s, printing as it goes
LONG_LOOP = "import time\nfor i in range(30):\n    print(i)\n    time.sleep(1)\n"
#: what a cell a move interrupted says in its own output
INTERRUPTED = (
    "interrupted because this kernel's host was reclaimed; its state up to the last "
    "finished statement moved; re-run this cell"
)


async def start_cell(ws: KernelSocket, code: str) -> tuple[asyncio.Task, list[str]]:
    """Run `code` on `ws` without waiting: (the task that returns run()'s (output, reply),
    the output so far, growing as the kernel sends it)."""
    assert ws.ws is not None
    request = execute_request(code, ws.session_id)
    msg_id = request["header"]["msg_id"]
    output: list[str] = []

    async def collect() -> tuple[str, dict[str, Any]]:
        reply, idle = None, False
        async for frame in ws.ws:
            msg = json.loads(frame.data)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                output.append(content["text"])
            elif kind == "error":
                output.append(f"{content['ename']}: {content['evalue']}\n")
            elif kind == "execute_reply":
                reply = content
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            if reply is not None and idle:
                return "".join(output), reply
        raise ConnectionError("websocket closed before the reply")

    await ws.ws.send_str(json.dumps(request))
    return asyncio.create_task(collect()), output


async def long_cell_at_a_notice(server: ServerProcess, kernel_id: str, notice: float = 10) -> None:
    """A reclaim while a 30 s loop runs, with `notice` seconds of notice: the loop's output
    up to the interrupt is kept, the cell says why it stopped, and every variable defined
    before it (and the loop's own, as of its last statement) is there after the move."""
    [old] = server.hosts()
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        out, reply = await ws.run("x = 42\nnames = ['a', 'b']\ndef f(n):\n    return n + 1\n")
        assert reply["status"] == "ok", out
        cell, output = await start_cell(ws, LONG_LOOP)
        await until(lambda: "0\n" in output, 15, "the loop did not start")
        await reclaim(old, notice)
        out, reply = await asyncio.wait_for(cell, 60)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", out
        # the loop's output up to the interrupt, then why it stopped, in the cell itself
        printed = [line for line in out.splitlines() if line.isdigit()]
        assert printed == [str(n) for n in range(len(printed))] and len(printed) > 1, out
        assert INTERRUPTED in out, out
        assert out.index(INTERRUPTED) > out.index(f"{printed[-1]}\n"), out
        # the next cell runs on the new host, with everything defined before the loop
        out, reply = await ws.run("print(x, names, f(1), i)", timeout=60)
        assert reply["status"] == "ok", out
        assert out.splitlines()[-1] == f"42 ['a', 'b'] 2 {printed[-1]}", out
        # nothing was lost, so nothing is announced
        assert "could not" not in out and "starts fresh" not in out, out
    # the move gives the old host back in the background
    await until(lambda: old.id not in [h.id for h in server.hosts()], 15, "old host kept")


async def files_survive_moves(
    server: ServerProcess, kernel_id: str, moves: int = 3, notice: float = 8
) -> None:
    """Moves in a row, a file written by relative path before the first and after each:
    every file is there, with what was written, after the last move."""
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        out, reply = await ws.run("import os\nopen('f0.txt', 'w').write('0')\nx = 0")
        assert reply["status"] == "ok", out
        for n in range(1, moves + 1):
            [old] = server.hosts()
            await reclaim(old, notice)
            await until_held(server, kernel_id, n)
            # sent during the move's hold: it runs on the new host
            out, reply = await ws.run(
                f"open('f{n}.txt', 'w').write('{n}')\nx += 1\nprint(x)", timeout=60
            )
            assert reply["status"] == "ok", out
            assert out.splitlines()[-1] == str(n), out
            await until(
                lambda: old.id not in [h.id for h in server.hosts()],  # noqa: B023
                notice + 5,
                f"the host of move {n} was not released",
            )
        out, reply = await ws.run(
            "print(sorted((f, open(f).read()) for f in os.listdir('.') if f.endswith('.txt')))"
        )
        expected = [(f"f{n}.txt", str(n)) for n in range(moves + 1)]
        assert reply["status"] == "ok" and out.strip() == str(expected), out


def slow_to_restore(seconds: float) -> str:
    """A cell whose variables take `seconds` to restore (unpickling `slow` sleeps): a move
    of that kernel lasts at least that long on any machine, as a big namespace would."""
    return (
        "import time\n"
        "class SlowToRestore:\n"
        "    def __reduce__(self):\n"
        f"        return (time.sleep, ({seconds},))\n"
        "slow = SlowToRestore()\n"
    )


#: the culler on, for kernels with clients too (a culling test's server options)
CULL_AFTER = 8  # seconds idle
CULLING = (
    f"--MappingKernelManager.cull_idle_timeout={CULL_AFTER}",
    "--MappingKernelManager.cull_interval=1",
    "--MappingKernelManager.cull_connected=True",
)


async def culler_spares_a_moving_kernel(
    server: ServerProcess, kernel_id: str, server_log: Callable[[], str]
) -> None:
    """On a server whose gateway culls (CULLING): a kernel whose move outlasts the idle
    timeout while its user's next cell waits is not culled; idle for real afterwards, it is,
    and its host goes back. `server_log()` is the gateway's log."""
    [old] = server.hosts()
    async with KernelSocket(server.url, kernel_id, server.token) as ws:
        # the move outlasts what is left of the idle timeout, by far
        out, reply = await ws.run("x = 42\n" + slow_to_restore(CULL_AFTER))
        assert reply["status"] == "ok", out
        idle_since = time.monotonic()
        await asyncio.sleep(CULL_AFTER - 4)
        await reclaim(old, 20)
        await until_held(server, kernel_id)
        # the user's next cell waits in the relay while the kernel moves: no output, and
        # more than CULL_AFTER seconds since the last
        out, reply = await ws.run("print(x)", timeout=60)
        assert time.monotonic() - idle_since > CULL_AFTER + 1
        assert reply["status"] == "ok" and out.strip() == "42", out
        assert "of inactivity" not in server_log()  # nothing was culled
        assert "moved local-" in server_log()
    # now the kernel is idle for real: the culler shuts it down, and its host goes back
    await until(lambda: not server.hosts(), CULL_AFTER + 15, "an idle kernel was not culled")
    assert "of inactivity" in server_log()
    for _ in range(50):  # the shutdown ends with the kernel leaving the list
        status, kernels = await server.request("GET", "/api/kernels")
        if status == 200 and kernels == []:
            break
        await asyncio.sleep(0.2)
    assert kernels == [], kernels


#: what a kernel's log says when its move holds requests in the relay (the new kernel is up
#: and the old one freezes): a cell sent after it waits for the new kernel
HELD = "holding requests in the relay"


async def until_held(
    server: ServerProcess, kernel_id: str, moves: int = 1, timeout: float = 15
) -> None:
    """Wait until move number `moves` of `kernel_id` holds its requests (`server` is the
    server the kernel is reached through)."""
    line = f"kernel {kernel_id}: {HELD}"

    def held() -> bool:
        return server.kernel_log().count(line) >= moves

    await until(held, timeout, f"move {moves} of kernel {kernel_id} did not hold its requests")


async def until(condition: Any, timeout: float, what: str) -> None:
    """Wait until `condition()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


async def start_all(*servers: ServerProcess, timeout: float = 60) -> None:
    """Start `servers` in order, each answering before the next starts."""
    for server in servers:
        server.start()
        await server.wait_up(timeout)


async def stop_all(*servers: ServerProcess, failed: bool = False) -> list[str]:
    """Stop `servers` in reverse order (front first); print their logs if the test failed.
    Returns the ids of the hosts they left behind (and that were released here)."""
    left = []
    for server in reversed(servers):
        if failed:
            print("\n" + server.report())
        left += await server.stop()
    return left


@asynccontextmanager
async def serving(request: Any, *servers: ServerProcess, timeout: float = 60):
    """For a fixture: start `servers` in order, yield, then stop them (front first) and check
    that they gave back every host they used (a failed test prints their logs instead)."""
    try:
        await start_all(*servers, timeout=timeout)
        yield
    finally:
        left = await stop_all(*servers, failed=call_failed(request))
    assert call_failed(request) or left == [], f"hosts left after the servers stopped: {left}"


def call_failed(request: Any) -> bool:
    """Whether the test of a fixture's `request` failed (conftest records `rep_call`)."""
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed
