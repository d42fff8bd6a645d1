"""Spare hosts: hosts acquired ahead, per instance type, so a move or a start need not wait.

A new cloud host takes tens of seconds to boot (a spot instance: ~40 s), out of a 120 s
reclaim notice. With `HostProvider.spare_hosts` = {"small": 1}, one host of that type is kept
with its agent up; `HostProvider.take` hands it over at once (after a quick look that it
still answers and has no reclaim notice) and a replacement is acquired in the background.
Each spare also keeps a server process started ahead (`spare_standby_modules`,
agent/standby.py): the first server started there becomes it, without Python's imports.

A spare host's record names its owner "spare:<instance type>" (a cloud tag on ec2). A hub
that restarts finds them again (`adopt`): the controller hands in the spare-labelled hosts
no server refers to, instead of releasing them as orphans; more than wanted go back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from ..agent.client import AgentClient, AgentError
from ..agent.host import Host, HostError

SPARE_PREFIX = "spare:"


def spare_owner(instance_type: str) -> str:
    """The owner label of a spare host of `instance_type`."""
    return SPARE_PREFIX + instance_type


def is_spare(host: Host) -> bool:
    """Whether `host`'s record says it is a spare (acquired ahead, nobody's yet)."""
    return str(host.meta.get("owner") or "").startswith(SPARE_PREFIX)


class _Provider(Protocol):
    spare_hosts: dict[str, int]
    spare_standby_modules: list[str]
    market: str

    def agent(self, host: Host) -> AgentClient: ...

    async def acquire(self, instance_type: str = "", market: str = "", owner: str = "") -> Host: ...

    async def release(self, host: Host) -> None: ...

    async def label(self, host: Host, owner: str) -> None: ...


class SparePool:
    """The spare hosts of one provider; see the module's docstring."""

    def __init__(self, provider: _Provider, retry_after: float = 30, log: Any = None):
        self.provider = provider
        self.retry_after = retry_after  # after a failed acquisition of a spare
        self.log = log or logging.getLogger(__name__)
        self._ready: dict[str, list[Host]] = {}  # instance type -> spare hosts, oldest first
        self._filling: dict[str, int] = {}  # instance type -> acquisitions under way
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self.taken = 0  # spare hosts handed out so far (logs, benchmarks)

    # -- what the pool holds ----------------------------------------------------------

    def wanted(self, instance_type: str) -> int:
        return max(0, int(self.provider.spare_hosts.get(instance_type, 0)))

    def hosts(self) -> list[Host]:
        return [h for hosts in self._ready.values() for h in hosts]

    def holds(self, host_id: str) -> bool:
        return any(h.id == host_id for h in self.hosts())

    # -- taking one ---------------------------------------------------------------------

    async def take(self, instance_type: str, market: str, owner: str) -> Host | None:
        """A spare host of `instance_type` in `market`, now `owner`'s; None if there is none
        (the pool refills either way, once started)."""
        spares = self._ready.get(instance_type, [])
        try:
            while True:
                host = next((h for h in spares if h.market == market), None)
                if host is None:
                    return None
                spares.remove(host)
                if await self._usable(host):
                    await self.provider.label(host, owner)
                    self.taken += 1
                    self.log.info("took spare host %s (%s) for %s", host.id, instance_type, owner)
                    return host
                self._spawn(self._release(host, "it no longer answers or has a notice"))
        finally:
            self.refill()

    async def _usable(self, host: Host) -> bool:
        try:
            status = await self.provider.agent(host).status(quick=True)
        except AgentError:
            return False
        return not status.get("notice")

    # -- keeping it filled ----------------------------------------------------------------

    async def adopt(self, hosts: list[Host]) -> None:
        """Spare hosts a hub before this one acquired (no server refers to them): kept as
        spares while they answer, up to what is wanted; the rest are released. Then the
        pool fills itself from here on."""
        for host in hosts:
            instance_type = host.instance_type
            have = len(self._ready.get(instance_type, []))
            if have < self.wanted(instance_type) and await self._usable(host):
                self._ready.setdefault(instance_type, []).append(host)
                self.log.info("adopted spare host %s (%s)", host.id, instance_type)
                await self._standby(host)  # (the one it may have is kept)
            else:
                await self._release(host, "not wanted or not answering")
        self.start()

    def start(self) -> None:
        """Fill the pool from now on (idempotent)."""
        self._started = True
        self.refill()

    def refill(self) -> None:
        """Acquire, in the background, the spare hosts missing from what is wanted."""
        if not self._started:
            return
        for instance_type in self.provider.spare_hosts:
            missing = (
                self.wanted(instance_type)
                - len(self._ready.get(instance_type, []))
                - self._filling.get(instance_type, 0)
            )
            for _ in range(missing):
                self._filling[instance_type] = self._filling.get(instance_type, 0) + 1
                self._spawn(self._add(instance_type))

    async def _add(self, instance_type: str) -> None:
        host = None
        try:
            host = await self.provider.acquire(
                instance_type, self.provider.market, owner=spare_owner(instance_type)
            )
        except HostError as e:
            self.log.warning("could not acquire a spare %s host: %s", instance_type, e)
            await asyncio.sleep(self.retry_after)  # still counted as filling: no storm
        finally:
            self._filling[instance_type] -= 1
        if host is not None and not self._started:
            await self._release(host, "the pool stopped")
            return
        if host is not None:
            await self._standby(host)
            self._ready.setdefault(instance_type, []).append(host)
            self.log.info("spare host %s (%s) ready", host.id, instance_type)
        self.refill()

    async def _standby(self, host: Host) -> None:
        """Start the spare's server process ahead (agent/standby.py); without one a server
        still starts there, only later."""
        modules = list(self.provider.spare_standby_modules)
        if not modules:
            return
        try:
            await self.provider.agent(host).start_standby(modules)
        except AgentError as e:
            self.log.warning("no standby server process on spare host %s: %s", host.id, e)

    async def _release(self, host: Host, why: str) -> None:
        self.log.info("releasing spare host %s: %s", host.id, why)
        try:
            await self.provider.release(host)
        except HostError as e:
            self.log.error("could not release spare host %s: %s", host.id, e)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, release: bool = False) -> None:
        """Stop filling; with `release`, give every spare host back (a clean stop that asked
        for it). Without, they stay for the next hub to adopt."""
        self._started = False
        here = asyncio.get_running_loop()
        tasks = list(self._tasks)
        for task in tasks:
            # (an exit hook stops the pool on a loop of its own: a task of the process's
            # ended loop is cancelled if that loop is not closed, and not waited for)
            if not task.get_loop().is_closed():
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t.get_loop() is here), return_exceptions=True)
        if release:
            hosts, self._ready = self.hosts(), {}
            await asyncio.gather(*(self._release(h, "clean stop") for h in hosts))
