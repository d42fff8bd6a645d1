"""Kernel replies for a browser tab whose websocket is closed, kept per tab.

jupyter_server keeps one such buffer per kernel, only when its last websocket closes, and in
the memory of the server that dies at a move. Here every tab (a session id on a kernel) gets
its own: the ZMQ channels of a closed websocket stay open and what arrives on them waits,
until a websocket with the same session id connects (it is replayed to it, once), or until
the seal, which writes it into the home (unsigned), for the next server to sign again with
the restored kernel's key and replay there.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.session import DELIM

#: a tab that never comes back must not fill the server's memory
MAX_BUFFERED = 10_000


def session_key(kernel_id: str, session_id: str) -> str:
    """jupyter_server's name for one tab on one kernel."""
    return f"{kernel_id}:{session_id}"


@dataclass
class SessionBuffer:
    """What the kernel sent to one tab while the tab had no websocket."""

    kernel_id: str
    session_id: str
    #: (channel, raw ZMQ frames), in arrival order, as jupyter_server's buffer keeps them
    messages: list[tuple[str, list[bytes]]] = field(default_factory=list)
    #: the ZMQ channels (identity: the session id) that still receive for the tab
    channels: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0

    @property
    def key(self) -> str:
        return session_key(self.kernel_id, self.session_id)

    def add(self, channel: str, frames: list) -> bool:
        """Keep one message; False once the buffer is full (the message is dropped)."""
        if len(self.messages) >= MAX_BUFFERED:
            self.dropped += 1
            return False
        self.messages.append((channel, [bytes(f) for f in frames]))
        return True

    def close(self) -> None:
        for stream in self.channels.values():
            if not stream.closed():
                stream.on_recv(None)
                stream.close()
        self.channels = {}

    # -- in the seal file ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Its messages without their signatures (the next kernel has another key)."""
        messages = []
        for channel, frames in self.messages:
            at = frames.index(DELIM)
            messages.append(
                {
                    "channel": channel,
                    "idents": [_b64(f) for f in frames[:at]],
                    # header, parent header, metadata, content, buffers
                    "parts": [_b64(f) for f in frames[at + 2 :]],
                }
            )
        return {"kernel_id": self.kernel_id, "session_id": self.session_id, "messages": messages}

    @staticmethod
    def signed(item: dict[str, Any], session: Any) -> tuple[str, list[bytes]]:
        """(channel, frames) of a message from `to_json`, signed with `session`'s key."""
        parts = [base64.b64decode(p) for p in item["parts"]]
        idents = [base64.b64decode(i) for i in item["idents"]]
        return item["channel"], [*idents, DELIM, session.sign(parts[:4]), *parts]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
