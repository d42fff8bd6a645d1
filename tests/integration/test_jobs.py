"""Headless jobs (issue 12 item 2) on one real hub (real CHP, local hosts, servers, kernels;
shared homes) shared by the module: `jupyterhub-migrate submit` and the REST API run a
notebook on a named server of its own; a reclaim mid-run moves it and it resumes at the
next cell; the output notebook and the log land next to the input; `jobs` lists it with
its move; cancel, bad input, and a hub restart under a running job. A real
jupyterhub-idle-culler runs as the hub's service throughout: it culls an idle server, never a
job's server while its job runs (running jobs count as the server's activity).

The notebooks append each cell's number to a counter file at an absolute path the test
gives as a parameter (the job's server has a home of its own), and a cell that must wait
for the test waits for a file the test creates."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from realhub import VENV_BIN, culler_config, module_hub, until
from test_move import wait_released

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

#: seconds of inactivity after which the idle culler stops (suspends) a server
CULL_AFTER = 20

CONFIG = f"""
c.JupyterHub.allow_named_servers = True
# a price for the local hosts' instance type: the cost so far is host time at it
c.JobRunner.instance_prices = {{"small": 3.6}}
# running jobs count as activity every second (default 10 s), and the servers tell the hub
# their activity every second (jupyterhub-singleuser's default: 5 minutes), so a culler
# timeout of {CULL_AFTER} s is long against the reports (and against a move's gap)
c.Spawner.args = ["--MigratingScheduler.activity_interval=1"]
c.Spawner.environment = {{"JUPYTERHUB_ACTIVITY_INTERVAL": "1"}}
{culler_config(CULL_AFTER)}
"""

hub = module_hub(CONFIG, "jobs", server_extensions=("jupyter_scheduler",))


def notebook(cells: list[str], parameters: str | None = 'counter = "counter.txt"') -> str:
    """Cell i (from 1) first appends i to `counter`; a `parameters` cell first if given."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for i, body in enumerate(cells, 1):
        head = "import os, time\n" if i == 1 else ""
        count = f"open(counter, 'a').write('{i}\\n')\n"
        nb.cells.append(nbformat.v4.new_code_cell(head + count + body))
    return nbformat.writes(nb)


def wait_for(path: Path, seconds: int = 120) -> str:
    """Cell code: wait until `path` exists (the test creates it), at most `seconds`."""
    return (
        f"for _ in range({seconds * 10}):\n"
        f"    if os.path.exists({str(path)!r}): break\n"
        "    time.sleep(0.1)"
    )


def counts(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def home(hub) -> Path:
    return hub.workdir / "homes" / "alice"


def put_notebook(hub, rel: str, text: str) -> None:
    path = home(hub) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cli(hub, token: str, *args: str) -> dict:
    out = subprocess.run(
        [str(VENV_BIN / "jupyterhub-migrate"), "--url", hub.url, "--token", token, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def job(hub, token: str, job_id: str) -> dict:
    status, data = await hub.migrate_api("GET", f"/jobs/{job_id}", token)
    assert status == 200, data
    return data


async def ended(hub, token: str, job_id: str, timeout: float = 120) -> dict:
    async def done():
        data = await job(hub, token, job_id)
        return data if data["status"] in ("completed", "failed", "cancelled") else None

    return await until(done, timeout, f"job {job_id} to end")


async def gone(hub, server: str) -> None:
    async def removed():
        status, user = await hub.api("GET", "/users/alice")
        return status == 200 and server not in user["servers"]

    await until(removed, 120, f"server alice/{server} to be removed")


@pytest.fixture
def scratch(tmp_path):
    os.chmod(tmp_path, 0o777)
    return tmp_path


async def test_a_job_reclaimed_mid_run_resumes_at_the_next_cell_and_lands_next_to_its_input(
    hub, scratch
):
    token = await hub.user_token("alice")
    gate = scratch / "go"
    cells = [
        "a = 1",
        "b = a + 1",
        # cell 3 waits for the test, which reclaims the host meanwhile
        wait_for(gate),
        "print('label', label, a + b)",
    ]
    put_notebook(hub, "work/run.ipynb", notebook(cells, 'counter = "c.txt"\nlabel = "x"'))
    counter = scratch / "counter.txt"
    submitted = await asyncio.to_thread(
        cli, hub, token, "submit", "work/run.ipynb", "-p", "counter", str(counter),
        "-p", "label", "hello", "--name", "nightly",
    )  # fmt: skip
    job_id = submitted["id"]
    assert submitted["status"] == "queued" and submitted["name"] == "nightly"
    assert submitted["parameters"] == {"counter": str(counter), "label": "hello"}

    await until(lambda: _has(counter, 3), 120, "cell 3 running")

    async def running_record():
        # the hub's record follows the job's own start (a loaded run saw cell 3 running
        # while the record still said queued)
        data = await job(hub, token, job_id)
        return data if data["status"] == "running" else None

    running = await until(running_record, 60, "the job's record to say running")
    # it runs on a named server of its own, without the user's default server
    status, user = await hub.api("GET", "/users/alice")
    assert set(user["servers"]) == {job_id}, user["servers"]
    old = running["hosts"][-1]
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 6}
    )
    assert status == 202, data
    assert data["moving"] == [f"alice/{job_id}"], data

    async def moved():
        data = await job(hub, token, job_id)
        return data if data["moves"] == 1 and data["status"] == "running" else None

    after = await until(moved, 90, "the job's move")
    assert after["hosts"][0] == old and after["hosts"][-1] != old, after
    gate.touch()
    done = await ended(hub, token, job_id)
    assert done["status"] == "completed", done
    runs = counts(counter)
    # cells before the reclaimed one ran once; the one it hit at most twice
    assert runs.count(1) == 1 and runs.count(2) == 1 and runs.count(4) == 1, runs
    assert 1 <= runs.count(3) <= 2, runs

    # the output notebook and the log, next to the input
    assert done["output"] == f"work/run.{job_id}.ipynb"
    assert done["log"] == f"work/run.{job_id}.log"
    out = nbformat.read(home(hub) / done["output"], as_version=4)
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in out.cells]
    assert "label hello 3" in texts[-1], texts
    assert out.metadata["migrating_batch"]["resumes"][0].startswith(
        f"resumed on {after['hosts'][-1]} at cell"
    ), out.metadata["migrating_batch"]
    log = (home(hub) / done["log"]).read_text()
    assert f"moved from {old} to {after['hosts'][-1]}" in log, log
    assert "status completed; 1 move(s)" in log, log

    # the status agreed with the message all along (walker finding 6): `running on <host>`
    # only once it ran, never `moving` after the resumed run's note
    texts = [e["message"] for e in done["events"]]
    assert any(t == f"running on {old}" for t in texts), texts
    assert texts.index(f"running on {old}") > next(
        i for i, t in enumerate(texts) if t.startswith("created in jupyter-scheduler on")
    ), texts

    # `jobs` lists it with its move, timings and cost; its server is gone, its hosts released
    listed = await asyncio.to_thread(cli, hub, token, "jobs")
    row = next(j for j in listed["jobs"] if j["id"] == job_id)
    assert row["status"] == "completed" and row["moves"] == 1, row
    assert row["duration"] > 0 and row["host_seconds"] > 0, row
    assert row["cost"] == pytest.approx(row["host_seconds"] * 3.6 / 3600, rel=0.01), row
    await gone(hub, job_id)
    for host in after["hosts"]:
        await wait_released(hub, host)


async def submit_running(hub, token, name, gate, counter) -> str:
    """Submit a one-cell job that runs until `gate` exists; returns its id once it runs."""
    put_notebook(hub, name, notebook([wait_for(gate, 600)]))
    status, submitted = await hub.migrate_api(
        "POST", "/jobs", token, {"notebook": name, "parameters": {"counter": str(counter)}}
    )
    assert status == 201, submitted
    await until(lambda: _has(counter, 1), 120, "cell 1 running")
    return submitted["id"]


async def test_cancel_of_a_running_job_stops_its_server(hub, scratch):
    token = await hub.user_token("alice")
    counter = scratch / "counter.txt"
    job_id = await submit_running(hub, token, "long.ipynb", scratch / "never", counter)
    running = await job(hub, token, job_id)
    cancelled = await asyncio.to_thread(cli, hub, token, "cancel", job_id)
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["message"].startswith("its server was stopped and removed"), cancelled
    await gone(hub, job_id)
    await wait_released(hub, running["hosts"][-1])
    assert "cancelled by alice" in (home(hub) / cancelled["log"]).read_text()
    # a finished job cannot be cancelled again
    status, data = await hub.migrate_api("POST", f"/jobs/{job_id}/cancel", token)
    assert status == 409 and "cancelled" in data["message"], data


async def test_bad_input_is_refused_before_anything_starts(hub):
    token = await hub.user_token("alice")
    put_notebook(hub, "ok.ipynb", notebook(["pass"]))
    (home(hub) / "not-a-notebook.ipynb").write_text("hello")
    cases = [
        ({"notebook": "missing.ipynb"}, 404, "no notebook missing.ipynb in alice's home"),
        ({"notebook": "ok.ipynb", "profile": "huge"}, 400, "Unknown profile 'huge'"),
        ({"notebook": "not-a-notebook.ipynb"}, 400, "is not a notebook"),
        ({"notebook": "../bob/x.ipynb"}, 400, "must be a path inside your home"),
        ({"notebook": "ok.ipynb", "parameters": {"1x": 1}}, 400, "not a Python identifier"),
        ({"notebook": "ok.ipynb", "colour": "red"}, 400, "unknown field(s) colour"),
    ]
    for body, code, message in cases:
        status, data = await hub.migrate_api("POST", "/jobs", token, body)
        assert status == code and message in data["message"], (body, status, data)
    status, user = await hub.api("GET", "/users/alice")
    assert not [s for s in user["servers"] if s.startswith("job-")], user["servers"]
    status, data = await hub.migrate_api("GET", "/jobs/job-00000000", token)
    assert status == 404, data
    # someone else's job reads as missing
    bob = await hub.user_token("bob")
    status, listed = await hub.migrate_api("GET", "/jobs", bob)
    assert status == 200 and all(j["user"] == "bob" for j in listed["jobs"]), listed
    status, data = await hub.migrate_api("GET", "/jobs?user=alice", bob)
    assert status == 404, data
    # `jobs nosuchuser` (walker finding 8): no such user, a non-zero exit
    out = subprocess.run(
        [str(VENV_BIN / "jupyterhub-migrate"), "--url", hub.url, "--token", hub.admin_token,
         "jobs", "nosuchuser"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "no user nosuchuser" in out.stderr + out.stdout, out


async def test_a_notebook_without_a_kernelspec_runs_on_python3_and_an_unknown_kernel_fails(
    hub, scratch
):
    token = await hub.user_token("alice")
    counter = scratch / "counter.txt"
    nb = nbformat.reads(notebook(["print('on', 1 + 1)"]), as_version=4)
    del nb.metadata["kernelspec"]
    put_notebook(hub, "nokernel.ipynb", nbformat.writes(nb))
    body = {"notebook": "nokernel.ipynb", "parameters": {"counter": str(counter)}}
    status, submitted = await hub.migrate_api("POST", "/jobs", token, body)
    assert status == 201, submitted
    assert submitted["kernel"] == "python3", submitted
    note = "this notebook names no kernel (metadata.kernelspec): it runs on python3"
    assert submitted["warnings"] == [note], submitted
    # and a kernel the job's server does not have (papermill's -k): failed, saying which
    bad = await asyncio.to_thread(
        cli, hub, token, "submit", "nokernel.ipynb", "-k", "nosuchkernel",
        "-p", "counter", str(scratch / "other.txt"),
    )  # fmt: skip
    assert bad["kernel"] == "nosuchkernel" and not bad["warnings"], bad
    done = await ended(hub, token, submitted["id"])
    assert done["status"] == "completed" and done["warnings"] == [note], done
    out = nbformat.read(home(hub) / done["output"], as_version=4)
    assert out.metadata["kernelspec"]["name"] == "python3"
    assert "on 2" in "".join(o.get("text", "") for o in out.cells[-1].outputs)
    failed = await ended(hub, token, bad["id"])
    assert failed["status"] == "failed", failed
    assert "no kernel nosuchkernel on its server (it has: " in failed["error"], failed
    assert "python3" in failed["error"], failed
    await gone(hub, bad["id"])


async def test_parameters_without_a_parameters_cell_run_with_a_warning(hub, scratch):
    token = await hub.user_token("alice")
    counter = scratch / "counter.txt"
    put_notebook(hub, "plain.ipynb", notebook(["print('seen', counter)"], parameters=None))
    status, submitted = await hub.migrate_api(
        "POST", "/jobs", token, {"notebook": "plain.ipynb", "parameters": {"counter": str(counter)}}
    )
    assert status == 201, submitted
    warning = (
        "this notebook has no cell tagged 'parameters': the parameters were injected at the top"
    )
    assert submitted["warnings"] == [warning]
    done = await ended(hub, token, submitted["id"])
    assert done["status"] == "completed", done
    assert done["warnings"] == [warning], done
    out = nbformat.read(home(hub) / done["output"], as_version=4)
    assert "injected-parameters" in out.cells[0].metadata["tags"]
    assert out.metadata["migrating_batch"]["warnings"] == [warning]
    assert f"warning: {warning}" in (home(hub) / done["log"]).read_text()


async def test_a_failing_cell_fails_the_job_once_with_the_output_up_to_it(hub, scratch):
    token = await hub.user_token("alice")
    counter = scratch / "counter.txt"
    cells = ["print('before')", "raise ValueError('bad input data')", "print('never')"]
    put_notebook(hub, "fails.ipynb", notebook(cells))
    status, submitted = await hub.migrate_api(
        "POST", "/jobs", token, {"notebook": "fails.ipynb", "parameters": {"counter": str(counter)}}
    )
    assert status == 201, submitted
    done = await ended(hub, token, submitted["id"])
    assert done["status"] == "failed", done
    assert "ValueError" in done["error"] and "bad input data" in done["error"], done
    out = nbformat.read(home(hub) / done["output"], as_version=4)
    # the parameters cell, the parameters injected after it, then the job's three cells
    assert "injected-parameters" in out.cells[1].metadata["tags"], out.cells[1]
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in out.cells]
    assert "before" in texts[2], texts
    assert any(o.get("ename") == "ValueError" for o in out.cells[3].outputs), out.cells[3]
    assert not out.cells[4].outputs
    await gone(hub, submitted["id"])
    assert counts(counter) == [1, 2], "the failed cell ran again"
    assert "error: " in (home(hub) / done["log"]).read_text()


async def test_a_hub_restart_under_a_running_job(hub, scratch):
    token = await hub.user_token("alice")
    counter = scratch / "counter.txt"
    gate = scratch / "go"
    put_notebook(hub, "restart.ipynb", notebook([wait_for(gate), "print('after restart')"]))
    submitted = await asyncio.to_thread(
        cli, hub, token, "submit", "restart.ipynb", "-p", "counter", str(counter)
    )
    await until(lambda: _has(counter, 1), 120, "cell 1 running")
    await hub.restart()

    async def api_up():
        status, _ = await hub.migrate_api("GET", "/jobs", token)
        return status == 200

    await until(api_up, 60, "the control API after the restart")
    listed = await asyncio.to_thread(cli, hub, token, "jobs", "alice")
    row = next(j for j in listed["jobs"] if j["id"] == submitted["id"])
    assert row["status"] == "running", row
    gate.touch()
    done = await ended(hub, token, submitted["id"])
    assert done["status"] == "completed", done
    assert counts(counter) == [1, 2], counts(counter)
    assert any("the hub restarted" in e["message"] for e in done["events"]), done["events"]
    await gone(hub, submitted["id"])


async def _has(path: Path, n: int) -> bool:
    return n in counts(path)


async def test_the_idle_culler_culls_an_idle_server_but_not_one_under_a_running_job(hub, scratch):
    token = await hub.user_token("alice")
    counter = scratch / "counter.txt"
    gate = scratch / "go"
    # the job's one cell runs until the test lets it end: long past the culler's timeout
    await hub.spawn("erin")  # idle all along: the control
    job_id = await submit_running(hub, token, "busy.ipynb", gate, counter)
    started = await job(hub, token, job_id)

    async def erin_culled():
        status, user = await hub.api("GET", "/users/erin")
        return status == 200 and "" not in user["servers"]

    await until(erin_culled, CULL_AFTER + 40, "the idle culler to stop erin's idle server")
    # the job's server is, by then, older than the timeout; give the culler another full
    # timeout and two more looks at it
    ran = time.monotonic()
    while time.monotonic() - ran < CULL_AFTER + 4:
        status, user = await hub.api("GET", "/users/alice")
        assert user["servers"].get(job_id, {}).get("ready"), user["servers"]
        await asyncio.sleep(1)
    log = hub.log_path.read_text(errors="replace")
    assert "Culling server erin (" in log  # the default server: its user's name alone
    assert f"Culling server alice/{job_id}" not in log
    now = await job(hub, token, job_id)
    assert now["status"] == "running" and now["hosts"] == started["hosts"], now
    gate.touch()
    done = await ended(hub, token, job_id)
    assert done["status"] == "completed" and done["moves"] == 0, done
    await gone(hub, job_id)
