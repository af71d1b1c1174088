"""What the pool's planning needs to know of each RelayNode it owns, and of their load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tunnelop.api.v1alpha1 import RelayNode, bits_per_second, find_condition
from tunnelop.domain.pools.template import TEMPLATE_HASH_LABEL


@dataclass(frozen=True)
class RelayLoad:
    """What is allocated on a relay: tunnels, and the sum of their bandwidth in bits/s."""

    tunnels: int = 0
    bandwidth: int = 0


@dataclass(frozen=True)
class PoolMember:
    name: str
    template_hash: str | None = None
    ready: bool = True
    # Being drained or deleted: it takes no new tunnels and never counts as a replica.
    going_away: bool = False
    # Effective capacity (None: no limit in that dimension).
    capacity_tunnels: int | None = None
    capacity_bandwidth: int | None = None


def member_of(relay: RelayNode, *, ready: bool | None = None, draining: bool = False) -> PoolMember:
    """The member view of an owned RelayNode. `ready` defaults to its Ready condition;
    a relay being deleted is going away as well as one the controller drains."""
    if ready is None:
        condition = find_condition(relay.status.conditions, "Ready")
        ready = condition is not None and condition.status == "True"
    capacity = relay.status.capacity
    tunnels = relay.spec.capacity.tunnels if capacity.tunnels is None else capacity.tunnels
    bandwidth = (
        capacity.bandwidth if capacity.bandwidth is not None else relay.spec.capacity.bandwidth
    )
    return PoolMember(
        name=relay.metadata.name or "",
        template_hash=relay.metadata.labels.get(TEMPLATE_HASH_LABEL),
        ready=ready,
        going_away=draining or relay.metadata.deletion_timestamp is not None,
        capacity_tunnels=tunnels,
        capacity_bandwidth=None if bandwidth is None else bits_per_second(bandwidth),
    )


def load_of(relay: RelayNode) -> RelayLoad:
    """The relay's load as its status reports it (status.allocated)."""
    allocated = relay.status.allocated
    bandwidth = allocated.bandwidth
    return RelayLoad(
        tunnels=allocated.tunnels or 0,
        bandwidth=0 if bandwidth is None else bits_per_second(bandwidth),
    )


def load(usage: Mapping[str, RelayLoad], name: str) -> RelayLoad:
    return usage.get(name, RelayLoad())
