"""The Tunnels of a Service of the load-balancer class tunnelop.dev/relay, one per port: the
relay's port is the Service's port, and an operator-run frpc (client type InCluster) forwards
its visitors to the Service by its cluster DNS name and that same port.

The Service is the Tunnels' controller (an owner reference), so deleting it deletes them.
blockOwnerDeletion stays unset: it would need the right to update every Service's finalizers,
and nothing about a Service waits on its Tunnels.
"""

from __future__ import annotations

from typing import Any

from tunnelop.contract.naming import MANAGED_BY, OWNER_API_VERSION
from tunnelop.domain.loadbalancers.request import SERVICE_LABEL, PortTunnel, ServiceRequest


def service_owner_reference(service: dict[str, Any]) -> dict[str, Any]:
    meta = service["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def build_service_tunnels(service: dict[str, Any], request: ServiceRequest) -> list[dict[str, Any]]:
    """Tunnel manifests for server-side apply, in the Service's namespace."""
    return [_tunnel(service, request, wanted) for wanted in request.tunnels]


def _tunnel(service: dict[str, Any], request: ServiceRequest, wanted: PortTunnel) -> dict:
    meta = service["metadata"]
    port = wanted.service_port.port
    spec: dict[str, Any] = {
        "protocol": wanted.protocol,
        "remotePort": port,
        "client": {"type": "InCluster", "target": {"service": meta["name"], "port": port}},
    }
    if request.placement:
        spec["relay"] = request.placement
    if request.bandwidth is not None:
        spec["bandwidth"] = request.bandwidth
    if request.source_ranges:
        spec["allowSourceRanges"] = list(request.source_ranges)
    return {
        "apiVersion": OWNER_API_VERSION,
        "kind": "Tunnel",
        "metadata": {
            "name": wanted.name,
            "namespace": meta["namespace"],
            "labels": {SERVICE_LABEL: meta["name"], "app.kubernetes.io/managed-by": MANAGED_BY},
            "ownerReferences": [service_owner_reference(service)],
        },
        "spec": spec,
    }
