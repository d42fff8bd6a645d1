"""RStudio Server and code-server themselves across a reclaim: they run only where they are
installed (neither can be installed on the machine the suite was written on: rserver is not
in Debian, PyPI or npm, and code-server's npm install downloads ripgrep from GitHub). The
orchestration they rely on is tested everywhere with tests/standin/rsession
(tests/integration/test_apps.py)."""

from __future__ import annotations

import shutil
from importlib.util import find_spec

import pytest
from test_move import wait_moved

pytestmark = pytest.mark.integration

NO_RSTUDIO = shutil.which("rserver") is None or find_spec("jupyter_rsession_proxy") is None
NO_VSCODE = shutil.which("code-server") is None or find_spec("jupyter_vscode_proxy") is None


async def reclaim_and_check(hub, user, path, kept):
    """Open `path`, reclaim the host, and check it answers again and `kept` came back."""
    token = await hub.user_token(user)
    status, _ = await hub.request("GET", f"/user/{user}/{path}", token)
    assert status == 200
    before = await hub.server_info(user)
    status, _ = await hub.migrate_api(
        "POST", f"/hosts/{before['host_id']}/reclaim", body={"notice_seconds": 20}
    )
    assert status == 202
    after = await wait_moved(hub, user, before["host_id"])
    said = [e["message"] for e in (await hub.server_info(user))["events"]]
    assert any("started again" in m and kept in m for m in said), said
    status, _ = await hub.request("GET", f"/user/{user}/{path}", token)
    assert status == 200
    return after


@pytest.mark.skipif(
    NO_RSTUDIO,
    reason="RStudio Server (rserver) with jupyter-rsession-proxy is not installed here "
    "(rserver is not in Debian, PyPI or npm); the orchestration is tested with "
    "tests/standin/rsession in test_apps.py",
)
async def test_rstudio_session_resumes_on_the_new_host(hub_factory):
    hub = await hub_factory('c.MigratingSpawner.home_mode = "synced"')
    await hub.spawn("ruth", options={"profile": "rstudio"})
    await reclaim_and_check(hub, "ruth", "rstudio/", "rstudio")
    # the suspended session moved with the home (RStudio resumes it at the first request)
    homes = list((hub.workdir / "hosts" / "disks").glob("*/home/ruth"))
    assert any((h / ".local/share/rstudio/sessions/active").is_dir() for h in homes)


@pytest.mark.skipif(
    NO_VSCODE,
    reason="code-server with jupyter-vscode-proxy is not installed here (its npm install "
    "downloads ripgrep from GitHub, which this machine cannot reach)",
)
async def test_vscode_answers_at_the_same_url_after_a_reclaim(hub_factory):
    hub = await hub_factory('c.MigratingSpawner.home_mode = "synced"')
    await hub.spawn("vera", options={"profile": "vscode"})
    await reclaim_and_check(hub, "vera", "vscode/", "vscode")
    # code-server's user data (its hot-exit backups of unsaved editors) moved with the home
    homes = list((hub.workdir / "hosts" / "disks").glob("*/home/vera"))
    assert any((h / ".local/share/code-server").is_dir() for h in homes)
