"""Issue 14's pre-copy: a move snapshots the kernels while they serve, restores them ahead
into kernels started under the same ids on the new server, and the freeze ships only what
cells changed since (the mutation rule); an unusable pre-copy falls back to a full restore."""

import asyncio
import time

import pytest
from kernelws import KernelSocket
from realhub import module_hub
from test_move import wait_moved

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# synced homes: the final home restore replaces files (IPython's history database among
# them) under the kernels started ahead
hub = module_hub('c.MigratingSpawner.home_mode = "synced"', "precopy")

MB = 1_000_000


async def history_entry(hub, user, timeout=30):
    """The move's history entry (written as the move ends, just after the switch)."""
    deadline = time.monotonic() + timeout
    while True:
        status, data = await hub.migrate_api("GET", f"/servers/{user}/history")
        assert status == 200, data
        moves = [e for e in data["history"] if e["kind"] == "move"]
        if moves or time.monotonic() > deadline:
            assert moves, data
            return moves[-1]
        await asyncio.sleep(0.2)


async def start_move(hub, user, notice):
    old = (await hub.server_info(user))["host_id"]
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": notice}
    )
    assert status == 202, data
    return old


async def wait_event(hub, user, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await hub.server_info(user)
        if any(text in e["message"] for e in info["events"]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no event {text!r}: {[e['message'] for e in info['events']]}")


async def notebook(hub, user, path):
    """`user`'s server with one notebook kernel: (token, the server's URL, kernel id)."""
    await hub.spawn(user)
    token = await hub.user_token(user)
    session = await hub.new_session(user, token, path)
    return token, f"{hub.url}/user/{user}", session["kernel"]["id"]


async def test_freeze_ships_only_what_cells_changed_after_the_precopy(hub):
    token, base, kernel_id = await notebook(hub, "pia", "big.ipynb")
    async with KernelSocket(base, kernel_id, token) as kernel:
        await kernel.run(
            "import numpy as np\n"
            "a = np.zeros(25_000_000)\n"  # 200 MB
            "keep = np.ones(6_250_000)\n"  # 50 MB no cell touches after the pre-copy
            "d = {'x': 1}\n"
            "name = 'before'"
        )
        old = await start_move(hub, "pia", notice=60)
        await wait_event(hub, "pia", "Kernels pre-copied")
        # all after the pre-copy, while the old server still serves
        await kernel.run("d['k'] = 1")
        await kernel.run("a[0] = 7")
        _, reply = await kernel.run("name = 'after'")
        count = reply["execution_count"]
    info = await wait_moved(hub, "pia", old, timeout=120)
    assert info["state"] == "Running"

    async with KernelSocket(base, kernel_id, token) as kernel:
        out, reply = await kernel.run(
            "print(d, float(a[0]), float(a.sum()), a.shape, float(keep.sum()), name)"
        )
        # nothing before it: no IPython warning that its history database was replaced
        # under the kernel started ahead
        assert out == "{'x': 1, 'k': 1} 7.0 7.0 (25000000,) 6250000.0 after\n", out
        assert reply["execution_count"] == count + 1

    entry = await history_entry(hub, "pia")
    state = entry["kernel_state"]["kernels"][kernel_id]
    assert state["precopy"]["mode"] in ("full", "delta")  # taken while it served
    assert state["prestart"]["ok"] and state["prestart"]["mode"] == "full"
    freeze = state["freeze"]
    assert freeze["mode"] == "delta", freeze
    assert set(freeze["changed"]) == {"d", "a", "name"}, freeze
    # the freeze shipped a (200 MB, changed in place), d and name: not keep's 50 MB
    assert 200 * MB < freeze["written_bytes"] < 201 * MB, freeze
    restore = state["restore"]
    assert restore["mode"] == "delta" and restore["precopy"] == "used", restore
    assert 200 * MB < restore["loaded_bytes"] < 201 * MB, restore


# the flag is outside the home (local hosts share /tmp), so the home's copy cannot bring it
# back for the fallback's full restore
FUSSY = """\
import os
FLAG = {flag!r}
open(FLAG, 'w').close()
def make_fussy():
    if os.path.exists(FLAG):  # the first restore of it anywhere fails outright
        os.remove(FLAG)
        raise SystemExit('this restore fails')
    return Fussy()
class Fussy:
    def __reduce__(self):
        return (make_fussy, ())
fussy = Fussy()
n = 41
"""


async def test_a_precopy_restore_that_fails_falls_back_to_a_full_restore(hub, tmp_path):
    token, base, kernel_id = await notebook(hub, "quinn", "fussy.ipynb")
    async with KernelSocket(base, kernel_id, token) as kernel:
        await kernel.run(FUSSY.format(flag=str(tmp_path / "fail-next-restore")))
        old = await start_move(hub, "quinn", notice=30)
        await wait_event(hub, "quinn", "Kernels pre-copied")
        await kernel.run("n += 1")
    await wait_moved(hub, "quinn", old, timeout=90)

    async with KernelSocket(base, kernel_id, token) as kernel:
        out, _ = await kernel.run("print(n, type(fussy).__name__)")
        assert out == "42 Fussy\n", out
    entry = await history_entry(hub, "quinn")
    state = entry["kernel_state"]["kernels"][kernel_id]
    assert state["prestart"]["ok"] is False and "SystemExit" in state["prestart"]["error"]
    restore = state["restore"]
    assert restore["mode"] == "full", restore
    assert restore["precopy"].startswith("fallback: the restore of the pre-copy failed"), restore
