"""Files of a user's home, read and written from the hub: a headless job's input notebook,
and its output notebook and log next to it.

The home is the one of the user's default server (`alice`, not a named server's own
`alice-<name>`), in either home mode:

- `shared`: a folder on storage the hub mounts too (`shared_home_root/<user>`).
- `synced`: the home lives on its server's host while the server runs (then through that
  server's Contents API, with the server's own token), else in its last checkpoint (read
  from the manifest's chunks; written as a new checkpoint holding the new files, which the
  server's next start restores).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any
from urllib.parse import quote

from ..checkpoint import CheckpointError
from ..checkpoint.chunks import split_bytes
from ..hosts.base import ServerAPIError
from ..serverspec import home_folder

#: tries of a call to a running server (it may be moving: its address changes meanwhile)
TRIES = 5


class HomeError(Exception):
    """The home cannot be read or written now."""


class HomeFiles:
    """The home of `spawner`'s user (the default server's spawner)."""

    def __init__(self, spawner: Any, controller: Any):
        self.spawner = spawner
        self.controller = controller

    @property
    def mode(self) -> str:
        return self.spawner.home_mode

    def where(self) -> str:
        """Where the home is now, for messages."""
        if self.mode == "shared":
            return "shared storage"
        if self.spawner.ready:
            return f"its running server's host {self.spawner.host.id}"
        if self.spawner.checkpoint_id:
            return f"checkpoint {self.spawner.checkpoint_id}"
        return "nowhere yet (the user never started a server)"

    def _shared_path(self, rel: str) -> str:
        root = home_folder(
            "shared", self.spawner.shared_home_root, self.spawner.user.name, "", None
        )
        return os.path.join(root, rel)

    async def read(self, rel: str) -> bytes | None:
        """The file's bytes, or None if the home has no such file."""
        if self.mode == "shared":
            try:
                return await asyncio.to_thread(_read_file, self._shared_path(rel))
            except FileNotFoundError:
                return None
            except IsADirectoryError:
                return None
        if self.spawner.ready:
            model = await self._contents(
                "GET", rel, params={"content": "1", "format": "base64", "type": "file"}
            )
            if model is None or model.get("type") == "directory":
                return None
            return base64.b64decode(model["content"])
        manifest = await asyncio.to_thread(self._manifest)
        if manifest is None:
            return None
        entry = manifest.files.get(rel)
        if not entry or entry.get("type", "file") != "file":
            return None
        store = self.controller.store
        chunks = await asyncio.gather(
            *(asyncio.to_thread(store.get_chunk, h) for h in entry["chunks"])
        )
        return b"".join(chunks)

    async def write(self, files: dict[str, bytes]) -> str:
        """Write `files` (path relative to the home -> bytes); returns where they went."""
        if self.mode == "shared":
            for rel, data in files.items():
                await asyncio.to_thread(_write_file, self._shared_path(rel), data)
            return "shared storage"
        if self.spawner.ready:
            for rel, data in files.items():
                body = {
                    "type": "file",
                    "format": "base64",
                    "content": base64.b64encode(data).decode(),
                }
                await self._contents("PUT", rel, body=body)
            return f"the running server's home on {self.spawner.host.id}"
        # the chunks and the manifest in a thread (store calls block); the hub's database
        # only on the loop: its session is not thread-safe
        checkpoint_id = await asyncio.to_thread(self._commit, files)
        spawner = self.spawner
        spawner.checkpoint_id = checkpoint_id
        spawner.fresh_start = False
        spawner.save_state()
        return f"checkpoint {checkpoint_id} (the next start of {spawner.key} restores it)"

    # -- synced home: a running server -------------------------------------------------

    async def _contents(
        self, method: str, rel: str, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any] | None:
        last: Exception | None = None
        for attempt in range(TRIES):
            spawner = self.spawner
            if not spawner.ready or spawner.server is None or spawner.host is None:
                raise HomeError(f"{spawner.key} stopped while its home was in use")
            try:
                return await spawner.server_api(
                    spawner.host,
                    spawner.server.port,
                    method,
                    "contents/" + quote(rel),
                    body,
                    params=params,
                )
            except ServerAPIError as e:
                if e.status == 404 and method == "GET":
                    return None
                if 400 <= e.status < 500:
                    raise HomeError(str(e)) from None
                last = e  # moving: the old address is gone, or the server is restarting
            await asyncio.sleep(1 + attempt)
        raise HomeError(f"{method} {rel} on {self.spawner.key}: {last}")

    # -- synced home: a checkpoint --------------------------------------------------------

    def _manifest(self):
        checkpoint_id = self.spawner.checkpoint_id
        if not checkpoint_id or self.spawner.fresh_start:
            return None
        try:
            return self.controller.checkpoints.load(self.spawner.key, checkpoint_id)
        except CheckpointError as e:
            raise HomeError(f"the home's checkpoint {checkpoint_id} cannot be read: {e}") from e

    def _commit(self, new: dict[str, bytes]) -> str:
        """A checkpoint of the home's last one with `new` written over it; its id."""
        manifest = self._manifest()
        files = dict(manifest.files) if manifest else {}
        store = self.controller.store
        now = time.time_ns()
        for rel, data in new.items():
            parts = rel.split("/")
            for i in range(1, len(parts)):
                files.setdefault("/".join(parts[:i]), {"type": "dir", "mode": 0o755})
            files[rel] = {
                "type": "file",
                "mode": 0o644,
                "size": len(data),
                "mtime_ns": now,
                "chunks": [store.put_chunk(chunk) for chunk in split_bytes(data)] if data else [],
            }
        return self.controller.checkpoints.commit(
            self.spawner.key,
            files,
            parent=manifest.id if manifest else None,
            meta={"reason": "job output", "time": time.time()},
        ).id


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
