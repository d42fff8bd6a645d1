"""The pure builder of the server process spec: (settings, host, port) -> (cmd, env, cwd)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub, Server

from migrating_spawner.controller import MigratingController
from migrating_spawner.hosts.base import Host
from migrating_spawner.kernelstate import HOST_ROOT
from migrating_spawner.serverspec import ServerSettings, build_server_spec, home_folder
from migrating_spawner.spawner import MigratingSpawner

HOST = Host(id="h12", address="127.0.0.12", agent_url="http://a", agent_token="t", disk="/d/h12")
NEW = Host(id="h13", address="127.0.0.13", agent_url="http://b", agent_token="t", disk="/d/h13")

SETTINGS = ServerSettings(
    cmd=["jupyterhub-singleuser", "--debug"],
    env={"JUPYTERHUB_API_TOKEN": "tok", "JUPYTERHUB_SERVICE_URL": "http://127.0.0.12:1/x/"},
    user="alice",
    server_name="",
    base_url="/user/alice/",
    home_mode="synced",
    shared_home_root="/shared/homes",
    config_path="/cfg",
    snapshot_interval=30.0,
)


def test_spec_for_a_host_and_port():
    spec = build_server_spec(SETTINGS, NEW, 40001)
    assert spec.cmd == ["jupyterhub-singleuser", "--debug"]
    assert spec.cwd == "/d/h13/home/alice"
    assert spec.env["HOME"] == spec.cwd
    assert spec.env["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.13:40001/user/alice/"
    assert spec.env["JUPYTERHUB_MIGRATING_HOST"] == "h13"
    assert spec.env[HOST_ROOT] == "/d/h13"
    assert spec.env["JUPYTER_CONFIG_PATH"] == "/cfg"
    assert spec.env["JUPYTERHUB_MIGRATING_SNAPSHOT_INTERVAL"] == "30.0"
    assert spec.env["JUPYTERHUB_API_TOKEN"] == "tok"
    # pure: the settings are left as they were, and the same input gives the same spec
    assert SETTINGS.env["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.12:1/x/"
    spec.cmd.append("--changed")
    assert build_server_spec(SETTINGS, NEW, 40001).cmd == ["jupyterhub-singleuser", "--debug"]


def test_shared_home_and_named_server():
    settings = dataclasses.replace(SETTINGS, home_mode="shared", server_name="gpu")
    spec = build_server_spec(settings, NEW, 40001)
    assert spec.cwd == spec.env["HOME"] == "/shared/homes/alice-gpu"
    assert home_folder("synced", "/shared/homes", "alice", "gpu", NEW) == "/d/h13/home/alice-gpu"


def test_ipv6_https_and_a_configured_service_url():
    v6 = dataclasses.replace(NEW, address="::1")
    settings = dataclasses.replace(SETTINGS, proto="https")
    url = build_server_spec(settings, v6, 443).env["JUPYTERHUB_SERVICE_URL"]
    assert url == "https://[::1]:443/user/alice/"
    kept = dataclasses.replace(SETTINGS, keep_service_url=True)
    url = build_server_spec(kept, NEW, 40001).env["JUPYTERHUB_SERVICE_URL"]
    assert url == "http://127.0.0.12:1/x/"


@pytest.fixture
def spawner():
    MigratingController.clear_instance()
    user = SimpleNamespace(name="alice", url="/user/alice/")
    spawner = MigratingSpawner(
        user=user, hub=Hub(), orm_spawner=orm.Spawner(name=""), home_mode="synced"
    )
    orm_server = orm.Server(proto="http", ip="", port=0, base_url="/user/alice/", cookie_name="c")
    spawner.server = Server(orm_server=orm_server)
    spawner.api_token = "tok"
    spawner.host, spawner.ip, spawner.port = HOST, HOST.address, 45678
    yield spawner
    MigratingController.clear_instance()


def test_the_spawner_builds_another_hosts_spec_without_rebinding(spawner):
    spec = build_server_spec(spawner.server_settings(), NEW, 40001)
    assert (spawner.host, spawner.ip, spawner.port) == (HOST, "127.0.0.12", 45678)
    assert spec.env["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.13:40001/user/alice/"
    assert spec.env["HOME"] == spec.cwd == spawner.home_on(NEW)
    assert spec.env["JUPYTERHUB_API_TOKEN"] == "tok"
    assert spec.cmd == [*spawner.cmd, *spawner.get_args()]
    # get_env() is the same builder for the current host
    env = spawner.get_env()
    assert env == build_server_spec(spawner.server_settings(), HOST, 45678).env
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.12:45678/user/alice/"


def test_get_env_without_a_host_still_enables_the_extension(spawner):
    spawner.host = None
    env = spawner.get_env()
    assert "HOME" not in env and "JUPYTERHUB_MIGRATING_HOST" not in env
    assert env["JUPYTER_CONFIG_PATH"] and env["JUPYTERHUB_MIGRATING_SNAPSHOT_INTERVAL"]


def test_a_configured_service_url_wins(spawner):
    spawner.environment = {"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/alice/"}
    spec = build_server_spec(spawner.server_settings(), NEW, 40001)
    assert spec.env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/user/alice/"
