"""Admission of a Tunnel against its namespace's TunnelQuotas: an early, precise "no".

Like the other admission rules (domain/admission.py), these are a courtesy, not the
guarantee: concurrent creates can each see room for one more, so the exact count is kept by
the scheduling gate (gate.py) when Tunnels are bound. A rule is checked on CREATE, and on
UPDATE only when the fields it reads changed, so that a tenant can always suspend or delete
a Tunnel admitted under looser limits. A suspended namespace denies nothing here: its
Tunnels are stopped, not refused (Git may still apply them).

Every message names the Tunnel field, the value, the limit and the TunnelQuota that sets it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnelop.api.v1alpha1 import Tunnel, TunnelSpec, bits_per_second
from tunnelop.domain.quota.figures import rate
from tunnelop.domain.quota.limits import Limits, TunnelUse, Usage, effective_bandwidth


def quota_denials(
    tunnel: Tunnel,
    old: Tunnel | None,
    limits: Limits,
    namespace_tunnels: Iterable[TunnelUse],
) -> list[str]:
    """All reasons the namespace's quotas refuse `tunnel` (`old` is the stored object on
    UPDATE, None on CREATE); empty means admit. `namespace_tunnels` are the namespace's
    Tunnels as they are now, waiting ones included and those being deleted left out; the
    Tunnel itself may be among them (it is not counted twice)."""
    meta = tunnel.metadata
    key = (meta.namespace or "", meta.name or "")
    others = Usage.of(namespace_tunnels, excluding=key)
    spec, previous = tunnel.spec, (old.spec if old is not None else None)
    creating = previous is None
    bandwidth_changed = creating or _bps(spec) != _bps(previous)
    denials: list[str] = []
    if creating:
        denials += _tunnel_count(meta.name or "", key[0], limits, others)
    if creating or spec.protocol != previous.protocol:
        denials += _protocol(spec, limits)
    if bandwidth_changed:
        denials += _bandwidth_per_tunnel(spec, limits)
        denials += _total_bandwidth(spec, limits, others)
    if creating or spec.relay.pool != previous.relay.pool:
        denials += _pool(spec, limits)
    return denials


def _bps(spec: TunnelSpec | None) -> int | None:
    return None if spec is None or spec.bandwidth is None else bits_per_second(spec.bandwidth)


def _tunnel_count(name: str, namespace: str, limits: Limits, others: Usage) -> list[str]:
    limit = limits.tunnels
    if limit is None or others.tunnels + 1 <= limit.value:
        return []
    return [
        f"metadata.name: creating Tunnel {name!r} makes {others.tunnels + 1} Tunnels in "
        f"namespace {namespace}, above {limit.described()}; delete a Tunnel or ask the "
        "provider to raise the limit"
    ]


def _protocol(spec: TunnelSpec, limits: Limits) -> list[str]:
    refusing = limits.refusing(limits.protocols, spec.protocol)
    if refusing is None:
        return []
    allowed = limits.allowed_protocols or frozenset()
    return [
        f"spec.protocol: {spec.protocol} is not in {refusing.described()}; allowed here: "
        f"{_listed(allowed)}"
    ]


def _bandwidth_per_tunnel(spec: TunnelSpec, limits: Limits) -> list[str]:
    limit = limits.bandwidth_per_tunnel
    asked = _bps(spec)
    if limit is None or asked is None or asked <= limit.value:
        return []
    return [
        f"spec.bandwidth: {spec.bandwidth} is above {limit.described()}; ask for at most "
        f"{limit.shown}, or omit spec.bandwidth to get it"
    ]


def _total_bandwidth(spec: TunnelSpec, limits: Limits, others: Usage) -> list[str]:
    limit = limits.total_bandwidth
    if limit is None:
        return []
    free = max(0, limit.value - others.bandwidth)
    bandwidth = effective_bandwidth(spec, limits)
    if bandwidth is None:
        return [
            f"spec.bandwidth: unset means no speed limit, but {limit.described()} needs every "
            f"Tunnel to have one; set spec.bandwidth (at most {rate(free)} is free)"
        ]
    if others.bandwidth + bandwidth <= limit.value:
        return []
    if spec.bandwidth is not None:
        shown = str(spec.bandwidth)
    else:  # the default, from hard.bandwidthPerTunnel
        assert limits.bandwidth_per_tunnel is not None
        shown = f"unset (so {limits.bandwidth_per_tunnel.shown}, from hard.bandwidthPerTunnel)"
    return [
        f"spec.bandwidth: {shown} makes the namespace's total "
        f"{rate(others.bandwidth + bandwidth)}, above {limit.described()} "
        f"({rate(others.bandwidth)} in use by {others.tunnels} other Tunnels, {rate(free)} "
        "free)"
    ]


def _pool(spec: TunnelSpec, limits: Limits) -> list[str]:
    pool = spec.relay.pool
    if pool is None:
        empty = next((limit for limit in limits.pools if not limit.value), None)
        if empty is None:
            return []  # placed on relays of the allowed pools only, by the scheduler
        return [
            f"spec.relay.pool: unset, but {empty.described()} allows no pool, so the Tunnel "
            "could run nowhere; ask the provider for a pool"
        ]
    refusing = limits.refusing(limits.pools, pool)
    if refusing is None:
        return []
    allowed = limits.allowed_pools or frozenset()
    hint = ", or omit spec.relay.pool" if allowed else ""
    return [
        f"spec.relay.pool: {pool} is not in {refusing.described()}; allowed here: "
        f"{_listed(allowed)}{hint}"
    ]


def _listed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) if names else "none"
