"""Pure parts of the migrating kernel provisioner: no hosts, kernels or sockets."""

from __future__ import annotations

import json
import sys

import pytest
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import KernelProvisionerFactory

from kernel_provisioner.core import (
    KernelMoveError,
    MovableKernel,
    build_connection_info,
    connection_file_text,
    drop_report_code,
    kernel_argv,
    kernel_owner,
    python_executable,
)
from kernel_provisioner.provisioner import MigratingProvisioner
from kernel_provisioner.settings import KernelHostSettings
from migrating_spawner.hosts.local import LocalHostProvider


def test_connection_info_and_file():
    info = build_connection_info("127.0.0.12", [5001, 5002, 5003, 5004, 5005], "k3y")
    assert info["ip"] == "127.0.0.12"
    assert [info[n] for n in ("shell_port", "iopub_port", "stdin_port")] == [5001, 5002, 5003]
    assert (info["control_port"], info["hb_port"]) == (5004, 5005)
    data = json.loads(connection_file_text(info, "python3"))
    assert data == {**info, "kernel_name": "python3"}


@pytest.mark.parametrize("ports", [[1, 2, 3, 4], [1, 2, 3, 4, 4]])
def test_connection_info_needs_five_distinct_ports(ports):
    with pytest.raises(ValueError):
        build_connection_info("127.0.0.12", ports, "k")


def test_kernel_argv_fills_in_the_connection_file():
    argv = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert kernel_argv(argv, "/d/k.json")[-1] == "/d/k.json"
    with pytest.raises(KernelMoveError):
        kernel_argv(["python", "-m", "ipykernel_launcher"], "/d/k.json")
    assert python_executable(argv)[0] == sys.executable
    assert python_executable(["/opt/py", "x"]) == ["/opt/py", "x"]


def _kernel(tmp_path, **kw):
    provider = LocalHostProvider(root_dir=str(tmp_path))
    return MovableKernel(provider, "kid", "python", str(tmp_path / "state" / "kid"), **kw)


def test_kernel_info_round_trip(tmp_path):
    ports = {"shell": 6001, "iopub": 6002, "stdin": 6003, "control": 6004, "hb": 6005}
    kernel = _kernel(tmp_path, relay_ports=ports, relay_key=b"relay-key")
    kernel.target = build_connection_info("127.0.0.11", [1, 2, 3, 4, 5], "target-key")
    kernel.argv = ["python", "-f", "{connection_file}"]
    info = json.loads(json.dumps(kernel.to_info()))  # what persistence stores
    assert info["version"] == 1
    again = MovableKernel.from_info(kernel.provider, "kid", info)
    assert again.relay.connection_info == kernel.relay.connection_info
    assert again.relay.ports["shell_port"] == 6001
    assert again.target == kernel.target
    assert again.argv == kernel.argv
    assert again.state_dir == kernel.state_dir
    assert again.language == "python"


def test_newer_info_is_refused(tmp_path):
    info = _kernel(tmp_path).to_info()
    info["version"] = 99
    with pytest.raises(KernelMoveError, match="too new"):
        MovableKernel.from_info(LocalHostProvider(root_dir=str(tmp_path)), "kid", info)


def _spec(tmp_path, config):
    return KernelSpec(
        argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        language="python",
        metadata={
            "kernel_provisioner": {"provisioner_name": "migrating-provisioner", "config": config}
        },
    )


def test_kernelspec_config_reaches_the_host_provider(tmp_path):
    config = {"root_dir": str(tmp_path), "first_address": "127.0.0.77", "agent_port": 8999}
    spec = _spec(tmp_path, config)
    prov = KernelProvisionerFactory.instance().create_provisioner_instance("kid", spec, None)
    assert isinstance(prov, MigratingProvisioner)
    provider = prov.provider
    assert isinstance(provider, LocalHostProvider)
    assert (provider.root_dir, provider.first_address, provider.agent_port) == (
        str(tmp_path),
        "127.0.0.77",
        8999,
    )
    assert prov.state_root == str(tmp_path / "kernel-state")
    # kernels of one configuration share a provider (and so its address lock)
    other = MigratingProvisioner(kernel_id="k2", kernel_spec=spec, **config)
    assert other.provider is provider


async def test_provisioner_info_round_trip(tmp_path):
    config = {"root_dir": str(tmp_path)}
    spec = _spec(tmp_path, config)
    prov = MigratingProvisioner(kernel_id="kid", kernel_spec=spec, **config)
    prov.kernel = prov._new_kernel(relay_key=b"relay-key")
    prov.connection_info = prov.kernel.relay.connection_info
    info = await prov.get_provisioner_info()
    assert info["kernel_id"] == "kid"
    assert info["migrating"]["relay"]["key"] == "relay-key"

    loaded = MigratingProvisioner(kernel_spec=spec, **config)
    # no host recorded: nothing to reattach to, so nothing starts
    await loaded.load_provisioner_info(json.loads(json.dumps(info)))
    assert loaded.kernel_id == "kid"
    assert loaded.kernel is not None
    assert loaded.kernel.relay.key == b"relay-key"
    assert loaded.kernel.state_dir == str(tmp_path / "kernel-state" / "kid")
    assert not loaded.has_process
    assert await loaded.poll() == 0


def test_a_kernels_user_is_configured_else_from_its_client_else_this_servers_user():
    env = {"KERNEL_USERNAME": "carol"}
    server = {"JUPYTERHUB_USER": "alice"}
    assert kernel_owner("dave", env, server) == "dave"
    assert kernel_owner("", env, server) == "carol"
    assert kernel_owner("", {}, server) == "alice"
    assert kernel_owner("", {}, {}) == ""  # an agent running processes as users refuses it


def test_the_code_that_drops_a_stale_report_leaves_no_name_behind(tmp_path):
    report = tmp_path / "snapshot-report.json"
    report.write_text("{}")
    namespace: dict = {}
    code = drop_report_code("python", str(report))
    exec(code, namespace)
    assert not report.exists()
    exec(code, namespace)  # no report: nothing to do, no error
    assert set(namespace) == {"__builtins__"}
    r_code = drop_report_code("R", str(report))
    assert r_code.startswith("invisible(if (file.exists(") and str(report) in r_code


def test_kernels_get_the_state_store_their_settings_name(tmp_path):
    plain = KernelHostSettings(root_dir=str(tmp_path / "hosts"))
    assert plain.transfer is None and plain.new_kernel("k0", "python").transfer is None
    settings = KernelHostSettings(
        root_dir=str(tmp_path / "hosts"),
        state_store_class="migrating_spawner.checkpoint.store.LocalCheckpointStore",
        state_store_config={"root_dir": str(tmp_path / "store")},
        state_secret_file=str(tmp_path / "kernel-secret"),
        kernel_user="erin",
    )
    kernel = settings.new_kernel("k1", "python")
    assert kernel.transfer is settings.transfer is not None
    assert kernel.configured_user == "erin"
    secret = kernel.transfer.checkpoints.secret
    assert len(secret) == 32 and (tmp_path / "kernel-secret").stat().st_mode & 0o777 == 0o600
