"""The Gateway API translated: from GatewayClasses, Gateways, TCPRoutes, UDPRoutes, Services
and tunnelop's relays and Tunnels to the Tunnels wanted and every status outcome. Pure: the
controller reads the world from its caches, writes the Tunnels wanted (and deletes the
others it made), then writes the statuses status_merge builds from this.

How it decides, in order:
1. GatewayClasses of controllerName tunnelop.dev/gateway-controller are accepted unless
   their parametersRef names no relay (relay_choice).
2. Each Gateway of such a class, oldest first, gets a relay (relay_choice) and judges its
   listeners (listeners): protocol, route kinds, and its port on that relay: free of the
   relay's own rules, of Tunnels that are not its own and of older Gateways' listeners on
   the same relay (the standard's conflict rule: the oldest wins).
3. Each route's parentRefs to such Gateways attach it to the listeners they select
   (sectionName, port) that serve its kind and allow its namespace (allowedRoutes).
4. Each listener serves the oldest route attached to it (the standard's rule again); that
   route's backend (backends) gets a Tunnel: the listener's port as spec.remotePort on the
   Gateway's relay, an in-cluster client to the Service port, in the route's namespace.
5. A listener is Programmed when its Tunnel is Ready; a Tunnel the relay refuses the port
   makes it PortUnavailable. What Tunnels report never changes which Tunnels are wanted, so
   the two cannot chase each other.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from tunnelop.domain.gateway.backends import BackendPlan, Target, judge_backends
from tunnelop.domain.gateway.label_selectors import selector_problem, selects
from tunnelop.domain.gateway.listeners import ListenerPlan, judge_listener, port_refusal
from tunnelop.domain.gateway.observed import RelayState, TunnelSeen
from tunnelop.domain.gateway.relay_choice import (
    Placement,
    choose_relay,
    parameters_problem,
    placement_of,
)
from tunnelop.domain.gateway.resources import (
    GatewayClassView,
    GatewayView,
    Key,
    ParentRefView,
    RouteView,
    ServiceView,
)
from tunnelop.domain.gateway.verdict import Verdict, false, true, unknown
from tunnelop.domain.gateway.vocabulary import (
    ACCEPTED,
    ADDRESS_NOT_ASSIGNED,
    ADDRESS_NOT_USABLE,
    CONTROLLER_NAME,
    INVALID,
    INVALID_PARAMETERS,
    LISTENERS_NOT_VALID,
    NO_CONFLICTS,
    NO_MATCHING_PARENT,
    NO_RESOURCES,
    NOT_ALLOWED_BY_LISTENERS,
    PENDING,
    PORT_UNAVAILABLE,
    PROGRAMMED,
    TUNNEL_PROTOCOL_OF_KIND,
    UNSUPPORTED_ADDRESS,
)

PortKey = tuple[str, str, int]  # (relay, tcp | udp, port)
ADDRESS_TYPES = ("IPAddress", "Hostname")
TUNNEL_NAME_MAX = 50


@dataclass(frozen=True)
class World:
    classes: Mapping[str, GatewayClassView]
    gateways: Mapping[Key, GatewayView]
    routes: Sequence[RouteView]
    services: Mapping[Key, ServiceView]
    namespace_labels: Mapping[str, Mapping[str, str]]
    relays: Mapping[str, RelayState]
    pools: AbstractSet[str]
    # The Tunnels made for routes, as last seen.
    tunnels: Mapping[Key, TunnelSeen] = field(default_factory=dict)
    # Who holds each tcp and udp port of each relay (the allocation table).
    port_holders: Mapping[PortKey, Key] = field(default_factory=dict)
    # Tunnels whose last write the API server refused, with its message.
    write_errors: Mapping[Key, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TunnelWant:
    key: Key  # (the route's namespace, a name from tunnel_name)
    protocol: str  # tcp | udp
    port: int
    node: str
    pool: str | None
    target: Target
    route: RouteView = field(hash=False, compare=False)
    gateway: Key = ("", "")
    listener: str = ""


@dataclass(frozen=True)
class ListenerOutcome:
    name: str
    supported_kinds: tuple[tuple[str, str], ...]  # (group, kind)
    attached_routes: int
    accepted: Verdict
    programmed: Verdict
    resolved_refs: Verdict
    conflicted: Verdict


@dataclass(frozen=True)
class GatewayOutcome:
    gateway: GatewayView
    addresses: tuple[tuple[str, str], ...]  # (type, value)
    accepted: Verdict
    programmed: Verdict
    listeners: tuple[ListenerOutcome, ...]
    relay: str | None


@dataclass(frozen=True)
class ParentOutcome:
    parent: ParentRefView
    accepted: Verdict
    resolved_refs: Verdict
    # The listeners of the Gateway it is attached to.
    listeners: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteOutcome:
    route: RouteView
    parents: tuple[ParentOutcome, ...]


@dataclass
class Translation:
    classes: dict[str, tuple[GatewayClassView, Verdict]] = field(default_factory=dict)
    gateways: dict[Key, GatewayOutcome] = field(default_factory=dict)
    routes: dict[tuple[str, str, str], RouteOutcome] = field(default_factory=dict)
    tunnels: dict[Key, TunnelWant] = field(default_factory=dict)


@dataclass
class _GatewayWork:
    gateway: GatewayView
    placement: Placement | None
    relay: RelayState | None
    accepted: Verdict
    programmed: Verdict
    plans: list[ListenerPlan]


def translate(world: World) -> Translation:
    result = Translation()
    for name, gateway_class in sorted(world.classes.items()):
        if gateway_class.controller == CONTROLLER_NAME:
            result.classes[name] = (gateway_class, _judge_class(gateway_class, world))
    claims: dict[PortKey, tuple[GatewayView, str]] = {}
    works: dict[Key, _GatewayWork] = {}
    ours = [g for g in world.gateways.values() if g.class_name in result.classes]
    for gateway in sorted(ours, key=lambda g: g.meta.age_order()):
        verdict = result.classes[gateway.class_name][1]
        works[gateway.meta.key] = _judge_gateway(gateway, verdict, world, claims)

    attached: dict[tuple[Key, str], list[RouteView]] = defaultdict(list)
    plans: dict[tuple[str, str, str], BackendPlan] = {}
    for route in sorted(world.routes, key=lambda r: r.meta.age_order()):
        plan = plans[route.key] = judge_backends(route, world.services)
        parents = []
        for parent in route.parents:
            gateway_key = parent.gateway_key(route.meta.namespace)
            work = works.get(gateway_key) if gateway_key else None
            if work is None:
                continue  # not a Gateway of ours: another controller's to report
            accepted, names = _attach(route, parent, work, plan, world.namespace_labels)
            for name in names:
                if route not in attached[(work.gateway.meta.key, name)]:
                    attached[(work.gateway.meta.key, name)].append(route)
            parents.append(ParentOutcome(parent, accepted, plan.resolved_refs, tuple(names)))
        if parents:
            result.routes[route.key] = RouteOutcome(route, tuple(parents))

    winners: dict[tuple[Key, str], RouteView] = {}
    for key, work in works.items():
        listeners = []
        for plan in work.plans:
            name = plan.listener.name
            routes = attached.get((key, name), [])
            want = None
            if routes:
                winners[(key, name)] = routes[0]
                want = _want(routes[0], plans[routes[0].key], plan, work)
            if want is not None:
                result.tunnels[want.key] = want
            listeners.append(_listener_outcome(plan, work, want, len(routes), world))
        result.gateways[key] = GatewayOutcome(
            gateway=work.gateway,
            addresses=_addresses(work),
            accepted=work.accepted,
            programmed=work.programmed,
            listeners=tuple(listeners),
            relay=work.relay.name if work.relay else None,
        )
    _note_listeners(result, winners)
    return result


# ---- classes and Gateways -----------------------------------------------------------------


def _judge_class(gateway_class: GatewayClassView, world: World) -> Verdict:
    if gateway_class.parameters is None:
        return true(ACCEPTED, "Gateways of this class name their relay by annotation")
    problem = parameters_problem(gateway_class.parameters, world.pools, world.relays)
    if problem is not None:
        return false(INVALID_PARAMETERS, problem)
    ref = gateway_class.parameters
    return true(ACCEPTED, f"Gateways of this class are served by {ref.kind} {ref.name}")


def _judge_gateway(
    gateway: GatewayView,
    class_verdict: Verdict,
    world: World,
    claims: dict[PortKey, tuple[GatewayView, str]],
) -> _GatewayWork:
    plans = [judge_listener(listener) for listener in gateway.listeners]
    refusal: Verdict | None = None
    placement = relay = None
    unsupported = sorted({a.type for a in gateway.addresses if a.type not in ADDRESS_TYPES})
    if not class_verdict.ok:
        refusal = false(
            INVALID_PARAMETERS,
            f"GatewayClass {gateway.class_name} is not accepted: {class_verdict.message}",
        )
    elif unsupported:
        refusal = false(
            UNSUPPORTED_ADDRESS,
            f"spec.addresses: type {', '.join(unsupported)} is not supported; tunnelop "
            f"assigns the relay's address, of type {' or '.join(ADDRESS_TYPES)}",
        )
    else:
        found = placement_of(gateway, world.classes[gateway.class_name], world.pools, world.relays)
        if isinstance(found, str):
            refusal = false(INVALID_PARAMETERS, found)
        else:
            placement = found
            current = [
                t.relay for t in world.tunnels.values() if t.gateway == gateway.meta.key and t.relay
            ]
            relay = choose_relay(gateway.meta.uid, placement, world.relays, current)
    if relay is not None:
        plans = [_claim_port(plan, gateway, relay, world, claims) for plan in plans]
    accepted = refusal or _accepted(plans)
    programmed = _programmed(gateway, accepted, placement, relay)
    return _GatewayWork(gateway, placement, relay, accepted, programmed, plans)


def _claim_port(
    plan: ListenerPlan,
    gateway: GatewayView,
    relay: RelayState,
    world: World,
    claims: dict[PortKey, tuple[GatewayView, str]],
) -> ListenerPlan:
    if not plan.accepted.ok or plan.family is None:
        return plan
    refused = port_refusal(plan, relay)
    if refused is not None:
        return plan.refused(refused)
    port = plan.listener.port
    key = (relay.name, plan.family, port)
    claimed = claims.get(key)
    if claimed is not None:
        older, name = claimed
        by = (
            f"listener {name} of this Gateway"
            if older is gateway
            else f"the older Gateway {older.meta.namespace}/{older.meta.name}"
        )
        return plan.refused(
            false(
                PORT_UNAVAILABLE,
                f"port {port}/{plan.family} of relay {relay.name} is taken by {by}",
            )
        )
    holder = world.port_holders.get(key)
    seen = world.tunnels.get(holder) if holder else None
    ours = seen is not None and (seen.gateway, seen.listener) == (
        gateway.meta.key,
        plan.listener.name,
    )
    if holder is not None and not ours:
        return plan.refused(
            false(
                PORT_UNAVAILABLE,
                f"port {port}/{plan.family} of relay {relay.name} is held by Tunnel "
                f"{holder[0]}/{holder[1]}",
            )
        )
    claims[key] = (gateway, plan.listener.name)
    return plan


def _accepted(plans: list[ListenerPlan]) -> Verdict:
    invalid = [p for p in plans if not p.accepted.ok]
    if not invalid:
        return true(ACCEPTED, "all listeners are valid")
    why = "; ".join(f"{p.listener.name}: {p.accepted.message}" for p in invalid)
    if len(invalid) < len(plans):
        return true(LISTENERS_NOT_VALID, f"some listeners are not valid: {why}")
    return false(LISTENERS_NOT_VALID, f"no listener is valid: {why}")


def _programmed(
    gateway: GatewayView, accepted: Verdict, placement: Placement | None, relay: RelayState | None
) -> Verdict:
    if not accepted.ok:
        return false(INVALID, f"the Gateway is not accepted: {accepted.message}")
    if relay is None:
        assert placement is not None
        return false(
            NO_RESOURCES,
            f"{placement.describe()} has no relay that takes tunnels (none, or all "
            "cordoned, draining or being deleted)",
        )
    address = relay.public_address
    if not address:
        return false(
            ADDRESS_NOT_ASSIGNED, f"relay {relay.name} has no public address yet (its status)"
        )
    wrong = [a.value for a in gateway.addresses if a.value and a.value != address]
    if wrong:
        return false(
            ADDRESS_NOT_USABLE,
            f"spec.addresses: {', '.join(wrong)} is not the address of relay {relay.name} "
            f"({address}); remove it, or ask for {address}",
        )
    if not relay.ready:
        return false(PENDING, f"relay {relay.name} is not ready")
    return true(PROGRAMMED, f"served by relay {relay.name} at {address}")


def _addresses(work: _GatewayWork) -> tuple[tuple[str, str], ...]:
    if work.relay is None or not work.relay.public_address or not work.accepted.ok:
        return ()
    address = work.relay.public_address
    kind = (
        "IPAddress"
        if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", address)
        else "Hostname"
    )
    return ((kind, address),)


# ---- routes -------------------------------------------------------------------------------


def _attach(
    route: RouteView,
    parent: ParentRefView,
    work: _GatewayWork,
    plan: BackendPlan,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> tuple[Verdict, list[str]]:
    """The route's Accepted on this parentRef, and the listeners it attaches to."""
    gateway = work.gateway
    where = f"Gateway {gateway.meta.namespace}/{gateway.meta.name}"
    selected = [
        p
        for p in work.plans
        if (parent.section is None or p.listener.name == parent.section)
        and (parent.port is None or p.listener.port == parent.port)
    ]
    if not selected:
        wanted = " and ".join(
            part
            for part in (
                f"sectionName {parent.section}" if parent.section is not None else "",
                f"port {parent.port}" if parent.port is not None else "",
            )
            if part
        )
        return false(NO_MATCHING_PARENT, f"{where} has no listener with {wanted}"), []
    allowed, refusals = [], []
    for p in selected:
        why = _refusal(route, p, gateway.meta.namespace, namespace_labels)
        if why is None:
            allowed.append(p.listener.name)
        else:
            refusals.append(f"{p.listener.name}: {why}")
    if not allowed:
        return false(NOT_ALLOWED_BY_LISTENERS, f"{where}: {'; '.join(refusals)}"), []
    if not work.accepted.ok:
        return unknown(PENDING, f"{where} is not accepted: {work.accepted.message}"), []
    if plan.rule_problem is not None:
        return plan.rule_problem, []
    return true(ACCEPTED, f"attached to listener {', '.join(allowed)} of {where}"), allowed


def _refusal(
    route: RouteView,
    plan: ListenerPlan,
    gateway_namespace: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> str | None:
    listener = plan.listener
    if not plan.serves(route.kind):
        kinds = ", ".join(k.kind for k in plan.supported_kinds) or "no route kind"
        return f"a {listener.protocol} listener serving {kinds}, not {route.kind}"
    namespace = route.meta.namespace
    if listener.routes_from == "All":
        return None
    if listener.routes_from == "Same":
        if namespace == gateway_namespace:
            return None
        return f"allows routes from namespace {gateway_namespace} only (allowedRoutes Same)"
    if listener.routes_from == "Selector":
        selector = listener.routes_selector or {}
        problem = selector_problem(selector)
        if problem is not None:
            return f"allowedRoutes.namespaces.selector cannot be evaluated: {problem}"
        if selects(selector, namespace_labels.get(namespace, {})):
            return None
        return f"its allowedRoutes selector does not select namespace {namespace}"
    return f"allowedRoutes.namespaces.from {listener.routes_from!r} is not All, Same or Selector"


def _want(
    route: RouteView, backend: BackendPlan, plan: ListenerPlan, work: _GatewayWork
) -> TunnelWant | None:
    if backend.target is None or not plan.accepted.ok or work.relay is None:
        return None
    gateway_key = work.gateway.meta.key
    return TunnelWant(
        key=(route.meta.namespace, tunnel_name(route, gateway_key, plan.listener.name)),
        protocol=TUNNEL_PROTOCOL_OF_KIND[route.kind],
        port=plan.listener.port,
        node=work.relay.name,
        pool=work.placement.pool if work.placement else None,
        target=backend.target,
        route=route,
        gateway=gateway_key,
        listener=plan.listener.name,
    )


def tunnel_name(route: RouteView, gateway: Key, listener: str) -> str:
    """`<route>-<listener>-<hash>`: readable, at most 50 characters (room for what is named
    after a Tunnel), and one per route, Gateway and listener."""
    identity = f"{route.kind}/{route.meta.namespace}/{route.meta.name}/{gateway[0]}/{gateway[1]}/{listener}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9-]+", "-", f"{route.meta.name}-{listener}".lower())
    readable = readable.strip("-")[: TUNNEL_NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else f"route-{digest}"


def _note_listeners(result: Translation, winners: Mapping[tuple[Key, str], RouteView]) -> None:
    """A route is Accepted on a listener whatever the listener's own state (the standard
    counts it as attached); where it gets no traffic, its message says why: the listener
    serves an older route, or is not accepted."""
    for route_key, outcome in result.routes.items():
        route = outcome.route
        parents = []
        for parent in outcome.parents:
            gateway_key = parent.parent.gateway_key(route.meta.namespace)
            gateway = result.gateways.get(gateway_key) if gateway_key else None
            notes = [
                note
                for name in parent.listeners
                if gateway is not None
                and (
                    note := _no_traffic(
                        name, gateway, winners.get((gateway.gateway.meta.key, name)), route
                    )
                )
            ]
            if notes:
                accepted = parent.accepted
                note = Verdict(
                    accepted.status, accepted.reason, "; ".join([accepted.message, *notes])
                )
                parent = ParentOutcome(parent.parent, note, parent.resolved_refs, parent.listeners)
            parents.append(parent)
        result.routes[route_key] = RouteOutcome(route, tuple(parents))


def _no_traffic(
    name: str, gateway: GatewayOutcome, winner: RouteView | None, route: RouteView
) -> str | None:
    if winner is not None and winner is not route:
        return (
            f"listener {name} serves the older {winner.kind} {winner.meta.namespace}/"
            f"{winner.meta.name}, so this route gets no traffic there (one route per TCP or "
            "UDP listener)"
        )
    listener = next((entry for entry in gateway.listeners if entry.name == name), None)
    if listener is not None and not listener.accepted.ok:
        return (
            f"listener {name} is not accepted ({listener.accepted.reason}), so this route gets "
            "no traffic there"
        )
    return None


# ---- listeners ----------------------------------------------------------------------------


def _listener_outcome(
    plan: ListenerPlan,
    work: _GatewayWork,
    want: TunnelWant | None,
    attached: int,
    world: World,
) -> ListenerOutcome:
    accepted = plan.accepted
    seen = world.tunnels.get(want.key) if want else None
    if seen is not None and seen.port_refused:
        accepted = false(PORT_UNAVAILABLE, f"Tunnel {_name(seen.key)}: {seen.message}")
    return ListenerOutcome(
        name=plan.listener.name,
        supported_kinds=tuple((k.group, k.kind) for k in plan.supported_kinds),
        attached_routes=attached,
        accepted=accepted,
        programmed=_listener_programmed(accepted, work, want, seen, world),
        resolved_refs=plan.resolved_refs,
        conflicted=false(NO_CONFLICTS, "no conflicts"),
    )


def _listener_programmed(
    accepted: Verdict,
    work: _GatewayWork,
    want: TunnelWant | None,
    seen: TunnelSeen | None,
    world: World,
) -> Verdict:
    if not accepted.ok:
        return false(INVALID, f"the listener is not accepted: {accepted.message}")
    if not work.programmed.ok:
        return false(PENDING, f"the Gateway is not programmed: {work.programmed.message}")
    if want is None:
        return true(PROGRAMMED, "programmed; no route with a resolved backend is attached")
    name = _name(want.key)
    error = world.write_errors.get(want.key)
    if error is not None:
        return false(INVALID, f"Tunnel {name} was refused: {error}")
    if seen is None:
        return false(PENDING, f"Tunnel {name} is being created")
    if seen.ready:
        return true(PROGRAMMED, f"Tunnel {name} serves port {want.port} on relay {want.node}")
    why = f"{seen.reason}: {seen.message}" if seen.reason else "not scheduled yet"
    return false(PENDING, f"Tunnel {name} is not ready ({why})")


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"
