"""Through the real hub and CHP: a kernel websocket that drops in a move reconnects at once,
lands in the hold, and is answered by the new server; nothing the client asks gets a 503/424.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from kernelws import execute_request
from realhub import module_hub
from test_move import wait_moved

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# one hub for both ways of moving, each with a user of its own
hub = module_hub('c.MigratingSpawner.home_mode = "shared"', "reconnect")
USERS = {"notice": "rea", "migrate": "reb"}

# what JupyterLab treats as "server not there": it then waits 10-30 s before it looks again
REFUSED = {503, 424}


class ReconnectingKernel:
    """A kernel websocket client that reconnects the moment its socket drops (same session
    id, no backoff) and, as JupyterLab does, looks the kernel up over HTTP when it drops.

    Every answer it gets is recorded: (seconds, "ws" or "GET", status or error name).
    """

    def __init__(self, base_url: str, kernel_id: str, token: str):
        self.ws_url = f"{base_url}/api/kernels/{kernel_id}/channels"
        self.model_url = f"{base_url}/api/kernels/{kernel_id}"
        self.headers = {"Authorization": f"token {token}"}
        self.session_id = execute_request("", "")["header"]["msg_id"]
        self.seen: list[tuple[float, str, int | str]] = []
        self.drops: list[tuple[float, int | None]] = []  # (seconds, close code)
        self.connected = asyncio.Event()
        self._replies: dict[str, asyncio.Future] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None
        self._lookups: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ReconnectingKernel:
        self._http = aiohttp.ClientSession(headers=self.headers)
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 30)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None and self._http is not None
        self._task.cancel()
        await asyncio.gather(self._task, *self._lookups, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        await self._http.close()

    def _note(self, what: str, status: int | str) -> None:
        self.seen.append((time.time(), what, status))

    async def _run(self) -> None:
        while True:
            self._ws = await self._connect()
            self.connected.set()
            async for frame in self._ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch(json.loads(frame.data))
            self.connected.clear()
            self.drops.append((time.time(), self._ws.close_code))
            task = asyncio.create_task(self._lookup())
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        assert self._http is not None
        while True:
            try:
                ws = await self._http.ws_connect(
                    f"{self.ws_url}?session_id={self.session_id}", max_msg_size=0
                )
            except aiohttp.WSServerHandshakeError as e:
                self._note("ws", e.status)
            except (aiohttp.ClientError, OSError) as e:
                self._note("ws", type(e).__name__)
            else:
                self._note("ws", 101)
                return ws
            await asyncio.sleep(0.05)

    async def _lookup(self) -> None:
        assert self._http is not None
        try:
            async with self._http.get(self.model_url) as r:
                self._note("GET", r.status)
        except (aiohttp.ClientError, OSError) as e:
            self._note("GET", type(e).__name__)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id")
        future = self._replies.get(parent)
        if future is not None and msg["msg_type"] == "execute_reply" and not future.done():
            future.set_result(msg["content"])

    async def run(self, code: str, timeout: float = 60) -> dict[str, Any]:
        """Execute code on the socket now open; returns the execute_reply content."""
        await asyncio.wait_for(self.connected.wait(), timeout)
        assert self._ws is not None
        request = execute_request(code, self.session_id)
        future = self._replies[request["header"]["msg_id"]] = asyncio.Future()
        await self._ws.send_str(json.dumps(request))
        return await asyncio.wait_for(future, timeout)


async def _poll(http: aiohttp.ClientSession, url: str, seen: list, stop: asyncio.Event) -> None:
    """GET url every 100 ms, recording each status (JupyterLab polls the same way)."""
    while not stop.is_set():
        try:
            async with http.get(url) as r:
                seen.append((time.time(), "poll", r.status))
        except (aiohttp.ClientError, OSError) as e:
            seen.append((time.time(), "poll", type(e).__name__))
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["notice", "migrate"])
async def test_kernel_websocket_reconnects_during_the_move_without_a_refusal(hub, how):
    user = USERS[how]
    await hub.spawn(user)
    token = await hub.user_token(user)
    session = await hub.new_session(user, token, "reconnect.ipynb")
    kernel_id = session["kernel"]["id"]
    base = f"{hub.url}/user/{user}"
    polled: list[tuple[float, str, int | str]] = []
    stop = asyncio.Event()
    async with ReconnectingKernel(base, kernel_id, token) as kernel:
        reply = await kernel.run("x = 42")
        assert reply["status"] == "ok", reply
        async with aiohttp.ClientSession(headers={"Authorization": f"token {token}"}) as http:
            poller = asyncio.create_task(_poll(http, f"{base}/api/kernels", polled, stop))
            try:
                old = (await hub.server_info(user))["host_id"]
                if how == "notice":
                    status, data = await hub.migrate_api(
                        "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 3}
                    )
                else:
                    status, data = await hub.migrate_api("POST", f"/servers/{user}/migrate")
                assert status == 202, data
                await wait_moved(hub, user, old, timeout=90)
                # the old server was killed: the socket dropped and came back
                reply = await kernel.run("print(x)\nx + 1")
            finally:
                stop.set()
                await poller
        assert reply["status"] == "ok", reply
        assert kernel.drops, "the old server's socket never dropped"
        seen = sorted(kernel.seen + polled)
        dropped = kernel.drops[0][0]
        # every handshake and request after the drop, and the reconnect's answer
        after = [(round(t - dropped, 2), what, status) for t, what, status in seen if t >= dropped]
        print(f"\nafter the drop (s, what, status): {after}")
        assert not [s for s in seen if s[2] in REFUSED], after
        # the reconnect came while the route was held, and the hold bridged it
        assert f"Bridged websocket /user/{user}/api/kernels/{kernel_id}/channels" in (
            hub.log_path.read_text()
        ), after
        assert [s for s in after if s[1] == "ws"][-1][2] == 101, after
        # nothing but answers: no connection errors either
        assert {status for _, _, status in seen} <= {101, 200}, after
