"""The admission webhooks for Tunnels: thin glue between the operator's caches (relays as
watched, tunnels by subdomain and by custom domain) and the pure rules in
tunnelop.domain.admission."""

from __future__ import annotations

import json
from typing import Any

import aiohttp.web
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
VALIDATE_TUNNEL = "validate-tunnel"


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
    id=VALIDATE_TUNNEL,
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
    denials = tunnel_denials(
        getattr(memo, "runtime", None), dict(body), dict(old) if old else None, namespace, name
    )
    if denials:
        raise kopf.AdmissionError("; ".join(denials), code=422)


def tunnel_denials(
    rt: Runtime | None,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    namespace: str | None,
    name: str | None,
) -> list[str]:
    """Why the Tunnel create or update is refused; nothing when it is admitted."""
    if rt is None:
        return []  # starting up: the scheduler will answer in status
    try:
        relays = rt.cache.relay_views
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        subdomain = spec.get("subdomain")
        claims = _claims(rt, subdomain, relays) if isinstance(subdomain, str) else []
        host_claims = _host_claims(rt, spec, relays)
        denials = admission.review(obj, old, relays.values(), claims, host_claims)
        if namespace in rt.cache.quotas:
            denials += _quota_denials(rt, namespace, obj, old)
    except Exception:
        # A bug here must not turn into a puzzling denial: admit, and let the scheduler,
        # which enforces the same rules, answer in the tunnel's status.
        log.exception("admission review failed; admitting", namespace=namespace, name=name)
        return []
    return denials


def review_answer(rt: Runtime | None, review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview answer to a Tunnel validation request (as kopf would give it)."""
    request = review.get("request") or {}
    obj = request.get("object") or {}
    old = request.get("oldObject") or None
    name = request.get("name") or (obj.get("metadata") or {}).get("name")
    denials = tunnel_denials(rt, obj, old, request.get("namespace"), name)
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": not denials}
    if denials:
        response["status"] = {"message": "; ".join(denials), "code": 422}
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


class AdmissionServer(kopf.WebhookServer):
    """kopf's webhook server (its TLS, its certificate reloads, its registration), answering
    the Tunnel validation by itself: the API server waits for it on every create, and kopf's
    generic path (causes, diffs, handler bookkeeping) cost several times the review itself at
    a burst (measured, docs/benchmarks.md). Other webhooks go through kopf."""

    memo: kopf.Memo | None = None

    async def _serve(  # type: ignore[override]
        self, fn: Any, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        if request.match_info.get("id") != VALIDATE_TUNNEL:
            return await kopf.WebhookServer._serve(fn, request)
        try:
            review = json.loads(await request.read())
        except ValueError as error:
            raise aiohttp.web.HTTPBadRequest(reason=str(error)) from None
        rt = getattr(self.memo, "runtime", None)
        return aiohttp.web.json_response(review_answer(rt, review))


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
