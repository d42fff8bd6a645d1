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

from .haproxy import HAProxyProcess, Route, RuntimeAPI, acl_path, render_config


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


def narrow_cidrs(requested: list[str], bounds: list[str]) -> list[str]:
    """A port's own allowed source networks: each must lie within one of the gateway's
    (`bounds`); returned normalized. ValueError says which does not."""
    if not requested:
        raise ValueError("allowed_cidrs must name at least one network")
    limits = [ipaddress.ip_network(b, strict=False) for b in bounds]
    out = []
    for cidr in requested:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            message = f"allowed_cidrs: {cidr!r} is not a network (e.g. 10.0.0.0/8)"
            raise ValueError(message) from None
        if not any(net.version == b.version and net.subnet_of(b) for b in limits):
            raise ValueError(
                f"allowed_cidrs: {net} is outside the gateway's allowed networks "
                f"({', '.join(bounds)})"
            )
        out.append(str(net))
    return out


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
        once). Restrict it to your users' networks, e.g. ["10.0.0.0/8"]. It is also each
        port's default: a connect may narrow a port to networks within it
        (`--allowed-cidrs`).""",
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
        self.acl_dir = root / "acl"
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
        running = bool(pid) and await self.api.alive()
        if running and path.exists() and path.read_text() == config:
            return
        self._write_acls(self.routes, range(*self._pool()))  # HAProxy loads them at start
        path.write_text(config)
        await asyncio.to_thread(self.process.start, pid if running else None)
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

    def _routes(self, table: dict[int, dict[str, Any]] | None = None) -> dict[int, Route]:
        return {
            port: Route(port, r.get("address"), r["target_port"], bool(r.get("held")))
            for port, r in (self.routes if table is None else table).items()
        }

    def _config(self, table: dict[int, dict[str, Any]] | None = None) -> str:
        return render_config(
            self.api.socket_path,
            self.bind_ip,
            parse_range(self.port_range),
            self.allowed_cidrs,
            self.hold_timeout,
            self._routes(table),
            str(self.acl_dir),
        )

    def _pool(self) -> tuple[int, int]:
        """The pool as a range's arguments (high + 1)."""
        low, high = parse_range(self.port_range)
        return low, high + 1

    def cidrs(self, record: dict[str, Any] | None) -> list[str]:
        """The sources a port allows: its own, or the gateway's (a port not in use: none)."""
        if record is None:
            return []
        return record.get("allowed_cidrs") or list(self.allowed_cidrs)

    def _write_acls(self, table: dict[int, dict[str, Any]], ports: Any) -> None:
        self.acl_dir.mkdir(parents=True, exist_ok=True)
        for port in ports:
            text = "".join(c + "\n" for c in self.cidrs(table.get(port)))
            Path(acl_path(str(self.acl_dir), port)).write_text(text)

    async def _save(self, table: dict[int, dict[str, Any]], ports: list[int]) -> None:
        """Make `table` the port table: written first (the table file and HAProxy's
        configuration, so a restarted HAProxy has it), applied to `ports` through the
        runtime API, and only then the table the gateway answers from (`describe`, `list`):
        a port it says is moving already holds new connections in HAProxy."""
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, self.table_path)
        self.process.config_path.write_text(self._config(table))
        self._write_acls(table, ports)
        routes = self._routes(table)
        try:
            for port in ports:
                await self.api.set_route(routes.get(port) or Route(port, None, 1))
                cidrs = self.cidrs(table.get(port))
                if cidrs != self.cidrs(self.routes.get(port)):
                    await self.api.set_acl(acl_path(str(self.acl_dir), port), cidrs)
        finally:  # applied, or HAProxy unreachable (a restart applies the table)
            self.routes = table

    def describe(self, port: int) -> dict[str, Any]:
        r = self.routes[port]
        state = "moving" if r.get("held") else ("open" if r.get("address") else "stopped")
        return {
            "port": port,
            "address": f"{self.public_host}:{port}",
            "user": r["user"],
            "server": r["server"],
            "target_port": r["target_port"],
            "allowed_cidrs": self.cidrs(r),
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
        self,
        user: str,
        server: str,
        target_port: int,
        address: str | None,
        allowed_cidrs: list[str] | None = None,
    ) -> dict[str, Any]:
        """A pool port for `target_port` of user/server (the same one if it has one).
        `allowed_cidrs` narrows who may reach it (within the gateway's `allowed_cidrs`,
        the default); connecting a connected port again with a list changes it."""
        if not 1 <= target_port <= 65535:
            raise GatewayError(f"target_port must be 1-65535, not {target_port}")
        own = None
        if allowed_cidrs is not None:
            try:
                own = narrow_cidrs(allowed_cidrs, self.allowed_cidrs)
            except ValueError as e:
                raise GatewayError(str(e)) from None
        await self.ensure_started()
        async with self._lock:
            for port in self.ports_of(user, server):
                if self.routes[port]["target_port"] == target_port:
                    if own is not None and own != self.cidrs(self.routes[port]):
                        changed = {**self.routes[port], "allowed_cidrs": own}
                        await self._save({**self.routes, port: changed}, [port])
                    return self.describe(port)
            low, high = parse_range(self.port_range)
            free = next((p for p in range(low, high + 1) if p not in self.routes), None)
            if free is None:
                raise GatewayError(
                    f"the gateway's port pool {self.port_range} is exhausted "
                    f"({high - low + 1} ports in use): disconnect a port first",
                    503,
                )
            record = {
                "user": user,
                "server": server,
                "target_port": target_port,
                "address": address,
                "created": time.time(),
            }
            if own is not None:
                record["allowed_cidrs"] = own
            await self._save({**self.routes, free: record}, [free])
            return self.describe(free)

    async def disconnect(self, user: str, server: str, port: int) -> None:
        await self.ensure_started()
        async with self._lock:
            if port not in self.ports_of(user, server):
                raise GatewayError(f"{user}/{server} has no gateway port {port}", 404)
            await self._save({p: r for p, r in self.routes.items() if p != port}, [port])

    async def _set(self, user: str, server: str, **fields: Any) -> None:
        if not self.enabled:
            return
        await self.ensure_started()
        async with self._lock:
            ports = self.ports_of(user, server)
            if not ports:
                return
            table = {p: {**r, **fields} if p in ports else r for p, r in self.routes.items()}
            await self._save(table, ports)

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
            if ports:
                table = {p: r for p, r in self.routes.items() if p not in ports}
                await self._save(table, ports)
