"""Monthly traffic: the period, what each Tunnel carried in it, and what a namespace used.

The accounting, and why it survives restarts:

- The period is the calendar month in UTC (`period_start`). A provider bills by month, and a
  fixed calendar is the same for every tenant and every operator replica.
- Each Tunnel's status.traffic carries `periodStart` and `periodBytes`, beside the totals
  bytesIn and bytesOut. The traffic reporter, which already turns the agents' counters into
  totals (domain/traffic_report.py), takes the growth of bytesIn + bytesOut since its last
  reading as `delta` and calls `advance_period_bytes`: bytes go into the period in which they
  are read, and a new month starts from zero. Both fields are written with the totals, in
  the same status write, so they never disagree after a restart: a restarted operator reads
  them back, as it reads the totals back.
- A Tunnel that is deleted takes its status with it. Its bytes this period move into its
  TunnelQuotas' status: `deletedBytes` grows by them and `deletingTunnels` records the
  Tunnel's UID, in one status write guarded by resourceVersion, before the finalizer is
  removed. If the operator dies between the two, the UID tells the retry that the bytes are
  already counted (`DeletedTraffic.record` is idempotent). While the Tunnel is still listed
  (finalizer not yet removed), `namespace_traffic` skips its own periodBytes: counted once.
  An entry leaves `deletingTunnels` once its Tunnel is gone (`DeletedTraffic.forget_gone`).
- status.used.traffic = the live Tunnels' periodBytes of the current period +
  deletedBytes of the current period (`namespace_traffic`). A new period starts
  deletedBytes from zero.

Precision: bytes reach the count as frps reports them (a tcp connection's bytes when it
closes, an http connection's when its pooled connection closes, udp as it goes), then at
the traffic interval, so the count runs behind by up to one traffic interval plus the
longest open connection. Bytes of a connection that spans the first instant of a month go
into the month in which they are read.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tunnelop.api.v1alpha1.tunnelquota import MAX_DELETING_TUNNELS

TRAFFIC_WARNING_PERCENT = 80
TrafficLevel = Literal["ok", "warning", "exceeded"]


def _utc(moment: datetime.datetime) -> datetime.datetime:
    """A moment in UTC; a naive one is taken as UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def period_start(now: datetime.datetime) -> datetime.datetime:
    """The first instant of `now`'s calendar month, in UTC."""
    moment = _utc(now)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_period_start(now: datetime.datetime) -> datetime.datetime:
    """The first instant of the next calendar month, in UTC: when a suspension for traffic
    ends by itself."""
    start = period_start(now)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def rfc3339(moment: datetime.datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime.datetime | None:
    """A status timestamp (RFC 3339 text or a datetime) in UTC; None when absent or unreadable
    (an unreadable one starts a new period rather than failing the report)."""
    if isinstance(value, datetime.datetime):
        return _utc(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return _utc(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def advance_period_bytes(
    previous_period_start: datetime.datetime | None,
    previous_period_bytes: int | None,
    delta: int,
    now: datetime.datetime,
) -> tuple[datetime.datetime, int]:
    """A Tunnel's (periodStart, periodBytes) after `delta` more bytes (in + out) were read at
    `now`. The bytes go into now's period; a new period starts from zero, and so does a
    Tunnel reported before these fields existed."""
    if delta < 0:
        raise ValueError(f"delta must not be negative, got {delta}")
    current = period_start(now)
    if previous_period_start is None or period_start(previous_period_start) != current:
        return current, delta
    return current, (previous_period_bytes or 0) + delta


def tunnel_period_bytes(traffic: Mapping[str, Any] | None, period: datetime.datetime) -> int:
    """The bytes a Tunnel's status.traffic (camelCase dict) counts in `period`: zero when it
    was last reported in an earlier period."""
    traffic = traffic or {}
    start = parse_time(traffic.get("periodStart"))
    if start is None or start != period_start(period):
        return 0
    value = traffic.get("periodBytes")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class DeletedTraffic:
    """The bytes of deleted Tunnels a TunnelQuota's status holds for one period."""

    period_start: datetime.datetime | None = None
    bytes: int = 0
    tunnels: frozenset[str] = field(default_factory=frozenset)  # UIDs already counted

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> DeletedTraffic:
        status = status or {}
        count = status.get("deletedBytes")
        return cls(
            period_start=parse_time(status.get("periodStart")),
            bytes=count if isinstance(count, int) and count > 0 else 0,
            tunnels=frozenset(u for u in status.get("deletingTunnels") or [] if isinstance(u, str)),
        )

    def for_period(self, now: datetime.datetime) -> DeletedTraffic:
        """The ledger for now's period: a new period starts the bytes from zero (the UIDs
        stay until their Tunnels are gone)."""
        current = period_start(now)
        if self.period_start == current:
            return self
        return replace(self, period_start=current, bytes=0)

    def record(self, uid: str, period_bytes: int, now: datetime.datetime) -> DeletedTraffic | None:
        """The ledger once the deleted Tunnel `uid` carried `period_bytes` this period (from
        `tunnel_period_bytes`, with any bytes read since its last status write added).
        Recording the same UID again changes nothing. None when the ledger is full: the
        deletion waits until entries of gone Tunnels are forgotten."""
        ledger = self.for_period(now)
        if uid in ledger.tunnels:
            return ledger
        if len(ledger.tunnels) >= MAX_DELETING_TUNNELS:
            return None
        return replace(
            ledger, bytes=ledger.bytes + max(0, period_bytes), tunnels=ledger.tunnels | {uid}
        )

    def forget_gone(self, existing_uids: Iterable[str]) -> DeletedTraffic:
        """The ledger without the UIDs of Tunnels that no longer exist: their bytes stay."""
        return replace(self, tunnels=self.tunnels & frozenset(existing_uids))

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "deletedBytes": self.bytes,
            "deletingTunnels": sorted(self.tunnels),
        }
        if self.period_start is not None:
            status["periodStart"] = rfc3339(self.period_start)
        return status


def namespace_traffic(
    tunnel_statuses: Iterable[tuple[str, Mapping[str, Any] | None]],
    deleted: DeletedTraffic,
    period: datetime.datetime,
) -> int:
    """Bytes a namespace carried in `period`: its Tunnels' periodBytes, from (uid,
    status.traffic) pairs, plus the bytes of Tunnels deleted in the period. A Tunnel whose
    deletion is already recorded counts through the ledger only."""
    live = sum(
        tunnel_period_bytes(traffic, period)
        for uid, traffic in tunnel_statuses
        if uid not in deleted.tunnels
    )
    gone = deleted.bytes if deleted.period_start == period_start(period) else 0
    return live + gone


def traffic_level(used: int, limit: int | None) -> TrafficLevel:
    """ok, warning (at 80% of the limit) or exceeded (at 100%; a limit of 0 allows none)."""
    if limit is None:
        return "ok"
    if used >= limit:
        return "exceeded"
    if used * 100 >= limit * TRAFFIC_WARNING_PERCENT:
        return "warning"
    return "ok"
