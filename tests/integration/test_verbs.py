"""Suspend, resume and cancel, each server's history and the Prometheus metrics, on one real
hub (real CHP, real servers, synced homes) shared by the module: a move shows in the
history (reason, hold time) and in the metrics; suspend holds no host and resume brings
`x` and the files back; cancel discards the checkpoint; another user sees none of it; the
history survives a hub restart; jupyterhub-idle-culler as a real hub service suspends an
idle server and the next start resumes it."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest
from kernelws import KernelSocket
from prometheus_client.parser import text_string_to_metric_families
from realhub import culler_config, module_hub, until
from test_move import read_file, write_file

from migrating_spawner.service import cli as migrate_cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CONFIG = """
c.MigratingSpawner.home_mode = "synced"
c.JupyterHub.authenticate_prometheus = True
"""

# the culler as a hub-managed service: a server idle for 4 s is stopped
CULLER = culler_config(timeout=4)


hub = module_hub(CONFIG, "verbs")


async def scrape(hub) -> dict[tuple[str, tuple], float]:
    """/hub/metrics as {(sample name, sorted labels): value}."""
    status, text = await hub.request("GET", "/hub/metrics", hub.admin_token)
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def cli(capsys, hub, token, *argv):
    # the CLI blocks (requests): beside the loop of the test
    code = await asyncio.to_thread(migrate_cli.main, ["--url", hub.url, "--token", token, *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def progress(hub, user) -> list[str]:
    """The messages of the hub's spawn progress stream (what the spawn page shows), until
    it says ready ("ready" last) or failed."""
    messages = []
    url = hub.url + f"/hub/api/users/{user}/server/progress"
    headers = {"Authorization": f"token {hub.admin_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(120)) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("ready"):
                    return [*messages, "ready"]
                if event.get("failed"):
                    return [*messages, "failed"]
                messages.append(event.get("message", ""))
    return messages


async def history(hub, user, token=None):
    status, data = await hub.migrate_api("GET", f"/servers/{user}/history", token)
    assert status == 200, data
    return data["history"]


async def test_move_suspend_resume_history_and_metrics(hub):
    await hub.spawn("alice")
    token = await hub.user_token("alice")
    await write_file(hub, "alice", token, "notes.txt", "keep me")
    session = await hub.new_session("alice", token, "n.ipynb")
    kernel_id = session["kernel"]["id"]
    async with KernelSocket(hub.url + "/user/alice", kernel_id, token) as kernel:
        await kernel.run("x = 42")
    running = await hub.server_info("alice")
    assert running["state"] == "Running" and running["actions"] == [
        "migrate",
        "suspend",
        "cancel",
    ]
    assert running["market"] == "spot" and running["provider"] == "local"
    [host] = hub.hosts()
    assert running["address"] == f"{host['address']}:{running['address'].split(':')[1]}"
    assert running["uptime"] > 0 and running["started"] <= time.time()

    # a move, seen by the history and the metrics
    before = await scrape(hub)
    status, moved = await hub.migrate_api(
        "POST", "/servers/alice/migrate?wait=true", token, timeout=120
    )
    assert status == 200, moved
    after = await scrape(hub)
    [move] = await history(hub, "alice", token)
    assert (move["kind"], move["reason"], move["by"], move["outcome"]) == (
        "move",
        "request",
        "alice",
        "ok",
    )
    assert (move["from_host"], move["to_host"]) == (running["host_id"], moved["host_id"])
    assert move["hold_seconds"] > 0 and move["duration_seconds"] >= move["hold_seconds"]
    assert move["bytes_moved"] > 0  # the pre-copy sent the home's files
    ok = {"reason": "request", "outcome": "ok"}
    moves = "jupyterhub_migrating_moves_total"
    assert metric(after, moves, **ok) == metric(before, moves, **ok) + 1
    for hist in ("move_hold_seconds", "move_duration_seconds"):
        name = f"jupyterhub_migrating_{hist}_count"
        assert metric(after, name) == metric(before, name) + 1, hist
        total = f"jupyterhub_migrating_{hist}_sum"
        assert metric(after, total) > metric(before, total), hist
    sent = "jupyterhub_migrating_checkpoint_bytes_total"
    assert metric(after, sent) > metric(before, sent)
    hosts = "jupyterhub_migrating_hosts"
    labels = {"provider": "local", "market": "spot", "instance_type": running["instance_type"]}
    assert metric(after, hosts, **labels) == 1

    # suspend: a final checkpoint, no host held
    status, suspended = await hub.migrate_api("POST", "/servers/alice/suspend", token)
    assert status == 200, suspended
    assert suspended["state"] == "Suspended" and suspended["host_id"] is None
    assert suspended["actions"] == ["resume", "cancel"]
    kept = suspended["last_checkpoint"]
    assert kept["id"] == suspended["checkpoint_id"] and kept["bytes"] >= len("keep me")
    assert hub.hosts() == []
    assert metric(await scrape(hub), "jupyterhub_migrating_suspended_servers") == 1
    # `info` after the stop still shows the server's events, the stop's own last
    stopped = [e["message"] for e in (await hub.server_info("alice"))["events"]]
    said = f"Stopped: files and 1 kernel(s) kept in checkpoint {kept['id']}"
    assert stopped[-1] == said, stopped
    # a verb that does not fit the state: 409 with a JSON reason
    status, data = await hub.migrate_api("POST", "/servers/alice/suspend", token)
    assert (status, data["status"]) == (409, 409) and "nothing to suspend" in data["message"]

    # resume: a new host, the kernel under its id with x, the files
    status, starting = await hub.migrate_api("POST", "/servers/alice/resume", token)
    assert status == 202 and starting["state"] == "Starting", starting
    # the spawn page's progress (the hub's event stream) tells the resume's phases
    phases = await progress(hub, "alice")
    assert phases[-1] == "ready", phases
    assert [p for p in phases if p.startswith("Host ")], phases
    assert [p for p in phases if p.startswith("Home restored: ")], phases
    assert "Restored 1 kernel(s) under their ids" in phases
    resumed = await hub.server_info("alice")
    assert resumed["state"] == "Running", resumed
    assert resumed["host_id"] not in (running["host_id"], moved["host_id"])
    assert await read_file(hub, "alice", token, "notes.txt") == "keep me"
    async with KernelSocket(hub.url + "/user/alice", kernel_id, token) as kernel:
        out, _ = await kernel.run("print(x)")
        assert out.strip() == "42", out
    status, data = await hub.migrate_api("POST", "/servers/alice/resume", token)
    assert status == 409 and "running already" in data["message"], data
    # `info` keeps the stop's event before the resume's
    events = [e["message"] for e in (await hub.server_info("alice"))["events"]]
    assert "Restored 1 kernel(s) under their ids" in events[events.index(said) :], events
    # the kernel is back under its id by the time the hub calls the server ready
    status, kernels = await hub.request("GET", "/user/alice/api/kernels", token)
    assert status == 200 and [k["id"] for k in kernels] == [kernel_id], kernels

    entries = await history(hub, "alice", token)
    assert [e["kind"] for e in entries] == ["move", "suspend", "resume"]
    suspend, resume = entries[1:]
    assert (suspend["reason"], suspend["by"], suspend["from_host"]) == (
        "request",
        "alice",
        moved["host_id"],
    )
    assert suspend["checkpoint_id"] == kept["id"]
    assert (resume["to_host"], resume["checkpoint_id"]) == (resumed["host_id"], kept["id"])


async def test_cancel_discards_the_checkpoint_and_says_what_is_lost(hub, capsys):
    token = await hub.user_token("alice")
    info = await hub.server_info("alice")
    assert info["state"] == "Running"
    # from the CLI: it says what is lost
    code, out, err = await cli(capsys, hub, token, "--json", "cancel", "alice")
    assert (code, err) == (0, ""), out
    cancelled = json.loads(out)
    assert cancelled["state"] == "Stopped" and cancelled["checkpoint_id"] is None
    assert "running kernels and their variables" in cancelled["lost"]
    assert "The next start is fresh" in cancelled["lost"]
    manifests = hub.workdir / "checkpoints" / "manifests"
    assert not list(manifests.glob("*/*.json")), list(manifests.glob("*/*"))
    assert hub.hosts() == []
    code, out, err = await cli(capsys, hub, token, "cancel", "alice")
    assert (code, out) == (1, "") and err.strip() == (
        "jupyterhub-migrate: 409: alice/ is Stopped: nothing to cancel (no work is kept)"
    )
    [*_, entry] = await history(hub, "alice", token)
    assert (entry["kind"], entry["by"]) == ("cancel", "alice")

    # the next start is fresh: no file, no kernel; resume says it started afresh
    code, out, err = await cli(capsys, hub, token, "resume", "alice", "--wait")
    assert (code, err) == (0, "")
    assert out.startswith("alice: started fresh on ") and "nothing was kept to resume" in out
    status, _ = await hub.request("GET", "/user/alice/api/contents/notes.txt", token)
    assert status == 404
    status, kernels = await hub.request("GET", "/user/alice/api/kernels", token)
    assert (status, kernels) == (200, [])


async def test_others_see_neither_servers_nor_history(hub):
    bob = await hub.user_token("bob")
    for method, path in (
        ("GET", "/servers/alice/"),
        ("GET", "/servers/alice/history"),
        ("POST", "/servers/alice/suspend"),
        ("POST", "/servers/alice/resume"),
        ("POST", "/servers/alice/cancel"),
        ("GET", "/servers/nobody/history"),
    ):
        status, data = await hub.migrate_api(method, path, bob)
        assert status == 404 and data["status"] == 404, (method, path, data)
    status, data = await hub.migrate_api("GET", "/servers", bob)
    assert status == 200 and [s["user"] for s in data["servers"]] == ["bob"], data
    assert (await hub.server_info("alice"))["state"] == "Running"  # nothing happened


async def test_a_browser_cookie_works_and_its_posts_need_the_xsrf_token(hub):
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        # the hub's login form, then the service's page: its OAuth round trip sets the cookie
        async with browser.get(hub.url + "/hub/login") as resp:
            assert resp.status == 200
        xsrf = {c.key: c.value for c in jar}["_xsrf"]
        form = {"username": "bob", "password": "pw", "_xsrf": xsrf}
        next_ = "/services/migrate/"
        async with browser.post(hub.url + f"/hub/login?next={next_}", data=form) as resp:
            assert resp.status == 200, resp.url
        async with browser.get(hub.url + next_, headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200 and resp.url.path == next_, resp.url
        cookies = {c.key: c for c in jar}
        assert "service-migrate" in cookies, list(cookies)
        api = hub.url + "/services/migrate/api/servers/bob/suspend"
        async with browser.get(hub.url + "/services/migrate/api/servers/bob/") as resp:
            assert resp.status == 200 and (await resp.json())["user"] == "bob"
        # a POST with only the cookie (a page elsewhere could send it): refused
        async with browser.post(api) as resp:
            assert resp.status == 403, await resp.text()
        # with the page's XSRF token it reaches the verb (bob has nothing to suspend)
        token = {c.key: c.value for c in jar if c["path"] == next_}.get("_xsrf", xsrf)
        async with browser.post(api, headers={"X-XSRFToken": token}) as resp:
            data = await resp.json()
            assert resp.status == 409 and "nothing to suspend" in data["message"], data

        # suspended on a profile that is not the default: the spawn form (what the hub's
        # "Launch Server" leads to) ticks that profile and says a start resumes it
        await hub.spawn("bob", options={"profile": "lab-medium"})
        status, suspended = await hub.migrate_api("POST", "/servers/bob/suspend")
        assert status == 200 and suspended["state"] == "Suspended", suspended
        async with browser.get(hub.url + "/hub/spawn/bob") as resp:
            assert resp.status == 200
            form = await resp.text()
        ticked = re.findall(r'<input [^>]*value="([^"]+)"[^>]* checked>', form)
        assert ticked == ["lab-medium"], form
        kept = f"from checkpoint {suspended['checkpoint_id']} of "
        assert "Start resumes this server where it was suspended" in form and kept in form


async def test_history_survives_a_restart_and_the_idle_culler_suspends(hub, capsys):
    token = await hub.user_token("alice")
    before = await history(hub, "alice", token)
    assert [e["kind"] for e in before] == ["move", "suspend", "resume", "cancel"]
    # the hub comes back with jupyterhub-idle-culler as a service of its own
    hub.extra_config += CULLER
    (hub.workdir / "jupyterhub_config.py").write_text(hub._config())
    await hub.restart()
    assert await history(hub, "alice", token) == before
    code, out, _ = await cli(capsys, hub, token, "history", "alice")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["TIME", "KIND", "REASON", "FROM"]
    assert [line.split()[2] for line in lines[1:]] == ["move", "suspend", "resume", "cancel"]
    assert "request (alice)" in lines[1] and " s " in lines[1]  # who asked, the hold

    async def culled():
        info = await hub.server_info("alice")
        return info if info["state"] == "Suspended" else None

    suspended = await until(culled, 60, "the culler to suspend alice")
    assert suspended["host_id"] is None and suspended["last_checkpoint"]
    [*_, entry] = await history(hub, "alice", token)
    assert (entry["kind"], entry["reason"], entry["by"]) == ("suspend", "idle cull", "idle-culler")
    assert hub.hosts() == []
    # the next start resumes it
    await hub.spawn("alice")
    [*_, entry] = await history(hub, "alice", token)
    assert entry["kind"] == "resume" and entry["checkpoint_id"] == suspended["checkpoint_id"]
