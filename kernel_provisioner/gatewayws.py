"""The kernel websocket of a notebook server in front of a gateway (`--gateway-url`), with
one connection per session at a time.

JupyterLab opens a new notebook's kernel websocket, closes it within milliseconds and opens
it again with the same session id. jupyter_server 2's ``GatewayWebSocketConnection`` then
"cancels" the first connection to the gateway, which only drops its Future: the handshake
carries on, and the gateway gets a connection nobody reads or closes. When the second one
arrives while the first is still waiting for the kernel's ``kernel_info_reply``, Enterprise
Gateway 3.3 (jupyter_server 1.24's ``ZMQChannelsHandler._register_session``) "replaces" the
stale one by closing a websocket that is not open yet, which does nothing, and then waits
for it to close: the notebook's kernel stays "unknown" until the front's
``GatewayClient.request_timeout`` (42 s) gives up and reconnects.

This class closes what such a dropped handshake opens, and a new connection of the same
session waits until the earlier one is closed, so the gateway never holds two at once::

    jupyter lab --gateway-url=... \\
        --ServerApp.kernel_websocket_connection_class=kernel_provisioner.gatewayws.GatewayWebSocketConnection

It needs jupyter_server 2 (the front's environment, not Enterprise Gateway's).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from jupyter_server.gateway import connections

# seconds the gateway gets to close a connection after it was asked to (tornado's own
# close handshake gives up after 5 s)
CLOSE_WITHIN = 5.0


class GatewayWebSocketConnection(connections.GatewayWebSocketConnection):
    """jupyter_server's gateway websocket connection, one per (kernel, session) at a time."""

    # (kernel id, session id) -> done once the earlier connection of it is closed
    _closing: ClassVar[dict[tuple[str, str], asyncio.Future]] = {}
    # the tasks that close them (asyncio keeps only weak references to tasks)
    _closers: ClassVar[set[asyncio.Task]] = set()

    async def connect(self):
        """Connect once an earlier connection of this session is closed at the gateway."""
        earlier = self._closing.get((self.kernel_id, self.session_id))
        if earlier is not None:
            # bounded by that handshake's own request_timeout and CLOSE_WITHIN
            await asyncio.shield(earlier)
        await super().connect()

    def disconnect(self):
        """Like jupyter_server's, but a connection still being set up is closed once the
        gateway has accepted it, instead of being left open there."""
        pending = self.ws_future
        if self.ws is not None or pending is None or pending.done():
            super().disconnect()
            return
        self.disconnected = True
        key = (self.kernel_id, self.session_id)
        closed = asyncio.get_running_loop().create_future()
        self._closing[key] = closed

        def settled(_):
            if self._closing.get(key) is closed:
                del self._closing[key]

        closed.add_done_callback(settled)
        closer = asyncio.ensure_future(self._close_when_open(pending, closed))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _close_when_open(self, pending: asyncio.Future, closed: asyncio.Future) -> None:
        try:
            ws = await pending
        except Exception:
            ws = None  # the gateway refused it or it timed out: nothing is open there
        try:
            if ws is not None:
                self.log.debug("closing the dropped connection to kernel %s", self.kernel_id)
                ws.close()
                await asyncio.wait_for(_closed(ws), CLOSE_WITHIN)
        except asyncio.TimeoutError:
            self.log.warning("kernel %s: the gateway did not close a connection", self.kernel_id)
        finally:
            closed.set_result(None)


async def _closed(ws) -> None:
    """Until the gateway has closed its side (read_message() answers None then)."""
    while await ws.read_message() is not None:
        pass
