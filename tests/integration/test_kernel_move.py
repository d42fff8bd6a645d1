"""Kernels move with their server: same kernel id, same variables, counter continues."""

import asyncio

import pytest
from kernelws import KernelSocket
from test_move import read_file, wait_moved

pytestmark = pytest.mark.integration


async def move_and_wait(hub, user, notice=15):
    old = (await hub.server_info(user))["host_id"]
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": notice}
    )
    assert status == 202, data
    return await wait_moved(hub, user, old, timeout=90)


@pytest.mark.parametrize("home_mode", ["shared", "synced"])
async def test_kernel_state_moves_with_the_server(hub_factory, home_mode):
    hub = await hub_factory(f'c.MigratingSpawner.home_mode = "{home_mode}"')
    await hub.spawn("kim")
    token = await hub.user_token("kim")
    session = await hub.new_session("kim", token, "work.ipynb")
    kernel_id = session["kernel"]["id"]
    status, terminal = await hub.request("POST", "/user/kim/api/terminals", token, {})
    assert status == 200, terminal
    base = hub.url + "/user/kim"
    async with KernelSocket(base, kernel_id, token) as kernel:
        await kernel.run("x = 42")
        await kernel.run("with open('kept.txt', 'w') as f:\n    f.write('from a cell')")
        await kernel.run("gen = (i * i for i in range(10))\nnext(gen)")
        _, reply = await kernel.run("squares = [i * i for i in range(5)]")
        count_before = reply["execution_count"]

    info = await move_and_wait(hub, "kim")

    # the same kernel id and session on the new host
    status, kernels = await hub.request("GET", "/user/kim/api/kernels", token)
    assert status == 200
    assert [k["id"] for k in kernels] == [kernel_id]
    status, sessions = await hub.request("GET", "/user/kim/api/sessions", token)
    assert [s["id"] for s in sessions] == [session["id"]]
    async with KernelSocket(base, kernel_id, token) as kernel:
        out, reply = await kernel.run("print(x, squares, next(gen))")
        assert out.split("\n")[0] == "42 [0, 1, 4, 9, 16] 1", out
        assert reply["execution_count"] == count_before + 1
    # terminals come back under their names (their processes could not move)
    status, terminals = await hub.request("GET", "/user/kim/api/terminals", token)
    assert [t["name"] for t in terminals] == [terminal["name"]]
    # the cell that wrote the file was not re-run over it
    assert await read_file(hub, "kim", token, "kept.txt") == "from a cell"
    assert info["state"] == "Running"


async def test_busy_kernel_is_interrupted_at_the_deadline_and_named(hub_factory):
    hub = await hub_factory('c.MigratingSpawner.home_mode = "shared"')
    await hub.spawn("lee")
    token = await hub.user_token("lee")
    session = await hub.new_session("lee", token, "long.ipynb")
    kernel_id = session["kernel"]["id"]
    base = hub.url + "/user/lee"
    async with KernelSocket(base, kernel_id, token) as kernel:
        await kernel.run("done = 'before the notice'")
        started = asyncio.Event()
        busy = asyncio.create_task(
            kernel.run("import time\ntime.sleep(600)", timeout=600, started=started)
        )
        await asyncio.wait_for(started.wait(), 30)
        await move_and_wait(hub, "lee", notice=8)
        busy.cancel()
    info = await hub.server_info("lee")
    messages = [e["message"] for e in info["events"]]
    # the user is told which cell did not finish
    assert any("interrupted" in m and "import time" in m for m in messages), messages
    async with KernelSocket(base, kernel_id, token) as kernel:
        out, _ = await kernel.run("print(done)")
        assert out.strip() == "before the notice"
