"""The JupyterLab widget in a real browser: host and state in the status bar, a notification
when a reclaim notice moves the server, and the tab keeps working.

The widget is the prebuilt extension the package's wheel ships (share/jupyter/labextensions/
jupyterhub-migrating): nothing here installs or enables it. Headless Debian chromium driven
by Playwright, real hub, CHP, local hosts and servers.
"""

from __future__ import annotations

import asyncio
import re
import time
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

STATUS_ITEM = """() => {
    const item = document.querySelector('.jp-MigratingStatus');
    return item ? item.innerText.trim() : null;
}"""

# the text of every notification toast JupyterLab shows
TOASTS = """() => [...document.querySelectorAll('.Toastify__toast')].map(t => t.innerText)"""

# a toast still sliding in (react-toastify's enter animation)
TOAST_ENTERING = """() => [...document.querySelectorAll('.Toastify__toast')]
    .some(t => /enter/.test(t.className))"""

MENU = """() => {
    const menu = document.querySelector('.jp-MigratingStatus-menu');
    if (!menu) return null;
    return [...menu.querySelectorAll('.lm-Menu-itemLabel')].map(n => n.innerText).filter(Boolean);
}"""

DIALOGS = "() => [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText).join('\\n')"

# JupyterLab's own first-visit toast ("get notified about official Jupyter news?")
DISMISS_NEWS = """() => {
    for (const toast of document.querySelectorAll('.Toastify__toast')) {
        if (toast.innerText.includes('Jupyter news')) {
            const no = [...toast.querySelectorAll('button')].find(b => b.innerText === 'No');
            if (no) no.click();
        }
    }
}"""

MOVING = re.compile(
    r"Moving to a new host: reclaim notice, (\d+ s|now) left\. "
    r"The page may pause for a few seconds\."
)
MOVED = re.compile(r"Moved to (\S+) in \d+\.\d s")


def toast_matching(pattern: re.Pattern):
    return lambda toasts: any(pattern.search(t) for t in toasts)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_widget_tells_a_reclaim_and_the_tab_keeps_working(hub_factory):
    pytest.importorskip("playwright.async_api")
    hub = await hub_factory(LAB_CONFIG, server_extensions=LAB_SERVER_EXTENSIONS)
    token = await hub.user_token("alice")
    dialogs: list[str] = []
    watcher: asyncio.Task | None = None
    async with chromium_page() as page:
        await page.set_viewport_size({"width": 1100, "height": 640})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            await log_in_to_lab(page, hub)
            await open_lab_notebook(page, hub, token, "widget.ipynb", ["x = 42", "print(x)"])
            await page.evaluate(RUN_CELL, 0)

            # the status bar shows the server's host and state, from the hub's service
            old = (await hub.server_info("alice"))["host_id"]
            await wait_for(page, STATUS_ITEM, None, lambda s: s == f"{old} · Running", 30)
            # its menu: Migrate, Suspend and the hub's page
            await page.click(".jp-MigratingStatus")
            items = await wait_for(page, MENU, None, bool, 10)
            assert items == [
                "Migrate to another host",
                "Suspend server…",
                "Open the hub’s migrate page",
            ], items
            await page.keyboard.press("Escape")
            await page.evaluate(DISMISS_NEWS)

            async def watch_dialogs():
                while True:
                    text = await page.evaluate(DIALOGS)
                    if text:
                        dialogs.append(text)
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch_dialogs())
            status, data = await hub.migrate_api(
                "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 6}
            )
            assert status == 202, data
            toasts = await wait_for(page, TOASTS, None, toast_matching(MOVING), 30)
            await wait_for(page, TOAST_ENTERING, None, lambda entering: not entering, 5)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "widget-moving.png"))
            assert "Floating" in await page.evaluate(STATUS_ITEM), toasts

            # the same notification tells where the server went, and how long it paused
            toasts = await wait_for(page, TOASTS, None, toast_matching(MOVED), 60)
            new = (await hub.server_info("alice"))["host_id"]
            moved = [MOVED.search(t).group(1) for t in toasts if MOVED.search(t)]
            assert moved == [new] and new != old, toasts
            await wait_for(page, STATUS_ITEM, None, lambda s: s == f"{new} · Running", 10)
            await page.screenshot(path=str(ARTIFACTS / "widget-moved.png"))

            # the tab goes on where it was
            await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected", 30)
            await page.evaluate(RUN_CELL, 1)
            out = await wait_for(page, CELL_OUTPUT, 1, lambda out: out.strip() != "", 30)
            assert out.strip() == "42", out

            # the menu's Migrate moves it again, told the same way
            await page.click(".jp-MigratingStatus")
            await page.click(".jp-MigratingStatus-menu >> text=Migrate to another host")
            requested = re.compile(r"Moving to a new host: requested by alice\.")
            await wait_for(page, TOASTS, None, toast_matching(requested), 20)
            third = await wait_for(
                page,
                STATUS_ITEM,
                None,
                lambda s: s.endswith(" · Running") and not s.startswith(new),
                60,
            )
            third = third.split(" · ")[0]
            toasts = await wait_for(
                page,
                TOASTS,
                None,
                lambda ts: any(m and m.group(1) == third for m in map(MOVED.search, ts)),
                20,
            )
            assert (await hub.server_info("alice"))["host_id"] == third, toasts
            watcher.cancel()
            assert not any("Server Connection Error" in d for d in dialogs), dialogs

            # suspended and resumed elsewhere (the CLI): the new spawn's OAuth client refuses
            # this tab's token, and the widget asks for a reload (not "host ?")
            status, data = await hub.migrate_api("POST", "/servers/alice/suspend")
            assert status in (200, 202), data
            await wait_for(
                page, STATUS_ITEM, None, lambda s: bool(s) and s.endswith(" · Suspended"), 30
            )
            status, data = await hub.migrate_api("POST", "/servers/alice/resume?wait=true")
            assert status == 200, data
            reload_toast = re.compile(r"started again: reload this page to reconnect")
            toasts = await wait_for(page, TOASTS, None, toast_matching(reload_toast), 30)
            assert await page.evaluate(STATUS_ITEM) == "reload page", toasts
            buttons = await page.evaluate(
                "() => [...document.querySelectorAll('.Toastify__toast button')]"
                ".map(b => b.innerText)"
            )
            assert "Reload" in buttons, buttons
            await page.goto(hub.url + "/user/alice/lab")
            await wait_for(
                page, STATUS_ITEM, None, lambda s: bool(s) and s.endswith(" · Running"), 60
            )

            # Suspend, once confirmed, leaves for the hub's migrate page (which resumes it)
            await page.click(".jp-MigratingStatus")
            await page.click(".jp-MigratingStatus-menu >> text=Suspend server…")
            await page.click(".jp-Dialog .jp-mod-warn")
            await page.wait_for_url(re.compile(r"/services/migrate/(\?.*)?$"), timeout=60_000)
            info = await hub.server_info("alice")
            assert info["state"] == "Suspended", info
        except BaseException:
            if watcher is not None:
                watcher.cancel()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "widget-failure.png"))
            title = await page.evaluate(
                "() => (document.querySelector('.jp-MigratingStatus') || {}).title"
            )
            print(
                f"\nconsole: {console[-20:]}\nstatus item: {title!r}\ndialogs: {dialogs}"
                f"\nat {time.strftime('%X')}"
            )
            raise
