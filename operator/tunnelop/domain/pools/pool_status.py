"""A RelayPool's status: replicas, readyReplicas, selector, desiredReplicas, utilization and
the conditions Ready, Scaling, Reconciling and InvalidTemplate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunnelop.api.v1alpha1 import RelayPool
from tunnelop.domain import conditions
from tunnelop.domain.pools.autoscale import ScaleDecision
from tunnelop.domain.pools.members import PoolMember
from tunnelop.domain.pools.plan import Plan
from tunnelop.domain.pools.relay_names import MAX_POOL_SIZE, relay_name
from tunnelop.domain.pools.template import pool_selector, template_problems

READY = "Ready"
SCALING = "Scaling"
# Scaling under the name kstatus (Flux, kpt) reads: a pool that scales down or rolls out
# while Ready stays True is still in progress, not Current (docs/gitops.md).
RECONCILING = "Reconciling"
INVALID_TEMPLATE = "InvalidTemplate"


def check_template(pool: RelayPool) -> list[str]:
    """The template's problems (see `template_problems`), tried with the pool's longest name."""
    return template_problems(pool, relay_name(pool.metadata.name or "", MAX_POOL_SIZE - 1))


def pool_status(
    pool: RelayPool,
    owned: Sequence[PoolMember],
    plan: Plan,
    *,
    decision: ScaleDecision | None = None,
    problems: Sequence[str] = (),
) -> dict[str, Any]:
    """The status to write (camelCase keys), with conditions merged into the pool's current
    ones so that an unchanged condition keeps its lastTransitionTime. `problems` are the
    template's (from `check_template`); with any, the controller creates no relays."""
    generation = pool.metadata.generation
    active = [m for m in owned if not m.going_away]
    ready = [m for m in owned if m.ready]
    ready_serving = [m for m in active if m.ready]
    desired = plan.desired

    if problems:
        invalid = conditions.condition(
            INVALID_TEMPLATE,
            True,
            INVALID_TEMPLATE,
            "No RelayNode is created or replaced: " + "; ".join(problems),
            generation,
        )
    else:
        invalid = conditions.condition(
            INVALID_TEMPLATE,
            False,
            "TemplateValid",
            "The template makes valid RelayNodes",
            generation,
        )

    scaling_reason, scaling_message = _scaling(plan, active, ready_serving, owned, problems)
    scaling = conditions.condition(
        SCALING, scaling_reason != "Converged", scaling_reason, scaling_message, generation
    )
    reconciling = {**scaling, "type": RECONCILING}
    is_ready = len(ready_serving) >= desired
    ready_condition = conditions.condition(
        READY,
        is_ready,
        "ReplicasReady" if is_ready else "ReplicasNotReady",
        f"{len(ready_serving)} of {desired} RelayNodes are ready",
        generation,
    )
    existing = [
        c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in pool.status.conditions
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": len(owned),
        "readyReplicas": len(ready),
        "desiredReplicas": desired,
        "selector": pool_selector(pool.metadata.name or ""),
        "conditions": conditions.merge(existing, ready_condition, scaling, reconciling, invalid),
    }
    if decision is not None:
        status["utilization"] = decision.utilization
    return status


def _scaling(
    plan: Plan,
    active: Sequence[PoolMember],
    ready_serving: Sequence[PoolMember],
    owned: Sequence[PoolMember],
    problems: Sequence[str],
) -> tuple[str, str]:
    """Scaling's reason and message: what the pool is converging on, or Converged."""
    going = len(owned) - len(active)
    if problems and (len(active) < plan.desired or plan.outdated):
        return "TemplateInvalid", "Waiting for a valid template: " + "; ".join(problems)
    if len(active) < plan.desired:
        return "ScalingUp", f"{len(active)} of {plan.desired} RelayNodes exist"
    if len(active) > plan.desired or plan.drain:
        return "ScalingDown", f"{len(active)} RelayNodes, {plan.desired} desired"
    if plan.outdated:
        return "RollingOut", f"{plan.outdated} RelayNodes still run an older template"
    if going:
        return "Draining", f"{going} RelayNodes are moving their tunnels away before removal"
    if len(ready_serving) < plan.desired:
        return "WaitingForReady", f"{len(ready_serving)} of {plan.desired} RelayNodes are ready"
    return "Converged", f"{plan.desired} RelayNodes, all ready and on the current template"
