"""The host agent: a small HTTP daemon on every host.

It launches and stops the user's server, reports status, exit codes and logs, moves home
files to and from the checkpoint store, and tells the hub when its host is about to be
reclaimed. In local mode it also plays the cloud: at a notice's deadline it kills every
process it started and wipes the host's disk, as a terminated instance loses its own.

Every request carries the host's secret (``Authorization: token ...``); it is compared in
constant time, and a request without it changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import math
import os
import shutil
import signal
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..checkpoint import CheckpointError, restore_tree, snapshot_tree, store_from_config
from ..checkpoint.home import check_table
from ..checkpoint.manifest import check_checkpoint_id
from .logsetup import setup_logging
from .standby import Standby
from .users import PREFIX, UserError, ensure_user, give_tree

log = logging.getLogger("migrating.agent")

#: what a launched process inherits from the host (the hub sends the rest)
HOST_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH", "CONDA_PREFIX")

#: file tables the agent keeps per home folder (its last snapshots and restores, by
#: checkpoint id), so the hub sends only a parent's id; an id it lacks means a full snapshot
TABLES_PER_ROOT = 3
#: seconds a standby process gets to finish its imports and take a start over
STANDBY_TIMEOUT = 30.0


class RequestError(Exception):
    """The caller's mistake: answered with `status` and a JSON message, never a 500."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(RequestError):
    status = 404


class Conflict(RequestError):
    status = 409


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error body is JSON ``{"message": ...}``; typed errors map to their status."""
    try:
        return await handler(request)
    except RequestError as e:
        return error_response(e.status, str(e))
    except CheckpointError as e:  # a checkpoint that cannot be used: nothing was changed
        return error_response(422, str(e))
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        return error_response(e.status, e.text or e.reason)
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"internal agent error: {type(e).__name__}: {e}")


def query_number(request: web.Request, name: str, default: float, kind: type = float) -> Any:
    """A finite, non-negative number from the query string, or a 400 that names it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise RequestError(f"{name} must be a {kind.__name__}, not {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RequestError(f"{name} must be a finite number >= 0, not {raw!r}")
    return value


def optional_id(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return check_checkpoint_id(value)
    except CheckpointError as e:
        raise RequestError(f"{name}: {e}") from None


def string_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"{name} must be a list of strings")
    return value


def given_table(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A whole file table sent by a hub older than table ids ("previous", "current")."""
    table = body.get(name)
    if table is None:
        return None
    if not isinstance(table, dict) or not all(isinstance(e, dict) for e in table.values()):
        raise RequestError(f"{name} must be an object of path -> entry")
    try:
        check_table(table)
    except CheckpointError as e:
        raise RequestError(f"{name}: {e}") from None
    return table


def home_request(body: dict[str, Any]) -> tuple[Path, Any]:
    """The absolute home folder and the opened store of a /home request."""
    root = body.get("root")
    if (
        not isinstance(root, str)
        or not os.path.isabs(root)
        or not isinstance(body.get("store"), dict)
    ):
        raise RequestError("root (an absolute path) and store (an object) are required")
    try:
        store = store_from_config(body["store"])
    except (CheckpointError, TypeError) as e:  # TypeError: settings the store does not take
        raise RequestError(f"store: {e}") from None
    return Path(os.path.normpath(root)), store


@dataclass
class ManagedProcess:
    name: str
    proc: asyncio.subprocess.Process
    cmd: list[str]
    log_path: Path
    started: float = field(default_factory=time.time)

    def status(self) -> dict[str, Any]:
        code = self.proc.returncode
        return {
            "name": self.name,
            "pid": self.proc.pid,
            "running": code is None,
            "exit_code": code,
            "started": self.started,
        }


def descendants(pid: int) -> list[int]:
    """Every process `pid` started, and theirs (from /proc; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for name in entries:
        try:  # unbuffered bytes: half the cost of read_text, and it runs in a move's hold
            with open(f"/proc/{name}/stat", "rb", buffering=0) as f:
                stat = f.read(4096)
        except OSError:
            continue
        # the command in parentheses may hold spaces: the fields follow the last ')'
        ppid = int(stat.rpartition(b")")[2].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_group(pid: int, sig: int = signal.SIGKILL, started: list[int] | None = None) -> None:
    """Signal a process group and, with SIGKILL, the groups of everything it started
    (`started`: as listed before a gentler signal let it exit): jupyter_server starts each
    kernel in a session of its own, and not every kernel exits when its server dies
    (IRkernel does not)."""
    groups = {pid}
    if sig == signal.SIGKILL:
        for child in {*descendants(pid), *(started or [])}:
            try:
                groups.add(os.getpgid(child))
            except ProcessLookupError:
                pass
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; anything else is the caller's error (400), not ours."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise RequestError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def check_files(root: Path, files: Any) -> list[tuple[Path, str]]:
    """Where each of ``{relative_path: text}`` goes under ``root``.

    Paths must stay inside ``root``: absolute paths and '..' are the caller's error (400).
    """
    if files is None:
        return []
    if not isinstance(files, dict):
        raise RequestError("files must be an object of relative path -> text")
    checked = []
    for rel, text in files.items():
        parts = Path(rel).parts if isinstance(rel, str) else ()
        if not parts or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise RequestError(f"files: {rel!r} is not a relative path inside the disk")
        if not isinstance(text, str):
            raise RequestError(f"files: content of {rel!r} must be a string")
        checked.append((root.joinpath(*parts), text))
    return checked


def write_files(checked: list[tuple[Path, str]]) -> None:
    """Write checked files (0600): e.g. a kernel's connection file, which holds its key."""
    for path, text in checked:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)  # O_CREAT keeps the mode of a file that existed


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class Agent:
    def __init__(
        self,
        host_id: str,
        address: str,
        token: str,
        disk: Path,
        registry_file: Path | None = None,
        notify_url: str = "",
        token_file: Path | None = None,
        run_as_users: bool = False,
        user_prefix: str = PREFIX,
    ):
        self.host_id = host_id
        #: run each process as the unix user of the hub user it names (agent/users.py),
        #: never as root; off: processes run as the agent does (the local provider's)
        self.run_as_users = run_as_users
        self.user_prefix = user_prefix
        self._users_lock = asyncio.Lock()
        self.address = address
        self.token = token
        self.disk = disk
        self.registry_file = registry_file
        self.token_file = token_file
        self.notify_url = notify_url
        self.processes: dict[str, ManagedProcess] = {}
        #: a server process started ahead (a spare host's): the next start becomes it
        self.standby: Standby | None = None
        self.notice: dict[str, Any] | None = None
        #: an EC2 rebalance recommendation seen in instance metadata (agent/register.py)
        self.rebalance: dict[str, Any] | None = None
        self.terminated = asyncio.Event()
        self._reclaim_task: asyncio.Task | None = None
        # home folder -> {checkpoint id: file table}, newest last (see TABLES_PER_ROOT)
        self.tables: dict[Path, OrderedDict[str, dict[str, Any]]] = {}

    # -- auth -------------------------------------------------------------

    @web.middleware
    async def auth(self, request: web.Request, handler):
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if not given or scheme.lower() not in {"token", "bearer"}:
            raise web.HTTPUnauthorized(
                text='{"message": "agent token required"}', content_type="application/json"
            )
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise web.HTTPForbidden(
                text='{"message": "wrong agent token"}', content_type="application/json"
            )
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors, self.auth], client_max_size=64 * 1024**2)
        app.add_routes(
            [
                web.get("/status", self.get_status),
                web.get("/free-port", self.get_free_port),
                web.get("/notice", self.get_notice),
                web.post("/reclaim", self.post_reclaim),
                web.post("/shutdown", self.post_shutdown),
                web.get("/processes/{name}", self.get_process),
                web.post("/processes/{name}", self.start_process),
                web.delete("/processes/{name}", self.stop_process),
                web.get("/processes/{name}/log", self.get_log),
                web.post("/standby", self.start_standby),
                web.post("/home/snapshot", self.home_snapshot),
                web.post("/home/restore", self.home_restore),
            ]
        )
        return app

    # -- status and notices -------------------------------------------------

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "host_id": self.host_id,
                "address": self.address,
                "disk": str(self.disk),
                "notice": self.notice,
                "rebalance": self.rebalance,
                "processes": {n: p.status() for n, p in self.processes.items()},
                "standby": (
                    {"state": self.standby.state(), "pid": self.standby.proc.pid}
                    if self.standby
                    else None
                ),
            }
        )

    async def get_free_port(self, request: web.Request) -> web.Response:
        return web.json_response({"port": free_port(self.address)})

    async def get_notice(self, request: web.Request) -> web.Response:
        # shaped like EC2's spot/instance-action: 404 until the host is marked
        if self.notice is None:
            raise NotFound("no notice")
        return web.json_response(self.notice)

    async def post_reclaim(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            seconds = float(body.get("notice_seconds", 120))
        except (TypeError, ValueError):
            raise RequestError("notice_seconds must be a number") from None
        if not math.isfinite(seconds):
            raise RequestError("notice_seconds must be a finite number")
        if seconds < 0:
            raise RequestError("notice_seconds must not be negative")
        deadline = time.time() + seconds
        if self.notice and self.notice["deadline"] <= deadline:
            return web.json_response(self.notice)  # an earlier notice stands
        self.take_notice(deadline, terminate=True)
        return web.json_response(self.notice, status=202)

    def take_notice(self, deadline: float, *, terminate: bool) -> None:
        """The host will be reclaimed at `deadline`: say so in /notice and /status, push it
        to the hub; with `terminate` (local hosts: the agent plays the cloud) end the host
        at the deadline. On EC2 the cloud ends it (the notice comes from metadata)."""
        if self.notice and self.notice["deadline"] <= deadline:
            return
        self.notice = {
            "action": "terminate",
            "time": datetime.fromtimestamp(deadline, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "deadline": deadline,
            "host_id": self.host_id,
        }
        log.warning("host %s will be reclaimed in %.1f s", self.host_id, deadline - time.time())
        if terminate:
            if self._reclaim_task:
                self._reclaim_task.cancel()
            self._reclaim_task = asyncio.create_task(self._terminate_at(deadline))
        asyncio.create_task(self._notify_hub())

    async def post_shutdown(self, request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.create_task(self.terminate()))
        return web.json_response({"host_id": self.host_id, "terminating": True}, status=202)

    async def _terminate_at(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))
        log.warning("host %s reclaimed: killing processes and wiping its disk", self.host_id)
        await self.terminate()

    async def terminate(self) -> None:
        """What a terminated instance goes through: processes killed, local disk gone."""
        for proc in self.processes.values():
            kill_group(proc.proc.pid)
        if self.standby is not None:
            self.standby.kill()
        shutil.rmtree(self.disk, ignore_errors=True)
        if self.registry_file:
            # the record becomes a tombstone: the host is gone (the provider no longer finds
            # it), but its address stays out of use until the provider releases it
            try:
                os.replace(self.registry_file, self.registry_file.with_suffix(".gone"))
            except FileNotFoundError:
                pass
            if self.token_file:  # the provider's copy of the secret goes with its record
                self.token_file.unlink(missing_ok=True)
        self.terminated.set()

    async def _notify_hub(self) -> None:
        """Push the notice to the hub; the hub also polls, so failures only cost latency."""
        if self.notice is not None:
            await self.push({"host_id": self.host_id, "deadline": self.notice["deadline"]})

    async def push(self, body: dict[str, Any]) -> None:
        """POST `body` (a notice, a rebalance recommendation) to the hub's notices URL with
        the host's secret; 3 tries, 5 s each. The hub also polls this agent's status, so a
        push that fails only costs latency."""
        if not self.notify_url:
            return
        headers = {"Authorization": f"token {self.token}"}
        for attempt in range(3):
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.post(
                        self.notify_url,
                        json=body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(5),
                    ) as resp:
                        if resp.status < 400:
                            return
                        log.warning("hub refused notice: %s %s", resp.status, await resp.text())
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                log.warning("could not notify hub (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(1)

    # -- processes ----------------------------------------------------------

    def _process(self, request: web.Request) -> ManagedProcess:
        name = request.match_info["name"]
        if name not in self.processes:
            raise NotFound(f"no process {name}")
        return self.processes[name]

    async def get_process(self, request: web.Request) -> web.Response:
        return web.json_response(self._process(request).status())

    async def start_process(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await json_body(request)
        cmd = body.get("cmd")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise RequestError("cmd must be a non-empty list of strings")
        given_env = body.get("env") or {}
        if not isinstance(given_env, dict) or any(
            isinstance(v, (dict, list)) for v in given_env.values()
        ):
            raise RequestError("env must be an object of name -> string")
        cwd = body.get("cwd") or str(self.disk)
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise RequestError("cwd must be an absolute path")
        # checked before anything else happens: a bad path is refused with 400
        files = check_files(self.disk, body.get("files"))
        owner = self._owner_of(body, cwd)
        if self.notice is not None:
            raise Conflict("this host is being reclaimed")
        old = self.processes.get(name)
        if old and old.proc.returncode is None:
            raise Conflict(f"process {name} is already running")
        user = await self._user(owner, cwd) if owner else None
        write_files(files)  # before the start: a kernel reads its connection file at once
        env = {k: os.environ[k] for k in HOST_ENV_KEYS if k in os.environ}
        env.update({str(k): str(v) for k, v in given_env.items()})
        Path(cwd).mkdir(parents=True, exist_ok=True)
        as_user: dict[str, Any] = {}
        if user is not None:
            env.setdefault("USER", user.pw_name)
            env.setdefault("LOGNAME", user.pw_name)
            env.setdefault("HOME", cwd)
            await asyncio.to_thread(give_tree, Path(cwd), user.pw_uid, user.pw_gid)
            for path, _ in files:
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
            as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        log_dir = self.disk / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        proc, how = None, ""
        if self.standby is not None:
            standby, self.standby = self.standby, None  # one start takes it, used or not
            spec = {"cmd": cmd, "env": env, "cwd": cwd, "log": str(log_path)}
            if user is not None:
                spec.update(uid=user.pw_uid, gid=user.pw_gid)
            proc = await standby.become(spec, STANDBY_TIMEOUT)
            how = " (the standby process)" if proc else ""
        if proc is None:
            with open(log_path, "ab") as out:
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *cmd,
                        env=env,
                        cwd=cwd,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=asyncio.subprocess.STDOUT,
                        start_new_session=True,  # its own group: a kill reaches its kernels
                        **as_user,
                    )
                except OSError as e:
                    raise RequestError(f"cannot start {cmd[0]}: {e}") from None
        self.processes[name] = ManagedProcess(name, proc, cmd, log_path)
        who = f" as {user.pw_name} (uid {user.pw_uid})" if user else ""
        log.info("started %s (pid %d)%s%s: %s", name, proc.pid, who, how, " ".join(cmd))
        return web.json_response(self.processes[name].status(), status=201)

    async def start_standby(self, request: web.Request) -> web.Response:
        """Start a server process ahead (agent/standby.py): Python with `modules` imported,
        which the next process started here becomes. One at a time; a second call while one
        waits is answered with its state."""
        body = await json_body(request)
        modules = string_list(body, "modules")
        if self.notice is not None:
            raise Conflict("this host is being reclaimed")
        if self.standby is None or self.standby.state() == "gone":
            env = {k: os.environ[k] for k in HOST_ENV_KEYS if k in os.environ}
            self.standby = await Standby.start(modules, env, self.disk / "logs" / "standby.log")
            log.info("standby process started (pid %d): %s", self.standby.proc.pid, modules)
        return web.json_response({"standby": self.standby.state()}, status=201)

    def _owner_of(self, body: dict[str, Any], home: str) -> str:
        """The hub user whose unix user runs a process or owns a restored home (`user`),
        when this agent runs processes as users; '' when it does not."""
        owner = body.get("user")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise RequestError("user must be a non-empty string")
        if not self.run_as_users:
            return ""
        if owner is None:
            raise RequestError("this agent runs processes as users: say whose (user)")
        home_path = Path(os.path.normpath(home))
        if home_path == self.disk or home_path in self.disk.parents:
            # its whole tree becomes the user's: never the host's disk or above it
            raise RequestError(f"{home} cannot be a user's home: it holds the host's disk")
        return owner

    async def _user(self, owner: str, home: str) -> Any:
        """The unix user of hub user `owner` (made if missing; one useradd at a time)."""
        async with self._users_lock:
            try:
                return await asyncio.to_thread(ensure_user, owner, home, self.user_prefix)
            except UserError as e:
                raise RequestError(str(e)) from None

    async def stop_process(self, request: web.Request) -> web.Response:
        managed = self._process(request)
        grace = query_number(request, "grace", 5.0)
        if managed.proc.returncode is None:
            started = None
            if grace > 0:
                started = descendants(managed.proc.pid)  # once it exits, they are no longer its
                kill_group(managed.proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(managed.proc.wait(), grace)
                except asyncio.TimeoutError:
                    pass
            # no grace (a move's freeze, in the hold): the one /proc walk is kill_group's
            kill_group(managed.proc.pid, signal.SIGKILL, started)
            await managed.proc.wait()
        return web.json_response(managed.status())

    async def get_log(self, request: web.Request) -> web.Response:
        managed = self._process(request)
        tail = query_number(request, "tail", 200, int)
        try:
            lines = (
                managed.log_path.read_text(errors="replace").splitlines()[-tail:] if tail else []
            )
        except FileNotFoundError:
            lines = []
        return web.json_response({"name": managed.name, "lines": lines})

    # -- home files ----------------------------------------------------------

    def _table(self, root: Path, checkpoint_id: str | None) -> dict[str, Any] | None:
        """The file table this agent last wrote or read at root under that id, if kept."""
        if checkpoint_id is None:
            return None
        return self.tables.get(root, {}).get(checkpoint_id)

    def _keep_table(self, root: Path, checkpoint_id: str | None, files: dict[str, Any]) -> None:
        if checkpoint_id is None:
            return
        kept = self.tables.setdefault(root, OrderedDict())
        kept[checkpoint_id] = files
        kept.move_to_end(checkpoint_id)
        while len(kept) > TABLES_PER_ROOT:
            kept.popitem(last=False)

    async def home_snapshot(self, request: web.Request) -> web.Response:
        """Snapshot a home into the store. `parent_id`: the checkpoint the hub last
        committed; if this agent kept its table, unchanged files are not read again (else
        every file is). `checkpoint_id`: the id the hub will commit it as (kept by it)."""
        body = await json_body(request)
        root, store = home_request(body)
        parent_id = optional_id(body, "parent_id")
        checkpoint_id = optional_id(body, "checkpoint_id")
        exclude = string_list(body, "exclude")
        previous = self._table(root, parent_id)
        if parent_id is None:
            previous = given_table(body, "previous")
        try:
            files, stats = await asyncio.to_thread(
                lambda: snapshot_tree(root, store, previous, exclude=exclude)
            )
        except OSError as e:
            raise CheckpointError(f"cannot snapshot {root}: {e}") from None
        stats["parent"] = parent_id if previous is not None else None
        self._keep_table(root, checkpoint_id, files)
        return web.json_response({"files": files, "stats": stats})

    async def home_restore(self, request: web.Request) -> web.Response:
        """Restore a file table the hub verified. `current_id`: the checkpoint restored here
        before (a pre-copy): files it wrote that are still as written are kept.
        `checkpoint_id`: the id of `files`, kept as the parent of the next snapshot here."""
        body = await json_body(request)
        root, store = home_request(body)
        files = body.get("files")
        if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
            raise RequestError("files must be an object of path -> entry")
        current_id = optional_id(body, "current_id")
        current = self._table(root, current_id) if current_id else given_table(body, "current")
        checkpoint_id = optional_id(body, "checkpoint_id")
        owner = self._owner_of(body, str(root))
        user = await self._user(owner, str(root)) if owner else None
        try:
            await asyncio.to_thread(lambda: root.mkdir(parents=True, exist_ok=True))
            stats = await asyncio.to_thread(restore_tree, root, files, store, current)
            if user is not None:  # restored as root: the files are the user's
                await asyncio.to_thread(give_tree, root, user.pw_uid, user.pw_gid)
        except (OSError, KeyError, TypeError) as e:  # KeyError/TypeError: a malformed entry
            raise CheckpointError(f"cannot restore into {root}: {e!r}") from None
        stats["current"] = current_id if current is not None else None
        self._keep_table(root, checkpoint_id, files)
        return web.json_response({"stats": stats})


async def serve(agent: Agent, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve until terminated; HTTPS with `ssl_context` (a cloud host's agent: its own
    certificate, pinned by the hub at registration, agent/tls.py), else plain HTTP."""
    runner = web.AppRunner(agent.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, agent.address, port, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    log.info(
        "agent for host %s listening on %s://%s:%d", agent.host_id, scheme, agent.address, port
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.terminated.set)
    await agent.terminated.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="jupyterhub-migrating host agent")
    parser.add_argument("--host-id", required=True)
    parser.add_argument("--address", required=True, help="the host's address to bind")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--token-file", required=True, help="file holding the host secret")
    parser.add_argument("--disk", required=True, help="the host's own disk folder")
    parser.add_argument("--registry-file", default="", help="removed when the host goes away")
    parser.add_argument("--notify-url", default="", help="where to push reclaim notices")
    parser.add_argument(
        "--run-as-users",
        action="store_true",
        help="run each process as the unix user of the hub user it names, never as root",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    token = Path(args.token_file).read_text().strip()
    disk = Path(args.disk)
    disk.mkdir(parents=True, exist_ok=True)
    agent = Agent(
        host_id=args.host_id,
        address=args.address,
        token=token,
        disk=disk,
        registry_file=Path(args.registry_file) if args.registry_file else None,
        notify_url=args.notify_url,
        token_file=Path(args.token_file),
        run_as_users=args.run_as_users,
    )
    asyncio.run(serve(agent, args.port))


if __name__ == "__main__":
    main()
