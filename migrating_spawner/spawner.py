"""MigratingSpawner: user servers on reclaimable hosts that move instead of dying.

The spawner starts `jupyterhub-singleuser` on a host from a HostProvider through the host's
agent, and keeps what it needs to find that server again (host, port, last checkpoint) in
its state. Moves are run by the hub-wide MigratingController (controller.py); this class
holds the per-server steps a move is made of.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from jupyterhub.spawner import Spawner, SpawnException
from jupyterhub.utils import url_path_join
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Bool, Enum, Float, List, Unicode, default

from . import profiles as profiles_mod
from .agent.client import AgentClient, AgentError, send
from .batch.messages import job_paused_message
from .checkpoint import CheckpointError, Manifest, checkpoint_time, new_checkpoint_id
from .controller import MigratingController
from .history import (
    CANCEL,
    LOSS,
    SUSPEND,
    checkpoint_summary,
    hub_shutting_down,
    human_bytes,
    requester,
)
from .hosts.base import Host, HostError, ServerAPIError
from .kernelstate import lost_message
from .moving import MoveRecord
from .serverspec import ServerSettings, build_server_spec, home_folder
from .singleuser import JUPYTER_CONFIG_DIR
from .tcpgateway import TCPGateway

#: bump when the shape of get_state() changes; load_state() reads older versions
#: (2: the pre-copy parent is an id, "precopy_id", no longer a file table, "precopy")
STATE_VERSION = 2

#: the agent's name for the user server process
SERVER_PROCESS = "server"


class MigratingSpawner(Spawner):
    """Start servers on hosts from a provider, and move them when a host is reclaimed."""

    home_mode = Enum(
        ["shared", "synced"],
        default_value="shared",
        help="""Where users' home folders live.

        - `shared`: on storage every host mounts (EFS/NFS; locally a folder outside the
          host disks, `shared_home_root`). Nothing to copy on a move.
        - `synced`: on the host's own disk. Pushed to the checkpoint store in content-
          addressed chunks (a background pre-copy keeps the final delta small) and restored
          on the new host.
        """,
    ).tag(config=True)

    shared_home_root = Unicode(
        help="""Folder holding users' homes in `shared` mode; every host must mount it.

        Defaults to `migrating-homes/` in the hub's working directory (local hosts).
        """
    ).tag(config=True)

    @default("shared_home_root")
    def _default_shared_home_root(self) -> str:
        return os.path.abspath("migrating-homes")

    home_exclude = List(
        Unicode(),
        default_value=[".local/share/jupyter/runtime/jpserver-*", ".cache/*"],
        help="Glob patterns (relative to the home) that synced homes do not copy.",
    ).tag(config=True)

    precopy_interval = Float(
        30,
        help="""Seconds between background checkpoints of a synced home while it runs.

        Keeps the final checkpoint of a move small, and bounds what a host lost without
        notice can lose. 0 turns the pre-copy off.
        """,
    ).tag(config=True)

    checkpoint_on_stop = Bool(
        True,
        help="""Keep a checkpoint when the server stops, and resume from it on the next start.

        With this on, JupyterHub's stop button and jupyterhub-idle-culler suspend a server
        instead of destroying its work.
        """,
    ).tag(config=True)

    checkpoint_timeout = Float(
        300, help="Seconds a home snapshot or restore may take before it is given up."
    ).tag(config=True)

    stop_grace = Float(
        5, help="Seconds a stopping server gets after SIGTERM before it is killed."
    ).tag(config=True)

    profiles = List(
        default_value=profiles_mod.DEFAULT_PROFILES,
        help="""Profiles offered on the spawn page: a list of dicts with `slug`,
        `display_name`, `description`, and optionally `instance_type`, `default_url`,
        `cmd`, `requires` (a command that must exist for the profile to be offered,
        e.g. `rserver` for RStudio) and `default: True`.
        """,
    ).tag(config=True)

    @default("start_timeout")
    def _default_start_timeout(self):
        # a start may acquire a host, restore a home from its checkpoint and bring the
        # kernels back: more than JupyterHub's 60 s for a plain local process
        return 300

    @default("oauth_client_allowed_scopes")
    def _default_oauth_client_allowed_scopes(self):
        # the token JupyterHub puts in the server's pages (PageConfig.token) is this OAuth
        # client's: with these the JupyterLab widget asks the migrate service about this
        # server, and migrates or suspends it, also while the server is frozen in a move.
        # JupyterHub grants them only where the user holds them (e.g. extra_user_scopes)
        return [
            f"access:services!service={self.controller.service_name}",
            f"servers!server={self.user.name}/{self.name}",
        ]

    @default("options_form")
    def _default_options_form(self):
        return type(self)._resume_form

    def _resume_form(self) -> str:
        """The profiles; for a suspended server its own one ticked, and a line that a
        start resumes it (files and kernels kept, from which checkpoint)."""
        if not (self.suspended or self.checkpoint_id) or self.fresh_start:
            return profiles_mod.render_form(self._profiles())
        created = self.checkpoint_time(self.checkpoint_id) if self.checkpoint_id else None
        when = created or self.suspended
        stamp = time.strftime(" of %Y-%m-%d %H:%M:%S", time.localtime(when)) if when else ""
        kept = (
            f"from checkpoint {self.checkpoint_id}{stamp}"
            if self.checkpoint_id
            else f"files on shared storage, kernels as suspended{stamp}"
        )
        note = (
            f"Start resumes this server where it was suspended: its files and kernels are "
            f"kept ({kept}). Its profile is ticked; another one resumes it on that kind of "
            f"host."
        )
        chosen = (self.user_options or {}).get("profile")
        return profiles_mod.render_form(self._profiles(), chosen=chosen, note=note)

    @default("options_from_form")
    def _default_options_from_form(self):
        return self._checked_options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub >= 5.3 warns of user_options no hook handled; the profile is applied
        # in start(). A REST spawn with a bad profile gets a 400 before any host is asked for
        return type(self)._check_user_options

    def _check_user_options(self, user_options: dict[str, Any]) -> None:
        try:
            profiles_mod.choose_profile(self._profiles(), user_options.get("profile"))
        except profiles_mod.ProfileError as e:
            raise web.HTTPError(400, str(e)) from None

    def _checked_options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        options = profiles_mod.options_from_form(formdata)
        # raising here puts the message on the spawn page next to the form
        profiles_mod.choose_profile(self._profiles(), options["profile"])
        return options

    # -- runtime state (kept in get_state) ---------------------------------------

    host: Host | None = None
    checkpoint_id: str | None = None
    # the last home checkpoint taken or restored: the agent that holds its file table
    # snapshots only what changed since (the table itself never enters the hub's db)
    precopy_id: str | None = None
    move_record: dict[str, Any] | None = None  # a move under way (survives a hub restart)
    delivered_seals: list[str] = []  # held cells already redelivered (see singleuser/gate.py)
    kernels_stale = False  # the last stop could not snapshot the kernels
    suspended: float | None = None  # when a stop kept the server's work (epoch seconds)
    fresh_start = False  # a cancel discarded the work: the next start restores nothing
    # why the next stop happens and who asked (the API's verbs say; else found out)
    stop_request: dict[str, Any] | None = None
    # what the last freeze said of the server's batch jobs (a Suspend's answer tells it)
    jobs_paused: list[str] = []

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._first_event = 0  # where this start's events begin (progress() sends those)
        self._new_event = asyncio.Event()
        self._precopy_task: asyncio.Task | None = None
        self.controller.register(self)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        # the control API and notice intake come up with the first spawner, too, so a
        # hub with plain ConfigurableHTTPProxy has them
        asyncio.ensure_future(self.controller.ensure_started())

    @property
    def controller(self) -> MigratingController:
        return MigratingController.instance(config=self.config)

    @property
    def moving(self) -> bool:
        """A move of this server is queued or running (the scheduler is the one to know)."""
        return self.controller.is_moving(self)

    @property
    def movable(self) -> bool:
        return self.server is not None and not self._stop_pending

    @property
    def check_pending(self) -> bool:
        return self._check_pending

    @property
    def agent(self) -> AgentClient:
        if self.host is None:
            raise HostError(f"{self._log_name} has no host")
        return self.controller.provider.agent(self.host)

    @property
    def key(self) -> str:
        """This server's name in the checkpoint store and the API: 'user/server'."""
        return f"{self.user.name}/{self.name}"

    # -- state -------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if not state:
            return
        version = state.get("version", 1)
        if version > STATE_VERSION:
            self.log.warning("state of %s is from a newer version %s", self._log_name, version)
        host = state.get("host")
        self.host = Host.from_dict(host) if host else None
        if self.host and state.get("port"):
            self.port = state["port"]
            self.ip = self.host.address
        self.checkpoint_id = state.get("checkpoint_id")
        self.precopy_id = state.get("precopy_id")
        if version < 2 and isinstance(state.get("precopy"), dict):
            # version 1 kept the whole file table; its id is all the agent needs
            self.precopy_id = state["precopy"].get("id")
        self.move_record = state.get("move")
        self.delivered_seals = list(state.get("delivered_seals") or [])
        self.kernels_stale = bool(state.get("kernels_stale"))
        self.suspended = state.get("suspended")
        self.fresh_start = bool(state.get("fresh_start"))
        # the running server's token: a move after a hub restart starts its successor
        # with it and calls its API (the hub keeps only a hash of it)
        self.api_token = state.get("api_token") or self.api_token

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["version"] = STATE_VERSION
        if self.host:
            state["host"] = self.host.to_dict()
            state["port"] = self.port
            if self.api_token:
                state["api_token"] = self.api_token
        if self.checkpoint_id:
            state["checkpoint_id"] = self.checkpoint_id
        if self.precopy_id:
            state["precopy_id"] = self.precopy_id
        if self.move_record:
            state["move"] = self.move_record
        if self.delivered_seals:
            state["delivered_seals"] = self.delivered_seals
        if self.kernels_stale:
            state["kernels_stale"] = True
        if self.suspended:
            state["suspended"] = self.suspended
        if self.fresh_start:
            state["fresh_start"] = True
        return state

    def clear_state(self) -> None:
        # the checkpoint stays: the next start resumes from it
        super().clear_state()
        self.host = None
        self.precopy_id = None
        self.move_record = None
        # what this run committed was handed over in memory; a resume reads and verifies
        self.controller.checkpoints.forget(self.key)
        if not self.checkpoint_on_stop or self.fresh_start:
            # a cancel: the checkpoint is discarded (the API deletes it from the store)
            self.checkpoint_id = None
            self.suspended = None

    def save_state(self) -> None:
        """Write state to the hub database now (mid-move, so a hub restart can recover)."""
        # the session the hub loaded this row with (Spawner.db is deprecated)
        session = object_session(self.orm_spawner) if self.orm_spawner is not None else None
        if session is not None:
            self.orm_spawner.state = self.get_state()
            session.commit()

    async def delete_forever(self) -> None:
        """The named server (or the user) is deleted: its checkpoints go too."""
        await self.controller.checkpoints.delete_async(self.key)
        self.controller.forget_events(self.key)
        self.controller.observer.history.forget(self.key)

    # -- events shown to the user ---------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """This server's recent events (the controller keeps them: JupyterHub drops a
        stopped server's Spawner, and the next one shows what the stop did)."""
        return self.controller.event_log(self.key)

    def emit(self, message: str, progress: int | None = None, level: str = "info") -> None:
        self._new_event.set()  # progress() sends it at once
        event: dict[str, Any] = {"message": message, "time": time.time()}
        if progress is not None:
            event["progress"] = progress
        events = self.events
        events.append(event)
        excess = len(events) - 200
        if excess > 0:
            del events[:excess]
            self._first_event = max(0, self._first_event - excess)
        getattr(self.log, level)("%s: %s", self._log_name, message)

    async def progress(self):
        sent = 0  # counted from this start's first event
        while True:
            self._new_event.clear()
            while self._first_event + sent < len(self.events):
                event = self.events[self._first_event + sent]
                sent += 1
                yield {k: v for k, v in event.items() if k in ("message", "progress")}
            if self.ready or not self._spawn_pending:
                break
            # woken by the next event: the hub stops listening when the start ends, and
            # only an event already yielded by then reaches the spawn page
            try:
                await asyncio.wait_for(self._new_event.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    # -- profiles ------------------------------------------------------------------

    def _profiles(self) -> list[dict[str, Any]]:
        return profiles_mod.available_profiles(self.profiles)

    def _profile(self) -> dict[str, Any]:
        try:
            return profiles_mod.choose_profile(self._profiles(), self.user_options.get("profile"))
        except profiles_mod.ProfileError as e:
            raise SpawnException(str(e), reason="profile", status_code=400) from None

    # -- where things live -------------------------------------------------------------

    def home_on(self, host: Host) -> str:
        return home_folder(self.home_mode, self.shared_home_root, self.user.name, self.name, host)

    def get_args(self) -> list[str]:
        args = list(super().get_args())  # the base class returns the trait's own list
        if os.geteuid() == 0 and "--allow-root" not in args:
            # local hosts run servers as the hub's own user; as root that needs the flag
            args.append("--allow-root")
        return args

    kernel_snapshot_interval = Float(
        30,
        help="""Seconds between background snapshots of idle kernels that ran something.

        Bounds what a host lost without notice loses: at most what ran since. 0 turns
        background snapshots off (moves still take a final one).
        """,
    ).tag(config=True)

    kernel_state_timeout = Float(
        60, help="Seconds a move may spend snapshotting or restoring kernels."
    ).tag(config=True)

    kernel_precopy = Bool(
        True,
        help="""Pre-copy kernel state when a move starts: snapshot the kernels while they
        serve, restore them ahead into kernels started under the same ids on the new server,
        and ship only what cells changed since in the freeze. False: the freeze snapshots
        and restores every kernel whole (the path before issue 14).
        """,
    ).tag(config=True)

    rstudio_suspend_grace = Float(
        10,
        help="""Seconds an RStudio session gets to suspend itself at a move or stop.

        The server sends its `rsession` SIGUSR1 (RStudio's `suspend-session`, which waits
        for R to be idle at its prompt); after this grace SIGUSR2 (`force-suspend-session`:
        the running R code is interrupted, and the user is told). Bounded by the move's
        deadline either way.
        """,
    ).tag(config=True)

    def server_settings(self) -> ServerSettings:
        """The host-independent half of the server's spec (serverspec.build_server_spec)."""
        # enables the singleuser extension that snapshots and restores kernels
        config_path = [JUPYTER_CONFIG_DIR, os.environ.get("JUPYTER_CONFIG_PATH", "")]
        return ServerSettings(
            cmd=[*self.cmd, *self.get_args()],
            env=super().get_env(),
            user=self.user.name,
            server_name=self.name,
            base_url=self.server.base_url if self.server else "/",
            home_mode=self.home_mode,
            shared_home_root=self.shared_home_root,
            config_path=os.pathsep.join(p for p in config_path if p),
            snapshot_interval=self.kernel_snapshot_interval,
            proto="https" if self.internal_ssl else "http",
            keep_service_url="JUPYTERHUB_SERVICE_URL" in self.environment,
        )

    def get_env(self) -> dict[str, str]:
        """The server's environment on its current host (a move builds the next one's
        with build_server_spec, leaving host/ip/port alone)."""
        settings = self.server_settings()
        if self.host:
            return build_server_spec(settings, self.host, self.port).env
        env = dict(settings.env)
        env["JUPYTER_CONFIG_PATH"] = settings.config_path
        env["JUPYTERHUB_MIGRATING_SNAPSHOT_INTERVAL"] = str(settings.snapshot_interval)
        return env

    async def get_url(self) -> str:
        if self.host is None or self.server is None:
            return await super().get_url()
        return f"http://{self.host.address}:{self.port}" + self.server.base_url

    # -- start / poll / stop ---------------------------------------------------------

    def _resume_refused(self, error: CheckpointError) -> SpawnException:
        """The spawn error of a checkpoint that cannot be restored (recorded in the history):
        it says the checkpoint is kept and how to start fresh instead."""
        self.controller.observer.record(
            self.key,
            "resume",
            "request",
            outcome="failed",
            error=str(error),
            checkpoint_id=self.checkpoint_id,
        )
        target = self.user.name + (f"/{self.name}" if self.name else "")
        return SpawnException(
            f"Cannot resume from checkpoint {self.checkpoint_id}: {error}. It is kept: "
            f"`jupyterhub-migrate cancel {target}` discards it, so that the next start is "
            "fresh (what it held is lost)",
            reason="checkpoint",
            status_code=500,
        )

    async def start(self) -> str:
        # the last run's recent events stay for `info`; the spawn page shows this start's
        del self.events[:-20]
        self._first_event = len(self.events)
        profile = self._profile()
        if profile.get("default_url"):
            self.default_url = profile["default_url"]
        if profile.get("cmd"):
            self.cmd = profile["cmd"]
        await self.controller.ensure_started()
        began = time.monotonic()
        # a resume brings back what the last stop kept; after a cancel nothing is restored
        resuming = bool(self.suspended or self.checkpoint_id) and not self.fresh_start
        restore_kernels = self.checkpoint_on_stop and not self.fresh_start
        manifest = None
        if self.home_mode == "synced" and self.checkpoint_id:
            # verified before a host is taken: a checkpoint that is gone or broken costs
            # no instance
            try:
                manifest = await self.controller.checkpoints.load_async(
                    self.key, self.checkpoint_id
                )
            except CheckpointError as e:
                raise self._resume_refused(e) from e
        self.emit(f"Requesting a {profile.get('instance_type', 'default')} host", 10)
        try:
            host = await self.controller.provider.take(
                profile.get("instance_type", ""), owner=self.key, progress=self.emit
            )
        except HostError as e:
            raise SpawnException(f"No host available: {e}", reason="host", status_code=503) from e
        self.emit(f"Host {host.id} ready at {host.address}", 30)
        try:
            if manifest is not None:
                self.emit(f"Resuming from checkpoint {self.checkpoint_id}", 40)
                await self.restore_home(host, manifest)
                size = checkpoint_summary(manifest)
                self.emit(
                    f"Home restored: {human_bytes(size['bytes'])} in {size['files']} files", 50
                )
            port = await self.launch(host)
            self.emit(f"Starting the server on {host.address}:{port}", 60)
            if restore_kernels:
                # kernels come back before the hub calls the server ready, so the first
                # cell a user runs after a resume already sees their variables
                await self.wait_ready(host, port)
                await self.restore_kernels(host, port, final=not self.kernels_stale)
                self.kernels_stale = False
        except CheckpointError as e:
            await self.release_host(host)
            raise self._resume_refused(e) from e
        except BaseException:
            await self.release_host(host)
            raise
        self.host, self.ip, self.port = host, host.address, port
        await self.tcp_gateway("retarget", host.address)
        if resuming:
            self.controller.observer.record(
                self.key,
                "resume",
                "request",
                to_host=host.id,
                duration_seconds=time.monotonic() - began,
                checkpoint_id=self.checkpoint_id,
            )
        self.suspended = None
        self.fresh_start = False
        self.start_precopy()
        return f"http://{host.address}:{port}"

    async def launch(self, host: Host) -> int:
        """Start jupyterhub-singleuser on `host`; returns its port."""
        agent = self.controller.provider.agent(host)
        port = await agent.free_port()
        spec = build_server_spec(self.server_settings(), host, port)
        await agent.start_process(
            SERVER_PROCESS, spec.cmd, spec.env, cwd=spec.cwd, user=self.user.name
        )
        return port

    async def wait_ready(self, host: Host, port: int, timeout: float | None = None) -> None:
        """Wait until the server on `host` answers its API, as the hub does after start
        (`timeout`: a move's `move_ready_timeout`; else the hub's `http_timeout`)."""
        import aiohttp

        url = f"http://{host.address}:{port}" + url_path_join(self.server.base_url, "api")
        deadline = time.monotonic() + (timeout or self.http_timeout)
        agent = self.controller.provider.agent(host)
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(2)) as resp:
                        if resp.status < 500:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                status = await agent.process(SERVER_PROCESS)
                if status and not status["running"]:
                    lines = "\n".join(await agent.log(SERVER_PROCESS, 20))
                    raise HostError(
                        f"server on {host.id} exited with {status['exit_code']}:\n{lines}"
                    )
                await asyncio.sleep(0.2)
        raise HostError(f"server on {host.id} did not answer {url} in time")

    async def server_api(
        self,
        host: Host,
        port: int,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 60,
        *,
        params: dict[str, str] | None = None,
        under: str = "api",
    ) -> Any:
        """Call the server at host:port with its own token, over the hub's one shared HTTP
        client (agent.client.send): `path` is under the server's `api/` (the singleuser
        extension's and Jupyter's REST API), or under `under` ("" for the server's root:
        jupyter-scheduler's `scheduler/...`). The JSON answer (None when empty);
        ServerAPIError (a HostError with the HTTP `status`, 0 when the server did not answer)."""
        import aiohttp

        url = f"http://{host.address}:{port}" + url_path_join(self.server.base_url, under, path)
        headers = {"Authorization": f"token {self.api_token}"}
        try:
            resp = await send(
                method,
                url,
                json=body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(timeout),
            )
            async with resp:
                text = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # e.g. the host died
            raise ServerAPIError(f"{method} {path} on {host.id}: {type(e).__name__}: {e}") from e
        if resp.status >= 400:
            raise ServerAPIError(
                f"{method} {path} on {host.id}: {resp.status} {text[:300]}", resp.status
            )
        return json.loads(text) if text else None

    async def snapshot_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        """Freeze the kernels of the server at host:port and snapshot them into its home,
        record its web apps and suspend RStudio; returns the extension's report (per
        kernel: failed, reason, interrupted; `apps`)."""
        await self.tcp_gateway("hold")  # from the freeze on, new TCP connections wait
        report = await self.server_api(
            host,
            port,
            "POST",
            "migrating/checkpoint",
            {
                "timeout": timeout,
                "freeze": True,
                "rstudio_suspend_grace": self.rstudio_suspend_grace,
            },
            timeout=timeout + 10,
        )
        self.controller.observer.history.note_snapshot(self.key, report)  # interrupted cells
        # jupyter-scheduler jobs (batch/): each paused at a cell boundary, or interrupted
        self.jobs_paused = [job_paused_message(j) for j in (report.get("jobs") or {}).values()]
        for message in self.jobs_paused:
            self.emit(message)
        for note in (report.get("apps") or {}).get("notes", []):
            self.emit(note, level="warning")  # e.g. RStudio force-suspended
        return report

    async def precopy_kernels(self, host: Host, port: int, timeout: float) -> dict[str, Any]:
        """Snapshot the kernels on host:port into the home while they serve (no freeze)."""
        if not self.kernel_precopy:
            return {}
        return await self.server_api(
            host, port, "POST", "migrating/checkpoint", {"timeout": timeout}, timeout=timeout + 10
        )

    async def prestart_kernels(self, host: Host, port: int) -> dict[str, Any]:
        """Start the kernels on the new server and restore the pre-copy into them."""
        return await self.server_api(
            host,
            port,
            "POST",
            "migrating/prestart",
            {"timeout": self.kernel_state_timeout},
            timeout=self.kernel_state_timeout + 10,
        )

    async def kill_server(self, host: Host) -> None:
        """SIGKILL the server on `host`, no grace (a move's freeze)."""
        await self.tcp_gateway("hold")  # new TCP connections wait for the new host
        try:
            await self.controller.provider.agent(host).stop_process(
                SERVER_PROCESS, grace=0, quick=True
            )
        except AgentError:
            pass

    # -- the move record and the route (see moving/protocol.py) -----------------------

    def saved_move(self) -> MoveRecord | None:
        return MoveRecord.from_dict(self.move_record) if self.move_record else None

    def persist_move(self, record: MoveRecord | None) -> None:
        self.move_record = record.to_dict() if record else None
        self.save_state()

    def checkpoint_time(self, checkpoint_id: str) -> float | None:
        # read from the id (named when the snapshot began): no store call on the loop
        return checkpoint_time(checkpoint_id)

    @property
    def _proxy(self):
        return self.user.settings.get("proxy") or self.controller.app.proxy

    async def switch_to(self, host: Host, port: int, record: MoveRecord) -> None:
        """Point the hub's record and the proxy route at the server on host:port."""
        self.host, self.ip, self.port = host, host.address, port
        self.server.ip = host.address
        self.server.port = port
        self.move_record = record.to_dict()
        self.save_state()  # one commit: the server row, the new host and the phase
        if self.pending == "stop":
            # a stop (the hub's Stop, the idle culler) waits for this move and ends the
            # server on its new host: the route goes with it, and JupyterHub refuses to
            # route a server that is stopping
            return
        await self._proxy.add_user(self.user, self.name)
        await self.tcp_gateway("retarget", host.address)  # releases held TCP connections

    async def tcp_gateway(self, verb: str, *args: Any) -> None:
        """Tell the TCP gateway (tcpgateway/) where this server's ports now lead: `retarget`
        (running there), `hold` (moving), `park` (stopped). A gateway failure must not fail
        a start, a move or a stop."""
        gateway = TCPGateway.instance(config=self.config)
        if not gateway.enabled:
            return
        try:
            await getattr(gateway, verb)(self.user.name, self.name, *args)
        except Exception as e:
            self.log.error("TCP gateway %s for %s failed: %s", verb, self._log_name, e)

    async def end_after_failed_move(self, message: str, kernels_saved: bool) -> None:
        """A move stopped the old server and started it on no new host: the server ends as
        a stop that kept its work. The hub's own poll callback then stops it (as a server
        that exited): the route goes (held requests get one 503, then JupyterHub's "not
        running" page), and the next start resumes from the checkpoint."""
        self.host = None
        self.kernels_stale = not kernels_saved  # the next start says how old they are
        self.suspended = time.time()
        self.save_state()
        await self.tcp_gateway("park")
        self.emit(message, level="error")
        asyncio.ensure_future(self._stop_after_move())

    async def _stop_after_move(self) -> None:
        await self.controller.wait_for_move(self)  # poll() says alive while it moves
        await self.poll_and_notify()

    async def rearm_route(self) -> None:
        await self._proxy.add_user(self.user, self.name)

    async def restore_kernels(self, host: Host, port: int, final: bool = True) -> Any:
        """Re-create the kernels (same ids) on the server at host:port from the snapshots in
        its home, and tell the user what did not come back. `final`: the snapshots were
        taken as the old server stopped; if not, each kernel says how old its state is."""
        try:
            report = await self.server_api(
                host,
                port,
                "POST",
                "migrating/restore",
                {
                    "timeout": self.kernel_state_timeout,
                    "final": final,
                    "delivered": self.delivered_seals,
                },
                timeout=self.kernel_state_timeout + 10,
            )
        except (HostError, OSError, asyncio.TimeoutError) as e:
            self.emit(f"Kernels could not be restored: {e}", level="warning")
            return None
        self.controller.observer.history.note_restore(self.key, report)  # what did not come
        kernels = report.get("kernels", {})
        if kernels:
            self.emit(f"Restored {len(kernels)} kernel(s) under their ids", 80)
        if report.get("seal"):
            # a home restored from an older checkpoint may bring the same held cells back
            self.delivered_seals = [*self.delivered_seals, report["seal"]][-10:]
            self.save_state()
        if report.get("redelivered"):
            self.emit(f"{report['redelivered']} kernel message(s) sent during the move delivered")
        for kernel_id, result in kernels.items():
            message = result.get("message", lost_message(result) if result.get("ok") else None)
            if message:
                self.emit(f"Kernel {kernel_id[:8]}: {message}", level="warning")
        for note in (report.get("apps") or {}).get("notes", []):
            self.emit(note)  # web apps started again, an R version that differs
        return report

    async def poll(self) -> int | None:
        if self.moving:
            return None
        if self.move_record:
            # a hub restart cut a move short. One policy decides (the scheduler's settle);
            # poll only picks when: a running server is settled after the hub's startup
            # checks, a dead one now (so poll can answer)
            if await self.server_alive(self.host, retries=1):
                self.controller.recover(self)
                return None
            return await self.controller.settle_interrupted_move(self)
        if self.host is None:
            return 0
        # the provider's host watcher asks the agent (one poll per host for every caller,
        # failed polls counted once); its answer is reused while younger than an interval
        watcher = self.controller.provider.watcher
        state = await watcher.refresh(self.host, max_age=watcher.interval)
        status = state.process(SERVER_PROCESS)
        if not (state.lost or state.failures) and not (status and status["running"]):
            # bad news is checked fresh: the cached answer may predate the server's start
            state = await watcher.refresh(self.host)
            status = state.process(SERVER_PROCESS)
        if state.lost:
            return self.controller.host_lost(self)
        if state.failures or state.status is None:
            return None  # not answering, not lost (yet)
        if status is None:
            return 0
        return None if status["running"] else (status["exit_code"] or 0)

    async def server_alive(self, host: Host | None, retries: int = 0) -> bool:
        """Whether the server process runs on `host` (a short check: moves wait on it)."""
        if host is None:
            return False
        try:
            agent = self.controller.provider.agent(host)
            status = await agent.process(SERVER_PROCESS, quick=not retries)
        except (AgentError, HostError):
            return False
        return bool(status and status["running"])

    async def stop(self, now: bool = False) -> None:
        if self.moving:
            self.emit("Stopping: waiting for the move under way to finish")
            await self.controller.wait_for_move(self)
        self.stop_precopy()
        request = self.stop_request or self._who_stops()
        self.stop_request = None
        host = self.host
        if host is None:
            return
        discard = bool(request.get("discard"))  # a cancel: nothing is kept
        # a host that died under the server: what its last checkpoint misses is lost
        watched = self.controller.provider.watcher.state(host.id)
        host_lost = watched is not None and watched.lost
        keep = self.checkpoint_on_stop and not now and not discard
        # what became of the kernels, for the stop's event
        kernels: str | None = None
        kernel_error = ""
        self.jobs_paused = []
        if keep:
            try:
                # kernels first: their snapshot lives in the home the next line copies
                report = await self.snapshot_kernels(host, self.port, self.kernel_state_timeout)
                self.kernels_stale = False
                results = report.get("kernels", {}).values()
                saved = sum(1 for r in results if r.get("ok"))
                kernels = f"{saved} kernel(s)"
                if saved < len(results):
                    kernels += f" ({len(results) - saved} could not be snapshotted)"
            except (HostError, OSError, asyncio.TimeoutError) as e:
                moved = self.saved_move()
                if (
                    moved is not None
                    and moved.kernels_saved
                    and moved.final_checkpoint == self.checkpoint_id
                ):
                    # a move stopped this server after its final checkpoint (a hub restart
                    # cut it short, scheduler.settle): the kernels' final snapshot is in the
                    # home and that checkpoint, so nothing of theirs is older or lost
                    self.log.info("%s: kernels kept by the move's final checkpoint", self._log_name)
                    self.kernels_stale = False
                    kernels = f"the kernels' final snapshot (move checkpoint {self.checkpoint_id})"
                else:
                    self.log.warning("no kernel snapshot of %s on stop: %s", self._log_name, e)
                    self.kernels_stale = True  # the start says how old the kernels' state is
                    kernel_error = f"; no kernel snapshot ({e})"
        level = "warning" if kernel_error else "info"
        message = "Stopped: files kept on shared storage, kernels not kept"
        if self.home_mode == "synced" and keep:
            try:
                self.checkpoint_id = await self.checkpoint_home(host, reason="stop")
                what = f"files and {kernels}" if kernels else "files"
                message = f"Stopped: {what} kept in checkpoint {self.checkpoint_id}{kernel_error}"
            except (HostError, CheckpointError) as e:
                self.log.error("no checkpoint of %s on stop: %s", self._log_name, e)
                level = "warning"
                resume = f"checkpoint {self.checkpoint_id}" if self.checkpoint_id else "nothing"
                message = (
                    f"Stopped with NO checkpoint of the files ({e}): a start resumes from {resume}"
                )
        elif keep:
            kept = f", {kernels} kept in the home" if kernels else kernel_error
            message = f"Stopped: files on shared storage{kept}"
        elif self.home_mode == "synced":
            level, message = "warning", "Stopped without a checkpoint: files and kernels not kept"
        if self.jobs_paused:
            message += f"; {len(self.jobs_paused)} batch job(s) paused: they resume with it"
        try:
            await self.controller.provider.agent(host).stop_process(
                SERVER_PROCESS, 0 if now else self.stop_grace
            )
        except AgentError as e:
            self.log.warning("stopping %s on %s: %s", self._log_name, host.id, e)
        await self.release_host(host)
        await self.tcp_gateway("park")
        self.host = None
        self.emit(message, level=level)
        self.suspended = time.time() if keep else None
        self.fresh_start = discard
        if host_lost:
            created = self.checkpoint_time(self.checkpoint_id) if self.checkpoint_id else None
            since = time.strftime(" after %H:%M:%S", time.localtime(created)) if created else ""
            what = f"files changed{since} and kernel state since its last snapshot"
            self.controller.observer.record(
                self.key,
                LOSS,
                "host lost",
                detail=message,
                from_host=host.id,
                checkpoint_id=self.checkpoint_id,
                lost_files=f"the host was lost: {what} were lost",
                lost_since=created,
            )
            return
        self.controller.observer.record(
            self.key,
            SUSPEND if keep else CANCEL,
            request["reason"],
            by=request.get("by"),
            detail=message,
            from_host=host.id,
            checkpoint_id=self.checkpoint_id if keep else None,
            lost_files=None if keep else "files (synced home) and kernels not kept",
            outcome="ok" if level == "info" or not keep else "failed",
        )

    def _who_stops(self) -> dict[str, Any]:
        """Why this stop: a request of a user, or an idle cull (a culler service asked)."""
        asker = requester()
        if asker is None:
            return {"reason": "hub shutdown" if hub_shutting_down() else "stop", "by": None}
        kind, name = asker
        cullers = self.controller.observer.history.idle_cullers
        if kind == "service" and name in cullers:
            return {"reason": "idle cull", "by": name}
        return {"reason": "request", "by": name}

    async def release_host(self, host: Host) -> None:
        try:
            await self.controller.provider.release(host)
        except Exception as e:  # a host we cannot release must not fail a stop
            self.log.error("could not release host %s: %s", host.id, e)

    # -- home files -----------------------------------------------------------------

    async def checkpoint_home(self, host: Host, reason: str, parent: str | None = None) -> str:
        """Snapshot the home on `host` into the store; returns the new checkpoint id.

        `parent` (default: the last checkpoint taken or restored) is sent as an id: the
        host's agent keeps the file tables it made, so unchanged files are neither read
        nor sent; an agent without that table (another host, restarted) reads them all.
        """
        parent = parent or self.precopy_id
        checkpoint_id = new_checkpoint_id()  # named first: the agent keeps the table by it
        result = await self.controller.provider.agent(host).snapshot_home(
            self.home_on(host),
            self.controller.store.agent_config(),
            list(self.home_exclude),
            timeout=self.checkpoint_timeout,
            parent_id=parent,
            checkpoint_id=checkpoint_id,
        )
        stats = result["stats"]
        await self.controller.checkpoints.commit_async(
            self.key,
            result["files"],
            parent=parent,
            meta={"host": host.id, "reason": reason, "stats": stats},
            checkpoint_id=checkpoint_id,
        )
        self.precopy_id = self.checkpoint_id = checkpoint_id
        self.controller.observer.checkpoint(self.key, reason, stats)
        self.log.info(
            "checkpoint %s of %s (%s): %d files, %d bytes read, %d bytes sent%s",
            checkpoint_id,
            self._log_name,
            reason,
            stats.get("files", 0),
            stats.get("bytes_read", 0),
            stats.get("bytes_uploaded", 0),
            f" (changes since {parent})" if stats.get("parent") else " (full)",
        )
        return checkpoint_id

    async def restore_home(
        self, host: Host, checkpoint: str | Manifest, current: str | Manifest | None = None
    ) -> str:
        """Restore a checkpoint into the home on `host`; returns its id.

        A checkpoint this hub just committed is handed over as committed; another is read
        and verified first. `current` is the checkpoint restored there before (a move's
        pre-copy): the agent keeps the files of it that are still as it wrote them.
        """
        manifest = (
            checkpoint
            if isinstance(checkpoint, Manifest)
            else await self.controller.checkpoints.load_async(self.key, checkpoint)
        )
        current_id = current.id if isinstance(current, Manifest) else current
        await self.controller.provider.agent(host).restore_home(
            self.home_on(host),
            manifest.files,
            self.controller.store.agent_config(),
            timeout=self.checkpoint_timeout,
            current_id=current_id if isinstance(current_id, str) else None,
            checkpoint_id=manifest.id,
            user=self.user.name,
        )
        if self.precopy_id is None:  # a resume: the next pre-copy starts from this one
            self.precopy_id = manifest.id
        return manifest.id

    # -- background pre-copy ------------------------------------------------------------

    def start_precopy(self) -> None:
        if self.home_mode != "synced" or self.precopy_interval <= 0:
            return
        self.stop_precopy()
        self._precopy_task = asyncio.create_task(self._precopy_loop())

    def stop_precopy(self) -> None:
        if self._precopy_task:
            self._precopy_task.cancel()
            self._precopy_task = None

    async def _precopy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.precopy_interval)
            if self.moving or self.host is None:
                continue
            try:
                await self.checkpoint_home(self.host, reason="pre-copy")
                self.save_state()
            except (HostError, CheckpointError) as e:
                self.log.warning("pre-copy of %s failed: %s", self._log_name, e)
