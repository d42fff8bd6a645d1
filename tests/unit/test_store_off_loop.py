"""The hub's checkpoint-store calls run off its event loop, with a timeout and bounded tries.

A store whose calls block until the test lets them go (threading events, no sleeps) stands
for a slow S3: while a commit, a load or the API's `last_checkpoint` waits on it, the loop
keeps running other work; a call that never answers fails after `tries` x `timeout` with a
CheckpointError (and a second try that answers succeeds).
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from migrating_spawner.checkpoint import (
    CheckpointError,
    LocalCheckpointStore,
    SignedCheckpoints,
    checkpoint_time,
    new_checkpoint_id,
)
from migrating_spawner.service.api import APIHandler

SECRET = b"s" * 32


class GatedStore(LocalCheckpointStore):
    """put_manifest / get_manifest / list_checkpoints wait for `gate` (at most `limit` s)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.limit = 10.0
        self.calls = 0
        self.hang_first = 0  # this many calls wait the whole limit whatever the gate says

    def _wait(self) -> None:
        self.calls += 1
        self.entered.set()
        if self.calls <= self.hang_first:
            threading.Event().wait(self.limit)
            return
        self.gate.wait(self.limit)

    def put_manifest(self, server, checkpoint_id, signed):
        self._wait()
        super().put_manifest(server, checkpoint_id, signed)

    def get_manifest(self, server, checkpoint_id):
        self._wait()
        return super().get_manifest(server, checkpoint_id)

    def list_checkpoints(self, server):
        self._wait()
        return super().list_checkpoints(server)


@pytest.fixture
def store(tmp_path):
    return GatedStore(root_dir=str(tmp_path / "store"), fsync=False)


async def ticks_while(task: asyncio.Task, store: GatedStore, n: int = 5) -> int:
    """Wait until the store call has begun, then count loop turns while it is blocked."""
    while not store.entered.is_set():
        await asyncio.sleep(0.01)
    done = 0
    for _ in range(n):
        await asyncio.sleep(0.01)
        if not task.done():
            done += 1
    return done


async def test_commit_and_load_leave_the_loop_free_while_the_store_is_slow(store):
    checkpoints = SignedCheckpoints(store, SECRET, timeout=30)
    commit = asyncio.create_task(checkpoints.commit_async("alice/", {}, meta={"reason": "t"}))
    # the loop runs while the store holds the commit (on the loop it would block here)
    assert await ticks_while(commit, store) == 5
    assert not commit.done()
    store.gate.set()
    manifest = await commit
    assert store.list_checkpoints("alice/") == [manifest.id]

    # a fresh reader (a restarted hub) reads and verifies: also off the loop
    store.gate.clear()
    store.entered.clear()
    fresh = SignedCheckpoints(store, SECRET, timeout=30)
    load = asyncio.create_task(fresh.load_async("alice/"))
    assert await ticks_while(load, store) == 5
    store.gate.set()
    assert (await load).id == manifest.id


async def test_the_api_reads_the_last_checkpoint_off_the_loop(store):
    store.gate.set()
    manifest = SignedCheckpoints(store, SECRET).commit("bob/", {}, meta={})
    store.gate.clear()
    store.entered.clear()
    # the handler's own method, on a hub whose checkpoints were not committed by it
    api = SimpleNamespace(
        controller=SimpleNamespace(checkpoints=SignedCheckpoints(store, SECRET, timeout=30))
    )
    spawner = SimpleNamespace(key="bob/", checkpoint_id=manifest.id)
    summary = asyncio.create_task(APIHandler.last_checkpoint(api, spawner))
    assert await ticks_while(summary, store) == 5
    store.gate.set()
    assert (await summary)["id"] == manifest.id


async def test_a_store_that_does_not_answer_fails_after_bounded_tries(store):
    store.limit = 1.0  # each blocked call gives up after a second (the thread ends)
    checkpoints = SignedCheckpoints(store, SECRET, timeout=0.3, tries=2)
    with pytest.raises(CheckpointError, match=r"longer than 0.3 s \(2 tries\)"):
        await checkpoints.load_async("alice/", "20261201T000000.000000Z-00000000")
    assert store.calls == 2

    # the first try hangs, the second answers: the call succeeds
    store.calls, store.hang_first = 0, 1
    store.gate.set()
    checkpoints = SignedCheckpoints(store, SECRET, timeout=0.3, tries=2)
    manifest = await checkpoints.commit_async("carol/", {})
    assert store.calls == 2 and manifest.server == "carol/"


def test_a_checkpoint_time_comes_from_its_id_without_the_store():
    assert abs(checkpoint_time(new_checkpoint_id(1_700_000_000.25)) - 1_700_000_000.25) < 1e-5
    assert checkpoint_time("ck-2") is None
