"""The Tunnel controller: bind a tunnel to a relay, keep its credentials Secret and its entry
in the relay's table, and report status. Read, compute, apply, report — nothing else.

It writes only the tunnel's status and its finalizer (invariant 5): Git stays the source of
truth of the spec, and the operator's bookkeeping lives in status.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import (
    HTTP_PROTOCOLS,
    Tunnel,
    TunnelStatus,
    error_messages,
)
from tunnelop.builders.frpc import build_frpc_config, endpoint
from tunnelop.builders.relay import build_credentials_secret, config_checksum
from tunnelop.contract import naming
from tunnelop.contract.table import TableEntry, token_sha256
from tunnelop.controllers import pools, quotas
from tunnelop.controllers.state import FINALIZER, Runtime
from tunnelop.controllers.status import merge_patch, status_dict, utcnow
from tunnelop.controllers.traffic import COUNTED_FIELDS, client_condition, client_of
from tunnelop.domain import conditions
from tunnelop.domain.quota import (
    NAMESPACE_SUSPENDED,
    QUOTA_EXCEEDED,
    TRAFFIC_QUOTA_EXCEEDED,
    Hold,
    allowed_pools,
    effective_bandwidth,
    may_bind,
    tunnel_hold_condition,
    tunnel_use,
)
from tunnelop.domain.scheduling import (
    CUSTOM_DOMAIN_NOT_ALLOWED,
    CUSTOM_DOMAIN_TAKEN,
    NO_RELAY_MATCHES,
    PORT_NOT_ALLOWED,
    PORT_TAKEN,
    PROTOCOL_NOT_ALLOWED,
    SUBDOMAIN_TAKEN,
    Allocation,
    TunnelKey,
    TunnelRequest,
    Unschedulable,
)
from tunnelop.platform import logs, metrics
from tunnelop.platform.workqueue import Requeue

log = logs.get(__name__)


async def reconcile(rt: Runtime, key: TunnelKey) -> None:
    body = rt.cache.tunnels.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        await _release(rt, key, body)
        return
    body = await rt.kube.add_finalizer("Tunnel", body, FINALIZER)  # normally set at admission
    rt.cache.remember_tunnel(key, body)
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    try:
        tunnel = Tunnel.model_validate(body)
    except ValidationError as error:  # admitted before a rule existed, or webhook bypassed
        # Nothing is enforced for a spec the operator cannot read: off every relay's table.
        if rt.table.release(key) is not None:
            quotas.requeue_waiting(rt, key[0])
        assert rt.tables is not None
        await rt.tables.remove_everywhere(key)
        await _report(
            rt,
            body,
            _typed(
                _unbound_status(status, generation, "InvalidSpec", "; ".join(error_messages(error)))
            ),
        )
        return

    limits = rt.cache.limits(key[0])
    now = utcnow()
    hold = quotas.hold_of(rt, key[0], now)
    bandwidth = effective_bandwidth(tunnel.spec, limits)
    previous = rt.table.allocation_of(key)
    why_moved = rt.table.misplacement(key)
    request = replace(
        TunnelRequest.from_tunnel(tunnel),
        bandwidth=bandwidth,
        table_bytes=table_bytes_of(
            tunnel, tunnel.spec.remote_port, tunnel.spec.subdomain, bandwidth
        ),
        pools=allowed_pools(limits),
        pools_limit=quotas.pools_limit(limits),
    )
    # The quota gate and the binding below run with no await in between: the event loop is
    # the allocation table's single writer, so the namespace's bound count is exact.
    if previous is None and limits.quotas:
        decision = may_bind(
            limits,
            quotas.bound_bandwidths(rt, key[0]),
            tunnel_use(tunnel, limits),
            rt.quota_traffic.get(key[0], 0),
            now,
        )
        if not decision.allowed:
            assert decision.reason is not None
            await _wait_for_quota(
                rt, key, body, status, generation, decision.reason, decision.message
            )
            return
    quotas.unmark_waiting(rt, key)
    result = rt.table.schedule(request, prefer=_from_status(key, status, tunnel.spec.protocol))
    if previous is not None and (
        isinstance(result, Unschedulable) or (result.bandwidth or 0) < (previous.bandwidth or 0)
    ):
        quotas.requeue_waiting(rt, key[0])  # room freed in the namespace's quota
    elif previous is None and not isinstance(result, Unschedulable):
        quotas.requeue_quotas(rt, key[0])  # one more in use
    if isinstance(result, Unschedulable):
        rt.unschedulable.add(key)
        pools.waiting_for_room(rt, key, request, result)
        assert rt.tables is not None
        await rt.tables.remove_everywhere(key)  # a no-op unless it was bound
        new = _typed(_unbound_status(status, generation, result.reason, result.message))
        if new != _typed(status):
            await _report(rt, body, new)
            if conditions.find(status.get("conditions"), "Scheduled") != conditions.find(
                new["conditions"], "Scheduled"
            ):
                _event(rt, body, "Warning", result.reason, result.message)
        return
    rt.unschedulable.discard(key)
    pools.not_waiting(rt, key)

    relay = rt.cache.relays.get(result.relay, {})
    relay_status = relay.get("status") or {}
    address = relay_status.get("publicAddress")
    relay_secrets = rt.relay_secrets.get(result.relay)
    if not address or relay_secrets is None:
        raise Requeue(0.5)  # the relay controller has not set it up yet

    # The token stays until its Secret is deleted (which rotates it).
    token = rt.tokens.get(key)
    if token is None:
        token = rt.tokens[key] = secrets.token_urlsafe(24)
    assert rt.tables is not None
    entry = _table_entry(
        tunnel,
        result.port,
        result.subdomain,
        token_sha256=token_sha256(token),
        bandwidth=bandwidth,
        held=hold is not None,
    )
    rt.tables.set_entry(result.relay, entry)
    if previous is not None and previous.relay != result.relay:
        rt.tables.drop_entry(previous.relay, key)
        await rt.tables.sync(previous.relay, key)
    await rt.tables.sync(result.relay, key)
    # Credentials only once the relay's table has the tunnel: an frpc started from the
    # Secret at once is let in at its first login, not after frpc's retry back-off.
    await _write_credentials(rt, tunnel, result, address, relay_secrets.token, token)

    # Read again after the table write's wait: the relay may have become ready meanwhile.
    relay_status = rt.cache.relays.get(result.relay, {}).get("status") or {}
    relay_ready = conditions.is_true(relay_status.get("conditions"), "Ready")
    new = _bound_status(status, generation, tunnel, result, address, relay_ready, hold)
    stuck = rt.table.stuck(key)
    if stuck is not None:
        new["conditions"] = conditions.merge(
            new["conditions"],
            conditions.condition(
                "Scheduled",
                True,
                "MovePending",
                f"{rt.table.misplacement(key)}; no other relay takes the tunnel, so it stays "
                f"on {result.relay} for now: {stuck.message}",
                generation,
            ),
        )
    _add_traffic(rt, new, tunnel, result.relay, hold is not None)
    new = _typed(new)
    if new != _typed(status):
        await _report(rt, body, new)
        old_relay, old_port = status.get("relayNode"), status.get("remotePort")
        if old_relay is None:
            metrics.scheduling.bound(key)
            where = (
                f"{result.relay}:{result.port}"
                if result.port
                else f"{result.relay} ({new['endpoint']})"
            )
            _event(rt, body, "Normal", "Scheduled", f"Bound to relay {where}")
        elif (old_relay, old_port) != (result.relay, result.port):
            because = f" ({why_moved})" if why_moved else ""
            _event(
                rt,
                body,
                "Normal",
                "Moved",
                f"Moved from {old_relay}:{old_port} to {result.relay}:{result.port}{because}; "
                f"new endpoint {new['endpoint']}",
            )
        _suspension_event(rt, body, status, result.relay, new)


# ---- pieces ------------------------------------------------------------------------------


def _add_traffic(rt: Runtime, new: dict[str, Any], tunnel: Tunnel, relay: str, held: bool) -> None:
    """status.traffic and ClientConnected from the last reading of the relay's agent (and, for
    an InCluster tunnel, from what the client controller found)."""
    key = (tunnel.metadata.namespace or "", tunnel.metadata.name or "")
    observed = rt.traffic.get(key)
    if observed is not None and observed.relay != relay:
        observed = None  # read before a move: nothing to say about the new relay yet
    if observed is not None:
        traffic = observed.traffic()
        shown = new.get("traffic") or {}
        if "lastSeen" in shown and all(traffic.get(f) == shown.get(f) for f in COUNTED_FIELDS):
            # A heartbeat alone is no reason to write: lastSeen moves with the counted figures.
            traffic["lastSeen"] = shown["lastSeen"]
        new["traffic"] = traffic
    suspended = tunnel.spec.suspended or held
    client = client_condition(
        observed, suspended, key[1], new["observedGeneration"], *client_of(rt, key)
    )
    if client is not None:
        new["conditions"] = conditions.merge(new["conditions"], client)


STOPPED = ("TunnelSuspended", NAMESPACE_SUSPENDED, TRAFFIC_QUOTA_EXCEEDED)


def _suspension_event(
    rt: Runtime, body: dict[str, Any], old: dict[str, Any], relay: str, new: dict[str, Any]
) -> None:
    """An Event when the tunnel stops (its own spec.suspended, or its namespace held by a
    TunnelQuota) or runs again."""
    before = (conditions.find(old.get("conditions"), "Ready") or {}).get("reason")
    after = (conditions.find(new.get("conditions"), "Ready") or {}).get("reason")
    if before == after:
        return
    if after == "TunnelSuspended":
        message = f"Relay {relay} refuses the tunnel's visitors and client"
        _event(rt, body, "Normal", "Suspended", message)
    elif after in STOPPED:
        ready = conditions.find(new.get("conditions"), "Ready") or {}
        _event(
            rt,
            body,
            "Warning",
            after,
            f"Relay {relay} refuses the tunnel's visitors and client: {ready.get('message', '')}",
        )
    elif before in STOPPED:
        _event(rt, body, "Normal", "Resumed", f"Visitors connect to {new['endpoint']}")


def _from_status(key: TunnelKey, status: dict[str, Any], protocol: str) -> Allocation | None:
    """The binding recorded in status: kept across restarts and moves when still possible."""
    relay = status.get("relayNode")
    if not relay:
        return None
    return Allocation(
        key=key,
        relay=relay,
        protocol=protocol,
        port=status.get("remotePort"),
        subdomain=status.get("subdomain"),
        http_domain=None,
        bandwidth=None,
    )


# Stand-ins for what is not allocated yet, as long as the longest real value: a tunnel's
# table entry is sized before it has a port or subdomain.
_LONGEST_PORT = 65535
_LONGEST_SUBDOMAIN = "x" * 63
_DIGEST_SIZED = "0" * 64


def table_bytes_of(
    tunnel: Tunnel, port: int | None, subdomain: str | None, bandwidth: int | None
) -> int:
    """The size of the tunnel's entry in its relay's table: an upper bound while the port or
    subdomain is still to be allocated, and always as if suspended. A suspension (the
    tenant's, or its namespace's) grows the entry and must never be refused for want of
    room, so the room is counted from the start."""
    if tunnel.spec.protocol in HTTP_PROTOCOLS:
        port, subdomain = None, subdomain or _LONGEST_SUBDOMAIN
    else:
        port, subdomain = port or _LONGEST_PORT, None
    entry = _table_entry(
        tunnel, port, subdomain, token_sha256=_DIGEST_SIZED, bandwidth=bandwidth, held=True
    )
    return entry.size()


def _table_entry(
    tunnel: Tunnel,
    port: int | None,
    subdomain: str | None,
    *,
    token_sha256: str,
    bandwidth: int | None,
    held: bool,
) -> TableEntry:
    """The tunnel's entry in its relay's table. `bandwidth` is the effective limit (its
    namespace's hard.bandwidthPerTunnel when spec.bandwidth is unset), which the agent
    enforces; `held`: its namespace is stopped by a TunnelQuota, so the agent refuses it as
    when spec.suspended is true (the spec itself is never written)."""
    spec = tunnel.spec
    return TableEntry(
        namespace=tunnel.metadata.namespace or "",
        name=tunnel.metadata.name or "",
        token_sha256=token_sha256,
        protocol=spec.protocol,
        remote_port=port,
        subdomain=subdomain,
        # Sorted as the table stores them, so that a read-back table compares equal.
        custom_domains=tuple(sorted(spec.custom_domains)),
        bandwidth_bps=bandwidth,
        allow_source_ranges=tuple(sorted(spec.allow_source_ranges)),
        suspended=spec.suspended or held,
    )


async def _write_credentials(
    rt: Runtime, tunnel: Tunnel, alloc: Allocation, address: str, relay_token: str, token: str
) -> None:
    """The `<tunnel>-frpc` Secret: the token and a ready-to-run frpc.toml (written only
    when it changes)."""
    key = (tunnel.metadata.namespace or "", tunnel.metadata.name or "")
    frpc_toml = build_frpc_config(
        namespace=key[0],
        tunnel_name=key[1],
        protocol=tunnel.spec.protocol,
        server_addr=address,
        server_port=naming.CONTROL_PORT,
        relay_token=relay_token,
        tunnel_token=token,
        remote_port=alloc.port,
        subdomain=alloc.subdomain,
        custom_domains=tuple(tunnel.spec.custom_domains),
    )
    checksum = config_checksum(frpc_toml, token)
    if rt.credential_checksums.get(key) != checksum:
        secret = build_credentials_secret(
            key[0], key[1], tunnel.metadata.uid or "", frpc_toml=frpc_toml, token=token
        )
        await rt.kube.apply(secret)
        rt.credential_checksums[key] = checksum


def _bound_status(
    status: dict[str, Any],
    generation: int | None,
    tunnel: Tunnel,
    alloc: Allocation,
    address: str,
    relay_ready: bool,
    hold: Hold | None = None,
) -> dict[str, Any]:
    visitors = endpoint(
        tunnel.spec.protocol, address, alloc.port, alloc.subdomain, alloc.http_domain
    )
    if hold is not None:  # the provider's switch comes before the tenant's
        ready = tunnel_hold_condition(hold, generation)
    elif tunnel.spec.suspended:
        ready = conditions.condition(
            "Ready",
            False,
            "TunnelSuspended",
            "spec.suspended is true: the relay refuses the tunnel's client and visitors",
            generation,
        )
    else:
        ready = conditions.condition(
            "Ready",
            relay_ready,
            "TunnelReady" if relay_ready else "RelayNotReady",
            f"Visitors connect to {visitors}"
            if relay_ready
            else f"Relay {alloc.relay} is not ready yet",
            generation,
        )
    scheduled = conditions.condition(
        "Scheduled", True, "Scheduled", f"Bound to relay {alloc.relay}", generation
    )
    new = {
        **status,
        "observedGeneration": generation,
        "relayNode": alloc.relay,
        "remotePort": alloc.port,
        "subdomain": alloc.subdomain,
        "endpoint": visitors,
        "url": visitors if tunnel.spec.protocol in ("http", "https") else None,
        "credentialsSecret": naming.credentials_secret_name(tunnel.metadata.name or ""),
        "conditions": conditions.without(
            conditions.merge(status.get("conditions"), scheduled, ready), STALLED
        ),
    }
    return {k: v for k, v in new.items() if v is not None}


# Reasons a tunnel waits for someone to change it or the provider's objects. kstatus (Flux,
# kpt) reads Ready=False as still in progress; Stalled=True, shown only while one of these
# holds, tells it the tunnel failed (docs/gitops.md). The other reasons resolve by themselves.
STALLED = "Stalled"
STALLED_REASONS = frozenset(
    {
        "InvalidSpec",
        NO_RELAY_MATCHES,
        PROTOCOL_NOT_ALLOWED,
        PORT_NOT_ALLOWED,
        CUSTOM_DOMAIN_NOT_ALLOWED,
        PORT_TAKEN,
        SUBDOMAIN_TAKEN,
        CUSTOM_DOMAIN_TAKEN,
        QUOTA_EXCEEDED,
    }
)


def _unbound_status(
    status: dict[str, Any], generation: int | None, reason: str, message: str
) -> dict[str, Any]:
    scheduled = conditions.condition("Scheduled", False, reason, message, generation)
    ready = conditions.condition("Ready", False, reason, message, generation)
    found = conditions.merge(status.get("conditions"), scheduled, ready)
    if reason in STALLED_REASONS:
        stalled = conditions.condition(STALLED, True, reason, message, generation)
        found = conditions.merge(found, stalled)
    else:
        found = conditions.without(found, STALLED)
    keep = {k: v for k, v in status.items() if k in ("traffic", "credentialsSecret")}
    return {**keep, "observedGeneration": generation, "conditions": found}


def _typed(status: dict[str, Any]) -> dict[str, Any]:
    """The status through its model, as the API server would store it. A status the operator
    wrote before a field's rules changed, or one edited by hand, reads as empty (rewritten)."""
    try:
        return status_dict(TunnelStatus.model_validate(status))
    except ValidationError:
        return {}


async def _report(rt: Runtime, body: dict[str, Any], status: dict[str, Any]) -> None:
    meta = body["metadata"]
    patch = merge_patch(body.get("status") or {}, status)
    result = await rt.kube.patch_status("Tunnel", meta["name"], meta["namespace"], patch)
    if result:
        rt.cache.remember_tunnel((meta["namespace"], meta["name"]), result)


def _event(rt: Runtime, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Posted in the background: an Event informs, it must not slow or fail a reconcile."""
    rt.post_event(body, type_, reason, message)


async def _wait_for_quota(
    rt: Runtime,
    key: TunnelKey,
    body: dict[str, Any],
    status: dict[str, Any],
    generation: int | None,
    reason: str,
    message: str,
) -> None:
    """The quota gate turned the tunnel away: it waits, remembered, until room appears."""
    quotas.mark_waiting(rt, key)
    pools.not_waiting(rt, key)
    rt.unschedulable.discard(key)
    assert rt.tables is not None
    await rt.tables.remove_everywhere(key)  # a no-op unless a table still names it
    new = _typed(_unbound_status(status, generation, reason, message))
    if new != _typed(status):
        await _report(rt, body, new)
        before = conditions.find(status.get("conditions"), "Scheduled") or {}
        if before.get("reason") != reason or before.get("status") != "False":
            _event(rt, body, "Warning", reason, message)


async def _release(rt: Runtime, key: TunnelKey, body: dict[str, Any] | None) -> None:
    """Free the port or subdomain, take the tunnel out of its relay's table, count its bytes
    into its namespace's quotas, then let the tunnel go (finalizer)."""
    rt.unschedulable.discard(key)
    pools.not_waiting(rt, key)
    released = rt.table.release(key)
    quotas.unmark_waiting(rt, key)
    if released is not None:
        quotas.requeue_waiting(rt, key[0])  # its place is free for a waiting tunnel
    assert rt.tables is not None
    # Off every relay whose table names it (one normally; two after a crash mid-move) before
    # the finalizer goes: its token must not outlive the tunnel.
    await rt.tables.remove_everywhere(key)
    rt.tokens.pop(key, None)
    rt.credential_checksums.pop(key, None)
    if body is None:
        return
    # Its bytes this period stay counted once it is gone (idempotent by UID).
    await quotas.record_deletion(rt, key, body)
    await rt.kube.remove_finalizer("Tunnel", body, FINALIZER)
    if released is not None:
        target = released.port or released.subdomain
        _event(rt, body, "Normal", "Released", f"Released {released.relay}:{target}")
