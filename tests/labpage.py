"""Driving JupyterLab in headless Debian chromium with Playwright, for the browser tests.

Playwright gets the system's chromium through `executable_path` (no browser download). The
page must be served with `--LabApp.expose_app_in_browser=True`, which gives `window.jupyterapp`.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from contextlib import asynccontextmanager
from pathlib import Path

from realhub import OPTIONAL_SERVER_EXTENSIONS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# chromium's own background traffic finds a closed network here: keep it quiet
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

RUN_CELL = """async (index) => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    panel.content.activeCellIndex = index;
    await app.commands.execute('notebook:run-cell');
}"""

KERNEL_STATUS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return kernel ? kernel.status + '/' + kernel.connectionStatus : 'none';
}"""

# the text of a cell's outputs (by the cell's index in the current notebook)
CELL_OUTPUT = """(index) => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
    return [...cell.outputArea.node.querySelectorAll('.jp-OutputArea-output')]
        .map(node => node.innerText).join('');
}"""


def notebook(cells: list[str], kernel: str = "python3", display_name: str = "Python 3") -> dict:
    """An nbformat 4 notebook of code cells for `kernel`."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": kernel, "display_name": display_name, "language": "python"}
        },
        "cells": [
            {
                "cell_type": "code",
                "id": f"c{i}",
                "metadata": {},
                "source": src,
                "outputs": [],
                "execution_count": None,
            }
            for i, src in enumerate(cells)
        ],
    }


@asynccontextmanager
async def chromium_pages(n: int):
    """`n` fresh pages in one headless chromium, each in a browser context of its own (its
    own cookies and storage); the browser is closed afterwards."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield [await browser.new_page() for _ in range(n)]
        finally:
            await browser.close()


@asynccontextmanager
async def chromium_page():
    """A fresh page in headless chromium; the browser is closed afterwards."""
    async with chromium_pages(1) as [page]:
        yield page


async def wait_for(page, script, arg, want, timeout=60):
    """Evaluate `script` (with `arg`, if not None) until `want(value)`; returns the value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await page.evaluate(script, arg) if arg is not None else await page.evaluate(script)
        if want(value):
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out; last value {value!r}")


# a hub's config for JupyterLab pages the tests drive: servers open /lab and expose the app
LAB_CONFIG = (
    'c.Spawner.default_url = "/lab"\nc.Spawner.args = ["--LabApp.expose_app_in_browser=True"]\n'
)
#: ... and their servers load every server extension installed here, as a user's would:
#: JupyterLab's frontends of them (the Notebook Jobs panel, LSP) call them from the page
LAB_SERVER_EXTENSIONS = OPTIONAL_SERVER_EXTENSIONS


async def log_in_to_lab(page, hub, user: str = "alice") -> None:
    """Log `user` in at the hub's login page, take the spawn form's default if it is
    offered, and wait until the user's JupyterLab is loaded."""
    await page.goto(hub.url + "/hub/login")
    await page.fill("#username_input", user)
    await page.fill("#password_input", "pw")
    await page.click("#login_submit")
    await page.wait_for_url("**/hub/**")
    # the spawn page offers the profiles; take the default
    if await page.locator("form#spawn_form").count():
        await page.click("form#spawn_form [type=submit]")
    await page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)


async def open_lab_notebook(
    page, hub, token: str, name: str, cells: list[str], user: str = "alice", idle_within=60
) -> None:
    """Save a notebook of `cells` in `user`'s server, open it in the page's JupyterLab and
    wait until its kernel is idle and connected."""
    status, _ = await hub.request(
        "PUT",
        f"/user/{user}/api/contents/{name}",
        token,
        {"type": "notebook", "format": "json", "content": notebook(cells)},
    )
    assert status in (200, 201), status
    await page.goto(f"{hub.url}/user/{user}/lab/tree/{name}")
    await page.wait_for_function(
        "window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext"
    )
    await wait_for(page, KERNEL_STATUS, None, lambda s: s == "idle/connected", idle_within)
