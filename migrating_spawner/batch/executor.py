"""`ResumableExecutionManager`: jupyter-scheduler jobs that resume at the next cell.

jupyter-scheduler runs `execution_manager_class(...).process` in a process of its own per job.
This one runs the notebook cell by cell with nbclient and, in `on_cell_executed` (after the
kernel's reply; `on_cell_complete` fires when the request is sent), checkpoints into the
job's resume folder (progress.py): the kernel's namespace through
`migrating_spawner.kernelstate` into the spare state folder, then the output notebook so far,
then progress.json. A run that finds progress.json resumes: a new kernel, the kept state
restored, execution from the next cell.

A pause request (the server's freeze before a move or a stop) stops the job at its next cell
boundary; a cell still running when the deadline is near is interrupted, and re-run by the
resumed run. The paused process then waits to be killed with its server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import nbformat
import psutil
from jupyter_scheduler.executors import DefaultExecutionManager
from jupyter_scheduler.orm import Job
from jupyter_scheduler.parameterize import add_parameters
from jupyter_scheduler.utils import find_cell_index_with_tag
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .. import kernelstate
from .progress import MAX_ATTEMPTS, Progress, ResumeFolder, read_json, resume_message

#: a running cell is interrupted this long before a pause's deadline: the progress file the
#: resumed run needs is written after it, and the server still has to copy the home
INTERRUPT_MARGIN = 1.5
#: a pause not followed by the server's end within this long after its deadline was a move
#: that did not happen: the job goes on where it is
PAUSE_EXPIRY = 30.0
#: what a snapshot or a restore of the job's kernel may take
STATE_TIMEOUT = 120.0


class Paused(Exception):
    """The job stopped at a pause request; its process waits for the server to end."""


def this_host() -> str:
    return os.environ.get("JUPYTERHUB_MIGRATING_HOST") or socket.gethostname()


def parameterize(nb: nbformat.NotebookNode, parameters: dict[str, str] | None) -> list[str]:
    """Inject `parameters` papermill's way (a cell tagged `injected-parameters` after the one
    tagged `parameters`, or at the top); returns warnings for the user."""
    if not parameters:
        return []
    warnings = []
    if find_cell_index_with_tag(nb, "parameters") < 0:
        warnings.append(
            "this notebook has no cell tagged 'parameters': the parameters were injected at the top"
        )
    add_parameters(nb, parameters)
    return warnings


class ResumableExecutionManager(DefaultExecutionManager):
    """Runs a job cell by cell, checkpointing after each, and resumes from its checkpoint."""

    # set in the job's process (the instance is pickled into it before any of these exist)
    folder: ResumeFolder
    progress: Progress
    nb: nbformat.NotebookNode
    _running: int | None = None
    _interrupting: int | None = None

    def before_start(self):
        folder = ResumeFolder(os.path.dirname(self.staging_paths["input"]))
        if folder.load() is None:
            return super().before_start()
        # a resume keeps the job's start time
        self._update_job({"status": "IN_PROGRESS"})

    def _update_job(self, values: dict[str, Any]) -> None:
        with self.db_session() as session:
            session.query(Job).filter(Job.job_id == self.job_id).update(values)
            session.commit()

    def add_side_effects_files(self, staging_dir: str):
        super().add_side_effects_files(staging_dir)
        # the resume folder is ours, not a file the job made
        with self.db_session() as session:
            files = session.query(Job.packaged_files).filter(Job.job_id == self.job_id).scalar()
            kept = [f for f in files or [] if not f.split(os.sep)[0] == ".resume"]
            if kept != (files or []):
                session.query(Job).filter(Job.job_id == self.job_id).update(
                    {"packaged_files": kept}
                )
                session.commit()

    def execute(self):
        asyncio.run(self._execute())

    # -- the run ------------------------------------------------------------------------

    def _input_notebook(self) -> tuple[nbformat.NotebookNode, list[str]]:
        with open(self.staging_paths["input"], encoding="utf-8") as f:
            nb = nbformat.read(f, as_version=4)
        return nb, parameterize(nb, self.model.parameters)

    async def _execute(self) -> None:
        staging_dir = os.path.dirname(self.staging_paths["input"])
        self.folder = folder = ResumeFolder(staging_dir)
        progress = folder.load()
        request = folder.take_resume_request() or {}
        resuming = progress is not None
        notes: list[str] = []
        if progress is None:
            progress = Progress()
            nb, notes = self._input_notebook()
        else:
            nb = folder.notebook() or self._input_notebook()[0]
            self._check_not_looping(progress)
        self.progress, self.nb = progress, nb
        meta = nb.metadata.setdefault("migrating_batch", {})
        if notes:
            meta["warnings"] = notes
            # in the job's record too, where jupyter-scheduler's UI and REST API show it
            self._update_job({"status_message": self._status_message()})
        if resuming:
            self._note_resume(request.get("reason") or "its process ended")
        start = progress.next_cell

        client = NotebookClient(
            nb,
            kernel_name=nb.metadata.kernelspec["name"],
            resources={"metadata": {"path": staging_dir}},
            store_widget_state=True,
            on_cell_execute=self._on_cell_execute,
            on_cell_executed=self._on_cell_executed,
        )
        self.client = client
        try:
            async with client.async_setup_kernel(cwd=staging_dir):
                info = await client.async_wait_for_reply(client.kc.kernel_info())
                if info and "language_info" in info["content"]:
                    nb.metadata["language_info"] = info["content"]["language_info"]
                self.language = nb.metadata.get("language_info", {}).get("name", "")
                me = psutil.Process()
                folder.write_run(this_host(), me.pid, me.create_time())
                if resuming and progress.kept:
                    start = await self._restore(start)
                watcher = asyncio.ensure_future(self._watch_pause())
                try:
                    await self._run_cells(start)
                finally:
                    watcher.cancel()
        finally:
            self.add_side_effects_files(staging_dir)
            self.create_output_files(self.model, nb)

    async def _run_cells(self, index: int) -> None:
        while index < len(self.nb.cells):
            try:
                await self.client.async_execute_cell(self.nb.cells[index], index)
            except Paused:
                await self._wait_while_paused()
                interrupted = self.progress.interrupted
                self._interrupting = None
                if interrupted and interrupted["cell"] == index:
                    continue  # the move did not happen: the interrupted cell runs again here
            index += 1

    def _check_not_looping(self, progress: Progress) -> None:
        """A job whose process keeps dying at one cell fails instead of looping."""
        if progress.failed:
            raise RuntimeError(f"cell {progress.failed['cell'] + 1} failed: not run again")
        if progress.paused or progress.interrupted:
            return  # paused by its server: a move or a stop, not the cell's doing
        key = str(progress.next_cell)
        progress.attempts[key] = progress.attempts.get(key, 0) + 1
        if progress.attempts[key] > MAX_ATTEMPTS:
            raise RuntimeError(
                f"the job's process ended {MAX_ATTEMPTS} times at cell {progress.next_cell + 1} "
                "without a pause: not resumed again"
            )

    def _note_resume(self, reason: str) -> None:
        p = self.progress
        message = resume_message(this_host(), p, reason)
        p.resumes.append(
            {"host": this_host(), "cell": p.next_cell, "reason": reason, "time": time.time()}
            | {"message": message}
        )
        p.paused = p.interrupted = None
        self.nb.metadata["migrating_batch"]["resumes"] = [r["message"] for r in p.resumes]
        self.folder.save(p, self.nb)
        self._update_job({"status_message": self._status_message()})

    # -- kernel state ---------------------------------------------------------------------

    async def _in_kernel(self, code: str) -> None:
        msg_id = self.client.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        reply = await asyncio.wait_for(self.client.async_wait_for_reply(msg_id), STATE_TIMEOUT)
        content = (reply or {}).get("content", {})
        if content.get("status") != "ok":
            raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")

    async def _snapshot(self, state: str) -> str | None:
        """Snapshot the kernel into `state`; returns why its state cannot be kept, or None."""
        if not kernelstate.supported(self.language):
            return f"{self.language or 'this'} kernels cannot keep their state"
        target = self.folder.state_dir(state)
        try:
            await self._in_kernel(kernelstate.snapshot_code(self.language, str(target)))
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        report = read_json(target / "snapshot-report.json") or {}
        if not report.get("ok"):
            return report.get("error") or "the snapshot did not finish"
        lost = {n: v for n, v in report.get("variables", {}).items() if v.get("how") == "lost"}
        if lost:
            return "; ".join(f"{n}: {v.get('reason')}" for n, v in sorted(lost.items()))
        return None

    async def _restore(self, start: int) -> int:
        """Restore the kept state into the new kernel; returns the cell to go on from."""
        state = self.folder.state_dir(self.progress.kept["state"])
        try:
            await self._in_kernel(kernelstate.restore_code(self.language, str(state)))
            report = read_json(state / "restore-report.json") or {}
        except Exception as e:
            report = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        message = kernelstate.lost_message(report) if report.get("ok") else None
        if report.get("ok") and not message:
            return start
        # what came back is not the state after the kept cell: run the job from its start
        why = message or report.get("error", "unknown error")
        self.progress.resumes[-1]["message"] += (
            f"; the kernel state could not be restored ({why}): every cell is re-run"
        )
        self.progress.kept = None
        self._note_status()
        return 0

    def _note_status(self) -> None:
        self.nb.metadata["migrating_batch"]["resumes"] = [
            r["message"] for r in self.progress.resumes
        ]
        self._update_job({"status_message": self._status_message()})

    def _status_message(self) -> str:
        """The job record's status_message: the run's warnings (papermill's parameters
        warning), then how it resumed; a failure replaces it with the error."""
        meta = self.nb.metadata.get("migrating_batch", {})
        notes = [*meta.get("warnings", []), *(r["message"] for r in self.progress.resumes)]
        return "; ".join(notes)[-1024:]

    # -- nbclient hooks -------------------------------------------------------------------

    async def _on_cell_execute(self, cell, cell_index: int) -> None:
        self._running = cell_index

    async def _on_cell_executed(self, cell, cell_index: int, execute_reply: dict) -> None:
        self._running = None
        p = self.progress
        content = execute_reply.get("content", {})
        if self._interrupting == cell_index:
            # stopped for the pause: its outputs are partial and its state is not kept
            p.interrupted = {"cell": cell_index, "time": time.time()}
            p.paused = {"cell": cell_index - 1, "time": time.time(), "host": this_host()}
            self.folder.save(p)
            raise Paused(f"cell {cell_index + 1} interrupted for a pause")
        p.done = cell_index
        if content.get("status") == "error":
            # nbclient raises CellExecutionError next: the job fails with what ran so far
            p.failed = {
                "cell": cell_index,
                "error": f"{content.get('ename')}: {content.get('evalue')}",
            }
            self.folder.save(p, self.nb)
            return
        spare = p.spare_state
        why = await self._snapshot(spare)
        if why is None:
            p.kept = {"cell": cell_index, "state": spare, "time": time.time()}
            p.unkept = None
        elif p.unkept is None:
            p.unkept = {"cell": cell_index, "reason": why}
        self.folder.save(p, self.nb)
        request = self.folder.pause_request()
        if request and time.time() < request["until"] + PAUSE_EXPIRY:
            p.paused = {"cell": cell_index, "time": time.time(), "host": this_host()}
            self.folder.save(p)
            raise Paused(f"paused after cell {cell_index + 1}")

    # -- pauses -----------------------------------------------------------------------------

    async def _watch_pause(self) -> None:
        """Interrupt a cell still running when a pause's deadline is near."""
        while True:
            await asyncio.sleep(0.1)
            request = self.folder.pause_request()
            running = self._running
            if not request or running is None or self._interrupting is not None:
                continue
            now = time.time()
            if request["until"] - INTERRUPT_MARGIN <= now < request["until"] + PAUSE_EXPIRY:
                self._interrupting = running
                await self.client.km.interrupt_kernel()

    async def _wait_while_paused(self) -> None:
        while True:
            request = self.folder.pause_request()
            if not request or time.time() >= request["until"] + PAUSE_EXPIRY:
                break
            await asyncio.sleep(0.2)
        # still here: the server did not end, so the job goes on
        self.folder.clear_pause()
        self.progress.paused = None
        self.folder.save(self.progress)


__all__ = ["CellExecutionError", "Paused", "ResumableExecutionManager", "parameterize"]
