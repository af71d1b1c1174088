"""Invariant 8 as a state machine: the operator's memory (an AllocationTable) against what the
relays enforce (their table Secrets), through table writes that succeed, fail before or after
they reach the API server, relays that change their httpDomain, and crashes at any point
followed by a restore from the Secrets and the statuses. Whatever happens, a port or host name
(subdomain or custom domain) that a relay's table names for one tunnel is never allocated to
another, no host name is held by two keys unless a relay's httpDomain change put it there,
and after a crash nothing a table names is forgotten.

Each relay's table is split in shards written apart, as RelayTables does: a write tells the
allocator what its shard may hold while in flight, and once confirmed what the whole relay
may hold (every shard as written, and every shard write still in flight)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tunnelop.api.v1alpha1 import PortSpan
from tunnelop.contract.table import TABLE_SHARDS, TableEntry, shard_of
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import Allocation, AllocationTable, TunnelRequest
from tunnelop.domain.scheduling.model import uses_port

RELAYS = ("r1", "r2")
KEYS = tuple(("ns", f"t{i}") for i in range(6))
SHARDS = sorted({shard_of(*key) for key in KEYS})  # the shards these keys fall in
assert len(SHARDS) > 2, "the keys must spread over several shards"
Shard = tuple[str, int]
PROTOCOLS = ("tcp", "udp", "http")
DOMAINS = ("relay.example", "other.example")
# Few names, so that tunnels ask for the same ones all the time.
CUSTOM_DOMAIN_LISTS = ((), ("shop.test",), ("shop.test", "www.test"), ("www.test",))
TunnelKey = tuple[str, str]


def view(name: str, domain: str = DOMAINS[0]) -> RelayView:
    # Three ports per relay: ports are reused all the time.
    return RelayView(
        name=name,
        protocols=("tcp", "udp", "http"),
        port_range=PortSpan(100, 102),
        http_domain=domain,
    )


def entry(alloc: Allocation) -> TableEntry:
    return TableEntry(
        namespace=alloc.key[0],
        name=alloc.key[1],
        token_sha256="0" * 64,
        protocol=alloc.protocol,
        remote_port=alloc.port,
        subdomain=alloc.subdomain,
        custom_domains=alloc.custom_domains,
    )


def targets(e: TableEntry, domains: set[str]) -> set[tuple]:
    """What an entry makes its relay serve: its port, or its host names under every
    httpDomain the relay may serve right now."""
    if uses_port(e.protocol):
        return {(e.protocol, e.remote_port)}
    hosts = {f"{e.subdomain}.{d}" for d in domains if e.subdomain}
    return {("host", h) for h in hosts | set(e.custom_domains)}


class OperatorAndRelays(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[Shard, dict[TunnelKey, TableEntry]] = {
            (r, s): {} for r in RELAYS for s in range(TABLE_SHARDS)
        }
        # Statuses are written after the table write that holds the tunnel is confirmed.
        self.statuses: dict[TunnelKey, Allocation] = {}
        self.protocols: dict[TunnelKey, str] = {}
        self.in_flight: dict[Shard, dict[TunnelKey, TableEntry]] = {}
        self.domain = dict.fromkeys(RELAYS, DOMAINS[0])
        # The httpDomains each relay's tables may be served under: the current one, and those
        # it had since its last confirmed write (its frps may run either config).
        self.serving: dict[str, set[str]] = {r: {DOMAINS[0]} for r in RELAYS}
        # What the operator knows of each shard: its last confirmed write, and the writes that
        # failed since (any may have landed: a reply lost on the way).
        self.confirmed: dict[Shard, dict[TunnelKey, TableEntry]] = dict(self.secrets)
        self.doubted: dict[Shard, list[dict[TunnelKey, TableEntry]]] = {}
        # Shards whose confirmed table is exactly their Secret (no write in doubt since).
        self.exact: set[Shard] = set(self.secrets)
        # Host names two keys hold because a relay's httpDomain moved onto them.
        self.provider_clashes: set[str] = set()
        self.table = AllocationTable()
        for name in RELAYS:
            self.table.upsert_relay(view(name))

    def desired(self, relay: str, shard: int) -> dict[TunnelKey, TableEntry]:
        return {
            a.key: entry(a) for a in self.table.allocations_on(relay) if shard_of(*a.key) == shard
        }

    def tables_of(self, relay: str) -> list[dict[TunnelKey, TableEntry]]:
        """Every shard's Secret and every shard write in flight of the relay."""
        return [
            table
            for shard in range(TABLE_SHARDS)
            for table in (self.secrets[(relay, shard)], self.in_flight.get((relay, shard), {}))
        ]

    def holding(self, at: Shard) -> list[TableEntry]:
        """What RelayTables tells the allocator of a shard once its write is confirmed: from
        what it knows (not what the Secret holds): the shard as confirmed, its failed writes
        since, and its write under way. The allocator keeps each shard's holds apart."""
        entries = []
        for version in (self.confirmed[at], *self.doubted.get(at, ()), self.in_flight.get(at, {})):
            entries += version.values()
        return entries

    @rule(
        key=st.sampled_from(KEYS),
        protocol=st.sampled_from(PROTOCOLS),
        custom=st.sampled_from(CUSTOM_DOMAIN_LISTS),
    )
    def schedule(self, key: TunnelKey, protocol: str, custom: tuple[str, ...]) -> None:
        protocol = self.protocols.setdefault(key, protocol)
        before = self.table.allocation_of(key)
        result = self.table.schedule(
            TunnelRequest(key=key, protocol=protocol, custom_domains=custom),
            prefer=self.statuses.get(key),
        )
        if isinstance(result, Allocation) and result != before:
            # A grant: nothing of it is held by anyone else, in memory or in a table.
            named = self.named(result.relay)
            for target in targets(entry(result), {self.domain[result.relay]}):
                others = {k for t, k in named if t == target and k != key}
                assert not others, f"{key} was granted {target}, named for {others}"

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: TunnelKey) -> None:
        self.table.release(key)
        self.statuses.pop(key, None)
        self.protocols.pop(key, None)

    @rule(relay=st.sampled_from(RELAYS), domain=st.sampled_from(DOMAINS))
    def change_http_domain(self, relay: str, domain: str) -> None:
        self.domain[relay] = domain
        self.serving[relay].add(domain)
        self.table.upsert_relay(view(relay, domain))
        self.provider_clashes |= {h for h, keys in self.holders().items() if len(keys) > 1}

    @precondition(lambda self: len(self.in_flight) < 4)
    @rule(relay=st.sampled_from(RELAYS), shard=st.sampled_from(SHARDS))
    def begin_write(self, relay: str, shard: int) -> None:
        if (relay, shard) in self.in_flight:
            return
        snapshot = self.desired(relay, shard)
        self.in_flight[(relay, shard)] = snapshot
        self.exact.discard((relay, shard))
        self.table.table_writing(relay, snapshot.values(), part=shard)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "refused", "lost-reply"]))
    def end_write(self, data: st.DataObject, outcome: str) -> None:
        at = data.draw(st.sampled_from(sorted(self.in_flight)))
        relay = at[0]
        snapshot = self.in_flight.pop(at)
        if outcome in ("ok", "lost-reply"):
            self.secrets[at] = snapshot  # the API server took it
        if outcome != "ok":
            self.doubted.setdefault(at, []).append(snapshot)  # the operator saw an error
        if outcome == "ok":
            self.confirmed[at] = snapshot
            self.doubted.pop(at, None)
            self.table.table_written(relay, self.holding(at), part=at[1])
            self.serving[relay] = {self.domain[relay]}
            self.exact.add(at)
            for key in snapshot:
                alloc = self.table.allocation_of(key)
                if alloc is not None and alloc.relay == relay:
                    self.statuses[key] = alloc

    @rule(applied=st.booleans())
    def crash_and_restore(self, applied: bool) -> None:
        """kill -9 anywhere: a write in flight may or may not have landed."""
        if applied:
            for at, snapshot in self.in_flight.items():
                self.secrets[at] = snapshot
        self.in_flight.clear()
        self.confirmed = dict(self.secrets)  # read back from the API
        self.doubted = {}
        self.table = AllocationTable()
        for name in RELAYS:
            self.table.upsert_relay(view(name, self.domain[name]))
            for shard in range(TABLE_SHARDS):
                self.table.table_written(name, self.holding((name, shard)), part=shard)
            self.serving[name] = {self.domain[name]}
        self.exact = set(self.secrets)
        for alloc in self.statuses.values():
            self.table.restore(alloc)

    def named(self, relay: str) -> set[tuple]:
        """(target, key) the relays' tables may make `relay` serve now: the Secret, and a
        write in flight. Host names count on every relay: each is one name world-wide."""
        found = set()
        for name in RELAYS:
            for table in self.tables_of(name):
                for key, e in table.items():
                    if name == relay or not uses_port(e.protocol):
                        found |= {(t, key) for t in targets(e, self.serving[name])}
        return found

    def holders(self) -> dict[str, set[TunnelKey]]:
        """Host name -> the keys that hold it: their allocation, or a table that may be in
        force."""
        found: dict[str, set[TunnelKey]] = {}
        for alloc in self.table.allocations():
            for host in alloc.hosts:
                found.setdefault(host, set()).add(alloc.key)
        for (family, host), key in self.named(RELAYS[0]):
            if family == "host":
                found.setdefault(str(host), set()).add(key)
        return found

    @invariant()
    def nothing_a_relay_enforces_goes_to_another_tunnel(self) -> None:
        for relay in RELAYS:
            named = self.named(relay)
            for alloc in self.table.allocations_on(relay):
                for mine in targets(entry(alloc), {alloc.http_domain or ""}):
                    if mine[0] == "host" and mine[1] in self.provider_clashes:
                        continue
                    others = {key for t, key in named if t == mine and key != alloc.key}
                    assert not others, f"{alloc.key} got {mine} on {relay}, named for {others}"

    @invariant()
    def no_host_name_is_held_by_two_keys(self) -> None:
        for host, keys in self.holders().items():
            if len(keys) > 1:
                assert host in self.provider_clashes, f"{host} held by {keys}"
        self.provider_clashes &= {h for h, keys in self.holders().items() if len(keys) > 1}

    @invariant()
    def the_allocator_holds_what_relays_may_serve(self) -> None:
        """Every host name memory or a table holds is held in the allocator, by the same keys;
        exactly those once every relay's last write is confirmed (no stale hold, even after
        an httpDomain change)."""
        expected = self.holders()
        exact = self.exact == set(self.secrets) and not self.in_flight
        universe = {f"{s}.{d}" for s in self._subdomains() for d in DOMAINS}
        universe |= {h for names in CUSTOM_DOMAIN_LISTS for h in names} | expected.keys()
        for host in universe:
            held = self.table.host_holders(host)
            wanted = expected.get(host, set())
            assert wanted <= held, f"{host}: held by {held}, but {wanted} may serve it"
            if exact:
                assert held == wanted, f"{host}: held by {held}, stale beyond {wanted}"

    def _subdomains(self) -> set[str]:
        found = {a.subdomain for a in self.table.allocations() if a.subdomain}
        for table in [*self.secrets.values(), *self.in_flight.values()]:
            found |= {e.subdomain for e in table.values() if e.subdomain}
        return found

    @invariant()
    def every_table_names_each_port_once(self) -> None:
        """Across all its shards' Secrets: what the agent merges."""
        for relay in RELAYS:
            ports = [
                (e.protocol, e.remote_port)
                for shard in range(TABLE_SHARDS)
                for e in self.secrets[(relay, shard)].values()
                if uses_port(e.protocol)
            ]
            assert len(ports) == len(set(ports)), ports


TestOperatorAndRelays = OperatorAndRelays.TestCase
TestOperatorAndRelays.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
