"""The RelayNode controller: run the relay's workload (frps and the relay agent), and report
its public address, readiness and allocation. A relay that drains (deleted, spec.drain,
failover) takes no new tunnels and has its tunnels moved (domain/drain.py); a deleted one
lets go (finalizer) once none is left on it and its table names none."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import hashlib
import json
import secrets
import time
from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import (
    RelayAllocation,
    RelayCapacityStatus,
    RelayNode,
    RelayNodeStatus,
    error_messages,
)
from tunnelop.builders.frps import build_frps_config
from tunnelop.builders.relay import (
    build_config_secret,
    build_deployment,
    build_role,
    build_role_binding,
    build_service_account,
    config_checksum,
)
from tunnelop.contract import naming
from tunnelop.controllers.state import FINALIZER, RelaySecrets, Runtime
from tunnelop.controllers.status import merge_patch, status_dict, utcnow
from tunnelop.domain import conditions
from tunnelop.domain.drain import DELETING, Drain, drain_of, failover_in
from tunnelop.domain.relayview import RelayView
from tunnelop.platform import logs, metrics
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)


async def reconcile(rt: Runtime, name: str) -> None:
    body = rt.cache.relays.get(name)
    if body is None:
        _forget(rt, name)
        return
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        await _drain_and_release(rt, body)
        return
    body = await rt.kube.add_finalizer("RelayNode", body, FINALIZER)
    rt.cache.relays[name] = body
    try:
        assert rt.tables is not None
        relay = rt.tables.models.of(body)
    except ValidationError as error:
        generation = body["metadata"].get("generation")
        status = dict(body.get("status") or {})
        status["observedGeneration"] = generation
        status["conditions"] = conditions.merge(
            status.get("conditions"),
            conditions.condition(
                "Ready", False, "InvalidSpec", "; ".join(error_messages(error)), generation
            ),
        )
        await _report(rt, body, status)
        return

    relay_secrets = await _relay_secrets(rt, name)
    await _apply_workload(rt, relay, relay_secrets)
    assert rt.tables is not None
    await rt.tables.ensure(name)  # the table, even empty, and the Service with it
    await rt.tables.write_service(name)  # a changed spec (exposure, protocols) changes it

    pod_ready, reason, message = _readiness(rt.cache.deployments.get(name))
    address = await _public_address(rt, relay, rt.tables.services.get(name))
    now = utcnow()
    # Failover counts from the pod's readiness only: a load balancer slow to give an
    # address is no reason to move tunnels.
    not_ready_since = not_ready_since_of(body, pod_ready, now)
    drain = drain_of(relay, not_ready_since, now)
    ready = pod_ready and address is not None
    if pod_ready and address is None:
        reason, message = (
            "AddressPending",
            f"frps and the relay agent are ready; waiting for the public address (the load "
            f"balancer's ingress of Service {naming.relay_object_name(name)}, or "
            "spec.exposure.address)",
        )
    view = RelayView.from_model(relay, ready=ready, node_port_range=rt.node_port_range, drain=drain)
    changed = rt.table.upsert_relay(view)
    found = [
        conditions.condition("Ready", ready, reason, message, body["metadata"].get("generation"))
    ]
    new = _status(rt, body, relay, view, address, found)
    await _report_changes(rt, body, new)
    # A relay that appeared, recovered or grew may fit tunnels that fit nowhere before.
    rt.retry_unschedulable()
    if changed:
        # Only a changed relay can make an allocation misplaced; most reconciles follow a
        # table write, and checking every allocation after each would cost O(tunnels) there.
        _queue_moves(rt)
    wait = failover_in(relay, not_ready_since, now)
    if drain is None and wait is not None:
        assert rt.relay_queue is not None
        rt.relay_queue.add_after(name, max(wait, 0) + 0.5)  # fail over on time
    if address is None:
        raise Requeue(2.0)  # the address comes from a Service or Node that may appear later


def not_ready_since_of(
    body: dict[str, Any], ready: bool, now: datetime.datetime
) -> datetime.datetime | None:
    """When the relay's pod stopped being ready (its Ready condition's transition, or now if
    the condition still says True); None while it is ready."""
    if ready:
        return None
    conds = (body.get("status") or {}).get("conditions")
    return conditions.since(conds, "Ready", False) or now


def _seen_by_tunnels(status: dict[str, Any]) -> tuple[bool, str | None]:
    """What of a relay's status its tunnels' statuses show: its readiness and address."""
    return conditions.is_true(status.get("conditions"), "Ready"), status.get("publicAddress")


def _queue_tunnels_on(rt: Runtime, relay: str) -> None:
    assert rt.tunnel_queue is not None
    for alloc in rt.table.allocations_on(relay):
        rt.tunnel_queue.add(alloc.key)


def _queue_moves(rt: Runtime, relay: str | None = None) -> None:
    """Every tunnel that must move (its relay drains, its port got blocked, ...), on all
    relays or one, is reconciled: the scheduler moves it, or says why it cannot."""
    assert rt.tunnel_queue is not None
    for alloc in rt.table.misplaced(relay):
        rt.tunnel_queue.add(alloc.key)


def _draining_condition(
    rt: Runtime, name: str, drain: Drain | None, generation: int | None
) -> dict[str, Any]:
    """Draining: why the relay's tunnels move away and how many are left, or that it keeps
    them."""
    if drain is None:
        return conditions.condition(
            "Draining", False, "NotDraining", "The relay keeps its tunnels", generation
        )
    left = rt.table.allocations_on(name)
    stuck = [s for a in left if (s := rt.table.stuck(a.key)) is not None]
    if not left:
        message = f"{drain.message}: no tunnel left on it"
    else:
        message = f"{drain.message}: {len(left)} tunnels left to move"
        if stuck:
            message += f"; {len(stuck)} have nowhere to go and stay: {stuck[0].message}"
    return conditions.condition("Draining", True, drain.reason, message, generation)


# How often a relay's status may be written when only its counts (status.allocated and
# status.capacity) changed: during a burst every table write changes them.
COUNTS_INTERVAL = 1.0


def _without_counts(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in ("allocated", "capacity")}


async def _report_changes(rt: Runtime, body: dict[str, Any], new: dict[str, Any]) -> None:
    """Write the status if it changed, with an Event when the relay starts or stops
    draining, and its tunnels reconciled when what they show of it changed."""
    old = body.get("status") or {}
    if new == old:
        return
    name = body["metadata"]["name"]
    since = time.monotonic() - rt.relay_status_written_at.get(name, -COUNTS_INTERVAL)
    if since < COUNTS_INTERVAL and _without_counts(new) == _without_counts(old):
        # Only the counts moved (a burst of tunnels): one write per interval tells as much.
        assert rt.relay_queue is not None
        rt.relay_queue.add_after(name, COUNTS_INTERVAL - since)
        return
    rt.relay_status_written_at[name] = time.monotonic()
    await _report(rt, body, new)
    if _seen_by_tunnels(old) != _seen_by_tunnels(new):
        # A tunnel's Ready and endpoint follow its relay's readiness and address; nothing
        # else tells its tunnels (their own status writes are not reconciled again).
        _queue_tunnels_on(rt, name)
    before = conditions.find(old.get("conditions"), "Draining") or {}
    after = conditions.find(new.get("conditions"), "Draining") or {}
    if after.get("status") == "True" and (
        before.get("status") != "True" or before.get("reason") != after.get("reason")
    ):
        rt.post_event(body, "Warning", after["reason"], after["message"])
    elif before.get("status") == "True" and after.get("status") != "True":
        rt.post_event(body, "Normal", "DrainStopped", "The relay keeps its tunnels again")


async def _apply_workload(rt: Runtime, relay: RelayNode, relay_secrets: RelaySecrets) -> None:
    """The relay's config Secret, RBAC and Deployment, applied whole when any of them changed
    since this process last applied them (server-side apply makes a repeat a no-op, but a
    relay is reconciled after every table write: no need to send five requests each time)."""
    frps_toml = build_frps_config(
        relay,
        token=relay_secrets.token,
        dashboard_password=relay_secrets.dashboard_password,
        plugin_password=relay_secrets.plugin_password,
        node_port_range=rt.node_port_range,
    )
    ns = rt.relay_namespace
    workload = [
        build_config_secret(
            relay,
            ns,
            frps_toml=frps_toml,
            token=relay_secrets.token,
            dashboard_password=relay_secrets.dashboard_password,
            plugin_password=relay_secrets.plugin_password,
        ),
        build_service_account(relay, ns),
        build_role(relay, ns),
        build_role_binding(relay, ns),
        build_deployment(
            relay, ns, config_checksum=config_checksum(frps_toml), images=rt.relay_images
        ),
    ]
    name = relay.metadata.name or ""
    if rt.applied_workloads.get(name) == workload:
        return
    digest = _workload_digest(workload)
    live = rt.cache.deployments.get(name) or {}
    if (live.get("metadata", {}).get("annotations") or {}).get(WORKLOAD_DIGEST) == digest:
        # Applied as it is by an earlier process (the Deployment, applied last, says so): a
        # restart writes nothing, once the other objects are found still there.
        present = [
            await rt.kube.get(o["apiVersion"], o["kind"], o["metadata"]["name"], ns)
            for o in workload[:-1]
        ]
        if all(p is not None for p in present):
            rt.applied_workloads[name] = workload
            return
    stamped = copy.deepcopy(workload)
    stamped[-1]["metadata"].setdefault("annotations", {})[WORKLOAD_DIGEST] = digest
    for obj in stamped:
        await rt.kube.apply(obj)
    rt.applied_workloads[name] = workload


# On the relay's Deployment: the digest of the whole workload (config Secret, RBAC,
# Deployment) it was last applied with.
WORKLOAD_DIGEST = "tunnelop.dev/workload-digest"


def _workload_digest(workload: list[dict[str, Any]]) -> str:
    text = json.dumps(workload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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
    if service is not None and relay.spec.exposure.type == "LoadBalancer":
        # The load balancer's address comes after the Service was written: read it back.
        service = (
            await rt.kube.get("v1", "Service", service["metadata"]["name"], rt.relay_namespace)
            or service
        )
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


def _status(
    rt: Runtime,
    body: dict[str, Any],
    relay: RelayNode,
    view: RelayView,
    address: str | None,
    found: list[dict[str, Any]],
) -> dict[str, Any]:
    """The RelayNode's whole status, built through its model (this is its one writer), with
    the conditions `found` (Ready, or Ready and others) and Draining."""
    name = relay.metadata.name or ""
    generation = body["metadata"].get("generation")
    old = body.get("status") or {}
    found = [*found, _draining_condition(rt, name, view.drain, generation)]
    assert rt.tables is not None
    refused = rt.tables.service_errors.get(name)
    if relay.spec.exposure.type != "HostNetwork":
        found.append(
            conditions.condition(
                "ServiceExposed",
                refused is None,
                "ServicePortsRefused" if refused else "ServiceExposed",
                f"The API server refused the relay's Service: {refused}"
                if refused
                else "The relay's Service exposes every allocated port",
                generation,
            )
        )
    usage = rt.table.usage(name)
    metrics.set_relay_allocations(name, usage.tunnels)
    ports = view.allowed_port_count()
    status = RelayNodeStatus(
        observed_generation=generation,
        conditions=conditions.merge(old.get("conditions"), *found),
        public_address=address or old.get("publicAddress"),
        allocated=RelayAllocation(
            tunnels=usage.tunnels,
            ports=usage.ports,
            bandwidth=str(usage.bandwidth) if usage.bandwidth else None,
        ),
        capacity=RelayCapacityStatus(
            tunnels=relay.spec.capacity.tunnels or ports,
            ports=ports,
            bandwidth=relay.spec.capacity.bandwidth,
        ),
    )
    return status_dict(status)


async def _report(rt: Runtime, body: dict[str, Any], status: dict[str, Any]) -> None:
    patch = merge_patch(body.get("status") or {}, status)
    result = await rt.kube.patch_status("RelayNode", body["metadata"]["name"], None, patch)
    if result:
        rt.cache.relays[body["metadata"]["name"]] = result


async def _relay_secrets(rt: Runtime, name: str) -> RelaySecrets:
    """The relay's frps token, dashboard password and plugin password: generated once, then
    read back (each on its own, so a Secret written before one of them existed keeps the
    others)."""
    if name in rt.relay_secrets:
        return rt.relay_secrets[name]
    existing = await rt.kube.get(
        "v1", "Secret", naming.config_secret_name(name), rt.relay_namespace
    )
    data = (existing or {}).get("data") or {}

    def kept_or_new(key: str, length: int) -> str:
        value = base64.b64decode(data[key]).decode() if data.get(key) else ""
        return value or secrets.token_urlsafe(length)

    found = RelaySecrets(
        kept_or_new(naming.TOKEN_KEY, 24),
        kept_or_new(naming.DASHBOARD_PASSWORD_KEY, 18),
        kept_or_new(naming.PLUGIN_PASSWORD_KEY, 24),
    )
    rt.relay_secrets[name] = found
    return found


async def _drain_and_release(rt: Runtime, body: dict[str, Any]) -> None:
    """A deleted relay keeps serving (its workload goes only with it, by owner references)
    while its tunnels move elsewhere, keeping their ports where free; a tunnel no other relay
    takes is unbound and says why. It lets go once no tunnel is left on it and its table
    names none, so nothing it still enforces is handed to anyone else."""
    name = body["metadata"]["name"]
    view = next((r for r in rt.table.relays() if r.name == name), None)
    if view is not None:
        if view.drain is None or view.drain.reason != DELETING:
            drain = Drain(DELETING, f"RelayNode {name} is being deleted", stay_if_stuck=False)
            view = dataclasses.replace(view, drain=drain)
            rt.table.upsert_relay(view)
        left = rt.table.allocations_on(name)
        if left:
            _queue_moves(rt, name)
            await _report_draining(rt, body, view)
            raise Requeue(5.0)  # normally sooner: each table write reconciles the relay
        holders = rt.table.table_holders(name)  # entries no allocation accounts for
        if holders:
            assert rt.tables is not None
            for key in holders:
                rt.tables.drop_entry(name, key)
            await rt.tables.flush(name)
            if rt.table.table_holders(name):
                raise Requeue(2.0)
    _forget(rt, name)
    await rt.kube.remove_finalizer("RelayNode", body, FINALIZER)
    log.info("relay removed after its tunnels moved", relay=name)


async def _report_draining(rt: Runtime, body: dict[str, Any], view: RelayView) -> None:
    """The Draining condition of a relay being deleted (whose spec may not even parse)."""
    generation = body["metadata"].get("generation")
    status = dict(body.get("status") or {})
    status["conditions"] = conditions.merge(
        status.get("conditions"), _draining_condition(rt, view.name, view.drain, generation)
    )
    await _report_changes(rt, body, status)


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
    rt.relay_status_written_at.pop(name, None)
    rt.applied_workloads.pop(name, None)
    metrics.forget_relay(name)
    return len(moved)
