"""The TCP gateway (HAProxy 2.6 driven by TCPGateway): connection setup latency and
throughput through HAProxy against direct, and how long a connection made during a move
waits after the release (the Lua hold polls every 20 ms). No hub: the gateway alone, with
its real HAProxy; a move is hold() then retarget() to another address.

    .venv/bin/python benchmarks/gateway.py [--connections 300] [--megabytes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from migrating_spawner.tcpgateway import TCPGateway

TARGET = 39111


async def echo(address: str) -> asyncio.Server:
    async def handle(reader, writer):
        writer.write(b"hi\n")
        await writer.drain()
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, address, TARGET)


async def setup_latency(port: int, n: int) -> list[float]:
    """Seconds from connect() to the service's first byte, n times."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        times.append(time.perf_counter() - started)
        writer.close()
    return times


async def held(
    gateway: TCPGateway, port: int, release_after: float, to: str
) -> tuple[float, float]:
    """(seconds a connection made during a move waited beyond the release, the hold)."""
    await gateway.hold("bench", "")
    started = time.perf_counter()
    attempt = asyncio.ensure_future(asyncio.open_connection("127.0.0.1", port))
    await asyncio.sleep(release_after)
    released = time.perf_counter()
    await gateway.retarget("bench", "", to)
    reader, writer = await attempt
    await reader.readline()
    writer.close()
    return time.perf_counter() - released, released - started


async def main(args) -> None:
    servers = [await echo("127.0.0.3"), await echo("127.0.0.4")]
    with tempfile.TemporaryDirectory() as state:
        gateway = TCPGateway(
            enabled=True,
            port_range="10400-10401",
            bind_ip="127.0.0.1",
            allowed_cidrs=["127.0.0.0/8"],
            state_dir=state,
        )
        try:
            port = (await gateway.connect("bench", "", TARGET, "127.0.0.3"))["port"]
            via = await setup_latency(port, args.connections)
            direct = [await _direct_once() for _ in range(args.connections)]
            mb_via = await throughput_to("127.0.0.1", port, args.megabytes)
            mb_direct = await throughput_to("127.0.0.3", TARGET, args.megabytes)
            waits = []
            for i in range(5):
                to = ("127.0.0.4", "127.0.0.3")[i % 2]
                waits.append(await held(gateway, port, 1.0, to))
        finally:
            gateway.stop()
            for server in servers:
                server.close()
    print("| measure | through HAProxy | direct |")
    print("|---|---|---|")
    print(
        f"| connection setup to first byte, median / p95 (ms, {args.connections}) | "
        f"{statistics.median(via) * 1e3:.2f} / {_p95(via) * 1e3:.2f} | "
        f"{statistics.median(direct) * 1e3:.2f} / {_p95(direct) * 1e3:.2f} |"
    )
    print(f"| echo throughput (MB/s, {args.megabytes} MB) | {mb_via:.0f} | {mb_direct:.0f} |")
    extra = [w for w, _ in waits]
    print(
        f"| a connection made during a move: held {waits[0][1]:.2f} s until the release, "
        f"then answered after (ms, 5 moves, max) | {max(extra) * 1e3:.0f} | - |"
    )


async def _direct_once() -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.3", TARGET)
    await reader.readline()
    writer.close()
    return time.perf_counter() - started


async def throughput_to(host: str, port: int, megabytes: int) -> float:
    """MB/s echoed through host:port (written and read back at once)."""
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readline()
    chunk = b"x" * (1 << 20)
    started = time.perf_counter()

    async def write():
        for _ in range(megabytes):
            writer.write(chunk)
            await writer.drain()

    async def read():
        left = megabytes << 20
        while left:
            left -= len(await reader.read(1 << 20))

    await asyncio.gather(write(), read())
    writer.close()
    return megabytes / (time.perf_counter() - started)


def _p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95) - 1]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--megabytes", type=int, default=200)
    asyncio.run(main(p.parse_args()))
