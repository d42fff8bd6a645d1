"""KernelHostSettings: where moving kernels run and how they move; shared by both adapters.

The jupyter_client provisioner inherits these traits (a kernelspec's
``metadata.kernel_provisioner.config`` sets them); the Enterprise Gateway 3 process proxy
builds one from ``metadata.process_proxy.config``. Either way the same names mean the same
thing, and ``new_kernel()`` gives the ``MovableKernel`` both adapters wrap.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import json
import os
from typing import Any

from traitlets import Dict, Float, Integer, Type, Unicode, default
from traitlets.config import LoggingConfigurable

from migrating_spawner.agent.client import run
from migrating_spawner.checkpoint.signed import SignedCheckpoints, secret_from_file
from migrating_spawner.checkpoint.store import CheckpointStore
from migrating_spawner.hosts.base import HostProvider
from migrating_spawner.hosts.local import LocalHostProvider
from migrating_spawner.kernelstate.transfer import KernelStateTransfer

from .core import KernelTimings, MovableKernel
from .registration import RegistrationServer

# One provider per configuration in this process: kernels of one server share its lock
# (local hosts pick addresses under it) instead of racing for the same address.
_PROVIDERS: dict[str, HostProvider] = {}
# One registration endpoint per provider in this process (`registration_port`).
_REGISTRATIONS: dict[str, RegistrationServer] = {}
# One transfer per store configuration in this process (it remembers, per kernel and
# folder, the snapshot last saved or loaded there: the next save sends only what changed).
_TRANSFERS: dict[str, KernelStateTransfer] = {}


class KernelHostSettings(LoggingConfigurable):
    """Host provider and move timings for kernels that live on reclaimable hosts."""

    host_provider_class = Type(
        LocalHostProvider,
        klass=HostProvider,
        help="The HostProvider that gives hosts to kernels (default: local loopback hosts).",
    ).tag(config=True)

    host_provider_config = Dict(
        help="""Extra traits for the host provider, e.g. {"max_hosts": 8}.

        `root_dir`, `first_address` and `agent_port` have traits of their own here, so a
        kernelspec's config can set them directly.
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
        return self._under_hosts_root("kernel-state")

    work_root = Unicode(
        help="""Folder for the kernels' working folders, one subfolder per kernel id, on
        storage every host of a kernel sees: a kernel whose gateway names no working folder
        starts there, so files it writes by relative path survive its moves (the host's own
        disk goes with the host). The files stay after the kernel shuts down. Defaults to
        `kernel-files/` under the local provider's root_dir.
        """
    ).tag(config=True)

    @default("work_root")
    def _default_work_root(self) -> str:
        return self._under_hosts_root("kernel-files")

    def _under_hosts_root(self, name: str) -> str:
        # the local provider's root is storage every local host sees
        return os.path.join(getattr(self.provider, "root_dir", "") or os.getcwd(), name)

    kernel_user = Unicode(
        "",
        help="""The hub user kernels run as on hosts whose agents run processes as users
        (EC2 hosts: as that user's unprivileged `jupyter-<name>` uid, never root). Empty:
        the kernel's `KERNEL_USERNAME` (gateway clients send it), else this process's
        `JUPYTERHUB_USER` (kernels of a user's own server).""",
    ).tag(config=True)

    state_store_class = Type(
        None,
        klass=CheckpointStore,
        allow_none=True,
        help="""A checkpoint store (e.g.
        `migrating_spawner.checkpoint.s3.S3CheckpointStore`) that carries the kernels'
        snapshots between hosts: each host keeps a kernel's snapshot folder on its own disk,
        its agent uploads it into the store and the new host's agent writes it from the
        signed manifest, so no folder both hosts reach is needed (EC2 hosts). None: the
        snapshots go to `state_root`, which every host must reach (local hosts).""",
    ).tag(config=True)

    state_store_config = Dict(
        help="""Traits of `state_store_class`, e.g. {"bucket": "my-bucket", "region":
        "us-east-1"}."""
    ).tag(config=True)

    state_secret_file = Unicode(
        "jupyterhub_migrating_kernel_secret",
        help="""File holding the secret that signs the manifests of kernel snapshots in
        `state_store_class` (made, mode 0600, if missing). Only this process (the
        gateway or the user's server) needs it: a snapshot changed by anyone else is
        refused.""",
    ).tag(config=True)

    @property
    def transfer(self) -> KernelStateTransfer | None:
        """The kernels' snapshot carrier through `state_store_class`, or None."""
        if self.state_store_class is None:
            return None
        key = json.dumps(
            [self.state_store_class.__qualname__, self.state_store_config, self.state_secret_file],
            sort_keys=True,
        )
        if key not in _TRANSFERS:
            store = self.state_store_class(log=self.log, **self.state_store_config)
            secret_file = self.state_secret_file
            _TRANSFERS[key] = KernelStateTransfer(
                SignedCheckpoints(store, lambda: secret_from_file(secret_file))
            )
        return _TRANSFERS[key]

    notice_poll_interval = Float(
        1.0,
        help="""Seconds between polls of the kernels' host agents for a reclaim notice (the
        provider's host watcher interval: one poll per host, whoever asks).""",
    ).tag(config=True)

    start_timeout = Float(
        60.0, help="Seconds a kernel on a new host may take to answer kernel_info."
    ).tag(config=True)

    cell_timeout = Float(
        30.0,
        help="""Seconds a cell that runs when a move begins may go on before it is
        interrupted (never beyond the notice's deadline minus 5 s).""",
    ).tag(config=True)

    snapshot_interval = Float(
        30.0,
        help="""Seconds between snapshots of an idle kernel that ran something since the last
        one. A host lost without notice brings its kernel back from the last snapshot
        (0: snapshots only when a notice comes).""",
    ).tag(config=True)

    registration_port = Integer(
        0,
        help="""Port of this process's own registration endpoint for its kernels' cloud
        hosts (`POST /api/hosts/register`, kernel_provisioner/registration.py): an ec2
        provider's instances call home there, not at the hub, which did not launch them.
        0: none (local hosts need none).""",
    ).tag(config=True)

    registration_ip = Unicode(
        "0.0.0.0",
        help="""Address the registration endpoint listens on (with `registration_port`):
        one the instances reach, on their private network.""",
    ).tag(config=True)

    registration_url = Unicode(
        "",
        help="""The registration endpoint's API URL as instances reach it, e.g.
        `http://10.0.1.5:8096/api/` (empty: from `registration_ip` and
        `registration_port`). It becomes the provider's `hub_api_url`.""",
    ).tag(config=True)

    def _registration_url(self) -> str:
        if self.registration_url:
            return self.registration_url
        return f"http://{self.registration_ip}:{self.registration_port}/api/"

    @property
    def provider(self) -> HostProvider:
        config = {"watch_interval": self.notice_poll_interval, **self.host_provider_config}
        for name in ("root_dir", "first_address", "agent_port"):
            value = getattr(self, name)
            if value:
                config[name] = value
        if self.registration_port:
            config["hub_api_url"] = self._registration_url()
        key = json.dumps([self.host_provider_class.__qualname__, config], sort_keys=True)
        if key not in _PROVIDERS:
            _PROVIDERS[key] = self.host_provider_class(log=self.log, **config)
        provider = _PROVIDERS[key]
        if self.registration_port and key not in _REGISTRATIONS and _loop_running():
            # served on this process's loop (kernels start from it): agents call home here
            registration = RegistrationServer(provider, self.log)
            registration.listen(self.registration_ip, self.registration_port)
            _REGISTRATIONS[key] = registration
        return provider

    def kernel_options(self) -> dict[str, Any]:
        """MovableKernel's keyword arguments that come from these settings."""
        timings = {f.name: getattr(self, f.name) for f in dataclasses.fields(KernelTimings)}
        return {
            "timings": KernelTimings(**timings),
            "user": self.kernel_user,
            "transfer": self.transfer,
            "log": self.log,
        }

    def new_kernel(self, kernel_id: str, language: str, **kw: Any) -> MovableKernel:
        """A kernel (not started yet) with its snapshot folder under ``state_root`` and its
        default working folder under ``work_root``."""
        return MovableKernel(
            self.provider,
            kernel_id,
            language,
            os.path.join(self.state_root, kernel_id),
            work_dir=os.path.join(self.work_root, kernel_id),
            **self.kernel_options(),
            **kw,
        )

    def restored_kernel(self, kernel_id: str, info: dict[str, Any]) -> MovableKernel:
        """A kernel object for another process's ``MovableKernel.to_info()``."""
        return MovableKernel.from_info(
            self.provider,
            kernel_id,
            info,
            work_dir=os.path.join(self.work_root, kernel_id),
            **self.kernel_options(),
        )


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@atexit.register
def _release_spare_hosts_at_exit() -> None:
    """This process's own spare hosts (`host_provider_config`'s `spare_hosts`) go back when
    it exits cleanly, as the hub's do at a clean stop: no other process adopts a kernel
    process's spares. Its loop has ended by now (jupyter_server and Kernel Gateway stop it
    after shutting their kernels down, Enterprise Gateway closes it), so on a loop of our
    own. A process that dies (SIGKILL) leaves them running."""
    pools = [provider.spares for provider in _PROVIDERS.values() if provider.spares.hosts()]
    if not pools:
        return
    pools[0].log.info("exiting: releasing the spare hosts (%d host providers)", len(pools))
    run(_stop_pools(pools))


async def _stop_pools(pools: list[Any]) -> None:
    await asyncio.gather(*(pool.stop(release=True) for pool in pools), return_exceptions=True)
