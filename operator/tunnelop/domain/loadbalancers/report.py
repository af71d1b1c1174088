"""What a Service of the class tunnelop.dev/relay is told about its Tunnels: its
status.loadBalancer (where visitors connect) and the ports its relays cannot give. Pure.

The ingress lists each relay that serves a Ready tunnel of the Service, by its public
address: an IP as `ip`, a name as `hostname`, as Kubernetes wants them. An IP's ipMode is
Proxy: the relay is a proxy in front of the Service, and kube-proxy must not short-cut
in-cluster traffic to that address past it (VIP would), or the relay's limits and meters
would not apply to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunnelop.domain import conditions
from tunnelop.domain.loadbalancers.request import PortTunnel, ServicePort, ServiceRequest

IP_MODE = "Proxy"


@dataclass(frozen=True)
class PortProblem:
    """A port the relays cannot give: its Tunnel's reason (PortTaken, PortNotAllowed,
    CapacityExhausted, QuotaExceeded, ...) and message."""

    service_port: ServicePort
    tunnel: str
    reason: str
    message: str

    def event_message(self) -> str:
        return f"port {self.service_port} (Tunnel {self.tunnel}): {self.message}"


def load_balancer_status(
    request: ServiceRequest,
    tunnels: Mapping[str, dict[str, Any]],
    relay_addresses: Mapping[str, str],
) -> dict[str, Any]:
    """status.loadBalancer of the Service, from its Tunnels by name (as last seen) and the
    relays' public addresses by RelayNode name: empty until a tunnel is Ready."""
    ports_by_address: dict[str, list[dict[str, Any]]] = {}
    for wanted in request.tunnels:
        relay = _ready_relay(tunnels.get(wanted.name))
        address = relay_addresses.get(relay) if relay else None
        if not address:
            continue
        port = wanted.service_port
        ports_by_address.setdefault(address, []).append(
            {"port": port.port, "protocol": port.protocol}
        )
    ingress = [
        {**_address_fields(address), "ports": sorted(ports, key=_port_order)}
        for address, ports in sorted(ports_by_address.items())
    ]
    return {"ingress": ingress} if ingress else {}


def port_problems(
    request: ServiceRequest, tunnels: Mapping[str, dict[str, Any]]
) -> dict[str, PortProblem]:
    """By Tunnel name, the ports whose Tunnel says it is not scheduled (for its current
    spec): the relay cannot give that port, or not yet."""
    found = {}
    for wanted in request.tunnels:
        problem = _problem_of(wanted, tunnels.get(wanted.name))
        if problem is not None:
            found[wanted.name] = problem
    return found


def to_report(
    problems: Mapping[str, PortProblem], reported: Mapping[str, str]
) -> list[PortProblem]:
    """The problems not reported yet with that reason (`reported`: Tunnel name -> reason of
    the last Event): one Event per port and reason, not one per reconcile."""
    return [p for name, p in sorted(problems.items()) if reported.get(name) != p.reason]


def _ready_relay(body: dict[str, Any] | None) -> str | None:
    if not body or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    status = body.get("status") or {}
    if not conditions.is_true(status.get("conditions"), "Ready"):
        return None
    relay = status.get("relayNode")
    return relay if isinstance(relay, str) else None


def _problem_of(wanted: PortTunnel, body: dict[str, Any] | None) -> PortProblem | None:
    if not body:
        return None
    status = body.get("status") or {}
    scheduled = conditions.find(status.get("conditions"), "Scheduled")
    if not scheduled or scheduled.get("status") != "False":
        return None
    generation = (body.get("metadata") or {}).get("generation")
    if generation is not None and scheduled.get("observedGeneration") != generation:
        return None  # about a spec the Tunnel no longer has
    return PortProblem(
        wanted.service_port,
        wanted.name,
        str(scheduled.get("reason") or "Unschedulable"),
        str(scheduled.get("message") or ""),
    )


def _address_fields(address: str) -> dict[str, str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"hostname": address}
    return {"ip": address, "ipMode": IP_MODE}


def _port_order(port: dict[str, Any]) -> tuple[int, str]:
    return port["port"], port["protocol"]
