"""The host side of an EC2 host's security, on simulated instances (moto's server plus the
machine simulator: the real agent boots from the user data, registers and serves).

- TLS pinned at registration: the agent made its own key and self-signed certificate at
  first boot (root's, 0600) and sent it with its registration; the hub's record is
  `https://` with that certificate's SHA-256, tagged on the instance (a restarted hub pins
  the same); every agent call goes over HTTPS, a home moves between two instances through
  it, plain HTTP to the agent gets nothing, and another certificate at the agent's address
  (a man in the middle) is refused before the host's secret is sent.
- The per-host secret is root's, mode 0600.
- A user's process runs as the unprivileged unix user named after the hub user (made by
  the agent), owns its home and the files restored into it, cannot read the host's secret,
  and is refused by the metadata service (the user data's iptables rule, which the
  simulator runs for the instance's own metadata address), while the agent (root) still
  reads it; the rule goes with the instance.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pwd
import shutil
import ssl
import stat
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web as aioweb
from ec2world import SHARES_THE_MACHINE, ec2_world, wait_for
from motoserver import moto_environ
from realhub import free_port
from test_ec2_provider import FakeController, make_provider
from tornado import web

from migrating_spawner.agent.client import AgentCertificateError
from migrating_spawner.agent.host import Host
from migrating_spawner.agent.tls import make_certificate, write_private
from migrating_spawner.agent.users import unix_name
from migrating_spawner.checkpoint.store import LocalCheckpointStore
from migrating_spawner.hosts.ec2 import TAG
from migrating_spawner.service.registration import registration_handlers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), SHARES_THE_MACHINE]


def iptables_works() -> str:
    """'' if this machine lets a test add iptables rules, else why not."""
    if shutil.which("iptables") is None:
        return "no iptables here (Debian package iptables; make system-deps installs it)"
    done = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True)
    return "" if done.returncode == 0 else f"iptables does not work here: {done.stderr.strip()}"


FIREWALL_MISSING = iptables_works()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ec2sec")
    with ec2_world(root, firewall=not FIREWALL_MISSING) as world:
        with moto_environ(world.moto):
            yield world


@pytest.fixture
async def hosts(world, tmp_path):
    """A provider with its registration endpoint, and two hosts from it (released after)."""
    api_port = free_port()
    provider = make_provider(world, tmp_path, api_port)
    server = web.Application(registration_handlers("/api/", FakeController(provider))).listen(
        api_port, "127.0.0.1"
    )
    provider.start("")
    acquired = []
    try:
        for owner in ("alice/", "alice/"):
            acquired.append(await provider.acquire("lab", owner=owner))
        yield provider, acquired
    finally:
        for host in acquired:
            await provider.release(host)
        server.stop()


def instance_root(world, host: Host) -> Path:
    return Path(world.instances()[host.meta["instance_id"]]["root"])


async def test_agents_are_reached_over_https_with_the_registered_certificate(world, hosts):
    provider, (old, new) = hosts
    for host in (old, new):
        etc = instance_root(world, host) / "etc" / "jupyterhub-migrating"
        cert = (etc / "agent-cert.pem").read_text()
        der = ssl.PEM_cert_to_DER_cert(cert)
        assert host.agent_url == f"https://{host.address}:{world.agent_port}"
        assert host.agent_fingerprint == hashlib.sha256(der).hexdigest()
        tags = {t["Key"]: t["Value"] for t in world.moto_instance(host.meta["instance_id"])["Tags"]}
        assert tags[TAG + "tls-sha256"] == host.agent_fingerprint
        # the key, the certificate and the host's secret are root's alone
        for name in ("agent-key.pem", "agent-cert.pem", "secret.json"):
            info = (etc / name).stat()
            assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 0), name
        assert json.loads((etc / "secret.json").read_text())["secret"] == host.agent_token

    # plain HTTP to the agent's port gets no answer: it speaks TLS only
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            url = old.agent_url.replace("https://", "http://") + "/status"
            async with http.get(url, timeout=aiohttp.ClientTimeout(5)) as resp:
                await resp.read()

    # a home moves from one instance to the other through the agents, over HTTPS
    store = LocalCheckpointStore(root_dir=str(instance_root(world, old).parent / "store"))
    home_old = f"{old.disk}/homes/alice"
    home_new = f"{new.disk}/homes/alice"
    writer = provider.agent(old)
    await writer.start_process(
        "writer",
        ["python3", "-c", "print('ok')"],
        {},
        cwd=home_old,
        files={"homes/alice/notes.txt": "written on the first instance"},
        user="alice",
    )
    snap = await writer.snapshot_home(home_old, store.agent_config(), [], timeout=30)
    assert "notes.txt" in snap["files"]
    await provider.agent(new).restore_home(
        home_new, snap["files"], store.agent_config(), timeout=30, user="alice"
    )
    restored = Path(home_new) / "notes.txt"
    assert restored.read_text() == "written on the first instance"

    # a restarted hub (a provider made afresh) pins the same certificate, from the tags
    again = make_provider(world, Path(provider.secret_file).parent, 0)
    found = await again.get(old.id)
    assert (found.agent_url, found.agent_fingerprint) == (old.agent_url, old.agent_fingerprint)
    assert (await again.agent(found).status())["host_id"] == old.id


async def test_another_certificate_at_the_agents_address_is_refused(world, hosts, tmp_path):
    provider, (host, _) = hosts
    # a man in the middle at the host's address, with a certificate of its own
    cert_pem, key_pem = make_certificate(host.address, host.id)
    write_private(tmp_path / "mitm-cert.pem", cert_pem)
    write_private(tmp_path / "mitm-key.pem", key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "mitm-cert.pem", tmp_path / "mitm-key.pem")
    seen: list[str] = []

    async def anything(request):
        seen.append(request.headers.get("Authorization", ""))
        return aioweb.json_response({"host_id": host.id})

    app = aioweb.Application()
    app.router.add_route("*", "/{path:.*}", anything)
    runner = aioweb.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(host.address)
    await aioweb.TCPSite(runner, host.address, port, ssl_context=context).start()
    try:
        # the host's record and pin, another port (the cache holds one client per host id)
        mitm = Host(
            **{**host.to_dict(), "id": "mitm", "agent_url": f"https://{host.address}:{port}"}
        )
        with pytest.raises(AgentCertificateError) as refused:
            await provider.agent(mitm).status()
        got = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).hexdigest()
        assert f"{host.address}:{port} presented a certificate with SHA-256 {got}" in str(
            refused.value
        )
        assert f"not the one pinned at its registration ({host.agent_fingerprint})" in str(
            refused.value
        )
        # the secret never reached it: refused at the handshake, and not tried again
        assert seen == []
        # the same server is reached when its own certificate is the pinned one
        pinned = Host(**{**mitm.to_dict(), "id": "other", "agent_fingerprint": got})
        assert (await provider.agent(pinned).status())["host_id"] == host.id
        assert len(seen) == 1
        # https without a pin is refused too
        unpinned = Host(**{**mitm.to_dict(), "id": "unpinned", "agent_fingerprint": ""})
        with pytest.raises(AgentCertificateError, match="no certificate pinned"):
            await provider.agent(unpinned).status()
    finally:
        await runner.cleanup()
    # the real agent still answers through its pin
    assert (await provider.agent(host).status())["host_id"] == host.id


USER_PROCESS = textwrap.dedent(
    """
    import json, os, sys, urllib.request
    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
    try:
        open(sys.argv[1]).read()
        out["secret"] = "read"
    except PermissionError:
        out["secret"] = "denied"
    token = urllib.request.Request(
        sys.argv[2] + "latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    try:
        urllib.request.urlopen(token, timeout=5)
        out["metadata"] = "answered"
    except OSError as e:
        out["metadata"] = repr(e)
    with open("written-by-the-server.txt", "w") as f:
        f.write("mine")
    print(json.dumps(out))
    """
)


def metadata_token(endpoint: str) -> str:
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    request = urllib.request.Request(endpoint + "latest/api/token", method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.read().decode()


def rules() -> str:
    return subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout


@pytest.mark.skipif(bool(FIREWALL_MISSING), reason=FIREWALL_MISSING or "iptables works")
async def test_a_users_process_is_unprivileged_and_kept_from_metadata_and_secret(world, hosts):
    provider, acquired = hosts
    host = acquired[0]
    agent = provider.agent(host)
    iid = host.meta["instance_id"]
    root = instance_root(world, host)
    secret = root / "etc" / "jupyterhub-migrating" / "secret.json"
    endpoint = f"http://{host.address}:{world.imds_port}/"
    # the user data's rule, for this instance's metadata address and port
    rule = f"-d {host.address}/32 -p tcp -m tcp --dport {world.imds_port}"
    assert rule in rules() and "! --uid-owner 0 -j REJECT" in rules(), rules()

    # a home restored for alice is hers, then her process runs as her unix user
    store = LocalCheckpointStore(root_dir=str(root.parent / "store-users"))
    home = f"{host.disk}/home/alice"
    source = root.parent / "source-home"
    source.mkdir()
    (source / "notes.txt").write_text("from the checkpoint")
    (source / "data").mkdir()
    (source / "data" / "table.csv").write_text("a,b")
    snap = await provider.agent(acquired[1]).snapshot_home(
        str(source), store.agent_config(), [], timeout=30
    )
    await agent.restore_home(home, snap["files"], store.agent_config(), timeout=30, user="alice")
    name = unix_name("alice")
    user = pwd.getpwnam(name)
    assert name == "jupyter-alice" and user.pw_uid != 0 and user.pw_gid != 0
    for path in (home, f"{home}/notes.txt", f"{home}/data", f"{home}/data/table.csv"):
        info = Path(path).lstat()
        assert (info.st_uid, info.st_gid) == (user.pw_uid, user.pw_gid), path

    await agent.start_process(
        "server",
        [sys.executable, "-c", USER_PROCESS, str(secret), endpoint],
        {},
        cwd=home,
        user="alice",
    )

    async def ended():
        return not (await agent.process("server"))["running"]

    await until_true(ended, "the user's process did not end")
    lines = await agent.log("server")
    out = json.loads(lines[-1])
    assert (out["uid"], out["gid"]) == (user.pw_uid, user.pw_gid), lines
    assert 0 not in out["groups"], out
    assert out["secret"] == "denied", out
    assert "Connection refused" in out["metadata"], out
    made = (Path(home) / "written-by-the-server.txt").lstat()
    assert made.st_uid == user.pw_uid

    # root (the agent, and this test) still reads the metadata service
    assert metadata_token(endpoint)
    polled = world.instances()[iid]["metadata_hits"].get("spot/instance-action", 0)
    await asyncio_to_thread_wait(
        lambda: world.instances()[iid]["metadata_hits"].get("spot/instance-action", 0) > polled,
        "the agent no longer polls the metadata service",
    )

    # the rule goes with the instance
    acquired.remove(host)
    await provider.release(host)
    await asyncio_to_thread_wait(lambda: rule not in rules(), "the rule outlived its instance")


async def until_true(predicate, message: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, message
        await asyncio.sleep(0.2)


async def asyncio_to_thread_wait(condition, message: str, timeout: float = 30) -> None:
    await asyncio.to_thread(wait_for, condition, timeout, message)
