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

import json
from typing import Any

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
        parent, checkpoint_id, result = await self._upload(agent, kernel_id, state_dir)
        return await self._commit(kernel_id, state_dir, parent, checkpoint_id, result, reason)

    async def save_snapshot(
        self,
        agent: AgentClient,
        kernel_id: str,
        state_dir: str,
        report_name: str,
        reason: str = "snapshot",
    ) -> tuple[Manifest | None, dict[str, Any] | None]:
        """Upload `state_dir` and read the kernel's report `report_name` from what was
        uploaded (re-hashed); commit it as the latest snapshot only if that report says ok.
        Returns (the manifest or None, the report or None): a failed snapshot never
        replaces the last good one."""
        parent, checkpoint_id, result = await self._upload(agent, kernel_id, state_dir)
        report = await self._read_entry(result["files"].get(report_name), report_name)
        if not isinstance(report, dict) or not report.get("ok"):
            return None, report if isinstance(report, dict) else None
        manifest = await self._commit(kernel_id, state_dir, parent, checkpoint_id, result, reason)
        return manifest, report

    async def read_json(
        self, agent: AgentClient, kernel_id: str, state_dir: str, name: str
    ) -> dict[str, Any] | None:
        """One JSON file of `state_dir` on the agent's host (e.g. the restore report the
        kernel just wrote), through the store and re-hashed; nothing is committed. Only
        what changed since the last save or load there is uploaded."""
        _, _, result = await self._upload(agent, kernel_id, state_dir)
        value = await self._read_entry(result["files"].get(name), name)
        return value if isinstance(value, dict) else None

    async def _upload(
        self, agent: AgentClient, kernel_id: str, state_dir: str
    ) -> tuple[str | None, str, dict[str, Any]]:
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
        return parent, checkpoint_id, result

    async def _read_entry(self, entry: Any, name: str) -> Any:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            return None
        data = await self.checkpoints.off_loop(
            f"read of {name}", get_blob, self.checkpoints.store, entry["chunks"]
        )
        try:
            return json.loads(data)
        except ValueError:
            return None

    async def _commit(
        self,
        kernel_id: str,
        state_dir: str,
        parent: str | None,
        checkpoint_id: str,
        result: dict[str, Any],
        reason: str,
    ) -> Manifest:
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
        user: str | None = None,
    ) -> Manifest:
        """Write the kernel's snapshot (default: the latest) into `state_dir` on the agent's
        host, after verifying its manifest; CheckpointError if there is none or it was
        tampered with (nothing is written then). `user`: the hub user the kernel runs as
        (an agent that runs processes as users gives them the folder)."""
        manifest = await self.checkpoints.load_async(key_of(kernel_id), checkpoint_id)
        await agent.restore_home(
            state_dir,
            manifest.files,
            self.checkpoints.store.agent_config(),
            self.timeout,
            # files an earlier load through this agent wrote and this one lacks go
            current_id=self._last.get((kernel_id, state_dir)),
            checkpoint_id=manifest.id,
            user=user,
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

    async def latest_snapshot(
        self, kernel_id: str, report_name: str
    ) -> tuple[Manifest, dict[str, Any]] | None:
        """The kernel's latest committed snapshot in the store, verified, and its report
        `report_name` (only good snapshots are committed); None if the store has none. For
        a process that takes a kernel over and so knows of no snapshot in memory.
        CheckpointError if the latest one cannot be read or was tampered with."""
        key = key_of(kernel_id)
        latest = await self.checkpoints.off_loop(
            f"latest of {key}", self.checkpoints.store.latest, key
        )
        if latest is None:
            return None
        manifest = await self.checkpoints.load_async(key, latest)
        data = await self.read(manifest, report_name)
        try:
            report = json.loads(data) if data is not None else None
        except ValueError:
            report = None
        if not isinstance(report, dict) or not report.get("ok"):
            return None
        return manifest, report

    async def prepare(self, agent: AgentClient, state_dir: str, user: str | None = None) -> None:
        """Make `state_dir` on the agent's host, empty and the user's (the kernel runs as
        `user` there and writes its snapshots into it)."""
        await agent.restore_home(
            state_dir, {}, self.checkpoints.store.agent_config(), self.timeout, user=user
        )

    async def forget(self, kernel_id: str) -> None:
        """The kernel shut down: its snapshots go (their chunks at the next gc)."""
        for where in [k for k in self._last if k[0] == kernel_id]:
            del self._last[where]
        await self.checkpoints.delete_async(key_of(kernel_id))
