"""The quota and leaderboard gauges (names and help from domain/leaderboard.METRICS), in
the operator's registry. Cardinality is bounded: one series per TunnelQuota (objects the
provider creates), and the leaderboard's tunnels and namespaces only for the top
`LEADERBOARD_SIZE` of each."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from prometheus_client import Gauge

from tunnelop.api.v1alpha1 import TunnelQuota, bits_per_second, byte_count
from tunnelop.domain.leaderboard import METRICS
from tunnelop.domain.quota import Hold, Limits, Usage
from tunnelop.domain.quota.period import period_start
from tunnelop.platform import metrics

LEADERBOARD_SIZE = 100
SUSPENSION_REASONS = ("NamespaceSuspended", "TrafficQuotaExceeded")

GAUGES: dict[str, Gauge] = {
    m.name: Gauge(m.name, m.help, list(m.labels), registry=metrics.REGISTRY) for m in METRICS
}
LABELS: dict[str, tuple[str, ...]] = {m.name: m.labels for m in METRICS}
_QUOTA_GAUGES = [name for name in GAUGES if name.startswith("tunnelop_quota_")]


def _set(name: str, value: float | None, **labels: str) -> None:
    gauge = GAUGES[name]
    if value is None:
        try:
            gauge.remove(*(labels[label] for label in LABELS[name]))
        except KeyError:
            pass
    else:
        gauge.labels(**labels).set(value)


def export_quota(quota: TunnelQuota, usage: Usage, limits: Limits, hold: Hold | None) -> None:
    """One quota's figures: used beside hard, the traffic ratio, waiting and suspension."""
    labels = {"namespace": quota.metadata.namespace or "", "quota": quota.metadata.name or ""}
    hard = quota.spec.hard
    monthly = byte_count(hard.monthly_traffic) if hard.monthly_traffic is not None else None
    total = bits_per_second(hard.total_bandwidth) if hard.total_bandwidth is not None else None
    _set("tunnelop_quota_used_tunnels", usage.tunnels, **labels)
    _set("tunnelop_quota_hard_tunnels", hard.tunnels, **labels)
    _set("tunnelop_quota_waiting_tunnels", usage.waiting, **labels)
    _set("tunnelop_quota_used_bandwidth_bits_per_second", usage.bandwidth, **labels)
    _set("tunnelop_quota_hard_bandwidth_bits_per_second", total, **labels)
    _set("tunnelop_quota_used_traffic_bytes", usage.traffic, **labels)
    _set("tunnelop_quota_hard_traffic_bytes", monthly, **labels)
    ratio = None if monthly is None else (usage.traffic / monthly if monthly else 1.0)
    _set("tunnelop_quota_traffic_ratio", ratio, **labels)
    for reason in SUSPENSION_REASONS:
        stopped = 1 if hold is not None and hold.reason == reason else None
        _set("tunnelop_quota_suspended", stopped, reason=reason, **labels)


def forget_quota(namespace: str, name: str) -> None:
    for gauge_name in _QUOTA_GAUGES:
        gauge = GAUGES[gauge_name]
        for labels in list(_series(gauge)):
            if labels.get("namespace") == namespace and labels.get("quota") == name:
                gauge.remove(*(labels[label] for label in LABELS[gauge_name]))


def _series(gauge: Gauge) -> Iterable[dict[str, str]]:
    for family in gauge.collect():
        for sample in family.samples:
            yield sample.labels


def export_leaderboard(
    tunnels: Iterable[tuple[str, str, int]],
    namespaces: Iterable[tuple[str, int]],
    now: datetime.datetime,
) -> None:
    """The period's heaviest tunnels (namespace, name, bytes) and namespaces (namespace,
    bytes, deleted Tunnels included), the top of each only."""
    top = sorted(tunnels, key=lambda row: (-row[2], row[0], row[1]))[:LEADERBOARD_SIZE]
    per_tunnel = GAUGES["tunnelop_tunnel_period_bytes"]
    per_tunnel.clear()
    for namespace, name, count in top:
        per_tunnel.labels(namespace=namespace, tunnel=name).set(count)
    ranked = sorted(namespaces, key=lambda row: (-row[1], row[0]))[:LEADERBOARD_SIZE]
    per_namespace = GAUGES["tunnelop_namespace_period_bytes"]
    per_namespace.clear()
    for namespace, count in ranked:
        per_namespace.labels(namespace=namespace).set(count)
    GAUGES["tunnelop_period_start_timestamp_seconds"].set(period_start(now).timestamp())
