"""TunnelQuota: the quota status controller, and the quota glue the Tunnel controller, the
webhook and the traffic collector call. The rules themselves are pure (domain/quota).

What counts (the gate's view): the namespace's bound Tunnels, from the allocation table's
per-namespace index; the Tunnels the gate turned away (`Runtime.quota_waiting`); and the
namespace's traffic this period (`Runtime.quota_traffic`), refreshed by the traffic
collector each round, on quota changes and on deletions.

A quota's status has two writers in this process: this controller and the deletion ledger
(`record_deletion`). Both write guarded by resourceVersion, so neither undoes the other.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import TunnelQuota, TunnelQuotaStatus, bits_per_second
from tunnelop.controllers import quotametrics
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.status import merge_patch, status_dict, utcnow
from tunnelop.domain import conditions
from tunnelop.domain.quota import (
    DeletedTraffic,
    Hold,
    Limits,
    TunnelUse,
    Usage,
    namespace_hold,
    namespace_traffic,
    quota_status,
    tunnel_period_bytes,
)
from tunnelop.domain.quota.period import period_start
from tunnelop.domain.scheduling import TunnelKey
from tunnelop.platform import logs
from tunnelop.platform.kube import KubeError
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)
# A status change that only moves figures (traffic, messages) is written at most this often
# per quota; a change of a condition's status or reason, of used.tunnels or used.bandwidth, or
# of the deletion ledger is written at once.
FIGURES_WRITE_INTERVAL = 30.0
CONFLICT_RETRIES = 5


# ---- what a namespace uses ---------------------------------------------------------------------


def use_of(body: dict[str, Any], limits: Limits) -> TunnelUse:
    """What one Tunnel (as stored) takes from its namespace's quota, read from the object
    without validating it whole (admission reads every Tunnel of the namespace)."""
    meta, spec = body["metadata"], body.get("spec") or {}
    bandwidth = None
    written = spec.get("bandwidth")
    if written is not None:
        try:
            bandwidth = bits_per_second(written)
        except (TypeError, ValueError):
            bandwidth = None
    elif limits.bandwidth_per_tunnel is not None:
        bandwidth = limits.bandwidth_per_tunnel.value
    relay = spec.get("relay") if isinstance(spec.get("relay"), dict) else {}
    return TunnelUse(
        key=(meta["namespace"], meta["name"]),
        bandwidth=bandwidth,
        protocol=str(spec.get("protocol") or ""),
        pool=relay.get("pool"),
    )


def namespace_uses(rt: Runtime, namespace: str, limits: Limits) -> list[TunnelUse]:
    """The namespace's Tunnels as admission counts them: waiting ones included, those being
    deleted left out."""
    uses = []
    for key in rt.cache.tunnels_in(namespace):
        body = rt.cache.tunnels.get(key)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            uses.append(use_of(body, limits))
    return uses


def bound_bandwidths(rt: Runtime, namespace: str) -> dict[TunnelKey, int | None]:
    """The namespace's bound Tunnels and their effective bandwidth: what the gate counts."""
    return {key: a.bandwidth for key, a in rt.table.allocations_in(namespace).items()}


def pools_limit(limits: Limits) -> str:
    """hard.pools as the scheduler's refusal names it, with the quotas that set it."""
    return " and ".join(limit.described() for limit in limits.pools) or "hard.pools"


# ---- traffic and holds -------------------------------------------------------------------------


def live_traffic(rt: Runtime, namespace: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(uid, traffic) of the namespace's Tunnels: the traffic collector's last reading where
    there is one (newer than status), else status.traffic."""
    found = []
    for key in rt.cache.tunnels_in(namespace):
        body = rt.cache.tunnels.get(key) or {}
        uid = (body.get("metadata") or {}).get("uid") or ""
        observed = rt.traffic.get(key)
        if observed is not None and observed.period_start is not None:
            traffic: dict[str, Any] | None = {
                "periodStart": observed.period_start,
                "periodBytes": observed.period_bytes,
            }
        else:
            traffic = (body.get("status") or {}).get("traffic")
        found.append((uid, traffic))
    return found


def ledgers(rt: Runtime, namespace: str) -> list[DeletedTraffic]:
    return [DeletedTraffic.from_status(q.get("status")) for q in rt.cache.quotas_in(namespace)]


def traffic_used(rt: Runtime, namespace: str, now: datetime.datetime) -> int:
    """The namespace's bytes this period. Every quota of the namespace records each deletion;
    one created later has recorded fewer, so the largest count is the namespace's."""
    live = live_traffic(rt, namespace)
    counts = [namespace_traffic(live, ledger, now) for ledger in ledgers(rt, namespace)]
    return max(counts, default=namespace_traffic(live, DeletedTraffic(), now))


def refresh_traffic(rt: Runtime, namespace: str, now: datetime.datetime) -> bool:
    """Recount the namespace's traffic (only where a quota caps it); True when the namespace's
    hold changed, so that its Tunnels are to be reconciled."""
    limits = rt.cache.limits(namespace)
    before = hold_of(rt, namespace, now)
    if limits.monthly_traffic is None:
        rt.quota_traffic.pop(namespace, None)
    else:
        rt.quota_traffic[namespace] = traffic_used(rt, namespace, now)
    return hold_of(rt, namespace, now) != before


def hold_of(rt: Runtime, namespace: str, now: datetime.datetime) -> Hold | None:
    """Whether the namespace's Tunnels are stopped (kill switch, traffic cap), and why."""
    if namespace not in rt.cache.quotas:
        return None
    limits = rt.cache.limits(namespace)
    return namespace_hold(limits, rt.quota_traffic.get(namespace, 0), now)


# ---- re-queueing, without polling --------------------------------------------------------------


def requeue_quotas(rt: Runtime, namespace: str) -> None:
    if rt.quota_queue is None:
        return
    for body in rt.cache.quotas_in(namespace):
        rt.quota_queue.add((namespace, body["metadata"]["name"]))


def requeue_namespace(rt: Runtime, namespace: str) -> None:
    """Every Tunnel of the namespace (waiting ones first, in creation order), and its quotas."""
    assert rt.tunnel_queue is not None
    waiting = _in_creation_order(rt, rt.quota_waiting.get(namespace, ()))
    for key in [*waiting, *rt.cache.tunnels_in(namespace)]:
        rt.tunnel_queue.add(key)
    requeue_quotas(rt, namespace)


def requeue_waiting(rt: Runtime, namespace: str) -> None:
    """Room may have appeared: the Tunnels the gate turned away, in creation order."""
    assert rt.tunnel_queue is not None
    for key in _in_creation_order(rt, rt.quota_waiting.get(namespace, ())):
        rt.tunnel_queue.add(key)
    requeue_quotas(rt, namespace)


def _in_creation_order(rt: Runtime, keys: Iterable[TunnelKey]) -> list[TunnelKey]:
    def created(key: TunnelKey) -> tuple[str, TunnelKey]:
        meta = (rt.cache.tunnels.get(key) or {}).get("metadata") or {}
        return (str(meta.get("creationTimestamp") or ""), key)

    return sorted(keys, key=created)


def mark_waiting(rt: Runtime, key: TunnelKey) -> None:
    waiting = rt.quota_waiting.setdefault(key[0], set())
    if key not in waiting:
        waiting.add(key)
        requeue_quotas(rt, key[0])


def unmark_waiting(rt: Runtime, key: TunnelKey) -> None:
    waiting = rt.quota_waiting.get(key[0])
    if waiting is not None and key in waiting:
        waiting.discard(key)
        if not waiting:
            del rt.quota_waiting[key[0]]
        requeue_quotas(rt, key[0])


# ---- deleted Tunnels' bytes --------------------------------------------------------------------


async def record_deletion(rt: Runtime, key: TunnelKey, body: dict[str, Any]) -> None:
    """Move a deleted Tunnel's bytes of this period into every TunnelQuota of its namespace
    (status.deletedBytes, its UID in deletingTunnels), before its finalizer goes. Safe to
    repeat: a UID already recorded adds nothing."""
    namespace = key[0]
    uid = body["metadata"].get("uid") or ""
    if not uid or namespace not in rt.cache.quotas:
        return
    now = utcnow()
    observed = rt.traffic.get(key)
    if observed is not None and observed.period_start is not None:
        same = period_start(observed.period_start) == period_start(now)
        carried = observed.period_bytes if same else 0
    else:
        carried = tunnel_period_bytes((body.get("status") or {}).get("traffic"), now)
    for quota in rt.cache.quotas_in(namespace):
        await _record_in(rt, quota, uid, carried, now)
    refresh_traffic(rt, namespace, now)
    requeue_quotas(rt, namespace)


async def _record_in(
    rt: Runtime, quota: dict[str, Any] | None, uid: str, carried: int, now: datetime.datetime
) -> None:
    for _ in range(CONFLICT_RETRIES):
        if quota is None:
            return  # the quota is gone: nothing to count in
        meta = quota["metadata"]
        ledger = DeletedTraffic.from_status(quota.get("status"))
        recorded = ledger.record(uid, carried, now)
        if recorded is None:
            log.warning("deletion ledger full; the deletion waits", quota=meta["name"])
            raise Requeue(5)
        if recorded == ledger:
            return
        try:
            written = await rt.kube.patch_status(
                "TunnelQuota",
                meta["name"],
                meta["namespace"],
                recorded.to_status(),
                resource_version=meta["resourceVersion"],
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
            quota = await rt.kube.get(
                "tunnelop.dev/v1alpha1", "TunnelQuota", meta["name"], meta["namespace"]
            )
            continue
        if written:
            rt.cache.remember_quota(written)
        return
    raise Requeue(0.5)


# ---- the quota's status ------------------------------------------------------------------------


async def reconcile(rt: Runtime, key: TunnelKey) -> None:
    namespace, name = key
    body = rt.cache.quota(namespace, name)
    if body is None:
        rt.quota_written_at.pop(key, None)
        quotametrics.forget_quota(namespace, name)
        return
    try:
        quota = TunnelQuota.model_validate(body)
    except ValidationError:
        return  # named in the log by Caches.limits; the API server's schema refuses most
    now = utcnow()
    limits = rt.cache.limits(namespace)
    existing = typed_status(body.get("status"))
    ledger = DeletedTraffic.from_status(body.get("status")).forget_gone(
        (rt.cache.tunnels.get(k) or {}).get("metadata", {}).get("uid", "")
        for k in rt.cache.tunnels_in(namespace)
    )
    traffic = namespace_traffic(live_traffic(rt, namespace), ledger, now)
    bound = bound_bandwidths(rt, namespace)
    usage = Usage.of(
        (TunnelUse(k, b) for k, b in bound.items()),
        traffic,
        waiting=len(rt.quota_waiting.get(namespace, ())),
    )
    quotametrics.export_quota(quota, usage, limits, hold_of(rt, namespace, now))
    new = typed_status(quota_status(quota, limits, usage, ledger, now, existing.get("conditions")))
    if new == existing:
        return
    if _figures_only(existing, new):
        waited = time.monotonic() - rt.quota_written_at.get(key, 0.0)
        if waited < FIGURES_WRITE_INTERVAL:
            raise Requeue(FIGURES_WRITE_INTERVAL - waited)
    try:
        written = await rt.kube.patch_status(
            "TunnelQuota",
            name,
            namespace,
            merge_patch(existing, new),
            resource_version=body["metadata"]["resourceVersion"],
        )
    except KubeError as exc:
        if exc.status == 409:  # the deletion ledger wrote first: again, from the newer object
            fresh = await rt.kube.get("tunnelop.dev/v1alpha1", "TunnelQuota", name, namespace)
            if fresh is not None:
                rt.cache.remember_quota(fresh)
            raise Requeue(0.1) from exc
        raise
    rt.quota_written_at[key] = time.monotonic()
    if written:
        rt.cache.remember_quota(written)
    _transition_events(rt, body, existing.get("conditions"), new.get("conditions"))


def typed_status(status: dict[str, Any] | None) -> dict[str, Any]:
    """The status through its model, as the API server stores it (unreadable reads as
    empty, and is rewritten)."""
    try:
        return status_dict(TunnelQuotaStatus.model_validate(status or {}))
    except ValidationError:
        return {}


def _figures_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the change moves only figures: traffic, and condition messages."""

    def shape(status: dict[str, Any]) -> tuple:
        used = status.get("used") or {}
        return (
            used.get("tunnels"),
            used.get("bandwidth"),
            status.get("deletedBytes"),
            tuple(status.get("deletingTunnels") or ()),
            status.get("periodStart"),
            status.get("observedGeneration"),
            tuple(
                (c.get("type"), c.get("status"), c.get("reason"))
                for c in status.get("conditions") or []
            ),
        )

    return bool(old) and shape(old) == shape(new)


def _transition_events(
    rt: Runtime,
    body: dict[str, Any],
    old: list[dict[str, Any]] | None,
    new: list[dict[str, Any]] | None,
) -> None:
    for type_ in ("Exceeded", "Suspended"):
        before, after = conditions.find(old, type_), conditions.find(new, type_)
        if after is None:
            continue
        was = before is not None and before.get("status") == "True"
        now_true = after.get("status") == "True"
        if now_true and (not was or before.get("reason") != after.get("reason")):
            rt.post_event(body, "Warning", after["reason"], after["message"])
        elif was and not now_true:
            reason = "Resumed" if type_ == "Suspended" else "WithinLimits"
            rt.post_event(body, "Normal", reason, after["message"])
