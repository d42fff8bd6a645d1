"""Kernel namespace snapshot and restore through real kernels (ipykernel; IRkernel if present)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from corpus.kernels import Kernel  # noqa: E402

from migrating_spawner.kernelstate import (  # noqa: E402
    lost_message,
    restore_code,
    snapshot_code,
    supported,
)

pytestmark = pytest.mark.timeout(120)


def move(tmp_path: Path, cells: list[str], before_restore=None):
    """Run cells, snapshot, shut down; returns (snapshot report, state dir)."""
    state = tmp_path / "state"
    with Kernel(cwd=tmp_path) as k:
        for c in cells:
            k.run(c)
        snap = k.snapshot(state)
    if before_restore:
        before_restore()
    return snap, state


def test_values_functions_classes_and_modules_round_trip(tmp_path):
    cells = [
        "import numpy as np\nfrom os import path as p\nimport collections",
        "n = 42\ns = 'héllo'\nl = [1, [2, 3]]\nd = {'a': (1, 2), 3: None}\narr = np.arange(12.0)",
        "alias = l\nview = {'inner': l[1]}",
        "def add(y):\n    return n + y\nsq = lambda z: z * z",
        "def counter():\n    c = 0\n    def inc():\n        nonlocal c\n"
        "        c += 1\n        return c\n    return inc\ninc = counter()\ninc()",
        "class Point:\n    def __init__(self, x):\n        self.x = x\npt = Point(7)\n"
        "cnt = collections.Counter('abca')",
    ]
    snap, state = move(tmp_path, cells)
    assert snap["ok"] and snap["execution_count"] == len(cells)
    how = {name: v["how"] for name, v in snap["variables"].items()}
    assert how["np"] == how["p"] == "module"
    assert how["add"] == how["Point"] == how["sq"] == how["inc"] == "function"
    assert how["arr"] == how["pt"] == how["cnt"] == "pickled"
    with Kernel(cwd=tmp_path) as k:
        rep = k.restore(state)
        assert rep["ok"] and not rep["lost"] and not rep["replayed"]
        checks = {
            "n, s, l, d": "(42, 'héllo', [1, [2, 3]], {'a': (1, 2), 3: None})",
            "float(arr.sum()), arr.dtype.name, arr.flags.writeable": "(66.0, 'float64', True)",
            "alias is l, view['inner'] is l[1]": "(True, True)",
            "add(1), sq(5)": "(43, 25)",
            "inc(), inc()": "(2, 3)",
            "pt.x, isinstance(pt, Point)": "(7, True)",
            "np.__name__, p.join('a', 'b'), cnt['a']": "('numpy', 'a/b', 2)",
        }
        for expr, want in checks.items():
            assert k.eval(expr) == want, expr
        k.run("n = 100")
        assert k.eval("add(1)") == "101"  # functions see the restored globals, not a copy
        reply = k.run("x = 1")
        assert reply["execution_count"] == len(cells) + 2
        assert k.eval("In[1]") == repr(cells[0])
        assert k.eval("[n for n in dir() if n.startswith('__kp')]") == "[]"


def test_generator_is_rebuilt_by_replaying_the_cells_that_made_and_advanced_it(tmp_path):
    snap, state = move(tmp_path, ["gen = (i*i for i in range(10))", "first = next(gen)"])
    assert snap["variables"]["gen"]["how"] == "replay"
    with Kernel(cwd=tmp_path) as k:
        rep = k.restore(state)
        assert rep["replayed"] == ["gen"] and not rep["lost"]
        assert k.eval("next(gen), first") == "(1, 0)"


def test_open_file_comes_back_at_its_position(tmp_path):
    (tmp_path / "data.txt").write_text("one\ntwo\nthree\n")
    snap, state = move(tmp_path, ["fh = open('data.txt')\nfh.readline()"])
    with Kernel(cwd=tmp_path) as k:
        k.restore(state)
        assert k.eval("fh.readline()") == "'two\\n'"


def test_sqlite_connection_replayed_without_touching_the_database(tmp_path):
    cells = [
        "import sqlite3\ncon = sqlite3.connect('db.sqlite')\n"
        "con.execute('create table t(v)')\ncon.execute('insert into t values (1)')\ncon.commit()",
        "con.execute('insert into t values (2)')\ncon.commit()",
    ]
    db = tmp_path / "db.sqlite"
    snap, state = move(tmp_path, cells)
    assert snap["variables"]["con"]["how"] == "replay"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with Kernel(cwd=tmp_path) as k:
        rep = k.restore(state)
        assert rep["replayed"] == ["con"], rep
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        assert k.eval("con.execute('select v from t').fetchall()") == "[(1,), (2,)]"
        k.run("con.execute('insert into t values (3)'); con.commit()")  # writable again
    assert hashlib.sha256(db.read_bytes()).hexdigest() != before


def test_in_memory_sqlite_is_rebuilt_with_its_rows(tmp_path):
    cells = [
        "import sqlite3\nmem = sqlite3.connect(':memory:')",
        "mem.execute('create table t(v)')",
        "mem.execute('insert into t values (5)')",
    ]
    _, state = move(tmp_path, cells)
    with Kernel(cwd=tmp_path) as k:
        assert k.restore(state)["replayed"] == ["mem"]
        assert k.eval("mem.execute('select v from t').fetchall()") == "[(5,)]"


def test_socket_is_reported_lost_by_name(tmp_path):
    snap, state = move(tmp_path, ["import socket\nsock = socket.socket()\nkeep = 1"])
    assert snap["variables"]["sock"]["how"] == "lost"
    with Kernel(cwd=tmp_path) as k:
        rep = k.restore(state)
        assert "sock" in rep["lost"] and "socket" in rep["lost"]["sock"]
        assert k.eval("keep") == "1"
        assert k.eval("'sock' in dir()") == "False"
    assert "sock" in lost_message(rep)


def test_replay_does_not_truncate_a_file_the_user_changed_later(tmp_path):
    cells = ["open('out.txt', 'w').write('x')\ngen = (i for i in range(3))", "next(gen)"]
    snap, state = move(tmp_path, cells, lambda: (tmp_path / "out.txt").write_text("later"))
    with Kernel(cwd=tmp_path) as k:
        rep = k.restore(state)
        assert rep["replayed"] == ["gen"]
        assert k.eval("next(gen)") == "1"
    assert (tmp_path / "out.txt").read_text() == "later"


def test_pathlib_writes_are_redirected_during_replay(tmp_path):
    cells = [
        "from pathlib import Path\nPath('a.txt').write_text('1')\nPath('b.bin').write_bytes(b'1')\n"
        "with Path('c.txt').open('a') as f:\n    f.write('1')\nit = (c for c in 'abc')"
    ]
    later = {"a.txt": "A", "b.bin": "B", "c.txt": "C"}

    def change():
        for name, text in later.items():
            (tmp_path / name).write_text(text)

    _, state = move(tmp_path, cells, change)
    with Kernel(cwd=tmp_path) as k:
        assert k.restore(state)["replayed"] == ["it"]
    assert {n: (tmp_path / n).read_text() for n in later} == later


def test_incremental_snapshot_writes_only_changed_variables(tmp_path):
    state = tmp_path / "state"
    with Kernel(cwd=tmp_path) as k:
        k.run("import numpy as np\nbig = np.random.default_rng(0).random(1_000_000)\nsmall = 1")
        first = k.snapshot(state)
        blobs = set((state / "blobs").iterdir())
        k.run("small = 2")
        second = k.snapshot(state)
        after = set((state / "blobs").iterdir())
    assert first["written_bytes"] > 8_000_000
    assert second["written_bytes"] < 20_000, second  # the index and one tiny blob
    assert len(after - blobs) == 1 and len(blobs - after) == 1  # small's old blob is pruned


def test_one_bad_variable_does_not_sink_the_others(tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    cells = [
        "good = {'k': [1, 2]}\nexec('hidden = (i for i in range(3))')",
        "lines = (l for l in open('in.txt'))",
        "import threading\nlock = threading.Lock()",
    ]
    snap, state = move(tmp_path, cells, lambda: (tmp_path / "in.txt").unlink())
    assert snap["variables"]["hidden"]["how"] == "lost"
    with Kernel(cwd=tmp_path) as k:
        rep = k.restore(state)
        assert set(rep["lost"]) == {"hidden", "lines"}, rep
        assert "FileNotFoundError" in rep["lost"]["lines"]
        assert k.eval("good, lock.locked()") == "({'k': [1, 2]}, False)"
        assert k.eval("'lines' in dir() or 'hidden' in dir()") == "False"
    msg = lost_message(rep)
    assert "hidden" in msg and "lines" in msg


def test_equal_variables_come_back_as_distinct_objects(tmp_path):
    # equal values share a content-addressed blob; they must not share an object afterwards
    _, state = move(tmp_path, ["a = {'n': 1}\nb = {'n': 1}\nc = a"])
    with Kernel(cwd=tmp_path) as k:
        k.restore(state)
        assert k.eval("a == b, a is b, c is a") == "(True, False, True)"


@pytest.mark.parametrize("deleted", [False, True], ids=["kept", "deleted-under-the-kernel"])
def test_a_working_folder_in_the_home_maps_to_the_new_home(tmp_path, deleted):
    old_home, new_home = tmp_path / "old" / "home", tmp_path / "new" / "home"
    old_home.mkdir(parents=True)
    new_home.mkdir(parents=True)
    state = tmp_path / "state"
    with Kernel(cwd=old_home, env={"HOME": str(old_home)}) as k:
        k.run("import os, shutil\nos.makedirs('proj/sub')\nos.chdir('proj/sub')\nx = 1")
        if deleted:  # the old host's disk wiped while the kernel still runs there
            k.run("shutil.rmtree(os.path.expanduser('~/proj'))")
        assert k.snapshot(state)["ok"]
    with Kernel(cwd=new_home, env={"HOME": str(new_home)}) as k:
        assert k.restore(state)["ok"]
        assert k.eval("os.getcwd()") == repr(str(new_home / "proj" / "sub"))


def test_other_languages_are_not_supported():
    assert supported("python") and supported("R") and not supported("julia")
    with pytest.raises(ValueError):
        snapshot_code("julia", "/tmp/x")
    assert "migrating_spawner.kernelstate.python" in restore_code("python", "/tmp/x")
    assert lost_message({"ok": True, "lost": {}}) is None


def _has_r() -> bool:
    if not shutil.which("R"):
        return False
    from jupyter_client.kernelspec import KernelSpecManager

    return "ir" in KernelSpecManager().find_kernel_specs()


@pytest.mark.skipif(
    not _has_r(),
    reason="R or IRkernel missing: apt-get install r-base-core r-cran-irkernel (make system-deps)",
)
def test_r_global_environment_round_trip(tmp_path):
    state = tmp_path / "state"
    with Kernel("ir", cwd=tmp_path) as k:
        k.run("library(tools)\nx <- 42L\nv <- c(a = 1.5, b = 2)")
        k.run("df <- data.frame(n = 1:3, s = c('a', 'b', 'c'))\nf <- function(y) x + y")
        k.run("con <- file('r.txt', 'w')")
        snap = k.snapshot(state)
        assert snap["variables"]["con"]["how"] == "lost"
        k.run("v[['a']] <- 9")
        second = k.snapshot(state)
    assert snap["ok"] and snap["execution_count"] == 3
    assert 0 < second["written_bytes"] < snap["written_bytes"]
    with Kernel("ir", cwd=tmp_path) as k:
        rep = k.restore(state)
        assert rep["ok"] and set(rep["restored"]) >= {"x", "v", "df", "f"}
        assert "con" in rep["lost"]
        assert k.eval("f(1L)") == "[1] 43"
        assert k.eval("identical(df, data.frame(n = 1:3, s = c('a', 'b', 'c')))") == "[1] TRUE"
        assert k.eval("v[['a']]") == "[1] 9"
        assert k.eval("'package:tools' %in% search()") == "[1] TRUE"
        assert k.run("1")["execution_count"] == 5


@pytest.mark.skipif(not _has_r(), reason="R or IRkernel missing (make system-deps)")
def test_r_working_folder_in_the_home_maps_to_the_new_home(tmp_path):
    old_home, new_home = tmp_path / "old", tmp_path / "new"
    old_home.mkdir()
    new_home.mkdir()
    state = tmp_path / "state"
    with Kernel("ir", cwd=old_home, env={"HOME": str(old_home)}) as k:
        k.run("dir.create('proj/sub', recursive = TRUE)\nsetwd('proj/sub')\nx <- 1")
        k.run("unlink(path.expand('~/proj'), recursive = TRUE)")  # the old disk is wiped
        assert k.snapshot(state)["ok"]
    with Kernel("ir", cwd=new_home, env={"HOME": str(new_home)}) as k:
        assert k.restore(state)["ok"]
        assert k.eval("getwd()") == f'[1] "{new_home}/proj/sub"'
