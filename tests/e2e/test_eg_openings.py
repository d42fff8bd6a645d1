"""The Enterprise Gateway example as a new user meets it (examples/enterprise-gateway/run.sh,
JupyterLab with --gateway-url in front of Enterprise Gateway 3.3): notebook openings in a
real browser reach Idle, and every kernel the launcher offers moves, R's included.
Eight openings by default (the upstream hold met 6 of 20 unfixed: eight miss it with
p = 0.7^8 < 6 %, and the dropped-socket test below hits its cause every time);
EG_OPENINGS=20 runs the twenty the example's README reports.

Headless Debian chromium driven by Playwright (no browser download: `executable_path`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from gateways import (
    EG_EXAMPLE,
    EG_VENV,
    USES_THE_EG_EXAMPLE,
    EnterpriseGatewayExample,
    reclaim,
    serving,
    until,
    until_held,
)
from kernelws import KernelSocket
from labpage import ARTIFACTS, CHROMIUM, KERNEL_STATUS, chromium_page, notebook

# one example for the module: each test leaves no kernel behind it
pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    USES_THE_EG_EXAMPLE,
]

OPENINGS = int(os.environ.get("EG_OPENINGS", 8))
# generous (openings take 3-4 s here); one that meets the upstream hold stays "unknown"
# past the front's 42 s request_timeout, and then until a cell is run
IDLE_WITHIN = 25.0
KERNEL = "python3-moving"
# every fourth opening is an R notebook (the issue saw the hold with R too)
KERNELS = [("python3-moving", "Python 3 (moves with its host)")] * 3 + [
    ("ir", "R (moves with its host)")
]
NOTICE = 8.0

if not (EG_VENV / "bin" / "jupyter-enterprisegateway").exists():
    pytest.skip(
        "Enterprise Gateway's venv .venv-eg is missing: `make test` (or `make install-eg`) "
        "creates it",
        allow_module_level=True,
    )


class LabExample(EnterpriseGatewayExample):
    """The example, with `window.jupyterapp` exposed and notebooks in the test's folder."""

    def __init__(self, tmp: Path, *, lab_options: tuple[str, ...] = (), **kwargs):
        super().__init__(tmp, **kwargs)
        self.lab_options = ("--LabApp.expose_app_in_browser=True", *lab_options)
        self.notebooks = self.dir / "notebooks"

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "LAB_OPTS": " ".join(self.lab_options),
            "NOTEBOOK_DIR": str(self.notebooks),
        }


async def open_notebooks(ex: EnterpriseGatewayExample, n: int, within: float) -> list[dict]:
    """Open `n` notebooks (on KERNELS in turn) one after another, each in a freshly loaded
    JupyterLab page, as a user's first notebook; each one's kernel is shut down before the
    next opening (their hosts are given back meanwhile, all by the end). Returns, per
    opening, the kernel status last seen and how long it took to be idle (None if it was
    not idle within `within` seconds)."""
    results = []
    async with chromium_page() as page:
        for i in range(n):
            path = f"opening-{i}.ipynb"
            kernel, display_name = KERNELS[i % len(KERNELS)]
            status, _ = await ex.request(
                "PUT",
                f"/api/contents/{path}",
                {
                    "type": "notebook",
                    "format": "json",
                    "content": notebook(["x = 1"], kernel, display_name),
                },
            )
            assert status in (200, 201)
            started = time.monotonic()
            # ?reset: a fresh workspace, so earlier notebooks are not reopened
            await page.goto(f"{ex.url}/lab/tree/{path}?reset&token={ex.token}")
            await page.wait_for_function("window.jupyterapp && document.body")
            value, idle_after = "none", None
            while time.monotonic() - started < within:
                value = await page.evaluate(KERNEL_STATUS)
                if value == "idle/connected":
                    idle_after = time.monotonic() - started
                    break
                await page.wait_for_timeout(200)
            results.append(
                {"path": path, "kernel": kernel, "status": value, "idle_after": idle_after}
            )
            if idle_after is None:
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / f"eg-opening-{i}.png"))
            # leave the page before its kernel goes, so no tab reconnects to it
            await page.goto("about:blank")
            status, sessions = await ex.request("GET", "/api/sessions")
            assert status == 200
            for session in sessions:
                status, _ = await ex.request("DELETE", f"/api/sessions/{session['id']}")
                assert status == 204
    await until(lambda: not ex.hosts(), 30, "a kernel's host was not released")
    return results


async def kernel_info_after_a_dropped_socket(ex: EnterpriseGatewayExample, within: float):
    """What JupyterLab does when it opens a new kernel's notebook: open the kernel websocket,
    close it at once, open it again with the same session id; then ask for kernel_info on
    the second one. Returns the reply's status, or None if none came within `within` s."""
    status, kernel = await ex.request("POST", "/api/kernels", {"name": KERNEL})
    assert status == 201, kernel
    session = uuid.uuid4().hex
    url = f"{ex.url}/api/kernels/{kernel['id']}/channels?session_id={session}"
    headers = {"Authorization": f"token {ex.token}"}
    request = {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "kernel_info_request",
            "session": session,
            "username": "test",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {},
        "channel": "shell",
        "buffers": [],
    }

    async def reply(ws) -> str:
        async for frame in ws:
            msg = json.loads(frame.data)
            if (
                msg["msg_type"] == "kernel_info_reply"
                and msg["parent_header"].get("msg_id") == request["header"]["msg_id"]
            ):
                return msg["content"]["status"]
        raise ConnectionError("the kernel websocket closed")

    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            first = await http.ws_connect(url)
            await first.close()
            async with http.ws_connect(url) as ws:
                await ws.send_str(json.dumps(request))
                try:
                    return await asyncio.wait_for(reply(ws), within)
                except asyncio.TimeoutError:
                    return None
    finally:
        status, _ = await ex.request("DELETE", f"/api/kernels/{kernel['id']}")
        assert status == 204
        await until(lambda: not ex.hosts(), 30, "the kernel's host was not released")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def example(request, tmp_path_factory):
    ex = LabExample(tmp_path_factory.mktemp("eg-openings"))
    await ex.clean()
    async with serving(request, ex, timeout=90):
        yield ex


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_openings_reach_idle(example):
    pytest.importorskip("playwright.async_api")
    results = await open_notebooks(example, OPENINGS, IDLE_WITHIN)
    late = [r for r in results if r["idle_after"] is None]
    times = sorted(r["idle_after"] for r in results if r["idle_after"] is not None)
    print(f"\n{OPENINGS} openings: {len(late)} not idle within {IDLE_WITHIN:.0f} s; idle after")
    print(" ".join(f"{t:.1f}" for t in times))
    if late:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "eg-openings.json").write_text(json.dumps(results, indent=1))
    assert late == [], late


async def test_a_socket_dropped_at_once_does_not_hold_the_next(example):
    # five new kernels: only a kernel's first connections meet the hold
    replies = [await kernel_info_after_a_dropped_socket(example, IDLE_WITHIN) for _ in range(5)]
    assert replies == ["ok"] * 5, replies
    gateway_log = (EG_EXAMPLE / "var" / "gateway.log").read_text()
    assert "Replacing stale connection" not in gateway_log


async def test_every_offered_kernel_moves_r_included(example):
    # the launcher offers what the gateway lists: each one runs under the process proxy and
    # says that it moves (a plain "R" from the system's kernelspecs would not)
    status, specs = await example.request("GET", "/api/kernelspecs")
    assert status == 200
    offered = {name: s["spec"] for name, s in specs["kernelspecs"].items()}
    assert {"python3-moving", "ir"} <= set(offered), offered
    for name, spec in offered.items():
        assert "moves with its host" in spec["display_name"], (name, spec["display_name"])

    status, kernel = await example.request("POST", "/api/kernels", {"name": "ir"})
    assert status == 201, kernel
    [old] = example.hosts()
    async with KernelSocket(example.url, kernel["id"], example.token) as ws:
        out, reply = await ws.run("x <- 42; cat('ready')", timeout=60)
        assert reply["status"] == "ok" and out.strip() == "ready", out
        await reclaim(old, NOTICE)
        await until_held(example, kernel["id"])
        out, reply = await ws.run("cat(x + 1)", timeout=60)
        assert reply["status"] == "ok" and out.strip().splitlines()[-1] == "43", out
    await until(lambda: old.id not in [h.id for h in example.hosts()], NOTICE + 5, "old host kept")
    status, _ = await example.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert status == 204
    await until(lambda: not example.hosts(), 15, "the kernel's host was not released")
