"""Kernel move under Enterprise Gateway, next to Enterprise Gateway's own recovery.

examples/enterprise-gateway/run.sh (Enterprise Gateway 3.3 from .venv-eg, JupyterLab in
front with --gateway-url). A client keeps one kernel websocket open through JupyterLab and
sends a tiny cell ("1") every 100 ms while the kernel's host goes away:

- MigratingProcessProxy: the host is reclaimed with a 20 s notice; the kernel moves.
- Enterprise Gateway's own recovery: a plain kernelspec (LocalProcessProxy); the kernel
  process is killed, as a reclaimed host kills it, and Enterprise Gateway's restarter
  starts a new one (what it does for a remote kernel too: a new process, state lost).

For each: the longest time between two replies (the gap), how long the cells sent during
the gap waited for their replies, cells never answered, and whether `x` (and a numpy array
of the given size) is still there afterwards. Prints a table and writes the section
"Kernel move under Enterprise Gateway" of benchmarks/results.md.

    .venv/bin/python benchmarks/gateway_kernel_move.py [--sizes 0,100] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from gateways import EnterpriseGatewayExample, reclaim, start_all, stop_all, until  # noqa: E402
from kernelws import KernelSocket, execute_request  # noqa: E402
from results import replace_section  # noqa: E402

SECTION = "## Kernel move under Enterprise Gateway"
NOTICE = 20.0
PROBE_EVERY = 0.1


class Prober:
    """Sends "1" every PROBE_EVERY seconds on the websocket; records send and reply times."""

    def __init__(self, ks: KernelSocket) -> None:
        self.ks = ks
        self.sent: dict[str, float] = {}
        self.replied: dict[str, float] = {}
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Prober:
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._read())]
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send(self) -> None:
        while True:
            request = execute_request("1", self.ks.session_id)
            request["content"]["store_history"] = False
            self.sent[request["header"]["msg_id"]] = time.monotonic()
            await self.ks.ws.send_str(json.dumps(request))
            await asyncio.sleep(PROBE_EVERY)

    async def _read(self) -> None:
        async for frame in self.ks.ws:
            msg = json.loads(frame.data)
            if msg["msg_type"] == "execute_reply":
                parent = msg["parent_header"].get("msg_id")
                if parent in self.sent:
                    self.replied[parent] = time.monotonic()

    async def until_recovered(self, since: float, timeout: float = 90) -> None:
        """Until a cell sent after `since` has its reply, and 2 s more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answered = [t for m, t in self.replied.items() if self.sent[m] > since]
            if answered and time.monotonic() > min(answered) + 2:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the kernel did not answer again")

    def figures(self) -> dict:
        """Gap, longest wait and unanswered cells (those sent more than 1 s ago)."""
        replies = sorted(self.replied.values())
        gap = max((b - a for a, b in zip(replies, replies[1:], strict=False)), default=0.0)
        waits = [self.replied[m] - sent for m, sent in self.sent.items() if m in self.replied]
        settled = time.monotonic() - 1
        lost = [m for m, sent in self.sent.items() if m not in self.replied and sent < settled]
        return {
            "gap": gap,
            "max_wait": max(waits, default=0.0),
            "sent": len(self.sent),
            "lost": len(lost),
        }


async def one_case(ex: EnterpriseGatewayExample, kernel: str, size_mb: int) -> dict:
    status, body = await ex.request("POST", "/api/kernels", {"name": kernel})
    assert status == 201, body
    kernel_id = body["id"]
    setup = "x = 42"
    if size_mb:
        setup += f"\nimport numpy as np\narr = np.ones({size_mb} * 2**20 // 8)"
    async with KernelSocket(ex.url, kernel_id, ex.token) as ks:
        out, reply = await ks.run(setup + "\nimport os\nprint(os.getpid())", timeout=120)
        assert reply["status"] == "ok", out
        pid = int(out.split()[-1])
        async with Prober(ks) as prober:
            await asyncio.sleep(1)
            if kernel == "python3-moving":
                [old] = ex.hosts()
                await reclaim(old, NOTICE)
                # the old host is released once the new kernel runs: the move is ending
                await until(lambda: old.id not in [h.id for h in ex.hosts()], 60, "no move")
            else:
                os.kill(pid, signal.SIGKILL)  # the host went: its processes are gone
            # a cell sent from now on is answered only by the kernel on its new host
            await prober.until_recovered(time.monotonic())
            figures = prober.figures()
        check = "print(x" + (", arr.nbytes // 2**20" if size_mb else "") + ")"
        out, reply = await ks.run(check, timeout=60)
    expected = "42" + (f" {size_mb}" if size_mb else "")
    figures["state"] = "kept" if out.strip().splitlines()[-1:] == [expected] else "lost"
    await ex.request("DELETE", f"/api/kernels/{kernel_id}")
    await until(lambda: not ex.hosts(), 20, "the kernel's host was not released")
    return figures


def table(rows: list[dict]) -> str:
    lines = [
        "| kernel | state | gap between replies | longest wait for a reply | cells never "
        "answered | variables afterwards |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['size']} | {r['gap']:.2f} s | {r['max_wait']:.2f} s | "
            f"{r['lost']} of {r['sent']} | {r['state']} |"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,100", help="numpy array sizes in MB")
    parser.add_argument("--output", default=str(HERE / "results.md"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [("python3-moving", "MigratingProcessProxy, 20 s notice")]
    cases.append(("python3-plain", "Enterprise Gateway's own restart"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ex = EnterpriseGatewayExample(Path(tmp))
        # Enterprise Gateway's default: LocalProcessProxy, a kernel process of its own
        plain = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (plain)",
            "language": "python",
        }
        ex.add_kernelspec("python3-plain", plain)
        await ex.clean()
        try:
            await start_all(ex, timeout=90)
            for size in sizes:
                for kernel, label in cases:
                    print(f"{label}, {size} MB ...", flush=True)
                    row = await one_case(ex, kernel, size)
                    row.update(label=label, size=f"x + {size} MB array" if size else "x")
                    rows.append(row)
                    print(row, flush=True)
        finally:
            await stop_all(ex)
    text = table(rows)
    print(text)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{SECTION}\n\n"
        "`benchmarks/gateway_kernel_move.py`, one run, "
        f"{when}, {platform.machine()} with {os.cpu_count()} cores. Enterprise Gateway 3.3 "
        "(`examples/enterprise-gateway/run.sh`), JupyterLab in front with `--gateway-url`; "
        "a client sends a one-character cell every 100 ms on one kernel websocket through "
        "JupyterLab. MigratingProcessProxy: the kernel's host is reclaimed with a 20 s "
        "notice and the kernel moves. Enterprise Gateway's own recovery: a plain kernelspec "
        "(LocalProcessProxy) whose kernel process is killed, as a reclaimed host kills it; "
        "Enterprise Gateway's restarter starts a new one. *Gap*: the longest time between "
        "two replies; *longest wait*: the longest any cell waited for its reply. The "
        "baseline restarts on the same machine; on a cluster (DistributedProcessProxy over "
        "SSH, Kubernetes) the restart also launches remotely, so its gap here is a lower "
        "bound. Neither gap counts the notice: the move starts on it, the baseline's kernel "
        "dies at the deadline.\n\n"
        f"{text}\n"
    )
    replace_section(section, Path(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
