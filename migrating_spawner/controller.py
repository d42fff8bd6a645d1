"""The hub-side controller: one per hub.

It owns the host provider and the checkpoint store, takes in reclaim notices (pushed by
agents and polled from them), and runs moves, a bounded number at once, the nearest
deadline first. It also serves the control API as a JupyterHub service (service/api.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Float, Instance, Integer, Type, Unicode, default
from traitlets.config import SingletonConfigurable

from .agent.client import AgentClient, AgentError
from .checkpoint import (
    CheckpointStore,
    LocalCheckpointStore,
    Manifest,
    SignedCheckpoints,
)
from .hosts.base import HostError, HostProvider
from .hosts.local import LocalHostProvider

if TYPE_CHECKING:
    from .spawner import MigratingSpawner


class MoveError(Exception):
    """A move could not be completed."""


class MigratingController(SingletonConfigurable):
    """Notice intake, move orchestration and concurrency limits for one hub."""

    provider_class = Type(
        LocalHostProvider,
        klass=HostProvider,
        help="The HostProvider that gives hosts: LocalHostProvider (default) or an EC2 one.",
    ).tag(config=True)

    provider = Instance(HostProvider)

    @default("provider")
    def _default_provider(self) -> HostProvider:
        return self.provider_class(parent=self, log=self.log)

    store_class = Type(
        LocalCheckpointStore,
        klass=CheckpointStore,
        help="Where checkpoints go: LocalCheckpointStore (a folder) or an S3 one.",
    ).tag(config=True)

    store = Instance(CheckpointStore)

    @default("store")
    def _default_store(self) -> CheckpointStore:
        return self.store_class(parent=self, log=self.log)

    checkpoint_secret_file = Unicode(
        "jupyterhub_migrating_secret",
        help="""File holding the secret that signs checkpoint manifests (created if missing).

        Only the hub knows it: a checkpoint changed by anyone else fails verification.
        """,
    ).tag(config=True)

    max_concurrent_moves = Integer(
        4, help="Moves run at once; more wait, the nearest deadline first."
    ).tag(config=True)

    final_checkpoint_margin = Float(
        3,
        help="""Seconds before a notice's deadline at which the old server is frozen: its
        route held, its final checkpoint taken and the server stopped, whether or not the
        new server is ready yet. Larger homes with many changes need more.
        """,
    ).tag(config=True)

    notice_poll_interval = Float(
        5, help="Seconds between polls of every host for notices (AWS suggests 5)."
    ).tag(config=True)

    api_ip = Unicode(
        "127.0.0.1", help="Address the control API (the `migrate` service) binds."
    ).tag(config=True)

    api_port = Integer(8095, help="Port of the control API; the service's `url` points here.").tag(
        config=True
    )

    api_url = Unicode(
        help="URL agents push notices to (defaults to the control API's own address)."
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self) -> str:
        return f"http://{self.api_ip}:{self.api_port}"

    service_name = Unicode("migrate", help="Name of the JupyterHub service for the API.").tag(
        config=True
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.spawners: dict[str, MigratingSpawner] = {}
        self._moves: dict[str, asyncio.Future] = {}
        # host id -> {"deadline", "moving": [server keys]}: what on_notice answered
        self._notices: dict[str, dict[str, Any]] = {}
        # moves queue up from the start; workers take them once the hub has started
        self._queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._started: asyncio.Future | None = None
        self._recovering: set[str] = set()
        self._secret: bytes | None = None

    # -- wiring -------------------------------------------------------------

    @property
    def app(self):
        """The running JupyterHub (this object lives in the hub process)."""
        from jupyterhub.app import JupyterHub

        return JupyterHub.instance()

    @property
    def base_url(self) -> str:
        return self.app.base_url + f"services/{self.service_name}/"

    @property
    def hub_started(self) -> bool:
        """Whether the hub has finished starting (its startup checks are done)."""
        future = getattr(self.app, "_start_future", None)
        return future is None or future.done()

    async def _wait_hub_started(self) -> None:
        # The hub checks every running server at start (GET on its URL, for up to
        # http_timeout): a move in that window would make it shut the server down.
        future = getattr(self.app, "_start_future", None)
        if future is not None:
            await asyncio.shield(future)

    async def _wait_checked(self, spawner: MigratingSpawner, timeout: float = 120) -> None:
        """Wait while the hub's startup check of this server runs (see _wait_hub_started)."""
        deadline = time.monotonic() + timeout
        while spawner._check_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            path = Path(self.checkpoint_secret_file)
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
            self._secret = bytes.fromhex(path.read_text().strip())
        return self._secret

    def register(self, spawner: MigratingSpawner) -> None:
        self.spawners[spawner.key] = spawner

    async def ensure_started(self) -> None:
        """Start the API server, the notice poller and the move workers (once)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        from .service.api import make_app

        if isinstance(self.provider, LocalHostProvider):
            self.provider.notify_url = self.api_url + self.base_url + "api/notices"
        http = make_app(self).listen(self.api_port, self.api_ip)
        self._tasks = [
            asyncio.create_task(self._move_worker()) for _ in range(self.max_concurrent_moves)
        ]
        self._tasks.append(asyncio.create_task(self._poll_notices()))
        self._tasks.append(asyncio.create_task(self._release_orphans(time.time())))
        if isinstance(self.provider, LocalHostProvider) and self.provider.spot_reclaim_rate > 0:
            self._tasks.append(asyncio.create_task(self.provider.simulate_spot_market()))
        self._http = http
        self.log.info("migrate API at http://%s:%d%s", self.api_ip, self.api_port, self.base_url)

    async def _release_orphans(self, started: float) -> None:
        """Release hosts no server knows about, left by a hub that died mid-acquire.

        Only hosts older than this hub process count: younger ones may be moves in flight.
        """
        from jupyterhub import orm

        await self._wait_hub_started()
        known: set[str] = set()
        for orm_spawner in self.app.db.query(orm.Spawner):
            state = orm_spawner.state or {}
            move = state.get("move") or {}
            for host in (state.get("host"), move.get("new_host"), move.get("old_host")):
                if host:
                    known.add(host["id"])
        for host in await self.provider.list_hosts():
            created = host.meta.get("created", started)
            if host.id not in known and created < started:
                self.log.warning("releasing orphan host %s (no server refers to it)", host.id)
                try:
                    await self.provider.release(host)
                except HostError as e:
                    self.log.error("could not release orphan host %s: %s", host.id, e)

    # -- checkpoints -------------------------------------------------------------

    _checkpoints: SignedCheckpoints | None = None

    @property
    def checkpoints(self) -> SignedCheckpoints:
        """Commits (signs, stores the manifest last) and loads (verifies) checkpoints."""
        if self._checkpoints is None or self._checkpoints.store is not self.store:
            self._checkpoints = SignedCheckpoints(self.store, lambda: self.secret)
        return self._checkpoints

    def commit_checkpoint(
        self, key: str, files: dict[str, Any], parent: str | None, meta: dict[str, Any]
    ) -> str:
        return self.checkpoints.commit(key, files, parent=parent, meta=meta).id

    def load_checkpoint(self, key: str, checkpoint_id: str) -> Manifest:
        return self.checkpoints.load(key, checkpoint_id)

    # -- notices --------------------------------------------------------------------

    def spawners_on(self, host_id: str) -> list[MigratingSpawner]:
        return [s for s in self.spawners.values() if s.host and s.host.id == host_id]

    def on_notice(self, host_id: str, deadline: float) -> list[str]:
        """A host will be reclaimed at `deadline`: move every server on it.

        The one intake for every notice: the agent's push, the poller and the API's reclaim
        call all come here, in any order and as often as they like. Keyed by host, it is
        idempotent: each caller gets the same answer, the servers moving off that host
        (whoever scheduled their moves first).
        """
        self._forget_old_notices()
        intake = self._notices.setdefault(host_id, {"deadline": deadline, "moving": []})
        intake["deadline"] = min(intake["deadline"], deadline)
        moving = intake["moving"]
        for spawner in self.spawners_on(host_id):
            if spawner.key not in self._moves:
                if spawner.server is None:
                    continue
                # a first notice, or a move of it that failed: (re)try while the host lives
                seconds = intake["deadline"] - time.time()
                spawner.emit(
                    f"Host {host_id} will be reclaimed in {seconds:.0f} s: moving",
                    level="warning",
                )
                self.schedule_move(spawner, f"reclaim notice for {host_id}", intake["deadline"])
            # moving now (also a `migrate`, or a notice taken a moment ago): every caller
            # hears of it
            if spawner.key not in moving:
                moving.append(spawner.key)
        return list(moving)

    def _forget_old_notices(self, keep: float = 600) -> None:
        # host ids are never reused: a notice long past its deadline has nothing to tell
        now = time.time()
        for host_id in [h for h, n in self._notices.items() if n["deadline"] < now - keep]:
            del self._notices[host_id]

    async def _poll_notices(self) -> None:
        await self._wait_hub_started()
        while True:
            await asyncio.sleep(self.notice_poll_interval)
            for spawner in list(self.spawners.values()):
                host = spawner.host
                if host is None or spawner.server is None or spawner.key in self._moves:
                    continue
                try:
                    notice = await AgentClient(host, timeout=3, retries=0).notice()
                except AgentError:
                    continue  # poll() decides whether an unreachable host is lost
                if notice:
                    self.on_notice(host.id, notice["deadline"])

    # -- moves ---------------------------------------------------------------------

    def schedule_move(
        self, spawner: MigratingSpawner, reason: str, deadline: float | None = None
    ) -> asyncio.Future:
        """Queue a move; the nearest deadline goes first. Returns a future of its result."""
        if spawner.key in self._moves:
            return self._moves[spawner.key]
        future = asyncio.get_running_loop().create_future()
        self._moves[spawner.key] = future
        spawner.moving = True  # poll() says alive from now on
        deadline = deadline or time.time() + 3600
        self._queue.put_nowait((deadline, next(self._order), spawner, reason, future))
        return future

    async def wait_for_move(self, spawner: MigratingSpawner) -> None:
        future = self._moves.get(spawner.key)
        if future:
            await asyncio.wait([future])

    def is_moving(self, spawner: MigratingSpawner) -> bool:
        return spawner.key in self._moves

    async def _move_worker(self) -> None:
        await self._wait_hub_started()
        while True:
            deadline, _, spawner, reason, future = await self._queue.get()
            try:
                await self._wait_checked(spawner)
                result = await self._run_move(spawner, reason, deadline)
            except Exception as e:
                self.log.exception("move of %s failed", spawner._log_name)
                spawner.emit(f"Move failed: {e}", level="error")
                if not future.done():
                    future.set_exception(MoveError(str(e)))
                    future.exception()  # retrieved: callers may not await it
            else:
                if not future.done():
                    future.set_result(result)
            finally:
                spawner.moving = False
                self._moves.pop(spawner.key, None)

    async def _run_move(self, spawner: MigratingSpawner, reason: str, deadline: float) -> dict:
        from .move import Move

        return await Move(self, spawner, reason, deadline).run()

    def host_lost(self, spawner: MigratingSpawner) -> int | None:
        """A host vanished without notice: bring the server back from its last checkpoint."""
        if spawner.home_mode == "synced" and not spawner.checkpoint_id:
            spawner.emit(f"Host {spawner.host.id} was lost and no checkpoint exists", level="error")
            return 1
        if not self.hub_started or spawner._check_pending:
            # the hub is checking servers at start and would stop this one mid-move;
            # let it: the checkpoint stays and the next start resumes from it
            spawner.emit(f"Host {spawner.host.id} was lost while the hub was down", level="warning")
            return 1
        spawner.emit(f"Host {spawner.host.id} was lost without notice: restoring", level="warning")
        asyncio.ensure_future(self.ensure_started())
        self.schedule_move(spawner, f"host {spawner.host.id} lost", time.time())
        return None

    def recover(self, spawner: MigratingSpawner) -> None:
        """After a hub restart in the middle of a move: settle it, once, after start."""
        if spawner.key in self._recovering:
            return
        self._recovering.add(spawner.key)
        task = asyncio.ensure_future(self._recover(spawner))
        task.add_done_callback(lambda _: self._recovering.discard(spawner.key))

    async def _recover(self, spawner: MigratingSpawner) -> None:
        from .move import settle_interrupted_move

        try:
            await self.ensure_started()
            await self._wait_hub_started()
            await self._wait_checked(spawner)
            await settle_interrupted_move(self, spawner)
        except Exception:
            self.log.exception("could not settle the interrupted move of %s", spawner._log_name)

    # -- used by the API -------------------------------------------------------------

    async def reclaim(self, host_id: str, notice_seconds: float) -> dict[str, Any]:
        """Reclaim a host with a notice (local hosts); returns the notice and the servers
        that move off it (the same answer the agent's own push gets)."""
        host = await self.provider.get(host_id)
        if host is None:
            raise HostError(f"no host {host_id}")
        if notice_seconds < self.final_checkpoint_margin:
            # the host dies at once: hold its servers' routes first, so no request (or
            # websocket reconnect) meets the dead server; the move releases them
            for spawner in self.spawners_on(host_id):
                proxy = spawner.user.settings.get("proxy") or self.app.proxy
                if spawner.server is not None and hasattr(proxy, "hold"):
                    await proxy.hold(spawner)
        notice = await self.provider.reclaim(host, notice_seconds)
        # don't wait for the agent's push or the next poll
        return {"notice": notice, "moving": self.on_notice(host_id, notice["deadline"])}
