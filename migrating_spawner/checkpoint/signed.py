"""Signed checkpoints in one place: commit a manifest (sign, store it last) and load one (verify).

Only the hub holds the secret. A manifest this object committed is kept in memory (the last
one of each server), so a move restores what it committed a moment ago without reading it
back from the store and verifying its own signature again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .manifest import CheckpointError, Manifest, new_checkpoint_id, sign_manifest, verify_manifest
from .store import CheckpointStore

Secret = bytes | Callable[[], bytes]


class SignedCheckpoints:
    """Commits and loads the signed manifests of one store."""

    def __init__(self, store: CheckpointStore, secret: Secret):
        self.store = store
        self._secret = secret
        self._committed: dict[str, Manifest] = {}  # server -> the last manifest committed here

    @property
    def secret(self) -> bytes:
        # a callable: the hub reads (or creates) its secret file on first use only
        return self._secret() if callable(self._secret) else self._secret

    def commit(
        self,
        server: str,
        files: dict[str, Any],
        *,
        parent: str | None = None,
        blobs: dict[str, list[str]] | None = None,
        meta: dict[str, Any] | None = None,
        checkpoint_id: str | None = None,
    ) -> Manifest:
        """Sign and store a manifest of chunks already in the store; the commit point.

        `checkpoint_id` lets a caller name the checkpoint before its snapshot is taken
        (the agent keeps the snapshot's file table under that id).
        """
        manifest = Manifest(
            server=server,
            id=checkpoint_id or new_checkpoint_id(),
            parent=parent,
            files=files,
            blobs=blobs or {},
            meta=meta or {},
        )
        self.store.put_manifest(server, manifest.id, sign_manifest(manifest, self.secret))
        self._committed[server] = manifest
        return manifest

    def load(self, server: str, checkpoint_id: str | None = None) -> Manifest:
        """A verified manifest of `server` (default: its latest); CheckpointError if none."""
        checkpoint_id = checkpoint_id or self.store.latest(server)
        if checkpoint_id is None:
            raise CheckpointError(f"no checkpoint of {server}")
        committed = self._committed.get(server)
        if committed is not None and committed.id == checkpoint_id:
            return committed
        try:
            data = self.store.get_manifest(server, checkpoint_id)
        except OSError as e:
            raise CheckpointError(f"checkpoint {checkpoint_id} of {server} unreadable: {e}") from e
        return verify_manifest(data, self.secret, server=server, checkpoint_id=checkpoint_id)

    def forget(self, server: str) -> None:
        """Drop the in-memory manifest of `server` (its checkpoints were deleted)."""
        self._committed.pop(server, None)
