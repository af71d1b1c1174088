"""Why a relay's tunnels must leave it: one rule for every cause, so that every move goes
through the same path (the scheduler places the tunnel elsewhere, keeping its port where it
is free there; the old relay's table drops it; an Event and the status report it).

Causes, strongest first:
- the RelayNode is being deleted: every tunnel leaves; one no other relay takes is unbound
  and says why (a deletion is not held up forever);
- spec.drain (set by hand, or by a RelayPool on the relays it removes or replaces): tunnels
  move where there is room; one no other relay takes stays, serving, and says so;
- failover: the relay's pod has not been ready for spec.failoverAfterSeconds; likewise, a
  tunnel with nowhere to go waits on the relay for it to come back.

Blocked ports, dropped protocols and a changed httpDomain move single tunnels: the scheduler
finds those itself (`AllocationTable.misplaced`)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from tunnelop.api.v1alpha1 import RelayNode

DELETING = "Deleting"
DRAIN_REQUESTED = "DrainRequested"
SCALE_DOWN = "ScaleDown"
ROLL_OUT = "RollOut"
FAILOVER = "Failover"

# Set by a RelayPool on a relay it drains, next to spec.drain: why (ScaleDown or RollOut).
DRAIN_REASON_ANNOTATION = "tunnelop.dev/drain-reason"
_POOL_REASONS = {
    SCALE_DOWN: "removed by its RelayPool (scale-down)",
    ROLL_OUT: "replaced by its RelayPool (template roll-out)",
}


@dataclass(frozen=True)
class Drain:
    """Why a relay's tunnels move away."""

    reason: str  # CamelCase, for the relay's Draining condition
    message: str  # "RelayNode r1 is being deleted", for the Moved Event
    # A tunnel no other relay takes stays on the relay (True) or is unbound (False).
    stay_if_stuck: bool


def drain_of(
    relay: RelayNode, not_ready_since: datetime.datetime | None, now: datetime.datetime
) -> Drain | None:
    """The relay's drain, if any. `not_ready_since`: when its pod stopped being ready (None
    while it is ready)."""
    name = relay.metadata.name
    if relay.metadata.deletion_timestamp is not None:
        return Drain(DELETING, f"RelayNode {name} is being deleted", stay_if_stuck=False)
    if relay.spec.drain:
        reason = relay.metadata.annotations.get(DRAIN_REASON_ANNOTATION, "")
        if reason in _POOL_REASONS:
            return Drain(reason, f"RelayNode {name} is {_POOL_REASONS[reason]}", True)
        return Drain(DRAIN_REQUESTED, f"RelayNode {name} is drained (spec.drain)", True)
    wait = failover_in(relay, not_ready_since, now)
    if wait is not None and wait <= 0:
        after = relay.spec.failover_after_seconds
        return Drain(
            FAILOVER,
            f"RelayNode {name} has not been ready for {after}s (failover)",
            stay_if_stuck=True,
        )
    return None


def failover_in(
    relay: RelayNode, not_ready_since: datetime.datetime | None, now: datetime.datetime
) -> float | None:
    """Seconds until the relay fails over (0 or less: it has), None when it will not (ready,
    or failover off)."""
    after = relay.spec.failover_after_seconds
    if not_ready_since is None or after == 0:
        return None
    return after - (now - not_ready_since).total_seconds()
