"""Moves through the real hub, proxy and jupyterhub-singleuser: the URL stays, files too."""

import asyncio
import time

import aiohttp
import pytest
from gateways import until

pytestmark = pytest.mark.integration


class Poller:
    """A client that GETs the server's status every 100 ms through the proxy."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.codes: list[int] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession() as s:
            while not self._stop.is_set():
                try:
                    async with s.get(
                        self.url, headers=headers, timeout=aiohttp.ClientTimeout(70)
                    ) as resp:
                        self.codes.append(resp.status)
                        await resp.read()
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    self.errors.append(repr(e))
                await asyncio.sleep(0.1)

    def stop(self):
        self._stop.set()


async def write_file(hub, user, token, path, content):
    status, data = await hub.request(
        "PUT",
        f"/user/{user}/api/contents/{path}",
        token,
        {"type": "file", "format": "text", "content": content},
    )
    assert status in (200, 201), data


async def read_file(hub, user, token, path):
    status, data = await hub.request("GET", f"/user/{user}/api/contents/{path}", token)
    assert status == 200, data
    return data["content"]


async def wait_moved(hub, user, old_host, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await hub.server_info(user)
        if info["host_id"] != old_host and info["state"] == "Running":
            return info
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user} did not move: {info}\n{hub.tail()}")


async def wait_released(hub, host_id: str, timeout: float = 30) -> None:
    """Wait until the hub has released `host_id`. Its registry record alone does not tell:
    at a notice's deadline the local agent renames it to `<id>.gone` itself, released or
    not; only the provider's release removes that tombstone too."""
    registry = hub.workdir / "hosts" / "registry"
    await until(
        lambda: not list(registry.glob(f"{host_id}.*")),
        timeout,
        f"host {host_id} was not released: {sorted(p.name for p in registry.iterdir())}",
    )


@pytest.mark.parametrize("home_mode", ["shared", "synced"])
async def test_reclaim_moves_server_same_url_no_errors(hub_factory, home_mode):
    hub = await hub_factory(f'c.MigratingSpawner.home_mode = "{home_mode}"')
    await hub.spawn("alice")
    token = await hub.user_token("alice")
    await write_file(hub, "alice", token, "notes.txt", "written before the notice")
    before = await hub.server_info("alice")

    poller = Poller(hub.url + "/user/alice/api/status", token)
    task = asyncio.create_task(poller.run())
    await until(lambda: len(poller.codes) >= 3, 30, "the poller got no answer")
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": 5}
    )
    assert status == 202, data
    assert data["moving"] == ["alice/"]
    after = await wait_moved(hub, "alice", before["host_id"])
    # a few more requests, answered by the new server
    moved_at = len(poller.codes)
    await until(lambda: len(poller.codes) >= moved_at + 5, 30, "no answer after the move")
    poller.stop()
    await task

    assert after["address"].split(":")[0] != before["address"].split(":")[0]
    assert await read_file(hub, "alice", token, "notes.txt") == "written before the notice"
    assert poller.errors == []
    assert len(poller.codes) > 10
    assert set(poller.codes) == {200}, poller.codes
    # the move gave the old host back (not only its deadline passing)
    await wait_released(hub, before["host_id"])
    assert [h["id"] for h in hub.hosts()] == [after["host_id"]]
