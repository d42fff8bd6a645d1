"""The local demo's config (examples/local): what the README tells a new user holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets.config import PyFileConfigLoader

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "local"


@pytest.fixture
def config():
    return PyFileConfigLoader("jupyterhub_config.py", str(EXAMPLE)).load_config()


def test_no_deprecated_dummy_password(config):
    # DummyAuthenticator.password is deprecated since JupyterHub 5.3
    assert config.JupyterHub.authenticator_class == "shared-password"
    assert "DummyAuthenticator" not in config


async def test_readme_passwords_log_in(config):
    readme = (ROOT / "README.md").read_text()
    [user_password] = set(re.findall(r'any name, password "([^"]+)"', readme))
    [admin_password] = set(re.findall(r'as `admin` with the password "([^"]+)"', readme))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        auth = SharedPasswordAuthenticator(config=config)
    alice = await auth.authenticate(None, {"username": "alice", "password": user_password})
    assert alice["name"] == "alice" and not alice["admin"]
    admin = await auth.authenticate(None, {"username": "admin", "password": admin_password})
    assert admin["name"] == "admin" and admin["admin"]
    # the user password does not make anyone an admin
    assert await auth.authenticate(None, {"username": "admin", "password": user_password}) is None


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_only_what_the_demo_runs(tmp_path):
    # what `make demo` would run on a fresh machine (a venv that does not exist yet)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "demo", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if " install " in line]
    assert any("-e '.[lab]'" in line for line in installs), installs
    assert not any("[test" in line or ",test" in line for line in installs), installs


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_stops_early_on_a_node_older_than_configurable_http_proxy_needs(tmp_path):
    # Debian 12's own nodejs is 18: configurable-http-proxy 5 refuses it, so say so first
    fake = tmp_path / "node"
    fake.write_text('#!/bin/sh\n[ "$1" = "--version" ] && { echo v18.19.0; exit 0; }\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["make", "-s", "base-deps"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "Node.js 20 or newer with npm is needed" in result.stderr
    assert "found v18.19.0" in result.stderr
