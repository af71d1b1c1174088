"""The Gateway API watches' bookkeeping (controllers/gateway_api.py), without a cluster:
which CRDs start a watch, and which changes ask for a translation."""

from __future__ import annotations

from typing import Any

import pytest

from tunnelop.controllers.gateway_api import GatewayApi, crd_serves_v1


def crd(
    plural: str,
    *versions: tuple[str, bool],
    established: bool = True,
    group: str = "gateway.networking.k8s.io",
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"plural": plural},
            "versions": [{"name": name, "served": served} for name, served in versions],
        },
        "status": {
            "conditions": [{"type": "Established", "status": "True" if established else "False"}]
        },
    }


@pytest.mark.parametrize(
    ("body", "served"),
    [
        (crd("tcproutes", ("v1", True), ("v1alpha2", False)), "tcproutes"),
        (crd("gateways", ("v1", True)), "gateways"),
        # v1.5 and older: TCPRoute only v1alpha2, in the experimental channel
        (crd("tcproutes", ("v1alpha2", True)), None),
        (crd("tcproutes", ("v1", False)), None),
        (crd("udproutes", ("v1", True), established=False), None),
        (crd("httproutes", ("v1", True)), None),
        (crd("tcproutes", ("v1", True), group="example.com"), None),
    ],
)
def test_a_kind_is_watched_when_its_crd_is_established_and_serves_v1(body, served):
    assert crd_serves_v1(body) == served


class Pokes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def api() -> tuple[GatewayApi, Pokes]:
    pokes = Pokes()
    return GatewayApi(kube=None, poke=pokes), pokes  # type: ignore[arg-type]


def route_tunnel_body(ready: str = "False", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "apps",
            "name": "db-tcp-1",
            "labels": {"tunnelop.dev/route-kind": "TCPRoute", **labels},
            "annotations": {"tunnelop.dev/gateway": "infra/edge", "tunnelop.dev/listener": "tcp"},
        },
        "spec": {"relay": {"node": "r1"}},
        "status": {"relayNode": "r1", "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_a_tunnel_made_for_a_route_asks_for_a_translation_when_what_it_reports_changes():
    watch, pokes = api()
    watch.on_tunnel("ADDED", route_tunnel_body())
    assert pokes.count == 1
    (seen,) = watch.tunnels.values()
    assert (seen.gateway, seen.listener, seen.relay, seen.ready) == (
        ("infra", "edge"),
        "tcp",
        "r1",
        False,
    )
    watch.on_tunnel("MODIFIED", route_tunnel_body(extra="x"))  # nothing it reports
    assert pokes.count == 1
    edited = route_tunnel_body()
    edited["metadata"]["generation"] = 2  # its spec edited by someone: looked at again
    watch.on_tunnel("MODIFIED", edited)
    assert pokes.count == 2
    watch.on_tunnel("MODIFIED", route_tunnel_body("True"))
    assert pokes.count == 3 and next(iter(watch.tunnels.values())).ready
    watch.on_tunnel("DELETED", route_tunnel_body("True"))
    assert pokes.count == 4 and watch.tunnels == {}
    other = route_tunnel_body()
    other["metadata"]["labels"] = {}
    watch.on_tunnel("ADDED", other)  # a tenant's own Tunnel
    assert pokes.count == 4 and watch.tunnels == {}


def test_services_and_namespaces_ask_for_a_translation_only_when_what_routes_see_changes():
    watch, pokes = api()
    service = {"metadata": {"namespace": "apps", "name": "echo"}, "spec": {"ports": [{"port": 7}]}}
    watch._on_services("ADDED", service)
    watch._on_services("MODIFIED", {**service, "status": {"loadBalancer": {}}})
    assert pokes.count == 1
    watch._on_services("MODIFIED", {**service, "spec": {"ports": [{"port": 7, "protocol": "UDP"}]}})
    assert pokes.count == 2
    assert watch.services[("apps", "echo")].ports == frozenset({(7, "UDP")})
    watch._on_services("DELETED", service)
    assert pokes.count == 3 and watch.services == {}
    namespace = {"metadata": {"name": "apps", "labels": {"team": "a"}}}
    watch._on_namespaces("ADDED", namespace)
    watch._on_namespaces(
        "MODIFIED", {"metadata": {**namespace["metadata"], "annotations": {"x": "y"}}}
    )
    assert pokes.count == 4
    watch._on_namespaces("MODIFIED", {"metadata": {"name": "apps", "labels": {"team": "b"}}})
    assert pokes.count == 5 and watch.namespaces == {"apps": {"team": "b"}}


def test_an_own_write_is_kept_unless_a_newer_version_came_first():
    watch, _ = api()
    gateway = {"metadata": {"namespace": "infra", "name": "edge", "resourceVersion": "5"}}
    watch._handler("gateways")("ADDED", gateway)
    written = {"metadata": {**gateway["metadata"], "resourceVersion": "6"}, "status": {"x": 1}}
    watch.remember("gateways", written, replacing="5")
    assert watch.gateways[("infra", "edge")] is written
    stale = {"metadata": {**gateway["metadata"], "resourceVersion": "7"}}
    watch.remember("gateways", stale, replacing="5")  # the cache holds 6 by now
    assert watch.gateways[("infra", "edge")] is written
    route = {"metadata": {"namespace": "apps", "name": "db", "resourceVersion": "1"}}
    watch._handler("tcproutes")("ADDED", route)
    assert ("TCPRoute", "apps", "db") in watch.routes
