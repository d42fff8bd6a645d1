"""Nothing lost from the second move on: the working folder, failed snapshots, kernels
without a session, and cells sent while the server is frozen."""

import asyncio
import time

import pytest
from kernelconn import KernelConnection
from latch import Latch
from realhub import module_hub
from test_kernel_move import move_and_wait
from test_move import wait_moved

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SYNCED = 'c.MigratingSpawner.home_mode = "synced"'
# one hub for the tests of the plain synced config, each with a user of its own
synced_hub = module_hub(SYNCED, "synced", name="synced_hub")

CWD_CHECK = "import os\nprint(os.getcwd() == os.path.join(os.path.expanduser('~'), 'proj', 'sub'))"


async def connect(hub, user, token, kernel_id, label):
    conn = KernelConnection(hub.url + f"/user/{user}", kernel_id, token, label)
    await conn.start()
    return conn


async def notebook(hub, user, path="work.ipynb"):
    """`user`'s server on `hub`, a notebook session and its kernel's socket."""
    await hub.spawn(user)
    token = await hub.user_token(user)
    session = await hub.new_session(user, token, path)
    return hub, token, await connect(hub, user, token, session["kernel"]["id"], user)


@pytest.mark.parametrize("home_mode", ["shared", "synced"])
async def test_working_folder_and_state_survive_move_after_move(hub_factory, synced_hub, home_mode):
    if home_mode == "synced":
        hub = synced_hub
    else:
        hub = await hub_factory(f'c.MigratingSpawner.home_mode = "{home_mode}"')
    hub, token, conn = await notebook(hub, "cora")
    try:
        _, reply = await conn.run(
            "import os\nos.makedirs('proj/sub', exist_ok=True)\nos.chdir('proj/sub')\n"
            "open('one.txt', 'w').write('1')\nx = 1"
        )
        counts = [reply["execution_count"]]
        for step in (2, 3):
            await move_and_wait(hub, "cora", notice=10)
            out, reply = await conn.run(CWD_CHECK, timeout=90)
            # the kernel works in the same folder of the new home, not in the old host's
            # deleted one (relative paths work)
            assert out.strip() == "True", out
            counts.append(reply["execution_count"])
            out, reply = await conn.run(
                f"open('f{step}.txt', 'w').write('{step}')\n"
                f"x += 1\nv{step} = {step}\n"
                "print(x, sorted(os.listdir('.')), open('one.txt').read())"
            )
            # a variable defined after the first move is still there after the second
            files = ["f2.txt", "f3.txt"][: step - 1] + ["one.txt"]
            assert out.strip() == f"{step} {sorted(files)} 1", out
            counts.append(reply["execution_count"])
        out, _ = await conn.run("print(v2, v3)")
        assert out.strip() == "2 3", out
        assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    finally:
        await conn.close()


async def test_kernel_without_a_session_comes_back_under_its_id(synced_hub):
    hub = synced_hub
    await hub.spawn("kai")
    token = await hub.user_token("kai")
    # as nbclient and `jupyter console --existing` do: a kernel, no session
    status, kernel = await hub.request("POST", "/user/kai/api/kernels", token, {"name": "python3"})
    assert status == 201, kernel
    conn = await connect(hub, "kai", token, kernel["id"], "kai")
    try:
        await conn.run("alone = 'no session'")
    finally:
        await conn.close()
    await move_and_wait(hub, "kai", notice=10)
    status, kernels = await hub.request("GET", "/user/kai/api/kernels", token)
    assert status == 200 and [k["id"] for k in kernels] == [kernel["id"]], kernels
    conn = await connect(hub, "kai", token, kernel["id"], "kai")
    try:
        out, _ = await conn.run("print(alone)")
        assert out.strip() == "no session", out
    finally:
        await conn.close()


async def test_a_failed_snapshot_restores_the_older_state_and_says_so(hub_factory):
    hub = await hub_factory(SYNCED + "\nc.MigratingSpawner.kernel_snapshot_interval = 0")
    hub, token, conn = await notebook(hub, "fay")
    try:
        await conn.run("kept = 'from before the first move'")
        await move_and_wait(hub, "fay", notice=10)
        # a variable whose pickling never ends: the next snapshot cannot be taken
        await conn.run(
            "class Stuck:\n    def __reduce__(self):\n        import time\n"
            "        time.sleep(3600)\nstuck = Stuck()\nlater = 'after the first move'",
            timeout=90,
        )
        await move_and_wait(hub, "fay", notice=8)
        out, _ = await conn.run("print(kept)\nprint('later' in globals())", timeout=90)
    finally:
        await conn.close()
    # the older state came back, and the notebook says what happened and how old it is
    assert "from before the first move\nFalse" in out, out
    assert "last snapshot failed" in out and "older" in out, out
    events = [e["message"] for e in (await hub.server_info("fay"))["events"]]
    assert any("snapshot failed" in m for m in events), events


async def test_cells_sent_through_a_move_are_answered_exactly_once(synced_hub):
    hub, token, conn = await notebook(synced_hub, "cal", "count.ipynb")
    try:
        await conn.run("n = 0")
        old = (await hub.server_info("cal"))["host_id"]
        status, data = await hub.migrate_api("POST", "/servers/cal/migrate")
        assert status == 202, data
        moved = asyncio.create_task(wait_moved(hub, "cal", old, timeout=90))
        sent = []
        # a cell every 0.2 s until the move is done: before, during and after the freeze
        while not moved.done():
            sent.append(await conn.send("n += 1\nprint(n)"))
            await asyncio.wait([moved], timeout=0.2)
        await moved
        for _ in range(3):
            sent.append(await conn.send("n += 1\nprint(n)"))
        assert await conn.wait(sent, timeout=60, complete=True), (
            [(i, conn.sent[m], conn.output(m)) for i, m in enumerate(sent) if not conn.done(m)],
            {"drops": conn.drops, "connects": conn.connects, "refusals": conn.refusals},
            " ".join(conn.output(m).strip() or "-" for m in sent),
            [(len(conn.replies[m]), m in conn._idle) for m in sent],
        )
        # each cell ran once, in order, on state that moved: the n-th cell printed n
        assert [len(conn.replies[m]) for m in sent] == [1] * len(sent)
        assert [conn.output(m).strip() for m in sent] == [str(i + 1) for i in range(len(sent))]
    finally:
        await conn.close()


async def test_a_host_lost_before_a_final_snapshot_says_how_old_the_state_is(hub_factory):
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "shared"\nc.MigratingSpawner.kernel_snapshot_interval = 0'
    )
    hub, token, conn = await notebook(hub, "liv")
    try:
        await conn.run("a = 'snapshotted'")
        status, _ = await hub.request("POST", "/user/liv/api/migrating/checkpoint", token, {})
        assert status == 200
        await conn.run("b = 'after the last snapshot'")
        old = (await hub.server_info("liv"))["host_id"]
        # no notice: the host is gone before anything can be saved
        status, data = await hub.migrate_api(
            "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 0}
        )
        assert status == 202, data
        await wait_moved(hub, "liv", old, timeout=90)
        out, _ = await conn.run("print(a, 'b' in globals())", timeout=90)
    finally:
        await conn.close()
    assert "snapshotted False" in out, out
    assert "restored from its last background snapshot" in out and "is lost" in out, out


async def test_a_long_cell_at_a_notice_costs_only_that_cell(synced_hub):
    hub, token, conn = await notebook(synced_hub, "lou", "long.ipynb")
    try:
        await conn.run("import time\nx = 42")
        loop = await conn.send("for i in range(30):\n    print(i, flush=True)\n    time.sleep(1)")
        await move_and_wait(hub, "lou", notice=10)
        assert await conn.wait([loop], timeout=30)
        out, _ = await conn.run("print(x, i)", timeout=60)
    finally:
        await conn.close()
    reply = conn.replies[loop][0]
    printed = conn.output(loop)
    # the loop's output up to the interrupt is there, and the cell says why it stopped
    assert reply["status"] == "error" and printed.startswith("0\n1\n"), (reply, printed)
    assert "interrupted because this kernel's host was reclaimed" in printed, printed
    # everything else moved, including how far the loop got
    last = [int(line) for line in printed.splitlines() if line.strip().isdigit()][-1]
    assert out.strip() in (f"42 {last}", f"42 {last + 1}"), (out, last)


async def test_a_move_after_a_hub_restart_keeps_the_kernels(synced_hub):
    hub, token, conn = await notebook(synced_hub, "hal")
    try:
        await conn.run("x = 'from before the hub restart'")
        await hub.restart()
        # the new server gets the running server's token, and the move can call its API
        await move_and_wait(hub, "hal", notice=10)
        out, _ = await conn.run("print(x)", timeout=90)
    finally:
        await conn.close()
    assert out.strip() == "from before the hub restart", out


async def test_held_cells_run_once_even_when_an_older_home_comes_back(synced_hub):
    hub, token, conn = await notebook(synced_hub, "ned", "count.ipynb")
    latch = Latch()
    await latch.start()
    try:
        await conn.run("import socket\nn = 0")
        # a cell still running when the move freezes the server: the freeze waits for it,
        # and the cells sent meanwhile are held
        slow = await conn.send(latch.wait_code())
        old = (await hub.server_info("ned"))["host_id"]
        status, _ = await hub.migrate_api("POST", "/servers/ned/migrate")
        assert status == 202
        deadline = time.monotonic() + 60
        while not any(
            "Holding" in e["message"] or "switching over" in e["message"]
            for e in (await hub.server_info("ned"))["events"]
        ):
            assert time.monotonic() < deadline, "the move never reached its cut-over"
            await asyncio.sleep(0.1)
        held = [await conn.send("n += 1") for _ in range(3)]
        await latch.release()
        await wait_moved(hub, "ned", old, timeout=90)
        assert await conn.wait([slow, *held], timeout=60)
        # the host dies with no notice before any new checkpoint: the new home comes from
        # the checkpoint that still holds those cells
        old = (await hub.server_info("ned"))["host_id"]
        status, _ = await hub.migrate_api(
            "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 0}
        )
        assert status == 202
        await wait_moved(hub, "ned", old, timeout=90)
        out, _ = await conn.run("print(n)", timeout=90)
    finally:
        await conn.close()
        await latch.close()
    # what the lost host ran is lost, and the user is told; the held cells are not run again
    # (they would answer a second time, and count twice)
    assert [len(conn.replies[m]) for m in held] == [1, 1, 1], [conn.replies[m] for m in held]
    # n is what the last background snapshot kept: 0 from the home before the held cells,
    # or 3 if a snapshot ran after them (a loaded machine gets there before the reclaim);
    # never more, which would be the held cells run again
    assert out.strip().splitlines()[-1] in ("0", "3"), out
    assert "restored from its last background snapshot" in out, out
