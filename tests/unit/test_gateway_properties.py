"""Properties of the Gateway API translation over generated worlds: it never fails, never
wants two Tunnels on one port of a relay, wants Tunnels only for accepted listeners and
routes, counts attached routes as the routes' statuses say, and does not depend on the
order in which objects are listed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelop.api.v1alpha1 import Tunnel
from tunnelop.builders.route_tunnel import route_tunnel
from tunnelop.domain.gateway import (
    CONTROLLER_NAME,
    GatewayClassView,
    GatewayView,
    RelayState,
    RouteView,
    ServiceView,
    World,
    gateway_status,
    route_parents,
    translate,
)
from tunnelop.domain.relayview import POOL_LABEL, RelayView

NAMESPACES = ("a", "b")
PORTS = (21000, 21001, 21002, 53)
SERVICES = ("echo", "dns")


def rarely(draw) -> bool:
    """True about one time in thirteen (hypothesis favours the ends of a range, so the rare
    value sits in its middle)."""
    return draw(st.integers(0, 12)) == 6


@st.composite
def relays(draw) -> list[RelayState]:
    found = []
    for i in range(draw(st.integers(1, 3))):
        pool = "edge" if draw(st.booleans()) else None
        ready = not rarely(draw)
        view = RelayView(name=f"r{i}", labels={POOL_LABEL: pool} if pool else {}, ready=ready)
        address = None if rarely(draw) else f"203.0.113.{i}"
        found.append(RelayState(f"r{i}", pool, ready, not rarely(draw), address, view))
    return found


@st.composite
def gateways(draw, relay_names: list[str]) -> list[dict[str, Any]]:
    found = []
    for i in range(draw(st.integers(0, 3))):
        # Ports unique per protocol in a Gateway, as the CRD's validation has them.
        wanted = draw(
            st.lists(
                st.tuples(st.sampled_from(PORTS), st.sampled_from(["TCP", "UDP"])),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        listeners = [
            {
                "name": f"l{j}",
                "port": port,
                "protocol": "HTTP" if rarely(draw) else protocol,
                "allowedRoutes": {"namespaces": {"from": draw(st.sampled_from(["Same", "All"]))}},
            }
            for j, (port, protocol) in enumerate(wanted)
        ]
        if rarely(draw):
            annotations = draw(
                st.sampled_from([{"tunnelop.dev/pool": "edge"}, {"tunnelop.dev/node": "x"}, {}])
            )
        else:
            annotations = {"tunnelop.dev/node": draw(st.sampled_from(relay_names))}
        found.append(
            {
                "metadata": {
                    "name": f"g{i}",
                    "namespace": "b" if rarely(draw) else "a",
                    "uid": f"u{i}",
                    "generation": 1,
                    "creationTimestamp": f"2026-01-0{draw(st.integers(1, 3))}T00:00:00Z",
                    "annotations": annotations,
                },
                "spec": {"gatewayClassName": "tunnelop", "listeners": listeners},
            }
        )
    return found


@st.composite
def routes(draw) -> list[RouteView]:
    found = []
    for i in range(draw(st.integers(0, 5))):
        parents = []
        for _ in range(2 if rarely(draw) else 1):
            parent: dict[str, Any] = {
                "name": "nope" if rarely(draw) else draw(st.sampled_from(["g0", "g1"]))
            }
            if rarely(draw):
                parent["namespace"] = draw(st.sampled_from(NAMESPACES))
            if rarely(draw):
                parent["sectionName"] = draw(st.sampled_from(["l0", "l1", "l9"]))
            if rarely(draw):
                parent["port"] = draw(st.sampled_from(PORTS))
            parents.append(parent)
        backends = [
            {
                "name": "gone" if rarely(draw) else draw(st.sampled_from(SERVICES)),
                "port": 53 if rarely(draw) else 7,
                "weight": draw(st.sampled_from([0, 2])) if rarely(draw) else 1,
                **({"namespace": "b"} if rarely(draw) else {}),
            }
            for _ in range(2 if rarely(draw) else 1)
        ]
        body = {
            "metadata": {
                "name": f"r{i}",
                "namespace": "b" if rarely(draw) else "a",
                "uid": f"ru{i}",
                "generation": 1,
                "creationTimestamp": f"2026-01-0{draw(st.integers(1, 3))}T00:00:00Z",
            },
            "spec": {"parentRefs": parents, "rules": [{"backendRefs": backends}]},
        }
        found.append(RouteView.of(draw(st.sampled_from(["TCPRoute", "UDPRoute"])), body))
    return found


@st.composite
def worlds(draw) -> World:
    relay_states = draw(relays())
    gateway_bodies = draw(gateways([r.name for r in relay_states]))
    every_port = {(7, "TCP"), (7, "UDP"), (53, "UDP")}
    services = [
        ServiceView(
            ns,
            name,
            frozenset(
                draw(st.sets(st.sampled_from(sorted(every_port)))) if rarely(draw) else every_port
            ),
        )
        for ns in NAMESPACES
        for name in SERVICES
        if not rarely(draw)
    ]
    holders = {}
    if rarely(draw):
        holders[(relay_states[0].name, "tcp", 21000)] = ("x", "someone")
    return World(
        classes={
            "tunnelop": GatewayClassView.of(
                {"metadata": {"name": "tunnelop"}, "spec": {"controllerName": CONTROLLER_NAME}}
            )
        },
        gateways={
            (g["metadata"]["namespace"], g["metadata"]["name"]): GatewayView.of(g)
            for g in gateway_bodies
        },
        routes=draw(routes()),
        services={(s.namespace, s.name): s for s in services},
        namespace_labels={ns: {} for ns in NAMESPACES},
        relays={r.name: r for r in relay_states},
        pools={"edge"},
        port_holders=holders,
    )


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_one_tunnel_per_relay_port_and_only_for_what_is_accepted(world):
    result = translate(world)
    taken = [(w.node, w.protocol, w.port) for w in result.tunnels.values()]
    assert len(taken) == len(set(taken))
    for key, want in result.tunnels.items():
        assert key[0] == want.route.meta.namespace
        assert (want.node, want.protocol, want.port) not in world.port_holders
        gateway = result.gateways[want.gateway]
        assert gateway.accepted.ok and gateway.relay == want.node
        (listener,) = [entry for entry in gateway.listeners if entry.name == want.listener]
        assert listener.accepted.ok
        assert {"tcp": "TCPRoute", "udp": "UDPRoute"}[want.protocol] == want.route.kind
        outcome = result.routes[want.route.key]
        assert any(p.accepted.ok and want.listener in p.listeners for p in outcome.parents)
        Tunnel.model_validate(route_tunnel(want))  # every manifest is a valid Tunnel


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_attached_routes_count_the_routes_accepted_on_each_listener(world):
    result = translate(world)
    for key, gateway in result.gateways.items():
        for listener in gateway.listeners:
            accepted = {
                outcome.route.key
                for outcome in result.routes.values()
                for parent in outcome.parents
                if parent.accepted.ok
                and parent.parent.gateway_key(outcome.route.meta.namespace) == key
                and listener.name in parent.listeners
            }
            assert listener.attached_routes == len(accepted)


@settings(max_examples=200, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_the_order_objects_are_listed_in_changes_nothing(world, random):
    routes = list(world.routes)
    random.shuffle(routes)
    gateways = list(world.gateways.items())
    random.shuffle(gateways)
    shuffled = World(**{**world.__dict__, "routes": routes, "gateways": dict(gateways)})
    first, second = translate(world), translate(shuffled)
    assert first.tunnels == second.tunnels
    assert first.gateways == second.gateways
    assert first.routes == second.routes


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_statuses_merged_again_are_unchanged(world):
    result = translate(world)
    for outcome in result.gateways.values():
        once = gateway_status({}, outcome)
        assert gateway_status(once, outcome) == once
    for outcome in result.routes.values():
        once = route_parents({}, outcome)
        assert route_parents({"parents": once}, outcome) == once
