"""The channel to a host's agent: one cached client per host, its timeouts and retries, one
shared HTTP session. Real agents of LocalHostProvider hosts on 127.0.0.233 and up."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from agent_util import release_all, two_host_provider
from jupyterhub.httpclient import JupyterHubHTTPClient

from migrating_spawner.agent import client as client_mod
from migrating_spawner.agent.client import AgentTimeouts, AgentUnreachable

FIRST = "127.0.0.233"


@pytest.fixture
async def provider(tmp_path: Path):
    p = two_host_provider(
        tmp_path,
        FIRST,
        agent_request_timeout=0.5,
        agent_retry_timeout=3,
        agent_probe_timeout=0.5,
    )
    yield p
    await release_all(p)
    await client_mod.close_shared_session()


async def test_one_cached_client_per_host_with_the_providers_timeouts(provider):
    host, other = await provider.acquire(), await provider.acquire()
    agent = provider.agent(host)
    assert provider.agent(host) is agent
    assert provider.agent(other) is not agent
    assert agent.timeouts == AgentTimeouts(request=0.5, retry=3, probe=0.5)
    assert (await agent.status())["host_id"] == host.id
    await provider.release(host)
    assert provider.agent(host) is not agent  # a released host's client is dropped


class Paused:
    """The host's agent stops answering (SIGSTOP) while inside the block."""

    def __init__(self, host):
        self.pid = host.meta["agent_pid"]

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


async def test_reads_are_retried_with_backoff_probes_and_writes_are_not(provider):
    host = await provider.acquire()
    agent = provider.agent(host)
    with Paused(host):
        with pytest.raises(AgentUnreachable) as read:
            await agent.status()
        with pytest.raises(AgentUnreachable) as probe:
            await agent.status(quick=True)
        with pytest.raises(AgentUnreachable) as write:
            await agent.reclaim(60)
    tries = int(str(read.value).split("(", 1)[1].split(" tries")[0])
    assert tries >= 2, read.value  # retried within agent_retry_timeout
    assert "(1 tries)" in str(probe.value)  # quick=True: one try
    assert "(1 tries)" in str(write.value)  # a POST that timed out may have happened
    # the agent answers again: the same client works
    assert (await agent.status(quick=True))["host_id"] == host.id


async def test_no_retry_when_the_retry_timeout_is_zero(provider):
    provider.agent_retry_timeout = 0
    host = await provider.acquire()
    with Paused(host), pytest.raises(AgentUnreachable, match=r"\(1 tries\)"):
        await provider.agent(host).status()


async def test_clients_share_one_session_and_the_hubs_inside_a_hub(provider):
    host, other = await provider.acquire(), await provider.acquire()
    await provider.agent(host).status()
    session = client_mod.shared_session()
    await provider.agent(other).status()
    assert client_mod.shared_session() is session and not session.closed
    # in a hub process (JupyterHub set up its HTTP client) agent traffic goes through it
    await client_mod.close_shared_session()
    hub_client = JupyterHubHTTPClient.instance()
    try:
        assert (await provider.agent(host).status())["host_id"] == host.id
        assert hub_client._has_session
        assert client_mod._sessions.get(asyncio.get_running_loop()) is None
    finally:
        await hub_client.close()
