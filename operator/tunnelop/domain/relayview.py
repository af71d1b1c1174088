"""What the scheduler and the admission webhook need to know of a RelayNode, in one compact,
immutable view built from its model."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunnelop.api.v1alpha1 import PortSpan, RelayNode, RelayPlacement, merge_spans
from tunnelop.contract.table import TABLE_BUDGET_BYTES

# The API server's --service-node-port-range by default: a LoadBalancer Service takes one node
# port from it per tunnel port (unless allocateLoadBalancerNodePorts is false).
DEFAULT_NODE_PORT_RANGE = PortSpan(30000, 32767)

POOL_LABEL = "tunnelop.dev/pool"


@dataclass(frozen=True)
class RelayView:
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    protocols: tuple[str, ...] = ("tcp", "udp")
    port_range: PortSpan = field(default_factory=lambda: PortSpan(20000, 29999))
    reserved: tuple[PortSpan, ...] = ()
    blocked: tuple[PortSpan, ...] = ()
    http_domain: str | None = None
    unschedulable: bool = False
    ready: bool = True
    capacity_tunnels: int | None = None
    capacity_bandwidth: int | None = None
    # What the relay's table Secret can carry, in bytes of entries.
    table_budget_bytes: int = TABLE_BUDGET_BYTES
    # How many tunnel ports its Service can expose (None: no limit from the cluster).
    node_port_budget: int | None = None

    @classmethod
    def from_model(
        cls,
        relay: RelayNode,
        ready: bool = True,
        node_port_range: PortSpan = DEFAULT_NODE_PORT_RANGE,
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
            port_range=spec.ports.span(),
            reserved=tuple(spec.ports.reserved_spans()),
            blocked=tuple(spec.ports.blocked_spans()),
            http_domain=spec.http_domain,
            unschedulable=spec.unschedulable,
            ready=ready,
            capacity_tunnels=spec.capacity.tunnels,
            capacity_bandwidth=spec.capacity_bps,
            node_port_budget=node_port_budget,
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

    def port_refusal(self, port: int) -> str | None:
        """Why a tunnel may not have `port` here (None if it may, free or not)."""
        if port not in self.port_range:
            return f"outside {self.port_range}"
        if any(port in s for s in self.reserved):
            return "reserved"
        if any(port in s for s in self.blocked):
            return "blocked"
        return None

    def port_allowed(self, port: int) -> bool:
        """Inside the range and neither reserved nor blocked (whether free is another matter)."""
        return self.port_refusal(port) is None

    def describe_ports(self) -> str:
        """'20000-29999 except reserved 25565, 27015-27030 and blocked 22000-22100'."""
        notes = []
        if self.reserved:
            notes.append("reserved " + ", ".join(str(s) for s in self.reserved))
        if self.blocked:
            notes.append("blocked " + ", ".join(str(s) for s in self.blocked))
        return f"{self.port_range} except {' and '.join(notes)}" if notes else str(self.port_range)

    def allowed_spans(self) -> list[PortSpan]:
        """The ports tunnels may have here, as sorted runs: the range minus reserved and
        blocked ports."""
        allowed = []
        next_port = self.port_range.first
        for hole in merge_spans((*self.reserved, *self.blocked)):
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
