"""SparePool with a provider stand-in (no processes): takes, refills, adoption."""

from __future__ import annotations

import asyncio
from typing import Any

from migrating_spawner.agent.client import AgentError
from migrating_spawner.agent.host import Host, HostError
from migrating_spawner.hosts.pool import SparePool, is_spare, spare_owner


class Agent:
    def __init__(self, provider: Provider, host: Host):
        self.provider, self.host = provider, host

    async def status(self, quick: bool = False) -> dict[str, Any]:
        if self.host.id in self.provider.dead:
            raise AgentError("gone")
        return {"notice": self.provider.notices.get(self.host.id)}

    async def start_standby(self, modules: list[str]) -> str:
        if self.host.id in self.provider.dead:
            raise AgentError("gone")
        self.provider.standbys.append((self.host.id, modules))
        return "importing"


class Provider:
    market = "spot"

    def __init__(self, spare_hosts: dict[str, int]):
        self.spare_hosts = spare_hosts
        self.spare_standby_modules = ["jupyter_server.serverapp"]
        self.standbys: list[tuple[str, list[str]]] = []  # (host id, modules) asked for
        self.acquired: list[Host] = []
        self.released: list[str] = []
        self.dead: set[str] = set()
        self.notices: dict[str, dict] = {}
        self.fail = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def agent(self, host: Host) -> Agent:
        return Agent(self, host)

    async def acquire(self, instance_type: str = "", market: str = "", owner: str = "") -> Host:
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise HostError("no capacity")
        host = Host(
            id=f"h{len(self.acquired)}",
            address="127.0.0.1",
            agent_url="",
            agent_token="",
            instance_type=instance_type,
            market=market,
            meta={"owner": owner},
        )
        self.acquired.append(host)
        return host

    async def release(self, host: Host) -> None:
        self.released.append(host.id)

    async def label(self, host: Host, owner: str) -> None:
        host.meta["owner"] = owner


async def settle(pool: SparePool) -> None:
    while pool._tasks:
        await asyncio.gather(*list(pool._tasks))


async def test_take_hands_over_the_spare_and_refills():
    provider = Provider({"small": 1})
    pool = SparePool(provider)
    pool.start()
    await settle(pool)
    (spare,) = pool.hosts()
    assert is_spare(spare) and spare.meta["owner"] == spare_owner("small")
    host = await pool.take("small", "spot", "alice/")
    assert host is spare and host.meta["owner"] == "alice/"
    await settle(pool)
    assert [h.id for h in pool.hosts()] == ["h1"]  # replaced
    assert await pool.take("medium", "spot", "bob/") is None  # none kept of that type
    assert await pool.take("small", "on-demand", "bob/") is None  # nor in that market


async def test_a_spare_that_died_or_has_a_notice_is_not_taken():
    provider = Provider({"small": 2})
    pool = SparePool(provider)
    pool.start()
    await settle(pool)
    first, second = pool.hosts()
    provider.dead.add(first.id)
    provider.notices[second.id] = {"deadline": 1}
    assert await pool.take("small", "spot", "alice/") is None
    await settle(pool)
    assert sorted(provider.released) == sorted([first.id, second.id])
    assert len(pool.hosts()) == 2  # two new ones


async def test_failed_acquisition_is_tried_again():
    provider = Provider({"small": 1})
    provider.fail = 1
    pool = SparePool(provider, retry_after=0)
    pool.start()
    await settle(pool)
    assert len(pool.hosts()) == 1


async def test_adopt_keeps_what_is_wanted_and_releases_the_rest():
    provider = Provider({"small": 1})
    old = [await provider.acquire("small", "spot", spare_owner("small")) for _ in range(2)]
    old.append(await provider.acquire("medium", "spot", spare_owner("medium")))
    pool = SparePool(provider)
    await pool.adopt(old)
    await settle(pool)
    assert [h.id for h in pool.hosts()] == [old[0].id]
    assert sorted(provider.released) == sorted([old[1].id, old[2].id])
    assert len(provider.acquired) == 3  # nothing new: the adopted one fills the pool


async def test_stop_releases_only_when_asked():
    provider = Provider({"small": 1})
    pool = SparePool(provider)
    pool.start()
    await settle(pool)
    (spare,) = pool.hosts()
    await pool.stop()
    assert provider.released == []  # kept for the next hub to adopt
    await pool.stop(release=True)
    assert provider.released == [spare.id]


async def test_each_spare_gets_a_standby_process_unless_none_is_wanted():
    provider = Provider({"small": 2})
    pool = SparePool(provider)
    pool.start()
    await settle(pool)
    assert sorted(provider.standbys) == [
        ("h0", ["jupyter_server.serverapp"]),
        ("h1", ["jupyter_server.serverapp"]),
    ]
    provider.spare_standby_modules = []
    await pool.take("small", "spot", "alice/")
    await settle(pool)
    assert len(pool.hosts()) == 2 and len(provider.standbys) == 2  # the new spare: none


async def test_a_spare_whose_standby_fails_to_start_is_still_a_spare():
    provider = Provider({"small": 1})
    provider.dead.add("h0")  # its agent refuses the standby (and would fail a take)
    pool = SparePool(provider)
    pool.start()
    await settle(pool)
    assert [h.id for h in pool.hosts()] == ["h0"] and provider.standbys == []
