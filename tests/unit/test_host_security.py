"""Pure builders of an EC2 host's security: unix names of hub users (agent/users.py), the
user data's metadata firewall rule (hosts/ec2.py) and how the machine simulator makes it
an instance's own (ec2sim/userdata.py)."""

from __future__ import annotations

import shlex

import pytest
import yaml

from migrating_spawner.agent.users import UserError, unix_name
from migrating_spawner.ec2sim.userdata import Instance, UserDataError
from migrating_spawner.hosts.ec2 import METADATA_FIREWALL, EC2HostProvider


@pytest.mark.parametrize(
    "hub_name, expected",
    [
        ("alice", "jupyter-alice"),
        ("root", "jupyter-root"),
        ("bob_2", "jupyter-bob_2"),
    ],
)
def test_valid_hub_names_keep_their_name_behind_the_prefix(hub_name, expected):
    assert unix_name(hub_name) == expected


def test_other_hub_names_are_cleaned_and_told_apart_by_a_hash():
    names = [unix_name(n) for n in ("Alice", "alice@example.org", "alice.example.org", "a" * 60)]
    assert len(set(names)) == 4
    for name in names:
        assert len(name) <= 32 and name.startswith("jupyter-")
        assert all(c.islower() or c.isdigit() or c in "-_" for c in name), name
    assert names[1].startswith("jupyter-alice-example-org"[:23])
    assert unix_name("alice@example.org") == names[1]  # the same on every host
    with pytest.raises(UserError):
        unix_name("")


def test_the_user_data_firewalls_the_metadata_service_before_the_agent_starts():
    provider = EC2HostProvider(hub_api_url="http://hub:8081/services/migrate/api/")
    config = yaml.safe_load(provider.render_user_data("ec2-1", "token"))
    runcmd = config["runcmd"]
    assert METADATA_FIREWALL in runcmd
    assert runcmd.index(METADATA_FIREWALL) < runcmd.index(
        "systemctl enable --now jupyterhub-migrating-agent"
    )
    words = shlex.split(METADATA_FIREWALL)
    assert words[:3] == ["iptables", "-I", "OUTPUT"]
    assert "169.254.169.254/32" in words and "--dport" in words
    assert " -m owner ! --uid-owner 0 -j REJECT" in METADATA_FIREWALL


def test_the_simulator_makes_the_rule_its_instances_own(tmp_path):
    machine = Instance(tmp_path, {}, firewall=("127.0.0.7", 8169))
    rule = machine.metadata_rule(shlex.split(METADATA_FIREWALL))
    assert rule[:3] == ["iptables", "-I", "OUTPUT"]
    assert rule[rule.index("-d") + 1] == "127.0.0.7/32"
    assert rule[rule.index("--dport") + 1] == "8169"
    # the machine is shared: nothing but the metadata service's rule is run
    with pytest.raises(UserDataError):
        machine.metadata_rule(shlex.split("iptables -I OUTPUT -d 10.0.0.1 -j DROP"))
