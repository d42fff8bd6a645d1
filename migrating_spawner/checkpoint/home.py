"""Snapshot a home directory into a store, and restore it, incrementally.

Runs inside the host agent (synchronous; callers use threads). A file table maps relative
posix paths to entries::

    {"type": "file", "mode": 0o644, "size": 12, "mtime_ns": ..., "chunks": ["<sha256>", ...]}
    {"type": "dir", "mode": 0o755}
    {"type": "symlink", "target": "relative/target"}

Every directory gets an entry (not only empty ones) so that modes such as ``~/.ssh`` 0700
survive a move. Symlinks that leave the home are not recorded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .chunks import CHUNK_SIZE, hash_bytes, is_chunk_hash
from .manifest import CheckpointError, Manifest
from .signed import SignedCheckpoints
from .store import CheckpointStore

FileTable = dict[str, dict[str, Any]]

#: a file modified this close to the moment it was read may change again without its
#: mtime changing (timestamps are coarse), so its entry is marked "racy" and re-read next time
RACY_WINDOW_NS = 2_000_000_000

#: modes restored on files and dirs: no setuid/setgid/sticky bits, the agent may run as root
_RESTORE_MODE_MASK = 0o777

_TMP_PREFIX = ".ckpt-tmp-"

_O_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


# -- snapshot ---------------------------------------------------------------------------


class _Unreadable(Exception):
    """A file vanished, could not be opened, or changed while it was read."""


def _excluded(rel: str, name: str, patterns: list[str]) -> bool:
    # a pattern without '/' matches a name at any depth (like .gitignore); else the whole path
    for pattern in patterns:
        anchored = "/" in pattern.rstrip("/")
        pattern = pattern.strip("/")
        target = rel if anchored else name
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


def _link_target_inside(rel: str, target: str, root: str) -> str | None:
    """The target to record for the symlink at `rel` (made relative), or None if it leaves root."""
    if os.path.isabs(target):
        if os.path.commonpath([root, os.path.normpath(target)]) != root:
            return None
        # relative, so the link still points inside when the home moves to another path
        target = os.path.relpath(target, os.path.join(root, os.path.dirname(rel)))
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        return None
    return target


class _Snapshot:
    """The state of one walk: the store, chunks known to exist, and the stats."""

    def __init__(self, store: CheckpointStore, previous: FileTable, chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        self.store = store
        self.previous = previous
        self.chunk_size = chunk_size
        self.known: set[str] = set()  # chunks known to be stored: no need to ask again
        self.stats: dict[str, Any] = {
            "files": 0,
            "dirs": 0,
            "symlinks": 0,
            "excluded": 0,
            "bytes_total": 0,
            "bytes_read": 0,
            "chunks_uploaded": 0,
            "bytes_uploaded": 0,
            "skipped": [],
        }

    def file_entry(self, path: str, rel: str, st: os.stat_result) -> dict[str, Any]:
        old = self.previous.get(rel)
        if (
            old is not None
            and old.get("type") == "file"
            and not old.get("racy")
            and old.get("size") == st.st_size
            and old.get("mtime_ns") == st.st_mtime_ns
        ):
            self.known.update(old["chunks"])
            entry = dict(old, mode=stat.S_IMODE(st.st_mode))
            return entry
        try:
            st, hashes = self._read(path)
        except _Unreadable:
            st, hashes = self._read(path)  # once more: a writer may just have finished
        entry = {
            "type": "file",
            "mode": stat.S_IMODE(st.st_mode),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "chunks": hashes,
        }
        if st.st_mtime_ns >= time.time_ns() - RACY_WINDOW_NS:
            entry["racy"] = True
        return entry

    def _read(self, path: str) -> tuple[os.stat_result, list[str]]:
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            raise _Unreadable("vanished") from None
        except OSError as e:  # ELOOP: replaced by a symlink since we looked
            raise _Unreadable(f"cannot open ({e.strerror})") from None
        with os.fdopen(fd, "rb", buffering=0) as f:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise _Unreadable("no longer a regular file")
            hashes = []
            size = 0
            while data := f.read(self.chunk_size):
                size += len(data)
                hashes.append(self._put(data))
            after = os.fstat(fd)
        if size != after.st_size or (before.st_size, before.st_mtime_ns) != (
            after.st_size,
            after.st_mtime_ns,
        ):
            raise _Unreadable("changed while being read")
        return after, hashes

    def _put(self, data: bytes) -> str:
        self.stats["bytes_read"] += len(data)
        h = hash_bytes(data)
        if h not in self.known and not self.store.has_chunk(h):
            self.store.put_chunk(data)
            self.stats["chunks_uploaded"] += 1
            self.stats["bytes_uploaded"] += len(data)
        self.known.add(h)
        return h


def snapshot_tree(
    root: Path,
    store: CheckpointStore,
    previous: FileTable | None = None,
    *,
    exclude: Iterable[str] = (),
    chunk_size: int = CHUNK_SIZE,
) -> tuple[FileTable, dict[str, Any]]:
    """Store the tree under `root` as chunks and return (file table, stats).

    With `previous` (the file table of the last snapshot of this tree), a file whose size
    and mtime_ns are unchanged keeps its chunk list and is not read. Symlinked directories
    are recorded as symlinks, not followed. Files that vanish, cannot be read or keep
    changing are left out and listed in ``stats["skipped"]`` as "path: reason".
    `exclude` holds glob patterns: with a '/' they match the relative path, else any name.
    """
    root_str = os.path.abspath(root)
    if not os.path.isdir(root_str):
        raise CheckpointError(f"cannot snapshot {root_str}: not a directory")
    walk = _Snapshot(store, previous or {}, chunk_size)
    stats = walk.stats
    patterns = list(exclude)
    files: FileTable = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root_str, rel_dir)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            stats["skipped"].append(f"{rel_dir or '.'}: cannot list ({e.strerror})")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            # a restore's leftovers (its agent was killed mid-write) never travel
            if entry.name.startswith(_TMP_PREFIX) or _excluded(rel, entry.name, patterns):
                stats["excluded"] += 1
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    files[rel] = {"type": "dir", "mode": stat.S_IMODE(st.st_mode)}
                    stats["dirs"] += 1
                    stack.append(rel)
                elif stat.S_ISLNK(st.st_mode):
                    target = _link_target_inside(rel, os.readlink(entry.path), root_str)
                    if target is None:
                        stats["skipped"].append(f"{rel}: symlink points outside the home")
                        continue
                    files[rel] = {"type": "symlink", "target": target}
                    stats["symlinks"] += 1
                elif stat.S_ISREG(st.st_mode):
                    files[rel] = walk.file_entry(entry.path, rel, st)
                    stats["files"] += 1
                    stats["bytes_total"] += files[rel]["size"]
                else:
                    stats["skipped"].append(f"{rel}: not a regular file, directory or symlink")
            except FileNotFoundError:
                stats["skipped"].append(f"{rel}: vanished")
            except _Unreadable as e:
                stats["skipped"].append(f"{rel}: {e}")
    return files, stats


# -- restore ----------------------------------------------------------------------------


def _check_path(rel: object) -> str:
    if (
        not isinstance(rel, str)
        or not rel
        or rel.startswith("/")
        or "\x00" in rel
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise CheckpointError(f"refusing to restore {rel!r}: path leaves the home directory")
    return rel


def check_table(files: FileTable) -> None:
    """Validate a file table before anything is written."""
    for rel, entry in files.items():
        _check_path(rel)
        kind = entry.get("type") if isinstance(entry, dict) else None
        parent = posixpath.dirname(rel)
        while parent:
            if files.get(parent, {}).get("type") not in (None, "dir"):
                raise CheckpointError(f"refusing to restore {rel!r}: {parent!r} is not a directory")
            parent = posixpath.dirname(parent)
        if kind == "file":
            chunks = entry.get("chunks")
            if not isinstance(chunks, list) or not all(is_chunk_hash(h) for h in chunks):
                raise CheckpointError(f"refusing to restore {rel!r}: malformed chunk list")
            for key in ("mode", "size", "mtime_ns"):
                if not isinstance(entry.get(key), int):
                    raise CheckpointError(f"refusing to restore {rel!r}: malformed {key}")
        elif kind == "dir":
            if not isinstance(entry.get("mode"), int):
                raise CheckpointError(f"refusing to restore {rel!r}: malformed mode")
        elif kind == "symlink":
            target = entry.get("target")
            if (
                not isinstance(target, str)
                or not target
                or "\x00" in target
                or posixpath.isabs(target)
                or _link_target_inside(rel, target, "/") is None
            ):
                raise CheckpointError(
                    f"refusing to restore {rel!r}: symlink target {target!r} leaves the home"
                )
        else:
            raise CheckpointError(f"refusing to restore {rel!r}: unknown entry type {kind!r}")


def _same_file(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    keys = ("type", "size", "mtime_ns", "chunks")
    return a is not None and all(a.get(k) == b.get(k) for k in keys)


class _Restore:
    """Writes a verified file table under root, never through a symlink."""

    def __init__(self, root: str, store: CheckpointStore, chown: tuple[int, int] | None):
        self.root = root
        self.store = store
        self.chown = chown
        self.staged: dict[str, tuple[str, int, int]] = {}  # chunk -> (staged file, offset, size)
        self.stats: dict[str, Any] = {
            "files_written": 0,
            "bytes_written": 0,
            "files_unchanged": 0,
            "dirs": 0,
            "symlinks": 0,
            "deleted": 0,
            "chunks_verified": 0,
            "bytes_verified": 0,
        }

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def own(self, path: str) -> None:
        if self.chown is not None:
            os.lchown(path, *self.chown)

    def _clear(self, path: str) -> None:
        """Remove whatever is at path (file, symlink or whole directory)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # does not follow symlinks inside
        else:
            os.unlink(path)

    def ensure_dir(self, rel: str) -> None:
        """Make rel (and its parents) real directories: a symlink in the way is replaced."""
        current = self.root
        for part in rel.split("/"):
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                continue
            if st is not None:
                os.unlink(current)
            os.mkdir(current, 0o700)
            self.own(current)
            self.stats["dirs"] += 1

    def _parent(self, rel: str) -> str:
        parent = posixpath.dirname(rel)
        if parent:
            self.ensure_dir(parent)
        return os.path.dirname(self.path(rel))

    def stage_file(self, stage: str, rel: str, entry: dict[str, Any]) -> str:
        """Write a file's chunks to a new file in `stage`, fetching and hashing each distinct
        chunk once (a chunk seen before is copied from the staged file that holds it)."""
        fd, tmp = tempfile.mkstemp(dir=stage, prefix=_TMP_PREFIX)
        with os.fdopen(fd, "wb") as f:
            size = 0
            for h in entry["chunks"]:
                where = self.staged.get(h)
                if where is None:
                    data = self.store.get_chunk(h)  # re-hashed by the store: the one check
                    self.stats["chunks_verified"] += 1
                    self.stats["bytes_verified"] += len(data)
                    self.staged[h] = (tmp, size, len(data))
                else:
                    path, offset, length = where
                    if path == tmp:
                        f.flush()
                    with open(path, "rb") as src:
                        data = os.pread(src.fileno(), length, offset)
                f.write(data)
                size += len(data)
                if size > entry["size"]:
                    break
            if size != entry["size"]:
                raise CheckpointError(
                    f"refusing to restore {rel!r}: chunks do not add up to its size"
                )
            f.flush()  # the next file may copy a chunk from this one
            os.fchmod(f.fileno(), entry["mode"] & _RESTORE_MODE_MASK)
        os.utime(tmp, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        self.own(tmp)
        return tmp

    def place_file(self, staged: str, rel: str, entry: dict[str, Any]) -> None:
        """Rename a staged file into place (same file system: the stage is beside it)."""
        self._parent(rel)
        target = self.path(rel)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(staged, target)
        self.stats["files_written"] += 1
        self.stats["bytes_written"] += entry["size"]

    def write_symlink(self, rel: str, target: str) -> None:
        parent = self._parent(rel)
        path = self.path(rel)
        with contextlib.suppress(OSError):
            if os.readlink(path) == target:
                return
        tmp = os.path.join(parent, f"{_TMP_PREFIX}{os.urandom(6).hex()}")
        os.symlink(target, tmp)
        self.own(tmp)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        self.stats["symlinks"] += 1

    def inside_real_dirs(self, rel: str) -> bool:
        """True if every parent of rel under root is a real directory (not a symlink)."""
        current = self.root
        for part in rel.split("/")[:-1]:
            current = os.path.join(current, part)
            try:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return False
            except FileNotFoundError:
                return False
        return True

    def delete(self, rel: str) -> None:
        # never through a symlinked parent: that could reach outside root
        if not self.inside_real_dirs(rel):
            return
        path = self.path(rel)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                with contextlib.suppress(OSError):  # keep dirs that hold files we do not know
                    os.rmdir(path)
                    self.stats["deleted"] += 1
            else:
                os.unlink(path)
                self.stats["deleted"] += 1


def restore_tree(
    root: Path,
    files: FileTable,
    store: CheckpointStore,
    current: FileTable | None = None,
    *,
    chown: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Write the file table `files` under `root` and return stats.

    Phase 1 checks the table and stages every file it must write in a staging folder
    beside root (inside root, hidden, when beside it is not writable or is another file
    system), fetching and re-hashing each distinct chunk once: a bad table or a missing or
    corrupt chunk raises CheckpointError, removes the stage and leaves root as it was.
    Phase 2 renames the staged files into place, with their mode and mtime, so the next
    snapshot of root recognises them.

    `current` is the file table already in root (an earlier restore of a pre-copy): files
    whose entry and on-disk size and mtime are unchanged are skipped, and paths in
    `current` but not in `files` are deleted. `chown` (uid, gid) owns what is written.
    """
    root_str = os.path.abspath(root)
    current = current or {}
    writer = _Restore(root_str, store, chown)
    stats = writer.stats

    # phase 1: nothing under root changes until every chunk is known to be good
    check_table(files)
    for rel in current:
        _check_path(rel)
    todo = [rel for rel, e in files.items() if e["type"] == "file"]
    todo = [rel for rel in todo if not _unchanged_on_disk(writer, rel, files[rel], current)]
    skipped = {rel for rel, e in files.items() if e["type"] == "file"} - set(todo)
    stage = _make_stage(root_str) if todo else None
    try:
        staged = {rel: writer.stage_file(stage, rel, files[rel]) for rel in todo} if stage else {}

        # phase 2: write
        if not os.path.isdir(root_str):
            os.makedirs(root_str, mode=0o700)
            writer.own(root_str)
        for rel in sorted(set(current) - set(files), key=lambda r: -r.count("/")):
            writer.delete(rel)
        for rel in sorted(files):  # parents sort before children
            entry = files[rel]
            if entry["type"] == "dir":
                writer.ensure_dir(rel)
            elif rel in staged:
                writer.place_file(staged[rel], rel, entry)
            elif entry["type"] == "symlink":
                writer.write_symlink(rel, entry["target"])
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    for rel in skipped:
        os.chmod(writer.path(rel), files[rel]["mode"] & _RESTORE_MODE_MASK)
    stats["files_unchanged"] = len(skipped)
    # directory modes last: a read-only directory must not block writing into it
    for rel in sorted(files, reverse=True):
        if files[rel]["type"] == "dir":
            os.chmod(writer.path(rel), files[rel]["mode"] & _RESTORE_MODE_MASK)
    return stats


def _make_stage(root: str) -> str:
    """A new, private staging folder on root's file system (so staged files rename into
    place): beside root if possible, else hidden inside it."""
    parent = os.path.dirname(root)
    try:
        os.makedirs(parent, exist_ok=True)
        stage = tempfile.mkdtemp(dir=parent, prefix=f"{_TMP_PREFIX}stage-")
    except OSError:
        stage = None
    if stage is not None:
        try:
            same_fs = not os.path.isdir(root) or os.stat(root).st_dev == os.stat(stage).st_dev
        except OSError:
            same_fs = False
        if same_fs:
            return stage
        os.rmdir(stage)
    return tempfile.mkdtemp(dir=root, prefix=f"{_TMP_PREFIX}stage-")


def _unchanged_on_disk(
    writer: _Restore, rel: str, entry: dict[str, Any], current: FileTable
) -> bool:
    """True if current holds this exact file and the disk still agrees with current."""
    old = current.get(rel)
    if not _same_file(old, entry) or not writer.inside_real_dirs(rel):
        return False
    try:
        st = os.lstat(writer.path(rel))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (
        entry["size"],
        entry["mtime_ns"],
    )


# -- whole checkpoints ------------------------------------------------------------------


def checkpoint_home(
    store: CheckpointStore,
    server: str,
    root: Path,
    secret: bytes,
    *,
    parent: str | None = None,
    blobs: dict[str, list[str]] | None = None,
    meta: dict[str, Any] | None = None,
    exclude: Iterable[str] = (),
) -> tuple[Manifest, dict[str, Any]]:
    """Snapshot `root` as a new signed checkpoint of `server` and store its manifest last.

    With `parent` (a checkpoint id of the same server), unchanged files are not re-read.
    """
    checkpoints = SignedCheckpoints(store, secret)
    previous = checkpoints.load(server, parent).files if parent else None
    files, stats = snapshot_tree(root, store, previous, exclude=exclude)
    manifest = checkpoints.commit(
        server, files, parent=parent, blobs=blobs, meta=dict(meta or {}, snapshot=stats)
    )
    return manifest, stats


def restore_home(
    store: CheckpointStore,
    server: str,
    root: Path,
    secret: bytes,
    checkpoint_id: str | None = None,
    *,
    current: FileTable | None = None,
    chown: tuple[int, int] | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Verify a checkpoint of `server` (default: the latest) and restore its files to root."""
    manifest = SignedCheckpoints(store, secret).load(server, checkpoint_id)
    return manifest, restore_tree(root, manifest.files, store, current, chown=chown)
