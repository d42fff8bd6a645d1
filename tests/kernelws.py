"""Run code in a kernel over its websocket, the way JupyterLab does (JSON protocol)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp


def execute_request(code: str, session: str) -> dict[str, Any]:
    msg_id = uuid.uuid4().hex
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "session": session,
            "username": "test",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


class KernelSocket:
    """One open kernel websocket; `run()` executes code and returns its text output."""

    def __init__(self, base_url: str, kernel_id: str, token: str):
        self.url = f"{base_url}/api/kernels/{kernel_id}/channels"
        self.token = token
        self.session_id = uuid.uuid4().hex
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> KernelSocket:
        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(
            self.url + f"?session_id={self.session_id}",
            headers={"Authorization": f"token {self.token}"},
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._http is not None:
            await self._http.close()

    async def run(
        self, code: str, timeout: float = 60, started: asyncio.Event | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Execute `code`; returns (stdout + results + errors as text, the execute_reply).
        `started` is set once the kernel is busy with it."""
        assert self.ws is not None
        request = execute_request(code, self.session_id)
        msg_id = request["header"]["msg_id"]
        await self.ws.send_str(json.dumps(request))
        output: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False

        async def collect() -> None:
            nonlocal reply, idle
            async for frame in self.ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"websocket ended: {frame.type}")
                msg = json.loads(frame.data)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    output.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    output.append(content["data"].get("text/plain", "") + "\n")
                elif kind == "error":
                    output.append(f"{content['ename']}: {content['evalue']}\n")
                elif kind == "execute_reply":
                    reply = content
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
                elif kind == "status" and started is not None:
                    started.set()
                if reply is not None and idle:
                    return
            raise ConnectionError("websocket closed before the reply")

        await asyncio.wait_for(collect(), timeout)
        assert reply is not None
        return "".join(output), reply
