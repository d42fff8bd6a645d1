"""MigratingProxy: configurable-http-proxy plus holding a server's route during a move.

While a server moves, its CHP route points at the hold server (:mod:`proxy_plugin.hold`),
so requests wait instead of failing. JupyterHub keeps calling ``add_route`` during the move
(``add_user`` after the re-point, ``check_routes`` repairs): for a held route those calls
only record the release target. ``release`` applies it to CHP, then wakes the waiters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from jupyterhub.app import JupyterHub
from jupyterhub.proxy import ConfigurableHTTPProxy
from traitlets import Enum, Float, Integer, Unicode

from migrating_spawner.controller import MigratingController
from migrating_spawner.tcpgateway.gateway import TCPGateway

from .hold import HoldServer


@dataclass
class _Hold:
    original: str | None  # CHP's target when the hold began (None: there was no route)
    data: dict[str, Any] = field(default_factory=dict)
    target: str | None = None  # latest target JupyterHub asked for during the hold

    @property
    def release_target(self) -> str | None:
        return self.target or self.original


class MigratingProxy(ConfigurableHTTPProxy):
    """ConfigurableHTTPProxy that can hold a server's route while the server moves
    (the `RouteHold` protocol of migrating_spawner/moving/protocol.py).

    ``await proxy.hold(spawner)`` before the cut-over, re-point the server as usual
    (``proxy.add_user``), then ``await proxy.release(spawner)``.
    """

    hold_timeout = Float(
        60.0,
        config=True,
        help="""Seconds a request may wait in the hold server for its route's release.

        A request or websocket handshake still held after this gets a 503 (JSON body,
        Retry-After header). Keep it above the longest expected cut-over and below client
        timeouts.
        """,
    )

    hold_ip = Unicode(
        "127.0.0.1",
        config=True,
        help="""The IP address the hold server binds to, in the hub process.

        CHP must reach it: with CHP on another host or container, bind an address it
        can reach and set hold_url.
        """,
    )

    hold_port = Integer(
        0,
        config=True,
        help="The port the hold server binds to. 0 picks a free port.",
    )

    hold_url = Unicode(
        "",
        config=True,
        help="""The URL CHP uses to reach the hold server, e.g. http://hub:8082.

        Default (empty): http://{hold_ip}:{port} of the running hold server, with the
        port it actually bound. Set it when CHP reaches the hub under another address.
        """,
    )

    hold_release_mode = Enum(
        ["proxy", "redirect"],
        "proxy",
        config=True,
        help="""What a held request does once its route is released.

        'proxy': the hold server passes it on to the new target and streams the answer back.
        'redirect': it answers 307 to the same URL, so the client asks again through CHP.
        Websocket handshakes are bridged to the new target in both modes (a browser does
        not follow a redirect there, and a refused handshake makes JupyterLab back off).
        """,
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._holds: dict[str, _Hold] = {}
        self._hold_server: HoldServer | None = None
        self._hold_server_lock = asyncio.Lock()
        self._starting_controller: asyncio.Future | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # constructed outside the hub's loop (e.g. in a test)
        if not self._in_hub:
            return
        # The hub builds its proxy during initialize(), before it waits (up to 30 s) for
        # external services such as `migrate`: bring the controller up now, not at the
        # first check_routes after that wait.
        self._starting_controller = asyncio.ensure_future(self._start_controller())

    @property
    def hold_server(self) -> HoldServer | None:
        """The running hold server, or None before it started."""
        return self._hold_server

    def _spec(self, spawner_or_routespec: Any) -> str:
        if isinstance(spawner_or_routespec, str):
            return self.validate_routespec(spawner_or_routespec)
        return self.validate_routespec(spawner_or_routespec.proxy_spec)

    def is_held(self, spawner_or_routespec: Any) -> bool:
        """Whether requests for this spawner's (or routespec's) route are being held."""
        return self._spec(spawner_or_routespec) in self._holds

    # hold server lifecycle

    async def _ensure_hold_server(self) -> HoldServer:
        # Lazy, because with an external CHP (should_start=False) start() is never called.
        async with self._hold_server_lock:
            if self._hold_server is None:
                server = HoldServer(
                    ip=self.hold_ip,
                    port=self.hold_port,
                    timeout=self.hold_timeout,
                    release_mode=self.hold_release_mode,
                    log=self.log,
                )
                await server.start()
                self._hold_server = server
            return self._hold_server

    async def _stop_hold_server(self) -> None:
        if self._hold_server is not None:
            server, self._hold_server = self._hold_server, None
            await server.stop()

    async def start(self) -> None:
        await self._ensure_hold_server()
        try:
            await super().start()
        except BaseException:
            await self._stop_hold_server()
            raise

    async def stop(self) -> None:  # type: ignore[override]
        # JupyterHub awaits stop() through maybe_future, so it may be a coroutine.
        if self.proxy_process is not None:
            super().stop()
            # the TCP gateway's HAProxy lives as CHP does: it outlives a hub that dies, and
            # a hub that stops its proxy (cleanup_proxy) stops it too
            if TCPGateway.initialized() and TCPGateway.instance().enabled:
                TCPGateway.instance().stop()
        await self._stop_hold_server()

    async def check_routes(
        self,
        user_dict: dict[Any, Any],
        service_dict: dict[str, Any],
        routes: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        await self._ensure_hold_server()
        await self._start_controller()
        await super().check_routes(user_dict, service_dict, routes)

    @property
    def _in_hub(self) -> bool:
        # a proxy used on its own (a test hands in a stand-in `app`) starts no controller:
        # the controller's API reads the hub's own objects
        return isinstance(getattr(self, "app", None), JupyterHub)

    async def _start_controller(self) -> None:
        """Bring up the migrating controller (and its control API) with the hub, and hand
        it this proxy as the route hold of its moves.

        The hub checks routes right after it starts, with or without an external CHP, so
        the API answers before the first server is spawned.
        """
        if not self._in_hub:
            return
        controller = MigratingController.instance(config=self.config)
        controller.use_route_hold(self)
        await controller.ensure_started()

    # hold and release

    async def hold(self, spawner: Any) -> None:
        """From now on, requests for spawner's route wait in the hold server."""
        spec = self._spec(spawner)
        if spec in self._holds:
            return
        server = await self._ensure_hold_server()
        # Record the hold before talking to CHP, so an add_route racing with us is
        # recorded as the release target instead of un-holding the route.
        hold = self._holds[spec] = _Hold(original=None)
        server.hold(spec)
        try:
            route = (await super().get_all_routes()).get(spec)
            if route is not None:
                hold.original = route["target"]
                hold.data = _route_data(route["data"])
            hold.data = hold.data or _spawner_data(spawner)
            await super().add_route(spec, self.hold_url or server.url, dict(hold.data))
        except BaseException:
            # Not held after all. A target recorded meanwhile is drift that the hub's
            # check_routes repairs, now that get_all_routes reports CHP's own target.
            del self._holds[spec]
            server.release(spec, hold.release_target)
            raise
        self.log.info("Holding %s (was %s)", spec, hold.original)

    async def release(self, spawner: Any) -> None:
        """Point spawner's route at its latest target, then let the held requests go on."""
        spec = self._spec(spawner)
        hold = self._holds.get(spec)
        if hold is None:
            return
        while True:
            target = hold.release_target
            if target is None:
                await super().delete_route(spec)
            else:
                await super().add_route(spec, target, dict(hold.data))
            # add_route may have recorded a newer target while we talked to CHP.
            if hold.release_target == target:
                break
        del self._holds[spec]
        if self._hold_server is not None:
            self._hold_server.release(spec, target)
        self.log.info("Released %s to %s", spec, target)

    # Proxy API: held routes keep pointing at the hold server

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        hold = self._holds.get(self.validate_routespec(routespec))
        if hold is None:
            await super().add_route(routespec, target, data)
            return
        hold.target = target
        hold.data = _route_data(data or {}) or hold.data
        self.log.info("Route %s is held: will release to %s", routespec, target)

    async def delete_route(self, routespec: str) -> None:
        spec = self.validate_routespec(routespec)
        hold = self._holds.pop(spec, None)
        await super().delete_route(routespec)
        if hold is not None and self._hold_server is not None:
            # The server is gone: waiting requests get a 503 now.
            self._hold_server.release(spec, None)

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        routes = await super().get_all_routes()
        # Report held routes with their release target, so check_routes sees no drift.
        # Keep CHP's data (last_activity: the hub's activity tracking reads it).
        for spec, hold in self._holds.items():
            if spec in routes and hold.release_target is not None:
                routes[spec] = {
                    "routespec": spec,
                    "target": hold.release_target,
                    "data": {**routes[spec]["data"], **hold.data},
                }
        return routes


def _route_data(data: dict[str, Any]) -> dict[str, Any]:
    # CHP adds last_activity to a route's data; it is CHP's to keep, not ours to post back.
    return {k: v for k, v in data.items() if k not in ("last_activity", "target", "jupyterhub")}


def _spawner_data(spawner: Any) -> dict[str, Any]:
    user = getattr(spawner, "user", None)
    if user is None:
        return {}
    return {"user": user.name, "server_name": getattr(spawner, "name", "")}
