"""The control REST API, served from the hub process as the JupyterHub service `migrate`.

JupyterHub routes `/services/migrate/` to it (a service with a `url` and no command), so it
lives where the spawners and the proxy are and can move servers directly. Callers present a
JupyterHub token, checked the way every JupyterHub service checks one
(`jupyterhub.services.auth.HubOAuth`, set up in service/page.py): a token in the header, or
the OAuth cookie of the service's page (POSTs with JupyterHub's XSRF check). It must grant
`access:services!service=migrate`, and what it may do then follows its JupyterHub scopes:
`servers` on a user's server moves, suspends, resumes and cancels that server (a user's own
token has it for their own servers), `admin:servers` also lists and reclaims hosts.
Agents push notices with their host's secret instead.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from datetime import timezone
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from jupyterhub import orm
from jupyterhub.scopes import has_scope
from jupyterhub.services.auth import HubAuthenticated, UserNotAllowed
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.log import app_log

from ..agent.client import AgentError
from ..checkpoint import CheckpointError
from ..history import checkpoint_summary
from ..hosts.base import MAX_NOTICE_SECONDS, HostError
from . import page
from .gateway import gateway_handlers
from .jobs import job_handlers
from .registration import registration_handlers


class Controller(Protocol):
    """What the API needs of the hub's controller (migrating_spawner.controller)."""

    provider: Any

    @property
    def app(self) -> Any: ...  # the running JupyterHub

    @property
    def base_url(self) -> str: ...

    @property
    def service_name(self) -> str: ...

    def spawners_on(self, host_id: str) -> list[Any]: ...

    def is_moving(self, spawner: Any) -> bool: ...

    def schedule_move(self, spawner: Any, reason: str) -> asyncio.Future: ...

    def on_notice(self, host_id: str, deadline: float) -> list[str]: ...

    async def reclaim(self, host_id: str, notice_seconds: float) -> dict[str, Any]: ...

    @property
    def observer(self) -> Any: ...  # migrating_spawner.observe.Observer: history, metrics

    @property
    def checkpoints(self) -> Any: ...  # SignedCheckpoints

    @property
    def store(self) -> Any: ...


def error(status: int, message: str) -> web.HTTPError:
    """An HTTP error whose message may hold what a caller sent (a `%` in it is text: tornado
    formats log messages with their args)."""
    return web.HTTPError(status, "%s", message)


#: the verbs that fit each state (the page enables its buttons from them)
ACTIONS = {
    "Running": ["migrate", "suspend", "cancel"],
    "Suspended": ["resume", "cancel"],
    "Stopped": ["resume"],
    "Failed": ["resume", "cancel"],
    "Starting": [],
    "Floating": [],
}


def server_state(spawner: Any, moving: bool) -> str:
    """What a user sees: Starting, Running, Floating, Suspended, Stopped or Failed (a
    server being stopped still reads Running, with `pending: "stop"`)."""
    if moving:
        return "Floating"
    if spawner.pending == "spawn":
        return "Starting"
    if spawner.ready or spawner.pending == "stop":
        return "Running"
    future = spawner._spawn_future
    if future is not None and future.done() and future.exception() is not None:
        return "Failed"
    if spawner.checkpoint_on_stop and not spawner.fresh_start:
        if spawner.suspended or (spawner.checkpoint_id and spawner.home_mode == "synced"):
            return "Suspended"
    return "Stopped"


def epoch(when: Any) -> float | None:
    """A JupyterHub orm datetime (naive UTC) as epoch seconds."""
    if when is None:
        return None
    return (
        when.replace(tzinfo=timezone.utc).timestamp() if when.tzinfo is None else when.timestamp()
    )


#: checkpoints are immutable: what a GET shows of one is read (and verified) once
_summaries: dict[tuple[str, str], dict[str, Any] | None] = {}


def number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """`body[key]` as a finite number in [low, high] (a 400 naming the field otherwise)."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(400, f"{key} must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise error(400, f"{key} must be a number of seconds, not {value!r}") from None
    if not (math.isfinite(seconds) and low <= seconds <= high):
        raise error(400, f"{key} must be between {low:g} and {high:g} seconds")
    return seconds


class JSONHandler(web.RequestHandler):
    """Every answer is JSON, errors too: `{"status": code, "message": text}`."""

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

    def body(self, allowed: set[str] | None = None) -> dict[str, Any]:
        """The request's JSON object; with `allowed`, only those keys (a typo is refused, not
        ignored)."""
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise error(400, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise error(400, "request body must be a JSON object")
        unknown = sorted(set(data) - allowed) if allowed is not None else []
        if unknown:
            expected = ", ".join(sorted(allowed)) or "none"
            names = ", ".join(unknown)
            raise error(400, f"unknown field(s) {names} (expected: {expected})")
        return data

    def flag(self, name: str) -> bool:
        """A query argument that is `true` or `false` (absent: false)."""
        value = self.get_argument(name, "false")
        if value not in {"true", "false"}:
            raise error(400, f"{name} must be true or false, not {value!r}")
        return value == "true"


class NotFoundHandler(JSONHandler):
    """Any path the API does not have: a JSON 404, not tornado's HTML page."""

    def prepare(self) -> None:
        raise error(404, f"no such API path: {self.request.path}")


class APIHandler(HubAuthenticated, JSONHandler):
    """A handler for JupyterHub users and services, authenticated by the hub."""

    controller: Controller

    def initialize(self, controller: Controller, hub_auth: page.ServiceOAuth) -> None:
        self.controller = controller
        self.hub_auth = hub_auth

    @property
    def db(self) -> Any:
        return self.controller.app.db

    async def prepare(self) -> None:
        # HubAuthenticated.get_current_user would wait for the hub's answer synchronously,
        # blocking the very loop the hub answers on: ask without blocking, and let the
        # mixin judge the answer (it caches it where get_current_user looks)
        # (HubOAuth: the token header first, else the page's OAuth cookie, XSRF-checked)
        model = await self.hub_auth.get_user(self, sync=False)
        if model is None:
            if not self.hub_auth.get_token(self):
                raise error(401, "a JupyterHub API token is required (Authorization: token)")
            raise error(403, "invalid or expired token")
        try:
            self._hub_auth_user_cache = self.check_hub_user(model)
        except UserNotAllowed:
            scopes = " or ".join(sorted(self.hub_scopes or ()))
            raise error(
                403,
                f"{model.get('kind', 'user')} {model['name']} may not use this service: "
                f"its token lacks the scope {scopes}",
            ) from None
        self.scopes = set(model["scopes"])
        self.is_admin = has_scope("admin:servers", self.scopes)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise error(403, "this needs the admin:servers scope")

    def may_act_on(self, username: str, server_name: str) -> bool:
        # moving a server stops and starts it: JupyterHub's `servers` scope on that server
        return has_scope(f"servers!server={username}/{server_name}", self.scopes, db=self.db)

    def spawner(self, username: str, server_name: str) -> Any:
        # someone else's server reads as missing: its existence is not ours to tell
        missing = error(404, f"no server {username}/{server_name}")
        if not self.may_act_on(username, server_name):
            raise missing
        orm_user = orm.User.find(self.db, username)
        if orm_user is None:
            raise missing
        user = self.controller.app.users[orm_user]
        if server_name not in user.orm_spawners:
            raise missing
        spawner = user.spawners[server_name]
        if not hasattr(spawner, "checkpoint_home"):
            raise error(400, f"{username}/{server_name} does not use MigratingSpawner")
        return spawner

    async def describe(self, spawner: Any, events: bool = False) -> dict[str, Any]:
        moving = self.controller.is_moving(spawner)
        state = server_state(spawner, moving)
        host = spawner.host
        started = epoch(spawner.orm_spawner.started) if spawner.orm_spawner else None
        info: dict[str, Any] = {
            "user": spawner.user.name,
            "server": spawner.name,
            "state": state,
            "pending": spawner.pending,
            "deadline": None,
            "move": None,
            "host_id": host.id if host else None,
            "address": f"{host.address}:{spawner.port}" if host else None,
            "url": spawner.server.base_url if spawner.server else None,
            "provider": self.controller.provider.name,
            "instance_type": host.instance_type if host else None,
            # the cloud's own id (ec2: i-..., what the console and the simulator name)
            "instance_id": host.meta.get("instance_id") if host else None,
            "market": host.market if host else None,
            "hourly_price": host.meta.get("hourly_price") if host else None,
            "started": started if host else None,
            "uptime": time.time() - started if host and started else None,
            "home_mode": spawner.home_mode,
            "checkpoint_id": spawner.checkpoint_id,
            "last_checkpoint": await self.last_checkpoint(spawner),
            "suspended": spawner.suspended,
            "actions": ACTIONS.get(state, []),
        }
        if moving:
            record = spawner.move_record or {}
            deadline = record.get("deadline")
            # a requested move has no deadline of its own (the engine gives it an hour)
            if deadline and deadline - time.time() < 3000:
                info["deadline"] = deadline
            info["move"] = {
                "reason": record.get("reason"),
                "deadline": info["deadline"],
                "from": (record.get("old_host") or {}).get("id"),
                "to": (record.get("new_host") or {}).get("id"),
                "phase": record.get("phase"),
            }
        if events:
            info["events"] = spawner.events[-50:]
        return info

    async def last_checkpoint(self, spawner: Any) -> dict[str, Any] | None:
        """Time and size of the server's last checkpoint (None: none, or unreadable); the
        manifest is read off the hub's loop, once per checkpoint."""
        checkpoint_id = spawner.checkpoint_id
        if not checkpoint_id:
            return None
        cache_key = (spawner.key, checkpoint_id)
        if cache_key not in _summaries:
            try:
                manifest = await self.controller.checkpoints.load_async(spawner.key, checkpoint_id)
                _summaries[cache_key] = checkpoint_summary(manifest)
            except CheckpointError as e:
                app_log.warning("checkpoint %s of %s: %s", checkpoint_id, spawner.key, e)
                return None
            if len(_summaries) > 10000:
                _summaries.pop(next(iter(_summaries)))
        return _summaries[cache_key]


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
        body = self.body({"notice_seconds"})
        seconds = number(body, "notice_seconds", 120, 0, MAX_NOTICE_SECONDS)
        if await self.controller.provider.get(host_id) is None:
            raise error(404, f"no host {host_id}")
        try:
            answer = await self.controller.reclaim(host_id, seconds)
        except AgentError as e:
            # the host is there but its agent did not take the notice
            raise error(502, f"the agent of {host_id} did not take the notice: {e}") from None
        except HostError as e:
            # e.g. a provider whose cloud takes no reclaim on request
            raise error(400, f"cannot reclaim {host_id}: {e}") from None
        self.write_json({"host_id": host_id, **answer}, 202)


class ServersHandler(APIHandler):
    async def get(self) -> None:
        servers = []
        for orm_spawner in self.db.query(orm.Spawner).join(orm.User):
            # scopes first: no Spawner object is built for a server the caller may not see
            if not self.may_act_on(orm_spawner.user.name, orm_spawner.name):
                continue
            spawner = self.controller.app.users[orm_spawner.user].spawners[orm_spawner.name]
            if hasattr(spawner, "checkpoint_home"):
                servers.append(await self.describe(spawner))
        self.write_json({"servers": servers})


class ServerHandler(APIHandler):
    async def get(self, username: str, server_name: str | None = None) -> None:
        spawner = self.spawner(username, server_name or "")
        self.write_json(await self.describe(spawner, events=True))


class MigrateHandler(APIHandler):
    async def post(self, username: str, server_name: str | None = None) -> None:
        wait = self.flag("wait")
        self.body(set())
        spawner = self.spawner(username, server_name or "")
        if not spawner.ready:
            raise error(409, f"{spawner.key} is not running: {self.not_running(spawner)}")
        who = self.current_user["name"]
        future = self.controller.schedule_move(spawner, f"requested by {who}")
        if wait:
            try:
                result = await future
            except Exception as e:
                raise error(500, f"move failed: {e}") from None
            self.write_json({**(await self.describe(spawner)), "move": result})
        else:
            self.write_json(await self.describe(spawner), 202)

    def not_running(self, spawner: Any) -> str:
        """What to do instead of moving a server that is not running."""
        state = server_state(spawner, self.controller.is_moving(spawner))
        if state == "Starting":
            return "wait until it has started"
        if state in ("Suspended", "Failed") or (state == "Stopped" and spawner.checkpoint_id):
            how = f"`jupyterhub-migrate resume {spawner.key}` or Resume on the page"
            return f"it is {state}, so there is nothing to move; resume it instead ({how})"
        if state == "Running":  # being stopped
            return "it is being stopped"
        return "start it from the hub first"


class VerbHandler(APIHandler):
    """Suspend, resume and cancel: the hub itself stops or starts the server.

    The hub's own REST API does it, so its checks, pending flags, proxy routes and the
    spawn page's progress are the hub's; the call carries a token of the server's owner
    made for that one call (the scope `servers` on that server only, 5 minutes), after
    this API checked that the caller may act on the server.
    """

    verb = ""
    fits: tuple[str, ...] = ()

    async def post(self, username: str, server_name: str | None = None) -> None:
        self.body(set())
        spawner = self.spawner(username, server_name or "")
        state = server_state(spawner, self.controller.is_moving(spawner))
        if state not in self.fits:
            raise error(409, f"{spawner.key} is {state}: {self.refusal(state)}")
        await self.act(spawner, state)

    def refusal(self, state: str) -> str:
        return f"cannot {self.verb} it now (it can be {self.verb}ed when {' or '.join(self.fits)})"

    @property
    def who(self) -> str:
        return self.current_user["name"]

    async def hub_call(self, spawner: Any, method: str, body: Any = None) -> int:
        user, name = spawner.user, spawner.name
        token = user.orm_user.new_api_token(
            scopes=[f"servers!server={user.name}/{name}"],
            expires_in=300,
            note=f"jupyterhub-migrate {self.verb} for {self.who}",
        )
        path = f"users/{user.escaped_name}/" + (f"servers/{quote(name)}" if name else "server")
        url = url_path_join(self.controller.app.hub.api_url, path)
        headers = {"Authorization": f"token {token}"}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.request(
                    method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(60)
                ) as resp:
                    status, text = resp.status, await resp.text()
        finally:
            orm_token = orm.APIToken.find(self.db, token)
            if orm_token is not None:
                self.db.delete(orm_token)
                self.db.commit()
        if status >= 400:
            try:
                text = json.loads(text).get("message", text)
            except (ValueError, AttributeError):
                pass
            raise error(409 if status in (400, 409) else 502, f"the hub refused: {text}")
        return status

    async def until(self, spawner: Any, done: Any, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def stop(self, spawner: Any, request: dict[str, Any]) -> None:
        spawner.stop_request = request  # the stop's history entry says why and who
        try:
            await self.hub_call(spawner, "DELETE")
        except BaseException:
            spawner.stop_request = None
            raise
        # the hub answers 202 for a slow stop (a final checkpoint): wait for it to end
        await self.until(spawner, lambda: spawner.server is None and not spawner.pending)

    async def act(self, spawner: Any, state: str) -> None:
        raise NotImplementedError


def _log_failure(call: asyncio.Future) -> None:
    if not call.cancelled() and call.exception() is not None:
        app_log.error("resume failed: %s", call.exception())


class SuspendHandler(VerbHandler):
    """Final checkpoint of the home and the kernels, stop, host released."""

    verb = "suspend"
    fits = ("Running",)

    def refusal(self, state: str) -> str:
        if state in ("Suspended", "Stopped"):
            return "nothing to suspend"
        return "wait until it is Running"

    async def act(self, spawner: Any, state: str) -> None:
        await self.stop(spawner, {"reason": "request", "by": self.who})
        # batch jobs paused with the server: where each stopped, and that it resumes with it
        self.write_json({**(await self.describe(spawner)), "jobs": spawner.jobs_paused})


class ResumeHandler(VerbHandler):
    """Start on a new host and restore what the last stop kept (kernels under their ids)."""

    verb = "resume"
    fits = ("Suspended", "Stopped", "Failed")

    def refusal(self, state: str) -> str:
        if state == "Running":
            return "it is running already"
        return "wait until it has started"

    async def act(self, spawner: Any, state: str) -> None:
        wait = self.flag("wait")
        options = spawner.orm_spawner.user_options if spawner.orm_spawner else None
        # the same options as its last start (its profile, so its instance type). The hub
        # answers once the server runs or after its slow_spawn_timeout: answer as soon as
        # the start is under way (the spawn page's progress and GET tell the rest)
        call = asyncio.ensure_future(
            self.hub_call(spawner, "POST", {"user_options": options or None})
        )
        await self.until(spawner, lambda: call.done() or spawner.pending == "spawn")
        if call.done():
            call.result()  # the hub's refusal, as a 409 or 502
        else:
            call.add_done_callback(_log_failure)
        if wait:
            await self.until(spawner, lambda: spawner.ready or not spawner.pending)
            if not spawner.ready:
                raise error(500, f"{spawner.key} did not start: see its events")
        # a Stopped server kept nothing (cancelled, or stopped without a checkpoint): it
        # starts afresh, and the answer says so rather than "resumed"
        answer = {**(await self.describe(spawner)), "fresh": state == "Stopped"}
        self.write_json(answer, 200 if spawner.ready else 202)


class CancelHandler(VerbHandler):
    """Stop and discard the checkpoint: the next start is fresh. The answer says what went."""

    verb = "cancel"
    fits = ("Running", "Suspended", "Failed")

    def refusal(self, state: str) -> str:
        if state == "Stopped":
            return "nothing to cancel (no work is kept)"
        return "wait until it is Running or Suspended"

    async def lost(self, spawner: Any, state: str) -> str:
        kept = await self.last_checkpoint(spawner)
        what = []
        if state == "Running":
            what.append("the running kernels and their variables")
        else:
            what.append("the kernels' saved variables")
        if spawner.home_mode == "synced":
            if kept:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(kept["time"]))
                what.append(
                    f"the files of the home (checkpoint {kept['id']} of {when}, "
                    f"{kept['bytes']} bytes in {kept['files']} files)"
                )
            if state == "Running":
                what.append("every file changed since in the home")
        text = "Discarded: " + "; ".join(what) + ". The next start is fresh"
        if spawner.home_mode == "shared":
            text += " (files on shared storage stay)"
        return text + "."

    async def act(self, spawner: Any, state: str) -> None:
        lost = await self.lost(spawner, state)
        if state == "Running":
            await self.stop(spawner, {"reason": "request", "by": self.who, "discard": True})
        else:
            spawner.fresh_start = True
            spawner.checkpoint_id = None
            spawner.suspended = None
            spawner.save_state()
            self.controller.observer.record(
                spawner.key, "cancel", "request", by=self.who, detail=lost, lost_files=lost
            )
        # the checkpoints go from the store (their chunks at the next garbage collection)
        await self.controller.checkpoints.delete_async(spawner.key)
        self.write_json({**(await self.describe(spawner)), "lost": lost})


class HistoryHandler(APIHandler):
    async def get(self, username: str, server_name: str | None = None) -> None:
        spawner = self.spawner(username, server_name or "")
        limit = self.get_argument("limit", "")
        if limit and not (limit.isdigit() and int(limit) > 0):
            raise error(400, f"limit must be a positive integer, not {limit!r}")
        entries = self.controller.observer.history.entries(spawner.key, int(limit or 0) or None)
        self.write_json({"user": spawner.user.name, "server": spawner.name, "history": entries})


class NoticeHandler(JSONHandler):
    """Agents push reclaim notices here, signed with their host's own secret."""

    def initialize(self, controller: Controller) -> None:
        self.controller = controller

    def token(self) -> str:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() in {"token", "bearer"} else ""

    async def post(self) -> None:
        body = self.body()  # agents may send more than we read
        host = await self.controller.provider.get(str(body.get("host_id", "")))
        if host is None or not hmac.compare_digest(
            self.token().encode(), host.agent_token.encode()
        ):
            raise error(403, "unknown host or wrong host secret")
        rebalance = body.get("rebalance")
        if "deadline" not in body and isinstance(rebalance, dict):
            # a cloud's rebalance recommendation (EC2 metadata): the provider decides
            self.controller.provider.watcher.push_rebalance(host.id, rebalance)
            self.write_json({"rebalance": True}, 202)
            return
        deadline = body.get("deadline")
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise error(400, "deadline (epoch seconds) is required")
        if not math.isfinite(deadline):
            raise error(400, "deadline must be a finite number of epoch seconds")
        if deadline < time.time() - 600:
            raise error(400, "notice expired: its deadline passed long ago")
        # the host watcher's cache hears of it too (it is news only once, however it came)
        with self.controller.observer.pushing():
            self.controller.provider.watcher.push_notice(host.id, {"deadline": deadline})
        moving = self.controller.on_notice(host.id, deadline)
        self.write_json({"moving": moving}, 202)


def make_app(controller: Controller) -> web.Application:
    prefix = controller.base_url + "api/"
    server = r"(?P<username>[^/]+)(?:/(?P<server_name>[^/]*))?"
    plain = {"controller": controller}
    oauth = page.service_oauth(controller)
    args = {**plain, "hub_auth": oauth}
    # notices from the watcher's polls and the agents' pushes count in the metrics
    controller.observer.follow_notices(controller.provider.watcher)
    return web.Application(
        page.handlers(controller, oauth)
        + [
            (prefix + "hosts", HostsHandler, args),
            (prefix + r"hosts/(?P<host_id>[^/]+)/reclaim", ReclaimHandler, args),
            (prefix + "servers", ServersHandler, args),
            (prefix + "servers/" + server + "/migrate", MigrateHandler, args),
            (prefix + "servers/" + server + "/suspend", SuspendHandler, args),
            (prefix + "servers/" + server + "/resume", ResumeHandler, args),
            (prefix + "servers/" + server + "/cancel", CancelHandler, args),
            (prefix + "servers/" + server + "/history", HistoryHandler, args),
            (prefix + "servers/" + server, ServerHandler, args),
            (prefix + "notices", NoticeHandler, plain),
            *registration_handlers(prefix, controller),
            *gateway_handlers(prefix, APIHandler, args),
            *job_handlers(prefix, APIHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        **page.settings(controller),
    )
