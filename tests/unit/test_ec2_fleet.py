"""EC2HostProvider's launch logic against moto's server (no hub, no instances booted):
the fleet request, capacity errors falling back type by type and then to on-demand (the
simulator's EC2 endpoint answers the errors, in this process), interrupted types avoided,
the user data limit."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from motoserver import moto_environ, moto_server  # noqa: F401  (fixture)

from migrating_spawner.ec2sim.ec2proxy import CapacityErrors, EC2Proxy
from migrating_spawner.hosts.base import Host, HostError
from migrating_spawner.hosts.ec2 import TAG, EC2HostProvider

AMI = "ami-12c6146b"
TYPES = ["m6i.large", "m5.large", "m5a.large"]


@pytest.fixture
async def region(moto_server, tmp_path):  # noqa: F811
    """A provider whose EC2 endpoint is the simulator's proxy in front of moto."""
    errors = CapacityErrors()
    runner = web.AppRunner(EC2Proxy(moto_server.endpoint_url, errors).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ec2 = moto_server.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=zone)["Subnet"][
            "SubnetId"
        ]
        for n, zone in enumerate(["us-east-1a", "us-east-1b"])
    ]
    provider = EC2HostProvider(
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        image_id=AMI,
        subnet_ids=subnets,
        hub_name=f"hub-{tmp_path.name}",
        secret_file=str(tmp_path / "secret"),
        instance_types={"large": {"types": TYPES}},
        aws_retries=1,
    )
    with moto_environ(moto_server):  # its credentials (moto takes any)
        yield provider, errors, ec2
    await runner.cleanup()


async def launch(provider, market="spot"):
    said: list[str] = []
    tags = provider.tags("ec2-test", "large", "alice/")
    template, data = await provider._template_data("#cloud-config\n", tags)
    made = await provider.call(
        "create_launch_template_version", LaunchTemplateName=template, LaunchTemplateData=data
    )
    version = str(made["LaunchTemplateVersion"]["VersionNumber"])
    result = await provider.launch(
        provider.candidate_types("large"), market, template, version, tags, said.append
    )
    return result, said, data


async def test_spot_fleet_of_the_first_type_with_tags_and_imdsv2(region):
    provider, errors, ec2 = region
    (instance_id, ec2_type, lifecycle), said, data = await launch(provider)
    assert (ec2_type, lifecycle, said) == ("m6i.large", "spot", [])
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert {s["ResourceType"] for s in data["TagSpecifications"]} == {"instance", "volume"}
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert instance["InstanceLifecycle"] == "spot"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[TAG + "hub"] == provider.hub_name
    assert (tags[TAG + "host-id"], tags[TAG + "user"], tags[TAG + "server"]) == (
        "ec2-test",
        "alice",
        "",
    )
    assert instance["SubnetId"] in provider.subnet_ids


async def test_capacity_error_falls_back_to_the_next_type_then_on_demand(region):
    provider, errors, ec2 = region
    errors.set("m6i.large")
    (_, ec2_type, lifecycle), said, _ = await launch(provider)
    assert (ec2_type, lifecycle) == ("m5.large", "spot")
    assert said == ["No spot capacity for m6i.large: got m5.large"]

    for t in TYPES:
        errors.set(t)
    (_, ec2_type, lifecycle), said, _ = await launch(provider)
    assert (ec2_type, lifecycle) == ("m6i.large", "on-demand")
    assert said[-1] == (
        "No spot capacity for any of m6i.large, m5.large, m5a.large "
        "(InsufficientInstanceCapacity): starting an on-demand instance instead"
    )

    provider.on_demand_fallback = False
    with pytest.raises(HostError, match="on_demand_fallback is off"):
        await launch(provider)


async def test_interrupted_pools_are_avoided_for_a_while(region):
    """A spot pool is a type in a zone: the one just interrupted is left out, the type
    stays welcome in the other zone; the pools left out are asked for when nothing else
    has capacity."""
    provider, errors, ec2 = region

    def zone(instance_id):
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        return found["Instances"][0]["Placement"]["AvailabilityZone"]

    provider.note_interrupted("m6i.large", "us-east-1a")
    assert provider.avoided_pools() == {("m6i.large", "us-east-1a")}
    assert provider.avoided_types() == {"m6i.large"}
    (instance_id, ec2_type, _), said, _ = await launch(provider)
    assert (ec2_type, zone(instance_id), said) == ("m6i.large", "us-east-1b", [])
    provider.note_interrupted("m6i.large", "us-east-1b")
    (_, ec2_type, _), said, _ = await launch(provider)
    assert (ec2_type, said) == ("m5.large", [])
    # when nothing else has capacity, the interrupted pools are asked for after all
    errors.set("m5.large")
    errors.set("m5a.large")
    (_, ec2_type, lifecycle), said, _ = await launch(provider)
    assert (ec2_type, lifecycle) == ("m6i.large", "spot")
    assert said == [
        "No spot capacity for m5.large, m5a.large (InsufficientInstanceCapacity): trying m6i.large"
    ]
    provider.interrupted_type_ttl = 0
    assert provider.avoided_types() == set()


def test_user_data_is_kept_under_16_kb(region):
    provider, _, _ = region
    provider.hub_api_url = "http://10.0.0.1:8081/services/migrate/api/"
    text = provider.render_user_data("ec2-x", "tok")
    assert text.startswith("#cloud-config") and '"bootstrap_token": "tok"' in text
    assert "http://10.0.0.1:8081/services/migrate/api/hosts/register" in text
    provider.user_data_template = "#cloud-config\n# " + "x" * 16384
    with pytest.raises(HostError, match="under 16384"):
        provider.render_user_data("ec2-x", "tok")


async def test_reclaim_is_an_fis_experiment_only_with_a_role(region, moto_server):  # noqa: F811
    provider, _, ec2 = region
    assert provider.simulated_cloud is None  # the hub refuses: no way to ask AWS
    provider.fis_role_arn = "arn:aws:iam::123456789012:role/fis"
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]
    host = Host("ec2-x", "127.0.0.2", "", "", meta={"instance_id": instance["InstanceId"]})
    notice = await provider.simulated_cloud.reclaim(host, 30)
    assert notice["deadline"] - time.time() > 110  # FIS gives at least 2 minutes
    fis = moto_server.client("fis")
    experiment = fis.get_experiment(id=notice["experiment"])["experiment"]
    template = fis.get_experiment_template(id=experiment["experimentTemplateId"])
    spec = template["experimentTemplate"]
    assert spec["actions"]["interrupt"]["actionId"] == "aws:ec2:send-spot-instance-interruptions"
    assert spec["targets"]["instance"]["resourceArns"] == [
        f"arn:aws:ec2:us-east-1:123456789012:instance/{instance['InstanceId']}"
    ]


@pytest.mark.parametrize("move", [True, False])
async def test_a_rebalance_recommendation_moves_only_with_move_on_rebalance(move, tmp_path):
    """Told once however it came (the agent's status or push, EventBridge): a move off the
    host to another type when move_on_rebalance, nothing when it is off."""
    provider = EC2HostProvider(
        move_on_rebalance=move, watch_interval=3600, secret_file=str(tmp_path / "secret")
    )
    assert provider.start() == []  # no queue_url: no SQS channel
    host = Host(
        id="ec2-rebal",
        address="127.0.0.1",
        agent_url="http://127.0.0.1:9",
        agent_token="t",
        meta={"instance_id": "i-0rebal", "ec2_type": "m5.large", "zone": "us-east-1a"},
    )
    watcher = provider.watcher
    watcher.watch(host)
    try:
        notices = []
        watcher.subscribe(lambda e: notices.append(e.notice) if e.kind == "notice" else None)
        assert watcher.push_rebalance(host.id, {"source": "agent"})
        assert not watcher.push_rebalance(host.id, {"source": "eventbridge"})  # once
        notice = watcher.state(host.id).notice
        if move:
            assert notice["rebalance"] is True and notices == [notice]
            assert notice["deadline"] > time.time() + provider.rebalance_move_seconds - 5
            assert provider.avoided_types() == {"m5.large"}  # the move goes elsewhere
        else:
            assert notice is None and notices == []
            assert provider.avoided_types() == set()
    finally:
        await watcher.stop()


async def test_acquires_at_the_same_time_make_the_launch_template_once(region):
    """Many spawns at once (a storm's replacements): one creates the provider's own launch
    template, the others use it (no AlreadyExists failure)."""
    provider, _, ec2 = region
    tags = provider.tags("ec2-test", "large", "alice/")
    made = await asyncio.gather(
        *(provider._template_data("#cloud-config\n", tags) for _ in range(4))
    )
    assert {name for name, _ in made} == {f"jupyterhub-migrating-{provider.hub_name}"}
    found = ec2.describe_launch_templates(LaunchTemplateNames=[made[0][0]])["LaunchTemplates"]
    assert len(found) == 1
    # a template made by someone else meanwhile (another hub process) is as good
    other = EC2HostProvider(
        **{
            k: getattr(provider, k)
            for k in ("endpoint_url", "region", "image_id", "hub_name", "secret_file")
        }
    )
    assert (await other._template_data("#cloud-config\n", tags))[0] == made[0][0]
