"""KernelRelay with real ipykernel kernels and a real jupyter_client client on loopback."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio
from jupyter_client import AsyncKernelClient, AsyncKernelManager, localinterfaces

from kernel_provisioner.relay import KernelRelay

StartKernel = Callable[..., Awaitable[AsyncKernelManager]]
Connect = Callable[[dict[str, Any]], Awaitable[AsyncKernelClient]]


@pytest.fixture
async def start_kernel(monkeypatch) -> AsyncIterator[StartKernel]:
    """Start real kernels; every one is shut down afterwards."""
    # local hosts are 127.0.0.N; jupyter_client only launches on addresses it knows are local
    monkeypatch.setattr(localinterfaces, "LOCAL_IPS", [*localinterfaces.local_ips(), "127.0.0.2"])
    kms: list[AsyncKernelManager] = []

    async def start(ip: str = "127.0.0.1", key: bytes | None = None) -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name="python3", ip=ip)
        if key is not None:
            km.session.key = key  # written into the kernel's connection file
        kms.append(km)
        await km.start_kernel()
        return km

    yield start
    for km in kms:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)


@pytest.fixture
async def relay() -> AsyncIterator[KernelRelay]:
    r = KernelRelay()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Clients connected to a connection info; channels stopped afterwards."""
    clients: list[AsyncKernelClient] = []

    async def make(info: dict[str, Any]) -> AsyncKernelClient:
        kc = AsyncKernelClient()
        kc.load_connection_info(info)
        kc.start_channels()
        clients.append(kc)
        return kc

    yield make
    for kc in clients:
        kc.stop_channels()


def kernel_info(km: AsyncKernelManager) -> dict[str, Any]:
    return km.get_connection_info()


async def stdout(kc: AsyncKernelClient, msg_id: str, timeout: float = 15) -> str:
    """What the cell of msg_id printed, read from iopub up to its idle status."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await kc.get_iopub_msg(timeout=deadline - time.monotonic())
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


async def reply_to(kc: AsyncKernelClient, msg_id: str, timeout: float = 15) -> dict:
    """The shell reply to msg_id. Others are passed over: wait_for_ready sends kernel_info
    again each second without an answer, and on a busy machine the extra replies come later."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await kc.get_shell_msg(timeout=deadline - time.monotonic())
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


async def collect(kc: AsyncKernelClient, msg_id: str, timeout: float = 15) -> tuple[dict, str]:
    """The execute_reply for msg_id and the stdout its cell printed."""
    deadline = time.monotonic() + timeout
    out = await stdout(kc, msg_id, timeout)
    return await reply_to(kc, msg_id, deadline - time.monotonic()), out


async def run(kc: AsyncKernelClient, code: str) -> tuple[dict, str]:
    return await collect(kc, kc.execute(code))


async def test_execute_through_relay(relay, start_kernel, connect):
    km = await start_kernel()
    relay.retarget(kernel_info(km))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)
    assert kc.session.key == relay.key != km.session.key

    reply, out = await run(kc, "x = 42; print(x)")
    assert reply["content"]["status"] == "ok" and out == "42\n"

    # stdin: the kernel addresses input_request to the shell idents; it must reach us
    msg_id = kc.execute("name = input('who? ')", allow_stdin=True)
    request = await kc.get_stdin_msg(timeout=10)
    assert request["msg_type"] == "input_request"
    kc.input("bob")
    reply, _ = await collect(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    assert (await run(kc, "print(name)"))[1] == "bob\n"
    assert relay.stats["queued"] == 0 and relay.stats["to_kernel"] > 0

    # a gap without a move: queued, then flushed to the same kernel
    relay.pause()
    msg_id = kc.execute("print(x + 1)")
    while relay.stats["queued"] == 0:
        await asyncio.sleep(0.01)
    await relay.resume()
    assert (await collect(kc, msg_id))[1] == "43\n"


async def test_a_kernel_with_the_relays_key_gets_frames_as_they_are(relay, start_kernel, connect):
    """As MovableKernel starts kernels: nothing is re-signed, and a message a client did not
    sign with the key is still dropped by the relay; after a move to a kernel with a key of
    its own, frames are re-signed (the client's key stays)."""
    km = await start_kernel(key=relay.key)
    await relay.retarget(kernel_info(km))
    assert not relay.resigning
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)
    assert (await run(kc, "x = 5; print(x)"))[1] == "5\n"

    # a forged request (signed with another key) never reaches the kernel
    forger = AsyncKernelClient()
    forger.load_connection_info({**relay.connection_info, "key": "not-the-key"})
    forger.start_channels()
    try:
        dropped = relay.stats["dropped"]
        forger.execute("x = 666")
        while relay.stats["dropped"] == dropped:
            await asyncio.sleep(0.01)
    finally:
        forger.stop_channels()
    assert (await run(kc, "print(x)"))[1] == "5\n"

    km2 = await start_kernel()
    assert km2.session.key != relay.key
    await relay.resume(kernel_info(km2))
    assert relay.resigning
    assert (await run(kc, "print(41 + 1)"))[1] == "42\n"


async def test_heartbeat_answered_during_gap(relay, start_kernel, connect):
    km = await start_kernel()
    relay.retarget(kernel_info(km))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)
    assert await relay.probe_target()

    relay.pause()
    await km.shutdown_kernel(now=True)
    assert not await relay.probe_target(timeout=0.5) and relay.target_alive is False

    req = zmq.asyncio.Context.instance().socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(f"tcp://127.0.0.1:{relay.connection_info['hb_port']}")
        await req.send(b"ping")
        assert await asyncio.wait_for(req.recv(), 2) == b"ping"
    finally:
        req.close()
    # the client's own heartbeat thread (time_to_dead 1 s) keeps seeing beats
    await asyncio.sleep(2.5)
    assert kc.hb_channel.is_beating()


async def test_queued_request_replied_by_new_kernel(relay, start_kernel, connect):
    km1 = await start_kernel()
    relay.retarget(kernel_info(km1))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)
    before = relay.connection_info

    relay.pause()
    await km1.shutdown_kernel(now=True)
    msg_id = kc.execute("y = 2; print(y)")
    while relay.stats["queued"] == 0:
        await asyncio.sleep(0.01)

    km2 = await start_kernel()
    info2 = kernel_info(km2)
    assert info2["key"] != kernel_info(km1)["key"]
    assert info2["shell_port"] != kernel_info(km1)["shell_port"]
    # in a move the new kernel is up (and restored) before resume()
    await (await connect(info2)).wait_for_ready(timeout=30)
    resumed = relay.resume(info2)
    reply = await reply_to(kc, msg_id)
    await resumed

    assert reply["content"]["status"] == "ok"
    assert await stdout(kc, msg_id) == "2\n"
    assert relay.connection_info == before  # same ip, ports and key for the client
    assert relay.stats["queued"] == 0


async def test_retarget_to_other_address_keeps_iopub(relay, start_kernel, connect):
    km1 = await start_kernel()
    relay.retarget(kernel_info(km1))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)
    assert (await run(kc, "print('one')"))[1] == "one\n"
    iopub = kc.iopub_channel.socket

    km2 = await start_kernel(ip="127.0.0.2")
    assert kernel_info(km2)["ip"] == "127.0.0.2"
    await relay.retarget(kernel_info(km2))
    await km1.shutdown_kernel(now=True)

    reply, out = await run(kc, "import os; print(os.getpid())")
    assert reply["content"]["status"] == "ok"
    assert int(out) == km2.provisioner.pid  # it ran in the new kernel
    assert kc.iopub_channel.socket is iopub  # no resubscription on the client


async def test_announcement_shown_in_the_next_cell_only(relay, start_kernel, connect):
    km1 = await start_kernel()
    relay.retarget(kernel_info(km1))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)

    # after a move that lost something, the user's next cell says what
    relay.announce("gen (generator) could not be moved")
    msg_id = kc.execute("print('after')")
    errors = []
    deadline = time.monotonic() + 15
    while True:
        msg = await kc.get_iopub_msg(timeout=deadline - time.monotonic())
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
            errors.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert errors == ["gen (generator) could not be moved\n"]
    # signed with the relay's key like everything else the client gets, and said once
    reply, out = await run(kc, "print('again')")
    assert out == "again\n" and reply["content"]["status"] == "ok"


async def test_requests_a_dead_kernel_took_along_go_to_its_successor(relay, start_kernel, connect):
    km1 = await start_kernel()
    relay.retarget(kernel_info(km1))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)
    assert (await run(kc, "print(1)"))[1] == "1\n"  # answered: not pending any more

    msg_id = kc.execute("import time; time.sleep(1); print('done')")
    while relay.stats["to_kernel"] < 3:  # kernel_info, print(1), this one
        await asyncio.sleep(0.01)
    await km1.shutdown_kernel(now=True)  # the host went away: no reply will come
    relay.pause()
    assert relay.requeue_unanswered() == 1

    km2 = await start_kernel()
    await relay.retarget(kernel_info(km2))
    reply, out = await collect(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "ok" and out == "done\n"
    # a normal re-target does not run anything twice
    await relay.retarget(kernel_info(km2))
    assert relay.requeue_unanswered() == 0


async def start_sleeping_cell(kc) -> str:
    """Run a 30 s cell and return once its own code runs: a SIGINT between ipykernel's
    execute_input and the cell's code is not the cell's error (ipykernel's window)."""
    msg_id = kc.execute("import time; print('running', flush=True); time.sleep(30)")
    while True:
        msg = await kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id:
            return msg_id


async def test_interrupt_and_restart_request_on_control(relay, start_kernel, connect):
    km = await start_kernel()
    relay.retarget(kernel_info(km))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)

    msg_id = await start_sleeping_cell(kc)
    # ipykernel handles interrupt_request on control itself (it signals its own process)
    interrupt = kc.session.msg("interrupt_request", {})
    kc.control_channel.send(interrupt)
    ack = await kc.get_control_msg(timeout=10)
    assert ack["parent_header"]["msg_id"] == interrupt["header"]["msg_id"]
    reply, _ = await collect(kc, msg_id, timeout=10)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"

    # restart: the kernel acknowledges and exits; starting the new process is the
    # provisioner's job, after which it re-targets the relay
    assert not relay.shutdown_requested
    restart_id = kc.shutdown(restart=True)
    ack = await kc.get_control_msg(timeout=10)
    assert ack["parent_header"]["msg_id"] == restart_id
    assert ack["content"]["restart"] is True
    # the relay knows this kernel's exit is on purpose (no move, no recovery for it) ...
    assert relay.shutdown_requested
    # ... until it serves the next kernel process
    km2 = await start_kernel()
    await relay.retarget(kernel_info(km2))
    assert not relay.shutdown_requested
    assert (await run(kc, "print('restarted')"))[1] == "restarted\n"


async def test_an_interrupted_cell_says_why_before_it_ends(relay, start_kernel, connect):
    km = await start_kernel()
    relay.retarget(kernel_info(km))
    kc = await connect(relay.connection_info)
    await kc.wait_for_ready(timeout=30)

    msg_id = await start_sleeping_cell(kc)
    # a move interrupts it, through the relay's own control socket (no client's reply)
    relay.pause()
    relay.hold_interrupted()
    assert await relay.interrupt_kernel()
    seen = []
    while "error" not in seen:
        msg = await kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id:
            seen.append(msg["msg_type"])
    # the cell stays open (no idle yet) until the move knows what to say
    with pytest.raises(queue.Empty):
        msg = await kc.get_iopub_msg(timeout=0.5)
    assert await relay.explain_interrupted("interrupted because of a move")
    texts, idle = [], False
    while not idle:
        msg = await kc.get_iopub_msg(timeout=30)
        assert msg["parent_header"].get("msg_id") == msg_id
        if msg["msg_type"] == "stream":
            texts.append(msg["content"]["text"])
        idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
    assert texts == ["interrupted because of a move\n"]
    reply = await reply_to(kc, msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # nothing held any more: the next cell goes as usual
    relay.resume()
    assert (await run(kc, "print('next')"))[1] == "next\n"
    # a cell that was not interrupted is not explained
    relay.hold_interrupted()
    assert not await relay.explain_interrupted("nothing ran", wait=0.2)
