"""RelayPool groundwork: relay names, the RelayNode a template makes, the pool's plan, the
built-in autoscaler's decision and the pool's status."""

from __future__ import annotations

import datetime
from dataclasses import replace
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tunnelop.api.v1alpha1 import API_VERSION, RelayNode, RelayPool
from tunnelop.domain.pools import (
    MAX_POOL_SIZE,
    TEMPLATE_HASH_LABEL,
    Demand,
    PoolMember,
    RelayLoad,
    autoscale,
    check_template,
    load_of,
    member_of,
    new_relay_names,
    plan,
    pool_status,
    relay_index,
    relay_manifest,
    relay_name,
    relays_needed,
    template_hash,
    utilization_percent,
)
from tunnelop.domain.relayview import POOL_LABEL

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def make_pool(
    name: str = "edge",
    replicas: int = 2,
    autoscaling: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    capacity: dict[str, Any] | None = None,
    port_range: str = "20000-29999",
    status: dict[str, Any] | None = None,
) -> RelayPool:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "template": {
            "metadata": {"labels": labels or {}},
            "spec": {"ports": {"range": port_range}, "capacity": capacity or {"tunnels": 10}},
        },
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return RelayPool.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "RelayPool",
            "metadata": {"name": name, "uid": "pool-uid", "generation": 3},
            "spec": spec,
            "status": status or {},
        }
    )


def members(pool: RelayPool, count: int, **fields: Any) -> list[PoolMember]:
    current = template_hash(pool)
    return [
        PoolMember(name=relay_name(pool.metadata.name or "", i), template_hash=current, **fields)
        for i in range(count)
    ]


# Names ---------------------------------------------------------------------------------------


def test_names_are_pool_dash_index_and_reuse_the_lowest_free_index() -> None:
    assert new_relay_names("edge", [], 3) == ["edge-0", "edge-1", "edge-2"]
    assert new_relay_names("edge", ["edge-0", "edge-2", "edge-3"], 2) == ["edge-1", "edge-4"]
    # Names the pool would not give do not hold an index.
    assert new_relay_names("edge", ["edge-07", "edge-x", "edgy-0", "edge-1-0"], 1) == ["edge-0"]


def test_relay_index_parses_only_names_the_pool_gives() -> None:
    assert relay_index("edge", "edge-12") == 12
    assert relay_index("edge", "edge-012") is None
    assert relay_index("edge", "edge-") is None
    assert relay_index("edge", "edge-eu-1") is None
    assert relay_index("edge-eu", "edge-1") is None
    assert relay_index("edge", "edge-²") is None


def test_the_longest_name_of_the_longest_pool_is_a_valid_relay_name() -> None:
    pool = make_pool(name="p" * 51)
    assert check_template(pool) == []
    with pytest.raises(ValueError, match=f"relay index must be 0-{MAX_POOL_SIZE - 1}, got"):
        relay_name("edge", MAX_POOL_SIZE)


# The RelayNode a template makes --------------------------------------------------------------


def test_relay_manifest_has_template_labels_pool_label_hash_and_owner() -> None:
    pool = make_pool(labels={"region": "eu"})
    manifest = relay_manifest(pool, "edge-0")
    assert manifest["metadata"]["labels"] == {
        "region": "eu",
        POOL_LABEL: "edge",
        TEMPLATE_HASH_LABEL: template_hash(pool),
    }
    assert manifest["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "RelayPool",
            "name": "edge",
            "uid": "pool-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    relay = RelayNode.model_validate(manifest)
    assert relay.spec == pool.spec.template.spec
    assert relay.metadata.name == "edge-0"


def test_template_hash_follows_the_template_only() -> None:
    pool = make_pool(replicas=2)
    assert template_hash(pool) == template_hash(make_pool(replicas=5))
    assert template_hash(pool) != template_hash(make_pool(capacity={"tunnels": 11}))
    assert template_hash(pool) != template_hash(make_pool(labels={"region": "eu"}))


def test_invalid_template_names_the_pools_field() -> None:
    pool = make_pool(labels={POOL_LABEL: "other", TEMPLATE_HASH_LABEL: "x"})
    assert check_template(pool) == [
        'spec.template.metadata.labels["tunnelop.dev/pool"]: set by the operator, remove it '
        "from the template",
        'spec.template.metadata.labels["tunnelop.dev/template-hash"]: set by the operator, '
        "remove it from the template",
    ]
    # A spec the RelayNode schema refuses (here: http without httpDomain, which a pool read
    # without validation could carry) is reported under spec.template.spec.
    broken_spec = pool.spec.template.spec.model_copy(update={"protocols": ["tcp", "http"]})
    broken = make_pool()
    broken.spec.template = broken.spec.template.model_copy(update={"spec": broken_spec})
    (problem,) = check_template(broken)
    assert problem.startswith("spec.template.spec.httpDomain: required when protocols include")


# Plan ----------------------------------------------------------------------------------------


def test_plan_creates_missing_relays_with_the_lowest_free_names() -> None:
    pool = make_pool(replicas=3)
    owned = [replace(m, name="edge-1") for m in members(pool, 1)]
    result = plan(pool, owned, {})
    assert result.create == ("edge-0", "edge-2")
    assert (result.drain, result.replace, result.delete) == ((), None, ())


def test_plan_drains_the_least_loaded_and_deletes_empty_going_away_relays() -> None:
    pool = make_pool(replicas=1)
    owned = members(pool, 3)
    usage = {"edge-0": RelayLoad(5), "edge-1": RelayLoad(1), "edge-2": RelayLoad(3)}
    # The disruption budget (1) lets one relay drain at a time: the least loaded.
    assert plan(pool, owned, usage).drain == ("edge-1",)
    assert plan(pool, owned, usage, max_draining=2).drain == ("edge-1", "edge-2")
    # edge-1 is going away: it is not picked again, and no other drains while it does.
    owned[1] = replace(owned[1], going_away=True)
    assert plan(pool, owned, usage).drain == ()
    assert plan(pool, owned, usage).delete == ()
    usage["edge-1"] = RelayLoad(0)
    after = plan(pool, owned, usage)
    assert (after.drain, after.delete) == ((), ("edge-1",))


def test_plan_drains_a_relay_that_is_not_ready_first() -> None:
    pool = make_pool(replicas=2)
    owned = members(pool, 3)
    owned[0] = replace(owned[0], ready=False)
    usage = {"edge-0": RelayLoad(9), "edge-1": RelayLoad(0), "edge-2": RelayLoad(0)}
    assert plan(pool, owned, usage).drain == ("edge-0",)


def test_rollout_replaces_one_relay_at_a_time() -> None:
    pool = make_pool(replicas=3)
    old = [replace(m, template_hash="old") for m in members(pool, 3)]
    usage = {"edge-0": RelayLoad(4), "edge-1": RelayLoad(2), "edge-2": RelayLoad(7)}
    first = plan(pool, old, usage)
    assert (first.replace, first.create, first.outdated) == ("edge-1", ("edge-3",), 3)
    # While edge-1 drains and edge-3 comes up, nothing else is replaced.
    owned = [old[0], replace(old[1], going_away=True), old[2]]
    owned.append(PoolMember("edge-3", template_hash(pool), ready=False))
    waiting = plan(pool, owned, usage)
    assert (waiting.replace, waiting.create, waiting.drain) == (None, (), ())
    # edge-1 is empty and gone, edge-3 ready: the next one, and edge-1's name is reused.
    owned = [old[0], old[2], replace(owned[3], ready=True)]
    usage["edge-1"] = RelayLoad(0)
    second = plan(pool, owned, usage)
    assert (second.replace, second.create, second.outdated) == ("edge-0", ("edge-1",), 2)


def test_autoscaled_count_is_kept_within_min_and_max() -> None:
    pool = make_pool(replicas=9, autoscaling={"minReplicas": 2, "maxReplicas": 4})
    assert plan(pool, [], {}).desired == 4
    assert plan(pool, [], {}, autoscaled=1).desired == 2
    assert plan(pool, [], {}, autoscaled=3).desired == 3


@st.composite
def pool_histories(draw: st.DrawFn) -> tuple[RelayPool, int, list[tuple[int, int, bool]]]:
    low = draw(st.integers(1, 4))
    high = draw(st.integers(low, 8))
    autoscaled = draw(st.booleans())
    pool = make_pool(
        replicas=draw(st.integers(0, 8)),
        autoscaling={"minReplicas": low, "maxReplicas": high} if autoscaled else None,
    )
    budget = draw(st.integers(1, 3))
    # Each step: the count asked for, a seed for loads, and whether the template changes.
    steps = draw(
        st.lists(st.tuples(st.integers(0, 10), st.integers(0, 1000), st.booleans()), max_size=25)
    )
    return pool, budget, steps


@settings(max_examples=150, deadline=None)
@given(pool_histories())
def test_plan_stays_within_bounds_budget_and_stable_names(
    history: tuple[RelayPool, int, list[tuple[int, int, bool]]],
) -> None:
    pool, budget, steps = history
    owned: dict[str, PoolMember] = {}
    ever_created: list[str] = []
    for asked, seed, new_template in steps:
        if new_template:
            pool = make_pool(
                replicas=pool.spec.replicas,
                autoscaling=(
                    pool.spec.autoscaling.model_dump(by_alias=True)
                    if pool.spec.autoscaling
                    else None
                ),
                capacity={"tunnels": 10 + seed % 5},
            )
        if pool.spec.autoscaling is None:
            pool.spec.replicas = asked
        usage = {name: RelayLoad((seed * (i + 3)) % 7) for i, name in enumerate(sorted(owned))}
        going_before = {n for n, m in owned.items() if m.going_away}
        active_before = len(owned) - len(going_before)
        result = plan(pool, list(owned.values()), usage, autoscaled=asked, max_draining=budget)

        autoscaling = pool.spec.autoscaling
        if autoscaling is not None:
            assert autoscaling.min_replicas <= result.desired <= autoscaling.max_replicas
        # Only relays that stay are drained or replaced, each once, within the budget.
        started = [*result.drain, *([result.replace] if result.replace else [])]
        assert len(set(started)) == len(started)
        assert all(n in owned and n not in going_before for n in started)
        assert len(going_before) + len(started) <= max(budget, len(going_before))
        # New names are new, unique and the lowest free ones.
        assert len(set(result.create)) == len(result.create)
        assert not set(result.create) & set(owned)
        assert list(result.create) == new_relay_names(
            pool.metadata.name or "", owned, len(result.create)
        )
        assert all(
            owned[n].going_away and usage.get(n, RelayLoad()).tunnels == 0 for n in result.delete
        )

        for name in result.delete:
            del owned[name]
        for name in started:
            owned[name] = replace(owned[name], going_away=True)
        for name in result.create:
            owned[name] = PoolMember(name, template_hash(pool), ready=seed % 3 != 0)
            ever_created.append(name)
        active_after = sum(not m.going_away for m in owned.values())
        # Creating stops at the desired count; draining never goes below it.
        if result.create:
            assert active_after == result.desired
        else:
            assert active_after <= active_before
        if started:
            assert active_after >= result.desired
        # Relays come ready and drained ones empty over time.
        owned = {n: replace(m, ready=True) if seed % 2 else m for n, m in owned.items()}
        # A name is held by one relay at a time.
        assert len(owned) == len(set(owned))
    # Names stay compact: every index below the highest was given out at some point.
    indices = sorted({relay_index("edge", n) or 0 for n in ever_created})
    assert indices == list(range(len(indices)))


# Autoscaler ----------------------------------------------------------------------------------


def autoscaling_of(pool: RelayPool) -> Any:
    assert pool.spec.autoscaling is not None
    return pool.spec.autoscaling


def spread(
    pool: RelayPool, count: int, total: int, capacity: int
) -> tuple[list[PoolMember], dict[str, RelayLoad], Demand]:
    """`count` ready relays of `capacity`, carrying `total` tunnels as evenly as they fit;
    what does not fit waits."""
    owned = [replace(m, capacity_tunnels=capacity) for m in members(pool, count)]
    allocated = min(total, count * capacity)
    usage = {
        m.name: RelayLoad(allocated // count + (1 if i < allocated % count else 0))
        for i, m in enumerate(owned)
    }
    return owned, usage, Demand(tunnels=total - allocated)


def test_a_burst_is_served_in_one_step() -> None:
    pool = make_pool(
        autoscaling={"minReplicas": 1, "maxReplicas": 10, "targetUtilization": 60},
        capacity={"tunnels": 10},
    )
    owned, usage, waiting = spread(pool, 1, 24, 10)
    decision = autoscale(autoscaling_of(pool), pool.spec, 1, owned, usage, waiting, None, T0)
    assert decision.desired_replicas >= 4
    assert decision.utilization == 100
    assert decision.reason == (
        "Scaled up from 1 to 4 relays for 24 tunnels (utilization 100% of target 60%, "
        "14 tunnels waiting for room)"
    )


def test_first_relays_are_sized_from_the_template_before_any_is_ready() -> None:
    pool = make_pool(
        autoscaling={"minReplicas": 1, "maxReplicas": 10, "targetUtilization": 50},
        capacity={"tunnels": 10},
    )
    starting = [PoolMember("edge-0", template_hash(pool), ready=False)]
    decision = autoscale(
        autoscaling_of(pool), pool.spec, 1, starting, {}, Demand(tunnels=30), None, T0
    )
    assert (decision.desired_replicas, decision.utilization) == (6, 0)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 200),
    target=st.integers(1, 100),
    current=st.integers(1, 5),
    burst=st.integers(0, 3000),
)
def test_any_burst_is_served_in_one_step(
    capacity: int, target: int, current: int, burst: int
) -> None:
    pool = make_pool(
        autoscaling={"minReplicas": 1, "maxReplicas": 1000, "targetUtilization": target},
        capacity={"tunnels": capacity},
    )
    spec, autoscaling = pool.spec, autoscaling_of(pool)
    assume(relays_needed(Demand(burst), (capacity, None), target) <= 1000)
    owned, usage, waiting = spread(pool, current, burst, capacity)
    first = autoscale(autoscaling, spec, current, owned, usage, waiting, None, T0)
    grown = first.desired_replicas
    assert grown >= current
    # One step gives enough relays to carry the whole burst at the target.
    assert relays_needed(Demand(burst), (capacity, None), target) <= grown
    # With the new relays up and the burst placed, nothing waits and no more are asked for.
    owned, usage, waiting = spread(pool, grown, burst, capacity)
    assert waiting.tunnels == 0
    again = autoscale(autoscaling, spec, grown, owned, usage, waiting, None, T0)
    assert again.desired_replicas <= grown


def run_series(
    pool: RelayPool, capacity: int, start: int, series: list[tuple[int, int]]
) -> list[int]:
    """The desired count after each (seconds elapsed, total tunnels) step, relays following
    each decision at once."""
    spec, autoscaling = pool.spec, autoscaling_of(pool)
    current, below_since, now = start, None, T0
    counts = []
    for elapsed, total in series:
        now += datetime.timedelta(seconds=elapsed)
        owned, usage, waiting = spread(pool, current, total, capacity)
        decision = autoscale(autoscaling, spec, current, owned, usage, waiting, below_since, now)
        current, below_since = decision.desired_replicas, decision.below_since
        counts.append(current)
    return counts


def direction_changes(counts: list[int]) -> int:
    steps = [b - a for a, b in pairwise(counts) if b != a]
    return sum(1 for a, b in pairwise(steps) if (a > 0) != (b > 0))


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(20, 400),
    target=st.integers(10, 100),
    relays=st.integers(1, 12),
    delay=st.integers(0, 600),
    data=st.data(),
)
def test_load_held_at_the_boundary_never_flaps(
    capacity: int, target: int, relays: int, delay: int, data: st.DataObject
) -> None:
    pool = make_pool(
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 100,
            "targetUtilization": target,
            "scaleDownDelaySeconds": delay,
        },
        capacity={"tunnels": capacity},
    )
    boundary = relays * capacity * target // 100
    # The load wobbles within 4% around the boundary (the scale-down margin is 10% of the
    # target), for a long time.
    wobble = boundary * 4 // 100
    series = data.draw(
        st.lists(
            st.tuples(st.integers(1, 900), st.integers(boundary - wobble, boundary + wobble)),
            min_size=300,
            max_size=300,
        )
    )
    counts = run_series(pool, capacity, relays, series)
    assert direction_changes(counts) == 0
    # Held exactly at the boundary, it does not move at all.
    assert set(run_series(pool, capacity, relays, [(600, boundary)] * 300)) == {relays}


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 100),
    target=st.integers(1, 100),
    start=st.integers(1, 20),
    load=st.integers(0, 2000),
)
def test_held_load_settles_in_one_direction(
    capacity: int, target: int, start: int, load: int
) -> None:
    pool = make_pool(
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 50,
            "targetUtilization": target,
            "scaleDownDelaySeconds": 60,
        },
        capacity={"tunnels": capacity},
    )
    counts = run_series(pool, capacity, start, [(61, load)] * 60)
    assert direction_changes([start, *counts]) == 0
    assert counts[-1] == counts[-2]


def test_scale_down_waits_for_the_delay_and_removes_one_relay_at_a_time() -> None:
    pool = make_pool(
        autoscaling={"minReplicas": 2, "maxReplicas": 10, "scaleDownDelaySeconds": 300},
        capacity={"tunnels": 10},
    )
    spec, autoscaling = pool.spec, autoscaling_of(pool)
    owned, usage, waiting = spread(pool, 5, 0, 10)
    first = autoscale(autoscaling, spec, 5, owned, usage, waiting, None, T0)
    assert (first.desired_replicas, first.below_since) == (5, T0)
    assert first.reason == (
        "Load fits on 4 relays; scaling down in 300s unless it rises (utilization 0% of target 80%)"
    )
    later = T0 + datetime.timedelta(seconds=299)
    assert autoscale(autoscaling, spec, 5, owned, usage, waiting, T0, later).desired_replicas == 5
    due = T0 + datetime.timedelta(seconds=300)
    shrink = autoscale(autoscaling, spec, 5, owned, usage, waiting, T0, due)
    assert (shrink.desired_replicas, shrink.below_since) == (4, None)
    assert shrink.reason == (
        "Scaled down from 5 to 4 relays after 300s of low load (utilization 0% of target 80%)"
    )
    # Load coming back resets the wait.
    owned, usage, waiting = spread(pool, 4, 30, 10)
    back = autoscale(autoscaling, spec, 4, owned, usage, waiting, T0, due)
    assert (back.desired_replicas, back.below_since) == (4, None)
    assert back.reason == "Steady at 4 relays (utilization 75% of target 80%)"
    # Never below minReplicas.
    owned, usage, waiting = spread(pool, 2, 0, 10)
    floor = autoscale(autoscaling, spec, 2, owned, usage, waiting, T0, due)
    assert floor.desired_replicas == 2


@settings(max_examples=100, deadline=None)
@given(
    delay=st.integers(0, 900),
    steps=st.lists(st.integers(1, 400), min_size=1, max_size=60),
)
def test_every_scale_down_follows_a_full_delay_of_low_load(delay: int, steps: list[int]) -> None:
    pool = make_pool(
        autoscaling={"minReplicas": 1, "maxReplicas": 10, "scaleDownDelaySeconds": delay},
        capacity={"tunnels": 10},
    )
    spec, autoscaling = pool.spec, autoscaling_of(pool)
    current, below_since, now, last_change = 8, None, T0, T0
    for elapsed in steps:
        now += datetime.timedelta(seconds=elapsed)
        owned, usage, waiting = spread(pool, current, 0, 10)
        decision = autoscale(autoscaling, spec, current, owned, usage, waiting, below_since, now)
        if decision.desired_replicas < current:
            assert decision.desired_replicas == current - 1
            assert now - last_change >= datetime.timedelta(seconds=delay)
            last_change = now
        assert decision.desired_replicas >= 1
        current, below_since = decision.desired_replicas, decision.below_since
        if below_since is None:
            last_change = max(last_change, now)


def test_bounds_messages() -> None:
    pool = make_pool(autoscaling={"minReplicas": 3, "maxReplicas": 4, "targetUtilization": 50})
    spec, autoscaling = pool.spec, autoscaling_of(pool)
    owned, usage, waiting = spread(pool, 1, 0, 10)
    raised = autoscale(autoscaling, spec, 1, owned, usage, waiting, None, T0)
    assert (raised.desired_replicas, raised.reason) == (
        3,
        "Raised to minReplicas 3 (utilization 0% of target 50%)",
    )
    owned, usage, waiting = spread(pool, 4, 100, 10)
    full = autoscale(autoscaling, spec, 4, owned, usage, waiting, None, T0)
    assert (full.desired_replicas, full.reason) == (
        4,
        "At maxReplicas 4: 20 relays needed (utilization 100% of target 50%, "
        "60 tunnels waiting for room)",
    )
    owned, usage, waiting = spread(pool, 3, 40, 10)
    capped = autoscale(autoscaling, spec, 3, owned, usage, waiting, None, T0)
    assert capped.reason == (
        "Scaled up from 3 to 4 relays for 40 tunnels (utilization 100% of target 50%, "
        "10 tunnels waiting for room, capped at maxReplicas 4)"
    )


def test_utilization_is_the_larger_share_over_ready_relays() -> None:
    owned = [
        PoolMember("a", capacity_tunnels=10, capacity_bandwidth=1000),
        PoolMember("b", capacity_tunnels=10, capacity_bandwidth=1000),
        PoolMember("c", ready=False, capacity_tunnels=10, capacity_bandwidth=1000),
    ]
    usage = {"a": RelayLoad(2, 900), "b": RelayLoad(2, 300), "c": RelayLoad(10, 1000)}
    assert utilization_percent(owned, usage) == 60  # bandwidth: 1200 of 2000
    assert utilization_percent(owned[:1], {"a": RelayLoad(2, 0)}) == 20
    assert utilization_percent([PoolMember("x")], {"x": RelayLoad(5)}) == 0
    assert relays_needed(Demand(24, 0), (10, None), 60) == 4
    assert relays_needed(Demand(0, 5000), (10, 1000), 50) == 10
    assert relays_needed(Demand(24, 0), (None, None), 60) == 0


# Members and status --------------------------------------------------------------------------


def test_member_of_reads_readiness_capacity_and_load_from_the_relay() -> None:
    pool = make_pool(capacity={"tunnels": 10, "bandwidth": "1M"})
    manifest = relay_manifest(pool, "edge-0")
    manifest["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    manifest["status"] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving"}],
        "allocated": {"tunnels": 3, "bandwidth": "200k"},
        "capacity": {"tunnels": 8},
    }
    relay = RelayNode.model_validate(manifest)
    assert member_of(relay) == PoolMember(
        name="edge-0",
        template_hash=template_hash(pool),
        ready=True,
        going_away=True,
        capacity_tunnels=8,
        capacity_bandwidth=1_000_000,
    )
    assert load_of(relay) == RelayLoad(3, 200_000)
    del manifest["status"]
    plain = member_of(RelayNode.model_validate({**manifest, "metadata": {"name": "edge-1"}}))
    assert (plain.ready, plain.going_away, plain.template_hash) == (False, False, None)


def conditions_by_type(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_status_while_scaling_up_and_once_converged() -> None:
    pool = make_pool(replicas=3)
    owned = members(pool, 2)
    owned[1] = replace(owned[1], ready=False)
    status = pool_status(pool, owned, plan(pool, owned, {}))
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 3,
        "replicas": 2,
        "readyReplicas": 1,
        "desiredReplicas": 3,
        "selector": "tunnelop.dev/pool=edge",
    }
    assert conditions_by_type(status) == {
        "Ready": ("False", "ReplicasNotReady", "1 of 3 RelayNodes are ready"),
        "Scaling": ("True", "ScalingUp", "2 of 3 RelayNodes exist"),
        "Reconciling": ("True", "ScalingUp", "2 of 3 RelayNodes exist"),
        "InvalidTemplate": ("False", "TemplateValid", "The template makes valid RelayNodes"),
    }
    done = members(pool, 3)
    status = pool_status(pool, done, plan(pool, done, {}))
    assert conditions_by_type(status)["Ready"] == (
        "True",
        "ReplicasReady",
        "3 of 3 RelayNodes are ready",
    )
    assert conditions_by_type(status)["Scaling"] == (
        "False",
        "Converged",
        "3 RelayNodes, all ready and on the current template",
    )


def test_status_during_scale_down_rollout_and_with_an_invalid_template() -> None:
    pool = make_pool(replicas=1)
    owned = members(pool, 2)
    status = pool_status(pool, owned, plan(pool, owned, {}))
    assert conditions_by_type(status)["Scaling"] == (
        "True",
        "ScalingDown",
        "2 RelayNodes, 1 desired",
    )
    old = [replace(m, template_hash="old") for m in members(pool, 1)]
    status = pool_status(pool, old, plan(pool, old, {}))
    assert conditions_by_type(status)["Scaling"] == (
        "True",
        "RollingOut",
        "1 RelayNodes still run an older template",
    )
    bad = make_pool(replicas=1, labels={POOL_LABEL: "other"})
    status = pool_status(bad, [], plan(bad, [], {}), problems=check_template(bad))
    problem = (
        'spec.template.metadata.labels["tunnelop.dev/pool"]: set by the operator, remove it '
        "from the template"
    )
    assert conditions_by_type(status)["InvalidTemplate"] == (
        "True",
        "InvalidTemplate",
        "No RelayNode is created or replaced: " + problem,
    )
    assert conditions_by_type(status)["Scaling"] == (
        "True",
        "TemplateInvalid",
        "Waiting for a valid template: " + problem,
    )


def test_status_keeps_transition_times_and_reports_utilization() -> None:
    pool = make_pool(
        replicas=1,
        status={
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "ReplicasReady",
                    "message": "1 of 1 RelayNodes are ready",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        },
    )
    pool.spec.autoscaling = None
    owned = members(pool, 1, capacity_tunnels=10)
    usage = {"edge-0": RelayLoad(4)}
    autoscaled = make_pool(replicas=1, autoscaling={"maxReplicas": 3})
    decision = autoscale(autoscaling_of(autoscaled), pool.spec, 1, owned, usage, Demand(), None, T0)
    status = pool_status(pool, owned, plan(pool, owned, usage), decision=decision)
    assert status["utilization"] == 40
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
