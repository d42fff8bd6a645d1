"""`POST /processes/{name}` with `files`: written under the host's disk before the start."""

from __future__ import annotations

import stat

import pytest
from agent_util import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("agent-files"), "127.0.0.242")
    yield proc
    proc.stop()


def test_files_are_written_private_before_the_process_starts(agent):
    body = {
        # the process reads the file at once: it must be there before the start
        "cmd": ["sh", "-c", "cat kernels/conn.json > seen.txt"],
        "files": {"kernels/conn.json": '{"key": "secret"}'},
    }
    resp = agent.post("/processes/reader", body)
    assert resp.status_code == 201, resp.text
    path = agent.disk / "kernels" / "conn.json"
    assert path.read_text() == '{"key": "secret"}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wait_for(
        lambda: (
            (agent.disk / "seen.txt").exists()
            and (agent.disk / "seen.txt").read_text() == '{"key": "secret"}'
        )
    )


@pytest.mark.parametrize(
    "files",
    [
        {"../escape.json": "x"},
        {"kernels/../../escape.json": "x"},
        {"/tmp/absolute.json": "x"},
        {"": "x"},
        {"ok.json": 42},
        ["not", "a", "dict"],
    ],
)
def test_bad_files_are_refused_and_nothing_starts(agent, files):
    resp = agent.post("/processes/bad", {"cmd": ["sleep", "30"], "files": files})
    assert resp.status_code == 400, resp.text
    assert agent.get("/processes/bad").status_code == 404
    assert not (agent.disk.parent / "escape.json").exists()
    assert not (agent.disk / "ok.json").exists()
