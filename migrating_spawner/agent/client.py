"""The hub's side of the host agent: one small async client per host."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from ..hosts.base import Host, HostError


class AgentError(HostError):
    """The agent answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AgentUnreachable(AgentError):
    """No answer from the agent: the host may be gone."""


class AgentClient:
    """Talks to one host's agent. Every call has a timeout; reads retry briefly."""

    def __init__(self, host: Host, timeout: float = 10, retries: int = 2):
        self.host = host
        self.timeout = timeout
        self.retries = retries

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Any:
        url = self.host.agent_url.rstrip("/") + path
        headers = {"Authorization": f"token {self.host.agent_token}"}
        # only idempotent reads are retried: a POST that timed out may have happened
        attempts = 1 + ((self.retries if retries is None else retries) if method == "GET" else 0)
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)
                ) as session:
                    async with session.request(method, url, json=body, headers=headers) as resp:
                        text = await resp.text()
                        if resp.status >= 400:
                            raise AgentError(
                                f"agent on {self.host.id}: {method} {path} -> {resp.status}: "
                                f"{text.strip()[:500]}",
                                status=resp.status,
                            )
                        return await resp.json() if text else None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                last = e
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.2 * 2**attempt)
        raise AgentUnreachable(f"agent on host {self.host.id} unreachable: {last!r}")

    async def status(self, **kw: Any) -> dict[str, Any]:
        return await self.request("GET", "/status", **kw)

    async def free_port(self) -> int:
        return (await self.request("GET", "/free-port"))["port"]

    async def notice(self) -> dict[str, Any] | None:
        try:
            return await self.request("GET", "/notice", retries=0, timeout=5)
        except AgentError as e:
            if e.status == 404:
                return None
            raise

    async def reclaim(self, notice_seconds: float) -> dict[str, Any]:
        return await self.request("POST", "/reclaim", {"notice_seconds": notice_seconds})

    async def shutdown(self) -> None:
        await self.request("POST", "/shutdown", {})

    async def start_process(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        cwd: str,
        files: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start `cmd`; `files` ({path relative to the host's disk: text}) are written first."""
        body: dict[str, Any] = {"cmd": cmd, "env": env, "cwd": cwd}
        if files:
            body["files"] = files
        return await self.request("POST", f"/processes/{name}", body)

    async def process(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"/processes/{name}")
        except AgentError as e:
            if e.status == 404:
                return None
            raise

    async def stop_process(self, name: str, grace: float = 5) -> dict[str, Any] | None:
        try:
            return await self.request(
                "DELETE", f"/processes/{name}?grace={grace}", timeout=grace + 10
            )
        except AgentError as e:
            if e.status == 404:
                return None
            raise

    async def log(self, name: str, tail: int = 200) -> list[str]:
        try:
            return (await self.request("GET", f"/processes/{name}/log?tail={tail}"))["lines"]
        except AgentError:
            return []

    async def snapshot_home(
        self,
        root: str,
        store: dict[str, Any],
        previous: dict[str, Any] | None,
        exclude: list[str],
        timeout: float,
    ) -> dict[str, Any]:
        body = {"root": root, "store": store, "previous": previous, "exclude": exclude}
        return await self.request("POST", "/home/snapshot", body, timeout=timeout)

    async def restore_home(
        self,
        root: str,
        files: dict[str, Any],
        store: dict[str, Any],
        current: dict[str, Any] | None,
        timeout: float,
    ) -> dict[str, Any]:
        body = {"root": root, "files": files, "store": store, "current": current}
        return await self.request("POST", "/home/restore", body, timeout=timeout)
