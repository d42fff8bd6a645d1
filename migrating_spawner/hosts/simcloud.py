"""The local provider's simulated cloud: reclaims on request, and a random spot market.

A real cloud reclaims hosts on its own; local hosts need someone to play that part, for
tests, demos and soak runs. The notice goes to the host's agent, which behaves as the
instance would (its notice endpoint answers, and at the deadline it kills its processes,
wipes its disk and removes its record).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

from ..agent.client import AgentClient, AgentError
from ..agent.host import Host

log = logging.getLogger(__name__)


class _Provider(Protocol):
    def agent(self, host: Host) -> AgentClient: ...

    async def list_hosts(self) -> list[Host]: ...


class SimulatedCloud:
    """Reclaims a provider's hosts: on request (`reclaim`) and at random (`spot_market`)."""

    def __init__(self, provider: _Provider, spot_reclaim_rate: float = 0, notice: float = 120):
        self.provider = provider
        self.spot_reclaim_rate = spot_reclaim_rate
        self.spot_notice_seconds = notice

    async def reclaim(self, host: Host, notice_seconds: float) -> dict[str, Any]:
        """Give `host` a reclaim notice of `notice_seconds`; returns the notice."""
        return await self.provider.agent(host).reclaim(notice_seconds)

    async def spot_market(self, interval: float = 5) -> None:
        """Reclaim spot hosts at random, `spot_reclaim_rate` per host-hour, until cancelled."""
        while self.spot_reclaim_rate > 0:
            await asyncio.sleep(interval)
            chance = self.spot_reclaim_rate * interval / 3600
            for host in await self.provider.list_hosts():
                if host.market == "spot" and random.random() < chance:
                    log.warning("spot simulator: reclaiming %s", host.id)
                    try:
                        await self.reclaim(host, self.spot_notice_seconds)
                    except AgentError as e:
                        log.warning("spot simulator could not reclaim %s: %s", host.id, e)
