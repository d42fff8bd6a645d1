"""MigratingSpawner's home checkpoints and server launch against real agents, without a hub.

Two real agent processes play the old and the new host; the checkpoint store is a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from agent_util import AgentProcess, wait_for
from jupyterhub import orm
from jupyterhub.objects import Hub, Server
from traitlets.config import Config

from migrating_spawner.checkpoint import CheckpointError
from migrating_spawner.controller import MigratingController
from migrating_spawner.hosts.base import Host
from migrating_spawner.moving.record import MoveRecord
from migrating_spawner.spawner import MigratingSpawner

OLD_NS = 1_600_000_000 * 10**9


@pytest.fixture
def config(tmp_path: Path) -> Config:
    c = Config()
    c.LocalCheckpointStore.root_dir = str(tmp_path / "store")
    c.LocalCheckpointStore.fsync = False
    c.MigratingController.checkpoint_secret_file = str(tmp_path / "secret")
    c.LocalHostProvider.root_dir = str(tmp_path / "hosts")
    c.ServerHistory.history_dir = str(tmp_path / "history")  # not migrating-history/ in cwd
    MigratingController.clear_instance()
    yield c
    MigratingController.clear_instance()


def start_agent(tmp_path: Path, name: str, address: str) -> tuple[AgentProcess, Host]:
    (tmp_path / name).mkdir()
    agent = AgentProcess(tmp_path / name, address)
    host = Host(
        id=f"test-{name}",
        address=address,
        agent_url=agent.url,
        agent_token=agent.token,
        disk=str(agent.disk),
    )
    return agent, host


@pytest.fixture
def spawner(config: Config) -> MigratingSpawner:
    # made outside the event loop: a spawner made in one starts the controller's API
    return new_spawner(config)


@pytest.fixture
def hosts(tmp_path: Path):
    old_agent, old = start_agent(tmp_path, "old", "127.0.0.250")
    new_agent, new = start_agent(tmp_path, "new", "127.0.0.251")
    yield old, new
    old_agent.stop()
    new_agent.stop()


def new_spawner(config: Config) -> MigratingSpawner:
    user = SimpleNamespace(name="alice", url="/user/alice/")
    return MigratingSpawner(
        user=user, hub=Hub(), orm_spawner=orm.Spawner(name=""), config=config, home_mode="synced"
    )


def make_home(home: Path) -> None:
    (home / "data").mkdir(parents=True)
    (home / "notes.md").write_text("x = 42\n")
    (home / "data" / "big.bin").write_bytes(os.urandom(500_000))
    (home / "data" / "keep.bin").write_bytes(os.urandom(200_000))
    for path in (home / "notes.md", home / "data" / "big.bin", home / "data" / "keep.bin"):
        os.utime(path, ns=(OLD_NS, OLD_NS))


async def test_checkpoints_send_ids_and_a_move_restores_what_it_committed(spawner, hosts):
    old, new = hosts
    home = Path(spawner.home_on(old))
    make_home(home)
    store = spawner.controller.store

    first = await spawner.checkpoint_home(old, reason="pre-copy")
    assert spawner.precopy_id == spawner.checkpoint_id == first
    assert (
        store.read_manifest(spawner.key, first, spawner.controller.secret).meta["stats"][
            "bytes_read"
        ]
        > 500_000
    )

    (home / "notes.md").write_text("x = 43\n")
    second = await spawner.checkpoint_home(old, reason="pre-copy")
    manifest = spawner.controller.checkpoints.load(spawner.key, second)
    assert manifest.parent == first
    # the old agent kept the first table: only the changed file was read
    assert manifest.meta["stats"]["bytes_read"] == len("x = 43\n")
    assert manifest.meta["stats"]["parent"] == first
    state = json.dumps(spawner.get_state())
    assert "big.bin" not in state and first not in state  # ids of the latest only

    # a move: restore the pre-copy, take a final delta, restore it over the pre-copy
    precopy = await spawner.restore_home(new, second)
    assert precopy == second
    (home / "data" / "big.bin").unlink()
    (home / "late.txt").write_text("written during the move")
    final = await spawner.checkpoint_home(old, reason="move final")
    reads = []
    real_get_manifest = store.get_manifest
    store.get_manifest = lambda *a: reads.append(a) or real_get_manifest(*a)
    try:
        assert await spawner.restore_home(new, final, current=precopy) == final
    finally:
        del store.get_manifest
    assert reads == []  # handed over as committed, not read back and verified again
    new_home = Path(spawner.home_on(new))
    assert (new_home / "notes.md").read_text() == "x = 43\n"
    assert (new_home / "late.txt").read_text() == "written during the move"
    assert not (new_home / "data" / "big.bin").exists()  # deleted: the pre-copy was "current"

    # the new host's agent has the final table: its first pre-copy reads only changes
    # (and the files written just before the final snapshot, whose mtime may still move)
    spawner.host = new
    (new_home / "after.txt").write_text("after the move")
    after = await spawner.checkpoint_home(new, reason="pre-copy")
    stats = spawner.controller.checkpoints.load(spawner.key, after).meta["stats"]
    assert stats["parent"] == final
    assert stats["bytes_read"] == len("after the move") + len("x = 43\n") + len(
        "written during the move"
    )  # keep.bin (200 kB) was not read again


async def test_a_host_without_the_parent_table_snapshots_everything(spawner, hosts):
    old, new = hosts
    make_home(Path(spawner.home_on(old)))
    first = await spawner.checkpoint_home(old, reason="pre-copy")
    # the same files (copied with their mtimes), but this agent never saw a table
    shutil.copytree(spawner.home_on(old), spawner.home_on(new), copy_function=shutil.copy2)
    second = await spawner.checkpoint_home(new, reason="pre-copy")
    stats = spawner.controller.checkpoints.load(spawner.key, second).meta["stats"]
    assert stats["parent"] is None and stats["bytes_read"] > 700_000
    checkpoints = spawner.controller.checkpoints
    assert checkpoints.load(spawner.key, second).files == checkpoints.load(spawner.key, first).files


async def test_a_tampered_checkpoint_is_refused_and_nothing_restored(spawner, hosts):
    old, new = hosts
    make_home(Path(spawner.home_on(old)))
    ckpt = await spawner.checkpoint_home(old, reason="stop")
    spawner.clear_state()  # the server stopped: the resume must read and verify it
    store = spawner.controller.store
    path = store._manifest_path(spawner.key, ckpt)
    doc = json.loads(path.read_bytes())
    doc["manifest"]["files"]["notes.md"]["chunks"] = [store.put_chunk(b"x = 666\n")]
    doc["manifest"]["files"]["notes.md"]["size"] = 8
    path.write_bytes(json.dumps(doc).encode())
    with pytest.raises(CheckpointError, match="signature mismatch; refusing to restore"):
        await spawner.restore_home(new, ckpt)
    assert not Path(spawner.home_on(new)).exists()


async def test_launch_builds_the_new_hosts_spec_and_leaves_the_spawner_alone(spawner, hosts):
    old, new = hosts
    orm_server = orm.Server(proto="http", ip="", port=0, base_url="/user/alice/", cookie_name="c")
    spawner.server = Server(orm_server=orm_server)
    spawner.host, spawner.ip, spawner.port = old, old.address, 45678
    spawner.api_token = "the-token"
    out = Path(new.disk) / "env.json"
    dump = (
        "import json, os, sys; env = {**os.environ, 'CWD': os.getcwd()};"
        "json.dump(env, open(sys.argv[1] + '.tmp', 'w'));"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])"
    )
    spawner.cmd = [sys.executable, "-c", dump, str(out)]
    spawner.args = []
    port = await spawner.launch(new)
    assert (spawner.host, spawner.ip, spawner.port) == (old, old.address, 45678)
    assert wait_for(out.exists)
    env = json.loads(out.read_text())
    assert env["JUPYTERHUB_SERVICE_URL"] == f"http://{new.address}:{port}/user/alice/"
    assert env["HOME"] == env["CWD"] == spawner.home_on(new)
    assert env["JUPYTERHUB_MIGRATING_HOST"] == new.id
    assert env["JUPYTERHUB_API_TOKEN"] == "the-token"
    # and the current host's environment still names the current host
    assert spawner.get_env()["JUPYTERHUB_SERVICE_URL"] == f"http://{old.address}:45678/user/alice/"


@pytest.mark.parametrize("final_kept", [True, False])
async def test_stop_after_a_moves_final_checkpoint_keeps_the_kernels_fresh(
    spawner, hosts, final_kept
):
    # a hub restart cut a move short after its final checkpoint and the old server's stop;
    # the hub's startup check reports it stopped (scheduler.settle keeps the record) and
    # JupyterHub's stop runs here: the kernel snapshot fails (no server listens), yet the
    # freeze's kernel snapshot is in that checkpoint, so the kernels are not stale
    old, _ = hosts
    make_home(Path(spawner.home_on(old)))
    final = await spawner.checkpoint_home(old, reason="move final")
    with socket.socket() as s:  # a port no server listens on: the old server is dead
        s.bind((old.address, 0))
        port = s.getsockname()[1]
    orm_server = orm.Server(proto="http", ip="", port=0, base_url="/user/alice/", cookie_name="c")
    spawner.server = Server(orm_server=orm_server)
    spawner.host, spawner.ip, spawner.port = old, old.address, port
    if final_kept:
        record = MoveRecord("reclaim notice", 0.0, old, final_checkpoint=final, kernels_saved=True)
        spawner.move_record = record.to_dict()
    await spawner.stop()
    said = [e for e in spawner.events if e["message"].startswith("Stopped")]
    assert len(said) == 1, spawner.events
    message = said[0]["message"]
    assert spawner.checkpoint_id and spawner.checkpoint_id != final  # the stop's own
    if final_kept:
        assert not spawner.kernels_stale and "kernels_stale" not in spawner.get_state()
        assert "no kernel snapshot" not in message and "lost" not in message, message
        assert f"kernels' final snapshot (move checkpoint {final})" in message, message
    else:  # no move kept it: the kernels' state is as old as their last snapshot
        assert spawner.kernels_stale and "no kernel snapshot" in message, message
    spawner.clear_state()
    assert spawner.move_record is None
