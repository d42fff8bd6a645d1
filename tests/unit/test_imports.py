"""The import graph of the three packages: no circle, and nothing hidden from it.

Counts every import: at module level, inside functions and under TYPE_CHECKING. A circle
makes a module unusable without the other (and its import order fragile); an import
inside a function only hides one, so those are not allowed for project modules at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

PACKAGES = ("migrating_spawner", "proxy_plugin", "kernel_provisioner")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _module_edges(graph) -> dict[str, set[str]]:
    modules = set(graph.modules)
    edges = {}
    for m in modules:
        imported = graph.find_modules_directly_imported_by(m) & modules
        # a package's __init__ re-exporting its own submodules is not a circle of code
        edges[m] = {i for i in imported if not i.startswith(m + ".")}
    return edges


def test_the_graph_counts_type_checking_and_function_imports(tmp_path, monkeypatch):
    # the checks below are only worth something if these imports are in the graph
    pkg = tmp_path / "circle_sample"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n"
    )
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sample = grimp.build_graph("circle_sample", exclude_type_checking_imports=False, cache_dir=None)
    assert _cycles(_module_edges(sample)) == [["circle_sample.a", "circle_sample.b"]]


def test_no_module_imports_one_that_imports_it_back(graph):
    cycles = _cycles(_module_edges(graph))
    chains = {
        " -> ".join(cycle): [
            graph.find_shortest_chain(a, b) for a in cycle for b in cycle if a != b
        ][:2]
        for cycle in cycles
    }
    assert not cycles, f"import cycles: {chains}"


def _package_edges(graph, packages=PACKAGES) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {p: set() for p in packages}
    for a in packages:
        for b in packages:
            if a != b and graph.chain_exists(a, b, as_packages=True):
                edges[a].add(b)
    return edges


def test_proxy_plugin_and_migrating_spawner_do_not_import_each_other(graph):
    edges = _package_edges(graph)
    assert "proxy_plugin" not in edges["migrating_spawner"]
    assert "proxy_plugin" not in edges["kernel_provisioner"]


def test_a_package_circle_without_a_module_circle_is_found(tmp_path, monkeypatch):
    # the shape the three packages had: pa.x -> pb.y and pb.z -> pa.w, no module circle
    for pkg, files in {
        "circle_pa": {"x.py": "from circle_pb import y\n", "w.py": ""},
        "circle_pb": {"z.py": "from circle_pa import w\n", "y.py": ""},
    }.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    sample = grimp.build_graph("circle_pa", "circle_pb", cache_dir=None)
    assert _cycles(_module_edges(sample)) == []
    assert _cycles(_package_edges(sample, ("circle_pa", "circle_pb"))) == [
        ["circle_pa", "circle_pb"]
    ]


def test_no_package_level_cycle(graph):
    edges = _package_edges(graph)
    chains = {
        f"{a} -> {b}": sorted(graph.find_shortest_chains(a, b, as_packages=True))[:3]
        for a, targets in edges.items()
        for b in targets
    }
    assert _cycles(edges) == [], f"package imports: {chains}"


def test_kernel_provisioner_builds_on_migrating_spawner_not_back(graph):
    # the layering: kernel_provisioner uses migrating_spawner's hosts, agent and
    # kernelstate; migrating_spawner (the hub and server side) never needs the provisioner
    edges = _package_edges(graph)
    assert "migrating_spawner" in edges["kernel_provisioner"]
    assert "kernel_provisioner" not in edges["migrating_spawner"], sorted(
        graph.find_shortest_chains("migrating_spawner", "kernel_provisioner", as_packages=True)
    )


def _project_module(node: ast.Import | ast.ImportFrom) -> str | None:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return "." * node.level + (node.module or "")
        names = [node.module or ""]
    else:
        names = [alias.name for alias in node.names]
    for name in names:
        if name.split(".")[0] in PACKAGES:
            return name
    return None


def _nested_project_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(scope):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = _project_module(node)
                if module:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module}")
    return sorted(set(found))


def test_scan_finds_a_function_local_import(tmp_path):
    sample = ROOT / "tests" / "unit" / "_import_sample.py"
    sample.write_text("def f():\n    from migrating_spawner import controller\n")
    try:
        assert _nested_project_imports(sample) == [
            "tests/unit/_import_sample.py:2 imports migrating_spawner"
        ]
    finally:
        sample.unlink()


def test_no_project_module_is_imported_inside_a_function():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += _nested_project_imports(path)
    assert found == []


# What the hub imports when an operator turns the spawner, the proxy and the provisioner on
# with the local provider: `make demo` installs no cloud SDK, so none of these may need one.
HUB_ENTRY_POINTS = [
    "migrating_spawner.spawner",
    "migrating_spawner.service.api",
    "proxy_plugin.proxy",
    "kernel_provisioner.provisioner",
]


def test_the_hub_imports_without_the_aws_sdk():
    blocked = "import sys\nfor m in ('boto3', 'botocore'):\n    sys.modules[m] = None\n"
    code = blocked + "".join(f"import {m}\n" for m in HUB_ENTRY_POINTS)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
