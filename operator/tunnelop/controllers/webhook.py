"""The admission webhooks for Tunnels: thin glue between the operator's caches (relays as
watched, tunnels by subdomain and by custom domain) and the pure rules in
tunnelop.domain.admission."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from tunnelop.api.v1alpha1 import GROUP, VERSION, Tunnel
from tunnelop.controllers import quotas
from tunnelop.controllers.state import FINALIZER, Runtime
from tunnelop.domain import admission
from tunnelop.domain.quota import quota_denials
from tunnelop.domain.relayview import RelayView
from tunnelop.platform import logs

log = logs.get(__name__)


def _claims(
    rt: Runtime, subdomain: str, relays: dict[str, RelayView]
) -> list[admission.SubdomainClaim]:
    claims = []
    for key in rt.cache.subdomains.get(subdomain, ()):
        body = rt.cache.tunnels.get(key)
        if body is None:
            continue
        try:
            tunnel = Tunnel.model_validate(body)
        except ValidationError:
            continue
        bound = relays.get(tunnel.status.relay_node or "")
        domains = (
            frozenset({bound.http_domain})
            if bound and bound.http_domain
            else admission.possible_http_domains(tunnel.spec, relays.values())
        )
        claims.append(admission.SubdomainClaim(key[0], key[1], subdomain, domains))
    return claims


def _host_claims(
    rt: Runtime, spec: dict[str, Any], relays: dict[str, RelayView]
) -> list[admission.HostClaim]:
    """The custom domains of other tunnels that this one's custom domains, or its subdomain
    under any relay's httpDomain, may collide with."""
    domains = spec.get("customDomains")
    hosts = (
        {d.lower() for d in domains if isinstance(d, str)} if isinstance(domains, list) else set()
    )
    subdomain = spec.get("subdomain")
    if isinstance(subdomain, str):
        hosts |= {f"{subdomain}.{r.http_domain}" for r in relays.values() if r.http_domain}
    return [
        admission.HostClaim(key[0], key[1], host)
        for host in sorted(hosts)
        for key in sorted(rt.cache.custom_domains.get(host, ()))
    ]


def _quota_denials(
    rt: Runtime, namespace: str, obj: dict[str, Any], old: dict[str, Any] | None
) -> list[str]:
    """The namespace's TunnelQuotas against the Tunnel, with its other Tunnels as the caches
    know them (those being deleted left out)."""
    obj = {**obj, "metadata": {**(obj.get("metadata") or {}), "namespace": namespace}}
    try:
        tunnel = Tunnel.model_validate(obj)
        previous = Tunnel.model_validate(old) if old else None
    except ValidationError:
        return []  # the schema and the rules above answer for a spec that does not validate
    limits = rt.cache.limits(namespace)
    return quota_denials(tunnel, previous, limits, quotas.namespace_uses(rt, namespace, limits))


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
    memo: kopf.Memo,
    namespace: str | None,
    name: str | None,
    **_: Any,
) -> None:
    rt: Runtime | None = getattr(memo, "runtime", None)
    if rt is None:
        return  # starting up: the scheduler will answer in status
    obj = dict(body)
    try:
        relays = rt.cache.relay_views
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        subdomain = spec.get("subdomain")
        claims = _claims(rt, subdomain, relays) if isinstance(subdomain, str) else []
        host_claims = _host_claims(rt, spec, relays)
        denials = admission.review(
            obj, dict(old) if old else None, relays.values(), claims, host_claims
        )
        if namespace in rt.cache.quotas:
            denials += _quota_denials(rt, namespace, obj, dict(old) if old else None)
    except Exception:
        # A bug here must not turn into a puzzling denial: admit, and let the scheduler,
        # which enforces the same rules, answer in the tunnel's status.
        log.exception("admission review failed; admitting", namespace=namespace, name=name)
        return
    if denials:
        raise kopf.AdmissionError("; ".join(denials), code=422)


ADD_FINALIZER = "add-finalizer"


async def add_finalizer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """The release finalizer, set at creation: it saves a write and a reconcile per tunnel."""
    finalizers = list(body.get("metadata", {}).get("finalizers") or [])
    if FINALIZER not in finalizers:
        patch.metadata["finalizers"] = [*finalizers, FINALIZER]


def register_add_finalizer(registry: kopf.OperatorRegistry) -> None:
    """The mutating webhook add-finalizer, registered only where the API server does not set
    the finalizer itself (a MutatingAdmissionPolicy, builders/finalizer_policy.py): in a
    local run kopf registers every handler's webhook, and each one costs every create a
    call into the operator."""
    kopf.on.mutate(
        GROUP,
        VERSION,
        "tunnels",
        id=ADD_FINALIZER,
        operations=["CREATE"],
        # Without it the controller adds the finalizer itself, one write later.
        ignore_failures=True,
        registry=registry,
    )(add_finalizer)
