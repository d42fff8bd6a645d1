"""The JupyterLab extensions the lab loads ask for shared packages this JupyterLab has.

A federated extension's remoteEntry names each shared singleton it consumes with a range
(webpack's encoding: [1, 4, 6, 6] is ^4.6.6, [1, 4, 7, 0, None, "alpha", 1] ^4.7.0-alpha.1);
one the installed JupyterLab does not satisfy is an "Unsatisfied version ... of shared
singleton module" warning in the browser's console (the new-user walk saw 9)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARE = Path(sys.prefix) / "share" / "jupyter"
CONSUMES = re.compile(r'"(@[\w-]+/[\w-]+)",(?:!\d,)?\[([^\]]*)\]')


def lab_versions() -> dict[str, tuple]:
    """The shared packages' versions of the installed JupyterLab (its resolutions)."""
    package = json.loads((SHARE / "lab" / "static" / "package.json").read_text())
    return {name: parse(spec.lstrip("~^")) for name, spec in package["resolutions"].items()}


def parse(version: str) -> tuple:
    core, _, pre = version.partition("-")
    numbers = tuple(int(n) for n in core.split("."))
    # a release sorts after its prereleases
    return numbers + (((0, tuple(pre.split("."))),) if pre else ((1, ()),))


def satisfied(have: tuple, encoded: str) -> bool:
    parts = [p.strip('"') for p in encoded.split(",")]
    fixed, numbers = int(parts[0]), [int(p) for p in parts[1:4]]
    pre = tuple(p for p in parts[5:] if p)
    want = tuple(numbers) + (((0, pre),) if pre else ((1, ()),))
    return have[:fixed] == want[:fixed] and have >= want


def unsatisfied(extension: Path) -> list[str]:
    versions = lab_versions()
    bad = []
    for entry in (extension / "static").glob("remoteEntry.*.js"):
        for name, encoded in CONSUMES.findall(entry.read_text()):
            if name in versions and not satisfied(versions[name], encoded):
                bad.append(f"{name} [{encoded}]")
    return sorted(set(bad))


def test_the_encoding_is_read_as_webpack_means_it():
    assert satisfied(parse("4.6.6"), "1,4,6,6") and satisfied(parse("4.7.6"), "1,4,6,6")
    assert not satisfied(parse("5.0.0"), "1,4,6,6")
    assert not satisfied(parse("4.6.6"), '1,4,7,0,,"alpha",1')
    assert satisfied(parse("4.7.0"), '1,4,7,0,,"alpha",1')
    assert satisfied(parse("2.3.1-alpha.1"), '1,2,3,1,,"alpha",1')


def test_the_widget_asks_for_what_this_jupyterlab_has():
    built = ROOT / "labextension" / "dist"
    if not (built / "static").is_dir():
        pytest.skip("labextension/dist is not built (pip's build hook builds it)")
    [entry] = (built / "static").glob("remoteEntry.*.js")
    consumed = {name for name, _ in CONSUMES.findall(entry.read_text())}
    assert {"@jupyterlab/apputils", "@jupyterlab/statusbar", "@lumino/widgets"} <= consumed
    assert unsatisfied(built) == []
    installed = SHARE / "labextensions" / "jupyterhub-migrating"
    assert unsatisfied(installed) == []


@pytest.mark.xfail(
    strict=True,
    reason="jupyter_scheduler 2.12.1's labextension is built against JupyterLab 4.7/4.8 "
    "alphas (2.12.0's asks for ^4.5.5, but pins psutil~=5.9): see found.md",
)
def test_the_scheduler_extension_asks_for_what_this_jupyterlab_has():
    extension = SHARE / "labextensions" / "@jupyterlab" / "scheduler"
    if not extension.is_dir():
        pytest.skip("jupyter_scheduler's labextension is not installed")
    assert unsatisfied(extension) == []
