"""The TCP gateway's HAProxy on its own (no hub): routes, the hold during a move, the pool,
allowed_cidrs (the gateway's and a port's own), and a gateway restarted as a hub restart
does (HAProxy and its connections stay). Through a real hub and a reclaim:
tests/integration/test_apps.py."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from migrating_spawner.tcpgateway import GatewayError, TCPGateway

pytestmark = pytest.mark.integration


def free_block(size: int) -> tuple[int, int]:
    """`size` consecutive ports free on every loopback address we use."""
    for _ in range(100):
        low = random.randrange(20000, 30000)
        try:
            for port in range(low, low + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return low, low + size - 1
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


async def serve(address: str, port: int, banner: bytes) -> asyncio.Server:
    """An SSH-like service: it speaks first (its banner), then echoes a line."""

    async def handle(reader, writer):
        writer.write(banner + b"\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(line)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, address, port)


async def talk(port: int, source: str = "127.0.0.1", timeout: float = 30) -> bytes:
    """Connect to a gateway port; the banner and the echo, or b'' when it was closed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except ConnectionResetError:  # refused by allowed_cidrs
        return b""
    try:
        banner = await asyncio.wait_for(reader.readline(), timeout)
        if not banner:
            return b""
        writer.write(b"ping\n")
        await writer.drain()
        return banner + await asyncio.wait_for(reader.readline(), timeout)
    except ConnectionResetError:  # refused (a reset after the kernel accepted)
        return b""
    finally:
        writer.close()


async def held_sessions(gateway: TCPGateway) -> int:
    """Connections HAProxy has accepted that have no server connection yet."""
    out = await gateway.api.command("show sess")
    return sum(1 for line in out.splitlines() if "fe=gateway" in line and "srv=s" not in line)


@pytest.fixture
async def gateway(tmp_path):
    low, high = free_block(3)
    made = []

    def make(**traits):
        settings = {
            "enabled": True,
            "port_range": f"{low}-{high}",
            "bind_ip": "127.0.0.1",
            "allowed_cidrs": ["127.0.0.0/8"],
            "state_dir": str(tmp_path / "gw"),
            "hold_timeout": 20,
        }
        gw = TCPGateway(**{**settings, **traits})
        made.append(gw)
        return gw

    yield make
    for gw in made:
        if gw._watch:
            gw._watch.cancel()
    made[0].process.stop()


async def test_ports_hold_during_a_move_and_survive_a_restart(gateway):
    target = random.randrange(30000, 40000)
    old = await serve("127.0.0.3", target, b"SSH-old")
    new = await serve("127.0.0.4", target, b"SSH-new")
    gw = gateway()
    info = await gw.connect("alice", "", target, "127.0.0.3")
    port = info["port"]
    assert info["address"] == f"127.0.0.1:{port}" and info["state"] == "open"
    assert await talk(port) == b"SSH-old\nping\n"
    # a port not in use closes at once
    assert await talk(port + 1) == b""

    # a move: new connections wait, then reach the new host; the port reads as moving
    # only once HAProxy holds it (a connection made at once is held, not answered by old)
    holding = asyncio.ensure_future(gw.hold("alice", ""))
    while gw.describe(port)["state"] != "moving":
        await asyncio.sleep(0)
    attempt = asyncio.ensure_future(talk(port))
    await holding
    for _ in range(200):
        if await held_sessions(gw):
            break
        await asyncio.sleep(0.05)
    assert await held_sessions(gw) == 1 and not attempt.done()
    old.close()
    await gw.retarget("alice", "", "127.0.0.4")
    assert await attempt == b"SSH-new\nping\n"

    # the pool: 3 ports
    await gw.connect("alice", "", target + 1, "127.0.0.4")
    await gw.connect("bob", "", target, "127.0.0.5")
    with pytest.raises(GatewayError, match="pool .* is exhausted") as e:
        await gw.connect("carol", "", 22, "127.0.0.6")
    assert e.value.status == 503
    await gw.disconnect("bob", "", port + 2)

    # a port's own allowed_cidrs (within the gateway's): bob's port to the new service
    # from 127.0.0.7 only, then 127.0.0.8 only (changed at runtime: the same HAProxy)
    pid = gw.process.pid()
    bobs = await gw.connect("bob", "", target, "127.0.0.4", ["127.0.0.7/32"])
    assert bobs["allowed_cidrs"] == ["127.0.0.7/32"] and bobs["port"] == port + 2
    assert await talk(port + 2, source="127.0.0.1") == b""
    assert await talk(port + 2, source="127.0.0.7") == b"SSH-new\nping\n"
    assert await talk(port, source="127.0.0.7") == b"SSH-new\nping\n"  # alice's: all of 127/8
    assert gw.describe(port)["allowed_cidrs"] == ["127.0.0.0/8"]
    await gw.connect("bob", "", target, "127.0.0.4", ["127.0.0.8"])
    assert await talk(port + 2, source="127.0.0.7") == b""
    assert await talk(port + 2, source="127.0.0.8") == b"SSH-new\nping\n"
    assert gw.process.pid() == pid
    for bad in (["10.0.0.0/8"], ["not-a-network"], []):
        with pytest.raises(GatewayError) as e:
            await gw.connect("bob", "", target, "127.0.0.4", bad)
        assert e.value.status == 400
    await gw.disconnect("bob", "", port + 2)
    assert await talk(port + 2, source="127.0.0.8") == b""

    # a hub restart: a new gateway object finds HAProxy running, an open connection stays
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await reader.readline() == b"SSH-new\n"
    pid = gw.process.pid()
    gw._watch.cancel()
    again = gateway()
    await again.ensure_started()
    assert again.process.pid() == pid
    assert again.list("alice")[0]["port"] == port
    writer.write(b"still here\n")
    await writer.drain()
    assert await reader.readline() == b"still here\n"
    writer.close()

    # allowed_cidrs: a changed list reloads HAProxy; other sources are refused
    again._watch.cancel()
    strict = gateway(allowed_cidrs=["127.0.0.9/32"])
    await strict.ensure_started()
    assert await talk(port, source="127.0.0.1") == b""
    assert await talk(port, source="127.0.0.9") == b"SSH-new\nping\n"
    new.close()
