"""The instance metadata service (IMDSv2) as the agent on an EC2 instance reads it.

A session token (`PUT /latest/api/token`) is cached and sent with every read; a 401 (the
token expired, or the service restarted) gets a new one once. The endpoint is EC2's
`http://169.254.169.254/` unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise (the
variable boto3 reads too; the machine simulator sets it).

`watch_notices` polls `spot/instance-action` and `events/recommendations/rebalance` (AWS
suggests every 5 s; we poll every 2 s): both answer 404 until AWS marks the instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp

log = logging.getLogger("migrating.agent.imds")

DEFAULT_ENDPOINT = "http://169.254.169.254/"
TOKEN_TTL = 21600
INSTANCE_ACTION = "spot/instance-action"
REBALANCE = "events/recommendations/rebalance"


class IMDSError(Exception):
    """The metadata service did not answer as expected."""


class IMDSClient:
    def __init__(self, endpoint: str = "", timeout: float = 2.0):
        endpoint = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "")
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/") + "/"
        self.timeout = aiohttp.ClientTimeout(timeout)
        self._token: str | None = None
        self._session: aiohttp.ClientSession | None = None
        #: tokens fetched so far (a test can see the token is cached)
        self.tokens_fetched = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            headers = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}
            async with self._http().put(self.endpoint + "latest/api/token", headers=headers) as r:
                if r.status != 200:
                    raise IMDSError(f"token: {r.status}")
                self._token = await r.text()
                self.tokens_fetched += 1
        return self._token

    async def get(self, path: str) -> str | None:
        """`latest/meta-data/<path>`; None when it answers 404 (e.g. no notice)."""
        url = (
            self.endpoint + "latest/" + path
            if path == "user-data"
            else (self.endpoint + "latest/meta-data/" + path)
        )
        for attempt in range(2):
            headers = {"X-aws-ec2-metadata-token": await self.token(refresh=attempt > 0)}
            try:
                async with self._http().get(url, headers=headers) as r:
                    if r.status == 401 and attempt == 0:
                        continue  # the token expired: a new one, once
                    if r.status == 404:
                        return None
                    if r.status != 200:
                        raise IMDSError(f"{path}: {r.status}")
                    return await r.text()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise IMDSError(f"{path}: {e!r}") from e
        raise IMDSError(f"{path}: 401 with a fresh token")


def deadline_of(instance_action: str) -> float:
    """The epoch deadline of a `spot/instance-action` answer ({"action", "time"})."""
    data = json.loads(instance_action)
    return datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()


async def watch_notices(
    imds: IMDSClient,
    on_notice: Callable[[float, dict[str, Any]], Awaitable[None]],
    on_rebalance: Callable[[dict[str, Any]], Awaitable[None]],
    interval: float = 2.0,
) -> None:
    """Poll for an interruption and a rebalance recommendation; call back once each."""
    noticed = rebalanced = False
    while True:
        try:
            if not noticed:
                action = await imds.get(INSTANCE_ACTION)
                if action is not None:
                    noticed = True
                    await on_notice(deadline_of(action), json.loads(action))
            if not rebalanced:
                rebalance = await imds.get(REBALANCE)
                if rebalance is not None:
                    rebalanced = True
                    await on_rebalance(json.loads(rebalance))
        except (IMDSError, ValueError, KeyError) as e:
            log.warning("metadata poll failed: %s", e)
        await asyncio.sleep(interval)
