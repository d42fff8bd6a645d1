"""Users' servers as unprivileged unix users, one per hub user (agents with `run_as_users`,
as on EC2 hosts; the local provider's agents run processes as themselves by default).

A hub name becomes a unix name with a prefix (`jupyter-alice`, as The Littlest JupyterHub
names its users), so no hub name can be `root` or another system account. A name that is
not a valid unix name as it is (upper case, `@`, `.`, too long) is cleaned and gets 8 hex
digits of its SHA-256, so two hub names never share a unix user. The user is created when
missing (a group of its own, then `useradd --system`), never has uid or gid 0, and owns
its home (every file under it, symlinks themselves, never what they point to).

Its uid (and its group's gid, the same number) is derived from the unix name
(`stable_id`: sha256 into `UID_BASE` .. `UID_BASE + UID_SPAN`), so one user has the same
uid on every host and a home on shared storage (EFS) is not chowned again by each new
host. Only when that number is taken on a host by another name does the next free one
after it serve there (said in the agent's log by the caller: `uid` differs).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

PREFIX = "jupyter-"
#: useradd's limit (and utmp's)
MAX_LENGTH = 32
VALID = re.compile(r"^[a-z_][a-z0-9_-]*$")
#: derived uids lie in [UID_BASE, UID_BASE + UID_SPAN): above login users' and the
#: subordinate-id ranges useradd hands out (100000 + 65536 per user), below 2**31
UID_BASE = 1_500_000_000
UID_SPAN = 500_000_000
#: how many numbers after a taken one are tried before giving up
UID_PROBES = 64


class UserError(Exception):
    """A hub user that cannot have a unix user here."""


def unix_name(hub_name: str, prefix: str = PREFIX) -> str:
    """The unix user a hub user's processes run as (the same on every host)."""
    if not hub_name:
        raise UserError("a process run as a user needs the user's name")
    clean = re.sub(r"[^a-z0-9_-]", "-", hub_name.lower())
    name = prefix + clean
    if clean != hub_name or len(name) > MAX_LENGTH or not VALID.match(name):
        digest = hashlib.sha256(hub_name.encode()).hexdigest()[:8]
        name = name[: MAX_LENGTH - len(digest) - 1].rstrip("-") + "-" + digest
    if not VALID.match(name):
        raise UserError(f"no unix name for {hub_name!r} with prefix {prefix!r}")
    return name


def stable_id(unix_user: str) -> int:
    """The uid (and gid) `unix_user` gets on every host: the same number from the name."""
    digest = hashlib.sha256(unix_user.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_SPAN


def free_id(unix_user: str) -> int:
    """`stable_id(unix_user)`, or the first number after it that is neither a uid nor a
    gid here (another name took it on this host)."""
    first = stable_id(unix_user)
    for uid in range(first, first + UID_PROBES):
        if not _taken(pwd.getpwuid, uid) and not _taken(grp.getgrgid, uid):
            return uid
    raise UserError(f"no free uid in {first}..{first + UID_PROBES - 1} for {unix_user}")


def _taken(lookup: Any, number: int) -> bool:
    try:
        lookup(number)
    except KeyError:
        return False
    return True


def ensure_user(hub_name: str, home: str, prefix: str = PREFIX) -> pwd.struct_passwd:
    """The unix user of `hub_name`, created (a system user with a group of its own of the
    same name, uid = gid = `stable_id` of its name, home `home`, not made by useradd) if
    missing. Never root: uid or gid 0 is refused."""
    name = unix_name(hub_name, prefix)
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        shell = shutil.which("bash") or "/bin/sh"  # terminals in JupyterLab use it
        try:
            gid = grp.getgrnam(name).gr_gid  # its group is left from before
            uid = gid if not _taken(pwd.getpwuid, gid) else free_id(name)
        except KeyError:
            uid = free_id(name)
            _run(["groupadd", "--system", "--gid", str(uid), name], f"groupadd {name}")
            gid = grp.getgrnam(name).gr_gid  # another call's, if it made the group first
        _run(
            [
                "useradd",
                "--system",
                "--uid",
                str(uid),
                "--gid",
                str(gid),
                "--no-user-group",
                "--no-create-home",
                # no lastlog/faillog records: at a uid this high they are huge sparse files
                "--no-log-init",
                "--home-dir",
                home,
                "--shell",
                shell,
                "--comment",
                f"jupyterhub user {hub_name}"[:200],
                name,
            ],
            f"useradd {name}",
        )
        user = pwd.getpwnam(name)
    if user.pw_uid == 0 or user.pw_gid == 0:
        raise UserError(f"unix user {name} is uid {user.pw_uid} gid {user.pw_gid}: never root")
    return user


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode and done.returncode != 9:  # 9: made meanwhile by another call
        raise UserError(f"{what} failed ({done.returncode}): {done.stderr.strip()}")


def give_tree(root: Path, uid: int, gid: int) -> int:
    """Make `root` and everything under it owned by uid:gid (symlinks themselves, not their
    targets; a folder's symlinks are not followed). Returns how many entries changed."""
    changed = 0

    def own(path: str) -> None:
        nonlocal changed
        info = os.lstat(path)
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
            changed += 1

    own(str(root))
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                own(os.path.join(folder, name))
            except FileNotFoundError:  # gone meanwhile
                pass
    return changed
