"""In a real browser: a job created from JupyterLab's Notebook Jobs UI (jupyter-scheduler's
own panel) survives a reclaim of its host during its long cell; the panel shows it
Completed, and its detail view says where and at which cell it resumed.

Headless Debian chromium driven by Playwright (no browser download: `executable_path`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nbformat
import pytest
from jobnotebook import six_cell_job
from labpage import (
    ARTIFACTS,
    CHROMIUM,
    LAB_CONFIG,
    LAB_SERVER_EXTENSIONS,
    chromium_page,
    log_in_to_lab,
)

pytestmark = pytest.mark.integration

QUIET = "no_track_activity=1"


async def counter(hub, token) -> list[int]:
    path = f"/user/alice/api/contents/six-counter.txt?{QUIET}"
    status, data = await hub.request("GET", path, token)
    return [int(x) for x in data["content"].split()] if status == 200 else []


async def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_a_job_from_the_notebook_jobs_panel_completes_across_a_reclaim(hub_factory):
    pytest.importorskip("playwright.async_api")
    hub = await hub_factory(
        'c.MigratingSpawner.home_mode = "synced"\n' + LAB_CONFIG,
        server_extensions=LAB_SERVER_EXTENSIONS,
    )
    token = await hub.user_token("alice")
    async with chromium_page() as page:
        try:
            await log_in_to_lab(page, hub)
            status, _ = await hub.request(
                "PUT",
                "/user/alice/api/contents/six.ipynb",
                token,
                {"type": "notebook", "format": "json", "content": six_cell_job("six", 60)},
            )
            assert status in (200, 201), status
            await page.goto(f"{hub.url}/user/alice/lab/tree/six.ipynb")
            # the notebook's toolbar button of jupyter-scheduler: "Create a notebook job"
            create = page.locator(
                '.jp-NotebookPanel [data-command="scheduling:create-from-notebook"]'
            )
            await create.first.click(timeout=60_000)
            await page.get_by_role("heading", name="Create Job").wait_for(timeout=30_000)
            # the form is ready once its environments came (its output formats come with
            # them; a loaded server answers late): it then sets the environment from the
            # model it had when it asked, so a name typed before is lost, and a Create
            # before sends no environment
            await page.locator("#jp-create-job-outputFormat-ipynb").wait_for(
                state="attached", timeout=60_000
            )
            await page.get_by_label("Job name").fill("six")
            await page.get_by_role("button", name="Create", exact=True).click()
            # the panel lists it, or the form says why not
            # (jupyter-scheduler creates it in a process of its own: slow under load)
            created = page.get_by_text('Your job "six" has been created')
            refused = page.locator(".jp-create-job-form [role=alert]")
            await created.or_(refused).first.wait_for(timeout=90_000)
            assert not await refused.count(), await refused.all_inner_texts()
            row = page.get_by_role("row").filter(has_text="six.ipynb")
            await row.first.wait_for(timeout=30_000)

            async def cell4():
                return 4 in await counter(hub, token)

            await until(cell4, 60, "cell 4 running")
            old = (await hub.server_info("alice"))["host_id"]
            status, data = await hub.migrate_api(
                "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 6}
            )
            assert status == 202, data

            async def moved():
                info = await hub.server_info("alice")
                return info if info["state"] == "Running" and info["host_id"] != old else None

            new = (await until(moved, 90, "the move"))["host_id"]

            # the user reloads the panel until the job is done
            reload = page.get_by_role("button", name="Reload")

            async def shown_completed():
                await reload.click()
                text = await row.first.inner_text(timeout=10_000)
                assert "Failed" not in text, text
                return "Completed" in text

            await until(shown_completed, 90, "the panel to show the job Completed")
            runs = await counter(hub, token)
            assert [runs.count(i) for i in (1, 2, 3, 5, 6)] == [1, 1, 1, 1, 1], runs
            assert 1 <= runs.count(4) <= 2, runs

            # the row's download button brings the output files into the home; the output
            # notebook has every cell's output
            await row.first.get_by_title('Download output files for "six"').click()

            async def output_path():
                # jupyter-scheduler names a job file's path only once it has downloaded it
                url = f"/user/alice/scheduler/jobs?{QUIET}"
                status, jobs = await hub.request("GET", url, token)
                [job] = jobs["jobs"]
                files = [f for f in job["job_files"] if f["file_format"] == "ipynb"]
                return files[0].get("file_path") if files else None

            path = await until(output_path, 90, "the output notebook's path after the download")

            async def downloaded():
                url = f"/user/alice/api/contents/{path}?{QUIET}"
                status, data = await hub.request("GET", url, token)
                return data["content"] if status == 200 else None

            out = nbformat.from_dict(await until(downloaded, 30, "the output notebook"))
            texts = ["".join(o.get("text", "") for o in c.outputs) for c in out.cells]
            assert "sum 6" in texts[4] and "done 6" in texts[5], texts

            # its detail view says where and at which cell it resumed, and why
            await row.first.get_by_title('Open detail view for "six"').click()
            note = f"resumed on {new} at cell 4 after a move from {old}"
            await page.get_by_text(note).first.wait_for(timeout=30_000)
            detail = await page.inner_text("body")
            assert "Completed" in detail, detail
            assert "cell 4 was interrupted and is re-run" in detail, detail
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "jobs-panel-detail.png"))
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "jobs-panel-failure.png"))
            raise
