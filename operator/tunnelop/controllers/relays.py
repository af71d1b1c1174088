"""The RelayNode controller: run the relay's workload (frps and the relay agent), and report
its public address, readiness and allocation. Deleting a relay moves its tunnels first."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import RelayNode, error_messages
from tunnelop.builders.frps import build_frps_config
from tunnelop.builders.relay import (
    build_config_secret,
    build_deployment,
    build_role,
    build_role_binding,
    build_service,
    build_service_account,
    config_checksum,
)
from tunnelop.contract import naming
from tunnelop.controllers.state import FINALIZER, RelaySecrets, Runtime
from tunnelop.domain import conditions
from tunnelop.domain.relayview import RelayView
from tunnelop.platform import logs
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)


async def reconcile(rt: Runtime, name: str) -> None:
    body = rt.relays.get(name)
    if body is None:
        _forget(rt, name)
        return
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        await _drain_and_release(rt, body)
        return
    body = await rt.kube.add_finalizer("RelayNode", body, FINALIZER)
    rt.relays[name] = body
    try:
        relay = RelayNode.model_validate(body)
    except ValidationError as error:
        await _report(
            rt, body, _status(body, "InvalidSpec", "; ".join(error_messages(error)), None)
        )
        return

    relay_secrets = await _relay_secrets(rt, name)
    frps_toml = build_frps_config(
        relay, token=relay_secrets.token, dashboard_password=relay_secrets.dashboard_password
    )
    checksum = config_checksum(frps_toml)
    ns = rt.relay_namespace
    # The workload: applied whole on every pass; server-side apply makes unchanged objects
    # no-ops on the server, and passes happen on relay changes, not per tunnel.
    for obj in (
        build_config_secret(
            relay,
            ns,
            frps_toml=frps_toml,
            token=relay_secrets.token,
            dashboard_password=relay_secrets.dashboard_password,
        ),
        build_service_account(relay, ns),
        build_role(relay, ns),
        build_role_binding(relay, ns),
        build_deployment(relay, ns, config_checksum=checksum),
    ):
        await rt.kube.apply(obj)
    assert rt.tables is not None
    await rt.tables.ensure(name)
    service = None
    if relay.spec.exposure.type != "HostNetwork":
        allocated = sorted(
            {
                (a.port, "UDP" if a.protocol == "udp" else "TCP")
                for a in rt.table.allocations_on(name)
                if a.port
            }
        )
        service = await rt.kube.apply(build_service(relay, ns, allocated_ports=allocated))

    ready, reason, message = _readiness(rt.deployments.get(name))
    address = await _public_address(rt, relay, service)
    view = RelayView.from_model(relay, ready=ready and address is not None)
    rt.table.upsert_relay(view)
    new = _status(body, reason, message, address, ready=ready)
    new["capacity"] = _capacity(relay, view)
    if new != (body.get("status") or {}):
        await _report(rt, body, new)
    # A relay that appeared, recovered or grew may fit tunnels that fit nowhere before.
    rt.retry_unschedulable()
    for alloc in rt.table.misplaced():
        assert rt.tunnel_queue is not None
        rt.tunnel_queue.add(alloc.key)
    if address is None:
        raise Requeue(2.0)  # the address comes from a Service or Node that may appear later


def _readiness(deployment: dict[str, Any] | None) -> tuple[bool, str, str]:
    if deployment is None:
        return False, "WorkloadPending", "The relay Deployment does not exist yet"
    status = deployment.get("status") or {}
    if (status.get("readyReplicas") or 0) >= 1 and (status.get("updatedReplicas") or 0) >= 1:
        return True, "RelayReady", "frps and the relay agent are ready"
    return False, "RelayPodNotReady", "The relay Pod is not ready (frps or the relay agent)"


async def _public_address(
    rt: Runtime, relay: RelayNode, service: dict[str, Any] | None
) -> str | None:
    """spec.exposure.address, else the load balancer's ingress, else the node's address."""
    if relay.spec.exposure.address:
        return relay.spec.exposure.address
    if service is not None:
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            if ingress.get("ip") or ingress.get("hostname"):
                return ingress.get("ip") or ingress.get("hostname")
        if relay.spec.exposure.type == "LoadBalancer":
            return None
    pods = await rt.kube.list(
        "v1", "Pod", rt.relay_namespace, labels=f"{naming.RELAY_LABEL}={relay.metadata.name}"
    )
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        host_ip = (pod.get("status") or {}).get("hostIP")
        if node_name:
            node = await rt.kube.get("v1", "Node", node_name)
            for kind in ("ExternalIP", "ExternalDNS", "InternalIP"):
                for addr in ((node or {}).get("status") or {}).get("addresses") or []:
                    if addr.get("type") == kind:
                        return addr["address"]
        if host_ip:
            return host_ip
    return None


def _capacity(relay: RelayNode, view: RelayView) -> dict[str, Any]:
    ports = view.allowed_port_count()
    out: dict[str, Any] = {"ports": ports, "tunnels": relay.spec.capacity.tunnels or ports}
    if relay.spec.capacity.bandwidth is not None:
        out["bandwidth"] = relay.spec.capacity.bandwidth
    return out


def _status(
    body: dict[str, Any], reason: str, message: str, address: str | None, ready: bool = False
) -> dict[str, Any]:
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    status["observedGeneration"] = generation
    if address:
        status["publicAddress"] = address
    status["conditions"] = conditions.merge(
        status.get("conditions"), conditions.condition("Ready", ready, reason, message, generation)
    )
    return status


async def _report(rt: Runtime, body: dict[str, Any], status: dict[str, Any]) -> None:
    result = await rt.kube.patch_status("RelayNode", body["metadata"]["name"], None, status)
    if result:
        rt.relays[body["metadata"]["name"]] = result


async def _relay_secrets(rt: Runtime, name: str) -> RelaySecrets:
    """The relay's frps token and dashboard password: generated once, then read back."""
    if name in rt.relay_secrets:
        return rt.relay_secrets[name]
    existing = await rt.kube.get(
        "v1", "Secret", naming.config_secret_name(name), rt.relay_namespace
    )
    data = (existing or {}).get("data") or {}
    if "token" in data and "dashboard-password" in data:
        found = RelaySecrets(
            base64.b64decode(data["token"]).decode(),
            base64.b64decode(data["dashboard-password"]).decode(),
        )
    else:
        found = RelaySecrets(secrets.token_urlsafe(24), secrets.token_urlsafe(18))
    rt.relay_secrets[name] = found
    return found


async def _drain_and_release(rt: Runtime, body: dict[str, Any]) -> None:
    """Before the relay's workload goes (garbage collection, by owner references), its
    tunnels are rescheduled elsewhere, keeping their ports where free."""
    name = body["metadata"]["name"]
    moved = _forget(rt, name)
    await rt.kube.remove_finalizer("RelayNode", body, FINALIZER)
    log.info("relay removed; its tunnels are being moved", relay=name, tunnels=moved)


def _forget(rt: Runtime, name: str) -> int:
    """Drop the relay from the table and caches; its tunnels are queued to move."""
    known = any(r.name == name for r in rt.table.relays())
    moved = rt.table.remove_relay(name) if known else []
    assert rt.tunnel_queue is not None
    for alloc in moved:
        rt.tunnel_queue.add(alloc.key)
    if rt.tables:
        rt.tables.forget(name)
    rt.relay_secrets.pop(name, None)
    return len(moved)
