"""`TCPGateway`: ports from a pool for TCP ports of users' servers, kept across moves.

A user connects a port of their server (`connect`): a free pool port is assigned and HAProxy
forwards it to `host:target_port`. The spawner tells the gateway where its server runs:
`retarget` after a start or a move's switch, `hold` at a move's freeze (new connections
wait, bounded by `hold_timeout`, and go on to the new host), `park` at a stop (closed until
the next start). Connections open at the switch end with the old server; the client
reconnects to the same address. The table (`ports.json`) and HAProxy's configuration live
in `state_dir`, and HAProxy runs detached, so both survive a hub restart.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, List, Unicode, default, validate
from traitlets.config import SingletonConfigurable

from .haproxy import HAProxyProcess, Route, RuntimeAPI, render_config


class GatewayError(Exception):
    """A request the gateway cannot satisfy; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        ports = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"port_range must look like 10000-10500, not {text!r}") from None
    if not 10000 <= ports[0] <= ports[1] <= 65535:
        raise ValueError(f"port_range {text!r} must lie within 10000-65535, low to high")
    return ports


class TCPGateway(SingletonConfigurable):
    enabled = Bool(
        False,
        help="Run the port-pool TCP gateway (HAProxy): `jupyterhub-migrate gateway connect`.",
    ).tag(config=True)

    port_range = Unicode(
        "10000-10500",
        help="""The pool of gateway ports, LOW-HIGH inclusive, within 10000-65535.

        Each connected server port gets one; it stays the same across moves.""",
    ).tag(config=True)

    allowed_cidrs = List(
        Unicode(),
        ["0.0.0.0/0", "::/0"],
        help="""Source networks that may connect to gateway ports (others are refused at
        once). Restrict it to your users' networks, e.g. ["10.0.0.0/8"].""",
    ).tag(config=True)

    bind_ip = Unicode("0.0.0.0", help="The address gateway ports listen on.").tag(config=True)

    public_host = Unicode(
        help="The host name users connect to (default: bind_ip, or this machine's name)."
    ).tag(config=True)

    hold_timeout = Float(
        60,
        help="""Seconds a new connection made while its server moves waits for the move
        to finish (then it goes on to the new host); after that it is closed.""",
    ).tag(config=True)

    haproxy_command = List(Unicode(), ["haproxy"], help="The haproxy executable.").tag(config=True)

    state_dir = Unicode(
        help="Where the port table, HAProxy's configuration, pid file and socket live."
    ).tag(config=True)

    check_interval = Float(
        5, help="Seconds between checks that HAProxy runs (it is started again if not)."
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.abspath("tcp-gateway")

    @default("public_host")
    def _default_public_host(self) -> str:
        return self.bind_ip if self.bind_ip not in ("0.0.0.0", "::") else os.uname().nodename

    @validate("port_range")
    def _check_range(self, proposal: Any) -> str:
        parse_range(proposal.value)
        return proposal.value

    @validate("allowed_cidrs")
    def _check_cidrs(self, proposal: Any) -> list[str]:
        for cidr in proposal.value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
        return proposal.value

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        root = Path(self.state_dir)
        self.table_path = root / "ports.json"
        self.process = HAProxyProcess(
            self.haproxy_command, root / "haproxy.cfg", root / "haproxy.pid"
        )
        self.api = RuntimeAPI(str(root / "admin.sock"))
        self.routes: dict[int, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        self._started: asyncio.Future | None = None
        self._watch: asyncio.Task | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        if self.table_path.exists():
            self.routes = {int(p): r for p, r in json.loads(self.table_path.read_text()).items()}
        await self._run_haproxy()
        self._watch = asyncio.ensure_future(self._supervise())

    async def _run_haproxy(self) -> None:
        """Start HAProxy, or keep the one that runs (a hub restart): reloaded only when its
        configuration changed, then given the table's runtime state."""
        config = self._config()
        pid = self.process.pid()
        path = self.process.config_path
        if pid and await self.api.alive():
            if path.exists() and path.read_text() == config:
                return
            path.write_text(config)
            await asyncio.to_thread(self.process.start, pid)
        else:
            path.write_text(config)
            await asyncio.to_thread(self.process.start)
        await self._wait_alive()
        for route in self._routes().values():
            await self.api.set_route(route)

    async def _wait_alive(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not await self.api.alive():
            if time.monotonic() > deadline:
                raise GatewayError("HAProxy did not answer on its runtime socket", 503)
            await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                if not self.process.pid():
                    self.log.warning("TCP gateway: HAProxy is not running; starting it again")
                    async with self._lock:
                        await self._run_haproxy()
            except Exception:
                self.log.exception("TCP gateway: could not start HAProxy again")

    def stop(self) -> None:
        """Stop HAProxy: when the hub stops its proxy (`cleanup_proxy`); a hub that dies
        leaves it serving, as it leaves CHP."""
        if self._watch:
            self._watch.cancel()
        self.process.stop()

    # -- the table ----------------------------------------------------------------------

    def _routes(self) -> dict[int, Route]:
        return {
            port: Route(port, r.get("address"), r["target_port"], bool(r.get("held")))
            for port, r in self.routes.items()
        }

    def _config(self) -> str:
        return render_config(
            self.api.socket_path,
            self.bind_ip,
            parse_range(self.port_range),
            self.allowed_cidrs,
            self.hold_timeout,
            self._routes(),
        )

    async def _save(self, ports: list[int]) -> None:
        """Apply the routes of `ports` through the runtime API; keep table and config."""
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.routes, indent=1))
        os.replace(tmp, self.table_path)
        self.process.config_path.write_text(self._config())
        routes = self._routes()
        for port in ports:
            await self.api.set_route(routes.get(port) or Route(port, None, 1))

    def describe(self, port: int) -> dict[str, Any]:
        r = self.routes[port]
        state = "moving" if r.get("held") else ("open" if r.get("address") else "stopped")
        return {
            "port": port,
            "address": f"{self.public_host}:{port}",
            "user": r["user"],
            "server": r["server"],
            "target_port": r["target_port"],
            "state": state,
            "created": r.get("created"),
        }

    def ports_of(self, user: str, server: str) -> list[int]:
        return sorted(
            p for p, r in self.routes.items() if r["user"] == user and r["server"] == server
        )

    def list(self, user: str | None = None) -> list[dict[str, Any]]:
        return [
            self.describe(p)
            for p in sorted(self.routes)
            if user is None or self.routes[p]["user"] == user
        ]

    # -- verbs --------------------------------------------------------------------------

    async def connect(
        self, user: str, server: str, target_port: int, address: str | None
    ) -> dict[str, Any]:
        """A pool port for `target_port` of user/server (the same one if it has one)."""
        if not 1 <= target_port <= 65535:
            raise GatewayError(f"target_port must be 1-65535, not {target_port}")
        await self.ensure_started()
        async with self._lock:
            for port in self.ports_of(user, server):
                if self.routes[port]["target_port"] == target_port:
                    return self.describe(port)
            low, high = parse_range(self.port_range)
            free = next((p for p in range(low, high + 1) if p not in self.routes), None)
            if free is None:
                raise GatewayError(
                    f"the gateway's port pool {self.port_range} is exhausted "
                    f"({high - low + 1} ports in use): disconnect a port first",
                    503,
                )
            self.routes[free] = {
                "user": user,
                "server": server,
                "target_port": target_port,
                "address": address,
                "created": time.time(),
            }
            await self._save([free])
            return self.describe(free)

    async def disconnect(self, user: str, server: str, port: int) -> None:
        await self.ensure_started()
        async with self._lock:
            if port not in self.ports_of(user, server):
                raise GatewayError(f"{user}/{server} has no gateway port {port}", 404)
            del self.routes[port]
            await self._save([port])

    async def _set(self, user: str, server: str, **fields: Any) -> None:
        if not self.enabled:
            return
        await self.ensure_started()
        async with self._lock:
            ports = self.ports_of(user, server)
            if not ports:
                return
            for port in ports:
                self.routes[port].update(fields)
            await self._save(ports)

    async def retarget(self, user: str, server: str, address: str) -> None:
        """The server runs at `address` (started, or moved there): open its ports,
        releasing connections held during a move."""
        await self._set(user, server, address=address, held=False)

    async def hold(self, user: str, server: str) -> None:
        """The server is about to stop on its old host for a move: new connections wait."""
        await self._set(user, server, held=True)

    async def park(self, user: str, server: str) -> None:
        """The server stopped: its ports stay assigned and refuse connections."""
        await self._set(user, server, address=None, held=False)

    async def forget(self, user: str, server: str) -> None:
        """The server was deleted: its ports go back to the pool."""
        if not self.enabled:
            return
        await self.ensure_started()
        async with self._lock:
            ports = self.ports_of(user, server)
            for port in ports:
                del self.routes[port]
            if ports:
                await self._save(ports)
