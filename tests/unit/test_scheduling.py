"""The scheduler and allocator by example: where tunnels go, which port or subdomain they get,
what stays put, and what users are told when nothing fits."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from tunnelop.api.v1alpha1 import PortSpan, RelayNode, RelayPlacement, Tunnel
from tunnelop.builders.frps import build_frps_config
from tunnelop.contract.table import TableEntry
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import (
    CAPACITY_EXHAUSTED,
    CUSTOM_DOMAIN_NOT_ALLOWED,
    CUSTOM_DOMAIN_TAKEN,
    NO_RELAY_MATCHES,
    NO_RELAY_READY,
    PORT_NOT_ALLOWED,
    PORT_TAKEN,
    PROTOCOL_NOT_ALLOWED,
    SUBDOMAIN_TAKEN,
    Allocation,
    AllocationTable,
    RelayUsage,
    TunnelRequest,
    Unschedulable,
    subdomain_candidates,
)
from tunnelop.domain.scheduling.freeports import FreePorts

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def relay(name: str = "relay-1", first: int = 20000, last: int = 20099, **fields) -> RelayView:
    return RelayView(name=name, port_range=PortSpan(first, last), **fields)


def web_relay(name: str, domain: str = "example.com", **fields) -> RelayView:
    return relay(name, protocols=("tcp", "http", "https"), http_domain=domain, **fields)


def request(name: str = "t", protocol: str = "tcp", namespace: str = "tenant", **fields):
    return TunnelRequest(key=(namespace, name), protocol=protocol, **fields)


def node(name: str) -> RelayPlacement:
    return RelayPlacement(node=name)


def table_with(*relays: RelayView) -> AllocationTable:
    table = AllocationTable()
    for view in relays:
        table.upsert_relay(view)
    return table


def allocated(result: Allocation | Unschedulable) -> Allocation:
    assert isinstance(result, Allocation), result
    return result


def refused(result: Allocation | Unschedulable) -> Unschedulable:
    assert isinstance(result, Unschedulable), result
    return result


# Requests from Tunnels -------------------------------------------------------------------------


def test_request_from_tunnel() -> None:
    tunnel = Tunnel.model_validate(
        {
            "kind": "Tunnel",
            "metadata": {"name": "game", "namespace": "alice"},
            "spec": {
                "protocol": "udp",
                "remotePort": 25565,
                "bandwidth": "10M",
                "relay": {"pool": "eu", "nodeSelector": {"tier": "paid"}},
            },
        }
    )
    req = TunnelRequest.from_tunnel(tunnel)
    assert req.key == ("alice", "game")
    assert (req.protocol, req.remote_port, req.subdomain) == ("udp", 25565, None)
    assert req.bandwidth == 10_000_000
    assert req.placement == RelayPlacement(pool="eu", node_selector={"tier": "paid"})
    assert hash(req) == hash(dataclasses.replace(req))  # usable as a dict key


def test_relay_view_counts_allowed_ports() -> None:
    view = relay(
        first=100,
        last=119,
        reserved=(PortSpan(90, 100), PortSpan(105, 105)),
        blocked=(PortSpan(104, 106), PortSpan(118, 130)),
    )
    assert view.allowed_spans() == [PortSpan(101, 103), PortSpan(107, 117)]
    assert view.allowed_port_count() == 14
    model = RelayNode.model_validate(
        {"kind": "RelayNode", "metadata": {"name": "r"}, "spec": {"ports": {"range": "1-10"}}}
    )
    assert RelayView.from_model(model).allowed_port_count() == 10


# Ports -----------------------------------------------------------------------------------------


def test_ports_are_handed_out_in_order_and_rescheduling_changes_nothing() -> None:
    table = table_with(relay())
    first = allocated(table.schedule(request("a")))
    second = allocated(table.schedule(request("b")))
    assert (first.relay, first.port, second.port) == ("relay-1", 20000, 20001)
    assert table.schedule(request("a")) is first
    # A preference does not move a tunnel that is fine where it is.
    assert table.schedule(request("a"), prefer=dataclasses.replace(first, port=20050)) is first


def test_tcp_and_udp_are_separate_port_families() -> None:
    table = table_with(relay())
    tcp = allocated(table.schedule(request("a", "tcp", remote_port=20007)))
    udp = allocated(table.schedule(request("b", "udp", remote_port=20007)))
    assert (tcp.port, udp.port) == (20007, 20007)
    assert table.usage("relay-1") == RelayUsage(tunnels=2, ports=2, bandwidth=0)


def test_released_ports_are_reused_only_after_the_rest_of_the_range() -> None:
    table = table_with(relay(first=100, last=103))
    ports = [allocated(table.schedule(request(f"t{i}"))).port for i in range(3)]
    assert ports == [100, 101, 102]
    table.release(("tenant", "t0"))
    assert allocated(table.schedule(request("t3"))).port == 103
    assert allocated(table.schedule(request("t4"))).port == 100  # wrapped around


def test_reserved_and_blocked_ports_are_never_handed_out() -> None:
    view = relay(first=100, last=109, reserved=(PortSpan(100, 101),), blocked=(PortSpan(104, 107),))
    table = table_with(view)
    ports = [allocated(table.schedule(request(f"t{i}"))).port for i in range(4)]
    assert ports == [102, 103, 108, 109]
    assert refused(table.schedule(request("t5"))).reason == CAPACITY_EXHAUSTED


def test_requested_port_taken_names_the_relay_and_suggests_omitting_remote_port() -> None:
    table = table_with(relay("relay-1"))
    allocated(table.schedule(request("minecraft", namespace="bob", remote_port=20065)))
    result = refused(table.schedule(request("mine", namespace="alice", remote_port=20065)))
    assert result == Unschedulable(
        PORT_TAKEN,
        "0/1 RelayNodes fit: 1 (relay-1) has tcp port 20065 taken by a tunnel of another "
        "namespace. Choose another spec.remotePort or omit spec.remotePort to get a free port "
        "allocated.",
    )
    # Within the namespace, the holder is named; the other family is free.
    same = refused(table.schedule(request("mine", namespace="bob", remote_port=20065)))
    assert "taken by tunnel minecraft of this namespace" in same.message
    assert allocated(table.schedule(request("mine", "udp", "alice", remote_port=20065)))


def test_requested_port_not_allowed() -> None:
    view = relay(first=20000, last=20099, reserved=(PortSpan(20001, 20001),))
    table = table_with(view)
    result = refused(table.schedule(request(remote_port=20001)))
    assert result == Unschedulable(
        PORT_NOT_ALLOWED,
        "0/1 RelayNodes fit: 1 (relay-1) refuses spec.remotePort 20001 (reserved; allowed "
        "20000-20099 except reserved 20001). Choose a spec.remotePort the relay allows or "
        "omit spec.remotePort to get a free port allocated.",
    )
    outside = refused(table.schedule(request(remote_port=22)))
    assert "refuses spec.remotePort 22 (outside 20000-20099;" in outside.message


def test_no_free_port_left() -> None:
    table = table_with(relay(first=100, last=100))
    allocated(table.schedule(request("a")))
    assert refused(table.schedule(request("b"))) == Unschedulable(
        CAPACITY_EXHAUSTED,
        "0/1 RelayNodes fit: 1 (relay-1) has no free tcp port. Wait for tunnels to be removed "
        "or ask the provider for more ports.",
    )
    assert allocated(table.schedule(request("b", "udp"))).port == 100


# Placement and the other reasons ----------------------------------------------------------------


def test_no_relay_matches_placement() -> None:
    table = table_with(relay("us-1", labels={"region": "us"}), relay("us-2"))
    placement = RelayPlacement(node_selector={"region": "eu"})
    assert refused(table.schedule(request(placement=placement))) == Unschedulable(
        NO_RELAY_MATCHES,
        "0/2 RelayNodes fit: 2 do not match spec.relay (nodeSelector region=eu). "
        "Change spec.relay.",
    )
    missing = refused(table.schedule(request(placement=node("eu-9"))))
    assert missing.message == (
        "0/2 RelayNodes fit: 2 do not match spec.relay (node eu-9). "
        "Change spec.relay.node (there is no RelayNode eu-9)."
    )


def test_no_relays_at_all() -> None:
    result = refused(AllocationTable().schedule(request()))
    assert result.reason == NO_RELAY_MATCHES
    assert result.message.startswith("0/0 RelayNodes fit: there are no RelayNodes.")


def test_pool_placement() -> None:
    pooled = relay("b-relay", labels={"tunnelop.dev/pool": "gold"})
    table = table_with(relay("a-relay"), pooled)
    result = allocated(table.schedule(request(placement=RelayPlacement(pool="gold"))))
    assert result.relay == "b-relay"


def test_protocol_not_allowed_says_what_to_change() -> None:
    table = table_with(
        relay("eu-1", labels={"region": "eu"}),
        relay("us-1", labels={"region": "us"}, protocols=("tcp", "http"), http_domain="us.dev"),
        relay("us-2", labels={"region": "us"}),
    )
    placement = RelayPlacement(node_selector={"region": "eu"})
    assert refused(table.schedule(request(protocol="http", placement=placement))) == Unschedulable(
        PROTOCOL_NOT_ALLOWED,
        "0/3 RelayNodes fit: 2 do not match spec.relay (nodeSelector region=eu), 1 (eu-1) does "
        "not allow protocol http (allows tcp, udp). Change spec.protocol, ask the provider to "
        "enable http on a relay or change spec.relay.",
    )


def test_relay_without_http_domain_takes_no_http_tunnels() -> None:
    table = table_with(relay(protocols=("http",)))
    result = refused(table.schedule(request(protocol="http")))
    assert result.reason == PROTOCOL_NOT_ALLOWED
    assert "has no httpDomain" in result.message


def test_cordoned_and_unready_relays_take_no_new_tunnels() -> None:
    table = table_with(relay("a", unschedulable=True), relay("b", ready=False))
    assert refused(table.schedule(request())) == Unschedulable(
        NO_RELAY_READY,
        "0/2 RelayNodes fit: 1 (a) is cordoned (unschedulable), 1 (b) is not ready. "
        "Wait for a relay to become ready or wait for the provider to uncordon a relay.",
    )


def test_cordon_and_readiness_do_not_move_existing_tunnels() -> None:
    table = table_with(relay("a"))
    existing = allocated(table.schedule(request()))
    table.upsert_relay(relay("a", unschedulable=True, ready=False))
    assert table.misplaced() == []
    assert table.schedule(request()) is existing


def test_the_closest_relay_names_the_reason() -> None:
    table = table_with(relay("a", ready=False), relay("b", protocols=("udp",)), relay("c"))
    allocated(table.schedule(request("holder", remote_port=20001)))
    result = refused(table.schedule(request("t", remote_port=20001)))
    assert result.reason == PORT_TAKEN
    assert result.message.startswith(
        "0/3 RelayNodes fit: 1 (b) does not allow protocol tcp (allows udp), 1 (a) is not "
        "ready, 1 (c) has tcp port 20001 taken by tunnel holder of this namespace. "
        "Choose another spec.remotePort"
    )


# Capacity and spread -----------------------------------------------------------------------------


def test_capacity_by_tunnels() -> None:
    table = table_with(relay(capacity_tunnels=2))
    allocated(table.schedule(request("a")))
    allocated(table.schedule(request("b", "udp")))
    assert refused(table.schedule(request("c"))) == Unschedulable(
        CAPACITY_EXHAUSTED,
        "0/1 RelayNodes fit: 1 (relay-1) is full (capacity.tunnels). Wait for tunnels to be "
        "removed or ask the provider for more capacity.",
    )
    table.release(("tenant", "a"))
    assert allocated(table.schedule(request("c")))


def test_capacity_by_bandwidth() -> None:
    table = table_with(relay(capacity_bandwidth=100_000_000))
    allocated(table.schedule(request("a", bandwidth=60_000_000)))
    allocated(table.schedule(request("unlimited")))  # no limit: does not count
    assert table.usage("relay-1") == RelayUsage(tunnels=2, ports=2, bandwidth=60_000_000)
    assert refused(table.schedule(request("b", bandwidth=50_000_000))) == Unschedulable(
        CAPACITY_EXHAUSTED,
        "0/1 RelayNodes fit: 1 (relay-1) has less than spec.bandwidth 50M left of "
        "capacity.bandwidth. Lower spec.bandwidth or ask the provider for more capacity.",
    )
    assert allocated(table.schedule(request("b", bandwidth=40_000_000)))


def test_bandwidth_change_stays_in_place_when_it_fits() -> None:
    table = table_with(relay("a", capacity_bandwidth=100), relay("b"))
    first = allocated(table.schedule(request(bandwidth=50)))
    assert first.relay == "a"
    table.upsert_relay(relay("a", capacity_bandwidth=100, unschedulable=True))
    raised = allocated(table.schedule(request(bandwidth=90)))
    assert (raised.relay, raised.port, raised.bandwidth) == ("a", first.port, 90)
    assert table.usage("a").bandwidth == 90
    # Too much for relay a: the tunnel moves, keeping its port where that is free.
    moved = allocated(table.schedule(request(bandwidth=200)))
    assert (moved.relay, moved.port, moved.bandwidth) == ("b", first.port, 200)
    assert table.usage("a") == RelayUsage()


def test_spread_to_the_least_allocated_relay() -> None:
    table = table_with(relay("a"), relay("b"), relay("c"))
    relays = [allocated(table.schedule(request(f"t{i}"))).relay for i in range(6)]
    assert relays == ["a", "b", "c", "a", "b", "c"]
    # Load is relative to capacity: a relay twice as big gets twice the tunnels.
    table = table_with(relay("big", capacity_tunnels=20), relay("small", capacity_tunnels=10))
    relays = [allocated(table.schedule(request(f"t{i}"))).relay for i in range(15)]
    assert relays.count("big") == 10 and relays.count("small") == 5
    # Without capacity.tunnels, the size in ports counts.
    table = table_with(relay("wide", first=1000, last=1399), relay("narrow", first=1, last=100))
    relays = [allocated(table.schedule(request(f"t{i}"))).relay for i in range(50)]
    assert relays.count("wide") == 40 and relays.count("narrow") == 10


# Subdomains --------------------------------------------------------------------------------------


def test_generated_subdomain_is_readable_and_unique() -> None:
    table = table_with(web_relay("web-1"))
    blog = allocated(table.schedule(request("blog", "http", "alice")))
    assert (blog.subdomain, blog.http_domain, blog.port) == ("blog-alice", "example.com", None)
    assert blog.host == "blog-alice.example.com"
    # Tunnel "blog" of namespace "alice-x" would like it too: a hash makes it unique.
    taken = allocated(table.schedule(request("blog-alice", "http", "x")))
    assert taken.subdomain == "blog-alice-x"
    taken = allocated(table.schedule(request("blog", "https", "alice-x")))
    assert taken.subdomain != "blog-alice"
    assert DNS_LABEL.fullmatch(taken.subdomain) and taken.subdomain.startswith("blog-alice-")


def test_generated_subdomains_are_valid_dns_labels() -> None:
    for key in [("ns", "a" * 253), ("Odd.NS", "x.y_z"), ("", "-"), ("ns", "web")]:
        candidates = subdomain_candidates(key)
        labels = [next(candidates) for _ in range(3)]
        assert len(set(labels)) == 3
        for label in labels:
            assert len(label) <= 63 and DNS_LABEL.fullmatch(label), label
        assert labels == [next(c) for c in [subdomain_candidates(key)] for _ in range(3)]


def test_subdomain_taken_across_relays_sharing_the_http_domain() -> None:
    table = table_with(web_relay("web-1"), web_relay("web-2"), web_relay("other", "other.dev"))
    on_one = allocated(table.schedule(request("blog", "http", "bob", subdomain="blog")))
    assert on_one.relay == "other"  # all empty: ties go by name
    allocated(
        table.schedule(request("shop", "http", "bob", subdomain="shop", placement=node("web-1")))
    )
    result = refused(
        table.schedule(request("shop", "https", "alice", subdomain="shop", placement=node("web-2")))
    )
    assert result == Unschedulable(
        SUBDOMAIN_TAKEN,
        "0/3 RelayNodes fit: 2 do not match spec.relay (node web-2), 1 (web-2) serves "
        "example.com, where spec.subdomain shop is taken by a tunnel of another namespace. "
        "Choose another spec.subdomain, omit spec.subdomain to get one generated or change "
        "spec.relay.",
    )
    # Without the node constraint, the relay with another httpDomain takes it.
    elsewhere = allocated(table.schedule(request("shop", "https", "alice", subdomain="shop")))
    assert (elsewhere.relay, elsewhere.http_domain) == ("other", "other.dev")


# Moves, misplacement and restore ---------------------------------------------------------------


def test_blocked_port_is_reported_and_moved_keeping_the_port_elsewhere() -> None:
    table = table_with(relay("a"), relay("b"))
    game = allocated(table.schedule(request("game", remote_port=None)))
    assert (game.relay, game.port) == ("a", 20000)
    table.upsert_relay(relay("a", blocked=(PortSpan(20000, 20009),)))
    assert table.misplaced() == [game]
    assert table.misplaced("b") == []
    assert table.misplacement(game.key) == "port 20000 is blocked on RelayNode a"
    # The reconciler's move: release, then schedule preferring the old allocation.
    table.release(game.key)
    moved = allocated(table.schedule(request("game"), prefer=game))
    assert (moved.relay, moved.port) == ("b", 20000)
    assert table.misplaced() == []


def test_schedule_itself_moves_a_misplaced_allocation() -> None:
    table = table_with(relay("a"))
    game = allocated(table.schedule(request("game")))
    table.upsert_relay(relay("a", first=30000, last=30010))
    assert table.misplacement(game.key) == "port 20000 is outside 30000-30010 on RelayNode a"
    moved = allocated(table.schedule(request("game")))
    assert (moved.relay, moved.port) == ("a", 30000)
    assert table.usage("a").ports == 1


def test_dropped_protocol_and_changed_http_domain_are_misplacements() -> None:
    table = table_with(web_relay("web-1"))
    site = allocated(table.schedule(request("site", "http")))
    table.upsert_relay(web_relay("web-1", "new.dev"))
    assert table.misplacement(site.key) == (
        "RelayNode web-1 serves httpDomain new.dev instead of example.com"
    )
    table.upsert_relay(relay("web-1", protocols=("tcp",)))
    assert table.misplacement(site.key) == "RelayNode web-1 no longer allows http"
    assert refused(table.schedule(request("site", "http"))).reason == PROTOCOL_NOT_ALLOWED
    assert table.allocation_of(site.key) is None


def test_moved_http_tunnel_keeps_its_url_on_a_relay_of_the_same_domain() -> None:
    table = table_with(web_relay("web-1"), web_relay("web-2"))
    site = allocated(table.schedule(request("site", "http")))
    assert site.relay == "web-1"
    released = table.remove_relay("web-1")
    assert released == [site]
    moved = allocated(table.schedule(request("site", "http"), prefer=site))
    assert (moved.relay, moved.host) == ("web-2", site.host)
    # A preference read from status has no httpDomain: the subdomain is kept all the same.
    table = table_with(web_relay("web-1"), web_relay("web-2"))
    from_status = Allocation(site.key, "web-3", "http", subdomain="kept")
    kept = allocated(table.schedule(request("site", "http"), prefer=from_status))
    assert kept.host == "kept.example.com"


def test_remove_relay_releases_its_allocations() -> None:
    table = table_with(relay("a"), relay("b"))
    on_a = allocated(table.schedule(request("x", remote_port=20003, placement=node("a"))))
    allocated(table.schedule(request("y", placement=node("b"))))
    assert table.remove_relay("a") == [on_a]
    assert table.allocation_of(on_a.key) is None
    assert [v.name for v in table.relays()] == ["b"]
    assert table.usage("a") == RelayUsage()
    assert table.remove_relay("a") == []


def test_changing_the_requested_port_moves_within_the_relay() -> None:
    table = table_with(relay("a"), relay("b"))
    first = allocated(table.schedule(request("t")))
    allocated(table.schedule(request("u")))  # b
    allocated(table.schedule(request("v")))  # a, 20001: a and b are even again
    changed = allocated(table.schedule(request("t", remote_port=20050)))
    assert (changed.relay, changed.port) == (first.relay, 20050)
    assert table.allocation_of(first.key) == changed
    assert 20000 not in {a.port for a in table.allocations_on("a")}


def test_restore_records_what_statuses_say() -> None:
    table = table_with(relay("a"), web_relay("w"))
    game = Allocation(("alice", "game"), "a", "tcp", port=20042)
    site = Allocation(("alice", "site"), "w", "http", subdomain="blog", http_domain="example.com")
    assert table.restore(game) and table.restore(site)
    assert table.restore(game)  # again: nothing changes
    # Conflicts: the caller schedules those tunnels afresh.
    assert not table.restore(dataclasses.replace(game, key=("bob", "game")))
    assert not table.restore(dataclasses.replace(site, key=("bob", "site"), relay="a"))
    assert not table.restore(dataclasses.replace(game, key=("bob", "x"), relay="gone"))
    assert not table.restore(Allocation(("bob", "y"), "a", "tcp"))  # no port
    assert table.restore(dataclasses.replace(game, key=("bob", "game"), protocol="udp"))
    # Restored allocations are kept as they are, and rescheduling keeps them.
    assert table.schedule(request("game", namespace="alice")) == game
    assert table.schedule(request("site", "http", "alice")) == site
    taken = refused(table.schedule(request("n", "http", "bob", subdomain="blog")))
    assert taken.reason == SUBDOMAIN_TAKEN
    # A new tunnel does not get a restored port.
    assert allocated(table.schedule(request("new", placement=node("a")))).port == 20000


def test_restore_keeps_a_now_blocked_port_until_it_is_moved() -> None:
    table = table_with(relay("a", blocked=(PortSpan(20042, 20042),)))
    game = Allocation(("alice", "game"), "a", "tcp", port=20042)
    assert table.restore(game)
    assert table.misplaced() == [game]
    assert table.usage("a").ports == 1
    table.release(game.key)
    assert refused(table.schedule(request(remote_port=20042))).reason == PORT_NOT_ALLOWED


def test_restore_replaces_the_keys_previous_allocation() -> None:
    table = table_with(relay("a"))
    old = allocated(table.schedule(request("t")))
    assert table.restore(dataclasses.replace(old, port=20010))
    assert table.usage("a").ports == 1
    assert allocated(table.schedule(request("u", remote_port=20000)))  # given back
    assert refused(table.schedule(request("v", remote_port=20010))).reason == PORT_TAKEN


# Scale ------------------------------------------------------------------------------------------


def test_ten_thousand_tunnels_fill_ten_thousand_ports() -> None:
    table = table_with(relay("big", first=20000, last=29999))
    ports = [allocated(table.schedule(request(f"t{i}"))).port for i in range(10_000)]
    assert ports == list(range(20000, 30000))
    assert table.usage("big") == RelayUsage(tunnels=10_000, ports=10_000, bandwidth=0)
    assert refused(table.schedule(request("one-more"))).reason == CAPACITY_EXHAUSTED
    freed = random.Random(7).sample(range(10_000), 100)
    for i in freed:
        table.release(("tenant", f"t{i}"))
    refilled = {allocated(table.schedule(request(f"new{i}"))).port for i in range(100)}
    assert refilled == {20000 + i for i in freed}
    assert refused(table.schedule(request("one-more"))).reason == CAPACITY_EXHAUSTED


# Free ports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("span", [PortSpan(1, 1), PortSpan(1000, 3100), PortSpan(1, 65535)])
def test_free_ports_across_block_boundaries(span: PortSpan) -> None:
    free = FreePorts(span, [span])
    assert len(free) == len(span)
    assert free.next_fit() == span.first
    for port in (span.first, span.last, (span.first + span.last) // 2):
        free.discard(port)
    assert span.first not in free and span.last not in free
    free.resume_at(span.last)
    expected = span.first + 1 if len(span) > 3 else None
    assert free.next_fit() == expected


# A relay's table is part of the truth --------------------------------------------------------


def entry(
    key: tuple[str, str], protocol: str = "tcp", port=None, subdomain=None, custom_domains=()
) -> TableEntry:
    return TableEntry(
        key[0],
        key[1],
        "0" * 64,
        protocol,
        remote_port=port,
        subdomain=subdomain,
        custom_domains=tuple(custom_domains),
    )


def test_a_released_port_stays_held_until_the_relays_table_drops_it() -> None:
    table = table_with(relay(first=20000, last=20000))
    game = allocated(table.schedule(request("game")))
    table.table_written("relay-1", [entry(game.key, port=20000)])
    table.release(game.key)
    other = table.schedule(request("other"))
    assert isinstance(other, Unschedulable) and other.reason == CAPACITY_EXHAUSTED
    pinned = table.schedule(request("pinned", remote_port=20000))
    assert isinstance(pinned, Unschedulable) and pinned.reason == PORT_TAKEN
    table.table_written("relay-1", [])
    assert allocated(table.schedule(request("other"))).port == 20000


def test_a_table_being_written_holds_both_versions() -> None:
    table = table_with(relay(first=20000, last=20001))
    old = allocated(table.schedule(request("old")))
    table.table_written("relay-1", [entry(old.key, port=old.port)])
    table.release(old.key)
    new = allocated(table.schedule(request("new")))
    table.table_writing("relay-1", [entry(new.key, port=new.port)])
    # The write's reply is lost: the old table may still be in force.
    assert isinstance(table.schedule(request("third")), Unschedulable)
    table.table_written("relay-1", [entry(new.key, port=new.port)])
    assert allocated(table.schedule(request("third"))).port == old.port


def test_one_parts_write_frees_nothing_another_part_names() -> None:
    table = table_with(relay(first=20000, last=20001))
    a, b = ("tenant", "a"), ("tenant", "b")
    table.table_written("relay-1", [entry(a, port=20000)], part=0)
    table.table_written("relay-1", [entry(b, port=20001)], part=3)
    table.table_written("relay-1", [], part=0)  # shard 0 confirmed without a
    assert table.table_holders("relay-1") == {b}
    refused = table.schedule(request("thief", remote_port=20001))
    assert isinstance(refused, Unschedulable) and refused.reason == PORT_TAKEN
    assert allocated(table.schedule(request("other"))).port == 20000


def test_a_hold_two_parts_name_lasts_until_neither_does() -> None:
    # A whole table of an earlier version, read as shard 0, names what shard 3 names too.
    table = table_with(relay(first=20000, last=20000))
    game = entry(("tenant", "game"), port=20000)
    table.table_written("relay-1", [game], part=0)
    table.table_written("relay-1", [game], part=3)
    table.table_written("relay-1", [], part=0)
    refused = table.schedule(request("thief", remote_port=20000))
    assert isinstance(refused, Unschedulable) and refused.reason == PORT_TAKEN
    table.table_writing("relay-1", [], part=3)  # a version under way holds as well
    table.table_written("relay-1", [], part=3)
    assert allocated(table.schedule(request("thief", remote_port=20000))).port == 20000


def test_the_whole_table_written_replaces_every_part() -> None:
    table = table_with(relay(first=20000, last=20001))
    table.table_written("relay-1", [entry(("tenant", "a"), port=20000)], part=2)
    table.table_written("relay-1", [entry(("tenant", "b"), port=20001)])
    assert table.table_holders("relay-1") == {("tenant", "b")}


def test_a_tunnel_named_by_the_table_may_take_its_port_back() -> None:
    table = table_with(relay(first=20000, last=20009))
    table.table_written("relay-1", [entry(("tenant", "game"), port=20005)])
    assert allocated(table.schedule(request("other", remote_port=20004))).port == 20004
    refused = table.schedule(request("thief", remote_port=20005))
    assert isinstance(refused, Unschedulable) and refused.reason == PORT_TAKEN
    back = Allocation(("tenant", "game"), "relay-1", "tcp", port=20005)
    assert table.restore(back)
    assert not table.restore(dataclasses.replace(back, key=("tenant", "thief")))


def test_a_subdomain_in_a_relays_table_is_held_across_relays_of_the_domain() -> None:
    table = table_with(web_relay("web-1"), web_relay("web-2"))
    table.table_written("web-1", [entry(("a", "blog"), "http", subdomain="blog")])
    refused = table.schedule(request("mine", "http", namespace="b", subdomain="blog"))
    assert isinstance(refused, Unschedulable) and refused.reason == SUBDOMAIN_TAKEN
    generated = allocated(table.schedule(request("blog", "http", namespace="b")))
    assert generated.subdomain != "blog"


# Capacity that holds ---------------------------------------------------------------------------


def test_a_relay_takes_no_more_tunnels_than_its_table_carries() -> None:
    table = table_with(relay(table_budget_bytes=1000))
    placed = [table.schedule(request(f"t{i}", table_bytes=300)) for i in range(4)]
    assert all(isinstance(p, Allocation) for p in placed[:3])
    full = placed[3]
    assert isinstance(full, Unschedulable) and full.reason == CAPACITY_EXHAUSTED
    assert "allocation table holds 3 tunnels" in full.message
    table.release(("tenant", "t0"))
    assert isinstance(table.schedule(request("t3", table_bytes=300)), Allocation)


def test_a_load_balancer_relay_takes_no_more_ports_than_node_ports_left() -> None:
    table = table_with(relay(node_port_budget=2))
    assert isinstance(table.schedule(request("a")), Allocation)
    assert isinstance(table.schedule(request("b", protocol="udp")), Allocation)
    full = table.schedule(request("c"))
    assert isinstance(full, Unschedulable) and full.reason == CAPACITY_EXHAUSTED
    assert "node port" in full.message


def test_load_balancer_node_port_budget_comes_from_the_node_port_range() -> None:
    spec = {"ports": {"range": "20000-29999"}, "exposure": {"type": "LoadBalancer"}}
    lb = RelayNode.model_validate({"metadata": {"name": "lb"}, "spec": spec})
    view = RelayView.from_model(lb, node_port_range=PortSpan(30000, 30099))
    assert view.node_port_budget == 99  # the control port takes one
    spec["protocols"] = ["tcp", "http", "https"]
    spec["httpDomain"] = "t.example"
    web = RelayNode.model_validate({"metadata": {"name": "lb"}, "spec": spec})
    assert RelayView.from_model(web, node_port_range=PortSpan(30000, 30099)).node_port_budget == 97
    spec["exposure"] = {"type": "HostNetwork"}
    host = RelayNode.model_validate({"metadata": {"name": "h"}, "spec": spec})
    assert RelayView.from_model(host).node_port_budget is None


def test_node_port_relays_allow_only_ports_inside_the_node_port_range() -> None:
    spec = {"ports": {"range": "29990-30009"}, "exposure": {"type": "NodePort"}}
    relay_node = RelayNode.model_validate({"metadata": {"name": "np"}, "spec": spec})
    view = RelayView.from_model(relay_node, node_port_range=PortSpan(30000, 30004))
    assert view.allowed_spans() == [PortSpan(30000, 30004)]
    assert "node-port range 30000-30004" in (view.port_refusal(29995) or "")
    frps = build_frps_config(
        relay_node,
        token="t",
        dashboard_password="p",
        plugin_password="pp",
        node_port_range=PortSpan(30000, 30004),
    )
    assert "{ start = 30000, end = 30004 }" in frps
    table = table_with(view)
    ports = [allocated(table.schedule(request(f"t{i}"))).port for i in range(5)]
    assert ports == [30000, 30001, 30002, 30003, 30004]
    assert isinstance(table.schedule(request("t5")), Unschedulable)


# Host names have one owner, cluster-wide -----------------------------------------------------


def test_request_from_tunnel_carries_its_custom_domains_normalized() -> None:
    tunnel = Tunnel.model_validate(
        {
            "kind": "Tunnel",
            "metadata": {"name": "shop", "namespace": "alice"},
            "spec": {"protocol": "https", "customDomains": ["www.shop.test", "shop.test"]},
        }
    )
    req = TunnelRequest.from_tunnel(tunnel)
    assert req.custom_domains == ("shop.test", "www.shop.test")
    assert request("t", "tcp", custom_domains=("x.test",)).wanted_custom_domains == ()
    assert request("t", "http", custom_domains=("X.Test.",)).wanted_custom_domains == ("x.test",)


def test_a_custom_domain_belongs_to_one_tunnel_whatever_the_relay() -> None:
    table = table_with(web_relay("web-1"), web_relay("web-2", "other.dev"))
    shop = allocated(
        table.schedule(request("shop", "https", "alice", custom_domains=("www.shop.test",)))
    )
    assert shop.custom_domains == ("www.shop.test",)
    assert shop.hosts == (shop.host, "www.shop.test")
    assert table.host_holders("www.shop.test") == {("alice", "shop")}
    # Another tenant, on another relay and protocol: refused on every relay, without naming
    # the owner (another tenant's tunnel); a tunnel of the owner's namespace learns its name.
    thief = request("mine", "http", "bob", custom_domains=("www.shop.test",))
    assert refused(table.schedule(thief)) == Unschedulable(
        CUSTOM_DOMAIN_TAKEN,
        "0/2 RelayNodes fit: spec.customDomains www.shop.test is held by a tunnel of another "
        "namespace, and a host name serves one tunnel only. Remove www.shop.test from "
        "spec.customDomains: this tunnel is scheduled as soon as it is free.",
    )
    sibling = request("copy", "http", "alice", custom_domains=("www.shop.test",))
    assert "held by tunnel shop of this namespace" in refused(table.schedule(sibling)).message
    assert table.allocation_of(thief.key) is None
    # The owner gives it up: the waiting tunnel gets it.
    table.release(shop.key)
    assert allocated(table.schedule(thief)).custom_domains == ("www.shop.test",)


def test_a_custom_domain_under_any_relays_http_domain_is_refused() -> None:
    cordoned = web_relay("web-2", "relay2.example.com", unschedulable=True, ready=False)
    table = table_with(web_relay("web-1"), cordoned)
    for domain in ("relay2.example.com", "blog.relay2.example.com", "a.b.example.com"):
        why = refused(
            table.schedule(request("t", "http", "bob", custom_domains=("ok.test", domain)))
        )
        assert why.reason == CUSTOM_DOMAIN_NOT_ALLOWED
        assert f"spec.customDomains {domain} is under " in why.message
        assert "Use spec.subdomain" in why.message
    assert allocated(table.schedule(request("t", "http", "bob", custom_domains=("example.org",))))


def test_a_relay_taking_an_http_domain_over_a_custom_domain_misplaces_the_tunnel() -> None:
    table = table_with(web_relay("web-1"))
    shop = allocated(table.schedule(request("shop", "http", "alice", custom_domains=("shop.dev",))))
    table.upsert_relay(web_relay("web-2", "dev"))
    assert table.misplacement(shop.key) == (
        "custom domain shop.dev is under the httpDomain dev of a RelayNode"
    )
    req = request("shop", "http", "alice", custom_domains=("shop.dev",))
    assert refused(table.schedule(req)).reason == CUSTOM_DOMAIN_NOT_ALLOWED
    assert table.misplaced() == []


def test_generated_and_pinned_subdomains_skip_names_held_as_custom_domains() -> None:
    # Held before any relay served example.com (restored from a status, say).
    table = table_with(web_relay("web-1", "other.dev"))
    held = allocated(
        table.schedule(request("x", "http", "carol", custom_domains=("blog-alice.example.com",)))
    )
    table.upsert_relay(web_relay("web-2"))
    blog = allocated(table.schedule(request("blog", "http", "alice", placement=node("web-2"))))
    assert blog.host != "blog-alice.example.com" and blog.subdomain.startswith("blog-alice-")
    pinned = request("p", "http", "alice", subdomain="blog-alice", placement=node("web-2"))
    assert refused(table.schedule(pinned)).reason == SUBDOMAIN_TAKEN
    assert table.host_holders("blog-alice.example.com") == {held.key}


def test_changed_custom_domains_re_place_keeping_relay_and_subdomain() -> None:
    table = table_with(web_relay("web-1"), web_relay("web-2"))
    first = allocated(table.schedule(request("site", "http", custom_domains=("a.test",))))
    allocated(table.schedule(request("other", "http")))  # evens the load: web-2 is as good
    changed = allocated(table.schedule(request("site", "http", custom_domains=("b.test",))))
    assert (changed.relay, changed.host) == (first.relay, first.host)
    assert changed.custom_domains == ("b.test",)
    assert table.host_holders("a.test") == set()
    assert table.host_holders("b.test") == {first.key}
    # The same list again (in any order, any case) keeps the allocation as it is.
    again = request("site", "http", custom_domains=("B.test",))
    assert table.schedule(again) is changed


def test_restore_refuses_a_host_name_held_by_another_key() -> None:
    table = table_with(web_relay("w"))
    site = Allocation(
        ("alice", "site"),
        "w",
        "http",
        subdomain="s",
        http_domain="example.com",
        custom_domains=("shop.test",),
    )
    assert table.restore(site)
    copy = dataclasses.replace(site, key=("bob", "site"), subdomain="other")
    assert not table.restore(copy)
    assert table.allocation_of(copy.key) is None
    assert table.restore(dataclasses.replace(copy, custom_domains=("bob.test",)))


def test_custom_domains_in_a_relays_table_are_held() -> None:
    table = table_with(web_relay("web-1"), web_relay("web-2", "other.dev"))
    table.table_written(
        "web-1", [entry(("a", "shop"), "http", subdomain="s", custom_domains=("shop.test",))]
    )
    assert table.host_holders("shop.test") == {("a", "shop")}
    assert table.host_holders("s.example.com") == {("a", "shop")}
    thief = request("mine", "http", "b", custom_domains=("shop.test",))
    assert refused(table.schedule(thief)).reason == CUSTOM_DOMAIN_TAKEN
    table.table_written("web-1", [])
    assert allocated(table.schedule(thief))


def test_a_changed_http_domain_leaves_no_stale_hold_of_the_table() -> None:
    table = table_with(web_relay("web-1"))
    table.table_written("web-1", [entry(("a", "blog"), "http", subdomain="blog")])
    table.upsert_relay(web_relay("web-1", "new.dev"))
    # Until the next write, the table's subdomain may be served under either domain.
    assert table.host_holders("blog.example.com") == {("a", "blog")}
    assert table.host_holders("blog.new.dev") == {("a", "blog")}
    table.table_written("web-1", [])
    assert table.host_holders("blog.example.com") == set()
    assert table.host_holders("blog.new.dev") == set()
    assert allocated(table.schedule(request("b", "http", subdomain="blog"))).host == "blog.new.dev"


# A namespace's TunnelQuota hard.pools ----------------------------------------------------------


def test_a_pool_filter_places_only_on_relays_of_allowed_pools() -> None:
    free = relay("free-1", labels={"tunnelop.dev/pool": "free"})
    paid = relay("paid-1", labels={"tunnelop.dev/pool": "paid"})
    table = table_with(free, paid)
    for i in range(4):
        placed = allocated(table.schedule(request(f"t{i}", pools=frozenset({"free"}))))
        assert placed.relay == "free-1"
    assert [a.key[1] for a in table.allocations_on("paid-1")] == []


def test_a_pool_filter_that_no_relay_matches_names_hard_pools_and_the_quota() -> None:
    table = table_with(relay("paid-1", labels={"tunnelop.dev/pool": "paid"}), relay("plain"))
    limit = "hard.pools [free] of TunnelQuota tenant/tier"
    result = refused(table.schedule(request(pools=frozenset({"free"}), pools_limit=limit)))
    assert result.reason == NO_RELAY_MATCHES
    assert (
        "2 (paid-1, plain) are not in a pool hard.pools [free] of TunnelQuota tenant/tier "
        "allows (free)" in result.message
    ), result.message
    assert table.allocation_of(("tenant", "t")) is None


def test_the_namespace_index_follows_binds_and_releases() -> None:
    table = table_with(relay())
    for key in (("a", "x"), ("a", "y"), ("b", "x")):
        allocated(table.schedule(request(key[1], namespace=key[0])))
    assert sorted(table.allocations_in("a")) == [("a", "x"), ("a", "y")]
    table.release(("a", "x"))
    assert sorted(table.allocations_in("a")) == [("a", "y")]
    table.release(("a", "y"))
    assert dict(table.allocations_in("a")) == {}
    assert table.remove_relay("relay-1")
    assert dict(table.allocations_in("b")) == {}
