"""The agent's errors: JSON bodies, the caller's mistakes are 4xx with a message, never 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_util import AgentProcess

from migrating_spawner.checkpoint import LocalCheckpointStore


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), "127.0.0.249")
    proc.post("/processes/p", {"cmd": ["sleep", "60"]}).raise_for_status()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("store")
    return LocalCheckpointStore(root_dir=str(root), fsync=False).agent_config()


def assert_json_error(resp, status: int, words: str = "") -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    message = resp.json()["message"]
    assert isinstance(message, str) and message
    assert words in message, message


@pytest.mark.parametrize(
    "path, words",
    [
        ("/processes/p?grace=soon", "grace"),
        ("/processes/p?grace=nan", "grace"),
        ("/processes/p?grace=-1", "grace"),
        ("/processes/p?grace=inf", "grace"),
    ],
)
def test_bad_grace_is_400_and_stops_nothing(agent, path, words):
    assert_json_error(agent.delete(path), 400, words)
    assert agent.get("/processes/p").json()["running"] is True


@pytest.mark.parametrize("tail", ["many", "1.5", "-3"])
def test_bad_log_tail_is_400(agent, tail):
    assert_json_error(agent.get(f"/processes/p/log?tail={tail}"), 400, "tail")


def test_unknown_things_are_404_in_json(agent):
    assert_json_error(agent.get("/processes/nope"), 404, "no process nope")
    assert_json_error(agent.get("/processes/nope/log"), 404, "nope")
    assert_json_error(agent.delete("/processes/nope?grace=zero"), 404, "nope")
    assert_json_error(agent.get("/no/such/route"), 404)
    assert_json_error(agent.get("/notice"), 404, "no notice")


def test_wrong_method_is_405_in_json(agent):
    assert_json_error(agent.request("PUT", "/status"), 405)


@pytest.mark.parametrize(
    "body, words",
    [
        ({"cmd": ["true"], "env": ["A=1"]}, "env"),
        ({"cmd": ["true"], "env": {"A": {"nested": 1}}}, "env"),
        ({"cmd": ["true"], "cwd": "relative/dir"}, "cwd"),
        ({"cmd": ["true"], "cwd": 7}, "cwd"),
        ({"cmd": "true"}, "cmd"),
        ({"cmd": ["true"], "files": ["a"]}, "files"),
    ],
)
def test_bad_process_bodies_are_400_in_json(agent, body, words):
    assert_json_error(agent.post("/processes/bad", body), 400, words)
    assert agent.get("/processes/bad").status_code == 404


def test_body_that_is_not_json_is_400_in_json(agent):
    assert_json_error(agent.request("POST", "/processes/bad", data=b"{not json"), 400, "JSON")
    assert_json_error(agent.request("POST", "/processes/bad", data=b"\xff\xfe"), 400, "JSON")
    assert_json_error(agent.post("/reclaim", ["not", "an", "object"]), 400, "object")


def home_bodies(tmp: Path, store: dict) -> list[tuple[str, dict, str]]:
    root = str(tmp / "home")
    return [
        ("/home/snapshot", {"store": store}, "root"),
        ("/home/snapshot", {"root": "relative", "store": store}, "root"),
        ("/home/snapshot", {"root": root, "store": "local"}, "store"),
        ("/home/snapshot", {"root": root, "store": {"kind": "no.such.Store"}}, "store"),
        ("/home/snapshot", {"root": root, "store": {"kind": "local", "config": "x"}}, "store"),
        ("/home/snapshot", {"root": root, "store": store, "parent_id": "../x"}, "parent_id"),
        ("/home/snapshot", {"root": root, "store": store, "checkpoint_id": 5}, "checkpoint_id"),
        ("/home/snapshot", {"root": root, "store": store, "exclude": ".cache"}, "exclude"),
        ("/home/snapshot", {"root": root, "store": store, "previous": [1]}, "previous"),
        ("/home/snapshot", {"root": root, "store": store, "previous": {"../x": {}}}, "previous"),
        ("/home/restore", {"root": root, "store": store}, "files"),
        ("/home/restore", {"root": root, "store": store, "files": ["a"]}, "files"),
        ("/home/restore", {"root": root, "store": store, "files": {"a": 1}}, "files"),
        (
            "/home/restore",
            {"root": root, "store": store, "files": {}, "current_id": "/"},
            "current",
        ),
        ("/home/restore", {"root": root, "store": store, "files": {}, "current": 3}, "current"),
    ]


def test_bad_home_requests_are_400_in_json(agent, store, tmp_path):
    (tmp_path / "home").mkdir()
    for path, body, words in home_bodies(tmp_path, store):
        resp = agent.post(path, body)
        assert resp.status_code == 400, (path, body, resp.text)
        assert_json_error(resp, 400, words)
    assert list((tmp_path / "home").iterdir()) == []


def test_a_checkpoint_that_cannot_be_restored_is_422_in_json(agent, store, tmp_path):
    files = {"../evil": {"type": "file", "mode": 0o644, "size": 0, "mtime_ns": 0, "chunks": []}}
    resp = agent.post(
        "/home/restore", {"root": str(tmp_path / "h"), "store": store, "files": files}
    )
    assert_json_error(resp, 422, "refusing to restore")
    missing = {"a": {"type": "file", "mode": 0o644, "size": 1, "mtime_ns": 0, "chunks": ["0" * 64]}}
    resp = agent.post(
        "/home/restore", {"root": str(tmp_path / "h"), "store": store, "files": missing}
    )
    assert_json_error(resp, 422, "missing")
    resp = agent.post("/home/snapshot", {"root": str(tmp_path / "nope"), "store": store})
    assert_json_error(resp, 422, "not a directory")
