"""TunnelQuota: a namespace's limits, admission against them, the scheduling gate that keeps
them exact, monthly traffic accounting and the quota's status. Pure: no I/O, no Kubernetes
client. The webhook calls `quota_denials`; the event loop calls `may_bind` before binding
and `namespace_hold` for the relay tables; the quota controller writes `quota_status`.
"""

from tunnelop.domain.quota.denials import quota_denials
from tunnelop.domain.quota.figures import rate, rounded
from tunnelop.domain.quota.gate import (
    NAMESPACE_SUSPENDED,
    QUOTA_EXCEEDED,
    TRAFFIC_QUOTA_EXCEEDED,
    GateDecision,
    Hold,
    may_bind,
    namespace_hold,
)
from tunnelop.domain.quota.limits import (
    Limit,
    Limits,
    TunnelUse,
    Usage,
    allowed_pools,
    effective_bandwidth,
    limits_of,
    parse_quotas,
    quota_ref,
    tunnel_use,
)
from tunnelop.domain.quota.period import (
    TRAFFIC_WARNING_PERCENT,
    DeletedTraffic,
    advance_period_bytes,
    namespace_traffic,
    next_period_start,
    period_start,
    traffic_level,
    tunnel_period_bytes,
)
from tunnelop.domain.quota.quota_status import (
    OVER_LIMIT,
    gate_condition,
    quota_conditions,
    quota_status,
    tunnel_hold_condition,
)

__all__ = [
    "NAMESPACE_SUSPENDED",
    "OVER_LIMIT",
    "QUOTA_EXCEEDED",
    "TRAFFIC_QUOTA_EXCEEDED",
    "TRAFFIC_WARNING_PERCENT",
    "DeletedTraffic",
    "GateDecision",
    "Hold",
    "Limit",
    "Limits",
    "TunnelUse",
    "Usage",
    "advance_period_bytes",
    "allowed_pools",
    "effective_bandwidth",
    "gate_condition",
    "limits_of",
    "may_bind",
    "namespace_hold",
    "namespace_traffic",
    "next_period_start",
    "parse_quotas",
    "period_start",
    "quota_conditions",
    "quota_denials",
    "quota_ref",
    "quota_status",
    "rate",
    "rounded",
    "traffic_level",
    "tunnel_hold_condition",
    "tunnel_period_bytes",
    "tunnel_use",
]
