"""LocalHostProvider with real agents on loopback addresses 127.0.0.245 and up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from agent_util import pid_gone, release_all, two_host_provider, wait_for
from realhub import free_port

from migrating_spawner.agent.client import AgentClient
from migrating_spawner.hosts.base import HostError
from migrating_spawner.hosts.local import LocalHostProvider

FIRST = "127.0.0.245"


@pytest.fixture
async def provider(tmp_path: Path):
    p = two_host_provider(tmp_path, FIRST)
    yield p
    await release_all(p)


def test_first_address_must_be_loopback():
    with pytest.raises(Exception, match="need a loopback address"):
        LocalHostProvider(first_address="10.0.0.1")


async def test_acquire_get_list_release(provider: LocalHostProvider):
    host = await provider.acquire("medium", market="on-demand")
    assert host.address == FIRST
    assert host.agent_url == f"http://{FIRST}:{provider.agent_port}"
    assert host.instance_type == "medium" and host.market == "on-demand"
    assert host.id.startswith("local-245-")
    assert len(host.agent_token) == 64
    assert Path(host.disk).is_dir()

    # the agent answers, with this host's secret only
    status = await AgentClient(host).status()
    assert status["host_id"] == host.id and status["disk"] == host.disk

    record = Path(provider.root_dir) / "registry" / f"{host.id}.json"
    assert record.stat().st_mode & 0o777 == 0o600  # it holds the host secret
    assert json.loads(record.read_text())["meta"]["agent_pid"] == host.meta["agent_pid"]

    assert await provider.get(host.id) == host
    assert await provider.get("local-99-nothere") is None

    second = await provider.acquire()
    assert second.address == "127.0.0.246"
    assert second.instance_type == "small" and second.market == "spot"  # the defaults
    assert sorted(h.id for h in await provider.list_hosts()) == sorted([host.id, second.id])

    pid = host.meta["agent_pid"]
    await provider.release(host)
    assert wait_for(lambda: pid_gone(pid))
    assert not Path(host.disk).exists()
    assert not record.exists()
    assert not (Path(provider.root_dir) / "secrets" / f"{host.id}.token").exists()
    assert await provider.get(host.id) is None
    assert [h.id for h in await provider.list_hosts()] == [second.id]

    # the freed address is handed out again
    third = await provider.acquire()
    assert third.address == FIRST and third.id != host.id


async def test_max_hosts(provider: LocalHostProvider):
    await provider.acquire()
    await provider.acquire()
    with pytest.raises(HostError) as err:
        await provider.acquire()
    assert str(err.value) == (
        "no local host free: all 2 are in use (raise LocalHostProvider.max_hosts)"
    )
    assert len(await provider.list_hosts()) == 2


async def test_hosts_acquired_at_once_each_get_an_address_of_their_own(tmp_path):
    # five servers spawned together: each acquisition reads the registry while the one
    # before starts its agent (whose /proc cmdline is empty for a moment after Popen)
    addresses = [f"127.0.0.{n}" for n in range(240, 245)]
    provider = LocalHostProvider(
        root_dir=str(tmp_path / "hosts"),
        first_address=addresses[0],
        max_hosts=5,
        agent_port=free_port(*addresses),
    )
    try:
        hosts = await asyncio.gather(*(provider.acquire() for _ in range(5)))
        assert sorted(h.address for h in hosts) == addresses
        for host in hosts:
            assert (await AgentClient(host).status())["host_id"] == host.id
    finally:
        await release_all(provider)


async def test_unknown_instance_type(provider: LocalHostProvider):
    with pytest.raises(HostError) as err:
        await provider.acquire("huge")
    assert str(err.value) == "unknown instance type 'huge' (known: medium, small)"
    assert await provider.list_hosts() == []


async def test_agent_that_cannot_start_leaves_nothing(provider: LocalHostProvider):
    # another process holds the agent port on the first address
    import socket

    with socket.socket() as sock:
        sock.bind((FIRST, provider.agent_port))
        sock.listen()
        provider.agent_start_timeout = 5
        with pytest.raises(HostError, match="agent for local-245-"):
            await provider.acquire()
    assert await provider.list_hosts() == []
    assert list((Path(provider.root_dir) / "disks").glob("*")) == []


async def test_reclaim_gives_a_notice_then_the_host_goes(provider: LocalHostProvider):
    host = await provider.acquire()
    client = AgentClient(host)
    assert await client.notice() is None
    before = time.time()
    notice = await provider.simulated_cloud.reclaim(host, 1)
    assert notice["host_id"] == host.id and notice["action"] == "terminate"
    assert before + 1 <= notice["deadline"] <= time.time() + 1
    assert await client.notice() == notice

    # at the deadline the host is gone, as a reclaimed instance is
    assert wait_for(lambda: not Path(host.disk).exists(), timeout=15)
    assert wait_for(lambda: pid_gone(host.meta["agent_pid"]), timeout=15)
    assert await provider.get(host.id) is None
    assert await provider.list_hosts() == []
    # the agent leaves the provider's registry alone: the record and the provider's copy
    # of the secret go when the holder releases the host
    record = Path(provider.root_dir) / "registry" / f"{host.id}.json"
    token = Path(provider.root_dir) / "secrets" / f"{host.id}.token"
    assert record.exists() and token.exists()
    await provider.release(host)
    assert not record.exists() and not token.exists()
    assert list(Path(provider.root_dir, "registry").iterdir()) == []


async def test_address_of_a_reclaimed_host_is_not_reused_before_its_release(
    provider: LocalHostProvider,
):
    # a 0 s notice: the host ends at once, before whoever holds it has released it
    old = await provider.acquire(owner="alice/")
    await provider.simulated_cloud.reclaim(old, 0)
    assert wait_for(lambda: pid_gone(old.meta["agent_pid"]), timeout=15)
    assert await provider.get(old.id) is None  # gone, as a reclaimed instance is

    new = await provider.acquire()
    assert new.address != old.address
    # the old host's release (a shutdown sent to its address) leaves the new host alone
    await provider.release(old)
    assert (await AgentClient(new).status())["host_id"] == new.id
    assert [h.id for h in await provider.list_hosts()] == [new.id]
    # released, its address is free again
    third = await provider.acquire()
    assert third.address == old.address


async def test_host_record_names_its_owner(provider: LocalHostProvider):
    host = await provider.acquire(owner="kernel-1")
    record = Path(provider.root_dir) / "registry" / f"{host.id}.json"
    assert json.loads(record.read_text())["meta"]["owner"] == "kernel-1"
    assert (await provider.get(host.id)).meta["owner"] == "kernel-1"


async def test_address_of_a_host_never_released_is_reused_when_no_other_is_free(
    provider: LocalHostProvider,
):
    # a tombstone nobody will release (its holder died): its agent is gone, and the
    # only other address is in use
    busy = await provider.acquire()
    assert busy.address == FIRST
    other = "127.0.0.246"
    gone = {"id": "local-246-dead00", "address": other, "agent_url": "", "agent_token": "t"}
    gone["meta"] = {"agent_pid": 2**22 + 12345, "created": 1.0}  # no such process
    (Path(provider.root_dir) / "registry" / "local-246-dead00.gone").write_text(json.dumps(gone))
    host = await provider.acquire()
    assert host.address == other
