"""The local demo's config (examples/local): what the README tells a new user holds."""

from __future__ import annotations

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
