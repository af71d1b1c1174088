"""What the translation needs to know of tunnelop's own objects: each relay a Gateway could
be served by, and each Tunnel made for a route, as last seen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunnelop.domain import conditions
from tunnelop.domain.gateway.resources import Key
from tunnelop.domain.gateway.vocabulary import GATEWAY_ANNOTATION, LISTENER_ANNOTATION
from tunnelop.domain.relayview import POOL_LABEL, RelayView


@dataclass(frozen=True)
class RelayState:
    name: str
    pool: str | None
    ready: bool
    # Neither cordoned, nor draining, nor being deleted: it takes new tunnels.
    takes_tunnels: bool
    public_address: str | None
    # Its ports rule; None when its spec does not validate.
    view: RelayView | None

    @classmethod
    def of(cls, body: Mapping[str, Any], view: RelayView | None) -> RelayState:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        takes = not (
            spec.get("unschedulable")
            or spec.get("drain")
            or meta.get("deletionTimestamp")
            or (view is not None and view.drain is not None)
        )
        return cls(
            name=meta.get("name", ""),
            pool=(meta.get("labels") or {}).get(POOL_LABEL),
            ready=conditions.is_true(status.get("conditions"), "Ready"),
            takes_tunnels=takes,
            public_address=status.get("publicAddress") or None,
            view=view,
        )


# Tunnel reasons that say the listener's port cannot be had on the relay.
PORT_REASONS = ("PortTaken", "PortNotAllowed")


@dataclass(frozen=True)
class TunnelSeen:
    """A Tunnel made for a route, as last seen."""

    key: Key
    gateway: Key | None
    listener: str | None
    # Where it runs (status.relayNode), else where it is pinned (spec.relay.node).
    relay: str | None
    ready: bool
    # The reason and message of its Scheduled condition when False, else of Ready.
    reason: str | None
    message: str
    port_refused: bool
    # Its metadata.generation: a spec changed by anyone makes the controller look again.
    generation: int | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> TunnelSeen:
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        namespace, _, name = (annotations.get(GATEWAY_ANNOTATION) or "").partition("/")
        status = body.get("status") or {}
        found = status.get("conditions")
        scheduled = conditions.find(found, "Scheduled")
        ready = conditions.find(found, "Ready")
        failing = scheduled if scheduled and scheduled.get("status") == "False" else ready
        return cls(
            key=(meta.get("namespace", ""), meta.get("name", "")),
            gateway=(namespace, name) if name else None,
            listener=annotations.get(LISTENER_ANNOTATION),
            relay=status.get("relayNode")
            or ((body.get("spec") or {}).get("relay") or {}).get("node"),
            ready=conditions.is_true(found, "Ready"),
            reason=(failing or {}).get("reason"),
            message=(failing or {}).get("message") or "",
            port_refused=bool(
                scheduled
                and scheduled.get("status") == "False"
                and scheduled.get("reason") in PORT_REASONS
            ),
            generation=meta.get("generation"),
        )
