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
