"""The Jobs tab of the migrate service's hub page in a real browser: the control API's
headless jobs (GET jobs) with their status, moves, cost and output, and Cancel of a running
one from the tab (its server removed).

One real hub (CHP, local hosts, real named servers and kernels), headless Debian chromium
through Playwright.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import nbformat
import pytest
from jobnotebook import counter_notebook, ran
from labpage import ARTIFACTS, CHROMIUM, chromium_page

pytestmark = pytest.mark.integration

CONFIG = """
c.JupyterHub.allow_named_servers = True
c.JobRunner.instance_prices = {"small": 3.6}
"""


def row(page, job_id: str):
    return page.locator(f'#jobs tr.job-row[data-job="{job_id}"]')


async def submit(hub, token, notebook: str, name: str) -> str:
    status, job = await hub.migrate_api(
        "POST", "/jobs", token, {"notebook": notebook, "name": name}
    )
    assert status == 201, job
    return job["id"]


async def wait_status(page, job_id: str, status: str, timeout: float = 120_000) -> None:
    await page.wait_for_function(
        "([id, status]) => { const r = document.querySelector(`#jobs tr[data-job='${id}']`);"
        " return r && r.dataset.status === status }",
        arg=[job_id, status],
        timeout=timeout,
    )


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_the_jobs_tab_lists_a_job_to_its_end_and_cancels_a_running_one(hub_factory, tmp_path):
    pytest.importorskip("playwright.async_api")
    hub = await hub_factory(CONFIG, server_extensions=("jupyter_scheduler",))
    token = await hub.user_token("alice")
    # the jobs' servers write their counters in alice's (shared) home
    home = hub.workdir / "homes" / "alice"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o777)
    quick_nb = counter_notebook(["x = 1", "print(x + 1)"], "quick-counter.txt")
    nbformat.write(quick_nb, str(home / "quick.ipynb"))
    quick = await submit(hub, token, "quick.ipynb", "quick")

    async with chromium_page() as page:
        try:
            await page.goto(hub.url + "/hub/login?next=/services/migrate/")
            await page.fill("#username_input", "alice")
            await page.fill("#password_input", "pw")
            await page.click("#login_submit")
            await page.wait_for_url("**/services/migrate/**")
            # the control API answers GET jobs: the tab shows
            await page.locator("#tab-jobs").click(timeout=30_000)
            await row(page, quick).wait_for(timeout=30_000)
            assert await row(page, quick).locator("td.name").inner_text() == "quick"
            assert await row(page, quick).locator("td.notebook").inner_text() == "quick.ipynb"

            # the page follows the job to its end by itself
            await wait_status(page, quick, "completed")
            done = row(page, quick)
            assert await done.locator("td.status").inner_text() == "Completed"
            assert await done.locator("td.moves").inner_text() == "0"
            assert (await done.locator("td.cost").inner_text()).startswith("$")
            assert (await done.locator("td.output").inner_text()).startswith("quick.")
            assert await done.locator("button[data-verb=cancel-job]").count() == 0

            # a job that runs until cancelled: its counter at a path every server can
            # write (the job's server has a home of its own), its cell waits for a file
            # that never comes
            os.chmod(tmp_path, 0o777)
            counter = tmp_path / "long-counter.txt"
            wait = (
                "import os, time\n"
                f"while not os.path.exists({str(tmp_path / 'never')!r}): time.sleep(0.1)"
            )
            nbformat.write(counter_notebook([wait], counter), str(home / "long.ipynb"))
            long = await submit(hub, token, "long.ipynb", "long")
            deadline = time.monotonic() + 120
            while 1 not in ran(counter):
                assert time.monotonic() < deadline, "the long job's cell did not start"
                await asyncio.sleep(0.3)
            await wait_status(page, long, "running")
            await row(page, long).locator("button[data-verb=cancel-job]").click()
            await page.locator("#jobs-message", has_text="long: Cancelled.").wait_for(
                timeout=120_000
            )
            await wait_status(page, long, "cancelled", timeout=30_000)
            cancelled = row(page, long)
            assert await cancelled.locator("td.status").inner_text() == "Cancelled"
            assert await cancelled.locator("button[data-verb=cancel-job]").count() == 0
            message = await cancelled.locator("td.message").inner_text()
            assert message.startswith("its server was stopped and removed"), message
            status, job = await hub.migrate_api("GET", f"/jobs/{long}", token)
            assert status == 200 and job["status"] == "cancelled", job
            assert any(e["message"] == "cancelled by alice" for e in job["events"]), job
            status, user = await hub.api("GET", "/users/alice")
            assert long not in user["servers"], user["servers"]
            assert ran(counter) == [1]

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "jobs-tab.png"), full_page=True)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "jobs-tab-failure.png"), full_page=True)
            raise
