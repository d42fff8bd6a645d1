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

    @property
    def switched(self) -> bool:
        return self.phase == SWITCHED

    def to_dict(self) -> dict[str, Any]:
        """The shape kept in the spawner state under `move` (unchanged since version 1)."""
        return {
            "reason": self.reason,
            "deadline": self.deadline,
            "old_host": self.old_host.to_dict() if self.old_host else None,
            "new_host": self.new_host.to_dict() if self.new_host else None,
            "phase": self.phase,
        }

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
        )
