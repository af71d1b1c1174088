"""Translation outcomes as the statuses to write, merged into what the objects carry: a
condition's lastTransitionTime moves only when its status flips, conditions of other types
stay, and a route's parents entries of other controllers stay as they are (the standard:
an implementation updates only the entries of its controllerName). An unchanged outcome
gives back an identical status, so nothing is written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunnelop.domain import conditions
from tunnelop.domain.gateway.translation import GatewayOutcome, ParentOutcome, RouteOutcome
from tunnelop.domain.gateway.verdict import Verdict
from tunnelop.domain.gateway.vocabulary import (
    ACCEPTED,
    CONFLICTED,
    CONTROLLER_NAME,
    PROGRAMMED,
    RESOLVED_REFS,
    SUPPORTED_FEATURES,
)

MAX_PARENTS = 32  # status.parents, as the CRDs bound it


def class_status(
    old: Mapping[str, Any], accepted: Verdict, generation: int | None
) -> dict[str, Any]:
    return {
        "conditions": conditions.merge(
            old.get("conditions"), accepted.condition(ACCEPTED, generation)
        ),
        "supportedFeatures": [{"name": name} for name in SUPPORTED_FEATURES],
    }


def gateway_status(old: Mapping[str, Any], outcome: GatewayOutcome) -> dict[str, Any]:
    generation = outcome.gateway.meta.generation
    old_listeners = {
        entry.get("name"): entry for entry in old.get("listeners") or [] if isinstance(entry, dict)
    }
    listeners = []
    for listener in outcome.listeners:
        before = old_listeners.get(listener.name) or {}
        listeners.append(
            {
                "name": listener.name,
                "supportedKinds": [
                    {"group": group, "kind": kind} for group, kind in listener.supported_kinds
                ],
                "attachedRoutes": listener.attached_routes,
                "conditions": conditions.merge(
                    before.get("conditions"),
                    listener.accepted.condition(ACCEPTED, generation),
                    listener.programmed.condition(PROGRAMMED, generation),
                    listener.resolved_refs.condition(RESOLVED_REFS, generation),
                    listener.conflicted.condition(CONFLICTED, generation),
                ),
            }
        )
    return {
        # None (no address yet) removes the field in a merge patch, and equals its absence.
        "addresses": [{"type": kind, "value": value} for kind, value in outcome.addresses] or None,
        "conditions": conditions.merge(
            old.get("conditions"),
            outcome.accepted.condition(ACCEPTED, generation),
            outcome.programmed.condition(PROGRAMMED, generation),
        ),
        "listeners": listeners,
    }


def route_parents(old: Mapping[str, Any], outcome: RouteOutcome | None) -> list[dict[str, Any]]:
    """status.parents: other controllers' entries as they are, then ours (one per parentRef
    to a Gateway of ours, in spec order; none left for parentRefs gone)."""
    before = [p for p in old.get("parents") or [] if isinstance(p, dict)]
    foreign = [p for p in before if p.get("controllerName") != CONTROLLER_NAME]
    ours = [p for p in before if p.get("controllerName") == CONTROLLER_NAME]
    entries = []
    for parent in outcome.parents if outcome else ():
        previous = next((p for p in ours if _same_ref(p.get("parentRef"), parent)), {})
        entries.append(_parent_entry(parent, previous, outcome.route.meta.generation))
    return (foreign + entries)[:MAX_PARENTS]


def _parent_entry(
    parent: ParentOutcome, previous: Mapping[str, Any], generation: int | None
) -> dict[str, Any]:
    return {
        "parentRef": dict(parent.parent.raw),
        "controllerName": CONTROLLER_NAME,
        "conditions": conditions.merge(
            previous.get("conditions"),
            parent.accepted.condition(ACCEPTED, generation),
            parent.resolved_refs.condition(RESOLVED_REFS, generation),
        ),
    }


def _same_ref(written: Any, parent: ParentOutcome) -> bool:
    if not isinstance(written, dict):
        return False
    return _ref_identity(written) == _ref_identity(parent.parent.raw)


def _ref_identity(ref: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        ref.get("group", "gateway.networking.k8s.io"),
        ref.get("kind", "Gateway"),
        ref.get("namespace") or None,
        ref.get("name"),
        ref.get("sectionName") or None,
        ref.get("port"),
    )
