"""The agent's certificate (agent/tls.py), how the hub's client picks a transport for a
host (agent/client.py `transport`), and an in-process agent over pinned HTTPS that runs a
user's process as that user's unix user (agent/users.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from ec2world import SHARES_THE_MACHINE, interpreter_reachable
from realhub import free_port

from migrating_spawner.agent.client import (
    AgentCertificateError,
    AgentClient,
    AgentError,
    close_shared_session,
    transport,
)
from migrating_spawner.agent.host import Host
from migrating_spawner.agent.server import Agent
from migrating_spawner.agent.tls import (
    certificate_fingerprint,
    ensure_certificate,
    server_context,
)
from migrating_spawner.agent.users import stable_id, unix_name

pytestmark = SHARES_THE_MACHINE  # interpreter_reachable opens folders a world opens too


def test_first_boot_makes_a_private_key_and_certificate_and_reuses_them(tmp_path):
    cert, key = tmp_path / "tls" / "agent-cert.pem", tmp_path / "tls" / "agent-key.pem"
    pem = ensure_certificate(cert, key, "10.0.0.7", "ec2-abc")
    for path in (cert, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    # a restarted agent keeps its certificate (the hub pinned it)
    assert ensure_certificate(cert, key, "10.0.0.7", "ec2-abc") == pem
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert certificate_fingerprint(pem) == hashlib.sha256(der).hexdigest()
    # it is a certificate for the address that an ssl context takes with its key
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    decoded = ssl._ssl._test_decode_cert(str(cert))
    assert ("IP Address", "10.0.0.7") in decoded["subjectAltName"]


@pytest.mark.parametrize(
    "bad", ["", "hello", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"]
)
def test_a_registration_without_a_certificate_is_not_pinned(bad):
    with pytest.raises(ValueError):
        certificate_fingerprint(bad)


def host(url: str, address: str, fingerprint: str = "") -> Host:
    return Host("h", address, url, "secret", agent_fingerprint=fingerprint)


def test_the_client_pins_https_and_keeps_plain_http_to_loopback():
    pin = transport(host("https://127.0.0.5:8900", "127.0.0.5", "ab" * 32))
    assert isinstance(pin, aiohttp.Fingerprint)
    # plain HTTP: loopback agents only (the local provider's)
    assert transport(host("http://127.0.0.5:8900", "127.0.0.5")) is None
    with pytest.raises(AgentCertificateError, match="plain HTTP is for loopback agents only"):
        transport(host("http://10.0.0.5:8900", "10.0.0.5"))
    with pytest.raises(AgentCertificateError, match="no certificate pinned"):
        transport(host("https://10.0.0.5:8900", "10.0.0.5"))
    with pytest.raises(AgentCertificateError, match="no certificate pinned"):
        transport(host("https://10.0.0.5:8900", "10.0.0.5", "abcd"))


@pytest.fixture
def open_disk():
    """A disk folder others may traverse (pytest's tmp folders are root's alone), and this
    venv's Python reachable by them."""
    folder = Path(tempfile.mkdtemp(prefix="agent-tls-"))
    folder.chmod(0o711)
    with interpreter_reachable():
        yield folder / "disk"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def hub_user():
    """A hub user name whose unix user the test's agent makes (deleted after)."""
    yield "awssec-unit"
    subprocess.run(["userdel", unix_name("awssec-unit")], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="making users and running as them needs root")
async def test_an_agent_over_pinned_https_runs_a_users_process_as_that_user(open_disk, hub_user):
    address = "127.0.0.1"
    cert, key = open_disk.parent / "tls" / "cert.pem", open_disk.parent / "tls" / "key.pem"
    pem = ensure_certificate(cert, key, address, "unit-host")
    agent = Agent("unit-host", address, "s3cret", open_disk, run_as_users=True)
    open_disk.mkdir()
    runner = web.AppRunner(agent.app(), access_log=None)
    await runner.setup()
    port = free_port(address)
    await web.TCPSite(runner, address, port, ssl_context=server_context(cert, key)).start()
    try:
        url = f"https://{address}:{port}"
        pinned = Host(
            "unit", address, url, "s3cret", agent_fingerprint=certificate_fingerprint(pem)
        )
        client = AgentClient(pinned)
        assert (await client.status())["host_id"] == "unit-host"
        other = Host("unit2", address, url, "s3cret", agent_fingerprint="00" * 32)
        with pytest.raises(AgentCertificateError, match="not the one pinned at its registration"):
            await AgentClient(other).status()
        # a process without its user is refused: this agent never runs one as root
        with pytest.raises(AgentError, match="say whose"):
            await client.start_process("p", ["true"], {}, cwd=str(open_disk / "home" / "x"))
        home = open_disk / "home" / hub_user
        script = "import os; print(os.getuid(), os.getgid(), os.getgroups())"
        await client.start_process(
            "p", [sys.executable, "-c", script], {}, cwd=str(home), user=hub_user
        )
        while (await client.process("p"))["running"]:
            await asyncio.sleep(0.05)
        user = pwd.getpwnam(unix_name(hub_user))
        assert user.pw_uid != 0
        # the uid every host gives this user (a shared home keeps its owner)
        assert user.pw_uid == user.pw_gid == stable_id(unix_name(hub_user))
        assert (await client.log("p"))[-1] == f"{user.pw_uid} {user.pw_gid} []"
        assert home.stat().st_uid == user.pw_uid
    finally:
        await runner.cleanup()
        await close_shared_session()
