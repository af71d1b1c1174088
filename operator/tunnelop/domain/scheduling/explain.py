"""Why a tunnel fits no relay, in kube-scheduler style: how many relays failed for which
reason, then what the user can change, naming the Tunnel's fields.

    0/3 RelayNodes fit: 2 do not match spec.relay (nodeSelector region=eu), 1 (web-1) does
    not allow protocol http (allows tcp, udp). Change spec.protocol, ask the provider to
    enable http on a relay or change spec.relay.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnelop.api.v1alpha1 import RelayPlacement, format_quantity
from tunnelop.domain.relayview import RelayView
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
    TunnelKey,
    Unschedulable,
)

NAMES_SHOWN = 3  # relays named per group; more are counted only


@dataclass(frozen=True)
class Refusal:
    """Why one relay does not take a tunnel: a predicate for one relay and for several (to
    group relays that fail alike), and what the user could do about it."""

    reason: str
    one: str  # "is not ready"
    many: str  # "are not ready"
    hints: tuple[str, ...]  # lowercase alternatives: "wait for a relay to become ready"
    name_relays: bool = True  # relays that do not even match are not worth naming


def explain(relay_count: int, refusals: list[tuple[str, Refusal]]) -> Unschedulable:
    """The Unschedulable for relays (name, refusal) that all refused the tunnel. Its reason is
    that of the relay that came closest to fitting."""
    if not refusals:
        return Unschedulable(
            NO_RELAY_MATCHES,
            "0/0 RelayNodes fit: there are no RelayNodes. Wait for the provider to create one; "
            "the tunnel is scheduled as soon as one matching spec.relay is ready.",
        )
    groups: dict[Refusal, list[str]] = {}
    for name, refusal in sorted(refusals, key=lambda item: REASONS.index(item[1].reason)):
        groups.setdefault(refusal, []).append(name)
    parts = [_describe_group(refusal, names) for refusal, names in groups.items()]
    # The closest relays' remedies first: they are the likeliest to help.
    hints = list(dict.fromkeys(hint for refusal in reversed(groups) for hint in refusal.hints))
    closest = max((refusal.reason for _, refusal in refusals), key=REASONS.index)
    return Unschedulable(
        closest,
        f"0/{relay_count} RelayNodes fit: {', '.join(parts)}. {_sentence(_alternatives(hints))}.",
    )


def _describe_group(refusal: Refusal, names: list[str]) -> str:
    count = len(names)
    predicate = refusal.one if count == 1 else refusal.many
    if not refusal.name_relays:
        return f"{count} {predicate}"
    shown = ", ".join(names[:NAMES_SHOWN])
    if count > NAMES_SHOWN:
        shown += f" and {count - NAMES_SHOWN} more"
    return f"{count} ({shown}) {predicate}"


def _alternatives(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return f"{', '.join(phrases[:-1])} or {phrases[-1]}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe_placement(placement: RelayPlacement) -> str:
    """`pool gold, nodeSelector region=eu, tier=paid`: the constraints of spec.relay."""
    parts = []
    if placement.pool:
        parts.append(f"pool {placement.pool}")
    if placement.node:
        parts.append(f"node {placement.node}")
    if placement.node_selector:
        selector = ", ".join(f"{k}={v}" for k, v in sorted(placement.node_selector.items()))
        parts.append(f"nodeSelector {selector}")
    return ", ".join(parts)


def holder_name(holder: TunnelKey, requester: TunnelKey) -> str:
    """Who holds a port or host name, as the requester may learn it. Only a tunnel of the
    requester's own namespace is named: other tenants' tunnels are none of their business
    (nor is whether a tunnel of a given name exists there)."""
    if holder[0] == requester[0]:
        return f"tunnel {holder[1]} of this namespace"
    return "a tunnel of another namespace"


def _holder(holder: TunnelKey, requester: TunnelKey) -> tuple[str, str]:
    """holder_name, for one relay and for several."""
    text = holder_name(holder, requester)
    if holder[0] == requester[0]:
        return text, text
    return text, "tunnels of other namespaces"


# The refusals, in the order the scheduler checks them -----------------------------------------


def not_matching(placement: RelayPlacement, node_exists: bool) -> Refusal:
    hint = "change spec.relay"
    if placement.node and not node_exists:
        hint = f"change spec.relay.node (there is no RelayNode {placement.node})"
    where = describe_placement(placement)
    return Refusal(
        NO_RELAY_MATCHES,
        f"does not match spec.relay ({where})",
        f"do not match spec.relay ({where})",
        (hint,),
        name_relays=False,
    )


def pool_not_allowed(pools: frozenset[str], limit: str) -> Refusal:
    """The relay is in no pool the namespace's TunnelQuota allows (`limit` names hard.pools
    and the quota)."""
    allowed = ", ".join(sorted(pools)) or "none"
    return Refusal(
        NO_RELAY_MATCHES,
        f"is not in a pool {limit} allows ({allowed})",
        f"are not in a pool {limit} allows ({allowed})",
        ("ask the provider for a relay in an allowed pool or another pool in hard.pools",),
    )


def protocol_not_allowed(protocol: str, relay: RelayView) -> Refusal:
    allowed = ", ".join(relay.protocols)
    return Refusal(
        PROTOCOL_NOT_ALLOWED,
        f"does not allow protocol {protocol} (allows {allowed})",
        f"do not allow protocol {protocol} (allow {allowed})",
        ("change spec.protocol", f"ask the provider to enable {protocol} on a relay"),
    )


def no_http_domain(protocol: str) -> Refusal:
    return Refusal(
        PROTOCOL_NOT_ALLOWED,
        f"allows {protocol} but has no httpDomain",
        f"allow {protocol} but have no httpDomain",
        ("ask the provider to set httpDomain on a relay",),
    )


def port_not_allowed(port: int, relay: RelayView) -> Refusal:
    why = relay.port_refusal(port)
    ports = relay.describe_ports()
    return Refusal(
        PORT_NOT_ALLOWED,
        f"refuses spec.remotePort {port} ({why}; allowed {ports})",
        f"refuse spec.remotePort {port} ({why}; allowed {ports})",
        (
            "choose a spec.remotePort the relay allows",
            "omit spec.remotePort to get a free port allocated",
        ),
    )


def draining() -> Refusal:
    return Refusal(
        NO_RELAY_READY,
        "is being drained (its tunnels move away)",
        "are being drained (their tunnels move away)",
        ("wait for a relay with room",),
    )


def cordoned() -> Refusal:
    return Refusal(
        NO_RELAY_READY,
        "is cordoned (unschedulable)",
        "are cordoned (unschedulable)",
        ("wait for the provider to uncordon a relay",),
    )


def not_ready() -> Refusal:
    return Refusal(
        NO_RELAY_READY, "is not ready", "are not ready", ("wait for a relay to become ready",)
    )


def full() -> Refusal:
    return Refusal(
        CAPACITY_EXHAUSTED,
        "is full (capacity.tunnels)",
        "are full (capacity.tunnels)",
        ("wait for tunnels to be removed", "ask the provider for more capacity"),
    )


def table_full(tunnels: int) -> Refusal:
    return Refusal(
        CAPACITY_EXHAUSTED,
        f"is full: its allocation table holds {tunnels} tunnels, as many as one table Secret "
        "(1 MiB) carries",
        "are full: their allocation tables hold as many tunnels as one table Secret (1 MiB) "
        "carries",
        ("wait for tunnels to be removed", "ask the provider for more relays"),
    )


def node_ports_exhausted(budget: int) -> Refusal:
    return Refusal(
        CAPACITY_EXHAUSTED,
        f"has no node port left for its Service ({budget} tunnel ports fit the cluster's "
        "node-port range)",
        f"have no node port left for their Services ({budget} tunnel ports fit the cluster's "
        "node-port range)",
        ("wait for tunnels to be removed", "ask the provider for more relays"),
    )


def bandwidth_short(bandwidth: int) -> Refusal:
    wanted = format_quantity(bandwidth)
    return Refusal(
        CAPACITY_EXHAUSTED,
        f"has less than spec.bandwidth {wanted} left of capacity.bandwidth",
        f"have less than spec.bandwidth {wanted} left of capacity.bandwidth",
        ("lower spec.bandwidth", "ask the provider for more capacity"),
    )


def no_free_port(family: str) -> Refusal:
    return Refusal(
        CAPACITY_EXHAUSTED,
        f"has no free {family} port",
        f"have no free {family} port",
        ("wait for tunnels to be removed", "ask the provider for more ports"),
    )


def port_taken(port: int, family: str, holder: TunnelKey, requester: TunnelKey) -> Refusal:
    by_one, by_many = _holder(holder, requester)
    return Refusal(
        PORT_TAKEN,
        f"has {family} port {port} taken by {by_one}",
        f"have {family} port {port} taken by {by_many}",
        ("choose another spec.remotePort", "omit spec.remotePort to get a free port allocated"),
    )


def subdomain_taken(
    subdomain: str, http_domain: str, holder: TunnelKey, requester: TunnelKey
) -> Refusal:
    by_one, by_many = _holder(holder, requester)
    return Refusal(
        SUBDOMAIN_TAKEN,
        f"serves {http_domain}, where spec.subdomain {subdomain} is taken by {by_one}",
        f"serve {http_domain}, where spec.subdomain {subdomain} is taken by {by_many}",
        ("choose another spec.subdomain", "omit spec.subdomain to get one generated"),
    )


# Refusals of the request itself, whatever the relays: custom domains -------------------------


def custom_domain_not_allowed(relay_count: int, domain: str, http_domain: str) -> Unschedulable:
    return Unschedulable(
        CUSTOM_DOMAIN_NOT_ALLOWED,
        f"0/{relay_count} RelayNodes fit: spec.customDomains {domain} is under {http_domain}, "
        "the httpDomain of a RelayNode, whose host names only the provider hands out. Use "
        f"spec.subdomain for a name under {http_domain}, or remove {domain} from "
        "spec.customDomains.",
    )


def custom_domain_taken(
    relay_count: int, domain: str, holder: TunnelKey, requester: TunnelKey
) -> Unschedulable:
    return Unschedulable(
        CUSTOM_DOMAIN_TAKEN,
        f"0/{relay_count} RelayNodes fit: spec.customDomains {domain} is held by "
        f"{holder_name(holder, requester)}, and a host name serves one tunnel only. Remove "
        f"{domain} from spec.customDomains: this tunnel is scheduled as soon as it is free.",
    )
