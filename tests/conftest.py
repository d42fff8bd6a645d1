"""Shared fixtures. Importing this needs no network; hubs start only in the tests that ask."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from realhub import RealHub  # noqa: E402


@pytest.fixture
async def hub_factory(tmp_path, request):
    """Start real hubs; everything they started is stopped afterwards."""
    hubs: list[RealHub] = []

    async def make(extra_config: str = "") -> RealHub:
        workdir = tmp_path / f"hub{len(hubs)}"
        workdir.mkdir()
        hub = RealHub(workdir, extra_config)
        hubs.append(hub)
        hub.start()
        await hub.wait_up()
        return hub

    yield make

    failed = getattr(request.node, "rep_call", None)
    for hub in hubs:
        if failed is not None and failed.failed:
            print(f"\n===== hub log ({hub.workdir}) =====\n{hub.tail(150)}")
            for log in sorted((hub.workdir / "hosts" / "logs").glob("*.log")):
                print(f"===== agent log {log.name} =====\n{log.read_text()[-3000:]}")
            for log in sorted((hub.workdir / "hosts" / "disks").glob("*/logs/*.log")):
                print(f"===== server log {log} =====\n{log.read_text()[-3000:]}")
        hub.stop()
        hub.kill_proxy()
        hub.release_all_hosts()
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # lets fixtures see whether the test failed, to print host and agent logs
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
