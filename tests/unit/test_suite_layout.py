"""How `make test` spreads the suite over pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.mark.skipif(
    "PYTEST_XDIST_WORKER" not in os.environ, reason="the suite runs without pytest-xdist here"
)
def test_a_module_is_one_group_on_one_worker(request):
    # --dist loadgroup keeps a group's tests on one worker by the "@group" it adds to their
    # ids; without it a module's tests spread over the workers, each starting its own hub,
    # and the modules that share the machine (ec2world, the EG example) run side by side
    if not request.config.getvalue("loadgroup"):  # what xdist sets on its workers
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@tests/unit/test_suite_layout.py")
