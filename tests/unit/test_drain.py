"""Draining relays by example: why a relay drains (deleted, spec.drain, failover), and what the
scheduler does with its tunnels: move them keeping the port where free, never onto another
relay going away, and keep (soft drain) or unbind (deletion) the ones nothing else takes."""

from __future__ import annotations

import dataclasses
import datetime

from hypothesis import given
from hypothesis import strategies as st

from tunnelop.api.v1alpha1 import PortSpan, RelayNode
from tunnelop.domain.drain import (
    DELETING,
    DRAIN_REASON_ANNOTATION,
    DRAIN_REQUESTED,
    FAILOVER,
    ROLL_OUT,
    SCALE_DOWN,
    Drain,
    drain_of,
    failover_in,
)
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import AllocationTable, TunnelRequest, Unschedulable

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
SOFT = Drain(DRAIN_REQUESTED, "RelayNode a is drained (spec.drain)", stay_if_stuck=True)
HARD = Drain(DELETING, "RelayNode a is being deleted", stay_if_stuck=False)


def relay_model(**spec) -> RelayNode:
    meta = spec.pop("metadata", {})
    return RelayNode.model_validate(
        {
            "metadata": {"name": "a", **meta},
            "spec": {"ports": {"range": "20000-20099"}, **spec},
        }
    )


def view(name: str, drain: Drain | None = None, **fields) -> RelayView:
    return RelayView(name=name, port_range=PortSpan(20000, 20099), drain=drain, **fields)


def request(name: str, **fields) -> TunnelRequest:
    return TunnelRequest(key=("tenant", name), protocol="tcp", **fields)


def table_with(*views: RelayView) -> AllocationTable:
    table = AllocationTable()
    for relay in views:
        table.upsert_relay(relay)
    return table


# ---- why a relay drains ------------------------------------------------------------------


def test_a_ready_relay_without_drain_keeps_its_tunnels() -> None:
    assert drain_of(relay_model(), None, NOW) is None


def test_deletion_comes_first_and_unbinds_what_cannot_move() -> None:
    relay = relay_model(drain=True, metadata={"deletionTimestamp": "2026-12-01T11:00:00Z"})
    drain = drain_of(relay, NOW - datetime.timedelta(hours=1), NOW)
    assert drain == Drain(DELETING, "RelayNode a is being deleted", stay_if_stuck=False)


def test_spec_drain_names_a_pool_reason_when_the_pool_set_it() -> None:
    by_hand = drain_of(relay_model(drain=True), None, NOW)
    assert by_hand is not None and (by_hand.reason, by_hand.stay_if_stuck) == (
        DRAIN_REQUESTED,
        True,
    )
    for reason, words in ((SCALE_DOWN, "scale-down"), (ROLL_OUT, "template roll-out")):
        relay = relay_model(drain=True, metadata={"annotations": {DRAIN_REASON_ANNOTATION: reason}})
        drain = drain_of(relay, None, NOW)
        assert drain is not None and drain.reason == reason and words in drain.message
    # An annotation alone drains nothing: spec.drain does.
    relay = relay_model(metadata={"annotations": {DRAIN_REASON_ANNOTATION: SCALE_DOWN}})
    assert drain_of(relay, None, NOW) is None


def test_failover_after_the_grace_period_and_never_with_zero() -> None:
    relay = relay_model(failoverAfterSeconds=60)
    down_for = lambda seconds: NOW - datetime.timedelta(seconds=seconds)  # noqa: E731
    assert drain_of(relay, down_for(59), NOW) is None
    assert failover_in(relay, down_for(59), NOW) == 1
    drain = drain_of(relay, down_for(60), NOW)
    assert drain is not None and (drain.reason, drain.stay_if_stuck) == (FAILOVER, True)
    assert "60s" in drain.message
    never = relay_model(failoverAfterSeconds=0)
    assert drain_of(never, down_for(86400), NOW) is None
    assert failover_in(never, down_for(86400), NOW) is None


# ---- what the scheduler does with a draining relay's tunnels -------------------------------


def test_a_draining_relay_takes_no_new_tunnel_and_says_so() -> None:
    table = table_with(view("a", SOFT))
    result = table.schedule(request("new"))
    assert isinstance(result, Unschedulable)
    assert "being drained" in result.message


def test_tunnels_move_off_a_draining_relay_keeping_their_port() -> None:
    table = table_with(view("a"), view("b"))
    game = table.schedule(request("game", remote_port=None))
    assert not isinstance(game, Unschedulable) and game.relay == "a"
    table.upsert_relay(view("a", SOFT))
    assert table.misplacement(game.key) == SOFT.message
    moved = table.schedule(request("game"))
    assert not isinstance(moved, Unschedulable)
    assert (moved.relay, moved.port) == ("b", game.port)
    assert table.stuck(game.key) is None and table.allocations_on("a") == []


def test_a_tunnel_never_moves_onto_another_relay_going_away() -> None:
    table = table_with(view("a"), view("b", HARD))
    game = table.schedule(request("game"))
    assert not isinstance(game, Unschedulable) and game.relay == "a"
    table.upsert_relay(view("a", SOFT))
    stays = table.schedule(request("game"))
    assert stays == game  # b is going away too: it stays, serving, and says why
    stuck = table.stuck(game.key)
    assert stuck is not None and "b" in stuck.message
    assert table.misplaced() == [game]


def test_a_stuck_tunnel_moves_once_room_appears_and_stays_put_on_deletion_never() -> None:
    table = table_with(view("a"), view("b", capacity_tunnels=0))
    game = table.schedule(request("game"))
    assert not isinstance(game, Unschedulable)
    table.upsert_relay(view("a", SOFT))
    assert table.schedule(request("game")) == game and table.stuck(game.key) is not None
    table.upsert_relay(view("b"))  # room appears
    moved = table.schedule(request("game"))
    assert not isinstance(moved, Unschedulable) and moved.relay == "b"
    assert table.stuck(game.key) is None

    table.upsert_relay(view("b", HARD))
    gone = table.schedule(request("game"))  # a deleted relay keeps nothing
    assert isinstance(gone, Unschedulable)
    assert table.allocation_of(game.key) is None and table.allocations_on("b") == []


def test_a_stuck_tunnel_whose_spec_changed_is_not_kept() -> None:
    table = table_with(view("a"))
    game = table.schedule(request("game"))
    assert not isinstance(game, Unschedulable)
    table.upsert_relay(view("a", SOFT))
    # It now asks for another port: keeping the old allocation would not answer it.
    assert isinstance(table.schedule(request("game", remote_port=20050)), Unschedulable)
    assert table.allocation_of(game.key) is None


@given(
    st.lists(st.sampled_from(["drain", "undrain", "schedule", "release"]), max_size=40),
    st.lists(st.integers(0, 5), min_size=40, max_size=40),
)
def test_draining_never_gives_one_port_to_two_tunnels(ops: list[str], picks: list[int]) -> None:
    table = table_with(view("a"), view("b"))
    drains = {"a": None, "b": None}
    for op, pick in zip(ops, picks, strict=False):
        name = "ab"[pick % 2]
        key = f"t{pick}"
        if op == "drain":
            drains[name] = SOFT if pick % 3 else HARD
            table.upsert_relay(view(name, dataclasses.replace(drains[name], message=name)))
        elif op == "undrain":
            drains[name] = None
            table.upsert_relay(view(name))
        elif op == "schedule":
            table.schedule(request(key, remote_port=20000 + pick % 3))
        else:
            table.release(("tenant", key))
        held = [(a.relay, a.port) for a in table.allocations()]
        assert len(held) == len(set(held)), held
        for allocation in table.allocations():
            state_drain = drains[allocation.relay]
            if table.stuck(allocation.key) is not None:
                assert state_drain is not None and state_drain.stay_if_stuck


def test_a_blocked_port_moves_within_its_relay_while_the_relay_restarts() -> None:
    """A new port list restarts the relay (not ready for a moment): its tunnel on the newly
    blocked port still gets another port there, and keeps its relay and its report."""
    table = table_with(view("a"))
    game = table.schedule(request("game"))
    assert not isinstance(game, Unschedulable)
    table.upsert_relay(view("a", ready=False, blocked=(PortSpan(game.port, game.port),)))
    moved = table.schedule(request("game"))
    assert not isinstance(moved, Unschedulable)
    assert moved.relay == "a" and moved.port != game.port
    # A new tunnel still waits for the relay to be ready.
    assert isinstance(table.schedule(request("new")), Unschedulable)
