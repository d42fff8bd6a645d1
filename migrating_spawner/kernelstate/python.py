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
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import re
import socket
import sys
import time
import types
import warnings

from . import store
from .cells import analyze, plan
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


def _groups(ns: dict, names: list[str]) -> list[list[str]]:
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    owner: dict[int, str] = {}
    for name in names:
        for i in _reach(ns[name]):
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


def _snapshot(ip, state_dir: str) -> dict:
    ns = ip.user_ns
    names = user_names(ip)
    history = list(ns.get("_ih", [""]))
    cells = _cells(ip, history)
    variables: dict[str, dict] = {}  # the report
    entries: dict[str, dict] = {}  # the index
    written = 0
    targets: dict[str, str] = {}  # name -> why it is not serialised
    data: list[str] = []

    def put(obj, by_value=False) -> dict:
        nonlocal written
        main, buffers, ser = _dumps(obj, by_value)
        digest, size, wrote = store.put(state_dir, main, buffers)
        written += wrote
        return {"blob": digest, "ser": ser, "bytes": size}

    for name in names:
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
            where = _writer(cells, name)
            cell = f"; re-run cell {where}" if where else ""
            variables[name] = {"how": "lost", "bytes": 0, "reason": f"an open socket{cell}"}
        else:
            if isinstance(v, io.IOBase) and not v.closed and v.writable():
                v.flush()  # what the user wrote so far is on disk, and moves with the files
            data.append(name)

    for group in _groups(ns, data):
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

    stateful = sorted(n for n in targets if _stateful(ns[n]))
    p = plan(cells, set(targets), set(entries), set(stateful))
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
    index = {
        "version": VERSION,
        "language": "python",
        "time": time.time(),
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
    return {
        "ok": True,
        "variables": variables,
        "execution_count": index["execution_count"],
        "written_bytes": written,
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


def restore(ip, state_dir: str) -> dict:
    """Restore the snapshot in `state_dir` into `ip`; returns the report it also writes."""
    t0 = time.perf_counter()
    try:
        with _quiet():
            report = _restore(ip, state_dir)
    except Exception as e:
        report = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report.update(restored=[], replayed=[], lost={}, execution_count=ip.execution_count - 1)
    report["seconds"] = round(time.perf_counter() - t0, 4)
    store.write_json(os.path.join(state_dir, "restore-report.json"), report)
    return report


def _restore(ip, state_dir: str) -> dict:
    index = store.read_index(state_dir)
    if index is None:
        raise FileNotFoundError(f"no snapshot in {state_dir}")
    ns = ip.user_ns
    history = index["history"]
    ns["_ih"][:] = history  # In and _ih are one list: the history replay reads next time
    ip.history_manager.input_hist_raw[:] = history
    ip.execution_count = index["execution_count"] + 1
    cwd = _mapped_cwd(index)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    sys.path.extend(p for p in index["sys_path"] if p not in sys.path)

    entries: dict[str, dict] = index["entries"]
    lost: dict[str, str] = dict(index["lost"])
    warnings: dict[str, str] = {}
    restored: list[str] = []
    failed: dict[str, str] = {}
    loaded: dict[str, dict] = {}  # blob -> a group's values, so a group is loaded once

    def load(name: str) -> None:
        e = entries[name]
        if not e.get("group"):
            # its own object, even when an equal variable has the same (content-addressed) blob
            ns[name] = _loads(state_dir, e["blob"], e["ser"])
        else:
            if e["blob"] not in loaded:  # a group shares objects: load it once
                loaded[e["blob"]] = _loads(state_dir, e["blob"], e["ser"])
            ns[name] = loaded[e["blob"]][name]
        for attr, v in e.get("attrs", {}).items():
            setattr(ns[name], attr, v)

    # modules, then what cells defined, then data that may refer to both
    for how in ("module", "function", "pickled"):
        for name, e in entries.items():
            if e["how"] != how:
                continue
            try:
                if how == "module":
                    ns[name] = importlib.import_module(e["module"])
                else:
                    load(name)
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

    for key, e in index["extras"].items():  # last: replayed cells may have drawn numbers
        try:
            state = _loads(state_dir, e["blob"], e["ser"])
            if key == "random":
                importlib.import_module("random").setstate(state)
            else:
                importlib.import_module("numpy.random").set_state(state)
        except Exception as err:
            warnings[f"<{key} state>"] = f"{type(err).__name__}: {err}"

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
