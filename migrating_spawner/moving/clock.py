"""Time as the move engine sees it: one object, so tests can hand in a fake one."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall time for deadlines (notices carry epoch seconds), monotonic time for timings."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
