"""Which RelayNodes a pool should create, drain, delete and replace to reach its desired
count and its current template. Pure: the pool controller applies the plan.

Rules: a relay going away (draining or deleted) never counts as a replica and is never picked
again; at most `max_draining` relays drain at once (the disruption budget), counting those
already going away; a template roll-out replaces one relay at a time, only once every other
relay is ready; and a drained relay is deleted only when no tunnel is left on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tunnelop.api.v1alpha1 import RelayPool
from tunnelop.domain.pools.members import PoolMember, RelayLoad, load
from tunnelop.domain.pools.relay_names import MAX_POOL_SIZE, new_relay_names, relay_index
from tunnelop.domain.pools.template import template_hash

DEFAULT_MAX_DRAINING = 1


@dataclass(frozen=True)
class Plan:
    desired: int
    create: tuple[str, ...] = ()
    # Start draining these (scale-down): move their tunnels away, then delete them.
    drain: tuple[str, ...] = ()
    # Start draining this one for a template roll-out; its replacement is in `create`.
    replace: str | None = None
    # Going-away relays with no tunnel left: delete them now.
    delete: tuple[str, ...] = ()
    # Relays still made from an older template, `replace` included.
    outdated: int = 0

    @property
    def idle(self) -> bool:
        """Nothing to start: no create, drain, replace or delete."""
        return not (self.create or self.drain or self.replace or self.delete)


def desired_replicas(pool: RelayPool, autoscaled: int | None = None) -> int:
    """spec.replicas, or the autoscaler's choice while spec.autoscaling is set, kept within
    minReplicas-maxReplicas and the names a pool can give."""
    autoscaling = pool.spec.autoscaling
    desired = pool.spec.replicas
    if autoscaling is not None:
        if autoscaled is not None:
            desired = autoscaled
        desired = max(autoscaling.min_replicas, min(autoscaling.max_replicas, desired))
    return min(desired, MAX_POOL_SIZE)


def plan(
    pool: RelayPool,
    owned: Sequence[PoolMember],
    usage: Mapping[str, RelayLoad],
    *,
    autoscaled: int | None = None,
    max_draining: int = DEFAULT_MAX_DRAINING,
) -> Plan:
    """The next steps for `pool`, given the RelayNodes it owns and their load."""
    desired = desired_replicas(pool, autoscaled)
    current_hash = template_hash(pool)
    active = [m for m in owned if not m.going_away]
    going = [m for m in owned if m.going_away]
    budget = max(0, max_draining - len(going))
    delete = tuple(sorted(m.name for m in going if load(usage, m.name).tunnels == 0))
    taken = [m.name for m in owned]
    pool_name = pool.metadata.name or ""

    def removal_order(member: PoolMember) -> tuple[bool, bool, int, int, int]:
        # Not ready first (it serves nobody), then an old template (saves a replacement),
        # then the least loaded, then the newest name (keeps the names compact).
        relay_load = load(usage, member.name)
        return (
            member.ready,
            member.template_hash == current_hash,
            relay_load.tunnels,
            relay_load.bandwidth,
            -(relay_index(pool_name, member.name) or 0),
        )

    outdated = sorted((m for m in active if m.template_hash != current_hash), key=removal_order)
    if len(active) < desired:
        create = tuple(new_relay_names(pool_name, taken, desired - len(active)))
        return Plan(desired, create=create, delete=delete, outdated=len(outdated))
    if len(active) > desired:
        excess = sorted(active, key=removal_order)[: len(active) - desired]
        drain = tuple(m.name for m in excess[:budget])
        left = len([m for m in outdated if m.name not in drain])
        return Plan(desired, drain=drain, delete=delete, outdated=left)
    if outdated and budget and all(m.ready for m in active):
        replace = outdated[0].name
        create = tuple(new_relay_names(pool_name, taken, 1))
        return Plan(desired, create=create, replace=replace, delete=delete, outdated=len(outdated))
    return Plan(desired, delete=delete, outdated=len(outdated))
