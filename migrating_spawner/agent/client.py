"""The hub's side of the host agent: one client per host, over one shared HTTP session.

Get clients from the provider (`HostProvider.agent(host)`), which caches one per host and
gives it the provider's documented timeouts. Every call has a timeout; idempotent reads are
retried with `jupyterhub.utils.exponential_backoff` for up to `retry` seconds. A caller that
only wants a quick look (is the process there, is there a notice) says `quick=True`: one try
with the short `probe` timeout, so a dead host costs seconds, not a retry budget.

An `https` agent URL is reached only when the agent presents the certificate pinned at its
registration (`host.agent_fingerprint`, `aiohttp.Fingerprint`; agent/tls.py); plain HTTP
only to a loopback address (the local provider's agents).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import random
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp

from .host import Host, HostError

try:
    from jupyterhub.httpclient import JupyterHubHTTPClient
    from jupyterhub.utils import exponential_backoff
except ImportError:  # Enterprise Gateway 3 runs kernels from a venv without JupyterHub
    JupyterHubHTTPClient = None
    exponential_backoff = None


T = TypeVar("T")


class AgentError(HostError):
    """The agent answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AgentUnreachable(AgentError):
    """No answer from the agent: the host may be gone."""


class AgentCertificateError(AgentError):
    """The agent's address answered with a certificate other than the one pinned at its
    registration (or there is no pin, or plain HTTP to a host on a network): refused,
    never retried."""


def transport(host: Host) -> aiohttp.Fingerprint | None:
    """How to reach `host`'s agent: its pinned certificate for https, None for plain HTTP
    (loopback only); AgentCertificateError for anything else."""
    scheme = host.agent_url.partition("://")[0].lower()
    if scheme == "https":
        try:
            digest = bytes.fromhex(host.agent_fingerprint)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise AgentCertificateError(
                f"agent on host {host.id}: no certificate pinned at its registration "
                f"(agent_fingerprint {host.agent_fingerprint!r}): refusing {host.agent_url}"
            )
        return aiohttp.Fingerprint(digest)
    try:
        loopback = scheme == "http" and ipaddress.ip_address(host.address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise AgentCertificateError(
            f"agent on host {host.id}: refusing {host.agent_url}: plain HTTP is for loopback "
            "agents only (a host on a network is reached over HTTPS with a pinned certificate)"
        )
    return None


@dataclasses.dataclass(frozen=True)
class AgentTimeouts:
    """Seconds an agent call may take (the provider's `agent_*_timeout` traits)."""

    #: one request (calls that carry their own budget, e.g. a snapshot, pass `timeout=`)
    request: float = 10
    #: how long a failed idempotent read is retried, with exponential backoff (0: never)
    retry: float = 5
    #: one try of a `quick=True` call
    probe: float = 3


# aiohttp sessions belong to one event loop: one per loop that asks (tests run many loops)
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)


def shared_session() -> aiohttp.ClientSession:
    """This process's HTTP session for agent traffic, created on first use.

    Outside a hub (gateways run the kernel adapters) a lazily created one per event loop;
    inside the hub `send` uses JupyterHub's own shared client instead (`jupyterhub.httpclient`,
    which the hub configures and closes at shutdown).
    """
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _sessions[loop] = aiohttp.ClientSession()
    return session


async def close_shared_session() -> None:
    """Close this loop's own session (at shutdown; the next call makes a new one)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` for command-line tools and exit hooks: the loop's agent session
    is closed with it (aiohttp would report it unclosed)."""

    async def main() -> T:
        try:
            return await coro
        finally:
            await close_shared_session()

    return asyncio.run(main())


def _in_hub() -> bool:
    return JupyterHubHTTPClient is not None and JupyterHubHTTPClient.initialized()


async def send(method: str, url: str, **kw: Any) -> aiohttp.ClientResponse:
    """One HTTP request over the shared session (the caller reads and releases it)."""
    if _in_hub():
        return await JupyterHubHTTPClient.loop_instance().fetch(
            url, method=method, raise_for_status=False, **kw
        )
    return await shared_session().request(method, url, **kw)


async def _retry(attempt, fail_message: str, timeout: float) -> Any:
    """`attempt()` until it returns something truthy, for up to `timeout` seconds."""
    if exponential_backoff is not None:
        return await exponential_backoff(
            attempt, fail_message, start_wait=0.1, max_wait=1, timeout=timeout
        )
    # the same full-jitter schedule where JupyterHub is not installed (Enterprise Gateway 3)
    loop = asyncio.get_running_loop()
    deadline, wait = loop.time() + timeout, 0.1
    while not (result := await attempt()):
        remaining = deadline - loop.time()
        if remaining < 0:
            raise asyncio.TimeoutError(fail_message)
        await asyncio.sleep(min(remaining, random.uniform(0, wait)))
        wait = min(1.0, wait * 2)
    return result


class AgentClient:
    """Talks to one host's agent. Every call has a timeout; reads retry with backoff."""

    def __init__(self, host: Host, timeouts: AgentTimeouts | None = None):
        self.host = host
        self.timeouts = timeouts or AgentTimeouts()

    async def _once(self, method: str, url: str, body: Any, timeout: float) -> Any:
        headers = {"Authorization": f"token {self.host.agent_token}"}
        pin = transport(self.host)  # checked before the secret goes anywhere
        kw: dict[str, Any] = {"ssl": pin} if pin is not None else {}
        try:
            resp = await send(
                method,
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                **kw,
            )
        except aiohttp.ServerFingerprintMismatch as e:
            raise AgentCertificateError(
                f"agent on host {self.host.id}: {e.host}:{e.port} presented a certificate "
                f"with SHA-256 {e.got.hex()}, not the one pinned at its registration "
                f"({e.expected.hex()}): refused (a man in the middle, or not this host's agent)"
            ) from None
        async with resp:
            text = await resp.text()
            if resp.status >= 400:
                raise AgentError(
                    f"agent on {self.host.id}: {method} {url.split('/', 3)[-1]} -> "
                    f"{resp.status}: {text.strip()[:500]}",
                    status=resp.status,
                )
            return await resp.json() if text else None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        quick: bool = False,
    ) -> Any:
        """One call; `timeout` overrides the per-try timeout, `quick` makes it a probe."""
        url = self.host.agent_url.rstrip("/") + path
        per_try = self.timeouts.probe if quick else (timeout or self.timeouts.request)
        # only idempotent reads are retried: a POST that timed out may have happened
        retry_for = 0 if quick or method != "GET" else self.timeouts.retry
        errors: list[BaseException] = []

        async def attempt() -> tuple[Any] | None:
            try:
                return (await self._once(method, url, body, per_try),)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                errors.append(e)
                return None

        if retry_for > 0:
            try:
                result = await _retry(attempt, f"{method} {path}", retry_for)
            except asyncio.TimeoutError:
                result = None
        else:
            result = await attempt()
        if result is None:
            raise AgentUnreachable(
                f"agent on host {self.host.id} unreachable ({len(errors)} tries): {errors[-1]!r}"
            )
        return result[0]

    async def status(self, quick: bool = False) -> dict[str, Any]:
        return await self.request("GET", "/status", quick=quick)

    async def free_port(self) -> int:
        return (await self.request("GET", "/free-port"))["port"]

    async def notice(self, quick: bool = False) -> dict[str, Any] | None:
        try:
            return await self.request("GET", "/notice", quick=quick)
        except AgentError as e:
            if e.status == 404:
                return None
            raise

    async def reclaim(self, notice_seconds: float) -> dict[str, Any]:
        return await self.request("POST", "/reclaim", {"notice_seconds": notice_seconds})

    async def shutdown(self, quick: bool = False) -> None:
        await self.request("POST", "/shutdown", {}, quick=quick)

    async def start_process(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        cwd: str,
        files: dict[str, str] | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Start `cmd`; `files` ({path relative to the host's disk: text}) are written first.
        `user`: the hub user it is for (an agent that runs processes as users runs it as
        that user's unix user, owning `cwd`; others run it as themselves)."""
        body: dict[str, Any] = {"cmd": cmd, "env": env, "cwd": cwd}
        if files:
            body["files"] = files
        if user is not None:
            body["user"] = user
        return await self.request("POST", f"/processes/{name}", body)

    async def start_standby(self, modules: list[str]) -> str:
        """Start a server process ahead with `modules` imported (agent/standby.py): the next
        process started there becomes it. Its state: "importing" or "ready"."""
        return (await self.request("POST", "/standby", {"modules": modules}))["standby"]

    async def process(self, name: str, quick: bool = False) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"/processes/{name}", quick=quick)
        except AgentError as e:
            if e.status == 404:
                return None
            raise

    async def stop_process(
        self, name: str, grace: float = 5, quick: bool = False
    ) -> dict[str, Any] | None:
        """Stop `name` (SIGTERM, SIGKILL after `grace` s); `quick` for a host that may be
        dying: the call then waits only the probe timeout beyond the grace."""
        timeout = grace + (self.timeouts.probe if quick else self.timeouts.request)
        try:
            return await self.request("DELETE", f"/processes/{name}?grace={grace}", timeout=timeout)
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
        exclude: list[str],
        timeout: float,
        *,
        parent_id: str | None = None,
        checkpoint_id: str | None = None,
    ) -> dict[str, Any]:
        """Snapshot `root`; only changes since `parent_id` if the agent kept its table.
        The agent keeps this snapshot's table as `checkpoint_id`."""
        body = {
            "root": root,
            "store": store,
            "exclude": exclude,
            "parent_id": parent_id,
            "checkpoint_id": checkpoint_id,
        }
        return await self.request("POST", "/home/snapshot", body, timeout=timeout)

    async def restore_home(
        self,
        root: str,
        files: dict[str, Any],
        store: dict[str, Any],
        timeout: float,
        *,
        current_id: str | None = None,
        checkpoint_id: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Restore a verified file table; `current_id`: the checkpoint restored there before.
        `user`: whose home it is (an agent that runs processes as users gives them the files)."""
        body: dict[str, Any] = {
            "root": root,
            "files": files,
            "store": store,
            "current_id": current_id,
            "checkpoint_id": checkpoint_id,
        }
        if user is not None:
            body["user"] = user
        return await self.request("POST", "/home/restore", body, timeout=timeout)
