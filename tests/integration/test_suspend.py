"""Stop keeps a checkpoint, start resumes from it on a new host; tampering is refused."""

import asyncio
import json
from pathlib import Path

import pytest
from kernelws import KernelSocket
from test_move import read_file, write_file

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


async def test_stop_then_start_resumes_files_on_a_new_host(hub_factory):
    hub = await hub_factory(SYNCED)
    await hub.spawn("carol")
    token = await hub.user_token("carol")
    status, _ = await hub.request(
        "PUT", "/user/carol/api/contents/work", token, {"type": "directory"}
    )
    assert status == 201
    await write_file(hub, "carol", token, "work/report.txt", "suspend me")
    session = await hub.new_session("carol", token, "s.ipynb")
    kernel_id = session["kernel"]["id"]
    async with KernelSocket(hub.url + "/user/carol", kernel_id, token) as kernel:
        await kernel.run("x = 42")
    first = await hub.server_info("carol")

    await stop_server(hub, "carol")
    suspended = await hub.server_info("carol")
    assert suspended["state"] == "Suspended"
    assert suspended["checkpoint_id"]
    assert hub.hosts() == []  # the host went back, with its disk
    # `info` after the stop still shows the server's events, the stop's own last
    stopped = [e["message"] for e in suspended["events"]]
    kept = f"Stopped: files and 1 kernel(s) kept in checkpoint {suspended['checkpoint_id']}"
    assert stopped[-1] == kept, stopped
    assert f"Host {first['host_id']} ready at" in " ".join(stopped)

    await hub.spawn("carol")
    resumed = await hub.server_info("carol")
    assert resumed["host_id"] != first["host_id"]
    assert resumed["state"] == "Running"
    events = [e["message"] for e in resumed["events"]]
    assert "Restored 1 kernel(s) under their ids" in events
    assert events.index(kept) < events.index("Restored 1 kernel(s) under their ids")
    assert await read_file(hub, "carol", token, "work/report.txt") == "suspend me"
    # the kernel is back under its id, with its variables, by the time the hub calls the
    # server ready: the very first cell sees them
    status, kernels = await hub.request("GET", "/user/carol/api/kernels", token)
    assert status == 200 and [k["id"] for k in kernels] == [kernel_id], kernels
    async with KernelSocket(hub.url + "/user/carol", kernel_id, token) as kernel:
        out, _ = await kernel.run("print(x)")
        assert out.strip() == "42", out


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
