"""kopf watches feed the caches and the work queues; they decide nothing themselves.

At start-up the allocation table is rebuilt from the API before any tunnel is reconciled:
the ports and subdomains recorded in Tunnel statuses are taken back as they were, so a Ready
tunnel's endpoint never changes on restart and nothing is allocated twice.
"""

from __future__ import annotations

import base64
from typing import Any

import kopf

from tunnelop.api.v1alpha1 import GROUP, VERSION, RelayNode, Tunnel
from tunnelop.builders.relay import config_checksum
from tunnelop.contract import naming
from tunnelop.contract.table import parse_table_json
from tunnelop.controllers import relays, tunnels
from tunnelop.controllers.state import RelayTables, Runtime
from tunnelop.controllers.traffic import TrafficCollector, TrafficOptions
from tunnelop.domain import conditions
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import Allocation
from tunnelop.platform import logs, metrics
from tunnelop.platform.informer import Informer
from tunnelop.platform.kube import GROUP_VERSION, Kube
from tunnelop.platform.workqueue import WorkQueue

log = logs.get(__name__)
TUNNEL_LABEL = "tunnelop.dev/tunnel"


async def start(
    memo: kopf.Memo, relay_namespace: str, workers: int, traffic: TrafficOptions
) -> Runtime:
    kube = await Kube.connect()
    rt = Runtime(kube=kube, relay_namespace=relay_namespace)
    rt.tables = RelayTables(rt)
    rt.tunnel_queue = WorkQueue("tunnels", lambda key: tunnels.reconcile(rt, key), workers)
    rt.relay_queue = WorkQueue("relays", lambda name: relays.reconcile(rt, name), 4)
    await _ensure_namespace(kube, relay_namespace)
    await restore(rt)
    rt.informers = [
        Informer(kube, "/apis/tunnelop.dev/v1alpha1/tunnels", lambda k, o: on_tunnel(rt, k, o)),
        Informer(
            kube, "/api/v1/secrets", lambda k, o: on_credentials(rt, k, o), labels=TUNNEL_LABEL
        ),
    ]
    for informer in rt.informers:
        informer.start()
        health = getattr(memo, "health", None)  # set by the manager; absent in tests
        if health is not None:
            health.add_check(f"informer {informer.path}", informer.healthy)
    rt.relay_queue.start()
    rt.tunnel_queue.start()
    rt.traffic = TrafficCollector(rt, traffic)
    rt.traffic.start()
    memo.runtime = rt
    return rt


async def _ensure_namespace(kube: Kube, name: str) -> None:
    if await kube.get("v1", "Namespace", name) is None:
        await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def restore(rt: Runtime) -> None:
    """Rebuild caches and the allocation table from the API (one list per kind)."""
    for body in await rt.kube.list(GROUP_VERSION, "RelayNode"):
        rt.relays[body["metadata"]["name"]] = body
        view = _remember_view(rt, body)
        if view is not None:
            rt.table.upsert_relay(view)
    for body in await rt.kube.list(
        "apps/v1", "Deployment", rt.relay_namespace, labels=naming.RELAY_LABEL
    ):
        relay = body["metadata"].get("labels", {}).get(naming.RELAY_LABEL)
        if relay:
            rt.deployments[relay] = body
    for body in await rt.kube.list("v1", "Secret", labels=TUNNEL_LABEL):
        _remember_credentials(rt, body)
    restored = conflicts = 0
    for body in await rt.kube.list(GROUP_VERSION, "Tunnel"):
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        rt.remember_tunnel(key, body)
        alloc = _recorded_allocation(rt, body)
        if alloc is None:
            continue
        if rt.table.restore(alloc):
            restored += 1
        else:
            conflicts += 1  # rescheduled by its reconcile, with an Event
    assert rt.tables is not None
    for body in await rt.kube.list("v1", "Secret", rt.relay_namespace, labels=naming.RELAY_LABEL):
        _remember_table(rt.tables, body)
    log.info(
        "allocation table restored",
        relays=len(rt.relays),
        tunnels=len(rt.tunnels),
        restored=restored,
        conflicts=conflicts,
    )


def _recorded_allocation(rt: Runtime, body: dict[str, Any]) -> Allocation | None:
    status = body.get("status") or {}
    relay = status.get("relayNode")
    if not relay or not conditions.is_true(status.get("conditions"), "Scheduled"):
        return None
    try:
        tunnel = Tunnel.model_validate(body)
    except ValueError:
        return None
    view = next((r for r in rt.table.relays() if r.name == relay), None)
    return Allocation(
        key=(body["metadata"]["namespace"], body["metadata"]["name"]),
        relay=relay,
        protocol=tunnel.spec.protocol,
        port=status.get("remotePort"),
        subdomain=status.get("subdomain"),
        http_domain=view.http_domain if view and status.get("subdomain") else None,
        bandwidth=tunnels.bandwidth_of(tunnel),
    )


def _remember_credentials(rt: Runtime, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    tunnel = (meta.get("labels") or {}).get(TUNNEL_LABEL)
    if not tunnel:
        return
    key = (meta["namespace"], tunnel)
    data = body.get("data") or {}
    try:
        token = base64.b64decode(data["token"]).decode()
        frpc_toml = base64.b64decode(data["frpc.toml"]).decode()
    except (KeyError, ValueError):
        return
    rt.tokens[key] = token
    rt.credential_checksums[key] = config_checksum(frpc_toml, token)


def _remember_table(tables: RelayTables, body: dict[str, Any]) -> None:
    """What a relay's table Secret already holds, so that a restart rewrites nothing."""
    relay = (body["metadata"].get("labels") or {}).get(naming.RELAY_LABEL)
    raw = (body.get("data") or {}).get("table.json")
    if not relay or not raw or body["metadata"]["name"] != naming.table_secret_name(relay):
        return
    try:
        _, entries = parse_table_json(base64.b64decode(raw))
    except (ValueError, KeyError, TypeError):
        return
    tables.remember_written(relay, {(e.namespace, e.name): e for e in entries})


# ---- watches ------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "relaynodes")
async def relay_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    body = event["object"]
    name = body["metadata"]["name"]
    if event["type"] == "DELETED":
        rt.relays.pop(name, None)
        rt.relay_views.pop(name, None)
    else:
        rt.relays[name] = body
        _remember_view(rt, body)
    assert rt.relay_queue is not None
    rt.relay_queue.add(name)


def _remember_view(rt: Runtime, body: dict[str, Any]) -> RelayView | None:
    try:
        model = RelayNode.model_validate(body)
    except ValueError:
        rt.relay_views.pop(body["metadata"]["name"], None)
        return None
    ready = conditions.is_true((body.get("status") or {}).get("conditions"), "Ready")
    view = RelayView.from_model(model, ready=ready)
    rt.relay_views[view.name] = view
    return view


@kopf.on.event("apps", "v1", "deployments", labels={naming.RELAY_LABEL: kopf.PRESENT})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    body = event["object"]
    if body["metadata"].get("namespace") != rt.relay_namespace:
        return
    relay = body["metadata"]["labels"][naming.RELAY_LABEL]
    if event["type"] == "DELETED":
        rt.deployments.pop(relay, None)
    else:
        rt.deployments[relay] = body
    assert rt.relay_queue is not None
    rt.relay_queue.add(relay)


def on_tunnel(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if kind == "DELETED":
        rt.forget_tunnel(key)
        metrics.scheduling.forget(key)
    else:
        rt.remember_tunnel(key, body)
        if not (body.get("status") or {}).get("relayNode"):
            metrics.scheduling.enqueued(key)
    assert rt.tunnel_queue is not None
    rt.tunnel_queue.add(key)


def on_credentials(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """Deleting a tunnel's credentials Secret rotates its token: forget it and reconcile."""
    meta = body["metadata"]
    tunnel = (meta.get("labels") or {}).get(TUNNEL_LABEL)
    if not tunnel:
        return
    key = (meta["namespace"], tunnel)
    if kind == "DELETED":
        rt.tokens.pop(key, None)
        rt.credential_checksums.pop(key, None)
        assert rt.tunnel_queue is not None
        if key in rt.tunnels:
            rt.tunnel_queue.add(key)
    else:
        _remember_credentials(rt, body)
