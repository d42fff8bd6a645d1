"""Where checkpoints live: chunks by hash, and one signed manifest per checkpoint.

A checkpoint exists once its manifest is stored; chunks go first, the manifest last, so a
crash mid-checkpoint leaves only unreferenced chunks (which `collect_garbage` removes).
Methods are synchronous: the agent calls them from threads.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from traitlets import Bool, Unicode, default
from traitlets.config import LoggingConfigurable

from .chunks import CHUNK_SIZE, hash_bytes, is_chunk_hash, split_bytes
from .manifest import CheckpointError, Manifest, check_checkpoint_id, verify_manifest

#: short names accepted by `store_from_config`; other kinds are dotted class paths
STORE_KINDS = {
    "local": "migrating_spawner.checkpoint.store.LocalCheckpointStore",
    "s3": "migrating_spawner.checkpoint.s3.S3CheckpointStore",
}


def check_chunk_hash(h: object) -> str:
    if not is_chunk_hash(h):
        raise CheckpointError(f"invalid chunk name {h!r}")
    return h  # type: ignore[return-value]


def check_server_key(server: object) -> str:
    if not isinstance(server, str) or not server:
        raise CheckpointError(f"invalid server key {server!r}")
    return server


class CheckpointStore(LoggingConfigurable):
    """Base class. Subclasses implement the primitives; the rest is built on them."""

    #: the name `store_from_config` knows this class by
    kind = "base"

    # -- primitives -------------------------------------------------------------------

    def has_chunk(self, h: str) -> bool:
        raise NotImplementedError

    def put_chunk(self, data: bytes) -> str:
        """Store a chunk under its hash and return the hash; storing it twice is harmless."""
        raise NotImplementedError

    def get_chunk(self, h: str) -> bytes:
        """Return a chunk's bytes, re-hashed: raise CheckpointError if missing or corrupt."""
        raise NotImplementedError

    def delete_chunk(self, h: str) -> None:
        raise NotImplementedError

    def iter_chunks(self) -> Iterator[tuple[str, float]]:
        """Yield (hash, time stored) of every chunk."""
        raise NotImplementedError

    def put_manifest(self, server: str, checkpoint_id: str, signed: bytes) -> None:
        """Store a signed manifest, atomically: the commit point of a checkpoint."""
        raise NotImplementedError

    def get_manifest(self, server: str, checkpoint_id: str) -> bytes:
        raise NotImplementedError

    def delete_manifest(self, server: str, checkpoint_id: str) -> None:
        raise NotImplementedError

    def list_checkpoints(self, server: str) -> list[str]:
        """Checkpoint ids of one server, oldest first."""
        raise NotImplementedError

    def list_servers(self) -> list[str]:
        """Every server key with at least one checkpoint."""
        raise NotImplementedError

    def agent_config(self) -> dict[str, Any]:
        """JSON-able settings with which `store_from_config` opens this same store."""
        raise NotImplementedError

    # -- built on the primitives ------------------------------------------------------

    def latest(self, server: str) -> str | None:
        ids = self.list_checkpoints(server)
        return ids[-1] if ids else None

    def read_manifest(self, server: str, checkpoint_id: str, secret: bytes) -> Manifest:
        """Fetch and verify a manifest, checking it was signed for this server and id."""
        data = self.get_manifest(server, checkpoint_id)
        return verify_manifest(data, secret, server=server, checkpoint_id=checkpoint_id)

    def delete_checkpoints(self, server: str, keep: int = 0) -> list[str]:
        """Delete all but the newest `keep` checkpoints of a server; return deleted ids.

        Chunks stay until `collect_garbage`, since other checkpoints may share them.
        """
        ids = self.list_checkpoints(server)
        doomed = ids[: max(len(ids) - keep, 0)]
        for checkpoint_id in doomed:
            self.delete_manifest(server, checkpoint_id)
        return doomed

    def collect_garbage(self, secret: bytes, min_age: float = 3600.0) -> dict[str, Any]:
        """Delete chunks that no manifest references.

        Chunks younger than `min_age` seconds are kept: a checkpoint in progress has stored
        its chunks but not yet its manifest. A manifest that fails verification still
        protects its chunks (deleting is the one thing GC cannot undo); one that cannot be
        parsed at all stops the collection.
        """
        live: set[str] = set()
        unverified: list[str] = []
        for server in self.list_servers():
            for checkpoint_id in self.list_checkpoints(server):
                try:
                    live |= self.read_manifest(server, checkpoint_id, secret).chunk_hashes()
                except CheckpointError as e:
                    unverified.append(f"{server}:{checkpoint_id}")
                    self.log.warning("Keeping chunks of unverified checkpoint: %s", e)
                    live |= _unverified_chunk_hashes(self.get_manifest(server, checkpoint_id))
        cutoff = time.time() - min_age
        deleted = kept = freed = 0
        for h, stored in list(self.iter_chunks()):
            if h in live or stored > cutoff:
                kept += 1
                continue
            with contextlib.suppress(FileNotFoundError):
                freed += self.chunk_size(h)
                self.delete_chunk(h)
                deleted += 1
        return {"deleted": deleted, "kept": kept, "bytes_freed": freed, "unverified": unverified}

    def chunk_size(self, h: str) -> int:
        """Bytes a stored chunk takes (for reports); subclasses may answer without reading."""
        return len(self.get_chunk(h))


def _unverified_chunk_hashes(data: bytes) -> set[str]:
    try:
        body = json.loads(data)["manifest"]
        hashes = {h for e in body["files"].values() for h in e.get("chunks", ())}
        return hashes | {h for chunks in body["blobs"].values() for h in chunks}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"a manifest cannot be parsed ({e}); not collecting garbage until it is removed"
        ) from None


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints in a folder: ``chunks/ab/<hash>``, ``manifests/<server>/<id>.json``.

    The folder may be on shared storage (NFS, EFS) that every host mounts at the same path.
    """

    kind = "local"

    root_dir = Unicode(
        config=True,
        help="""Folder that holds the checkpoints. Every host agent that saves or restores
        checkpoints must see the same folder at this path (local hosts share this machine's
        disk; cloud hosts need shared storage such as EFS, or use an object store instead).
        Defaults to `migrating-checkpoints/` in the hub's working directory (agents are
        given the hub's absolute path).
        """,
    )

    @default("root_dir")
    def _default_root_dir(self) -> str:
        return os.path.abspath("migrating-checkpoints")

    fsync = Bool(
        True,
        config=True,
        help="""Flush chunks and manifests to disk before they count as stored, so a power
        loss cannot leave an empty chunk behind a manifest. Turn off only for tests.
        """,
    )

    @property
    def root(self) -> Path:
        if not self.root_dir:
            raise CheckpointError("LocalCheckpointStore.root_dir is not set")
        return Path(self.root_dir).expanduser().absolute()

    def _chunk_path(self, h: str) -> Path:
        h = check_chunk_hash(h)
        return self.root / "chunks" / h[:2] / h

    def _server_dir(self, server: str) -> Path:
        # quote '/' and '.' so that a server key is always a single, non-special name
        name = quote(check_server_key(server), safe="").replace(".", "%2E")
        return self.root / "manifests" / name

    def _manifest_path(self, server: str, checkpoint_id: str) -> Path:
        return self._server_dir(server) / f"{check_checkpoint_id(checkpoint_id)}.json"

    def _write_atomic(self, path: Path, data: bytes, sync_dir: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if sync_dir and self.fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def has_chunk(self, h: str) -> bool:
        return self._chunk_path(h).is_file()

    def put_chunk(self, data: bytes) -> str:
        h = hash_bytes(data)
        path = self._chunk_path(h)
        if not path.exists():
            self._write_atomic(path, data)
        return h

    def get_chunk(self, h: str) -> bytes:
        try:
            data = self._chunk_path(h).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"chunk {h} is missing") from None
        if hash_bytes(data) != h:
            raise CheckpointError(f"chunk {h} is corrupt")
        return data

    def chunk_size(self, h: str) -> int:
        return self._chunk_path(h).stat().st_size

    def delete_chunk(self, h: str) -> None:
        self._chunk_path(h).unlink()

    def iter_chunks(self) -> Iterator[tuple[str, float]]:
        chunks = self.root / "chunks"
        if not chunks.is_dir():
            return
        for shard in sorted(chunks.iterdir()):
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                if is_chunk_hash(path.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield path.name, path.stat().st_mtime

    def put_manifest(self, server: str, checkpoint_id: str, signed: bytes) -> None:
        self._write_atomic(self._manifest_path(server, checkpoint_id), signed, sync_dir=True)

    def get_manifest(self, server: str, checkpoint_id: str) -> bytes:
        try:
            return self._manifest_path(server, checkpoint_id).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {checkpoint_id} of {server} not found") from None

    def delete_manifest(self, server: str, checkpoint_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._manifest_path(server, checkpoint_id).unlink()

    def delete_checkpoints(self, server: str, keep: int = 0) -> list[str]:
        """As the base class; deleting all of them removes the server's manifest folder too
        (a removed job server's would stay behind, empty)."""
        doomed = super().delete_checkpoints(server, keep)
        if not keep:
            with contextlib.suppress(OSError):  # not empty: a checkpoint came meanwhile
                self._server_dir(server).rmdir()
        return doomed

    def list_checkpoints(self, server: str) -> list[str]:
        folder = self._server_dir(server)
        if not folder.is_dir():
            return []
        names = (p.name for p in folder.iterdir() if not p.name.startswith("."))
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))

    def list_servers(self) -> list[str]:
        folder = self.root / "manifests"
        if not folder.is_dir():
            return []
        return sorted(unquote(p.name) for p in folder.iterdir() if p.is_dir())

    def agent_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": {"root_dir": str(self.root), "fsync": self.fsync},
        }


def store_from_config(cfg: dict[str, Any]) -> CheckpointStore:
    """Open the store that `CheckpointStore.agent_config()` describes."""
    kind = cfg.get("kind")
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"checkpoint store config has no 'kind': {cfg!r}")
    dotted = STORE_KINDS.get(kind, kind)
    module_name, _, class_name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise CheckpointError(f"unknown checkpoint store kind {kind!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, CheckpointStore)):
        raise CheckpointError(f"{dotted} is not a CheckpointStore")
    return cls(**cfg.get("config", {}))


def put_blob(store: CheckpointStore, data: bytes, chunk_size: int = CHUNK_SIZE) -> list[str]:
    """Store an in-memory blob (kernel state, ...) as chunks; return its chunk list."""
    hashes = []
    for piece in split_bytes(data, chunk_size):
        h = hash_bytes(piece)
        if not store.has_chunk(h):
            store.put_chunk(piece)
        hashes.append(h)
    return hashes


def get_blob(store: CheckpointStore, hashes: list[str]) -> bytes:
    """Reassemble a blob from its chunk list, each chunk verified."""
    return b"".join(store.get_chunk(h) for h in hashes)
