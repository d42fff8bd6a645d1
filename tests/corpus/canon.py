"""Canonical values of a kernel's user variables, computed INSIDE the kernel.

Run after a snapshot (it may consume iterators and draw random numbers: the kernel is
discarded anyway) and after the restore; equal strings mean equal state.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import sqlite3
import sys
import types


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def canon(v, depth: int = 0) -> str:
    if depth > 4:
        return type(v).__name__
    t = type(v)
    mod = t.__module__
    if isinstance(v, types.ModuleType):
        return f"module {v.__name__}"
    if isinstance(v, types.FunctionType):
        consts = [c for c in v.__code__.co_consts if not isinstance(c, types.CodeType)]
        cells = [canon(c.cell_contents, depth + 1) for c in (v.__closure__ or ())]
        return f"function {v.__qualname__} {_h(v.__code__.co_code)} {consts!r} {cells} " + repr(
            v.__defaults__
        )
    if isinstance(v, type):
        return f"class {v.__qualname__} {sorted(k for k in vars(v) if not k.startswith('__'))}"
    if isinstance(v, io.IOBase):
        return f"file {getattr(v, 'name', '?')} {getattr(v, 'mode', '?')} closed={v.closed} " + (
            "" if v.closed else f"pos={v.tell()}"
        )
    if isinstance(v, sqlite3.Connection):
        tables = [r[0] for r in v.execute("select name from sqlite_master where type='table'")]
        rows = {t: v.execute(f"select * from {t} order by 1").fetchall() for t in tables}
        return f"sqlite {rows}"
    if mod.startswith("numpy") and t.__name__ == "ndarray":
        return f"ndarray {v.dtype} {v.shape} {_h(v.tobytes())}"
    if mod.startswith("pandas") and hasattr(v, "to_dict"):
        dtypes = list(map(str, getattr(v, "dtypes", [])))
        return f"{t.__name__} {v.to_json(date_format='iso')} {dtypes}"
    if mod.startswith("matplotlib") and t.__name__ == "Figure":
        lines = [
            (ln.get_xdata().tolist(), ln.get_ydata().tolist()) for a in v.axes for ln in a.lines
        ]
        return f"Figure {[a.get_title() for a in v.axes]} {lines}"
    if t.__name__ in ("Random",) and hasattr(v, "random"):
        return f"Random {[v.random() for _ in range(3)]}"
    if t.__name__ == "Generator" and mod.startswith("numpy"):
        return f"np.Generator {v.random(3).tolist()}"
    if hasattr(t, "__next__"):  # iterators: what they yield next
        return f"iter {[canon(x, depth + 1) for x in itertools.islice(v, 5)]}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {canon(x, depth + 1)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return f"{t.__name__}[" + ", ".join(canon(x, depth + 1) for x in v) + "]"
    if callable(v) and not hasattr(v, "__dict__") and " at 0x" in repr(v):
        return f"callable {t.__name__}"
    r = repr(v)
    if " at 0x" not in r:
        return r
    d = getattr(v, "__dict__", None)
    if isinstance(d, dict):
        return f"{t.__qualname__}({canon(d, depth + 1)})"
    return f"{t.__qualname__} (opaque)"


def canon_all(ip) -> dict:
    from migrating_spawner.kernelstate.python import user_names

    out = {}
    for name in sorted(user_names(ip)):
        try:
            out[name] = canon(ip.user_ns[name])
        except Exception as e:  # noqa: BLE001 - a canonical form that fails is a finding
            out[name] = f"<canon failed: {type(e).__name__}: {e}>"
    out["<random>"] = repr(sys.modules["random"].random()) if "random" in sys.modules else ""
    if "numpy.random" in sys.modules:
        out["<numpy.random>"] = repr(sys.modules["numpy.random"].random_sample())
    return out
