"""Signed checkpoints in one place: commit a manifest (sign, store it last) and load one (verify).

Only the hub holds the secret. A manifest this object committed is kept in memory (the last
one of each server), so a move restores what it committed a moment ago without reading it
back from the store and verifying its own signature again.

Store calls block (a folder, or S3 requests). Code on the hub's event loop uses the
`*_async` methods: each runs the blocking call in a thread, gives it `timeout` seconds and
tries it again (`tries` in all) when it did not answer in time; every one of these calls
may be repeated (a manifest is stored under its id, a read or delete changes nothing new).
A store's own request retries (S3: botocore's) happen inside each try.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from .manifest import CheckpointError, Manifest, new_checkpoint_id, sign_manifest, verify_manifest
from .store import CheckpointStore

Secret = bytes | Callable[[], bytes]
T = TypeVar("T")


def secret_from_file(path: str) -> bytes:
    """The signing secret kept in `path` (hex), made there (mode 0600) if missing."""
    if not os.path.exists(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    with open(path) as f:
        return bytes.fromhex(f.read().strip())


class SignedCheckpoints:
    """Commits and loads the signed manifests of one store."""

    def __init__(
        self, store: CheckpointStore, secret: Secret, *, timeout: float = 60.0, tries: int = 2
    ):
        self.store = store
        self._secret = secret
        self._committed: dict[str, Manifest] = {}  # server -> the last manifest committed here
        #: seconds one try of an *_async call may take, and how many tries it gets
        self.timeout = timeout
        self.tries = max(1, tries)

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

    # -- the same, off the event loop -----------------------------------------------------

    async def off_loop(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a thread, `timeout` seconds per try, `tries` tries;
        CheckpointError when no try answered in time (a thread that hangs is left behind:
        a thread cannot be cancelled, and its late answer changes nothing)."""
        for attempt in range(1, self.tries + 1):
            try:
                return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), self.timeout)
            except asyncio.TimeoutError:
                if attempt == self.tries:
                    raise CheckpointError(
                        f"checkpoint store: {what} took longer than {self.timeout:g} s"
                        f" ({self.tries} tries)"
                    ) from None
        raise AssertionError("unreachable")

    async def commit_async(self, server: str, files: dict[str, Any], **kwargs: Any) -> Manifest:
        """`commit` off the event loop (see the module doc). The id is named before the
        first try, so a try that answers late stores the same manifest's key again."""
        kwargs["checkpoint_id"] = kwargs.get("checkpoint_id") or new_checkpoint_id()
        return await self.off_loop(f"commit of {server}", self.commit, server, files, **kwargs)

    async def load_async(self, server: str, checkpoint_id: str | None = None) -> Manifest:
        """`load` off the event loop; a manifest committed here comes back at once."""
        committed = self._committed.get(server)
        if committed is not None and checkpoint_id is not None and committed.id == checkpoint_id:
            return committed
        return await self.off_loop(f"load of {server}", self.load, server, checkpoint_id)

    async def delete_async(self, server: str, keep: int = 0) -> None:
        """Delete the checkpoints of `server` but the last `keep` (all: 0) off the loop;
        with keep=0 the in-memory manifest goes too."""
        if not keep:
            self.forget(server)
        await self.off_loop(
            f"delete of {server}'s checkpoints", self.store.delete_checkpoints, server, keep
        )
