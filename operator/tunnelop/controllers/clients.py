"""The InCluster client controller: run frpc for each Tunnel whose spec.client.type is
InCluster, as a Deployment in the tunnel's namespace (builders/client.py), and tell the Tunnel
controller what keeps that frpc from serving, for its ClientConnected condition.

A client starts once its tunnel is Ready and its credentials Secret is written, and follows
the Secret (a rotated token or a move to another relay rolls the pod through the Secret's
checksum). It goes when the tunnel goes back to External or is deleted, and while its target
Service is missing or lacks the port: such a frpc would take visitors in only to drop them.

It writes Deployments and Events only: the Tunnel's status stays the Tunnel controller's.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import Tunnel
from tunnelop.builders.client import SPEC_CHECKSUM_ANNOTATION, build_client_deployment
from tunnelop.contract import naming
from tunnelop.controllers.caches import ServiceTarget
from tunnelop.controllers.state import ClientProblem, Runtime
from tunnelop.domain import conditions
from tunnelop.domain.scheduling import TunnelKey
from tunnelop.platform import logs
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)
UDP_PROTOCOLS = ("udp",)


async def reconcile(rt: Runtime, key: TunnelKey) -> None:
    if not all(synced.is_set() for synced in rt.client_watches_synced):
        raise Requeue(0.5)  # a Deployment or Service not listed yet is not a missing one
    body = rt.cache.tunnels.get(key)
    live = rt.cache.client_deployments.get(key)
    tunnel = in_cluster_tunnel(body)
    if tunnel is None or tunnel.spec.client.target is None:
        if live is not None:
            await _delete(rt, key, body, live, "the tunnel's spec.client.type is not InCluster")
        _report(rt, key, body, None)
        return
    target = tunnel.spec.client.target
    service = rt.cache.services.get((key[0], target.service))
    missing = target_problem(key[0], target.service, target.port, tunnel.spec.protocol, service)
    if missing is not None:
        if live is not None:
            await _delete(rt, key, body, live, missing.message)
        _report(rt, key, body, missing)
        return
    checksum = rt.credential_checksums.get(key)
    status = (body or {}).get("status") or {}
    if checksum is None or (
        live is None and not conditions.is_true(status.get("conditions"), "Ready")
    ):
        # Not yet (a Tunnel or Secret event brings it back): a running client keeps running
        # while its Secret is rewritten or its relay is briefly not ready.
        _report(rt, key, body, None if live is None else deployment_problem(key[1], live))
        return
    desired = build_client_deployment(
        tunnel,
        credentials_secret=naming.credentials_secret_name(key[1]),
        credentials_checksum=checksum,
        image=rt.frpc_image,
    )
    if live is None or _spec_checksum(live) != _spec_checksum(desired):
        created = live is None
        applied = await rt.kube.apply(desired)
        if applied is not None:
            rt.cache.client_deployments[key] = live = applied
        _applied_event(rt, body, target.service, target.port, created=created)
    _report(rt, key, body, deployment_problem(key[1], live) if live else _starting(key[1]))


def in_cluster_tunnel(body: dict[str, Any] | None) -> Tunnel | None:
    """The Tunnel, if it wants an operator-run client: InCluster, valid, not being deleted."""
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    if ((body.get("spec") or {}).get("client") or {}).get("type") != "InCluster":
        return None
    try:
        return Tunnel.model_validate(body)
    except ValidationError:
        return None  # the Tunnel controller reports InvalidSpec


def target_problem(
    namespace: str, service: str, port: int, protocol: str, found: ServiceTarget | None
) -> ClientProblem | None:
    """Why spec.client.target cannot be served, or None: the Service must exist and offer the
    port (for the tunnel's protocol: UDP for udp, TCP otherwise), unless it is headless or
    ExternalName."""
    if found is None:
        return ClientProblem(
            "TargetServiceNotFound",
            f"spec.client.target.service: Service {service} does not exist in namespace "
            f"{namespace}; frpc starts once it does",
        )
    wanted = "UDP" if protocol in UDP_PROTOCOLS else "TCP"
    if found.any_port or (port, wanted) in found.ports:
        return None
    offered = [f"{p}/{proto}" for p, proto in sorted(found.ports)]
    return ClientProblem(
        "TargetPortNotFound",
        f"spec.client.target.port: Service {service} has no {wanted} port {port} (it has "
        f"{', '.join(offered) or 'none'}); give the Service's port, not the pod's "
        "targetPort; frpc starts once the Service offers it",
    )


def deployment_problem(tunnel: str, deployment: dict[str, Any]) -> ClientProblem | None:
    """What the frpc Deployment's status says keeps it from running, or None once a pod is
    available (whether frpc is logged in is then the relay agent's to say)."""
    name = naming.client_deployment_name(tunnel)
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    found = {c.get("type"): c for c in status.get("conditions") or []}
    failure = found.get("ReplicaFailure") or {}
    progressing = found.get("Progressing") or {}
    if failure.get("status") == "True":  # e.g. a quota or Pod Security refused the pod
        return ClientProblem(
            "ClientUnavailable",
            f"Deployment {name} cannot create frpc's pod: {failure.get('message', '')}",
        )
    current = (status.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    available = (status.get("availableReplicas") or 0) >= 1
    if current and available and (status.get("updatedReplicas") or 0) >= 1:
        return None
    if progressing.get("status") == "False":  # past progressDeadlineSeconds
        return ClientProblem(
            "ClientUnavailable",
            f"Deployment {name} has no available frpc pod: {progressing.get('message', '')}; "
            f"see kubectl describe pods -l {naming.TUNNEL_LABEL}={tunnel}",
        )
    return _starting(tunnel)


def _starting(tunnel: str) -> ClientProblem:
    name = naming.client_deployment_name(tunnel)
    return ClientProblem(
        "ClientStarting", f"Deployment {name} is starting frpc's pod", warning=False
    )


def _spec_checksum(deployment: dict[str, Any]) -> str | None:
    return ((deployment.get("metadata") or {}).get("annotations") or {}).get(
        SPEC_CHECKSUM_ANNOTATION
    )


async def _delete(
    rt: Runtime, key: TunnelKey, body: dict[str, Any] | None, live: dict[str, Any], why: str
) -> None:
    name = live["metadata"]["name"]
    await rt.kube.delete("apps/v1", "Deployment", name, key[0])
    rt.cache.client_deployments.pop(key, None)
    log.info("frpc Deployment deleted", namespace=key[0], tunnel=key[1], why=why)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        rt.post_event(body, "Normal", "ClientDeleted", f"Deleted Deployment {name}: {why}")


def _applied_event(
    rt: Runtime, body: dict[str, Any] | None, service: str, port: int, *, created: bool
) -> None:
    if body is None:
        return
    name = naming.client_deployment_name(body["metadata"]["name"])
    if created:
        message = f"Created Deployment {name}: frpc forwards to Service {service} port {port}"
        rt.post_event(body, "Normal", "ClientCreated", message)
    else:
        message = f"Updated Deployment {name} (new credentials, relay or target)"
        rt.post_event(body, "Normal", "ClientUpdated", message)


def _report(
    rt: Runtime, key: TunnelKey, body: dict[str, Any] | None, problem: ClientProblem | None
) -> None:
    """Hand a changed finding to the Tunnel controller (which writes ClientConnected), with a
    Warning Event when a failure begins."""
    before = rt.client_problems.get(key)
    if problem == before:
        return
    if problem is None:
        rt.client_problems.pop(key, None)
    else:
        rt.client_problems[key] = problem
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    assert rt.tunnel_queue is not None
    rt.tunnel_queue.add(key)
    if (
        problem is not None
        and problem.warning
        and (before is None or before.reason != problem.reason)
    ):
        rt.post_event(body, "Warning", problem.reason, problem.message)


def wants_client(rt: Runtime, key: TunnelKey, body: dict[str, Any] | None) -> bool:
    """Whether a change of the tunnel concerns this controller: it is InCluster, or was (its
    Deployment or a finding is still around)."""
    spec = (body or {}).get("spec") or {}
    return (
        (spec.get("client") or {}).get("type") == "InCluster"
        or key in rt.cache.client_deployments
        or key in rt.client_problems
    )


def targeting(rt: Runtime, namespace: str, service: str) -> list[TunnelKey]:
    """The InCluster tunnels of `namespace` whose target is `service`."""
    found = []
    for key in rt.cache.tunnels_in(namespace):
        spec = (rt.cache.tunnels.get(key) or {}).get("spec") or {}
        client = spec.get("client") or {}
        if (
            client.get("type") == "InCluster"
            and (client.get("target") or {}).get("service") == service
        ):
            found.append(key)
    return found
