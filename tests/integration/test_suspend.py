"""A tampered checkpoint is refused and kept. (Stop = suspend, resume from the checkpoint on a
new host, with files, kernels and events: tests/integration/test_verbs.py.)"""

import asyncio
import json
from pathlib import Path

import pytest
from realhub import until
from test_move import write_file

pytestmark = pytest.mark.integration

SYNCED = 'c.MigratingSpawner.home_mode = "synced"'


async def stop_server(hub, user):
    status, _ = await hub.api("DELETE", f"/users/{user}/server")
    assert status in (202, 204)
    for _ in range(100):
        _, model = await hub.api("GET", f"/users/{user}")
        if not model["servers"]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("server did not stop")


async def test_tampered_checkpoint_is_refused_and_kept(hub_factory):
    hub = await hub_factory(SYNCED)
    await hub.spawn("dave")
    token = await hub.user_token("dave")
    await write_file(hub, "dave", token, "data.txt", "original")
    await stop_server(hub, "dave")
    checkpoint = (await hub.server_info("dave"))["checkpoint_id"]

    [manifest] = Path(hub.workdir, "checkpoints").glob(f"manifests/*/{checkpoint}.json")
    signed = json.loads(manifest.read_text())
    signed["manifest"]["files"]["data.txt"]["size"] += 1
    manifest.write_text(json.dumps(signed))

    acquired = hub.log_path.read_text().count("acquired local host")
    status, data = await hub.api("POST", "/users/dave/server", body={})
    for _ in range(100):
        _, model = await hub.api("GET", "/users/dave")
        if not model["pending"]:
            break
        await asyncio.sleep(0.2)
    assert not model["servers"], "a tampered checkpoint must not start a server"
    assert "failed verification" in hub.tail(400)
    # what the user and the operator read says the way out
    assert "It is kept: `jupyterhub-migrate cancel dave` discards it" in hub.tail(400)
    assert hub.hosts() == []
    # refused before a host was taken for it: a broken checkpoint costs no instance
    assert hub.log_path.read_text().count("acquired local host") == acquired
    # the checkpoint itself is kept for an operator to inspect
    assert manifest.exists()


async def test_a_stop_during_a_move_follows_it_to_the_new_host(hub_factory):
    """The hub's Stop (or the idle culler) while a reclaim moves the server: the stop waits,
    the move finishes (no 'Move failed': JupyterHub refuses to route a stopping server),
    and the stop's checkpoint, taken on the new host, has the files; a start brings them."""
    hub = await hub_factory(SYNCED)
    await hub.spawn("erin")
    token = await hub.user_token("erin")
    await write_file(hub, "erin", token, "kept.txt", "before the move")
    old = (await hub.server_info("erin"))["host_id"]
    status, _ = await hub.migrate_api("POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 30})
    assert status == 202
    await until(lambda: _said(hub, "erin", "Moving ("), timeout=30, what="the move to begin")
    status, _ = await hub.api("DELETE", "/users/erin/server")
    assert status in (202, 204)

    async def stopped():
        _, model = await hub.api("GET", "/users/erin")
        return not model["servers"] and not model["pending"]

    await until(stopped, timeout=120, what="the stop after the move")
    said = [e["message"] for e in (await hub.server_info("erin"))["events"]]
    assert not any("Move failed" in m or "move failed" in m for m in said), said
    assert any(m.startswith("Moved to ") for m in said), said
    assert "shouldn't be added to the proxy" not in hub.tail(2000)

    await hub.spawn("erin")
    status, model = await hub.request("GET", "/user/erin/api/contents/kept.txt", token)
    assert status == 200 and model["content"] == "before the move", model


async def _said(hub, user, text):
    info = await hub.server_info(user)
    return any(text in e["message"] for e in info.get("events", []))
