"""The validating admission webhook for Tunnels: thin glue between kopf's indexes of
RelayNodes and Tunnels and the pure rules in tunnelop.admission."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from tunnelop import admission, logs
from tunnelop.api.v1alpha1 import GROUP, VERSION, RelayNode, Tunnel
from tunnelop.relays import RelayView

log = logs.get(__name__)


@dataclass(frozen=True)
class TunnelRef:
    """What the webhook remembers of an existing tunnel that holds a subdomain."""

    namespace: str
    name: str
    subdomain: str
    tunnel: Tunnel
    bound_relay: str | None


@kopf.index(GROUP, VERSION, "relaynodes")
async def relay_views(body: kopf.Body, name: str, **_: Any) -> dict[str, RelayView]:
    try:
        relay = RelayNode.model_validate(dict(body))
    except ValidationError:
        return {}  # the schema admitted it; a relay we cannot read offers nothing
    return {name: RelayView.from_model(relay)}


@kopf.index(GROUP, VERSION, "tunnels")
async def tunnel_subdomains(body: kopf.Body, **_: Any) -> dict[str, TunnelRef]:
    try:
        tunnel = Tunnel.model_validate(dict(body))
    except ValidationError:
        return {}
    subdomain = tunnel.spec.subdomain or tunnel.status.subdomain
    if not subdomain:
        return {}
    ref = TunnelRef(
        tunnel.metadata.namespace or "",
        tunnel.metadata.name or "",
        subdomain,
        tunnel,
        tunnel.status.relay_node,
    )
    return {subdomain: ref}


def _claims(
    subdomain: str, tunnels: kopf.Index, relays: dict[str, RelayView]
) -> list[admission.SubdomainClaim]:
    claims = []
    for ref in tunnels.get(subdomain, ()):
        bound = relays.get(ref.bound_relay) if ref.bound_relay else None
        domains = (
            frozenset({bound.http_domain})
            if bound and bound.http_domain
            else admission.possible_http_domains(ref.tunnel.spec, relays.values())
        )
        claims.append(admission.SubdomainClaim(ref.namespace, ref.name, subdomain, domains))
    return claims


@kopf.on.validate(
    GROUP,
    VERSION,
    "tunnels",
    id="validate-tunnel",
    operations=["CREATE", "UPDATE"],
    # The scheduler enforces the same rules when it binds: while the operator is down,
    # tenants' GitOps syncs go on and get their answer in status instead.
    ignore_failures=True,
)
async def validate_tunnel(
    body: kopf.Body,
    old: Any,
    relay_views: kopf.Index,
    tunnel_subdomains: kopf.Index,
    namespace: str | None,
    name: str | None,
    **_: Any,
) -> None:
    obj = dict(body)
    try:
        relays = {name: view for name, views in relay_views.items() for view in views}
        subdomain = (obj.get("spec") or {}).get("subdomain")
        claims = _claims(subdomain, tunnel_subdomains, relays) if isinstance(subdomain, str) else []
        denials = admission.review(obj, dict(old) if old else None, relays.values(), claims)
    except Exception:
        # A bug here must not turn into a puzzling denial: admit, and let the scheduler,
        # which enforces the same rules, answer in the tunnel's status.
        log.exception("admission review failed; admitting", namespace=namespace, name=name)
        return
    if denials:
        raise kopf.AdmissionError("; ".join(denials), code=422)
