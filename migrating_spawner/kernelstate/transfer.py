"""A kernel's snapshot folder carried between hosts by the checkpoint store (hub side).

The snapshot code runs inside the kernel and writes its folder (`store.py`'s blobs and
index) on the kernel's own host. To move it, the old host's agent uploads that folder into
the checkpoint store (S3, or a local folder), the caller signs a manifest of it, and the new
host's agent verifies nothing itself but writes exactly the files the verified manifest
names, each chunk re-hashed. So no folder needs to be reachable from both hosts, and the
kernel's bytes never pass through the caller. Blobs are content-addressed and keep their
mtime, so a second snapshot sends only the variables that changed.

Never imported by kernels (they import `store.py` only).
"""

from __future__ import annotations

from ..agent.client import AgentClient
from ..checkpoint import Manifest, SignedCheckpoints, get_blob, new_checkpoint_id

#: manifests of a kernel's snapshots are kept under this server key (not a user's server)
KEY_PREFIX = "kernel:"
#: snapshots kept per kernel: the last good one, and the one before while a new one lands
KEEP = 2


def key_of(kernel_id: str) -> str:
    return KEY_PREFIX + kernel_id


class KernelStateTransfer:
    """Save a kernel's snapshot folder from one host, load it onto another."""

    def __init__(self, checkpoints: SignedCheckpoints, timeout: float = 120.0):
        self.checkpoints = checkpoints
        self.timeout = timeout
        # (kernel id, folder) -> the snapshot last saved from or loaded into that folder: the
        # agent there keeps its file table under that id (another host's agent does not
        # know the id, and then reads or writes everything: slower, never wrong)
        self._last: dict[tuple[str, str], str] = {}

    async def save(
        self, agent: AgentClient, kernel_id: str, state_dir: str, reason: str = "snapshot"
    ) -> Manifest:
        """Upload `state_dir` (on the agent's host) and commit it as the kernel's latest
        snapshot; only what changed since the last save through this host's agent is read."""
        parent = self._last.get((kernel_id, state_dir))
        checkpoint_id = new_checkpoint_id()
        result = await agent.snapshot_home(
            state_dir,
            self.checkpoints.store.agent_config(),
            [],
            self.timeout,
            parent_id=parent,
            checkpoint_id=checkpoint_id,
        )
        key = key_of(kernel_id)
        manifest = await self.checkpoints.commit_async(
            key,
            result["files"],
            parent=parent,
            meta={"reason": reason, "stats": result.get("stats", {})},
            checkpoint_id=checkpoint_id,
        )
        self._last[(kernel_id, state_dir)] = manifest.id
        await self.checkpoints.delete_async(key, KEEP)
        return manifest

    async def load(
        self,
        agent: AgentClient,
        kernel_id: str,
        state_dir: str,
        checkpoint_id: str | None = None,
    ) -> Manifest:
        """Write the kernel's snapshot (default: the latest) into `state_dir` on the agent's
        host, after verifying its manifest; CheckpointError if there is none or it was
        tampered with (nothing is written then)."""
        manifest = await self.checkpoints.load_async(key_of(kernel_id), checkpoint_id)
        await agent.restore_home(
            state_dir,
            manifest.files,
            self.checkpoints.store.agent_config(),
            self.timeout,
            # files an earlier load through this agent wrote and this one lacks go
            current_id=self._last.get((kernel_id, state_dir)),
            checkpoint_id=manifest.id,
        )
        # the next save from that folder sends only what changed since this
        self._last[(kernel_id, state_dir)] = manifest.id
        return manifest

    async def read(self, manifest: Manifest, path: str) -> bytes | None:
        """One file of a saved folder (e.g. its snapshot-report.json), from the store and
        re-hashed: the caller need not reach the host's disk. None if it has no such file."""
        entry = manifest.files.get(path)
        if not entry or entry.get("type") != "file":
            return None
        return await self.checkpoints.off_loop(
            f"read of {path}", get_blob, self.checkpoints.store, entry["chunks"]
        )

    async def forget(self, kernel_id: str) -> None:
        """The kernel shut down: its snapshots go (their chunks at the next gc)."""
        for where in [k for k in self._last if k[0] == kernel_id]:
            del self._last[where]
        await self.checkpoints.delete_async(key_of(kernel_id))
