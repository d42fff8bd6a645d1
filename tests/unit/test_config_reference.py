"""docs/configuration.md is what docs/gen_config_reference.py renders from the traits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# the reference documents the classes of the optional extras too
pytest.importorskip("boto3")
pytest.importorskip("jupyter_scheduler")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "docs" / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_up_to_date():
    gen = _generator()
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == gen.render(), "docs/configuration.md is stale: run `make docs`"


def test_every_config_trait_is_in_the_reference():
    # a trait with config=True on any class the generator lists appears under its class
    gen = _generator()
    page = (ROOT / "docs" / "configuration.md").read_text()
    for module, name, _where in gen.CLASSES:
        cls = getattr(importlib.import_module(module), name)
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for trait, value in vars(cls).items():
            if getattr(value, "metadata", {}).get("config"):
                assert f"- `{trait}`:" in section, f"{name}.{trait}"
