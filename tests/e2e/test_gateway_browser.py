"""In a real browser: JupyterLab with --gateway-url in front of Kernel Gateway 3; the notebook's
kernel (migrating-provisioner) moves to another host while the tab stays as it is.

Headless Debian chromium driven by Playwright (no browser download: `executable_path`).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from gateways import (
    MOVING_KERNEL,
    GatewayClient,
    KernelGateway,
    reclaim,
    serving,
    until,
    until_held,
)
from labpage import (
    ARTIFACTS,
    CHROMIUM,
    KERNEL_STATUS,
    RUN_CELL,
    chromium_page,
    notebook,
    wait_for,
)

from kernel_provisioner.gatewayws import GatewayWebSocketConnection

pytestmark = pytest.mark.integration

GATEWAY_WS_CLASS = f"{GatewayWebSocketConnection.__module__}.{GatewayWebSocketConnection.__name__}"

NOTICE = 15.0

CELLS = ["x = 42", "print(x)"]


KERNEL_ID = """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id"""

CELL_STATE = """(index) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cell = panel.content.widgets[index];
    const out = [...cell.outputArea.node.querySelectorAll('.jp-OutputArea-output')]
        .map(node => node.innerText).join('');
    return {count: cell.model.executionCount, output: out};
}"""

# Records every dialog and notification JupyterLab shows from now on (a MutationObserver, so a
# dialog that comes and goes between two polls is seen too).
WATCH_DIALOGS = """() => {
    const seen = window.__seen = {dialogs: [], toasts: [], status: [], connection: [], kernels: []};
    const grab = () => {
        for (const node of document.querySelectorAll('.jp-Dialog')) {
            const text = node.innerText;
            if (!seen.dialogs.includes(text)) seen.dialogs.push(text);
        }
        for (const node of document.querySelectorAll('.jp-toast-message, .Toastify__toast')) {
            const text = node.innerText;
            if (!seen.toasts.includes(text)) seen.toasts.push(text);
        }
    };
    grab();
    new MutationObserver(grab).observe(document.body, {childList: true, subtree: true});
}"""

# Records every kernel status and connection status change of the notebook's session from
# now on, and every change of its kernel connection object (a reconnect would make one).
WATCH_KERNEL = """() => {
    const seen = window.__seen;
    const context = window.jupyterapp.shell.currentWidget.sessionContext;
    context.statusChanged.connect((_, s) => seen.status.push(s));
    context.connectionStatusChanged.connect((_, s) => seen.connection.push(s));
    context.kernelChanged.connect((_, change) =>
        seen.kernels.push(change.newValue ? change.newValue.id : null));
}"""


@pytest.fixture
async def lab(tmp_path, request):
    """(front, gateway): `jupyter lab --gateway-url` in front of Kernel Gateway, with the
    kernel websocket class the docs give every gateway's front (a plain one left the kernel
    "unknown" for 90 s when a notebook's dropped first socket reached the gateway last)."""
    gateway = KernelGateway(tmp_path)
    front = GatewayClient(
        tmp_path,
        gateway,
        app="lab",
        extra_args=(
            "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.kernel_websocket_connection_class={GATEWAY_WS_CLASS}",
        ),
    )
    async with serving(request, gateway, front):
        yield front, gateway


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_kernel_moves_behind_jupyterlab_and_kernel_gateway(lab):
    pytest.importorskip("playwright.async_api")
    front, gateway = lab
    status, _ = await front.request(
        "PUT",
        "/api/contents/moving.ipynb",
        {
            "type": "notebook",
            "format": "json",
            "content": notebook(CELLS, MOVING_KERNEL, "Python 3 (moving)"),
        },
    )
    assert status in (200, 201)
    seen: dict = {}
    async with chromium_page() as page:
        try:
            await page.goto(f"{front.url}/lab/tree/moving.ipynb?token={front.token}")
            await page.wait_for_function("window.jupyterapp && document.body")
            await page.evaluate(WATCH_DIALOGS)
            await page.wait_for_function(
                "window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=90_000,
            )
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected", 90)
            kernel_id = await page.evaluate(KERNEL_ID)
            [old] = gateway.hosts()

            await page.evaluate(RUN_CELL, 0)
            await wait_for(page, CELL_STATE, 0, lambda c: c["count"] == 1)
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected")
            await page.evaluate(WATCH_KERNEL)

            await reclaim(old, NOTICE)
            reclaimed = time.monotonic()
            # the move is under way once a second host is being acquired: run the next cell
            # now, in the same tab, without a reload
            await until_held(gateway, kernel_id)
            sent = time.monotonic()
            await page.evaluate(RUN_CELL, 1)
            cell = await wait_for(page, CELL_STATE, 1, lambda c: c["count"] is not None, 60)
            answered = time.monotonic()
            assert cell["output"].strip() == "42", cell
            assert cell["count"] == 2, cell
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected", 30)
            # the old host stays up until its deadline: the kernel runs on the one that is not it
            [new] = [h for h in gateway.hosts() if h.id != old.id]
            print(
                f"\nkernel move under JupyterLab + Kernel Gateway: cell run during the move "
                f"answered {answered - sent:.2f} s after it was sent "
                f"(reclaim -> move start {sent - reclaimed:.2f} s)"
            )

            # the same kernel id on both servers
            status, kernels = await front.request("GET", "/api/kernels")
            assert status == 200 and [k["id"] for k in kernels] == [kernel_id], kernels
            status, kernels = await gateway.request("GET", "/api/kernels")
            assert status == 200 and [k["id"] for k in kernels] == [kernel_id], kernels

            # keep watching until the old host's deadline has passed
            await asyncio.sleep(max(0.0, reclaimed + NOTICE + 0.5 - time.monotonic()))
            # the move gives the old host back in the background
            await until(lambda: old.id not in [h.id for h in gateway.hosts()], 15, "old host kept")
            assert await page.evaluate(KERNEL_STATUS) == "idle/connected"
            seen = await page.evaluate("() => window.__seen")
            print(f"seen in the tab: {seen}")
            assert seen["dialogs"] == [], seen
            assert not any("connect" in t.lower() or "restart" in t.lower() for t in seen["toasts"])
            # the websocket never dropped, no new kernel connection was made, and the kernel
            # never (auto)restarted or died
            assert seen["connection"] == [] and seen["kernels"] == [], seen
            assert not {"restarting", "autorestarting", "dead", "unknown"} & set(seen["status"])
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "gateway-browser-failure.png"))
            if not seen:
                try:
                    seen = await page.evaluate("() => window.__seen || {}")
                except Exception:
                    pass
            (ARTIFACTS / "gateway-browser-seen.json").write_text(json.dumps(seen))
            raise

    # the kernel's shutdown releases its host
    status, sessions = await front.request("GET", "/api/sessions")
    assert status == 200
    for session in sessions:
        status, _ = await front.request("DELETE", f"/api/sessions/{session['id']}")
        assert status == 204
    await until(lambda: not gateway.hosts(), 15, "the kernel's host was not released")
