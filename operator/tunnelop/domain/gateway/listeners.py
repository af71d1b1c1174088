"""A Gateway listener judged on its own: the route kinds it serves (TCP: TCPRoute, UDP:
UDPRoute; no other protocol), and whether its port can be had on the Gateway's relay."""

from __future__ import annotations

from dataclasses import dataclass

from tunnelop.domain.gateway.observed import RelayState
from tunnelop.domain.gateway.resources import ListenerView, RouteKindRef
from tunnelop.domain.gateway.verdict import Verdict, false, true
from tunnelop.domain.gateway.vocabulary import (
    ACCEPTED,
    GROUP,
    INVALID_ROUTE_KINDS,
    PORT_UNAVAILABLE,
    RESOLVED_REFS,
    ROUTE_KIND_OF_PROTOCOL,
    UNSUPPORTED_PROTOCOL,
)

SERVED = "TCP (TCPRoute) and UDP (UDPRoute)"


@dataclass(frozen=True)
class ListenerPlan:
    listener: ListenerView
    supported_kinds: tuple[RouteKindRef, ...]
    accepted: Verdict
    resolved_refs: Verdict

    @property
    def family(self) -> str | None:
        """The relay's port family it takes: tcp or udp (None for a refused protocol)."""
        kind = ROUTE_KIND_OF_PROTOCOL.get(self.listener.protocol)
        return {"TCPRoute": "tcp", "UDPRoute": "udp"}.get(kind or "")

    def serves(self, route_kind: str) -> bool:
        return RouteKindRef(GROUP, route_kind) in self.supported_kinds

    def refused(self, verdict: Verdict) -> ListenerPlan:
        return ListenerPlan(self.listener, self.supported_kinds, verdict, self.resolved_refs)


def judge_listener(listener: ListenerView) -> ListenerPlan:
    kind = ROUTE_KIND_OF_PROTOCOL.get(listener.protocol)
    if kind is None:
        accepted = false(
            UNSUPPORTED_PROTOCOL,
            f"protocol {listener.protocol} is not supported: tunnelop serves {SERVED} "
            "listeners (HTTP, HTTPS and TLS pass through a TCP listener as plain TCP)",
        )
        if listener.route_kinds:
            kinds = ", ".join(k.kind for k in listener.route_kinds)
            resolved = false(
                INVALID_ROUTE_KINDS, f"allowedRoutes.kinds {kinds}: no route kind is served here"
            )
        else:
            resolved = true(RESOLVED_REFS, "no references to resolve")
        return ListenerPlan(listener, (), accepted, resolved)
    own = RouteKindRef(GROUP, kind)
    accepted = true(ACCEPTED, f"serves {kind}s on port {listener.port}")
    if listener.route_kinds is None:
        return ListenerPlan(listener, (own,), accepted, true(RESOLVED_REFS, "route kinds resolved"))
    invalid = [k for k in listener.route_kinds if k != own]
    supported = (own,) if own in listener.route_kinds else ()
    if invalid:
        named = ", ".join(f"{k.kind} ({k.group or 'core'})" for k in invalid)
        resolved = false(
            INVALID_ROUTE_KINDS,
            f"allowedRoutes.kinds: {named} not supported on a {listener.protocol} listener, "
            f"which serves {kind} of group {GROUP}",
        )
    else:
        resolved = true(RESOLVED_REFS, "route kinds resolved")
    return ListenerPlan(listener, supported, accepted, resolved)


def port_refusal(plan: ListenerPlan, relay: RelayState) -> Verdict | None:
    """Why the listener's port cannot be had on `relay` whoever holds it (None if it can):
    the relay's own port rule (range, reserved, blocked, its own ports) and protocols."""
    family, view = plan.family, relay.view
    if family is None or view is None:
        return None
    port = plan.listener.port
    if family not in view.protocols:
        return false(
            UNSUPPORTED_PROTOCOL,
            f"relay {relay.name} does not serve {family} (its spec.protocols: "
            f"{', '.join(view.protocols)})",
        )
    refusal = view.port_refusal(port)
    if refusal is None:
        return None
    return false(
        PORT_UNAVAILABLE,
        f"port {port} is {refusal} on relay {relay.name}; its tunnels may have "
        f"{view.describe_ports()}",
    )
