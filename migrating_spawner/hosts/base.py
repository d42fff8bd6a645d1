"""Hosts and the providers that give and take them.

A host is a machine (a cloud instance, or a loopback address in local mode) that runs one
user server and one agent. Providers know how to get one, find one again after a hub
restart, and give it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from traitlets import Dict, Enum, Unicode
from traitlets.config import LoggingConfigurable


class HostError(Exception):
    """A host could not be acquired, found or released."""


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


class HostProvider(LoggingConfigurable):
    """Base class: gives hosts on demand and takes them back."""

    #: short name used in config and the CLI
    name = "base"

    instance_types = Dict(
        default_value={
            "small": {"cpus": 1, "memory": "2G"},
            "medium": {"cpus": 2, "memory": "4G"},
        },
        help="""Instance types that profiles may ask for: name -> {"cpus": N, "memory": "4G"}.

        On ec2 the names are EC2 instance types; locally they only label hosts.
        """,
    ).tag(config=True)

    default_instance_type = Unicode(
        "small", help="Instance type used when a profile does not name one."
    ).tag(config=True)

    market = Enum(
        ["spot", "on-demand"],
        default_value="spot",
        help="Market to buy hosts in: 'spot' (cheap, reclaimable) or 'on-demand'.",
    ).tag(config=True)

    async def acquire(self, instance_type: str = "", market: str = "", owner: str = "") -> Host:
        """Get a new host with a running agent.

        `owner` names what will run on it (a server's key, a kernel's id); it is kept in the
        host's record (``meta["owner"]``) so that tools can tell whose host it is.
        """
        raise NotImplementedError

    async def get(self, host_id: str) -> Host | None:
        """Find a host again by id (after a hub restart); None if it is gone."""
        raise NotImplementedError

    async def list_hosts(self) -> list[Host]:
        """All hosts this provider holds now."""
        raise NotImplementedError

    async def release(self, host: Host) -> None:
        """Give a host back; its processes and disk are gone afterwards."""
        raise NotImplementedError

    async def reclaim(self, host: Host, notice_seconds: float) -> dict[str, Any]:
        """Simulate the cloud reclaiming a host (local and simulated providers only)."""
        raise HostError(f"the {self.name} provider cannot reclaim hosts on request")

    def check_instance_type(self, instance_type: str) -> str:
        instance_type = instance_type or self.default_instance_type
        if instance_type not in self.instance_types:
            known = ", ".join(sorted(self.instance_types))
            raise HostError(f"unknown instance type {instance_type!r} (known: {known})")
        return instance_type
