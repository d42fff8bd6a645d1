"""How `make test` spreads the suite over pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest
import realhub


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


def test_hub_ports_come_from_this_workers_own_range():
    # not from the kernel's ephemeral range (32768 and up), where a port we let go can go
    # to another worker's kernel or server before our hub binds it (a hub that then met
    # another hub's proxy on its proxy API port, in a loaded clean-clone run)
    first = 20000 + realhub.PORTS_PER_WORKER * realhub.worker_number()
    ports = [realhub.free_port() for _ in range(3)]
    assert all(first <= p < first + realhub.PORTS_PER_WORKER for p in ports), ports
    assert first + realhub.PORTS_PER_WORKER <= 32768
    assert len(set(ports)) == 3
