"""`until_connected` with a real ipykernel: what the freeze's snapshot and restore calls use
instead of jupyter_client's `wait_for_ready`."""

from __future__ import annotations

import pytest
from jupyter_client import AsyncKernelClient, AsyncKernelManager

from migrating_spawner.singleuser.kernelclient import until_connected


async def test_every_new_client_gets_the_output_of_its_first_request():
    # iopub is a subscription: a client that sends before it is joined misses the output
    # (and execute_interactive then waits for an idle that never comes)
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    try:
        for i in range(10):
            client = km.client()
            client.start_channels()
            try:
                await until_connected(client, 30)
                seen: list[str] = []
                reply = await client.execute_interactive(
                    f"print('round', {i})",
                    store_history=False,
                    timeout=30,
                    output_hook=lambda m, seen=seen: seen.append(m["content"].get("text", "")),
                )
                assert reply["content"]["status"] == "ok"
                assert "".join(seen) == f"round {i}\n"
            finally:
                client.stop_channels()
    finally:
        await km.shutdown_kernel(now=True)


async def test_a_kernel_that_is_not_there_is_a_timeout_that_says_so():
    km = AsyncKernelManager(kernel_name="python3")
    km.write_connection_file()  # ports nothing listens on
    client = AsyncKernelClient(**km.get_connection_info(session=True))
    client.start_channels()
    try:
        with pytest.raises(TimeoutError, match="did not answer within 1 s"):
            await until_connected(client, 1)
    finally:
        client.stop_channels()
        km.cleanup_connection_file()
