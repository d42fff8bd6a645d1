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
import signal
import sys
from datetime import datetime, timezone
from typing import Any

from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from .core import PORT_NAMES as _PORT_NAMES
from .core import MovableKernel, python_executable
from .settings import KernelHostSettings


class MigratingProvisioner(KernelHostSettings, KernelProvisionerBase):  # type: ignore[misc]
    """Runs each kernel on a reclaimable host behind a stable relay; moves it on notice.

    Its settings (host provider, root_dir, first_address, agent_port, state_root, timings)
    are KernelHostSettings' traits.
    """

    kernel: MovableKernel | None = None

    def _new_kernel(self, **kw: Any) -> MovableKernel:
        return self.new_kernel(
            str(self.kernel_id),
            self.kernel_spec.language or "",
            kernel_name=getattr(self.parent, "kernel_name", "") or "",
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
            # the kernel manager's restarter polls every few seconds: count the move as
            # activity, since requests wait in the relay meanwhile and the kernel says
            # nothing, which the server's culler would otherwise take for idleness
            if hasattr(self.parent, "last_activity"):
                self.parent.last_activity = datetime.now(timezone.utc)
            return None
        proc = await self.kernel.status()
        if proc is None or proc.get("running"):
            # unreachable agent: once the watcher calls the host lost, the kernel moves
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
        self.kernel = self.restored_kernel(str(self.kernel_id), data)
        if data.get("host_id") and data.get("target"):
            await self.kernel.reattach(data["host_id"], data["target"])
