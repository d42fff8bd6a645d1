"""MigratingProvisioner: a jupyter_client (>= 7) kernel provisioner whose kernels move.

For jupyter_server 2 and Kernel Gateway 3 (entry point ``migrating-provisioner`` in the group
``jupyter_client.kernel_provisioners``). Select it in a kernelspec::

    "metadata": {"kernel_provisioner": {
        "provisioner_name": "migrating-provisioner",
        "config": {"root_dir": "/srv/hosts", "first_address": "127.0.0.40", "agent_port": 8950}
    }}

The kernel manager, and every websocket through it, talks to the kernel's relay, which
binds on this machine (the kernel manager's ``ip``, 127.0.0.1 by default). The kernel itself
runs on a host under the host's agent, so jupyter_client's "Can only launch a kernel on a
local interface" check (in LocalProvisioner.pre_launch) does not apply: this provisioner
derives from KernelProvisionerBase and never launches a process itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, Float, Integer, Type, Unicode, default

from migrating_spawner.hosts.base import HostProvider
from migrating_spawner.hosts.local import LocalHostProvider

from .core import PORT_NAMES as _PORT_NAMES
from .core import MovableKernel, python_executable

# One provider per configuration in this process: kernels of one server share its lock
# (local hosts pick addresses under it) instead of racing for the same address.
_PROVIDERS: dict[str, HostProvider] = {}


class MigratingProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Runs each kernel on a reclaimable host behind a stable relay; moves it on notice."""

    host_provider_class = Type(
        LocalHostProvider,
        klass=HostProvider,
        help="The HostProvider that gives hosts to kernels (default: local loopback hosts).",
    ).tag(config=True)

    host_provider_config = Dict(
        help="""Extra traits for the host provider, e.g. {"max_hosts": 8}.

        `root_dir`, `first_address` and `agent_port` have traits of their own here, so a
        kernelspec's `metadata.kernel_provisioner.config` can set them directly.
        """
    ).tag(config=True)

    root_dir = Unicode(
        "", help="LocalHostProvider.root_dir for the kernels' hosts (empty: its default)."
    ).tag(config=True)

    first_address = Unicode(
        "", help="LocalHostProvider.first_address for the kernels' hosts (empty: its default)."
    ).tag(config=True)

    agent_port = Integer(
        0, help="LocalHostProvider.agent_port for the kernels' hosts (0: its default)."
    ).tag(config=True)

    state_root = Unicode(
        help="""Folder for kernel namespace snapshots, one subfolder per kernel.

        Both the old and the new host must reach it. Defaults to `kernel-state/` under the
        local provider's root_dir.
        """
    ).tag(config=True)

    @default("state_root")
    def _default_state_root(self) -> str:
        root = getattr(self.provider, "root_dir", "") or os.getcwd()
        return os.path.join(root, "kernel-state")

    notice_poll_interval = Float(
        1.0, help="Seconds between polls of the kernel's host agent for a reclaim notice."
    ).tag(config=True)

    start_timeout = Float(
        60.0, help="Seconds a kernel on a new host may take to answer kernel_info."
    ).tag(config=True)

    cell_timeout = Float(
        30.0,
        help="""Seconds a cell that runs when a move begins may go on before it is
        interrupted (never beyond the notice's deadline minus 5 s).""",
    ).tag(config=True)

    kernel: MovableKernel | None = None

    # -- the host provider -----------------------------------------------------------------

    def _provider_config(self) -> dict[str, Any]:
        config = dict(self.host_provider_config)
        for name in ("root_dir", "first_address", "agent_port"):
            value = getattr(self, name)
            if value:
                config[name] = value
        return config

    @property
    def provider(self) -> HostProvider:
        config = self._provider_config()
        key = json.dumps([self.host_provider_class.__qualname__, config], sort_keys=True)
        if key not in _PROVIDERS:
            _PROVIDERS[key] = self.host_provider_class(log=self.log, **config)
        return _PROVIDERS[key]

    def _new_kernel(self, **kw: Any) -> MovableKernel:
        return MovableKernel(
            self.provider,
            str(self.kernel_id),
            self.kernel_spec.language or "",
            os.path.join(self.state_root, str(self.kernel_id)),
            kernel_name=getattr(self.parent, "kernel_name", "") or "",
            notice_poll_interval=self.notice_poll_interval,
            start_timeout=self.start_timeout,
            cell_timeout=self.cell_timeout,
            log=self.log,
            **kw,
        )

    # -- process-like API ------------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self.kernel is not None and self.kernel.host is not None

    async def poll(self) -> int | None:
        """None while the kernel runs or moves; its exit code once it has stopped."""
        if self.kernel is None:
            return 0
        if self.kernel.moving:
            return None
        proc = await self.kernel.status()
        if proc is None or proc.get("running"):
            # unreachable agent: the watch task restarts the kernel elsewhere
            return None
        code = proc.get("exit_code")
        return -1 if code is None else int(code)

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return code

    async def send_signal(self, signum: int) -> None:
        if self.kernel is None or signum == 0:
            return
        if signum == signal.SIGINT:
            # the kernel is on another host: no os.kill; ipykernel handles the request itself
            await self.kernel.interrupt()
        elif signum in (signal.SIGTERM, signal.SIGKILL):
            await self.kernel.stop_kernel(grace=5 if signum == signal.SIGTERM else 0)
        else:
            self.log.warning(
                "kernel %s: signal %d not forwarded to its host", self.kernel_id, signum
            )

    async def kill(self, restart: bool = False) -> None:
        if self.kernel is not None:
            self.kernel.stopping = True
            await self.kernel.stop_kernel(grace=0)

    async def terminate(self, restart: bool = False) -> None:
        if self.kernel is not None:
            self.kernel.stopping = True
            await self.kernel.stop_kernel(grace=5)

    async def shutdown_requested(self, restart: bool = False) -> None:
        # the kernel exits on purpose now: no recovery for it
        if self.kernel is not None:
            self.kernel.stopping = True

    # -- launch ----------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Build the kernel command (``{connection_file}`` is filled in on the host) and bind
        the relay, on the kernel manager's ip and any ports it was configured with."""
        extra = kwargs.pop("extra_arguments", [])
        cmd = python_executable(list(self.kernel_spec.argv) + list(extra))
        subs = {"resource_dir": self.kernel_spec.resource_dir or "", "prefix": sys.prefix}
        for name, value in subs.items():
            cmd = [arg.replace("{" + name + "}", value) for arg in cmd]
        kwargs = await super().pre_launch(cmd=cmd, **kwargs)
        if self.kernel is None:
            km = self.parent
            ports = {}
            key = None
            ip = "127.0.0.1"
            if km is not None:
                ip = km.ip or ip
                ports = {n: getattr(km, n) for n in _PORT_NAMES if getattr(km, n, 0)}
                key = km.session.key or None
            self.kernel = self._new_kernel(relay_ip=ip, relay_ports=ports, relay_key=key)
        info = await self.kernel.start_relay()
        self.connection_info = {**info, "key": info["key"].encode()}
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> dict[str, Any]:
        """Start the kernel on a host; return the RELAY's connection info, which the kernel
        manager loads and every client then uses (it stays the same across moves)."""
        assert self.kernel is not None, "pre_launch() first"
        env = {str(k): str(v) for k, v in (kwargs.get("env") or {}).items()}
        try:
            info = await self.kernel.start(cmd, env, cwd=kwargs.get("cwd") or "")
        except BaseException:
            # a failed first start leaves nothing behind; a failed restart keeps the relay
            if self.kernel.host is None:
                await self.kernel.shutdown(grace=0)
                self.kernel = None
            raise
        # bytes, as KernelManager.get_connection_info has it: the two are compared
        self.connection_info = {**info, "key": info["key"].encode()}
        return self.connection_info

    async def cleanup(self, restart: bool = False) -> None:
        if self.kernel is None:
            return
        if restart:
            # the same relay (ports, key) and host serve the restarted kernel: open
            # websockets keep working
            await self.kernel.stop_kernel(grace=0)
            return
        await self.kernel.shutdown(grace=0)
        self.kernel = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended + 2  # one agent round trip more than a local kernel

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        # a new host (agent start) plus the kernel
        return max(recommended, self.start_timeout)

    # -- persistence -----------------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        if self.kernel is not None:
            info["migrating"] = self.kernel.to_info()
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """Take over a kernel another process started: rebind its relay (same ports and
        key), find its host, and watch it."""
        await super().load_provisioner_info(provisioner_info)
        data = provisioner_info.get("migrating")
        if not data:
            return
        self.kernel = MovableKernel.from_info(
            self.provider,
            str(self.kernel_id),
            data,
            notice_poll_interval=self.notice_poll_interval,
            start_timeout=self.start_timeout,
            cell_timeout=self.cell_timeout,
            log=self.log,
        )
        if data.get("host_id") and data.get("target"):
            await self.kernel.reattach(data["host_id"], data["target"])
