"""The load-balancer class tunnelop.dev/relay against the real API server with the operator
running: a Service of the class gets one Tunnel per port, owned by it, and the relay's address
in its status; a port the relay cannot give is a Warning Event on the Service; Services of
other classes are untouched; leaving the class or deleting the Service takes the Tunnels."""

from __future__ import annotations

import json
import uuid
from typing import Any

from support import objects, tools
from support.objects import wait_condition, wait_for

RUN = uuid.uuid4().hex[:6]
CLASS = "tunnelop.dev/relay"
MANAGER = "tunnelop-loadbalancer"
GITOPS = "gitops-test"  # the field manager a GitOps tool would apply the Services with


def lb_service(
    name: str,
    ports: list[tuple[str, int, str]],
    load_balancer_class: str | None = CLASS,
    **annotations: str,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": False,
        "selector": {"app": name},
        "ports": [
            {"name": port_name, "port": port, "targetPort": port, "protocol": protocol}
            for port_name, port, protocol in ports
        ],
    }
    if load_balancer_class:
        spec["loadBalancerClass"] = load_balancer_class
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": spec,
    }


def apply_as_gitops(manifest: dict[str, Any], namespace: str) -> None:
    tools.kubectl(
        "apply", "--server-side", f"--field-manager={GITOPS}", "-n", namespace, "-f", "-",
        input=json.dumps(manifest),
    )  # fmt: skip


def with_managed_fields(service: str, namespace: str) -> dict[str, Any]:
    """The Service with metadata.managedFields (kubectl leaves them out unless asked)."""
    args = ["get", "service", service, "-n", namespace, "-o", "json", "--show-managed-fields"]
    return json.loads(tools.kubectl(*args).stdout)


def tunnels_of(service: str, namespace: str) -> dict[str, dict[str, Any]]:
    found = objects.list_objects("tunnel", namespace, f"tunnelop.dev/service={service}")
    return {t["metadata"]["name"]: t for t in found}


def ingress_of(service: str, namespace: str) -> list[dict[str, Any]]:
    body = objects.get("service", service, namespace) or {}
    return ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


def warnings_about(service: str, namespace: str) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["message"])
        for e in objects.events(namespace, service, "Service")
        if e["type"] == "Warning"
    ]


async def test_a_service_of_the_class_gets_tunnels_and_the_relays_address(
    operator, namespace, ready_relay
) -> None:
    relay, _ = await ready_relay(
        f"lb-{RUN}", "23000-23009", exposure={"type": "HostNetwork", "address": "198.51.100.23"}
    )
    # Services the operator must leave alone, applied first: by the time the Service of the
    # class has its status, the operator has seen these too.
    others = {
        "cloud": lb_service("cloud", [("web", 23005, "TCP")], "example.com/cloud"),
        "classless": lb_service("classless", [("web", 23006, "TCP")], None),
    }
    for manifest in others.values():
        apply_as_gitops(manifest, namespace)
    game = lb_service(
        "game",
        [("java", 23001, "TCP"), ("bedrock", 23002, "UDP")],
        **{"tunnelop.dev/relay-node": relay, "tunnelop.dev/bandwidth": "20M"},
    )
    apply_as_gitops(game, namespace)

    for name in ("game-23001-tcp", "game-23002-udp"):
        await wait_condition("tunnel", name, namespace, "Ready")
    service = objects.get("service", "game", namespace)
    tunnels = tunnels_of("game", namespace)
    assert set(tunnels) == {"game-23001-tcp", "game-23002-udp"}
    for name, port, protocol in (
        ("game-23001-tcp", 23001, "tcp"),
        ("game-23002-udp", 23002, "udp"),
    ):
        tunnel = tunnels[name]
        (owner,) = tunnel["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "Service", "game", service["metadata"]["uid"], True,
        )  # fmt: skip
        spec = tunnel["spec"]
        assert (spec["protocol"], spec["remotePort"], spec["bandwidth"]) == (protocol, port, "20M")
        assert spec["client"] == {"type": "InCluster", "target": {"service": "game", "port": port}}
        assert spec["relay"] == {"node": relay}
        assert tunnel["status"]["relayNode"] == relay and tunnel["status"]["remotePort"] == port

    expected = [
        {
            "ip": "198.51.100.23",
            "ipMode": "Proxy",
            "ports": [{"port": 23001, "protocol": "TCP"}, {"port": 23002, "protocol": "UDP"}],
        }
    ]
    await wait_for(lambda: ingress_of("game", namespace) == expected, what="the relay's address")

    # Only status.loadBalancer is the operator's, by its own field manager: Git's apply of the
    # same manifest finds nothing to change.
    service = with_managed_fields("game", namespace)
    managers = {
        (m["manager"], m.get("subresource", "")) for m in service["metadata"]["managedFields"]
    }
    assert (MANAGER, "status") in managers
    assert not {m for m in managers if m[0] == MANAGER and m[1] != "status"}
    assert service["metadata"]["annotations"] == game["metadata"]["annotations"]
    assert service["metadata"]["labels"] == game["metadata"]["labels"]
    assert "finalizers" not in service["metadata"]
    diff = tools.kubectl(
        "diff", "--server-side", f"--field-manager={GITOPS}", "-n", namespace, "-f", "-",
        input=json.dumps(game), check=False,
    )  # fmt: skip
    assert diff.returncode == 0, diff.stdout + diff.stderr

    # The other classes' Services: no Tunnel, no status, no trace of the operator.
    for name in others:
        assert tunnels_of(name, namespace) == {}
        body = with_managed_fields(name, namespace)
        assert not (body.get("status") or {}).get("loadBalancer"), body.get("status")
        assert all(m["manager"] != MANAGER for m in body["metadata"]["managedFields"])
        events = objects.events(namespace, name, "Service")
        assert [e for e in events if e.get("reportingComponent") == "tunnelop"] == []

    # Leaving the class (Kubernetes lets the class change only with the type) takes the
    # Tunnels; the Service stays.
    cluster_ip = lb_service("game", [("java", 23001, "TCP"), ("bedrock", 23002, "UDP")], None)
    cluster_ip["spec"]["type"] = "ClusterIP"
    del cluster_ip["spec"]["allocateLoadBalancerNodePorts"]
    apply_as_gitops(cluster_ip, namespace)
    await wait_for(lambda: tunnels_of("game", namespace) == {}, what="the Tunnels deleted")
    assert objects.get("service", "game", namespace) is not None
    assert ingress_of("game", namespace) == []


async def test_a_port_the_relay_cannot_give_is_a_warning_on_the_service(
    operator, namespace, ready_relay
) -> None:
    relay, _ = await ready_relay(f"lbc-{RUN}", "23010-23019")
    placement = {"tunnelop.dev/relay-node": relay}
    apply_as_gitops(lb_service("first", [("web", 23011, "TCP")], **placement), namespace)
    await wait_condition("tunnel", "first-23011-tcp", namespace, "Ready")
    await wait_for(lambda: ingress_of("first", namespace), what="first's address")

    # The same port, and one outside the relay's range.
    second = lb_service("second", [("web", 23011, "TCP"), ("admin", 24999, "TCP")], **placement)
    apply_as_gitops(second, namespace)

    def reasons() -> set[str]:
        return {reason for reason, _ in warnings_about("second", namespace)}

    await wait_for(lambda: {"PortTaken", "TunnelRefused"} <= reasons(), what="both Events")
    messages = dict(warnings_about("second", namespace))
    assert messages["PortTaken"].startswith("port 23011/TCP (web) (Tunnel second-23011-tcp): ")
    assert "tcp port 23011 taken by" in messages["PortTaken"]
    assert "Tunnel second-24999-tcp" in messages["TunnelRefused"]
    assert "spec.remotePort: 24999" in messages["TunnelRefused"]
    assert ingress_of("second", namespace) == []
    taken = objects.get("tunnel", "second-23011-tcp", namespace)
    assert objects.condition(taken, "Scheduled")["reason"] == "PortTaken"

    # Deleting the first Service deletes its Tunnel, which frees the port for the second.
    tools.kubectl("delete", "service", "first", "-n", namespace)
    await wait_for(lambda: tunnels_of("first", namespace) == {}, what="first's Tunnel deleted")
    await wait_condition("tunnel", "second-23011-tcp", namespace, "Ready")
    await wait_for(
        lambda: [p["port"] for i in ingress_of("second", namespace) for p in i["ports"]] == [23011],
        what="second's address",
    )
    # One Event per port and reason, however often the Service was reconciled.
    counted = [r for r, _ in warnings_about("second", namespace)]
    assert counted.count("PortTaken") == 1 and counted.count("TunnelRefused") == 1
