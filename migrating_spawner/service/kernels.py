"""The kernel side of `jupyterhub-migrate` (``--gateway-url``): a gateway's kernels and hosts.

A gateway (Enterprise Gateway, Kernel Gateway, or a jupyter_server) whose kernels use the
migrating provisioner or process proxy keeps no hub: its kernels' hosts are local hosts whose
records (``<root_dir>/registry/*.json``, each naming its kernel) are the provider's. So the
kernels come from the gateway's ``/api/kernels``, their hosts from those records, and a reclaim
goes to the host's agent, as the cloud's notice would.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..agent.client import run
from ..hosts.base import Host, HostError
from ..hosts.local import LocalHostProvider
from .http import CLIError, JSONClient

#: where a kernelspec keeps the migrating settings, by the adapter that reads them
PROVISIONER = "migrating-provisioner"
PROCESS_PROXY = "MigratingProcessProxy"


def migrating_root_dirs(kernelspecs: dict[str, Any]) -> dict[str, str]:
    """{kernelspec name: its hosts' root_dir ("" if it keeps the default)} for every
    kernelspec of a gateway's ``GET /api/kernelspecs`` that runs moving kernels."""
    roots = {}
    for name, model in (kernelspecs.get("kernelspecs") or {}).items():
        metadata = ((model or {}).get("spec") or {}).get("metadata") or {}
        provisioner = metadata.get("kernel_provisioner") or {}
        proxy = metadata.get("process_proxy") or {}
        if provisioner.get("provisioner_name") == PROVISIONER:
            roots[name] = str((provisioner.get("config") or {}).get("root_dir", ""))
        elif str(proxy.get("class_name", "")).endswith(PROCESS_PROXY):
            roots[name] = str((proxy.get("config") or {}).get("root_dir", ""))
    return roots


class KernelHosts:
    """One gateway's kernels and the local hosts they run on."""

    def __init__(self, gateway_url: str, token: str, root_dirs: list[str]):
        self.gateway = JSONClient(
            gateway_url, token, "api/", what="a Jupyter gateway", flag="--gateway-url"
        )
        self.root_dirs = root_dirs

    @classmethod
    def connect(cls, gateway_url: str, token: str, root_dir: str) -> KernelHosts:
        """With `root_dir` given, its hosts; else the folder the gateway's kernelspecs name
        (only an absolute one tells where it is: a relative one is the gateway's working
        folder's business)."""
        hosts = cls(gateway_url, token, [root_dir] if root_dir else [])
        if not root_dir:
            roots = migrating_root_dirs(hosts.gateway.call("GET", "kernelspecs"))
            if not roots:
                raise CLIError(
                    f"no kernelspec of the gateway at {gateway_url} runs moving kernels "
                    f"(provisioner {PROVISIONER!r} or process proxy {PROCESS_PROXY!r})"
                )
            relative = {n: r for n, r in roots.items() if not os.path.isabs(r)}
            if relative:
                named = ", ".join(f"{n}: {r or '(default)'!r}" for n, r in sorted(relative.items()))
                raise CLIError(
                    "the gateway's kernelspecs keep their hosts in a folder relative to the "
                    f"gateway's working folder ({named}): pass --root-dir or set "
                    "JUPYTER_MIGRATING_ROOT_DIR (the example's is "
                    "examples/enterprise-gateway/var/kernel-hosts)"
                )
            hosts.root_dirs = sorted(set(roots.values()))
        return hosts

    def providers(self) -> list[LocalHostProvider]:
        return [LocalHostProvider(root_dir=root) for root in self.root_dirs]

    def hosts(self) -> list[Host]:
        found = []
        for provider in self.providers():
            found += asyncio.run(provider.list_hosts())
        return found

    def kernels(self) -> list[dict[str, Any]]:
        return self.gateway.call("GET", "kernels")

    @staticmethod
    def host_row(host: Host) -> dict[str, Any]:
        return {**host.public(), "kernel_id": host.meta.get("owner")}

    def list_hosts(self) -> dict[str, Any]:
        return {"hosts": [self.host_row(h) for h in self.hosts()]}

    def list_kernels(self) -> dict[str, Any]:
        by_kernel: dict[str, list[Host]] = {}
        for host in self.hosts():
            by_kernel.setdefault(host.meta.get("owner") or "", []).append(host)
        rows = []
        for kernel in self.kernels():
            # two hosts while a kernel moves: the old one first (they are named by creation)
            hosts = sorted(by_kernel.get(kernel["id"], []), key=lambda h: h.meta.get("created", 0))
            rows.append(
                {
                    "id": kernel["id"],
                    "name": kernel.get("name"),
                    "execution_state": kernel.get("execution_state"),
                    "host_id": ",".join(h.id for h in hosts) or None,
                    "address": ",".join(h.address for h in hosts) or None,
                }
            )
        return {"kernels": rows}

    def kernel_info(self, kernel_id: str) -> dict[str, Any]:
        kernel = self.gateway.call("GET", f"kernels/{kernel_id}", missing=f"no kernel {kernel_id}")
        hosts = [self.host_row(h) for h in self.hosts() if h.meta.get("owner") == kernel_id]
        return {**kernel, "hosts": hosts}

    def reclaim(self, host_id: str, notice_seconds: float) -> dict[str, Any]:
        for provider in self.providers():
            host = asyncio.run(provider.get(host_id))
            if host is not None:
                break
        else:
            known = ", ".join(h.id for h in self.hosts()) or "none"
            raise CLIError(f"no host {host_id} (the gateway's kernel hosts: {known})")
        try:
            # run: closes the loop's agent session too (aiohttp would report it unclosed)
            notice = run(provider.simulated_cloud.reclaim(host, notice_seconds))
        except HostError as e:
            raise CLIError(f"the agent of {host_id} did not take the notice: {e}") from None
        owner = host.meta.get("owner")
        return {"host_id": host_id, "notice": notice, "moving": [owner] if owner else []}
