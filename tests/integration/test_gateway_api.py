"""The Gateway API against the real API server with the operator running, on the CRDs of
sigs.k8s.io/gateway-api v1.6.3 (standard channel): the operator starts without them and
picks them up when installed; a GatewayClass of tunnelop.dev/gateway-controller is accepted;
a Gateway gets its relay's address and the standard's listener statuses (TCP and UDP
served, HTTP refused); TCPRoutes and UDPRoutes get Tunnels on the listeners' ports to their
backends, and say when they are not allowed, match no listener or lack their backend."""

from __future__ import annotations

import json
import uuid
from typing import Any

from support import objects, tools
from support.objects import relay_node, wait_condition, wait_for

RUN = uuid.uuid4().hex[:6]
GROUP = "gateway.networking.k8s.io"
CONTROLLER = "tunnelop.dev/gateway-controller"


def gateway_class(name: str, controller: str = CONTROLLER, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller, **spec},
    }


def gateway(name: str, class_name: str, relay: str, *listeners: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "annotations": {"tunnelop.dev/node": relay}},
        "spec": {"gatewayClassName": class_name, "listeners": list(listeners)},
    }


def listener(name: str, port: int, protocol: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": protocol, **more}


def route(kind: str, name: str, parent: dict[str, Any], service: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [parent],
            "rules": [{"backendRefs": [{"name": service, "port": port}]}],
        },
    }


def service(name: str, *ports: tuple[int, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [
                {"name": f"{protocol.lower()}-{port}", "port": port, "protocol": protocol}
                for port, protocol in ports
            ],
        },
    }


def conditions_of(entry: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (entry or {}).get("conditions") or []}


def listener_status(gateway_body: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    listeners = ((gateway_body or {}).get("status") or {}).get("listeners") or []
    return next((entry for entry in listeners if entry["name"] == name), None)


def our_parent(route_body: dict[str, Any] | None) -> dict[str, Any] | None:
    parents = ((route_body or {}).get("status") or {}).get("parents") or []
    return next((p for p in parents if p["controllerName"] == CONTROLLER), None)


async def until_parent(kind: str, name: str, namespace: str, accepted: tuple[str, str], **more):
    """The route's parents entry of tunnelop once its Accepted is `accepted` (and the
    conditions in `more`, e.g. ResolvedRefs=("True", "ResolvedRefs"))."""
    wanted = {"Accepted": accepted, **more}

    def check():
        body = objects.get(kind.lower(), name, namespace)
        parent = our_parent(body)
        found = conditions_of(parent)
        if all(found.get(t) == v for t, v in wanted.items()):
            generation = body["metadata"]["generation"]
            assert all(c["observedGeneration"] == generation for c in parent["conditions"])
            return parent
        return None

    try:
        return await wait_for(check, 60, what=f"{kind} {name} {wanted}")
    except TimeoutError as exc:
        body = objects.get(kind.lower(), name, namespace) or {}
        raise TimeoutError(f"{exc}; status {json.dumps(body.get('status'))}") from None


def route_tunnels(namespace: str) -> dict[str, dict[str, Any]]:
    """The Tunnels made for routes in `namespace`, by the listener they serve."""
    found = objects.list_objects("tunnel", namespace, selector="tunnelop.dev/route-kind")
    return {t["metadata"]["annotations"]["tunnelop.dev/listener"]: t for t in found}


async def ready_relay_named(name: str, ports: str, cleanup_relays: list[str]) -> dict[str, Any]:
    cleanup_relays.append(name)
    objects.apply(relay_node(name, ports=ports))
    return await wait_condition("relaynode", name, None, "Ready")


async def test_the_operator_runs_without_the_gateway_api_and_picks_it_up_when_installed(
    operator, gateway_api_crds
) -> None:
    """The CRDs deleted under the running operator stop its Gateway API watches (it stays
    ready); installed again, they are watched again, without a restart."""
    files = [str(p) for p in sorted(gateway_api_crds.glob("*.yaml"))]
    tools.kubectl("delete", *[a for f in files for a in ("-f", f)], "--ignore-not-found")
    await wait_for(
        lambda: "Gateway API kind no longer served" in operator.logs(),
        60,
        what="the operator to stop watching the Gateway API",
    )
    status, body = await operator.readyz()
    assert status == 200, body
    assert "gateway.networking.k8s.io" not in body  # no watch of it left to report
    tools.kubectl("apply", "--server-side", *[a for f in files for a in ("-f", f)])
    tools.kubectl("wait", "--for=condition=Established", "-f", str(gateway_api_crds))
    name = f"gwc-later-{RUN}"
    objects.apply(gateway_class(name))
    try:
        body = await wait_condition("gatewayclass", name, None, "Accepted", reason="Accepted")
        assert body["status"]["supportedFeatures"] == [
            {"name": "Gateway"},
            {"name": "TCPRoute"},
            {"name": "UDPRoute"},
        ]
        status, body = await operator.readyz()
        assert status == 200 and f"/apis/{GROUP}/v1/gateways: synced" in body
    finally:
        tools.kubectl("delete", "gatewayclass", name, "--ignore-not-found")


async def test_only_classes_of_tunnelops_controller_are_accepted(
    operator, gateway_api_crds
) -> None:
    ours, theirs, bad = f"gwc-{RUN}", f"gwc-other-{RUN}", f"gwc-bad-{RUN}"
    params = {"group": "tunnelop.dev", "kind": "RelayPool", "name": f"missing-{RUN}"}
    objects.apply(
        [
            gateway_class(ours),
            gateway_class(theirs, "example.net/gateway-controller"),
            gateway_class(bad, parametersRef=params),
        ]
    )
    try:
        await wait_condition("gatewayclass", ours, None, "Accepted", reason="Accepted")
        refused = await wait_condition(
            "gatewayclass", bad, None, "Accepted", "False", reason="InvalidParameters"
        )
        assert (
            f"RelayPool missing-{RUN} not found"
            in objects.condition(refused, "Accepted")["message"]
        )
        # Another controller's class keeps the API server's default: tunnelop never wrote it.
        other = objects.get("gatewayclass", theirs)
        assert conditions_of(other.get("status")) == {"Accepted": ("Unknown", "Pending")}
    finally:
        tools.kubectl("delete", "gatewayclass", ours, theirs, bad, "--ignore-not-found")


async def test_a_gateway_serves_tcp_and_udp_routes_with_tunnels_and_refuses_http(
    operator, gateway_api_crds, namespace, cleanup_relays
) -> None:
    relay = f"gw-relay-{RUN}"
    relay_body = await ready_relay_named(relay, "22000-22099", cleanup_relays)
    address = relay_body["status"]["publicAddress"]
    class_name = f"gwc-serve-{RUN}"
    objects.apply(gateway_class(class_name))
    try:
        objects.apply(
            [
                service("echo", (7, "TCP"), (7, "UDP")),
                gateway(
                    "edge",
                    class_name,
                    relay,
                    listener("tcp", 22010, "TCP"),
                    listener("udp", 22011, "UDP"),
                    listener("web", 22080, "HTTP"),
                ),
                route("TCPRoute", "echo-tcp", {"name": "edge", "sectionName": "tcp"}, "echo", 7),
                route("UDPRoute", "echo-udp", {"name": "edge", "port": 22011}, "echo", 7),
            ],
            namespace,
        )
        accepted = ("True", "Accepted")
        resolved = ("True", "ResolvedRefs")
        for kind, name in (("TCPRoute", "echo-tcp"), ("UDPRoute", "echo-udp")):
            parent = await until_parent(kind, name, namespace, accepted, ResolvedRefs=resolved)
            assert parent["parentRef"]["name"] == "edge"

        # Each listener's Tunnel: its port on the relay, an in-cluster client to the backend.
        tunnels = await wait_for(
            lambda: (found := route_tunnels(namespace)) and len(found) == 2 and found,
            60,
            what="a Tunnel per route",
        )
        specs = {
            name: (t["spec"]["protocol"], t["spec"]["remotePort"], t["spec"]["relay"]["node"])
            for name, t in tunnels.items()
        }
        assert specs == {"tcp": ("tcp", 22010, relay), "udp": ("udp", 22011, relay)}
        for name, kind in (("tcp", "TCPRoute"), ("udp", "UDPRoute")):
            spec, meta = tunnels[name]["spec"], tunnels[name]["metadata"]
            assert spec["client"] == {"type": "InCluster", "target": {"service": "echo", "port": 7}}
            (owner,) = meta["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["controller"]) == (
                kind,
                f"echo-{name}",
                True,
            )
            await wait_condition("tunnel", meta["name"], namespace, "Ready")

        def programmed():
            body = objects.get("gateway", "edge", namespace)
            found = {n: conditions_of(listener_status(body, n)) for n in ("tcp", "udp")}
            if all(c.get("Programmed") == ("True", "Programmed") for c in found.values()):
                return body
            return None

        body = await wait_for(programmed, 60, what="both listeners Programmed")
        status = body["status"]
        assert status["addresses"] == [{"type": "Hostname", "value": address}]
        assert conditions_of(status) == {
            "Accepted": ("True", "ListenersNotValid"),
            "Programmed": ("True", "Programmed"),
        }
        for name, kind in (("tcp", "TCPRoute"), ("udp", "UDPRoute")):
            entry = listener_status(body, name)
            assert entry["supportedKinds"] == [{"group": GROUP, "kind": kind}]
            assert entry["attachedRoutes"] == 1
            assert conditions_of(entry) == {
                "Accepted": ("True", "Accepted"),
                "Programmed": ("True", "Programmed"),
                "ResolvedRefs": ("True", "ResolvedRefs"),
                "Conflicted": ("False", "NoConflicts"),
            }
        web = listener_status(body, "web")
        assert web["supportedKinds"] == [] and web["attachedRoutes"] == 0
        assert conditions_of(web)["Accepted"] == ("False", "UnsupportedProtocol")
        assert conditions_of(web)["Programmed"] == ("False", "Invalid")

        # The operator wrote only status: spec, labels and annotations are as applied.
        assert body["metadata"]["annotations"] == {"tunnelop.dev/node": relay}
        assert "labels" not in body["metadata"]

        # The Tunnels are the operator's: one edited by hand is put back.
        udp_tunnel = tunnels["udp"]["metadata"]["name"]
        tools.kubectl(
            "patch", "tunnel", udp_tunnel, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"remotePort": 22050}}),
        )  # fmt: skip
        await wait_for(
            lambda: objects.get("tunnel", udp_tunnel, namespace)["spec"]["remotePort"] == 22011,
            60,
            what="the edited Tunnel put back on the listener's port",
        )

        # A route deleted takes its Tunnel with it; the listener counts no route.
        tools.kubectl("delete", "tcproute", "echo-tcp", "-n", namespace)
        await wait_for(
            lambda: set(route_tunnels(namespace)) == {"udp"}, 60, what="the TCP Tunnel deleted"
        )
        await wait_for(
            lambda: (
                (listener_status(objects.get("gateway", "edge", namespace), "tcp") or {}).get(
                    "attachedRoutes"
                )
                == 0
            ),
            60,
            what="no route attached to listener tcp",
        )
    finally:
        tools.kubectl("delete", "gateways,tcproutes,udproutes", "--all", "-n", namespace)
        tools.kubectl("delete", "gatewayclass", class_name, "--ignore-not-found")


async def test_routes_not_allowed_matching_no_listener_or_without_backend_say_so(
    operator, gateway_api_crds, namespace, cleanup_relays
) -> None:
    relay = f"gw-relay-b-{RUN}"
    await ready_relay_named(relay, "22100-22199", cleanup_relays)
    class_name = f"gwc-refuse-{RUN}"
    objects.apply(gateway_class(class_name))
    other = f"{namespace[:50]}-other"
    tools.kubectl("create", "namespace", other)
    try:
        objects.apply(
            gateway(
                "edge",
                class_name,
                relay,
                listener("tcp", 22110, "TCP"),
                listener("udp", 22111, "UDP"),
                # Routes of namespaces labelled team=blue only.
                listener(
                    "shared",
                    22112,
                    "TCP",
                    allowedRoutes={
                        "namespaces": {
                            "from": "Selector",
                            "selector": {"matchLabels": {"team": "blue"}},
                        }
                    },
                ),
            ),
            namespace,
        )
        edge = {"name": "edge", "namespace": namespace}
        objects.apply(
            [
                # A TCPRoute naming the UDP listener: not allowed there.
                route("TCPRoute", "wrong-kind", {"name": "edge", "sectionName": "udp"}, "echo", 7),
                # No listener has this port.
                route("TCPRoute", "no-port", {"name": "edge", "port": 22199}, "echo", 7),
                # The Service does not exist (yet).
                route("TCPRoute", "no-backend", {"name": "edge", "sectionName": "tcp"}, "echo", 7),
            ],
            namespace,
        )
        # From another namespace: listener tcp allows the Gateway's own namespace only, and
        # listener shared only namespaces labelled team=blue.
        objects.apply(
            [
                service("echo", (7, "TCP")),
                route("TCPRoute", "outsider", {**edge, "sectionName": "shared"}, "echo", 7),
                route("TCPRoute", "outsider-same", {**edge, "sectionName": "tcp"}, "echo", 7),
            ],
            other,
        )
        await until_parent("TCPRoute", "wrong-kind", namespace, ("False", "NotAllowedByListeners"))
        await until_parent("TCPRoute", "no-port", namespace, ("False", "NoMatchingParent"))
        missing = await until_parent(
            "TCPRoute",
            "no-backend",
            namespace,
            ("True", "Accepted"),
            ResolvedRefs=("False", "BackendNotFound"),
        )
        message = next(c["message"] for c in missing["conditions"] if c["type"] == "ResolvedRefs")
        assert f"Service {namespace}/echo not found" in message
        await until_parent("TCPRoute", "outsider", other, ("False", "NotAllowedByListeners"))
        await until_parent("TCPRoute", "outsider-same", other, ("False", "NotAllowedByListeners"))
        assert route_tunnels(namespace) == {} and route_tunnels(other) == {}

        # The backend appears: resolved, and served by a Tunnel.
        objects.apply(service("echo", (7, "TCP")), namespace)
        await until_parent(
            "TCPRoute",
            "no-backend",
            namespace,
            ("True", "Accepted"),
            ResolvedRefs=("True", "ResolvedRefs"),
        )
        tunnels = await wait_for(lambda: route_tunnels(namespace), 60, what="the Tunnel")
        assert [(n, t["spec"]["remotePort"]) for n, t in tunnels.items()] == [("tcp", 22110)]

        # The other namespace gets the label: its route attaches to listener shared, and
        # its Tunnel lives in its own namespace, next to its backend.
        tools.kubectl("label", "namespace", other, "team=blue")
        await until_parent(
            "TCPRoute",
            "outsider",
            other,
            ("True", "Accepted"),
            ResolvedRefs=("True", "ResolvedRefs"),
        )
        theirs = await wait_for(lambda: route_tunnels(other), 60, what="the outsider's Tunnel")
        assert [(n, t["spec"]["remotePort"]) for n, t in theirs.items()] == [("shared", 22112)]

        body = objects.get("gateway", "edge", namespace)
        assert [listener_status(body, n)["attachedRoutes"] for n in ("tcp", "udp", "shared")] == [
            1,
            0,
            1,
        ]
    finally:
        tools.kubectl("delete", "tcproutes", "--all", "-n", other)
        tools.kubectl("delete", "namespace", other, "--wait=false")
        tools.kubectl("delete", "gateways,tcproutes", "--all", "-n", namespace)
        tools.kubectl("delete", "gatewayclass", class_name, "--ignore-not-found")


async def test_a_gateway_naming_no_relay_or_an_address_of_its_own_is_refused(
    operator, gateway_api_crds, namespace
) -> None:
    class_name = f"gwc-params-{RUN}"
    objects.apply(gateway_class(class_name))
    nowhere = gateway("nowhere", class_name, f"missing-{RUN}", listener("tcp", 22210, "TCP"))
    named = gateway("named", class_name, f"missing-{RUN}", listener("tcp", 22211, "TCP"))
    named["spec"]["addresses"] = [{"type": "example.com/pool", "value": "blue"}]
    objects.apply([nowhere, named], namespace)
    try:
        body = await wait_condition(
            "gateway", "nowhere", namespace, "Accepted", "False", reason="InvalidParameters"
        )
        assert (
            f"RelayNode missing-{RUN} not found" in objects.condition(body, "Accepted")["message"]
        )
        assert conditions_of(body["status"])["Programmed"] == ("False", "Invalid")
        await wait_condition(
            "gateway", "named", namespace, "Accepted", "False", reason="UnsupportedAddress"
        )
    finally:
        tools.kubectl("delete", "gateways", "--all", "-n", namespace)
        tools.kubectl("delete", "gatewayclass", class_name, "--ignore-not-found")


async def test_a_class_naming_a_pool_puts_each_gateway_on_one_relay_of_it(
    operator, gateway_api_crds, namespace
) -> None:
    pool = f"gwp-{RUN}"
    objects.apply(
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "RelayPool",
            "metadata": {"name": pool},
            "spec": {
                "replicas": 2,
                "template": {
                    "spec": {
                        "ports": {"range": "22300-22399"},
                        "exposure": {"type": "LoadBalancer", "address": "198.51.100.30"},
                    }
                },
            },
        }
    )
    class_name = f"gwc-pool-{RUN}"
    params = {"group": "tunnelop.dev", "kind": "RelayPool", "name": pool}
    objects.apply(gateway_class(class_name, parametersRef=params))
    try:
        await wait_condition("gatewayclass", class_name, None, "Accepted", reason="Accepted")
        edge = gateway("edge", class_name, "ignored", listener("tcp", 22310, "TCP"))
        edge["metadata"]["annotations"] = {}  # the class's pool, not a node
        objects.apply(
            [
                service("echo", (7, "TCP")),
                edge,
                route("TCPRoute", "echo", {"name": "edge"}, "echo", 7),
            ],
            namespace,
        )
        body = await wait_condition("gateway", "edge", namespace, "Programmed", timeout=90)
        assert body["status"]["addresses"] == [{"type": "IPAddress", "value": "198.51.100.30"}]
        (tunnel,) = (await wait_for(lambda: route_tunnels(namespace), 60, what="Tunnel")).values()
        placement = tunnel["spec"]["relay"]
        assert placement["pool"] == pool
        assert placement["node"] in {f"{pool}-0", f"{pool}-1"}
        ready = await wait_condition("tunnel", tunnel["metadata"]["name"], namespace, "Ready")
        assert ready["status"]["relayNode"] == placement["node"]
    finally:
        tools.kubectl("delete", "gateways,tcproutes", "--all", "-n", namespace)
        tools.kubectl("delete", "gatewayclass", class_name, "--ignore-not-found")
        tools.kubectl("delete", "relaypool", pool, "--ignore-not-found", "--wait=false")
