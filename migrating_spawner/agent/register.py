"""The agent on an EC2 instance: learn who it is, call home, then serve.

Started by the instance's user data (a systemd service, as root) with a JSON config the
hub wrote into the user data: `register_url` (the hub's `.../api/hosts/register`),
`host_id`, `bootstrap_token` (one-time, bound to the host id), `port`, `disk`,
`secret_file`. It reads its instance id and private address from instance metadata
(IMDSv2), registers (the hub checks the token and that it launched this instance and the
instance is running) and gets the host's secret, which it keeps in `secret_file` (mode
0600, root's; a restarted agent reuses it: the bootstrap token works once). At first boot
it also makes its TLS key and self-signed certificate beside it (agent/tls.py, 0600) and
sends the certificate with the registration: the hub pins it and reaches this agent only
over HTTPS with exactly that certificate. Then it runs the usual agent on that address
(HTTPS), and polls metadata for interruption notices and
rebalance recommendations every 2 s (agent/imds.py), pushing notices to the hub.

    python -m migrating_spawner.agent.register --config /etc/jupyterhub-migrating/agent.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from .imds import IMDSClient, watch_notices
from .logsetup import setup_logging
from .server import Agent, serve
from .tls import ensure_certificate, server_context

log = logging.getLogger("migrating.agent.register")


class RegistrationRefused(Exception):
    """The hub said no (a 4xx): trying again would not help."""


def tls_paths(config: dict[str, Any]) -> tuple[Path, Path]:
    """The agent's certificate and key: beside its secret (root's, 0600)."""
    folder = Path(config["secret_file"]).parent
    return folder / "agent-cert.pem", folder / "agent-key.pem"


async def register(config: dict[str, Any], imds: IMDSClient, timeout: float) -> dict[str, Any]:
    """POST the registration with the agent's certificate (made now at first boot, for the
    hub to pin); retried (connection errors, 5xx) until `timeout`."""
    address = await imds.get("local-ipv4")
    cert_path, key_path = tls_paths(config)
    certificate = ensure_certificate(cert_path, key_path, address or "", config["host_id"])
    body = {
        "host_id": config["host_id"],
        "bootstrap_token": config["bootstrap_token"],
        "instance_id": await imds.get("instance-id"),
        "address": address,
        "port": config["port"],
        "disk": config["disk"],
        "certificate": certificate.decode(),
    }
    deadline = time.monotonic() + timeout
    delay = 0.5
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(15)) as session:
        while True:
            try:
                async with session.post(config["register_url"], json=body) as resp:
                    text = await resp.text()
                    if resp.status < 300:
                        answer = json.loads(text)
                        return {**answer, "address": body["address"]}
                    if resp.status < 500:
                        raise RegistrationRefused(f"{resp.status}: {text[:300]}")
                    log.warning("registration: hub answered %s; trying again", resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                log.warning("registration: hub not reachable (%s); trying again", e)
            if time.monotonic() > deadline:
                raise TimeoutError("the hub did not take the registration in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def run(config_path: Path, register_timeout: float) -> None:
    config = json.loads(config_path.read_text())
    imds = IMDSClient()
    secret_file = Path(config["secret_file"])
    if secret_file.exists():
        saved = json.loads(secret_file.read_text())
    else:
        saved = await register(config, imds, register_timeout)
        write_private(secret_file, json.dumps(saved))
        # the token is spent: keep it out of the config from now on
        config.pop("bootstrap_token", None)
        write_private(config_path, json.dumps(config))
    disk = Path(config["disk"])
    disk.mkdir(parents=True, exist_ok=True)
    agent = Agent(
        host_id=config["host_id"],
        address=saved["address"],
        token=saved["secret"],
        disk=disk,
        notify_url=saved.get("notify_url", ""),
        # users' servers as unprivileged unix users, never as root (agent/users.py)
        run_as_users=bool(config.get("run_as_users", True)),
    )
    ssl_context = server_context(*tls_paths(config))

    async def on_notice(deadline: float, action: dict[str, Any]) -> None:
        log.warning("metadata: interruption %s", action)
        # the cloud ends this instance: the agent only tells
        agent.take_notice(deadline, terminate=False)

    pushes: set[asyncio.Task] = set()  # kept until done (the metadata poll goes on meanwhile)

    async def on_rebalance(data: dict[str, Any]) -> None:
        log.warning("metadata: rebalance recommendation %s", data)
        agent.rebalance = data  # in its status, which the hub polls; pushed for speed
        task = asyncio.create_task(agent.push({"host_id": agent.host_id, "rebalance": data}))
        pushes.add(task)
        task.add_done_callback(pushes.discard)

    watcher = asyncio.create_task(
        watch_notices(imds, on_notice, on_rebalance, float(config.get("poll_interval", 2)))
    )
    try:
        await serve(agent, int(config["port"]), ssl_context)
    finally:
        watcher.cancel()
        await imds.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="jupyterhub-migrating agent on an EC2 instance")
    parser.add_argument("--config", required=True, help="the JSON config the user data wrote")
    parser.add_argument("--register-timeout", type=float, default=600)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        asyncio.run(run(Path(args.config), args.register_timeout))
    except RegistrationRefused as e:
        sys.exit(f"the hub refused this host's registration: {e}")


if __name__ == "__main__":
    main()
