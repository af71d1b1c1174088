"""kopf watches feed the caches and the work queues; they decide nothing themselves.

At start-up the allocation table is rebuilt from the API before any tunnel is reconciled:
the ports and host names recorded in Tunnel statuses are taken back as they were, so a Ready
tunnel's endpoint never changes on restart and nothing is allocated twice.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import kopf

from tunnelop.api.v1alpha1 import GROUP, VERSION, PortSpan, RelayNode, Tunnel
from tunnelop.builders.relay import PINNED_IMAGES, DefaultRelayImages, config_checksum
from tunnelop.contract import naming
from tunnelop.contract.table import TableEntry, parse_table_json
from tunnelop.controllers import clients, gateways, loadbalancers, pools, quotas, relays, tunnels
from tunnelop.controllers.caches import ServiceTarget
from tunnelop.controllers.relaytables import RelayTables
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.status import utcnow
from tunnelop.controllers.traffic import TrafficCollector, TrafficOptions
from tunnelop.domain import conditions
from tunnelop.domain.drain import drain_of
from tunnelop.domain.loadbalancers.request import SERVICE_LABEL, is_relay_load_balancer, slim
from tunnelop.domain.quota import effective_bandwidth
from tunnelop.domain.relayview import DEFAULT_NODE_PORT_RANGE, POOL_LABEL, RelayView
from tunnelop.domain.scheduling import Allocation, TunnelKey, normal_hosts
from tunnelop.platform import logs, metrics
from tunnelop.platform.events import GLOBAL_BURST, GLOBAL_REFILL
from tunnelop.platform.informer import Informer, Listed
from tunnelop.platform.kube import GROUP_VERSION, Kube
from tunnelop.platform.workqueue import WorkQueue

log = logs.get(__name__)
TUNNEL_LABEL = "tunnelop.dev/tunnel"


async def start(
    memo: kopf.Memo,
    relay_namespace: str,
    workers: int,
    traffic: TrafficOptions,
    node_port_range: PortSpan = DEFAULT_NODE_PORT_RANGE,
    relay_images: DefaultRelayImages = PINNED_IMAGES,
    frpc_image: str = naming.DEFAULT_FRPC_IMAGE,
    event_burst: int = GLOBAL_BURST,
    event_qps: float = GLOBAL_REFILL,
) -> Runtime:
    kube = await Kube.connect()
    rt = Runtime(
        kube=kube,
        relay_namespace=relay_namespace,
        node_port_range=node_port_range,
        relay_images=relay_images,
        frpc_image=frpc_image,
        event_burst=event_burst,
        event_qps=event_qps,
    )
    rt.tunnel_queue = WorkQueue("tunnels", lambda key: tunnels.reconcile(rt, key), workers)
    rt.relay_queue = WorkQueue("relays", lambda name: relays.reconcile(rt, name), 4)
    rt.quota_queue = WorkQueue("quotas", lambda key: quotas.reconcile(rt, key), 2)
    rt.pool_queue = WorkQueue("pools", lambda name: pools.reconcile(rt, name), 2)
    rt.service_queue = WorkQueue("loadbalancers", lambda key: loadbalancers.reconcile(rt, key), 2)
    rt.client_queue = WorkQueue("clients", lambda key: clients.reconcile(rt, key), 4)
    # After each table write the relay's status reports the new allocation.
    rt.tables = RelayTables(kube, relay_namespace, rt.table, rt.cache.relays, rt.relay_queue.add)
    await _ensure_namespace(kube, relay_namespace)
    listed = await restore(rt)
    tunnel_informer = Informer(
        kube, "/apis/tunnelop.dev/v1alpha1/tunnels", lambda k, o: on_tunnel(rt, k, o)
    )
    # Every Service, cluster-wide: no selector picks a class, and spec.type only from
    # Kubernetes 1.31 (the chart supports 1.27). on_service keeps those of the class
    # tunnelop.dev/relay (slimmed), and of every Service only its ports (InCluster targets).
    service_informer = Informer(kube, "/api/v1/services", lambda k, o: on_service(rt, k, o))
    rt.load_balancer_watches = [tunnel_informer.synced, service_informer.synced]
    credentials_informer = Informer(
        kube, "/api/v1/secrets", lambda k, o: on_credentials(rt, k, o), labels=TUNNEL_LABEL
    )
    # The restore's lists are where these two start watching: not listed a second time.
    from_restore = {tunnel_informer: listed.tunnels, credentials_informer: listed.credentials}
    informers = [
        tunnel_informer,
        service_informer,
        Informer(kube, "/apis/tunnelop.dev/v1alpha1/tunnelquotas", lambda k, o: on_quota(rt, k, o)),
        credentials_informer,
        # The relays' tables, so that a table changed by anyone else is noticed and rewritten.
        Informer(
            kube,
            f"/api/v1/namespaces/{relay_namespace}/secrets",
            lambda k, o: on_relay_table(rt, k, o),
            labels=naming.RELAY_LABEL,
        ),
    ]
    health = getattr(memo, "health", None)  # set by the manager; absent in tests
    # InCluster tunnels' frpc Deployments; their targets come from the Services above.
    client_informer = Informer(
        kube,
        "/apis/apps/v1/deployments",
        lambda k, o: on_client_deployment(rt, k, o),
        labels=naming.CLIENT_SELECTOR,
    )
    rt.client_watches_synced = [client_informer.synced, service_informer.synced]
    informers.append(client_informer)
    for informer in informers:
        informer.start(from_restore.get(informer))
        if health is not None:
            health.add_check(f"informer {informer.path}", informer.healthy)
    rt.relay_queue.start()
    rt.tunnel_queue.start()
    rt.quota_queue.start()
    rt.pool_queue.start()
    rt.service_queue.start()
    rt.client_queue.start()
    # After the restore: the Tunnels made for routes are known before any route is.
    gateway_api = gateways.start(rt, health)
    collector = TrafficCollector(rt, traffic)
    collector.start()
    rt.running = [*informers, gateway_api, collector]
    memo.runtime = rt
    return rt


async def _ensure_namespace(kube: Kube, name: str) -> None:
    if await kube.get("v1", "Namespace", name) is None:
        await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@dataclass
class RestoredLists:
    """The restore's lists of Tunnels and of their Secrets, for their informers to watch
    from: every Tunnel is handed over to its handler once more (from the cache), so that each
    is reconciled."""

    tunnels: Listed
    credentials: Listed


async def restore(rt: Runtime) -> RestoredLists:
    """Rebuild caches and the allocation table from the API (one list per kind).

    The relays' tables come first: what a relay enforces holds its ports and subdomains
    before any tunnel is placed. A live tunnel then gets back the binding its relay's table
    names (written before its credentials and status, so the freshest), else the one its
    status records. Table entries nothing accounts for are dropped by a rewrite at once."""
    for body in await rt.kube.list(GROUP_VERSION, "RelayPool"):
        rt.cache.pools[body["metadata"]["name"]] = body
    for body in await rt.kube.list(GROUP_VERSION, "RelayNode"):
        rt.cache.relays[body["metadata"]["name"]] = body
        view = _remember_view(rt, body)
        if view is not None:
            rt.table.upsert_relay(view)
    for body in await rt.kube.list(
        "apps/v1", "Deployment", rt.relay_namespace, labels=naming.RELAY_LABEL
    ):
        relay = body["metadata"].get("labels", {}).get(naming.RELAY_LABEL)
        if relay:
            rt.cache.deployments[relay] = body
    assert rt.tables is not None
    in_tables: dict[TunnelKey, list[tuple[str, TableEntry]]] = {}
    for body in await rt.kube.list("v1", "Secret", rt.relay_namespace, labels=naming.RELAY_LABEL):
        found = _read_table(body)
        if found is None:
            continue
        relay, shard, entries = found
        rt.tables.remember_written(relay, shard, entries)
        for key, entry in entries.items():
            in_tables.setdefault(key, []).append((relay, entry))
    listed_credentials = Listed("")
    async for page, version in rt.kube.pages("/api/v1/secrets", labels=TUNNEL_LABEL):
        listed_credentials.version = version
        for body in page:
            _remember_credentials(rt, body)
            listed_credentials.add(body)
    # The quotas before the tunnels: a restored allocation carries its effective bandwidth
    # (hard.bandwidthPerTunnel for a tunnel that sets none), as the gate counts it.
    for body in await rt.kube.list(GROUP_VERSION, "TunnelQuota"):
        rt.cache.remember_quota(body)
    restored = conflicts = 0
    listed_tunnels = Listed("")
    listed_keys: list[TunnelKey] = []
    async for page, version in rt.kube.pages(f"/apis/{GROUP_VERSION}/tunnels"):
        listed_tunnels.version = version
        for body in page:
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            rt.cache.remember_tunnel(key, body)
            listed_tunnels.add(body)
            listed_keys.append(key)
            if body["metadata"].get("deletionTimestamp"):
                continue  # released by its reconcile
            alloc = _recorded_allocation(rt, body, in_tables.get(key, []))
            if alloc is None:
                continue
            if rt.table.restore(alloc):
                restored += 1
            else:
                conflicts += 1  # rescheduled by its reconcile, with an Event
    stale = rt.tables.prune()
    # Shards never written (a relay created just before a crash, or a table of an earlier
    # version, whole in one Secret) are written now: the agent needs every shard.
    stale = sorted({*stale, *rt.tables.incomplete()})
    log.info(
        "allocation table restored",
        relays=len(rt.cache.relays),
        tunnels=len(rt.cache.tunnels),
        restored=restored,
        conflicts=conflicts,
        stale_tables=len(stale),
    )
    for relay in stale:
        # Entries of deleted or moved tunnels: off the relay before anything else runs.
        await rt.tables.flush(relay)
    # Each namespace's traffic this period, from the statuses and the quotas' ledgers, before
    # any tunnel is reconciled: a namespace over its cap stays held across a restart.
    now = utcnow()
    for namespace in list(rt.cache.quotas):
        quotas.refresh_traffic(rt, namespace, now)
        quotas.requeue_quotas(rt, namespace)
    cached = rt.cache.tunnels
    listed_tunnels.replay = (cached[key] for key in listed_keys if key in cached)
    return RestoredLists(listed_tunnels, listed_credentials)


def _recorded_allocation(
    rt: Runtime, body: dict[str, Any], in_tables: list[tuple[str, TableEntry]]
) -> Allocation | None:
    """The binding to restore: the one the status records if a relay's table agrees (or no
    table names the tunnel), else the one a relay's table names."""
    status = body.get("status") or {}
    try:
        tunnel = Tunnel.model_validate(body)
    except ValueError:
        return None
    recorded = None
    if status.get("relayNode") and conditions.is_true(status.get("conditions"), "Scheduled"):
        recorded = (status["relayNode"], status.get("remotePort"), status.get("subdomain"))
    named = [(relay, e.remote_port, e.subdomain) for relay, e in in_tables]
    if named and recorded not in named:
        recorded = named[0]
    if recorded is None:
        return None
    relay, port, subdomain = recorded
    view = next((r for r in rt.table.relays() if r.name == relay), None)
    bandwidth = effective_bandwidth(tunnel.spec, rt.cache.limits(tunnel.metadata.namespace or ""))
    return Allocation(
        key=(body["metadata"]["namespace"], body["metadata"]["name"]),
        relay=relay,
        protocol=tunnel.spec.protocol,
        port=port,
        subdomain=subdomain,
        http_domain=view.http_domain if view and subdomain else None,
        bandwidth=bandwidth,
        table_bytes=tunnels.table_bytes_of(tunnel, port, subdomain, bandwidth),
        # Held at once, so that a tunnel waiting for one of them cannot take it first.
        custom_domains=normal_hosts(tunnel.spec.custom_domains),
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


def _table_shard(body: dict[str, Any]) -> tuple[str, int] | None:
    """(relay, shard) of a relay's table Secret, None for any other Secret of a relay."""
    relay = (body["metadata"].get("labels") or {}).get(naming.RELAY_LABEL)
    shard = naming.table_shard_of_secret(relay, body["metadata"]["name"]) if relay else None
    return None if relay is None or shard is None else (relay, shard)


def _read_table(body: dict[str, Any]) -> tuple[str, int, dict[TunnelKey, TableEntry]] | None:
    """A shard of a relay's table Secret -> (relay, shard, entries), None for any other
    Secret of a relay. One that cannot be read (or holds another shard) counts as empty: it
    is rewritten."""
    at = _table_shard(body)
    raw = (body.get("data") or {}).get(naming.TABLE_KEY)
    if at is None or not raw:
        return None
    relay, shard = at
    try:
        document = parse_table_json(base64.b64decode(raw), whole_ok=shard == 0)
        if document.shard != shard:
            raise ValueError(f"holds shard {document.shard}")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning(
            "relay table unreadable; it is rewritten", relay=relay, shard=shard, error=str(exc)
        )
        return relay, shard, {}
    return relay, shard, {(e.namespace, e.name): e for e in document.entries}


# ---- watches ------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "relaynodes")
async def relay_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    body, name = _cached(rt.cache.relays, event)
    if event["type"] == "DELETED":
        rt.cache.forget_relay_view(name)
    else:
        _remember_view(rt, body)
    assert rt.relay_queue is not None
    rt.relay_queue.add(name)
    pool = (body["metadata"].get("labels") or {}).get(POOL_LABEL)
    if pool:
        pools.poke(rt, pool)  # its count, readiness or load changed
    gateways.poke(rt)  # a Gateway's address, readiness or relay may change


@kopf.on.event(GROUP, VERSION, "relaypools")
async def pool_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    _, name = _cached(rt.cache.pools, event)
    assert rt.pool_queue is not None
    rt.pool_queue.add(name)
    gateways.poke(rt)  # a Gateway may name it


def _cached(cache: dict[str, dict[str, Any]], event: kopf.RawEvent) -> tuple[dict[str, Any], str]:
    """Keep a cluster-scoped object's cache in step with its watch event: (object, name)."""
    body = event["object"]
    name = body["metadata"]["name"]
    if event["type"] == "DELETED":
        cache.pop(name, None)
    else:
        cache[name] = body
    return body, name


def _remember_view(rt: Runtime, body: dict[str, Any]) -> RelayView | None:
    try:
        model = RelayNode.model_validate(body)
    except ValueError:
        rt.cache.forget_relay_view(body["metadata"]["name"])
        return None
    ready = conditions.is_true((body.get("status") or {}).get("conditions"), "Ready")
    now = utcnow()
    drain = drain_of(model, relays.not_ready_since_of(body, ready, now), now)
    view = RelayView.from_model(model, ready=ready, node_port_range=rt.node_port_range, drain=drain)
    rt.cache.remember_relay_view(view)
    return view


@kopf.on.event("apps", "v1", "deployments", labels={naming.RELAY_LABEL: kopf.PRESENT})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    body = event["object"]
    if body["metadata"].get("namespace") != rt.relay_namespace:
        return
    relay = body["metadata"]["labels"][naming.RELAY_LABEL]
    if event["type"] == "DELETED":
        rt.cache.deployments.pop(relay, None)
    else:
        rt.cache.deployments[relay] = body
    assert rt.relay_queue is not None
    rt.relay_queue.add(relay)


def on_tunnel(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    # The echo of the operator's own status write (its reply is cached already): the
    # tunnel's reconcile that wrote it knows it, and another pass would only compare.
    cached = rt.cache.tunnels.get(key)
    own_write = (
        kind == "MODIFIED"
        and cached is not None
        and cached["metadata"].get("resourceVersion") == body["metadata"].get("resourceVersion")
    )
    if kind == "DELETED":
        rt.cache.forget_tunnel(key)
        metrics.scheduling.forget(key)
        # Its UID may leave the quotas' deletion ledgers now.
        quotas.requeue_quotas(rt, key[0])
    else:
        rt.cache.remember_tunnel(key, body)
        if not (body.get("status") or {}).get("relayNode"):
            metrics.scheduling.enqueued(key)
    if rt.gateway_api is not None:
        rt.gateway_api.on_tunnel(kind, body)  # one made for a route: its listener's status
    assert rt.tunnel_queue is not None
    if not own_write:
        rt.tunnel_queue.add(key)
    service = (body["metadata"].get("labels") or {}).get(SERVICE_LABEL)
    if service:  # made for a Service of the load-balancer class: its status may change
        assert rt.service_queue is not None
        rt.service_queue.add((key[0], service))
    if clients.wants_client(rt, key, body):
        assert rt.client_queue is not None
        rt.client_queue.add(key)


def on_service(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """One watch of every Service serves two controllers: the load-balancer class and the
    InCluster clients' targets."""
    on_load_balancer_service(rt, kind, body)
    on_target_service(rt, kind, body)


def on_load_balancer_service(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """A Service of the class tunnelop.dev/relay is kept (slimmed) and reconciled; one that
    stops being of the class (deleted, or another class or type) is reconciled once more, to
    take its Tunnels away; any other Service is ignored."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name") or "")
    if kind != "DELETED" and is_relay_load_balancer(body):
        rt.cache.load_balancers[key] = slim(body)
    elif rt.cache.load_balancers.pop(key, None) is None:
        return
    assert rt.service_queue is not None
    rt.service_queue.add(key)


def on_quota(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """A TunnelQuota changed: the namespace's limits are recomputed, and every Tunnel of the
    namespace is reconciled (waiting ones first: room may have appeared; a hold may have
    begun or ended; a default bandwidth changed), with the quota itself."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    spec_before = (rt.cache.quota(namespace, meta["name"]) or {}).get("spec")
    if kind == "DELETED":
        rt.cache.forget_quota(namespace, meta["name"])
    else:
        rt.cache.remember_quota(body)
    quotas.refresh_traffic(rt, namespace, utcnow())
    assert rt.quota_queue is not None
    rt.quota_queue.add((namespace, meta["name"]))
    if kind == "DELETED" or spec_before != body.get("spec"):
        quotas.requeue_namespace(rt, namespace)


def on_relay_table(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """A relay's table Secret changed: if it is not what the operator wrote (edited by hand,
    deleted, written by a process that lost its lease), what it names is held and it is
    rewritten."""
    assert rt.tables is not None
    at = _table_shard(body)
    if at is None:
        return
    if kind == "DELETED":
        rt.tables.observed(*at, None)
        return
    if rt.tables.is_own_write(*at, body["metadata"].get("resourceVersion")):
        return  # what this process wrote: nothing to compare
    found = _read_table(body)
    if found is not None:
        rt.tables.observed(*found)


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
        if key in rt.cache.tunnels:
            rt.tunnel_queue.add(key)
    else:
        _remember_credentials(rt, body)
        if key in rt.cache.tunnels and clients.wants_client(rt, key, rt.cache.tunnels[key]):
            assert rt.client_queue is not None
            rt.client_queue.add(key)  # a new Secret rolls the tunnel's frpc


def on_client_deployment(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """An InCluster tunnel's frpc Deployment changed: its status may say something new, and a
    Deployment changed or deleted by anyone else is put back."""
    meta = body["metadata"]
    tunnel = (meta.get("labels") or {}).get(TUNNEL_LABEL)
    if not tunnel:
        return
    key = (meta["namespace"], tunnel)
    if kind == "DELETED":
        rt.cache.client_deployments.pop(key, None)
    else:
        rt.cache.client_deployments[key] = body
    assert rt.client_queue is not None
    rt.client_queue.add(key)


def on_target_service(rt: Runtime, kind: str, body: dict[str, Any]) -> None:
    """A Service appeared, changed its ports or went: the InCluster tunnels it is the target
    of start, stay or stop their frpc."""
    meta = body["metadata"]
    name = (meta["namespace"], meta["name"])
    before = rt.cache.services.get(name)
    if kind == "DELETED":
        rt.cache.services.pop(name, None)
    else:
        rt.cache.services[name] = ServiceTarget.of(body)
    if rt.cache.services.get(name) == before:
        return  # a status or metadata change
    assert rt.client_queue is not None
    for key in clients.targeting(rt, *name):
        rt.client_queue.add(key)
