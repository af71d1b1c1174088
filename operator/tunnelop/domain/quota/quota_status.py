"""A TunnelQuota's status, and the conditions a quota puts on the namespace's Tunnels.

Each TunnelQuota reports the namespace's usage against its own hard limits (Exceeded,
TrafficQuotaWarning), and whether the namespace is stopped by any quota (Suspended): with
several quotas, the one that sets the tightest limit says Exceeded, and all of them say
Suspended with the name of the quota that caused it.
"""

from __future__ import annotations

import datetime
from typing import Any

from tunnelop.api.v1alpha1 import TunnelQuota, bits_per_second, byte_count
from tunnelop.domain import conditions
from tunnelop.domain.quota.figures import rate, rounded
from tunnelop.domain.quota.gate import (
    QUOTA_EXCEEDED,
    TRAFFIC_QUOTA_EXCEEDED,
    GateDecision,
    Hold,
    namespace_hold,
)
from tunnelop.domain.quota.limits import Limits, Usage, quota_ref
from tunnelop.domain.quota.period import (
    TRAFFIC_WARNING_PERCENT,
    DeletedTraffic,
    period_start,
    rfc3339,
    traffic_level,
)

OVER_LIMIT = "OverLimit"
WITHIN_LIMITS = "WithinLimits"
NOT_SUSPENDED = "NotSuspended"
TRAFFIC_NEAR_LIMIT = "TrafficNearLimit"
TRAFFIC_BELOW_WARNING = "TrafficBelowWarning"
NO_TRAFFIC_LIMIT = "NoTrafficLimit"
ENFORCED = "Enforced"


def quota_conditions(
    quota: TunnelQuota, limits: Limits, usage: Usage, now: datetime.datetime
) -> list[dict[str, Any]]:
    """Ready, Exceeded, Suspended and TrafficQuotaWarning of one TunnelQuota."""
    generation = quota.metadata.generation
    hard = quota.spec.hard
    over = _over_limits(quota, usage)
    monthly = byte_count(hard.monthly_traffic) if hard.monthly_traffic is not None else None
    level = traffic_level(usage.traffic, monthly)
    since = rfc3339(period_start(now))
    traffic_figures = f"{rounded(usage.traffic)}/{hard.monthly_traffic} of hard.monthlyTraffic"

    if level == "exceeded":
        exceeded = (
            TRAFFIC_QUOTA_EXCEEDED,
            f"{traffic_figures} used since {since}; the namespace's Tunnels are suspended "
            "until the next period or until the limit is raised",
        )
    elif over:
        exceeded = (
            OVER_LIMIT,
            "; ".join(over) + ": the limit is below what is in use; nothing is deleted or "
            "moved, new Tunnels wait until use falls below it",
        )
    elif usage.waiting:
        exceeded = (
            QUOTA_EXCEEDED,
            f"{usage.waiting} Tunnels wait for room ({_summary(quota, usage)}); they are "
            "scheduled when Tunnels are deleted or a limit is raised",
        )
    else:
        exceeded = (WITHIN_LIMITS, f"Within limits: {_summary(quota, usage)}")

    hold = namespace_hold(limits, usage.traffic, now)
    if hold is not None:
        suspended = (True, hold.reason, hold.message)
    else:
        suspended = (False, NOT_SUSPENDED, "The namespace's Tunnels run")

    if monthly is None:
        warning = (False, NO_TRAFFIC_LIMIT, "hard.monthlyTraffic is not set")
    elif level == "ok":
        warning = (False, TRAFFIC_BELOW_WARNING, f"{traffic_figures} used since {since}")
    else:
        warning = (
            True,
            TRAFFIC_NEAR_LIMIT,
            f"{traffic_figures} used since {since}: {TRAFFIC_WARNING_PERCENT}% or more",
        )

    others = [ref for ref in limits.quotas if ref != quota_ref(quota)]
    together = f"; with {', '.join(others)}, the tightest limit wins" if others else ""
    return [
        conditions.condition(
            "Ready",
            True,
            ENFORCED,
            f"The limits apply to the Tunnels of namespace {quota.metadata.namespace}" + together,
            generation,
        ),
        conditions.condition("Exceeded", exceeded[0] != WITHIN_LIMITS, *exceeded, generation),
        conditions.condition("Suspended", *suspended, generation),
        conditions.condition("TrafficQuotaWarning", *warning, generation),
    ]


def _over_limits(quota: TunnelQuota, usage: Usage) -> list[str]:
    hard = quota.spec.hard
    over = []
    if hard.tunnels is not None and usage.tunnels > hard.tunnels:
        over.append(f"{usage.tunnels}/{hard.tunnels} tunnels of hard.tunnels")
    if hard.total_bandwidth is not None:
        limit = bits_per_second(hard.total_bandwidth)
        if usage.bandwidth > limit:
            over.append(f"{rate(usage.bandwidth)}/{hard.total_bandwidth} of hard.totalBandwidth")
    return over


def _summary(quota: TunnelQuota, usage: Usage) -> str:
    hard = quota.spec.hard
    parts = [f"{usage.tunnels}/{_or_unlimited(hard.tunnels)} tunnels"]
    parts.append(f"{rate(usage.bandwidth)}/{_or_unlimited(hard.total_bandwidth)} bandwidth")
    parts.append(f"{rounded(usage.traffic)}/{_or_unlimited(hard.monthly_traffic)} traffic")
    return ", ".join(parts)


def _or_unlimited(value: object) -> str:
    return "unlimited" if value is None else str(value)


def quota_status(
    quota: TunnelQuota,
    limits: Limits,
    usage: Usage,
    deleted: DeletedTraffic,
    now: datetime.datetime,
    existing_conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole status of one TunnelQuota (camelCase), conditions merged into the existing
    ones so that an unchanged status yields an identical dict (and no write)."""
    ledger = deleted.for_period(now)
    return {
        "observedGeneration": quota.metadata.generation,
        "used": {
            "tunnels": usage.tunnels,
            "bandwidth": rate(usage.bandwidth),
            "traffic": rounded(usage.traffic),
        },
        **ledger.to_status(),
        "conditions": conditions.merge(
            existing_conditions, *quota_conditions(quota, limits, usage, now)
        ),
    }


# ---- what a Tunnel shows -------------------------------------------------------------------


def tunnel_hold_condition(hold: Hold, generation: int | None) -> dict[str, Any]:
    """Ready=False of a Tunnel in a stopped namespace (NamespaceSuspended or
    TrafficQuotaExceeded); the relay table marks the Tunnel suspended meanwhile."""
    return conditions.condition("Ready", False, hold.reason, hold.message, generation)


def gate_condition(decision: GateDecision, generation: int | None) -> dict[str, Any] | None:
    """Scheduled=False of a Tunnel the gate turned away; None when it may be bound."""
    if decision.allowed:
        return None
    assert decision.reason is not None
    return conditions.condition("Scheduled", False, decision.reason, decision.message, generation)
