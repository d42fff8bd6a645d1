"""Kernel namespace snapshot and restore: the code to run inside a kernel, per language.

The caller sends `snapshot_code(...)` as a silent execute_request (store_history=False) to
the running kernel, moves `state_dir`, then sends `restore_code(...)` to a fresh kernel of the
same language and reads the JSON reports the code writes:

- `state_dir/snapshot-report.json`: {"ok", "variables": {name: {"how", "bytes", "reason"?}},
  "execution_count", "seconds", "written_bytes"}; how is pickled|replay|module|function|lost.
- `state_dir/restore-report.json`: {"ok", "restored", "replayed", "lost": {name: reason},
  "warnings": {name: text}, "execution_count", "seconds"}.

"ok" says the code ran to its end; variables that could not move are listed, not an error.
"execution_count" is the number of the last cell the user ran; after a restore the next cell
gets that number + 1. A language `supported()` says no to is restarted fresh by the caller.
"""

from __future__ import annotations

import json
import os

from . import r
from .python import HOST_ROOT  # noqa: F401  (the env var a kernel's host disk is named in)

#: what a cell interrupted by a move says in its own output, wherever the kernel runs
INTERRUPTED = (
    "interrupted because this kernel's host was reclaimed; its state up to the last "
    "finished statement moved; re-run this cell"
)

_PYTHON = {"python", "python3", "ipython", "ipython3"}
_R = {"r"}
# where this package lives, for kernels whose environment does not have it installed
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PY_TEMPLATE = """\
def __kp_state_run():
    import sys
    try:
        import migrating_spawner.kernelstate.python as m
    except ImportError:
        sys.path.insert(0, {root})
        try:
            import migrating_spawner.kernelstate.python as m
        finally:
            sys.path.remove({root})
    m.{func}(get_ipython(), {state_dir}{args})
try:
    __kp_state_run()
finally:
    del __kp_state_run
"""


def _lang(language: str) -> str:
    lang = (language or "").strip().lower()
    if lang in _PYTHON:
        return "python"
    if lang in _R:
        return "r"
    return ""


def supported(language: str) -> bool:
    """Whether kernels of `language` (a kernelspec's `language`) can move with their state."""
    return bool(_lang(language))


def _python(func: str, state_dir: str, args: str = "") -> str:
    return _PY_TEMPLATE.format(
        root=json.dumps(_ROOT),
        func=func,
        state_dir=json.dumps(os.path.abspath(state_dir)),
        args=args,
    )


def precopies(language: str) -> bool:
    """Whether a kernel of `language` restored ahead (a move's pre-copy) takes a delta at
    the freeze (Python); others are restored whole at the switch."""
    return _lang(language) == "python"


def _code(action: str, language: str, state_dir: str, args: str = "") -> str:
    lang = _lang(language)
    if lang == "python":
        return _python(action, state_dir, args)
    if lang == "r":
        return getattr(r, f"{action}_code")(os.path.abspath(state_dir))
    raise ValueError(f"no kernel state support for language {language!r}")


def snapshot_code(language: str, state_dir: str) -> str:
    """Code that writes a snapshot of the kernel's namespace into `state_dir`."""
    return _code("snapshot", language, state_dir)


def restore_code(language: str, state_dir: str, ahead: bool = False) -> str:
    """Code that restores the snapshot in `state_dir` into a fresh kernel, or into one that
    holds an earlier snapshot of it (only what differs is loaded). `ahead`: the kernel is
    started ahead of a move, in a home that a later restore replaces (Python: its IPython
    history stays in memory until the restore without `ahead`)."""
    return _code("restore", language, state_dir, ", ahead=True" if ahead else "")


def lost_message(report: dict) -> str | None:
    """A user-facing paragraph naming what did not survive a move, or None."""
    if not report.get("ok", False):
        return (
            "This kernel was moved to another machine, but its variables could not be "
            f"restored ({report.get('error', 'unknown error')}). It starts fresh."
        )
    lost = dict(report.get("lost") or {})
    warnings = dict(report.get("warnings") or {})
    if not lost and not warnings:
        return None
    parts = []
    if lost:
        names = "; ".join(f"{n} ({why})" for n, why in sorted(lost.items()))
        parts.append(
            f"This kernel was moved to another machine. These variables could not be brought "
            f"along and are no longer defined: {names}. Re-run the cells that define them."
        )
    if warnings:
        notes = "; ".join(f"{n}: {w}" for n, w in sorted(warnings.items()))
        parts.append(f"Notes: {notes}.")
    return " ".join(parts)
