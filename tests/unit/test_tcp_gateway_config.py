"""The TCP gateway's pure parts: the pool range, HAProxy's configuration, the CLI verbs."""

import pytest

from migrating_spawner.service.cli import parser
from migrating_spawner.singleuser.apps import cooperative_until, map_home, version_note
from migrating_spawner.tcpgateway.gateway import narrow_cidrs, parse_range
from migrating_spawner.tcpgateway.haproxy import Route, render_config


def test_port_range_is_checked():
    assert parse_range("10000-10500") == (10000, 10500)
    for bad in ("9999-10500", "10000-70000", "10500-10000", "ten-eleven"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_config_routes_unused_ports_to_maintenance_and_holds_moving_ones():
    routes = {10001: Route(10001, "127.0.0.5", 22), 10002: Route(10002, "127.0.0.6", 8787, True)}
    cfg = render_config("/s.sock", "0.0.0.0", (10000, 10002), ["10.0.0.0/8"], 60, routes, "/a")
    assert "bind 0.0.0.0:10000-10002" in cfg
    assert "tcp-request connection reject unless { src 10.0.0.0/8 }" in cfg
    for port in (10000, 10001, 10002):  # each port's own sources, before the hold
        rule = (
            f"tcp-request connection reject if {{ dst_port {port} }} !{{ src -f /a/p{port}.lst }}"
        )
        assert cfg.index(rule) < cfg.index("lua.hold")
    assert "tcp-request content lua.hold 60000" in cfg
    assert "backend p10000\n  server s 127.0.0.1:1 disabled" in cfg
    assert "backend p10001\n  server s 127.0.0.5:22\n" in cfg
    assert "backend p10002\n  server s 127.0.0.6:8787 disabled" in cfg


def test_a_ports_allowed_cidrs_lie_within_the_gateways():
    assert narrow_cidrs(["10.1.2.3/16", "10.9.0.0/16"], ["10.0.0.0/8"]) == [
        "10.1.0.0/16",
        "10.9.0.0/16",
    ]
    assert narrow_cidrs(["2001:db8::1"], ["0.0.0.0/0", "::/0"]) == ["2001:db8::1/128"]
    for bad, says in (
        (["192.168.0.0/16"], "outside the gateway's allowed networks"),
        (["10.0.0.0/7"], "outside"),
        (["::1/128"], "outside"),
        (["ten"], "not a network"),
        ([], "at least one"),
    ):
        with pytest.raises(ValueError, match=says):
            narrow_cidrs(bad, ["10.0.0.0/8"])


def test_gateway_verbs_parse_with_flags_anywhere():
    args = parser().parse_args(["gateway", "connect", "alice/gpu", "--target-port", "22", "--json"])
    assert (args.verb, args.gateway_verb, args.target, args.target_port, args.json) == (
        "gateway",
        "connect",
        "alice/gpu",
        22,
        True,
    )
    args = parser().parse_args(
        ["gateway", "connect", "alice", "--target-port", "22", "--allowed-cidrs", "10.0.0.0/8,::1"]
    )
    assert args.allowed_cidrs == "10.0.0.0/8,::1"
    args = parser().parse_args(["gateway", "disconnect", "alice", "10003"])
    assert (args.gateway_verb, args.port) == ("disconnect", 10003)


def test_app_paths_and_r_versions():
    assert map_home("/disk1/home/a/app.py", "/disk1/home/a", "/disk2/home/a") == (
        "/disk2/home/a/app.py"
    )
    assert map_home("/usr/bin/python3", "/disk1/home/a", "/disk2/home/a") == "/usr/bin/python3"
    assert version_note("4.2", "4.2") is None
    assert "R 4.2" in version_note("4.2", "4.3") and "R 4.3" in version_note("4.2", "4.3")


def test_rstudio_is_forced_early_enough_to_write_its_session_before_the_deadline():
    # a long freeze: the whole grace; then SIGUSR2 with the time left
    assert cooperative_until(100, 10, 160) == 110
    # the deadline near: SIGUSR2 3 s before it, or half way when less than 6 s are left
    assert cooperative_until(100, 10, 108) == 105
    assert cooperative_until(100, 2, 102) == 101
    assert cooperative_until(100, 2, 100) == 100
