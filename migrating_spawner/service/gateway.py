"""The TCP gateway's REST routes under /services/migrate/api/ (see tcpgateway/):

    GET    gateway                        the caller's gateway ports (an admin's: all)
    POST   gateway/USER[/SERVER]          {"target_port": P, "allowed_cidrs": [...]}: a pool
                                          port for port P (the sources that may reach it:
                                          within the gateway's allowed_cidrs, its default)
    GET    gateway/USER[/SERVER]          that server's gateway ports
    DELETE gateway/USER[/SERVER]/PORT     give the pool port back

The handlers are built on the control API's own authenticated handler (handed in by
make_app), so the same scopes decide: a user connects their own servers, someone else's
reads as missing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado import web
from tornado.log import app_log

from ..tcpgateway import GatewayError, TCPGateway

SERVER = r"(?P<username>[^/]+)(?:/(?P<server_name>[^/]*))?"


class GatewayMixin:
    """What the gateway routes share; mixed into the API's authenticated handler."""

    def gateway(self) -> TCPGateway:
        gateway = TCPGateway.instance(config=self.controller.app.config)
        if not gateway.enabled:
            raise web.HTTPError(
                404, "%s", "the TCP gateway is not enabled here (c.TCPGateway.enabled = True)"
            )
        return gateway

    async def call(self, coro: Any) -> Any:
        try:
            return await coro
        except GatewayError as e:
            raise web.HTTPError(e.status, "%s", str(e)) from None


class ListMixin(GatewayMixin):
    async def get(self) -> None:
        gateway = self.gateway()
        await self.call(gateway.ensure_started())
        user = None if self.is_admin else self.current_user["name"]
        self.write_json({"ports": gateway.list(user)})


class ServerPortsMixin(GatewayMixin):
    async def get(self, username: str, server_name: str | None = None) -> None:
        spawner = self.spawner(username, server_name or "")
        gateway = self.gateway()
        await self.call(gateway.ensure_started())
        ports = gateway.ports_of(spawner.user.name, spawner.name)
        self.write_json({"ports": [gateway.describe(p) for p in ports]})

    async def post(self, username: str, server_name: str | None = None) -> None:
        spawner = self.spawner(username, server_name or "")
        body = self.body({"target_port", "allowed_cidrs"})
        port = body.get("target_port")
        if not isinstance(port, int) or isinstance(port, bool):
            raise web.HTTPError(400, "%s", "target_port must be an integer port number")
        cidrs = body.get("allowed_cidrs")
        if cidrs is not None and not (
            isinstance(cidrs, list) and all(isinstance(c, str) for c in cidrs)
        ):
            raise web.HTTPError(400, "%s", "allowed_cidrs must be a list of networks")
        address = spawner.host.address if spawner.host else None
        info = await self.call(
            self.gateway().connect(spawner.user.name, spawner.name, port, address, cidrs)
        )
        self.write_json(info, status=201)


class DisconnectMixin(GatewayMixin):
    async def delete(self, username: str, port: str, server_name: str | None = None) -> None:
        spawner = self.spawner(username, server_name or "")
        await self.call(self.gateway().disconnect(spawner.user.name, spawner.name, int(port)))
        self.write_json({"port": int(port), "disconnected": True})


def gateway_handlers(prefix: str, base: type, args: dict) -> list[tuple[str, type, dict]]:
    """The gateway's routes for the control API's application, on `base` (its
    authenticated handler class). An enabled gateway starts (or, after a hub restart,
    finds its HAProxy again) with the API, and is supervised from then on."""
    gateway = TCPGateway.instance(config=args["controller"].app.config)
    if gateway.enabled:
        asyncio.ensure_future(_start(gateway))

    def handler(mixin: type) -> type:
        return type(mixin.__name__.replace("Mixin", "Handler"), (mixin, base), {})

    return [
        (prefix + "gateway", handler(ListMixin), args),
        (prefix + "gateway/" + SERVER + r"/(?P<port>\d+)", handler(DisconnectMixin), args),
        (prefix + "gateway/" + SERVER, handler(ServerPortsMixin), args),
    ]


async def _start(gateway: TCPGateway) -> None:
    try:
        await gateway.ensure_started()
    except Exception:
        app_log.exception("the TCP gateway did not start")
