"""Invariant 8 as a state machine: the operator's memory (an AllocationTable) against what the
relays enforce (their table Secrets), through table writes that succeed, fail before or after
they reach the API server, and crashes at any point followed by a restore from the Secrets and
the statuses. Whatever happens, a port or subdomain that a relay's table names for one tunnel
is never allocated to another, and after a crash nothing a table names is forgotten."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tunnelop.api.v1alpha1 import PortSpan
from tunnelop.contract.table import TableEntry
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import Allocation, AllocationTable, TunnelRequest
from tunnelop.domain.scheduling.model import uses_port

RELAYS = ("r1", "r2")
KEYS = tuple(("ns", f"t{i}") for i in range(6))
PROTOCOLS = ("tcp", "udp", "http")
DOMAIN = "relay.example"


def view(name: str) -> RelayView:
    # Three ports per relay: ports are reused all the time.
    return RelayView(
        name=name,
        protocols=("tcp", "udp", "http"),
        port_range=PortSpan(100, 102),
        http_domain=DOMAIN,
    )


def entry(alloc: Allocation) -> TableEntry:
    return TableEntry(
        namespace=alloc.key[0],
        name=alloc.key[1],
        token_sha256="0" * 64,
        protocol=alloc.protocol,
        remote_port=alloc.port,
        subdomain=alloc.subdomain,
    )


def target(e: TableEntry) -> tuple:
    return (e.protocol, e.remote_port) if uses_port(e.protocol) else ("host", e.subdomain)


class OperatorAndRelays(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, dict[tuple[str, str], TableEntry]] = {r: {} for r in RELAYS}
        # Statuses are written after the table write that holds the tunnel is confirmed.
        self.statuses: dict[tuple[str, str], Allocation] = {}
        self.protocols: dict[tuple[str, str], str] = {}
        self.in_flight: dict[str, dict[tuple[str, str], TableEntry]] = {}
        self.table = AllocationTable()
        for name in RELAYS:
            self.table.upsert_relay(view(name))

    def desired(self, relay: str) -> dict[tuple[str, str], TableEntry]:
        return {a.key: entry(a) for a in self.table.allocations_on(relay)}

    @rule(key=st.sampled_from(KEYS), protocol=st.sampled_from(PROTOCOLS))
    def schedule(self, key: tuple[str, str], protocol: str) -> None:
        protocol = self.protocols.setdefault(key, protocol)
        self.table.schedule(
            TunnelRequest(key=key, protocol=protocol), prefer=self.statuses.get(key)
        )

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: tuple[str, str]) -> None:
        self.table.release(key)
        self.statuses.pop(key, None)
        self.protocols.pop(key, None)

    @precondition(lambda self: len(self.in_flight) < len(RELAYS))
    @rule(relay=st.sampled_from(RELAYS))
    def begin_write(self, relay: str) -> None:
        if relay in self.in_flight:
            return
        snapshot = self.desired(relay)
        self.in_flight[relay] = snapshot
        self.table.table_writing(relay, snapshot.values())

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "refused", "lost-reply"]))
    def end_write(self, data: st.DataObject, outcome: str) -> None:
        relay = data.draw(st.sampled_from(sorted(self.in_flight)))
        snapshot = self.in_flight.pop(relay)
        if outcome in ("ok", "lost-reply"):
            self.secrets[relay] = snapshot  # the API server took it
        if outcome == "ok":
            self.table.table_written(relay, snapshot.values())
            for key in snapshot:
                alloc = self.table.allocation_of(key)
                if alloc is not None and alloc.relay == relay:
                    self.statuses[key] = alloc

    @rule(applied=st.booleans())
    def crash_and_restore(self, applied: bool) -> None:
        """kill -9 anywhere: a write in flight may or may not have landed."""
        if applied:
            for relay, snapshot in self.in_flight.items():
                self.secrets[relay] = snapshot
        self.in_flight.clear()
        self.table = AllocationTable()
        for name in RELAYS:
            self.table.upsert_relay(view(name))
            self.table.table_written(name, self.secrets[name].values())
        for alloc in self.statuses.values():
            self.table.restore(alloc)

    def named(self, relay: str) -> set[tuple]:
        """(target, key) a relay's table may name now: the Secret, and a write in flight.
        Host names count on every relay, since the relays share the httpDomain."""
        found = set()
        for name in RELAYS:
            for table in (self.secrets[name], self.in_flight.get(name, {})):
                for key, e in table.items():
                    if name == relay or not uses_port(e.protocol):
                        found.add((target(e), key))
        return found

    @invariant()
    def nothing_a_relay_enforces_goes_to_another_tunnel(self) -> None:
        for relay in RELAYS:
            named = self.named(relay)
            for alloc in self.table.allocations_on(relay):
                mine = target(entry(alloc))
                others = {key for t, key in named if t == mine and key != alloc.key}
                assert not others, f"{alloc.key} got {mine} on {relay}, named for {others}"

    @invariant()
    def every_table_names_each_port_once(self) -> None:
        for relay in RELAYS:
            targets = [target(e) for e in self.secrets[relay].values()]
            assert len(targets) == len(set(targets))


TestOperatorAndRelays = OperatorAndRelays.TestCase
TestOperatorAndRelays.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
