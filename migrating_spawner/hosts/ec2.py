"""EC2 hosts: spot (or on-demand) instances launched with `create_fleet(Type="instant")`.

A host is one instance. `acquire` writes a per-host launch template version (the
operator's template or AMI settings, the host's user data and tags), asks for one instance
of the profile's instance types (overrides x subnets, price-capacity-optimized spot), and
falls back type by type on `Errors`, then to on-demand (`on_demand_fallback`). The user
data (a cloud-config from `user_data_template`) starts the agent, which registers at the
hub (`POST .../api/hosts/register`, service/registration.py) with a one-time bootstrap
token bound to the host id and gets the host's secret (derived from this provider's own
secret and the host id, so a restarted hub knows it again). The registration also tags the
instance with the agent's address, port and disk: `get`/`list_hosts` rebuild hosts from
tags after a hub restart. `release` terminates, except an instance AWS is interrupting:
its agent is shut down and AWS ends it (an instance AWS interrupts in its first hour is
not billed).

Every boto3 call runs in a thread, with a timeout and a bounded retry.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Integer, List, Unicode, default

from ..agent.client import AgentError
from ..agent.tls import certificate_fingerprint
from .base import Host, HostError, HostProvider, RegistrationError
from .cloudevents import CloudEventsChannel
from .watcher import NOTICE, REBALANCE, HostEvent

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError
except ImportError:  # boto3 is only needed when this provider is used
    boto3 = None
    BotoCoreError = ClientError = ResponseParserError = Exception  # type: ignore[misc,assignment]

TAG = "jupyterhub-migrating:"
#: AWS refuses user data over 16 KB (before base64)
USER_DATA_LIMIT = 16 * 1024
LIVE_STATES = ["pending", "running"]
RETRYABLE_CODES = {"RequestLimitExceeded", "Throttling", "InternalError", "Unavailable"}
#: the instance metadata service refused to every uid but root's (the agent): users'
#: servers run as unprivileged users (agent/users.py), so their code cannot read the user
#: data (the bootstrap token) or the instance role's credentials
METADATA_FIREWALL = (
    "iptables -I OUTPUT -d 169.254.169.254/32 -p tcp --dport 80"
    " -m owner ! --uid-owner 0 -j REJECT --reject-with tcp-reset"
)
#: the same for the metadata service's IPv6 address (Nitro instances, when the launch
#: template's metadata options enable the IPv6 endpoint)
METADATA_FIREWALL_V6 = (
    "ip6tables -I OUTPUT -d fd00:ec2::254/128 -p tcp --dport 80"
    " -m owner ! --uid-owner 0 -j REJECT --reject-with tcp-reset"
)

DEFAULT_USER_DATA = """#cloud-config
# jupyterhub-migrating host {host_id}: starts the agent, which registers at the hub
write_files:
  - path: /etc/jupyterhub-migrating/agent.json
    permissions: "0600"
    content: |
      {agent_config}
  - path: /etc/systemd/system/jupyterhub-migrating-agent.service
    permissions: "0644"
    content: |
      [Unit]
      Description=jupyterhub-migrating host agent
      After=network-online.target
      [Service]
      ExecStart={python} -m migrating_spawner.agent.register \\
        --config /etc/jupyterhub-migrating/agent.json
      Restart=on-failure
      User=root
      [Install]
      WantedBy=multi-user.target
runcmd:
  - {install_command}
  # users' code (every uid but root's) reaches neither user data nor the role's credentials
  - {metadata_firewall}
  - {metadata_firewall_v6}
  - systemctl daemon-reload
  - systemctl enable --now jupyterhub-migrating-agent
"""


@dataclasses.dataclass
class _Bootstrap:
    """A host being launched, waiting for its agent's registration."""

    token_hash: bytes
    expires: float
    registered: asyncio.Future
    used: bool = False
    instance_id: str = ""


class EC2HostProvider(HostProvider):
    """Hosts are EC2 instances (spot by default), launched by `create_fleet`."""

    name = "ec2"

    @default("instance_types")
    def _default_instance_types(self) -> dict[str, Any]:
        return {
            "small": {"types": ["t3.medium", "t3a.medium"]},
            "medium": {"types": ["m6i.large", "m5.large", "m5a.large"]},
        }

    region = Unicode(
        "", help="AWS region of the instances (empty: boto3's default, e.g. AWS_DEFAULT_REGION)."
    ).tag(config=True)

    endpoint_url = Unicode(
        "",
        help="""EC2 API endpoint (empty: AWS's). For a local region: the EC2 URL the machine
        simulator (`jupyterhub-migrate-ec2-sim run`) writes into its sim.json.""",
    ).tag(config=True)

    hub_name = Unicode(
        "jupyterhub",
        help="""This hub's name in the `jupyterhub-migrating:hub` tag of its instances: a
        restarted hub finds (and only finds) its own instances by it.""",
    ).tag(config=True)

    launch_template = Unicode(
        "",
        help="""Name or id (lt-...) of a launch template with the AMI, security groups,
        instance profile, key and volumes. Each host gets a version of it with its own user
        data and tags (deleted once the instance is launched). Empty: the explicit
        `image_id`, `security_group_ids`, ... below build a template of this provider's
        own (`jupyterhub-migrating-<hub_name>`).""",
    ).tag(config=True)

    image_id = Unicode(
        "", help="AMI of the hosts (with `launch_template` empty); see examples/aws/ to bake it."
    ).tag(config=True)

    security_group_ids = List(
        Unicode(), help="Security groups of the hosts (with `launch_template` empty)."
    ).tag(config=True)

    instance_profile = Unicode(
        "",
        help="IAM instance profile (name or ARN) of the hosts: the instance role (S3 access).",
    ).tag(config=True)

    key_name = Unicode("", help="EC2 key pair for SSH to the hosts (empty: none).").tag(config=True)

    volume_size = Integer(50, help="Root volume size of each host in GiB.").tag(config=True)

    volume_type = Unicode("gp3", help="Root volume type.").tag(config=True)

    root_device = Unicode("/dev/xvda", help="Root device name of the AMI.").tag(config=True)

    subnet_ids = List(
        Unicode(),
        help="""Subnets (one per availability zone) to launch into: every instance type is
        offered in every subnet, and spot picks the best pool (empty: the default VPC's).""",
    ).tag(config=True)

    allocation_strategy = Unicode(
        "price-capacity-optimized",
        help="Spot allocation strategy of the fleet (AWS recommends price-capacity-optimized).",
    ).tag(config=True)

    on_demand_fallback = Bool(
        True,
        help="""When no spot capacity is left in any of a profile's instance types, launch
        on-demand instead (the user's progress says so). False: the spawn fails.""",
    ).tag(config=True)

    interrupted_type_ttl = Float(
        600,
        help="""Seconds a spot pool (instance type in an availability zone) that was just
        interrupted is avoided by new launches, unless nothing else has capacity: with
        `subnet_ids` the type stays welcome in the other zones; without (zones unknown), the
        type is avoided everywhere.""",
    ).tag(config=True)

    move_on_rebalance = Bool(
        True,
        help="""Move servers off an instance that gets an EC2 rebalance recommendation (it
        is at higher risk of interruption), to another instance type or zone.""",
    ).tag(config=True)

    rebalance_move_seconds = Float(
        120,
        help="""The deadline a rebalance move works to (no instance is taken then: the old
        one is terminated by the hub after the move).""",
    ).tag(config=True)

    agent_port = Integer(8900, help="Port the agent listens on at each instance's address.").tag(
        config=True
    )

    agent_disk = Unicode(
        "/var/lib/jupyterhub-migrating/disk",
        help="The agent's disk folder on each instance (homes in synced mode, logs).",
    ).tag(config=True)

    hub_api_url = Unicode(
        "",
        help="""URL of the migrate service's API as agents reach it, e.g.
        `https://hub.internal:8081/services/migrate/api/` (empty: the API's own URL, right
        for a hub on the instances' network). Registration and notices go there.""",
    ).tag(config=True)

    python = Unicode(
        "python3", help="The Python on the AMI that has migrating_spawner installed."
    ).tag(config=True)

    install_command = Unicode(
        "python3 -m pip install jupyterhub-migrating-spawner",
        help="""Install step in the default user data (on an AMI with the package baked in,
        make it `true`).""",
    ).tag(config=True)

    user_data_template = Unicode(
        DEFAULT_USER_DATA,
        help="""The cloud-config each instance boots with, a `str.format` template of
        {host_id}, {agent_config} (the agent's JSON config, one line: register URL, host id,
        one-time bootstrap token, port, disk), {python}, {install_command} and
        {metadata_firewall} and {metadata_firewall_v6} (the iptables and ip6tables rules that
        refuse the metadata service, 169.254.169.254 and fd00:ec2::254, to every uid but
        root's; the AMI needs iptables). It must start the agent (`python -m
        migrating_spawner.agent.register --config FILE`) as root, after that rule. The
        result must stay under 16 KB (AWS's limit); a bigger one fails the spawn.""",
    ).tag(config=True)

    boot_timeout = Float(
        300,
        help="Seconds from launch until the instance's agent must have registered and answer.",
    ).tag(config=True)

    bootstrap_ttl = Float(900, help="Seconds a host's one-time bootstrap token stays valid.").tag(
        config=True
    )

    aws_call_timeout = Float(30, help="Seconds one EC2 API call may take.").tag(config=True)

    aws_retries = Integer(
        3,
        help="""Tries of an EC2 API call that failed to connect, timed out or was throttled
        (with exponential backoff; launches carry a ClientToken, so a retry never launches
        twice).""",
    ).tag(config=True)

    secret_file = Unicode(
        "jupyterhub_migrating_ec2_secret",
        help="""File with this provider's secret (created if missing, mode 0600): each
        host's agent secret is derived from it and the host id.""",
    ).tag(config=True)

    fis_role_arn = Unicode(
        "",
        help="""IAM role for AWS Fault Injection Service: with it, `jupyterhub-migrate
        reclaim HOST` starts an FIS experiment (aws:ec2:send-spot-instance-interruptions)
        on the host's instance, as AWS recommends for testing interruptions. Empty: reclaim
        is refused.""",
    ).tag(config=True)

    extra_tags = Dict(help="More tags on every instance and volume (e.g. cost allocation).").tag(
        config=True
    )

    #: where agents push notices (set by `start`)
    notify_url = ""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._client: Any = None
        self._bootstraps: dict[str, _Bootstrap] = {}
        self._interrupted: dict[tuple[str, str], float] = {}
        self._zones: dict[str, str] | None = None
        self._templates: set[str] = set()  # launch templates known to exist
        self._template_lock = asyncio.Lock()
        self._key: bytes | None = None
        self._warned: set[str] = set()

    # -- AWS calls ---------------------------------------------------------------------

    @property
    def ec2(self) -> Any:
        if self._client is None:
            if boto3 is None:
                raise HostError("the ec2 provider needs boto3 (pip install boto3)")
            self._client = boto3.client(
                "ec2",
                region_name=self.region or None,
                endpoint_url=self.endpoint_url or None,
                config=Config(
                    connect_timeout=min(10, self.aws_call_timeout),
                    read_timeout=self.aws_call_timeout,
                    retries={"max_attempts": 1},  # ours below, in the hub's loop
                ),
            )
        return self._client

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One EC2 API call in a thread: a timeout per try, `aws_retries` tries on errors
        that may pass (connection, timeout, throttling), with exponential backoff."""
        method = getattr(self.ec2, operation)
        delay = 0.5
        for attempt in range(1, self.aws_retries + 1):
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(method, **kwargs), self.aws_call_timeout + 5
                )
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code not in RETRYABLE_CODES or attempt == self.aws_retries:
                    raise HostError(f"EC2 {operation}: {code}: {e}") from e
                error: Exception = e
            except ResponseParserError as e:  # not EC2's answer (e.g. moto lacks the call)
                raise HostError(f"EC2 {operation}: unreadable answer: {e}") from e
            except (BotoCoreError, asyncio.TimeoutError) as e:
                if attempt == self.aws_retries:
                    raise HostError(f"EC2 {operation} failed: {e!r}") from e
                error = e
            self.log.warning(
                "EC2 %s failed (%r), try %d of %d", operation, error, attempt, self.aws_retries
            )
            await asyncio.sleep(delay * (1 + secrets.randbelow(100) / 100))
            delay *= 2
        raise AssertionError("unreachable")

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.log.warning("%s", message)

    # -- secrets -----------------------------------------------------------------------

    def _secret_key(self) -> bytes:
        if self._key is None:
            path = Path(self.secret_file)
            try:
                self._key = bytes.fromhex(path.read_text().strip())
            except FileNotFoundError:
                key = secrets.token_bytes(32)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(key.hex())
                self._key = key
        return self._key

    def host_secret(self, host_id: str) -> str:
        """The agent secret of `host_id` (the same after a hub restart)."""
        return hmac.new(self._secret_key(), host_id.encode(), hashlib.sha256).hexdigest()

    # -- the provider ------------------------------------------------------------------

    def start(self, notify_url: str = "") -> list:
        """Agents push notices (and rebalance recommendations) to `notify_url`; a notice
        marks its type/zone interrupted, a rebalance recommendation goes to `on_rebalance`;
        with `CloudEventsChannel.queue_url` set, EC2's events come through SQS too."""
        self.notify_url = notify_url
        self.watcher.subscribe(self._on_event)
        channel = CloudEventsChannel(parent=self, log=self.log)
        return channel.start(self.watcher)

    @property
    def simulated_cloud(self) -> FISReclaim | None:
        """With `fis_role_arn`: `reclaim` starts an AWS FIS spot interruption experiment.
        Without: None (the hub refuses to reclaim an ec2 host on request)."""
        return FISReclaim(self) if self.fis_role_arn else None

    def on_rebalance(self, host: Host) -> bool:
        """A rebalance recommendation (once per host, from the agent or EventBridge): with
        `move_on_rebalance`, move off the host now, to another type/zone (its own is marked
        interrupted), before AWS maybe interrupts it. True if a move was asked for."""
        if not self.move_on_rebalance:
            self.log.info(
                "rebalance recommendation for %s: not moving (move_on_rebalance is off)", host.id
            )
            return False
        meta = host.meta
        self.note_interrupted(meta.get("ec2_type", ""), meta.get("zone", ""))
        deadline = time.time() + self.rebalance_move_seconds
        self.log.warning(
            "rebalance recommendation for %s (%s in %s): moving its servers to another type/zone",
            host.id,
            meta.get("ec2_type", "?"),
            meta.get("zone", "?"),
        )
        return self.watcher.push_notice(host.id, {"deadline": deadline, "rebalance": True})

    def _on_event(self, event: HostEvent) -> None:
        if event.kind == NOTICE:
            meta = event.host.meta
            self.note_interrupted(meta.get("ec2_type", ""), meta.get("zone", ""))
        elif event.kind == REBALANCE:
            self.on_rebalance(event.host)

    @property
    def api_url(self) -> str:
        if self.hub_api_url:
            return self.hub_api_url.rstrip("/") + "/"
        return self.notify_url.rsplit("/", 1)[0] + "/" if self.notify_url else ""

    def candidate_types(self, profile_type: str) -> list[str]:
        """The EC2 types of a profile's instance type, in the profile's order."""
        spec = self.instance_types.get(profile_type) or {}
        return list(spec.get("types") or [profile_type])

    def avoided_pools(self) -> set[tuple[str, str]]:
        """(type, zone) pools interrupted less than `interrupted_type_ttl` ago: asked for
        only when no other pool of the profile has capacity."""
        now = time.time()
        return {
            pool
            for pool, when in self._interrupted.items()
            if now - when < self.interrupted_type_ttl
        }

    def avoided_types(self) -> set[str]:
        """The types of the avoided pools."""
        return {t for t, _ in self.avoided_pools()}

    async def subnet_zones(self) -> dict[str, str]:
        """The availability zone of each of `subnet_ids` (asked once)."""
        if self._zones is None and self.subnet_ids:
            found = await self.call("describe_subnets", SubnetIds=list(self.subnet_ids))
            self._zones = {n["SubnetId"]: n.get("AvailabilityZone", "") for n in found["Subnets"]}
        return self._zones or {}

    def _avoided(self, pool: tuple[str, str | None], zones: dict[str, str]) -> bool:
        ec2_type, subnet = pool
        zone = zones.get(subnet or "", "")
        avoided = self.avoided_pools()
        if zone:  # a pool whose zone is known: that very pool, or the type in an unknown zone
            return (ec2_type, zone) in avoided or (ec2_type, "") in avoided
        return ec2_type in {t for t, _ in avoided}

    def note_interrupted(self, ec2_type: str, zone: str) -> None:
        self._interrupted[(ec2_type, zone)] = time.time()

    def render_user_data(self, host_id: str, token: str) -> str:
        agent_config = {
            "register_url": self.api_url + "hosts/register",
            "host_id": host_id,
            "bootstrap_token": token,
            "port": self.agent_port,
            "disk": self.agent_disk,
            "secret_file": "/etc/jupyterhub-migrating/secret.json",
        }
        text = self.user_data_template.format(
            host_id=host_id,
            agent_config=json.dumps(agent_config),
            python=self.python,
            install_command=self.install_command,
            metadata_firewall=METADATA_FIREWALL,
            metadata_firewall_v6=METADATA_FIREWALL_V6,
        )
        size = len(text.encode())
        if size >= USER_DATA_LIMIT:
            raise HostError(
                f"user data is {size} bytes: AWS takes under {USER_DATA_LIMIT} "
                "(shorten EC2HostProvider.user_data_template)"
            )
        return text

    def tags(self, host_id: str, profile_type: str, owner: str) -> dict[str, str]:
        user, _, server = owner.partition("/")
        return {
            **{str(k): str(v) for k, v in self.extra_tags.items()},
            "Name": f"jupyterhub-migrating {owner or host_id}",
            TAG + "hub": self.hub_name,
            TAG + "host-id": host_id,
            TAG + "user": user,
            TAG + "server": server,
            TAG + "profile": profile_type,
        }

    async def _template_data(self, user_data: str, tags: dict[str, str]) -> tuple[str, dict]:
        """(template name, the data of this host's version)."""
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        if self.launch_template:
            key = (
                "LaunchTemplateIds"
                if self.launch_template.startswith("lt-")
                else ("LaunchTemplateNames")
            )
            found = await self.call("describe_launch_templates", **{key: [self.launch_template]})
            template = found["LaunchTemplates"][0]
            versions = await self.call(
                "describe_launch_template_versions",
                LaunchTemplateId=template["LaunchTemplateId"],
                Versions=["$Default"],
            )
            data = dict(versions["LaunchTemplateVersions"][0]["LaunchTemplateData"])
            name = template["LaunchTemplateName"]
        else:
            if not self.image_id:
                raise HostError("set EC2HostProvider.launch_template or EC2HostProvider.image_id")
            data = {
                "ImageId": self.image_id,
                "BlockDeviceMappings": [
                    {
                        "DeviceName": self.root_device,
                        "Ebs": {
                            "VolumeSize": self.volume_size,
                            "VolumeType": self.volume_type,
                            "DeleteOnTermination": True,
                        },
                    }
                ],
            }
            if self.security_group_ids:
                data["SecurityGroupIds"] = list(self.security_group_ids)
            if self.instance_profile:
                arn = self.instance_profile.startswith("arn:")
                data["IamInstanceProfile"] = {("Arn" if arn else "Name"): self.instance_profile}
            if self.key_name:
                data["KeyName"] = self.key_name
            name = f"jupyterhub-migrating-{self.hub_name}"
            await self._ensure_template(name, data)
        # IMDSv2 only: a token is needed for every metadata read
        data["MetadataOptions"] = {
            **data.get("MetadataOptions", {}),
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
        }
        data["UserData"] = base64.b64encode(user_data.encode()).decode()
        data["TagSpecifications"] = [
            {"ResourceType": kind, "Tags": tag_list} for kind in ("instance", "volume")
        ]
        data.pop("InstanceType", None)  # the fleet's overrides say
        return name, data

    async def _ensure_template(self, name: str, data: dict) -> None:
        """This provider's own template (its hosts' versions go under it): made once, by one
        of the acquires running at the same time; one made meanwhile by another hub (or an
        acquire of a restarted one) is as good."""
        async with self._template_lock:
            if name in self._templates:
                return
            try:
                await self.call("describe_launch_templates", LaunchTemplateNames=[name])
            except HostError:
                try:
                    await self.call(
                        "create_launch_template", LaunchTemplateName=name, LaunchTemplateData=data
                    )
                except HostError as e:
                    if "AlreadyExists" not in str(e):
                        raise
            self._templates.add(name)

    async def _fleet(
        self,
        template: str,
        version: str,
        pools: list[tuple[str, str | None]],
        market: str,
        tags: dict[str, str],
    ) -> dict[str, Any]:
        overrides = [{"InstanceType": t, **({"SubnetId": s} if s else {})} for t, s in pools]
        request: dict[str, Any] = {
            "Type": "instant",
            "ClientToken": secrets.token_hex(16),
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": 1,
                "DefaultTargetCapacityType": market,
            },
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateName": template,
                        "Version": version,
                    },
                    "Overrides": overrides,
                }
            ],
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        }
        if market == "spot":
            request["SpotOptions"] = {"AllocationStrategy": self.allocation_strategy}
        else:
            request["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
        return await self.call("create_fleet", **request)

    async def launch(
        self,
        types: list[str],
        market: str,
        template: str,
        version: str,
        tags: dict[str, str],
        progress: Callable[[str], None],
    ) -> tuple[str, str, str]:
        """One instance of the first type with capacity: (instance id, type, market)."""
        markets = [market] + (["on-demand"] if market == "spot" and self.on_demand_fallback else [])
        last = f"no instance types to launch ({types})"
        zones = await self.subnet_zones()
        subnets: list[str | None] = list(self.subnet_ids) or [None]
        for current in markets:
            left = list(types)
            while left:
                # one fleet of the pools (type x subnet) not interrupted lately (spot picks
                # among them); the others once those have no capacity
                pools = [(t, s) for t in left for s in subnets]
                fresh = [p for p in pools if not self._avoided(p, zones)] or pools
                batch = list(dict.fromkeys(t for t, _ in fresh))
                answer = await self._fleet(template, version, fresh, current, tags)
                instances = [i for i in answer.get("Instances", []) if i.get("InstanceIds")]
                failed = []
                for error in answer.get("Errors", []):
                    over = (error.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
                    failed.append((over.get("InstanceType", ""), error.get("ErrorCode", "")))
                if instances:
                    got = instances[0]
                    if failed:
                        names = ", ".join(sorted({t for t, _ in failed if t}))
                        progress(f"No {current} capacity for {names}: got {got['InstanceType']}")
                    return (
                        got["InstanceIds"][0],
                        got.get("InstanceType", ""),
                        got.get("Lifecycle", current),
                    )
                gone = {t for t, _ in failed if t in batch} or set(batch)
                codes = ", ".join(sorted({c for _, c in failed if c})) or "no instance"
                left = [t for t in left if t not in gone]
                if left:
                    progress(
                        f"No {current} capacity for {', '.join(sorted(gone))} ({codes}): "
                        f"trying {left[0]}"
                    )
                else:
                    last = f"No {current} capacity for any of {', '.join(types)} ({codes})"
            if current == "spot" and len(markets) > 1:
                progress(f"{last}: starting an on-demand instance instead")
        raise HostError(last + ("" if self.on_demand_fallback else " (on_demand_fallback is off)"))

    async def acquire(
        self,
        instance_type: str = "",
        market: str = "",
        owner: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Host:
        profile_type = self.check_instance_type(instance_type)
        say = progress or (lambda message: self.log.info("%s", message))
        host_id = f"ec2-{secrets.token_hex(4)}"
        token = secrets.token_urlsafe(32)
        loop = asyncio.get_running_loop()
        boot = self._bootstraps[host_id] = _Bootstrap(
            token_hash=hashlib.sha256(token.encode()).digest(),
            expires=time.time() + self.bootstrap_ttl,
            registered=loop.create_future(),
        )
        tags = self.tags(host_id, profile_type, owner)
        instance_id = ""
        try:
            user_data = self.render_user_data(host_id, token)
            template, data = await self._template_data(user_data, tags)
            made = await self.call(
                "create_launch_template_version",
                LaunchTemplateName=template,
                LaunchTemplateData=data,
                VersionDescription=f"jupyterhub-migrating host {host_id}",
            )
            version = str(made["LaunchTemplateVersion"]["VersionNumber"])
            try:
                instance_id, ec2_type, lifecycle = await self.launch(
                    self.candidate_types(profile_type),
                    market or self.market,
                    template,
                    version,
                    tags,
                    say,
                )
            finally:
                try:  # the version holds the bootstrap token: it goes once it served
                    await self.call(
                        "delete_launch_template_versions",
                        LaunchTemplateName=template,
                        Versions=[version],
                    )
                except HostError as e:
                    self._warn_once(f"could not delete launch template versions: {e}")
            boot.instance_id = instance_id
            await self._tag_volumes(instance_id, tags)
            say(f"Instance {instance_id} ({ec2_type}, {lifecycle}) launched; waiting for its agent")
            registered = await asyncio.wait_for(asyncio.shield(boot.registered), self.boot_timeout)
            host = Host(
                id=host_id,
                address=registered["address"],
                agent_url=f"https://{registered['address']}:{self.agent_port}",
                agent_token=self.host_secret(host_id),
                agent_fingerprint=registered["fingerprint"],
                instance_type=profile_type,
                market="spot" if lifecycle == "spot" else "on-demand",
                disk=registered["disk"],
                meta={
                    "provider": self.name,
                    "created": time.time(),
                    "owner": owner,
                    "instance_id": instance_id,
                    "ec2_type": ec2_type,
                    "zone": registered.get("zone", ""),
                },
            )
            await self._wait_agent(host)
        except BaseException as e:
            if instance_id:
                await self._terminate(instance_id)
            if isinstance(e, asyncio.TimeoutError):
                raise HostError(
                    f"the agent on {instance_id} did not register within {self.boot_timeout:g} s"
                ) from None
            raise
        finally:
            boot.used = True  # never again, whatever happened
            self._bootstraps.pop(host_id, None)
        self.log.info("acquired ec2 host %s: %s at %s", host.id, instance_id, host.address)
        return host

    async def _tag_volumes(self, instance_id: str, tags: dict[str, str]) -> None:
        found = await self.call("describe_instances", InstanceIds=[instance_id])
        volumes = [
            m["Ebs"]["VolumeId"]
            for r in found["Reservations"]
            for i in r["Instances"]
            for m in i.get("BlockDeviceMappings", [])
            if "Ebs" in m
        ]
        if volumes:
            await self.call(
                "create_tags",
                Resources=volumes,
                Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            )

    async def _wait_agent(self, host: Host) -> None:
        client = self.agent(host)
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.status(quick=True)
                return
            except AgentError as e:
                if time.monotonic() > deadline:
                    raise HostError(f"agent of {host.id} does not answer: {e}") from e
                await asyncio.sleep(0.2)

    # -- registration (service/registration.py calls it) ---------------------------------

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """An agent calls home: check its one-time token and its instance; answer its secret."""
        host_id = str(body.get("host_id", ""))
        token = str(body.get("bootstrap_token", ""))
        boot = self._bootstraps.get(host_id)
        given = hashlib.sha256(token.encode()).digest()
        if boot is None or not hmac.compare_digest(given, boot.token_hash):
            raise RegistrationError(403, "unknown host or wrong bootstrap token")
        if boot.used:
            raise RegistrationError(403, "this bootstrap token was used already")
        boot.used = True  # one try, whatever follows
        if time.time() > boot.expires:
            raise RegistrationError(403, "this bootstrap token expired")
        instance_id = str(body.get("instance_id", ""))
        if boot.instance_id and instance_id != boot.instance_id:
            raise RegistrationError(403, f"host {host_id} was not launched as {instance_id}")
        try:
            found = await self.call("describe_instances", InstanceIds=[instance_id])
            instance = found["Reservations"][0]["Instances"][0]
        except (HostError, IndexError):
            raise RegistrationError(403, f"no instance {instance_id}") from None
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if tags.get(TAG + "hub") != self.hub_name or tags.get(TAG + "host-id") != host_id:
            raise RegistrationError(403, f"instance {instance_id} was not launched by this hub")
        if instance["State"]["Name"] != "running":
            raise RegistrationError(403, f"instance {instance_id} is {instance['State']['Name']}")
        address = str(body.get("address", ""))
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            raise RegistrationError(400, f"bad address {address!r}") from None
        if not loopback and address != instance.get("PrivateIpAddress"):
            raise RegistrationError(403, f"{address} is not the address of {instance_id}")
        try:  # pinned: the hub reaches this agent only when it presents this certificate
            fingerprint = certificate_fingerprint(str(body.get("certificate") or ""))
        except ValueError as e:
            raise RegistrationError(400, f"certificate (the agent's, PEM): {e}") from None
        disk = str(body.get("disk") or self.agent_disk)
        await self.call(
            "create_tags",
            Resources=[instance_id],
            Tags=[
                {"Key": TAG + "address", "Value": address},
                {"Key": TAG + "disk", "Value": disk},
                {"Key": TAG + "tls-sha256", "Value": fingerprint},
            ],
        )
        zone = instance.get("Placement", {}).get("AvailabilityZone", "")
        if not boot.registered.done():
            boot.registered.set_result(
                {"address": address, "disk": disk, "zone": zone, "fingerprint": fingerprint}
            )
        return {"secret": self.host_secret(host_id), "notify_url": self.notify_url}

    # -- finding hosts again -------------------------------------------------------------

    def _host_from(self, instance: dict[str, Any]) -> Host | None:
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        host_id, address = tags.get(TAG + "host-id"), tags.get(TAG + "address")
        if not host_id or not address or TAG + "released" in tags:
            return None  # not registered (yet), or released and left to AWS to end
        user, server = tags.get(TAG + "user", ""), tags.get(TAG + "server", "")
        launched = instance.get("LaunchTime")
        return Host(
            id=host_id,
            address=address,
            agent_url=f"https://{address}:{self.agent_port}",
            agent_token=self.host_secret(host_id),
            agent_fingerprint=tags.get(TAG + "tls-sha256", ""),
            instance_type=tags.get(TAG + "profile", ""),
            # InstanceLifecycle is only there for spot: the describe filter cannot say
            # "on-demand", so it is read here
            market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
            disk=tags.get(TAG + "disk", self.agent_disk),
            meta={
                "provider": self.name,
                "created": launched.timestamp() if hasattr(launched, "timestamp") else 0,
                "owner": f"{user}/{server}" if user else "",
                "instance_id": instance["InstanceId"],
                "ec2_type": instance.get("InstanceType", ""),
                "zone": instance.get("Placement", {}).get("AvailabilityZone", ""),
            },
        )

    async def _describe(self, *filters: dict[str, Any]) -> list[dict[str, Any]]:
        found = await self.call(
            "describe_instances",
            Filters=[
                {"Name": f"tag:{TAG}hub", "Values": [self.hub_name]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
                *filters,
            ],
        )
        return [i for r in found["Reservations"] for i in r["Instances"]]

    async def get(self, host_id: str) -> Host | None:
        for instance in await self._describe({"Name": f"tag:{TAG}host-id", "Values": [host_id]}):
            host = self._host_from(instance)
            if host is not None:
                return host
        return None

    async def list_hosts(self) -> list[Host]:
        hosts = [self._host_from(i) for i in await self._describe()]
        return [h for h in hosts if h is not None]

    async def release(self, host: Host) -> None:
        client = self.agent(host)
        state = self.watcher.state(host.id)
        notice = state.notice if state is not None else None
        self.forget(host)
        if notice is None:
            try:
                notice = await client.notice(quick=True)
            except AgentError:
                notice = None
        instance_id = host.meta.get("instance_id", "")
        if notice is not None and not notice.get("rebalance"):
            # AWS ends it at the deadline (and does not bill a first hour it interrupts):
            # only its processes go now
            self.note_interrupted(host.meta.get("ec2_type", ""), host.meta.get("zone", ""))
            if instance_id:  # no longer ours: a restarted hub must not take it for an orphan
                await self.call(
                    "create_tags",
                    Resources=[instance_id],
                    Tags=[{"Key": TAG + "released", "Value": "interrupted"}],
                )
            try:
                await client.shutdown(quick=True)
            except AgentError as e:
                self.log.info("agent of %s did not take the shutdown: %s", host.id, e)
            self.log.info("left interrupted host %s (%s) to AWS", host.id, instance_id)
            return
        if instance_id:
            await self._terminate(instance_id)
        self.log.info("released ec2 host %s (%s)", host.id, instance_id)

    async def _terminate(self, instance_id: str) -> None:
        try:
            await self.call("terminate_instances", InstanceIds=[instance_id])
        except HostError as e:
            self.log.error("could not terminate %s: %s", instance_id, e)


class FISReclaim:
    """`jupyterhub-migrate reclaim HOST` on ec2: an AWS Fault Injection Service experiment
    (`aws:ec2:send-spot-instance-interruptions`) on the host's instance, as AWS recommends
    for testing interruptions. AWS gives at least 2 minutes of notice; the notice the hub
    gets is AWS's own (metadata, EventBridge), so this only returns the expected one."""

    def __init__(self, provider: EC2HostProvider):
        self.provider = provider

    async def reclaim(self, host: Host, notice_seconds: float) -> dict[str, Any]:
        p = self.provider
        instance_id = host.meta.get("instance_id", "")
        found = await p.call("describe_instances", InstanceIds=[instance_id])
        owner = found["Reservations"][0]["OwnerId"]
        region = p.ec2.meta.region_name
        minutes = max(2, int(-(-notice_seconds // 60)))  # FIS: whole minutes, at least 2
        fis = boto3.client("fis", region_name=region, endpoint_url=p.endpoint_url or None)
        template = await asyncio.to_thread(
            fis.create_experiment_template,
            clientToken=secrets.token_hex(16),
            description=f"jupyterhub-migrate reclaim {host.id}",
            roleArn=p.fis_role_arn,
            stopConditions=[{"source": "none"}],
            targets={
                "instance": {
                    "resourceType": "aws:ec2:spot-instance",
                    "resourceArns": [f"arn:aws:ec2:{region}:{owner}:instance/{instance_id}"],
                    "selectionMode": "ALL",
                }
            },
            actions={
                "interrupt": {
                    "actionId": "aws:ec2:send-spot-instance-interruptions",
                    "parameters": {"durationBeforeInterruption": f"PT{minutes}M"},
                    "targets": {"SpotInstances": "instance"},
                }
            },
            tags={TAG + "hub": p.hub_name},
        )
        experiment = await asyncio.to_thread(
            fis.start_experiment,
            clientToken=secrets.token_hex(16),
            experimentTemplateId=template["experimentTemplate"]["id"],
        )
        deadline = time.time() + minutes * 60
        p.log.warning("FIS experiment %s interrupts %s", experiment["experiment"]["id"], host.id)
        return {
            "deadline": deadline,
            "host_id": host.id,
            "experiment": experiment["experiment"]["id"],
        }
