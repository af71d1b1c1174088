"""The LoadBalancer controller: a Service of type LoadBalancer with loadBalancerClass
tunnelop.dev/relay gets one Tunnel per port (owned by it), and its status.loadBalancer says
where visitors connect once those Tunnels are Ready. Read, compute, apply, report: the pure
mapping is in domain/loadbalancers and builders/service_tunnels.py.

The Service is its owner's (invariant 5): the only thing written on it is
status.loadBalancer, by server-side apply on the status subresource as the field manager
FIELD_MANAGER, so that a GitOps tool applying the Service sees no drift. Services of any other
class are never kept nor acted on (watches.on_service filters them out).

Problems are Warning Events on the Service, one per port and reason (not one per reconcile).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import TunnelSpec
from tunnelop.builders.service_tunnels import build_service_tunnels
from tunnelop.controllers.state import Runtime
from tunnelop.domain.loadbalancers.report import (
    load_balancer_status,
    port_problems,
    to_report,
)
from tunnelop.domain.loadbalancers.request import (
    SERVICE_LABEL,
    InvalidService,
    ServiceRequest,
    request_of,
    slim,
)
from tunnelop.domain.scheduling import TunnelKey
from tunnelop.platform import logs
from tunnelop.platform.kube import GROUP_VERSION, KubeError
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)
FIELD_MANAGER = "tunnelop-loadbalancer"
# A Tunnel the API server refused (its admission: e.g. no relay offers that port) is tried
# again after this long: what it depends on (relays, quotas) may have changed.
REFUSED_RETRY_SECONDS = 30.0
# The fields of a Tunnel's spec the controller sets: only these are compared before a write.
SET_FIELDS = ("protocol", "remote_port", "client", "relay", "bandwidth", "allow_source_ranges")
ServiceKey = TunnelKey  # (namespace, name)


async def reconcile(rt: Runtime, key: ServiceKey) -> None:
    if not all(synced.is_set() for synced in rt.load_balancer_watches):
        raise Requeue(0.5)  # a Tunnel not seen yet would look missing, or a Service gone
    service = rt.cache.load_balancers.get(key)
    owned = _owned_tunnels(rt, key)
    if service is None or service["metadata"].get("deletionTimestamp"):
        # Not of the class (any more), or deleted: its Tunnels go (the garbage collector
        # would delete them with a deleted Service; a Service changed to another class or
        # type stays, and only its Tunnels go).
        for name in owned:
            await _delete_tunnel(rt, key[0], name, "the Service is no longer of the class")
        rt.load_balancer_reports.pop(key, None)
        return
    uid = service["metadata"].get("uid")
    for name, body in owned.items():
        if _controller_uid(body) != uid:  # a Service of the same name, deleted before
            await _delete_tunnel(rt, key[0], name, "its Service was re-created")
    owned = {n: b for n, b in owned.items() if _controller_uid(b) == uid}
    reports = rt.load_balancer_reports.setdefault(key, {})
    try:
        request = request_of(service)
    except InvalidService as invalid:
        # The Tunnels stay as they are until the Service is fixed: a typo in an annotation
        # must not take a working load balancer down.
        _report_once(rt, service, reports, "invalid", "InvalidService", str(invalid))
        return
    reports.pop("invalid", None)

    wanted = {t.name for t in request.tunnels}
    for name in sorted(set(owned) - wanted):
        await _delete_tunnel(rt, key[0], name, "its port left the Service")
    for refusal in request.refused:
        topic = f"refused {refusal.service_port}"
        _report_once(rt, service, reports, topic, refusal.reason, refusal.message)
    _forget_topics(reports, "refused ", {f"refused {r.service_port}" for r in request.refused})

    retry = await _apply_tunnels(rt, service, request, reports)
    tunnels = {t.name: rt.cache.tunnels.get((key[0], t.name)) or {} for t in request.tunnels}
    mine = {name: body for name, body in tunnels.items() if _controller_uid(body) == uid}
    await _write_status(rt, key, service, request, mine)

    problems = port_problems(request, mine)
    seen = {name: reports.get(f"port {name}") or "" for name in problems}
    for problem in to_report(problems, seen):
        rt.post_event(service, "Warning", problem.reason, problem.event_message())
        reports[f"port {problem.tunnel}"] = problem.reason
    _forget_topics(reports, "port ", {f"port {name}" for name in problems})
    if retry:
        raise Requeue(REFUSED_RETRY_SECONDS)


async def _apply_tunnels(
    rt: Runtime, service: dict[str, Any], request: ServiceRequest, reports: dict[str, str]
) -> bool:
    """Create or update the Service's Tunnels; True when one was refused (to try again)."""
    namespace, uid = service["metadata"]["namespace"], service["metadata"]["uid"]
    refused = False
    for manifest in build_service_tunnels(service, request):
        name = manifest["metadata"]["name"]
        existing = rt.cache.tunnels.get((namespace, name))
        owner = _controller(existing or {})
        if existing is not None and owner.get("uid") != uid:
            if owner.get("name") == service["metadata"]["name"]:
                continue  # a deleted Service's of the same name, going: its deletion requeues
            _report_once(
                rt,
                service,
                reports,
                f"taken {name}",
                "TunnelNameTaken",
                f"Tunnel {name} exists and does not belong to this Service; it is left alone, "
                "and the port it would serve stays closed until it is renamed or deleted",
            )
            continue
        reports.pop(f"taken {name}", None)
        if existing is not None and _up_to_date(existing, manifest):
            reports.pop(f"create {name}", None)
            continue
        try:
            await rt.kube.apply(manifest)
        except KubeError as exc:
            if not 400 <= exc.status < 500 or exc.status in (409, 429):
                raise
            refused = True
            _report_once(
                rt,
                service,
                reports,
                f"create {name}",
                "TunnelRefused",
                f"Tunnel {name}: {exc.message}",
            )
            continue
        reports.pop(f"create {name}", None)
    return refused


async def _write_status(
    rt: Runtime,
    key: ServiceKey,
    service: dict[str, Any],
    request: ServiceRequest,
    tunnels: dict[str, dict[str, Any]],
) -> None:
    addresses = {
        name: (body.get("status") or {}).get("publicAddress")
        for name, body in rt.cache.relays.items()
    }
    wanted = load_balancer_status(request, tunnels, {k: v for k, v in addresses.items() if v})
    if wanted == (service.get("status") or {}).get("loadBalancer", {}):
        return
    result = await rt.kube.apply_status(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": key[1], "namespace": key[0]},
            "status": {"loadBalancer": wanted},
        },
        FIELD_MANAGER,
    )
    if result:
        rt.cache.load_balancers[key] = slim(result)
    ingress = wanted.get("ingress") or []
    log.info(
        "load balancer status written",
        namespace=key[0],
        service=key[1],
        addresses=[i.get("ip") or i.get("hostname") for i in ingress],
    )


def _owned_tunnels(rt: Runtime, key: ServiceKey) -> dict[str, dict[str, Any]]:
    """The Tunnels this controller made for a Service of that name (its label, and a Service
    of that name as controller)."""
    namespace, name = key
    found = {}
    for tunnel_key in rt.cache.tunnels_in(namespace):
        body = rt.cache.tunnels.get(tunnel_key) or {}
        meta = body.get("metadata") or {}
        if (meta.get("labels") or {}).get(SERVICE_LABEL) != name:
            continue
        if _controller(body).get("name") == name:
            found[tunnel_key[1]] = body
    return found


def _controller(body: dict[str, Any]) -> dict[str, Any]:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Service" and ref.get("apiVersion") == "v1":
            return ref
    return {}


def _controller_uid(body: dict[str, Any]) -> str | None:
    return _controller(body).get("uid")


def _up_to_date(existing: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """The Tunnel has what the controller would write (defaults filled in by the API server
    compare equal to their absence; fields the controller does not set are not compared)."""
    labels = existing["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in manifest["metadata"]["labels"].items()):
        return False
    try:
        have = TunnelSpec.model_validate(existing.get("spec") or {})
    except ValidationError:
        return False
    want = TunnelSpec.model_validate(manifest["spec"])
    return all(getattr(have, f) == getattr(want, f) for f in SET_FIELDS)


async def _delete_tunnel(rt: Runtime, namespace: str, name: str, why: str) -> None:
    body = rt.cache.tunnels.get((namespace, name)) or {}
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    await rt.kube.delete(GROUP_VERSION, "Tunnel", name, namespace)
    log.info("load balancer tunnel deleted", namespace=namespace, tunnel=name, why=why)


def _report_once(
    rt: Runtime,
    service: dict[str, Any],
    reports: dict[str, str],
    topic: str,
    reason: str,
    message: str,
) -> None:
    """A Warning Event about `topic`, unless the last one about it said the same."""
    said = f"{reason}: {message}"
    if reports.get(topic) == said:
        return
    reports[topic] = said
    rt.post_event(service, "Warning", reason, message)


def _forget_topics(reports: dict[str, str], prefix: str, current: set[str]) -> None:
    """Topics of a kind that are no problem any more: reported again if they come back."""
    for topic in [t for t in reports if t.startswith(prefix) and t not in current]:
        del reports[topic]
