"""Batch notebooks across reclaims, on one real hub (real CHP, servers, kernels, synced homes)
shared by the module: a job created through jupyter-scheduler's own REST API survives a
reclaim of its host during its long cell and resumes at that cell on the new host."""

from __future__ import annotations

import asyncio
import time

import nbformat
import pytest
import pytest_asyncio
from realhub import RealHub
from test_move import read_file, wait_moved, wait_released, write_file

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CONFIG = """
c.MigratingSpawner.home_mode = "synced"
# running jobs count as activity every second (the default is every 10 s)
c.Spawner.args = ["--MigratingScheduler.activity_interval=1"]
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    hub = RealHub(tmp_path_factory.mktemp("batch"), CONFIG)
    hub.start()
    await hub.wait_up()
    yield hub
    hub.stop()
    hub.kill_proxy()
    hub.release_all_hosts()


@pytest.fixture(autouse=True)
def hub_log_on_failure(request, hub):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n===== hub log =====\n{hub.tail(150)}")
        for log in sorted((hub.workdir / "hosts" / "disks").glob("*/logs/*.log")):
            text = "\n".join(x for x in log.read_text().splitlines() if "api/status" not in x)
            print(f"===== server log {log} =====\n{text[-6000:]}")


async def until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def six_cells() -> str:
    """Each cell first appends its number to ~/counter.txt; cells 1-3 build the namespace
    cells 5-6 use; cell 4 sleeps 60 s the first time it runs (a marker in the home says)."""
    cells = {
        1: "a = 1",
        2: "b = 2",
        3: "c = a + b",
        # the home's path changes with the host (synced): found again in the cell
        4: "mark = os.path.expanduser('~/cell4-slept')\nfirst = not os.path.exists(mark)\n"
        "open(mark, 'a').close()\ntime.sleep(60 if first else 0)",
        5: "print('sum', a + b + c)",
        6: "print('done', c * 2)",
    }
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, body in cells.items():
        head = "import os, time\n" if i == 1 else ""
        count = f"open(os.path.expanduser('~/counter.txt'), 'a').write('{i}\\n')\n"
        nb.cells.append(nbformat.v4.new_code_cell(head + count + body))
    return nbformat.writes(nb)


async def counter(hub, token) -> list[int]:
    # not counted as the server's activity: the test checks what the jobs report
    path = "/user/alice/api/contents/counter.txt?no_track_activity=1"
    status, data = await hub.request("GET", path, token)
    return [int(x) for x in data["content"].split()] if status == 200 else []


async def test_a_job_reclaimed_during_its_long_cell_completes_at_that_cell(hub):
    await hub.spawn("alice")
    token = await hub.user_token("alice")
    await write_file(hub, "alice", token, "six.ipynb", six_cells())
    status, created = await hub.request(
        "POST",
        "/user/alice/scheduler/jobs",
        token,
        {
            "input_uri": "six.ipynb",
            "runtime_environment_name": "python",
            "name": "six",
            "output_formats": ["ipynb"],
        },
    )
    assert status == 200, created
    job_url = f"/user/alice/scheduler/jobs/{created['job_id']}"
    await until(lambda: _has(hub, token, 4), 60, "cell 4 running")
    # jupyter-scheduler's db and staging folder are in the home, so they move with it
    before = await hub.server_info("alice")
    home = hub.workdir / "hosts" / "disks" / before["host_id"] / "home" / "alice"
    assert (home / ".local/share/jupyter/scheduler.sqlite").exists()
    assert (home / ".local/share/jupyter/scheduler_staging_area" / created["job_id"]).is_dir()
    # a server under a job is active: its activity goes on with no kernel of its own busy
    _, status1 = await hub.request("GET", "/user/alice/api/status", token)
    await until(
        lambda: _activity_after(hub, token, status1["last_activity"]), 10, "activity reported"
    )

    status, data = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": 6}
    )
    assert status == 202, data
    after = await wait_moved(hub, "alice", before["host_id"])

    async def done():
        status, job = await hub.request("GET", job_url, token)
        assert status == 200, job
        assert job["status"] not in ("FAILED", "STOPPED"), job
        return job if job["status"] == "COMPLETED" else None

    job = await until(done, 60, "the job to complete")
    runs = await counter(hub, token)
    assert [runs.count(i) for i in (1, 2, 3, 5, 6)] == [1, 1, 1, 1, 1], runs
    assert 1 <= runs.count(4) <= 2, runs
    assert job["status_message"].startswith(
        f"resumed on {after['host_id']} at cell 4 after a move from {before['host_id']}"
    ), job["status_message"]
    assert "cell 4 was interrupted and is re-run" in job["status_message"]

    # the output notebook, through jupyter-scheduler's own download into the home
    status, _ = await hub.request("GET", job_url + "/download_files?redownload=true", token)
    assert status == 204
    status, files = await hub.request("GET", job_url, token)
    path = next(f["file_path"] for f in files["job_files"] if f["file_format"] == "ipynb")
    out = nbformat.from_dict(await read_file(hub, "alice", token, path))  # a notebook model
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in out.cells]
    assert "sum 6" in texts[4] and "done 6" in texts[5], texts
    assert all(c.execution_count for c in out.cells)
    assert out.metadata["migrating_batch"]["resumes"] == [job["status_message"]]
    await wait_released(hub, before["host_id"])


async def _has(hub, token, n) -> bool:
    return n in await counter(hub, token)


async def _activity_after(hub, token, stamp) -> bool:
    _, status = await hub.request("GET", "/user/alice/api/status", token)
    return status["last_activity"] > stamp
