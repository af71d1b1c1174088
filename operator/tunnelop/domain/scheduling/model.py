"""The scheduler's vocabulary: what a tunnel asks for, what it gets, and why it gets nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tunnelop.api.v1alpha1 import HTTP_PROTOCOLS, PORT_PROTOCOLS, RelayPlacement, Tunnel

TunnelKey = tuple[str, str]  # (namespace, name)

# Reasons of Unschedulable, from "nothing even matches" to "almost fitted". When relays fail
# for different reasons, the one that came closest names the result.
NO_RELAY_MATCHES = "NoRelayMatches"
PROTOCOL_NOT_ALLOWED = "ProtocolNotAllowed"
PORT_NOT_ALLOWED = "PortNotAllowed"
# A custom domain under a relay's httpDomain: those host names are the provider's to hand out.
CUSTOM_DOMAIN_NOT_ALLOWED = "CustomDomainNotAllowed"
NO_RELAY_READY = "NoRelayReady"
CAPACITY_EXHAUSTED = "CapacityExhausted"
PORT_TAKEN = "PortTaken"
SUBDOMAIN_TAKEN = "SubdomainTaken"
# A custom domain another tunnel holds: no relay may take the tunnel while it does.
CUSTOM_DOMAIN_TAKEN = "CustomDomainTaken"
REASONS = (
    NO_RELAY_MATCHES,
    PROTOCOL_NOT_ALLOWED,
    PORT_NOT_ALLOWED,
    CUSTOM_DOMAIN_NOT_ALLOWED,
    NO_RELAY_READY,
    CAPACITY_EXHAUSTED,
    PORT_TAKEN,
    SUBDOMAIN_TAKEN,
    CUSTOM_DOMAIN_TAKEN,
)


def uses_port(protocol: str) -> bool:
    """tcp and udp tunnels get a port of the relay; each is its own port family."""
    return protocol in PORT_PROTOCOLS


def uses_subdomain(protocol: str) -> bool:
    """http and https tunnels get a subdomain of the relay's httpDomain, and no port."""
    return protocol in HTTP_PROTOCOLS


def wanted_hosts(protocol: str, custom_domains: Iterable[str]) -> tuple[str, ...]:
    """The custom domains a tunnel of `protocol` holds: as normal_hosts gives them for http
    and https, none for tcp and udp."""
    return normal_hosts(custom_domains) if uses_subdomain(protocol) else ()


def normal_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """Host names as they are compared: lowercase, without a trailing dot, sorted, once."""
    return tuple(sorted({name.lower().rstrip(".") for name in names}))


def domain_and_parents(host: str) -> Iterator[str]:
    """`a.b.example.com`, `b.example.com`, `example.com`, `com`: the names a host lies under."""
    labels = host.split(".")
    for start in range(len(labels)):
        yield ".".join(labels[start:])


@dataclass(frozen=True)
class TunnelRequest:
    """What a Tunnel asks of the scheduler. A requested port is ignored for http(s) and a
    requested subdomain for tcp/udp (admission rejects both combinations anyway)."""

    key: TunnelKey
    protocol: str  # tcp | udp | http | https
    placement: RelayPlacement = field(default_factory=RelayPlacement, hash=False)
    remote_port: int | None = None  # tcp/udp only
    subdomain: str | None = None  # http/https only
    bandwidth: int | None = None  # bits/s; counts against the relay's capacity_bandwidth
    custom_domains: tuple[str, ...] = ()  # http/https only; host names, cluster-wide unique
    # The size of the tunnel's entry in its relay's table (an upper bound before the port or
    # subdomain is known): a relay takes no more tunnels than its table Secret can carry.
    table_bytes: int = 0
    # The RelayPools the tunnel may run in (its namespace's TunnelQuota hard.pools), None
    # for any; `pools_limit` names the limit and the quota for the refusal message.
    pools: frozenset[str] | None = None
    pools_limit: str = "hard.pools"

    @classmethod
    def from_tunnel(cls, tunnel: Tunnel) -> TunnelRequest:
        """The request of a Tunnel's spec. spec.bandwidth is taken as written: a caller that
        applies a TunnelQuota default does so with dataclasses.replace."""
        spec = tunnel.spec
        return cls(
            key=(tunnel.metadata.namespace or "", tunnel.metadata.name or ""),
            protocol=spec.protocol,
            placement=spec.relay,
            remote_port=spec.remote_port,
            subdomain=spec.subdomain,
            bandwidth=spec.bandwidth_bps,
            custom_domains=normal_hosts(spec.custom_domains),
        )

    @property
    def wanted_port(self) -> int | None:
        return self.remote_port if uses_port(self.protocol) else None

    @property
    def wanted_subdomain(self) -> str | None:
        return self.subdomain if uses_subdomain(self.protocol) else None

    @property
    def wanted_custom_domains(self) -> tuple[str, ...]:
        return wanted_hosts(self.protocol, self.custom_domains)


@dataclass(frozen=True)
class Allocation:
    """A tunnel bound to a relay, with its port (tcp/udp) or subdomain (http/https)."""

    key: TunnelKey
    relay: str
    protocol: str
    port: int | None = None  # tcp/udp
    subdomain: str | None = None  # http/https
    http_domain: str | None = None  # the relay's httpDomain, for http/https
    bandwidth: int | None = None
    table_bytes: int = 0  # the size of its entry in the relay's table
    custom_domains: tuple[str, ...] = ()  # http/https, as normal_hosts() gives them

    @property
    def host(self) -> str | None:
        """The host name of an http(s) tunnel: subdomain.httpDomain."""
        if self.subdomain and self.http_domain:
            return f"{self.subdomain}.{self.http_domain}"
        return None

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host name the tunnel is served by: subdomain.httpDomain and its custom
        domains (none for tcp/udp). Each belongs to this tunnel only, cluster-wide."""
        if not uses_subdomain(self.protocol):
            return ()
        host = self.host
        return normal_hosts((host, *self.custom_domains) if host else self.custom_domains)


@dataclass(frozen=True)
class Unschedulable:
    """Why no relay takes the tunnel, and what the user should change."""

    reason: str  # one of REASONS
    message: str


@dataclass(frozen=True)
class RelayUsage:
    """What the tunnels on one relay use."""

    tunnels: int = 0
    ports: int = 0  # tcp and udp ports together
    bandwidth: int = 0  # sum of the tunnels' bandwidth in bits/s; unlimited ones count 0
