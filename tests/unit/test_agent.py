"""The host agent, run for real as a subprocess on a loopback address."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from agent_util import AgentProcess, pid_gone, wait_for

from migrating_spawner.checkpoint import LocalCheckpointStore


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), "127.0.0.240")
    yield proc
    proc.stop()


@pytest.fixture
def doomed_agent(tmp_path):
    """An agent of its own, for tests that reclaim (and so end) it."""
    proc = AgentProcess(tmp_path, "127.0.0.241")
    yield proc
    proc.stop()


SLEEP = {"cmd": ["sleep", "30"]}


# -- auth ------------------------------------------------------------------------------


def test_no_token_is_401_and_does_nothing(agent):
    for method, path in [("GET", "/status"), ("GET", "/notice"), ("POST", "/processes/a")]:
        resp = agent.request(method, path, token=None, json=SLEEP)
        assert resp.status_code == 401, (method, path)
        assert resp.json()["message"] == "agent token required"
    assert agent.get("/processes/a").status_code == 404
    # a scheme other than token/bearer counts as no token
    resp = agent.request("GET", "/status", token=None, headers={"Authorization": "Basic x"})
    assert resp.status_code == 401


def test_wrong_token_is_403_and_does_nothing(agent):
    resp = agent.post("/processes/w", SLEEP, token="not-the-secret")
    assert resp.status_code == 403
    assert resp.json()["message"] == "wrong agent token"
    assert agent.get("/processes/w").status_code == 404
    assert agent.get("/status").json()["processes"] == {}

    resp = agent.post("/reclaim", {"notice_seconds": 0}, token="not-the-secret")
    assert resp.status_code == 403
    assert agent.get("/notice").status_code == 404
    assert agent.get("/status").json()["notice"] is None

    assert agent.post("/shutdown", {}, token="not-the-secret").status_code == 403
    assert agent.get("/status").status_code == 200


def test_bearer_scheme_is_accepted(agent):
    resp = agent.request(
        "GET", "/status", token=None, headers={"Authorization": f"Bearer {agent.token}"}
    )
    assert resp.status_code == 200
    assert resp.json()["host_id"] == "test-host"


# -- processes -----------------------------------------------------------------------


def test_process_lifecycle(agent):
    resp = agent.post("/processes/p1", {"cmd": ["sh", "-c", "echo hello-from-p1; exec sleep 30"]})
    assert resp.status_code == 201, resp.text
    started = resp.json()
    assert started["running"] is True and started["exit_code"] is None
    pid = started["pid"]

    status = agent.get("/processes/p1").json()
    assert status["running"] is True and status["pid"] == pid
    assert agent.get("/status").json()["processes"]["p1"]["pid"] == pid

    assert wait_for(lambda: "hello-from-p1" in agent.get("/processes/p1/log").json()["lines"])

    # a second start of a running process is refused
    assert agent.post("/processes/p1", SLEEP).status_code == 409

    stopped = agent.delete("/processes/p1?grace=5").json()
    assert stopped["running"] is False
    assert stopped["exit_code"] == -15  # SIGTERM
    assert wait_for(lambda: pid_gone(pid))
    assert agent.get("/processes/p1").json()["exit_code"] == -15


@pytest.mark.parametrize("grace", [0, 5])
def test_stop_kills_what_the_process_started_in_sessions_of_their_own(
    agent, tmp_path: Path, grace: float
):
    # as jupyter_server starts kernels: each in a new session, out of the server's group;
    # a kernel that does not watch its parent (IRkernel) would outlive its server
    child_pid_file = tmp_path / "kernel.pid"
    resp = agent.post(
        "/processes/p2",
        {"cmd": ["sh", "-c", f"setsid sleep 60 & echo $! > {child_pid_file}; wait"]},
    )
    assert resp.status_code == 201, resp.text
    assert wait_for(lambda: child_pid_file.exists() and child_pid_file.read_text().strip())
    kernel = int(child_pid_file.read_text())
    assert not pid_gone(kernel)

    # with a grace the process exits at SIGTERM first, leaving its kernel to PID 1
    assert agent.delete(f"/processes/p2?grace={grace}").json()["running"] is False
    assert wait_for(lambda: pid_gone(kernel)), "the process's own-session child outlived it"


def test_process_env_is_not_the_agents(agent, monkeypatch):
    resp = agent.post(
        "/processes/envtest",
        {"cmd": ["sh", "-c", "echo FOO=$FOO TOKEN=${JPY_API_TOKEN:-none}"], "env": {"FOO": "bar"}},
    )
    assert resp.status_code == 201
    assert wait_for(lambda: not agent.get("/processes/envtest").json()["running"])
    assert agent.get("/processes/envtest/log").json()["lines"] == ["FOO=bar TOKEN=none"]
    assert agent.get("/processes/envtest").json()["exit_code"] == 0


def test_unknown_process_is_404(agent):
    assert agent.get("/processes/nope").status_code == 404
    assert agent.delete("/processes/nope").status_code == 404
    assert agent.get("/processes/nope/log").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"cmd": "sleep 30"},
        {"cmd": []},
        {"cmd": ["sleep", 30]},
        {},
        ["sleep", "30"],
    ],
)
def test_bad_process_request_is_400(agent, body):
    resp = agent.post("/processes/bad", body)
    assert resp.status_code == 400, resp.text
    assert agent.get("/processes/bad").status_code == 404


def test_body_that_is_not_json_is_400(agent):
    resp = agent.request("POST", "/processes/bad", data=b"{not json")
    assert resp.status_code == 400
    resp = agent.request("POST", "/reclaim", data=b"{not json")
    assert resp.status_code == 400


def test_missing_command_is_400(agent):
    resp = agent.post("/processes/bad", {"cmd": ["/no/such/program"]})
    assert resp.status_code == 400
    assert "cannot start /no/such/program" in resp.text


@pytest.mark.parametrize("seconds", [-1, "soon", "inf", "nan"])
def test_bad_notice_is_400(agent, seconds):
    resp = agent.post("/reclaim", {"notice_seconds": seconds})
    assert resp.status_code == 400, resp.text
    assert agent.get("/notice").status_code == 404


def test_free_port(agent):
    port = agent.get("/free-port").json()["port"]
    assert isinstance(port, int) and port > 0


# -- reclaim -------------------------------------------------------------------------


def test_reclaim_kills_wipes_and_exits(doomed_agent):
    agent = doomed_agent
    child_pid_file = agent.disk / "child.pid"
    resp = agent.post(
        "/processes/server",
        {"cmd": ["sh", "-c", f"sleep 30 & echo $! > {child_pid_file}; wait"]},
    )
    assert resp.status_code == 201
    pid = resp.json()["pid"]
    assert wait_for(lambda: child_pid_file.exists() and child_pid_file.read_text().strip())
    child = int(child_pid_file.read_text())
    assert agent.disk.is_dir() and agent.registry_file.exists()

    assert agent.get("/notice").status_code == 404
    before = time.time()
    resp = agent.post("/reclaim", {"notice_seconds": 2})
    assert resp.status_code == 202
    notice = resp.json()
    assert notice["action"] == "terminate" and notice["host_id"] == "test-host"
    assert before + 2 <= notice["deadline"] <= time.time() + 2
    assert notice["time"].endswith("Z")
    assert agent.get("/notice").json() == notice

    # a later notice does not push the deadline back
    assert agent.post("/reclaim", {"notice_seconds": 60}).json() == notice
    # nothing new starts on a host under notice
    resp = agent.post("/processes/other", SLEEP)
    assert resp.status_code == 409
    assert agent.get("/processes/other").status_code == 404
    # until the deadline the processes still run
    assert not pid_gone(pid) and not pid_gone(child)

    assert agent.proc.wait(timeout=notice["deadline"] - time.time() + 15) == 0
    assert time.time() >= notice["deadline"]
    assert wait_for(lambda: pid_gone(pid) and pid_gone(child))  # the whole group
    assert not agent.disk.exists()
    assert not agent.registry_file.exists()
    assert not agent.token_file.exists()


def test_shutdown_terminates(doomed_agent):
    agent = doomed_agent
    pid = agent.post("/processes/server", SLEEP).json()["pid"]
    assert agent.post("/shutdown", {}).status_code == 202
    assert agent.proc.wait(timeout=15) == 0
    assert wait_for(lambda: pid_gone(pid))
    assert not agent.disk.exists() and not agent.registry_file.exists()


# -- home files ------------------------------------------------------------------------


def test_home_snapshot_and_restore(agent, tmp_path: Path):
    store = LocalCheckpointStore(root_dir=str(tmp_path / "store"), fsync=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "notes.md").write_text("x = 42\n")
    (src / "sub" / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (src / ".cache").mkdir()
    (src / ".cache" / "junk").write_text("skip me")

    resp = agent.post(
        "/home/snapshot",
        {"root": str(src), "store": store.agent_config(), "previous": None, "exclude": [".cache"]},
    )
    assert resp.status_code == 200, resp.text
    files = resp.json()["files"]
    assert "notes.md" in files and "sub/data.bin" in files
    assert not any(path.startswith(".cache") for path in files)

    resp = agent.post(
        "/home/restore", {"root": str(dst), "files": files, "store": store.agent_config()}
    )
    assert resp.status_code == 200, resp.text
    assert (dst / "notes.md").read_text() == "x = 42\n"
    assert (dst / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 1000
    assert not (dst / ".cache").exists()


def test_home_restore_with_a_missing_chunk_touches_nothing(agent, tmp_path: Path):
    store = LocalCheckpointStore(root_dir=str(tmp_path / "store"), fsync=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.txt").write_text("a")
    resp = agent.post("/home/snapshot", {"root": str(src), "store": store.agent_config()})
    files = resp.json()["files"]
    for chunk in (tmp_path / "store" / "chunks").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    resp = agent.post(
        "/home/restore", {"root": str(dst), "files": files, "store": store.agent_config()}
    )
    assert resp.status_code == 422
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]


def test_home_snapshot_of_a_missing_folder_is_422(agent, tmp_path: Path):
    store = LocalCheckpointStore(root_dir=str(tmp_path / "store"), fsync=False)
    resp = agent.post(
        "/home/snapshot", {"root": str(tmp_path / "nope"), "store": store.agent_config()}
    )
    assert resp.status_code == 422


@pytest.mark.parametrize("path", ["/home/snapshot", "/home/restore"])
def test_home_request_without_root_is_400(agent, path):
    assert agent.post(path, {"store": {"kind": "local"}}).status_code == 400
