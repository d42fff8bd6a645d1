"""`jupyterhub-migrate --gateway-url`: a gateway's moving kernels and their hosts, listed and
reclaimed, against a real Kernel Gateway 3 with migrating-provisioner kernels."""

from __future__ import annotations

import asyncio
import json

import pytest
from gateways import USES_THE_EG_EXAMPLE, EnterpriseGatewayExample, KernelGateway, serving, until
from kernelws import KernelSocket

from migrating_spawner.service import cli

pytestmark = [pytest.mark.integration, USES_THE_EG_EXAMPLE]


@pytest.fixture
async def gateway(tmp_path, request):
    server = KernelGateway(tmp_path)
    async with serving(request, server):
        yield server


async def run_cli(capsys, gateway: KernelGateway, *argv: str) -> tuple[int, str, str]:
    # the CLI blocks: beside the loop of the test
    code = await asyncio.to_thread(
        cli.main, ["--gateway-url", gateway.url, "--token", gateway.token, *argv]
    )
    out, err = capsys.readouterr()
    return code, out, err


async def cli_json(capsys, gateway: KernelGateway, *argv: str) -> dict:
    code, out, err = await run_cli(capsys, gateway, *argv, "--json")
    assert (code, err) == (0, ""), (argv, out, err)
    return json.loads(out)


async def start_kernel(gateway: KernelGateway) -> str:
    status, kernel = await gateway.request("POST", "/api/kernels", {"name": gateway.kernel})
    assert status == 201, (kernel, gateway.tail())
    return kernel["id"]


async def test_no_kernels(gateway, capsys):
    assert await cli_json(capsys, gateway, "list") == {"kernels": []}
    assert await cli_json(capsys, gateway, "hosts") == {"hosts": []}
    code, out, _ = await run_cli(capsys, gateway, "list")
    assert (code, out.strip()) == (0, "(none)")
    # a host that is not there is named as such, with the hosts there are
    code, out, err = await run_cli(capsys, gateway, "reclaim", "local-1-abc", "--notice", "5")
    assert code == 1 and out == ""
    assert err.strip() == (
        "jupyterhub-migrate: no host local-1-abc (the gateway's kernel hosts: none)"
    )


async def test_two_kernels_listed_with_their_hosts_and_one_reclaimed(gateway, capsys):
    first, second = await start_kernel(gateway), await start_kernel(gateway)
    await until(lambda: len(gateway.hosts()) == 2, 30, "two kernels, two hosts")

    # the kernelspec's root_dir is absolute: found without --root-dir
    hosts = (await cli_json(capsys, gateway, "hosts"))["hosts"]
    assert sorted(h["kernel_id"] for h in hosts) == sorted([first, second])
    assert all("agent_token" not in h for h in hosts)  # no secrets
    host_of = {h["kernel_id"]: h for h in hosts}

    kernels = (await cli_json(capsys, gateway, "list"))["kernels"]
    assert sorted(k["id"] for k in kernels) == sorted([first, second])
    for kernel in kernels:
        assert kernel["name"] == gateway.kernel
        assert kernel["execution_state"] in {"idle", "starting", "busy"}
        assert kernel["host_id"] == host_of[kernel["id"]]["id"]
        assert kernel["address"] == host_of[kernel["id"]]["address"]
    code, out, _ = await run_cli(capsys, gateway, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "NAME", "EXECUTION_STATE", "HOST_ID", "ADDRESS"]

    info = await cli_json(capsys, gateway, "info", first)
    assert info["id"] == first and [h["id"] for h in info["hosts"]] == [host_of[first]["id"]]
    code, _, err = await run_cli(capsys, gateway, "info", "no-such-kernel")
    assert code == 1 and err.strip() == "jupyterhub-migrate: 404: no kernel no-such-kernel"

    # reclaim the first kernel's host: the kernel moves, its variables with it
    old = host_of[first]["id"]
    async with KernelSocket(gateway.url, first, gateway.token) as ws:
        out, reply = await ws.run("x = 42")
        assert reply["status"] == "ok", out
        answer = await cli_json(
            capsys, gateway, "reclaim", old, "--notice", "3", "--root-dir", str(gateway.hosts_root)
        )
        assert answer["host_id"] == old and answer["moving"] == [first]
        assert answer["notice"]["action"] == "terminate"

        def moved() -> bool:
            mine = [h for h in gateway.hosts() if h.meta.get("owner") == first]
            return len(mine) == 1 and mine[0].id != old

        await until(moved, 60, "the reclaimed kernel did not move")
        out, reply = await ws.run("print(x)", timeout=60)
        assert reply["status"] == "ok" and out.strip() == "42", out
    kernels = (await cli_json(capsys, gateway, "list"))["kernels"]
    now = {k["id"]: k["host_id"] for k in kernels}
    assert now[first] not in (old, None) and now[second] == host_of[second]["id"]


async def test_relative_root_dir_asks_for_root_dir(gateway, capsys, monkeypatch):
    # the Enterprise Gateway example's kernelspec says "var/kernel-hosts": relative to the
    # gateway's working folder, which a client cannot know
    spec_dir = gateway.jupyter_path / "kernels" / "relative"
    spec_dir.mkdir(parents=True)
    spec = json.loads(
        (gateway.jupyter_path / "kernels" / gateway.kernel / "kernel.json").read_text()
    )
    spec["metadata"]["kernel_provisioner"]["config"]["root_dir"] = "var/kernel-hosts"
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.delenv("JUPYTER_MIGRATING_ROOT_DIR", raising=False)
    code, out, err = await run_cli(capsys, gateway, "hosts")
    assert code == 1 and out == ""
    assert "relative: 'var/kernel-hosts'" in err and "pass --root-dir" in err
    # given, it is used
    monkeypatch.setenv("JUPYTER_MIGRATING_ROOT_DIR", str(gateway.hosts_root))
    assert await cli_json(capsys, gateway, "hosts") == {"hosts": []}


async def test_enterprise_gateway_example_as_its_readme_says(
    tmp_path, request, capsys, monkeypatch
):
    """The example's README: `list` and `reclaim` through Enterprise Gateway 3.3, with the
    hosts folder given as the README gives it (its kernelspec's root_dir is relative)."""
    example = EnterpriseGatewayExample(tmp_path)
    await example.clean()
    monkeypatch.delenv("JUPYTER_MIGRATING_ROOT_DIR", raising=False)
    monkeypatch.delenv("JUPYTER_GATEWAY_AUTH_TOKEN", raising=False)

    async def gateway_cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["--gateway-url", example.gateway_url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    async with serving(request, example, timeout=90):
        code, out, err = await gateway_cli("list")
        assert code == 1 and "pass --root-dir" in err, (out, err)
        monkeypatch.setenv("JUPYTER_MIGRATING_ROOT_DIR", str(example.hosts_root))
        code, out, err = await gateway_cli("list", "--json")
        assert (code, err, json.loads(out)) == (0, "", {"kernels": []})

        status, kernel = await example.gateway("POST", "/api/kernels", {"name": "python3-moving"})
        assert status == 201, kernel
        await until(lambda: len(example.hosts()) == 1, 60, "the kernel got no host")
        [host] = example.hosts()
        code, out, err = await gateway_cli("--json", "list")
        assert (code, err) == (0, "")
        [row] = json.loads(out)["kernels"]
        assert (row["id"], row["host_id"]) == (kernel["id"], host.id)

        code, out, err = await gateway_cli("reclaim", host.id, "--notice", "3")
        assert (code, err) == (0, "")
        assert out.strip().endswith(f"; moving {kernel['id']}"), out

        def moved() -> bool:
            hosts = example.hosts()
            return len(hosts) == 1 and hosts[0].id != host.id

        await until(moved, 60, "the kernel did not move")
        status, _ = await example.gateway("DELETE", f"/api/kernels/{kernel['id']}")
        assert status == 204
