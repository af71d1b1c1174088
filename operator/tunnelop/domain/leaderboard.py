"""The traffic leaderboard: the tunnels (or namespaces) that carried the most bytes this
period, with their share of the total. Providers publish it to deter bulk transfers on free
tiers. Pure: `tunnelop top` reads the Tunnels and prints what `render` returns.

It ranks status.traffic.periodBytes of the current calendar month (UTC); a Tunnel last
reported in an earlier month counts zero. Deleted Tunnels are not listed (their bytes are
in their TunnelQuota's status.deletedBytes). Without the CLI:

    kubectl get tun -A --sort-by=.status.traffic.periodBytes \
      -o custom-columns=NAMESPACE:.metadata.namespace,TUNNEL:.metadata.name,\
    BYTES:.status.traffic.periodBytes,SINCE:.status.traffic.periodStart

(ascending: the largest last; a Tunnel still showing last month's periodStart has not been
reported this month.)
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tunnelop.domain.quota.period import period_start, rfc3339, tunnel_period_bytes


@dataclass(frozen=True)
class Entry:
    """One row: a tunnel (name set) or a namespace (name None)."""

    namespace: str
    name: str | None
    bytes: int
    share: float  # of the period's total, 0 to 1
    tunnels: int = 1


@dataclass(frozen=True)
class Leaderboard:
    period_start: datetime.datetime
    total: int  # bytes of every tunnel counted, listed or not
    counted: int  # tunnels with traffic this period
    entries: tuple[Entry, ...]
    by_namespace: bool = False


def _traffic(tunnel: Mapping[str, Any] | BaseModel) -> tuple[str, str, Mapping[str, Any]]:
    if isinstance(tunnel, BaseModel):
        tunnel = tunnel.model_dump(mode="json", by_alias=True)
    meta = tunnel.get("metadata") or {}
    traffic = (tunnel.get("status") or {}).get("traffic") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), traffic


def _counted(
    tunnels: Iterable[Mapping[str, Any] | BaseModel], now: datetime.datetime
) -> list[tuple[str, str, int]]:
    found = []
    for tunnel in tunnels:
        namespace, name, traffic = _traffic(tunnel)
        count = tunnel_period_bytes(traffic, now)
        if count > 0:
            found.append((namespace, name, count))
    return found


def top_tunnels(
    tunnels: Iterable[Mapping[str, Any] | BaseModel], now: datetime.datetime, limit: int = 10
) -> Leaderboard:
    """The `limit` tunnels (Tunnel dicts or models) with the most bytes this period; ties in
    name order."""
    counted = _counted(tunnels, now)
    total = sum(count for _, _, count in counted)
    ranked = sorted(counted, key=lambda row: (-row[2], row[0], row[1]))[: max(0, limit)]
    entries = tuple(Entry(ns, name, count, count / total) for ns, name, count in ranked)
    return Leaderboard(period_start(now), total, len(counted), entries)


def top_namespaces(
    tunnels: Iterable[Mapping[str, Any] | BaseModel], now: datetime.datetime, limit: int = 10
) -> Leaderboard:
    """The `limit` namespaces whose tunnels carried the most bytes this period."""
    counted = _counted(tunnels, now)
    total = sum(count for _, _, count in counted)
    sums: dict[str, list[int]] = {}
    for namespace, _, count in counted:
        row = sums.setdefault(namespace, [0, 0])
        row[0] += count
        row[1] += 1
    ranked = sorted(sums.items(), key=lambda item: (-item[1][0], item[0]))[: max(0, limit)]
    entries = tuple(
        Entry(namespace, None, count, count / total, tunnels=n) for namespace, (count, n) in ranked
    )
    return Leaderboard(period_start(now), total, len(counted), entries, by_namespace=True)


_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(amount: int) -> str:
    """1536 -> "1.5 KiB"; a figure for people, not for the API."""
    value, unit = float(amount), 0
    while value >= 1024 and unit < len(_IEC) - 1:
        value /= 1024
        unit += 1
    return f"{amount} B" if unit == 0 else f"{value:.1f} {_IEC[unit]}"


def render(board: Leaderboard) -> str:
    """A plain-text table, one line per entry, under a line saying what was counted."""
    what = "namespaces" if board.by_namespace else "tunnels"
    header = (
        f"Traffic since {rfc3339(board.period_start)} (calendar month, UTC): "
        f"{human_bytes(board.total)} in {board.counted} tunnels"
    )
    if not board.entries:
        return f"{header}\nNo {what} carried traffic this period.\n"
    columns = ["RANK", "NAMESPACE"]
    columns += ["TUNNELS"] if board.by_namespace else ["TUNNEL"]
    columns += ["TRAFFIC", "SHARE"]
    rows = [
        [
            str(rank),
            entry.namespace,
            str(entry.tunnels) if board.by_namespace else str(entry.name),
            human_bytes(entry.bytes),
            f"{entry.share * 100:.1f}%",
        ]
        for rank, entry in enumerate(board.entries, start=1)
    ]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    ]
    return header + "\n" + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MetricName:
    """A Prometheus metric the operator is to export for dashboards and alerts."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


# Gauges, not counters: a period's figures start from zero each month.
METRICS: tuple[MetricName, ...] = (
    MetricName(
        "tunnelop_tunnel_period_bytes",
        "gauge",
        ("namespace", "tunnel"),
        "Bytes in and out of the tunnel this period (status.traffic.periodBytes).",
    ),
    MetricName(
        "tunnelop_namespace_period_bytes",
        "gauge",
        ("namespace",),
        "Bytes in and out of the namespace's tunnels this period, deleted ones included.",
    ),
    MetricName(
        "tunnelop_period_start_timestamp_seconds",
        "gauge",
        (),
        "Start of the current traffic period (calendar month, UTC), Unix time.",
    ),
    MetricName(
        "tunnelop_quota_used_tunnels",
        "gauge",
        ("namespace", "quota"),
        "Tunnels scheduled in the namespace (status.used.tunnels).",
    ),
    MetricName(
        "tunnelop_quota_hard_tunnels",
        "gauge",
        ("namespace", "quota"),
        "The quota's hard.tunnels (absent when unset).",
    ),
    MetricName(
        "tunnelop_quota_waiting_tunnels",
        "gauge",
        ("namespace", "quota"),
        "Tunnels the quota keeps waiting: for room (QuotaExceeded) or while the namespace is "
        "held (NamespaceSuspended, TrafficQuotaExceeded).",
    ),
    MetricName(
        "tunnelop_quota_used_bandwidth_bits_per_second",
        "gauge",
        ("namespace", "quota"),
        "Sum of the scheduled tunnels' bandwidth limits.",
    ),
    MetricName(
        "tunnelop_quota_hard_bandwidth_bits_per_second",
        "gauge",
        ("namespace", "quota"),
        "The quota's hard.totalBandwidth (absent when unset).",
    ),
    MetricName(
        "tunnelop_quota_used_traffic_bytes",
        "gauge",
        ("namespace", "quota"),
        "Bytes this period, exact (status.used.traffic is rounded).",
    ),
    MetricName(
        "tunnelop_quota_hard_traffic_bytes",
        "gauge",
        ("namespace", "quota"),
        "The quota's hard.monthlyTraffic (absent when unset).",
    ),
    MetricName(
        "tunnelop_quota_traffic_ratio",
        "gauge",
        ("namespace", "quota"),
        "used / hard monthly traffic: alert at 0.8 (TrafficQuotaWarning), stopped at 1.",
    ),
    MetricName(
        "tunnelop_quota_suspended",
        "gauge",
        ("namespace", "quota", "reason"),
        "1 while the namespace's tunnels are stopped (NamespaceSuspended or TrafficQuotaExceeded).",
    ),
)
