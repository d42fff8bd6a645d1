"""Read/write analysis of notebook cells and the replay plan (the ElasticNotebook approach).

Pure functions over cell sources: which names a cell reads from the namespace before it
writes them, which it writes, and which cells must re-run to rebuild a variable that could
not be serialised.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass
class Cell:
    index: int
    reads: set[str] = field(default_factory=set)  # names read before the cell itself sets them
    writes: set[str] = field(default_factory=set)  # names (re)bound at top level
    mutates: set[str] = field(default_factory=set)  # x[...] = , x.a = , x += , x.method()
    mentions: set[str] = field(default_factory=set)  # every name the cell touches
    parsed: bool = True


def _bound(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _stmt_writes(stmt: ast.stmt) -> set[str]:
    out: set[str] = set()
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        for a in stmt.names:
            if a.name != "*":
                out.add(a.asname or a.name.split(".")[0])
        return out
    # module-scope bindings anywhere in the statement except inside nested scopes
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            continue
        elif isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp)):
            continue
        elif isinstance(node, ast.GeneratorExp):
            continue
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= _stmt_writes(node)  # type: ignore[arg-type]
        todo.extend(ast.iter_child_nodes(node))
    return out


def _stmt_mutates(stmt: ast.stmt) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(stmt):
        base = None
        if isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(
            node.ctx, (ast.Store, ast.Del)
        ):
            base = node.value
        elif isinstance(node, ast.AugAssign):
            base = node.target
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value  # a method call may change its object: be conservative
        while isinstance(base, (ast.Subscript, ast.Attribute)):
            base = base.value
        if isinstance(base, ast.Name):
            out.add(base.id)
    return out


def analyze(index: int, source: str) -> Cell:
    """Analyse one cell; `source` is already plain Python (IPython's transform_cell)."""
    cell = Cell(index)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        cell.parsed = False
        return cell
    for stmt in tree.body:
        loads = {
            n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        cell.reads |= loads - cell.writes
        cell.mutates |= _stmt_mutates(stmt)
        cell.writes |= _stmt_writes(stmt)
        cell.mentions |= loads
    cell.mentions |= cell.writes
    return cell


@dataclass
class Plan:
    cells: list[int]  # cell indices to re-run, ascending
    needs: dict[str, list[int]]  # target -> the cells it needs
    lost: dict[str, str]  # target -> why it cannot be rebuilt


def plan(
    cells: list[Cell],
    targets: set[str],
    stored: set[str],
    stateful: set[str],
) -> Plan:
    """Cells to re-run to rebuild `targets`.

    `cells` is the history in order, `stored` the names restored from blobs (they need no
    replay while their stored value is the one the cell saw), `stateful` the targets whose
    state later cells advance (iterators, in-memory databases): those later readers re-run too.
    """
    by_index = {c.index: c for c in cells}
    order = [c.index for c in cells]

    def last_writer(name: str, before: int) -> int | None:
        for i in reversed(order):
            if i < before and name in by_index[i].writes:
                return i
        return None

    def changed_after(name: str, after: int) -> bool:
        return any(
            i > after and (name in by_index[i].writes or name in by_index[i].mutates) for i in order
        )

    end = (order[-1] + 1) if order else 1
    needs: dict[str, list[int]] = {}
    lost: dict[str, str] = {}
    for target in sorted(targets):
        writer = last_writer(target, end)
        if writer is None:
            lost[target] = "no cell in the history assigns it"
            continue
        chosen = {writer}
        if target in stateful:
            chosen |= {i for i in order if i > writer and target in by_index[i].mentions}
        todo = sorted(chosen)
        why = None
        while todo and why is None:
            i = todo.pop()
            cell = by_index[i]
            if not cell.parsed:
                why = f"cell {i} cannot be parsed"
                break
            for name in cell.reads:
                if name in stored and not changed_after(name, i):
                    continue
                w = last_writer(name, i)
                if w is None:
                    if name in stored or name in targets:
                        why = f"cell {i} needs {name!r} as it was then, which no earlier cell sets"
                        break
                    continue  # a builtin or a name set outside the cells
                if w not in chosen:
                    chosen.add(w)
                    todo.append(w)
        if why:
            lost[target] = why
        else:
            needs[target] = sorted(chosen)
    cells_out = sorted({i for c in needs.values() for i in c})
    return Plan(cells_out, needs, lost)


# -- the mutation rule: what a cell run since a snapshot may have changed ------------------

#: names through which a cell reaches the namespace as a whole: its changes cannot be named
_OPAQUE = {"exec", "eval", "globals", "locals", "vars", "__import__", "__main__", "__builtins__"}
#: IPython magics (as transform_cell writes them) that leave the namespace alone, or whose
#: argument is itself a cell to analyse (`time`, `timeit`, `capture`)
_QUIET_MAGICS = {"matplotlib", "pip", "conda", "pwd", "who", "whos", "env", "config", "lsmagic"}
_CODE_MAGICS = {"time", "timeit", "prun", "capture"}
_SHELL_CALLS = {"system", "getoutput"}  # `!cmd` and `x = !cmd`


def _base_name(node: ast.AST | None) -> str | None:
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _magic(call: ast.Call) -> tuple[str, str, list[ast.expr]] | None:
    """(kind, magic name, arguments) of `get_ipython().run_line_magic(name, ...)` and its
    kin, or None for any other call."""
    f = call.func
    if not (
        isinstance(f, ast.Attribute)
        and isinstance(f.value, ast.Call)
        and isinstance(f.value.func, ast.Name)
        and f.value.func.id == "get_ipython"
    ):
        return None
    name = ""
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        name = call.args[0].value
    return f.attr, name, list(call.args)


def touched(source: str) -> tuple[set[str], str | None]:
    """Top-level names a cell may have bound or changed, and why it cannot be said (None
    when it can). `source` is plain Python (IPython's transform_cell).

    The rule is meant to over-approximate: a name counts when a cell binds or deletes it,
    assigns to its items or attributes, augments it, calls a method on it, calls it, passes
    it to any call, subscripts it, or iterates over it or enters it (`with`). Cells that
    reach the namespace as a whole (exec, globals(), `import *`, most magics) cannot be
    analysed: the caller then snapshots every name."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(), "a cell that cannot be parsed"
    out: set[str] = set()
    for stmt in tree.body:
        out |= _stmt_writes(stmt) | _stmt_mutates(stmt)
    shells: list[ast.AST] = []  # every get_ipython name; each must be a known magic's
    accepted: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _OPAQUE:
            return out, f"it uses {node.id}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return out, "a star import"
            if any(a.name == "__main__" for a in node.names):
                return out, "it imports __main__"
        if isinstance(node, ast.Name) and node.id == "get_ipython":
            shells.append(node)  # judged at its call
            continue
        if isinstance(node, ast.Call):
            magic = _magic(node)
            if magic is not None:
                kind, name, args = magic
                accepted.add(id(node.func.value.func))  # type: ignore[attr-defined]
                if kind in _SHELL_CALLS or (kind == "run_line_magic" and name in _QUIET_MAGICS):
                    continue
                if kind in ("run_line_magic", "run_cell_magic") and name in _CODE_MAGICS:
                    texts = [a.value for a in args[1:] if isinstance(a, ast.Constant)]
                    if len(texts) != len(args) - 1 or not all(isinstance(t, str) for t in texts):
                        return out, f"the magic %{name} with a computed argument"
                    if name == "capture":  # %%capture out: binds `out`
                        out |= set(texts[0].split()[-1:]) if texts[0].split() else set()
                        texts = texts[1:]
                    elif kind == "run_cell_magic":
                        texts = texts[1:]  # the line holds options; the body is the code
                    for text in texts:
                        names, why = touched(text)
                        out |= names
                        if why:
                            return out, f"%{name}: {why}"
                    continue
                return out, f"the magic or shell call {name or kind!r}"
            called = _base_name(node.func)
            if called:
                out.add(called)
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for sub in ast.walk(arg):
                    n = _base_name(sub) if isinstance(sub, (ast.Name, ast.Attribute)) else None
                    if isinstance(sub, ast.Subscript):
                        n = _base_name(sub)
                    if n:
                        out.add(n)
        elif isinstance(node, ast.Subscript):
            n = _base_name(node)
            if n:
                out.add(n)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            for sub in ast.walk(node.iter):
                if isinstance(sub, ast.Name):
                    out.add(sub.id)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                n = _base_name(item.context_expr)
                if n:
                    out.add(n)
                if isinstance(item.context_expr, ast.Call):
                    n = _base_name(item.context_expr.func)
                    if n:
                        out.add(n)
    if any(id(n) not in accepted for n in shells):
        return out, "it uses get_ipython()"
    return out, None
