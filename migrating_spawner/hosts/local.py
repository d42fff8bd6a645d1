"""Local hosts: loopback addresses on this machine, each with its own agent and disk.

The embedded default, for demos, tests and single-machine hubs. A host is 127.0.0.N, an
agent process listening there, and a disk folder that is wiped when the host is reclaimed.
Agents are detached from the hub, so they (and the user servers under them) outlive a hub
restart; the registry folder lets a restarted hub find them again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from traitlets import Bool, Float, Integer, Unicode, default, validate

from ..agent.client import AgentError
from .base import Host, HostError, HostProvider
from .simcloud import SimulatedCloud


class LocalHostProvider(HostProvider):
    """Hosts on loopback addresses 127.0.0.N of this machine."""

    name = "local"

    root_dir = Unicode(
        help="""Folder for the local hosts' registry, disks and agent logs.

        Defaults to `migrating-hosts/` in the hub's working directory.
        """
    ).tag(config=True)

    @default("root_dir")
    def _default_root_dir(self) -> str:
        return os.path.abspath("migrating-hosts")

    @validate("root_dir")
    def _absolute_root_dir(self, proposal):
        # agents and kernels run in other folders: a relative path must not move with them
        return os.path.abspath(os.path.expanduser(proposal["value"]))

    first_address = Unicode(
        "127.0.0.10", help="First loopback address handed to a host; later hosts count up."
    ).tag(config=True)

    @validate("first_address")
    def _check_first_address(self, proposal):
        addr = ipaddress.ip_address(proposal["value"])
        if not addr.is_loopback:
            raise ValueError(f"local hosts need a loopback address, not {addr}")
        return str(addr)

    max_hosts = Integer(
        16, help="Most local hosts alive at once; acquiring another one fails with a clear error."
    ).tag(config=True)

    agent_port = Integer(8900, help="Port the agent listens on at each host's address.").tag(
        config=True
    )

    agent_start_timeout = Float(20, help="Seconds to wait for a new host's agent to answer.").tag(
        config=True
    )

    run_as_users = Bool(
        False,
        help="""Run each user's server as an unprivileged unix user named after the hub user
        (`jupyter-<name>`, made by the agent if missing, owning the home), as ec2 hosts do.
        Needs the hub to run as root. False: servers run as the hub's own user.""",
    ).tag(config=True)

    boot_delay = Float(
        0,
        help="""Seconds a new local host takes to "boot" before its agent starts: 0, or what
        a cloud's instance takes (a spot instance: ~40 s), to measure what spare hosts
        (`spare_hosts`) save.""",
    ).tag(config=True)

    spot_reclaim_rate = Float(
        0,
        help="""Spot-market simulator: reclaims per host-hour, at random (0 = off).

        For demos and soak tests: each spot host is reclaimed with this rate, with
        `spot_notice_seconds` of notice.
        """,
    ).tag(config=True)

    spot_notice_seconds = Float(
        120, help="Notice the spot-market simulator gives (AWS gives 120 s)."
    ).tag(config=True)

    #: where agents push notices (the hub's, set by `start`)
    notify_url = ""

    _lock: asyncio.Lock | None = None
    _cloud: SimulatedCloud | None = None

    @property
    def simulated_cloud(self) -> SimulatedCloud:
        """Local hosts live in a simulated cloud: it reclaims them on request and, with
        `spot_reclaim_rate`, at random."""
        if self._cloud is None:
            self._cloud = SimulatedCloud(self, self.spot_reclaim_rate, self.spot_notice_seconds)
        return self._cloud

    def start(self, notify_url: str = "") -> list:
        """Agents started from now on push notices to `notify_url`; the spot market
        simulator runs when `spot_reclaim_rate` is set."""
        self.notify_url = notify_url
        if self.spot_reclaim_rate > 0:
            return [asyncio.create_task(self.simulated_cloud.spot_market())]
        return []

    @property
    def registry(self) -> Path:
        return Path(self.root_dir) / "registry"

    def _registry_file(self, host_id: str) -> Path:
        return self.registry / f"{host_id}.json"

    def _gone_file(self, host_id: str) -> Path:
        # agents started by older versions renamed the record to this at the host's end
        return self.registry / f"{host_id}.gone"

    def _read_records(self, pattern: str) -> list[Host]:
        hosts = []
        for path in sorted(self.registry.glob(pattern)):
            try:
                hosts.append(Host.from_dict(json.loads(path.read_text())))
            except FileNotFoundError:
                pass  # being removed by release() right now
            except (OSError, ValueError, TypeError) as e:
                self.log.warning("ignoring unreadable host record %s: %s", path, e)
        return hosts

    def _read_live_and_gone(self) -> tuple[list[Host], list[Host]]:
        """The hosts that live, and those that ended (reclaimed: their agent is gone) but
        were not released yet: the release still has work to do, and their addresses stay
        out of use until then. One look at each agent decides both lists, so no host is in
        neither."""
        live, gone = [], self._read_records("*.gone")
        for host in self._read_records("*.json"):
            (gone if _ended(host) else live).append(host)
        return live, gone

    def _read_registry(self) -> list[Host]:
        """The hosts that live: a record whose agent still runs (the registry is the
        provider's own; a host's end is its agent's end, as an instance's is the cloud's)."""
        return self._read_live_and_gone()[0]

    def _pick_address(self, taken: set[str], pending: list[Host] = ()) -> str:
        """A free address. One whose host ended but was not released yet comes last: the
        release still talks to that address (a shutdown sent there must not reach a new
        host's agent), so it is reused only when nothing else is free."""
        first = ipaddress.ip_address(self.first_address)
        free = [str(first + offset) for offset in range(self.max_hosts)]
        free = [a for a in free if a not in taken]
        held = {h.address for h in pending}
        for candidate in free:
            if candidate not in held:
                return candidate
        # only ended hosts' addresses left: the one that ended first, if its agent is gone
        for host in sorted(pending, key=lambda h: h.meta.get("created", 0)):
            pid = host.meta.get("agent_pid")
            if host.address in free and not (pid and _alive(pid)):
                self.log.warning("reusing the address of %s, never released", host.id)
                return host.address
        raise HostError(
            f"no local host free: all {self.max_hosts} are in use "
            "(raise LocalHostProvider.max_hosts)"
        )

    async def acquire(
        self,
        instance_type: str = "",
        market: str = "",
        owner: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Host:
        instance_type = self.check_instance_type(instance_type)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            live, gone = self._read_live_and_gone()
            address = self._pick_address({h.address for h in live}, gone)
            host_id = f"local-{address.rsplit('.', 1)[1]}-{secrets.token_hex(3)}"
            host = Host(
                id=host_id,
                address=address,
                agent_url=f"http://{address}:{self.agent_port}",
                agent_token=secrets.token_hex(32),
                instance_type=instance_type,
                market=market or self.market,
                disk=str(Path(self.root_dir) / "disks" / host_id),
                meta={"provider": self.name, "created": time.time(), "owner": owner},
            )
            self.registry.mkdir(parents=True, exist_ok=True)
            record = self._registry_file(host_id)
            # written before the agent starts: its address is taken from now on
            self._write_private(record, json.dumps(host.to_dict()))
        try:
            if self.boot_delay > 0:
                await asyncio.sleep(self.boot_delay)  # as an instance boots
            await self._start_agent(host, record)
        except BaseException:
            await self._remove(host)
            raise
        self.log.info("acquired local host %s at %s (%s)", host.id, host.address, instance_type)
        return host

    def _write_private(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    async def _start_agent(self, host: Host, record: Path) -> None:
        secrets_dir = Path(self.root_dir) / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        token_file = secrets_dir / f"{host.id}.token"
        self._write_private(token_file, host.agent_token)
        log_dir = Path(self.root_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "migrating_spawner.agent.server",
            f"--host-id={host.id}",
            f"--address={host.address}",
            f"--port={self.agent_port}",
            f"--token-file={token_file}",
            f"--disk={host.disk}",
        ]
        if self.notify_url:
            cmd.append(f"--notify-url={self.notify_url}")
        if self.run_as_users:
            cmd.append("--run-as-users")
        with open(log_dir / f"{host.id}.log", "ab") as out:
            # a session of its own: the agent outlives the hub, as a cloud host would
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        host.meta["agent_pid"] = proc.pid
        self._write_private(record, json.dumps(host.to_dict()))
        client = self.agent(host)
        deadline = time.monotonic() + self.agent_start_timeout
        while True:
            try:
                await client.status(quick=True)
                return
            except AgentError as e:
                if proc.poll() is not None:
                    raise HostError(
                        f"agent for {host.id} exited with {proc.returncode}; "
                        f"see {log_dir / (host.id + '.log')}"
                    ) from e
                if time.monotonic() > deadline:
                    proc.kill()
                    raise HostError(f"agent for {host.id} did not answer: {e}") from e
                await asyncio.sleep(0.1)

    async def label(self, host: Host, owner: str) -> None:
        host.meta["owner"] = owner
        record = self._registry_file(host.id)
        if record.exists():
            self._write_private(record, json.dumps(host.to_dict()))

    async def get(self, host_id: str) -> Host | None:
        try:
            host = Host.from_dict(json.loads(self._registry_file(host_id).read_text()))
        except FileNotFoundError:
            return None
        return None if _ended(host) else host

    async def list_hosts(self) -> list[Host]:
        return self._read_registry()

    async def release(self, host: Host) -> None:
        client = self.agent(host)
        self.forget(host)  # no watcher event for a host given back on purpose
        try:
            await client.shutdown(quick=True)
        except AgentError as e:
            self.log.info("agent of %s did not take the shutdown (%s); cleaning up", host.id, e)
        pid = host.meta.get("agent_pid")
        if pid:
            for _ in range(50):
                if _ended(host):
                    break
                await asyncio.sleep(0.1)
            else:
                _kill(pid)
        await self._remove(host)
        self.log.info("released local host %s (%s)", host.id, host.address)

    async def _remove(self, host: Host) -> None:
        pid = host.meta.get("agent_pid")
        if pid and not _ended(host):  # (not a process that got the pid since)
            _kill(pid)
        shutil.rmtree(host.disk, ignore_errors=True)
        self._registry_file(host.id).unlink(missing_ok=True)
        self._gone_file(host.id).unlink(missing_ok=True)
        (Path(self.root_dir) / "secrets" / f"{host.id}.token").unlink(missing_ok=True)


def _ended(host: Host) -> bool:
    """Whether the host's agent has gone (its process no longer runs, or the pid is now
    another process's). A record written before its agent started has no pid yet."""
    pid = host.meta.get("agent_pid")
    if not pid:
        return False
    if not _alive(pid):
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if not cmdline:
        # an agent still in its exec (Popen returns before the kernel has set its argv):
        # it lives. (A zombie has none either, but _alive reaps ours; init reaps others.)
        return False
    return f"--host-id={host.id}".encode() not in cmdline.split(b"\0")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
