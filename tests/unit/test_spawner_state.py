"""MigratingSpawner's persisted state and command line, without a hub."""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub

from migrating_spawner.controller import MigratingController
from migrating_spawner.hosts.base import Host
from migrating_spawner.spawner import STATE_VERSION, MigratingSpawner


@pytest.fixture(autouse=True)
def fresh_controller():
    MigratingController.clear_instance()
    yield
    MigratingController.clear_instance()


def new_spawner(name: str = "", **kwargs) -> MigratingSpawner:
    # what the hub's User._new_spawner passes that these tests need, and no more
    # (a transient orm.Spawner row carries the server name, as in the hub)
    user = SimpleNamespace(name="alice", url="/user/alice/")
    return MigratingSpawner(user=user, hub=Hub(), orm_spawner=orm.Spawner(name=name), **kwargs)


HOST = Host(
    id="local-12-abcdef",
    address="127.0.0.12",
    agent_url="http://127.0.0.12:8900",
    agent_token="secret",
    instance_type="small",
    market="spot",
    disk="/tmp/disks/local-12-abcdef",
    meta={"provider": "local", "agent_pid": 1234},
)
NEW_HOST = Host(id="local-13-fedcba", address="127.0.0.13", agent_url="http://x", agent_token="t")


def test_registers_with_the_controller():
    spawner = new_spawner("gpu")
    assert spawner.key == "alice/gpu"
    assert MigratingController.instance().spawners["alice/gpu"] is spawner


def test_state_roundtrip():
    spawner = new_spawner()
    spawner.host = HOST
    spawner.port = 45678
    spawner.checkpoint_id = "ck-2"
    spawner.precopy_id = "ck-2"
    spawner.move_record = {
        "reason": "reclaim notice",
        "deadline": 1.5e9,
        "old_host": HOST.to_dict(),
        "new_host": NEW_HOST.to_dict(),
        "phase": "preparing",
    }
    # the hub keeps state as JSON in its database
    state = json.loads(json.dumps(spawner.get_state()))
    assert state["version"] == STATE_VERSION
    assert state["host"]["agent_token"] == "secret"  # needed to reach the agent again

    MigratingController.clear_instance()
    loaded = new_spawner()
    loaded.load_state(state)
    assert loaded.host == HOST
    assert loaded.port == 45678
    assert loaded.ip == "127.0.0.12"
    assert loaded.checkpoint_id == "ck-2"
    assert loaded.precopy_id == "ck-2"
    assert loaded.move_record == spawner.move_record
    assert loaded.get_state() == state


def test_state_of_a_stopped_server_has_only_what_it_keeps():
    spawner = new_spawner()
    assert spawner.get_state() == {"version": STATE_VERSION}
    spawner.checkpoint_id = "ck-1"
    assert spawner.get_state() == {"version": STATE_VERSION, "checkpoint_id": "ck-1"}


def test_load_empty_state():
    spawner = new_spawner()
    spawner.load_state({})
    assert spawner.host is None
    assert spawner.checkpoint_id is None
    assert spawner.precopy_id is None
    assert spawner.move_record is None


def test_load_state_without_a_version_stamp():
    # state written before the stamp existed reads as version 1
    spawner = new_spawner()
    spawner.load_state({"host": HOST.to_dict(), "port": 40000, "checkpoint_id": "ck-0"})
    assert spawner.host == HOST
    assert (spawner.ip, spawner.port) == ("127.0.0.12", 40000)
    assert spawner.checkpoint_id == "ck-0"
    assert spawner.move_record is None


def test_load_state_from_a_newer_version_warns_and_ignores_unknown_fields(caplog):
    host = {**HOST.to_dict(), "zone": "us-east-1a"}  # a field this version does not know
    spawner = new_spawner()
    with caplog.at_level(logging.WARNING):
        spawner.load_state(
            {"version": STATE_VERSION + 1, "host": host, "port": 40001, "kernels": {"k": 1}}
        )
    assert "from a newer version" in caplog.text
    assert spawner.host == HOST
    assert spawner.port == 40001


def test_load_state_with_a_host_from_an_older_version():
    old_host = {"id": "h", "address": "127.0.0.20", "agent_url": "http://a", "agent_token": "t"}
    spawner = new_spawner()
    spawner.load_state({"version": 1, "host": old_host, "port": 40002})
    assert spawner.host.market == "spot" and spawner.host.meta == {}
    assert spawner.ip == "127.0.0.20"


def _running(spawner: MigratingSpawner) -> MigratingSpawner:
    spawner.host = HOST
    spawner.port = 45678
    spawner.checkpoint_id = "ck-9"
    spawner.precopy_id = "ck-9"
    spawner.move_record = {"phase": "switched"}
    spawner.api_token = "tok"
    return spawner


def test_clear_state_keeps_the_checkpoint_when_checkpoint_on_stop():
    spawner = _running(new_spawner(checkpoint_on_stop=True))
    spawner.clear_state()
    assert spawner.checkpoint_id == "ck-9"
    assert spawner.host is None and spawner.precopy_id is None and spawner.move_record is None
    assert spawner.api_token == ""
    assert spawner.get_state() == {"version": STATE_VERSION, "checkpoint_id": "ck-9"}


def test_clear_state_drops_the_checkpoint_without_checkpoint_on_stop():
    spawner = _running(new_spawner(checkpoint_on_stop=False))
    spawner.clear_state()
    assert spawner.checkpoint_id is None
    assert spawner.get_state() == {"version": STATE_VERSION}


def test_get_args_adds_allow_root_once_as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    spawner = new_spawner(args=["--debug"])
    assert spawner.get_args() == ["--debug", "--allow-root"]
    assert spawner.get_args() == ["--debug", "--allow-root"]  # not added again
    assert spawner.args == ["--debug"]  # the trait itself is left alone
    spawner.args = ["--allow-root", "--debug"]
    assert spawner.get_args() == ["--allow-root", "--debug"]


def test_get_args_has_no_allow_root_as_a_user(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    spawner = new_spawner(args=["--debug"])
    assert spawner.get_args() == ["--debug"]


# -- lean state: ids, not file tables ---------------------------------------------------


def file_table(n: int) -> dict:
    chunk = "ab" * 32
    entry = {"type": "file", "mode": 0o644, "size": 9, "mtime_ns": 1, "chunks": [chunk]}
    return {f"notebooks/analysis-{i}.ipynb": dict(entry) for i in range(n)}


def test_state_holds_ids_not_file_tables():
    spawner = new_spawner()
    spawner.host = HOST
    spawner.port = 45678
    spawner.api_token = "tok"
    spawner.checkpoint_id = spawner.precopy_id = "20261201T120000.000000Z-9f2c41d0"
    state = spawner.get_state()
    assert state["precopy_id"] == spawner.checkpoint_id
    assert "precopy" not in state
    assert "files" not in json.dumps(state)
    assert len(json.dumps(state)) < 1000  # a running server: ids, a host record and a token


def test_state_of_the_previous_version_loads_and_migrates():
    # what a hub of state version 1 wrote for a running synced server mid pre-copy
    old = {
        "version": 1,
        "host": HOST.to_dict(),
        "port": 45678,
        "api_token": "tok",
        "checkpoint_id": "ck-7",
        "precopy": {"id": "ck-7", "files": file_table(500)},
        "move": {"reason": "reclaim notice", "phase": "preparing", "new_host": NEW_HOST.to_dict()},
        "delivered_seals": ["seal-1"],
    }
    spawner = new_spawner()
    spawner.load_state(json.loads(json.dumps(old)))
    assert spawner.host == HOST and (spawner.ip, spawner.port) == ("127.0.0.12", 45678)
    assert spawner.checkpoint_id == "ck-7"
    assert spawner.precopy_id == "ck-7"  # the agent that holds its table skips unchanged files
    assert spawner.move_record == old["move"]
    assert spawner.delivered_seals == ["seal-1"]
    assert spawner.api_token == "tok"
    migrated = spawner.get_state()
    assert migrated["version"] == STATE_VERSION == 2
    assert migrated["precopy_id"] == "ck-7" and "precopy" not in migrated
    assert len(json.dumps(migrated)) < len(json.dumps(old)) / 20


def test_state_of_the_previous_version_without_a_precopy():
    spawner = new_spawner()
    spawner.load_state({"version": 1, "checkpoint_id": "ck-1", "precopy": None})
    assert spawner.precopy_id is None and spawner.checkpoint_id == "ck-1"
