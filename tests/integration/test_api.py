"""The control API on a real hub: JupyterHub's own service auth decides who may call it,
and every error is a JSON answer with the status that says what went wrong."""

from __future__ import annotations

import secrets

import aiohttp
import pytest
import pytest_asyncio
from realhub import module_hub

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

NO_ACCESS = secrets.token_hex(16)  # a service with no roles
SERVER_ADMIN = secrets.token_hex(16)  # admin:servers, but no access to the service
ALICE_HELPER = secrets.token_hex(16)  # access to the service, and alice's servers only

SERVICES = f"""
c.JupyterHub.services += [
    {{"name": "no-access", "api_token": "{NO_ACCESS}"}},
    {{"name": "server-admin", "api_token": "{SERVER_ADMIN}"}},
    {{"name": "alice-helper", "api_token": "{ALICE_HELPER}"}},
]
c.JupyterHub.load_roles += [
    {{"name": "server-admin", "scopes": ["admin:servers"], "services": ["server-admin"]}},
    {{
        "name": "alice-helper",
        "scopes": ["access:services!service=migrate", "servers!user=alice"],
        "services": ["alice-helper"],
    }},
]
"""

# one hub and one server of alice's for the module: neither test changes what the other
# looks at (no test moves, stops or adds a server)
hub = module_hub(SERVICES, "api")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice_server(hub):
    await hub.spawn("alice")


async def raw(hub, method: str, path: str, token: str | None, body: bytes | None = None):
    """(status, content type, parsed JSON or None) of a call to the control API."""
    headers = {"Authorization": f"token {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, hub.url + "/services/migrate/api" + path, data=body, headers=headers
        ) as resp:
            kind = resp.headers.get("Content-Type", "").split(";")[0]
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, kind, data


def assert_json_error(answer, status: int, *words: str) -> None:
    got, kind, data = answer
    assert (got, kind) == (status, "application/json"), answer
    assert isinstance(data, dict) and data["status"] == status, answer
    for word in words:
        assert word in data["message"], answer


async def test_access_follows_jupyterhub_scopes(hub, alice_server):
    alice = await hub.user_token("alice")
    status, token = await hub.api(
        "POST", "/users/alice/tokens", body={"scopes": ["read:users!user=alice"]}
    )
    assert status == 201, token
    alice_narrow = token["token"]

    # no token, a token the hub does not know
    assert_json_error(await raw(hub, "GET", "/servers", None), 401, "token is required")
    assert_json_error(await raw(hub, "GET", "/servers", "not-a-token"), 403, "invalid")
    # known tokens without access:services!service=migrate: refused, whatever else they hold
    for token, who in (
        (NO_ACCESS, "service no-access"),
        (SERVER_ADMIN, "service server-admin"),
        (alice_narrow, "user alice"),
    ):
        assert_json_error(
            await raw(hub, "GET", "/servers", token),
            403,
            who,
            "access:services!service=migrate",
        )
        assert_json_error(await raw(hub, "POST", "/servers/alice/migrate", token), 403, who)
    assert (await hub.server_info("alice"))["state"] == "Running"

    # alice's own token (users are granted the service's access scope): her server only
    status, _, data = await raw(hub, "GET", "/servers", alice)
    assert status == 200 and [s["user"] for s in data["servers"]] == ["alice"]
    assert_json_error(await raw(hub, "GET", "/hosts", alice), 403, "admin:servers")
    # a service allowed alice's servers sees hers too (scopes, not only names, decide)
    status, _, data = await raw(hub, "GET", "/servers", ALICE_HELPER)
    assert status == 200 and [s["user"] for s in data["servers"]] == ["alice"], data
    status, _, data = await raw(hub, "GET", "/servers/alice/", ALICE_HELPER)
    assert status == 200 and data["state"] == "Running"
    assert_json_error(await raw(hub, "GET", "/hosts", ALICE_HELPER), 403, "admin:servers")
    # the hub's admin token: everything
    status, _, data = await raw(hub, "GET", "/hosts", hub.admin_token)
    assert status == 200 and [h["servers"] for h in data["hosts"]] == [["alice/"]]


async def test_errors_are_json_with_the_status_that_says_why(hub, alice_server):
    info = await hub.server_info("alice")
    host = info["host_id"]
    admin = hub.admin_token

    # unknown things: 404
    assert_json_error(await raw(hub, "GET", "/servers/carol/", admin), 404, "no server carol/")
    assert_json_error(await raw(hub, "POST", "/servers/carol/migrate", admin), 404, "carol")
    assert_json_error(await raw(hub, "GET", "/servers/alice/lab", admin), 404, "alice/lab")
    assert_json_error(await raw(hub, "POST", "/hosts/no-such-host/reclaim", admin), 404, "no host")
    assert_json_error(await raw(hub, "GET", "/no/such/path", admin), 404, "/no/such/path")
    # a verb a path does not take
    assert_json_error(await raw(hub, "GET", f"/hosts/{host}/reclaim", admin), 405)

    # bad input: 400 naming what is wrong, and nothing happens
    reclaim = f"/hosts/{host}/reclaim"
    for body, words in (
        (b'{"notice_seconds": "soon"}', ["notice_seconds", "soon"]),
        (b'{"notice_seconds": NaN}', ["notice_seconds", "between 0 and 3600"]),
        (b'{"notice_seconds": Infinity}', ["notice_seconds"]),
        (b'{"notice_seconds": -1}', ["notice_seconds"]),
        (b'{"notice_seconds": true}', ["notice_seconds"]),
        (b'{"notice_seconds": [5]}', ["notice_seconds"]),
        (b'{"notice": 5}', ["unknown field", "notice", "notice_seconds"]),
        (b"notice_seconds=5", ["not JSON"]),
        (b"[5]", ["JSON object"]),
        (b'{"notice_seconds": "50%"}', ["50%"]),  # a % is text, not a format
    ):
        assert_json_error(await raw(hub, "POST", reclaim, admin, body), 400, *words)
    migrate = "/servers/alice/migrate"
    assert_json_error(await raw(hub, "POST", migrate + "?wait=maybe", admin), 400, "wait", "maybe")
    assert_json_error(await raw(hub, "POST", migrate, admin, b'{"to": "x"}'), 400, "to")
    # an agent's push: the host's own secret, then a finite deadline
    [record] = [h for h in hub.hosts() if h["id"] == host]
    notices = "/notices"
    assert_json_error(
        await raw(hub, "POST", notices, "wrong", f'{{"host_id": "{host}"}}'.encode()), 403
    )
    for deadline in (b"NaN", b'"soon"', b"null", b"1"):
        body = b'{"host_id": "%s", "deadline": %s}' % (host.encode(), deadline)
        assert_json_error(await raw(hub, "POST", notices, record["agent_token"], body), 400)

    # none of it touched the server
    after = await hub.server_info("alice")
    assert (after["state"], after["host_id"]) == ("Running", host)
    assert not [e for e in after["events"] if "reclaim" in e["message"].lower()], after
