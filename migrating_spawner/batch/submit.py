"""`JobRunner`: headless notebook jobs, each on a JupyterHub named server of its own.

`submit` checks the input before anything starts (the notebook is in the user's home and is
a notebook, the profile is offered, the parameters are literals), records the job (queued)
and runs it in a task of the hub:

1. the named server `<job id>` of the user starts with the batch profile (the hub's own
   REST API, as the control API's verbs do), on a host of its own;
2. the input notebook is copied from the user's home into that server's home, and the job
   is created there through jupyter-scheduler's REST API, with the parameters: the server's
   `ResumableExecutionManager` injects them papermill's way and runs the notebook cell by
   cell, checkpointing at cell boundaries, so a reclaim moves the server like any other and
   the job resumes at the next cell;
3. the runner polls the job (status, the server's moves from its history, host time and
   cost) until it ends; then the output notebook (what ran, up to a failing cell) and the
   job's log are written next to the input in the user's home (homefiles.py: both home
   modes), and the named server is stopped and removed, which releases its host.

Records persist in a JSON-lines file beside the hub's database (jobs.py), so after a hub
restart the runner takes up every unfinished job where it was.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from jupyterhub import orm
from jupyterhub.utils import url_path_join
from traitlets import Dict, Float, Unicode
from traitlets.config import LoggingConfigurable

from .. import profiles as profiles_mod
from ..agent.client import send
from ..hosts.base import ServerAPIError
from .homefiles import HomeError, HomeFiles
from .jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    MOVING,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStore,
    check_notebook_path,
    check_parameters,
    has_parameters_cell,
    new_job_id,
    output_paths,
    parameter_source,
    render_log,
    status_from_scheduler,
)

#: what the runner's calls to the hub's REST API need on the job's server
HUB_SCOPES = ("servers", "delete:servers")
#: terminal colours in a traceback (nbclient keeps the kernel's)
ANSI = re.compile(r"\x1b\[[0-9;]*m")

NO_PARAMETERS_CELL = (
    "this notebook has no cell tagged 'parameters': the parameters were injected at the top"
)


class JobInputError(Exception):
    """A submit or cancel the runner refuses: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ServerCallError(Exception):
    """A call to the job's server failed (it may be moving)."""


class JobRunner(LoggingConfigurable):
    """Runs headless jobs on named servers and keeps their records."""

    jobs_dir = Unicode(
        help="""Folder of the job records (`jobs.jsonl`). Defaults to `migrating-jobs/`
        beside the hub's sqlite database (the hub's working directory for another
        database), so jobs outlive a hub restart."""
    ).tag(config=True)
    poll_interval = Float(1.0, help="Seconds between looks at a running job.").tag(config=True)
    start_timeout = Float(
        900, help="Seconds a job's server may take to start before the job fails."
    ).tag(config=True)
    settle_after_move = Float(
        20,
        help="""Seconds after a move of a job's server during which an ended status is not
        believed yet: the old host's job process may write one as it is killed, before the
        resumed run on the new host takes the job up again.""",
    ).tag(config=True)
    default_kernel = Unicode(
        "python3",
        help="""The kernel a job runs on when neither the submit (`--kernel`, papermill's
        -k) nor the notebook (`metadata.kernelspec.name`) names one; the job's record warns
        that it was used.""",
    ).tag(config=True)
    runtime_environment = Unicode(
        "python", help="jupyter-scheduler's runtime_environment_name for the jobs."
    ).tag(config=True)
    instance_prices = Dict(
        help="""Hourly price per instance type, for a job's cost where the provider gives
        no `hourly_price` in the host's meta (e.g. {"small": 0.0116})."""
    ).tag(config=True)

    def __init__(self, controller: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.controller = controller
        self.store = JobStore(self.folder)
        self.tasks: dict[str, asyncio.Task] = {}

    @property
    def app(self) -> Any:
        return self.controller.app

    @property
    def folder(self) -> Path:
        if self.jobs_dir:
            return Path(self.jobs_dir)
        db_url = getattr(self.controller.app, "db_url", "") or ""
        if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
            return Path(os.path.abspath(db_url[len("sqlite:///") :])).parent / "migrating-jobs"
        return Path(os.path.abspath("migrating-jobs"))

    def start(self) -> None:
        """Load the records and take up every unfinished job (after a hub restart)."""
        self.store.load()
        for record in self.store.unfinished():
            record.note("the hub restarted: the job is followed again")
            self.store.save(record)
            self._launch(record)

    def _launch(self, record: JobRecord) -> None:
        task = asyncio.ensure_future(self._run(record))
        self.tasks[record.id] = task
        task.add_done_callback(lambda _t, job_id=record.id: self.tasks.pop(job_id, None))

    # -- the hub's objects ------------------------------------------------------------

    def has_user(self, name: str) -> bool:
        return orm.User.find(self.app.db, name) is not None

    def user(self, name: str) -> Any:
        orm_user = orm.User.find(self.app.db, name)
        if orm_user is None:
            raise JobInputError(404, f"no user {name}")
        return self.app.users[orm_user]

    def spawner(self, record: JobRecord) -> Any | None:
        user = self.user(record.user)
        if record.server not in user.orm_spawners:
            return None
        return user.spawners[record.server]

    def home(self, user: Any) -> HomeFiles:
        return HomeFiles(user.spawners[""], self.controller)

    # -- submit ---------------------------------------------------------------------

    async def submit(
        self,
        username: str,
        notebook: Any,
        profile: Any = None,
        parameters: Any = None,
        name: Any = None,
        by: str = "",
        kernel: Any = None,
    ) -> JobRecord:
        """Check the input and queue the job; JobInputError (400/404/409) when it cannot run."""
        if not self.app.allow_named_servers:
            raise JobInputError(
                409, "headless jobs run on named servers: set c.JupyterHub.allow_named_servers"
            )
        try:
            path = check_notebook_path(notebook)
            params = check_parameters(parameters)
        except ValueError as e:
            raise JobInputError(400, str(e)) from None
        if name is not None and not isinstance(name, str):
            raise JobInputError(400, "name must be a string")
        if kernel is not None and not (isinstance(kernel, str) and kernel.strip()):
            raise JobInputError(400, "kernel must be a kernel's name (e.g. python3)")
        if profile is not None and not isinstance(profile, str):
            raise JobInputError(400, "profile must be a string (a profile's slug)")
        user = self.user(username)
        default = user.spawners[""]
        if not hasattr(default, "checkpoint_home"):
            raise JobInputError(400, f"{username} does not use MigratingSpawner")
        try:
            chosen = profiles_mod.batch_profile(default._profiles(), profile)
        except profiles_mod.ProfileError as e:
            raise JobInputError(400, str(e)) from None
        limit = self.app.named_server_limit_per_user  # (a callable one: the hub decides)
        named = [n for n in user.orm_spawners if n]
        if isinstance(limit, int) and limit and len(named) >= limit:
            raise JobInputError(
                409, f"{username} has {len(named)} named servers, the limit: no room for a job"
            )
        home = self.home(user)
        try:
            data = await home.read(path)
        except HomeError as e:
            raise JobInputError(409, f"cannot read {path} now: {e}") from None
        if data is None:
            raise JobInputError(404, f"no notebook {path} in {username}'s home ({home.where()})")
        try:
            nb = json.loads(data)
            if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
                raise ValueError("no cells")
        except ValueError:
            raise JobInputError(400, f"{path} is not a notebook (not nbformat JSON)") from None
        named = (nb.get("metadata", {}).get("kernelspec") or {}).get("name")
        record = JobRecord(
            id=new_job_id(),
            user=username,
            notebook=path,
            profile=chosen.get("slug", ""),
            name=name or os.path.basename(path)[: -len(".ipynb")],
            parameters=params,
            by=by or username,
            kernel=(kernel or "").strip() or named or self.default_kernel,
        )
        while record.id in user.orm_spawners or self.store.get(record.id):
            record.id = new_job_id()
        if params and not has_parameters_cell(nb):
            record.warnings.append(NO_PARAMETERS_CELL)
        if not kernel and not named:
            record.warnings.append(
                f"this notebook names no kernel (metadata.kernelspec): it runs on {record.kernel}"
            )
        record.note(f"submitted by {record.by}: {path} on profile {record.profile or 'default'}")
        self.store.save(record)
        self._launch(record)
        return record

    # -- list, cancel ---------------------------------------------------------------------

    def list(self, user: str | None) -> list[JobRecord]:
        return sorted(self.store.of_user(user), key=lambda j: j.submitted, reverse=True)

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    async def cancel(self, job_id: str, by: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise JobInputError(404, f"no job {job_id}")
        if record.finished_ok:
            raise JobInputError(409, f"{job_id} is {record.status}: nothing to cancel")
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._finish(record, CANCELLED, f"cancelled by {by}")
        await self._deliver(record, output=None)
        await self._teardown(record)
        return record

    # -- a job's run ----------------------------------------------------------------------

    def _finish(self, record: JobRecord, status: str, message: str, error: str | None = None):
        record.status = status
        record.finished = time.time()
        record.error = error
        record.note(message)
        self.store.save(record)

    async def _run(self, record: JobRecord) -> None:
        try:
            spawner = await self._start_server(record)
            if record.scheduler_job_id is None:
                await self._create(record, spawner)
            await self._watch(record)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.exception("job %s of %s failed", record.id, record.user)
            if not record.finished_ok:
                self._finish(record, FAILED, f"failed: {e}", error=str(e))
                await self._deliver(record, output=None)
        if record.finished_ok:
            await self._teardown(record)

    async def _start_server(self, record: JobRecord) -> Any:
        spawner = self.spawner(record)
        if spawner is None or (not spawner.ready and not spawner.pending):
            if record.started is not None and record.scheduler_job_id is not None:
                # after a hub restart the hub checks its servers first: wait for its word
                spawner = await self._wait_known(record)
                if spawner is not None and (spawner.ready or self.controller.is_moving(spawner)):
                    return spawner
                raise RuntimeError(f"its server {record.user}/{record.server} is gone")
            record.note(f"starting its server {record.user}/{record.server}")
            self.store.save(record)
            await self._hub_call(record, "POST", {"profile": record.profile})
            spawner = self.spawner(record)
        deadline = time.monotonic() + self.start_timeout
        while not spawner.ready:
            if not spawner.pending and spawner.server is None:
                events = [e.get("message", "") for e in spawner.events[-3:]]
                raise RuntimeError(f"its server did not start: {'; '.join(events) or 'no events'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"its server did not start in {self.start_timeout:.0f} s")
            await asyncio.sleep(0.3)
        if record.started is None:
            record.started = time.time()
        self._account(record, spawner)
        return spawner

    async def _wait_known(self, record: JobRecord, timeout: float = 60) -> Any | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spawner = self.spawner(record)
            if spawner is not None and (spawner.ready or self.controller.is_moving(spawner)):
                return spawner
            await asyncio.sleep(0.5)
        return self.spawner(record)

    async def _create(self, record: JobRecord, spawner: Any) -> None:
        data = await self.home(self.user(record.user)).read(record.notebook)
        if data is None:
            raise RuntimeError(f"{record.notebook} is no longer in the home")
        data = await self._on_kernel(record, data)
        parts = record.notebook.split("/")
        for i in range(1, len(parts)):
            await self._server_call(
                record, "PUT", "api/contents/" + quote("/".join(parts[:i])), {"type": "directory"}
            )
        body = {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}
        await self._server_call(record, "PUT", "api/contents/" + quote(record.notebook), body)
        created = await self._server_call(
            record,
            "POST",
            "scheduler/jobs",
            {
                "input_uri": record.notebook,
                "runtime_environment_name": self.runtime_environment,
                "name": record.name,
                "output_formats": ["ipynb"],
                "parameters": {k: parameter_source(v) for k, v in record.parameters.items()},
                "idempotency_token": record.id,
            },
        )
        record.scheduler_job_id = created["job_id"]
        # queued in jupyter-scheduler: `running on <host>` once its process runs (_watch)
        record.note(f"created in jupyter-scheduler on {self._host_id(spawner)}")
        self.store.save(record)

    async def _on_kernel(self, record: JobRecord, data: bytes) -> bytes:
        """The notebook as the job runs it: on `record.kernel`, which its server must have
        (RuntimeError naming the kernels it has); its kernelspec rewritten if it names
        another one or none (papermill's -k)."""
        nb = json.loads(data)
        meta = nb.setdefault("metadata", {})
        named = (meta.get("kernelspec") or {}).get("name")
        # (a record from before `kernel` was kept has none)
        record.kernel = record.kernel or named or self.default_kernel
        specs = await self._server_call(record, "GET", "api/kernelspecs")
        known = sorted((specs or {}).get("kernelspecs", {}))
        if record.kernel not in known:
            raise RuntimeError(
                f"no kernel {record.kernel} on its server (it has: {', '.join(known) or 'none'})"
            )
        if named == record.kernel:
            return data
        spec = specs["kernelspecs"][record.kernel].get("spec", {})
        meta["kernelspec"] = {
            "name": record.kernel,
            "display_name": spec.get("display_name", record.kernel),
            "language": spec.get("language", ""),
        }
        return json.dumps(nb).encode()

    @staticmethod
    def _host_id(spawner: Any) -> str:
        return spawner.host.id if spawner.host else "?"

    async def _watch(self, record: JobRecord) -> None:
        last_save = time.monotonic()
        last_message = ""
        last_move = -math.inf
        seen_running = False
        while True:
            spawner = self.spawner(record)
            if spawner is None:
                raise RuntimeError(f"its server {record.user}/{record.server} was removed")
            moving = self.controller.is_moving(spawner)
            moves = record.moves
            changed = self._note_moves(record, spawner)
            if moving or record.moves != moves:
                last_move = time.monotonic()
            self._account(record, spawner)
            job = None
            noted = False
            if moving:
                status = MOVING
            elif spawner.ready:
                try:
                    job = await self._server_call(
                        record, "GET", f"scheduler/jobs/{record.scheduler_job_id}", tries=1
                    )
                    status = status_from_scheduler(job["status"], False)
                    if job["status"] == "IN_PROGRESS":
                        seen_running = True
                    elif status == CANCELLED and not seen_running:
                        # a job jupyter-scheduler created reads STOPPED (its database
                        # column's default) until its process starts
                        status = QUEUED
                except ServerCallError:
                    status = record.status  # between hosts: the next look tells
            elif not spawner.pending:
                raise RuntimeError(
                    f"its server {record.user}/{record.server} stopped under the job"
                )
            else:
                status = record.status
            if (
                job is not None
                and job.get("status_message")
                and job["status_message"] != (last_message)
            ):
                last_message = job["status_message"]
                if status == RUNNING and last_message not in record.message:
                    record.note(last_message)  # e.g. resumed on <host> at cell N after ...
                    changed = noted = True
            if status == RUNNING and record.status != RUNNING and not noted:
                record.note(f"running on {self._host_id(spawner)}")
            settled = time.monotonic() - last_move > self.settle_after_move
            # only a run that reached the end writes COMPLETED: believed at once
            if status in FINISHED and (settled or status == COMPLETED):
                await self._complete(record, status, job or {})
                return
            if status in FINISHED:
                # the old host's job process, killed at the reclaim, may have written FAILED
                # into a shared home's scheduler database; the resumed run sets IN_PROGRESS:
                # until then the status stays what it was (moving, or running)
                status = record.status
            if status != record.status:
                record.status = status
                changed = True
            if changed or time.monotonic() - last_save > 30:
                self.store.save(record)
                last_save = time.monotonic()
            await asyncio.sleep(self.poll_interval)

    def _note_moves(self, record: JobRecord, spawner: Any) -> bool:
        changed = False
        if spawner.host is not None and spawner.host.id not in record.hosts:
            record.hosts.append(spawner.host.id)
            changed = True
        history = self.controller.observer.history.entries(spawner.key)
        moves = [e for e in history if e.get("kind") == "move" and e.get("outcome", "ok") == "ok"]
        for entry in moves[record.moves :]:
            record.note(
                f"moved from {entry.get('from_host')} to {entry.get('to_host')} "
                f"({entry.get('reason')})"
            )
            changed = True
        record.moves = max(record.moves, len(moves))
        return changed

    def _account(self, record: JobRecord, spawner: Any) -> None:
        host = spawner.host
        price = None
        if host is not None:
            price = host.meta.get("hourly_price")
            if price is None:
                price = self.instance_prices.get(host.instance_type)
        record.account(float(price) if price is not None else None, host is not None)

    async def _complete(self, record: JobRecord, status: str, job: dict[str, Any]) -> None:
        output = None
        try:
            output = await self._output_notebook(record)
        except Exception as e:
            self.log.warning("job %s: no output notebook: %s", record.id, e)
            record.warnings.append(f"no output notebook: {e}")
        if output is not None:
            meta = json.loads(output).get("metadata", {}).get("migrating_batch", {})
            for warning in meta.get("warnings", []):
                if warning not in record.warnings:
                    record.warnings.append(warning)
        error = None
        if status == COMPLETED:
            message = f"completed in {time.time() - (record.started or record.submitted):.0f} s"
        elif status == FAILED:
            error = ANSI.sub("", job.get("status_message") or "the job failed")
            message = f"failed: {error}"
        else:
            message = "stopped in its server"
        record.error = error
        record.note(message)
        # the files first, then the status: whoever sees the job ended finds its output
        # notebook and its log next to the input
        await self._deliver(record, output, status)

    async def _output_notebook(self, record: JobRecord) -> bytes:
        """The job's output notebook, from jupyter-scheduler's staging folder through its
        own download (which copies it into the server's home, in a process of its own: the
        job's files have a path once they are there)."""
        sid = record.scheduler_job_id
        download = f"scheduler/jobs/{sid}/download_files"
        await self._server_call(record, "GET", download, params={"redownload": "true"})
        deadline = time.monotonic() + 30
        while True:
            job = await self._server_call(record, "GET", f"scheduler/jobs/{sid}")
            files = job.get("job_files") or []
            path = next((f["file_path"] for f in files if f["file_format"] == "ipynb"), None)
            if path:
                query = {"content": "1", "format": "base64", "type": "file"}
                model = await self._server_call(
                    record, "GET", f"api/contents/{quote(path)}", params=query
                )
                return base64.b64decode(model["content"])
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter-scheduler did not copy the output notebook in 30 s")
            await asyncio.sleep(0.3)

    async def _deliver(
        self, record: JobRecord, output: bytes | None, status: str | None = None
    ) -> None:
        """The output notebook and the log next to the input, in the user's home; then the
        record takes `status`, the one the job ends with (if not set already)."""
        out_path, log_path = output_paths(record.notebook, record.id)
        try:
            home = self.home(self.user(record.user))
            record.log = log_path
            if output is not None:
                record.output = out_path
            files = {log_path: render_log(record, status).encode()}
            if output is not None:
                files[out_path] = output
            where = await home.write(files)
            record.note(f"output {'and log' if output is not None else 'log'} written to {where}")
            # the log's last line is the delivery itself
            await home.write({log_path: render_log(record, status).encode()})
        except Exception as e:
            self.log.exception("job %s: output not delivered", record.id)
            record.output = None
            record.log = None
            record.warnings.append(f"output not written to the home: {e}")
        if status is not None:
            record.status, record.finished = status, time.time()
        self.store.save(record)

    async def _teardown(self, record: JobRecord) -> None:
        """Stop and remove the job's named server (its host is released)."""
        spawner = self.spawner(record)
        if spawner is None:
            return
        host = spawner.host.id if spawner.host else None
        spawner.stop_request = {"reason": "job ended", "by": record.by, "discard": True}
        try:
            await self._hub_call(record, "DELETE", {"remove": True})
            deadline = time.monotonic() + 300
            while record.server in self.user(record.user).orm_spawners:
                if time.monotonic() > deadline:
                    raise RuntimeError("its server was not removed in 300 s")
                await asyncio.sleep(0.3)
            record.note(f"its server was stopped and removed; host {host or '-'} released")
        except Exception as e:
            self.log.exception("job %s: server not removed", record.id)
            record.note(f"its server could not be removed: {e}")
        self.store.save(record)

    # -- HTTP ----------------------------------------------------------------------------

    async def _hub_call(self, record: JobRecord, method: str, body: Any = None) -> None:
        """The hub's REST API on the job's server, with a token of its owner for the call
        (over the hub's shared HTTP client)."""
        user = self.user(record.user)
        token = user.orm_user.new_api_token(
            # removing the server when the job ends needs delete:servers
            scopes=[f"{scope}!server={user.name}/{record.server}" for scope in HUB_SCOPES],
            expires_in=300,
            note=f"jupyterhub-migrate job {record.id}",
        )
        url = url_path_join(
            self.app.hub.api_url, f"users/{user.escaped_name}/servers/{quote(record.server)}"
        )
        try:
            resp = await send(
                method,
                url,
                json=body,
                headers={"Authorization": f"token {token}"},
                timeout=aiohttp.ClientTimeout(60),
            )
            async with resp:
                status, text = resp.status, await resp.text()
        finally:
            orm_token = orm.APIToken.find(self.app.db, token)
            if orm_token is not None:
                self.app.db.delete(orm_token)
                self.app.db.commit()
        if status >= 400:
            try:
                text = json.loads(text).get("message", text)
            except (ValueError, AttributeError):
                pass
            raise RuntimeError(f"the hub refused {method} of its server: {text}")

    async def _server_call(
        self,
        record: JobRecord,
        method: str,
        path: str,
        body: Any = None,
        tries: int = 5,
        params: dict[str, str] | None = None,
    ) -> Any:
        """The job server's own API (contents, jupyter-scheduler) through the spawner's
        `server_api` (its own token, the hub's shared HTTP client); retried while it may be
        moving."""
        last = ""
        for attempt in range(tries):
            spawner = self.spawner(record)
            if spawner is None or not spawner.ready or spawner.server is None:
                last = "its server is not running"
            elif self.controller.is_moving(spawner) or spawner.host is None:
                last = "its server is moving"
            else:
                try:
                    return await spawner.server_api(
                        spawner.host,
                        spawner.server.port,
                        method,
                        path,
                        body,
                        params=params,
                        under="",
                    )
                except ServerAPIError as e:
                    last = str(e)
                    if 400 <= e.status < 500 and e.status != 404:
                        break
            if attempt + 1 < tries:
                await asyncio.sleep(min(1 + attempt, 5))
        raise ServerCallError(f"{method} {path}: {last}")


__all__ = ["JobInputError", "JobRunner", "QUEUED", "RUNNING"]
