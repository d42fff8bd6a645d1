"""Batch notebooks across reclaims, Suspend/Resume and a hub restart, on one real hub (real
CHP, servers, kernels, synced homes) shared by the module: a 6-cell job created through
jupyter-scheduler's own REST API survives a reclaim of its host during its long cell and
resumes at that cell on the new host, and the hub sees the server active meanwhile (what
jupyterhub-idle-culler reads); a Suspend pauses it at its next cell boundary and says so,
and the Resume goes on from there; across a hub restart during the reclaim's notice the
restarted hub moves it and it completes the same way. Headless jobs with these synced homes
(the home lives on its server's host and in checkpoints): the input is read from, and the
output notebook and log land in, the user's home whether the user's default server is
suspended (its last checkpoint: the next resume brings them) or running (its Contents API);
their moves, cancel and bad input are in test_jobs.py."""

from __future__ import annotations

import nbformat
import pytest
from jobnotebook import six_cell_job
from realhub import module_hub, until
from test_jobs import ended
from test_move import read_file, wait_moved, wait_released, write_file

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CONFIG = """
c.MigratingSpawner.home_mode = "synced"
# headless jobs run on named servers
c.JupyterHub.allow_named_servers = True
# running jobs count as activity every second (the default is every 10 s), and the server
# tells the hub its activity every second (jupyterhub-singleuser's default is 5 minutes)
c.Spawner.args = ["--MigratingScheduler.activity_interval=1"]
c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "1"}
"""

#: the test's own requests to a server do not count as its activity: what keeps a server
#: under a job active is the job
QUIET = "no_track_activity=1"


hub = module_hub(CONFIG, "batch", server_extensions=("jupyter_scheduler",))


async def counter(hub, user, token, name) -> list[int]:
    path = f"/user/{user}/api/contents/{name}-counter.txt?{QUIET}"
    status, data = await hub.request("GET", path, token)
    return [int(x) for x in data["content"].split()] if status == 200 else []


async def start_job(hub, user, token, name, first_sleep) -> str:
    """The job through jupyter-scheduler's REST API, once its cell 4 runs; its URL."""
    await write_file(
        hub, user, token, f"{name}.ipynb", nbformat.writes(six_cell_job(name, first_sleep))
    )
    status, created = await hub.request(
        "POST",
        f"/user/{user}/scheduler/jobs",
        token,
        {
            "input_uri": f"{name}.ipynb",
            "runtime_environment_name": "python",
            "name": name,
            "output_formats": ["ipynb"],
        },
    )
    assert status == 200, created

    async def cell4():
        return 4 in await counter(hub, user, token, name)

    await until(cell4, 60, "cell 4 running")
    return f"/user/{user}/scheduler/jobs/{created['job_id']}"


async def completed(hub, user, token, job_url, timeout=60) -> dict:
    async def done():
        status, job = await hub.request("GET", f"{job_url}?{QUIET}", token)
        assert status == 200, job
        assert job["status"] not in ("FAILED", "STOPPED"), job
        return job if job["status"] == "COMPLETED" else None

    return await until(done, timeout, "the job to complete")


async def check_every_cell(hub, user, token, name, job_url, job) -> list[int]:
    """Cells 1-3 and 5-6 ran once, cell 4 at most twice; the output notebook (through
    jupyter-scheduler's own download into the home) has every output, the sums of cells
    5-6 used the namespace of cells 1-3, and it says how the job resumed. Returns the
    counter."""
    runs = await counter(hub, user, token, name)
    assert [runs.count(i) for i in (1, 2, 3, 5, 6)] == [1, 1, 1, 1, 1], runs
    assert 1 <= runs.count(4) <= 2, runs
    status, _ = await hub.request("GET", job_url + "/download_files?redownload=true", token)
    assert status == 204

    async def output_path():
        # the download runs in jupyter-scheduler's background: a file has a path once done
        status, files = await hub.request("GET", f"{job_url}?{QUIET}", token)
        files = [f for f in files["job_files"] if f["file_format"] == "ipynb"]
        return files[0].get("file_path") if files else None

    path = await until(output_path, 30, "the output notebook's path after the download")
    out = nbformat.from_dict(await read_file(hub, user, token, path))  # a notebook model
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in out.cells]
    assert "sum 6" in texts[4] and "done 6" in texts[5], texts
    assert all(c.execution_count for c in out.cells)
    assert out.metadata["migrating_batch"]["resumes"] == [job["status_message"]]
    return runs


async def test_a_job_reclaimed_during_its_long_cell_completes_at_that_cell(hub):
    await hub.spawn("alice")
    token = await hub.user_token("alice")
    job_url = await start_job(hub, "alice", token, "six", 60)
    # jupyter-scheduler's db and staging folder are in the home, so they move with it
    before = await hub.server_info("alice")
    home = hub.workdir / "hosts" / "disks" / before["host_id"] / "home" / "alice"
    assert (home / ".local/share/jupyter/scheduler.sqlite").exists()
    staging = home / ".local/share/jupyter/scheduler_staging_area" / job_url.rsplit("/")[-1]
    assert staging.is_dir()
    # a server under a job is active: its activity goes on with no kernel of its own busy
    _, status1 = await hub.request("GET", f"/user/alice/api/status?{QUIET}", token)

    async def active():
        _, status = await hub.request("GET", f"/user/alice/api/status?{QUIET}", token)
        return status["last_activity"] > status1["last_activity"]

    await until(active, 10, "activity reported")
    # and the hub sees it: what jupyterhub-idle-culler reads (the server tells the hub its
    # activity every second here)
    _, user = await hub.api("GET", "/users/alice")
    stamp = user["servers"][""]["last_activity"]

    async def hub_sees():
        _, user = await hub.api("GET", "/users/alice")
        return user["servers"][""]["last_activity"] > stamp

    await until(hub_sees, 10, "the hub to see the job's activity")

    status, data = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": 6}
    )
    assert status == 202, data
    after = await wait_moved(hub, "alice", before["host_id"])
    job = await completed(hub, "alice", token, job_url)
    assert job["status_message"].startswith(
        f"resumed on {after['host_id']} at cell 4 after a move from {before['host_id']}"
    ), job["status_message"]
    assert "cell 4 was interrupted and is re-run" in job["status_message"]
    await check_every_cell(hub, "alice", token, "six", job_url, job)
    await wait_released(hub, before["host_id"])


async def test_suspend_pauses_a_job_at_its_next_cell_and_resume_goes_on_from_there(hub):
    await hub.spawn("bob")
    token = await hub.user_token("bob")
    # cell 4 ends well within the final checkpoint's time: the job pauses after it
    job_url = await start_job(hub, "bob", token, "six", 12)
    before = await hub.server_info("bob")
    status, answer = await hub.migrate_api("POST", "/servers/bob/suspend")
    assert status == 200, answer
    assert answer["state"] == "Suspended" and answer["host_id"] is None, answer
    # the answer says where the job stopped and that it resumes with the server
    assert answer["jobs"] == ["Batch job six paused before cell 5: it resumes with the server"]
    await wait_released(hub, before["host_id"])

    status, answer = await hub.migrate_api("POST", "/servers/bob/resume")
    assert status in (200, 202), answer
    after = await until(lambda: running(hub, "bob"), 90, "bob to resume")
    job = await completed(hub, "bob", token, job_url)
    assert job["status_message"] == (
        f"resumed on {after['host_id']} at cell 5 after its server was stopped and started "
        f"again (it ran on {before['host_id']})"
    ), job["status_message"]
    # nothing ran twice: the pause came at a cell boundary
    assert await check_every_cell(hub, "bob", token, "six", job_url, job) == [1, 2, 3, 4, 5, 6]


async def test_across_a_hub_restart_during_the_notice_the_job_moves_and_completes(hub):
    await hub.spawn("carol")
    token = await hub.user_token("carol")
    job_url = await start_job(hub, "carol", token, "six", 60)
    before = await hub.server_info("carol")
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": 30}
    )
    assert status == 202, data
    # the hub restarts during the notice; the restarted hub finds the notice standing and
    # moves the server
    await hub.restart()
    after = await wait_moved(hub, "carol", before["host_id"], timeout=90)
    job = await completed(hub, "carol", token, job_url)
    assert job["status_message"].startswith(
        f"resumed on {after['host_id']} at cell 4 after a move from {before['host_id']}"
    ), job["status_message"]
    await check_every_cell(hub, "carol", token, "six", job_url, job)
    await wait_released(hub, before["host_id"])


async def running(hub, user) -> dict | None:
    info = await hub.server_info(user)
    return info if info["state"] == "Running" else None


def headless_notebook(text: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    cell = nbformat.v4.new_code_cell('greeting = "hi"')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(f"print(greeting, {text!r})")]
    return nbformat.writes(nb)


async def headless(hub, user, token, body) -> dict:
    """A headless job through the control API, to its end (completed) and its server's
    removal."""
    status, job = await hub.migrate_api("POST", "/jobs", token, body)
    assert status == 201, job
    done = await ended(hub, token, job["id"])
    assert done["status"] == "completed", done

    async def removed():
        status, model = await hub.api("GET", f"/users/{user}")
        return status == 200 and job["id"] not in model["servers"]

    await until(removed, 120, f"server {user}/{job['id']} to be removed")
    return done


def printed(model: dict) -> list[str]:
    nb = nbformat.from_dict(model)
    return ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells]


async def test_a_headless_jobs_output_lands_in_a_suspended_home_and_in_a_running_one(hub):
    await hub.spawn("dana")
    token = await hub.user_token("dana")
    await write_file(hub, "dana", token, "run.ipynb", headless_notebook("suspended"))
    status, data = await hub.migrate_api("POST", "/servers/dana/suspend", token)
    assert status == 200 and data["state"] == "Suspended", data

    # the default server is suspended: the input is read from its checkpoint, the output
    # goes into a new one, which its resume restores
    body = {"notebook": "run.ipynb", "parameters": {"greeting": "bye"}}
    done = await headless(hub, "dana", token, body)
    assert done["output"] == f"run.{done['id']}.ipynb"
    info = await hub.server_info("dana")
    assert info["state"] == "Suspended" and info["host_id"] is None, info
    assert any("written to checkpoint" in e["message"] for e in done["events"]), done["events"]
    status, data = await hub.migrate_api("POST", "/servers/dana/resume?wait=true", token)
    assert status == 200 and data["state"] == "Running", data
    out = await read_file(hub, "dana", token, done["output"])
    assert "bye suspended" in printed(out)[2], printed(out)  # after the injected cell
    log = await read_file(hub, "dana", token, done["log"])
    assert "status completed; 0 move(s)" in log, log
    assert (await read_file(hub, "dana", token, "run.ipynb"))["cells"], "input kept"

    # running: through its Contents API, and the job still has a server of its own
    await write_file(hub, "dana", token, "run.ipynb", headless_notebook("running"))
    before = await hub.server_info("dana")
    done = await headless(hub, "dana", token, {"notebook": "run.ipynb"})
    assert before["host_id"] not in done["hosts"], done
    out = await read_file(hub, "dana", token, done["output"])
    assert "hi running" in printed(out)[1], printed(out)
    assert (await hub.server_info("dana"))["host_id"] == before["host_id"]
    # the removed job servers leave no checkpoint folders behind (walker finding 11)
    manifests = hub.workdir / "checkpoints" / "manifests"
    assert not [p.name for p in manifests.iterdir() if "job-" in p.name], list(manifests.iterdir())
