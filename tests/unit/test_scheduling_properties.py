"""Property tests of the allocation table: random sequences of creates, deletes, restores,
relay changes (blocked ports, cordon, readiness, httpDomain, removal) and changed requests
never break invariant 1 (one tunnel per relay port of a family; every host name, subdomain or
custom domain, held by one key only) or invariant 2 (a tunnel that still fits keeps its
allocation); and the scheduler finds a relay whenever a brute-force search finds one."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tunnelop.api.v1alpha1 import PortSpan, RelayPlacement
from tunnelop.domain.relayview import POOL_LABEL, RelayView
from tunnelop.domain.scheduling import (
    REASONS,
    Allocation,
    AllocationTable,
    RelayUsage,
    TunnelRequest,
    Unschedulable,
)
from tunnelop.domain.scheduling.freeports import FreePorts
from tunnelop.domain.scheduling.model import (
    normal_hosts,
    uses_port,
    uses_subdomain,
    wanted_hosts,
)

# Small worlds, so that ports, subdomains and capacity collide often.
RELAY_NAMES = ("r1", "r2", "r3")
DOMAINS = ("a.example", "b.example", "c.example")
KEYS = tuple((ns, name) for ns in ("n1", "n2") for name in ("t1", "t2", "t3", "t4", "t5"))
PORT_LOW, PORT_HIGH = 100, 119
SUBDOMAINS = ("blog", "shop", "t1-n1", "t2-n2")  # the last two clash with generated ones


def spans(low: int = PORT_LOW - 2, high: int = PORT_HIGH + 2) -> st.SearchStrategy[PortSpan]:
    return st.builds(
        lambda first, extra: PortSpan(first, first + extra),
        st.integers(low, high),
        st.integers(0, 3),
    )


def mostly(usual: object, unusual: st.SearchStrategy) -> st.SearchStrategy:
    """`usual` three times in four."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), unusual)


# Custom domains: two of the tenants' own, and two under c.example, which a relay may come to
# serve (then they are the provider's), one of them a generated subdomain's host.
CUSTOM_DOMAINS = ("shop.test", "www.shop.test", "blog.c.example", "t1-n1.c.example")
custom_domain_lists = mostly(
    (), st.lists(st.sampled_from(CUSTOM_DOMAINS), min_size=1, max_size=2, unique=True).map(tuple)
)

# Strategies are built once, here: building them inside a draw is what makes tests slow.
port_ranges = st.builds(
    lambda first, extra: PortSpan(first, min(PORT_HIGH, first + extra)),
    st.integers(PORT_LOW, PORT_HIGH),
    st.integers(0, 6),  # small: relays fill up
)
protocol_sets = st.one_of(
    st.sampled_from([("tcp", "udp", "http", "https"), ("tcp", "udp"), ("http", "https")]),
    st.lists(st.sampled_from(["tcp", "udp", "http", "https"]), min_size=1, unique=True).map(tuple),
)
relay_labels = st.builds(
    lambda region, pooled: {"region": region} | ({POOL_LABEL: "p1"} if pooled else {}),
    st.sampled_from(["eu", "us"]),
    st.booleans(),
)


def relay_views(name: str | None = None) -> st.SearchStrategy[RelayView]:
    return st.builds(
        RelayView,
        name=st.just(name) if name else st.sampled_from(RELAY_NAMES),
        labels=relay_labels,
        protocols=protocol_sets,
        port_range=port_ranges,
        reserved=st.lists(spans(), max_size=2).map(tuple),
        blocked=st.lists(spans(), max_size=1).map(tuple),
        http_domain=st.sampled_from(DOMAINS),
        unschedulable=mostly(False, st.just(True)),
        ready=mostly(True, st.just(False)),
        capacity_tunnels=mostly(None, st.integers(0, 6)),
        capacity_bandwidth=mostly(None, st.integers(0, 30)),
    )


placements = mostly(
    RelayPlacement(),
    st.one_of(
        st.builds(RelayPlacement, node=st.sampled_from([*RELAY_NAMES, "r9"])),
        st.builds(RelayPlacement, pool=st.just("p1")),
        st.builds(
            RelayPlacement, node_selector=st.sampled_from([{"region": "eu"}, {"region": "us"}])
        ),
    ),
)
# A namespace's TunnelQuota hard.pools: mostly none, else p1, p2 (no relay) or an empty list.
pool_filters = mostly(
    None,
    st.sampled_from([frozenset({"p1"}), frozenset({"p2"}), frozenset({"p1", "p2"}), frozenset()]),
)
requests = st.one_of(
    st.builds(
        TunnelRequest,
        key=st.sampled_from(KEYS),
        protocol=st.sampled_from(["tcp", "udp"]),
        placement=placements,
        pools=pool_filters,
        remote_port=mostly(None, st.integers(PORT_LOW - 1, PORT_HIGH + 1)),
        bandwidth=mostly(None, st.integers(1, 12)),
    ),
    st.builds(
        TunnelRequest,
        key=st.sampled_from(KEYS),
        protocol=st.sampled_from(["http", "https"]),
        placement=placements,
        subdomain=st.one_of(st.none(), st.sampled_from(SUBDOMAINS)),
        bandwidth=mostly(None, st.integers(1, 12)),
        custom_domains=custom_domain_lists,
        pools=pool_filters,
    ),
)


allocations = st.builds(
    Allocation,
    key=st.sampled_from(KEYS),
    relay=st.sampled_from([*RELAY_NAMES, "r9"]),
    protocol=st.sampled_from(["tcp", "udp", "http", "https"]),
    port=st.one_of(st.none(), st.integers(PORT_LOW - 2, PORT_HIGH + 2)),
    subdomain=st.one_of(st.none(), st.sampled_from(SUBDOMAINS)),
    http_domain=st.one_of(st.none(), st.sampled_from(DOMAINS)),
    bandwidth=st.one_of(st.none(), st.integers(1, 12)),
    custom_domains=custom_domain_lists,
)


# A brute-force model of what the table decides --------------------------------------------------


def provider_owned(host: str, views: Iterable[RelayView]) -> bool:
    """Whether a host name is some relay's httpDomain or lies under one."""
    return any(host == v.http_domain or host.endswith(f".{v.http_domain}") for v in views)


def custom_domains_free(
    req: TunnelRequest, views: Iterable[RelayView], others: list[Allocation]
) -> bool:
    """Whether the request's custom domains may be its own, on any relay."""
    held = {h for a in others for h in a.hosts}
    wanted = req.custom_domains if uses_subdomain(req.protocol) else ()
    return not any(provider_owned(h, views) or h in held for h in wanted)


def fits(view: RelayView, req: TunnelRequest, others: list[Allocation], own: bool = False) -> bool:
    """Whether `view` can take `req`, next to the other keys' allocations, by exhaustion
    (custom domains aside: `custom_domains_free` decides for every relay at once). `own`: the
    tunnel is on this relay already, which cordon and readiness do not keep it off."""
    on_relay = [a for a in others if a.relay == view.name]
    if not view.matches(req.placement) or req.protocol not in view.protocols:
        return False
    if req.pools is not None and view.pool not in req.pools:
        return False
    if (view.unschedulable or not view.ready) and not own:
        return False
    if view.capacity_tunnels is not None and len(on_relay) >= view.capacity_tunnels:
        return False
    used_bandwidth = sum(a.bandwidth or 0 for a in on_relay)
    if req.bandwidth and view.capacity_bandwidth is not None:
        if used_bandwidth + req.bandwidth > view.capacity_bandwidth:
            return False
    if uses_port(req.protocol):
        held = {a.port for a in on_relay if a.protocol == req.protocol}
        wanted = [req.remote_port] if req.remote_port is not None else list(view.port_range)
        return any(view.port_allowed(p) and p not in held for p in wanted)
    if not view.http_domain:
        return False
    if req.subdomain is None:
        return True
    held = {h for a in others for h in a.hosts}
    return f"{req.subdomain}.{view.http_domain}" not in held


def still_satisfies(views: dict[str, RelayView], alloc: Allocation, req: TunnelRequest) -> bool:
    """Whether the allocation must be kept for the (unchanged-bandwidth) request."""
    view = views.get(alloc.relay)
    if view is None or alloc.protocol != req.protocol or not view.matches(req.placement):
        return False
    if req.protocol not in view.protocols:
        return False
    if uses_port(req.protocol):
        return req.remote_port in (None, alloc.port) and view.port_allowed(alloc.port)
    return (
        req.subdomain in (None, alloc.subdomain)
        and alloc.http_domain == view.http_domain
        and alloc.custom_domains == normal_hosts(req.custom_domains)
        and not any(provider_owned(h, views.values()) for h in alloc.custom_domains)
    )


def load(view: RelayView, tunnels: int) -> float:
    capacity = view.capacity_tunnels
    if capacity is None:
        capacity = view.allowed_port_count()
    return tunnels / max(capacity, 1)


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = AllocationTable()
        self.views: dict[str, RelayView] = {}
        self.requests: dict[tuple[str, str], TunnelRequest] = {}
        self.hosts_seen: set[str] = set(CUSTOM_DOMAINS)  # for the check of stale holds

    @initialize(views=st.tuples(*(relay_views(name) for name in RELAY_NAMES)))
    def start_with_relays(self, views: tuple[RelayView, ...]) -> None:
        for view in views:
            self._set_relay(view)

    # Relays ---------------------------------------------------------------------------------

    def _set_relay(self, view: RelayView) -> None:
        self.table.upsert_relay(view)
        self.views[view.name] = view

    @rule(view=relay_views())
    def upsert_relay(self, view: RelayView) -> None:
        self._set_relay(view)

    @precondition(lambda self: self.views)
    @rule(data=st.data(), span=spans())
    def block_ports(self, data: st.DataObject, span: PortSpan) -> None:
        view = self.views[data.draw(st.sampled_from(sorted(self.views)))]
        self._set_relay(_with(view, blocked=(*view.blocked, span)))

    @precondition(lambda self: self.views)
    @rule(data=st.data(), change=st.sampled_from(["cordon", "uncordon", "lost", "ready"]))
    def flip_readiness_or_cordon(self, data: st.DataObject, change: str) -> None:
        view = self.views[data.draw(st.sampled_from(sorted(self.views)))]
        if change in ("cordon", "uncordon"):
            self._set_relay(_with(view, unschedulable=change == "cordon"))
        else:
            self._set_relay(_with(view, ready=change == "ready"))

    @precondition(lambda self: self.views)
    @rule(data=st.data(), domain=st.sampled_from(DOMAINS))
    def change_http_domain(self, data: st.DataObject, domain: str) -> None:
        view = self.views[data.draw(st.sampled_from(sorted(self.views)))]
        self._set_relay(_with(view, http_domain=domain))

    @precondition(lambda self: len(self.views) > 1)  # the last one goes in the example tests
    @rule(data=st.data())
    def remove_relay(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.views)))
        on_it = self.table.allocations_on(name)
        assert self.table.remove_relay(name) == on_it
        del self.views[name]
        for alloc in on_it:
            assert self.table.allocation_of(alloc.key) is None

    # Tunnels --------------------------------------------------------------------------------

    @rule(req=requests)
    def schedule(self, req: TunnelRequest) -> None:
        self._schedule(req)

    @precondition(lambda self: self.table.allocations())
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def ask_for_what_another_holds(self, data: st.DataObject, key: tuple[str, str]) -> None:
        """Request the port, subdomain or custom domains some tunnel holds (the race
        admission cannot stop)."""
        held = data.draw(st.sampled_from(self.table.allocations()))
        self._schedule(
            TunnelRequest(
                key,
                held.protocol,
                remote_port=held.port,
                subdomain=held.subdomain,
                custom_domains=data.draw(st.sampled_from([held.custom_domains, ()])),
            )
        )

    @precondition(lambda self: any(v.capacity_bandwidth for v in self.views.values()))
    @rule(data=st.data(), key=st.sampled_from(KEYS), slack=st.sampled_from([0, 1]))
    def fill_bandwidth(self, data: st.DataObject, key: tuple[str, str], slack: int) -> None:
        """Ask for exactly the bandwidth a relay has left, or one bit/s more."""
        relay = data.draw(
            st.sampled_from(sorted(n for n, v in self.views.items() if v.capacity_bandwidth))
        )
        left = self.views[relay].capacity_bandwidth - self.table.usage(relay).bandwidth
        mine = self.table.allocation_of(key)
        if mine is not None and mine.relay == relay:
            left += mine.bandwidth or 0
        if left + slack > 0:
            placement = RelayPlacement(node=relay)
            self._schedule(TunnelRequest(key, "tcp", placement, bandwidth=left + slack))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def change_request(self, data: st.DataObject) -> None:
        """Change the spec of a known tunnel: its port, protocol, placement or bandwidth."""
        key = data.draw(st.sampled_from(sorted(self.requests)))
        self._schedule(dataclasses.replace(data.draw(requests), key=key))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def reschedule_unchanged(self, data: st.DataObject) -> None:
        """What the reconciler does on every event of a tunnel."""
        req = self.requests[data.draw(st.sampled_from(sorted(self.requests)))]
        after = self._schedule(req)
        again = self.table.schedule(req)
        if isinstance(after, Unschedulable):
            # Unbound now, it no longer has a relay of its own to stay on: still unschedulable,
            # though the closest relay's reason may differ.
            assert isinstance(again, Unschedulable), "schedule must be idempotent"
        else:
            assert again == after, "schedule must be idempotent"

    @precondition(lambda self: self.table.allocations())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        alloc = data.draw(st.sampled_from(self.table.allocations()))
        assert self.table.release(alloc.key) == alloc
        assert self.table.allocation_of(alloc.key) is None
        assert self.table.release(alloc.key) is None

    @precondition(lambda self: self.table.allocations())
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def restore_a_copy(self, data: st.DataObject, key: tuple[str, str]) -> None:
        """Statuses that claim what another tunnel holds (a copied status, a stale one)."""
        self.restore(data.draw(st.sampled_from(self.table.allocations())), key)

    @rule(alloc=allocations)
    def restore(self, alloc: Allocation, key: tuple[str, str] | None = None) -> None:
        alloc = dataclasses.replace(alloc, key=key or alloc.key)
        others = [a for a in self.table.allocations() if a.key != alloc.key]
        before = self.table.allocation_of(alloc.key)
        conflict = any(_clash(alloc, other) for other in others)
        self.hosts_seen.update(alloc.hosts)
        complete = (
            alloc.port is not None
            if uses_port(alloc.protocol)
            else bool(alloc.subdomain and alloc.http_domain)
        )
        expected = alloc.relay in self.views and complete and not conflict
        assert self.table.restore(alloc) == expected
        # Recorded as read, with its custom domains as a request names them (a status or a
        # spec may list them in any order).
        hosts = wanted_hosts(alloc.protocol, alloc.custom_domains)
        recorded = dataclasses.replace(alloc, custom_domains=hosts)
        assert self.table.allocation_of(alloc.key) == (recorded if expected else before)

    @rule(release_first=st.booleans())
    def move_misplaced(self, release_first: bool) -> None:
        """What the reconciler does after a relay changed."""
        for alloc in self.table.misplaced():
            req = self.requests.get(alloc.key) or TunnelRequest(alloc.key, alloc.protocol)
            if release_first:
                self.table.release(alloc.key)
                result = self.table.schedule(req, prefer=alloc)
            else:
                result = self.table.schedule(req)
            assert result != alloc
        assert self.table.misplaced() == []

    def _schedule(self, req: TunnelRequest) -> Allocation | Unschedulable:
        """Schedule and check the answer against the brute-force model."""
        before = self.table.allocation_of(req.key)
        others = [a for a in self.table.allocations() if a.key != req.key]
        own = before.relay if before is not None else None
        feasible = [v for v in self.views.values() if fits(v, req, others, own=v.name == own)]
        if not custom_domains_free(req, self.views.values(), others):
            feasible = []
        result = self.table.schedule(req)
        self.requests[req.key] = req
        event(f"schedule: {getattr(result, 'reason', 'allocated')}")
        if before is not None and before.bandwidth == req.bandwidth:
            if still_satisfies(self.views, before, req):
                assert result == before, "a tunnel that still fits must keep its allocation"
        if isinstance(result, Unschedulable):
            assert result.reason in REASONS
            assert result.message.startswith(f"0/{len(self.views)} RelayNodes fit: ")
            assert self.table.allocation_of(req.key) is None
            assert not feasible, f"{feasible[0].name} fits {req} but got {result}"
            return result
        assert self.table.allocation_of(req.key) == result
        assert self.table.misplacement(req.key) is None
        assert result.protocol == req.protocol and result.bandwidth == req.bandwidth
        self.hosts_seen.update(result.hosts)
        view = self.views[result.relay]
        assert still_satisfies(self.views, result, req)
        if before is not None and _endpoint(before) == _endpoint(result):
            return result  # kept (the bandwidth may change in place, even on a cordoned relay)
        # A new allocation: on a relay that fits, with what was asked, spread evenly.
        assert view in feasible
        if uses_port(req.protocol):
            assert result.port is not None and view.port_allowed(result.port)
            assert req.remote_port in (None, result.port)
        else:
            assert result.http_domain == view.http_domain
            assert req.subdomain in (None, result.subdomain)
        if before is None:
            counts = Counter(a.relay for a in others)
            best = min(feasible, key=lambda v: (load(v, counts[v.name]), v.name))
            assert result.relay == best.name, "the least allocated relay wins"
        return result

    # Invariants -----------------------------------------------------------------------------

    @invariant()
    def one_tunnel_per_port_and_host_name(self) -> None:
        allocs = self.table.allocations()
        ports = [(a.relay, a.protocol, a.port) for a in allocs if uses_port(a.protocol)]
        names = [(a.http_domain, a.subdomain) for a in allocs if uses_subdomain(a.protocol)]
        hosts = [h for a in allocs for h in a.hosts]
        assert len(ports) == len(set(ports))
        assert len(hosts) == len(set(hosts)), "a host name held by two tunnels"
        assert all(p is not None for _, _, p in ports) and all(all(n) for n in names)

    @invariant()
    def the_table_holds_exactly_the_allocations_host_names(self) -> None:
        """No stale hold: a host name is held by the allocation that has it, else by nobody."""
        owners = {h: a.key for a in self.table.allocations() for h in a.hosts}
        for host in self.hosts_seen | owners.keys():
            expected = {owners[host]} if host in owners else set()
            assert self.table.host_holders(host) == expected, host

    @invariant()
    def ports_are_allowed_until_reported(self) -> None:
        misplaced = set(self.table.misplaced())
        for alloc in self.table.allocations():
            view = self.views[alloc.relay]
            if uses_port(alloc.protocol) and not view.port_allowed(alloc.port):
                assert alloc in misplaced

    @invariant()
    def usage_matches_the_allocations(self) -> None:
        allocs = self.table.allocations()
        assert [v.name for v in self.table.relays()] == sorted(self.views)
        for name in self.views:
            on_relay = [a for a in allocs if a.relay == name]
            assert self.table.allocations_on(name) == on_relay
            assert self.table.usage(name) == RelayUsage(
                tunnels=len(on_relay),
                ports=sum(1 for a in on_relay if uses_port(a.protocol)),
                bandwidth=sum(a.bandwidth or 0 for a in on_relay),
            )
        assert all(a.relay in self.views for a in allocs)

    @invariant()
    def the_namespace_index_matches_the_allocations(self) -> None:
        allocs = self.table.allocations()
        for namespace in {key[0] for key in KEYS}:
            expected = {a.key: a for a in allocs if a.key[0] == namespace}
            assert dict(self.table.allocations_in(namespace)) == expected


def _clash(a: Allocation, b: Allocation) -> bool:
    if uses_port(a.protocol):
        return (a.relay, a.protocol, a.port) == (b.relay, b.protocol, b.port)
    return bool(set(a.hosts) & set(b.hosts))


def _endpoint(a: Allocation) -> tuple:
    return (a.relay, a.protocol, a.port, a.http_domain, a.subdomain, a.custom_domains)


def _with(view: RelayView, **changes) -> RelayView:
    fields = {f: getattr(view, f) for f in view.__dataclass_fields__}
    return RelayView(**{**fields, **changes})


TableMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_allocation_table = TableMachine.TestCase


# Free ports against a plain set ----------------------------------------------------------------


@st.composite
def free_port_ops(draw: st.DrawFn):
    first = draw(st.integers(1, 3000))
    span = PortSpan(first, first + draw(st.integers(0, 2500)))
    ports = st.integers(span.first - 2, span.last + 2)
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("add"), ports),
                st.tuples(st.just("discard"), ports),
                st.tuples(st.just("next"), st.just(0)),
            ),
            max_size=60,
        )
    )
    initial = draw(st.lists(spans(span.first - 5, span.last + 5), max_size=3))
    return span, initial, ops


@settings(max_examples=200, deadline=None)
@given(case=free_port_ops())
def test_free_ports_behave_like_a_set_with_a_cursor(case) -> None:
    span, initial, ops = case
    free = FreePorts(span, initial)
    model = {p for run in initial for p in run if p in span}
    cursor = span.first
    for op, port in ops:
        if op == "add":
            free.add(port)
            if port in span:
                model.add(port)
        elif op == "discard":
            free.discard(port)
            model.discard(port)
        else:
            expected = min((p for p in model if p >= cursor), default=min(model, default=None))
            assert free.next_fit() == expected
            if expected is not None:
                cursor = expected + 1 if expected < span.last else span.first
        assert len(free) == len(model) and bool(free) == bool(model)
    assert {p for p in range(span.first - 2, span.last + 3) if p in free} == model
