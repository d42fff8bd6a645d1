"""What the user server process is on a given host: command, environment and folder.

Pure functions of the spawner's settings and a (host, port): a move builds the spec of the
server it starts elsewhere without touching the spawner's own host/ip/port, and tests see
exactly what a host would be asked to run.
"""

from __future__ import annotations

import dataclasses
import os

from jupyterhub.utils import fmt_ip_url

from .hosts.base import Host
from .kernelstate import HOST_ROOT


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """The spawner's side of a server spec: everything that does not depend on the host."""

    #: the command and its arguments (Spawner.cmd + get_args())
    cmd: list[str]
    #: the hub's environment for the server (Spawner.get_env() of the base class)
    env: dict[str, str]
    user: str
    server_name: str
    #: the server's URL prefix, e.g. /user/alice/
    base_url: str
    home_mode: str
    shared_home_root: str
    #: JUPYTER_CONFIG_PATH: enables the singleuser extension (kernel snapshots)
    config_path: str
    snapshot_interval: float
    proto: str = "http"
    #: Spawner.environment sets JUPYTERHUB_SERVICE_URL itself: keep it
    keep_service_url: bool = False


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """What an agent is asked to start."""

    cmd: list[str]
    env: dict[str, str]
    cwd: str


def home_folder(
    home_mode: str, shared_home_root: str, user: str, server_name: str, host: Host
) -> str:
    """The user's home on `host`: on shared storage, or on the host's own disk (synced)."""
    folder = user + (f"-{server_name}" if server_name else "")
    if home_mode == "shared":
        return os.path.join(shared_home_root, folder)
    return os.path.join(host.disk, "home", folder)


def build_server_spec(settings: ServerSettings, host: Host, port: int) -> ServerSpec:
    """The server process to start on `host`, listening on `port`."""
    s = settings
    home = home_folder(s.home_mode, s.shared_home_root, s.user, s.server_name, host)
    env = dict(settings.env)
    if not settings.keep_service_url:
        # where the server binds: the hub's env was built for the spawner's current address
        url = f"{settings.proto}://{fmt_ip_url(host.address)}:{port}{settings.base_url}"
        env["JUPYTERHUB_SERVICE_URL"] = url
    env["HOME"] = home
    env["JUPYTERHUB_MIGRATING_HOST"] = host.id
    # kernels map a working folder on this host's own disk to the next host's
    env[HOST_ROOT] = host.disk
    env["JUPYTER_CONFIG_PATH"] = settings.config_path
    env["JUPYTERHUB_MIGRATING_SNAPSHOT_INTERVAL"] = str(settings.snapshot_interval)
    return ServerSpec(cmd=list(settings.cmd), env=env, cwd=home)
