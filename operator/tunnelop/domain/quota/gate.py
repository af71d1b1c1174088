"""The scheduling gate: the exact, race-free quota check.

Admission sees the API server's objects, which concurrent creates outrun. The gate is asked
by the operator's single-writer event loop right before it binds a Tunnel, with the
namespace's Tunnels that are bound at that moment: one answer at a time, so the bound
Tunnels never exceed hard.tunnels or hard.totalBandwidth, whatever the order of creates,
deletions and limit changes. A Tunnel it turns away stays Scheduled=False (reason
QuotaExceeded, NamespaceSuspended or TrafficQuotaExceeded) and is asked again when room
appears: a bound Tunnel of the namespace deleted or unbound, or a TunnelQuota changed.

Limits lowered below what is bound move nothing: the bound Tunnels stay, new ones wait.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from tunnelop.domain.quota.figures import rate, rounded
from tunnelop.domain.quota.limits import Limit, Limits, TunnelUse
from tunnelop.domain.quota.period import next_period_start, period_start, rfc3339
from tunnelop.domain.scheduling import TunnelKey

QUOTA_EXCEEDED = "QuotaExceeded"
NAMESPACE_SUSPENDED = "NamespaceSuspended"
TRAFFIC_QUOTA_EXCEEDED = "TrafficQuotaExceeded"


@dataclass(frozen=True)
class Hold:
    """Why every Tunnel of a namespace is stopped: reason and message for their Ready
    condition, the quota's Suspended condition and the Event."""

    reason: str  # NamespaceSuspended | TrafficQuotaExceeded
    message: str


def namespace_hold(limits: Limits, traffic_used: int, now: datetime.datetime) -> Hold | None:
    """Whether the namespace's Tunnels are stopped (the relay refuses their clients and
    visitors, keeping their ports), and why; None when they run. The kill switch comes
    first: lifting the traffic cap does not lift it."""
    if limits.suspended:
        quotas = ", ".join(f"TunnelQuota {ref}" for ref in limits.suspended_by)
        return Hold(
            NAMESPACE_SUSPENDED,
            f"The namespace is suspended by the provider (spec.suspended of {quotas}); its "
            "Tunnels keep their ports and resume when it is lifted",
        )
    monthly = limits.monthly_traffic
    if monthly is not None and traffic_used >= monthly.value:
        return Hold(
            TRAFFIC_QUOTA_EXCEEDED,
            f"{rounded(traffic_used)}/{monthly.shown} of {monthly.field} (TunnelQuota "
            f"{monthly.quota}) used since {rfc3339(period_start(now))}; the namespace's "
            f"Tunnels resume on {rfc3339(next_period_start(now))} or when the limit is raised",
        )
    return None


@dataclass(frozen=True)
class GateDecision:
    """May one more Tunnel be bound? If not, the Scheduled=False reason and message."""

    allowed: bool
    reason: str | None = None
    message: str = ""


ALLOWED = GateDecision(True)


def may_bind(
    limits: Limits,
    bound: Mapping[TunnelKey, int | None],
    candidate: TunnelUse,
    traffic_used: int,
    now: datetime.datetime,
) -> GateDecision:
    """Whether `candidate` may be bound, given the namespace's currently bound Tunnels
    (key -> effective bandwidth, bits/s, None for no limit) and its traffic this period. A
    Tunnel already bound (being moved to another relay) keeps its place."""
    if candidate.key in bound:
        return ALLOWED
    hold = namespace_hold(limits, traffic_used, now)
    if hold is not None:
        return GateDecision(False, hold.reason, hold.message)
    for check in (_protocol, _pool, _per_tunnel):
        message = check(limits, candidate)
        if message:
            return GateDecision(False, QUOTA_EXCEEDED, message)
    message = _tunnel_count(limits, bound) or _total_bandwidth(limits, bound, candidate)
    if message:
        return GateDecision(False, QUOTA_EXCEEDED, message)
    return ALLOWED


WAIT = "the tunnel is scheduled when"


def _tunnel_count(limits: Limits, bound: Mapping[TunnelKey, int | None]) -> str:
    limit = limits.tunnels
    if limit is None or len(bound) < limit.value:
        return ""
    return (
        f"{len(bound)}/{limit.value} tunnels of {limit.field} (TunnelQuota {limit.quota}) are "
        f"in use; {WAIT} one is deleted or the limit is raised"
    )


def _total_bandwidth(
    limits: Limits, bound: Mapping[TunnelKey, int | None], candidate: TunnelUse
) -> str:
    limit = limits.total_bandwidth
    if limit is None:
        return ""
    used = sum(bandwidth or 0 for bandwidth in bound.values())
    where = f"{limit.field} (TunnelQuota {limit.quota})"
    if candidate.bandwidth is None:
        return (
            f"the tunnel has no bandwidth limit, and {where} needs one; set spec.bandwidth "
            f"({rate(max(0, limit.value - used))}/{limit.shown} is free)"
        )
    if used + candidate.bandwidth <= limit.value:
        return ""
    return (
        f"{rate(used)}/{limit.shown} of {where} is in use and the tunnel needs "
        f"{rate(candidate.bandwidth)}; {WAIT} bandwidth is freed or the limit is raised"
    )


def _protocol(limits: Limits, candidate: TunnelUse) -> str:
    return _no_longer_listed(limits, limits.protocols, "protocol", candidate.protocol)


def _pool(limits: Limits, candidate: TunnelUse) -> str:
    if candidate.pool is None:
        return ""  # the scheduler keeps it to allowed_pools(limits)
    return _no_longer_listed(limits, limits.pools, "pool", candidate.pool)


def _no_longer_listed(
    limits: Limits, lists: tuple[Limit[frozenset[str]], ...], what: str, value: str
) -> str:
    """A protocol or pool that a quota's list no longer names (admitted before it changed)."""
    refusing = limits.refusing(lists, value)
    if refusing is None:
        return ""
    return (
        f"{what} {value} is no longer in {refusing.described()}; {WAIT} the {what} is allowed again"
    )


def _per_tunnel(limits: Limits, candidate: TunnelUse) -> str:
    limit = limits.bandwidth_per_tunnel
    if limit is None or candidate.bandwidth is None or candidate.bandwidth <= limit.value:
        return ""
    return (
        f"spec.bandwidth {rate(candidate.bandwidth)} is above {limit.described()}; {WAIT} "
        "spec.bandwidth is lowered or the limit is raised"
    )
