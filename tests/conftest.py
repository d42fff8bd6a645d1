"""Shared fixtures. Importing this needs no network; hubs start only in the tests that ask."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from realhub import RealHub, print_logs  # noqa: E402


@pytest.fixture
def hub_factory(tmp_path, request):
    """Start real hubs (`await hub_factory(config)`, on the test's own event loop, whatever
    its loop scope; `server_extensions`: realhub.OPTIONAL_SERVER_EXTENSIONS its servers
    load); everything they started is stopped afterwards."""
    hubs: list[RealHub] = []

    async def make(extra_config: str = "", server_extensions: tuple[str, ...] = ()) -> RealHub:
        workdir = tmp_path / f"hub{len(hubs)}"
        workdir.mkdir()
        hub = RealHub(workdir, extra_config, server_extensions)
        hubs.append(hub)
        hub.start()
        await hub.wait_up()
        return hub

    yield make

    for hub in hubs:
        if failed(request):
            print_logs(hub)
        hub.stop()
        hub.kill_proxy()
        hub.release_all_hosts()
    shutil.rmtree(tmp_path, ignore_errors=True)


def failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


@pytest.fixture(autouse=True)
def hub_log_on_failure(request):
    """After a failed test that used a module's hub fixture (realhub.module_hub), its
    hub, agent and server logs."""
    yield
    if failed(request):
        for value in getattr(request.node, "funcargs", {}).values():
            if isinstance(value, RealHub):
                print_logs(value, server_lines=6000)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """`make test` runs the suite on pytest-xdist workers with `--dist loadgroup`: every
    module is a group of its own, so its tests run on one worker, in order, and a module's
    hub starts once. Modules that share the machine itself say so with a group of their
    own (ec2world.SHARES_THE_MACHINE)."""
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # lets fixtures see whether the test failed, to print host and agent logs
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
