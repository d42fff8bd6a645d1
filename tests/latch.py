"""A loopback port a cell blocks on until the test lets it go: a cell that must still be
running when a move's freeze begins, however slow the machine (a sleep of a few seconds
ends first under load)."""

import asyncio

from realhub import until


class Latch:
    """`wait_code()` is a line that blocks the cell (it needs `import socket` first) until
    `release()`."""

    def __init__(self):
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            lambda _, writer: self.writers.append(writer), "127.0.0.1", 0
        )
        self.port = self.server.sockets[0].getsockname()[1]

    def wait_code(self) -> str:
        return f"socket.create_connection(('127.0.0.1', {self.port})).recv(1)"

    async def _connected(self) -> bool:
        return bool(self.writers)

    async def release(self) -> None:
        await until(self._connected, 30, "the cell to connect to the latch")
        for writer in self.writers:
            writer.write(b"x")
            await writer.drain()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()
