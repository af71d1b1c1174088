"""The writer of each relay's allocation table Secret (what its agent enforces) and of its
Service (whose ports follow the table): the one writer of both. Bursts are coalesced: a tunnel
reconcile sets its entry and awaits the write that includes it, and many tunnels share one
write. Every write tells the allocation table what the relay may hold while it is in flight
and once it is confirmed (decision 0006)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from tunnelop.api.v1alpha1 import RelayNode
from tunnelop.builders.relay import build_service, build_table_secret
from tunnelop.contract.table import TableEntry
from tunnelop.domain.scheduling import AllocationTable, TunnelKey
from tunnelop.platform import logs
from tunnelop.platform.kube import Kube, KubeError

log = logs.get(__name__)


class RelayModels:
    """RelayNode models by name, parsed once per resourceVersion: a relay is read after every
    table write, and validating its spec each time cost more than the write's bookkeeping."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[str, RelayNode]] = {}

    def of(self, body: dict[str, Any]) -> RelayNode:
        meta = body.get("metadata") or {}
        name, version = meta.get("name") or "", meta.get("resourceVersion")
        found = self._parsed.get(name)
        if version and found is not None and found[0] == version:
            return found[1]
        model = RelayNode.model_validate(body)
        if version:
            self._parsed[name] = (version, model)
        return model

    def forget(self, name: str) -> None:
        self._parsed.pop(name, None)


class RelayTables:
    """Writes each relay's allocation table Secret (what its agent enforces) and the ports of
    its Service, coalescing bursts: a tunnel reconcile sets its entry and awaits the write
    that includes it, and many tunnels share one write."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        table: AllocationTable,
        relays: dict[str, dict[str, Any]],
        written: Callable[[str], None],
        debounce: float = 0.2,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.table = table  # told what each relay's table may hold
        self.relays = relays  # RelayNodes as watched
        self.written = written  # called with the relay after each write
        self.debounce = debounce
        self.models = RelayModels()
        self.desired: dict[str, dict[TunnelKey, TableEntry]] = {}
        self._written: dict[str, dict[TunnelKey, TableEntry]] = {}
        self._applied_services: dict[str, dict[str, Any]] = {}
        self._in_flight: dict[str, dict[TunnelKey, TableEntry]] = {}
        self._recent: dict[str, collections.deque[dict[TunnelKey, TableEntry]]] = {}
        # The resourceVersions of this process's recent writes of each table Secret: the
        # watch event of one of them needs no parsing (a full table, on every write).
        self._own_versions: dict[str, collections.deque[str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # The relay Services as last written, and why the API server refused one.
        self.services: dict[str, dict[str, Any]] = {}
        self.service_errors: dict[str, str] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._last_write: dict[str, float] = {}  # loop time each relay's last write ended

    def set_entry(self, relay: str, entry: TableEntry) -> None:
        self.desired.setdefault(relay, {})[(entry.namespace, entry.name)] = entry

    def drop_entry(self, relay: str, key: TunnelKey) -> None:
        self.desired.get(relay, {}).pop(key, None)

    async def remove_everywhere(self, key: TunnelKey) -> None:
        """Return once no relay's table Secret names the key."""
        relays = [r for r, entries in self.desired.items() if key in entries]
        relays += [r for r, entries in self._written.items() if key in entries and r not in relays]
        for relay in relays:
            self.drop_entry(relay, key)
        await asyncio.gather(*(self.sync(relay, key) for relay in relays))

    def in_sync(self, relay: str, key: TunnelKey) -> bool:
        return self._written.get(relay, {}).get(key) == self.desired.get(relay, {}).get(key)

    def remember_written(self, relay: str, entries: dict[TunnelKey, TableEntry]) -> None:
        """At start-up: what the relay's Secret holds already. It holds its ports and
        subdomains until a write without them succeeds; `desired` starts from it, and
        `prune` then drops what no live allocation accounts for."""
        self._written[relay] = dict(entries)
        self.desired[relay] = dict(entries)
        self.table.table_written(relay, entries.values())

    def prune(self) -> list[str]:
        """Drop from each relay's desired table every entry that no allocation on that relay
        (same tunnel, same port or subdomain) accounts for: deleted tunnels, tunnels that
        moved, entries of a crash between a table write and a status write that the restore
        did not adopt. Returns the relays whose table must be rewritten."""
        table = self.table
        stale = []
        for relay, entries in self.desired.items():
            keep = {}
            for key, entry in entries.items():
                alloc = table.allocation_of(key)
                if (
                    alloc is not None
                    and alloc.relay == relay
                    and (alloc.port, alloc.subdomain) == (entry.remote_port, entry.subdomain)
                ):
                    keep[key] = entry
            if len(keep) != len(entries):
                self.desired[relay] = keep
                stale.append(relay)
        return stale

    def is_own_write(self, relay: str, resource_version: str | None) -> bool:
        """Whether the table Secret at `resource_version` is one this process wrote."""
        return resource_version is not None and resource_version in self._own_versions.get(
            relay, ()
        )

    def observed(self, relay: str, entries: dict[TunnelKey, TableEntry] | None) -> None:
        """The relay's table Secret as watched (None: deleted). Anything but what this
        process wrote, or is writing, holds what it names and is overwritten at once."""
        if relay not in self.relays or relay not in self._written:
            return  # not set up yet, or gone: the relay controller writes it first
        current = entries or {}
        if current == self._written[relay] or current == self._in_flight.get(relay):
            return
        if current in self._recent.get(relay, ()):
            return  # one of this process's own writes (the watch may lag a write or two)
        log.warning("relay table changed by someone else; rewriting it", relay=relay)
        self.table.table_writing(relay, current.values())
        self._written[relay] = current
        task = asyncio.create_task(self._rewrite(relay))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rewrite(self, relay: str) -> None:
        """Write the relay's table until a write lands (or the relay is gone): no tunnel
        reconcile may come to do it, and what someone else wrote must not stay."""
        delay = 1.0
        while relay in self.relays:
            try:
                await self.flush(relay)
                return
            except Exception as exc:  # the API server away, say: try again, slower
                log.warning("relay table rewrite failed; retrying", relay=relay, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def forget(self, relay: str) -> None:
        self.models.forget(relay)
        self.desired.pop(relay, None)
        self._written.pop(relay, None)
        self._recent.pop(relay, None)
        self._own_versions.pop(relay, None)
        self._last_write.pop(relay, None)
        self._applied_services.pop(relay, None)
        self.services.pop(relay, None)
        self.service_errors.pop(relay, None)

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
        table = self.table
        loop = asyncio.get_running_loop()
        while self._waiters.get(relay):
            # At most one write per `debounce` seconds, counted from the end of the last:
            # during a burst many tunnels join each write, and a lone tunnel after a quiet
            # spell is written at once instead of waiting for company that does not come.
            wait = self._last_write.get(relay, -self.debounce) + self.debounce - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            waiters, self._waiters[relay] = self._waiters[relay], []
            snapshot = dict(self.desired.get(relay, {}))
            # Until the API server confirms, the old and the new table may both be in force:
            # what either names stays held (a reply lost on the way may hide a write that
            # landed).
            table.table_writing(relay, snapshot.values())
            self._in_flight[relay] = snapshot
            try:
                await self._write(relay, snapshot)
            except Exception as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            finally:
                self._in_flight.pop(relay, None)
                self._last_write[relay] = loop.time()  # a failed write too: no hot retry
            table.table_written(relay, snapshot.values())
            self._written[relay] = snapshot
            self._recent.setdefault(relay, collections.deque(maxlen=3)).append(snapshot)
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def _write(self, relay: str, entries: dict[TunnelKey, TableEntry]) -> None:
        """The table Secret (what the agent enforces), then the Service's tunnel ports. The
        Service may be refused (the cluster's node ports exhausted, say) without holding up
        the table: deletions and the other tunnels go on, and the relay reports it."""
        relay_body = self.relays.get(relay)
        if relay_body is None:
            return  # the relay is gone; its table went with it
        model = self.models.of(relay_body)
        written = await self.kube.overwrite(
            build_table_secret(model, self.namespace, list(entries.values()))
        )
        version = ((written or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            self._own_versions.setdefault(relay, collections.deque(maxlen=8)).append(version)
        await self.write_service(relay, entries)
        self.written(relay)
        log.debug("relay table written", relay=relay, tunnels=len(entries))

    async def write_service(
        self, relay: str, entries: dict[TunnelKey, TableEntry] | None = None
    ) -> None:
        """The relay's Service (its one writer), with a port per allocated tunnel port; no-op
        when the ports are as last written. A refusal is kept for the relay's status."""
        relay_body = self.relays.get(relay)
        if relay_body is None:
            return
        model = self.models.of(relay_body)
        if model.spec.exposure.type == "HostNetwork":
            return  # the pod is its own face: no Service (and no ports to gather per write)
        if entries is None:
            entries = self._written.get(relay, {})
        ports = sorted(
            {
                (e.remote_port, "UDP" if e.protocol == "udp" else "TCP")
                for e in entries.values()
                if e.remote_port
            }
        )
        service = build_service(model, self.namespace, allocated_ports=ports)
        if service is None or service == self._applied_services.get(relay):
            return
        try:
            self.services[relay] = await self.kube.apply(service) or service
        except KubeError as exc:
            if exc.status not in (400, 403, 422):
                raise  # transient: the waiters retry
            self.service_errors[relay] = exc.message
            log.warning("relay Service refused", relay=relay, status=exc.status, error=exc.message)
            return
        self.service_errors.pop(relay, None)
        self._applied_services[relay] = service
