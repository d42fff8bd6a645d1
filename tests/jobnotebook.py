"""The one builder of batch-job notebooks for tests and benchmarks/batch.py: each cell first
appends its number to a counter file, so what ran (and how often) can be read back."""

from __future__ import annotations

from pathlib import Path

import nbformat


def in_home(name: str) -> str:
    """Code for the path of `name` in the home of whoever runs it, found in the cell itself
    (a synced home's path changes with the host)."""
    return f"__import__('os').path.expanduser('~/{name}')"


def counter_notebook(bodies: list[str], counter: Path | str) -> nbformat.NotebookNode:
    """A python3 notebook of one cell per body; cell i (1-based) first appends "i" to
    `counter` (a path; a str: that file in the home of whoever runs it), then runs its
    body."""
    where = repr(str(counter)) if isinstance(counter, Path) else in_home(counter)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, body in enumerate(bodies, 1):
        code = f"open({where}, 'a').write('{i}\\n')\n{body}"
        nb.cells.append(nbformat.v4.new_code_cell(code))
    return nb


def ran(counter: Path | str) -> list[int]:
    """The cell numbers the counter file lists, in the order they started."""
    path = Path(counter)
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def six_cell_job(name: str, first_sleep: float) -> nbformat.NotebookNode:
    """The issue's 6-cell job, run in a user's server: each cell first appends its number to
    ~/<name>-counter.txt; cells 1-3 build the namespace cells 5-6 print from ("sum 6",
    "done 6"); cell 4 sleeps `first_sleep` s the first time it runs (a marker in the home
    says) and not at all when it runs again."""
    mark = in_home(f"{name}-cell4-slept")
    bodies = [
        "import os, time\na = 1",
        "b = 2",
        "c = a + b",
        f"mark = {mark}\nfirst = not os.path.exists(mark)\n"
        f"open(mark, 'a').close()\ntime.sleep({first_sleep} if first else 0)",
        "print('sum', a + b + c)",
        "print('done', c * 2)",
    ]
    return counter_notebook(bodies, f"{name}-counter.txt")
