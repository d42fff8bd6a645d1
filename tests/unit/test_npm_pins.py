"""The proxy's npm pins install cleanly on the node the Makefile uses (no EBADENGINE)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_ci_warns_of_no_engine(tmp_path):
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / name, tmp_path / name)
    # npm's cache has the packages after `make install`; anything missing is fetched
    result = subprocess.run(
        ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "EBADENGINE" not in output
    chp = tmp_path / "node_modules" / ".bin" / "configurable-http-proxy"
    version = subprocess.run([chp, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "5.3.0", version
