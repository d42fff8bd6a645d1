"""Kernel messages across a move: none reaches a kernel that will not answer it, and
every reply reaches the tab that asked, once.

Every kernel websocket of the user server goes through a `Gate` (see `connection.py`).
Normally it only notes which cells are running, so a cell a move interrupts can be told
why, and a message for the user can be attached to the next cell they run. It also keeps,
for every tab (session id) whose websocket closed, what the kernel sends it meanwhile
(`buffers.py`; this replaces jupyter_server's one buffer per kernel), and replays it when
that tab reconnects.

From the freeze on (the final snapshot of a move, or of a stop), messages browsers send are
held here instead of reaching the kernel, whose state is being saved. `seal()` closes the
websockets with code 1012 (JupyterLab reconnects at once; 1000/1001 would stop it), waits
for each close handshake (so every message sent before it has arrived) and writes what was
held, and every tab's buffered replies, into the home, which moves. On the next server,
`redeliver()` puts each tab's replies (signed again for the restored kernel) into that
tab's buffer there and sends its held messages through the same channels, so when the tab
reconnects it gets all of them, exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from .buffers import SessionBuffer, session_key

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
        #: session key -> replies for a tab with no websocket (see take_buffering)
        self.buffers: dict[str, SessionBuffer] = {}
        self.buffering = False

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

    # -- replies for tabs without a websocket ------------------------------------------

    def take_buffering(self, kernel_manager: Any) -> None:
        """Buffer per tab here instead of jupyter_server's one tab per kernel, if the server
        buffers at all (`buffer_offline_messages`)."""
        self.buffering = bool(kernel_manager.buffer_offline_messages)
        kernel_manager.buffer_offline_messages = False

    def claim(self, conn: Any) -> None:
        """A websocket connects: if its tab has a buffer, hand it to jupyter_server's own
        reconnect path (it reuses the channels, and replays once the kernel answers)."""
        if self._sealed_to is not None:
            return  # what is buffered here is in the seal: the next server replays it
        buf = self.buffers.get(conn.session_key)
        if buf is None or not buf.channels:
            return  # none, or still an older websocket's (`keep` forwards it to this one)
        del self.buffers[conn.session_key]
        for stream in buf.channels.values():
            stream.flush()  # what already came goes into the buffer, not to the nudge
        conn.multi_kernel_manager._kernel_buffers[conn.kernel_id] = {
            "session_key": buf.key,
            "buffer": buf.messages,
            "channels": buf.channels,
        }
        if buf.messages:
            self.log.info("replaying %d message(s) to %s", len(buf.messages), buf.key)

    def closing_reply(self, conn: Any, channel: str, frames: list) -> None:
        """A message for a websocket that is closing (it would be lost in the close)."""
        if not self.buffering:
            return  # the server is configured not to keep a closed tab's messages
        owner = self._owner(conn)
        if owner is not None:
            if channel != "iopub":  # a newer websocket of the tab has its own iopub
                owner.handle_outgoing_message(channel, frames)
            return
        self._buffer_for(conn.kernel_id, conn.session.session).add(channel, frames)

    def keep(self, conn: Any) -> None:
        """A websocket closes: keep its channels open and buffer what comes for its tab."""
        if not self.buffering or not conn.channels:
            return
        buf = self.buffers.get(conn.session_key)
        owner = self._owner(conn)
        connected = getattr(conn, "gate_connected", None)
        if (
            owner is not None
            or conn.kernel_id not in conn.multi_kernel_manager
            # before the connect is done no message came from the browser (tornado
            # delivers them after open()), and the nudge still owns the iopub channel
            or connected is None
            or not connected.done()
        ):
            if buf is not None and not buf.channels:
                del self.buffers[conn.session_key]
                for channel, frames in buf.messages:
                    if owner is not None and channel != "iopub":
                        owner.handle_outgoing_message(channel, frames)
            return
        buf = self._buffer_for(conn.kernel_id, conn.session.session)
        buf.channels = conn.channels
        for channel, stream in buf.channels.items():
            stream.on_recv(partial(self._buffered, buf, channel))
        conn.channels = {}  # jupyter_server must not close them
        self.log.info("buffering for %s (%d so far)", buf.key, len(buf.messages))
        self._prune(conn.multi_kernel_manager)

    def _owner(self, conn: Any) -> Any:
        """The connection of a newer websocket of the same tab, if one replaced `conn`."""
        handler = conn._open_sessions.get(conn.session_key)
        if handler is None or handler is conn.websocket_handler:
            return None
        return getattr(handler, "connection", None)

    def _buffer_for(self, kernel_id: str, session_id: str) -> SessionBuffer:
        key = session_key(kernel_id, session_id)
        if key not in self.buffers:
            self.buffers[key] = SessionBuffer(kernel_id, session_id)
        return self.buffers[key]

    def _buffered(self, buf: SessionBuffer, channel: str, frames: list) -> None:
        if not buf.add(channel, frames) and buf.dropped == 1:
            self.log.warning("buffer of %s is full: dropping what comes", buf.key)
        if self._sealed_to is not None:  # after the seal: straight into the file
            self._write(self._sealed_to)

    def _prune(self, kernel_manager: Any) -> None:
        """Forget the buffers of kernels that are gone."""
        for key, buf in list(self.buffers.items()):
            if buf.kernel_id not in kernel_manager:
                buf.close()
                del self.buffers[key]

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
        replies = sum(len(b.messages) for b in self.buffers.values())
        self.log.info(
            "%d kernel message(s) held, %d repl(ies) buffered, for the next server",
            len(self.held),
            replies,
        )
        return len(self.held)

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        replies = [b.to_json() for b in self.buffers.values() if b.messages]
        tmp.write_text(
            json.dumps({"seal": self.seal_id, "messages": self.held, "replies": replies})
        )
        tmp.replace(path)

    async def redeliver(
        self, kernel_manager: Any, path: Path, skip: Iterable[str] = (), timeout: float = 10
    ) -> tuple[str | None, int]:
        """Give each tab of the previous server its buffered replies here, and send the
        messages it held to the kernels here through that tab's channels, whose replies
        join the buffer; all of it is replayed when the tab reconnects.

        Returns (the seal's id, messages sent). A seal in `skip` was delivered before: a
        home restored from an older checkpoint can bring its file back, and a cell must
        not run, nor its reply come, twice."""
        if not path.exists():
            return None, 0
        sealed = json.loads(path.read_text())
        seal = sealed["seal"]
        if seal in set(skip):
            path.unlink()
            return seal, 0
        tabs: dict[tuple[str, str], dict[str, list]] = defaultdict(
            lambda: {"held": [], "replies": []}
        )
        for item in sealed["messages"]:
            tabs[(item["kernel_id"], item["session_id"])]["held"].append(item)
        for buf in sealed.get("replies", []):
            tabs[(buf["kernel_id"], buf["session_id"])]["replies"].extend(buf["messages"])
        gone = [tab for tab in tabs if tab[0] not in kernel_manager]
        for kernel_id, session_id in gone:
            self.log.warning(
                "messages of tab %s for kernel %s, which is gone", session_id, kernel_id
            )
            del tabs[(kernel_id, session_id)]
        # subscribing the channels takes a kernel round trip: all tabs at once
        buffers = await asyncio.gather(
            *(
                self._tab_buffer(kernel_manager, kernel_id, session_id, bool(tab["held"]), timeout)
                for (kernel_id, session_id), tab in tabs.items()
            )
        )
        delivered = 0
        for buf, tab in zip(buffers, tabs.values(), strict=True):
            session = kernel_manager.get_kernel(buf.kernel_id).session
            for item in tab["replies"]:
                buf.add(*SessionBuffer.signed(item, session))
            for item in tab["held"]:
                data = base64.b64decode(item["b64"]) if "b64" in item else item["text"]
                if item["protocol"] == V1:
                    channel, parts = deserialize_msg_from_ws_v1(data)
                    session.send_raw(buf.channels[channel], parts)
                else:
                    msg = (
                        deserialize_binary_message(data)
                        if isinstance(data, bytes)
                        else json.loads(data)
                    )
                    channel = msg.pop("channel", None) or "shell"
                    session.send(buf.channels[channel], msg)
                delivered += 1
            if tab["replies"] or tab["held"]:
                self.log.info(
                    "tab %s: %d repl(ies) carried, %d held message(s) sent",
                    buf.key,
                    len(tab["replies"]),
                    len(tab["held"]),
                )
        path.unlink()
        return seal, delivered

    async def _tab_buffer(
        self, kernel_manager: Any, kernel_id: str, session_id: str, sends: bool, timeout: float
    ) -> SessionBuffer:
        """The buffer of one tab, with channels of its own identity that buffer into it."""
        kernel = kernel_manager.get_kernel(kernel_id)
        identity = session_id.encode()
        channels = {}
        for name in CHANNELS:
            stream = getattr(kernel, "connect_" + name)(identity=identity)
            stream.channel = name
            channels[name] = stream
        if sends:
            await self._subscribed(kernel, channels["iopub"], timeout)
        buf = self._buffer_for(kernel_id, session_id)
        buf.close()  # a fresh server has none; a tab's buffer has one set of channels
        buf.channels = channels
        for name, stream in channels.items():
            stream.on_recv(partial(self._buffered, buf, name))
        return buf

    async def _subscribed(self, kernel: Any, iopub: Any, timeout: float) -> None:
        """iopub must be subscribed before the first request, or that cell's output is lost
        (ZMQ's slow joiner): ask for kernel info on a shell of our own until iopub speaks."""
        seen = asyncio.Event()
        iopub.on_recv(lambda _msg: seen.set())
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
            iopub.on_recv(None)
