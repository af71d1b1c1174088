"""The operator's in-memory state, shared by its controllers: the caches of watched objects,
the allocation table, the work queues, the relay-table writer and each controller's memory
of what it wrote.

One process owns it and one event loop mutates it, so the allocation table needs no locks:
every scheduling decision is taken synchronously between two awaits.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

from tunnelop.api.v1alpha1 import PortSpan
from tunnelop.builders.relay import DefaultRelayImages
from tunnelop.contract.naming import DEFAULT_FRPC_IMAGE
from tunnelop.contract.naming import FINALIZER as FINALIZER  # the controllers take it here
from tunnelop.controllers.caches import Caches
from tunnelop.controllers.gateway_api import GatewayApi
from tunnelop.controllers.relaytables import RelayTables
from tunnelop.domain.pools import RelayLoad
from tunnelop.domain.relayview import DEFAULT_NODE_PORT_RANGE
from tunnelop.domain.scheduling import AllocationTable, TunnelKey
from tunnelop.domain.traffic_report import Observed
from tunnelop.platform.events import GLOBAL_BURST, GLOBAL_REFILL, EventRecorder
from tunnelop.platform.kube import Kube
from tunnelop.platform.workqueue import WorkQueue


@dataclass
class RelaySecrets:
    """The relay-wide frps token, dashboard password and plugin password (frps's credentials
    for the agent's plugin endpoint), kept in its config Secret."""

    token: str
    dashboard_password: str
    plugin_password: str


@dataclass(frozen=True)
class ClientProblem:
    """What keeps an InCluster tunnel's frpc from serving, as the client controller found it;
    the Tunnel controller shows it in ClientConnected while no frpc is connected."""

    reason: str
    message: str
    warning: bool = True  # worth a Warning Event (a starting pod is not)


@dataclass
class Runtime:
    kube: Kube
    relay_namespace: str
    # The API server's --service-node-port-range (what a LoadBalancer Service draws from).
    node_port_range: PortSpan = DEFAULT_NODE_PORT_RANGE
    # The images of relay pods whose RelayNode names none.
    relay_images: DefaultRelayImages = field(default_factory=DefaultRelayImages)
    # The frpc image of InCluster tunnels' clients.
    frpc_image: str = DEFAULT_FRPC_IMAGE
    # The Events' write budget: a burst, then so many a second (platform/events.py).
    event_burst: int = GLOBAL_BURST
    event_qps: float = GLOBAL_REFILL
    table: AllocationTable = field(default_factory=AllocationTable)
    cache: Caches = field(default_factory=Caches)
    relay_secrets: dict[str, RelaySecrets] = field(default_factory=dict)
    # When each relay's status was last written (monotonic): writes that only change its
    # counts are spaced (controllers/relays.py).
    relay_status_written_at: dict[str, float] = field(default_factory=dict)
    # The workload objects last applied per relay, so an unchanged relay costs no request.
    applied_workloads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Tunnel credentials as read from their Secrets: token, and the frpc.toml checksum.
    tokens: dict[TunnelKey, str] = field(default_factory=dict)
    credential_checksums: dict[TunnelKey, str] = field(default_factory=dict)
    # Tunnels that fit nowhere: retried when a relay changes, not by polling.
    unschedulable: set[TunnelKey] = field(default_factory=set)
    tunnel_queue: WorkQueue[TunnelKey] | None = None
    relay_queue: WorkQueue[str] | None = None
    # TunnelQuotas by (namespace, name), for their status.
    quota_queue: WorkQueue[TunnelKey] | None = None
    # Per namespace, the tunnels its quotas' gate turned away: retried when room appears (a
    # bound tunnel released, a quota changed), not by polling.
    quota_waiting: dict[str, set[TunnelKey]] = field(default_factory=dict)
    # Per namespace capped by hard.monthlyTraffic, its bytes this period as last counted.
    quota_traffic: dict[str, int] = field(default_factory=dict)
    # When each quota's status was last written (monotonic), to bound the write rate.
    quota_written_at: dict[TunnelKey, float] = field(default_factory=dict)
    tables: RelayTables | None = None
    # RelayPools by name.
    pool_queue: WorkQueue[str] | None = None
    # Per pool, the tunnels that wait because it is full (spec.relay.pool names it), with
    # what each needs: the autoscaler's demand beyond what is placed.
    pool_waiting: dict[str, dict[TunnelKey, RelayLoad]] = field(default_factory=dict)
    waiting_in_pool: dict[TunnelKey, str] = field(default_factory=dict)
    # Pools due for a reconcile in a moment (see pools.poke), and since when each pool's load
    # has allowed one relay fewer (the autoscaler's scale-down delay).
    pools_poked: set[str] = field(default_factory=set)
    pool_below_since: dict[str, datetime.datetime] = field(default_factory=dict)
    # Each tunnel's traffic as last read from its relay's agent (the traffic controller
    # writes it, the Tunnel controller reports it).
    traffic: dict[TunnelKey, Observed] = field(default_factory=dict)
    # Services of the load-balancer class by (namespace, name); their reconciles wait until
    # these watches (Services, Tunnels) have synced, and each Service's Events already posted
    # (topic -> what was said), so that a problem is reported once, not per reconcile.
    service_queue: WorkQueue[TunnelKey] | None = None
    load_balancer_watches: list[asyncio.Event] = field(default_factory=list)
    load_balancer_reports: dict[TunnelKey, dict[str, str]] = field(default_factory=dict)
    # The Gateway API's caches and watches, and the queue of its one translation.
    gateway_api: GatewayApi | None = None
    gateway_queue: WorkQueue[str] | None = None
    # InCluster tunnels' frpc Deployments by tunnel, what keeps each from serving, and
    # whether the watches of client Deployments and Services have listed everything (before
    # that, a missing one may only be unseen).
    client_queue: WorkQueue[TunnelKey] | None = None
    client_problems: dict[TunnelKey, ClientProblem] = field(default_factory=dict)
    client_watches_synced: list[asyncio.Event] = field(default_factory=list)
    # What runs beside the work queues (informers, the traffic collector), stopped first.
    running: list[Any] = field(default_factory=list)
    # Events, deduplicated and rate-limited (platform/events.py); its writes run in tasks
    # it owns, so posting never slows a reconcile.
    events: EventRecorder = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventRecorder(self.kube, burst=self.event_burst, rate=self.event_qps)

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.record(body, type_, reason, message)

    async def stop(self) -> None:
        for part in self.running:
            await part.stop()
        for queue in self.queues():
            if queue is not None:
                await queue.stop()
        await self.events.stop()
        await self.kube.close()

    def queues(self) -> list[WorkQueue[Any]]:
        return [
            q
            for q in (
                self.tunnel_queue,
                self.relay_queue,
                self.quota_queue,
                self.pool_queue,
                self.service_queue,
                self.gateway_queue,
                self.client_queue,
            )
            if q is not None
        ]

    def retry_unschedulable(self) -> None:
        assert self.tunnel_queue is not None
        for key in list(self.unschedulable):
            self.tunnel_queue.add(key)
