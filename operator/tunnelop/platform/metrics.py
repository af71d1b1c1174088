"""The operator's Prometheus metrics, all named tunnelop_*, in one registry of their own
(served at /metrics by platform/health.py). Nothing here talks to the API or starts a task.

Calls the controllers make:
- `scheduling.enqueued(key)` when an unbound tunnel is seen, `scheduling.bound(key)` when its
  reconcile first binds it (observes tunnelop_scheduling_latency_seconds), and
  `scheduling.forget(key)` when it is deleted before being bound;
- `set_relay_allocations(relay, tunnels)` whenever a relay's allocated count is known, and
  `forget_relay(relay)` when the relay is gone.
The work queue, the informer, the leader elector and the Event recorder update their own
metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "tunnelop_reconciles_total",
    "Reconciles by controller (work queue) and result: success, requeue or error.",
    ["controller", "result"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "tunnelop_reconcile_duration_seconds",
    "Time one reconcile took, by controller.",
    ["controller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "tunnelop_workqueue_depth",
    "Keys waiting in or being reconciled by a work queue.",
    ["queue"],
    registry=REGISTRY,
)
SCHEDULING_LATENCY = Histogram(
    "tunnelop_scheduling_latency_seconds",
    "Time from a tunnel first enqueued unbound to bound to a relay.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
RELAY_ALLOCATIONS = Gauge(
    "tunnelop_relay_allocations",
    "Tunnels allocated on a relay.",
    ["relay"],
    registry=REGISTRY,
)
POOL_REPLICAS = Gauge(
    "tunnelop_pool_replicas",
    "RelayNodes of a RelayPool: desired (spec.replicas or the autoscaler's choice) and ready.",
    ["pool", "state"],
    registry=REGISTRY,
)
POOL_UTILIZATION = Gauge(
    "tunnelop_pool_utilization_percent",
    "A RelayPool's utilization: the larger of allocated tunnels and bandwidth over the "
    "capacity of its ready relays (what spec.autoscaling targets; KEDA and HPA can use it).",
    ["pool"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "tunnelop_leader",
    "1 while this process holds the leader Lease, else 0.",
    registry=REGISTRY,
)
INFORMER_FAILURES = Counter(
    "tunnelop_informer_failures_total",
    "Failed lists and watches, by API path and HTTP status (0: no HTTP answer).",
    ["path", "status"],
    registry=REGISTRY,
)
EVENTS_DROPPED = Counter(
    "tunnelop_events_dropped_total",
    "Events not posted, by Event reason: refused by an object's spam filter or by the "
    "global rate limit (these are summed up in a later Event).",
    ["reason"],
    registry=REGISTRY,
)

API_REQUESTS = Counter(
    "tunnelop_api_requests_total",
    "Requests to the Kubernetes API by verb (GET, LIST, WATCH, POST, PUT, PATCH, DELETE) and "
    "resource (with its subresource, e.g. tunnels/status): what each tunnel costs the API "
    "server (docs/benchmarks.md counts them per tunnel).",
    ["verb", "resource"],
    registry=REGISTRY,
)

API_REQUEST_DURATION = Histogram(
    "tunnelop_api_request_duration_seconds",
    "Time from sending a request to the Kubernetes API to reading its whole answer, by verb "
    "and resource (watches excepted): with the operator's own reconcile durations, it tells "
    "a slow API server from a busy operator.",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


ADMISSION_REVIEW_DURATION = Histogram(
    "tunnelop_admission_review_duration_seconds",
    "Time the operator took to answer a Tunnel admission review, from reading its body to its "
    "answer, by result (allowed or denied): set beside the API server's own webhook latency "
    "(apiserver_admission_webhook_admission_duration_seconds), it tells time spent in the "
    "operator from time spent getting there and back.",
    ["result"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)


class SchedulingLatency:
    """Remembers when each unbound tunnel was first enqueued, until it is bound."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: dict[Hashable, float] = {}

    def enqueued(self, key: Hashable) -> None:
        self._since.setdefault(key, self._clock())

    def bound(self, key: Hashable) -> float | None:
        """Observe and return the latency, or None when the key was never enqueued unbound
        (e.g. it was bound before this process started)."""
        start = self._since.pop(key, None)
        if start is None:
            return None
        latency = self._clock() - start
        SCHEDULING_LATENCY.observe(latency)
        return latency

    def forget(self, key: Hashable) -> None:
        self._since.pop(key, None)


scheduling = SchedulingLatency()


def set_relay_allocations(relay: str, tunnels: int) -> None:
    RELAY_ALLOCATIONS.labels(relay=relay).set(tunnels)


def forget_relay(relay: str) -> None:
    try:
        RELAY_ALLOCATIONS.remove(relay)
    except KeyError:
        pass


def set_pool(pool: str, desired: int, ready: int, utilization: int) -> None:
    POOL_REPLICAS.labels(pool=pool, state="desired").set(desired)
    POOL_REPLICAS.labels(pool=pool, state="ready").set(ready)
    POOL_UTILIZATION.labels(pool=pool).set(utilization)


def forget_pool(pool: str) -> None:
    for gauge, labels in (
        (POOL_REPLICAS, (pool, "desired")),
        (POOL_REPLICAS, (pool, "ready")),
        (POOL_UTILIZATION, (pool,)),
    ):
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
