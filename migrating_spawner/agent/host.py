"""Host: what the hub needs to reach a host and its agent (address, URL, secret).

It lives beside the agent's client, which talks to it; `hosts.base` (the providers, which
hand hosts out) imports both, so imports only ever go hosts -> agent.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class HostError(Exception):
    """A host could not be acquired, found, reached or released."""


@dataclasses.dataclass
class Host:
    """What the hub needs to reach a host and its agent."""

    id: str
    address: str
    agent_url: str
    agent_token: str
    instance_type: str = ""
    market: str = "spot"
    disk: str = ""  # the host's own disk (lost when it is reclaimed)
    #: SHA-256 (hex) of the certificate the agent registered: an https agent_url is
    #: reached only when the agent presents exactly that one (agent/tls.py)
    agent_fingerprint: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Host:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def public(self) -> dict[str, Any]:
        """The host as shown to users and admins: no secrets."""
        data = self.to_dict()
        data.pop("agent_token")
        return data
