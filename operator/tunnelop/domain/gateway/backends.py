"""A route's backendRefs, resolved: the one Service port its listeners forward to, or why
none. tunnelop forwards a listener to one backend (an in-cluster frpc reaching one Service),
in the route's own namespace (a Tunnel's client reaches the Services of its namespace):

- more than one backendRef with a weight above 0: the rule is not implemented (Accepted
  False, UnsupportedValue); backends of weight 0 get no traffic and are allowed;
- a kind other than a core Service: InvalidKind;
- a Service in another namespace: RefNotPermitted, whatever ReferenceGrants say;
- a Service, or a port of it, that does not exist: BackendNotFound;
- a Service port of another protocol (a UDPRoute to a TCP port): UnsupportedProtocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tunnelop.domain.gateway.resources import BackendRefView, Key, RouteView, ServiceView
from tunnelop.domain.gateway.verdict import Verdict, false, true
from tunnelop.domain.gateway.vocabulary import (
    BACKEND_NOT_FOUND,
    INVALID_KIND,
    REF_NOT_PERMITTED,
    RESOLVED_REFS,
    TUNNEL_PROTOCOL_OF_KIND,
    UNSUPPORTED_PROTOCOL,
    UNSUPPORTED_VALUE,
)


@dataclass(frozen=True)
class Target:
    service: str
    port: int


@dataclass(frozen=True)
class BackendPlan:
    # Why the route's rule cannot be implemented (Accepted False), None if it can.
    rule_problem: Verdict | None
    resolved_refs: Verdict
    # Where its listeners forward; None: nowhere (connections are refused).
    target: Target | None


def judge_backends(route: RouteView, services: Mapping[Key, ServiceView]) -> BackendPlan:
    if len(route.rules) != 1:
        problem = false(
            UNSUPPORTED_VALUE,
            f"spec.rules has {len(route.rules)} rules; a {route.kind} has exactly one",
        )
        return BackendPlan(problem, true(RESOLVED_REFS, "no backends"), None)
    refs = route.rules[0]
    problems = [(i, _problem(route, ref, services)) for i, ref in enumerate(refs)]
    failed = [(i, p) for i, p in problems if p is not None]
    if failed:
        reason = failed[0][1].reason
        message = "; ".join(f"backendRefs[{i}]: {p.message}" for i, p in failed)
        resolved = false(reason, message)
    else:
        resolved = true(RESOLVED_REFS, "backends resolved")
    weighted = [i for i, ref in enumerate(refs) if ref.weight > 0]
    if len(weighted) > 1:
        problem = false(
            UNSUPPORTED_VALUE,
            f"spec.rules[0].backendRefs: {len(weighted)} backends have a weight above 0; "
            "tunnelop forwards a listener to one backend (no weighted load balancing): keep "
            "one, or set weight 0 on the others",
        )
        return BackendPlan(problem, resolved, None)
    target = None
    if weighted and problems[weighted[0]][1] is None:
        ref = refs[weighted[0]]
        assert ref.port is not None
        target = Target(ref.name, ref.port)
    return BackendPlan(None, resolved, target)


def _problem(
    route: RouteView, ref: BackendRefView, services: Mapping[Key, ServiceView]
) -> Verdict | None:
    if (ref.group, ref.kind) != ("", "Service"):
        return false(
            INVALID_KIND,
            f"{ref.kind} of group {ref.group or 'core'} is not supported; tunnelop forwards "
            "to Services (group '', kind Service)",
        )
    namespace = route.meta.namespace
    if ref.namespace is not None and ref.namespace != namespace:
        return false(
            REF_NOT_PERMITTED,
            f"Service {ref.namespace}/{ref.name} is in another namespace; tunnelop serves "
            f"backends in the route's namespace only ({namespace}), ReferenceGrants or not: "
            f"put the {route.kind} in namespace {ref.namespace}",
        )
    if ref.port is None:
        return false(BACKEND_NOT_FOUND, f"Service {ref.name}: port is required")
    service = services.get((namespace, ref.name))
    if service is None:
        return false(BACKEND_NOT_FOUND, f"Service {namespace}/{ref.name} not found")
    wanted = TUNNEL_PROTOCOL_OF_KIND.get(route.kind, "tcp").upper()
    protocols = sorted(p for port, p in service.ports if port == ref.port)
    if not protocols:
        ports = ", ".join(str(p) for p in sorted({p for p, _ in service.ports})) or "none"
        return false(
            BACKEND_NOT_FOUND,
            f"Service {namespace}/{ref.name} has no port {ref.port} (its ports: {ports})",
        )
    if wanted not in protocols:
        return false(
            UNSUPPORTED_PROTOCOL,
            f"Service {namespace}/{ref.name} port {ref.port} is {'/'.join(protocols)}; a "
            f"{route.kind} needs a {wanted} port",
        )
    return None
