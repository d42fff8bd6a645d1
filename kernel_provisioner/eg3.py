"""MigratingProcessProxy: kernels that move, under Enterprise Gateway 3.x.

Enterprise Gateway 3 does not load jupyter_client provisioners: it launches each kernel
through the process proxy its kernelspec names, and it pins jupyter_client 6, so it runs in
an environment of its own (``pip install --no-deps`` this package there)::

    "metadata": {"process_proxy": {
        "class_name": "kernel_provisioner.eg3.MigratingProcessProxy",
        "config": {"root_dir": "/srv/kernel-hosts", "first_address": "127.0.0.60"}
    }}

``config`` takes KernelHostSettings' traits, ``relay_ip`` (where the relay binds, 127.0.0.1
by default: Enterprise Gateway's kernel manager is its only client) and Enterprise
Gateway's own ``authorized_users``/``unauthorized_users``/``port_range``.

How Enterprise Gateway drives a process proxy, and what this one does about it:

- ``launch_process`` (async) starts a ``MovableKernel`` on a host and loads the relay's
  connection info into the kernel manager, so the gateway and every websocket through it
  talk to the relay, which stays put while the kernel moves.
- ``poll``/``wait``/``send_signal``/``kill``/``terminate`` are synchronous in jupyter_client
  6. They answer from the last status the host's agent gave (a task refreshes it) and leave
  agent calls to tasks; ``poll`` says alive throughout a move, so neither the restarter nor
  the culler sees a dead kernel.
- Enterprise Gateway builds a new process proxy for every start, a restart included, and
  calls ``cleanup()`` on the old one without saying which of the two follows. So kernels
  live in a registry by kernel id: a restart adopts its kernel (same relay, so open
  websockets keep working, and same host); a kernel the gateway has forgotten, or that
  nobody adopts within ``ADOPT_WITHIN`` seconds, is shut down and its host released.
"""

from __future__ import annotations

import asyncio
import atexit
import signal
import sys
import warnings
from typing import Any

from enterprise_gateway.services.processproxies.processproxy import BaseProcessProxyABC
from jupyter_server._tz import utcnow

from migrating_spawner.agent.client import run

from .core import PORT_NAMES, MovableKernel
from .settings import KernelHostSettings

# jupyter_client 6's AsyncKernelClient.wait_for_ready calls is_alive() without await (the
# kernel_info wait that follows is what counts); the warning it prints is noise
warnings.filterwarnings("ignore", "coroutine 'AsyncKernelClient.is_alive' was never awaited")

# keys of a process proxy's config that Enterprise Gateway reads itself
_GATEWAY_KEYS = {"authorized_users", "unauthorized_users", "port_range"}
# seconds a cleaned-up kernel waits for a restart to adopt it before it is shut down
ADOPT_WITHIN = 10.0
# seconds between status reads from the kernel's host agent (what poll() answers from)
STATUS_INTERVAL = 1.0


class _Slot:
    """A kernel and the process proxy that currently owns it."""

    def __init__(self, kernel: MovableKernel) -> None:
        self.kernel = kernel
        self.owner: MigratingProcessProxy | None = None
        self.stopping: asyncio.Future | None = None  # the last owner's kill or terminate
        self.reaper: asyncio.Task | None = None

    async def adopt(self, owner: MigratingProcessProxy) -> None:
        """A restart takes the kernel over, once its old process has stopped."""
        if self.reaper is not None:
            self.reaper.cancel()
        if self.stopping is not None:
            await asyncio.gather(self.stopping, return_exceptions=True)
        self.reaper = self.stopping = None
        self.owner = owner


_SLOTS: dict[str, _Slot] = {}
_CLOSING: set[MovableKernel] = set()  # being shut down (their hosts released at exit too)


def settings_from(proxy_config: dict[str, Any], log: Any) -> tuple[KernelHostSettings, str]:
    """KernelHostSettings and the relay ip from a kernelspec's process_proxy config."""
    config = {k: v for k, v in (proxy_config or {}).items() if k not in _GATEWAY_KEYS}
    relay_ip = str(config.pop("relay_ip", "127.0.0.1"))
    known = set(KernelHostSettings.class_trait_names(config=True))
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"unknown process_proxy config {unknown} for MigratingProcessProxy; "
            f"known: {sorted(known | _GATEWAY_KEYS | {'relay_ip'})}"
        )
    return KernelHostSettings(log=log, **config), relay_ip


class MigratingProcessProxy(BaseProcessProxyABC):
    """Runs each kernel on a reclaimable host behind a stable relay; moves it on notice."""

    def __init__(self, kernel_manager: Any, proxy_config: dict[str, Any]) -> None:
        super().__init__(kernel_manager, proxy_config)
        try:
            self.settings, relay_ip = settings_from(proxy_config, self.log)
        except Exception as e:  # a bad kernelspec: the client gets a 500 saying why
            self.log_and_raise(http_status_code=500, reason=str(e))
        # the relay binds here, on the ports jupyter_client picked for the kernel manager
        kernel_manager.ip = relay_ip
        self.kernel: MovableKernel | None = None
        self._exit_code: int | None = None
        self._status_task: asyncio.Task | None = None
        self._stop_task: asyncio.Task | None = None

    # -- launch ----------------------------------------------------------------------------

    async def launch_process(self, kernel_cmd: list[str], **kwargs: Any) -> MigratingProcessProxy:
        await super().launch_process(kernel_cmd, **kwargs)  # env, KERNEL_ID, authorization
        km = self.kernel_manager
        slot = _SLOTS.get(self.kernel_id)
        if slot is None:
            kernel = self.settings.new_kernel(
                self.kernel_id,
                km.kernel_spec.language or "",
                relay_ip=km.ip,
                relay_ports={n: getattr(km, n) for n in PORT_NAMES if getattr(km, n, 0)},
                relay_key=km.session.key or None,
                kernel_name=km.kernel_name or "",
            )
            slot = _SLOTS[self.kernel_id] = _Slot(kernel)
        await slot.adopt(self)
        self.kernel = slot.kernel
        env = {str(k): str(v) for k, v in (kwargs.get("env") or {}).items()}
        try:
            info = await self.kernel.start(
                self._host_argv(kernel_cmd), env, kwargs.get("cwd") or ""
            )
        except Exception as e:
            if self.kernel.host is None:  # nothing runs: nothing to keep
                _SLOTS.pop(self.kernel_id, None)
                await self.kernel.shutdown(grace=0)
            self.log_and_raise(
                http_status_code=500,
                reason=f"kernel {self.kernel_id} could not start on a host: {e}",
            )
        self._use_relay(info)
        self.ip = self.kernel.host.address if self.kernel.host else None
        self.log.info(
            "kernel %s runs on host %s behind the relay at %s",
            self.kernel_id,
            self.kernel.host.id if self.kernel.host else "?",
            km.ip,
        )
        self._status_task = asyncio.ensure_future(self._watch_status())
        return self

    def _host_argv(self, kernel_cmd: list[str]) -> list[str]:
        """The command for the kernel's host: ``{connection_file}`` is filled in there, and
        a ``python`` jupyter_client replaced by this process's own interpreter (which need
        not have ipykernel) goes back to the kernelspec's, found on the host's PATH."""
        km = self.kernel_manager
        argv = [arg.replace(km.connection_file, "{connection_file}") for arg in kernel_cmd]
        spec_argv = list(km.kernel_spec.argv)
        if argv and spec_argv and argv[0] == sys.executable != spec_argv[0]:
            argv[0] = spec_argv[0]
        return argv

    def _use_relay(self, info: dict[str, Any]) -> None:
        """Point the kernel manager (and so every client) at the relay."""
        km = self.kernel_manager
        for name in PORT_NAMES:
            setattr(km, name, 0)  # load_connection_info keeps ports that are set
        km.load_connection_info({**info, "key": info["key"].encode()})
        # the file jupyter_client wrote named ports nobody listens on
        km.cleanup_connection_file()

    # -- process-like API (synchronous in jupyter_client 6) ----------------------------------

    def poll(self) -> int | None:
        """None while the kernel runs or moves; its exit code once it has stopped."""
        if self.kernel is None:
            return 0
        if self.kernel.moving:
            return None
        return self._exit_code

    def wait(self) -> int | None:
        # jupyter_client calls this once poll() has said the kernel stopped: never block
        return self.poll()

    def send_signal(self, signum: int) -> None:
        if self.kernel is None or signum == 0:
            return None
        if signum == signal.SIGINT:
            # the kernel is on another host: an interrupt_request, which ipykernel handles
            self.kernel.interrupt_soon()
        elif signum in (signal.SIGTERM, signal.SIGKILL):
            self._stop(signum)
        else:
            self.log.warning("kernel %s: signal %d not forwarded", self.kernel_id, signum)
        return None

    def kill(self) -> None:
        self._stop(signal.SIGKILL)

    def terminate(self) -> None:
        self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        if self.kernel is None or self._stop_task is not None:
            return
        self.kernel.stopping = True  # on purpose: no move and no recovery now
        grace = 5.0 if signum == signal.SIGTERM else 0.0
        self._stop_task = asyncio.ensure_future(self._stop_process(grace, -signum))

    async def _stop_process(self, grace: float, code: int) -> None:
        assert self.kernel is not None
        await self.kernel.stop_kernel(grace=grace)
        if self._exit_code is None:
            self._exit_code = code

    async def _watch_status(self) -> None:
        """Keep what poll() answers up to date; count a move as activity while it lasts and
        when it ends: requests wait in the relay meanwhile and the kernel says nothing, which
        the culler would otherwise take for idleness."""
        kernel = self.kernel
        assert kernel is not None
        moves = len(kernel.moves)
        while self._exit_code is None:
            host = kernel.host
            proc = await kernel.status()  # None: agent unreachable (a lost host moves)
            if proc is not None and not proc.get("running"):
                if not kernel.moving and kernel.host is host:
                    code = proc.get("exit_code")
                    self._exit_code = -1 if code is None else int(code)
                    return
            if kernel.moving or len(kernel.moves) != moves:
                moves = len(kernel.moves)
                self.kernel_manager.last_activity = utcnow()
            await asyncio.sleep(STATUS_INTERVAL)

    # -- cleanup -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """The kernel manager is done with this proxy: after a shutdown, or before a restart
        (which builds a new proxy that adopts the kernel)."""
        if self._status_task is not None:
            self._status_task.cancel()
        slot = _SLOTS.get(self.kernel_id)
        if slot is None or slot.owner is not self:
            return
        slot.owner = None
        slot.stopping = self._stop_task
        slot.reaper = asyncio.ensure_future(
            _reap(self.kernel_id, slot, self.kernel_manager.mapping_kernel_manager)
        )

    # -- persistence ---------------------------------------------------------------------------

    def get_process_info(self) -> dict[str, Any]:
        info = super().get_process_info()
        if self.kernel is not None:
            info["migrating"] = self.kernel.to_info()
        return info

    def load_process_info(self, process_info: dict[str, Any]) -> None:
        super().load_process_info(process_info)
        # a restarted gateway would need to rebind the relay from process_info["migrating"]
        # (MovableKernel.reattach); not supported yet: the session is started afresh
        self.log.warning(
            "kernel %s: MigratingProcessProxy does not take kernels over from a previous "
            "gateway process",
            self.kernel_id,
        )


async def _reap(kernel_id: str, slot: _Slot, mapping: Any) -> None:
    """Shut a kernel down unless a restart adopts it; at once if the gateway forgot it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ADOPT_WITHIN
    while slot.owner is None and loop.time() < deadline:
        if mapping is not None and kernel_id not in mapping:
            break  # removed from the kernel manager: a shutdown, not a restart
        await asyncio.sleep(0.1)
    if slot.owner is not None:
        return
    _SLOTS.pop(kernel_id, None)
    _CLOSING.add(slot.kernel)
    try:
        await slot.kernel.shutdown(grace=0)
    finally:
        _CLOSING.discard(slot.kernel)


@atexit.register
def _release_hosts_at_exit() -> None:
    """The gateway exits without running the reapers (it closes its loop first, so their
    tasks are reported as destroyed): give back the hosts still held, on a loop of our own."""
    kernels = [slot.kernel for slot in _SLOTS.values()] + list(_CLOSING)
    held = [kernel for kernel in kernels if kernel.host is not None]
    if not held:
        return

    async def release() -> None:
        results = await asyncio.gather(
            *(k.provider.release(k.host) for k in held if k.host is not None),
            return_exceptions=True,
        )
        for kernel, result in zip(held, results, strict=False):
            if isinstance(result, BaseException):
                kernel.log.error("kernel %s: host not released: %r", kernel.kernel_id, result)

    held[0].log.info("releasing the hosts of %d kernels at exit", len(held))
    run(release())  # closes the agent session of that loop too
