"""Batch jobs that resume at the next cell, without a hub: a real MigratingScheduler, real job
processes and kernels (jupyter-scheduler's own way of running them), killed as a host's end
would kill them, then resumed.

These start kernels: run them under the shared test lock."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jobnotebook import counter_notebook as job_notebook
from jobnotebook import ran
from jupyter_scheduler.environments import CondaEnvironmentManager
from jupyter_scheduler.models import CreateJob
from jupyter_scheduler.orm import create_tables

from migrating_spawner.batch.executor import ResumableExecutionManager, parameterize
from migrating_spawner.batch.messages import job_paused_message
from migrating_spawner.batch.progress import MAX_ATTEMPTS, Progress, ResumeFolder, resume_message
from migrating_spawner.batch.scheduler import MigratingScheduler

# -- pure ----------------------------------------------------------------------------------


def test_progress_keeps_the_good_state_and_says_what_reruns():
    p = Progress()
    assert (p.next_cell, p.spare_state) == (0, "state-a")
    p.kept = {"cell": 2, "state": "state-a"}
    assert (p.next_cell, p.spare_state) == (3, "state-b")  # never over the kept one
    p.done, p.interrupted = 3, {"cell": 3}
    assert resume_message("h2", p, "a move from h1") == (
        "resumed on h2 at cell 4 after a move from h1 (cell 4 was interrupted and is re-run)"
    )
    p = Progress(done=3, kept={"cell": 0, "state": "state-b"}, unkept={"cell": 1, "reason": "s"})
    assert "cells 2-4 are re-run: the kernel state after cell 2 could not be kept (s)" in (
        resume_message("h", p, "x")
    )
    assert Progress.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_a_stop_or_move_says_where_each_job_paused():
    job = {"name": "six", "paused": True, "next_cell": 4, "interrupted_cell": 4}
    assert job_paused_message(job) == (
        "Batch job six paused before cell 4 (cell 4 was interrupted: it runs again): "
        "it resumes with the server"
    )
    assert job_paused_message(
        {"name": "n", "paused": False, "reason": "no cell boundary in time"}
    ) == ("Batch job n: no cell boundary in time; it resumes with the server")


def test_a_process_that_keeps_dying_at_one_cell_fails_the_job_instead_of_looping():
    manager = ResumableExecutionManager.__new__(ResumableExecutionManager)  # no job needed
    p = Progress(done=3, kept={"cell": 2, "state": "state-a"})
    for _ in range(MAX_ATTEMPTS):
        manager._check_not_looping(p)  # resumed: it died without a pause
    with pytest.raises(RuntimeError, match=f"ended {MAX_ATTEMPTS} times at cell 4"):
        manager._check_not_looping(p)
    # a pause (a move, a stop) is the server's doing, not the cell's: never counted
    paused = Progress(done=3, kept={"cell": 2, "state": "state-a"}, paused={"cell": 2})
    for _ in range(MAX_ATTEMPTS + 2):
        manager._check_not_looping(paused)
    assert paused.attempts == {}
    # a job whose cell failed is not run again
    with pytest.raises(RuntimeError, match="cell 2 failed: not run again"):
        manager._check_not_looping(Progress(done=1, failed={"cell": 1, "error": "E: x"}))


def test_parameters_go_after_the_parameters_cell_or_on_top_with_a_warning():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("y = x")]
    assert parameterize(nb, {"x": "2"}) != []  # no `parameters` cell: a warning
    assert nb.cells[0].source == "x = 2"
    nb.cells = [nbformat.v4.new_code_cell("a = 0"), nbformat.v4.new_code_cell("x = 1")]
    nb.cells[1].metadata["tags"] = ["parameters"]
    assert parameterize(nb, {"x": "3"}) == []
    assert [c.source for c in nb.cells] == ["a = 0", "x = 1", "x = 3"]
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]


# -- with job processes ----------------------------------------------------------------------


def counter_notebook(counter: Path, sleeps: dict[int, float], extra: dict[int, str] = None):
    """Six cells; each first appends its number to `counter`; cells 1-3 build a namespace
    that cells 5-6 use."""
    body = {
        1: "a = 1",
        2: "b = 2",
        3: "c = a + b",
        4: "d = 4",
        5: "print('sum', a + b + c + d)",
        6: "print('done', c)",
    }
    for i, code in (extra or {}).items():
        body[i] += "\n" + code
    for i, seconds in sleeps.items():
        body[i] += f"\nimport time; time.sleep({seconds})"
    return job_notebook([body[i] for i in range(1, 7)], counter)


@pytest.fixture
def scheduler(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    db_url = f"sqlite:///{tmp_path}/scheduler.sqlite"
    create_tables(db_url)
    s = MigratingScheduler(
        root_dir=str(root), environments_manager=CondaEnvironmentManager(), db_url=db_url
    )
    s.staging_path = str(tmp_path / "staging")
    s.pause_poll_interval = 0.05
    yield s
    for job in s.in_progress():  # whatever a failed test left running
        kill_job(s, job.job_id)


def submit(scheduler, nb, name="job") -> str:
    path = Path(scheduler.root_dir) / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return scheduler.create_job(
        CreateJob(
            input_uri=path.name,
            runtime_environment_name="python",
            name=name,
            output_formats=["ipynb"],
        )
    )


def kill_job(scheduler, job_id):
    """What the end of the job's host does: its process and its kernel are gone."""
    run = scheduler.job_folder(job_id).run() or {}
    for pid in {scheduler.job_pid(job_id), run.get("pid")} - {None}:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        procs = [*proc.children(recursive=True), proc]
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)  # gone (and reaped) before the test looks


async def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


async def wait_status(scheduler, job_id, status, timeout=60):
    def check():
        job = scheduler.get_job(job_id, job_files=False)
        if job.status in ("FAILED", "COMPLETED") and job.status != status:
            raise AssertionError(f"job ended {job.status}: {job.status_message}")
        return job if job.status == status else None

    return await wait_for(check, timeout, f"job {status}")


def output(scheduler, job_id) -> nbformat.NotebookNode:
    job = scheduler.get_job(job_id, job_files=False)
    path = scheduler.get_staging_paths(job)["ipynb"]
    return nbformat.read(path, as_version=4)


def stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


async def test_paused_at_a_boundary_then_interrupted_at_a_deadline_resumes_twice(
    scheduler, tmp_path
):
    counter = tmp_path / "home" / "counter.txt"
    job_id = submit(scheduler, counter_notebook(counter, {2: 1.5, 4: 60}))
    # a freeze during cell 2 with time to spare: the job stops after it
    await wait_for(lambda: 2 in ran(counter), 60, "cell 2 started")
    report = await scheduler.pause_running(time.time() + 20)
    assert report[job_id]["paused"] and report[job_id]["next_cell"] == 3, report
    assert "interrupted_cell" not in report[job_id]
    kill_job(scheduler, job_id)
    assert [j.job_id for j in scheduler.orphans(here_only=True)] == [job_id]
    scheduler.resume_orphans(lambda job: "a move from h1", here_only=True)
    # a freeze during cell 4, which sleeps past the deadline: interrupted, re-run later
    await wait_for(lambda: 4 in ran(counter), 60, "cell 4 started")
    report = await scheduler.pause_running(time.time() + 3)
    assert report[job_id] == {"name": "job", "paused": True, "next_cell": 4, "interrupted_cell": 4}
    kill_job(scheduler, job_id)
    # the second run of cell 4 must not sleep a minute
    folder = ResumeFolder(Path(scheduler.staging_path) / job_id)
    nb = folder.notebook()
    nb.cells[3].source = nb.cells[3].source.replace("time.sleep(60)", "time.sleep(0)")
    folder.save(folder.load(), nb)
    scheduler.resume_orphans(lambda job: "a move from h2", here_only=True)
    job = await wait_status(scheduler, job_id, "COMPLETED")

    assert ran(counter) == [1, 2, 3, 4, 4, 5, 6]
    out = output(scheduler, job_id)
    assert "sum 10" in stdout(out.cells[4]) and "done 3" in stdout(out.cells[5])
    assert all(c.execution_count for c in out.cells)
    resumes = out.metadata["migrating_batch"]["resumes"]
    assert resumes[0].endswith("at cell 3 after a move from h1")
    assert resumes[1].endswith(
        "at cell 4 after a move from h2 (cell 4 was interrupted and is re-run)"
    )
    assert job.status_message == "; ".join(resumes)
    assert not [f for f in job.packaged_files or [] if f.startswith(".resume")]


async def test_a_crash_resumes_from_the_last_kept_state_and_says_what_reruns(scheduler, tmp_path):
    counter = tmp_path / "home" / "counter.txt"
    # cell 2 leaves an open socket: no state after it can be kept (nor rebuilt)
    nb = counter_notebook(counter, {4: 60}, {2: "import socket; s = socket.socket()"})
    job_id = submit(scheduler, nb)
    await wait_for(lambda: 4 in ran(counter), 60, "cell 4 started")
    kill_job(scheduler, job_id)  # no notice: the process is simply gone
    folder = ResumeFolder(Path(scheduler.staging_path) / job_id)
    nb = folder.notebook()
    nb.cells[3].source = nb.cells[3].source.replace("time.sleep(60)", "time.sleep(0)")
    folder.save(folder.load(), nb)
    assert scheduler.resume_orphans(lambda job: "its process ended", here_only=True) == [job_id]
    job = await wait_status(scheduler, job_id, "COMPLETED")

    assert ran(counter) == [1, 2, 3, 4, 2, 3, 4, 5, 6]
    assert "sum 10" in stdout(output(scheduler, job_id).cells[4])
    assert "at cell 2 after its process ended (cells 2-3 are re-run: the kernel state after " in (
        job.status_message
    )
    assert "s: an open socket" in job.status_message


async def test_a_parameter_without_a_parameters_cell_warns_in_the_jobs_record(scheduler, tmp_path):
    counter = tmp_path / "home" / "counter.txt"
    nb = counter_notebook(counter, {})
    path = Path(scheduler.root_dir) / "plain.ipynb"
    nbformat.write(nb, str(path))
    job_id = scheduler.create_job(
        CreateJob(
            input_uri=path.name,
            runtime_environment_name="python",
            name="plain",
            output_formats=["ipynb"],
            parameters={"a": "5"},
        )
    )
    job = await wait_status(scheduler, job_id, "COMPLETED")
    warning = (
        "this notebook has no cell tagged 'parameters': the parameters were injected at the top"
    )
    assert job.status_message == warning  # the record (jupyter-scheduler's REST API and UI)
    out = output(scheduler, job_id)
    assert out.metadata["migrating_batch"]["warnings"] == [warning]
    assert "injected-parameters" in out.cells[0].metadata["tags"]


async def test_a_failing_cell_fails_the_job_with_its_output_and_is_not_resumed(scheduler, tmp_path):
    counter = tmp_path / "home" / "counter.txt"
    nb = counter_notebook(counter, {}, {3: "raise ValueError('bad input 7')"})
    job_id = submit(scheduler, nb)
    job = await wait_status(scheduler, job_id, "FAILED")
    assert "bad input 7" in job.status_message
    assert ran(counter) == [1, 2, 3]
    out = output(scheduler, job_id)
    assert [o.output_type for o in out.cells[2].outputs] == ["error"]
    assert out.cells[2].outputs[0].evalue == "bad input 7"
    assert scheduler.orphans() == []  # a failed job is never run again
