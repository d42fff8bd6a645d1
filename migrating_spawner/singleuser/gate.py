"""Kernel messages across a move: none reaches a kernel that will not answer it.

Every kernel websocket of the user server goes through a `Gate` (the server's
`kernel_websocket_connection_class` is wrapped by :func:`gated`). Normally it only notes
which cells are running, so a cell a move interrupts can be told why, and a message for the
user can be attached to the next cell they run.

From the freeze on (the final snapshot of a move, or of a stop), messages browsers send are
held here instead of reaching the kernel, whose state is being saved. `seal()` closes the
websockets with code 1012 (JupyterLab reconnects at once; 1000/1001 would stop it), waits
for each close handshake (so every message sent before it has arrived) and writes what was
held into the home, which moves. On the next server, `redeliver()` sends those messages to
the restored kernels through channels that jupyter_server buffers under the browser's
session id, and replays to that browser when it reconnects: each held cell is answered
exactly once, in the same tab.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

V1 = "v1.kernel.websocket.jupyter.org"
#: "Service Restart": JupyterLab retries at once (it gives up on 1000 and 1001)
MOVING_CLOSE_CODE = 1012
CHANNELS = ("iopub", "shell", "control", "stdin")


def _parse(protocol: str | None, data: str | bytes) -> tuple[str, dict, dict]:
    """(channel, header, content) of a message a browser sent."""
    if protocol == V1:
        channel, parts = deserialize_msg_from_ws_v1(data)
        return channel, json.loads(parts[0]), json.loads(parts[3])
    msg = deserialize_binary_message(data) if isinstance(data, bytes) else json.loads(data)
    return msg.get("channel") or "shell", msg["header"], msg.get("content") or {}


class Gate:
    """Holds, records and redelivers the kernel messages of one user server."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self.frozen = False
        self.held: list[dict[str, Any]] = []
        self._sealed_to: Path | None = None
        self.seal_id: str | None = None
        # kernel id -> msg id -> (header, connection, code) of execute requests without a reply
        self.running: dict[str, dict[str, tuple[dict, Any, str]]] = defaultdict(dict)
        # kernel id -> text to show in the next cell the user runs there
        self.announcements: dict[str, str] = {}
        self.connections: set[Any] = set()

    # -- what connections report -------------------------------------------------------

    def admit(self, conn: Any, data: str | bytes) -> bool:
        """Whether a message from a browser goes on to the kernel now."""
        if self.frozen:
            self.held.append(
                {
                    "kernel_id": conn.kernel_id,
                    "session_id": conn.session.session,
                    "protocol": conn.subprotocol,
                    **(
                        {"b64": base64.b64encode(data).decode()}
                        if isinstance(data, bytes)
                        else {"text": data}
                    ),
                }
            )
            if self._sealed_to is not None:  # after the seal: straight into the file
                self._write(self._sealed_to)
            return False
        try:
            channel, header, content = _parse(conn.subprotocol, data)
        except Exception:
            return True  # not ours to judge; jupyter_server reports malformed messages
        if channel == "shell" and header.get("msg_type") == "execute_request":
            code = str(content.get("code", ""))
            self.running[conn.kernel_id][header["msg_id"]] = (header, conn, code)
            if not content.get("silent") and conn.kernel_id in self.announcements:
                self.tell(conn, header, self.announcements.pop(conn.kernel_id))
        return True

    def replied(self, conn: Any, stream: Any, parts: list) -> None:
        """A shell reply went to a browser: its request no longer runs."""
        if getattr(stream, "channel", stream) != "shell":
            return
        try:
            _, fed = conn.session.feed_identities(parts)
            parent = json.loads(fed[2])
            self.running[conn.kernel_id].pop(parent.get("msg_id"), None)
        except Exception:
            pass

    # -- telling the user ----------------------------------------------------------------

    def running_cell(self, kernel_id: str) -> tuple[dict, Any, str] | None:
        """(header, connection, code) of the cell running on `kernel_id`, if a browser sent it."""
        running = list(self.running.get(kernel_id, {}).values())
        return running[0] if running else None  # the first without a reply runs; others wait

    def announce(self, kernel_id: str, text: str) -> None:
        """Show `text` in the output of the next cell the user runs on `kernel_id`."""
        self.announcements[kernel_id] = text

    def tell(self, conn: Any, parent: dict, text: str) -> bool:
        """Write `text` to stderr in the output of the cell whose request was `parent`."""
        msg = conn.session.msg("stream", {"name": "stderr", "text": text.rstrip() + "\n"}, parent)
        try:
            if conn.subprotocol == V1:
                data = serialize_msg_to_ws_v1(msg, "iopub", conn.session.pack)
                conn.websocket_handler.write_message(data, binary=True)
            else:
                msg["channel"] = "iopub"
                conn.websocket_handler.write_message(json.dumps(msg, default=json_default))
            return True
        except Exception as e:
            self.log.warning("could not tell kernel %s's cell: %s", conn.kernel_id, e)
            return False

    # -- freeze, seal, redeliver -------------------------------------------------------

    def freeze(self) -> None:
        if not self.frozen:
            self.frozen = True
            self.seal_id = uuid.uuid4().hex

    async def seal(self, path: Path, timeout: float = 3.0) -> int:
        """Close every kernel websocket, wait for the close handshakes, and write what was
        held to `path`. Returns the number of messages held."""
        self.freeze()
        closing = []
        for conn in list(self.connections):
            closing.append(asyncio.ensure_future(conn.gate_closed.wait()))
            try:
                conn.websocket_handler.close(MOVING_CLOSE_CODE, "the server is moving")
            except Exception as e:
                self.log.warning("closing a kernel websocket: %s", e)
        if closing:
            done, _ = await asyncio.wait(closing, timeout=max(0.1, timeout))
            self.log.info("closed %d of %d kernel websocket(s)", len(done), len(closing))
        self._sealed_to = path
        self._write(path)
        self.log.info("%d kernel message(s) held for the next server", len(self.held))
        return len(self.held)

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seal": self.seal_id, "messages": self.held}))
        tmp.replace(path)

    async def redeliver(
        self, kernel_manager: Any, path: Path, skip: Iterable[str] = (), timeout: float = 10
    ) -> tuple[str | None, int]:
        """Send the messages held on the previous server to the kernels here; their replies
        wait in jupyter_server's buffer for the browser that sent them.

        Returns (the seal's id, messages sent). A seal in `skip` was delivered before: a
        home restored from an older checkpoint can bring its file back, and a cell must
        not run twice."""
        if not path.exists():
            return None, 0
        sealed = json.loads(path.read_text())
        seal, held = sealed["seal"], sealed["messages"]
        if seal in set(skip):
            path.unlink()
            return seal, 0
        by_session: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for item in held:
            by_session[(item["kernel_id"], item["session_id"])].append(item)
        delivered = 0
        buffered: set[str] = set()
        for (kernel_id, session_id), items in by_session.items():
            if kernel_id not in kernel_manager:
                self.log.warning(
                    "%d message(s) for kernel %s, which is gone", len(items), kernel_id
                )
                continue
            if kernel_id in buffered:
                # jupyter_server buffers one browser session per kernel
                self.log.warning(
                    "messages of a second tab on kernel %s are not redelivered", kernel_id
                )
                continue
            buffered.add(kernel_id)
            channels = await self._buffering_channels(
                kernel_manager, kernel_id, session_id, timeout
            )
            session = kernel_manager.get_kernel(kernel_id).session
            for item in items:
                data = base64.b64decode(item["b64"]) if "b64" in item else item["text"]
                if item["protocol"] == V1:
                    channel, parts = deserialize_msg_from_ws_v1(data)
                    session.send_raw(channels[channel], parts)
                else:
                    msg = (
                        deserialize_binary_message(data)
                        if isinstance(data, bytes)
                        else json.loads(data)
                    )
                    channel = msg.pop("channel", None) or "shell"
                    session.send(channels[channel], msg)
                delivered += 1
        path.unlink()
        return seal, delivered

    async def _buffering_channels(
        self, kernel_manager: Any, kernel_id: str, session_id: str, timeout: float
    ) -> dict[str, Any]:
        kernel = kernel_manager.get_kernel(kernel_id)
        identity = session_id.encode()
        channels = {}
        for name in CHANNELS:
            stream = getattr(kernel, "connect_" + name)(identity=identity)
            stream.channel = name
            channels[name] = stream
        # iopub must be subscribed before the first request, or that cell's output is lost
        # (ZMQ's slow joiner): ask for kernel info on a shell of our own until iopub speaks
        seen = asyncio.Event()
        channels["iopub"].on_recv(lambda _msg: seen.set())
        probe = kernel.connect_shell()
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        try:
            while not seen.is_set() and loop.time() < until:
                kernel.session.send(probe, "kernel_info_request")
                try:
                    await asyncio.wait_for(seen.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
        finally:
            probe.close()
        kernel_manager.start_buffering(kernel_id, f"{kernel_id}:{session_id}", channels)
        return channels


def gated(base: type, gate: Gate) -> type:
    """`base` (a ZMQ websocket connection class) with every message passing `gate`."""
    if not issubclass(base, ZMQChannelsWebsocketConnection):
        return base  # e.g. a --gateway-url server: its kernels move on their own

    class GatedConnection(base):  # type: ignore[misc, valid-type]
        def connect(self):
            # set once the websocket is closed: every message sent before has arrived
            self.gate_closed = asyncio.Event()
            gate.connections.add(self)
            return super().connect()

        def disconnect(self):
            gate.connections.discard(self)
            if hasattr(self, "gate_closed"):
                self.gate_closed.set()
            return super().disconnect()

        def handle_incoming_message(self, incoming_msg):
            if gate.admit(self, incoming_msg):
                super().handle_incoming_message(incoming_msg)

        def handle_outgoing_message(self, stream, outgoing_msg):
            gate.replied(self, stream, outgoing_msg)
            super().handle_outgoing_message(stream, outgoing_msg)

    return GatedConnection
