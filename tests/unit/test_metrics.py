"""The Prometheus metrics (migrating_spawner/metrics.py) and the Grafana dashboard that plots
them (examples/grafana/): without a hub."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from migrating_spawner import metrics

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "examples" / "grafana" / "jupyterhub-migrating.json"
)

NAMES = {
    "jupyterhub_migrating_moves_total",
    "jupyterhub_migrating_move_hold_seconds",
    "jupyterhub_migrating_move_duration_seconds",
    "jupyterhub_migrating_notices_total",
    "jupyterhub_migrating_hosts",
    "jupyterhub_migrating_suspended_servers",
    "jupyterhub_migrating_checkpoint_bytes_total",
    "jupyterhub_migrating_lost_variables_total",
}


def scrape(registry) -> dict:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_gauges_are_read_when_scraped():
    registry = CollectorRegistry()
    hosts = [("local", "spot", "small"), ("local", "spot", "small"), ("ec2", "on-demand", "m5")]
    suspended = [3]
    registry.register(metrics.StateCollector(lambda: hosts, lambda: suspended[0]))
    got = scrape(registry)
    small = (("instance_type", "small"), ("market", "spot"), ("provider", "local"))
    assert got[("jupyterhub_migrating_hosts", small)] == 2
    assert got[("jupyterhub_migrating_suspended_servers", ())] == 3
    hosts.pop()
    suspended[0] = 0
    got = scrape(registry)
    assert got[("jupyterhub_migrating_suspended_servers", ())] == 0
    assert not [k for k in got if ("provider", "ec2") in k[1]]


def test_a_move_counts_and_observes():
    before = scrape(metrics.REGISTRY)
    metrics.count_move("reclaim notice", "ok", {"hold": 0.3, "total": 7.0})
    metrics.count_move("reclaim notice", "failed", {})
    after = scrape(metrics.REGISTRY)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    moves = "jupyterhub_migrating_moves_total"
    assert delta(moves, reason="reclaim notice", outcome="ok") == 1
    assert delta(moves, reason="reclaim notice", outcome="failed") == 1
    assert delta("jupyterhub_migrating_move_hold_seconds_count") == 1  # failed: not observed
    assert delta("jupyterhub_migrating_move_hold_seconds_bucket", le="0.5") == 1
    assert delta("jupyterhub_migrating_move_hold_seconds_bucket", le="0.25") == 0
    assert delta("jupyterhub_migrating_move_duration_seconds_sum") == 7.0


def test_the_dashboard_plots_every_metric_and_no_other():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"jupyterhub_migrating_\w+", expr)
    }
    assert used == NAMES
    # every panel reads the dashboard's data source variable
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${datasource}"}
