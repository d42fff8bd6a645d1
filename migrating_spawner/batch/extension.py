"""The jupyter-server extension that ties jupyter-scheduler's jobs to the server's moves.

- At a freeze (the server's checkpoint before a move or a stop) running jobs pause at their
  next cell boundary (`MigratingScheduler.pause_running`), so their checkpoint is part of
  the home the move copies; the checkpoint's report gets `jobs`.
- After a restore (a move's new server, a resume after a stop, a host lost) orphaned jobs
  resume there, saying why. At start, jobs whose process died on this very host resume at
  once; jobs of another host wait for the restore (`resume_without_restore_after`).
- While jobs run, the server reports activity (`batch_jobs_last_activity`), so the hub and
  jupyterhub-idle-culler do not take a server under a job for idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
from jupyter_server._tz import utcnow

from .executor import this_host
from .progress import ResumeFolder
from .scheduler import MigratingScheduler

ACTIVITY_KEY = "batch_jobs_last_activity"


class BatchJobs:
    """The extension's state in one server."""

    def __init__(self, serverapp, scheduler: MigratingScheduler):
        self.app = serverapp
        self.scheduler = scheduler
        self.log = serverapp.log
        self.restored = asyncio.Event()
        self.started = psutil.Process().create_time()

    def reason(self, job, final: bool = True) -> str:
        """Why `job`'s process is gone, as its record will say."""
        folder: ResumeFolder = self.scheduler.job_folder(job.job_id)
        progress = folder.load()
        run = folder.run() or {}
        old = run.get("host") or "another host"
        stop = progress and (progress.paused or progress.interrupted)
        if stop:
            # a move starts its new server before the freeze; a stop's next start is after it
            if self.started < stop["time"]:
                return f"a move from {old}"
            return f"its server was stopped and started again (it ran on {old})"
        if old == this_host():
            return "its process ended"
        if not final:
            return f"its host {old} was lost"
        return f"its process ended on {old}"

    async def freeze(self, until: float) -> dict[str, Any]:
        jobs = await self.scheduler.pause_running(until)
        return {"jobs": jobs} if jobs else {}

    async def after_restore(self, final: bool) -> dict[str, Any]:
        self.restored.set()
        self.scheduler.reopen_db()
        resumed = self.scheduler.resume_orphans(lambda job: self.reason(job, final))
        return {"jobs_resumed": resumed} if resumed else {}

    async def start(self) -> None:
        self.scheduler.resume_orphans(self.reason, here_only=True)
        asyncio.ensure_future(self._resume_later())
        asyncio.ensure_future(self._activity_loop())

    async def _resume_later(self) -> None:
        try:
            await asyncio.wait_for(
                self.restored.wait(), self.scheduler.resume_without_restore_after
            )
        except asyncio.TimeoutError:
            self.scheduler.resume_orphans(self.reason)

    async def _activity_loop(self) -> None:
        settings = self.app.web_app.settings
        while True:
            try:
                if self.scheduler.running():
                    settings[ACTIVITY_KEY] = utcnow()
            except Exception:
                self.log.exception("batch jobs: activity check failed")
            await asyncio.sleep(self.scheduler.activity_interval)


def _jupyter_server_extension_points():
    return [{"module": "migrating_spawner.batch.extension"}]


def _load_jupyter_server_extension(serverapp) -> None:
    pass  # everything needs jupyter-scheduler's scheduler, which exists only at start


async def _start_jupyter_server_extension(serverapp) -> None:
    settings = serverapp.web_app.settings
    scheduler = settings.get("scheduler")
    if not isinstance(scheduler, MigratingScheduler):
        serverapp.log.warning(
            "batch jobs: jupyter-scheduler's scheduler is %s, not MigratingScheduler: "
            "jobs will not resume after a move",
            type(scheduler).__name__,
        )
        return
    jobs = BatchJobs(serverapp, scheduler)
    settings["migrating_batch"] = jobs
    state = settings.get("migrating_state")
    if state is not None:
        state.freeze_hooks.append(jobs.freeze)
        state.restore_hooks.append(jobs.after_restore)
    await jobs.start()
