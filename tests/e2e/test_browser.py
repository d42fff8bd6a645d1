"""In a real browser: log in, run cells in JupyterLab, reclaim the host, keep working.

Headless Debian chromium driven by Playwright (no browser download: `executable_path`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from labpage import (
    ARTIFACTS,
    CELL_OUTPUT,
    CHROMIUM,
    KERNEL_STATUS,
    LAB_CONFIG,
    LAB_SERVER_EXTENSIONS,
    RUN_CELL,
    chromium_page,
    log_in_to_lab,
    open_lab_notebook,
    wait_for,
)

pytestmark = pytest.mark.integration

CELLS = [
    "x = 42",
    "with open('kept.txt', 'w') as f:\n    f.write('written in a cell')",
    "import numpy as np\narr = np.ones(50 * 2**20 // 8)",
    "gen = (i * i for i in range(10))\nnext(gen)",
    "print(x, arr.sum(), next(gen))",
]


# Records every kernel status and connection status change of the notebook's session from
# now on, with the browser's clock (ms since the epoch).
WATCH_KERNEL = """() => {
    const seen = window.__kernel = [];
    const context = window.jupyterapp.shell.currentWidget.sessionContext;
    context.statusChanged.connect((_, s) => seen.push([Date.now(), 'status', s]));
    context.connectionStatusChanged.connect((_, s) => seen.push([Date.now(), 'connection', s]));
}"""

# statuses no request or websocket handshake may get while a server moves
FAILED = {503, 424}


class Network:
    """Every HTTP response and websocket handshake the page saw, with its status.

    Playwright reports HTTP responses; websocket handshakes (101, or a refused one) come
    from the DevTools protocol, which sees the handshake's HTTP answer.
    """

    def __init__(self) -> None:
        self.responses: list[tuple[float, int, str]] = []
        self.handshakes: dict[str, dict] = {}  # DevTools request id -> url, status, error

    async def attach(self, page) -> None:
        page.on("response", lambda r: self.responses.append((time.time(), r.status, r.url)))
        cdp = await page.context.new_cdp_session(page)
        cdp.on("Network.webSocketCreated", self._created)
        cdp.on("Network.webSocketHandshakeResponseReceived", self._answered)
        cdp.on("Network.webSocketFrameError", self._error)
        await cdp.send("Network.enable")

    def _created(self, event: dict) -> None:
        self.handshakes[event["requestId"]] = {"at": time.time(), "url": event["url"]}

    def _answered(self, event: dict) -> None:
        entry = self.handshakes.setdefault(event["requestId"], {"at": time.time()})
        entry["status"] = event["response"]["status"]

    def _error(self, event: dict) -> None:
        entry = self.handshakes.setdefault(event["requestId"], {"at": time.time()})
        entry["error"] = event["errorMessage"]

    def since(self, start: float) -> dict:
        return {
            "responses": [r for r in self.responses if r[0] >= start],
            "handshakes": [h for h in self.handshakes.values() if h["at"] >= start],
        }

    def failures(self, start: float) -> list:
        seen = self.since(start)
        bad = [r for r in seen["responses"] if r[1] in FAILED]
        for handshake in seen["handshakes"]:
            error = handshake.get("error", "")
            if handshake.get("status") in FAILED or any(str(c) in error for c in FAILED):
                bad.append(handshake)
        return bad


def release_time(hub) -> float:
    """When the hub released alice's held route (from the hub's log, local time)."""
    found = re.findall(
        r"^\[I (\S+ \S+) .*Released /user/alice/ to ", hub.log_path.read_text(), re.M
    )
    assert found, "the hub never released the held route"
    return datetime.strptime(found[-1], "%Y-%m-%d %H:%M:%S.%f").timestamp()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_variables_survive_a_reclaim_in_the_same_tab(hub_factory):
    pytest.importorskip("playwright.async_api")
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "synced"\n'
        # no background snapshots: their cells would put JupyterLab's kernel indicator
        # back to Idle ~30 s after the new server started even if the reconnect did not
        "c.MigratingSpawner.kernel_snapshot_interval = 0\n" + LAB_CONFIG,
        server_extensions=LAB_SERVER_EXTENSIONS,
    )
    token = await hub.user_token("alice")
    dialogs: list[str] = []
    network = Network()
    watcher: asyncio.Task | None = None
    async with chromium_page() as page:
        try:
            await network.attach(page)
            await log_in_to_lab(page, hub)
            await open_lab_notebook(page, hub, token, "moving.ipynb", CELLS)
            for index in range(4):
                await page.evaluate(RUN_CELL, index)
            await wait_for(page, CELL_OUTPUT, 3, lambda out: out.strip() == "0")

            # watch for JupyterLab's error dialogs for the rest of the test
            async def watch_dialogs():
                while True:
                    text = await page.evaluate(
                        "() => [...document.querySelectorAll('.jp-Dialog')]"
                        ".map(d => d.innerText).join('\\n')"
                    )
                    if text:
                        dialogs.append(text)
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch_dialogs())
            await page.evaluate(WATCH_KERNEL)
            moving = time.time()
            old = (await hub.server_info("alice"))["host_id"]
            status, data = await hub.migrate_api(
                "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 15}
            )
            assert status == 202, data
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                info = await hub.server_info("alice")
                if info["state"] == "Running" and info["host_id"] != old:
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"no move: {info}")

            # same tab, no reload: the kernel comes back to idle (the reconnected socket is
            # told the kernel's state: JupyterLab ignores the kernel_info statuses), and
            # remembers
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected", 30)
            released = release_time(hub)
            timeline = await page.evaluate("() => window.__kernel")
            idle = [t / 1000 for t, kind, s in timeline if kind == "status" and s == "idle"]
            back = min((t for t in idle if t >= released), default=idle[-1])
            print(
                f"\nrelease -> kernel Idle in the tab: {back - released:.2f} s; "
                f"kernel timeline {[(round(t / 1000 - released, 2), k, s) for t, k, s in timeline]}"
            )
            # nothing the tab asked for during the move was refused, websockets included,
            # and the tab reconnected its kernel's websocket (the old server was killed)
            assert network.failures(moving) == [], network.since(moving)
            assert any(
                h.get("status") == 101 and "/channels" in h.get("url", "")
                for h in network.since(moving)["handshakes"]
            ), network.since(moving)
            await page.evaluate(RUN_CELL, 4)
            out = await wait_for(page, CELL_OUTPUT, 4, lambda out: out.strip() != "", 60)
            assert out.split() == ["42", str(float(50 * 2**20 // 8)), "1"], out
            status, data = await hub.request("GET", "/user/alice/api/contents/kept.txt", token)
            assert status == 200 and data["content"] == "written in a cell"
            watcher.cancel()
            assert not any("Server Connection Error" in d for d in dialogs), dialogs
        except BaseException:
            if watcher is not None:
                watcher.cancel()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser-move-failure.png"))
            (ARTIFACTS / "browser-move-dialogs.json").write_text(json.dumps(dialogs))
            (ARTIFACTS / "browser-move-network.json").write_text(
                json.dumps(network.since(0), indent=1)
            )
            raise
