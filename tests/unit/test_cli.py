"""The `jupyterhub-migrate` CLI against a small real HTTP server that answers like the API."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from migrating_spawner.service import cli

TOKEN = "admin-token"
PREFIX = "/hub-prefix/services/migrate/api/"

HOSTS = {
    "hosts": [
        {
            "id": "local-10-aaaaaa",
            "address": "127.0.0.10",
            "agent_url": "http://127.0.0.10:8900",
            "instance_type": "small",
            "market": "spot",
            "disk": "/d",
            "meta": {},
            "servers": ["alice/", "bob/gpu"],
        },
        {
            "id": "local-11-bbbbbb",
            "address": "127.0.0.11",
            "agent_url": "http://127.0.0.11:8900",
            "instance_type": "medium",
            "market": "on-demand",
            "disk": "/d",
            "meta": {},
            "servers": [],
        },
    ]
}
ALICE = {
    "user": "alice",
    "server": "",
    "state": "Running",
    "host_id": "local-10-aaaaaa",
    "address": "127.0.0.10:40000",
    "url": "/user/alice/",
    "home_mode": "synced",
    "checkpoint_id": None,
    "instance_type": "small",
}
BOB = {**ALICE, "user": "bob", "server": "gpu", "state": "Suspended", "host_id": None}
BOB["address"] = None


class FakeAPI:
    """Answers like service/api.py does, and records what it was asked."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def error(self, status: int, message: str) -> web.Response:
        return web.json_response({"status": status, "message": message}, status=status)

    @web.middleware
    async def auth(self, request: web.Request, handler):
        body = await request.json() if request.can_read_body else {}
        self.calls.append((request.method, request.path_qs, body))
        if request.headers.get("Authorization") != f"token {TOKEN}":
            return self.error(403, "invalid or expired token")
        return await handler(request)

    async def hosts(self, request):
        return web.json_response(HOSTS)

    async def servers(self, request):
        return web.json_response({"servers": [ALICE, BOB]})

    async def server(self, request):
        if request.match_info["user"] != "alice":
            return self.error(404, f"no server {request.match_info['user']}/")
        events = [{"message": "Host local-10-aaaaaa ready", "time": 1}, {"message": "Moved"}]
        return web.json_response({**ALICE, "events": events})

    async def migrate(self, request):
        if request.query.get("wait") == "true":
            move = {"from": "local-10-aaaaaa", "to": "local-12-cccccc", "total": 3.2}
            return web.json_response(
                {**ALICE, "host_id": "local-12-cccccc", "address": "127.0.0.12:4", "move": move}
            )
        return web.json_response({**ALICE, "state": "Floating"}, status=202)

    async def reclaim(self, request):
        body = await request.json()
        if request.match_info["host"] == "gone":
            return self.error(404, "no host gone")
        notice = {"action": "terminate", "time": "2026-11-02T10:00:00Z", "deadline": 1.0}
        data = {"host_id": request.match_info["host"], "notice": notice, "moving": ["alice/"]}
        data["notice_seconds"] = body["notice_seconds"]  # echoed so the test can see it
        return web.json_response(data, status=202)

    async def broken(self, request):
        return web.Response(status=502, text="<html>Bad Gateway</html>")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        app.add_routes(
            [
                web.get(PREFIX + "hosts", self.hosts),
                web.post(PREFIX + "hosts/{host}/reclaim", self.reclaim),
                web.get(PREFIX + "servers", self.servers),
                web.post(PREFIX + "servers/{user}/{server:[^/]*}/migrate", self.migrate),
                web.get(PREFIX + "servers/{user}/{server:[^/]*}", self.server),
            ]
        )
        return app


@pytest.fixture
async def api():
    fake = FakeAPI()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}/hub-prefix/"
    yield fake
    await runner.cleanup()


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    # the CLI blocks (requests): run it beside the loop that serves the fake API
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_hosts_table(api, capsys):
    code, out, err = await run_cli(capsys, "--url", api.url, "--token", TOKEN, "hosts")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "INSTANCE_TYPE", "MARKET", "SERVERS"]
    assert lines[1].split() == ["local-10-aaaaaa", "127.0.0.10", "small", "spot", "alice/,bob/gpu"]
    assert lines[2].split()[:4] == ["local-11-bbbbbb", "127.0.0.11", "medium", "on-demand"]
    # columns line up
    assert lines[1].index("127.0.0.10") == lines[0].index("ADDRESS")
    assert api.calls == [("GET", "/hub-prefix/services/migrate/api/hosts", {})]


async def test_list_json(api, capsys):
    code, out, _ = await run_cli(capsys, "--url", api.url, "--token", TOKEN, "--json", "list")
    assert code == 0
    assert json.loads(out) == {"servers": [ALICE, BOB]}


async def test_list_table_shows_missing_values_as_dashes(api, capsys):
    code, out, _ = await run_cli(capsys, "--url", api.url, "--token", TOKEN, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["USER", "SERVER", "STATE", "HOST_ID", "ADDRESS"]
    assert lines[2].split() == ["bob", "gpu", "Suspended", "-", "-"]


async def test_info(api, capsys):
    code, out, _ = await run_cli(capsys, "--url", api.url, "--token", TOKEN, "info", "alice")
    assert code == 0
    assert "state: Running" in out.splitlines()
    assert out.splitlines()[-3:] == ["events:", "  Host local-10-aaaaaa ready", "  Moved"]
    assert api.calls[-1][:2] == ("GET", PREFIX + "servers/alice/")


async def test_migrate_and_wait(api, capsys):
    code, out, _ = await run_cli(capsys, "--url", api.url, "--token", TOKEN, "migrate", "alice")
    assert code == 0
    # the server is leaving that host, not floating on it
    assert out.strip() == "alice: moving from local-10-aaaaaa (127.0.0.10:40000)"
    assert api.calls[-1][:2] == ("POST", PREFIX + "servers/alice//migrate")

    code, out, _ = await run_cli(
        capsys, "--url", api.url, "--token", TOKEN, "migrate", "alice", "--wait"
    )
    assert code == 0
    assert out.strip() == "alice: moved from local-10-aaaaaa to local-12-cccccc (127.0.0.12:4)"
    assert api.calls[-1][1] == PREFIX + "servers/alice//migrate?wait=true"


async def test_reclaim(api, capsys):
    code, out, _ = await run_cli(
        capsys, "--url", api.url, "--token", TOKEN, "reclaim", "local-10-aaaaaa", "--notice", "5"
    )
    assert code == 0
    assert out.strip() == (
        "local-10-aaaaaa will be reclaimed at 2026-11-02T10:00:00Z; moving alice/"
    )
    assert api.calls[-1] == (
        "POST",
        PREFIX + "hosts/local-10-aaaaaa/reclaim",
        {"notice_seconds": 5.0},
    )


async def test_env_vars_give_url_and_token(api, capsys, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_URL", api.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    code, out, _ = await run_cli(capsys, "--json", "hosts")
    assert code == 0
    assert json.loads(out) == HOSTS
    # flags win over the environment
    code, _, err = await run_cli(capsys, "--token", "wrong", "hosts")
    assert code == 1
    assert err.strip() == "jupyterhub-migrate: 403: invalid or expired token"


async def test_missing_url(capsys):
    code, out, err = await run_cli(capsys, "--token", TOKEN, "list")
    assert code == 1 and out == ""
    assert err.strip() == "jupyterhub-migrate: no hub URL: set JUPYTERHUB_URL or pass --url"


async def test_missing_token(api, capsys):
    code, out, err = await run_cli(capsys, "--url", api.url, "list")
    assert code == 1 and out == ""
    assert err.strip() == "jupyterhub-migrate: no token: set JUPYTERHUB_API_TOKEN or pass --token"
    assert api.calls == []  # nothing was sent


async def test_http_error_exits_1_with_the_message(api, capsys):
    code, out, err = await run_cli(capsys, "--url", api.url, "--token", TOKEN, "info", "carol")
    assert code == 1 and out == ""
    assert err.strip() == "jupyterhub-migrate: 404: no server carol/"

    code, _, err = await run_cli(
        capsys, "--url", api.url, "--token", TOKEN, "--json", "reclaim", "gone"
    )
    assert code == 1
    assert err.strip() == "jupyterhub-migrate: 404: no host gone"


async def test_error_without_json_body(api, capsys):
    # not a route of the fake API: aiohttp answers 404 in plain text
    url = api.url + "nope/"
    code, _, err = await run_cli(capsys, "--url", url, "--token", TOKEN, "list")
    assert code == 1
    assert err.strip() == (
        f"jupyterhub-migrate: {url.rstrip('/')} is not a JupyterHub with the `migrate` service: "
        f"GET {url}services/migrate/api/servers answered 404 (text/plain), not the API's JSON"
    )


@pytest.fixture
async def web_page():
    """A plain web site: every path answers 200 with an HTML page."""

    async def page(request):
        return web.Response(
            text="<html><body>" + "Welcome! " * 100 + "</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.add_routes([web.get("/{tail:.*}", page)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    await runner.cleanup()


async def test_url_of_a_web_page_says_it_is_not_a_hub(web_page, capsys):
    code, out, err = await run_cli(capsys, "--url", web_page, "--token", TOKEN, "hosts")
    assert code == 1 and out == ""
    assert err.strip() == (
        f"jupyterhub-migrate: {web_page} is not a JupyterHub with the `migrate` service: "
        f"GET {web_page}/services/migrate/api/hosts answered 200 (text/html), not the API's JSON"
    )
    assert "<html" not in err


async def test_url_without_scheme(api, capsys):
    address = api.url.removeprefix("http://")
    code, out, err = await run_cli(capsys, "--url", address, "--token", TOKEN, "list")
    assert code == 1 and out == ""
    assert err.strip() == (
        f"jupyterhub-migrate: --url {address!r} is not an http:// or https:// URL with a host "
        "(e.g. http://127.0.0.1:8000)"
    )
    assert api.calls == []


async def test_flags_before_or_after_the_verb(api, capsys):
    for argv in (
        ["--url", api.url, "--token", TOKEN, "info", "alice", "--json"],
        ["--json", "info", "alice", "--url", api.url, "--token", TOKEN],
        ["info", "--token", TOKEN, "alice", "--url", api.url, "--json"],
    ):
        code, out, err = await run_cli(capsys, *argv)
        assert (code, err) == (0, ""), argv
        assert json.loads(out)["user"] == "alice"
    # a flag before the verb is not reset by the verb's own parser
    code, out, _ = await run_cli(capsys, "--json", "--url", api.url, "--token", TOKEN, "hosts")
    assert code == 0 and json.loads(out) == HOSTS


@pytest.mark.parametrize("notice", ["nan", "inf", "-inf", "-1", "soon"])
async def test_notice_must_be_finite_seconds(api, capsys, notice):
    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(
            cli.main, ["--url", api.url, "--token", TOKEN, "reclaim", "h", f"--notice={notice}"]
        )
    assert exit_.value.code == 2
    _, err = capsys.readouterr()
    assert (
        f"argument --notice: {notice!r} is not a number of seconds: give a finite number >= 0"
        in err
    )
    assert "cannot reach" not in err
    assert api.calls == []  # nothing was sent


async def test_unreachable_hub(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    code, _, err = await run_cli(
        capsys, "--url", f"http://127.0.0.1:{port}", "--token", "t", "list"
    )
    assert code == 1
    assert err.strip() == (
        f"jupyterhub-migrate: cannot reach http://127.0.0.1:{port}/services/migrate/api/servers"
        " (connection refused: nothing listens there): is --url right?"
    )


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["frobnicate"])
    assert exit_.value.code == 2
