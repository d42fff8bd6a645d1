"""The single-user server's background kernel snapshots (singleuser/extension.py
ServerState.snapshot_loop): when they must not write into the home."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from migrating_spawner.singleuser.extension import ServerState


class Kernels:
    """A kernel manager with one idle kernel that ran something since its last snapshot."""

    def __init__(self) -> None:
        self.kernel = SimpleNamespace(
            execution_state="idle", last_activity=1, kernel_name="python3"
        )

    def list_kernel_ids(self) -> list[str]:
        return ["k1"]

    def get_kernel(self, kernel_id: str):
        return self.kernel


class Sessions:
    async def list_sessions(self) -> list:
        return []  # a move's new server: the sessions come back with the restore


class CountingGate:
    """A gate that is never frozen and counts the loop's looks at it (one a round)."""

    def __init__(self) -> None:
        self.looks = 0

    @property
    def frozen(self) -> bool:
        self.looks += 1
        return False


class Looking(ServerState):
    """Records its snapshots instead of running them in a kernel."""

    def __init__(self, app, root):
        super().__init__(app, root, snapshot_interval=0.01)
        self.gate = CountingGate()
        self.snapshots: list[str] = []

    async def _snapshot_kernel(self, kernel_id, until, interrupt=True):
        self.snapshots.append(kernel_id)
        self._snapshotted_activity[kernel_id] = self.kernels.get_kernel(kernel_id).last_activity
        return {"ok": True}


async def until(condition, what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_new_server_with_kernels_started_ahead_writes_nothing_before_its_restore(
    tmp_path,
):
    # the long-session oracle caught it: the new server's loop snapshotted the kernels a
    # pre-copy had started ahead, after the old server's final snapshot, and wrote an empty
    # sessions.json over it; the restore then brought back the pre-copy's state, no
    # sessions and not the R kernel, and said nothing
    app = SimpleNamespace(
        log=logging.getLogger("test"), kernel_manager=Kernels(), session_manager=Sessions()
    )
    state = Looking(app, tmp_path)
    (tmp_path / "sessions.json").write_text('[{"id": "s1"}]')  # the old server's final one
    state.prestarted = {"k1": {"ok": True}}
    loop = asyncio.ensure_future(state.snapshot_loop())
    try:
        await until(lambda: state.gate.looks >= 20, "the loop to look twenty times")
        assert state.snapshots == []
        assert (tmp_path / "sessions.json").read_text() == '[{"id": "s1"}]'
        state.prestarted = {}  # the restore ran: this server's state is the user's now
        await until(lambda: state.snapshots, "a snapshot after the restore")
        assert (tmp_path / "sessions.json").read_text() == "[]"
    finally:
        loop.cancel()
