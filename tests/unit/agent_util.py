"""Helpers for unit tests that run the real host agent on a loopback address."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from realhub import free_port  # noqa: F401  (re-exported for the unit tests)

from migrating_spawner.hosts.local import LocalHostProvider


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def wait_for(check, timeout: float = 10, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


class AgentProcess:
    """The real agent as a subprocess: `python -m migrating_spawner.agent.server ...`."""

    def __init__(
        self, tmp: Path, address: str, token: str = "the-host-secret", run_as_users: bool = False
    ):
        self.address = address
        self.token = token
        self.port = free_port(address)
        self.url = f"http://{address}:{self.port}"
        self.disk = tmp / "disk"
        self.registry_file = tmp / "registry.json"
        self.registry_file.write_text("{}")
        self.token_file = token_file = tmp / "token"
        token_file.write_text(token + "\n")
        self.log_path = tmp / "agent.log"
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "migrating_spawner.agent.server",
                "--host-id=test-host",
                f"--address={address}",
                f"--port={self.port}",
                f"--token-file={token_file}",
                f"--disk={self.disk}",
                f"--registry-file={self.registry_file}",
                *(["--run-as-users"] if run_as_users else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        up = wait_for(self._answers, timeout=20)
        if not up:
            self.stop()
            raise RuntimeError(f"agent did not start:\n{self.log_path.read_text()}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent exited:\n{self.log_path.read_text()}")
        try:
            return self.get("/status").status_code == 200
        except requests.RequestException:
            return False

    def headers(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"token {token}"}

    def request(self, method: str, path: str, token: str | None = "", **kw) -> requests.Response:
        token = self.token if token == "" else token
        headers = {**self.headers(token), **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=15, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        return self.request("POST", path, json=body, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # what the agent started runs in sessions of its own: stop those too
            try:
                processes = self.get("/status").json()["processes"].values()
            except (requests.RequestException, ValueError, KeyError):
                processes = []
            for process in processes:
                try:
                    os.killpg(process["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._log.close()


def two_host_provider(tmp: Path, first: str, **traits) -> LocalHostProvider:
    """A LocalHostProvider of at most two hosts, `first` and the address after it."""
    prefix, last = first.rsplit(".", 1)
    return LocalHostProvider(
        root_dir=str(tmp / "hosts"),
        first_address=first,
        max_hosts=2,
        agent_port=free_port(first, f"{prefix}.{int(last) + 1}"),
        **traits,
    )


async def release_all(provider: LocalHostProvider) -> None:
    for host in await provider.list_hosts():
        await provider.release(host)
