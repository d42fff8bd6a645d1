"""The hold server: requests that arrive while a server moves wait here, then go on.

During a move, :class:`~proxy_plugin.proxy.MigratingProxy` points the server's CHP route
here. A request waits until the route is released (or ``timeout`` passes) and then either
goes on to the new target ('proxy' mode) or is told to ask again with a 307 ('redirect'
mode). CHP forwards the whole original path, so the path tells which held route a request
belongs to.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
    ) -> None:
        if release_mode not in ("proxy", "redirect"):
            raise ValueError(f"release_mode must be 'proxy' or 'redirect', not {release_mode!r}")
        self.ip = ip
        self.port = port
        self.timeout = timeout
        self.release_mode = release_mode
        self.log = log or logging.getLogger(__name__)
        self._events: dict[str, asyncio.Event] = {}  # held spec -> set on release
        self._targets: dict[str, str] = {}  # spec -> last release target
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def held(self) -> set[str]:
        return set(self._events)

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
            try:
                await asyncio.wait_for(event.wait(), self.timeout)
            except asyncio.TimeoutError:
                self.log.warning("Held request %s %s timed out", request.method, path)
                return _unavailable(f"The server at {spec} is still moving", retry_after=5)
        target = self._targets.get(spec)
        if target is None:
            return _unavailable(f"The server at {spec} is not available")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            # Fail the handshake with a plain 503 rather than relaying the websocket from
            # the hub: JupyterLab retries a failed handshake, and the retry goes through
            # CHP, which now points at the new host. (A 101 followed by a close frame
            # 1000/1001 would stop JupyterLab's retries for good.)
            return _unavailable(f"The server at {spec} has moved: reconnect")
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
