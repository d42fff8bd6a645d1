"""The simulator's metadata service and the agent's IMDSv2 client, in this process: every
read needs a token, the client caches one and gets a new one on a 401, and the spot and
rebalance paths answer 404 until armed."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from migrating_spawner.agent.imds import IMDSClient, deadline_of, watch_notices
from migrating_spawner.agent.server import Agent
from migrating_spawner.ec2sim.metadata import MetadataService

INSTANCE = {"InstanceId": "i-0123", "InstanceType": "m5.large", "InstanceLifecycle": "spot"}


async def serve(service):
    runner = web.AppRunner(service.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/"


async def test_imdsv2_tokens_and_notices():
    service = MetadataService(INSTANCE, "127.0.0.7")
    runner, url = await serve(service)
    imds = IMDSClient(url)
    try:
        async with aiohttp.ClientSession() as http:  # IMDSv1 (no token): refused
            async with http.get(url + "latest/meta-data/instance-id") as resp:
                assert resp.status == 401
        assert await imds.get("instance-id") == "i-0123"
        assert await imds.get("local-ipv4") == "127.0.0.7"
        assert await imds.get("instance-life-cycle") == "spot"
        assert imds.tokens_fetched == 1  # cached
        service.tokens.clear()  # the token expired (or the service restarted)
        assert await imds.get("instance-id") == "i-0123"
        assert imds.tokens_fetched == 2
        assert await imds.get("spot/instance-action") is None
        assert await imds.get("events/recommendations/rebalance") is None

        notices, rebalances = [], []

        async def on_notice(deadline, action):
            notices.append((deadline, action))

        async def on_rebalance(data):
            rebalances.append(data)

        watch = asyncio.create_task(watch_notices(imds, on_notice, on_rebalance, 0.05))
        deadline = time.time() + 120
        service.arm_interruption(deadline)
        service.arm_rebalance()
        while not (notices and rebalances):
            await asyncio.sleep(0.02)
        watch.cancel()
        assert notices[0][1]["action"] == "terminate"
        assert abs(notices[0][0] - deadline) < 1  # the time is in whole seconds
        assert (
            abs(deadline_of('{"action": "stop", "time": "2026-12-01T17:00:00Z"}') - 1796144400) < 1
        )
    finally:
        await imds.close()
        await runner.cleanup()


async def test_the_agent_pushes_a_rebalance_and_a_notice_to_the_hub(tmp_path):
    """Agent.push: what the metadata poll learns goes to the hub's notices URL with the
    host's secret (the rebalance without a deadline, the notice with one)."""
    got: list[tuple[str, dict]] = []

    async def notices(request: web.Request) -> web.Response:
        got.append((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_post("/api/notices", notices)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/notices"
    agent = Agent(
        host_id="ec2-1", address="127.0.0.1", token="s3cret", disk=tmp_path, notify_url=url
    )
    try:
        await agent.push({"host_id": "ec2-1", "rebalance": {"noticeTime": "now"}})
        deadline = time.time() + 60
        agent.take_notice(deadline, terminate=False)
        while len(got) < 2:
            await asyncio.sleep(0.05)
        assert got == [
            ("token s3cret", {"host_id": "ec2-1", "rebalance": {"noticeTime": "now"}}),
            ("token s3cret", {"host_id": "ec2-1", "deadline": deadline}),
        ]
    finally:
        await runner.cleanup()
