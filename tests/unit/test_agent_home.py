"""The agent keeps its last home file tables by checkpoint id: the hub sends only ids.

Real agent processes on loopback addresses; the checkpoint store is a folder in tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_util import AgentProcess

from migrating_spawner.checkpoint import LocalCheckpointStore

OLD_NS = 1_600_000_000 * 10**9  # files dated in the past are not "racy" (re-read anyway)


@pytest.fixture
def store(tmp_path: Path) -> LocalCheckpointStore:
    return LocalCheckpointStore(root_dir=str(tmp_path / "store"), fsync=False)


@pytest.fixture
def agent(tmp_path: Path):
    (tmp_path / "agent").mkdir()
    proc = AgentProcess(tmp_path / "agent", "127.0.0.247")
    yield proc
    proc.stop()


def make_home(root: Path) -> int:
    """A small home dated in the past; returns its size in bytes."""
    (root / "sub").mkdir(parents=True)
    (root / "notes.md").write_text("x = 42\n")
    (root / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    for path in (root / "notes.md", root / "sub" / "data.bin"):
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return len("x = 42\n") + 300_000


def snapshot(agent: AgentProcess, root: Path, store, **ids) -> dict:
    resp = agent.post("/home/snapshot", {"root": str(root), "store": store.agent_config(), **ids})
    assert resp.status_code == 200, resp.text
    return resp.json()


def restore(agent: AgentProcess, root: Path, files: dict, store, **ids) -> dict:
    body = {"root": str(root), "files": files, "store": store.agent_config(), **ids}
    resp = agent.post("/home/restore", body)
    assert resp.status_code == 200, resp.text
    return resp.json()["stats"]


def test_snapshot_from_a_parent_id_reads_only_changes(agent, store, tmp_path):
    home = tmp_path / "home"
    size = make_home(home)
    first = snapshot(agent, home, store, checkpoint_id="c1")
    assert first["stats"]["bytes_read"] == size and first["stats"]["parent"] is None

    (home / "notes.md").write_text("x = 43\n")
    os.utime(home / "notes.md", ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    second = snapshot(agent, home, store, parent_id="c1", checkpoint_id="c2")
    assert second["stats"]["parent"] == "c1"
    assert second["stats"]["bytes_read"] == len("x = 43\n")  # data.bin was not read again
    assert second["files"]["sub/data.bin"] == first["files"]["sub/data.bin"]
    assert second["files"]["notes.md"]["chunks"] != first["files"]["notes.md"]["chunks"]

    # the table is kept for the folder it was taken of, not for another one
    other = tmp_path / "other"
    make_home(other)
    assert snapshot(agent, other, store, parent_id="c2")["stats"]["parent"] is None


def test_unknown_parent_means_a_full_and_correct_snapshot(agent, store, tmp_path):
    home = tmp_path / "home"
    size = make_home(home)
    full = snapshot(agent, home, store)
    # a parent this agent never saw (e.g. taken on another host before a move)
    again = snapshot(agent, home, store, parent_id="20260101T000000.000000Z-00000000")
    assert again["stats"]["parent"] is None
    assert again["stats"]["bytes_read"] == size
    assert again["files"] == full["files"]


def test_after_an_agent_restart_the_snapshot_is_full(store, tmp_path):
    home = tmp_path / "home"
    size = make_home(home)
    (tmp_path / "a1").mkdir()
    first_agent = AgentProcess(tmp_path / "a1", "127.0.0.248")
    try:
        first = snapshot(first_agent, home, store, checkpoint_id="c1")
        assert snapshot(first_agent, home, store, parent_id="c1")["stats"]["bytes_read"] == 0
    finally:
        first_agent.stop()
    (tmp_path / "a2").mkdir()
    restarted = AgentProcess(tmp_path / "a2", "127.0.0.248")
    try:
        (home / "notes.md").write_text("changed while the agent was down\n")
        after = snapshot(restarted, home, store, parent_id="c1")
    finally:
        restarted.stop()
    assert after["stats"]["parent"] is None and after["stats"]["bytes_read"] > size - 10
    assert after["files"]["sub/data.bin"] == first["files"]["sub/data.bin"]
    data = b"".join(store.get_chunk(h) for h in after["files"]["notes.md"]["chunks"])
    assert data == b"changed while the agent was down\n"


def test_restore_over_a_current_id_writes_only_changes(agent, store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_home(src)
    precopy = snapshot(agent, src, store, checkpoint_id="p1")["files"]
    stats = restore(agent, dst, precopy, store, checkpoint_id="p1")
    assert stats["files_written"] == 2 and stats["current"] is None

    (src / "notes.md").write_text("x = 44\n")
    (src / "new.txt").write_text("new")
    final = snapshot(agent, src, store, parent_id="p1", checkpoint_id="f1")["files"]
    stats = restore(agent, dst, final, store, current_id="p1", checkpoint_id="f1")
    assert stats["current"] == "p1"
    assert stats["files_written"] == 2 and stats["files_unchanged"] == 1
    assert (dst / "notes.md").read_text() == "x = 44\n"
    assert (dst / "new.txt").read_text() == "new"
    assert (dst / "sub" / "data.bin").read_bytes() == (src / "sub" / "data.bin").read_bytes()

    # a restored table is the parent of the next snapshot on this host
    assert snapshot(agent, dst, store, parent_id="f1")["stats"]["parent"] == "f1"


def test_restore_over_an_unknown_current_id_writes_everything(agent, store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_home(src)
    files = snapshot(agent, src, store)["files"]
    stats = restore(agent, dst, files, store, current_id="never-restored-here")
    assert stats["current"] is None and stats["files_written"] == 2
    assert (dst / "sub" / "data.bin").read_bytes() == (src / "sub" / "data.bin").read_bytes()
