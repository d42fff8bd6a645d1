"""The corpus: each scenario's variables come back equal after a move, or are reported lost.

Per scenario: run the cells, snapshot, record a canonical value of every variable (in the
kernel, tests/corpus/canon.py), shut down; in a fresh kernel restore, record again, compare.
Kernels are started ahead in the background so the corpus stays well under 90 s.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from corpus.kernels import Kernel, canonical  # noqa: E402
from corpus.scenarios import SCENARIOS  # noqa: E402

WARM = "__import__('numpy'); __import__('pandas')"  # imports only: no user-visible names


class Pool:
    """Kernels started one step ahead; every kernel started is shut down at the end."""

    def __init__(self, ahead: int = 2):
        self.exe = ThreadPoolExecutor(max_workers=1)
        self.started: list[Kernel] = []
        self.queue: list[Future] = [self.exe.submit(self._start) for _ in range(ahead)]

    def _start(self) -> Kernel:
        k = Kernel()
        k.__enter__()
        self.started.append(k)
        k.execute(WARM, silent=True, store_history=False)
        return k

    def take(self, cwd: Path) -> Kernel:
        k = self.queue.pop(0).result()
        self.queue.append(self.exe.submit(self._start))
        k.execute(f"__import__('os').chdir({str(cwd)!r})", silent=True, store_history=False)
        return k

    def close(self) -> None:
        for f in self.queue:
            f.exception()
        self.exe.shutdown()
        for k in self.started:
            k.__exit__(None, None, None)


@pytest.fixture(scope="module")
def pool():
    p = Pool()
    yield p
    p.close()


def shut(k: Kernel, pool: Pool) -> None:
    pool.started.remove(k)
    k.__exit__(None, None, None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_corpus_scenario(name, pool, tmp_path):
    sc = SCENARIOS[name]
    for fname, text in sc.get("files", {}).items():
        (tmp_path / fname).write_text(text)
    state = tmp_path / "state"
    k = pool.take(tmp_path)
    try:
        for cell in sc["cells"]:
            k.run(cell)
        snap = k.snapshot(state)
        before = canonical(k, tmp_path / "before.json")
    finally:
        shut(k, pool)
    k = pool.take(tmp_path)
    try:
        rep = k.restore(state)
        after = canonical(k, tmp_path / "after.json")
    finally:
        shut(k, pool)
    assert snap["ok"] and rep["ok"], (snap, rep)
    assert set(rep["lost"]) == set(sc.get("expect_lost", [])), rep["lost"]
    wrong = {
        n: (v, after.get(n, "<missing>"))
        for n, v in before.items()
        if n not in rep["lost"] and after.get(n) != v
    }
    assert not wrong, f"silently wrong after restore: {wrong}"
    leaked = set(after) - set(before)
    assert not leaked, f"names that were not there before: {leaked}"
