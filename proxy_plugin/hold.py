"""The hold server: requests that arrive while a server moves wait here, then go on.

During a move, :class:`~proxy_plugin.proxy.MigratingProxy` points the server's CHP route
here. A request waits until the route is released (or ``timeout`` passes) and then either
goes on to the new target ('proxy' mode) or is told to ask again with a 307 ('redirect'
mode). A websocket handshake waits the same way, then is bridged to the new target in both
modes: the hold server opens the websocket there, completes the client's handshake with
what the target chose, and relays frames both ways until both ends have closed (a close
is passed on as a frame, and frames still coming the other way arrive). CHP forwards
the whole original path, so the path tells which held route a request belongs to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

# RFC 9110 7.6.1; plus Expect, which aiohttp answers itself, and Proxy-Connection.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
    )
)

# Jupyter and JupyterHub cookies can make header lines longer than aiohttp's 8 KiB default.
MAX_HEADER_SIZE = 65536

# Each hop of a websocket negotiates these itself (key, version, compression); the
# subprotocol is offered upstream and the target's choice given to the client.
WS_HANDSHAKE = frozenset(
    h.lower()
    for h in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)

# Close codes that are never sent in a close frame (RFC 6455 7.4.1): a close without a
# status is passed on as a normal one.
UNSENDABLE_CLOSE = frozenset((1005, 1006, 1015))

# How long a bridge waits for an end to answer the close passed on to it before it drops
# both (aiohttp's own close timeout).
CLOSE_TIMEOUT = 10.0


def _end_to_end(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones (including those the Connection header names)."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    return [
        (key, value)
        for key, value in headers.items()
        if key.lower() not in HOP_BY_HOP and key.lower() not in named
    ]


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _unavailable(message: str, retry_after: int = 1) -> web.Response:
    return web.Response(
        status=503,
        text=json.dumps({"status": 503, "message": message}),
        content_type="application/json",
        headers={"Retry-After": str(retry_after)},
    )


class HoldServer:
    """An aiohttp server in the hub process that holds requests for routes being moved.

    ``hold(spec)`` starts holding, ``release(spec, target)`` lets the waiting requests go
    on to ``target`` (or fail with 503 when ``target`` is None).
    """

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 60.0,
        release_mode: str = "proxy",
        log: logging.Logger | None = None,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        if release_mode not in ("proxy", "redirect"):
            raise ValueError(f"release_mode must be 'proxy' or 'redirect', not {release_mode!r}")
        self.ip = ip
        self.port = port
        self.timeout = timeout
        self.release_mode = release_mode
        self.close_timeout = close_timeout
        self.log = log or logging.getLogger(__name__)
        self._events: dict[str, asyncio.Event] = {}  # held spec -> set on release
        self._targets: dict[str, str] = {}  # spec -> last release target
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._bridges: set[asyncio.Task] = set()  # relays of bridged websockets
        self._waiting: dict[str, int] = {}  # spec -> requests waiting for its release

    @property
    def held(self) -> set[str]:
        return set(self._events)

    def waiting(self, routespec: str) -> int:
        """How many requests for routespec wait for its release now."""
        return self._waiting.get(routespec, 0)

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("hold server is not running")
        # A wildcard bind is reachable on loopback; set MigratingProxy.hold_url otherwise.
        ip = "127.0.0.1" if self.ip in ("", "0.0.0.0") else self.ip
        if ":" in ip:
            ip = f"[{ip}]"
        return f"http://{ip}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            max_line_size=MAX_HEADER_SIZE,
            max_field_size=MAX_HEADER_SIZE,
            # Bodies go on as they came (a gzipped upload stays gzipped).
            auto_decompress=False,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.ip or None, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner
        self._session = aiohttp.ClientSession(
            # One session for every user: never share cookies between them.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Pass bytes and headers through as they are: no decompression, and no
            # headers the client did not send (Accept-Encoding would change the body).
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            # Upstream answers may stream for long (event streams); only bound the connect.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
            max_line_size=MAX_HEADER_SIZE,
            max_field_size=MAX_HEADER_SIZE,
        )
        self.log.info("Hold server listening on %s", self.url)

    async def stop(self) -> None:
        # Waiting requests get a 503 now rather than a reset connection.
        for spec in list(self._events):
            self._wake(spec)
        # Bridged websockets drop (no close frame), so clients reconnect through CHP,
        # straight to their server; a close 1001 would make JupyterLab give up.
        for bridge in list(self._bridges):
            bridge.cancel()
        await asyncio.gather(*self._bridges, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def hold(self, routespec: str) -> None:
        """Make requests for routespec wait until release. Holding twice is a no-op."""
        self._events.setdefault(routespec, asyncio.Event())

    def release(self, routespec: str, target: str | None) -> None:
        """Send waiting and future stray requests for routespec to target (None: 503)."""
        if target is None:
            self._targets.pop(routespec, None)
        else:
            self._targets[routespec] = target
        self._wake(routespec)

    def _wake(self, routespec: str) -> None:
        event = self._events.pop(routespec, None)
        if event is not None:
            event.set()

    def match(self, path: str) -> str | None:
        """The held or known routespec that is the longest prefix of path, if any."""
        path = unquote(path)
        best = None
        for spec in self._events.keys() | self._targets.keys():
            prefix = unquote(spec)
            # '/user/alice' belongs to '/user/alice/', as in CHP.
            if (path + "/").startswith(prefix) and (best is None or len(spec) > len(best)):
                best = spec
        return best

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        spec = self.match(path)
        if spec is None:
            return _unavailable(f"No server is being moved at {path}")
        event = self._events.get(spec)
        if event is not None:
            self._waiting[spec] = self.waiting(spec) + 1
            try:
                await asyncio.wait_for(event.wait(), self.timeout)
            except asyncio.TimeoutError:
                self.log.warning("Held request %s %s timed out", request.method, path)
                return _unavailable(f"The server at {spec} is still moving", retry_after=5)
            finally:
                self._waiting[spec] -= 1
                if not self._waiting[spec]:
                    del self._waiting[spec]
        target = self._targets.get(spec)
        if target is None:
            return _unavailable(f"The server at {spec} is not available")
        if _is_upgrade(request):
            # Bridge rather than fail the handshake: a refused handshake costs JupyterLab
            # a kernel lookup and a random backoff (seconds of "Unknown"), a lookup that
            # fails costs it 10-30 s, and a browser cannot follow a redirect here.
            return await self._bridge(request, target)
        if self.release_mode == "redirect":
            # Same URL, relative: the client asks CHP again, which now routes to target.
            raise web.HTTPTemporaryRedirect(request.raw_path)
        return await self._forward(request, target)

    async def _forward(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        # CHP keeps the client's Host header (jupyter-server compares it with Origin),
        # so do the same: forward every end-to-end header, Host included.
        url = URL(target.rstrip("/") + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=_end_to_end(request.headers),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as e:
            self.log.warning("Forwarding %s %s to %s failed: %s", request.method, url, target, e)
            return _unavailable(f"The server at {target} did not answer")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in _end_to_end(upstream.headers):
                response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _bridge(self, request: web.Request, target: str) -> web.StreamResponse:
        """Open the websocket at target, complete the client's handshake, relay frames."""
        assert self._session is not None
        url = URL(target.rstrip("/") + request.raw_path, encoded=True)
        offered = [
            p.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",")
            if p.strip()
        ]
        headers = [(k, v) for k, v in _end_to_end(request.headers) if k.lower() not in WS_HANDSHAKE]
        try:
            upstream = await self._session.ws_connect(
                url,
                protocols=offered,
                headers=headers,
                autoclose=False,
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as e:
            # The target refused it (403, 404...): the client hears the same. A 101 with a
            # bad handshake is the target's fault: 502.
            status = e.status if e.status >= 200 and e.status != 101 else 502
            self.log.warning("Websocket %s refused by %s: %s", request.path, target, e.status)
            return web.Response(
                status=status,
                text=json.dumps({"status": status, "message": f"{target} refused the websocket"}),
                content_type="application/json",
            )
        except (aiohttp.ClientError, OSError) as e:
            self.log.warning("Bridging websocket %s to %s failed: %s", url, target, e)
            return _unavailable(f"The server at {target} did not answer")
        downstream = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            autoclose=False,
            autoping=True,
            max_msg_size=0,
        )
        try:
            await downstream.prepare(request)
        except BaseException:
            await upstream.close()
            raise
        self.log.info("Bridged websocket %s to %s", request.path, target)
        relay = asyncio.current_task()
        assert relay is not None
        self._bridges.add(relay)
        try:
            await _relay_both(request, downstream, upstream, self.close_timeout)
        except asyncio.CancelledError:
            _drop(request, upstream)
            raise
        finally:
            self._bridges.discard(relay)
        return downstream


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _relay_both(
    request: web.Request,
    downstream: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    close_timeout: float = CLOSE_TIMEOUT,
) -> None:
    """Relay until both ends have closed; each close code and reason goes to the other
    end, and an end that drops without a close frame makes the other one drop too.

    The first close is passed on as a bare frame and the other direction keeps flowing
    until that end answers with its own close: what it sent before it saw the close still
    arrives (close() on the other end would read and discard it)."""
    pumps = {
        downstream: asyncio.ensure_future(_pump(downstream, upstream)),
        upstream: asyncio.ensure_future(_pump(upstream, downstream)),
    }
    try:
        done, _ = await asyncio.wait(pumps.values(), return_when=asyncio.FIRST_COMPLETED)
        first = done.pop().result()
        if first is None:
            _drop(request, upstream)
            return
        source, sink, code, message = first
        try:
            await sink.send_frame(_close_payload(code, message), aiohttp.WSMsgType.CLOSE)
            last = await asyncio.wait_for(pumps[sink], close_timeout)
        except (ConnectionError, aiohttp.ClientError, asyncio.TimeoutError):
            last = None
        if last is None:  # sink dropped, or never answered the close
            _drop(request, upstream)
            return
        _, _, code, message = last
        # source still waits for the answer to its close: sink's close is it.
        await source.close(code=code, message=message)
        # sink's close answered the one passed on: end it without another close frame.
        if sink is upstream:
            upstream._response.close()
        elif request.transport is not None:
            request.transport.close()
    finally:
        for pump in pumps.values():
            pump.cancel()


def _close_payload(code: int, message: bytes) -> bytes:
    return struct.pack("!H", code) + message


async def _pump(source: Socket, sink: Socket) -> tuple[Socket, Socket, int, bytes] | None:
    """Copy frames from source to sink; returns how source closed (None: it dropped)."""
    try:
        while True:
            msg = await source.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                code = msg.data if msg.data and msg.data not in UNSENDABLE_CLOSE else 1000
                return source, sink, code, (msg.extra or "").encode()
            else:  # CLOSED or ERROR: no close frame came
                return None
    except (ConnectionError, aiohttp.ClientError):
        return None


def _drop(request: web.Request, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """End both connections without a close frame, as a dropped connection would."""
    if request.transport is not None:
        request.transport.abort()
    # ClientWebSocketResponse has no public abort; closing its response drops the link.
    upstream._response.close()
