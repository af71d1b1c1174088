"""The allocation table: which tunnel runs on which relay, with which port or host names.

It is the scheduler's memory and the guarantee of invariant 1 (never two tunnels on one
relay port of a protocol family, never two on one host name). Host names are held whole,
cluster-wide: an http(s) tunnel's `<subdomain>.<httpDomain>` and each of its custom domains
belong to it alone, whichever relay serves them (decision 0008). It lives in
the operator's memory, is written by one event loop only, and is rebuilt at start-up from
the relays' table Secrets and the Tunnels' statuses. It does no I/O: the reconcilers feed it
relays and requests and write back what it decides.

A relay's table is part of the truth (invariant 8). What a relay enforces is its table
Secret, not this memory: a port or host name stays held while any version of the relay's
table that may be in force names it (`table_writing`, `table_written`), even after the
tunnel that had it is released. Only the tunnel named there may take it back. So a port
reaches another tenant only once a table without the old entry is written.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType

from tunnelop.api.v1alpha1 import PORT_PROTOCOLS
from tunnelop.contract.table import TableEntry
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import explain
from tunnelop.domain.scheduling.freeports import FreePorts
from tunnelop.domain.scheduling.model import (
    Allocation,
    RelayUsage,
    TunnelKey,
    TunnelRequest,
    Unschedulable,
    domain_and_parents,
    normal_hosts,
    uses_port,
    uses_subdomain,
    wanted_hosts,
)
from tunnelop.domain.scheduling.subdomains import subdomain_candidates

# One thing a relay's table names, and whose: (protocol family, port), (HOST, host name), or
# (SUBDOMAIN, subdomain): the last holds nothing itself; it remembers which subdomains the
# table names, to hold them under a new httpDomain too when the relay's changes.
TableHold = tuple[str, int | str, TunnelKey]
HOST = "host"
SUBDOMAIN = "subdomain"
# The part of a relay's table holds that its subdomains make under each httpDomain the relay
# may serve: derived from the subdomain holds of all parts, kept apart so that a change of
# the domains costs the subdomains, and a part's write costs the part.
SUBDOMAIN_HOSTS = "subdomain-hosts"
TablePart = int | str | None
DeferredRefusal = Callable[[], explain.Refusal]


class _RelayState:
    """One relay's view and what is allocated on it."""

    def __init__(self, view: RelayView) -> None:
        self.view = view
        self.tunnels: dict[TunnelKey, Allocation] = {}
        self.bandwidth = 0  # sum of the tunnels' limits
        # Per port family (tcp, udp): who holds which port, and the allowed ports nobody
        # holds. A held port may lie outside the allowed ones after the relay changed.
        self.holders: dict[str, dict[int, TunnelKey]] = {f: {} for f in PORT_PROTOCOLS}
        # What the relay's table may hold right now (the last written version, and one being
        # written), by part of the table (a shard Secret; None: the table as a whole), each
        # hold counted once per part that names it: a part's write then costs the part's
        # size, not the relay's. Per family, port -> the tunnels named there.
        self.table_parts: dict[TablePart, set[TableHold]] = {}
        self.hold_counts: dict[TableHold, int] = {}
        self.table_ports: dict[str, dict[int, set[TunnelKey]]] = {f: {} for f in PORT_PROTOCOLS}
        # The httpDomains the relay may serve its table's subdomains under: the current one,
        # and those it had since its last confirmed table write (its frps config and its table
        # change apart, so any mix of them may be in force).
        self.serving_domains: set[str] = {view.http_domain} if view.http_domain else set()
        self.table_bytes = 0  # sum of the tunnels' table entry sizes (what the next write needs)
        self.free: dict[str, FreePorts] = {}
        self.allowed_ports = 0  # per family
        self.rebuild_free_ports()

    def rebuild_free_ports(self) -> None:
        """Recompute the free ports after the allowed ports changed.
        Held ports stay held wherever they are; the cursors stay where they were."""
        allowed = self.view.allowed_spans()
        self.allowed_ports = sum(len(span) for span in allowed)
        for family in PORT_PROTOCOLS:
            free = FreePorts(self.view.port_range, allowed)
            for port in (*self.holders[family], *self.table_ports[family]):
                free.discard(port)
            if family in self.free:
                free.resume_at(self.free[family].cursor)
            self.free[family] = free

    def port_available(self, family: str, port: int, key: TunnelKey) -> bool:
        """Whether `key` may take `port`: allowed, and held by nobody else, neither in memory
        nor in the relay's table."""
        return (
            self.view.port_allowed(port)
            and self.holders[family].get(port, key) == key
            and self.table_ports[family].get(port, set()) <= {key}
        )

    def refresh_port(self, family: str, port: int) -> None:
        """Put a port back among the free ones, or take it out, after its holders changed."""
        if (
            self.view.port_allowed(port)
            and port not in self.holders[family]
            and not self.table_ports[family].get(port)
        ):
            self.free[family].add(port)
        else:
            self.free[family].discard(port)

    def load(self) -> float:
        """Tunnels per effective capacity: capacity.tunnels, or else the relay's size in
        ports, so that relays without an explicit capacity still fill evenly."""
        capacity = self.view.capacity_tunnels
        if capacity is None:
            capacity = self.allowed_ports
        return len(self.tunnels) / max(capacity, 1)


class AllocationTable:
    """Cluster-wide, in-memory; single writer (the operator's event loop); rebuilt from the
    API at start-up."""

    def __init__(self) -> None:
        self._relays: dict[str, _RelayState] = {}
        self._names: list[str] = []  # sorted, so that every decision is deterministic
        self._allocations: dict[TunnelKey, Allocation] = {}
        # The same, per namespace: what the quota gate counts, without scanning every tunnel.
        self._by_namespace: dict[str, dict[TunnelKey, Allocation]] = {}
        # Host names held by allocations: host -> key.
        self._hosts: dict[str, TunnelKey] = {}
        # Host names named by relays' tables: host -> {(relay, key)}.
        self._table_hosts: dict[str, set[tuple[str, TunnelKey]]] = {}
        # The relays' httpDomains, with how many relays serve each: names under one are the
        # provider's, never a tenant's custom domain.
        self._http_domains: dict[str, int] = {}
        # Tunnels that must leave a draining relay but that no other relay takes: they stay,
        # and this says why they could not move.
        self._stuck: dict[TunnelKey, Unschedulable] = {}

    # Relays -----------------------------------------------------------------------------------

    def upsert_relay(self, view: RelayView) -> bool:
        """Add a relay or update it; whether it is new or its view changed. Allocations stay
        recorded even where the relay no longer allows them (port now blocked, protocol
        dropped): `misplaced()` reports those, and the reconciler moves them and tells the
        users."""
        state = self._relays.get(view.name)
        if state is None:
            self._relays[view.name] = _RelayState(view)
            bisect.insort(self._names, view.name)
            self._count_http_domain(view.http_domain, +1)
            return True
        old = state.view
        if old == view:
            return False
        state.view = view
        if old.drain != view.drain and (view.drain is None or not view.drain.stay_if_stuck):
            # No longer a drain that keeps stuck tunnels: their "could not move" is void.
            for key in state.tunnels:
                self._stuck.pop(key, None)
        if old.allowed_spans() != view.allowed_spans():
            state.rebuild_free_ports()
        if old.http_domain != view.http_domain:
            self._count_http_domain(old.http_domain, -1)
            self._count_http_domain(view.http_domain, +1)
            # The relay serves its table's subdomains under the new domain as soon as its
            # frps runs the new config: they are held there too until the next table write.
            if view.http_domain:
                self._serve_domains(state, state.serving_domains | {view.http_domain})
        return True

    def remove_relay(self, name: str) -> list[Allocation]:
        """Forget a relay; returns the allocations that were on it, now released."""
        state = self._relays.pop(name, None)
        if state is None:
            return []
        self._names.remove(name)
        self._count_http_domain(state.view.http_domain, -1)
        for part in list(state.table_parts):
            self._set_part_holds(state, part, set())
        released = sorted(state.tunnels.values(), key=lambda a: a.key)
        for allocation in released:
            self._allocations.pop(allocation.key, None)
            self._unindex(allocation.key)
            self._free_hosts(allocation)
        return released

    def relays(self) -> list[RelayView]:
        return [self._relays[name].view for name in self._names]

    # Reading ----------------------------------------------------------------------------------

    def allocation_of(self, key: TunnelKey) -> Allocation | None:
        return self._allocations.get(key)

    def allocations(self) -> list[Allocation]:
        """Every allocation, by key."""
        return [self._allocations[key] for key in sorted(self._allocations)]

    def allocations_in(self, namespace: str) -> Mapping[TunnelKey, Allocation]:
        """The namespace's allocations, by key (a read-only view)."""
        return MappingProxyType(self._by_namespace.get(namespace, {}))

    def allocations_on(self, relay: str) -> list[Allocation]:
        state = self._relays.get(relay)
        if state is None:
            return []
        return sorted(state.tunnels.values(), key=lambda a: a.key)

    def usage(self, relay: str) -> RelayUsage:
        state = self._relays.get(relay)
        if state is None:
            return RelayUsage()
        ports = sum(len(held) for held in state.holders.values())
        return RelayUsage(tunnels=len(state.tunnels), ports=ports, bandwidth=state.bandwidth)

    def host_holders(self, host: str) -> set[TunnelKey]:
        """Who holds a host name: its allocation's key, and the keys relays' tables that may
        be in force name for it. More than one only when a relay's httpDomain changed onto
        names that were held already."""
        holders = {key for _, key in self._table_hosts.get(host, ())}
        if host in self._hosts:
            holders.add(self._hosts[host])
        return holders

    def misplaced(self, relay: str | None = None) -> list[Allocation]:
        """Allocations their relay no longer allows (port outside the range, reserved or
        blocked; protocol dropped; httpDomain changed; a custom domain now under a relay's
        httpDomain) or whose relay is gone, all or on one relay: the reconciler moves them,
        keeping the port or subdomain where it can."""
        candidates = self.allocations() if relay is None else self.allocations_on(relay)
        return [a for a in candidates if self._misplacement(a) is not None]

    def stuck(self, key: TunnelKey) -> Unschedulable | None:
        """Why the key's tunnel could not leave its draining relay (it stays there), if so."""
        return self._stuck.get(key)

    def misplacement(self, key: TunnelKey) -> str | None:
        """Why the key's allocation must move, for the Event that reports the move; None when
        it may stay (or there is none)."""
        allocation = self._allocations.get(key)
        return None if allocation is None else self._misplacement(allocation)

    # Writing ----------------------------------------------------------------------------------

    def restore(self, alloc: Allocation) -> bool:
        """Record an allocation read back from a Tunnel's status at start-up, as it is, even
        where the relay no longer allows it (`misplaced()` reports that). False, recording
        nothing, when its relay is unknown, it is incomplete, or its port or any of its host
        names is held by another key: the caller schedules that tunnel afresh."""
        # Custom domains as a request names them: lowercase, sorted, once; none for tcp/udp.
        alloc = replace(alloc, custom_domains=wanted_hosts(alloc.protocol, alloc.custom_domains))
        state = self._relays.get(alloc.relay)
        if state is None or not _complete(alloc):
            return False
        current = self._allocations.get(alloc.key)
        if current == alloc:
            return True
        if uses_port(alloc.protocol):
            held_by_others = state.holders[alloc.protocol].get(
                alloc.port, alloc.key
            ) != alloc.key or not state.table_ports[alloc.protocol].get(alloc.port, set()) <= {
                alloc.key
            }
        else:
            held_by_others = not all(self._host_available(h, alloc.key) for h in alloc.hosts)
        if held_by_others:
            return False
        if current is not None:
            self.release(alloc.key)
        self._record(alloc)
        return True

    def release(self, key: TunnelKey) -> Allocation | None:
        """Forget the key's allocation. Its port or host names are free again once no version
        of the relay's table that may be in force names them (see `table_written`)."""
        allocation = self._allocations.pop(key, None)
        self._stuck.pop(key, None)
        if allocation is None:
            return None
        self._unindex(key)
        state = self._relays.get(allocation.relay)
        if state is not None:
            del state.tunnels[key]
            state.bandwidth -= allocation.bandwidth or 0
            state.table_bytes -= allocation.table_bytes
            if allocation.port is not None and uses_port(allocation.protocol):
                del state.holders[allocation.protocol][allocation.port]
                state.refresh_port(allocation.protocol, allocation.port)
        self._free_hosts(allocation)
        return allocation

    def table_writing(
        self, relay: str, entries: Iterable[TableEntry], part: int | None = None
    ) -> None:
        """A version of the relay's table (or of one `part` of it, a shard) is being written:
        until `table_written` confirms it, both it and the previous version may be in force,
        so both hold their ports."""
        state = self._relays.get(relay)
        if state is not None:
            held = state.table_parts.get(part, set())
            self._set_part_holds(state, part, held | self._holds(entries))

    def table_written(
        self, relay: str, entries: Iterable[TableEntry], part: int | None = None
    ) -> None:
        """The relay's table (or its `part`) now holds exactly `entries` (written, or read
        back at start-up): what it no longer names is free for others, unless another part
        names it. Without `part`, the whole table: every part is replaced."""
        state = self._relays.get(relay)
        if state is not None:
            domain = state.view.http_domain
            self._serve_domains(state, {domain} if domain else set())
            if part is None:
                for other in [p for p in state.table_parts if p not in (None, SUBDOMAIN_HOSTS)]:
                    self._set_part_holds(state, other, set())
            self._set_part_holds(state, part, self._holds(entries))

    def table_holders(self, relay: str) -> set[TunnelKey]:
        """The tunnels the relay's table may name right now."""
        state = self._relays.get(relay)
        return {key for _, _, key in state.hold_counts} if state else set()

    def schedule(
        self, request: TunnelRequest, prefer: Allocation | None = None
    ) -> Allocation | Unschedulable:
        """Bind the request to a relay, or say why no relay takes it.

        Idempotent: an allocation that still satisfies the request is returned unchanged
        (invariant 2), whatever `prefer` says; a changed bandwidth is applied in place when
        the relay has room for it. Otherwise (a changed custom domain list, say) the old
        allocation is released and a new one found, trying first to keep the relay and port
        or subdomain of `prefer` (or of the old allocation).
        """
        current = self._allocations.get(request.key)
        if current is not None and self._satisfies(current, request):
            if current.bandwidth == request.bandwidth:
                return current
            if self._bandwidth_fits_in_place(current, request.bandwidth):
                self.release(request.key)
                updated = replace(
                    current, bandwidth=request.bandwidth, table_bytes=request.table_bytes
                )
                self._record(updated)
                return updated
        if current is None:
            return self._place(request, prefer)
        self.release(request.key)
        placed = self._place(request, prefer or current, own_relay=current.relay)
        if isinstance(placed, Unschedulable) and self._may_stay(current, request):
            # Its relay is draining, but no other relay takes it: it keeps serving where it
            # is (and its port or host names) until one does.
            self._record(current)
            self._stuck[request.key] = placed
            return current
        return placed

    # Internals --------------------------------------------------------------------------------

    def _record(self, alloc: Allocation) -> None:
        state = self._relays[alloc.relay]
        self._allocations[alloc.key] = alloc
        self._by_namespace.setdefault(alloc.key[0], {})[alloc.key] = alloc
        state.tunnels[alloc.key] = alloc
        state.bandwidth += alloc.bandwidth or 0
        state.table_bytes += alloc.table_bytes
        if alloc.port is not None and uses_port(alloc.protocol):
            state.holders[alloc.protocol][alloc.port] = alloc.key
            state.free[alloc.protocol].discard(alloc.port)
        for host in alloc.hosts:
            self._hosts[host] = alloc.key

    def _unindex(self, key: TunnelKey) -> None:
        namespace = self._by_namespace.get(key[0])
        if namespace is not None:
            namespace.pop(key, None)
            if not namespace:
                del self._by_namespace[key[0]]

    @staticmethod
    def _holds(entries: Iterable[TableEntry]) -> set[TableHold]:
        """What table entries hold on their relay: ports, subdomains and custom domains (the
        subdomains' host names follow from them, `_set_part_holds`)."""
        holds: set[TableHold] = set()
        for entry in entries:
            key = (entry.namespace, entry.name)
            if uses_port(entry.protocol) and entry.remote_port is not None:
                holds.add((entry.protocol, entry.remote_port, key))
            elif uses_subdomain(entry.protocol):
                if entry.subdomain:
                    holds.add((SUBDOMAIN, entry.subdomain, key))
                for host in normal_hosts(entry.custom_domains):
                    holds.add((HOST, host, key))
        return holds

    @staticmethod
    def _subdomain_hosts(holds: Iterable[TableHold], domains: set[str]) -> set[TableHold]:
        """The subdomains among `holds` as host names under each of `domains`."""
        return {
            (HOST, f"{sub}.{domain}", key)
            for family, sub, key in holds
            if family == SUBDOMAIN
            for domain in domains
        }

    def _serve_domains(self, state: _RelayState, domains: set[str]) -> None:
        """The httpDomains the relay may serve its table's subdomains under are now these."""
        if domains != state.serving_domains:
            state.serving_domains = domains
            hosts = self._subdomain_hosts(state.hold_counts, domains)
            self._set_part_holds(state, SUBDOMAIN_HOSTS, hosts)

    def _count_http_domain(self, domain: str | None, change: int) -> None:
        if not domain:
            return
        count = self._http_domains.get(domain, 0) + change
        if count > 0:
            self._http_domains[domain] = count
        else:
            self._http_domains.pop(domain, None)

    def _set_part_holds(self, state: _RelayState, part: TablePart, holds: set[TableHold]) -> None:
        """Replace what one part of the relay's table holds; a hold is taken when the first
        part names it and released when the last one stops, and so are the host names of a
        subdomain."""
        old = state.table_parts.get(part, set())
        counts = state.hold_counts
        released = []
        for hold in old - holds:
            if counts[hold] > 1:
                counts[hold] -= 1
            else:
                del counts[hold]
                released.append(hold)
        taken = []
        for hold in holds - old:
            if hold in counts:
                counts[hold] += 1
            else:
                counts[hold] = 1
                taken.append(hold)
        if holds:
            state.table_parts[part] = holds
        else:
            state.table_parts.pop(part, None)
        self._change_holds(state, released, taken)
        if part != SUBDOMAIN_HOSTS:
            gone = self._subdomain_hosts(released, state.serving_domains)
            new = self._subdomain_hosts(taken, state.serving_domains)
            if gone or new:
                hosts = state.table_parts.get(SUBDOMAIN_HOSTS, set())
                self._set_part_holds(state, SUBDOMAIN_HOSTS, (hosts - gone) | new)

    def _change_holds(
        self, state: _RelayState, released: list[TableHold], taken: list[TableHold]
    ) -> None:
        relay = state.view.name
        for family, target, key in released:
            if family == SUBDOMAIN:
                continue
            if family == HOST:
                holders = self._table_hosts.get(str(target), set())
                holders.discard((relay, key))
                if not holders:
                    self._table_hosts.pop(str(target), None)
            else:
                port = int(target)
                keys = state.table_ports[family].get(port, set())
                keys.discard(key)
                if not keys:
                    state.table_ports[family].pop(port, None)
                state.refresh_port(family, port)
        for family, target, key in taken:
            if family == SUBDOMAIN:
                continue
            if family == HOST:
                self._table_hosts.setdefault(str(target), set()).add((relay, key))
            else:
                state.table_ports[family].setdefault(int(target), set()).add(key)
                state.free[family].discard(int(target))

    def _host_available(self, host: str, key: TunnelKey) -> bool:
        """Whether `key` may have the host name: nobody else holds it, neither in memory (as
        a subdomain or a custom domain) nor in a relay's table."""
        return self._hosts.get(host, key) == key and all(
            holder == key for _, holder in self._table_hosts.get(host, ())
        )

    def _other_holder(self, host: str, key: TunnelKey) -> TunnelKey | None:
        """Another key that holds the host name (the least, for a stable message), if any."""
        others = self.host_holders(host) - {key}
        return min(others) if others else None

    def _subdomain_available(self, http_domain: str | None, subdomain: str, key: TunnelKey) -> bool:
        return http_domain is not None and self._host_available(f"{subdomain}.{http_domain}", key)

    def _free_hosts(self, alloc: Allocation) -> None:
        for host in alloc.hosts:
            if self._hosts.get(host) == alloc.key:
                del self._hosts[host]

    def _provider_domain_over(self, host: str) -> str | None:
        """The relay httpDomain the host name equals or lies under, if any."""
        return next((d for d in domain_and_parents(host) if d in self._http_domains), None)

    def _request_refusal(self, request: TunnelRequest) -> Unschedulable | None:
        """Why no relay at all may take the request, whatever its state: a custom domain that
        is the provider's, or that another tunnel holds."""
        relays = len(self._names)
        for host in request.wanted_custom_domains:
            http_domain = self._provider_domain_over(host)
            if http_domain is not None:
                return explain.custom_domain_not_allowed(relays, host, http_domain)
        for host in request.wanted_custom_domains:
            holder = self._other_holder(host, request.key)
            if holder is not None:
                return explain.custom_domain_taken(relays, host, holder, request.key)
        return None

    def _misplacement(self, alloc: Allocation, *, drain: bool = True) -> str | None:
        """Why the allocation must move; `drain=False` leaves the relay's drain out (what else
        would make it move)."""
        state = self._relays.get(alloc.relay)
        if state is None:
            return f"RelayNode {alloc.relay} is gone"
        view = state.view
        if drain and view.drain is not None:
            return view.drain.message
        if alloc.protocol not in view.protocols:
            return f"RelayNode {view.name} no longer allows {alloc.protocol}"
        if alloc.port is not None and uses_port(alloc.protocol):
            why = view.port_refusal(alloc.port)
            if why is not None:
                return f"port {alloc.port} is {why} on RelayNode {view.name}"
        if uses_subdomain(alloc.protocol) and alloc.http_domain != view.http_domain:
            return (
                f"RelayNode {view.name} serves httpDomain {view.http_domain} instead of "
                f"{alloc.http_domain}"
            )
        for host in normal_hosts(alloc.custom_domains) if uses_subdomain(alloc.protocol) else ():
            http_domain = self._provider_domain_over(host)
            if http_domain is not None:
                return f"custom domain {host} is under the httpDomain {http_domain} of a RelayNode"
        return None

    def _satisfies(self, alloc: Allocation, request: TunnelRequest, *, drain: bool = True) -> bool:
        """Whether the allocation may stay as the answer to the request (bandwidth aside;
        its relay's drain too with `drain=False`)."""
        state = self._relays.get(alloc.relay)
        return (
            state is not None
            and alloc.protocol == request.protocol
            and state.view.matches(request.placement)
            and request.wanted_port in (None, alloc.port)
            and request.wanted_subdomain in (None, alloc.subdomain)
            and request.wanted_custom_domains == normal_hosts(alloc.custom_domains)
            and self._misplacement(alloc, drain=drain) is None
        )

    def _may_stay(self, alloc: Allocation, request: TunnelRequest) -> bool:
        """Whether an allocation that found no other relay may stay: only its relay's drain
        (one that keeps stuck tunnels) moves it, and it still answers the request."""
        state = self._relays.get(alloc.relay)
        drain = state.view.drain if state is not None else None
        return (
            drain is not None
            and drain.stay_if_stuck
            and alloc.bandwidth == request.bandwidth
            and self._satisfies(alloc, request, drain=False)
        )

    def _bandwidth_fits_in_place(self, alloc: Allocation, bandwidth: int | None) -> bool:
        """A lower or removed limit always fits; a higher one if capacity.bandwidth allows it
        (readiness and cordon do not matter: the tunnel is there already)."""
        state = self._relays[alloc.relay]
        limit = state.view.capacity_bandwidth
        if bandwidth is None or limit is None or bandwidth <= (alloc.bandwidth or 0):
            return True
        return state.bandwidth - (alloc.bandwidth or 0) + bandwidth <= limit

    def _place(
        self, request: TunnelRequest, prefer: Allocation | None, own_relay: str | None = None
    ) -> Allocation | Unschedulable:
        refused = self._request_refusal(request)
        if refused is not None:
            return refused
        wish = _Wish.of(request, prefer)
        refusals: list[tuple[str, DeferredRefusal]] = []
        best: tuple[tuple[int, float, str], _RelayState] | None = None
        for name in self._names:
            state = self._relays[name]
            refusal = self._refusal(state, request, own=name == own_relay)
            if refusal is not None:
                refusals.append((name, refusal))
                continue
            rank = (self._preference(state, wish), state.load(), name)
            if best is None or rank < best[0]:
                best = (rank, state)
        if best is None:
            return explain.explain(len(self._names), [(n, why()) for n, why in refusals])
        allocation = self._allocate(best[1], request, wish)
        self._record(allocation)
        return allocation

    def _refusal(
        self, state: _RelayState, request: TunnelRequest, *, own: bool = False
    ) -> DeferredRefusal | None:
        """Why this relay cannot take the request, checked from the most static reason to the
        most transient; None if it can. The Refusal is built only if no relay fits, so that
        the message text costs nothing when the tunnel is placed.

        `own`: the relay the tunnel is on now. Cordon and readiness keep
        no tunnel off its own relay, as they move none away: a tunnel whose port got blocked
        takes another port there even while the relay restarts for its new port list."""
        view = state.view
        protocol = request.protocol
        port = request.wanted_port
        if not view.matches(request.placement):
            node = request.placement.node
            return partial(explain.not_matching, request.placement, node in self._relays)
        if request.pools is not None and view.pool not in request.pools:
            return partial(explain.pool_not_allowed, request.pools, request.pools_limit)
        if protocol not in view.protocols:
            return partial(explain.protocol_not_allowed, protocol, view)
        if uses_subdomain(protocol) and not view.http_domain:
            return partial(explain.no_http_domain, protocol)
        if port is not None and not view.port_allowed(port):
            return partial(explain.port_not_allowed, port, view)
        if view.drain is not None:
            return explain.draining
        if view.unschedulable and not own:
            return explain.cordoned
        if not view.ready and not own:
            return explain.not_ready
        if view.capacity_tunnels is not None and len(state.tunnels) >= view.capacity_tunnels:
            return explain.full
        if state.table_bytes + request.table_bytes > view.table_budget_bytes:
            return partial(explain.table_full, len(state.tunnels))
        if uses_port(protocol) and view.node_port_budget is not None:
            exposed = sum(len(held) for held in state.holders.values())
            if exposed >= view.node_port_budget:
                return partial(explain.node_ports_exhausted, view.node_port_budget)
        bandwidth_limit = view.capacity_bandwidth
        if request.bandwidth and bandwidth_limit is not None:
            if state.bandwidth + request.bandwidth > bandwidth_limit:
                return partial(explain.bandwidth_short, request.bandwidth)
        if uses_port(protocol):
            if port is None:
                return None if state.free[protocol] else partial(explain.no_free_port, protocol)
            holder = state.holders[protocol].get(port)
            if holder not in (None, request.key):
                return partial(explain.port_taken, port, protocol, holder, request.key)
            in_table = state.table_ports[protocol].get(port, set()) - {request.key}
            if in_table:
                return partial(explain.port_taken, port, protocol, min(in_table), request.key)
        subdomain = request.wanted_subdomain
        if uses_subdomain(protocol) and subdomain is not None:
            holder = self._other_holder(f"{subdomain}.{view.http_domain}", request.key)
            if holder is not None:
                return partial(
                    explain.subdomain_taken, subdomain, view.http_domain, holder, request.key
                )
        return None

    def _preference(self, state: _RelayState, wish: _Wish) -> int:
        """0: the preferred relay, keeping the endpoint; 1: another relay keeping the port (or
        the URL, for relays sharing the httpDomain); 2: the preferred relay; 3: any other."""
        keeps = self._keeps(state, wish)
        same_relay = state.view.name == wish.relay
        if keeps:
            return 0 if same_relay else 1
        return 2 if same_relay else 3

    def _keeps(self, state: _RelayState, wish: _Wish) -> bool:
        if wish.port is not None:
            return state.port_available(wish.protocol, wish.port, wish.key)
        if wish.subdomain is not None:
            # The same URL: the subdomain, free under the same httpDomain (when known).
            domain = state.view.http_domain
            return wish.http_domain in (None, domain) and self._subdomain_available(
                domain, wish.subdomain, wish.key
            )
        return False

    def _allocate(self, state: _RelayState, request: TunnelRequest, wish: _Wish) -> Allocation:
        """The request on this relay: its port (tcp/udp) or its subdomain (http/https)."""
        view = state.view
        port = subdomain = http_domain = None
        if uses_port(request.protocol):
            port = request.wanted_port
            if port is None and wish.port is not None:
                if state.port_available(request.protocol, wish.port, request.key):
                    port = wish.port
            if port is None:
                port = state.free[request.protocol].next_fit()
        else:
            http_domain = view.http_domain
            subdomain = request.wanted_subdomain
            if subdomain is None and wish.subdomain is not None:
                if self._subdomain_available(http_domain, wish.subdomain, request.key):
                    subdomain = wish.subdomain
            if subdomain is None:
                subdomain = next(
                    candidate
                    for candidate in subdomain_candidates(request.key)
                    if self._subdomain_available(http_domain, candidate, request.key)
                )
        return Allocation(
            request.key,
            view.name,
            request.protocol,
            port=port,
            subdomain=subdomain,
            http_domain=http_domain,
            bandwidth=request.bandwidth,
            table_bytes=request.table_bytes,
            custom_domains=request.wanted_custom_domains,
        )


@dataclass(frozen=True)
class _Wish:
    """What of a preferred allocation the request lets us keep: the relay always, the port
    or subdomain only when the request does not pin its own."""

    protocol: str
    key: TunnelKey
    relay: str | None = None
    port: int | None = None
    subdomain: str | None = None
    http_domain: str | None = None

    @classmethod
    def of(cls, request: TunnelRequest, prefer: Allocation | None) -> _Wish:
        if prefer is None:
            return cls(request.protocol, request.key)
        port = subdomain = None
        if uses_port(request.protocol) and request.wanted_port is None:
            port = prefer.port
        if uses_subdomain(request.protocol) and request.wanted_subdomain is None:
            subdomain = prefer.subdomain
        return cls(request.protocol, request.key, prefer.relay, port, subdomain, prefer.http_domain)


def _complete(alloc: Allocation) -> bool:
    """Whether an allocation read from a status has what its protocol needs."""
    if uses_port(alloc.protocol):
        return alloc.port is not None and 1 <= alloc.port <= 65535
    return bool(alloc.subdomain) and bool(alloc.http_domain)
