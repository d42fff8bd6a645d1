"""`jupyterhub-migrate`: what it says before it reaches any service (arguments, URLs, a
closed port, a web page that is not a hub). Everything it does with a real hub and its
`migrate` service is in tests/integration/test_cli_hub.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web
from traitlets.config import PyFileConfigLoader

from migrating_spawner.service import cli


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)


@pytest.fixture
def closed_port() -> str:
    """A URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    return f"http://127.0.0.1:{port}"


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    # the CLI blocks (requests): run it beside the loop that serves the test's site
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_missing_url(capsys):
    code, out, err = await run_cli(capsys, "--token", "t", "list")
    assert code == 1 and out == ""
    assert err.strip() == "jupyterhub-migrate: no hub URL: set JUPYTERHUB_URL or pass --url"


async def test_missing_token_is_said_before_any_request(capsys, closed_port):
    # a request would fail with "cannot reach"
    code, out, err = await run_cli(capsys, "--url", closed_port, "list")
    assert code == 1 and out == ""
    assert err.strip() == "jupyterhub-migrate: no token: set JUPYTERHUB_API_TOKEN or pass --token"


async def test_url_without_scheme(capsys):
    code, out, err = await run_cli(capsys, "--url", "127.0.0.1:8000", "--token", "t", "list")
    assert code == 1 and out == ""
    assert err.strip() == (
        "jupyterhub-migrate: --url '127.0.0.1:8000' is not an http:// or https:// URL with a "
        "host (e.g. http://127.0.0.1:8000)"
    )


@pytest.mark.parametrize("notice", ["nan", "inf", "-inf", "-1", "soon", "3600.5", "99999999999"])
async def test_notice_must_be_finite_seconds(capsys, closed_port, notice):
    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(
            cli.main, ["--url", closed_port, "--token", "t", "reclaim", "h", f"--notice={notice}"]
        )
    assert exit_.value.code == 2
    _, err = capsys.readouterr()
    # the API's range, said in the CLI's words (not the API's field name notice_seconds)
    assert (
        f"argument --notice: {notice!r} is not a notice: give a number of seconds from 0 to 3600"
        in err
    )
    assert "cannot reach" not in err  # refused before any request


def test_notice_accepts_finite_seconds():
    args = cli.parser().parse_args(["reclaim", "h", "--notice", "0.5"])
    assert args.notice == 0.5
    assert cli.parser().parse_args(["reclaim", "h", "--notice", "3600"]).notice == 3600
    assert cli.parser().parse_args(["reclaim", "h"]).notice == 120


async def test_unreachable_hub(capsys, closed_port):
    code, _, err = await run_cli(capsys, "--url", closed_port, "--token", "t", "list")
    assert code == 1
    assert err.strip() == (
        f"jupyterhub-migrate: cannot reach {closed_port}/services/migrate/api/servers"
        " (connection refused: nothing listens there): is --url right?"
    )


@pytest.fixture
async def web_page():
    """A plain web site: every path answers 200 with an HTML page."""

    async def page(request):
        return web.Response(
            text="<html><body>" + "Welcome! " * 100 + "</body></html>", content_type="text/html"
        )

    async with site([web.get("/{tail:.*}", page)]) as url:
        yield url


@contextlib.asynccontextmanager
async def site(routes: list[web.RouteDef]):
    """A web site on loopback serving `routes`; yields its URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    try:
        yield f"http://127.0.0.1:{tcp._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_url_of_a_web_page_says_it_is_not_a_hub(web_page, capsys):
    code, out, err = await run_cli(capsys, "--url", web_page, "--token", "t", "hosts")
    assert code == 1 and out == ""
    assert err.strip() == (
        f"jupyterhub-migrate: {web_page} is not a JupyterHub with the `migrate` service: "
        f"GET {web_page}/services/migrate/api/hosts answered 200 (text/html), not the API's JSON"
    )
    assert "<html" not in err


def test_table_pads_columns_and_shows_missing_values_as_dashes():
    rows = [{"id": "a", "address": None}, {"id": "longer", "address": "127.0.0.1"}]
    lines = cli.table(rows, ["id", "address"]).splitlines()
    assert lines == ["ID      ADDRESS  ", "a       -        ", "longer  127.0.0.1"]
    assert cli.table([], ["id"]) == "(none)"


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["frobnicate"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("verb", ["suspend", "resume", "cancel", "history", "jobs"])
def test_hub_verbs_with_a_gateway_url_name_the_gateways_verbs(capsys, closed_port, verb):
    # said before any request: closed_port would be a connection error otherwise
    code = cli.main(["--gateway-url", closed_port, verb, "alice"])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"jupyterhub-migrate: {verb} works against a hub, not with --gateway-url; "
        "a gateway's verbs are hosts, list, info, reclaim"
    )


@pytest.mark.parametrize("given", [(), ("--token", "gw-flag")])
async def test_a_gateway_gets_its_own_token_never_the_hubs(capsys, monkeypatch, given):
    seen = []

    async def kernelspecs(request):
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"default": "python3", "kernelspecs": {}})

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", "gw-env")
    async with site([web.get("/api/kernelspecs", kernelspecs)]) as url:
        code, _, err = await run_cli(capsys, "--gateway-url", url, *given, "list")
    assert code == 1 and "runs moving kernels" in err  # this gateway has none
    assert seen == [f"token {given[1] if given else 'gw-env'}"]


def test_demo_lets_a_plain_user_call_the_service():
    # the service checks for this scope: without it a user's own token gets 403
    root = Path(__file__).resolve().parents[2]
    config = PyFileConfigLoader("jupyterhub_config.py", str(root / "examples" / "local"))
    config = config.load_config()
    [service] = [s for s in config.JupyterHub.services if "url" in s]
    assert service["name"] == cli.SERVICE
    assert f"access:services!service={cli.SERVICE}" in config.JupyterHub.extra_user_scopes


async def test_https_to_a_plain_http_site_says_so(web_page, capsys):
    url = web_page.replace("http://", "https://")
    code, out, err = await run_cli(capsys, "--url", url, "--token", "t", "list")
    assert code == 1 and out == ""
    assert err.strip() == (
        f"jupyterhub-migrate: cannot reach {url}/services/migrate/api/servers "
        "(no TLS there: is it http://, not https://?): is --url right?"
    )


async def test_the_browsers_hub_url_gets_a_hint(web_page, capsys):
    # the address bar shows http://host/hub/...: the API is not under /hub/
    code, _, err = await run_cli(capsys, "--url", web_page + "/hub/", "--token", "t", "list")
    assert code == 1
    assert err.strip().endswith(
        f"not the API's JSON (the hub's URL is without /hub: {web_page})"
    ), err


@pytest.mark.parametrize("verb", ["suspend", "resume", "cancel", "history"])
def test_server_verbs_take_flags_anywhere(verb):
    for argv in (
        ["--json", "--url", "http://h", verb, "alice/lab"],
        [verb, "alice/lab", "--json", "--url", "http://h"],
        ["--url", "http://h", verb, "--json", "alice/lab"],
    ):
        args = cli.parser().parse_args(argv)
        assert (args.verb, args.target, args.json, args.url) == (
            verb,
            "alice/lab",
            True,
            "http://h",
        ), argv
    assert cli.parser().parse_args(["resume", "alice", "--wait"]).wait is True
    with pytest.raises(SystemExit):
        cli.parser().parse_args([verb])  # the server is required


@pytest.fixture
async def fake_service():
    """A stand-in for the migrate service's verbs: records each call, answers JSON."""
    calls: list[tuple[str, str]] = []
    suspended = {
        "user": "alice",
        "server": "",
        "state": "Suspended",
        "host_id": None,
        "address": None,
        "last_checkpoint": {"id": "c1", "time": 1_700_000_000, "bytes": 2_500_000, "files": 3},
    }
    answers = {
        ("POST", "servers/alice/suspend"): {
            **suspended,
            "jobs": ["Batch job six paused before cell 5: it resumes with the server"],
        },
        ("POST", "servers/alice/resume"): {**suspended, "state": "Starting"},
        ("POST", "servers/alice/cancel"): {
            **suspended,
            "state": "Stopped",
            "lost": "Discarded: the kernels' saved variables. The next start is fresh.",
        },
        ("GET", "servers/alice/history"): {
            "history": [
                {
                    "time": 1_700_000_000,
                    "kind": "move",
                    "reason": "reclaim notice",
                    "by": None,
                    "outcome": "ok",
                    "from_host": "h-1",
                    "to_host": "h-2",
                    "hold_seconds": 0.25,
                    "bytes_moved": 1_200_000,
                    "lost": {
                        "files": None,
                        "variables": {"k1234567890": ["df", "model"]},
                        "interrupted_cells": [{"kernel_id": "k1234567890", "cell": "fit()"}],
                        "kernels_fresh": [],
                    },
                }
            ]
        },
    }

    async def handle(request):
        calls.append((request.method, request.path_qs))
        path = request.path.removeprefix("/services/migrate/api/")
        answer = answers.get((request.method, path))
        if answer is None:
            return web.json_response({"status": 404, "message": f"no {path}"}, status=404)
        return web.json_response(answer)

    app = web.Application()
    app.add_routes([web.route("*", "/{tail:.*}", handle)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", calls
    await runner.cleanup()


async def test_verbs_call_the_service_and_say_what_happened(fake_service, capsys):
    url, calls = fake_service
    code, out, err = await run_cli(capsys, "suspend", "alice", "--url", url, "--token", "t")
    assert (code, err) == (0, "")
    assert out.strip().startswith("alice: Suspended, host released; kept checkpoint c1 (2.5 MB, ")
    # and where each batch job paused
    paused = "Batch job six paused before cell 5: it resumes with the server"
    assert out.splitlines()[1:] == [paused]
    code, out, _ = await run_cli(capsys, "--url", url, "--token", "t", "resume", "alice")
    assert code == 0 and out.strip() == "alice: Starting (resuming on a new host)"
    code, out, _ = await run_cli(capsys, "--url", url, "--token", "t", "cancel", "alice")
    assert code == 0
    assert out.strip() == (
        "alice: cancelled. Discarded: the kernels' saved variables. The next start is fresh."
    )
    code, out, _ = await run_cli(capsys, "--url", url, "--token", "t", "history", "alice")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["TIME", "KIND", "REASON", "FROM", "TO", "HOLD", "BYTES", "LOST"]
    assert "reclaim notice" in row and "h-1" in row and "h-2" in row and "0.25 s" in row
    assert "1.2 MB" in row and "kernel k1234567: df, model" in row
    assert "cell interrupted 'fit()'" in row
    assert [c[0] for c in calls] == ["POST", "POST", "POST", "GET"]
    # the default server's verbs: servers/alice/VERB (no empty name between two slashes)
    assert [c[1] for c in calls] == [
        f"/services/migrate/api/servers/alice/{verb}"
        for verb in ["suspend", "resume", "cancel", "history"]
    ]


def test_server_paths():
    assert cli.server_path("alice") == "servers/alice"
    assert cli.server_path("alice/", "suspend") == "servers/alice/suspend"
    assert cli.server_path("alice/lab", "migrate") == "servers/alice/lab/migrate"


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_info_says_what_the_page_shows(utc):
    """`info`: local clock times, h:mm:ss uptime, the checkpoint as the page says it and
    `-` for what is empty (not epoch floats, a dict's repr or None)."""
    now = time.time()
    today = now - now % 86400  # 00:00:00 UTC today
    data = {
        "user": "walker",
        "server": "",
        "state": "Running",
        "pending": None,
        "deadline": None,
        "move": None,
        "host_id": "local-10-c80910",
        "address": "127.0.0.10:41905",
        "url": "/user/walker/",
        "provider": "local",
        "instance_type": "medium",
        "market": "spot",
        "hourly_price": None,
        "started": today + 3600 * 21 + 15 * 60,
        "uptime": 463.2,
        "home_mode": "synced",
        "checkpoint_id": "c0ffee",
        "last_checkpoint": {
            "id": "c0ffee",
            "time": today + 3600 * 21 + 20 * 60 + 58,
            "bytes": 83_400,
            "files": 18,
            "reason": "move final",
        },
        "suspended": None,
        "actions": ["migrate", "suspend", "cancel"],
        "events": [{"message": "Server ready", "time": today + 3600 * 21 + 15 * 60 + 4}],
    }
    lines = cli.info_text(data).splitlines()
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[:-2])}
    assert fields["Started"] == "21:15:00"
    assert fields["Uptime"] == "7:43 since it started (moves included)"
    assert fields["Last checkpoint"] == "21:20:58, 83.4 kB, move final (c0ffee)"
    assert fields["Hourly price"] == "-" and fields["Suspended since"] == "-"
    assert fields["Instance"] == "-"  # local hosts have no cloud id
    on_ec2 = dict(
        line.partition(":")[::2]
        for line in cli.info_text({**data, "instance_id": "i-0abc"}).splitlines()
    )
    assert on_ec2["Instance"].strip() == "i-0abc"
    assert fields["Actions"] == "migrate, suspend, cancel"
    assert lines[-2:] == ["Events:", "  21:15:04  Server ready"]
    text = "\n".join(lines)
    assert "None" not in text and "{" not in text and str(int(today)) not in text
    assert cli.duration(3 * 3600 + 62) == "3:01:02"
    moving = {**data, "state": "Floating", "pending": None, "uptime": None}
    moving["move"] = {"reason": "reclaim notice", "from": "h-1", "to": None, "phase": "hold"}
    moving["deadline"] = today + 3600 * 22
    fields = dict(line.split(":", 1) for line in cli.info_text(moving).splitlines()[:-2])
    assert fields["Move"].strip() == "reclaim notice: from h-1 to (not yet chosen), hold"
    assert fields["Deadline"].strip() == "22:00:00" and fields["Uptime"].strip() == "-"
