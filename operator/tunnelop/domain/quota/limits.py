"""The effective limits of a namespace, from all its TunnelQuotas, and what its Tunnels use.

Several TunnelQuotas in one namespace all apply, as with ResourceQuota: the tightest limit
wins. Numbers take the smallest value; protocol and pool lists the intersection of the
quotas that set one; the namespace is suspended if any quota says so. Each limit remembers
the quota that sets it, so that every message can name it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import (
    Tunnel,
    TunnelQuota,
    TunnelSpec,
    bits_per_second,
    byte_count,
    error_messages,
)
from tunnelop.domain.scheduling import TunnelKey

T = TypeVar("T")


@dataclass(frozen=True)
class Limit(Generic[T]):
    """One hard limit of one TunnelQuota."""

    field: str  # e.g. "hard.bandwidthPerTunnel"
    value: T  # bits/s, bytes, a count, or a set of names
    shown: str  # as the provider wrote it: "10M", "[tcp, udp]"
    quota: str  # "namespace/name" of the TunnelQuota

    def described(self) -> str:
        """`hard.bandwidthPerTunnel 10M of TunnelQuota team-a/free-tier`."""
        return f"{self.field} {self.shown} of TunnelQuota {self.quota}"


@dataclass(frozen=True)
class Limits:
    """A namespace's effective limits; None (or an empty tuple) means no quota sets it."""

    tunnels: Limit[int] | None = None
    bandwidth_per_tunnel: Limit[int] | None = None
    total_bandwidth: Limit[int] | None = None
    monthly_traffic: Limit[int] | None = None
    # Every quota's list, each kept: a refusal names a quota whose list lacks the value.
    protocols: tuple[Limit[frozenset[str]], ...] = ()
    pools: tuple[Limit[frozenset[str]], ...] = ()
    suspended_by: tuple[str, ...] = ()  # the quotas with spec.suspended: true
    quotas: tuple[str, ...] = ()  # every quota that applies, sorted

    @property
    def suspended(self) -> bool:
        return bool(self.suspended_by)

    @property
    def allowed_protocols(self) -> frozenset[str] | None:
        """The protocols every quota allows; None when no quota lists protocols."""
        return _intersection(self.protocols)

    @property
    def allowed_pools(self) -> frozenset[str] | None:
        """The RelayPools every quota allows; None when no quota lists pools."""
        return _intersection(self.pools)

    def refusing(self, lists: tuple[Limit[frozenset[str]], ...], value: str) -> Limit | None:
        """The first quota (by name) whose list lacks `value`."""
        return next((limit for limit in lists if value not in limit.value), None)


def allowed_pools(limits: Limits) -> frozenset[str] | None:
    """For the scheduler: the RelayPools the namespace's Tunnels may be placed in, None for
    any relay. A Tunnel without spec.relay.pool in a namespace whose quota lists pools goes
    only on RelayNodes of these pools (an empty set: on none)."""
    return limits.allowed_pools


def _intersection(lists: tuple[Limit[frozenset[str]], ...]) -> frozenset[str] | None:
    if not lists:
        return None
    allowed = lists[0].value
    for limit in lists[1:]:
        allowed &= limit.value
    return allowed


def quota_ref(quota: TunnelQuota) -> str:
    return f"{quota.metadata.namespace or ''}/{quota.metadata.name or ''}"


def limits_of(quotas: Iterable[TunnelQuota]) -> Limits:
    """The tightest of all `quotas` (those of one namespace). The result does not depend on
    their order: ties go to the quota first by name."""
    ordered = sorted(quotas, key=quota_ref)
    candidates: dict[str, list[Limit[int]]] = {
        "tunnels": [],
        "bandwidth_per_tunnel": [],
        "total_bandwidth": [],
        "monthly_traffic": [],
    }
    protocols, pools, suspended_by = [], [], []
    for quota in ordered:
        ref, hard = quota_ref(quota), quota.spec.hard
        if hard.tunnels is not None:
            candidates["tunnels"].append(
                Limit("hard.tunnels", hard.tunnels, str(hard.tunnels), ref)
            )
        for attr, field, parse in (
            ("bandwidth_per_tunnel", "hard.bandwidthPerTunnel", bits_per_second),
            ("total_bandwidth", "hard.totalBandwidth", bits_per_second),
            ("monthly_traffic", "hard.monthlyTraffic", byte_count),
        ):
            written = getattr(hard, attr)
            if written is not None:
                candidates[attr].append(Limit(field, parse(written), str(written), ref))
        if hard.protocols is not None:
            protocols.append(_list_limit("hard.protocols", hard.protocols, ref))
        if hard.pools is not None:
            pools.append(_list_limit("hard.pools", hard.pools, ref))
        if quota.spec.suspended:
            suspended_by.append(ref)
    tightest = {
        attr: min(found, key=lambda limit: limit.value) if found else None
        for attr, found in candidates.items()
    }  # min keeps the first of equals, and the list is sorted by quota: order-independent
    return Limits(
        **tightest,
        protocols=tuple(protocols),
        pools=tuple(pools),
        suspended_by=tuple(suspended_by),
        quotas=tuple(quota_ref(q) for q in ordered),
    )


def _list_limit(field: str, values: list[str], ref: str) -> Limit[frozenset[str]]:
    return Limit(field, frozenset(values), "[" + ", ".join(values) + "]", ref)


def parse_quotas(objects: Iterable[Mapping[str, Any]]) -> tuple[list[TunnelQuota], list[str]]:
    """TunnelQuota manifests as models, and one message per object that does not validate
    (stored before a rule existed): such a quota is skipped, and named, never a crash."""
    quotas, errors = [], []
    for obj in objects:
        try:
            quotas.append(TunnelQuota.model_validate(obj))
        except ValidationError as error:
            meta = obj.get("metadata") or {}
            ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            errors.append(f"TunnelQuota {ref} is ignored: " + "; ".join(error_messages(error)))
    return quotas, errors


# ---- what a namespace uses -------------------------------------------------------------------


def effective_bandwidth(spec: TunnelSpec, limits: Limits) -> int | None:
    """The speed limit a Tunnel gets, in bits per second: spec.bandwidth, else the
    namespace's hard.bandwidthPerTunnel; None when neither is set (no limit)."""
    if spec.bandwidth is not None:
        return bits_per_second(spec.bandwidth)
    if limits.bandwidth_per_tunnel is not None:
        return limits.bandwidth_per_tunnel.value
    return None


@dataclass(frozen=True)
class TunnelUse:
    """What one Tunnel takes from its namespace's quota."""

    key: TunnelKey
    bandwidth: int | None  # effective, bits/s; None: no limit
    protocol: str = "tcp"
    pool: str | None = None  # spec.relay.pool


def tunnel_use(tunnel: Tunnel, limits: Limits) -> TunnelUse:
    meta = tunnel.metadata
    return TunnelUse(
        key=(meta.namespace or "", meta.name or ""),
        bandwidth=effective_bandwidth(tunnel.spec, limits),
        protocol=tunnel.spec.protocol,
        pool=tunnel.spec.relay.pool,
    )


@dataclass(frozen=True)
class Usage:
    """What a set of a namespace's Tunnels uses: for admission, all of them; for the quota's
    status, the bound ones, with the number the gate keeps waiting."""

    tunnels: int = 0
    bandwidth: int = 0  # the sum of the limited Tunnels' effective bandwidth, bits/s
    unlimited: int = 0  # Tunnels with no bandwidth limit at all
    traffic: int = 0  # bytes this period, deleted Tunnels included
    # Tunnels the gate turned away: Scheduled=False with QuotaExceeded, NamespaceSuspended or
    # TrafficQuotaExceeded (created while the namespace was held, they wait too).
    waiting: int = 0

    @classmethod
    def of(
        cls,
        uses: Iterable[TunnelUse],
        traffic: int = 0,
        *,
        waiting: int = 0,
        excluding: TunnelKey | None = None,
    ) -> Usage:
        counted = [use for use in uses if use.key != excluding]
        return cls(
            tunnels=len(counted),
            bandwidth=sum(use.bandwidth or 0 for use in counted),
            unlimited=sum(1 for use in counted if use.bandwidth is None),
            traffic=traffic,
            waiting=waiting,
        )
