"""TunnelQuota: the provider's limits for one namespace (a tenant), like a ResourceQuota."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictStr

from tunnelop.api.v1alpha1.common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
    Int64,
    KindInfo,
    NonNegativeInt,
    ObservedStatus,
    PrinterColumn,
    Resource,
    StatusModel,
    conditions_field,
    unique_list,
)
from tunnelop.api.v1alpha1.formats import RelayObjectName
from tunnelop.api.v1alpha1.quantity import BitRate, ByteQuantity
from tunnelop.api.v1alpha1.tunnel import Protocol

# Deletions in flight at once; the deletion path waits for room (entries go as Tunnels go).
MAX_DELETING_TUNNELS = 1024
DeletingTunnels = Annotated[
    list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=MAX_DELETING_TUNNELS)
]


class QuotaLimits(ApiModel):
    """Hard limits; an omitted limit does not apply."""

    tunnels: NonNegativeInt | None = Field(
        default=None,
        description="The most Tunnels in the namespace; further ones are not admitted.",
    )
    bandwidth_per_tunnel: BitRate | None = Field(
        default=None,
        description=(
            "The highest spec.bandwidth a Tunnel may ask for, in bits per second (e.g. 10M); "
            "also the limit of Tunnels that set none."
        ),
    )
    total_bandwidth: BitRate | None = Field(
        default=None,
        description=(
            "The most bandwidth all the namespace's Tunnels together may ask for, in bits per "
            "second (e.g. 100M)."
        ),
    )
    monthly_traffic: ByteQuantity | None = Field(
        default=None,
        description=(
            "The most bytes, in and out, the namespace's Tunnels may carry per calendar month "
            "(UTC), e.g. 100Gi. When reached, the Tunnels are suspended until the next period "
            "(status.periodStart)."
        ),
    )
    protocols: unique_list(Protocol, 4) | None = Field(
        default=None,
        description=(
            "The Tunnel protocols allowed, from tcp, udp, http and https, e.g. [tcp, udp] to "
            "refuse http. Omitted allows all; an empty list allows none."
        ),
    )
    pools: unique_list(RelayObjectName, 64) | None = Field(
        default=None,
        description=(
            "The RelayPools the namespace's Tunnels may run in, e.g. [free]. Omitted allows "
            "any relay; an empty list allows none."
        ),
    )


class TunnelQuotaSpec(ApiModel):
    """The namespace's limits."""

    hard: QuotaLimits = Field(
        default_factory=QuotaLimits,
        description="Hard limits on tunnels, bandwidth, traffic, protocols and pools.",
    )
    suspended: StrictBool = Field(
        default=False,
        description=(
            "true suspends every Tunnel of the namespace at once (the kill switch), whatever "
            "their own spec.suspended. false (default) lifts it."
        ),
    )


class QuotaUsage(StatusModel):
    """What the namespace uses now, in the units of spec.hard."""

    tunnels: NonNegativeInt | None = Field(
        default=None,
        description=(
            "Tunnels of the namespace scheduled to a relay: they hold a place. Tunnels waiting "
            "for room (Scheduled=False, reason QuotaExceeded) do not count."
        ),
    )
    bandwidth: BitRate | None = Field(
        default=None,
        description=(
            "The sum of the scheduled Tunnels' bandwidth limits (spec.bandwidth, else "
            "hard.bandwidthPerTunnel), in bits per second."
        ),
    )
    traffic: ByteQuantity | None = Field(
        default=None,
        description=(
            "Bytes carried since status.periodStart, in and out, deleted Tunnels included; "
            "rounded down to three significant digits (e.g. 3.22G)."
        ),
    )


class TunnelQuotaStatus(ObservedStatus):
    """What the operator counted."""

    used: QuotaUsage = Field(default_factory=QuotaUsage, description="Current usage.")
    period_start: datetime | None = Field(
        default=None, description="The start of the traffic period status.used.traffic covers."
    )
    deleted_bytes: Int64 | None = Field(
        default=None,
        description=(
            "Bytes in and out carried since status.periodStart by Tunnels deleted since; "
            "included in used.traffic, so that deleting a Tunnel frees no traffic."
        ),
    )
    deleting_tunnels: DeletingTunnels = Field(
        default_factory=list,
        description=(
            "UIDs of Tunnels being deleted whose bytes are already in deletedBytes; an entry "
            "goes once its Tunnel is gone. It makes counting a deletion safe to repeat."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    conditions: list[Condition] = conditions_field(
        "Ready (the limits are enforced), Exceeded (a hard limit is reached or Tunnels wait "
        "for room), Suspended (the namespace's Tunnels are stopped) and TrafficQuotaWarning "
        "(80% of hard.monthlyTraffic used), each with a CamelCase reason."
    )


class TunnelQuota(Resource):
    """Limits for the Tunnels of one namespace, set by the provider: how many, how fast, how
    much traffic per month, which protocols and pools. Like a ResourceQuota, it belongs to
    the provider, not the tenant."""

    crd = KindInfo(
        kind="TunnelQuota",
        plural="tunnelquotas",
        short_names=("tq",),
        scope="Namespaced",
        printer_columns=(
            PrinterColumn("Tunnels", ".status.used.tunnels", "Tunnels in use.", "integer"),
            PrinterColumn("Max Tunnels", ".spec.hard.tunnels", "Tunnel limit.", "integer"),
            PrinterColumn("Bandwidth", ".status.used.bandwidth", "Bandwidth in use, bit/s."),
            PrinterColumn(
                "Max Bandwidth", ".spec.hard.totalBandwidth", "Total bandwidth limit, bit/s."
            ),
            PrinterColumn("Traffic", ".status.used.traffic", "Traffic this period."),
            PrinterColumn("Max Traffic", ".spec.hard.monthlyTraffic", "Monthly traffic limit."),
            PrinterColumn(
                "Suspended", ".spec.suspended", "The namespace's kill switch.", "boolean"
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["TunnelQuota"] = Field(default="TunnelQuota", description="TunnelQuota.")
    spec: TunnelQuotaSpec = Field(description="The namespace's limits.")
    status: TunnelQuotaStatus = Field(
        default_factory=TunnelQuotaStatus,
        description="Written by the operator; read-only for users.",
    )
