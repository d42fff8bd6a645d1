"""The EC2 endpoint the hub talks to in a simulated region: it forwards every request to
moto unchanged, except `CreateFleet` requests for an instance type that was told to run
out of capacity (`capacity-error TYPE`): those overrides are taken out of the request, and
the answer carries an `Errors` entry for each (`InsufficientInstanceCapacity`), as EC2's
does; a fleet left with no override gets no instance at all.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web

OVERRIDE = re.compile(r"^LaunchTemplateConfigs\.(\d+)\.Overrides\.(\d+)\.(.+)$")
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


class CapacityErrors:
    """Instance types (per market: spot, on-demand or any) that have no capacity now."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}

    def set(self, instance_type: str, market: str = "spot") -> None:
        self.types[instance_type] = market

    def clear(self, instance_type: str) -> None:
        self.types.pop(instance_type, None)

    def fails(self, instance_type: str, market: str) -> bool:
        armed = self.types.get(instance_type)
        return armed is not None and armed in {market, "any"}


def split_fleet(
    params: list[tuple[str, str]], errors: CapacityErrors
) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """The request without the overrides that fail, and what failed (type, subnet, lt)."""
    market = dict(params).get("TargetCapacitySpecification.DefaultTargetCapacityType", "")
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    rest: list[tuple[str, str]] = []
    for key, value in params:
        m = OVERRIDE.match(key)
        if m:
            overrides.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = value
        else:
            rest.append((key, value))
    failed: list[dict[str, str]] = []
    kept: dict[str, list[dict[str, str]]] = {}
    for (config, _), fields in sorted(overrides.items(), key=lambda i: (i[0][0], int(i[0][1]))):
        if errors.fails(fields.get("InstanceType", ""), market or "on-demand"):
            failed.append({**fields, "Lifecycle": market or "on-demand", "Config": config})
        else:
            kept.setdefault(config, []).append(fields)
    for config, items in kept.items():
        for number, fields in enumerate(items, 1):
            for name, value in fields.items():
                rest.append((f"LaunchTemplateConfigs.{config}.Overrides.{number}.{name}", value))
    return rest, failed


def error_items(failed: list[dict[str, str]]) -> str:
    items = []
    for f in failed:
        items.append(
            "<item><launchTemplateAndOverrides><overrides>"
            f"<instanceType>{escape(f.get('InstanceType', ''))}</instanceType>"
            f"<subnetId>{escape(f.get('SubnetId', ''))}</subnetId>"
            "</overrides></launchTemplateAndOverrides>"
            f"<lifecycle>{escape(f['Lifecycle'])}</lifecycle>"
            "<errorCode>InsufficientInstanceCapacity</errorCode>"
            "<errorMessage>There is no Spot capacity available that matches your request."
            "</errorMessage></item>"
        )
    return "".join(items)


def empty_fleet(failed: list[dict[str, str]]) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>{secrets.token_hex(16)}</requestId>"
        f"<fleetId>fleet-{secrets.token_hex(8)}</fleetId>"
        f"<errorSet>{error_items(failed)}</errorSet><fleetInstanceSet/>"
        "</CreateFleetResponse>"
    )


def with_errors(answer: str, failed: list[dict[str, str]]) -> str:
    if "<errorSet>" in answer:
        return answer.replace("<errorSet>", "<errorSet>" + error_items(failed), 1)
    return answer.replace(
        "</CreateFleetResponse>",
        f"<errorSet>{error_items(failed)}</errorSet></CreateFleetResponse>",
    )


class EC2Proxy:
    """An aiohttp app forwarding to `upstream` (moto's server)."""

    def __init__(self, upstream: str, errors: CapacityErrors):
        self.upstream = upstream.rstrip("/")
        self.errors = errors
        self.fleet_errors = 0  # fleets answered with Errors (for `list`)
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_route("*", "/{path:.*}", self.forward)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        failed: list[dict[str, str]] = []
        if request.method == "POST" and b"Action=CreateFleet" in body:
            params = parse_qsl(body.decode(), keep_blank_values=True)
            params, failed = split_fleet(params, self.errors)
            if failed:
                self.fleet_errors += 1
                if not any(OVERRIDE.match(k) for k, _ in params):
                    return web.Response(text=empty_fleet(failed), content_type="text/xml")
                body = urlencode(params).encode()
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            if failed and upstream.status == 200:
                data = with_errors(data.decode(), failed).encode()
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in HOP_HEADERS | {"content-encoding"}
            }
            return web.Response(status=upstream.status, body=data, headers=out)
