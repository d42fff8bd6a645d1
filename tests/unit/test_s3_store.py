"""S3CheckpointStore against moto's server: written once, multipart, verified reads, gc."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest
from agent_util import AgentProcess
from motoserver import moto_environ, moto_server  # noqa: F401  (pytest fixture)

from migrating_spawner.agent.client import AgentClient
from migrating_spawner.agent.host import Host
from migrating_spawner.checkpoint import (
    CheckpointError,
    SignedCheckpoints,
    get_blob,
    hash_bytes,
    put_blob,
    restore_tree,
    snapshot_tree,
    store_from_config,
)
from migrating_spawner.checkpoint.gc import GarbageCollector
from migrating_spawner.checkpoint.s3 import MIN_PART_SIZE, S3CheckpointStore
from migrating_spawner.kernelstate.transfer import KernelStateTransfer, key_of

SECRET = b"s3-test-secret"
OLD_NS = 1_600_000_000 * 10**9


@pytest.fixture
def s3(moto_server):  # noqa: F811
    return moto_server.client("s3")


@pytest.fixture
def bucket(s3) -> str:
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(moto_server, bucket) -> S3CheckpointStore:  # noqa: F811
    with moto_environ(moto_server):  # credentials come from the environment, as on a host
        yield S3CheckpointStore(
            bucket=bucket, prefix="hub1", endpoint_url=moto_server.endpoint_url, max_attempts=1
        )


def status_log(store: S3CheckpointStore, operation: str) -> list[int]:
    """HTTP statuses S3 answered to `operation` from now on (botocore's own event hook)."""
    seen: list[int] = []

    def record(http_response, **_):
        seen.append(http_response.status_code)

    store.client.meta.events.register(f"after-call.s3.{operation}", record)
    return seen


def test_roundtrip_and_layout(store, s3, bucket):
    h = store.put_chunk(b"hello")
    assert h == hash_bytes(b"hello") and store.has_chunk(h)
    assert not store.has_chunk(hash_bytes(b"other"))
    assert store.get_chunk(h) == b"hello"
    store.put_manifest("alice/lab", "20261201T000000.000000Z-00000001", b'{"m":1}')
    store.put_manifest("alice/lab", "20261201T000001.000000Z-00000002", b'{"m":2}')
    store.put_manifest("bob/", "20261201T000000.000000Z-00000003", b'{"m":3}')
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        f"hub1/chunks/{h}",
        "hub1/manifests/alice%2Flab/20261201T000000.000000Z-00000001.json",
        "hub1/manifests/alice%2Flab/20261201T000001.000000Z-00000002.json",
        "hub1/manifests/bob%2F/20261201T000000.000000Z-00000003.json",
    ]
    assert store.list_servers() == ["alice/lab", "bob/"]
    assert store.latest("alice/lab") == "20261201T000001.000000Z-00000002"
    assert store.delete_checkpoints("alice/lab", keep=1) == ["20261201T000000.000000Z-00000001"]
    assert store.list_checkpoints("alice/lab") == ["20261201T000001.000000Z-00000002"]
    with pytest.raises(CheckpointError, match="missing"):
        store.get_manifest("carol/", "20261201T000000.000000Z-00000009")
    # the agent opens the same store from its JSON config, without credentials in it
    cfg = json.loads(json.dumps(store.agent_config()))
    assert cfg["kind"] == "s3" and "secret" not in json.dumps(cfg).lower()
    again = store_from_config(cfg)
    assert isinstance(again, S3CheckpointStore) and again.get_chunk(h) == b"hello"


def test_a_chunk_is_written_once(store, s3, bucket):
    """IfNoneMatch="*": the second put of a chunk is a 412 and writes nothing."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    puts = status_log(store, "PutObject")
    h = store.put_chunk(b"x" * 1000)
    assert store.put_chunk(b"x" * 1000) == h  # no error: already there is as good as stored
    assert puts == [200, 412]
    versions = s3.list_object_versions(Bucket=bucket, Prefix=f"hub1/chunks/{h}")["Versions"]
    assert len(versions) == 1


def test_a_chunk_already_there_is_never_overwritten(store, s3, bucket):
    """Whatever sits under a chunk's key stays; a bad one is found when read, not hidden."""
    h = hash_bytes(b"good bytes")
    s3.put_object(Bucket=bucket, Key=f"hub1/chunks/{h}", Body=b"evil bytes")
    store.put_chunk(b"good bytes")
    assert s3.get_object(Bucket=bucket, Key=f"hub1/chunks/{h}")["Body"].read() == b"evil bytes"
    with pytest.raises(CheckpointError, match="corrupt"):
        store.get_chunk(h)


def test_big_chunks_go_as_multipart_uploads(moto_server, bucket, s3):  # noqa: F811
    with moto_environ(moto_server):
        store = S3CheckpointStore(
            bucket=bucket,
            endpoint_url=moto_server.endpoint_url,
            multipart_threshold=MIN_PART_SIZE,
            multipart_part_size=MIN_PART_SIZE,
        )
        data = os.urandom(2 * MIN_PART_SIZE + 12345)
        completes = status_log(store, "CompleteMultipartUpload")
        (h,) = put_blob(store, data, chunk_size=len(data))
        head = s3.head_object(Bucket=bucket, Key=f"{store.prefix}chunks/{h}")
        assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload
        assert get_blob(store, [h]) == data
        store.put_chunk(data)  # already there: the completion is refused, the upload aborted
        assert completes == [200, 412]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(Exception, match="5242880"):
        S3CheckpointStore(multipart_part_size=MIN_PART_SIZE - 1)


def make_home(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "notes.md").write_text("x = 42\n")
    (root / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    for path in (root / "notes.md", root / "sub" / "data.bin"):
        os.utime(path, ns=(OLD_NS, OLD_NS))


def test_home_snapshot_restore_and_refusals(store, s3, bucket, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_home(src)
    checkpoints = SignedCheckpoints(store, SECRET)
    files, stats = snapshot_tree(src, store, chunk_size=64 * 1024)
    assert stats["chunks_uploaded"] == 6
    manifest = checkpoints.commit("alice/", files)
    _, again = snapshot_tree(src, store, files, chunk_size=64 * 1024)
    assert again["bytes_uploaded"] == 0  # incremental: nothing changed, nothing sent
    loaded = SignedCheckpoints(store, SECRET).load("alice/")  # a fresh reader: from S3
    assert loaded.id == manifest.id
    restore_tree(dst, loaded.files, store)
    assert (dst / "sub" / "data.bin").read_bytes() == (src / "sub" / "data.bin").read_bytes()

    # a tampered chunk: our own sha256 refuses it, and the restore touches nothing
    victim = files["sub/data.bin"]["chunks"][2]
    s3.put_object(Bucket=bucket, Key=f"hub1/chunks/{victim}", Body=b"\0" * 65536)
    (dst / "sub" / "data.bin").write_bytes(b"mine")
    with pytest.raises(CheckpointError, match=f"chunk {victim} is corrupt"):
        restore_tree(dst, loaded.files, store)
    assert (dst / "sub" / "data.bin").read_bytes() == b"mine"

    # a tampered manifest: the signature refuses it
    key = f"hub1/manifests/alice%2F/{manifest.id}.json"
    doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    doc["manifest"]["files"]["notes.md"]["chunks"] = [victim]
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
    with pytest.raises(CheckpointError, match="signature mismatch"):
        SignedCheckpoints(store, SECRET).load("alice/", manifest.id)


async def test_gc_removes_only_unreferenced_chunks_past_the_grace_period(moto_server, bucket):  # noqa: F811
    with moto_environ(moto_server):
        store = S3CheckpointStore(
            bucket=bucket, endpoint_url=moto_server.endpoint_url, touch_after=0
        )
        checkpoints = SignedCheckpoints(store, SECRET)
        live = put_blob(store, b"kernel state")
        dead = put_blob(store, b"left by a checkpoint that never committed")
        checkpoints.commit("alice/", {}, blobs={"kernel": live})

        young = GarbageCollector(grace_period=3600).collect(checkpoints)
        assert young["deleted"] == 0 and store.has_chunk(dead[0])  # too young to go

        report = GarbageCollector(grace_period=0).collect(checkpoints)
        assert report["deleted"] == 1 and report["bytes_freed"] == len(
            b"left by a checkpoint that never committed"
        )
        assert not store.has_chunk(dead[0]) and store.has_chunk(live[0])
        assert get_blob(store, live) == b"kernel state"

        # the hub's timer does the same
        dead = put_blob(store, b"another one")
        timer = GarbageCollector(grace_period=0, interval=0.05)
        task = asyncio.ensure_future(timer.run_forever(checkpoints))
        try:
            for _ in range(200):
                if not await asyncio.to_thread(store.has_chunk, dead[0]):
                    break
                await asyncio.sleep(0.05)
            assert not store.has_chunk(dead[0]) and store.has_chunk(live[0])
        finally:
            task.cancel()
        # a grace period the store's renewal could outlive: no collection at all
        store.touch_after = 60
        await GarbageCollector(grace_period=30, interval=0.05).run_forever(checkpoints)


def test_gc_grace_must_outlast_the_stores_renewal(store):
    with pytest.raises(CheckpointError, match="touch_after"):
        GarbageCollector(grace_period=store.touch_after).collect(SignedCheckpoints(store, SECRET))


def test_an_old_chunk_is_renewed_before_a_checkpoint_relies_on_it(moto_server, bucket):  # noqa: F811
    with moto_environ(moto_server):
        store = S3CheckpointStore(
            bucket=bucket, endpoint_url=moto_server.endpoint_url, touch_after=1e-9
        )
        h = store.put_chunk(b"reused")
        copies = status_log(store, "CopyObject")
        assert store.has_chunk(h)
        assert copies == [200]
        assert store.get_chunk(h) == b"reused"


@pytest.fixture(scope="module")
def agent(moto_server, tmp_path_factory):  # noqa: F811
    """A real host agent whose own credentials (the environment here, an instance role on
    EC2) reach the bucket; the hub sends it only the store's config."""
    with moto_environ(moto_server):
        proc = AgentProcess(tmp_path_factory.mktemp("agent"), "127.0.0.238")
    yield proc
    proc.stop()


def test_the_host_agent_reads_and_writes_s3_itself(agent, store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_home(src)
    resp = agent.post("/home/snapshot", {"root": str(src), "store": store.agent_config()})
    assert resp.status_code == 200, resp.text
    files = resp.json()["files"]
    chunks = files["sub/data.bin"]["chunks"]
    assert all(store.has_chunk(h) for h in chunks)  # in the bucket, sent by the agent
    resp = agent.post(
        "/home/restore", {"root": str(dst), "files": files, "store": store.agent_config()}
    )
    assert resp.status_code == 200, resp.text
    assert (dst / "notes.md").read_text() == "x = 42\n"
    # a chunk changed in the bucket: the agent refuses it (422), nothing is written
    store.client.put_object(Bucket=store.bucket, Key=store._chunk_key(chunks[0]), Body=b"?")
    resp = agent.post(
        "/home/restore",
        {"root": str(tmp_path / "dst2"), "files": files, "store": store.agent_config()},
    )
    assert resp.status_code == 422 and "corrupt" in resp.json()["message"]
    assert not (tmp_path / "dst2" / "notes.md").exists()


def kernel_snapshot(state_dir: Path, blobs: dict[str, bytes]) -> None:
    """A snapshot folder as the kernel's code leaves it: blobs, then the index."""
    (state_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for old in (state_dir / "blobs").iterdir():
        if old.stem not in blobs:
            old.unlink()
    for name, data in blobs.items():
        path = state_dir / "blobs" / f"{name}.bin"
        if not path.exists():
            path.write_bytes(data)
            os.utime(path, ns=(OLD_NS, OLD_NS))
    (state_dir / "index.json").write_text(json.dumps({"entries": sorted(blobs)}))


async def test_kernel_snapshots_move_between_hosts_through_the_store(agent, store, tmp_path):
    """No folder both hosts reach: the old host's agent uploads the kernel's snapshot
    folder, the new host's agent writes it from the verified manifest."""
    host = Host(id="test-host", address=agent.address, agent_url=agent.url, agent_token=agent.token)
    client = AgentClient(host)
    old, new = tmp_path / "old-host" / "k1", tmp_path / "new-host" / "k1"
    big = os.urandom(200_000)
    kernel_snapshot(old, {"aa": big, "bb": b"x = 42"})
    transfer = KernelStateTransfer(SignedCheckpoints(store, SECRET))
    first = await transfer.save(client, "k1", str(old))
    # the caller reads the kernel's report from the store, not from the host's disk
    assert await transfer.read(first, "index.json") == (old / "index.json").read_bytes()
    assert await transfer.read(first, "no-such-report.json") is None
    assert first.meta["stats"]["bytes_uploaded"] >= len(big)
    await transfer.load(client, "k1", str(new))
    assert (new / "blobs" / "aa.bin").read_bytes() == big
    assert (new / "index.json").read_text() == (old / "index.json").read_text()

    kernel_snapshot(old, {"aa": big, "cc": b"x = 43"})  # one variable changed
    second = await transfer.save(client, "k1", str(old))
    sent = second.meta["stats"]["bytes_uploaded"]
    assert sent < len(big)  # the unchanged blob is not sent again
    await transfer.load(client, "k1", str(new))
    assert sorted(p.name for p in (new / "blobs").iterdir()) == ["aa.bin", "cc.bin"]
    assert store.list_checkpoints(key_of("k1")) == [first.id, second.id]

    # a tampered manifest: refused before the agent writes anything
    doc = json.loads(store.get_manifest(key_of("k1"), second.id))
    doc["manifest"]["files"]["index.json"]["size"] = 1
    store.put_manifest(key_of("k1"), second.id, json.dumps(doc).encode())
    fresh = KernelStateTransfer(SignedCheckpoints(store, SECRET))
    with pytest.raises(CheckpointError, match="signature mismatch"):
        await fresh.load(client, "k1", str(tmp_path / "third-host" / "k1"))
    assert not (tmp_path / "third-host").exists()
    await fresh.forget("k1")
    assert store.list_checkpoints(key_of("k1")) == []
