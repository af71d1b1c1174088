"""The built-in autoscaler (spec.autoscaling) as a pure decision: how many relays the pool
should have for its load, with the time and the "below since" state passed in and out.

Utilization is the larger of allocated tunnels over tunnel capacity and allocated bandwidth
over bandwidth capacity, over the pool's ready relays. Demand is what is allocated on the
pool's relays plus what waits because the pool is full, so a burst is served in one step.

No flapping: the pool grows to the fewest relays that carry the demand at the target, and
shrinks (by one, after scaleDownDelaySeconds) only when the demand would fit on one relay
fewer at 90% of the target. Held load therefore settles, and load wobbling by less than
that margin moves the pool in one direction at most."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tunnelop.api.v1alpha1 import RelayPoolAutoscaling, RelayPoolSpec
from tunnelop.domain.pools.members import PoolMember, RelayLoad, load

# Shrinking needs the load to fit on one relay fewer at this share of the target, in percent.
SCALE_DOWN_SHARE_PERCENT = 90


# What the pool carries (allocated on its relays) plus what waits for room in it: the same
# two figures as a relay's load.
Demand = RelayLoad


@dataclass(frozen=True)
class ScaleDecision:
    desired_replicas: int
    utilization: int  # percent, over the ready relays
    reason: str  # for the Event and the Scaling condition
    # When the load started to allow one relay fewer (None: it does not); pass it back in.
    below_since: datetime.datetime | None

    def changes(self, current: int) -> bool:
        return self.desired_replicas != current


def utilization_percent(members: Sequence[PoolMember], usage: Mapping[str, RelayLoad]) -> int:
    """max(tunnels / capacity, bandwidth / capacity) over the ready relays, in whole percent
    rounded up (so 60.1% is above a 60% target). 0 without ready relays or capacity limits."""
    ready = [m for m in members if m.ready and not m.going_away]
    shares = []
    for used_of, capacity_of in (
        (lambda m: load(usage, m.name).tunnels, lambda m: m.capacity_tunnels),
        (lambda m: load(usage, m.name).bandwidth, lambda m: m.capacity_bandwidth),
    ):
        limited = [m for m in ready if capacity_of(m) is not None]
        capacity = sum(capacity_of(m) or 0 for m in limited)
        used = sum(used_of(m) for m in limited)
        if limited:
            shares.append(_ceil_div(used * 100, capacity) if capacity else (100 if used else 0))
    return max(shares, default=0)


def relay_capacity(
    members: Sequence[PoolMember], spec: RelayPoolSpec
) -> tuple[int | None, int | None]:
    """What one relay carries (tunnels, bits/s): the mean over the ready relays, or the
    template's spec.capacity before any relay is ready."""
    ready = [m for m in members if m.ready and not m.going_away]
    template = spec.template.spec
    return (
        _mean([m.capacity_tunnels for m in ready], template.capacity.tunnels),
        _mean([m.capacity_bandwidth for m in ready], template.capacity_bps),
    )


def relays_needed(
    demand: Demand,
    capacity: tuple[int | None, int | None],
    target: int,
    share_percent: int = 100,
) -> int:
    """The fewest relays that carry `demand` at `share_percent` of the `target` utilization
    (0 with no capacity limits)."""
    needed = 0
    for amount, per_relay in zip((demand.tunnels, demand.bandwidth), capacity, strict=True):
        if per_relay is None or amount == 0:
            continue
        if per_relay == 0:
            continue  # a relay that takes nothing: more of them do not help
        needed = max(needed, _ceil_div(amount * 100 * 100, per_relay * target * share_percent))
    return needed


def autoscale(
    autoscaling: RelayPoolAutoscaling,
    spec: RelayPoolSpec,
    current: int,
    members: Sequence[PoolMember],
    usage: Mapping[str, RelayLoad],
    waiting: Demand,
    below_since: datetime.datetime | None,
    now: datetime.datetime,
) -> ScaleDecision:
    """The replica count the pool should move to from `current` (its desired count so far).

    `waiting` is the demand of the tunnels that wait because the pool is full; `below_since`
    is the previous decision's, and the decision returns the next one."""
    target = autoscaling.target_utilization
    low, high = autoscaling.min_replicas, autoscaling.max_replicas
    utilization = utilization_percent(members, usage)
    carried = Demand(
        tunnels=sum(load(usage, m.name).tunnels for m in members) + waiting.tunnels,
        bandwidth=sum(load(usage, m.name).bandwidth for m in members) + waiting.bandwidth,
    )
    capacity = relay_capacity(members, spec)
    needed = relays_needed(carried, capacity, target)
    figures = f"utilization {utilization}% of target {target}%"
    if waiting.tunnels:
        figures += f", {waiting.tunnels} tunnels waiting for room"

    def decide(desired: int, reason: str, since: datetime.datetime | None) -> ScaleDecision:
        return ScaleDecision(desired, utilization, reason, since)

    if current < low:
        return decide(low, f"Raised to minReplicas {low} ({figures})", None)
    if current > high:
        return decide(high, f"Lowered to maxReplicas {high} ({figures})", None)
    if needed > current:
        desired = min(needed, high)
        capped = f", capped at maxReplicas {high}" if desired < needed else ""
        if desired == current:
            return decide(
                current, f"At maxReplicas {high}: {needed} relays needed ({figures})", None
            )
        return decide(
            desired,
            f"Scaled up from {current} to {desired} relays for {_demand(carried)} ({figures}"
            f"{capped})",
            None,
        )
    fits_on_fewer = (
        current > low
        and relays_needed(carried, capacity, target, SCALE_DOWN_SHARE_PERCENT) <= current - 1
    )
    if not fits_on_fewer:
        return decide(current, f"Steady at {current} relays ({figures})", None)
    since = below_since or now
    delay = datetime.timedelta(seconds=autoscaling.scale_down_delay_seconds)
    if now - since < delay:
        left = int((since + delay - now).total_seconds())
        return decide(
            current,
            f"Load fits on {current - 1} relays; scaling down in {left}s unless it rises "
            f"({figures})",
            since,
        )
    return decide(
        current - 1,
        f"Scaled down from {current} to {current - 1} relays after "
        f"{autoscaling.scale_down_delay_seconds}s of low load ({figures})",
        None,
    )


def _demand(demand: Demand) -> str:
    parts = [f"{demand.tunnels} tunnels"]
    if demand.bandwidth:
        parts.append(f"{demand.bandwidth} bit/s")
    return " and ".join(parts)


def _mean(values: Sequence[int | None], fallback: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) // len(known) if known else fallback


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
