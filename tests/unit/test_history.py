"""Each server's history (migrating_spawner/history.py), without a hub: entries on disk that
a new process reads back, what the notes taken on the way put into an entry, the reasons,
and who asked for a stop."""

from __future__ import annotations

import logging
import types

from jupyterhub.app import JupyterHub

from migrating_spawner.history import ServerHistory, hub_shutting_down, reason_kind, requester


def test_entries_survive_a_new_instance_and_carry_the_notes(tmp_path):
    history = ServerHistory(history_dir=str(tmp_path))
    history.note_checkpoint("alice/", {"bytes_uploaded": 1000})
    history.note_checkpoint("alice/", {"bytes_uploaded": 24})
    history.note_snapshot("alice/", {"kernels": {"k1": {"interrupted": "fit()\nmore"}}})
    history.note_restore(
        "alice/",
        {"kernels": {"k1": {"ok": True, "lost": {"gen": "generator"}}, "k2": {"ok": False}}},
    )
    move = types.SimpleNamespace(
        old=types.SimpleNamespace(id="h-1"),
        new=types.SimpleNamespace(id="h-2"),
        reason="reclaim notice for h-1",
        timings={"hold": 0.2, "total": 4.0},
        lost=None,
        final_id="c9",
    )
    entry = history.on_move(types.SimpleNamespace(key="alice/"), move, {}, None)
    assert (entry["kind"], entry["reason"], entry["from_host"], entry["to_host"]) == (
        "move",
        "reclaim notice",
        "h-1",
        "h-2",
    )
    assert (entry["hold_seconds"], entry["duration_seconds"], entry["bytes_moved"]) == (
        0.2,
        4.0,
        1024,
    )
    assert entry["lost"] == {
        "files": None,
        "variables": {"k1": ["gen"]},
        "interrupted_cells": [{"kernel_id": "k1", "cell": "fit()\nmore"}],
        "kernels_fresh": ["k2"],
    }
    assert history.lost_variables(entry) == 1
    # the notes went into that entry: the next one starts clean
    later = history.record("alice/", "suspend", "idle cull", by="idle-culler")
    assert later["bytes_moved"] is None and later["lost"]["variables"] == {}

    # a new process (a restarted hub) reads the same file; other servers are apart
    again = ServerHistory(history_dir=str(tmp_path))
    assert again.entries("alice/") == [entry, later]
    assert again.entries("alice/", limit=1) == [later]
    assert again.entries("bob/lab") == []
    again.forget("alice/")
    assert again.entries("alice/") == []


def test_a_failed_move_has_no_destination(tmp_path):
    history = ServerHistory(history_dir=str(tmp_path))
    move = types.SimpleNamespace(
        old=types.SimpleNamespace(id="h-1"),
        new=types.SimpleNamespace(id="h-2"),
        reason="requested by alice",
        timings={},
        lost="the final checkpoint failed (disk full): files changed after 10:00:00 were lost",
        final_id=None,
    )
    entry = history.on_move(
        types.SimpleNamespace(key="alice/"), move, None, RuntimeError("no host")
    )
    assert (entry["outcome"], entry["error"], entry["to_host"], entry["by"]) == (
        "failed",
        "no host",
        None,
        "alice",
    )
    assert entry["lost"]["files"].startswith("the final checkpoint failed")


def test_old_entries_go_once_a_file_holds_too_many(tmp_path):
    history = ServerHistory(history_dir=str(tmp_path), max_entries=3)
    for i in range(40):
        history.record("alice/", "move", "request", detail="x" * 200 + str(i))
    kept = history.entries("alice/")
    assert 3 <= len(kept) < 40 and kept[-1]["detail"].endswith("39")


def test_the_default_folder_without_a_hub_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ServerHistory().folder == tmp_path / "migrating-history"


def test_reasons():
    assert reason_kind("reclaim notice for local-20-abc") == "reclaim notice"
    assert reason_kind("requested by alice") == "request"
    assert reason_kind("host local-20-abc lost") == "host lost"
    assert reason_kind("rebalance recommendation for i-123") == "rebalance"


class FakeHandler:
    """What requester() looks for: a request handler with the hub's current user."""

    request = object()

    def __init__(self, kind: str, name: str):
        self._jupyterhub_user = types.SimpleNamespace(kind=kind, name=name)

    def stop(self):
        return requester()


def test_requester_is_the_handler_up_the_call_chain():
    assert FakeHandler("service", "idle-culler").stop() == ("service", "idle-culler")
    assert FakeHandler("user", "alice").stop() == ("user", "alice")
    assert requester() is None  # no handler: a stop the hub itself decided


async def test_a_stop_from_the_hubs_cleanup_is_a_hub_shutdown():
    """JupyterHub's own cleanup (Ctrl-C, SIGTERM) stops each server in a task of its own:
    those stops see the hub shutting down; a stop at another time does not."""
    seen = []

    async def stop(name):
        seen.append((name, hub_shutting_down()))

    user = types.SimpleNamespace(spawners={"": types.SimpleNamespace(active=True)}, stop=stop)
    hub = types.SimpleNamespace(
        _service_map={},
        cleanup_servers=True,
        cleanup_proxy=False,
        users={1: user},
        log=logging.getLogger("test"),
        db=types.SimpleNamespace(commit=lambda: None),
        pid_file="",
    )
    assert not hub_shutting_down()
    await JupyterHub.cleanup(hub)
    assert seen == [("", True)]
    await stop("later")
    assert seen[-1] == ("later", False)


def test_a_loss_carries_the_time_it_counts_from(tmp_path):
    """The text says the hub's clock; `files_since` lets the page say the browser's."""
    history = ServerHistory(history_dir=str(tmp_path))
    entry = history.record(
        "alice/",
        "loss",
        "host lost",
        lost_files="the host was lost: files changed after 21:15:36 were lost",
        lost_since=1_700_000_000.5,
    )
    assert entry["lost"]["files_since"] == 1_700_000_000.5
    assert "lost_since" not in entry
    assert "files_since" not in history.record("alice/", "suspend", "request")["lost"]
