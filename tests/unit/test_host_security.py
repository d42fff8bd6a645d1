"""Pure builders of an EC2 host's security: unix names of hub users (agent/users.py), the
user data's metadata firewall rule (hosts/ec2.py) and how the machine simulator makes it
an instance's own (ec2sim/userdata.py)."""

from __future__ import annotations

import shlex

import pytest
import yaml

from migrating_spawner.agent import users
from migrating_spawner.agent.users import UID_BASE, UID_SPAN, UserError, stable_id, unix_name
from migrating_spawner.ec2sim.userdata import NEVER, Instance, UserDataError
from migrating_spawner.hosts.ec2 import METADATA_FIREWALL, METADATA_FIREWALL_V6, EC2HostProvider


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


def test_a_users_uid_is_the_same_number_on_every_host():
    ids = {name: stable_id(unix_name(name)) for name in ("alice", "bob", "Alice", "a" * 60)}
    assert len(set(ids.values())) == 4
    for uid in ids.values():
        assert UID_BASE <= uid < UID_BASE + UID_SPAN < 2**31
    # nothing of the host goes into it: the name alone
    assert stable_id(unix_name("alice")) == ids["alice"]


def test_a_uid_another_name_holds_on_this_host_gives_way_to_the_next_free_one(monkeypatch):
    name = unix_name("alice")
    first = stable_id(name)
    taken_uids, taken_gids = {first}, {first + 1}

    def getpwuid(uid):
        if uid in taken_uids:
            return ("someone-else", uid)
        raise KeyError(uid)

    def getgrgid(gid):
        if gid in taken_gids:
            return ("some-group", gid)
        raise KeyError(gid)

    monkeypatch.setattr(users.pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(users.grp, "getgrgid", getgrgid)
    assert users.free_id(name) == first + 2
    taken_uids.update(range(first, first + users.UID_PROBES))
    with pytest.raises(UserError, match="no free uid"):
        users.free_id(name)


def test_the_user_data_firewalls_the_metadata_service_before_the_agent_starts():
    provider = EC2HostProvider(hub_api_url="http://hub:8081/services/migrate/api/")
    config = yaml.safe_load(provider.render_user_data("ec2-1", "token"))
    runcmd = config["runcmd"]
    start = runcmd.index("systemctl enable --now jupyterhub-migrating-agent")
    assert METADATA_FIREWALL in runcmd and METADATA_FIREWALL_V6 in runcmd
    assert runcmd.index(METADATA_FIREWALL) < start
    assert runcmd.index(METADATA_FIREWALL_V6) < start
    v6 = shlex.split(METADATA_FIREWALL_V6)
    assert v6[:3] == ["ip6tables", "-I", "OUTPUT"]
    assert v6[v6.index("-d") + 1] == "fd00:ec2::254/128" and v6[v6.index("--dport") + 1] == "80"
    assert " -m owner ! --uid-owner 0 -j REJECT" in METADATA_FIREWALL_V6
    # the simulator's instances have no IPv6 metadata address: it skips that rule
    assert NEVER.match(METADATA_FIREWALL_V6)
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
