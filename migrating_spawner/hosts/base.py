"""Hosts and the providers that give and take them.

A host is a machine (a cloud instance, or a loopback address in local mode) that runs one
user server and one agent. Providers know how to get one, find one again after a hub
restart, and give it back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from traitlets import Dict, Enum, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from ..agent.client import AgentClient, AgentTimeouts
from ..agent.host import Host, HostError
from ..agent.standby import SERVER_MODULES
from .pool import SparePool
from .watcher import HostWatcher

__all__ = [
    "MAX_NOTICE_SECONDS",
    "Host",
    "HostError",
    "HostProvider",
    "ReclaimOnRequest",
    "RegistrationError",
    "ServerAPIError",
]

# the longest notice a reclaim on request takes (the control API's and the CLI's check)
MAX_NOTICE_SECONDS = 3600


class ServerAPIError(HostError):
    """A user's server answered a call of the hub with an error (its HTTP `status`), or did
    not answer (status 0: its host died, or it is between hosts)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class RegistrationError(Exception):
    """A host agent's registration the hub refuses (answered with `status`). Here, not in
    a cloud's provider module, so the control API needs no cloud SDK to import it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ReclaimOnRequest(Protocol):
    """A provider whose hosts can be reclaimed on request (a simulated cloud: tests, demos,
    `jupyterhub-migrate reclaim`). A real cloud's provider does not offer it."""

    async def reclaim(self, host: Host, notice_seconds: float) -> dict[str, Any]:
        """Give `host` a reclaim notice of `notice_seconds`; returns the notice."""


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

    agent_request_timeout = Float(
        10,
        help="""Seconds one request to a host's agent may take. Calls that carry a budget of
        their own (home snapshots and restores, a stop with a grace period) use that.""",
    ).tag(config=True)

    agent_retry_timeout = Float(
        5,
        help="""Seconds over which a read from an agent that failed (no connection, or a
        timeout) is tried again, with exponential backoff (0: never). Requests that change
        something are never repeated: one that timed out may have happened.""",
    ).tag(config=True)

    agent_probe_timeout = Float(
        3,
        help="""Seconds of a quick look at an agent (`quick=True`: the watcher's status
        polls, "is the old server still there" during a move): one try, no retry, so a dead
        host costs no more than this.""",
    ).tag(config=True)

    watch_interval = Float(
        5,
        help="""Seconds between the host watcher's polls of each watched host's agent
        (its status, processes and reclaim notice). AWS suggests 5 s for spot notices.""",
    ).tag(config=True)

    lost_after_polls = Integer(
        3,
        help="""Polls in a row a host's agent may leave unanswered before the watcher calls
        the host lost (a host whose record is gone is lost at the first failed poll).""",
    ).tag(config=True)

    spare_hosts = Dict(
        value_trait=Integer(),
        default_value={},
        help="""Spare hosts to keep ready, per instance type: {"small": 1}. Each is acquired
        ahead with its agent up, so a move (or a start) takes it at once instead of waiting
        for a host to boot, and a replacement is acquired in the background. None by
        default. On ec2, where a spot instance boots in ~40 s out of a 120 s reclaim notice,
        one per instance type that servers move between is the usual choice; each costs
        what a running instance of its type costs (benchmarks/results.md, "Spare hosts").
        A restarted hub finds its spare hosts again (their owner is "spare:<type>").""",
    ).tag(config=True)

    spare_standby_modules = List(
        Unicode(),
        default_value=list(SERVER_MODULES),
        help="""Modules a spare host's standby process imports ahead: Python started on the
        spare with these imported, which the next server started there becomes (its own
        environment, folder and user), so a move with a short notice does not spend it on
        Python importing jupyter_server, JupyterLab and the hub's ORM (agent/standby.py).
        A server command that is not a Python script of the agent's interpreter starts the
        usual way. Empty: no standby process.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._agents: dict[str, AgentClient] = {}
        self._watcher: HostWatcher | None = None
        self.spares = SparePool(self, log=self.log)

    def agent(self, host: Host) -> AgentClient:
        """The one client of `host`'s agent (cached per host, with this provider's timeouts)."""
        client = self._agents.get(host.id)
        if client is None:
            timeouts = AgentTimeouts(
                request=self.agent_request_timeout,
                retry=self.agent_retry_timeout,
                probe=self.agent_probe_timeout,
            )
            client = self._agents[host.id] = AgentClient(host, timeouts)
        return client

    @property
    def watcher(self) -> HostWatcher:
        """The one HostWatcher of this provider's hosts (see hosts/watcher.py)."""
        if self._watcher is None:
            self._watcher = HostWatcher(self, self.watch_interval, self.lost_after_polls)
        return self._watcher

    def forget(self, host: Host) -> None:
        """Drop what is cached about `host` (its client, its watch): it is being released."""
        self._agents.pop(host.id, None)
        if self._watcher is not None:
            self._watcher.forget(host.id)

    @property
    def simulated_cloud(self) -> ReclaimOnRequest | None:
        """What reclaims this provider's hosts on request, if it can (a simulated cloud, for
        tests and demos); None for a real cloud, where only the cloud reclaims."""
        return None

    def start(self, notify_url: str = "") -> list:
        """Background work this provider needs while the hub runs (tasks it started);
        `notify_url` is where agents may push notices. Nothing by default."""
        return []

    async def acquire(
        self,
        instance_type: str = "",
        market: str = "",
        owner: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Host:
        """Get a new host with a running agent.

        `owner` names what will run on it (a server's key, a kernel's id); it is kept in the
        host's record (``meta["owner"]``) so that tools can tell whose host it is.
        `progress`, if given, hears what the user should know while it takes (e.g. a
        cloud falling back to another instance type).
        """
        raise NotImplementedError

    async def take(
        self,
        instance_type: str = "",
        market: str = "",
        owner: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Host:
        """A host for `owner`: a spare one at once if `spare_hosts` keeps one of that type
        (replaced in the background), else a new one (`acquire`). What moves and starts
        call."""
        instance_type = self.check_instance_type(instance_type)
        self.spares.start()  # (idempotent; the hub starts it after adopting its spares)
        host = await self.spares.take(instance_type, market or self.market, owner)
        if host is not None:
            return host
        return await self.acquire(instance_type, market, owner=owner, progress=progress)

    async def label(self, host: Host, owner: str) -> None:
        """Record that `host` now belongs to `owner` (a spare host taken). Providers whose
        records outlive the hub write it there too."""
        host.meta["owner"] = owner

    async def get(self, host_id: str) -> Host | None:
        """Find a host again by id (after a hub restart); None if it is gone."""
        raise NotImplementedError

    async def list_hosts(self) -> list[Host]:
        """All hosts this provider holds now."""
        raise NotImplementedError

    async def release(self, host: Host) -> None:
        """Give a host back; its processes and disk are gone afterwards."""
        raise NotImplementedError

    def check_instance_type(self, instance_type: str) -> str:
        instance_type = instance_type or self.default_instance_type
        if instance_type not in self.instance_types:
            known = ", ".join(sorted(self.instance_types))
            raise HostError(f"unknown instance type {instance_type!r} (known: {known})")
        return instance_type
