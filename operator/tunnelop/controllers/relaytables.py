"""The writer of each relay's allocation table Secrets (what its agent enforces, one per
shard) and of its Service (whose ports follow the table): the one writer of both. Bursts are coalesced: a tunnel
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
from tunnelop.contract.table import TABLE_SHARDS, TableEntry, shard_of
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


Shard = tuple[str, int]  # (relay, shard index)


class RelayTables:
    """Writes each relay's allocation table Secrets (what its agent enforces), one per shard,
    and the ports of its Service, coalescing bursts: a tunnel reconcile sets its entry and
    awaits the write of its shard that includes it, and many tunnels share one write."""

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
        self._desired: dict[Shard, dict[TunnelKey, TableEntry]] = {}
        self._written: dict[Shard, dict[TunnelKey, TableEntry]] = {}
        self._applied_services: dict[str, dict[str, Any]] = {}
        self._in_flight: dict[Shard, dict[TunnelKey, TableEntry]] = {}
        # Writes that failed since the shard's last confirmed one: any of them may have
        # landed (a reply lost on the way), so what they name stays held until a write of the
        # shard is confirmed.
        self._doubted: dict[Shard, list[dict[TunnelKey, TableEntry]]] = {}
        self._recent: dict[Shard, collections.deque[dict[TunnelKey, TableEntry]]] = {}
        # The resourceVersions of this process's recent writes of each shard's Secret: the
        # watch event of one of them needs no parsing.
        self._own_versions: dict[Shard, collections.deque[str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # The relay Services as last written, and why the API server refused one.
        self.services: dict[str, dict[str, Any]] = {}
        self.service_errors: dict[str, str] = {}
        self._waiters: dict[Shard, list[asyncio.Future[None]]] = {}
        self._writers: dict[Shard, asyncio.Task[None]] = {}
        self._last_write: dict[Shard, float] = {}  # loop time each shard's last write ended

    # ---- what each relay's table should hold ---------------------------------------------

    def set_entry(self, relay: str, entry: TableEntry) -> None:
        shard = (relay, shard_of(entry.namespace, entry.name))
        self._desired.setdefault(shard, {})[(entry.namespace, entry.name)] = entry

    def drop_entry(self, relay: str, key: TunnelKey) -> None:
        self._desired.get((relay, shard_of(*key)), {}).pop(key, None)

    def desired(self, relay: str) -> dict[TunnelKey, TableEntry]:
        """Everything the relay's table should hold, all shards together."""
        entries: dict[TunnelKey, TableEntry] = {}
        for shard in range(TABLE_SHARDS):
            entries.update(self._desired.get((relay, shard), {}))
        return entries

    def written_entries(
        self, relay: str, instead: tuple[int, dict[TunnelKey, TableEntry]] | None = None
    ) -> dict[TunnelKey, TableEntry]:
        """What the relay's table Secrets hold as last written, all shards together (with
        `instead`: one shard as it is being written)."""
        entries: dict[TunnelKey, TableEntry] = {}
        for shard in range(TABLE_SHARDS):
            if instead is not None and instead[0] == shard:
                entries.update(instead[1])
            else:
                entries.update(self._written.get((relay, shard), {}))
        return entries

    def _versions(self, at: Shard) -> list[dict[TunnelKey, TableEntry]]:
        """Every version of a shard that may be in force: as last written, under way, and
        written since without a confirmation."""
        versions = [self._written.get(at, {}), *self._doubted.get(at, ())]
        if at in self._in_flight:
            versions.append(self._in_flight[at])
        return versions

    def _holding(self, at: Shard) -> list[TableEntry]:
        """What the relay's agent may enforce of one shard right now: every version of it
        that may be in force. The allocation table keeps each shard's holds apart, so one
        shard's confirmed write frees nothing another shard names."""
        return [entry for version in self._versions(at) for entry in version.values()]

    async def remove_everywhere(self, key: TunnelKey) -> None:
        """Return once no relay's table Secret names the key (nor a write of it under way)."""
        number = shard_of(*key)
        relays = {relay for (relay, shard), entries in self._desired.items() if key in entries}
        relays |= {
            relay
            for (relay, shard) in {*self._written, *self._in_flight, *self._doubted}
            if shard == number and any(key in v for v in self._versions((relay, shard)))
        }
        for relay in relays:
            self.drop_entry(relay, key)
        await asyncio.gather(*(self.sync(relay, key) for relay in sorted(relays)))

    def in_sync(self, relay: str, key: TunnelKey) -> bool:
        """Whether the key's shard holds its desired entry (or its absence), with no write
        under way that says otherwise."""
        at = (relay, shard_of(*key))
        want = self._desired.get(at, {}).get(key)
        return at in self._written and all(v.get(key) == want for v in self._versions(at))

    def remember_written(
        self, relay: str, shard: int, entries: dict[TunnelKey, TableEntry]
    ) -> None:
        """At start-up: what a shard's Secret holds already. It holds its ports and
        subdomains until a write without them succeeds; `desired` starts from it (each entry
        in its own shard: a whole table of an earlier version is all in shard 0's Secret),
        and `prune` then drops what no live allocation accounts for."""
        self._written[(relay, shard)] = dict(entries)
        self._desired.setdefault((relay, shard), {})
        for entry in entries.values():
            self.set_entry(relay, entry)
        self.table.table_written(relay, self._holding((relay, shard)), part=shard)

    def incomplete(self) -> list[str]:
        """Relays with a shard never written, or whose Secret holds entries of other shards."""
        return sorted(
            {
                relay
                for relay in self.relays
                for shard in range(TABLE_SHARDS)
                if (relay, shard) not in self._written
                or self._written[(relay, shard)] != self._desired.get((relay, shard), {})
            }
        )

    def prune(self) -> list[str]:
        """Drop from each relay's desired table every entry that no allocation on that relay
        (same tunnel, same port or subdomain) accounts for: deleted tunnels, tunnels that
        moved, entries of a crash between a table write and a status write that the restore
        did not adopt. Returns the relays whose table must be rewritten."""
        table = self.table
        stale = set()
        for (relay, shard), entries in self._desired.items():
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
                self._desired[(relay, shard)] = keep
                stale.add(relay)
        return sorted(stale)

    # ---- what someone else wrote ----------------------------------------------------------

    def is_own_write(self, relay: str, shard: int, resource_version: str | None) -> bool:
        """Whether the shard's Secret at `resource_version` is one this process wrote."""
        return resource_version is not None and resource_version in self._own_versions.get(
            (relay, shard), ()
        )

    def observed(self, relay: str, shard: int, entries: dict[TunnelKey, TableEntry] | None) -> None:
        """A shard's Secret as watched (None: deleted). Anything but what this process wrote,
        or is writing, holds what it names and is overwritten at once."""
        at = (relay, shard)
        if relay not in self.relays or at not in self._written:
            return  # not set up yet, or gone: the relay controller writes it first
        current = entries or {}
        if current == self._written[at] or current == self._in_flight.get(at):
            return
        if current in self._doubted.get(at, ()):
            return  # a write of this process whose reply was lost
        if current in self._recent.get(at, ()):
            return  # one of this process's own writes (the watch may lag a write or two)
        log.warning("relay table changed by someone else; rewriting it", relay=relay, shard=shard)
        self.table.table_writing(relay, current.values(), part=shard)
        self._written[at] = current
        task = asyncio.create_task(self._rewrite(at))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rewrite(self, at: Shard) -> None:
        """Write the shard until a write lands (or the relay is gone): no tunnel reconcile may
        come to do it, and what someone else wrote must not stay."""
        delay = 1.0
        while at[0] in self.relays:
            try:
                await self._flush_shard(at)
                return
            except Exception as exc:  # the API server away, say: try again, slower
                log.warning(
                    "relay table rewrite failed; retrying",
                    relay=at[0],
                    shard=at[1],
                    error=str(exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def forget(self, relay: str) -> None:
        self.models.forget(relay)
        for shard in range(TABLE_SHARDS):
            at = (relay, shard)
            for state in (
                self._desired,
                self._written,
                self._doubted,
                self._recent,
                self._own_versions,
                self._last_write,
            ):
                state.pop(at, None)
        self._applied_services.pop(relay, None)
        self.services.pop(relay, None)
        self.service_errors.pop(relay, None)

    # ---- writing ----------------------------------------------------------------------------

    async def sync(self, relay: str, key: TunnelKey) -> None:
        """Return once the relay's table holds the key's current entry (or its absence); free
        when it already does."""
        if self.in_sync(relay, key):
            return
        await self._flush_shard((relay, shard_of(*key)))

    async def ensure(self, relay: str) -> None:
        """Write every shard once if it never was: a new relay's agent needs its whole table,
        even empty, to know it is not missing one."""
        await asyncio.gather(
            *(
                self._flush_shard((relay, shard))
                for shard in range(TABLE_SHARDS)
                if (relay, shard) not in self._written
            )
        )

    async def flush(self, relay: str) -> None:
        """Return once the relay's table Secrets hold everything set before this call: each
        shard that differs from its last write, or has one in flight, is written."""
        await asyncio.gather(
            *(
                self._flush_shard((relay, shard))
                for shard in range(TABLE_SHARDS)
                if (relay, shard) not in self._written
                or (relay, shard) in self._in_flight
                or (relay, shard) in self._doubted
                or self._written[(relay, shard)] != self._desired.get((relay, shard), {})
            )
        )

    async def _flush_shard(self, at: Shard) -> None:
        """Return once the shard's Secret holds everything set before this call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(at, []).append(future)
        if at not in self._writers or self._writers[at].done():
            self._writers[at] = asyncio.create_task(self._write_loop(at))
        await future

    async def _write_loop(self, at: Shard) -> None:
        relay = at[0]
        table = self.table
        loop = asyncio.get_running_loop()
        while self._waiters.get(at):
            # At most one write per `debounce` seconds, counted from the end of the last:
            # during a burst many tunnels join each write, and a lone tunnel after a quiet
            # spell is written at once instead of waiting for company that does not come.
            wait = self._last_write.get(at, -self.debounce) + self.debounce - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            waiters, self._waiters[at] = self._waiters[at], []
            snapshot = dict(self._desired.get(at, {}))
            # Until the API server confirms, the old and the new version may both be in
            # force: what either names stays held.
            table.table_writing(relay, snapshot.values(), part=at[1])
            self._in_flight[at] = snapshot
            try:
                await self._write(at, snapshot)
            except Exception as exc:
                self._doubted.setdefault(at, []).append(snapshot)
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            finally:
                self._in_flight.pop(at, None)
                self._last_write[at] = loop.time()  # a failed write too: no hot retry
            self._written[at] = snapshot
            self._doubted.pop(at, None)
            table.table_written(relay, self._holding(at), part=at[1])
            self._recent.setdefault(at, collections.deque(maxlen=3)).append(snapshot)
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def _write(self, at: Shard, entries: dict[TunnelKey, TableEntry]) -> None:
        """The shard's Secret (what the agent enforces), then the Service's tunnel ports. The
        Service may be refused (the cluster's node ports exhausted, say) without holding up
        the table: deletions and the other tunnels go on, and the relay reports it."""
        relay, shard = at
        relay_body = self.relays.get(relay)
        if relay_body is None:
            return  # the relay is gone; its table went with it
        model = self.models.of(relay_body)
        written = await self.kube.overwrite(
            build_table_secret(model, self.namespace, list(entries.values()), shard)
        )
        version = ((written or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            self._own_versions.setdefault(at, collections.deque(maxlen=8)).append(version)
        if model.spec.exposure.type != "HostNetwork":  # else no Service: skip the gathering
            await self.write_service(relay, self.written_entries(relay, (shard, entries)))
        self.written(relay)
        log.debug("relay table written", relay=relay, shard=shard, tunnels=len(entries))

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
            entries = self.written_entries(relay)
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
