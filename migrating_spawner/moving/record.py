"""The record of a move under way, kept in the server's state so a hub restart finds it."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..hosts.base import Host

#: the new host is acquired and being made ready; the old server still owns the route
PREPARING = "preparing"
#: the hub's record and the route point at the new server; the old host is left to release
SWITCHED = "switched"


@dataclasses.dataclass
class MoveRecord:
    reason: str
    deadline: float
    old_host: Host | None
    new_host: Host | None = None
    phase: str = PREPARING
    #: the move's final checkpoint, once the old server is stopped after it: a hub restart
    #: before the switch goes on from it (nothing lost) instead of from an older one
    final_checkpoint: str | None = None
    kernels_saved: bool = False  # the kernels' final snapshot is in that checkpoint

    @property
    def switched(self) -> bool:
        return self.phase == SWITCHED

    def to_dict(self) -> dict[str, Any]:
        """The shape kept in the spawner state under `move` (version 1's keys, and the final
        checkpoint's two once there is one)."""
        data: dict[str, Any] = {
            "reason": self.reason,
            "deadline": self.deadline,
            "old_host": self.old_host.to_dict() if self.old_host else None,
            "new_host": self.new_host.to_dict() if self.new_host else None,
            "phase": self.phase,
        }
        if self.final_checkpoint:
            data["final_checkpoint"] = self.final_checkpoint
            data["kernels_saved"] = self.kernels_saved
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoveRecord:
        def host(key: str) -> Host | None:
            return Host.from_dict(data[key]) if data.get(key) else None

        return cls(
            reason=str(data.get("reason", "")),
            deadline=float(data.get("deadline") or 0),
            old_host=host("old_host"),
            new_host=host("new_host"),
            phase=str(data.get("phase") or PREPARING),
            final_checkpoint=data.get("final_checkpoint") or None,
            kernels_saved=bool(data.get("kernels_saved")),
        )
