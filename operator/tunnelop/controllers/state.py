"""The operator's in-memory state, shared by its controllers: the latest objects seen by the
watches (the caches), the allocation table, the work queues, and the writer of each relay's
allocation table Secret.

One process owns it and one event loop mutates it, so the allocation table needs no locks:
every scheduling decision is taken synchronously between two awaits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunnelop.api.v1alpha1 import RelayNode
from tunnelop.builders.relay import build_service, build_table_secret
from tunnelop.contract import naming
from tunnelop.contract.table import TableEntry
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import AllocationTable, TunnelKey
from tunnelop.platform import logs, metrics
from tunnelop.platform.kube import Kube
from tunnelop.platform.workqueue import WorkQueue

if TYPE_CHECKING:
    from tunnelop.controllers.traffic import TrafficCollector

log = logs.get(__name__)
FINALIZER = "tunnelop.dev/finalizer"


@dataclass
class RelaySecrets:
    """The relay-wide frps token and dashboard password, kept in its config Secret."""

    token: str
    dashboard_password: str


@dataclass
class Runtime:
    kube: Kube
    relay_namespace: str
    table: AllocationTable = field(default_factory=AllocationTable)
    tunnels: dict[TunnelKey, dict[str, Any]] = field(default_factory=dict)
    relays: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    relay_secrets: dict[str, RelaySecrets] = field(default_factory=dict)
    # Tunnel credentials as read from their Secrets: token, and the frpc.toml checksum.
    tokens: dict[TunnelKey, str] = field(default_factory=dict)
    credential_checksums: dict[TunnelKey, str] = field(default_factory=dict)
    # Tunnels that fit nowhere: retried when a relay changes, not by polling.
    unschedulable: set[TunnelKey] = field(default_factory=set)
    tunnel_queue: WorkQueue[TunnelKey] | None = None
    relay_queue: WorkQueue[str] | None = None
    tables: RelayTables | None = None
    traffic: TrafficCollector | None = None
    informers: list[Any] = field(default_factory=list)
    # Every RelayNode as last seen, for admission: known as soon as it is watched, before the
    # relay controller has run its workload.
    relay_views: dict[str, RelayView] = field(default_factory=dict)
    # subdomain -> tunnels that ask for or hold it (for the webhook's uniqueness check)
    subdomains: dict[str, set[TunnelKey]] = field(default_factory=dict)

    def remember_tunnel(self, key: TunnelKey, body: dict[str, Any]) -> None:
        self._index_subdomain(key, self.tunnels.get(key), remove=True)
        self.tunnels[key] = body
        self._index_subdomain(key, body)

    def forget_tunnel(self, key: TunnelKey) -> None:
        self._index_subdomain(key, self.tunnels.pop(key, None), remove=True)

    def _index_subdomain(
        self, key: TunnelKey, body: dict[str, Any] | None, remove: bool = False
    ) -> None:
        if not body:
            return
        for sub in {
            (body.get("spec") or {}).get("subdomain"),
            (body.get("status") or {}).get("subdomain"),
        }:
            if not isinstance(sub, str):
                continue
            holders = self.subdomains.setdefault(sub, set())
            if remove:
                holders.discard(key)
                if not holders:
                    del self.subdomains[sub]
            else:
                holders.add(key)

    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        async def post() -> None:
            try:
                await self.kube.event(
                    body,
                    type_=type_,
                    reason=reason,
                    message=message,
                    namespace=body["metadata"].get("namespace") or self.relay_namespace,
                )
            except Exception as exc:  # e.g. the namespace is being deleted
                log.debug("cannot post event", reason=reason, error=str(exc))

        task = asyncio.create_task(post())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        if self.traffic is not None:
            await self.traffic.stop()
        for informer in self.informers:
            await informer.stop()
        for queue in (self.tunnel_queue, self.relay_queue):
            if queue is not None:
                await queue.stop()
        await self.kube.close()

    def retry_unschedulable(self) -> None:
        assert self.tunnel_queue is not None
        for key in list(self.unschedulable):
            self.tunnel_queue.add(key)


class RelayTables:
    """Writes each relay's allocation table Secret (what its agent enforces) and the ports of
    its Service, coalescing bursts: a tunnel reconcile sets its entry and awaits the write
    that includes it, and many tunnels share one write."""

    def __init__(self, runtime: Runtime, debounce: float = 0.2) -> None:
        self.runtime = runtime
        self.debounce = debounce
        self.desired: dict[str, dict[TunnelKey, TableEntry]] = {}
        self._written: dict[str, dict[TunnelKey, TableEntry]] = {}
        self._written_ports: dict[str, list[tuple[int, str]]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    def set_entry(self, relay: str, entry: TableEntry) -> None:
        self.desired.setdefault(relay, {})[(entry.namespace, entry.name)] = entry

    def drop_entry(self, relay: str, key: TunnelKey) -> None:
        self.desired.get(relay, {}).pop(key, None)

    def in_sync(self, relay: str, key: TunnelKey) -> bool:
        return self._written.get(relay, {}).get(key) == self.desired.get(relay, {}).get(key)

    def remember_written(self, relay: str, entries: dict[TunnelKey, TableEntry]) -> None:
        """At start-up: what the relay's Secret holds already (so no rewrite is needed)."""
        self._written[relay] = dict(entries)
        self.desired[relay] = dict(entries)

    def forget(self, relay: str) -> None:
        self.desired.pop(relay, None)
        self._written.pop(relay, None)
        self._written_ports.pop(relay, None)

    async def sync(self, relay: str, key: TunnelKey) -> None:
        """Return once the relay's table Secret holds the key's current entry (or its
        absence); free when it already does."""
        if relay in self._written and self.in_sync(relay, key):
            return
        await self.flush(relay)

    async def ensure(self, relay: str) -> None:
        """Write the relay's table once if it never was: a new relay's agent needs a table,
        even an empty one, to know it is not missing one."""
        if relay not in self._written:
            await self.flush(relay)

    async def flush(self, relay: str) -> None:
        """Return once the relay's table Secret holds everything set before this call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(relay, []).append(future)
        if relay not in self._writers or self._writers[relay].done():
            self._writers[relay] = asyncio.create_task(self._write_loop(relay))
        await future

    async def _write_loop(self, relay: str) -> None:
        while self._waiters.get(relay):
            await asyncio.sleep(self.debounce)  # let a burst of tunnels join this write
            waiters, self._waiters[relay] = self._waiters[relay], []
            snapshot = dict(self.desired.get(relay, {}))
            try:
                await self._write(relay, snapshot)
            except Exception as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            self._written[relay] = snapshot
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def _write(self, relay: str, entries: dict[TunnelKey, TableEntry]) -> None:
        rt = self.runtime
        relay_body = rt.relays.get(relay)
        if relay_body is None:
            return  # the relay is gone; its table went with it
        model = RelayNode.model_validate(relay_body)
        await rt.kube.apply(build_table_secret(model, rt.relay_namespace, list(entries.values())))
        ports = sorted(
            {
                (e.remote_port, "UDP" if e.protocol == "udp" else "TCP")
                for e in entries.values()
                if e.remote_port
            }
        )
        if ports != self._written_ports.get(relay):
            service = build_service(model, rt.relay_namespace, allocated_ports=ports)
            if service is not None:
                await rt.kube.apply(service)
            self._written_ports[relay] = ports
        await self._report_allocated(relay, relay_body)
        log.debug("relay table written", relay=relay, tunnels=len(entries))

    async def _report_allocated(self, relay: str, body: dict[str, Any]) -> None:
        """Keep RelayNode status.allocated in step with the table (one write per batch)."""
        rt = self.runtime
        usage = rt.table.usage(relay)
        metrics.set_relay_allocations(relay, usage.tunnels)
        allocated: dict[str, Any] = {"tunnels": usage.tunnels, "ports": usage.ports}
        if usage.bandwidth:
            allocated["bandwidth"] = str(usage.bandwidth)
        if (body.get("status") or {}).get("allocated") != allocated:
            result = await rt.kube.patch_status("RelayNode", relay, None, {"allocated": allocated})
            if result:
                rt.relays[relay] = result


def relay_name_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(naming.RELAY_LABEL)
