"""Hatch build hook: build the JupyterLab extension in labextension/ into labextension/dist.

The wheel (and the editable install `make demo`/`make test` do) ships labextension/dist as
share/jupyter/labextensions/jupyterhub-migrating, where every JupyterLab in that
environment finds it. The build is `npm ci` (the versions in package-lock.json), then
@jupyterlab/builder's `build-labextension` against @jupyterlab/core-meta: no Python
JupyterLab in the build environment. It is skipped while dist is newer than its sources.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = ("src", "style", "package.json", "package-lock.json")


def _newest(paths: list[Path]) -> float:
    times = [0.0]
    for path in paths:
        if path.is_dir():
            times += [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
        elif path.exists():
            times.append(path.stat().st_mtime)
    return max(times)


class LabExtensionBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root) / "labextension"
        # two installs at once (the venvs of `make -j test`) would both run npm ci here
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        with open(Path(tempfile.gettempdir()) / f"jupyterhub-migrating-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._build(root)

    def _build(self, root: Path) -> None:
        built = root / "dist" / "package.json"
        if built.exists() and built.stat().st_mtime >= _newest([root / s for s in SOURCES]):
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                "building the JupyterLab extension needs Node.js and npm (>= 18) on PATH"
            )
        lock = root / "package-lock.json"
        installed = root / "node_modules" / ".package-lock.json"
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            self._run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], root)
        self._run([npm, "run", "--silent", "build"], root)
        if not built.exists() or not list((root / "dist" / "static").glob("remoteEntry.*.js")):
            raise RuntimeError(f"the JupyterLab extension build left no {built.parent}")

    def _run(self, cmd: list[str], cwd: Path) -> None:
        self.app.display_info(f"labextension: {' '.join(cmd[1:])}")
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` in {cwd} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
