"""Snapshot and restore of an IPython kernel's namespace; runs INSIDE the kernel.

Variable by variable, so one bad variable never sinks the rest:

- modules are re-imported by name; functions and classes defined in cells are pickled by
  value with dill;
- data goes through the standard pickle first (protocol 5, big buffers out of band: measured
  faster than dill, see benchmarks/kernel_state.py), dill only when pickle fails (lambdas,
  open files, locks, ...). Standard pickle also stores instances of cell-defined classes by
  reference to the class, so `isinstance(p, Point)` still holds after a restore;
- variables that share objects are pickled together so `b is a` stays true;
- what cannot be serialised is rebuilt by re-running cells from the history (cells.py plans
  it, guard.py keeps replay off the user's files), and what cannot be rebuilt is reported.

Incremental (O(delta), not O(state)): after its first snapshot or restore of a state folder
the kernel remembers that index (`_BASES`) and every cell it runs from then on (`_Tracker`,
on IPython's pre_run_cell event). The next snapshot pickles only what those cells may have
changed by the mutation rule (cells.touched), plus variables that share objects with those,
and keeps every other variable's blob without looking at it. A restore into a kernel that
holds the base of the new index (a kernel started ahead by a move's pre-copy) loads only
the variables whose entries changed. Whatever the rule cannot see through (exec, most
magics, silent executions by others, widgets) makes that snapshot a full walk, and a
kernel that ran anything since its restore gets a full restore: never a wrong delta.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import re
import secrets
import socket
import sys
import time
import types
import warnings

from . import store
from .cells import analyze, plan, touched
from .guard import replay_guard

VERSION = 1
# set by whoever starts the kernel on a host (MovableKernel): the host's own disk, whose
# path differs from host to host
HOST_ROOT = "JUPYTER_MIGRATING_HOST_ROOT"
# IPython's own names: output caches, input history and dunders
_SKIP = re.compile(r"^(_{1,3}|_i{1,3}|_i\d+|_\d+|_ih|_oh|_dh|__\w*__|__kp_\w*)$")
_ATOMIC = (int, float, complex, str, bytes, bool, type(None))
_NOT_DATA = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)
_REACH_BUDGET = 50_000  # objects visited per variable when looking for shared objects


# -- serialisation ----------------------------------------------------------------------


def _dumps(obj, by_value: bool = False) -> tuple[bytes, list[memoryview], str]:
    buffers: list[memoryview] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(pb.raw())
            return False
        except BufferError:  # not contiguous: keep it in the stream
            return True

    if not by_value:
        try:
            return pickle.dumps(obj, protocol=5, buffer_callback=out_of_band), buffers, "pickle"
        except Exception:
            buffers.clear()
    import dill

    # CONTENTS_FMODE: an open file re-opens at its position without truncating the file
    main = dill.dumps(obj, protocol=5, fmode=dill.CONTENTS_FMODE, buffer_callback=out_of_band)
    return main, buffers, "dill"


def _loads(state_dir: str, digest: str, ser: str):
    main, buffers = store.get(state_dir, digest)
    if ser == "dill":
        import dill

        return dill.loads(main, buffers=buffers)
    return pickle.loads(main, buffers=buffers)


# -- classification -----------------------------------------------------------------------


def user_names(ip) -> list[str]:
    hidden = ip.user_ns_hidden
    return [
        name
        for name, value in ip.user_ns.items()
        if not _SKIP.match(name) and not (name in hidden and hidden[name] is value)
    ]


def _is_module(v) -> bool:
    return isinstance(v, types.ModuleType) and sys.modules.get(v.__name__) is v


def _defined_in_cell(v) -> bool:
    return isinstance(v, (types.FunctionType, type)) and getattr(v, "__module__", "") == "__main__"


def _stateful(v) -> bool:
    """State that later cells advance, so they re-run too: iterators, in-memory SQLite."""
    if hasattr(type(v), "__next__"):
        return True
    import sqlite3

    if isinstance(v, sqlite3.Connection):
        try:
            rows = v.execute("pragma database_list").fetchall()
            return any(r[1] == "main" and not r[2] for r in rows)
        except Exception:
            return False
    return False


def _reach(obj) -> set[int]:
    """Ids of the objects `obj` holds, bounded, to find variables that share objects."""
    seen: set[int] = set()
    stack = [obj]
    while stack and len(seen) < _REACH_BUDGET:
        o = stack.pop()
        if isinstance(o, _ATOMIC) or isinstance(o, _NOT_DATA) or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif getattr(o, "base", None) is not None and type(o).__name__ == "ndarray":
            stack.append(o.base)  # a numpy view and its base go together
        else:
            d = getattr(o, "__dict__", None)
            if isinstance(d, dict):
                stack.extend(d.values())
    return seen


def _groups(ns: dict, names: list[str], reach: dict[str, set[int]]) -> list[list[str]]:
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    owner: dict[int, str] = {}
    for name in names:
        if name not in reach:
            reach[name] = _reach(ns[name])
        for i in reach[name]:
            other = owner.setdefault(i, name)
            if other != name:
                parent[find(name)] = find(other)
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(find(name), []).append(name)
    return sorted(out.values())


def _cells(ip, history: list[str]):
    out = []
    for i, src in enumerate(history):
        if i == 0:
            continue
        try:
            code = ip.transform_cell(src)
        except Exception:
            code = "\x00"  # unparsable: plan() reports what depends on it
        out.append(analyze(i, code))
    return out


def _writer(cells, name: str) -> int | None:
    return next((c.index for c in reversed(cells) if name in c.writes), None)


@contextlib.contextmanager
def _quiet():
    """Nothing reaches the notebook: dill warns on stderr, replayed cells print."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield


# -- snapshot -------------------------------------------------------------------------------


def snapshot(ip, state_dir: str) -> dict:
    """Write a snapshot of `ip.user_ns` into `state_dir`; returns the report it also writes."""
    t0 = time.perf_counter()
    os.makedirs(store.blob_dir(state_dir), exist_ok=True)
    try:
        with _quiet():
            report = _snapshot(ip, state_dir)
    except Exception as e:  # the report is how the caller learns of it; never raise into a cell
        report = {"ok": False, "error": f"{type(e).__name__}: {e}", "variables": {}}
        report.setdefault("execution_count", ip.execution_count - 1)
        report["written_bytes"] = 0
    report["seconds"] = round(time.perf_counter() - t0, 4)
    store.write_json(os.path.join(state_dir, "snapshot-report.json"), report)
    return report


class _Tracker:
    """What runs in this kernel from the first snapshot or restore on: every cell's source
    (pre_run_cell, with or without history) and a count of silent executions."""

    def __init__(self, ip):
        self.cells: list[str] = []
        self.silent = 0  # pre_execute fires for every execution, pre_run_cell not for silent
        ip.events.register("pre_execute", self._pre_execute)
        ip.events.register("pre_run_cell", self._pre_run_cell)

    def _pre_execute(self) -> None:
        self.silent += 1

    def _pre_run_cell(self, info) -> None:
        self.silent -= 1
        self.cells.append(info.raw_cell)


_TRACKER: list[_Tracker] = []
#: per state folder: the index this kernel last wrote or restored there, with what it ran
#: then and the objects each variable reached (to find new sharing with a changed one)
_BASES: dict[str, dict] = {}


def _tracker(ip) -> _Tracker:
    if not _TRACKER:
        _TRACKER.append(_Tracker(ip))
    return _TRACKER[0]


def _remember(state_dir: str, index: dict, reach: dict[str, set[int]]) -> None:
    t = _TRACKER[0]
    owner = {i: name for name, ids in reach.items() for i in ids}
    _BASES[os.path.abspath(state_dir)] = {
        "index": index,
        "cells": len(t.cells),
        "silent": t.silent,  # this execution (ours) included
        "reach": reach,
        "owner": owner,
    }


def _globals_of(v, seen: set[int]) -> set[str]:
    """Global names the code of a cell-defined function, class or instance may touch."""
    if id(v) in seen:
        return set()
    seen.add(id(v))
    if not _defined_in_cell(v):
        v = type(v)
        if not _defined_in_cell(v):
            return set()
    funcs = [v] if isinstance(v, types.FunctionType) else []
    if isinstance(v, type):
        for klass in v.__mro__:
            if getattr(klass, "__module__", "") == "__main__":
                for attr in vars(klass).values():
                    attr = getattr(attr, "__func__", attr)  # static and class methods
                    if isinstance(attr, property):
                        funcs += [f for f in (attr.fget, attr.fset, attr.fdel) if f]
                    elif isinstance(attr, types.FunctionType):
                        funcs.append(attr)
    out: set[str] = set()
    for f in funcs:
        codes = [f.__code__]
        while codes:
            code = codes.pop()
            out |= set(code.co_names)
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return out


def _dirty(ip, base: dict) -> tuple[set[str] | None, str]:
    """Names the cells run since `base` may have bound or changed (the mutation rule), or
    None and why it cannot be said."""
    t = _TRACKER[0]
    if t.silent - base["silent"] > 1:  # > ours: someone else ran code we cannot see
        return None, "a silent execution by another client since the last snapshot"
    if "ipywidgets" in sys.modules:
        return None, "widgets change variables without a cell"
    out: set[str] = set()
    for raw in t.cells[base["cells"] :]:
        try:
            code = ip.transform_cell(raw)
        except Exception:
            return None, "a cell IPython cannot transform"
        names, why = touched(code)
        if why:
            return None, why
        out |= names
    ns = ip.user_ns
    todo, seen = list(out), set()
    while todo:  # what cell-defined code that was called or passed on may touch
        name = todo.pop()
        if name in ns:
            for g in _globals_of(ns[name], seen) - out:
                out.add(g)
                todo.append(g)
    return out, ""


def _snapshot(ip, state_dir: str) -> dict:
    _tracker(ip)
    ns = ip.user_ns
    names = user_names(ip)
    history = list(ns.get("_ih", [""]))
    base = _BASES.get(os.path.abspath(state_dir))
    dirty, why = None, "the first snapshot of this kernel"
    if base is not None:
        try:
            disk = store.read_index(state_dir)
        except ValueError:  # damaged: this snapshot is whole and writes a new one
            disk = None
        if not disk or disk.get("snap") != base["index"].get("snap"):
            why = "the folder holds another snapshot than this kernel's last"
        else:
            dirty, why = _dirty(ip, base)
    prev: dict = base["index"] if dirty is not None else {}
    prev_entries: dict[str, dict] = prev.get("entries", {})
    prev_lost: dict[str, str] = prev.get("lost", {})
    reach: dict[str, set[int]] = {}
    if dirty is None:
        todo = set(names)
    else:
        reach = {n: ids for n, ids in base["reach"].items() if n in ns and n not in dirty}
        todo = {n for n in names if n in dirty or (n not in prev_entries and n not in prev_lost)}
    cells = None
    variables: dict[str, dict] = {}  # the report
    entries: dict[str, dict] = {}  # the index
    written = 0
    targets: dict[str, str] = {}  # name -> why it is not serialised
    data: list[str] = []

    def history_cells():
        nonlocal cells
        if cells is None:
            cells = _cells(ip, history)
        return cells

    def put(obj, by_value=False) -> dict:
        nonlocal written
        main, buffers, ser = _dumps(obj, by_value)
        digest, size, wrote = store.put(state_dir, main, buffers)
        written += wrote
        return {"blob": digest, "ser": ser, "bytes": size}

    def classify(name: str) -> None:
        v = ns[name]
        if _is_module(v):
            entries[name] = {"how": "module", "module": v.__name__}
        elif _defined_in_cell(v):
            try:
                entries[name] = {"how": "function", **put(v, by_value=True)}
                if isinstance(v, types.FunctionType):  # dill drops what functools.wraps set
                    entries[name]["attrs"] = {"__qualname__": v.__qualname__, "__doc__": v.__doc__}
            except Exception as e:
                targets[name] = f"{type(e).__name__}: {e}"
        elif isinstance(v, socket.socket):
            where = _writer(history_cells(), name)
            cell = f"; re-run cell {where}" if where else ""
            variables[name] = {"how": "lost", "bytes": 0, "reason": f"an open socket{cell}"}
        else:
            if isinstance(v, io.IOBase) and not v.closed and v.writable():
                v.flush()  # what the user wrote so far is on disk, and moves with the files
            data.append(name)

    for name in sorted(todo):
        classify(name)
    if dirty is not None:
        # a variable that now shares objects with a changed one (b = a; c.append(a)), or
        # was stored together with one, is stored again with it
        owner = base["owner"]
        queue = list(data)
        while queue:
            name = queue.pop()
            reach[name] = _reach(ns[name])
            mates = {owner.get(i) for i in reach[name]}
            mates |= set((prev_entries.get(name) or {}).get("group") or ())
            for other in mates:
                if other and other in ns and other not in todo and other in names:
                    todo.add(other)
                    reach.pop(other, None)
                    classify(other)
                    if other in data:
                        queue.append(other)
    for group in _groups(ns, data, reach):
        try:
            value = ns[group[0]] if len(group) == 1 else {n: ns[n] for n in group}
            entry = put(value)
            for n in group:
                entries[n] = {"how": "pickled", **entry, "group": group if len(group) > 1 else None}
            continue
        except Exception as e:
            if len(group) == 1:
                targets[group[0]] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
        for n in group:  # the group as a whole failed: one by one, sharing is lost
            try:
                entries[n] = {"how": "pickled", **put(ns[n])}
            except Exception as e:
                targets[n] = f"{type(e).__name__}: {str(e)[:200]}"

    # what no cell touched keeps its entry (and its blob) as it was
    for name in names:
        if name in todo:
            continue
        if name in prev_entries and prev_entries[name]["how"] != "replay":
            entries[name] = prev_entries[name]
        elif name in prev_entries:  # a replay target: planned again below with the others
            targets[name] = prev_entries[name].get("reason", "not serialisable")
        elif name in prev_lost:
            variables[name] = {"how": "lost", "bytes": 0, "reason": prev_lost[name]}

    stateful = sorted(n for n in targets if _stateful(ns[n]))
    if targets:
        p = plan(history_cells(), set(targets), set(entries), set(stateful))
        for name, why in p.lost.items():
            variables[name] = {"how": "lost", "bytes": 0, "reason": f"{targets[name]}; {why}"}
        for name, needs in p.needs.items():
            entries[name] = {"how": "replay", "cells": needs, "reason": targets[name]}
    for name, e in entries.items():
        variables[name] = {"how": e["how"], "bytes": e.get("bytes", 0)}
        if "reason" in e:
            variables[name]["reason"] = e["reason"] + f"; re-runs cells {e['cells']}"

    extras = {}
    if "random" in sys.modules:
        extras["random"] = put(sys.modules["random"].getstate())
    if "numpy.random" in sys.modules:
        extras["numpy.random"] = put(sys.modules["numpy.random"].get_state())

    cwd = _cwd()
    changed = sorted(n for n in todo if n in entries or n in variables)
    index = {
        "version": VERSION,
        "language": "python",
        "time": time.time(),
        "snap": secrets.token_hex(8),
        "base": prev.get("snap"),
        "names": names,
        "entries": entries,
        "lost": {n: v["reason"] for n, v in variables.items() if v["how"] == "lost"},
        "stateful": stateful,
        "history": history,
        "execution_count": ip.execution_count - 1,
        "cwd": cwd,
        "cwd_in_home": _under(cwd, os.path.expanduser("~")),
        "cwd_on_host": _under(cwd, os.environ.get(HOST_ROOT)),
        "sys_path": list(sys.path),
        "extras": extras,
    }
    written += store.write_json(os.path.join(state_dir, "index.json"), index)
    store.prune(
        state_dir, {e["blob"] for e in [*entries.values(), *extras.values()] if "blob" in e}
    )
    _remember(state_dir, index, reach)
    return {
        "ok": True,
        "variables": variables,
        "execution_count": index["execution_count"],
        "written_bytes": written,
        "mode": "delta" if dirty is not None else "full",
        "why": why,
        "changed": changed,
        "deleted": sorted(set(prev.get("names", [])) - set(names)),
    }


def _cwd() -> str:
    """The working folder, even one deleted under the kernel (Linux keeps its old path)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return os.readlink("/proc/self/cwd").removesuffix(" (deleted)")


def _under(path: str, root: str | None) -> str | None:
    """`path` relative to `root`, or None if it is not inside it."""
    if not root or not (path == root or path.startswith(root.rstrip(os.sep) + os.sep)):
        return None
    return os.path.relpath(path, root)


def _mapped_cwd(index: dict) -> str:
    """The snapshot's working folder on this host: the same place under this home (or this
    host's disk), since both differ from host to host."""
    if index.get("cwd_in_home") is not None:
        cwd = os.path.join(os.path.expanduser("~"), index["cwd_in_home"])
        os.makedirs(cwd, exist_ok=True)  # a folder left empty is not in a home checkpoint
        return os.path.normpath(cwd)
    if index.get("cwd_on_host") is not None and os.environ.get(HOST_ROOT):
        return os.path.normpath(os.path.join(os.environ[HOST_ROOT], index["cwd_on_host"]))
    return index["cwd"]


# -- restore ---------------------------------------------------------------------------------


def restore(ip, state_dir: str, ahead: bool = False) -> dict:
    """Restore the snapshot in `state_dir` into `ip`; returns the report it also writes.

    `ahead`: this kernel is started ahead of a move (the pre-copy) in a home that is not
    final yet: its IPython history is kept in memory, so the history database a later home
    restore replaces is not held open (sqlite would refuse the next write: "attempt to
    write a readonly database"). A restore without `ahead` (the move's final one) opens the
    home's history database again."""
    t0 = time.perf_counter()
    if ahead:
        _history_aside(ip)
    try:
        with _quiet():
            report = _restore(ip, state_dir)
    except Exception as e:
        report = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report.update(restored=[], replayed=[], lost={}, execution_count=ip.execution_count - 1)
    if not ahead:
        _history_back(ip, report)
    report["seconds"] = round(time.perf_counter() - t0, 4)
    store.write_json(os.path.join(state_dir, "restore-report.json"), report)
    return report


def _restore(ip, state_dir: str) -> dict:
    index = store.read_index(state_dir)
    if index is None:
        raise FileNotFoundError(f"no snapshot in {state_dir}")
    _tracker(ip)
    base = _BASES.get(os.path.abspath(state_dir))
    why = "the first restore into this kernel"
    if base is not None:
        t = _TRACKER[0]
        if t.cells[base["cells"] :] or t.silent - base["silent"] > 1:
            why = "this kernel ran code since it was restored"
        elif any(
            e["how"] == "replay" and base["index"]["entries"].get(n) != e
            for n, e in index["entries"].items()
        ):
            why = "a variable rebuilt by replaying cells changed"
        else:
            try:
                return _apply_delta(ip, state_dir, base, index)
            except Exception as e:  # never half a delta: the full restore below instead
                why = f"the delta did not apply ({type(e).__name__}: {str(e)[:200]})"
    ns = ip.user_ns
    for name in user_names(ip):  # a kernel restored before: start clean
        ns.pop(name, None)
    report = _restore_full(ip, state_dir, index)
    report["mode"], report["why"] = "full", why
    # what did not come back is not this kernel's base: a later delta loads it again
    back = set(report["restored"]) | set(report["replayed"])
    kept = {n: e for n, e in index["entries"].items() if n in back}
    _remember(state_dir, {**index, "entries": kept}, _data_reach(ip.user_ns, index))
    return report


#: the history database a kernel started ahead set aside (`_history_aside`), if it did
_HISTORY_FILE: list = []


def _history_aside(ip) -> None:
    """Keep this kernel's IPython history in memory: stop the thread that writes it and
    close the database file (nothing of this kernel is written to it until it is back)."""
    hm = ip.history_manager
    if _HISTORY_FILE or not hm.enabled or str(hm.hist_file) == ":memory:":
        return
    _HISTORY_FILE.append(hm.hist_file)  # as IPython has it (a Path)
    if hm.save_thread is not None:
        hm.save_thread.stop()  # it closes its own connection to the file
        hm.save_thread = None
    hm.db.close()
    hm.hist_file = ":memory:"
    hm.init_db()
    hm.new_session()


def _history_back(ip, report: dict) -> None:
    """Open the home's history database again (the file the home holds now) in a new
    session, with a new thread writing to it, as a kernel started there would."""
    if not _HISTORY_FILE:
        return
    from IPython.core.history import HistorySavingThread

    hm = ip.history_manager
    try:
        hm.db.close()
        hm.hist_file = _HISTORY_FILE.pop()
        hm.init_db()
        hm.new_session()
        hm.save_thread = HistorySavingThread(hm)
        hm.save_thread.start()
    except Exception as e:  # history is IPython's; the namespace is back all the same
        report.setdefault("warnings", {})["<history>"] = (
            f"IPython's history database could not be opened again: {type(e).__name__}: {e}"
        )


def _data_reach(ns: dict, index: dict) -> dict[str, set[int]]:
    return {
        n: _reach(ns[n])
        for n, e in index["entries"].items()
        if e["how"] in ("pickled", "replay") and n in ns
    }


def _setup(ip, index: dict) -> None:
    """History, cell count, working folder and import path as the snapshot had them."""
    ns = ip.user_ns
    history = index["history"]
    ns["_ih"][:] = history  # In and _ih are one list: the history replay reads next time
    ip.history_manager.input_hist_raw[:] = history
    ip.execution_count = index["execution_count"] + 1
    cwd = _mapped_cwd(index)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    sys.path.extend(p for p in index["sys_path"] if p not in sys.path)


def _load_entry(state_dir: str, ns: dict, name: str, e: dict, loaded: dict) -> None:
    if e["how"] == "module":
        ns[name] = importlib.import_module(e["module"])
        return
    if not e.get("group"):
        # its own object, even when an equal variable has the same (content-addressed) blob
        ns[name] = _loads(state_dir, e["blob"], e["ser"])
    else:
        if e["blob"] not in loaded:  # a group shares objects: load it once
            loaded[e["blob"]] = _loads(state_dir, e["blob"], e["ser"])
        ns[name] = loaded[e["blob"]][name]
    for attr, v in e.get("attrs", {}).items():
        setattr(ns[name], attr, v)


def _load_extras(state_dir: str, index: dict, warnings: dict) -> None:
    for key, e in index["extras"].items():  # last: replayed cells may have drawn numbers
        try:
            state = _loads(state_dir, e["blob"], e["ser"])
            if key == "random":
                importlib.import_module("random").setstate(state)
            else:
                importlib.import_module("numpy.random").set_state(state)
        except Exception as err:
            warnings[f"<{key} state>"] = f"{type(err).__name__}: {err}"


def _apply_delta(ip, state_dir: str, base: dict, index: dict) -> dict:
    """Bring a kernel holding `base` (restored ahead, nothing run since) to `index`: load
    only the variables whose entries differ, drop the ones gone."""
    ns = ip.user_ns
    old = base["index"]
    _setup(ip, index)
    keep = set(index["entries"])
    deleted = sorted(n for n in user_names(ip) if n not in keep)
    for name in deleted:
        ns.pop(name, None)
    changed = [n for n, e in index["entries"].items() if old["entries"].get(n) != e]
    failed: dict[str, str] = {}
    loaded: dict[str, dict] = {}
    for how in ("module", "function", "pickled"):
        for name in changed:
            e = index["entries"][name]
            if e["how"] != how:
                continue
            try:
                _load_entry(state_dir, ns, name, e, loaded)
            except Exception as err:
                failed[name] = f"{type(err).__name__}: {str(err)[:200]}"
    if failed:  # a delta that does not load is not applied by halves
        raise RuntimeError(f"it did not load: {failed}")
    nbytes = sum(
        {
            index["entries"][n]["blob"]: index["entries"][n]["bytes"]
            for n in changed
            if index["entries"][n].get("blob")
        }.values()
    )
    warnings: dict[str, str] = {}
    _load_extras(state_dir, index, warnings)
    reach = {n: ids for n, ids in base["reach"].items() if n in keep and n not in changed}
    reach.update(
        {n: _reach(ns[n]) for n in changed if n in ns and index["entries"][n]["how"] == "pickled"}
    )
    _remember(state_dir, index, reach)
    lost = dict(index["lost"])
    return {
        "ok": True,
        "mode": "delta",
        "why": "",
        "restored": [n for n in index["entries"] if index["entries"][n]["how"] != "replay"],
        "replayed": [n for n in index["entries"] if index["entries"][n]["how"] == "replay"],
        "loaded": sorted(changed),
        "deleted": deleted,
        "loaded_bytes": nbytes,
        "lost": lost,
        "warnings": warnings,
        "execution_count": index["execution_count"],
        "snapshot_time": index.get("time"),
    }


def _restore_full(ip, state_dir: str, index: dict) -> dict:
    ns = ip.user_ns
    _setup(ip, index)

    entries: dict[str, dict] = index["entries"]
    lost: dict[str, str] = dict(index["lost"])
    warnings: dict[str, str] = {}
    restored: list[str] = []
    failed: dict[str, str] = {}
    loaded: dict[str, dict] = {}  # blob -> a group's values, so a group is loaded once

    # modules, then what cells defined, then data that may refer to both
    for how in ("module", "function", "pickled"):
        for name, e in entries.items():
            if e["how"] != how:
                continue
            try:
                _load_entry(state_dir, ns, name, e, loaded)
                restored.append(name)
            except Exception as err:
                failed[name] = f"{type(err).__name__}: {str(err)[:200]}"

    replay_targets = {n for n, e in entries.items() if e["how"] == "replay"} | set(failed)
    replayed: list[str] = []
    if replay_targets:
        replayed = _replay(ip, state_dir, index, replay_targets, set(restored), failed, lost)
        replayed_set = set(replayed)
        for name in list(replay_targets):
            if name in failed and name not in replayed_set:
                lost.setdefault(name, failed[name])
        for name in replayed_set & set(failed):
            warnings[name] = f"could not be loaded ({failed[name]}); rebuilt by re-running cells"

    _load_extras(state_dir, index, warnings)

    return {
        "ok": True,
        "restored": restored,
        "replayed": replayed,
        "lost": lost,
        "warnings": warnings,
        "execution_count": index["execution_count"],
        "snapshot_time": index.get("time"),
    }


def _replay(ip, state_dir, index, targets, restored, failed, lost) -> list[str]:
    from IPython.utils.capture import capture_output

    ns = ip.user_ns
    history = index["history"]
    cells = _cells(ip, history)
    stateful = set(index["stateful"])
    p = plan(cells, targets, restored, stateful)
    for name, why in p.lost.items():
        lost[name] = f"{failed.get(name) or entries_reason(index, name)}; {why}"
    errors: dict[int, str] = {}
    with capture_output(), replay_guard(ns) as guard:
        for i in p.cells:
            try:
                code = ip.transform_cell(history[i])
                exec(compile(code, f"<replay of cell {i}>", "exec"), ns)
            except BaseException as e:
                errors[i] = f"{type(e).__name__}: {str(e)[:200]}"
        for name in p.needs:
            if name in ns:
                ns[name] = guard.reconnect(ns[name])
        scratch = guard.scratch
    by_index = {c.index: c for c in cells}
    touched = {n for i in p.cells for n in by_index[i].mentions}
    keep = set(index["names"]) - set(lost)
    hidden = ip.user_ns_hidden
    for name in {n for i in p.cells for n in by_index[i].writes}:
        if name not in keep and name not in hidden:
            ns.pop(name, None)  # temporaries the replayed cells made, gone at snapshot time
    reload = {n for n in touched & restored if index["entries"].get(n, {}).get("blob")}
    for name in sorted(reload):  # replayed cells may have rebound or changed them
        e = index["entries"][name]
        value = _loads(state_dir, e["blob"], e["ser"])
        group = e.get("group") or [name]
        for n in group:
            ns[n] = value[n] if e.get("group") else value
    done = []
    for name, needs in p.needs.items():
        bad = [f"cell {i}: {errors[i]}" for i in needs if i in errors]
        value = ns.get(name, None)
        if name not in ns:
            lost[name] = "re-running cells did not recreate it" + (f" ({bad[0]})" if bad else "")
        elif bad:
            ns.pop(name, None)
            lost[name] = f"re-running its cells raised ({'; '.join(bad)})"
        elif str(getattr(value, "name", "")).startswith(scratch):
            ns.pop(name, None)
            lost[name] = f"a file opened for writing in cell {needs[-1]}; re-run that cell"
        else:
            done.append(name)
    return done


def entries_reason(index: dict, name: str) -> str:
    return index["entries"].get(name, {}).get("reason", "not serialisable")
