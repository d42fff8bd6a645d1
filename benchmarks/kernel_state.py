"""Kernel state snapshot/restore vs dill.dump_module/load_module, through real kernels.

For namespaces of numpy arrays plus small objects: snapshot and restore time, size on disk,
and an incremental snapshot after one small change; dill.dump_module/load_module of the same
namespace in the same run; pickle vs dill on one variable (why data goes through pickle);
and the share of the corpus (tests/corpus) each approach restores completely.
Writes the section "## Kernel state snapshot and restore" of benchmarks/results.md.

    .venv/bin/python benchmarks/kernel_state.py [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus.kernels import Kernel, canonical  # noqa: E402
from corpus.scenarios import SCENARIOS  # noqa: E402
from results import replace_section  # noqa: E402

HEADING = "## Kernel state snapshot and restore"

BUILD = """\
import numpy as np
rng = np.random.default_rng(0)
arrays = [rng.random({n} // 4) for _ in range(4)]
big = arrays[0]
meta = {{i: ('row', i, i / 7) for i in range(5000)}}
names = ['x%d' % i for i in range(1000)]
counter = 0
def describe(a):
    return a.shape, float(a[:10].sum())
"""


def client_timed(k: Kernel, code: str) -> float:
    """Wall clock at the client of one silent execute of `code`, as `k.snapshot` and
    `k.restore` are timed."""
    t = time.perf_counter()
    reply = k.execute(code, silent=True, store_history=False)
    elapsed = time.perf_counter() - t
    if reply["status"] != "ok":
        raise RuntimeError(reply)
    return elapsed


def timed(k: Kernel, code: str) -> float:
    """Run code in the kernel, silently; the kernel measures its own time."""
    wrapped = (
        "def __kp_t():\n    import time\n    t = time.perf_counter()\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "    return time.perf_counter() - t\n"
    )
    k.execute(wrapped, silent=True, store_history=False)
    reply = k.execute("", silent=True, store_history=False, expressions={"t": "__kp_t()"})
    k.execute("del __kp_t", silent=True, store_history=False)
    out = reply["user_expressions"]["t"]
    if out["status"] != "ok":
        raise RuntimeError(out)
    return float(out["data"]["text/plain"])


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: restores timed per size, ours and dill's in turn (the order flips each round): a
#: 1 GB restore spreads 0.8-2.4 s from round to round here, 3 rounds did not settle it
RESTORE_ROUNDS = 5


def bench_size(mb: int, work: Path) -> dict:
    """Ours against dill at one size. Before each timed step the page cache's dirty pages
    are written out (os.sync): a step that runs while the last one's gigabyte is still
    being flushed is slowed by it, which charged whichever ran first."""
    n = mb * 1_000_000 // 8  # float64 elements
    state, dump = work / f"state-{mb}", work / f"dump-{mb}.pkl"
    row: dict = {"size": f"{mb} MB" if mb < 1000 else f"{mb / 1000:g} GB"}
    with Kernel(cwd=work) as k:
        k.run(BUILD.format(n=n))
        os.sync()
        t = time.perf_counter()
        snap = k.snapshot(state)
        row["snapshot"] = time.perf_counter() - t
        row["snapshot_in_kernel"] = snap["seconds"]
        row["size_ours"] = du(state)
        k.run("counter += 1")
        t = time.perf_counter()
        inc = k.snapshot(state)
        row["incremental"] = time.perf_counter() - t
        row["incremental_written"] = inc["written_bytes"]
        os.sync()
        # dill timed as ours is: wall clock at the client, one execute (imports included)
        row["dump_module"] = client_timed(k, f"import dill\ndill.dump_module({str(dump)!r})")
        row["size_dill"] = du(dump)

    def ours() -> float:
        with Kernel(cwd=work) as k:
            t = time.perf_counter()
            rep = k.restore(state)
            elapsed = time.perf_counter() - t
            assert rep["ok"] and not rep["lost"], rep
            assert k.eval("describe(big)[0]") == f"({n // 4},)"
        return elapsed

    def dills() -> float:
        with Kernel(cwd=work) as k:
            return client_timed(k, f"import dill\ndill.load_module({str(dump)!r})")

    times: dict = {ours: [], dills: []}
    for i in range(RESTORE_ROUNDS):
        for step in (ours, dills) if i % 2 == 0 else (dills, ours):
            os.sync()
            times[step].append(step())
    row["restore_all"], row["load_all"] = times[ours], times[dills]
    row["restore"], row["load_module"] = median(times[ours]), median(times[dills])
    shutil.rmtree(state)
    dump.unlink()
    return row


def pickle_vs_dill(k: Kernel) -> dict:
    setup = (
        "import numpy as np, pickle, dill\n"
        "arr = np.random.default_rng(1).random(5_000_000)\n"
        "small = {i: (i, str(i)) for i in range(100_000)}"
    )
    k.execute(setup, silent=True, store_history=False)
    out = {}
    for label, obj in (("40 MB array", "arr"), ("dict of 100k tuples", "small")):
        out[label] = {
            "pickle": timed(k, f"pickle.loads(pickle.dumps({obj}, protocol=5))"),
            "pickle5-oob": timed(
                k,
                f"b = []\nm = pickle.dumps({obj}, protocol=5, buffer_callback=b.append)\n"
                "pickle.loads(m, buffers=b)",
            ),
            "dill": timed(k, f"dill.loads(dill.dumps({obj}, protocol=5))"),
        }
    return out


def corpus(work: Path) -> tuple[dict, dict]:
    """Per scenario: (ours complete?, dill.dump_module complete?) and notes."""
    result, notes = {}, {}
    for name, sc in sorted(SCENARIOS.items()):
        d = work / f"corpus-{name}"
        d.mkdir()
        for fname, text in sc.get("files", {}).items():
            (d / fname).write_text(text)
        with Kernel(cwd=d) as k:
            for cell in sc["cells"]:
                k.run(cell)
            k.snapshot(d / "state")
            dump = k.execute(
                f"import dill as __kp_dill\n__kp_dill.dump_module({str(d / 'm.pkl')!r})\n"
                "del __kp_dill",
                silent=True,
                store_history=False,
            )
            before = canonical(k, d / "before.json")
        with Kernel(cwd=d) as k:
            rep = k.restore(d / "state")
            after = canonical(k, d / "after.json")
        # the global RNG state counts where the scenario uses it: elsewhere a fresh kernel's
        # RNG differs whatever the approach
        if name != "random_state":
            for d_ in (before, after):
                d_.pop("<random>", None), d_.pop("<numpy.random>", None)
        ours = not rep["lost"] and all(after.get(n) == v for n, v in before.items())
        dill_ok = dump["status"] == "ok"
        if dill_ok:
            with Kernel(cwd=d) as k:
                load = k.execute(
                    f"import dill as __kp_dill\n__kp_dill.load_module({str(d / 'm.pkl')!r})\n"
                    "del __kp_dill",
                    silent=True,
                    store_history=False,
                )
                dill_ok = load["status"] == "ok"
                if dill_ok:
                    got = canonical(k, d / "dill.json")
                    differ = sorted(n for n, v in before.items() if got.get(n) != v)
                    dill_ok = not differ
                    if differ:
                        notes[name] = f"dill: differ {differ[:4]}"
                else:
                    notes[name] = f"load_module: {load['ename']}"
        else:
            notes[name] = f"dump_module: {dump['ename']}: {dump['evalue'][:60]}"
        if rep["lost"]:
            notes[name] = (notes.get(name, "") + f" ours lost {sorted(rep['lost'])}").strip()
        result[name] = (ours, dill_ok)
        shutil.rmtree(d)
    return result, notes


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def render(rows: list[dict], pvd: dict, corp: dict, notes: dict, elapsed: float) -> str:
    cpu = "?"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        f"Run {when} by `benchmarks/kernel_state.py` ({elapsed / 60:.1f} min); machine: nproc "
        f"{os.cpu_count()}, {cpu}, Python {platform.python_version()}. Real ipykernel kernels "
        "through jupyter_client; the namespace is 4 float64 arrays of a quarter of the size "
        "each plus 6,000 small objects and a function. Times are wall clock at the client "
        "(execute request to reply) of one execute in a fresh kernel, ours and dill's alike; "
        f"restores are the median of {RESTORE_ROUNDS}, ours and dill's in turn.",
        "",
        "| namespace | snapshot | restore | on disk | incremental snapshot (1 int changed) "
        "| dill.dump_module | dill.load_module | dill file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['snapshot']:.2f} s | {r['restore']:.2f} s "
            f"| {fmt_bytes(r['size_ours'])} | {r['incremental']:.3f} s, "
            f"{fmt_bytes(r['incremental_written'])} written | {r['dump_module']:.2f} s "
            f"| {r['load_module']:.2f} s | {fmt_bytes(r['size_dill'])} |"
        )
    lines += [
        "",
        "One variable, dumps + loads in a kernel (why data goes through pickle; out-of-band "
        "buffers are not copied, the blob writer streams them to disk):",
        "",
    ]
    lines += ["| object | pickle (protocol 5) | pickle 5, out-of-band buffers | dill |"]
    lines += ["|---|---|---|---|"]
    for label, t in pvd.items():
        lines.append(
            f"| {label} | {t['pickle'] * 1000:.0f} ms | {t['pickle5-oob'] * 1000:.1f} ms "
            f"| {t['dill'] * 1000:.0f} ms |"
        )
    n = len(corp)
    ours = sum(o for o, _ in corp.values())
    dill_n = sum(d for _, d in corp.values())
    lines += [
        "",
        f"Corpus (tests/corpus, {n} scenarios) restored completely, every variable equal "
        f"(canonical value computed in the kernel): this snapshot/restore {ours}/{n}, "
        f"dill.dump_module/load_module {dill_n}/{n}. `cannot_move` holds a socket and a "
        "variable no cell assigns: nothing can restore it completely; ours reports both by "
        "name.",
        "",
        "| scenario | ours | dill.dump_module | note |",
        "|---|---|---|---|",
    ]
    for name, (o, d) in corp.items():
        lines.append(
            f"| {name} | {'yes' if o else 'no'} | {'yes' if d else 'no'} | {notes.get(name, '')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="namespace sizes in MB")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kp-bench-"))
    try:
        rows = [bench_size(int(s), work) for s in args.sizes.split(",")]
        with Kernel(cwd=work) as k:
            pvd = pickle_vs_dill(k)
        corp, notes = corpus(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(rows, pvd, corp, notes, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        replace_section(text)


if __name__ == "__main__":
    main()
