"""A tampered checkpoint is refused and kept. (Stop = suspend, resume from the checkpoint on a
new host, with files, kernels and events: tests/integration/test_verbs.py.)"""

import asyncio
import json
from pathlib import Path

import pytest
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

    status, data = await hub.api("POST", "/users/dave/server", body={})
    for _ in range(100):
        _, model = await hub.api("GET", "/users/dave")
        if not model["pending"]:
            break
        await asyncio.sleep(0.2)
    assert not model["servers"], "a tampered checkpoint must not start a server"
    assert "failed verification" in hub.tail(400)
    assert hub.hosts() == []  # the host acquired for the resume was given back
    # the checkpoint itself is kept for an operator to inspect
    assert manifest.exists()
