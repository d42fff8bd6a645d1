"""The hold server on its own: a real aiohttp upstream on another loopback address."""

from __future__ import annotations

import asyncio
import gzip
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy_plugin.hold import HoldServer

SPEC = "/user/alice/"


async def _upstream_handler(request: web.Request) -> web.StreamResponse:
    if request.path.endswith("/echo"):
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "body": body.decode(),
                "host": request.headers.get("Host"),
                "encoding": request.headers.get("Content-Encoding"),
            },
            status=201,
            headers={"X-Upstream": "yes"},
        )
    if request.path.endswith("/gzip"):
        return web.Response(body=gzip.compress(b"compressed"), headers={"Content-Encoding": "gzip"})
    if request.path.endswith("/cookie"):
        response = web.Response(text="cookies")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response
    if request.path.endswith("/ws"):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws
    return web.Response(text=f"upstream {request.path}", status=200)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _upstream_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    yield f"http://127.0.0.2:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _hold_server(**kwargs) -> HoldServer:
    server = HoldServer(ip="127.0.0.1", port=0, **kwargs)
    await server.start()
    return server


@pytest.fixture
async def hold() -> AsyncIterator[HoldServer]:
    server = await _hold_server(timeout=10)
    yield server
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def _get(session: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, str, dict]:
    async with session.get(url, allow_redirects=False, **kwargs) as r:
        return r.status, await r.text(), dict(r.headers)


async def test_held_get_waits_until_release(hold, upstream, client):
    hold.hold(SPEC)
    assert hold.held == {SPEC}
    task = asyncio.create_task(_get(client, f"{hold.url}/user/alice/api/status"))
    await asyncio.sleep(0.5)
    assert not task.done(), "a held request must wait for the release"
    released = time.monotonic()
    hold.release(SPEC, upstream)
    status, body, headers = await asyncio.wait_for(task, 5)
    assert time.monotonic() - released < 1
    assert (status, body) == (200, "upstream /user/alice/api/status")
    assert hold.held == set()


async def test_post_body_query_and_headers_pass_through(hold, upstream, client):
    hold.hold(SPEC)
    url = URL(f"{hold.url}/user/alice/echo?x=1&y=%2F", encoded=True)  # sent as written
    task = asyncio.create_task(client.post(url, data=b"payload", headers={"Host": "hub.test"}))
    await asyncio.sleep(0.2)
    hold.release(SPEC, upstream)
    async with await asyncio.wait_for(task, 5) as r:
        assert r.status == 201
        assert r.headers["X-Upstream"] == "yes"
        got = await r.json()
    assert got["method"] == "POST"
    assert got["path_qs"] == "/user/alice/echo?x=1&y=%2F"
    assert got["body"] == "payload"
    # Like CHP, the hold server keeps the client's Host (jupyter-server checks Origin by it).
    assert got["host"] == "hub.test"


async def test_content_encoding_and_cookies_untouched(hold, upstream, client):
    hold.release(SPEC, upstream)  # a known target: stray requests go straight on
    async with client.get(f"{hold.url}/user/alice/gzip") as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await r.read()) == b"compressed"
    async with client.get(f"{hold.url}/user/alice/cookie") as r:
        assert sorted(r.headers.getall("Set-Cookie")) == ["a=1; Path=/", "b=2; Path=/"]
    posted = gzip.compress(b"zipped upload")
    async with client.post(
        f"{hold.url}/user/alice/echo", data=posted, headers={"Content-Encoding": "gzip"}
    ) as r:
        assert (await r.json())["encoding"] == "gzip"


async def test_timeout_gives_503_json_with_retry_after(upstream, client):
    server = await _hold_server(timeout=0.3)
    try:
        server.hold(SPEC)
        start = time.monotonic()
        async with client.get(f"{server.url}/user/alice/api/status") as r:
            elapsed = time.monotonic() - start
            assert r.status == 503
            assert int(r.headers["Retry-After"]) > 0
            body = await r.json()
        assert elapsed >= 0.3
        assert body["status"] == 503
        assert "still moving" in body["message"]
    finally:
        await server.stop()


async def test_redirect_mode_answers_307_to_same_url(upstream, client):
    server = await _hold_server(timeout=10, release_mode="redirect")
    try:
        server.hold(SPEC)
        task = asyncio.create_task(_get(client, f"{server.url}/user/alice/tree?path=a%20b"))
        await asyncio.sleep(0.2)
        assert not task.done()
        server.release(SPEC, upstream)
        status, _, headers = await asyncio.wait_for(task, 5)
        assert status == 307
        assert headers["Location"] == "/user/alice/tree?path=a%20b"
    finally:
        await server.stop()


PROTOCOL = "v1.kernel.websocket.jupyter.org"


class WsTarget:
    """A websocket server standing in for the new host: says what it got, echoes frames,
    and on command closes with a code ("close <code> <reason>"), sends its close and
    listens on until the client's ("listen <code> <reason>"), or drops ("drop"). When the
    client closes first, it says "bye" before its own close ("deaf": it never answers)."""

    def __init__(self) -> None:
        self.ends: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()  # how each client left
        self.heard: asyncio.Queue[str] = asyncio.Queue()  # text after its "listen" close
        self.wake = asyncio.Event()  # ends a "deaf" handler

    async def handler(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/refused"):
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse(protocols=(PROTOCOL,), autoclose=False, max_msg_size=0)
        await ws.prepare(request)
        await ws.send_json(
            {
                "protocol": ws.ws_protocol,
                "path_qs": request.raw_path,
                "host": request.host,
                "cookie": request.headers.get("Cookie"),
            }
        )
        deaf = False
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith("close "):
                _, code, reason = msg.data.split(" ", 2)
                await ws.close(code=int(code), message=reason.encode())
                return ws
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith("listen "):
                _, code, reason = msg.data.split(" ", 2)
                # A bare close frame: ws.close() would discard what the client still sends.
                await ws.send_frame(_close_frame(int(code), reason), aiohttp.WSMsgType.CLOSE)
                while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    await self.heard.put(msg.data)
                await self.ends.put(msg)
                request.transport.close()  # both closes have passed
                return ws
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data == "drop":
                request.transport.abort()
                return ws
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data == "deaf":
                deaf = True
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo " + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(b"echo " + msg.data)
            else:
                await self.ends.put(msg)
                if msg.type is aiohttp.WSMsgType.CLOSE and deaf:
                    await self.wake.wait()  # until the test has seen the drop
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    # Written after the client's close, before its own: it must arrive.
                    await ws.send_str("bye")
                    await ws.close(code=msg.data)
                return ws


def _close_frame(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@pytest.fixture
async def ws_target() -> AsyncIterator[tuple[str, WsTarget]]:
    target = WsTarget()
    app = web.Application()
    app.router.add_get("/{tail:.*}", target.handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.2", 0).start()
    yield f"http://127.0.0.2:{runner.addresses[0][1]}", target
    await runner.cleanup()


KERNEL_WS = "/user/alice/api/kernels/k1/channels?session_id=s1"


async def _held_handshake(hold, client, path=KERNEL_WS, **kwargs) -> asyncio.Task:
    """A websocket handshake sent while SPEC is held; checks that it waits."""
    hold.hold(SPEC)
    task = asyncio.create_task(client.ws_connect(f"{hold.url}{path}", **kwargs))
    await asyncio.sleep(0.3)
    assert not task.done(), "the handshake must wait for the release"
    return task


async def test_websocket_during_hold_is_bridged_to_the_new_target(hold, ws_target, client):
    url, _ = ws_target
    task = await _held_handshake(
        hold,
        client,
        protocols=(PROTOCOL,),
        headers={"Host": "hub.test", "Cookie": "c=1"},
        max_msg_size=0,
    )
    hold.release(SPEC, url)
    ws = await asyncio.wait_for(task, 5)  # a 101, not a refused handshake
    assert ws.protocol == PROTOCOL  # the target's choice, given to the client
    hello = await ws.receive_json(timeout=5)
    assert hello == {
        "protocol": PROTOCOL,
        "path_qs": KERNEL_WS,
        "host": "hub.test",
        "cookie": "c=1",
    }
    await ws.send_str("text frame")
    assert await ws.receive_str(timeout=5) == "echo text frame"
    await ws.send_bytes(b"\x00\xffbinary")
    assert await ws.receive_bytes(timeout=5) == b"echo \x00\xffbinary"
    big = bytes(range(256)) * 40_000  # 10 MB: above aiohttp's default message limit
    await ws.send_bytes(big)
    assert await ws.receive_bytes(timeout=10) == b"echo " + big
    await ws.close()


async def test_a_stray_websocket_after_release_is_bridged_too(hold, ws_target, client):
    url, _ = ws_target
    hold.release(SPEC, url)  # CHP sent it here just before the release took effect
    async with client.ws_connect(f"{hold.url}{KERNEL_WS}") as ws:
        assert (await ws.receive_json(timeout=5))["path_qs"] == KERNEL_WS
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "echo x"


async def test_websocket_bridged_in_redirect_mode(ws_target, client):
    url, _ = ws_target
    server = await _hold_server(timeout=10, release_mode="redirect")
    try:
        task = await _held_handshake(server, client)
        server.release(SPEC, url)
        ws = await asyncio.wait_for(task, 5)  # a browser cannot follow a 307 here
        assert (await ws.receive_json(timeout=5))["path_qs"] == KERNEL_WS
        await ws.close()
    finally:
        await server.stop()


async def test_close_codes_pass_through_both_ways(hold, ws_target, client):
    url, target = ws_target
    hold.release(SPEC, url)
    # the client closes: the target sees the same code and reason
    ws = await client.ws_connect(f"{hold.url}{KERNEL_WS}")
    await ws.receive_json(timeout=5)
    await ws.close(code=4001, message=b"client leaves")
    end = await asyncio.wait_for(target.ends.get(), 5)
    assert (end.type, end.data, end.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "client leaves")
    # the target closes: the client sees the same code and reason
    ws = await client.ws_connect(f"{hold.url}{KERNEL_WS}")
    await ws.receive_json(timeout=5)
    await ws.send_str("close 4002 server leaves")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4002, "server leaves")
    assert ws.close_code == 4002
    await ws.close()


async def test_frames_sent_before_the_target_saw_the_client_close_arrive(hold, ws_target, client):
    """The client closes after its requests and reads on until the target's close (RFC
    6455 lets it): every reply arrives, as it would without the bridge, including what the
    target wrote after the close reached it and before its own close."""
    url, target = ws_target
    hold.release(SPEC, url)
    ws = await client.ws_connect(f"{hold.url}{KERNEL_WS}", autoclose=False)
    await ws.receive_json(timeout=5)
    for i in range(50):
        await ws.send_str(str(i))
    await ws.send_frame(_close_frame(4001, "client leaves"), aiohttp.WSMsgType.CLOSE)
    replies = []
    while (msg := await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
        replies.append(msg.data)
    assert replies == [f"echo {i}" for i in range(50)] + ["bye"]
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)  # the target's answer
    end = await asyncio.wait_for(target.ends.get(), 5)
    assert (end.type, end.data, end.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "client leaves")
    # the bridge ends the client's connection after the close handshake
    assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSED


async def test_frames_sent_before_the_client_saw_the_target_close_arrive(hold, ws_target, client):
    """The target closes first and reads on until the client's close: what the client sent
    before it saw the target's close reaches the target, and the client's close code too."""
    url, target = ws_target
    hold.release(SPEC, url)
    ws = await client.ws_connect(f"{hold.url}{KERNEL_WS}", autoclose=False)
    await ws.receive_json(timeout=5)
    await ws.send_str("listen 4002 server leaves")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4002, "server leaves")
    for i in range(50):
        await ws.send_str(f"late {i}")
    await ws.send_frame(_close_frame(4003, "client agrees"), aiohttp.WSMsgType.CLOSE)
    end = await asyncio.wait_for(target.ends.get(), 5)
    assert (end.type, end.data, end.extra) == (aiohttp.WSMsgType.CLOSE, 4003, "client agrees")
    heard = [target.heard.get_nowait() for _ in range(target.heard.qsize())]
    assert heard == [f"late {i}" for i in range(50)]
    assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSED


async def test_an_end_that_never_answers_a_close_is_dropped(ws_target, client):
    url, target = ws_target
    server = await _hold_server(timeout=10, close_timeout=0.5)
    try:
        server.release(SPEC, url)
        ws = await client.ws_connect(f"{server.url}{KERNEL_WS}", autoclose=False)
        await ws.receive_json(timeout=5)
        await ws.send_str("deaf")
        await ws.send_frame(_close_frame(1000), aiohttp.WSMsgType.CLOSE)
        end = await asyncio.wait_for(target.ends.get(), 5)
        assert end.type is aiohttp.WSMsgType.CLOSE
        # no answer from the target: both dropped, no close frame made up for it
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
        assert not server._bridges
    finally:
        target.wake.set()
        await server.stop()


async def test_a_dropped_end_drops_the_other(hold, ws_target, client):
    """No close frame in, none out: JupyterLab reconnects after a drop (1006), not after a
    close 1000/1001."""
    url, target = ws_target
    hold.release(SPEC, url)
    # the target's connection drops (its server was killed)
    ws = await client.ws_connect(f"{hold.url}{KERNEL_WS}")
    await ws.receive_json(timeout=5)
    await ws.send_str("drop")
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
    await ws.close()
    # the client's connection drops (the tab went away)
    async with aiohttp.ClientSession() as other:
        ws = await other.ws_connect(f"{hold.url}{KERNEL_WS}")
        await ws.receive_json(timeout=5)
        ws._response.connection.transport.abort()
        end = await asyncio.wait_for(target.ends.get(), 5)
    assert end.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), end


async def test_websocket_refused_by_the_target_is_refused_alike(hold, ws_target, client):
    url, _ = ws_target
    task = await _held_handshake(hold, client, path="/user/alice/refused")
    hold.release(SPEC, url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.status == 403


async def test_websocket_held_past_the_timeout_gets_a_clean_503(ws_target, client):
    url, _ = ws_target
    server = await _hold_server(timeout=0.5)
    try:
        server.hold(SPEC)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(f"{server.url}{KERNEL_WS}")
        assert info.value.status == 503
        assert int(info.value.headers["Retry-After"]) > 0
        # the route is released later: the next handshake is bridged
        server.release(SPEC, url)
        async with client.ws_connect(f"{server.url}{KERNEL_WS}") as ws:
            assert (await ws.receive_json(timeout=5))["path_qs"] == KERNEL_WS
    finally:
        await server.stop()


async def test_stop_drops_bridged_websockets(ws_target, client):
    url, target = ws_target
    server = await _hold_server(timeout=10)
    server.release(SPEC, url)
    ws = await client.ws_connect(f"{server.url}{KERNEL_WS}")
    await ws.receive_json(timeout=5)
    await asyncio.wait_for(server.stop(), 5)
    # dropped, not closed with 1001 (after which JupyterLab stops reconnecting)
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
    end = await asyncio.wait_for(target.ends.get(), 5)
    assert end.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), end
    await ws.close()


async def test_longest_prefix_match(hold, upstream, client):
    hold.hold("/user/al/")
    hold.hold("/user/alice/")
    assert hold.match("/user/alice/api") == "/user/alice/"
    assert hold.match("/user/alice") == "/user/alice/"
    assert hold.match("/user/al/x") == "/user/al/"
    assert hold.match("/user/alicex/") is None
    assert hold.match("/@/space%20word/user/alice/") is None
    hold.hold("/@/space%20word/user/alice/")
    assert hold.match("/@/space%20word/user/alice/lab") == "/@/space%20word/user/alice/"

    # Releasing /user/alice/ answers only alice's request; al's still waits.
    al = asyncio.create_task(_get(client, f"{hold.url}/user/al/x"))
    alice = asyncio.create_task(_get(client, f"{hold.url}/user/alice/x"))
    await asyncio.sleep(0.2)
    hold.release("/user/alice/", upstream)
    assert (await asyncio.wait_for(alice, 5))[1] == "upstream /user/alice/x"
    await asyncio.sleep(0.2)
    assert not al.done()
    hold.release("/user/al/", upstream)
    assert (await asyncio.wait_for(al, 5))[1] == "upstream /user/al/x"


async def test_unknown_and_dropped_routes_get_503(hold, client):
    status, body, _ = await _get(client, f"{hold.url}/user/nobody/")
    assert status == 503
    hold.hold(SPEC)
    task = asyncio.create_task(_get(client, f"{hold.url}/user/alice/"))
    await asyncio.sleep(0.2)
    hold.release(SPEC, None)  # the server went away during the hold
    status, body, _ = await asyncio.wait_for(task, 5)
    assert status == 503
    assert "not available" in body


async def test_stop_answers_waiting_requests(upstream, client):
    server = await _hold_server(timeout=10)
    server.hold(SPEC)
    task = asyncio.create_task(_get(client, f"{server.url}/user/alice/"))
    await asyncio.sleep(0.2)
    await server.stop()
    status, _, _ = await asyncio.wait_for(task, 5)
    assert status == 503
