"""A server process started ahead: Python with the server's modules imported, waiting to
become the next server the agent starts.

A spare host (hosts/pool.py) keeps one, so a move to it with a short notice does not spend
seconds of the notice on Python importing jupyter_server, JupyterLab and the hub's ORM (what
most of a start is). The agent starts it with `python -m migrating_spawner.agent.standby
MODULE...`; it imports the modules, writes `{"standby": "ready"}` on stdout, then reads one
line on stdin: the process to become, as the agent would start it ({"cmd", "env", "cwd",
"log", "uid", "gid"}). It answers on stdout with {"ok": true} and becomes it: its output
goes to the process's log, it takes the user's uid (if given), the environment and the
working folder, and runs cmd[0] as a script in itself. It answers {"ok": false, "why": ...}
and exits when it cannot be that process, and the agent starts it the usual way:

- cmd[0] is not a Python script whose interpreter is this one (a console script of this
  venv, such as `jupyterhub-singleuser`): anything else runs as itself;
- a variable read when the modules were imported differs (IMPORT_TIME_ENV: which app
  jupyterhub.singleuser builds).

One line in, one line out; the process then is the server, in the process group it was
started in (the agent's kill reaches its kernels).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import runpy
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: what a user server imports (jupyterhub-singleuser with this package's extensions): the
#: default of `HostProvider.spare_standby_modules`
SERVER_MODULES = (
    "jupyterhub.singleuser",
    "jupyter_server.serverapp",
    "jupyterlab",
    "jupyter_server_terminals",
    "jupyter_scheduler.extension",
    "migrating_spawner.singleuser.extension",
    "migrating_spawner.batch.extension",
)

#: variables modules read at import, not when the server starts: a process asked for with
#: other values than the standby imported under is not taken over
IMPORT_TIME_ENV = ("JUPYTERHUB_SINGLEUSER_APP", "JUPYTERHUB_SINGLEUSER_EXTENSION")


def script_interpreter(path: str) -> str:
    """The interpreter a script's `#!` line names ('' if it has none)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return ""
    if not first.startswith(b"#!"):
        return ""
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else ""


def same_python(interpreter: str) -> bool:
    """Whether `interpreter` is this Python in this environment: the same binary, named
    from the same folder (a venv's python links to its base Python, which other venvs'
    pythons link to as well)."""
    if not interpreter:
        return False
    real = os.path.realpath
    return real(interpreter) == real(sys.executable) and real(os.path.dirname(interpreter)) == real(
        os.path.dirname(sys.executable)
    )


def resolved(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with its command's first word found on its PATH, as exec would find it (a
    script run so gets that path as sys.argv[0])."""
    cmd = list(spec.get("cmd") or [])
    if cmd and os.sep not in cmd[0]:
        found = shutil.which(cmd[0], path=(spec.get("env") or {}).get("PATH", os.defpath))
        cmd[0] = found or cmd[0]
    elif cmd:
        cmd[0] = os.path.join(spec.get("cwd") or "", cmd[0])
    return {**spec, "cmd": cmd}


def why_not(spec: dict[str, Any], imported_env: dict[str, str | None]) -> str:
    """Why this standby cannot become the process `spec` asks for ('' if it can)."""
    cmd = spec.get("cmd") or []
    if not cmd:
        return "no command"
    if not same_python(script_interpreter(cmd[0])):
        return f"{cmd[0]} is not a Python script of {sys.executable}"
    env = spec.get("env") or {}
    for name in IMPORT_TIME_ENV:
        if env.get(name) != imported_env[name]:
            return f"{name} differs from what the modules were imported with"
    return ""


def _answer(out: Any, **body: Any) -> None:
    out.write(json.dumps(body) + "\n")
    out.flush()


def become(spec: dict[str, Any], out: Any) -> None:
    """Turn this process into the one `spec` asks for; does not return."""
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    if spec.get("gid") is not None:
        os.setgroups([])
        os.setgid(int(spec["gid"]))
    if spec.get("uid") is not None:
        os.setuid(int(spec["uid"]))
    os.chdir(spec["cwd"])
    os.environ.clear()
    os.environ.update(spec["env"])
    _answer(out, ok=True)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    cmd = spec["cmd"]
    sys.argv = list(cmd)
    # as `python SCRIPT` would have it: the script's folder first on the path
    sys.path[0] = os.path.dirname(os.path.realpath(cmd[0]))
    try:
        runpy.run_path(cmd[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
        if code is None or isinstance(code, int):
            os._exit(code or 0)
        print(code, file=sys.stderr)
        os._exit(1)
    os._exit(0)


class Standby:
    """The agent's end of one standby process: started once, taken by one start."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self._ready = asyncio.ensure_future(self._line())  # after the imports
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    @classmethod
    async def start(cls, modules: list[str], env: dict[str, str], log_path: Path) -> Standby:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                *modules,
                env=env,
                cwd=str(log_path.parent),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=out,
                start_new_session=True,  # the group the server it becomes is killed by
            )
        return cls(proc)

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise EOFError("the standby process ended")
        return json.loads(line)

    def state(self) -> str:
        if self.proc.returncode is not None:
            return "gone"
        return "ready" if self._ready.done() and not self._ready.exception() else "importing"

    async def become(
        self, spec: dict[str, Any], timeout: float
    ) -> asyncio.subprocess.Process | None:
        """Hand it the process to become: the process (now that one), or None if it could
        not (said in the agent's log): the caller starts it the usual way."""
        assert self.proc.stdin is not None
        try:
            # still importing: waiting is still sooner than a new process doing the same
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
            self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await self.proc.stdin.drain()
            answer = await asyncio.wait_for(self._line(), timeout)
        except (OSError, EOFError, ValueError, asyncio.TimeoutError) as e:
            answer = {"ok": False, "why": f"{type(e).__name__}: {e}"}
        if answer.get("ok"):
            return self.proc
        log.info("standby process not used: %s", answer.get("why"))
        self.kill()
        return None

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def main(argv: list[str] | None = None) -> None:
    modules = sys.argv[1:] if argv is None else argv
    imported_env = {name: os.environ.get(name) for name in IMPORT_TIME_ENV}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # a module this venv lacks only costs its time later
            print(f"standby: not imported {module}: {e!r}", file=sys.stderr, flush=True)
    out = sys.stdout
    _answer(out, standby="ready")
    line = sys.stdin.readline()
    if not line:
        return  # the agent let it go
    try:
        spec = json.loads(line)
        if not isinstance(spec, dict):
            raise ValueError("not an object")
    except ValueError as e:
        _answer(out, ok=False, why=f"bad request: {e}")
        return
    spec = resolved(spec)
    why = why_not(spec, imported_env)
    if why:
        _answer(out, ok=False, why=why)
        return
    try:
        become(spec, out)
    except OSError as e:  # before the answer: nothing of the user's ran yet
        _answer(out, ok=False, why=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
