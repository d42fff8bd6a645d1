"""A long session through moves, stops and hub restarts, checked against an oracle.

`LongSession` drives one user's server on a real hub (tests/realhub.py): a notebook session
(python3), an R notebook session (IRkernel) and a kernel with no session (`POST
/api/kernels`, as `jupyter console --existing` and nbclient start them). Between steps it
works as a user would: defines variables, mutates old ones, writes files by relative path,
changes directory inside the home, writes files through the contents API. During each move
(and the hub restart) it keeps sending cells, on an open websocket and on one that keeps
reconnecting. The oracle is what the test itself did; after every step it is compared
with what the server shows:

- every variable of every kernel, the working directory, files read by relative path in
  the kernel and every file through the contents API;
- execution counts: no number given twice, the next cell after a step numbered higher than
  every cell before it;
- every cell answered exactly once (replies matched by msg_id), and the effect of every
  cell answered "ok" present exactly once;
- every kernel back under its id, every session under its id;
- no websocket upgrade refused with 503 or 424 during a move.

A difference is accepted only where the server told the user: the user's event log (the
control API), the restore report (`GET /user/<u>/api/migrating/status`) or output the
server itself put in a kernel's stream. A named variable or file may then be gone or have
an earlier value; a kernel said to have lost its state as a whole may be back at any
earlier state. Everything else is a failure; the session goes on (the oracle takes what
the server has) so one run lists every failure, and `failures` holds them all.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernelconn import KernelConnection
from test_move import wait_moved
from test_suspend import stop_server

MISSING = "__MISSING__"
MOVES = ("reclaim", "migrate", "reclaim0")
#: words that say something was not kept (in the server's own messages)
LOSS = re.compile(
    r"\b(lost|fresh|could not|cannot|not be|older|stale|ago|failed|missing|did not|"
    r"no longer|restarted|no checkpoint)\b",
    re.I,
)

PY_CHECK = """\
import json, os
out = {"vars": {}, "files": {}}
for n in NAMES:
    v = USER.get(n, "__MISSING__")
    try:
        json.dumps(v)
        out["vars"][n] = v
    except (TypeError, ValueError):
        out["vars"][n] = "__UNJSONABLE__ " + repr(v)[:80]
try:
    home = os.path.realpath(os.path.expanduser("~"))
    cwd = os.getcwd()
    rel = os.path.relpath(cwd, home)
    out["cwd"] = "__OUTSIDE__ " + cwd if rel.startswith("..") else rel
except Exception as e:
    out["cwd"] = "__ERROR__ %s: %s" % (type(e).__name__, e)
for f in FILES:
    try:
        with open(f) as h:
            out["files"][f] = h.read()
    except Exception as e:
        out["files"][f] = "__ERROR__ %s: %s" % (type(e).__name__, e)
print("ORACLE:" + json.dumps(out))
"""

R_CHECK = """\
local({{
  out <- list(vars = list(), files = list())
  for (n in c({names})) out$vars[[n]] <- if (exists(n, envir = globalenv(), inherits = FALSE))
    get(n, envir = globalenv()) else "__MISSING__"
  out$cwd <- tryCatch({{
    wd <- normalizePath(getwd(), mustWork = TRUE)
    home <- normalizePath(path.expand("~"))
    if (wd == home) "." else if (startsWith(wd, paste0(home, "/")))
      substring(wd, nchar(home) + 2) else paste("__OUTSIDE__", wd)
  }}, error = function(e) paste("__ERROR__", conditionMessage(e)))
  for (f in c({files})) out$files[[f]] <- tryCatch(
    suppressWarnings(readChar(f, file.info(f)$size, useBytes = TRUE)),
    error = function(e) paste("__ERROR__", conditionMessage(e)))
  cat("ORACLE:", jsonlite::toJSON(out, auto_unbox = FALSE, digits = NA), "\\n", sep = "")
}})
"""


class Unavailable(Exception):
    """A part of the session cannot run on this machine (the test skips, saying why)."""


class Aborted(Exception):
    """The server did not come back from a step: the session cannot go on."""


@dataclass
class Told:
    """One thing the server told the user about what a step did not keep."""

    text: str
    kernel: str | None  # the kernel id it is about; None: the server as a whole
    names: set[str] = field(default_factory=set)
    whole: bool = False  # the kernel's state as a whole went back or started fresh
    files: bool = False  # files went back


@dataclass
class Kernel:
    label: str
    lang: str  # "python" or "r"
    kernel_id: str
    session_id: str | None
    prefix: str
    conn: KernelConnection | None = None
    bounces: bool = False  # its websocket is the one that keeps reconnecting
    vars: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list] = field(default_factory=dict)
    cwd: str = "."
    counts: dict[int, str] = field(default_factory=dict)
    during_ok: list[int] = field(default_factory=list)
    judged: set[str] = field(default_factory=set)
    reported_twice: set[str] = field(default_factory=set)
    alive: bool = True

    @property
    def during(self) -> str:
        return f"{self.prefix}_during"

    def set(self, name: str, value: Any) -> None:
        self.history.setdefault(name, [MISSING]).append(value)
        self.vars[name] = value


def hub_config(home_mode: str) -> str:
    """The hub's config for a long session: background checkpoints every 5 s (30 s by
    default), so a reclaim with no notice has a recent state to come back from, and
    snapshots run while the session works."""
    return (
        f'c.MigratingSpawner.home_mode = "{home_mode}"\n'
        "c.MigratingSpawner.precopy_interval = 5\n"
        "c.MigratingSpawner.kernel_snapshot_interval = 5\n"
    )


def plan(rng: random.Random, moves: int = 5, stops: int = 2, restarts: int = 1) -> list[str]:
    """Steps in a seeded order: every kind of move at least once, then random ones."""
    assert moves >= len(MOVES)
    steps = list(MOVES) + [rng.choice(MOVES) for _ in range(moves - len(MOVES))]
    steps += ["stop-start"] * stops + ["hub-restart"] * restarts
    rng.shuffle(steps)
    if steps[0] == "reclaim0":
        # a server reclaimed without notice before its first checkpoint loses everything,
        # by design; the session starts with something that keeps it
        later = next(i for i, s in enumerate(steps) if s != "reclaim0")
        steps[0], steps[later] = steps[later], steps[0]
    return steps


class LongSession:
    def __init__(
        self,
        hub,
        seed: int,
        user: str = "sam",
        notice: float = 15,
        log: Callable[[str], None] = print,
    ):
        self.hub = hub
        self.seed = seed
        self.rng = random.Random(seed)
        self.user = user
        self.notice = notice
        self.log = log
        self.base = f"{hub.url}/user/{user}"
        self.token = ""
        self.kernels: list[Kernel] = []
        self.retired: list[Kernel] = []  # kernels that were gone, replaced by fresh ones
        self.files: dict[str, str] = {}
        self.file_history: dict[str, list[str]] = {}
        self.failures: list[str] = []
        #: every cell the user ran, with its answer: what to read when a check fails
        self.transcript: list[str] = []
        self.accepted: list[str] = []
        self.step_name = "setup"
        self.moves = 0
        self._n = 0
        self._seen_restore: str | None = None
        self._seen_unsolicited: dict[str, int] = {}
        self._seen_outputs: set[str] = set()
        self._seen_events: set[tuple] = set()

    # -- bookkeeping ------------------------------------------------------------------

    def fail(self, what: str) -> None:
        line = f"[{self.step_name}] {what}"
        self.failures.append(line)
        self.log("  FAIL " + line)

    def next_id(self) -> int:
        self._n += 1
        return self._n

    def write(self, path: str, content: str) -> None:
        path = posixpath.normpath(path)
        self.file_history.setdefault(path, [MISSING]).append(content)
        self.files[path] = content

    async def user_api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.hub.request(method, f"/user/{self.user}/api{path}", self.token, body)

    # -- setup --------------------------------------------------------------------------

    async def setup(self) -> None:
        hub = self.hub
        await hub.spawn(self.user)
        self.token = await hub.user_token(self.user)
        status, specs = await self.user_api("GET", "/kernelspecs")
        assert status == 200, specs
        if "ir" not in specs["kernelspecs"]:
            raise Unavailable(
                "no 'ir' kernelspec in the user server (IRkernel: Debian r-cran-irkernel, "
                f"kernelspecs found: {sorted(specs['kernelspecs'])})"
            )
        self.kernels = [await self.open_kernel(label) for label in ("notebook", "no-session", "R")]
        await self.work()
        await self.check("setup", time.time())

    async def open_kernel(self, label: str) -> Kernel:
        """Start one of the session's kernels, as JupyterLab (or a console) would."""
        if label == "notebook":
            session = await self.hub.new_session(self.user, self.token, "work.ipynb")
            k = Kernel(label, "python", session["kernel"]["id"], session["id"], "nb")
        elif label == "R":
            status, session = await self.user_api(
                "POST",
                "/sessions",
                {"path": "analysis.ipynb", "type": "notebook", "kernel": {"name": "ir"}},
            )
            assert status == 201, session
            k = Kernel(label, "r", session["kernel"]["id"], session["id"], "r")
        else:
            status, bare = await self.user_api("POST", "/kernels", {"name": "python3"})
            assert status == 201, bare
            k = Kernel(label, "python", bare["id"], None, "bare", bounces=True)
        k.conn = KernelConnection(self.base, k.kernel_id, self.token, k.label)
        await k.conn.start()
        if k.lang == "python":
            await self.cell(k, f"import os\n{k.during} = []\n{k.prefix}_count = 0")
        else:
            await self.cell(k, f"{k.during} <- numeric(0)\n{k.prefix}_count <- 0")
        k.set(k.during, [])
        k.set(f"{k.prefix}_count", 0 if k.lang == "python" else [0])
        # a new notebook's kernel starts in the notebook's folder: the home
        await self._check_kernel(k, [])
        return k

    async def finish(self) -> None:
        for k in self.kernels + self.retired:
            if k.conn is not None:
                await k.conn.close()

    # -- cells ------------------------------------------------------------------------

    async def cell(self, k: Kernel, code: str, timeout: float = 60) -> tuple[str, dict] | None:
        """Run a cell the user typed; a cell that fails is a failure (and returns None)."""
        try:
            out, reply = await k.conn.run(code, timeout, tag=("work", None, self.step_name))
        except TimeoutError as e:
            self.transcript.append(f"[{self.step_name}] {k.label} no reply: {code}")
            self.fail(f"{k.label}: {e}")
            return None
        self.transcript.append(
            f"[{self.step_name}] {k.label} [{reply.get('execution_count')}] "
            f"{reply.get('status')}: {code}"
        )
        if reply.get("status") != "ok":
            self.fail(
                f"{k.label}: cell {code[:70]!r} failed: {reply.get('ename')}: {reply.get('evalue')}"
            )
            return None
        return out, reply

    async def work(self) -> None:
        """One round of what a user does between steps, in every kernel and the file browser."""
        for k in self.kernels:
            if not k.alive:
                continue
            ops = ["define", "mutate", "write", self.rng.choice(["chdir", "mutate", "write"])]
            for op in ops:
                await getattr(self, f"_op_{op}")(k)
        # a file saved from the editor, in the home or a folder a kernel works in
        folder = self.rng.choice(sorted({"."} | {k.cwd for k in self.kernels if k.alive}))
        path = posixpath.normpath(posixpath.join(folder, f"api_f{self.next_id()}.txt"))
        mine = [p for p in self.files if posixpath.basename(p).startswith("api_")]
        if mine and self.rng.random() < 0.4:
            path = self.rng.choice(sorted(mine))
        content = f"saved in the editor, round {self._n}"
        status, data = await self.user_api(
            "PUT", f"/contents/{path}", {"type": "file", "format": "text", "content": content}
        )
        if status in (200, 201):
            self.write(path, content)
        else:
            self.fail(f"contents API could not save {path}: {status} {str(data)[:200]}")

    async def _op_define(self, k: Kernel) -> None:
        name = f"{k.prefix}_v{self.next_id()}"
        if k.lang == "python":
            value = self.rng.choice(
                [self.rng.randint(0, 10**6), f"text {self._n}", [self._n, self._n + 1], {"n": 1}]
            )
            code = f"{name} = {value!r}"
        else:
            if self.rng.random() < 0.5:
                value = [self.rng.randint(0, 1000) for _ in range(3)]
                code = f"{name} <- c({', '.join(map(str, value))})"
            else:
                value = [f"text {self._n}"]
                code = f'{name} <- "{value[0]}"'
        if await self.cell(k, code):
            k.set(name, value)

    async def _op_mutate(self, k: Kernel) -> None:
        names = sorted(n for n in k.vars if n != k.during)
        name = self.rng.choice(names)
        old, step = k.vars[name], self.rng.randint(1, 9)
        if k.lang == "python":
            if isinstance(old, int):
                code, new = f"{name} += {step}", old + step
            elif isinstance(old, str):
                code, new = f"{name} += 'x'", old + "x"
            elif isinstance(old, list):
                code, new = f"{name}.append({step})", old + [step]
            else:
                code, new = f"{name}['k{step}'] = {step}", {**old, f"k{step}": step}
        elif isinstance(old[0], str):
            code, new = f'{name} <- paste0({name}, "x")', [old[0] + "x"]
        else:
            code, new = f"{name} <- c({name}, {step})", old + [step]
        if await self.cell(k, code):
            k.set(name, new)

    async def _op_write(self, k: Kernel) -> None:
        mine = [
            p
            for p in self.files
            if (posixpath.dirname(p) or ".") == k.cwd
            and posixpath.basename(p).startswith(k.prefix + "_")
        ]
        if mine and self.rng.random() < 0.4:
            base = posixpath.basename(self.rng.choice(sorted(mine)))
        else:
            base = f"{k.prefix}_f{self.next_id()}.txt"
        content = f"{k.label} wrote this in {k.cwd}, round {self._n}"
        if k.lang == "python":
            code = f"open({base!r}, 'w').write({content!r});"
        else:
            code = f'cat("{content}", file = "{base}")'
        if await self.cell(k, code):
            self.write(posixpath.join(k.cwd, base), content)

    async def _op_chdir(self, k: Kernel) -> None:
        depth = 0 if k.cwd == "." else k.cwd.count("/") + 1
        if depth and (depth >= 2 or self.rng.random() < 0.4):
            target, new = "..", posixpath.dirname(k.cwd) or "."
            code = "os.chdir('..')" if k.lang == "python" else 'setwd("..")'
        else:
            target = f"{k.prefix}_d{self.next_id()}"
            new = posixpath.normpath(posixpath.join(k.cwd, target))
            if k.lang == "python":
                code = f"os.makedirs({target!r}, exist_ok=True)\nos.chdir({target!r})"
            else:
                code = f'invisible(dir.create("{target}", showWarnings = FALSE))\nsetwd("{target}")'
        if await self.cell(k, code):
            k.cwd = new

    # -- cells during a step ----------------------------------------------------------

    async def traffic(self, stop: asyncio.Event, only_while_down: bool = False) -> None:
        """Cells every 0.3 s, kernel after kernel, until `stop`; the no-session kernel's
        websocket is closed and reopened every few cells meanwhile. `only_while_down`: only
        to kernels whose websocket is down (typed while the hub restarts, sent when back);
        a cell written into a socket at the instant the proxy dies is lost in any client."""
        sent = 0
        bounces: list[asyncio.Task] = []
        while not stop.is_set():
            alive = [k for k in self.kernels if k.alive]
            if only_while_down:
                alive = [k for k in alive if not k.conn.connected.is_set()]
                if not alive:
                    try:
                        await asyncio.wait_for(stop.wait(), 0.1)
                    except asyncio.TimeoutError:
                        pass
                    continue
            if not alive:
                return
            k = alive[sent % len(alive)]
            token = self.next_id()
            code = (
                f"{k.during}.append({token})"
                if k.lang == "python"
                else f"{k.during} <- c({k.during}, {token})"
            )
            await k.conn.send(code, tag=("during", token, self.step_name))
            sent += 1
            if sent % 5 == 0 and not only_while_down:
                # in the background: a close handshake with a dying server takes a while
                bounces.extend(asyncio.create_task(b.conn.bounce()) for b in alive if b.bounces)
            try:
                await asyncio.wait_for(stop.wait(), 0.3)
            except asyncio.TimeoutError:
                pass
        await asyncio.gather(*bounces, return_exceptions=True)

    # -- steps ------------------------------------------------------------------------

    async def step(self, index: int, kind: str) -> None:
        self.step_name = f"step {index} {kind}"
        since = time.time()
        stop = asyncio.Event()
        # a stop is the user's own doing: nobody types into a server they are stopping
        driver = None
        if kind != "stop-start":
            driver = asyncio.create_task(self.traffic(stop, kind == "hub-restart"))
        try:
            await self._do(kind)
        except (AssertionError, TimeoutError) as e:
            self.fail(f"the server did not come back: {str(e)[:1500]}")
            raise Aborted(str(e)) from e
        finally:
            stop.set()
            if driver is not None:
                await driver
        if kind in MOVES:
            self.moves += 1
        await self.check(kind, since)
        await self.work()

    async def _do(self, kind: str) -> None:
        hub, user = self.hub, self.user
        if kind in ("reclaim", "reclaim0"):
            old = (await hub.server_info(user))["host_id"]
            notice = self.notice if kind == "reclaim" else 0
            status, data = await hub.migrate_api(
                "POST", f"/hosts/{old}/reclaim", body={"notice_seconds": notice}
            )
            assert status == 202, (status, data)
            if data.get("moving") != [f"{user}/"]:
                self.fail(f"the reclaim answer names {data.get('moving')!r}, it moves {user}/")
            await wait_moved(hub, user, old, timeout=120)
        elif kind == "migrate":
            old = (await hub.server_info(user))["host_id"]
            status, data = await hub.migrate_api("POST", f"/servers/{user}//migrate")
            assert status == 202, (status, data)
            await wait_moved(hub, user, old, timeout=120)
        elif kind == "stop-start":
            await stop_server(hub, user)
            await hub.spawn(user)
        elif kind == "hub-restart":
            await hub.restart()
            deadline = time.monotonic() + 60
            while (await hub.server_info(user))["state"] != "Running":
                assert time.monotonic() < deadline, "not Running after the hub restart"
                await asyncio.sleep(0.2)
        else:
            raise ValueError(kind)

    # -- what the server told the user ------------------------------------------------

    def _classify(self, text: str, kernel: str | None) -> Told:
        if kernel is None:
            kernel = next((k.kernel_id for k in self.kernels if k.kernel_id[:8] in text), None)
        names = {
            n
            for k in self.kernels
            for n in k.vars
            if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text)
        }
        names |= {p for p in self.files if p in text or posixpath.basename(p) in text}
        loss = bool(LOSS.search(text))
        # "no checkpoint existed": nothing of the server was kept, kernels included
        everything = bool(re.search(r"no checkpoint", text, re.I))
        about_kernels = (
            everything or kernel is not None or re.search(r"kernel|variable", text, re.I)
        )
        return Told(
            text,
            kernel,
            names,
            whole=loss and bool(about_kernels) and not names,
            files=everything or (loss and bool(re.search(r"\bfiles?\b", text, re.I))),
        )

    async def told(self, since: float) -> list[Told]:
        """Everything the server said since `since` about what it did not keep."""
        told: list[Told] = []
        info = await self.hub.server_info(self.user)
        for event in info.get("events", []):
            # each event counts once: an earlier step's notice excuses nothing later
            key = (event.get("time"), event.get("message"))
            if key in self._seen_events:
                continue
            self._seen_events.add(key)
            if event.get("time", since) >= since - 1:
                told.append(self._classify(event["message"], None))
        status, report = await self.user_api("GET", "/migrating/status")
        restore = (report or {}).get("last_restore") if status == 200 else None
        seen = json.dumps(restore, sort_keys=True, default=str)
        if restore and seen != self._seen_restore:
            for kernel_id, result in (restore.get("kernels") or {}).items():
                told.extend(self._from_report(kernel_id, result))
        self._seen_restore = seen
        for k in self.kernels:
            if k.conn is None:
                continue
            start = self._seen_unsolicited.get(k.kernel_id, 0)
            for text in k.conn.unsolicited[start:]:
                told.append(self._classify(text, k.kernel_id))
            self._seen_unsolicited[k.kernel_id] = len(k.conn.unsolicited)
            # or in the output of the user's next cell (none of the test's cells prints
            # anything but the check's ORACLE line)
            for msg_id in [m for m in k.conn.outputs if m not in self._seen_outputs]:
                self._seen_outputs.add(msg_id)
                text = "".join(
                    line
                    for line in k.conn.output(msg_id).splitlines(keepends=True)
                    if not line.startswith("ORACLE:")
                )
                if text.strip():
                    told.append(self._classify(text, k.kernel_id))
        return [t for t in told if t.names or t.whole or t.files]

    def _from_report(self, kernel_id: str, result: dict) -> list[Told]:
        if not isinstance(result, dict):
            return []
        told = []
        if result.get("ok") is False:
            told.append(Told(json.dumps(result, default=str)[:300], kernel_id, whole=True))
        lost = result.get("lost") or {}
        if lost:
            told.append(Told(f"lost: {sorted(lost)}", kernel_id, names=set(lost)))
        for key, value in result.items():
            if key in ("lost", "restored", "replayed", "ok"):
                continue
            if isinstance(value, str):
                told.append(self._classify(f"{key}: {value}", kernel_id))
        return told

    # -- the check after a step --------------------------------------------------------

    async def check(self, kind: str, since: float) -> None:
        lost: list[Kernel] = []
        status, kernels = await self.user_api("GET", "/kernels")
        listed = {k["id"] for k in kernels} if status == 200 else set()
        status, sessions = await self.user_api("GET", "/sessions")
        session_ids = {s["id"]: s["kernel"]["id"] for s in sessions} if status == 200 else {}
        for k in self.kernels:
            if not k.alive:
                continue
            if k.kernel_id not in listed:
                self.fail(f"kernel {k.label} ({k.kernel_id[:8]}) is gone: kernels {listed}")
                k.alive = False
                await k.conn.close()
                lost.append(k)
            if k.session_id and session_ids.get(k.session_id) != k.kernel_id:
                self.fail(f"session of {k.label} is not back under its id: {session_ids}")
        # cells sent during the step: each answered exactly once (bounded wait)
        await asyncio.gather(
            *(k.conn.wait(self._open(k), 20) for k in self.kernels if k.alive),
        )
        told = await self.told(since)
        for t in told:
            self.log(f"  told: {t.text[:200]}")
        # files as the file browser shows them first: a kernel reading them by relative
        # path must then see the same
        await self._check_files(told)
        await asyncio.gather(*(self._check_kernel(k, told) for k in self.kernels if k.alive))
        if kind in MOVES:
            for k in self.kernels:
                if k.conn is None:
                    continue
                bad = [code for t, code in k.conn.refusals if t >= since and code in (503, 424)]
                if bad:
                    self.fail(f"{k.label}: websocket upgrade refused during the move: {bad}")
        for k in self.kernels:
            if k.conn is not None:
                k.conn.refusals.clear()
        # the user opens the notebook again (a fresh kernel), so later steps still test it
        for k in lost:
            self.retired.append(k)
            self.kernels[self.kernels.index(k)] = await self.open_kernel(k.label)

    def _open(self, k: Kernel) -> list[str]:
        return [m for m in k.conn.sent if m not in k.judged]

    def _whole(self, k: Kernel, told: list[Told]) -> bool:
        return any(t.whole and t.kernel in (None, k.kernel_id) for t in told)

    def _named(self, k: Kernel, name: str, told: list[Told]) -> bool:
        return any(name in t.names and t.kernel in (None, k.kernel_id) for t in told)

    async def _check_kernel(self, k: Kernel, told: list[Told]) -> None:
        whole = self._whole(k, told)
        # every cell of the step, answered once; counts never given twice
        reused: list[int] = []
        for msg_id in self._open(k):
            info, replies = k.conn.sent[msg_id], k.conn.replies.get(msg_id, [])
            k.judged.add(msg_id)
            tag = info["tag"] or ()
            if len(replies) > 1:
                k.reported_twice.add(msg_id)
                self.fail(
                    f"{k.label}: cell {info['code'][:50]!r} answered {len(replies)} times, "
                    f"at {k.conn.reply_clock(msg_id)}"
                )
            if not replies:
                when = "queued while disconnected" if info["queued"] else "sent on an open socket"
                if whole:
                    self.accepted.append(f"[{self.step_name}] {k.label}: unanswered, told")
                else:
                    self.fail(
                        f"{k.label}: cell {info['code'][:50]!r} ({when}, "
                        f"{time.strftime('%H:%M:%S', time.localtime(info['sent']))}) never "
                        f"answered (socket: {k.conn.describe()})"
                    )
                continue
            reply = replies[0]
            count = reply.get("execution_count")
            if isinstance(count, int):
                other = k.counts.get(count)
                if other is not None and other != msg_id and not whole:
                    reused.append(count)
                k.counts[count] = msg_id
            if tag and tag[0] == "during" and reply.get("status") == "ok":
                k.during_ok.append(tag[1])
        if reused:
            self.fail(f"{k.label}: execution counts {sorted(reused)} given to two cells each")
        # the check cell: numbered above every cell before it
        before_max = max(k.counts, default=0)
        names = sorted(k.vars)
        reads = {
            posixpath.relpath(p, k.cwd): p
            for p in self.files
            if (posixpath.dirname(p) or ".") in (k.cwd, posixpath.dirname(k.cwd) or ".")
        }
        if k.lang == "python":
            code = (
                f"exec(compile({PY_CHECK!r}, '<oracle>', 'exec'), "
                f"{{'USER': globals(), 'NAMES': {names!r}, 'FILES': {sorted(reads)!r}}})"
            )
        else:
            code = R_CHECK.format(
                names=", ".join(json.dumps(n) for n in names),
                files=", ".join(json.dumps(f) for f in sorted(reads)),
            )
        try:
            out, reply = await k.conn.run(code, 90)
        except TimeoutError as e:
            self.fail(f"{k.label}: no answer after the step: {e} ({k.conn.describe()})")
            k.alive = False  # every later cell would wait as long
            return
        k.judged.update(m for m in k.conn.sent if k.conn.answered(m))
        # the server may tell the user in the output of this, the first cell after the step
        said = "".join(line for line in out.splitlines(True) if not line.startswith("ORACLE:"))
        if said.strip():
            t = self._classify(said, k.kernel_id)
            if t.names or t.whole or t.files:
                self.log(f"  told ({k.label}): {said.strip()[:200]}")
                told = [*told, t]
                whole = self._whole(k, told)
        found = next((line for line in out.splitlines() if line.startswith("ORACLE:")), None)
        if found is None:
            self.fail(f"{k.label}: check cell gave no result: {out[:300]!r} {reply}")
            return
        seen = json.loads(found[len("ORACLE:") :])
        count = reply.get("execution_count")
        if isinstance(count, int):
            if count <= before_max and not whole:
                self.fail(
                    f"{k.label}: execution count went back: {count} after {before_max} "
                    "(nothing said so)"
                )
            if whole:
                k.counts = {c: m for c, m in k.counts.items() if c < count}
            k.counts[count] = "check"
        cwd = seen.get("cwd")
        if isinstance(cwd, list):  # R gives every value as a vector
            cwd = cwd[0] if cwd else None
        broken = not isinstance(cwd, str) or cwd.startswith("__")
        self._compare_vars(k, seen.get("vars") or {}, told, whole)
        self._compare_cwd(k, cwd, whole)
        # relative reads mean something only from where the oracle thinks the kernel is
        if cwd == k.cwd:
            for rel, content in (seen.get("files") or {}).items():
                path = reads.get(rel)
                if path is None:
                    continue
                if isinstance(content, list):
                    content = content[0] if content else ""
                expected = self.files[path]
                if content != expected:
                    self.fail(
                        f"{k.label}: reading {rel!r} by relative path in {k.cwd!r} gave "
                        f"{content!r}, expected {expected!r}"
                    )
        if not broken:
            k.cwd = cwd
        elif await self._fix_cwd(k):
            k.cwd = "."

    def _compare_vars(self, k: Kernel, seen: dict, told: list[Told], whole: bool) -> None:
        if isinstance(seen, list):  # jsonlite writes an empty named list as []
            seen = {}
        for name, expected in list(k.vars.items()):
            value = seen.get(name, MISSING)
            if k.lang == "r" and value == [MISSING]:
                value = MISSING
            if name == k.during:
                self._compare_during(k, value, told, whole)
                continue
            if value == expected:
                continue
            allowed = whole or self._named(k, name, told)
            earlier = value == MISSING or value in k.history.get(name, [])
            if allowed and earlier:
                self.accepted.append(f"[{self.step_name}] {k.label}: {name} (told)")
            else:
                said = "told, but not this value" if allowed else "nothing said"
                self.fail(f"{k.label}: {name} is {value!r}, expected {expected!r} ({said})")
            if value == MISSING:
                del k.vars[name]
            else:
                k.set(name, value)

    def _compare_during(self, k: Kernel, value: Any, told: list[Told], whole: bool) -> None:
        if value == MISSING and (whole or self._named(k, k.during, told)):
            value = []  # the kernel started fresh and the user was told: all its cells go
        elif not isinstance(value, list):
            self.fail(f"{k.label}: {k.during} is {value!r}, expected a list of cell tokens")
            value = []
        twice = sorted({t for t in value if value.count(t) > 1})
        if twice:
            self.fail(f"{k.label}: cells ran twice (tokens {twice})")
        missing = sorted(set(k.during_ok) - set(value))
        if missing:
            if whole or self._named(k, k.during, told):
                self.accepted.append(f"[{self.step_name}] {k.label}: cells {missing} (told)")
            else:
                self.fail(
                    f"{k.label}: cells answered ok whose effect is gone (tokens {missing}, "
                    "nothing said)"
                )
        k.during_ok = sorted(set(value))
        k.set(k.during, value)

    def _compare_cwd(self, k: Kernel, cwd: Any, whole: bool) -> None:
        if cwd == k.cwd:
            return
        if not isinstance(cwd, str) or cwd.startswith("__"):
            self.fail(f"{k.label}: the working directory is broken: {cwd[:200]} (was {k.cwd!r})")
        elif whole:
            self.accepted.append(f"[{self.step_name}] {k.label}: cwd {cwd!r} (told)")
        else:
            self.fail(f"{k.label}: the working directory is {cwd!r}, expected {k.cwd!r}")

    async def _fix_cwd(self, k: Kernel) -> bool:
        """A broken working directory: go home, as a user would, so the session goes on."""
        if k.lang == "python":
            code = "__import__('os').chdir(__import__('os').path.expanduser('~'))"
        else:
            code = 'setwd(path.expand("~"))'
        return await self.cell(k, code) is not None

    async def _check_files(self, told: list[Told]) -> None:
        generic = any(t.files for t in told)
        for path, expected in sorted(self.files.items()):
            status, data = await self.user_api("GET", f"/contents/{path}")
            value = data["content"] if status == 200 else MISSING
            if value == expected:
                continue
            allowed = generic or any(path in t.names for t in told)
            if allowed and value in self.file_history[path]:
                self.accepted.append(f"[{self.step_name}] file {path} (told)")
            else:
                said = "told, but not this version" if allowed else "nothing said"
                self.fail(f"file {path} is {str(value)[:80]!r}, expected {expected!r} ({said})")
            if value == MISSING:
                del self.files[path]
            else:
                self.write(path, value)

    # -- the whole session --------------------------------------------------------------

    async def run(self, steps: list[str]) -> dict[str, Any]:
        started = time.monotonic()
        self.log(f"long session: seed {self.seed}, steps {steps}")
        await self.setup()
        done = 0
        try:
            for index, kind in enumerate(steps, 1):
                t0 = time.monotonic()
                before = len(self.failures)
                try:
                    await self.step(index, kind)
                except Aborted:
                    break
                done = index
                self.log(
                    f"step {index}/{len(steps)} {kind}: {time.monotonic() - t0:.1f} s, "
                    f"{len(self.failures) - before} failure(s)"
                )
        finally:
            await self.finish()
        for k in self.kernels + self.retired:
            for msg_id, replies in (k.conn.replies if k.conn else {}).items():
                if len(replies) > 1 and msg_id not in k.reported_twice:
                    info = k.conn.sent[msg_id]
                    sent_in = (info["tag"] or ("", "", "setup or work"))[2]
                    self.fail(
                        f"{k.label}: cell {info['code'][:50]!r} (sent in {sent_in}, "
                        f"{time.strftime('%H:%M:%S', time.localtime(info['sent']))}) answered "
                        f"{len(replies)} times, at {k.conn.reply_clock(msg_id)}"
                    )
        return {
            "seed": self.seed,
            "steps": done,
            "planned": len(steps),
            "moves": self.moves,
            "failures": list(self.failures),
            "accepted": list(self.accepted),
            "transcript": list(self.transcript),
            "seconds": time.monotonic() - started,
        }
