"""Side-effect guard for replaying cells after a move.

Replayed cells run against the user's migrated files. Writes are REDIRECTED to a scratch
file rather than refused: refusing would raise in the middle of the cell and leave the names
it sets after the write undefined, while a scratch copy lets the cell finish and never
touches the user's file. Modes that read existing content ("a", "r+") get a copy of it first.
SQLite databases get the same treatment: a connection opened during replay works on a scratch
copy of the database file, so replayed `CREATE`/`INSERT`/`DELETE` cannot change the migrated
one; afterwards the variable is given a new connection to the user's file (`reconnect`).
Not covered: os.open, os.remove/rename, shutil, subprocesses.
"""

from __future__ import annotations

import builtins
import io
import os
import pathlib
import shutil
import tempfile
from contextlib import contextmanager

_WRITE_CHARS = set("wax+")


def _is_write(mode: str) -> bool:
    return bool(_WRITE_CHARS & set(mode))


class ReplayGuard:
    def __init__(self, user_ns: dict):
        self.user_ns = user_ns
        self.scratch = tempfile.mkdtemp(prefix="kp-replay-")
        self.redirected: dict[str, str] = {}  # user path -> scratch path
        self.connections: dict[int, tuple] = {}

    def _scratch_for(self, path: str, mode: str) -> str:
        target = os.path.join(self.scratch, f"{len(self.redirected)}-{os.path.basename(path)}")
        if ("a" in mode or "+" in mode) and "w" not in mode and os.path.isfile(path):
            shutil.copyfile(path, target)
        self.redirected[path] = target
        return target

    def wrap_open(self, original):
        def guarded_open(file, mode="r", *args, **kwargs):
            if isinstance(file, int) or not _is_write(mode):
                return original(file, mode, *args, **kwargs)
            path = os.path.abspath(os.fspath(file))
            scratch = self._scratch_for(path, mode)
            return original(scratch, mode.replace("x", "w"), *args, **kwargs)

        return guarded_open

    def wrap_connect(self, original):
        def guarded_connect(database, *args, **kwargs):
            path = database if isinstance(database, (str, bytes, os.PathLike)) else ""
            path = os.fsdecode(path)
            if path in ("", ":memory:") or kwargs.get("uri") or path.startswith("file:"):
                return original(database, *args, **kwargs)  # in memory: nothing to clobber
            real = os.path.abspath(path)
            scratch = os.path.join(self.scratch, f"{len(self.redirected)}-db")
            for suffix in ("", "-wal"):
                if os.path.isfile(real + suffix):
                    shutil.copyfile(real + suffix, scratch + suffix)
            self.redirected[real] = scratch
            con = original(scratch, *args, **kwargs)
            self.connections[id(con)] = (con, original, real, args, kwargs)
            return con

        return guarded_connect

    def reconnect(self, value):
        """A connection made during replay, re-made on the user's database file."""
        if id(value) not in self.connections:
            return value
        con, original, real, args, kwargs = self.connections[id(value)]
        con.close()
        return original(real, *args, **kwargs)


def _patch_path(guard: ReplayGuard):
    saved = {k: getattr(pathlib.Path, k) for k in ("open", "write_text", "write_bytes")}
    guarded = guard.wrap_open(io.open)

    def p_open(self, mode="r", buffering=-1, encoding=None, errors=None, newline=None):
        if "b" not in mode:
            encoding = io.text_encoding(encoding)
        return guarded(self, mode, buffering, encoding, errors, newline)

    def write_text(self, data, encoding=None, errors=None, newline=None):
        with p_open(self, "w", encoding=encoding, errors=errors, newline=newline) as f:
            return f.write(data)

    def write_bytes(self, data):
        with p_open(self, "wb") as f:
            return f.write(memoryview(data))

    pathlib.Path.open = p_open  # type: ignore[method-assign]
    pathlib.Path.write_text = write_text  # type: ignore[method-assign]
    pathlib.Path.write_bytes = write_bytes  # type: ignore[method-assign]
    return saved


@contextmanager
def replay_guard(user_ns: dict):
    """Patch open()/io.open/Path writes and sqlite3.connect while cells are replayed."""
    import sqlite3

    guard = ReplayGuard(user_ns)
    patches = [  # (owner, attribute, original)
        (builtins, "open", builtins.open),
        (io, "open", io.open),
        (sqlite3, "connect", sqlite3.connect),
    ]
    # the user's namespace holds its own `open` (IPython's wrapper) and maybe `from sqlite3
    # import connect`: replace the names that refer to the patched functions too
    for name, value in list(user_ns.items()):
        if value is sqlite3.connect or (name == "open" and callable(value)):
            patches.append((user_ns, name, value))
    for owner, attr, original in patches:
        wrap = guard.wrap_connect if "connect" in getattr(original, "__name__", "") else None
        new = (wrap or guard.wrap_open)(original)
        if isinstance(owner, dict):
            owner[attr] = new
        else:
            setattr(owner, attr, new)
    saved_path = _patch_path(guard)
    try:
        yield guard
    finally:
        for owner, attr, original in patches:
            if isinstance(owner, dict):
                owner[attr] = original
            else:
                setattr(owner, attr, original)
        for k, v in saved_path.items():
            setattr(pathlib.Path, k, v)
        shutil.rmtree(guard.scratch, ignore_errors=True)
