"""A client's connection to a running kernel, made without jupyter_client's quiet wait."""

from __future__ import annotations

import queue
import time


async def until_connected(client, timeout: float) -> None:
    """Return once the kernel answers and its iopub reaches `client`: kernel_info requests,
    spaced out from 50 ms, until the status of one of them arrives on iopub (or ipykernel's
    iopub welcome). jupyter_client's `wait_for_ready` then also waits for 0.2 s of quiet on
    iopub: that wait was most of a freeze's fixed cost (one snapshot call, one restore)."""
    deadline = time.monotonic() + timeout
    sent: set[str] = set()
    interval = 0.05
    while True:
        sent.add(client.kernel_info())
        until = min(deadline, time.monotonic() + interval)
        while (left := until - time.monotonic()) > 0:
            try:
                msg = await client.iopub_channel.get_msg(timeout=left)
            except queue.Empty:
                break
            if msg["parent_header"].get("msg_id") in sent or msg["msg_type"] == "iopub_welcome":
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the kernel did not answer within {timeout:.0f} s")
        interval = min(1.0, interval * 2)
