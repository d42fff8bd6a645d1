"""Checkpoints: signing, the local store, and snapshot/restore of real trees in tmp_path."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from migrating_spawner.checkpoint import (
    CheckpointError,
    LocalCheckpointStore,
    Manifest,
    SignedCheckpoints,
    checkpoint_home,
    get_blob,
    hash_bytes,
    new_checkpoint_id,
    put_blob,
    restore_home,
    restore_tree,
    sign_manifest,
    snapshot_tree,
    store_from_config,
    verify_manifest,
)
from migrating_spawner.checkpoint.manifest import canonical_json
from migrating_spawner.kernelstate import store as kernel_blobs

SECRET = b"s3cret-for-tests"
SMALL = 64 * 1024  # chunk size for tests: many chunks without many megabytes
OLD_NS = 1_600_000_000 * 10**9  # files dated well before "now" are not racily clean


@pytest.fixture
def store(tmp_path: Path) -> LocalCheckpointStore:
    return LocalCheckpointStore(root_dir=str(tmp_path / "store"), fsync=False)


def age(*paths: Path, ns: int = OLD_NS) -> None:
    """Date files in the past, as files are between two checkpoints (not racily clean)."""
    for path in paths:
        os.utime(path, ns=(ns, ns))


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.txt").write_text("deep\n")
    (root / "notes.md").write_text("x = 42\n")
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir()
    (root / "big.bin").write_bytes(os.urandom(5 * SMALL + 123))
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o750)
    (root / ".ssh").mkdir(mode=0o700)
    (root / ".ssh" / "id").write_text("key")
    (root / ".ssh" / "id").chmod(0o600)
    (root / "link").symlink_to("a/b/deep.txt")
    (root / "dirlink").symlink_to("a")
    age(*(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()))


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything a restore should reproduce or must leave alone, path by path."""
    state: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if path.is_symlink():
            state[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            state[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            state[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
    return state


# -- manifests --------------------------------------------------------------------------


def make_manifest() -> Manifest:
    return Manifest(
        server="alice/",
        files={
            "f": {"type": "file", "mode": 0o644, "size": 1, "mtime_ns": 5, "chunks": ["a" * 64]}
        },
        blobs={"kernel": ["b" * 64]},
        meta={"host": "h1"},
    )


def test_sign_verify_roundtrip():
    m = make_manifest()
    signed = sign_manifest(m, SECRET)
    assert verify_manifest(signed, SECRET) == m
    assert verify_manifest(signed, SECRET, server="alice/", checkpoint_id=m.id) == m


def test_signed_form_is_canonical():
    m = make_manifest()
    doc = json.loads(sign_manifest(m, SECRET))
    assert set(doc) == {"manifest", "signature"}
    assert sign_manifest(m, SECRET) == sign_manifest(Manifest.from_dict(doc["manifest"]), SECRET)


def test_tampered_chunk_list_is_refused():
    m = make_manifest()
    doc = json.loads(sign_manifest(m, SECRET))
    doc["manifest"]["files"]["f"]["chunks"] = ["c" * 64]
    with pytest.raises(CheckpointError, match="signature mismatch; refusing to restore"):
        verify_manifest(json.dumps(doc).encode(), SECRET)


def test_tampered_signature_is_refused():
    doc = json.loads(sign_manifest(make_manifest(), SECRET))
    sig = doc["signature"]
    doc["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    with pytest.raises(CheckpointError, match="failed verification"):
        verify_manifest(json.dumps(doc).encode(), SECRET)


def test_wrong_secret_is_refused():
    with pytest.raises(CheckpointError, match="signature mismatch"):
        verify_manifest(sign_manifest(make_manifest(), SECRET), b"another secret")


def test_manifest_of_another_server_is_refused():
    signed = sign_manifest(make_manifest(), SECRET)
    with pytest.raises(CheckpointError, match="belongs to server 'alice/'"):
        verify_manifest(signed, SECRET, server="mallory/")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not json", "not valid JSON"),
        (b"[]", "missing its 'manifest'"),
        (b'{"manifest": {"id": "x", "format": 1}}', "missing its signature"),
        (b'{"manifest": {"id": "x", "format": 99}, "signature": "00"}', "unknown format"),
    ],
)
def test_malformed_manifests(data, message):
    with pytest.raises(CheckpointError, match=message):
        verify_manifest(data, SECRET)


def test_missing_fields_are_reported():
    body = make_manifest().to_dict()
    del body["files"]
    # sign the incomplete body as a buggy writer would
    doc = {
        "manifest": body,
        "signature": hmac.new(SECRET, canonical_json(body), hashlib.sha256).hexdigest(),
    }
    with pytest.raises(CheckpointError, match="missing fields: files"):
        verify_manifest(json.dumps(doc).encode(), SECRET)


def test_empty_secret_is_refused():
    with pytest.raises(CheckpointError, match="secret is empty"):
        sign_manifest(make_manifest(), b"")


def test_ids_sort_by_time():
    ids = [new_checkpoint_id(t) for t in (1.5, 100.25, 1e9, 1e9 + 0.000001)]
    assert ids == sorted(ids)


# -- the store --------------------------------------------------------------------------


def test_chunks_are_content_addressed(store):
    h = store.put_chunk(b"hello")
    assert h == hash_bytes(b"hello")
    assert store.has_chunk(h) and store.get_chunk(h) == b"hello"
    path = Path(store.root_dir) / "chunks" / h[:2] / h
    before = path.stat().st_mtime_ns
    assert store.put_chunk(b"hello") == h
    assert path.stat().st_mtime_ns == before  # not written again


def test_missing_or_corrupt_chunk(store):
    h = store.put_chunk(b"hello")
    (Path(store.root_dir) / "chunks" / h[:2] / h).write_bytes(b"jello")
    with pytest.raises(CheckpointError, match=f"chunk {h} is corrupt"):
        store.get_chunk(h)
    with pytest.raises(CheckpointError, match="is missing"):
        store.get_chunk("0" * 64)
    with pytest.raises(CheckpointError, match="invalid chunk name"):
        store.get_chunk("../../etc/passwd")


def test_list_and_latest(store, tmp_path):
    assert store.list_checkpoints("alice/") == [] and store.latest("alice/") is None
    ids = [new_checkpoint_id(t) for t in (300.0, 100.0, 200.0)]
    for checkpoint_id in ids:
        m = Manifest(server="alice/", id=checkpoint_id)
        store.put_manifest("alice/", checkpoint_id, sign_manifest(m, SECRET))
    store.put_manifest("alice/gpu", ids[0], b"{}")
    assert store.list_checkpoints("alice/") == sorted(ids)
    assert store.latest("alice/") == ids[0]
    assert store.list_servers() == ["alice/", "alice/gpu"]
    assert store.read_manifest("alice/", ids[1], SECRET).id == ids[1]
    assert store.delete_checkpoints("alice/", keep=1) == [ids[1], ids[2]]
    assert store.list_checkpoints("alice/") == [ids[0]]
    # deleting all of a server's checkpoints (a removed job server's) leaves no empty folder
    assert store.delete_checkpoints("alice/gpu") == [ids[0]]
    assert store.list_servers() == ["alice/"]
    assert not (tmp_path / "store" / "manifests" / "alice%2Fgpu").exists()


def test_server_keys_stay_in_their_folder(store):
    for server in ("..", ".", "a/../b"):
        store.put_manifest(server, "c1", b"{}")
    manifests = Path(store.root_dir) / "manifests"
    assert sorted(p.name for p in manifests.iterdir()) == ["%2E", "%2E%2E", "a%2F%2E%2E%2Fb"]
    assert store.list_servers() == [".", "..", "a/../b"]
    with pytest.raises(CheckpointError, match="invalid checkpoint id"):
        store.put_manifest("alice/", "../evil", b"{}")


def test_put_manifest_is_atomic(store):
    """A reader polling the folder sees no manifest, or the whole of it, never a part."""
    big = sign_manifest(Manifest(server="alice/", id="c1", meta={"pad": "x" * 2_000_000}), SECRET)
    folder = Path(store.root_dir) / "manifests" / "alice%2F"
    seen: list[int] = []
    listings: set[tuple[str, ...]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.append(len((folder / "c1.json").read_bytes()))
            except FileNotFoundError:
                pass
            # a listing never shows the temporary file as a checkpoint
            listings.add(tuple(store.list_checkpoints("alice/")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(5):
            store.put_manifest("alice/", "c1", big)
            (folder / "c1.json").unlink()
        store.put_manifest("alice/", "c1", big)
        time.sleep(0.05)
    finally:
        done.set()
        watcher.join()
    assert seen and set(seen) == {len(big)}
    assert listings <= {(), ("c1",)}
    assert [p.name for p in folder.iterdir()] == ["c1.json"]  # no temporary files left


def test_store_from_agent_config(store):
    h = store.put_chunk(b"shared")
    cfg = json.loads(json.dumps(store.agent_config()))  # it travels as JSON
    other = store_from_config(cfg)
    assert isinstance(other, LocalCheckpointStore)
    assert other.get_chunk(h) == b"shared"
    with pytest.raises(CheckpointError, match="unknown checkpoint store kind"):
        store_from_config({"kind": "nope"})
    with pytest.raises(CheckpointError, match="is not a CheckpointStore"):
        store_from_config({"kind": "collections.OrderedDict"})


def test_blobs(store):
    data = os.urandom(3 * SMALL + 7)
    hashes = put_blob(store, data, chunk_size=SMALL)
    assert len(hashes) == 4 and get_blob(store, hashes) == data


def test_collect_garbage(store, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep").write_text("keep")
    (home / "drop").write_text("drop")
    old, _ = checkpoint_home(store, "alice/", home, SECRET)
    (home / "drop").unlink()
    new, _ = checkpoint_home(store, "alice/", home, SECRET, parent=old.id)
    store.delete_checkpoints("alice/", keep=1)
    fresh = store.collect_garbage(SECRET)  # chunks younger than min_age stay
    assert fresh["deleted"] == 0
    report = store.collect_garbage(SECRET, min_age=0)
    assert report["deleted"] == 1 and report["unverified"] == []
    assert store.has_chunk(hash_bytes(b"keep")) and not store.has_chunk(hash_bytes(b"drop"))


# -- snapshot and restore ---------------------------------------------------------------


def test_snapshot_restore_roundtrip(store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    files, stats = snapshot_tree(src, store, chunk_size=SMALL)
    assert stats["skipped"] == []
    assert files["big.bin"]["size"] == 5 * SMALL + 123 and len(files["big.bin"]["chunks"]) == 6
    assert files["empty"] == {
        "type": "file",
        "mode": 0o666 & ~_umask(),
        "size": 0,
        "mtime_ns": files["empty"]["mtime_ns"],
        "chunks": [],
    }
    assert files["emptydir"]["type"] == "dir"
    assert files["link"] == {"type": "symlink", "target": "a/b/deep.txt"}
    assert files["dirlink"] == {"type": "symlink", "target": "a"}  # not followed
    assert not any(rel.startswith("dirlink/") for rel in files)
    assert stats["files"] == 6 and stats["bytes_uploaded"] == stats["bytes_total"]

    rstats = restore_tree(dst, files, store)
    assert tree_state(dst) == tree_state(src)
    assert rstats["files_written"] == 6
    assert stat.S_IMODE((dst / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE((dst / "script.sh").stat().st_mode) == 0o750
    # the restored tree is recognised as unchanged: nothing is read again
    again, stats2 = snapshot_tree(dst, store, previous=files, chunk_size=SMALL)
    assert again == files and stats2["bytes_read"] == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_incremental_snapshot_reads_and_uploads_only_changes(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    first, stats1 = snapshot_tree(src, store, chunk_size=SMALL)
    assert stats1["bytes_read"] == stats1["bytes_total"]
    with open(src / "big.bin", "r+b") as f:  # change one byte in the third chunk
        f.seek(2 * SMALL + 10)
        byte = f.read(1)[0]
        f.seek(2 * SMALL + 10)  # the read moved on: write over the byte it read
        f.write(bytes([byte ^ 0xFF]))
    second, stats2 = snapshot_tree(src, store, previous=first, chunk_size=SMALL)
    assert stats2["bytes_read"] == 5 * SMALL + 123  # only big.bin was read
    assert stats2["chunks_uploaded"] == 1 and stats2["bytes_uploaded"] == SMALL
    old, new = first["big.bin"]["chunks"], second["big.bin"]["chunks"]
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    assert changed == [2]
    assert {k: v for k, v in second.items() if k != "big.bin"} == {
        k: v for k, v in first.items() if k != "big.bin"
    }


def test_recently_modified_files_are_read_again(store, tmp_path):
    """A file written just now may change again within one timestamp tick: re-read it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hot").write_text("v1")
    first, _ = snapshot_tree(src, store)
    assert first["hot"]["racy"] is True
    _, stats = snapshot_tree(src, store, previous=first)
    assert stats["bytes_read"] == 2


def test_kernel_state_blobs_are_trusted_at_once(store, tmp_path):
    """A kernel state blob is renamed into place complete and never written again: the
    checkpoint right after it (a move's pre-copy) does not mark it racy, so the next one
    (the freeze's) reads none of it."""
    state = tmp_path / "src" / "state"
    os.makedirs(kernel_blobs.blob_dir(str(state)))
    digest, size, written = kernel_blobs.put(str(state), b"main", [memoryview(b"x" * 100_000)])
    assert written == size
    first, _ = snapshot_tree(tmp_path / "src", store)
    assert "racy" not in first[f"state/blobs/{digest}.bin"]
    _, stats = snapshot_tree(tmp_path / "src", store, previous=first)
    assert stats["bytes_read"] == 0


def test_excludes_and_skips(store, tmp_path):
    src = tmp_path / "src"
    (src / "proj" / "__pycache__").mkdir(parents=True)
    (src / "proj" / "__pycache__" / "m.pyc").write_bytes(b"pyc")
    (src / "proj" / "m.py").write_text("pass")
    (src / ".cache" / "pip").mkdir(parents=True)
    (src / "outside").symlink_to("/etc/passwd")
    (src / "escape").symlink_to("../elsewhere")
    (src / "inside-abs").symlink_to(src / "proj" / "m.py")
    os.mkfifo(src / "fifo")
    files, stats = snapshot_tree(src, store, exclude=["__pycache__", "/.cache"])
    assert sorted(files) == ["inside-abs", "proj", "proj/m.py"]
    assert files["inside-abs"]["target"] == "proj/m.py"  # made relative to survive a move
    assert stats["excluded"] == 2
    assert sorted(stats["skipped"]) == [
        "escape: symlink points outside the home",
        "fifo: not a regular file, directory or symlink",
        "outside: symlink points outside the home",
    ]


def test_snapshot_survives_files_changing_under_it(store, tmp_path):
    """Files created, deleted and appended to during the walk never crash a snapshot."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "stable").write_bytes(b"s" * 1000)
    (src / "growing").write_bytes(b"")
    done = threading.Event()

    def churn() -> None:
        n = 0
        while not done.is_set():
            n += 1
            (src / f"tmp{n % 50}").write_bytes(b"t" * 5000)
            with open(src / "growing", "ab") as f:
                f.write(b"g" * 100)
            for victim in (src / f"tmp{(n + 25) % 50}", src / f"tmp{(n + 1) % 50}"):
                victim.unlink(missing_ok=True)

    worker = threading.Thread(target=churn)
    worker.start()
    reasons: set[str] = set()
    try:
        for _ in range(30):
            files, stats = snapshot_tree(src, store, chunk_size=1024)
            assert files["stable"]["size"] == 1000
            reasons |= {line.split(": ", 1)[1] for line in stats["skipped"]}
            for entry in files.values():  # whatever was recorded is whole
                data = b"".join(store.get_chunk(h) for h in entry["chunks"])
                assert len(data) == entry["size"]
    finally:
        done.set()
        worker.join()
    assert reasons <= {"vanished", "changed while being read"}


def test_restore_with_bad_chunk_leaves_target_untouched(store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    files, _ = snapshot_tree(src, store, chunk_size=SMALL)
    dst.mkdir()
    (dst / "existing.txt").write_text("mine")
    (dst / "notes.md").write_text("old notes")
    before = tree_state(dst)

    victim = files["big.bin"]["chunks"][3]
    chunk_path = Path(store.root_dir) / "chunks" / victim[:2] / victim
    chunk_path.write_bytes(b"bitrot" + chunk_path.read_bytes()[6:])
    with pytest.raises(CheckpointError, match=f"chunk {victim} is corrupt"):
        restore_tree(dst, files, store)
    assert tree_state(dst) == before

    chunk_path.unlink()
    with pytest.raises(CheckpointError, match=f"chunk {victim} is missing"):
        restore_tree(dst, files, store)
    assert tree_state(dst) == before

    with pytest.raises(CheckpointError):
        restore_tree(tmp_path / "new", files, store)
    assert not (tmp_path / "new").exists()


def test_delta_restore(store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    precopy, _ = snapshot_tree(src, store, chunk_size=SMALL)
    restore_tree(dst, precopy, store)

    (src / "notes.md").write_text("x = 43\n")
    (src / "a" / "b" / "deep.txt").unlink()
    (src / "link").unlink()
    (src / "emptydir").rmdir()
    (src / "new.txt").write_text("new")
    age(src / "notes.md", src / "new.txt", ns=OLD_NS + 10**9)
    final, _ = snapshot_tree(src, store, previous=precopy, chunk_size=SMALL)

    stats = restore_tree(dst, final, store, current=precopy)
    assert tree_state(dst) == tree_state(src)
    assert stats["files_written"] == 2  # notes.md, new.txt
    assert stats["files_unchanged"] == 4
    assert stats["deleted"] == 3  # deep.txt, link, emptydir
    assert stats["bytes_verified"] == len("x = 43\n") + len("new")


def test_delta_restore_rewrites_a_file_changed_on_disk(store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    files, _ = snapshot_tree(src, store, chunk_size=SMALL)
    restore_tree(dst, files, store)
    (dst / "notes.md").write_text("scribbled")
    stats = restore_tree(dst, files, store, current=files)
    assert stats["files_written"] == 1
    assert tree_state(dst) == tree_state(src)


@pytest.mark.parametrize(
    "rel", ["../evil", "/etc/passwd", "a/../../evil", "a//b", "./a", "a/./b", "", "a\x00b"]
)
def test_path_traversal_is_refused(store, tmp_path, rel):
    dst = tmp_path / "dst"
    files = {rel: {"type": "file", "mode": 0o644, "size": 0, "mtime_ns": 0, "chunks": []}}
    with pytest.raises(CheckpointError, match="refusing to restore"):
        restore_tree(dst, files, store)
    assert not dst.exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("target", ["../../etc", "/etc", "a/../../x"])
def test_symlink_out_of_the_home_is_refused(store, tmp_path, target):
    files = {"x": {"type": "symlink", "target": target}}
    with pytest.raises(CheckpointError, match="leaves the home"):
        restore_tree(tmp_path / "dst", files, store)


def test_restore_never_writes_through_a_symlink(store, tmp_path):
    """A symlink already in the target cannot redirect a restored file out of the home."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    h = store.put_chunk(b"payload")
    files = {
        "sub": {"type": "dir", "mode": 0o755},
        "sub/f": {"type": "file", "mode": 0o644, "size": 7, "mtime_ns": OLD_NS, "chunks": [h]},
    }
    restore_tree(dst, files, store)
    assert list(outside.iterdir()) == []
    assert (dst / "sub").is_dir() and not (dst / "sub").is_symlink()
    assert (dst / "sub" / "f").read_bytes() == b"payload"


def test_setuid_bits_are_not_restored(store, tmp_path):
    h = store.put_chunk(b"#!/bin/sh\n")
    files = {"s": {"type": "file", "mode": 0o4755, "size": 10, "mtime_ns": OLD_NS, "chunks": [h]}}
    restore_tree(tmp_path / "dst", files, store)
    assert stat.S_IMODE((tmp_path / "dst" / "s").stat().st_mode) == 0o755


def test_chunks_must_add_up_to_the_size(store, tmp_path):
    h = store.put_chunk(b"abc")
    files = {"f": {"type": "file", "mode": 0o644, "size": 4, "mtime_ns": OLD_NS, "chunks": [h]}}
    with pytest.raises(CheckpointError, match="do not add up"):
        restore_tree(tmp_path / "dst", files, store)
    assert not (tmp_path / "dst").exists()


def test_checkpoint_and_restore_home(store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    first, _ = checkpoint_home(store, "alice/", src, SECRET, meta={"reason": "precopy"})
    (src / "notes.md").write_text("x = 44\n")
    second, stats = checkpoint_home(store, "alice/", src, SECRET, parent=first.id)
    assert second.parent == first.id and stats["bytes_read"] == len("x = 44\n")
    assert store.list_checkpoints("alice/") == [first.id, second.id]
    manifest, _ = restore_home(store, "alice/", dst, SECRET)
    assert manifest.id == second.id
    assert (dst / "notes.md").read_text() == "x = 44\n"
    with pytest.raises(CheckpointError, match="no checkpoint of bob/"):
        restore_home(store, "bob/", dst, SECRET)


# -- restore stages each chunk once; signed checkpoints in one place ----------------------


class CountingStore(LocalCheckpointStore):
    """A real folder store that counts the chunk reads a restore makes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.reads: dict[str, int] = {}

    def get_chunk(self, h: str) -> bytes:
        self.reads[h] = self.reads.get(h, 0) + 1
        return super().get_chunk(h)


def test_restore_reads_and_hashes_each_chunk_once(tmp_path):
    store = CountingStore(root_dir=str(tmp_path / "store"), fsync=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    block = os.urandom(SMALL)
    (src / "repeats.bin").write_bytes(block * 3 + b"tail")  # one chunk three times
    (src / "copy.bin").write_bytes(block)  # and again in another file
    age(src / "repeats.bin", src / "copy.bin")
    files, _ = snapshot_tree(src, store, chunk_size=SMALL)
    store.reads.clear()
    stats = restore_tree(dst, files, store)
    assert tree_state(dst) == tree_state(src)
    assert store.reads and set(store.reads.values()) == {1}, store.reads
    assert stats["chunks_verified"] == len(store.reads)
    assert stats["bytes_verified"] == sum(len(store.get_chunk(h)) for h in store.reads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src", "store"]  # no stage left


def test_a_failed_restore_leaves_no_stage_behind(store, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_tree(src)
    files, _ = snapshot_tree(src, store, chunk_size=SMALL)
    dst.mkdir()
    (dst / "mine.txt").write_text("mine")
    before = tree_state(dst)
    last = files["big.bin"]["chunks"][-1]  # staged after others: the stage holds files then
    Path(store.root_dir, "chunks", last[:2], last).write_bytes(b"rot")
    with pytest.raises(CheckpointError, match="corrupt"):
        restore_tree(dst, files, store)
    assert tree_state(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src", "store"]


def test_restore_stages_inside_the_home_when_beside_it_is_not_writable(store, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    files, _ = snapshot_tree(src, store, chunk_size=SMALL)
    parent = tmp_path / "ro"
    dst = parent / "home"
    dst.mkdir(parents=True)
    parent.chmod(0o555)
    try:
        restore_tree(dst, files, store)
    finally:
        parent.chmod(0o755)
    assert tree_state(dst) == tree_state(src)  # and no hidden stage folder left inside


def test_a_leftover_restore_temp_file_is_not_snapshotted(store, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "a.txt").write_text("a")
    (tmp_path / "home" / ".ckpt-tmp-stage-x").mkdir()
    (tmp_path / "home" / ".ckpt-tmp-stage-x" / "half").write_text("half written")
    files, _ = snapshot_tree(tmp_path / "home", store)
    assert sorted(files) == ["a.txt"]


class ManifestReadCounter(LocalCheckpointStore):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.manifest_reads = 0

    def get_manifest(self, server: str, checkpoint_id: str) -> bytes:
        self.manifest_reads += 1
        return super().get_manifest(server, checkpoint_id)


def test_signed_checkpoints_commit_then_load_from_memory(tmp_path):
    store = ManifestReadCounter(root_dir=str(tmp_path / "store"), fsync=False)
    checkpoints = SignedCheckpoints(store, lambda: SECRET)
    files = {"a": {"type": "dir", "mode": 0o755}}
    first = checkpoints.commit("alice/", files, meta={"reason": "pre-copy"})
    second = checkpoints.commit("alice/", files, parent=first.id, checkpoint_id="ck-2")
    assert second.id == "ck-2" and second.parent == first.id
    assert store.list_checkpoints("alice/") == sorted([first.id, "ck-2"])
    # what was just committed is handed back as is, not read back and verified again
    assert checkpoints.load("alice/", "ck-2") is second
    assert store.manifest_reads == 0
    # an older one is read and verified
    assert checkpoints.load("alice/", first.id) == first
    assert store.manifest_reads == 1
    # another hub process (same secret) reads them from the store
    fresh = SignedCheckpoints(store, SECRET)
    assert fresh.load("alice/", "ck-2") == second
    with pytest.raises(CheckpointError, match="no checkpoint of bob/"):
        fresh.load("bob/")


def test_signed_checkpoints_refuse_a_tampered_manifest(tmp_path):
    store = LocalCheckpointStore(root_dir=str(tmp_path / "store"), fsync=False)
    h = store.put_chunk(b"mine")
    entry = {"type": "file", "mode": 0o644, "size": 4, "mtime_ns": OLD_NS, "chunks": [h]}
    committed = SignedCheckpoints(store, SECRET).commit("alice/", {"f": entry})
    path = store._manifest_path("alice/", committed.id)
    doc = json.loads(path.read_bytes())
    evil = store.put_chunk(b"evil")
    doc["manifest"]["files"]["f"]["chunks"] = [evil]
    path.write_bytes(json.dumps(doc).encode())
    with pytest.raises(CheckpointError, match="signature mismatch; refusing to restore"):
        SignedCheckpoints(store, SECRET).load("alice/", committed.id)
    with pytest.raises(CheckpointError, match="signature mismatch"):
        restore_home(store, "alice/", tmp_path / "dst", SECRET, committed.id)
    assert not (tmp_path / "dst").exists()


def test_a_local_store_without_a_folder_uses_one_in_the_hubs_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = LocalCheckpointStore(fsync=False)
    # absolute: agents and kernels in other folders are handed this path
    assert store.root == tmp_path / "migrating-checkpoints"
    assert store.agent_config()["config"]["root_dir"] == str(tmp_path / "migrating-checkpoints")
