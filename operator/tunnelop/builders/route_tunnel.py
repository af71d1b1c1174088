"""The Tunnel that serves one Gateway listener for one TCPRoute or UDPRoute: in the route's
namespace, owned by the route (deleted with it), pinned to the Gateway's relay and port, with
an in-cluster client forwarding to the route's backend Service port."""

from __future__ import annotations

from typing import Any

from tunnelop.api.v1alpha1 import API_VERSION
from tunnelop.domain.gateway import (
    API_VERSION as GATEWAY_API_VERSION,
)
from tunnelop.domain.gateway import (
    GATEWAY_ANNOTATION,
    LISTENER_ANNOTATION,
    ROUTE_KIND_LABEL,
    TunnelWant,
)

MANAGED_BY = {"app.kubernetes.io/managed-by": "tunnelop"}


def route_tunnel(want: TunnelWant) -> dict[str, Any]:
    route = want.route
    relay: dict[str, str] = {"node": want.node}
    if want.pool:
        relay["pool"] = want.pool
    return {
        "apiVersion": API_VERSION,
        "kind": "Tunnel",
        "metadata": {
            "name": want.key[1],
            "namespace": want.key[0],
            "labels": {ROUTE_KIND_LABEL: route.kind, **MANAGED_BY},
            "annotations": {
                GATEWAY_ANNOTATION: f"{want.gateway[0]}/{want.gateway[1]}",
                LISTENER_ANNOTATION: want.listener,
            },
            # No blockOwnerDeletion: deleting a route never waits for its Tunnels.
            "ownerReferences": [
                {
                    "apiVersion": GATEWAY_API_VERSION,
                    "kind": route.kind,
                    "name": route.meta.name,
                    "uid": route.meta.uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "protocol": want.protocol,
            "remotePort": want.port,
            "relay": relay,
            "client": {
                "type": "InCluster",
                "target": {"service": want.target.service, "port": want.target.port},
            },
        },
    }


def covers(actual: Any, wanted: Any) -> bool:
    """Whether `actual` (an object as stored, with defaults and fields of others) has every
    field `wanted` sets, with the same value: then applying `wanted` changes nothing."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(covers(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(covers(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return actual == wanted
