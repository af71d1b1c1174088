"""TunnelQuota: the provider's limits for one namespace (a tenant), like a ResourceQuota."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, StrictBool

from tunnelop.api.v1alpha1.common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
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
        default=None, description="Tunnels in the namespace that count against the quota."
    )
    bandwidth: BitRate | None = Field(
        default=None, description="The sum of the Tunnels' bandwidth limits, in bits per second."
    )
    traffic: ByteQuantity | None = Field(
        default=None, description="Bytes carried since status.periodStart, in and out."
    )


class TunnelQuotaStatus(ObservedStatus):
    """What the operator counted."""

    used: QuotaUsage = Field(default_factory=QuotaUsage, description="Current usage.")
    period_start: datetime | None = Field(
        default=None, description="The start of the traffic period status.used.traffic covers."
    )
    conditions: list[Condition] = conditions_field(
        "Conditions such as Exceeded (a hard limit is reached), each with a CamelCase reason."
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
