"""Where a kernel process's cloud hosts call home.

`EC2HostProvider` waits for each instance it launches until the instance's agent registers
(`POST <hub_api_url>hosts/register`, service/registration.py: the one-time bootstrap token,
the instance check, the certificate pinned). The hub serves that in its control service for
its own hosts; a gateway (or a user server) whose kernels run on ec2 hosts launches
instances with its own provider, whose bootstrap tokens only it knows, so it serves the
same handler itself: `KernelHostSettings.registration_port` (and `registration_ip`,
`registration_url`). Plain HTTP: put it on the instances' private network only, as the
hub's port for agents is.
"""

from __future__ import annotations

import logging
from typing import Any

from tornado import httpserver, web

from migrating_spawner.hosts.base import HostProvider
from migrating_spawner.service.registration import registration_handlers


class RegistrationServer:
    """The registration endpoint of one host provider, at `/api/hosts/register`."""

    def __init__(self, provider: HostProvider, log: logging.Logger | Any = None) -> None:
        self.provider = provider  # what the handler asks to check and register
        self.log = log or logging.getLogger(__name__)
        self.server: httpserver.HTTPServer | None = None

    def listen(self, ip: str, port: int) -> None:
        app = web.Application(registration_handlers("/api/", self))
        self.server = app.listen(port, ip)
        self.log.info("kernel hosts register at http://%s:%d/api/hosts/register", ip, port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
