"""What the scheduler, the admission webhook and the frps config need to know of a RelayNode,
in one compact, immutable view built from its model; and the one rule of which ports a tunnel
may have on it."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tunnelop.api.v1alpha1 import PortSpan, RelayNode, RelayPlacement, merge_spans
from tunnelop.api.v1alpha1.ports import PORT_MAX, PORT_MIN
from tunnelop.contract.naming import (
    AGENT_HEALTH_PORT,
    CONTROL_PORT,
    DASHBOARD_PORT,
    HOST_NETWORK_HTTP_PORT,
    HOST_NETWORK_HTTPS_PORT,
    PLUGIN_PORT,
    PUBLIC_HTTP_PORT,
    PUBLIC_HTTPS_PORT,
    VHOST_HTTP_PORT,
    VHOST_HTTPS_PORT,
)
from tunnelop.contract.table import TABLE_BUDGET_BYTES
from tunnelop.domain.drain import Drain

# The API server's --service-node-port-range by default: a LoadBalancer Service takes one node
# port from it per tunnel port (unless allocateLoadBalancerNodePorts is false).
DEFAULT_NODE_PORT_RANGE = PortSpan(30000, 32767)

POOL_LABEL = "tunnelop.dev/pool"


def vhost_ports(exposure: str, protocols: Iterable[str]) -> dict[str, int]:
    """The ports frps serves http and https tunnels on, for the protocols the relay offers:
    {"http": 8080, "https": 8443} behind a Service (which maps the public 80/443 to them), or
    80/443 with HostNetwork, where nothing maps ports."""
    host_network = exposure == "HostNetwork"
    ports = {
        "http": HOST_NETWORK_HTTP_PORT if host_network else VHOST_HTTP_PORT,
        "https": HOST_NETWORK_HTTPS_PORT if host_network else VHOST_HTTPS_PORT,
    }
    return {protocol: port for protocol, port in ports.items() if protocol in protocols}


# Cached: the scheduler asks for every allocation it checks, and relays share a few shapes.
@functools.cache
def own_ports(exposure: str, protocols: tuple[str, ...]) -> Mapping[int, str]:
    """The ports the relay uses itself, with what for: every port its pod listens on (those
    on localhost too, so that the address a listener binds never decides whether a tunnel may
    have its port) and those its Service maps. A tunnel on one could not be bound, or would
    give the Service a second entry for the port, which the API server refuses. One list for
    tcp and udp, as frps's allowPorts is."""
    vhost = vhost_ports(exposure, protocols)
    ports = {
        CONTROL_PORT: "frps control port, where frpc logs in",
        PLUGIN_PORT: "agent's frps plugin port",
        AGENT_HEALTH_PORT: "agent's health port",
        DASHBOARD_PORT: "frps dashboard, which the agent meters traffic with",
    }
    if "http" in vhost:
        ports[vhost["http"]] = "frps vhost port for http tunnels"
    if "https" in vhost:
        ports[vhost["https"]] = "frps vhost port for https tunnels"
    if exposure != "HostNetwork":
        # The Service maps the public 80/443 to the vhost ports.
        if "http" in vhost:
            ports[PUBLIC_HTTP_PORT] = "public port of the relay's Service for http tunnels"
        if "https" in vhost:
            ports[PUBLIC_HTTPS_PORT] = "public port of the relay's Service for https tunnels"
    return MappingProxyType(dict(sorted(ports.items())))


@dataclass(frozen=True)
class RelayView:
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    protocols: tuple[str, ...] = ("tcp", "udp")
    exposure: str = "LoadBalancer"  # spec.exposure.type: where the relay's own ports are
    port_range: PortSpan = field(default_factory=lambda: PortSpan(20000, 29999))
    reserved: tuple[PortSpan, ...] = ()
    blocked: tuple[PortSpan, ...] = ()
    http_domain: str | None = None
    unschedulable: bool = False
    ready: bool = True
    # Its tunnels move away (deleted, spec.drain, failover): it takes no new ones.
    drain: Drain | None = None
    capacity_tunnels: int | None = None
    capacity_bandwidth: int | None = None
    # What the relay's table Secret can carry, in bytes of entries.
    table_budget_bytes: int = TABLE_BUDGET_BYTES
    # How many tunnel ports its Service can expose (None: no limit from the cluster).
    node_port_budget: int | None = None
    # NodePort exposure: a tunnel's port is its node port, so it must lie in this range.
    node_ports: PortSpan | None = None

    @classmethod
    def from_model(
        cls,
        relay: RelayNode,
        ready: bool = True,
        node_port_range: PortSpan = DEFAULT_NODE_PORT_RANGE,
        drain: Drain | None = None,
    ) -> RelayView:
        spec = relay.spec
        node_port_budget = None
        if spec.exposure.type == "LoadBalancer":
            # Each Service port takes a node port: the control port and http/https too.
            own = 1 + len({"http", "https"} & set(spec.protocols))
            node_port_budget = max(0, len(node_port_range) - own)
        return cls(
            name=relay.metadata.name or "",
            labels=dict(relay.metadata.labels or {}),
            protocols=tuple(spec.protocols),
            exposure=spec.exposure.type,
            port_range=spec.ports.span(),
            reserved=tuple(spec.ports.reserved_spans()),
            blocked=tuple(spec.ports.blocked_spans()),
            http_domain=spec.http_domain,
            unschedulable=spec.unschedulable,
            ready=ready,
            drain=drain,
            capacity_tunnels=spec.capacity.tunnels,
            capacity_bandwidth=spec.capacity_bps,
            node_port_budget=node_port_budget,
            node_ports=node_port_range if spec.exposure.type == "NodePort" else None,
        )

    @property
    def pool(self) -> str | None:
        return self.labels.get(POOL_LABEL)

    def matches(self, placement: RelayPlacement) -> bool:
        """Whether spec.relay (pool, node, nodeSelector) lets a tunnel run here."""
        if placement.node and placement.node != self.name:
            return False
        if placement.pool and placement.pool != self.pool:
            return False
        return all(self.labels.get(k) == v for k, v in placement.node_selector.items())

    def own_ports(self) -> Mapping[int, str]:
        """The ports the relay uses itself (see `own_ports`), with what for."""
        return own_ports(self.exposure, self.protocols)

    def port_refusal(self, port: int) -> str | None:
        """Why a tunnel may not have `port` here (None if it may, free or not), to follow
        "port N is": "outside 20000-29999", "the relay's own port (...)", "reserved",
        "blocked"."""
        if port not in self.port_range:
            return f"outside {self.port_range}"
        use = self.own_ports().get(port)
        if use is not None:
            return f"the relay's own port ({use})"
        if self.node_ports is not None and port not in self.node_ports:
            return (
                f"outside the cluster's node-port range {self.node_ports} (with NodePort "
                "exposure a tunnel's port is its node port)"
            )
        if any(port in s for s in self.reserved):
            return "reserved"
        if any(port in s for s in self.blocked):
            return "blocked"
        return None

    def port_allowed(self, port: int) -> bool:
        """Inside the range, not the relay's own, neither reserved nor blocked (whether free
        is another matter)."""
        return self.port_refusal(port) is None

    def describe_ports(self) -> str:
        """'20000-29999 except reserved 25565, 27015-27030 and blocked 22000-22100', and the
        relay's own ports when the range covers them: '1-9999 except the relay's own ports 7000,
        7400, 7401, 7500'."""
        notes = []
        own = [port for port in self.own_ports() if port in self.port_range]
        if own:
            notes.append("the relay's own ports " + ", ".join(str(p) for p in own))
        if self.reserved:
            notes.append("reserved " + ", ".join(str(s) for s in self.reserved))
        if self.blocked:
            notes.append("blocked " + ", ".join(str(s) for s in self.blocked))
        return f"{self.port_range} except {' and '.join(notes)}" if notes else str(self.port_range)

    def allowed_spans(self) -> list[PortSpan]:
        """The ports tunnels may have here, as sorted runs: the range minus the relay's own,
        reserved and blocked ports. The scheduler allocates from these, admission refuses
        others, and they are frps's allowPorts."""
        holes = [PortSpan(port, port) for port in self.own_ports()]
        if self.node_ports is not None:
            if self.node_ports.first > PORT_MIN:
                holes.append(PortSpan(PORT_MIN, self.node_ports.first - 1))
            if self.node_ports.last < PORT_MAX:
                holes.append(PortSpan(self.node_ports.last + 1, PORT_MAX))
        allowed = []
        next_port = self.port_range.first
        for hole in merge_spans((*holes, *self.reserved, *self.blocked)):
            if hole.last < next_port or hole.first > self.port_range.last:
                continue
            if hole.first > next_port:
                allowed.append(PortSpan(next_port, hole.first - 1))
            next_port = max(next_port, hole.last + 1)
        if next_port <= self.port_range.last:
            allowed.append(PortSpan(next_port, self.port_range.last))
        return allowed

    def allowed_port_count(self) -> int:
        """How many ports tunnels may have here (per protocol family: tcp and udp each)."""
        return sum(len(span) for span in self.allowed_spans())
