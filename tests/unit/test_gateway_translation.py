"""The Gateway API translation (domain/gateway): GatewayClasses, Gateways, TCPRoutes and
UDPRoutes to the Tunnels that serve them and the standard's conditions, and the statuses
merged into what the objects carry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tunnelop.api.v1alpha1 import PortSpan, Tunnel
from tunnelop.builders.route_tunnel import covers, route_tunnel
from tunnelop.domain.drain import Drain
from tunnelop.domain.gateway import (
    CONTROLLER_NAME,
    GatewayClassView,
    GatewayView,
    RelayState,
    RouteView,
    ServiceView,
    Translation,
    TunnelSeen,
    World,
    class_status,
    gateway_status,
    route_parents,
    translate,
    tunnel_name,
)
from tunnelop.domain.relayview import POOL_LABEL, RelayView

NS = "apps"
RELAY_PORTS = PortSpan(20000, 29999)


def gateway_class(name: str = "tunnelop", controller: str = CONTROLLER_NAME, params=None):
    spec: dict[str, Any] = {"controllerName": controller}
    if params is not None:
        spec["parametersRef"] = params
    return {"metadata": {"name": name, "generation": 1}, "spec": spec}


def listener(name: str, port: int, protocol: str = "TCP", **allowed: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "port": port, "protocol": protocol}
    if allowed:
        found["allowedRoutes"] = allowed
    return found


def gateway(
    name: str = "edge",
    *listeners: dict[str, Any],
    namespace: str = NS,
    node: str | None = "relay-a",
    pool: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
    class_name: str = "tunnelop",
    **spec: Any,
) -> dict[str, Any]:
    annotations = {}
    if node:
        annotations["tunnelop.dev/node"] = node
    if pool:
        annotations["tunnelop.dev/pool"] = pool
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": 2,
            "creationTimestamp": created,
            "annotations": annotations,
        },
        "spec": {
            "gatewayClassName": class_name,
            "listeners": list(listeners) or [listener("tcp", 21000), listener("udp", 21001, "UDP")],
            **spec,
        },
    }


def route(
    name: str,
    *parents: dict[str, Any],
    kind: str = "TCPRoute",
    namespace: str = NS,
    backends: list[dict[str, Any]] | None = None,
    created: str = "2026-01-02T00:00:00Z",
) -> RouteView:
    body = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": 3,
            "creationTimestamp": created,
        },
        "spec": {
            "parentRefs": list(parents) or [{"name": "edge"}],
            "rules": [{"backendRefs": backends or [{"name": "echo", "port": 7}]}],
        },
    }
    return RouteView.of(kind, body)


def service(name: str = "echo", namespace: str = NS, ports=((7, "TCP"), (7, "UDP"))):
    return ServiceView(namespace, name, frozenset(ports))


def relay(
    name: str = "relay-a",
    *,
    pool: str | None = None,
    ready: bool = True,
    takes: bool = True,
    address: str | None = "203.0.113.7",
    port_range: PortSpan = RELAY_PORTS,
    protocols=("tcp", "udp"),
) -> RelayState:
    view = RelayView(
        name=name,
        labels={POOL_LABEL: pool} if pool else {},
        protocols=protocols,
        port_range=port_range,
        ready=ready,
    )
    return RelayState(name, pool, ready, takes, address, view)


def world(
    gateways=(),
    routes=(),
    *,
    classes=None,
    services=None,
    relays=None,
    pools=frozenset(),
    **more: Any,
) -> World:
    class_bodies = classes if classes is not None else [gateway_class()]
    return World(
        classes={b["metadata"]["name"]: GatewayClassView.of(b) for b in class_bodies},
        gateways={
            (g["metadata"]["namespace"], g["metadata"]["name"]): GatewayView.of(g) for g in gateways
        },
        routes=list(routes),
        services={(s.namespace, s.name): s for s in (services or [service()])},
        namespace_labels=more.pop("namespace_labels", {NS: {}}),
        relays={r.name: r for r in (relays or [relay()])},
        pools=set(pools),
        **more,
    )


def cond(conditions: list[dict[str, Any]], type_: str) -> tuple[str, str]:
    found = next(c for c in conditions if c["type"] == type_)
    return found["status"], found["reason"]


def gateway_status_of(result: Translation, name: str = "edge", namespace: str = NS):
    return gateway_status({}, result.gateways[(namespace, name)])


def listener_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(entry for entry in status["listeners"] if entry["name"] == name)


def parent_conditions(result: Translation, name: str, kind: str = "TCPRoute", index: int = 0):
    parents = route_parents({}, result.routes.get((kind, NS, name)))
    return parents[index]["conditions"]


# ---- GatewayClass ---------------------------------------------------------------------------


def test_a_class_of_tunnelops_controller_is_accepted_with_its_features():
    result = translate(world(classes=[gateway_class(), gateway_class("other", "example.net/gw")]))
    assert set(result.classes) == {"tunnelop"}  # another controller's class is left alone
    view, verdict = result.classes["tunnelop"]
    status = class_status({}, verdict, view.meta.generation)
    assert cond(status["conditions"], "Accepted") == ("True", "Accepted")
    assert status["conditions"][0]["observedGeneration"] == 1
    assert status["supportedFeatures"] == [
        {"name": "Gateway"},
        {"name": "TCPRoute"},
        {"name": "UDPRoute"},
    ]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        (
            {"group": "", "kind": "ConfigMap", "name": "x", "namespace": "a"},
            "kind RelayPool or RelayNode",
        ),
        (
            {"group": "tunnelop.dev", "kind": "RelayPool", "name": "p", "namespace": "a"},
            "namespace must be unset",
        ),
        (
            {"group": "tunnelop.dev", "kind": "RelayPool", "name": "missing"},
            "RelayPool missing not found",
        ),
        (
            {"group": "tunnelop.dev", "kind": "RelayNode", "name": "missing"},
            "RelayNode missing not found",
        ),
    ],
)
def test_a_class_whose_parameters_name_no_relay_is_refused_saying_why(params, named):
    result = translate(world(classes=[gateway_class(params=params)], pools={"p"}))
    verdict = result.classes["tunnelop"][1]
    assert (verdict.status, verdict.reason) == ("False", "InvalidParameters")
    assert named in verdict.message


def test_a_class_naming_a_pool_serves_its_gateways_there():
    params = {"group": "tunnelop.dev", "kind": "RelayPool", "name": "edge"}
    gw = gateway(node=None)
    result = translate(
        world(
            [gw],
            [route("r")],
            classes=[gateway_class(params=params)],
            relays=[relay(pool="edge")],
            pools={"edge"},
        )
    )
    assert result.classes["tunnelop"][1].ok
    (want,) = result.tunnels.values()
    assert (want.node, want.pool) == ("relay-a", "edge")


# ---- Gateway ------------------------------------------------------------------------------


def test_a_gateway_with_a_tcp_and_a_udp_listener_is_accepted_and_programmed_at_the_relay():
    result = translate(world([gateway()]))
    status = gateway_status_of(result)
    assert cond(status["conditions"], "Accepted") == ("True", "Accepted")
    assert cond(status["conditions"], "Programmed") == ("True", "Programmed")
    assert status["addresses"] == [{"type": "IPAddress", "value": "203.0.113.7"}]
    tcp, udp = listener_of(status, "tcp"), listener_of(status, "udp")
    assert tcp["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}]
    assert udp["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "UDPRoute"}]
    for entry in (tcp, udp):
        assert entry["attachedRoutes"] == 0
        assert cond(entry["conditions"], "Accepted") == ("True", "Accepted")
        assert cond(entry["conditions"], "Programmed") == ("True", "Programmed")
        assert cond(entry["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")
        assert cond(entry["conditions"], "Conflicted") == ("False", "NoConflicts")
        assert all(c["observedGeneration"] == 2 for c in entry["conditions"])


def test_a_relay_known_by_host_name_gives_a_hostname_address():
    result = translate(world([gateway()], relays=[relay(address="relay.example.net")]))
    assert gateway_status_of(result)["addresses"] == [
        {"type": "Hostname", "value": "relay.example.net"}
    ]


@pytest.mark.parametrize("protocol", ["HTTP", "HTTPS", "TLS", "example.com/custom"])
def test_other_protocols_are_refused_and_the_rest_of_the_gateway_serves(protocol):
    gw = gateway("edge", listener("tcp", 21000), listener("web", 21080, protocol))
    result = translate(world([gw], [route("r")]))
    status = gateway_status_of(result)
    assert cond(status["conditions"], "Accepted") == ("True", "ListenersNotValid")
    web = listener_of(status, "web")
    assert cond(web["conditions"], "Accepted") == ("False", "UnsupportedProtocol")
    assert cond(web["conditions"], "Programmed") == ("False", "Invalid")
    assert web["supportedKinds"] == []
    assert "tunnelop serves TCP (TCPRoute) and UDP (UDPRoute)" in next(
        c["message"] for c in web["conditions"] if c["type"] == "Accepted"
    )
    assert [w.port for w in result.tunnels.values()] == [21000]


def test_a_gateway_with_only_refused_listeners_is_not_accepted():
    gw = gateway("edge", listener("web", 21080, "HTTP"))
    status = gateway_status_of(translate(world([gw])))
    assert cond(status["conditions"], "Accepted") == ("False", "ListenersNotValid")
    assert cond(status["conditions"], "Programmed") == ("False", "Invalid")
    assert status["addresses"] is None


@pytest.mark.parametrize(
    ("annotations", "infrastructure", "named"),
    [
        ({}, None, "no relay named"),
        ({"tunnelop.dev/pool": "p", "tunnelop.dev/node": "relay-a"}, None, "both set"),
        ({"tunnelop.dev/node": "relay-x"}, None, "RelayNode relay-x not found"),
        ({"tunnelop.dev/pool": "nope"}, None, "RelayPool nope not found"),
        (
            {"tunnelop.dev/node": "relay-a"},
            {"parametersRef": {"group": "tunnelop.dev", "kind": "RelayPool", "name": "p"}},
            "spec.infrastructure.parametersRef is not supported",
        ),
    ],
)
def test_a_gateway_that_names_no_relay_has_invalid_parameters(annotations, infrastructure, named):
    gw = gateway(node=None)
    gw["metadata"]["annotations"] = annotations
    if infrastructure:
        gw["spec"]["infrastructure"] = infrastructure
    result = translate(world([gw], [route("r")], pools={"p"}))
    outcome = result.gateways[(NS, "edge")]
    assert (outcome.accepted.status, outcome.accepted.reason) == ("False", "InvalidParameters")
    assert named in outcome.accepted.message
    assert result.tunnels == {}
    # A route to a Gateway not accepted waits for it, and is not counted as attached.
    assert cond(parent_conditions(result, "r"), "Accepted") == ("Unknown", "Pending")
    assert all(entry["attachedRoutes"] == 0 for entry in gateway_status_of(result)["listeners"])


def test_a_gateway_of_a_refused_class_is_refused_too():
    bad = gateway_class(params={"group": "x", "kind": "Y", "name": "z"})
    outcome = translate(world([gateway()], classes=[bad])).gateways[(NS, "edge")]
    assert outcome.accepted.reason == "InvalidParameters"
    assert "GatewayClass tunnelop is not accepted" in outcome.accepted.message


def test_gateways_of_other_classes_are_left_alone():
    result = translate(world([gateway(class_name="someone-else")], [route("r")]))
    assert result.gateways == {} and result.routes == {} and result.tunnels == {}


def test_requested_addresses_must_be_the_relays():
    unsupported = gateway(addresses=[{"type": "example.com/named", "value": "x"}])
    other = gateway(addresses=[{"type": "IPAddress", "value": "198.51.100.1"}])
    same = gateway(addresses=[{"type": "IPAddress", "value": "203.0.113.7"}])
    empty = gateway(addresses=[{"type": "IPAddress"}])
    outcomes = [
        translate(world([g])).gateways[(NS, "edge")] for g in (unsupported, other, same, empty)
    ]
    assert (outcomes[0].accepted.status, outcomes[0].accepted.reason) == (
        "False",
        "UnsupportedAddress",
    )
    assert (outcomes[1].programmed.status, outcomes[1].programmed.reason) == (
        "False",
        "AddressNotUsable",
    )
    assert (
        "198.51.100.1 is not the address of relay relay-a (203.0.113.7)"
        in outcomes[1].programmed.message
    )
    assert outcomes[2].programmed.ok and outcomes[3].programmed.ok


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (relay(address=None), "AddressNotAssigned"),
        (relay(ready=False), "Pending"),
    ],
)
def test_a_gateway_is_programmed_once_its_relay_is_ready_with_an_address(state, reason):
    result = translate(world([gateway()], [route("r")], relays=[state]))
    outcome = result.gateways[(NS, "edge")]
    assert outcome.accepted.ok
    assert (outcome.programmed.status, outcome.programmed.reason) == ("False", reason)
    status = gateway_status_of(result)
    assert cond(listener_of(status, "tcp")["conditions"], "Programmed") == ("False", "Pending")
    # Its Tunnels are made anyway, to be ready with the relay.
    assert len(result.tunnels) == 1


def test_a_pool_without_a_relay_that_takes_tunnels_has_no_resources():
    gw = gateway(node=None, pool="edge")
    result = translate(world([gw], relays=[relay(pool="edge", takes=False)], pools={"edge"}))
    programmed = result.gateways[(NS, "edge")].programmed
    assert (programmed.status, programmed.reason) == ("False", "NoResources")


# ---- listener ports -----------------------------------------------------------------------


def test_a_port_the_relay_does_not_hand_out_is_unavailable():
    gw = gateway("edge", listener("dns", 53, "UDP"), listener("tcp", 21000))
    result = translate(world([gw]))
    dns = listener_of(gateway_status_of(result), "dns")
    assert cond(dns["conditions"], "Accepted") == ("False", "PortUnavailable")
    message = next(c["message"] for c in dns["conditions"] if c["type"] == "Accepted")
    assert "port 53 is outside 20000-29999 on relay relay-a" in message


def test_a_relay_without_udp_refuses_a_udp_listener():
    result = translate(world([gateway()], relays=[relay(protocols=("tcp",))]))
    udp = listener_of(gateway_status_of(result), "udp")
    assert cond(udp["conditions"], "Accepted") == ("False", "UnsupportedProtocol")


def test_a_port_another_tunnel_holds_is_unavailable_and_the_same_port_of_the_other_family_is_not():
    holders = {("relay-a", "tcp", 21000): ("tenant", "game")}
    gw = gateway("edge", listener("tcp", 21000), listener("udp", 21000, "UDP"))
    result = translate(world([gw], [route("r")], port_holders=holders))
    status = gateway_status_of(result)
    tcp = listener_of(status, "tcp")
    assert cond(tcp["conditions"], "Accepted") == ("False", "PortUnavailable")
    assert "held by Tunnel tenant/game" in tcp["conditions"][0]["message"]
    assert cond(listener_of(status, "udp")["conditions"], "Accepted") == ("True", "Accepted")
    assert result.tunnels == {}  # the TCPRoute's only listener cannot serve


def test_the_tunnel_a_listener_made_itself_does_not_make_its_port_unavailable():
    first = translate(world([gateway()], [route("r")]))
    (want,) = first.tunnels.values()
    seen = TunnelSeen(want.key, (NS, "edge"), "tcp", "relay-a", True, None, "", False)
    again = translate(
        world(
            [gateway()],
            [route("r")],
            tunnels={want.key: seen},
            port_holders={("relay-a", "tcp", 21000): want.key},
        )
    )
    assert again.tunnels == first.tunnels
    tcp = listener_of(gateway_status_of(again), "tcp")
    assert cond(tcp["conditions"], "Programmed") == ("True", "Programmed")


def test_two_gateways_asking_one_port_of_one_relay_the_older_gets_it():
    older = gateway("a", listener("tcp", 21000), created="2026-01-01T00:00:00Z")
    newer = gateway("b", listener("tcp", 21000), created="2026-01-05T00:00:00Z")
    result = translate(
        world([newer, older], [route("r", {"name": "a"}), route("s", {"name": "b"})])
    )
    assert cond(listener_of(gateway_status_of(result, "a"), "tcp")["conditions"], "Accepted") == (
        "True",
        "Accepted",
    )
    b = listener_of(gateway_status_of(result, "b"), "tcp")
    assert cond(b["conditions"], "Accepted") == ("False", "PortUnavailable")
    assert "taken by the older Gateway apps/a" in b["conditions"][0]["message"]
    assert [w.gateway for w in result.tunnels.values()] == [(NS, "a")]


# ---- routes -------------------------------------------------------------------------------


def test_routes_become_tunnels_to_their_backends_on_the_listener_ports():
    tcp = route("web")
    udp = route("dns", kind="UDPRoute", backends=[{"name": "echo", "port": 7}])
    result = translate(world([gateway()], [tcp, udp]))
    wants = sorted(result.tunnels.values(), key=lambda w: w.protocol)
    assert [(w.protocol, w.port, w.node, w.target.service, w.target.port) for w in wants] == [
        ("tcp", 21000, "relay-a", "echo", 7),
        ("udp", 21001, "relay-a", "echo", 7),
    ]
    assert {w.key[0] for w in wants} == {NS}
    status = gateway_status_of(result)
    assert [listener_of(status, n)["attachedRoutes"] for n in ("tcp", "udp")] == [1, 1]
    for name, kind in (("web", "TCPRoute"), ("dns", "UDPRoute")):
        conditions = parent_conditions(result, name, kind)
        assert cond(conditions, "Accepted") == ("True", "Accepted")
        assert cond(conditions, "ResolvedRefs") == ("True", "ResolvedRefs")
        assert all(c["observedGeneration"] == 3 for c in conditions)


def test_the_tunnel_manifest_is_a_valid_tunnel_owned_by_its_route():
    result = translate(world([gateway()], [route("web")]))
    (want,) = result.tunnels.values()
    manifest = route_tunnel(want)
    tunnel = Tunnel.model_validate(manifest)
    assert tunnel.spec.client.type == "InCluster"
    assert (tunnel.spec.client.target.service, tunnel.spec.client.target.port) == ("echo", 7)
    assert (tunnel.spec.remote_port, tunnel.spec.relay.node) == (21000, "relay-a")
    (owner,) = manifest["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TCPRoute",
        "web",
        "uid-web",
        True,
    )
    assert "blockOwnerDeletion" not in owner
    stored = {**manifest, "spec": {**manifest["spec"], "bandwidth": None, "allowSourceRanges": []}}
    assert covers(stored, manifest)
    moved = {**manifest, "spec": {**manifest["spec"], "remotePort": 21001}}
    assert not covers(moved, manifest)


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        ({"name": "edge", "sectionName": "tcp"}, ["tcp"]),
        ({"name": "edge", "port": 21002}, ["two"]),
        ({"name": "edge", "sectionName": "two", "port": 21002}, ["two"]),
        ({"name": "edge"}, ["tcp", "two"]),
    ],
)
def test_a_parent_ref_selects_listeners_by_section_name_and_port(parent, expected):
    gw = gateway(
        "edge", listener("tcp", 21000), listener("two", 21002), listener("u", 21003, "UDP")
    )
    result = translate(world([gw], [route("r", parent)]))
    assert sorted(w.listener for w in result.tunnels.values()) == expected
    assert cond(parent_conditions(result, "r"), "Accepted") == ("True", "Accepted")


@pytest.mark.parametrize(
    "parent",
    [
        {"name": "edge", "sectionName": "nope"},
        {"name": "edge", "port": 1},
        {"name": "edge", "sectionName": "tcp", "port": 21001},
    ],
)
def test_a_parent_ref_selecting_no_listener_has_no_matching_parent(parent):
    result = translate(world([gateway()], [route("r", parent)]))
    assert cond(parent_conditions(result, "r"), "Accepted") == ("False", "NoMatchingParent")
    assert result.tunnels == {}


def test_a_route_of_the_wrong_kind_for_the_listener_is_not_allowed():
    result = translate(world([gateway()], [route("r", {"name": "edge", "sectionName": "udp"})]))
    conditions = parent_conditions(result, "r")
    assert cond(conditions, "Accepted") == ("False", "NotAllowedByListeners")
    assert all(entry["attachedRoutes"] == 0 for entry in gateway_status_of(result)["listeners"])
    assert result.tunnels == {}


def test_a_route_to_a_refused_http_listener_is_not_allowed():
    gw = gateway("edge", listener("web", 21080, "HTTP", kinds=[{"kind": "HTTPRoute"}]))
    result = translate(world([gw], [route("r", {"name": "edge", "sectionName": "web"})]))
    assert cond(parent_conditions(result, "r"), "Accepted") == ("False", "NotAllowedByListeners")
    web = listener_of(gateway_status_of(result), "web")
    assert cond(web["conditions"], "ResolvedRefs") == ("False", "InvalidRouteKinds")


def test_allowed_route_kinds_limit_a_listener_and_unknown_ones_are_invalid():
    kinds = [{"kind": "TCPRoute"}, {"group": "example.com", "kind": "Thing"}]
    only_other = [{"kind": "UDPRoute"}]
    gw = gateway(
        "edge", listener("tcp", 21000, kinds=kinds), listener("x", 21001, kinds=only_other)
    )
    result = translate(world([gw], [route("r")]))
    status = gateway_status_of(result)
    tcp, x = listener_of(status, "tcp"), listener_of(status, "x")
    assert tcp["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}]
    assert cond(tcp["conditions"], "ResolvedRefs") == ("False", "InvalidRouteKinds")
    assert x["supportedKinds"] == []
    assert [w.listener for w in result.tunnels.values()] == ["tcp"]


@pytest.mark.parametrize(
    ("allowed", "labels", "attached"),
    [
        ({}, {}, False),  # Same, by default
        ({"namespaces": {"from": "Same"}}, {}, False),
        ({"namespaces": {"from": "All"}}, {}, True),
        (
            {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}},
            {"team": "a"},
            True,
        ),
        (
            {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}},
            {"team": "b"},
            False,
        ),
        (
            {
                "namespaces": {
                    "from": "Selector",
                    "selector": {
                        "matchExpressions": [
                            {"key": "team", "operator": "In", "values": ["a", "b"]}
                        ]
                    },
                }
            },
            {"team": "b"},
            True,
        ),
        (
            {
                "namespaces": {
                    "from": "Selector",
                    "selector": {"matchExpressions": [{"key": "team", "operator": "Bogus"}]},
                }
            },
            {"team": "b"},
            False,
        ),
    ],
)
def test_allowed_routes_namespaces_decide_whether_a_route_of_another_namespace_attaches(
    allowed, labels, attached
):
    gw = gateway("edge", listener("tcp", 21000, **allowed), namespace="infra")
    other = route("r", {"name": "edge", "namespace": "infra"}, namespace="team-a")
    result = translate(
        world(
            [gw],
            [other],
            services=[service(namespace="team-a")],
            namespace_labels={"team-a": labels, "infra": {}},
        )
    )
    conditions = parent_conditions_of(result, "team-a", "r")
    if attached:
        assert cond(conditions, "Accepted") == ("True", "Accepted")
        (want,) = result.tunnels.values()
        assert want.key[0] == "team-a"  # in the route's namespace, where its backend is
    else:
        assert cond(conditions, "Accepted") == ("False", "NotAllowedByListeners")
        assert result.tunnels == {}


def parent_conditions_of(result: Translation, namespace: str, name: str) -> list[dict[str, Any]]:
    return route_parents({}, result.routes[("TCPRoute", namespace, name)])[0]["conditions"]


@pytest.mark.parametrize(
    ("backends", "services", "reason", "named"),
    [
        ([{"name": "gone", "port": 7}], None, "BackendNotFound", "Service apps/gone not found"),
        ([{"name": "echo", "port": 9}], None, "BackendNotFound", "has no port 9 (its ports: 7)"),
        (
            [{"name": "echo", "port": 7}],
            [service(ports=[(7, "UDP")])],
            "UnsupportedProtocol",
            "port 7 is UDP",
        ),
        (
            [{"name": "echo", "port": 7, "namespace": "other"}],
            None,
            "RefNotPermitted",
            "put the TCPRoute in namespace other",
        ),
        (
            [{"group": "example.com", "kind": "Bucket", "name": "b"}],
            None,
            "InvalidKind",
            "Bucket of group example.com",
        ),
    ],
)
def test_a_backend_that_does_not_resolve_gets_no_tunnel(backends, services, reason, named):
    result = translate(world([gateway()], [route("r", backends=backends)], services=services))
    conditions = parent_conditions(result, "r")
    assert cond(conditions, "Accepted") == ("True", "Accepted")
    assert cond(conditions, "ResolvedRefs") == ("False", reason)
    assert named in next(c["message"] for c in conditions if c["type"] == "ResolvedRefs")
    assert result.tunnels == {}
    # The route is attached all the same: the listener counts it.
    assert listener_of(gateway_status_of(result), "tcp")["attachedRoutes"] == 1


def test_weighted_backends_are_not_implemented_but_weight_zero_ones_are_allowed():
    split = [{"name": "echo", "port": 7, "weight": 70}, {"name": "other", "port": 7, "weight": 30}]
    zero = [{"name": "echo", "port": 7, "weight": 1}, {"name": "other", "port": 7, "weight": 0}]
    services = [service(), service("other")]
    result = translate(
        world(
            [gateway()],
            [
                route("split", backends=split),
                route("zero", backends=zero, created="2026-01-03T00:00:00Z"),
            ],
            services=services,
        )
    )
    assert cond(parent_conditions(result, "split"), "Accepted") == ("False", "UnsupportedValue")
    assert cond(parent_conditions(result, "zero"), "Accepted") == ("True", "Accepted")
    (want,) = result.tunnels.values()
    assert (want.route.meta.name, want.target.service) == ("zero", "echo")


def test_the_oldest_route_on_a_listener_is_served_and_the_newer_one_says_so():
    older = route("older", created="2026-01-02T00:00:00Z")
    newer = route("newer", created="2026-01-03T00:00:00Z", backends=[{"name": "other", "port": 7}])
    result = translate(world([gateway()], [newer, older], services=[service(), service("other")]))
    (want,) = result.tunnels.values()
    assert want.route.meta.name == "older"
    assert listener_of(gateway_status_of(result), "tcp")["attachedRoutes"] == 2
    newer_accepted = next(c for c in parent_conditions(result, "newer") if c["type"] == "Accepted")
    assert (newer_accepted["status"], newer_accepted["reason"]) == ("True", "Accepted")
    assert "serves the older TCPRoute apps/older" in newer_accepted["message"]


def test_parent_refs_to_other_kinds_or_unknown_gateways_get_no_entry_of_ours():
    result = translate(
        world(
            [gateway()],
            [route("r", {"name": "svc", "kind": "Service", "group": ""}, {"name": "unknown"})],
        )
    )
    assert ("TCPRoute", NS, "r") not in result.routes


# ---- listeners from their Tunnels ----------------------------------------------------------


def seen_of(result: Translation, **fields: Any) -> dict:
    (want,) = result.tunnels.values()
    base = TunnelSeen(want.key, want.gateway, want.listener, want.node, False, None, "", False)
    return {want.key: replace(base, **fields)}


@pytest.mark.parametrize(
    ("fields", "errors", "accepted", "programmed", "named"),
    [
        ({}, None, "Accepted", ("False", "Pending"), "not scheduled yet"),
        (
            {"ready": True},
            None,
            "Accepted",
            ("True", "Programmed"),
            "serves port 21000 on relay relay-a",
        ),
        (
            {"reason": "NoRelayReady", "message": "relay down"},
            None,
            "Accepted",
            ("False", "Pending"),
            "NoRelayReady: relay down",
        ),
        (
            {"reason": "PortTaken", "message": "port 21000 is taken", "port_refused": True},
            None,
            "PortUnavailable",
            ("False", "Invalid"),
            "port 21000 is taken",
        ),
        ({}, "denied by quota", "Accepted", ("False", "Invalid"), "was refused: denied by quota"),
    ],
)
def test_a_listener_is_programmed_when_its_tunnel_is_ready(
    fields, errors, accepted, programmed, named
):
    first = translate(world([gateway()], [route("r")]))
    tunnels = seen_of(first, **fields)
    write_errors = {next(iter(tunnels)): errors} if errors else {}
    result = translate(world([gateway()], [route("r")], tunnels=tunnels, write_errors=write_errors))
    assert result.tunnels == first.tunnels  # what a Tunnel reports never changes what is wanted
    tcp = listener_of(gateway_status_of(result), "tcp")
    assert cond(tcp["conditions"], "Accepted")[1] == accepted
    assert cond(tcp["conditions"], "Programmed") == programmed
    assert named in " ".join(c["message"] for c in tcp["conditions"])


def test_a_missing_tunnel_is_pending():
    result = translate(world([gateway()], [route("r")]))
    tcp = listener_of(gateway_status_of(result), "tcp")
    assert cond(tcp["conditions"], "Programmed") == ("False", "Pending")


# ---- pools --------------------------------------------------------------------------------


def pool_world(relays, tunnels=None, uid_name="edge"):
    gw = gateway(uid_name, listener("tcp", 21000), node=None, pool="edge")
    return world(
        [gw], [route("r", {"name": uid_name})], relays=relays, pools={"edge"}, tunnels=tunnels or {}
    )


def test_a_gateway_on_a_pool_gets_one_relay_the_same_each_time():
    relays = [relay(f"edge-{i}", pool="edge", address=f"203.0.113.{i}") for i in range(5)]
    first = translate(pool_world(relays))
    again = translate(pool_world(list(reversed(relays))))
    assert first.gateways[(NS, "edge")].relay == again.gateways[(NS, "edge")].relay
    chosen = {
        translate(pool_world(relays, uid_name=f"g{i}")).gateways[(NS, f"g{i}")].relay
        for i in range(20)
    }
    assert len(chosen) > 1  # Gateways spread over the pool


def test_a_gateway_stays_where_its_tunnels_are_and_moves_when_that_relay_drains():
    relays = [relay(f"edge-{i}", pool="edge") for i in range(3)]
    chosen = translate(pool_world(relays)).gateways[(NS, "edge")].relay
    stay = next(r.name for r in relays if r.name != chosen)
    seen = TunnelSeen(("apps", "t"), (NS, "edge"), "tcp", stay, True, None, "", False)
    assert translate(pool_world(relays, {seen.key: seen})).gateways[(NS, "edge")].relay == stay
    drained = [replace(r, takes_tunnels=r.name != stay) for r in relays]
    moved = translate(pool_world(drained, {seen.key: seen})).gateways[(NS, "edge")].relay
    assert moved != stay and moved is not None


def test_a_pool_prefers_ready_relays():
    relays = [relay("edge-0", pool="edge", ready=False), relay("edge-1", pool="edge")]
    assert translate(pool_world(relays)).gateways[(NS, "edge")].relay == "edge-1"


def test_a_draining_relay_view_does_not_take_a_gateway():
    view = RelayView(
        name="edge-0", labels={POOL_LABEL: "edge"}, drain=Drain("DrainRequested", "x", True)
    )
    state = RelayState.of(
        {"metadata": {"name": "edge-0", "labels": {POOL_LABEL: "edge"}}, "status": {}}, view
    )
    assert not state.takes_tunnels


# ---- statuses merged ----------------------------------------------------------------------


def test_merged_statuses_keep_transition_times_and_other_controllers_entries():
    result = translate(world([gateway()], [route("r")]))
    first = gateway_status({}, result.gateways[(NS, "edge")])
    for c in first["conditions"]:
        c["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    foreign_condition = {
        "type": "example.com/Healthy",
        "status": "True",
        "reason": "Ok",
        "message": "",
    }
    old = {**first, "conditions": [*first["conditions"], foreign_condition]}
    again = gateway_status(old, result.gateways[(NS, "edge")])
    assert again["conditions"] == sorted(old["conditions"], key=lambda c: c["type"])

    foreign = {"parentRef": {"name": "edge"}, "controllerName": "example.net/gw", "conditions": []}
    stale = {
        "parentRef": {"name": "gone", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
        "controllerName": CONTROLLER_NAME,
        "conditions": [],
    }
    parents = route_parents({"parents": [foreign, stale]}, result.routes[("TCPRoute", NS, "r")])
    assert parents[0] == foreign
    assert [p["parentRef"]["name"] for p in parents[1:]] == ["edge"]
    assert route_parents({"parents": [foreign, stale]}, None) == [foreign]
    # Written once, merged again: identical, so nothing is written twice.
    assert route_parents({"parents": parents}, result.routes[("TCPRoute", NS, "r")]) == parents


# ---- names --------------------------------------------------------------------------------


def test_tunnel_names_are_short_dns_labels_one_per_route_gateway_and_listener():
    long = route("a" * 200 + ".b")
    name = tunnel_name(long, (NS, "edge"), "tcp")
    assert len(name) <= 50 and name[0].isalnum() and name[-1].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    names = {
        tunnel_name(route(r), (NS, g), listener_name)
        for r in ("a-b", "a")
        for g in ("edge", "other")
        for listener_name in ("c", "b-c")
    }
    assert len(names) == 8
    udp = RouteView.of("UDPRoute", {"metadata": {"name": "a", "namespace": NS}, "spec": {}})
    assert tunnel_name(udp, (NS, "edge"), "c") != tunnel_name(route("a"), (NS, "edge"), "c")


def test_a_route_on_a_listener_that_is_not_accepted_is_attached_and_says_it_gets_no_traffic():
    gw = gateway("edge", listener("dns", 53, "UDP"), listener("tcp", 21000))
    result = translate(world([gw], [route("dns", kind="UDPRoute")]))
    (accepted,) = [
        c for c in parent_conditions(result, "dns", "UDPRoute") if c["type"] == "Accepted"
    ]
    assert (accepted["status"], accepted["reason"]) == ("True", "Accepted")
    assert "listener dns is not accepted (PortUnavailable)" in accepted["message"]
    assert listener_of(gateway_status_of(result), "dns")["attachedRoutes"] == 1
    assert result.tunnels == {}
