"""Prometheus metrics of moves, notices, hosts and checkpoints, on the hub's /hub/metrics.

JupyterHub serves prometheus_client's default registry; these join it. Counters and
histograms are fed as things happen; the host and suspended-server gauges are read from
the controller when Prometheus scrapes (a collector), so they are never stale.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "jupyterhub_migrating_"

# a move holds requests for well under a second usually, seconds at a short notice
HOLD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

MOVES = Counter(
    PREFIX + "moves_total",
    "Moves of user servers, by reason (reclaim notice, request, host lost, ...) and outcome",
    ["reason", "outcome"],
)
MOVE_HOLD = Histogram(
    PREFIX + "move_hold_seconds",
    "Seconds a move held the server's requests (the cut-over)",
    buckets=HOLD_BUCKETS,
)
MOVE_DURATION = Histogram(
    PREFIX + "move_duration_seconds",
    "Seconds from a move's start to the server serving on its new host",
    buckets=DURATION_BUCKETS,
)
NOTICES = Counter(
    PREFIX + "notices_total",
    "Reclaim notices taken in, by how they came (push from the agent, poll, or the "
    "notice's own source such as eventbridge)",
    ["source"],
)
CHECKPOINT_BYTES = Counter(
    PREFIX + "checkpoint_bytes_total",
    "Bytes sent to the checkpoint store by home checkpoints (only changed chunks count)",
)
LOST_VARIABLES = Counter(
    PREFIX + "lost_variables_total",
    "Kernel variables a move or resume could not bring back",
)


def count_move(reason: str, outcome: str, timings: dict[str, float]) -> None:
    MOVES.labels(reason=reason, outcome=outcome).inc()
    if outcome == "ok":
        if timings.get("hold") is not None:
            MOVE_HOLD.observe(timings["hold"])
        if timings.get("total") is not None:
            MOVE_DURATION.observe(timings["total"])


class StateCollector(Collector):
    """Gauges read at scrape time: hosts held (by provider, market and instance type)
    and suspended servers."""

    def __init__(
        self,
        hosts: Callable[[], Iterable[tuple[str, str, str]]],
        suspended: Callable[[], int],
    ):
        self.hosts = hosts
        self.suspended = suspended

    def describe(self) -> Iterable[Any]:
        # no metrics at registration time: the callables need a running hub
        return []

    def collect(self) -> Iterable[Any]:
        hosts = GaugeMetricFamily(
            PREFIX + "hosts",
            "Hosts the hub's servers hold, by provider, market and instance type",
            labels=["provider", "market", "instance_type"],
        )
        try:
            tally = Tally(self.hosts())
            count = self.suspended()
        except Exception:  # a scrape must not fail the hub's metrics page
            return
        for (provider, market, instance_type), n in sorted(tally.items()):
            hosts.add_metric([provider, market, instance_type], n)
        yield hosts
        suspended = GaugeMetricFamily(
            PREFIX + "suspended_servers",
            "Servers stopped with a checkpoint to resume from (no host held)",
        )
        suspended.add_metric([], count)
        yield suspended


_collector: StateCollector | None = None


def watch(
    hosts: Callable[[], Iterable[tuple[str, str, str]]], suspended: Callable[[], int]
) -> None:
    """Register the gauges' collector once per process (a later call re-targets it)."""
    global _collector
    if _collector is None:
        _collector = StateCollector(hosts, suspended)
        REGISTRY.register(_collector)
    else:
        _collector.hosts, _collector.suspended = hosts, suspended
