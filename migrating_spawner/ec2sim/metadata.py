"""One simulated instance's metadata service, shaped like EC2's IMDSv2.

`PUT /latest/api/token` (header `X-aws-ec2-metadata-token-ttl-seconds`) gives a token;
every GET needs it in `X-aws-ec2-metadata-token` (IMDSv2 required: 401 without, or with an
expired one). `spot/instance-action` and `events/recommendations/rebalance` answer 404
until the simulator arms them, as on EC2.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class MetadataService:
    """What IMDS answers for one instance."""

    def __init__(self, instance: dict[str, Any], address: str, user_data: bytes = b""):
        self.instance_id = instance["InstanceId"]
        self.values = {
            "instance-id": self.instance_id,
            "instance-type": instance.get("InstanceType", ""),
            "local-ipv4": address,
            "placement/availability-zone": instance.get("Placement", {}).get(
                "AvailabilityZone", ""
            ),
            "instance-life-cycle": instance.get("InstanceLifecycle") or "on-demand",
            "ami-id": instance.get("ImageId", ""),
        }
        self.user_data = user_data
        self.instance_action: dict[str, str] | None = None
        self.rebalance: dict[str, str] | None = None
        self.tokens: dict[str, float] = {}  # token -> expiry
        #: served requests by path (tests and `list` show that the agent polls)
        self.hits: dict[str, int] = {}

    def arm_interruption(self, deadline: float, action: str = "terminate") -> None:
        self.instance_action = {"action": action, "time": iso(deadline)}

    def arm_rebalance(self) -> None:
        self.rebalance = {"noticeTime": iso(time.time())}

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.put("/latest/api/token", self.put_token),
                web.get("/latest/user-data", self.get_user_data),
                web.get("/latest/meta-data/{path:.*}", self.get_meta),
            ]
        )
        return app

    async def put_token(self, request: web.Request) -> web.Response:
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            return web.Response(status=400, text="token TTL header required")
        if not 1 <= ttl <= 21600:
            return web.Response(status=400, text="token TTL must be 1..21600 s")
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.tokens = {t: e for t, e in self.tokens.items() if e > now}
        self.tokens[token] = now + ttl
        return web.Response(text=token, headers={TTL_HEADER: str(ttl)})

    def _authorised(self, request: web.Request) -> bool:
        expiry = self.tokens.get(request.headers.get(TOKEN_HEADER, ""))
        return expiry is not None and expiry > time.time()

    async def get_user_data(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        return web.Response(body=self.user_data)

    async def get_meta(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        path = request.match_info["path"].strip("/")
        self.hits[path] = self.hits.get(path, 0) + 1
        if path == "spot/instance-action":
            if self.instance_action is None:
                raise web.HTTPNotFound()
            return web.Response(text=json.dumps(self.instance_action))
        if path == "events/recommendations/rebalance":
            if self.rebalance is None:
                raise web.HTTPNotFound()
            return web.Response(text=json.dumps(self.rebalance))
        if path in self.values:
            return web.Response(text=self.values[path])
        if path == "":
            return web.Response(text="\n".join(sorted(self.values)))
        raise web.HTTPNotFound()
