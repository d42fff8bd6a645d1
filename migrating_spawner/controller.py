"""The hub-side controller: one per hub.

It owns the host provider and the checkpoint store, takes in reclaim notices (pushed by
agents and polled from them), and runs moves, a bounded number at once, the nearest
deadline first. It also serves the control API as a JupyterHub service (service/api.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

from traitlets import Float, Instance, Integer, Type, Unicode, default
from traitlets.config import SingletonConfigurable

from .agent.client import close_shared_session
from .checkpoint import (
    CheckpointStore,
    LocalCheckpointStore,
    SignedCheckpoints,
)
from .checkpoint.gc import GarbageCollector
from .history import ServerHistory
from .hosts.base import HostError, HostProvider
from .hosts.local import LocalHostProvider
from .hosts.pool import is_spare
from .hosts.watcher import LOST, HostEvent
from .move import SHORT_NOTICE, Move
from .moving import MovableServer, MoveError, MoveScheduler, RouteHold
from .observe import Observer
from .service.api import make_app

__all__ = ["MigratingController", "MoveError"]


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
        help="""Where checkpoints go: LocalCheckpointStore (a folder, the default) or
        "migrating_spawner.checkpoint.s3.S3CheckpointStore" (a bucket; set its `bucket`,
        `prefix`, `endpoint_url`, `region`). Host agents open the same store themselves.""",
    ).tag(config=True)

    store = Instance(CheckpointStore)

    @default("store")
    def _default_store(self) -> CheckpointStore:
        return self.store_class(parent=self, log=self.log)

    store_call_timeout = Float(
        60,
        help="""Seconds one checkpoint-store call of the hub (a manifest's commit or read, a
        listing, a delete) may take before it is tried again; the hub's event loop never
        waits on the store, these calls run in threads. A store's own request retries
        (S3CheckpointStore.max_attempts) happen within it.""",
    ).tag(config=True)

    store_call_tries = Integer(
        2,
        help="""Tries of a checkpoint-store call of the hub that did not answer within
        `store_call_timeout` (then it fails with a CheckpointError).""",
    ).tag(config=True)

    checkpoint_secret_file = Unicode(
        "jupyterhub_migrating_secret",
        help="""File holding the secret that signs checkpoint manifests (created if missing).

        Only the hub knows it: a checkpoint changed by anyone else fails verification.
        """,
    ).tag(config=True)

    max_concurrent_moves = Integer(
        4, help="Moves run at once; more wait, the nearest deadline first."
    ).tag(config=True)

    urgent_move_lead = Float(
        60,
        help="""Seconds before a notice's deadline at which a move still waiting for one of
        the `max_concurrent_moves` workers starts anyway, beside the others: the limit bounds
        the load of a reclaim storm, it must never cost a server its final checkpoint.""",
    ).tag(config=True)

    final_checkpoint_margin = Float(
        3,
        help="""Seconds before a notice's deadline at which the old server is frozen: its
        route held, its final checkpoint taken and the server stopped, whether or not the
        new server is ready yet. Larger homes with many changes need more.
        """,
    ).tag(config=True)

    short_notice_seconds = Float(
        SHORT_NOTICE,
        help="""A move with less than this many seconds between its start and its freeze
        (the deadline less `final_checkpoint_margin`) skips the pre-copies of kernels and
        home and starts the new server first: with a 5 s notice, a pre-copy only delays the
        new server, and the freeze would wait for it. The freeze then moves the kernels
        whole and the files changed since the last checkpoint. 0: always pre-copy.""",
    ).tag(config=True)

    move_ready_timeout = Float(
        180,
        help="""Seconds a move's new server gets to answer once started on its new host,
        before that host is given up (JupyterHub's `Spawner.http_timeout`, 30 s, is for the
        hub's own starts). The notice's deadline does not shorten it: the old server is
        frozen at the deadline anyway and requests wait in the proxy's hold meanwhile. A
        server start took 3-4 s on an idle 2-core machine, 14 s at load 6 and 55 s at
        load 13 (benchmarks/results.md, "Server start under load"): keep it well above
        what a loaded host takes, or a move gives up on a server about to answer.""",
    ).tag(config=True)

    move_tries = Integer(
        3,
        help="""New hosts a move tries in all once the old server no longer serves (frozen
        for the final checkpoint, or found dead): each retry starts the server on another
        host from the checkpoint the move already has, the route held all along. When all
        fail the server is stopped with that checkpoint kept (the next start resumes it).
        Before the freeze a failed move ends and the old server goes on serving (a standing
        notice is taken in again at the next watch interval).""",
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
        self._tasks: list[asyncio.Task] = []
        self._started: asyncio.Future | None = None
        self._secret: bytes | None = None
        self._events: dict[str, list[dict[str, Any]]] = {}
        # the move engine; the proxy hands in its route hold (use_route_hold)
        self.scheduler = MoveScheduler(
            make_move=self._make_move,
            workers=self.max_concurrent_moves,
            urgent_lead=self.urgent_move_lead,
            log=self.log,
            hub_started=lambda: self.hub_started,
            wait_hub_started=self._wait_hub_started,
        )
        # each server's history and the metrics, fed by the engine and the spawners
        self.observer = Observer(self, ServerHistory(parent=self, log=self.log))

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

    def register(self, server: MovableServer) -> None:
        """A server the scheduler may move (every MigratingSpawner registers itself)."""
        self.scheduler.register(server)

    def event_log(self, key: str) -> list[dict[str, Any]]:
        """The recent events of server `key` (its spawner appends and trims them). Kept
        here: JupyterHub drops a stopped server's Spawner, and `info` after a stop shows
        what the stop kept."""
        return self._events.setdefault(key, [])

    def forget_events(self, key: str) -> None:
        self._events.pop(key, None)

    @property
    def spawners(self) -> dict[str, MovableServer]:
        return self.scheduler.servers

    def use_route_hold(self, routes: RouteHold) -> None:
        """The proxy that holds routes during cut-overs (MigratingProxy hands itself in)."""
        self.scheduler.routes = routes

    async def ensure_started(self) -> None:
        """Start the API server, the notice poller and the move workers (once)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        # agents push notices to the API; a simulated cloud may run its spot market
        self._tasks += self.provider.start(self.api_url + self.base_url + "api/notices")
        http = make_app(self).listen(self.api_port, self.api_ip)
        self.scheduler.start()
        # notices from the host watcher's polls and the agents' pushes; a standing one is
        # taken in again each watch interval (whether a host is lost is poll()'s call)
        self._tasks.append(asyncio.create_task(self.scheduler.follow(self.provider.watcher)))
        # ... and poll() is called as soon as the watcher calls a host lost
        self.provider.watcher.subscribe(self._on_host_event)
        self._tasks.append(asyncio.create_task(self._release_orphans(time.time())))
        # unreferenced chunks go on a timer when GarbageCollector.interval is set (off: 0)
        gc = GarbageCollector(parent=self, log=self.log)
        self._tasks.append(asyncio.create_task(gc.run_forever(self.checkpoints)))
        self._tasks.append(asyncio.create_task(self._spares_at_hub_stop()))
        self._http = http
        self.log.info("migrate API at http://%s:%d%s", self.api_ip, self.api_port, self.base_url)

    async def _release_orphans(self, started: float) -> None:
        """Release hosts no server knows about, left by a hub that died mid-acquire, except
        spare hosts (adopted by the provider's pool, which starts filling from there).

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
        spares = []
        for host in await self.provider.list_hosts():
            created = host.meta.get("created", started)
            if host.id in known or created >= started:
                continue
            if is_spare(host):
                spares.append(host)  # a spare of the hub before this one: the pool's
                continue
            self.log.warning("releasing orphan host %s (no server refers to it)", host.id)
            try:
                await self.provider.release(host)
            except HostError as e:
                self.log.error("could not release orphan host %s: %s", host.id, e)
        # the spare hosts kept (HostProvider.spare_hosts): found again, then kept filled
        await self.provider.spares.adopt(spares)

    async def _spares_at_hub_stop(self) -> None:
        """At a clean hub stop, give the spare hosts back when the hub stopped its servers
        (`JupyterHub.cleanup_servers`, the default: nobody pays for idle spares); keep them
        for the next hub to adopt when it left them running.

        JupyterHub has no shutdown hook for this object: its `shutdown_cancel_tasks` (Ctrl-C,
        SIGTERM) runs `cleanup` (the servers' stops) and then cancels every task, this one
        too, and waits for them. A hub that dies uncleanly leaves the spares to the next.
        """
        try:
            await asyncio.Event().wait()  # (nothing sets it: only the hub's stop ends this)
        except asyncio.CancelledError:
            release = bool(self.app.cleanup_servers)
            self.log.info("hub stopping: %s spare hosts", "releasing" if release else "keeping")
            await self.provider.spares.stop(release=release)
            # (the hub closed its HTTP client in cleanup: the releases used this loop's own)
            await close_shared_session()
            raise

    def _on_host_event(self, event: HostEvent) -> None:
        """A host the watcher calls lost (its polls failed, or the cloud said it ended
        without a notice): the hub's poll of each server on it runs now, not at the next
        `Spawner.poll_interval` (30 s), so the server comes back from its checkpoint at
        once; poll() decides as always."""
        if event.kind != LOST:
            return
        for server in self.spawners_on(event.host.id):
            if not self.is_moving(server):
                # the hub's servers are its Spawners (JupyterHub's poll and callbacks)
                asyncio.ensure_future(server.poll_and_notify())  # type: ignore[attr-defined]

    # -- checkpoints -------------------------------------------------------------

    _checkpoints: SignedCheckpoints | None = None

    @property
    def checkpoints(self) -> SignedCheckpoints:
        """Commits (signs, stores the manifest last) and loads (verifies) checkpoints."""
        if self._checkpoints is None or self._checkpoints.store is not self.store:
            self._checkpoints = SignedCheckpoints(
                self.store,
                lambda: self.secret,
                timeout=self.store_call_timeout,
                tries=self.store_call_tries,
            )
        return self._checkpoints

    # -- notices --------------------------------------------------------------------

    def spawners_on(self, host_id: str) -> list[MovableServer]:
        return self.scheduler.servers_on(host_id)

    def on_notice(self, host_id: str, deadline: float) -> list[str]:
        """A host will be reclaimed at `deadline`: move every server on it (idempotent;
        every caller hears the same servers). See MoveScheduler.on_notice."""
        return self.scheduler.on_notice(host_id, deadline)

    # -- moves ---------------------------------------------------------------------

    def schedule_move(
        self, server: MovableServer, reason: str, deadline: float | None = None
    ) -> asyncio.Future:
        """Queue a move; the nearest deadline goes first. Returns a future of its result."""
        return self.scheduler.schedule(server, reason, deadline)

    async def wait_for_move(self, server: MovableServer) -> None:
        await self.scheduler.wait_for(server)

    def is_moving(self, server: MovableServer) -> bool:
        return self.scheduler.is_moving(server.key)

    def _make_move(self, server: MovableServer, reason: str, deadline: float) -> Move:
        return Move.scheduled(
            self.scheduler,
            self.provider,
            self.final_checkpoint_margin,
            server,
            reason,
            deadline,
            ready_timeout=self.move_ready_timeout,
            tries=self.move_tries,
            short_notice=self.short_notice_seconds,
        )

    def host_lost(self, server: MovableServer) -> int | None:
        """A host vanished without notice: bring the server back from its last checkpoint
        (what poll() answers; see MoveScheduler.host_lost)."""
        asyncio.ensure_future(self.ensure_started())
        return self.scheduler.host_lost(server)

    async def settle_interrupted_move(self, server: MovableServer) -> int | None:
        """A hub restart cut a move short (see MoveScheduler.settle); what poll() answers."""
        return await self.scheduler.settle(server)

    def recover(self, server: MovableServer) -> None:
        """After a hub restart in the middle of a move: settle it, once, after start."""
        asyncio.ensure_future(self.ensure_started())
        self.scheduler.recover(server)

    # -- used by the API -------------------------------------------------------------

    async def reclaim(self, host_id: str, notice_seconds: float) -> dict[str, Any]:
        """Reclaim a host with a notice (local hosts); returns the notice and the servers
        that move off it (the same answer the agent's own push gets)."""
        cloud = self.provider.simulated_cloud
        if cloud is None:
            raise HostError(f"the {self.provider.name} provider cannot reclaim hosts on request")
        host = await self.provider.get(host_id)
        if host is None:
            raise HostError(f"no host {host_id}")
        if notice_seconds < self.final_checkpoint_margin:
            # the host dies at once: hold its servers' routes first, so no request (or
            # websocket reconnect) meets the dead server; the move releases them
            for server in self.spawners_on(host_id):
                if server.movable:
                    await self.scheduler.routes.hold(server)
        notice = await cloud.reclaim(host, notice_seconds)
        # don't wait for the agent's push or the next poll
        return {"notice": notice, "moving": self.on_notice(host_id, notice["deadline"])}
