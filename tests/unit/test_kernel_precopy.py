"""Incremental snapshots by the mutation rule and deltas applied to a kernel restored ahead
(issue 14's pre-copy), through real ipykernel kernels."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from corpus.kernels import Kernel  # noqa: E402

from migrating_spawner.kernelstate.cells import touched  # noqa: E402

pytestmark = pytest.mark.timeout(180)

BUILD = (
    "import numpy as np\n"
    "a = np.zeros(2_500_000)\n"  # 20 MB, changed in place after the pre-copy
    "other = np.ones(2_500_000)\n"  # 20 MB no cell touches again
    "d = {'x': 1}\n"
    "x = 1\n"
    "log = []\n"
    "def note(v):\n    log.append(v)\n"
)


@contextlib.contextmanager
def precopied(tmp_path, **new_kernel):
    """The old kernel (BUILD run) and the kernel started ahead on the new server, holding
    the old one's first (full) snapshot: yields (old, new, state folder, the snapshot's
    report, the restore's report)."""
    state = tmp_path / "state"
    with Kernel(cwd=tmp_path) as old, Kernel(cwd=tmp_path, **new_kernel) as new:
        old.run(BUILD)
        first = old.snapshot(state)
        pre = new.restore(state, ahead=True)
        yield old, new, state, first, pre


@pytest.mark.parametrize(
    "cell, names",
    [
        ("d['k'] = 1", {"d"}),
        ("a[0] = 7", {"a"}),
        ("x = 5", {"x"}),
        ("y = a + 1", {"y"}),  # a read by an operator only
        ("n = a.shape", {"n"}),
        ("f(a)", {"f", "a"}),  # passed to a call: may be mutated
        ("b = a[3]", {"a", "b"}),  # subscripted
        ("for r in rows:\n    r.append(1)", {"rows", "r"}),
        ("a.sort()", {"a"}),
        ("del x", {"x"}),
    ],
)
def test_the_mutation_rule(cell, names):
    assert touched(cell) == (names, None)


@pytest.mark.parametrize(
    "cell", ["exec('x = 1')", "globals()['x'] = 1", "from os import *", "vars()['q'] = 2"]
)
def test_cells_that_reach_the_whole_namespace_cannot_be_analysed(cell):
    assert touched(cell)[1]


def test_delta_after_precopy_ships_and_applies_only_what_cells_touched(tmp_path):
    with precopied(tmp_path) as (old, new, state, first, pre):
        assert first["mode"] == "full" and first["written_bytes"] > 40_000_000
        assert pre["ok"] and pre["mode"] == "full"
        # after the pre-copy, while the old kernel still serves
        old.run("d['k'] = 1")
        old.run("a[0] = 7")
        old.run("x = 'rebound'")
        old.run("alias = d")  # new sharing with a variable no cell touched since
        old.run("note(3)")  # a cell-defined function changes a global it names
        count = old.run("z = 1")["execution_count"]
        delta = old.snapshot(state)
        assert delta["ok"] and delta["mode"] == "delta", delta
        assert set(delta["changed"]) == {"d", "a", "x", "alias", "note", "log", "z"}
        assert 20_000_000 < delta["written_bytes"] < 21_000_000  # a, not `other`
        applied = new.restore(state)
        assert applied["ok"] and applied["mode"] == "delta", applied
        # `note` was stored again, to the same content-addressed blob: nothing to load
        assert (
            {"d", "a", "x", "alias", "log", "z"} <= set(applied["loaded"]) <= set(delta["changed"])
        )
        assert 20_000_000 < applied["loaded_bytes"] < 21_000_000
        checks = {
            "d": "{'x': 1, 'k': 1}",
            "float(a[0]), float(a[1:].sum())": "(7.0, 0.0)",
            "x": "'rebound'",
            "alias is d": "True",
            "log": "[3]",
            "float(other.sum())": "2500000.0",
        }
        for expr, want in checks.items():
            assert new.eval(expr) == want, expr
        assert new.run("q = 1")["execution_count"] == count + 1


def test_a_cell_the_rule_cannot_see_through_makes_a_full_walk_and_still_applies(tmp_path):
    with precopied(tmp_path) as (old, new, state, _, _):
        old.run("exec('x = 42')")
        snap = old.snapshot(state)
        assert snap["mode"] == "full" and "exec" in snap["why"]
        applied = new.restore(state)
        assert applied["mode"] == "delta" and applied["loaded"] == ["x"]
        assert new.eval("x") == "42"


def test_a_kernel_that_ran_code_since_its_restore_gets_a_full_restore(tmp_path):
    with precopied(tmp_path) as (old, new, state, _, _):
        new.run("x = 'not from the snapshot'\nstray = 1")
        old.run("d['k'] = 2")
        old.snapshot(state)
        applied = new.restore(state)
        assert applied["ok"] and applied["mode"] == "full" and "ran code" in applied["why"]
        assert new.eval("x, d['k']") == "(1, 2)"
        assert new.eval("'stray' in dir()") == "False"


def test_deleted_variables_go_from_the_waiting_kernel(tmp_path):
    with precopied(tmp_path) as (old, new, state, _, _):
        old.run("del other")
        snap = old.snapshot(state)
        assert snap["mode"] == "delta" and snap["deleted"] == ["other"]
        applied = new.restore(state)
        assert applied["deleted"] == ["other"]
        assert new.eval("'other' in dir()") == "False"


def test_a_kernel_started_ahead_keeps_no_history_file_open_until_the_final_restore(tmp_path):
    """The final home restore replaces ~/.ipython/profile_default/history.sqlite under the
    kernel started ahead: that kernel must not hold it open (sqlite: "attempt to write a
    readonly database"), and once restored it writes its cells' history to the new file."""
    ipython = tmp_path / "ipython"
    with precopied(tmp_path, env={"IPYTHONDIR": str(ipython)}) as (old, new, state, _, _):
        hist = ipython / "profile_default" / "history.sqlite"
        assert new.eval("str(get_ipython().history_manager.hist_file)") == "':memory:'"
        # the home's final restore: another history file takes its place
        shutil.copy(hist, tmp_path / "final.sqlite")
        os.replace(tmp_path / "final.sqlite", hist)
        old.run("d['k'] = 1")
        old.snapshot(state)
        assert new.restore(state)["mode"] == "delta"
        assert new.eval("str(get_ipython().history_manager.hist_file)") == repr(str(hist))
        out = new.run("marker = 'written to the new history file'\nprint('ok')")["stdout"]
        assert out == "ok\n", out  # not IPython's "history saving thread hit an error"
        deadline = time.monotonic() + 20
        while True:  # IPython's history thread writes it a moment later
            with contextlib.closing(sqlite3.connect(hist)) as db:
                rows = db.execute("SELECT source FROM history").fetchall()
            if any("marker" in r[0] for r in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert any("marker" in r[0] for r in rows), rows
