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
async def chromium_page():
    """A fresh page in headless chromium; the browser is closed afterwards."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


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
