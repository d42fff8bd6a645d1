"""A real JupyterHub process for tests and benchmarks: real CHP, local hosts, real servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest_asyncio
import requests

from migrating_spawner.service.page import template_path

ROOT = Path(__file__).resolve().parent.parent
NODE_BIN = ROOT / "node_modules" / ".bin"
VENV_BIN = Path(sys.executable).parent


def free_port(*addresses: str) -> int:
    """A port free on every one of `addresses` (agents of local hosts share one port).

    Taken from this xdist worker's own range below the kernel's ephemeral ports (32768 and
    up), not by binding port 0: a port the kernel handed out and we let go could be handed
    to another worker's process (a kernel, a server) before our hub binds it."""
    addresses = addresses or ("127.0.0.1",)
    for _ in range(PORTS_PER_WORKER):
        port = next(_next_port)
        try:
            for address in addresses:
                with socket.socket() as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {addresses}")


# blocks of 12 loopback addresses, one per hub; reused once every hub before has released them
_next_block = itertools.cycle(range(20, 250, 12))


def worker_number() -> int:
    """This pytest-xdist worker's number (gw1 -> 1), 0 without xdist: each worker's hubs
    take their hosts in a /16 of their own (127.0.x.x for the first, 127.1.x.x for the
    next), so two workers' hubs never share a host address."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


#: each worker's ports for hubs, proxies, services and agents: 20000 + 4000 * its number
PORTS_PER_WORKER = 4000
_next_port = itertools.cycle(
    range(
        20000 + PORTS_PER_WORKER * worker_number(), 20000 + PORTS_PER_WORKER * (worker_number() + 1)
    )
)


#: server extensions installed here that the hubs' servers load only where a test asks for
#: them (`server_extensions`): jupyter-scheduler alone is about half of a server's start
#: (1.3 of 2.6 CPU seconds, benchmarks/server_start.py's way), and every spawn and every
#: move starts a server
OPTIONAL_SERVER_EXTENSIONS = ("jupyter_scheduler", "jupyter_lsp", "jupyter_server_proxy")


class RealHub:
    """A real `jupyterhub` process with the real configurable-http-proxy and local hosts.

    It runs in a folder of its own; `restart()` (or `kill()` then `start()`) keeps its
    database, so a test can restart the hub mid-move.
    """

    def __init__(
        self, workdir: Path, extra_config: str = "", server_extensions: tuple[str, ...] = ()
    ):
        self.workdir = workdir
        self.server_extensions = server_extensions
        self.port = free_port()
        self.api_port = free_port()
        self.proxy_api_port = free_port()
        self.service_port = free_port()
        self.agent_port = free_port()
        self.first_host = f"127.{worker_number()}.0.{next(_next_block)}"
        self.admin_token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_config = extra_config
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "hub.log"
        (workdir / "jupyterhub_config.py").write_text(self._config())

    def _config(self) -> str:
        return f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "{self.url}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.api_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = "{secrets.token_hex(16)}"
c.ConfigurableHTTPProxy.command = ["{NODE_BIN / "configurable-http-proxy"}"]
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = True
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "pw"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"admin"}}
c.JupyterHub.spawner_class = "migrating"
c.JupyterHub.proxy_class = "migrating"
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 90
c.LocalHostProvider.root_dir = "{self.workdir / "hosts"}"
c.LocalHostProvider.first_address = "{self.first_host}"
c.LocalHostProvider.agent_port = {self.agent_port}
c.LocalCheckpointStore.root_dir = "{self.workdir / "checkpoints"}"
c.MigratingSpawner.shared_home_root = "{self.workdir / "homes"}"
c.MigratingController.api_port = {self.service_port}
c.JupyterHub.services = [
    {{"name": "migrate", "url": "http://127.0.0.1:{self.service_port}"}},
    {{"name": "test-admin", "api_token": "{self.admin_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "admin", "services": ["test-admin"], "users": ["admin"]}},
]
# users may use the control API with their own tokens, as in the demo's config
c.JupyterHub.extra_user_scopes = {{"access:services!service=migrate"}}
# the hub home page links the migrate service's page next to each server
c.JupyterHub.template_paths = ["{template_path()}"]
{self.extra_config}
"""

    def _server_config_path(self) -> str:
        """JUPYTER_CONFIG_PATH for the hub (its spawner passes it on to the servers): a
        folder whose config turns off the optional extensions this test did not ask for."""
        folder = self.workdir / "server-config"
        folder.mkdir(exist_ok=True)
        off = {name: False for name in OPTIONAL_SERVER_EXTENSIONS}
        for name in self.server_extensions:
            off.pop(name)
        config = {"ServerApp": {"jpserver_extensions": off}}
        (folder / "jupyter_server_config.json").write_text(json.dumps(config))
        return os.pathsep.join(p for p in (str(folder), os.environ.get("JUPYTER_CONFIG_PATH")) if p)

    def start(self) -> None:
        env = {
            **os.environ,
            "PATH": f"{NODE_BIN}:{VENV_BIN}:{os.environ['PATH']}",
            "JUPYTER_CONFIG_PATH": self._server_config_path(),
        }
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", "jupyterhub_config.py", "--debug"],
            cwd=self.workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc and self.proc.poll() is not None:
                    raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    async with session.get(self.url + "/hub/api/") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"hub did not come up:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            services = self._services()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            # a hub that did not stop cleanly leaves its managed services (the idle
            # culler) running; a clean stop has ended them already
            for service in services:
                with contextlib.suppress(psutil.Error):
                    service.kill()
        if sig == signal.SIGKILL:
            # a crashed hub leaves its proxy behind, as in production; the next start
            # finds it through the pid file
            pass

    def _services(self) -> list[psutil.Process]:
        """The hub's managed services (JupyterHub sets JUPYTERHUB_SERVICE_NAME for them)."""
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.Error):
                    if "JUPYTERHUB_SERVICE_NAME" in child.environ():
                        found.append(child)
        return found

    async def restart(self) -> None:
        """Stop the hub as an operator would (SIGTERM) and start it again on its database;
        user servers and agents keep running."""
        await asyncio.to_thread(self.stop)  # the caller's websockets go on meanwhile
        self.start()
        await self.wait_up()

    def kill_proxy(self) -> None:
        pid_file = self.workdir / "jupyterhub-proxy.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass

    def tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
            # polling noise hides what happened
            kept = [line for line in text if " 200 GET " not in line and "[D " not in line]
            return "\n".join(kept[-lines:])
        except FileNotFoundError:
            return ""

    def hosts(self) -> list[dict[str, Any]]:
        registry = self.workdir / "hosts" / "registry"
        return [json.loads(p.read_text()) for p in sorted(registry.glob("*.json"))]

    def release_all_hosts(self) -> None:
        """Stop every agent and the servers under it, as releasing the hosts would: all
        are told at once, then each is given 5 s before it is killed."""
        hosts = self.hosts()
        for host in hosts:
            try:
                requests.post(
                    host["agent_url"] + "/shutdown",
                    headers={"Authorization": f"token {host['agent_token']}"},
                    timeout=3,
                )
            except requests.RequestException:
                pass
        pids = [pid for host in hosts if (pid := host.get("meta", {}).get("agent_pid"))]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # -- REST helpers -------------------------------------------------------------

    async def api(
        self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        """Call the hub REST API (`/hub/api/...`)."""
        return await self.request(method, "/hub/api" + path, token, body, **kw)

    async def migrate_api(
        self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        """Call the control API (`/services/migrate/api/...`) through the proxy."""
        return await self.request(method, "/services/migrate/api" + path, token, body, **kw)

    async def request(
        self, method: str, path: str, token: str | None, body: Any = None, timeout: float = 120
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method,
                self.url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(timeout),
            ) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text) if text else None
                except ValueError:
                    return resp.status, text

    async def user_token(self, name: str) -> str:
        await self.api("POST", f"/users/{name}")
        status, data = await self.api("POST", f"/users/{name}/tokens", body={"expires_in": 3600})
        assert status == 201, data
        return data["token"]

    async def spawn(self, name: str, server: str = "", options: Any = None) -> dict[str, Any]:
        """Start a server through the hub REST API and wait until it is ready."""
        await self.api("POST", f"/users/{name}")
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        status, data = await self.api("POST", path, body=options or {})
        assert status in (201, 202), (status, data)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, user = await self.api("GET", f"/users/{name}")
            model = user["servers"].get(server)
            if model and model["ready"]:
                return model
            if not model and status == 200 and not user.get("pending"):
                raise AssertionError(f"spawn of {name}/{server} failed:\n{self.tail()}")
            await asyncio.sleep(0.3)
        raise TimeoutError(f"spawn of {name} did not finish:\n{self.tail()}")

    async def new_session(self, user: str, token: str, path: str) -> dict[str, Any]:
        """Open a notebook session with a python3 kernel, as JupyterLab does."""
        status, session = await self.request(
            "POST",
            f"/user/{user}/api/sessions",
            token,
            {"path": path, "type": "notebook", "kernel": {"name": "python3"}},
        )
        assert status == 201, session
        return session

    async def server_info(self, name: str, server: str = "") -> dict[str, Any]:
        status, data = await self.migrate_api("GET", f"/servers/{name}/{server}")
        assert status == 200, data
        return data


def culler_config(timeout: int, every: int = 2) -> str:
    """Hub config: jupyterhub-idle-culler as a hub-managed service that stops (for this
    spawner: suspends) a server idle for `timeout` seconds, looking every `every` seconds."""
    return f"""
c.JupyterHub.services += [{{
    "name": "idle-culler",
    "command": ["{sys.executable}", "-m", "jupyterhub_idle_culler",
                "--timeout={timeout}", "--cull-every={every}", "--remove-named-servers=false"],
}}]
c.JupyterHub.load_roles += [{{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}}]
"""


def print_logs(hub: RealHub, server_lines: int = 3000) -> None:
    """The hub's log, its agents' and its servers' logs (each server log's last
    `server_lines` characters, status polls left out): what a failed test prints."""
    print(f"\n===== hub log ({hub.workdir}) =====\n{hub.tail(150)}")
    for log in sorted((hub.workdir / "hosts" / "logs").glob("*.log")):
        print(f"===== agent log {log.name} =====\n{log.read_text()[-3000:]}")
    for log in sorted((hub.workdir / "hosts" / "disks").glob("*/logs/*.log")):
        text = "\n".join(x for x in log.read_text().splitlines() if "api/status" not in x)
        print(f"===== server log {log} =====\n{text[-server_lines:]}")


def module_hub(
    config: str | Callable[[Path], str] = "",
    folder: str = "hub",
    cleanup: Callable[[Path], None] | None = None,
    name: str = "hub",
    server_extensions: tuple[str, ...] = (),
):
    """A module-scoped `hub` fixture: one RealHub for every test of the module.

        hub = module_hub(CONFIG, "verbs")
        hub = module_hub(config, "apps-hub", cleanup=lambda workdir: ...)
        synced_hub = module_hub(SYNCED, "synced", name="synced_hub")

    `config` is the hub's extra config, or a function of the hub's folder that returns it;
    `server_extensions` the optional server extensions its servers load (none by default:
    OPTIONAL_SERVER_EXTENSIONS);
    `cleanup(workdir)` runs after the hub, its proxy and its hosts are stopped; `name` is
    the fixture's name. The module needs `pytest.mark.asyncio(loop_scope="module")` in its
    pytestmark. After a failed test that used it, conftest's autouse `hub_log_on_failure`
    prints its logs.
    """

    @pytest_asyncio.fixture(name=name, scope="module", loop_scope="module")
    async def hub(tmp_path_factory):
        workdir = tmp_path_factory.mktemp(folder)
        real = RealHub(workdir, config(workdir) if callable(config) else config, server_extensions)
        real.start()
        try:
            await real.wait_up()
            yield real
        finally:
            real.stop()
            real.kill_proxy()
            real.release_all_hosts()
            if cleanup is not None:
                cleanup(workdir)

    return hub


async def until(
    predicate: Callable[[], Awaitable[Any]],
    timeout: float = 60,
    what: str = "condition",
    interval: float = 0.2,
) -> Any:
    """Await `predicate()` every `interval` seconds until it returns something true; that
    value, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
