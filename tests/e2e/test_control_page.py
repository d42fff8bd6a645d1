"""The hub page of the migrate service (/services/migrate/) in a real browser.

One real hub (CHP, local hosts, real servers) for the module, headless Debian chromium
through Playwright. The tests run in order on the same hub and share alice's server:
she finds the page from the hub home, moves, suspends, resumes and cancels her server with
the page's buttons; bob sees none of it; an admin sees everyone's servers and the hosts.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
from labpage import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from realhub import RealHub, module_hub

from migrating_spawner.service import page as control_page

pytestmark = pytest.mark.integration


def in_browser(test):
    """A browser test: they share one hub, one browser and alice's server, so one loop."""
    test = pytest.mark.asyncio(loop_scope="module")(test)
    return pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Debian chromium")(test)


# every state each server's card took, in order (the page updates itself: no reloads)
RECORD_STATES = """
document.addEventListener("DOMContentLoaded", () => {
    window.__states = [];
    const last = {};
    new MutationObserver((records) => {
        for (const record of records) {
            const card = record.target;
            const seen = [card.dataset.state, card.querySelector(".host").textContent];
            if (JSON.stringify(last[card.dataset.key]) !== JSON.stringify(seen)) {
                last[card.dataset.key] = seen;
                window.__states.push([card.dataset.key, ...seen]);
            }
        }
    }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["data-state"]});
});
"""

POST_WITHOUT_XSRF = """async (path) => {
    const resp = await fetch(path, {method: "POST", credentials: "same-origin"});
    return resp.status;
}"""

# as the page asks: its cookie and its XSRF token
GET_STATUS = """async (path) => {
    const xsrf = JSON.parse(document.getElementById("migrate-config").textContent).xsrf;
    const resp = await fetch(path, {credentials: "same-origin", headers: {"X-XSRFToken": xsrf}});
    return resp.status;
}"""


hub = module_hub(
    'c.MigratingSpawner.home_mode = "synced"\nc.MigratingSpawner.kernel_snapshot_interval = 0\n',
    "control-page",
    cleanup=lambda workdir: shutil.rmtree(workdir, ignore_errors=True),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def log_in(browser, hub: RealHub, name: str):
    """A browser context of its own (its own cookies) with `name` logged in at the hub
    home page."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    await context.add_init_script(RECORD_STATES)
    page = await context.new_page()
    await page.goto(hub.url + "/hub/login?next=/hub/home")
    await page.fill("#username_input", name)
    await page.fill("#password_input", "pw")
    await page.click("#login_submit")
    await page.wait_for_url("**/hub/home")
    return page


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(hub, browser):
    spawn = asyncio.create_task(hub.spawn("alice"))
    page = await log_in(browser, hub, "alice")
    await spawn
    yield page
    await page.context.close()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def tell_on_failure(request):
    """A failed browser test leaves a screenshot of alice's page (conftest prints the
    hub's log)."""
    yield
    failed = getattr(request.node, "rep_call", None)
    if failed is None or not failed.failed:
        return
    if "alice" in request.fixturenames:
        page = request.getfixturevalue("alice")
        ARTIFACTS.mkdir(exist_ok=True)
        name = f"control-page-failure-{request.node.name}.png"
        await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def card(page, key: str = "alice/"):
    return page.locator(f'article.migrate-server[data-key="{key}"]')


async def state_of(page, key: str = "alice/", timeout: float = 60) -> str:
    """The card's state once the page has shown it."""
    await card(page, key).wait_for(timeout=timeout * 1000)
    return await card(page, key).get_attribute("data-state")


async def until_state(page, state: str, key: str = "alice/", timeout: float = 90) -> None:
    await page.wait_for_function(
        "([key, state]) => { const c = document.querySelector("
        '`article.migrate-server[data-key="${key}"]`); return c && c.dataset.state === state }',
        arg=[key, state],
        timeout=timeout * 1000,
    )


async def shot(page, name: str) -> None:
    """A screenshot in test-artifacts/ (docs/images/ has copies of two, taken by hand: a
    test run should not change tracked files)."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_page_extends_the_hubs_own_templates():
    # no hub: the templates render with the hub's page.html, as the hub's loader finds it
    hub_templates = Path(sys.prefix) / "share" / "jupyterhub" / "templates"
    loader = ChoiceLoader(
        [
            PrefixLoader({"templates": FileSystemLoader([str(hub_templates)])}, "/"),
            FileSystemLoader([control_page.template_path(), str(hub_templates)]),
        ]
    )
    env = Environment(loader=loader, autoescape=True)

    class User:
        name = json_escaped_name = "alice"

    config = {"api": "/services/migrate/api/", "user": "alice", "admin": False, "xsrf": "<x>"}
    html = env.get_template("migrate.html").render(
        base_url="/hub/",
        prefix="/",
        user=User(),
        static_url=lambda path, include_version=True: "/hub/static/" + path,
        services=[{"name": "migrate", "href": "/services/migrate/"}],
        parsed_scopes={},
        xsrf_token="<x>",
        no_spawner_check=True,
        logout_url="/hub/logout",
        migrate_static=lambda path: "/services/migrate/static/" + path,
        migrate_config=config,
    )
    assert 'id="jupyterhub-logo"' in html  # the hub's navbar
    assert 'href="/services/migrate/"' in html  # Services -> migrate
    assert "/services/migrate/static/migrate.js" in html
    assert 'id="tab-hosts"' not in html  # not an admin
    assert "<x>" not in html  # the config is escaped into the page


@in_browser
async def test_alice_finds_her_running_server_from_the_hub_home(hub, alice):
    page = alice
    # the home page's override (c.JupyterHub.template_paths) links the page
    link = page.locator("#migrate-link")
    await link.wait_for()
    await link.click()
    await page.wait_for_url(re.compile(r".*/services/migrate/.*"))
    # the hub's own navbar: Home, Token, the Services menu with migrate in it
    await page.locator("#jupyterhub-logo").wait_for()
    assert await page.locator('a.dropdown-item[href="/services/migrate/"]').count() == 1
    info = await hub.server_info("alice")
    assert await state_of(page) == "Running"
    await page.wait_for_function(
        "(host) => document.querySelector('article[data-key=\"alice/\"] .host')"
        ".textContent === host",
        arg=info["host_id"],
    )
    assert await card(page).locator(".address").inner_text() == info["address"]
    # what the uptime counts, said; the intro speaks of her own servers
    uptime = await card(page).locator(".uptime").inner_text()
    assert re.fullmatch(r"\d+:\d\d since it started \(moves included\)", uptime), uptime
    intro = await page.locator("#migrate-page > p").first.inner_text()
    assert intro.startswith("Your servers run on reclaimable hosts"), intro
    assert await card(page).locator("button[data-verb=migrate]").is_enabled()
    assert await card(page).locator("button[data-verb=resume]").is_disabled()
    # not an admin: no Hosts tab
    assert await page.locator("#tab-hosts").count() == 0
    await shot(page, "control-page")


@in_browser
async def test_a_post_without_xsrf_is_refused(hub, alice):
    page = alice
    before = await hub.server_info("alice")
    status = await page.evaluate(POST_WITHOUT_XSRF, "/services/migrate/api/servers/alice/migrate")
    assert status in (401, 403)
    # nothing was scheduled: a move counts from the moment it is queued
    after = await hub.server_info("alice")
    assert (after["state"], after["host_id"]) == ("Running", before["host_id"])


@in_browser
async def test_bob_sees_none_of_alices_servers(hub, browser, alice):
    page = await log_in(browser, hub, "bob")
    try:
        await page.goto(hub.url + "/services/migrate/")
        # his own default server (never started) only
        await card(page, "bob/").wait_for()
        keys = await page.locator("article.migrate-server").evaluate_all(
            "cards => cards.map(c => c.dataset.key)"
        )
        assert keys == ["bob/"]
        api = "/services/migrate/api/servers/alice/"
        assert await page.evaluate(GET_STATUS, api) == 404
        assert await page.evaluate(GET_STATUS, api + "/history") == 404
    finally:
        await page.context.close()


@in_browser
async def test_an_admin_sees_every_server_and_the_hosts(hub, browser, alice):
    info = await hub.server_info("alice")
    page = await log_in(browser, hub, "admin")
    try:
        await page.goto(hub.url + "/services/migrate/")
        assert await state_of(page) == "Running"
        # not "Your servers": an admin sees everyone's
        intro = await page.locator("#migrate-page > p").first.inner_text()
        assert intro.startswith("Every user's servers are listed here"), intro
        await page.click("#tab-hosts")
        row = page.locator(f'#hosts tr.host-row[data-host="{info["host_id"]}"]')
        await row.wait_for()
        assert "alice/" in await row.inner_text()
        await shot(page, "control-page-hosts")
    finally:
        await page.context.close()


async def until_moved(page, old: str, timeout: float = 90) -> None:
    """Until alice's card says Running on a host other than `old`."""
    await page.wait_for_function(
        "(old) => { const c = document.querySelector('article[data-key=\"alice/\"]');"
        " return c.dataset.state === 'Running' && c.querySelector('.host').textContent !== old }",
        arg=old,
        timeout=timeout * 1000,
    )


@in_browser
async def test_migrate_from_the_page(hub, alice):
    page = alice
    old = (await hub.server_info("alice"))["host_id"]
    await card(page).locator("button[data-verb=migrate]").click()
    # Floating (the page polls every 2 s; a move takes seconds), then Running elsewhere
    await until_state(page, "Floating", timeout=30)
    await until_moved(page, old)
    # no reload on the way: the same page saw Running, Floating, Running
    # (the card may show Floating on the old host, then on the new one: one state)
    seen = [s for key, s, host in await page.evaluate("window.__states") if key == "alice/"]
    states = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert states[-3:] == ["Running", "Floating", "Running"], seen
    new = (await hub.server_info("alice"))["host_id"]
    assert new != old
    assert await card(page).locator(".host").inner_text() == new
    # the history lists the move, with its hold time
    move = card(page).locator('tr.history-entry[data-kind="move"]').first
    await move.wait_for(timeout=30_000)
    assert re.fullmatch(r"\d+\.\d\d s", await move.locator(".hold").inner_text())
    assert await move.locator(".hosts").inner_text() == f"{old} → {new}"
    await shot(page, "control-page-moved")


@in_browser
async def test_a_reclaim_notice_counts_down_on_the_page(hub, alice):
    page = alice
    old = (await hub.server_info("alice"))["host_id"]
    status, data = await hub.migrate_api(
        "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": 30}
    )
    assert status == 202, data
    await until_state(page, "Floating", timeout=30)
    # the notice's deadline, counting down (a requested move has none); the move's record
    # may come a poll after its start
    shown = await page.wait_for_function(
        "() => { const text = document.querySelector("
        "'article[data-key=\"alice/\"] .countdown').textContent;"
        " return / left$/.test(text) && text }",
        timeout=20_000,
    )
    left = re.search(r"(\d+):(\d\d) left", await shown.json_value())
    assert left and 0 < int(left[1]) * 60 + int(left[2]) <= 30, left
    await shot(page, "control-page-floating")
    await until_moved(page, old)
    assert await card(page).locator(".countdown").inner_text() == ""


@in_browser
async def test_suspend_resume_and_cancel_from_the_page(hub, alice):
    page = alice
    message = card(page).locator(".message")
    async with page.expect_request(lambda r: r.method == "POST") as posted:
        await card(page).locator("button[data-verb=suspend]").click()
    # the default server's verb: no empty server name between two slashes
    assert (await posted.value).url == hub.url + "/services/migrate/api/servers/alice/suspend"
    await until_state(page, "Suspended")
    await page.wait_for_function(
        "() => document.querySelector('article[data-key=\"alice/\"] .message')"
        ".textContent.startsWith('Suspended: nothing runs')",
    )
    # nothing held for a suspended server, and the page says what it kept
    assert await card(page).locator(".host").inner_text() == "—"
    assert await card(page).locator(".checkpoint").inner_text() != "—"
    # resumed elsewhere (the CLI's resume, as the admin): the page's "Suspended: ..." goes
    status, data = await hub.migrate_api("POST", "/servers/alice/resume")
    assert status in (200, 202), data
    await until_state(page, "Running")
    await page.wait_for_function(
        "() => !document.querySelector('article[data-key=\"alice/\"] .message')"
        ".textContent.includes('Suspended')",
    )
    host = (await hub.server_info("alice"))["host_id"]
    await page.wait_for_function(
        "(host) => document.querySelector('article[data-key=\"alice/\"] .host')"
        ".textContent === host",
        arg=host,
    )
    # Cancel asks first, saying what is lost; "Keep it" keeps it
    await card(page).locator("button[data-verb=cancel]").click()
    dialog = page.locator("#confirm-cancel")
    await dialog.wait_for()
    said = await dialog.inner_text()
    assert "Lost for good" in said and "checkpoint" in said, said
    await shot(page, "control-page-cancel")
    await dialog.locator("button.keep").click()
    await dialog.wait_for(state="hidden")
    assert (await hub.server_info("alice"))["state"] == "Running"
    await card(page).locator("button[data-verb=cancel]").click()
    await dialog.locator("button.confirm").click()
    await until_state(page, "Stopped")
    # the API's own words, once ("Discarded: ..."), not "Cancelled. Lost: Discarded: ..."
    # (the card's state can show a poll before the answer's message does)
    await page.wait_for_function(
        "() => document.querySelector('article[data-key=\"alice/\"] .message')"
        ".textContent.includes('Discarded')",
    )
    said = await message.inner_text()
    assert said.startswith("Discarded") and "Lost:" not in said, said
    assert said.endswith("The next start is fresh."), said
    info = await hub.server_info("alice")
    assert (info["state"], info["checkpoint_id"]) == ("Stopped", None)
    # the history has each of them (it is polled: the last one may come a poll later)
    await page.wait_for_function(
        """() => {
            const kinds = [...document.querySelectorAll(
                'article[data-key="alice/"] tr.history-entry')].map(r => r.dataset.kind);
            return ["move", "suspend", "resume", "cancel"].every(k => kinds.includes(k));
        }""",
        timeout=30_000,
    )
    # the page's own Resume button: a Stopped server starts again (fresh) on a host
    await card(page).locator("button[data-verb=resume]").click()
    await until_state(page, "Running")
    info = await hub.server_info("alice")
    assert info["state"] == "Running" and info["host_id"], info
    await page.wait_for_function(
        "(host) => document.querySelector('article[data-key=\"alice/\"] .host')"
        ".textContent === host",
        arg=info["host_id"],
    )
