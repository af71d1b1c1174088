"""Which relay serves a Gateway. A Gateway has one address, so all its listeners live on one
relay: the RelayNode it names, or one relay of the RelayPool it names.

What it names, first match wins: the Gateway's annotation `tunnelop.dev/node` or
`tunnelop.dev/pool` (one of them), else its GatewayClass's spec.parametersRef (group
tunnelop.dev, kind RelayNode or RelayPool, no namespace: both are cluster-scoped).

In a pool, a Gateway stays on the relay its Tunnels are on while that relay takes tunnels;
otherwise (a new Gateway, or its relay cordoned, drained or deleted) it takes the pool's
relay that rendezvous hashing of its UID picks among the ready ones: the same after a restart
of the operator, and only Gateways of a relay that leaves move when the pool changes."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from tunnelop.domain.gateway.observed import RelayState
from tunnelop.domain.gateway.resources import GatewayClassView, GatewayView, Reference
from tunnelop.domain.gateway.vocabulary import (
    NODE_ANNOTATION,
    PARAMETER_KINDS,
    POOL_ANNOTATION,
    TUNNELOP_GROUP,
)

PARAMETERS_RULE = (
    f"group {TUNNELOP_GROUP}, kind {' or '.join(PARAMETER_KINDS)}, a name and no namespace"
)


@dataclass(frozen=True)
class Placement:
    """Where a Gateway's Tunnels go: a RelayPool or a RelayNode (exactly one is set)."""

    pool: str | None = None
    node: str | None = None

    def describe(self) -> str:
        return f"RelayPool {self.pool}" if self.pool else f"RelayNode {self.node}"


def parameters_problem(
    ref: Reference, pools: AbstractSet[str], relays: Mapping[str, RelayState]
) -> str | None:
    """Why a GatewayClass's parametersRef names no relay (None if it names one)."""
    if ref.group != TUNNELOP_GROUP or ref.kind not in PARAMETER_KINDS:
        return (
            f"spec.parametersRef names {ref.kind or '?'} of group {ref.group or '(core)'}; "
            f"tunnelop takes {PARAMETERS_RULE}"
        )
    if ref.namespace is not None:
        return (
            f"spec.parametersRef.namespace must be unset: a {ref.kind} is cluster-scoped "
            f"(got {ref.namespace!r})"
        )
    return _missing(
        Placement(pool=ref.name) if ref.kind == "RelayPool" else Placement(node=ref.name),
        pools,
        relays,
    )


def placement_of(
    gateway: GatewayView,
    gateway_class: GatewayClassView,
    pools: AbstractSet[str],
    relays: Mapping[str, RelayState],
) -> Placement | str:
    """The Gateway's placement, or why it has none (for Accepted False, InvalidParameters)."""
    annotations = gateway.meta.annotations
    pool, node = annotations.get(POOL_ANNOTATION), annotations.get(NODE_ANNOTATION)
    if gateway.infrastructure_parameters is not None:
        return (
            "spec.infrastructure.parametersRef is not supported by tunnelop; name the relay "
            f"with the annotation {POOL_ANNOTATION} or {NODE_ANNOTATION}"
        )
    if pool and node:
        return (
            f"annotations {POOL_ANNOTATION} and {NODE_ANNOTATION} are both set; set one: "
            "the RelayPool or the RelayNode that serves the Gateway"
        )
    if pool or node:
        placement = Placement(pool=pool or None, node=node or None)
    elif gateway_class.parameters is not None:
        ref = gateway_class.parameters
        problem = parameters_problem(ref, pools, relays)
        if problem is not None:
            return f"GatewayClass {gateway_class.meta.name}: {problem}"
        placement = (
            Placement(pool=ref.name) if ref.kind == "RelayPool" else Placement(node=ref.name)
        )
    else:
        return (
            f"no relay named: annotate the Gateway with {POOL_ANNOTATION}: <RelayPool> or "
            f"{NODE_ANNOTATION}: <RelayNode>, or give GatewayClass "
            f"{gateway_class.meta.name} a spec.parametersRef ({PARAMETERS_RULE})"
        )
    return _missing(placement, pools, relays) or placement


def _missing(
    placement: Placement, pools: AbstractSet[str], relays: Mapping[str, RelayState]
) -> str | None:
    if placement.pool is not None and placement.pool not in pools:
        return f"RelayPool {placement.pool} not found"
    if placement.node is not None and placement.node not in relays:
        return f"RelayNode {placement.node} not found"
    return None


def choose_relay(
    gateway_uid: str,
    placement: Placement,
    relays: Mapping[str, RelayState],
    current: Iterable[str],
) -> RelayState | None:
    """The relay that serves the Gateway; None when its pool has no relay taking tunnels.
    `current`: the relays its Tunnels are on."""
    if placement.node is not None:
        return relays.get(placement.node)
    members = {r.name: r for r in relays.values() if r.pool == placement.pool and r.takes_tunnels}
    staying = Counter(name for name in current if name in members)
    if staying:
        # The relay most of its Tunnels are on (by name on a tie: the same each time).
        return members[min(staying, key=lambda name: (-staying[name], name))]
    ready = [r for r in members.values() if r.ready] or list(members.values())
    if not ready:
        return None
    return max(ready, key=lambda r: _rendezvous(gateway_uid, r.name))


def _rendezvous(gateway_uid: str, relay: str) -> bytes:
    return hashlib.sha256(f"{gateway_uid}/{relay}".encode()).digest()
