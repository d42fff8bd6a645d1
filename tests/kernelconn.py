"""A kernel websocket kept the way JupyterLab keeps one, for tests that live through moves.

One session id for the connection's whole life; when the socket drops it reconnects (same
session id, so a server that buffers a session's messages can replay them); cells sent while
it is down go out once it is back; replies are matched to their cells by msg_id, and every
reply is counted, so a test can tell a cell answered once from one answered twice or never.
Failed websocket upgrades are recorded with their HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import defaultdict
from typing import Any

import aiohttp
from kernelws import execute_request


class KernelConnection:
    def __init__(self, base_url: str, kernel_id: str, token: str, label: str):
        self.url = f"{base_url}/api/kernels/{kernel_id}/channels"
        self.kernel_id = kernel_id
        self.token = token
        self.label = label
        self.session_id = execute_request("", "")["header"]["msg_id"]
        #: msg_id -> every execute_reply content received for it (exactly one is right)
        self.replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.reply_times: dict[str, list[float]] = defaultdict(list)
        #: msg_id -> text output of that cell (stream, results, errors)
        self.outputs: dict[str, list[str]] = defaultdict(list)
        #: msg_id -> {"code", "sent", "queued", "tag"}: every cell this client sent
        self.sent: dict[str, dict[str, Any]] = {}
        #: output whose parent is no cell of ours: what the server told the user by itself
        self.unsolicited: list[str] = []
        #: failed upgrades: (time, HTTP status or error name)
        self.refusals: list[tuple[float, int | str]] = []
        self.drops: list[float] = []
        self.connects: list[float] = []
        self._idle: set[str] = set()
        self._hello = ""
        self._queue: list[str] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._bouncing = False
        self._ended = asyncio.Event()
        self._news = asyncio.Condition()
        self.connected = asyncio.Event()

    async def start(self, timeout: float = 60) -> None:
        # a fresh connection per upgrade, as browsers do: a socket that carried a refused
        # upgrade (CHP's 404 or 503) is not parsed as HTTP again, and reusing it hangs
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._http is not None:
            await self._http.close()

    async def pause(self) -> None:
        """Close the socket and stay away (a tab put to sleep) until `resume()`."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await self._task
        self._task = None

    async def resume(self, timeout: float = 60) -> None:
        """Reconnect with the same session id, as the tab waking up."""
        self._closing = False
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def bounce(self) -> None:
        """Close the socket from this side and reconnect, as a tab that lost its network.

        What the server sent before it saw the close is still read and counted (RFC 6455
        allows it; a browser drops it, and no server can know which of those it read);
        what comes after is the server's to keep and replay when the tab reconnects."""
        ws = self._ws
        if ws is None or ws.closed or self._bouncing:
            return
        self._bouncing = True
        self.connected.clear()  # cells from now on wait for the next socket
        ended = asyncio.Event()
        self._ended = ended
        try:
            await ws.send_frame(struct.pack("!H", 1000), aiohttp.WSMsgType.CLOSE)
        except (aiohttp.ClientError, ConnectionError):
            pass
        try:
            # the reader stops at the server's close; a server that never answers is dropped
            await asyncio.wait_for(ended.wait(), 5)
        except asyncio.TimeoutError:
            await ws.close()

    # -- the connection ---------------------------------------------------------------

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        delay = 0.1
        while True:
            try:
                # bounded: a held upgrade waits at most the hold timeout (60 s)
                return await asyncio.wait_for(
                    self._http.ws_connect(
                        self.url + f"?session_id={self.session_id}",
                        headers={"Authorization": f"token {self.token}"},
                        heartbeat=10,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5),
                    ),
                    70,
                )
            except aiohttp.WSServerHandshakeError as e:
                self.refusals.append((time.time(), e.status))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                self.refusals.append((time.time(), type(e).__name__))
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def _run(self) -> None:
        while not self._closing:
            ws = await self._connect()
            self._ws = ws
            self.connects.append(time.time())
            try:
                # as JupyterLab: cells queued while down go out once the kernel answers a
                # kernel_info_request on the new socket
                hello = execute_request("", self.session_id)
                hello["header"]["msg_type"] = "kernel_info_request"
                hello["content"] = {}
                self._hello = hello["header"]["msg_id"]
                await ws.send_str(json.dumps(hello))
                async for frame in ws:
                    if frame.type == aiohttp.WSMsgType.TEXT:
                        msg = json.loads(frame.data)
                        if (msg.get("parent_header") or {}).get("msg_id") == self._hello:
                            if msg.get("msg_type") == "kernel_info_reply":
                                await self._flush(ws)
                            continue
                        await self._on_message(msg)
                    elif frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                        break
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            self.connected.clear()
            self._ws = None
            if not self._bouncing and not self._closing:
                self.drops.append(time.time())
            self._bouncing = False
            self._ended.set()

    async def _flush(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._bouncing:
            return  # closing: the next socket sends them
        while self._queue:
            await ws.send_str(self._queue[0])
            self._queue.pop(0)
        self.connected.set()

    async def _on_message(self, msg: dict[str, Any]) -> None:
        parent = (msg.get("parent_header") or {}).get("msg_id")
        kind, content = msg.get("msg_type"), msg.get("content") or {}
        text = None
        if kind == "stream":
            text = content.get("text", "")
        elif kind in ("execute_result", "display_data"):
            text = (content.get("data") or {}).get("text/plain", "") + "\n"
        elif kind == "error":
            text = f"{content.get('ename')}: {content.get('evalue')}\n"
        if parent in self.sent:
            if kind == "execute_reply":
                self.replies[parent].append(content)
                self.reply_times[parent].append(time.time())
            elif kind == "status" and content.get("execution_state") == "idle":
                self._idle.add(parent)
            elif text is not None:
                self.outputs[parent].append(text)
        elif text:
            self.unsolicited.append(text)
        async with self._news:
            self._news.notify_all()

    # -- cells ------------------------------------------------------------------------

    async def send(self, code: str, tag: Any = None) -> str:
        """Send a cell now, or when the socket is back; returns its msg_id."""
        msg = execute_request(code, self.session_id)
        msg_id = msg["header"]["msg_id"]
        frame = json.dumps(msg)
        ws = self._ws
        queued = ws is None or ws.closed or not self.connected.is_set()
        self.sent[msg_id] = {"code": code, "sent": time.time(), "queued": queued, "tag": tag}
        if queued:
            self._queue.append(frame)
        else:
            try:
                await ws.send_str(frame)
            except (aiohttp.ClientError, ConnectionError):
                # went down under us: a reconnect sends it, as JupyterLab's queue does
                self.sent[msg_id]["queued"] = True
                self._queue.append(frame)
        return msg_id

    def describe(self) -> str:
        """The connection's story, for a failure message."""
        events = [(t, "connect") for t in self.connects] + [(t, "drop") for t in self.drops]
        events += [(t, f"refused {code}") for t, code in self.refusals]
        story = ", ".join(
            f"{time.strftime('%H:%M:%S', time.localtime(t))} {e}" for t, e in sorted(events)[-12:]
        )
        return (
            f"{'connected' if self.connected.is_set() else 'not connected'}, "
            f"{len(self._queue)} queued; last: {story}"
        )

    def reply_clock(self, msg_id: str) -> str:
        """When the replies to a cell came, for a failure message."""
        return ", ".join(
            time.strftime("%H:%M:%S", time.localtime(t)) for t in self.reply_times[msg_id]
        )

    def answered(self, msg_id: str) -> bool:
        return bool(self.replies.get(msg_id))

    def done(self, msg_id: str) -> bool:
        """Replied, and its output is complete (the kernel went idle after it)."""
        return self.answered(msg_id) and msg_id in self._idle

    def output(self, msg_id: str) -> str:
        return "".join(self.outputs.get(msg_id, []))

    async def wait(self, msg_ids: list[str], timeout: float, complete: bool = False) -> bool:
        """Wait until every cell in `msg_ids` is answered (and idle, with `complete`)."""
        check = self.done if complete else self.answered
        deadline = time.monotonic() + timeout
        async with self._news:
            while not all(check(m) for m in msg_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._news.wait(), left)
                except asyncio.TimeoutError:
                    return False
        return True

    async def run(self, code: str, timeout: float = 60, tag: Any = None) -> tuple[str, dict]:
        """Execute `code` and wait for its reply and output: (text output, execute_reply)."""
        msg_id = await self.send(code, tag)
        if not await self.wait([msg_id], timeout):
            raise TimeoutError(f"{self.label}: no reply in {timeout:.0f} s to {code[:60]!r}")
        # the output comes on another channel: it is complete once the kernel is idle again
        await self.wait([msg_id], 10, complete=True)
        return self.output(msg_id), self.replies[msg_id][0]


async def run_cell(server_url: str, kernel_id: str, token: str, code: str, timeout=60) -> str:
    """Run one cell on its own connection to the kernel (opened and closed here), as a
    user coming back to a notebook does; returns its text output."""
    conn = KernelConnection(server_url, kernel_id, token, server_url.rsplit("/", 1)[-1])
    await conn.start()
    try:
        out, _ = await conn.run(code, timeout=timeout)
        return out
    finally:
        await conn.close()
