"""Admission rules for Tunnels that the schema and CEL cannot express, because they depend on
other objects: the RelayNodes a tunnel may run on, and the host names other tunnels hold (a
host name belongs to one tunnel only, cluster-wide: decision 0008).

Pure functions: the webhook (controllers/webhook.py) feeds them from its indexes. They are a
courtesy to the user — an early, precise "no" — not the guarantee: the scheduler and the
allocator enforce the same rules again when they bind, for requests that race each other.

A rule is checked on CREATE, and on UPDATE only when the fields it reads changed, so that a
tenant can always suspend or delete a tunnel whose relay was reconfigured after it was
admitted. When no RelayNode matches spec.relay at all, only the custom-domain rules apply
(they do not depend on placement): Git-driven installs may apply tunnels before relays, and
the scheduler reports NoRelayMatches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import HTTP_PROTOCOLS, Tunnel, TunnelSpec, error_messages
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling.explain import holder_name


@dataclass(frozen=True)
class SubdomainClaim:
    """A subdomain held by an existing tunnel, under the httpDomains it may be served on."""

    namespace: str
    name: str
    subdomain: str
    http_domains: frozenset[str]


@dataclass(frozen=True)
class HostClaim:
    """A custom domain an existing tunnel asks for (spec.customDomains)."""

    namespace: str
    name: str
    host: str


def review(
    obj: dict,
    old: dict | None,
    relays: Iterable[RelayView],
    claims: Iterable[SubdomainClaim],
    host_claims: Iterable[HostClaim] = (),
) -> list[str]:
    """All reasons to deny `obj` (a Tunnel manifest); empty means admit. `relays` are all
    RelayNodes, `claims` the subdomains and `host_claims` the custom domains other tunnels
    ask for (those of the tunnel itself are ignored)."""
    try:
        tunnel = Tunnel.model_validate(obj)
    except ValidationError as error:
        return error_messages(error)
    previous = _old_spec(old)
    spec = tunnel.spec
    me = (tunnel.metadata.namespace or "", tunnel.metadata.name or "")
    relays = list(relays)
    others = [c for c in host_claims if (c.namespace, c.name) != me]
    # Only the names added are judged: a tenant keeps the ones admitted before.
    added = sorted({d.lower() for d in spec.custom_domains} - _custom_domains(previous))
    denials = _custom_domains_not_provided(added, relays)
    denials += _custom_domains_unique(added, others, me)
    eligible = [r for r in relays if r.matches(spec.relay)]
    if not eligible:
        return denials

    def changed(*fields: str) -> bool:
        return previous is None or any(getattr(spec, f) != getattr(previous, f) for f in fields)

    if changed("protocol", "relay"):
        denials += _protocol_allowed(spec, eligible)
    if spec.remote_port is not None and changed("remote_port", "relay"):
        denials += _port_allowed(spec, eligible)
    if spec.subdomain is not None and changed("subdomain", "relay", "protocol"):
        denials += _subdomain_unique(spec, *me, eligible, claims)
        denials += _subdomain_not_a_custom_domain(spec, eligible, others, me)
    return denials


def subdomain_hosts(spec: TunnelSpec, relays: Iterable[RelayView]) -> list[str]:
    """The host names spec.subdomain may make, under the httpDomains it could be served on."""
    if spec.subdomain is None:
        return []
    return [f"{spec.subdomain}.{d}" for d in sorted(possible_http_domains(spec, relays))]


def possible_http_domains(spec: TunnelSpec, relays: Iterable[RelayView]) -> frozenset[str]:
    """The httpDomains an http(s) tunnel could be served under, given its placement."""
    return frozenset(
        r.http_domain
        for r in relays
        if r.http_domain and spec.protocol in r.protocols and r.matches(spec.relay)
    )


def _custom_domains(spec: TunnelSpec | None) -> set[str]:
    return {d.lower() for d in spec.custom_domains} if spec is not None else set()


def _custom_domains_not_provided(added: list[str], relays: list[RelayView]) -> list[str]:
    """A custom domain may not be, or lie under, any relay's httpDomain (whether or not the
    tunnel could run there): those host names are the provider's, handed out as subdomains."""
    http_domains = sorted({r.http_domain for r in relays if r.http_domain})
    for domain in added:
        for http_domain in http_domains:
            if domain == http_domain or domain.endswith(f".{http_domain}"):
                return [
                    f"spec.customDomains: {domain!r} is under {http_domain}, the httpDomain of "
                    "a RelayNode, whose host names only the provider hands out; use "
                    f"spec.subdomain instead for a name under {http_domain}, or a domain of "
                    "your own"
                ]
    return []


def _claimed_by(others: list[HostClaim], host: str) -> tuple[str, str] | None:
    """The first tunnel (by namespace and name) of `others` that claims `host`."""
    return min(((c.namespace, c.name) for c in others if c.host == host), default=None)


def _custom_domains_unique(
    added: list[str], others: list[HostClaim], me: tuple[str, str]
) -> list[str]:
    for domain in added:
        holder = _claimed_by(others, domain)
        if holder is not None:
            return [
                f"spec.customDomains: {domain!r} is already asked for by "
                f"{holder_name(holder, me)}, and a host name serves one tunnel only; remove "
                "it from spec.customDomains"
            ]
    return []


def _subdomain_not_a_custom_domain(
    spec: TunnelSpec, eligible: list[RelayView], others: list[HostClaim], me: tuple[str, str]
) -> list[str]:
    for host in subdomain_hosts(spec, eligible):
        holder = _claimed_by(others, host)
        if holder is not None:
            return [
                f"spec.subdomain: {spec.subdomain!r} makes {host}, a custom domain of "
                f"{holder_name(holder, me)}; choose another subdomain, or omit spec.subdomain "
                "to get a generated one"
            ]
    return []


def _old_spec(old: dict | None) -> TunnelSpec | None:
    if not old:
        return None
    try:
        return Tunnel.model_validate(old).spec
    except ValidationError:
        return None  # an object stored before a rule existed: check everything


def _protocol_allowed(spec: TunnelSpec, eligible: list[RelayView]) -> list[str]:
    if any(spec.protocol in r.protocols for r in eligible):
        return []
    offered = sorted({p for r in eligible for p in r.protocols})
    hint = (
        " (http and https must be enabled per RelayNode by the provider)"
        if (spec.protocol in HTTP_PROTOCOLS)
        else ""
    )
    return [
        f"spec.protocol: {spec.protocol!r} is not allowed on any RelayNode matching "
        f"spec.relay ({_names(eligible)}); allowed there: {', '.join(offered)}{hint}"
    ]


def _port_allowed(spec: TunnelSpec, eligible: list[RelayView]) -> list[str]:
    port = spec.remote_port
    candidates = [r for r in eligible if spec.protocol in r.protocols] or eligible
    refusals = [(r, r.port_refusal(port)) for r in candidates]
    if any(reason is None for _, reason in refusals):
        return []
    shown = refusals[:5]
    more = f"; and {len(refusals) - 5} more" if len(refusals) > 5 else ""
    why = "; ".join(f"{r.name}: {reason}" for r, reason in shown)
    allowed = "; ".join(f"{r.name}: {r.describe_ports()}" for r, _ in shown)
    return [
        f"spec.remotePort: {port} is not available on any RelayNode matching spec.relay "
        f"({why}{more}); allowed ports are {allowed}. Omit spec.remotePort to get a free "
        "port allocated"
    ]


def _subdomain_unique(
    spec: TunnelSpec,
    namespace: str,
    name: str,
    eligible: list[RelayView],
    claims: Iterable[SubdomainClaim],
) -> list[str]:
    domains = possible_http_domains(spec, eligible)
    for claim in claims:
        if claim.subdomain != spec.subdomain or (claim.namespace, claim.name) == (namespace, name):
            continue
        shared = domains & claim.http_domains
        if shared:
            domain = sorted(shared)[0]
            holder = holder_name((claim.namespace, claim.name), (namespace, name))
            return [
                f"spec.subdomain: {spec.subdomain!r} is already taken under {domain} by "
                f"{holder}; choose another subdomain, or omit spec.subdomain to get a "
                "generated one"
            ]
    return []


def _names(relays: list[RelayView]) -> str:
    names = [r.name for r in relays[:5]]
    return ", ".join(names) + (f" and {len(relays) - 5} more" if len(relays) > 5 else "")
