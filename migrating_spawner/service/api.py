"""The control REST API, served from the hub process as the JupyterHub service `migrate`.

JupyterHub routes `/services/migrate/` to it (a service with a `url` and no command), so it
lives where the spawners and the proxy are and can move servers directly. Callers present a
JupyterHub token; what they may do follows JupyterHub's scopes: `admin:servers` acts on
every server and host, anyone else on their own servers only. Agents push notices with
their host's secret.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from jupyterhub import orm
from jupyterhub.scopes import get_scopes_for, has_scope
from tornado import web

from ..hosts.base import HostError

if TYPE_CHECKING:
    from ..controller import MigratingController
    from ..spawner import MigratingSpawner


def server_state(spawner: MigratingSpawner, moving: bool) -> str:
    """What a user sees: Starting, Running, Floating, Suspended, Stopped or Failed."""
    if moving:
        return "Floating"
    if spawner.pending == "spawn":
        return "Starting"
    if spawner.pending == "stop":
        return "Stopping"
    if spawner.ready:
        return "Running"
    future = spawner._spawn_future
    if future is not None and future.done() and future.exception() is not None:
        return "Failed"
    if spawner.checkpoint_id and spawner.checkpoint_on_stop and spawner.home_mode == "synced":
        return "Suspended"
    return "Stopped"


class APIHandler(web.RequestHandler):
    controller: MigratingController

    def initialize(self, controller: MigratingController) -> None:
        self.controller = controller

    @property
    def db(self):
        return self.controller.app.db

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "request body must be a JSON object")
        return data

    def token(self) -> str:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        # header only: a token in the query string ends up in access logs
        return token.strip() if scheme.lower() in {"token", "bearer"} else ""

    def prepare(self) -> None:
        if isinstance(self, (NoticeHandler, RootHandler)):
            return
        token = self.token()
        if not token:
            raise web.HTTPError(401, "a JupyterHub API token is required")
        orm_token = orm.APIToken.find(self.db, token)
        if orm_token is None:
            raise web.HTTPError(403, "invalid or expired token")
        self.scopes = get_scopes_for(orm_token)
        self.username = orm_token.user.name if orm_token.user else None
        self.is_admin = has_scope("admin:servers", self.scopes)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise web.HTTPError(403, "this needs the admin:servers scope")

    def may_act_on(self, username: str) -> bool:
        return self.is_admin or (
            username == self.username and has_scope(f"servers!user={username}", self.scopes)
        )

    def spawner(self, username: str, server_name: str) -> MigratingSpawner:
        # someone else's server reads as missing: its existence is not ours to tell
        if not self.may_act_on(username):
            raise web.HTTPError(404, f"no server {username}/{server_name}")
        orm_user = orm.User.find(self.db, username)
        if orm_user is None:
            raise web.HTTPError(404, f"no server {username}/{server_name}")
        user = self.controller.app.users[orm_user]
        if server_name not in user.orm_spawners:
            raise web.HTTPError(404, f"no server {username}/{server_name}")
        spawner = user.spawners[server_name]
        if not hasattr(spawner, "checkpoint_home"):
            raise web.HTTPError(400, f"{username}/{server_name} does not use MigratingSpawner")
        return spawner

    def describe(self, spawner: MigratingSpawner, events: bool = False) -> dict[str, Any]:
        moving = self.controller.is_moving(spawner)
        info: dict[str, Any] = {
            "user": spawner.user.name,
            "server": spawner.name,
            "state": server_state(spawner, moving),
            "host_id": spawner.host.id if spawner.host else None,
            "address": f"{spawner.host.address}:{spawner.port}" if spawner.host else None,
            "url": spawner.server.base_url if spawner.server else None,
            "home_mode": spawner.home_mode,
            "checkpoint_id": spawner.checkpoint_id,
            "instance_type": spawner.host.instance_type if spawner.host else None,
        }
        if events:
            info["events"] = spawner.events[-50:]
        return info


class RootHandler(APIHandler):
    """The service's root: JupyterHub checks a service's health with a GET here (once a
    minute), and a person who opens it sees what it is. No token needed: it tells nothing."""

    async def get(self) -> None:
        self.write_json({"service": self.controller.service_name, "api": "api/"})


class HostsHandler(APIHandler):
    async def get(self) -> None:
        self.require_admin()
        hosts = []
        for host in await self.controller.provider.list_hosts():
            servers = [s.key for s in self.controller.spawners_on(host.id)]
            hosts.append({**host.public(), "servers": servers})
        self.write_json({"hosts": hosts})


class ReclaimHandler(APIHandler):
    async def post(self, host_id: str) -> None:
        self.require_admin()
        try:
            seconds = float(self.body().get("notice_seconds", 120))
        except (TypeError, ValueError):
            raise web.HTTPError(400, "notice_seconds must be a number") from None
        if not 0 <= seconds <= 3600:
            raise web.HTTPError(400, "notice_seconds must be between 0 and 3600")
        try:
            answer = await self.controller.reclaim(host_id, seconds)
        except HostError as e:
            raise web.HTTPError(404 if "no host" in str(e) else 400, str(e)) from None
        self.write_json({"host_id": host_id, **answer}, 202)


class ServersHandler(APIHandler):
    async def get(self) -> None:
        query = self.db.query(orm.Spawner).join(orm.User)
        if not self.is_admin:
            query = query.filter(orm.User.name == self.username)
        servers = []
        for orm_spawner in query:
            user = self.controller.app.users[orm_spawner.user]
            spawner = user.spawners[orm_spawner.name]
            if hasattr(spawner, "checkpoint_home") and self.may_act_on(user.name):
                servers.append(self.describe(spawner))
        self.write_json({"servers": servers})


class ServerHandler(APIHandler):
    async def get(self, username: str, server_name: str | None = None) -> None:
        self.write_json(self.describe(self.spawner(username, server_name or ""), events=True))


class MigrateHandler(APIHandler):
    async def post(self, username: str, server_name: str | None = None) -> None:
        spawner = self.spawner(username, server_name or "")
        if not spawner.ready:
            raise web.HTTPError(409, f"{spawner.key} is not running")
        wait = self.get_argument("wait", "false") == "true"
        future = self.controller.schedule_move(spawner, f"requested by {self.username}")
        if wait:
            try:
                result = await future
            except Exception as e:
                raise web.HTTPError(500, f"move failed: {e}") from None
            self.write_json({**self.describe(spawner), "move": result})
        else:
            self.write_json(self.describe(spawner), 202)


class NoticeHandler(APIHandler):
    """Agents push reclaim notices here, signed with their host's own secret."""

    async def post(self) -> None:
        body = self.body()
        host = await self.controller.provider.get(str(body.get("host_id", "")))
        if host is None or not hmac.compare_digest(
            self.token().encode(), host.agent_token.encode()
        ):
            raise web.HTTPError(403, "unknown host or wrong host secret")
        try:
            deadline = float(body["deadline"])
        except (KeyError, TypeError, ValueError):
            raise web.HTTPError(400, "deadline (epoch seconds) is required") from None
        if deadline < time.time() - 600:
            raise web.HTTPError(400, "notice expired: its deadline passed long ago")
        moving = self.controller.on_notice(host.id, deadline)
        self.write_json({"moving": moving}, 202)


def make_app(controller: MigratingController) -> web.Application:
    prefix = controller.base_url + "api/"
    server = r"(?P<username>[^/]+)(?:/(?P<server_name>[^/]*))?"
    args = {"controller": controller}
    return web.Application(
        [
            (controller.base_url, RootHandler, args),
            (prefix + "hosts", HostsHandler, args),
            (prefix + r"hosts/(?P<host_id>[^/]+)/reclaim", ReclaimHandler, args),
            (prefix + "servers", ServersHandler, args),
            (prefix + "servers/" + server + "/migrate", MigrateHandler, args),
            (prefix + "servers/" + server, ServerHandler, args),
            (prefix + "notices", NoticeHandler, args),
        ]
    )
