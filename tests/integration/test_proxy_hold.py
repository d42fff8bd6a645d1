"""MigratingProxy against the real configurable-http-proxy: a move without a failed request.

CHP runs on random loopback ports; two aiohttp upstreams (hosts A and B) on 127.0.0.2 and
127.0.0.3 say who they are. No hub: a SimpleNamespace stands in for the spawner.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from gateways import until
from jupyterhub.httpclient import JupyterHubHTTPClient
from realhub import free_port

from proxy_plugin.proxy import MigratingProxy

pytestmark = pytest.mark.integration

CHP = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "configurable-http-proxy"
SPEC = "/user/alice/"
SPAWNER = SimpleNamespace(proxy_spec=SPEC)
DATA = {"user": "alice", "server_name": ""}


SLOW_ARRIVED: list[str] = []  # names of the upstreams a slow request reached


async def _upstream(ip: str, name: str) -> web.AppRunner:
    async def status(request: web.Request) -> web.Response:
        return web.json_response({"host": name})

    async def delayed(request: web.Request) -> web.Response:
        SLOW_ARRIVED.append(name)
        await asyncio.sleep(float(request.query.get("s", "0.5")))
        return web.json_response({"host": name})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(name)
        await sock.close()
        return sock

    app = web.Application()
    app.router.add_get("/user/alice/api/status", status)
    app.router.add_get("/user/alice/api/slow", delayed)
    app.router.add_get("/user/alice/api/kernels/k1/channels", ws)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, ip, 0).start()
    return runner


@pytest.fixture
async def chp_upstreams() -> AsyncIterator[dict[str, str]]:
    runners = {"A": await _upstream("127.0.0.2", "A"), "B": await _upstream("127.0.0.3", "B")}
    yield {
        name: f"http://{ip}:{r.addresses[0][1]}"
        for (name, r), ip in zip(runners.items(), ("127.0.0.2", "127.0.0.3"), strict=True)
    }
    for runner in runners.values():
        await runner.cleanup()


async def _wait_for_api(api_url: str, token: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(
                    f"{api_url}/api/routes", headers={"Authorization": f"token {token}"}
                ) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"CHP API at {api_url} did not come up")
            await asyncio.sleep(0.1)


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def chp_external() -> AsyncIterator[SimpleNamespace]:
    """A configurable-http-proxy the test starts itself (an 'external' proxy to the hub)."""
    if not CHP.exists():
        pytest.skip(f"{CHP} is not installed (npm ci)")
    token = secrets.token_hex(16)
    port, api_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        str(CHP),
        *("--ip", "127.0.0.1", "--port", str(port)),
        *("--api-ip", "127.0.0.1", "--api-port", str(api_port)),
        *("--log-level", "warn"),
        env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
    )
    try:
        api_url = f"http://127.0.0.1:{api_port}"
        await _wait_for_api(api_url, token)
        yield SimpleNamespace(
            public_url=f"http://127.0.0.1:{port}", api_url=api_url, token=token, proc=proc
        )
    finally:
        await _stop_process(proc)


@pytest.fixture
async def chp_proxy(chp_external) -> AsyncIterator[MigratingProxy]:
    proxy = MigratingProxy(
        should_start=False,
        api_url=chp_external.api_url,
        auth_token=chp_external.token,
        hold_timeout=10,
    )
    yield proxy
    await proxy.stop()
    await JupyterHubHTTPClient.loop_instance().close()


async def _until_waiting(proxy: MigratingProxy, count: int = 1) -> None:
    """Wait until `count` requests for SPEC wait in the hold server."""
    await until(
        lambda: proxy.hold_server.waiting(SPEC) >= count, 10, "no request waits in the hold"
    )


async def _chp_target(chp_external: SimpleNamespace, spec: str = SPEC) -> str | None:
    """The target CHP itself has for spec, read from its REST API."""
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{chp_external.api_url}/api/routes",
            headers={"Authorization": f"token {chp_external.token}"},
        ) as r:
            routes = await r.json()
    route = routes.get(spec.rstrip("/"))
    return None if route is None else route["target"]


async def _whoami(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body.get("host", "")


async def test_move_through_chp_without_errors(chp_external, chp_proxy, chp_upstreams):
    proxy = chp_proxy
    await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
    url = f"{chp_external.public_url}/user/alice/api/status"
    results: list[tuple[int, str]] = []  # (status, host)

    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                results.append(await _whoami(session, url))
                await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    try:
        await until(lambda: len(results) >= 3, 10, "no answer through CHP")
        assert results[-1] == (200, "A")

        await proxy.hold(SPAWNER)
        assert proxy.is_held(SPAWNER) and proxy.is_held(SPEC)
        hold_url = proxy.hold_server.url
        assert await _chp_target(chp_external) == hold_url

        # JupyterHub re-points the server (add_user): recorded, not applied.
        await proxy.add_route(SPEC, chp_upstreams["B"], dict(DATA))
        assert await _chp_target(chp_external) == hold_url
        # check_routes sees the release target, so it has nothing to repair.
        route = (await proxy.get_all_routes())[SPEC]
        assert route["target"] == chp_upstreams["B"]
        assert route["data"].items() >= DATA.items()
        assert "last_activity" in route["data"]  # CHP's, read by the hub's activity tracking

        # the poller's next request waits in the hold instead of failing
        await _until_waiting(proxy)
        answered_before_release = len(results)
        await proxy.release(SPAWNER)
        assert not proxy.is_held(SPAWNER)
        assert await _chp_target(chp_external) == chp_upstreams["B"]
        await until(lambda: len(results) > answered_before_release + 2, 10, "no answer after")
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)

    assert [status for status, _ in results] == [200] * len(results), results
    hosts = [host for _, host in results]
    # The request held through the release was answered by B, and nothing went back to A.
    assert hosts[answered_before_release] == "B", results
    assert hosts == sorted(hosts) and set(hosts) == {"A", "B"}, hosts


async def test_request_in_flight_during_hold_completes_from_new_target(
    chp_external, chp_proxy, chp_upstreams
):
    proxy = chp_proxy
    await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
    await proxy.hold(SPAWNER)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            _whoami(session, f"{chp_external.public_url}/user/alice/api/status")
        )
        await _until_waiting(proxy)
        assert not request.done(), "the request must wait in the hold server"
        await proxy.add_route(SPEC, chp_upstreams["B"], dict(DATA))
        await proxy.release(SPAWNER)
        assert await asyncio.wait_for(request, 5) == (200, "B")


async def test_release_without_new_target_goes_back(chp_external, chp_proxy, chp_upstreams):
    proxy = chp_proxy
    await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
    await proxy.release(SPAWNER)  # not held: no-op
    assert await _chp_target(chp_external) == chp_upstreams["A"]

    await proxy.hold(SPAWNER)
    await proxy.hold(SPAWNER)  # already held: no-op
    assert proxy.hold_server.held == {SPEC}
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            _whoami(session, f"{chp_external.public_url}/user/alice/api/status")
        )
        await _until_waiting(proxy)
        await proxy.release(SPAWNER)
        assert await asyncio.wait_for(request, 5) == (200, "A")
    assert await _chp_target(chp_external) == chp_upstreams["A"]
    routes = await proxy.get_all_routes()
    assert routes[SPEC]["data"].items() >= DATA.items()


async def test_slow_request_started_before_hold_finishes(chp_external, chp_proxy, chp_upstreams):
    proxy = chp_proxy
    await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(
            _whoami(session, f"{chp_external.public_url}/user/alice/api/slow?s=3")
        )
        SLOW_ARRIVED.clear()
        await until(lambda: SLOW_ARRIVED == ["A"], 10, "the slow request did not reach A")
        await proxy.hold(SPAWNER)
        await proxy.add_route(SPEC, chp_upstreams["B"], dict(DATA))
        # CHP already sent it to A: it finishes there.
        assert await asyncio.wait_for(slow, 15) == (200, "A")
        await proxy.release(SPAWNER)


async def test_delete_route_during_hold_fails_waiters(chp_external, chp_proxy, chp_upstreams):
    proxy = chp_proxy
    await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
    await proxy.hold(SPAWNER)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            _whoami(session, f"{chp_external.public_url}/user/alice/api/status")
        )
        await _until_waiting(proxy)
        await proxy.delete_route(SPEC)  # the server stopped during its move
        status, _ = await asyncio.wait_for(request, 5)
    assert status == 503
    assert not proxy.is_held(SPAWNER)
    assert await _chp_target(chp_external) is None


async def test_websocket_during_hold_is_answered_by_new_target(
    chp_external, chp_proxy, chp_upstreams
):
    proxy = chp_proxy
    await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
    ws_url = f"{chp_external.public_url}/user/alice/api/kernels/k1/channels"
    await proxy.hold(SPAWNER)
    async with aiohttp.ClientSession() as session:
        handshake = asyncio.create_task(session.ws_connect(ws_url))
        await _until_waiting(proxy)
        assert not handshake.done(), "the handshake must wait in the hold server"
        await proxy.add_route(SPEC, chp_upstreams["B"], dict(DATA))
        await proxy.release(SPAWNER)
        # Through CHP the held handshake itself is answered (101) by B, and B's close
        # comes through with its code.
        async with await asyncio.wait_for(handshake, 5) as ws:
            assert (await ws.receive_str(timeout=5)) == "B"
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1000)


async def test_hub_started_proxy(tmp_path, chp_upstreams):
    """should_start=True: start() launches CHP and the hold server, stop() ends both."""
    if not CHP.exists():
        pytest.skip(f"{CHP} is not installed (npm ci)")
    public_url = f"http://127.0.0.1:{free_port()}"
    proxy = MigratingProxy(
        should_start=True,
        command=[str(CHP)],
        public_url=public_url,
        api_url=f"http://127.0.0.1:{free_port()}",
        auth_token=secrets.token_hex(16),
        pid_file=str(tmp_path / "chp.pid"),
        log_level="warn",
        # start() reads these from the hub; nothing else of the hub is needed.
        app=SimpleNamespace(subdomain_host="", internal_ssl=False),
        hub=SimpleNamespace(url="http://127.0.0.1:1/hub/"),
    )
    try:
        await proxy.start()
        assert proxy.hold_server is not None
        await proxy.add_route(SPEC, chp_upstreams["A"], dict(DATA))
        await proxy.hold(SPAWNER)
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(_whoami(session, f"{public_url}/user/alice/api/status"))
            await _until_waiting(proxy)
            assert not request.done()
            await proxy.add_route(SPEC, chp_upstreams["B"], dict(DATA))
            await proxy.release(SPAWNER)
            assert await asyncio.wait_for(request, 5) == (200, "B")
    finally:
        await proxy.stop()
        if proxy.proxy_process is not None:
            proxy.proxy_process.wait(timeout=5)
        await JupyterHubHTTPClient.loop_instance().close()
    assert proxy.proxy_process.poll() is not None
    assert proxy.hold_server is None
