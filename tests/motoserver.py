"""moto's server on loopback for tests that talk to AWS APIs (EC2, S3, SQS, EventBridge).

Named `motoserver`, not `moto`: tests/ is on sys.path, and a tests/moto.py would shadow the
moto package itself. Use the fixtures by importing them into a test module:

    from motoserver import moto_server  # noqa: F401  (pytest fixture)

    def test_x(moto_server):
        s3 = moto_server.client("s3")
        env = moto_server.env()  # for subprocesses (hub, agents, simulator)

`moto_server` is module scoped (one server per test module, state wiped by `reset()` when
a test wants a clean account); `moto_session` is session scoped. Each is stopped by the
fixture that started it. The server binds port 0, so two runs never race for a port.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
import pytest
import requests
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# moto accepts any credentials; fixed ones keep boto3 away from ~/.aws and the IMDS
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class MotoServer:
    """A running moto server: where it listens and how to reach it."""

    endpoint_url: str
    region: str = REGION

    def env(self) -> dict[str, str]:
        """Environment for a process whose boto3 clients should use this server."""
        return {
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client_kwargs(self) -> dict:
        """kwargs for `boto3.client(service, **kwargs)` (one try per call: moto answers or not)."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "config": Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
            **CREDENTIALS,
        }

    def client(self, service: str, **overrides):
        return boto3.client(service, **{**self.client_kwargs(), **overrides})

    def reset(self) -> None:
        """Wipe every resource moto holds (all services)."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()


@contextmanager
def running_moto(host: str = "127.0.0.1") -> Iterator[MotoServer]:
    """Start `ThreadedMotoServer` on `host` and a free port; stop it on exit."""
    # werkzeug logs every request to stderr: keep failures only
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    try:
        address, port = server.get_host_and_port()
        yield MotoServer(endpoint_url=f"http://{address}:{port}")
    finally:
        server.stop()


@contextmanager
def moto_environ(moto: MotoServer) -> Iterator[None]:
    """Point this process's boto3 defaults at `moto` (restored on exit)."""
    saved = {k: os.environ.get(k) for k in moto.env()}
    os.environ.update(moto.env())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server
