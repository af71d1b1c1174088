"""Leader election decisions (platform/leader.py): the record transitions, and simulations of
candidates sharing one Lease through a compare-and-swap store, with random timings, latencies
and lost requests: two candidates never believe they lead at the same time, and a follower
takes over from a dead leader within the documented bound."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelop.platform.leader import (
    LeaseRecord,
    Observation,
    Timing,
    is_expired,
    next_record,
    observe,
    released,
)

T = Timing()
WALL = "2026-01-01T00:00:00.000000Z"
LATER = "2026-01-01T00:00:05.000000Z"


def test_defaults_take_over_within_15_seconds():
    assert (T.lease_duration, T.renew_deadline, T.retry_period) == (10, 7, 2)
    assert T.worst_takeover == 14 <= 15
    assert Timing.for_lease(20) == Timing(20, 14, 4)


@pytest.mark.parametrize("values", [(5, 5, 1), (5, 6, 1), (5, 3, 3), (5, 3, 0)])
def test_inconsistent_timing_is_refused(values):
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period > 0"):
        Timing(*values)


def test_a_missing_lease_is_created_by_the_candidate():
    record = next_record(None, None, 0.0, WALL, "a", 10)
    assert record == LeaseRecord("a", 10, WALL, WALL, 0)
    assert record.to_spec() == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 10,
        "acquireTime": WALL,
        "renewTime": WALL,
        "leaseTransitions": 0,
    }


def test_the_holder_renews_keeping_acquire_time_and_transitions():
    held = LeaseRecord("a", 10, WALL, WALL, 3)
    renewed = next_record(held, Observation(held, 0.0), 1.0, LATER, "a", 10)
    assert renewed == LeaseRecord("a", 10, WALL, LATER, 3)


def test_another_holder_is_waited_for_until_unchanged_for_its_duration():
    held = LeaseRecord("b", 10, WALL, WALL, 3)
    seen = observe(None, held, 100.0)
    assert next_record(held, seen, 109.9, LATER, "a", 10) is None
    taken = next_record(held, observe(seen, held, 110.0), 110.0, LATER, "a", 10)
    assert taken == LeaseRecord("a", 10, LATER, LATER, 4)


def test_a_renewal_restarts_the_followers_clock():
    first = LeaseRecord("b", 10, WALL, WALL, 0)
    seen = observe(None, first, 0.0)
    renewed = LeaseRecord("b", 10, WALL, LATER, 0)
    seen = observe(seen, renewed, 9.0)
    assert seen.since == 9.0
    assert next_record(renewed, seen, 15.0, LATER, "a", 10) is None
    assert not is_expired(seen, 18.9) and is_expired(seen, 19.0)


def test_a_stale_observation_never_authorises_a_takeover():
    old = LeaseRecord("b", 10, WALL, WALL, 0)
    new = LeaseRecord("b", 10, WALL, LATER, 0)
    assert next_record(new, Observation(old, 0.0), 1000.0, LATER, "a", 10) is None


def test_a_released_lease_is_taken_at_once():
    held = LeaseRecord("b", 10, WALL, WALL, 2)
    free = released(held, LATER)
    assert free.holder == "" and free.transitions == 2
    assert next_record(free, observe(None, free, 50.0), 50.0, LATER, "a", 10) == LeaseRecord(
        "a", 10, LATER, LATER, 3
    )


# ---- simulations -------------------------------------------------------------------------


@dataclass
class Store:
    """The API server's view of one Lease: a record and its resourceVersion."""

    record: LeaseRecord | None = None
    version: int = 0

    def write(self, record: LeaseRecord, read_version: int) -> bool:
        if self.version != read_version:
            return False  # 409
        self.record, self.version = record, self.version + 1
        return True


@dataclass
class Candidate:
    identity: str
    observation: Observation | None = None
    leading_since: float | None = None
    deadline: float = 0.0  # while leading: last successful write sent + renew deadline
    dead: bool = False
    terms: list[tuple[float, float]] = field(default_factory=list)

    def close_term(self, at: float) -> None:
        assert self.leading_since is not None
        self.terms.append((self.leading_since, min(at, self.deadline)))
        self.leading_since = None
        self.dead = True  # as the operator: it exits and never campaigns again


attempts = st.lists(
    st.tuples(
        st.integers(0, 1),  # candidate
        st.floats(0, 5),  # seconds since the previous attempt started
        st.floats(0, 3),  # latency of the write after the read
        st.sampled_from(["ok", "ok", "dropped", "answer lost"]),
    ),
    max_size=80,
)


@settings(max_examples=1000, deadline=None)
@given(attempts)
def test_two_candidates_never_lead_at_once(schedule):
    store, now = Store(), 0.0
    candidates = [Candidate(name) for name in "ab"]
    events: list[tuple[float, int, str, tuple]] = []
    for seq, (who, gap, latency, outcome) in enumerate(schedule):
        now += gap
        heapq.heappush(events, (now, seq, "read", (who, latency, outcome)))
    while events:
        at, seq, step, args = heapq.heappop(events)
        if step == "read":
            who, latency, outcome = args
            c = candidates[who]
            if c.dead:
                continue
            if c.leading_since is not None and at >= c.deadline:
                c.close_term(at)  # the renew deadline passed
                continue
            current = store.record
            if current is not None:
                c.observation = observe(c.observation, current, at)
                if c.leading_since is not None and current.holder != c.identity:
                    c.close_term(at)  # someone else holds it: stop at once
                    continue
            wanted = next_record(current, c.observation, at, f"t{at}", c.identity, 10)
            if wanted is not None:
                heapq.heappush(
                    events, (at + latency, seq, "write", (who, at, wanted, store.version, outcome))
                )
        else:
            who, sent, wanted, read_version, outcome = args
            c = candidates[who]
            if outcome == "dropped" or not store.write(wanted, read_version):
                continue
            c.observation = Observation(wanted, at)
            # The answer counts only if it came back in time (the elector's wait_for).
            timeout = T.retry_period if c.leading_since is None else c.deadline - sent
            if outcome == "answer lost" or at - sent > timeout or c.dead:
                continue
            if c.leading_since is None:
                c.leading_since = at
            c.deadline = sent + T.renew_deadline
    for c in candidates:
        if c.leading_since is not None:
            c.close_term(float("inf"))
    terms = sorted((start, end, c.identity) for c in candidates for start, end in c.terms)
    for (_, end, first), (start, _, second) in itertools.pairwise(terms):
        assert end <= start, f"{first} and {second} both led at {start}"


@settings(max_examples=300, deadline=None)
@given(
    leader_phase=st.floats(0, T.retry_period),
    follower_phase=st.floats(0, T.retry_period),
    killed_at=st.floats(1, 30),
)
def test_a_follower_takes_over_from_a_killed_leader_within_the_bound(
    leader_phase, follower_phase, killed_at
):
    """The leader renews every retry period until SIGKILL; the follower polls every retry
    period. The follower leads no later than worst_takeover after the kill."""
    store = Store(next_record(None, None, 0, "t0", "leader", 10), 1)
    ticks = []
    t = leader_phase
    while t < killed_at:
        ticks.append((t, "leader"))
        t += T.retry_period
    t = follower_phase
    while t < killed_at + 60:
        ticks.append((t, "follower"))
        t += T.retry_period
    observation = None
    for at, who in sorted(ticks):
        assert store.record is not None
        if who == "leader":
            store.write(next_record(store.record, None, at, f"t{at}", "leader", 10), store.version)
            continue
        observation = observe(observation, store.record, at)
        wanted = next_record(store.record, observation, at, f"t{at}", "follower", 10)
        if wanted is not None:
            assert at > killed_at, "took over from a live leader"
            assert at - killed_at <= T.worst_takeover
            return
    raise AssertionError("the follower never took over")
