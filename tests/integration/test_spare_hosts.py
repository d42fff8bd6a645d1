"""Spare hosts (`spare_hosts`) on a real hub with local hosts: a start and a move take the
spare host kept ready, the pool acquires a replacement in the background, and a hub
restart finds the spare host again instead of leaking it or acquiring another one (the
module's hub leaves its servers running across a stop, `cleanup_servers` False), and a hub
that stops cleanly with its servers (`cleanup_servers` True) gives its spare hosts back; so
does a kernel process (jupyter_server with the migrating-provisioner) with its own spares.

Local hosts boot with a delay (`boot_delay`), as cloud instances do, so a host that was
not kept ready could not be the one taken without waiting for it."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest
from gateways import JupyterServer
from realhub import RealHub, module_hub, until
from test_move import wait_moved, wait_released

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CONFIG = """
c.LocalHostProvider.spare_hosts = {"small": 1}
c.LocalHostProvider.boot_delay = 2
"""

hub = module_hub(CONFIG, "spares")


def spares(hub) -> list[str]:
    """Ids of the hosts whose record says they are spare hosts."""
    return [h["id"] for h in hub.hosts() if str(h["meta"].get("owner", "")).startswith("spare:")]


def owners(hub) -> dict[str, str]:
    return {h["id"]: h["meta"].get("owner", "") for h in hub.hosts()}


async def one_spare(hub, other_than: set[str] = frozenset()) -> str:
    """The id of the one spare host, once it is ready and not one of `other_than`."""

    async def ready():
        ids = [i for i in spares(hub) if i not in other_than]
        if len(ids) == 1 and len(spares(hub)) == 1:
            if await _log_has(hub, f"spare host {ids[0]} (small) ready"):
                return ids[0]
        return None

    return await until(ready, 60, f"one spare host besides {other_than}: {owners(hub)}")


def started_from_standby(hub, host_id: str) -> bool:
    """Whether the host's agent started the user's server as its standby process: Python
    started ahead with the server's modules imported (agent/standby.py)."""
    log = (hub.workdir / "hosts" / "logs" / f"{host_id}.log").read_text(errors="replace")
    return any(
        "started server (pid" in line and "(the standby process)" in line
        for line in log.splitlines()
    )


async def test_start_takes_the_spare_host_and_the_pool_refills(hub):
    spare = await one_spare(hub)
    await hub.spawn("alice")
    info = await hub.server_info("alice")
    assert info["host_id"] == spare, (info, owners(hub))
    assert started_from_standby(hub, spare)
    assert owners(hub)[spare] == "alice/"  # the record says whose it is now
    # a replacement, acquired in the background
    replacement = await one_spare(hub, {spare})
    assert replacement != spare


async def test_move_takes_the_spare_host_and_the_pool_refills(hub):
    before = await hub.server_info("alice")
    spare = await one_spare(hub, {before["host_id"]})
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": 20}
    )
    assert status == 202, data
    after = await wait_moved(hub, "alice", before["host_id"])
    assert after["host_id"] == spare, (after, owners(hub))
    assert started_from_standby(hub, spare)
    await wait_released(hub, before["host_id"])
    replacement = await one_spare(hub, {spare, before["host_id"]})
    assert replacement not in (spare, before["host_id"])


async def test_hub_restart_keeps_the_spare_host(hub):
    alice = (await hub.server_info("alice"))["host_id"]
    spare = await one_spare(hub, {alice})
    await hub.restart()
    await until(
        lambda: _log_has(hub, f"adopted spare host {spare}"), 60, f"{spare} adopted:\n{hub.tail()}"
    )
    # (the pool fills from the adopted host on: nothing more to acquire)
    # the same two hosts: alice's and the spare one; none released, none acquired
    assert sorted(owners(hub)) == sorted([alice, spare]), owners(hub)
    assert (await hub.server_info("alice"))["host_id"] == alice
    # the restarted hub takes the spare host the stopped one kept
    await hub.spawn("bob")
    assert (await hub.server_info("bob"))["host_id"] == spare, owners(hub)
    assert started_from_standby(hub, spare)  # the adopted spare kept its standby process


async def test_clean_hub_stop_that_stops_its_servers_releases_the_spare_hosts(tmp_path):
    real = RealHub(tmp_path, CONFIG + "c.JupyterHub.cleanup_servers = True\n")
    real.start()
    try:
        await real.wait_up()
        spare = await one_spare(real)
        agents = [h["meta"]["agent_pid"] for h in real.hosts()]
        assert agents, real.hosts()
        await asyncio.to_thread(real.stop)  # SIGTERM, as an operator stops it
        assert f"releasing spare host {spare}: clean stop" in real.log_path.read_text(), real.tail()
        assert real.hosts() == []  # the provider's registry: nothing left
        assert not [pid for pid in agents if _running(pid)], agents
    finally:
        real.stop()
        real.kill_proxy()
        real.release_all_hosts()


async def test_a_kernel_process_that_stops_cleanly_releases_its_spare_hosts(tmp_path):
    server = JupyterServer(tmp_path)
    spec_file = server.jupyter_path / "kernels" / server.kernel / "kernel.json"
    config = server.kernelspec["metadata"]["kernel_provisioner"]["config"]
    config["host_provider_config"] = {"spare_hosts": {"small": 1}}
    spec_file.write_text(json.dumps(server.kernelspec, indent=1))
    server.start()
    try:
        await server.wait_up()
        status, kernel = await server.request("POST", "/api/kernels", {"name": server.kernel})
        assert status == 201, (kernel, server.tail())

        async def spare_ready():
            ids = [h.id for h in server.hosts() if h.meta.get("owner") == "spare:small"]
            if len(ids) == 1 and f"spare host {ids[0]} (small) ready" in server.kernel_log():
                return ids[0]
            return None

        spare = await until(spare_ready, 60, "the kernel process kept no spare host")
        agents = [h.meta["agent_pid"] for h in server.hosts()]
        assert len(agents) == 2, server.hosts()  # the kernel's host and the spare
        # SIGTERM, as an operator stops it: it shuts its kernel down, then exits
        left = await server.stop(release_hosts=False)
        assert left == [], server.report()  # the provider's registry: nothing left
        assert f"releasing spare host {spare}: clean stop" in server.kernel_log(), server.tail()
        assert not [pid for pid in agents if _running(pid)], agents
    finally:
        await server.stop()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _log_has(hub, text: str) -> bool:
    return text in hub.log_path.read_text(errors="replace")
