"""The scheduler and allocator: binds Tunnels to RelayNodes and hands out ports and
host names (subdomains, and custom domains checked for their single owner). Pure and synchronous: no I/O, no Kubernetes client. The reconcilers feed an
`AllocationTable` with relays (`RelayView`) and requests (`TunnelRequest`), and write back
the `Allocation` or the `Unschedulable` it answers.
"""

from tunnelop.domain.scheduling.allocations import AllocationTable
from tunnelop.domain.scheduling.model import (
    CAPACITY_EXHAUSTED,
    CUSTOM_DOMAIN_NOT_ALLOWED,
    CUSTOM_DOMAIN_TAKEN,
    NO_RELAY_MATCHES,
    NO_RELAY_READY,
    PORT_NOT_ALLOWED,
    PORT_TAKEN,
    PROTOCOL_NOT_ALLOWED,
    REASONS,
    SUBDOMAIN_TAKEN,
    Allocation,
    RelayUsage,
    TunnelKey,
    TunnelRequest,
    Unschedulable,
    normal_hosts,
)
from tunnelop.domain.scheduling.subdomains import subdomain_candidates

__all__ = [
    "CAPACITY_EXHAUSTED",
    "CUSTOM_DOMAIN_NOT_ALLOWED",
    "CUSTOM_DOMAIN_TAKEN",
    "NO_RELAY_MATCHES",
    "NO_RELAY_READY",
    "PORT_NOT_ALLOWED",
    "PORT_TAKEN",
    "PROTOCOL_NOT_ALLOWED",
    "REASONS",
    "SUBDOMAIN_TAKEN",
    "Allocation",
    "AllocationTable",
    "RelayUsage",
    "TunnelKey",
    "TunnelRequest",
    "Unschedulable",
    "normal_hosts",
    "subdomain_candidates",
]
