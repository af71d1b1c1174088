"""The RelayPool controller: keep a pool's RelayNodes at its desired count (spec.replicas, or
the built-in autoscaler's choice) and on its current template, and report its status.

Read, compute, apply, report: the pure planning is in domain/pools. The controller creates
the relays the plan names, drains those it removes or replaces (spec.drain with the reason
in an annotation: the relays' own controller moves their tunnels, see domain/drain.py), and
deletes a drained relay once no tunnel is left on it. Deleting the pool lets the garbage
collector delete its relays (owner references), each of which drains as it goes.

The autoscaler's demand includes the tunnels that wait because the pool is full (reason
CapacityExhausted with spec.relay.pool naming the pool), and a pool reconciles a moment
after its load changes rather than at once, so a burst is seen whole and served in one step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import API_VERSION, RelayNode, RelayPool, error_messages
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.status import merge_patch, utcnow
from tunnelop.domain import conditions
from tunnelop.domain.drain import DRAIN_REASON_ANNOTATION, ROLL_OUT, SCALE_DOWN
from tunnelop.domain.pools import (
    Demand,
    PoolMember,
    RelayLoad,
    ScaleDecision,
    autoscale,
    check_template,
    desired_replicas,
    member_of,
    plan,
    pool_status,
    relay_manifest,
    utilization_percent,
)
from tunnelop.domain.relayview import POOL_LABEL
from tunnelop.domain.scheduling import CAPACITY_EXHAUSTED, TunnelKey, TunnelRequest, Unschedulable
from tunnelop.platform import logs, metrics
from tunnelop.platform.kube import KubeError
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)

# How long a pool waits after a change of its load before it reconciles: a burst of tunnels
# is counted whole, so the pool grows once, by enough relays.
SETTLE_SECONDS = 1.0
# While converging, a pool looks again at least this often (relay events usually come first).
CONVERGING_RECHECK_SECONDS = 5.0


async def reconcile(rt: Runtime, name: str) -> None:
    body = rt.cache.pools.get(name)
    if body is None:
        rt.pool_below_since.pop(name, None)
        metrics.forget_pool(name)
        return
    if body["metadata"].get("deletionTimestamp"):
        return  # the garbage collector deletes its relays, and each drains as it goes
    try:
        pool = RelayPool.model_validate(body)
    except ValidationError as error:  # admitted before a rule existed
        await _report_invalid(rt, body, "; ".join(error_messages(error)))
        return

    owned = _owned_relays(rt, body)
    members = [member_of(relay, draining=relay.spec.drain) for relay in owned]
    usage = {m.name: _load(rt, m.name) for m in members}
    decision = None
    if pool.spec.autoscaling is not None:
        decision = _autoscale(rt, pool, members, usage)
    problems = check_template(pool)
    steps = plan(
        pool,
        members,
        usage,
        autoscaled=None if decision is None else decision.desired_replicas,
        max_draining=pool.spec.max_draining,
    )

    if not problems:
        for relay_name in steps.create:
            await _create(rt, body, pool, relay_name)
        if steps.replace:
            await _drain(rt, body, steps.replace, ROLL_OUT)
    for relay_name in steps.drain:
        await _drain(rt, body, relay_name, SCALE_DOWN)
    deleting = {r.metadata.name for r in owned if r.metadata.deletion_timestamp is not None}
    for relay_name in steps.delete:
        if relay_name not in deleting:
            await rt.kube.delete(API_VERSION, "RelayNode", relay_name)
            rt.post_event(
                body, "Normal", "RelayDeleted", f"Deleted RelayNode {relay_name}: drained"
            )

    status = pool_status(pool, members, steps, decision=decision, problems=problems)
    status["utilization"] = utilization_percent(members, usage)
    await _report(rt, body, status)
    metrics.set_pool(name, steps.desired, status["readyReplicas"], status["utilization"])

    if decision is not None and decision.below_since is not None:
        assert rt.pool_queue is not None and pool.spec.autoscaling is not None
        delay = pool.spec.autoscaling.scale_down_delay_seconds
        waited = (utcnow() - decision.below_since).total_seconds()
        rt.pool_queue.add_after(name, max(delay - waited, 0) + 0.5)
    if conditions.is_true(status["conditions"], "Scaling"):
        raise Requeue(CONVERGING_RECHECK_SECONDS)


# ---- demand --------------------------------------------------------------------------------


def waiting_for_room(
    rt: Runtime, key: TunnelKey, request: TunnelRequest, result: Unschedulable
) -> None:
    """A tunnel found no room: if it asks for a pool (spec.relay.pool) and the pool is full,
    it counts as that pool's demand until it is placed."""
    pool = request.placement.pool
    if not pool or result.reason != CAPACITY_EXHAUSTED:
        not_waiting(rt, key)
        return
    rt.pool_waiting.setdefault(pool, {})[key] = RelayLoad(1, request.bandwidth or 0)
    rt.waiting_in_pool[key] = pool
    poke(rt, pool)


def not_waiting(rt: Runtime, key: TunnelKey) -> None:
    pool = rt.waiting_in_pool.pop(key, None)
    if pool is not None:
        rt.pool_waiting.get(pool, {}).pop(key, None)
        poke(rt, pool)


def poke(rt: Runtime, pool: str) -> None:
    """Reconcile the pool once, a moment from now (many pokes in that moment make one)."""
    if pool in rt.pools_poked or rt.pool_queue is None:
        return
    rt.pools_poked.add(pool)

    def due() -> None:
        rt.pools_poked.discard(pool)
        assert rt.pool_queue is not None
        rt.pool_queue.add(pool)

    asyncio.get_running_loop().call_later(SETTLE_SECONDS, due)


def _load(rt: Runtime, relay: str) -> RelayLoad:
    usage = rt.table.usage(relay)
    return RelayLoad(tunnels=usage.tunnels, bandwidth=usage.bandwidth)


def _autoscale(
    rt: Runtime, pool: RelayPool, members: list[PoolMember], usage: dict[str, RelayLoad]
) -> ScaleDecision:
    """The autoscaler's decision, from the count it chose last (status.desiredReplicas, so a
    restart does not forget it), with an Event when it changes."""
    name = pool.metadata.name or ""
    assert pool.spec.autoscaling is not None
    current = pool.status.desired_replicas
    if current is None:  # a new pool starts from spec.replicas, within min and max
        current = desired_replicas(pool)
    waiting = rt.pool_waiting.get(name, {}).values()
    demand = Demand(
        tunnels=sum(w.tunnels for w in waiting), bandwidth=sum(w.bandwidth for w in waiting)
    )
    decision = autoscale(
        pool.spec.autoscaling,
        pool.spec,
        current,
        members,
        usage,
        demand,
        rt.pool_below_since.get(name),
        utcnow(),
    )
    if decision.below_since is None:
        rt.pool_below_since.pop(name, None)
    else:
        rt.pool_below_since[name] = decision.below_since
    if decision.changes(current):
        reason = "ScaledUp" if decision.desired_replicas > current else "ScaledDown"
        body = rt.cache.pools[name]
        rt.post_event(body, "Normal", reason, decision.reason)
        log.info("pool scaled", pool=name, replicas=decision.desired_replicas, why=decision.reason)
    return decision


# ---- applying ------------------------------------------------------------------------------


def _owned_relays(rt: Runtime, body: dict[str, Any]) -> list[RelayNode]:
    """The pool's RelayNodes: labelled with it and owned by this very pool (its UID)."""
    name, uid = body["metadata"]["name"], body["metadata"].get("uid")
    owned = []
    for relay in rt.cache.relays.values():
        meta = relay["metadata"]
        if (meta.get("labels") or {}).get(POOL_LABEL) != name:
            continue
        if not any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
            continue
        try:
            owned.append(RelayNode.model_validate(relay))
        except ValidationError:
            continue  # its own controller reports it; the pool neither counts nor touches it
    return sorted(owned, key=lambda r: r.metadata.name or "")


async def _create(rt: Runtime, body: dict[str, Any], pool: RelayPool, name: str) -> None:
    try:
        created = await rt.kube.create(relay_manifest(pool, name))
    except KubeError as exc:
        if exc.status == 409:
            return  # created by an earlier pass, not yet in the cache
        raise
    if created:
        rt.cache.relays[name] = created  # the next pass counts it before its watch event
    rt.post_event(body, "Normal", "RelayCreated", f"Created RelayNode {name}")


async def _drain(rt: Runtime, body: dict[str, Any], name: str, reason: str) -> None:
    """Start draining one of the pool's relays: its controller moves its tunnels away."""
    patch = {
        "metadata": {"annotations": {DRAIN_REASON_ANNOTATION: reason}},
        "spec": {"drain": True},
    }
    try:
        updated = await rt.kube.patch(API_VERSION, "RelayNode", name, None, patch)
    except KubeError as exc:
        if exc.status == 404:
            return
        raise
    if updated:
        rt.cache.relays[name] = updated  # counts against the disruption budget at once
    why = "scale-down" if reason == SCALE_DOWN else "template roll-out"
    rt.post_event(body, "Normal", "RelayDraining", f"Draining RelayNode {name} ({why})")


async def _report(rt: Runtime, body: dict[str, Any], status: dict[str, Any]) -> None:
    old = body.get("status") or {}
    if {k: old.get(k) for k in status} == status:
        return
    result = await rt.kube.patch_status(
        "RelayPool", body["metadata"]["name"], None, merge_patch(old, status)
    )
    if result:
        rt.cache.pools[body["metadata"]["name"]] = result


async def _report_invalid(rt: Runtime, body: dict[str, Any], message: str) -> None:
    generation = body["metadata"].get("generation")
    old = body.get("status") or {}
    ready = conditions.condition("Ready", False, "InvalidSpec", message, generation)
    status = {
        "observedGeneration": generation,
        "conditions": conditions.merge(old.get("conditions"), ready),
    }
    await _report(rt, body, status)
