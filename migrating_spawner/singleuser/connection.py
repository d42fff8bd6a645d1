"""The kernel websocket connection class of a migrating user server.

jupyter_server's ZMQ connection with three additions:

- every message passes the server's `Gate` (gate.py): held during a move's freeze, cells
  noted while they run;
- a closed websocket's tab keeps its replies in the gate (buffers.py) until it reconnects,
  including what comes while the socket is closing (jupyter_server would lose that);
- once connected, the socket alone is told its kernel's state: JupyterLab ignores the
  statuses of kernel_info replies (jupyter_server's `untracked_message_types`), so after a
  reconnect (a move drops every socket) its indicator showed "Unknown" until the next cell.
  A kernel says its state with no parent when it starts; this does the same.
"""

from __future__ import annotations

import asyncio

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from .gate import Gate


def migrating_connection(base: type, gate: Gate) -> type:
    """`base` (a ZMQ websocket connection class) wired to `gate`; other classes (e.g. a
    --gateway-url server's, whose kernels move on their own) are returned as they are."""
    if not issubclass(base, ZMQChannelsWebsocketConnection):
        return base

    class MigratingConnection(base):  # type: ignore[misc, valid-type]
        def connect(self):
            # set once the websocket is closed: every message sent before has arrived
            self.gate_closed = asyncio.Event()
            gate.connections.add(self)
            gate.claim(self)
            connected = super().connect()
            self.gate_connected = connected
            if connected is not None:
                connected.add_done_callback(lambda _: self._tell_status())
            return connected

        def disconnect(self):
            gate.connections.discard(self)
            gate.keep(self)
            if hasattr(self, "gate_closed"):
                self.gate_closed.set()
            return super().disconnect()

        def handle_incoming_message(self, incoming_msg):
            if gate.admit(self, incoming_msg):
                super().handle_incoming_message(incoming_msg)

        def handle_outgoing_message(self, stream, outgoing_msg):
            gate.replied(self, stream, outgoing_msg)
            if self._closing():
                channel = stream if isinstance(stream, str) else stream.channel
                gate.closing_reply(self, channel, outgoing_msg)
                return
            super().handle_outgoing_message(stream, outgoing_msg)

        def _closing(self) -> bool:
            ws = self.websocket_handler.ws_connection
            return ws is None or ws.is_closing()

        def _tell_status(self) -> None:
            state = getattr(self.kernel_manager, "execution_state", None)
            if state not in ("idle", "busy") or "iopub" not in self.channels or self._closing():
                return
            msg = self.session.msg("status", {"execution_state": state})
            self.handle_outgoing_message("iopub", self.session.serialize(msg))

    return MigratingConnection
