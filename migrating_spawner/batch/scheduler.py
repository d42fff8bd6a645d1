"""`MigratingScheduler`: jupyter-scheduler's scheduler, with jobs that outlive their process.

jupyter-scheduler starts each job in a process of its own and never looks back: a job whose
process died with its host stays IN_PROGRESS forever. This scheduler finds such jobs (the
process its resume folder names is not running on this host) and starts them again; the
execution manager resumes them at the next cell. It also pauses running jobs at a freeze.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from typing import Any

import psutil
from jupyter_scheduler.models import DescribeJob, Status
from jupyter_scheduler.orm import Job
from jupyter_scheduler.scheduler import Scheduler
from traitlets import Float
from traitlets import Type as TType

from .executor import ResumableExecutionManager, this_host
from .progress import ResumeFolder


class MigratingScheduler(Scheduler):
    """A scheduler whose IN_PROGRESS jobs resume after their process is gone."""

    execution_manager_class = TType(
        default_value=ResumableExecutionManager,
        klass="jupyter_scheduler.executors.ExecutionManager",
        config=True,
        help="The execution manager class to use: one that resumes (ResumableExecutionManager).",
    )
    pause_poll_interval = Float(
        0.2, config=True, help="Seconds between looks at a pausing job's progress."
    )
    resume_without_restore_after = Float(
        120,
        config=True,
        help="""Seconds after the server's start to resume jobs that ran on another host when
        no restore came (the hub restores the home after a move or a resume, and jobs
        resume then; a server started without one resumes them after this long, as the old
        host may still be running them until its deadline).""",
    )
    activity_interval = Float(
        10,
        config=True,
        help="""Seconds between reports of running jobs as server activity (what the hub and
        jupyterhub-idle-culler see), so a server is not culled under a job.""",
    )

    def job_folder(self, job_id: str) -> ResumeFolder:
        return ResumeFolder(os.path.join(self.staging_path, job_id))

    def reopen_db(self) -> None:
        """Drop pooled connections: the home's database file was replaced under them (the
        final delta of a move restores a newer file by renaming it into place)."""
        if self._db_session is not None:
            self._db_session.kw["bind"].dispose()

    def in_progress(self) -> list[DescribeJob]:
        mp.active_children()  # reaps job processes that ended (else they linger as zombies)
        with self.db_session() as session:
            rows = session.query(Job).filter(Job.status == Status.IN_PROGRESS).all()
            return [DescribeJob.from_orm(row) for row in rows]

    def process_alive(self, job: DescribeJob) -> bool:
        """Whether the job's process runs here (a pid on another host says nothing)."""
        run = self.job_folder(job.job_id).run()
        if run is None:
            # not started its cells yet: the pid jupyter-scheduler recorded, if it is ours
            pid = self.job_pid(job.job_id)
            return bool(pid) and _is_child(pid)
        if run.get("host") != this_host():
            return False
        try:
            process = psutil.Process(run["pid"])
            same = abs(process.create_time() - run["started"]) < 1
            # a killed child of this server stays a zombie until it is reaped
            return same and process.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, TypeError):
            return False

    def job_pid(self, job_id: str) -> int | None:
        with self.db_session() as session:
            return session.query(Job.pid).filter(Job.job_id == job_id).scalar()

    def running(self) -> list[DescribeJob]:
        return [job for job in self.in_progress() if self.process_alive(job)]

    def orphans(self, here_only: bool = False) -> list[DescribeJob]:
        """IN_PROGRESS jobs whose process is gone. `here_only`: only those that ran on this
        host (elsewhere may still be running them, e.g. the old host during a move)."""
        out = []
        for job in self.in_progress():
            if self.process_alive(job):
                continue
            run = self.job_folder(job.job_id).run() or {}
            if here_only and run.get("host") != this_host():
                continue
            out.append(job)
        return out

    def resume_job(self, job: DescribeJob, reason: str) -> None:
        """Start the job's process again; it resumes at the cell after its kept state."""
        folder = self.job_folder(job.job_id)
        folder.clear_pause()
        folder.request_resume(reason)
        staging_paths = self.get_staging_paths(job)
        # spawn, as jupyter-scheduler does (asyncio in forked processes, Python < 3.12)
        process = mp.get_context("spawn").Process(
            target=self.execution_manager_class(
                job_id=job.job_id,
                staging_paths=staging_paths,
                root_dir=self.root_dir,
                db_url=self.db_url,
            ).process
        )
        process.start()
        with self.db_session() as session:
            session.query(Job).filter(Job.job_id == job.job_id).update({"pid": process.pid})
            session.commit()
        self.log.info("resumed job %s (%s) after %s", job.job_id, job.name, reason)

    def resume_orphans(self, reason, here_only: bool = False) -> list[str]:
        """Resume every orphaned job; `reason(job)` says why it stopped. Returns their ids."""
        resumed = []
        for job in self.orphans(here_only):
            try:
                self.resume_job(job, reason(job))
                resumed.append(job.job_id)
            except Exception:
                self.log.exception("could not resume job %s", job.job_id)
        return resumed

    async def pause_running(self, until: float) -> dict[str, Any]:
        """Ask every running job to pause at its next cell boundary by `until`; a cell still
        running near it is interrupted. Returns, per job, where it stopped."""
        jobs = self.running()
        for job in jobs:
            self.job_folder(job.job_id).request_pause(until)
        report: dict[str, Any] = {}
        pending = {job.job_id: job for job in jobs}
        while pending and time.time() < until:
            for job_id in list(pending):
                progress = self.job_folder(job_id).load()
                if progress and (progress.paused or progress.failed):
                    report[job_id] = _pause_report(pending.pop(job_id), progress)
                elif not self.process_alive(pending[job_id]):
                    # ended meanwhile (completed or failed): nothing to pause
                    pending.pop(job_id)
            await asyncio.sleep(self.pause_poll_interval)
        for job_id, job in pending.items():
            report[job_id] = {
                "name": job.name,
                "paused": False,
                "reason": "no cell boundary in time",
            }
        return report


def _pause_report(job: DescribeJob, progress) -> dict[str, Any]:
    out: dict[str, Any] = {"name": job.name, "paused": bool(progress.paused)}
    if progress.paused:
        out["next_cell"] = progress.next_cell + 1
    if progress.interrupted:
        out["interrupted_cell"] = progress.interrupted["cell"] + 1
    return out


def _is_child(pid: int) -> bool:
    try:
        return any(
            p.pid == pid and p.status() != psutil.STATUS_ZOMBIE
            for p in psutil.Process().children(recursive=True)
        )
    except psutil.Error:
        return False
