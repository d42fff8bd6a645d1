"""In a real browser: log in, run cells in JupyterLab, reclaim the host, keep working.

Headless Debian chromium driven by Playwright (no browser download: `executable_path`).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from labpage import (
    ARTIFACTS,
    CHROMIUM,
    KERNEL_STATUS,
    RUN_CELL,
    chromium_page,
    notebook,
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


CELL_OUTPUT = """(index) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cell = panel.content.widgets[index];
    return [...cell.outputArea.node.querySelectorAll('.jp-OutputArea-output')]
        .map(node => node.innerText).join('');
}"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_variables_survive_a_reclaim_in_the_same_tab(hub_factory):
    pytest.importorskip("playwright.async_api")
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "synced"\n'
        'c.Spawner.default_url = "/lab"\n'
        'c.Spawner.args = ["--LabApp.expose_app_in_browser=True"]\n'
    )
    token = await hub.user_token("alice")
    dialogs: list[str] = []
    async with chromium_page() as page:
        try:
            await page.goto(hub.url + "/hub/login")
            await page.fill("#username_input", "alice")
            await page.fill("#password_input", "pw")
            await page.click("#login_submit")
            await page.wait_for_url("**/hub/**")
            # the spawn page offers the profiles; take the default
            if await page.locator("form#spawn_form").count():
                await page.click("form#spawn_form [type=submit]")
            await page.wait_for_url("**/user/alice/lab**", timeout=120_000)

            status, _ = await hub.request(
                "PUT",
                "/user/alice/api/contents/moving.ipynb",
                token,
                {"type": "notebook", "format": "json", "content": notebook(CELLS)},
            )
            assert status in (200, 201)
            await page.goto(hub.url + "/user/alice/lab/tree/moving.ipynb")
            await page.wait_for_function(
                "window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
            )
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected")
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

            # same tab, no reload: the kernel comes back to idle and remembers
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected", 90)
            await page.evaluate(RUN_CELL, 4)
            out = await wait_for(page, CELL_OUTPUT, 4, lambda out: out.strip() != "", 60)
            assert out.split() == ["42", str(float(50 * 2**20 // 8)), "1"], out
            status, data = await hub.request("GET", "/user/alice/api/contents/kept.txt", token)
            assert status == 200 and data["content"] == "written in a cell"
            watcher.cancel()
            assert not any("Server Connection Error" in d for d in dialogs), dialogs
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser-move-failure.png"))
            (ARTIFACTS / "browser-move-dialogs.json").write_text(json.dumps(dialogs))
            raise
