"""HAProxy for the TCP gateway: its configuration (pure), its runtime API, its process.

One frontend binds the whole pool; each pool port P has a backend `pP` with one server `s`:
MAINT while the port is not in use (connections close at once), UP at the server's current
address, DRAIN while the server moves (hold.lua holds new connections until it is UP again
at the new address, at most the hold timeout). The runtime API changes a server's address
and state without a reload; the configuration is rewritten with every change, so a restarted
HAProxy comes back with the same table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "hold.lua"
PLACEHOLDER = ("127.0.0.1", 1)  # a port not in use points here, in maintenance


@dataclass(frozen=True)
class Route:
    port: int  # the pool port
    address: str | None  # the server's host, None while it is not running
    target_port: int
    held: bool = False  # the server is moving


def acl_path(acl_dir: str, port: int) -> str:
    """The file of pool port `port`'s allowed source networks (one CIDR a line): loaded
    by HAProxy at its start, changed at runtime (`RuntimeAPI.set_acl`)."""
    return os.path.join(acl_dir, f"p{port}.lst")


def render_config(
    socket_path: str,
    bind_ip: str,
    ports: tuple[int, int],
    allowed_cidrs: list[str],
    hold_timeout: float,
    routes: dict[int, Route],
    acl_dir: str,
) -> str:
    """haproxy.cfg for the pool `ports` (inclusive) with `routes` by pool port.

    `allowed_cidrs` bounds every port; each port's own sources (within it) are its ACL
    file in `acl_dir`, so a connect changes them without a reload."""
    low, high = ports
    hold_ms = int(hold_timeout * 1000)
    lines = [
        "global",
        f"  stats socket {socket_path} mode 600 level admin",
        f"  lua-load {LUA}",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 1h",
        "  timeout server 1h",
        # a port app on the new host may listen a moment after the release
        "  retries 10",
        "frontend gateway",
        f"  bind {bind_ip}:{low}-{high}",
        f"  tcp-request connection reject unless {{ src {' '.join(allowed_cidrs)} }}",
        *(
            f"  tcp-request connection reject if {{ dst_port {port} }}"
            f" !{{ src -f {acl_path(acl_dir, port)} }}"
            for port in range(low, high + 1)
        ),
        # the hold: at most hold_timeout, released early when the server is ready again
        f"  tcp-request inspect-delay {hold_ms + 1000}ms",
        f"  tcp-request content lua.hold {hold_ms}",
        "  use_backend p%[dst_port]",
    ]
    for port in range(low, high + 1):
        route = routes.get(port)
        lines.append(f"backend p{port}")
        if route is None or route.address is None:
            address, target = PLACEHOLDER
            state = " disabled"
        else:
            address, target = route.address, route.target_port
            state = " disabled" if route.held else ""
        lines.append(f"  server s {address}:{target}{state}")
    return "\n".join(lines) + "\n"


class RuntimeAPI:
    """HAProxy's runtime API on its unix socket (one command per connection)."""

    def __init__(self, socket_path: str, timeout: float = 5):
        self.socket_path = socket_path
        self.timeout = timeout

    async def command(self, line: str) -> str:
        async def ask() -> str:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
            try:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                return (await reader.read()).decode().strip()
            finally:
                writer.close()

        return await asyncio.wait_for(ask(), self.timeout)

    async def alive(self) -> bool:
        try:
            return "Name: HAProxy" in await self.command("show info")
        except (OSError, asyncio.TimeoutError):
            return False

    async def set_route(self, route: Route) -> None:
        backend = f"p{route.port}/s"
        if route.address is None:
            await self.command(f"set server {backend} state maint")
            return
        await self.command(f"set server {backend} addr {route.address} port {route.target_port}")
        await self.command(f"set server {backend} state {'drain' if route.held else 'ready'}")

    async def set_acl(self, path: str, cidrs: list[str]) -> None:
        """Replace the sources of the ACL file `path` (loaded at start) in one step."""
        answer = await self.command(f"prepare acl {path}")
        if not answer.startswith("New version created:"):
            raise RuntimeError(f"HAProxy: prepare acl {path}: {answer}")
        version = answer.split(":")[1].strip()
        for cidr in cidrs:
            answer = await self.command(f"add acl @{version} {path} {cidr}")
            if answer:
                raise RuntimeError(f"HAProxy: add acl {path} {cidr}: {answer}")
        answer = await self.command(f"commit acl @{version} {path}")
        if answer:
            raise RuntimeError(f"HAProxy: commit acl {path}: {answer}")


class HAProxyProcess:
    """The haproxy daemon: started detached (it outlives the hub, as CHP does), found
    again through its pid file, reloaded (-sf) when its configuration changes."""

    def __init__(self, command: list[str], config_path: Path, pid_path: Path):
        self.command = command
        self.config_path = config_path
        self.pid_path = pid_path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def start(self, replace: int | None = None) -> None:
        """Start haproxy (or, with `replace`, a new one that takes over from that pid)."""
        args = [*self.command, "-D", "-p", str(self.pid_path), "-f", str(self.config_path)]
        if replace:
            args += ["-sf", str(replace)]
        # not a pipe: the daemon keeps its stderr, and a pipe would never reach its end
        log = self.config_path.with_suffix(".log")
        with open(log, "ab") as out:
            done = subprocess.run(args, stdout=out, stderr=out, timeout=30)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"haproxy did not start ({done.returncode}): {tail}")

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
