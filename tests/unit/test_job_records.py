"""Headless jobs' pure parts (batch/jobs.py): status words, papermill's parameter values and
their injection, notebook paths, output names, the record and its JSON-lines store, the log;
and the CLI's `cancel` telling a job from a server. The jobs themselves run with a real hub
in tests/integration/test_jobs.py."""

from __future__ import annotations

import json

import nbformat
import pytest

from migrating_spawner.batch import jobs
from migrating_spawner.batch.executor import parameterize
from migrating_spawner.profiles import DEFAULT_PROFILES, batch_profile, render_form
from migrating_spawner.service import cli


@pytest.mark.parametrize(
    ("scheduler", "moving", "ours"),
    [
        ("CREATED", False, "queued"),
        ("QUEUED", False, "queued"),
        ("IN_PROGRESS", False, "running"),
        ("IN_PROGRESS", True, "moving"),
        ("COMPLETED", True, "completed"),
        ("FAILED", False, "failed"),
        ("STOPPED", False, "cancelled"),
        ("STOPPING", False, "cancelled"),
    ],
)
def test_status_words(scheduler, moving, ours):
    assert jobs.status_from_scheduler(scheduler, moving) == ours
    assert ours in jobs.STATUSES


def test_values_are_read_as_papermill_reads_them():
    assert jobs.resolve_value("3") == 3 and jobs.resolve_value("0.5") == 0.5
    assert jobs.resolve_value("True") is True and jobs.resolve_value("None") is None
    assert jobs.resolve_value("hello") == "hello" and jobs.resolve_value("1e3") == 1000.0
    assert jobs.parameter_source("it's") == '"it\'s"'
    assert jobs.parameter_source(3) == "3" and jobs.parameter_source([1, "a"]) == "[1, 'a']"


def test_parameters_are_names_and_literals():
    assert jobs.check_parameters(None) == {}
    assert jobs.check_parameters({"alpha": 0.5, "label": "x"}) == {"alpha": 0.5, "label": "x"}
    with pytest.raises(ValueError, match="not a Python identifier"):
        jobs.check_parameters({"a-b": 1})
    with pytest.raises(ValueError, match="JSON object"):
        jobs.check_parameters([1])


def _nb(tagged: bool) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("alpha = 0")]
    if tagged:
        nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells.append(nbformat.v4.new_code_cell("print(alpha)"))
    return nb


def test_parameters_go_after_the_parameters_cell_else_at_the_top_with_a_warning():
    nb = _nb(tagged=True)
    params = {"alpha": jobs.parameter_source(0.5), "label": jobs.parameter_source("x")}
    assert parameterize(nb, params) == []
    assert nb.cells[2].source == "alpha = 0.5\nlabel = 'x'"
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    assert jobs.has_parameters_cell(json.loads(nbformat.writes(nb)))

    plain = _nb(tagged=False)
    warnings = parameterize(plain, params)
    assert warnings == ["this notebook has no cell tagged 'parameters': the parameters were "
                        "injected at the top"]  # fmt: skip
    assert plain.cells[0].metadata["tags"] == ["injected-parameters"]
    assert not jobs.has_parameters_cell(json.loads(nbformat.writes(_nb(tagged=False))))


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("run.ipynb", "run.ipynb"),
        ("work/./run.ipynb", "work/run.ipynb"),
        ("/etc/run.ipynb", None),
        ("../bob/run.ipynb", None),
        ("a/../../run.ipynb", None),
        ("run.py", None),
        ("", None),
        (3, None),
    ],
)
def test_notebook_paths_stay_in_the_home(path, ok):
    if ok is None:
        with pytest.raises(ValueError):
            jobs.check_notebook_path(path)
    else:
        assert jobs.check_notebook_path(path) == ok


def test_output_and_log_next_to_the_input():
    assert jobs.output_paths("work/run.ipynb", "job-1a2b3c4d") == (
        "work/run.job-1a2b3c4d.ipynb",
        "work/run.job-1a2b3c4d.log",
    )


def test_job_ids_have_one_form():
    job_id = jobs.new_job_id()
    assert jobs.is_job_id(job_id) and job_id != jobs.new_job_id()
    assert not jobs.is_job_id("alice") and not jobs.is_job_id("job-1a2b3c4d/")


def test_cost_is_host_time_at_the_price():
    record = jobs.JobRecord(id="job-00000001", user="alice", notebook="a.ipynb", profile="batch")
    record.account(3.6, True, now=100.0)  # the first look starts the clock
    record.account(3.6, True, now=110.0)
    record.account(3.6, False, now=200.0)  # between hosts: no host time
    record.account(None, True, now=210.0)  # no price known: time, no cost
    assert record.host_seconds == 20.0 and record.cost == pytest.approx(0.01)
    public = record.public(now=300.0)
    assert public["actions"] == ["cancel"] and public["duration"] is None
    record.started, record.finished, record.status = 100.0, 250.0, jobs.COMPLETED
    assert record.public()["duration"] == 150.0 and record.public()["actions"] == []


def test_store_keeps_the_last_record_of_each_job_across_a_reload(tmp_path):
    store = jobs.JobStore(tmp_path / "jobs")
    a = jobs.JobRecord(id="job-0000000a", user="alice", notebook="a.ipynb", profile="batch")
    b = jobs.JobRecord(id="job-0000000b", user="bob", notebook="b.ipynb", profile="batch")
    store.save(a)
    store.save(b)
    a.status = jobs.COMPLETED
    a.note("completed in 3 s")
    store.save(a)
    with open(store.path, "a") as f:
        f.write('{"id": "job-0000000c", "user": "x"')  # a line cut short by a crash
    again = jobs.JobStore(tmp_path / "jobs")
    loaded = again.load()
    assert set(loaded) == {a.id, b.id}
    assert loaded[a.id].status == "completed" and loaded[a.id].events[-1]["message"].startswith(
        "completed"
    )
    assert [j.id for j in again.unfinished()] == [b.id]
    assert [j.id for j in again.of_user("bob")] == [b.id]
    again.compact()
    assert len(again.path.read_text().splitlines()) == 2
    assert set(jobs.JobStore(tmp_path / "jobs").load()) == {a.id, b.id}


def test_log_tells_the_story():
    record = jobs.JobRecord(
        id="job-0000000a", user="alice", notebook="a.ipynb", profile="batch", parameters={"n": 1}
    )
    record.note("submitted by alice", now=0)
    record.note("moved from h1 to h2 (reclaim notice)", now=60)
    record.moves, record.status, record.error = 1, jobs.FAILED, "ValueError: bad"
    record.warnings.append("no parameters cell")
    text = jobs.render_log(record)
    assert "1970-01-01 00:01:00 UTC  moved from h1 to h2" in text
    assert "warning: no parameters cell" in text and "error: ValueError: bad" in text
    assert "status failed; 1 move(s)" in text


def test_batch_profile_is_for_jobs_only():
    assert batch_profile(DEFAULT_PROFILES, None)["slug"] == "batch"
    assert batch_profile(DEFAULT_PROFILES, "lab-medium")["slug"] == "lab-medium"
    assert batch_profile(DEFAULT_PROFILES[:1], None)["slug"] == "lab-small"
    assert 'value="batch"' not in render_form(DEFAULT_PROFILES)


def test_cli_cancel_tells_a_job_from_a_server(monkeypatch):
    calls = []

    def call(self, method, path, body=None, timeout=30, missing=""):
        calls.append((method, path))
        if path.startswith("jobs/"):
            return {"status": "cancelled", "message": "its server was stopped and removed"}
        return {"lost": "Discarded: kernels"}

    monkeypatch.setattr(cli.Client, "call", call)
    base = ["--url", "http://127.0.0.1:1", "--token", "t", "cancel"]
    assert cli.main([*base, "job-1a2b3c4d"]) == 0
    assert cli.main([*base, "alice"]) == 0
    assert cli.main([*base, "job-1a2b3c4d/"]) == 0  # a user named like a job: with a slash
    assert calls == [
        ("POST", "jobs/job-1a2b3c4d/cancel"),
        ("POST", "servers/alice/cancel"),
        ("POST", "servers/job-1a2b3c4d/cancel"),
    ]


def test_cli_submit_reads_parameters_as_papermill(monkeypatch):
    sent = []

    def call(self, method, path, body=None, timeout=30, missing=""):
        sent.append((method, path, body))
        return {"id": "job-1a2b3c4d", "status": "queued", "notebook": "a.ipynb", "user": "u"}

    monkeypatch.setattr(cli.Client, "call", call)
    argv = ["--url", "http://127.0.0.1:1", "--token", "t", "submit", "a.ipynb"]
    argv += ["-p", "alpha", "0.5", "-p", "label", "x y", "--profile", "batch", "--name", "n"]
    assert cli.main([*argv, "-k", "ir"]) == 0
    assert sent == [
        (
            "POST",
            "jobs",
            {
                "notebook": "a.ipynb",
                "profile": "batch",
                "name": "n",
                "kernel": "ir",
                "parameters": {"alpha": 0.5, "label": "x y"},
            },
        )
    ]


def test_cli_jobs_message_keeps_the_host_and_an_errors_first_line():
    long = "output and log written to the running server's home on local-12-b8304a"
    rows = cli.job_rows(
        [
            {"submitted": 0, "message": long, "error": None},
            {"submitted": 0, "message": "failed", "error": "ValueError: bad\nTraceback ..."},
        ]
    )
    assert rows[0]["message"] == long
    assert rows[1]["message"] == "ValueError: bad"


@pytest.mark.parametrize("status, code", [("completed", 0), ("failed", 1), ("cancelled", 1)])
def test_cli_submit_wait_exits_nonzero_unless_the_job_completed(monkeypatch, status, code):
    answers = iter([{"status": "running"}, {"status": status}])

    def call(self, method, path, body=None, timeout=30, missing=""):
        job = {"id": "job-1a2b3c4d", "notebook": "a.ipynb", "user": "u", "status": "queued"}
        return job if method == "POST" else {**job, **next(answers)}

    monkeypatch.setattr(cli.Client, "call", call)
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: None)
    argv = ["--url", "http://127.0.0.1:1", "--token", "t", "submit", "a.ipynb", "--wait"]
    assert cli.main(argv) == code
