"""Users' servers as unprivileged unix users, one per hub user (agents with `run_as_users`,
as on EC2 hosts; the local provider's agents run processes as themselves by default).

A hub name becomes a unix name with a prefix (`jupyter-alice`, as The Littlest JupyterHub
names its users), so no hub name can be `root` or another system account. A name that is
not a valid unix name as it is (upper case, `@`, `.`, too long) is cleaned and gets 8 hex
digits of its SHA-256, so two hub names never share a unix user. The user is created when
missing (`useradd --system --user-group`), never has uid or gid 0, and owns its home
(every file under it, symlinks themselves, never what they point to).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

PREFIX = "jupyter-"
#: useradd's limit (and utmp's)
MAX_LENGTH = 32
VALID = re.compile(r"^[a-z_][a-z0-9_-]*$")


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


def ensure_user(hub_name: str, home: str, prefix: str = PREFIX) -> pwd.struct_passwd:
    """The unix user of `hub_name`, created (a system user with a group of its own, home
    `home`, not made by useradd) if missing. Never root: uid or gid 0 is refused."""
    name = unix_name(hub_name, prefix)
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        shell = shutil.which("bash") or "/bin/sh"  # terminals in JupyterLab use it
        done = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                home,
                "--shell",
                shell,
                "--comment",
                f"jupyterhub user {hub_name}"[:200],
                name,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode and done.returncode != 9:  # 9: made meanwhile by another call
            raise UserError(
                f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}"
            ) from None
        user = pwd.getpwnam(name)
    if user.pw_uid == 0 or user.pw_gid == 0:
        raise UserError(f"unix user {name} is uid {user.pw_uid} gid {user.pw_gid}: never root")
    return user


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
