"""TunnelQuota's pure rules: the tightest limit wins, admission names field, value, limit and
quota, the scheduling gate never overshoots, and monthly traffic is counted once."""

from __future__ import annotations

import datetime
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tunnelop.api.v1alpha1 import Tunnel, TunnelQuota, byte_count
from tunnelop.api.v1alpha1.tunnelquota import MAX_DELETING_TUNNELS
from tunnelop.domain.quota import (
    DeletedTraffic,
    Limits,
    TunnelUse,
    Usage,
    advance_period_bytes,
    allowed_pools,
    effective_bandwidth,
    gate_condition,
    limits_of,
    may_bind,
    namespace_hold,
    namespace_traffic,
    next_period_start,
    parse_quotas,
    period_start,
    quota_conditions,
    quota_denials,
    quota_status,
    rounded,
    traffic_level,
    tunnel_hold_condition,
    tunnel_period_bytes,
    tunnel_use,
)

NS = "team-a"
UTC = datetime.UTC
NOW = datetime.datetime(2025, 6, 14, 12, 0, tzinfo=UTC)
JUNE = datetime.datetime(2025, 6, 1, tzinfo=UTC)


def quota(name: str = "free-tier", suspended: bool = False, **hard) -> TunnelQuota:
    return TunnelQuota.model_validate(
        {
            "metadata": {"name": name, "namespace": NS, "generation": 1},
            "spec": {"hard": hard, "suspended": suspended},
        }
    )


def tunnel(name: str = "web", protocol: str = "tcp", bandwidth=None, pool=None) -> Tunnel:
    spec: dict = {"protocol": protocol}
    if bandwidth is not None:
        spec["bandwidth"] = bandwidth
    if pool is not None:
        spec["relay"] = {"pool": pool}
    return Tunnel.model_validate({"metadata": {"name": name, "namespace": NS}, "spec": spec})


def uses(limits: Limits, *tunnels: Tunnel) -> list[TunnelUse]:
    return [tunnel_use(t, limits) for t in tunnels]


# ---- limits ------------------------------------------------------------------------------


def test_several_quotas_apply_and_the_tightest_wins():
    limits = limits_of(
        [
            quota("paid", tunnels=20, bandwidthPerTunnel="100M", protocols=["tcp", "http"]),
            quota("free-tier", tunnels=2, monthlyTraffic="20Gi", protocols=["tcp", "udp"]),
        ]
    )
    assert (limits.tunnels.value, limits.tunnels.quota) == (2, "team-a/free-tier")
    assert (limits.bandwidth_per_tunnel.value, limits.bandwidth_per_tunnel.quota) == (
        100_000_000,
        "team-a/paid",
    )
    assert limits.monthly_traffic.value == 20 * 2**30
    assert limits.allowed_protocols == {"tcp"}
    assert allowed_pools(limits) is None
    assert limits.quotas == ("team-a/free-tier", "team-a/paid")


def test_no_quota_means_no_limit():
    limits = limits_of([])
    assert limits == Limits()
    assert limits.allowed_protocols is None and not limits.suspended


def test_pools_intersect_and_an_empty_list_allows_none():
    limits = limits_of([quota("a", pools=["free", "paid"]), quota("b", pools=["paid", "eu"])])
    assert allowed_pools(limits) == {"paid"}
    assert allowed_pools(limits_of([quota("a", pools=[])])) == frozenset()


def test_a_quota_that_does_not_validate_is_named_and_skipped():
    good = quota("ok", tunnels=1).model_dump(mode="json", by_alias=True)
    bad = {
        "metadata": {"name": "broken", "namespace": NS},
        "spec": {"hard": {"tunnels": "two"}},
    }
    quotas, errors = parse_quotas([good, bad])
    assert [q.metadata.name for q in quotas] == ["ok"]
    assert errors == [
        "TunnelQuota team-a/broken is ignored: spec.hard.tunnels: Input should be a valid integer"
    ]


numbers = st.none() | st.integers(0, 50)
rates = st.none() | st.sampled_from(["1M", "10M", "10Mi", "100M", "1G", "500k", "0"])
lists = st.none() | st.lists(st.sampled_from(["tcp", "udp", "http", "https"]), unique=True)
pool_lists = st.none() | st.lists(st.sampled_from(["free", "paid", "eu"]), unique=True)


@st.composite
def quotas(draw) -> list[TunnelQuota]:
    count = draw(st.integers(1, 4))
    found = []
    for index in range(count):
        hard = {
            "tunnels": draw(numbers),
            "bandwidthPerTunnel": draw(rates),
            "totalBandwidth": draw(rates),
            "monthlyTraffic": draw(st.none() | st.sampled_from(["1Gi", "20Gi", "1T", "5M"])),
            "protocols": draw(lists),
            "pools": draw(pool_lists),
        }
        hard = {k: v for k, v in hard.items() if v is not None}
        found.append(quota(f"q{index}", suspended=draw(st.booleans()), **hard))
    return found


@settings(max_examples=200)
@given(quotas(), st.randoms())
def test_tightest_wins_whatever_the_order(found, random):
    shuffled = list(found)
    random.shuffle(shuffled)
    assert limits_of(shuffled) == limits_of(found)


@settings(max_examples=200)
@given(quotas())
def test_the_effective_limits_are_never_looser_than_any_single_quota(found):
    limits = limits_of(found)
    for one in found:
        alone = limits_of([one])
        for attr in ("tunnels", "bandwidth_per_tunnel", "total_bandwidth", "monthly_traffic"):
            single = getattr(alone, attr)
            if single is not None:
                assert getattr(limits, attr).value <= single.value
        if alone.allowed_protocols is not None:
            assert limits.allowed_protocols <= alone.allowed_protocols
        if alone.allowed_pools is not None:
            assert limits.allowed_pools <= alone.allowed_pools
        if one.spec.suspended:
            assert limits.suspended


def test_effective_bandwidth_is_the_spec_else_the_per_tunnel_limit():
    limits = limits_of([quota(bandwidthPerTunnel="10M")])
    assert effective_bandwidth(tunnel(bandwidth="2M").spec, limits) == 2_000_000
    assert effective_bandwidth(tunnel().spec, limits) == 10_000_000
    assert effective_bandwidth(tunnel().spec, Limits()) is None


# ---- admission ----------------------------------------------------------------------------


def test_a_create_beyond_hard_tunnels_is_refused():
    limits = limits_of([quota(tunnels=2)])
    existing = uses(limits, tunnel("a"), tunnel("b"))
    assert quota_denials(tunnel("c"), None, limits, existing) == [
        "metadata.name: creating Tunnel 'c' makes 3 Tunnels in namespace team-a, above "
        "hard.tunnels 2 of TunnelQuota team-a/free-tier; delete a Tunnel or ask the provider "
        "to raise the limit"
    ]
    assert quota_denials(tunnel("b"), None, limits, existing) == []  # itself is not counted
    # An update of a tunnel admitted before the limit was lowered is not refused.
    over = uses(limits, tunnel("a"), tunnel("b"), tunnel("c"))
    assert quota_denials(tunnel("c", bandwidth="1M"), tunnel("c"), limits, over) == []


def test_a_protocol_outside_hard_protocols_is_refused():
    limits = limits_of([quota(protocols=["tcp", "udp"])])
    assert quota_denials(tunnel(protocol="http"), None, limits, []) == [
        "spec.protocol: http is not in hard.protocols [tcp, udp] of TunnelQuota "
        "team-a/free-tier; allowed here: tcp, udp"
    ]
    none_allowed = limits_of([quota(protocols=[])])
    assert quota_denials(tunnel(), None, none_allowed, []) == [
        "spec.protocol: tcp is not in hard.protocols [] of TunnelQuota team-a/free-tier; "
        "allowed here: none"
    ]


def test_bandwidth_above_the_per_tunnel_limit_is_refused():
    limits = limits_of([quota(bandwidthPerTunnel="10M")])
    assert quota_denials(tunnel(bandwidth="50M"), None, limits, []) == [
        "spec.bandwidth: 50M is above hard.bandwidthPerTunnel 10M of TunnelQuota "
        "team-a/free-tier; ask for at most 10M, or omit spec.bandwidth to get it"
    ]
    assert quota_denials(tunnel(bandwidth="10M"), None, limits, []) == []
    # Unchanged bandwidth is not checked again on update.
    assert quota_denials(tunnel(bandwidth="50M"), tunnel(bandwidth="50M"), limits, []) == []


def test_the_total_bandwidth_counts_every_other_tunnel():
    limits = limits_of([quota(totalBandwidth="20M")])
    existing = uses(limits, tunnel("a", bandwidth="8M"), tunnel("b", bandwidth="8M"))
    assert quota_denials(tunnel("c", bandwidth="5M"), None, limits, existing) == [
        "spec.bandwidth: 5M makes the namespace's total 21M, above hard.totalBandwidth 20M of "
        "TunnelQuota team-a/free-tier (16M in use by 2 other Tunnels, 4M free)"
    ]
    assert quota_denials(tunnel("c", bandwidth="4M"), None, limits, existing) == []
    # Raising one's own bandwidth counts the others, not the old value of itself.
    raised = tunnel("b", bandwidth="12M")
    assert quota_denials(raised, tunnel("b", bandwidth="8M"), limits, existing) == []


def test_the_total_bandwidth_counts_the_per_tunnel_default():
    limits = limits_of(
        [quota("free-tier", bandwidthPerTunnel="10M"), quota("cap", totalBandwidth="15M")]
    )
    existing = uses(limits, tunnel("a"))
    assert quota_denials(tunnel("b"), None, limits, existing) == [
        "spec.bandwidth: unset (so 10M, from hard.bandwidthPerTunnel) makes the namespace's "
        "total 20M, above hard.totalBandwidth 15M of TunnelQuota team-a/cap (10M in use by 1 "
        "other Tunnels, 5M free)"
    ]


def test_no_bandwidth_at_all_under_a_total_bandwidth_is_refused():
    limits = limits_of([quota(totalBandwidth="20M")])
    assert quota_denials(tunnel(), None, limits, []) == [
        "spec.bandwidth: unset means no speed limit, but hard.totalBandwidth 20M of "
        "TunnelQuota team-a/free-tier needs every Tunnel to have one; set spec.bandwidth (at "
        "most 20M is free)"
    ]


def test_a_pool_outside_hard_pools_is_refused():
    limits = limits_of([quota(pools=["free"])])
    assert quota_denials(tunnel(pool="paid"), None, limits, []) == [
        "spec.relay.pool: paid is not in hard.pools [free] of TunnelQuota team-a/free-tier; "
        "allowed here: free, or omit spec.relay.pool"
    ]
    assert quota_denials(tunnel(pool="free"), None, limits, []) == []
    assert quota_denials(tunnel(), None, limits, []) == []  # placed in free by the scheduler


def test_no_pool_allowed_refuses_every_tunnel():
    limits = limits_of([quota(pools=[])])
    assert quota_denials(tunnel(), None, limits, []) == [
        "spec.relay.pool: unset, but hard.pools [] of TunnelQuota team-a/free-tier allows no "
        "pool, so the Tunnel could run nowhere; ask the provider for a pool"
    ]
    assert quota_denials(tunnel(pool="free"), None, limits, []) == [
        "spec.relay.pool: free is not in hard.pools [] of TunnelQuota team-a/free-tier; "
        "allowed here: none"
    ]


def test_a_suspended_namespace_refuses_no_tunnel():
    limits = limits_of([quota(suspended=True)])
    assert limits.suspended
    assert quota_denials(tunnel(), None, limits, []) == []


# ---- the scheduling gate --------------------------------------------------------------------


def test_the_gate_says_how_many_tunnels_are_in_use():
    limits = limits_of([quota(tunnels=4)])
    bound = {(NS, f"t{i}"): None for i in range(4)}
    decision = may_bind(limits, bound, TunnelUse((NS, "t5"), None), 0, NOW)
    assert (decision.allowed, decision.reason) == (False, "QuotaExceeded")
    assert decision.message == (
        "4/4 tunnels of hard.tunnels (TunnelQuota team-a/free-tier) are in use; the tunnel "
        "is scheduled when one is deleted or the limit is raised"
    )
    assert gate_condition(decision, 3) == {
        "type": "Scheduled",
        "status": "False",
        "reason": "QuotaExceeded",
        "message": decision.message,
        "observedGeneration": 3,
    }
    # A bound tunnel (moved to another relay) keeps its place.
    assert may_bind(limits, bound, TunnelUse((NS, "t0"), None), 0, NOW).allowed


def test_the_gate_says_how_much_bandwidth_is_in_use():
    limits = limits_of([quota(totalBandwidth="20M")])
    bound = {(NS, "a"): 10_000_000, (NS, "b"): 8_000_000}
    decision = may_bind(limits, bound, TunnelUse((NS, "c"), 5_000_000), 0, NOW)
    assert decision.message == (
        "18M/20M of hard.totalBandwidth (TunnelQuota team-a/free-tier) is in use and the "
        "tunnel needs 5M; the tunnel is scheduled when bandwidth is freed or the limit is "
        "raised"
    )
    unlimited = may_bind(limits, bound, TunnelUse((NS, "c"), None), 0, NOW)
    assert unlimited.message == (
        "the tunnel has no bandwidth limit, and hard.totalBandwidth (TunnelQuota "
        "team-a/free-tier) needs one; set spec.bandwidth (2M/20M is free)"
    )
    assert may_bind(limits, bound, TunnelUse((NS, "c"), 2_000_000), 0, NOW).allowed


def test_the_gate_holds_tunnels_of_limits_lowered_after_admission():
    limits = limits_of([quota(protocols=["tcp"], pools=["free"], bandwidthPerTunnel="1M")])
    http = may_bind(limits, {}, TunnelUse((NS, "a"), 1_000_000, "http"), 0, NOW)
    assert http.message == (
        "protocol http is no longer in hard.protocols [tcp] of TunnelQuota team-a/free-tier; "
        "the tunnel is scheduled when the protocol is allowed again"
    )
    paid = may_bind(limits, {}, TunnelUse((NS, "a"), 1_000_000, "tcp", "paid"), 0, NOW)
    assert paid.message == (
        "pool paid is no longer in hard.pools [free] of TunnelQuota team-a/free-tier; the "
        "tunnel is scheduled when the pool is allowed again"
    )
    fast = may_bind(limits, {}, TunnelUse((NS, "a"), 5_000_000), 0, NOW)
    assert fast.message == (
        "spec.bandwidth 5M is above hard.bandwidthPerTunnel 1M of TunnelQuota "
        "team-a/free-tier; the tunnel is scheduled when spec.bandwidth is lowered or the "
        "limit is raised"
    )
    assert {http.reason, paid.reason, fast.reason} == {"QuotaExceeded"}


def test_a_suspended_namespace_binds_nothing_and_stops_its_tunnels():
    limits = limits_of([quota("free-tier", suspended=True), quota("extra")])
    decision = may_bind(limits, {}, TunnelUse((NS, "a"), None), 0, NOW)
    message = (
        "The namespace is suspended by the provider (spec.suspended of TunnelQuota "
        "team-a/free-tier); its Tunnels keep their ports and resume when it is lifted"
    )
    assert (decision.reason, decision.message) == ("NamespaceSuspended", message)
    hold = namespace_hold(limits, 0, NOW)
    assert tunnel_hold_condition(hold, 2) == {
        "type": "Ready",
        "status": "False",
        "reason": "NamespaceSuspended",
        "message": message,
        "observedGeneration": 2,
    }


def test_reaching_the_monthly_traffic_stops_the_namespace_until_next_month():
    limits = limits_of([quota(monthlyTraffic="20Gi")])
    assert namespace_hold(limits, 20 * 2**30 - 1, NOW) is None
    hold = namespace_hold(limits, 20 * 2**30, NOW)
    assert (hold.reason, hold.message) == (
        "TrafficQuotaExceeded",
        "21.4G/20Gi of hard.monthlyTraffic (TunnelQuota team-a/free-tier) used since "
        "2025-06-01T00:00:00Z; the namespace's Tunnels resume on 2025-07-01T00:00:00Z or when "
        "the limit is raised",
    )
    decision = may_bind(limits, {}, TunnelUse((NS, "a"), None), 20 * 2**30, NOW)
    assert decision.reason == "TrafficQuotaExceeded"
    # The kill switch comes first.
    both = limits_of([quota(monthlyTraffic="1k", suspended=True)])
    assert namespace_hold(both, 5000, NOW).reason == "NamespaceSuspended"


class GateMachine(RuleBasedStateMachine):
    """Binds, unbinds and limit changes in any order: a bind never takes the namespace past
    hard.tunnels or hard.totalBandwidth, and a bind that fits is never refused."""

    @initialize(tunnels=st.integers(0, 6), total=st.integers(0, 60))
    def start(self, tunnels, total):
        self.bound: dict = {}
        self.next_key = 0
        self.set_limits(tunnels, total)

    def set_limits(self, tunnels, total):
        self.tunnels, self.total = tunnels, total
        self.limits = limits_of([quota(tunnels=tunnels, totalBandwidth=f"{total}M")])

    @rule(bandwidth=st.integers(1, 20))
    def bind(self, bandwidth):
        self.next_key += 1
        candidate = TunnelUse((NS, f"t{self.next_key}"), bandwidth * 1_000_000)
        fits = (
            len(self.bound) + 1 <= self.tunnels
            and sum(self.bound.values()) + candidate.bandwidth <= self.total * 1_000_000
        )
        decision = may_bind(self.limits, dict(self.bound), candidate, 0, NOW)
        assert decision.allowed == fits, decision
        if decision.allowed:
            self.bound[candidate.key] = candidate.bandwidth
            assert len(self.bound) <= self.tunnels
            assert sum(self.bound.values()) <= self.total * 1_000_000
        else:
            assert decision.reason == "QuotaExceeded"

    @precondition(lambda self: self.bound)
    @rule(data=st.data())
    def unbind(self, data):
        key = data.draw(st.sampled_from(sorted(self.bound)))
        del self.bound[key]

    @rule(tunnels=st.integers(0, 6), total=st.integers(0, 60))
    def change_limits(self, tunnels, total):
        self.set_limits(tunnels, total)

    @invariant()
    def rebinding_a_bound_tunnel_is_always_allowed(self):
        for key, bandwidth in list(self.bound.items())[:2]:
            assert may_bind(self.limits, self.bound, TunnelUse(key, bandwidth), 0, NOW).allowed


TestGateMachine = GateMachine.TestCase
TestGateMachine.settings = settings(max_examples=150, stateful_step_count=40)


# ---- the traffic period -------------------------------------------------------------------


def test_the_period_is_the_calendar_month_in_utc():
    assert period_start(NOW) == JUNE
    new_year = datetime.datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert next_period_start(new_year) == datetime.datetime(2026, 1, 1, tzinfo=UTC)
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    # 1 July 05:00 in Tokyo is still June in UTC.
    assert period_start(datetime.datetime(2025, 7, 1, 5, 0, tzinfo=tokyo)) == JUNE
    assert period_start(datetime.datetime(2025, 6, 30, 23, 0)) == JUNE  # naive is UTC


def test_period_bytes_start_again_in_a_new_month():
    july = datetime.datetime(2025, 7, 1, 0, 0, 5, tzinfo=UTC)
    assert advance_period_bytes(JUNE, 500, 20, NOW) == (JUNE, 520)
    assert advance_period_bytes(JUNE, 500, 20, july) == (period_start(july), 20)
    assert advance_period_bytes(None, None, 20, NOW) == (JUNE, 20)
    with pytest.raises(ValueError, match="delta must not be negative"):
        advance_period_bytes(JUNE, 1, -1, NOW)


readings = st.lists(
    st.tuples(st.integers(0, 3 * 24 * 3600), st.integers(0, 10**9)), min_size=1, max_size=40
)


@given(readings)
def test_the_sum_of_deltas_is_the_usage_of_each_month(steps):
    """Readings from 29 June to 2 July: what a tunnel reports for a month is the sum of the
    bytes read in that month, however the readings fall around the boundary."""
    start = datetime.datetime(2025, 6, 29, tzinfo=UTC)
    moments = sorted((start + datetime.timedelta(seconds=s), delta) for s, delta in steps)
    state: tuple = (None, None)
    reported_by_month: dict = {}
    for moment, delta in moments:
        state = advance_period_bytes(*state, delta, moment)
        reported_by_month[state[0]] = state[1]
    for month, reported in reported_by_month.items():
        assert reported == sum(d for m, d in moments if period_start(m) == month)
    traffic = {"periodStart": state[0].isoformat(), "periodBytes": state[1]}
    assert tunnel_period_bytes(traffic, moments[-1][0]) == state[1]


def test_a_tunnel_last_reported_last_month_counts_nothing_this_month():
    may = {"periodStart": "2025-05-01T00:00:00Z", "periodBytes": 10**9}
    assert tunnel_period_bytes(may, NOW) == 0
    june = {"periodStart": "2025-06-01T00:00:00Z", "periodBytes": 7}
    assert tunnel_period_bytes(june, NOW) == 7
    assert tunnel_period_bytes({"periodStart": "garbage", "periodBytes": 7}, NOW) == 0
    assert tunnel_period_bytes(None, NOW) == 0


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 10**12), min_size=1, max_size=8),
    st.lists(st.tuples(st.sampled_from(["record", "gone", "prune"]), st.integers(0, 7))),
)
def test_a_deleted_tunnels_bytes_are_counted_once(sizes, steps):
    """Deletions recorded (again and again, as after a crash), Tunnels leaving the list and
    the ledger forgetting them, in any order: the namespace's traffic never changes."""
    period_bytes = {f"uid-{i}": size for i, size in enumerate(sizes)}
    listed = set(period_bytes)
    ledger = DeletedTraffic()

    def traffic(uid):
        return {"periodStart": "2025-06-01T00:00:00Z", "periodBytes": period_bytes[uid]}

    expected = sum(sizes)
    for action, index in steps:
        uid = f"uid-{index % len(sizes)}"
        if action == "record" and uid in listed:
            ledger = ledger.record(uid, period_bytes[uid], NOW)
        elif action == "gone" and uid in ledger.tunnels:
            listed.discard(uid)  # the finalizer is removed only after the record
        elif action == "prune":
            ledger = ledger.forget_gone(listed)
        statuses = [(uid, traffic(uid)) for uid in sorted(listed)]
        assert namespace_traffic(statuses, ledger, NOW) == expected
        # Written to the quota's status and read back, it says the same.
        assert DeletedTraffic.from_status(ledger.to_status()) == ledger


def test_a_new_period_starts_the_deleted_bytes_from_zero():
    ledger = DeletedTraffic().record("uid-1", 5000, NOW)
    july = datetime.datetime(2025, 7, 2, tzinfo=UTC)
    assert namespace_traffic([], ledger, NOW) == 5000
    assert namespace_traffic([], ledger, july) == 0
    assert ledger.for_period(july).bytes == 0
    assert ledger.for_period(july).tunnels == {"uid-1"}


def test_a_full_ledger_makes_the_deletion_wait():
    ledger = DeletedTraffic(JUNE, 0, frozenset(f"u{i}" for i in range(MAX_DELETING_TUNNELS)))
    assert ledger.record("another", 1, NOW) is None
    assert ledger.record("u1", 1, NOW) is ledger  # already counted: nothing to add


def test_traffic_warns_at_80_percent_and_is_exceeded_at_100():
    assert traffic_level(79, 100) == "ok"
    assert traffic_level(80, 100) == "warning"
    assert traffic_level(100, 100) == "exceeded"
    assert traffic_level(0, 0) == "exceeded"  # a limit of 0 allows none
    assert traffic_level(10**15, None) == "ok"


@given(st.integers(0, 2**63 - 1))
def test_rounded_figures_are_valid_quantities_and_never_above(amount):
    shown = rounded(amount)
    value = byte_count(shown)
    assert value <= amount
    assert amount - value < max(1, amount // 100)  # three significant digits


# ---- the quota's status -------------------------------------------------------------------


def conditions_by_type(conditions: list[dict]) -> dict[str, tuple]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conditions}


def test_a_limit_lowered_below_use_says_over_limit_with_the_figures():
    free = quota(tunnels=2, totalBandwidth="20M")
    usage = Usage(tunnels=3, bandwidth=30_000_000, traffic=0, waiting=1)
    found = conditions_by_type(quota_conditions(free, limits_of([free]), usage, NOW))
    assert found["Exceeded"] == (
        "True",
        "OverLimit",
        "3/2 tunnels of hard.tunnels; 30M/20M of hard.totalBandwidth: the limit is below what "
        "is in use; nothing is deleted or moved, new Tunnels wait until use falls below it",
    )
    assert found["Suspended"][:2] == ("False", "NotSuspended")
    assert found["Ready"] == (
        "True",
        "Enforced",
        "The limits apply to the Tunnels of namespace team-a",
    )


def test_waiting_tunnels_and_a_full_quota():
    free = quota(tunnels=2)
    usage = Usage(tunnels=2, bandwidth=0, traffic=1234, waiting=3)
    found = conditions_by_type(quota_conditions(free, limits_of([free]), usage, NOW))
    assert found["Exceeded"] == (
        "True",
        "QuotaExceeded",
        "3 Tunnels wait for room (2/2 tunnels, 0/unlimited bandwidth, 1.23k/unlimited "
        "traffic); they are scheduled when Tunnels are deleted or a limit is raised",
    )
    calm = Usage(tunnels=1, bandwidth=0, traffic=0)
    found = conditions_by_type(quota_conditions(free, limits_of([free]), calm, NOW))
    assert found["Exceeded"] == (
        "False",
        "WithinLimits",
        "Within limits: 1/2 tunnels, 0/unlimited bandwidth, 0/unlimited traffic",
    )
    assert found["TrafficQuotaWarning"] == (
        "False",
        "NoTrafficLimit",
        "hard.monthlyTraffic is not set",
    )


def test_traffic_warning_then_exceeded_suspends_the_namespace():
    capped = quota(monthlyTraffic="10Gi")
    limits = limits_of([capped])
    warned = Usage(tunnels=1, bandwidth=0, traffic=9 * 2**30)
    found = conditions_by_type(quota_conditions(capped, limits, warned, NOW))
    assert found["TrafficQuotaWarning"] == (
        "True",
        "TrafficNearLimit",
        "9.66G/10Gi of hard.monthlyTraffic used since 2025-06-01T00:00:00Z: 80% or more",
    )
    assert found["Exceeded"][0] == "False"
    over = Usage(tunnels=1, bandwidth=0, traffic=10 * 2**30)
    found = conditions_by_type(quota_conditions(capped, limits, over, NOW))
    assert found["Exceeded"] == (
        "True",
        "TrafficQuotaExceeded",
        "10.7G/10Gi of hard.monthlyTraffic used since 2025-06-01T00:00:00Z; the namespace's "
        "Tunnels are suspended until the next period or until the limit is raised",
    )
    assert found["Suspended"][:2] == ("True", "TrafficQuotaExceeded")


def test_every_quota_of_a_suspended_namespace_says_which_one_suspended_it():
    switch, tier = quota("kill-switch", suspended=True), quota("free-tier", tunnels=5)
    limits = limits_of([switch, tier])
    usage = Usage(tunnels=1, bandwidth=0, traffic=0)
    found = conditions_by_type(quota_conditions(tier, limits, usage, NOW))
    assert found["Suspended"][:2] == ("True", "NamespaceSuspended")
    assert "TunnelQuota team-a/kill-switch" in found["Suspended"][2]
    assert found["Ready"][2] == (
        "The limits apply to the Tunnels of namespace team-a; with team-a/kill-switch, the "
        "tightest limit wins"
    )


def test_the_status_is_valid_for_the_schema_and_stable():
    capped = quota(tunnels=2, monthlyTraffic="20Gi")
    ledger = DeletedTraffic().record("uid-1", 3_000_000_000, NOW)
    usage = Usage(tunnels=2, bandwidth=20_000_000, traffic=3_221_225_472)
    status = quota_status(capped, limits_of([capped]), usage, ledger, NOW)
    assert status["used"] == {"tunnels": 2, "bandwidth": "20M", "traffic": "3.22G"}
    assert (status["periodStart"], status["deletedBytes"], status["deletingTunnels"]) == (
        "2025-06-01T00:00:00Z",
        3_000_000_000,
        ["uid-1"],
    )
    TunnelQuota.model_validate({**capped.model_dump(by_alias=True), "status": status})
    again = quota_status(capped, limits_of([capped]), usage, ledger, NOW, status["conditions"])
    assert again == status  # nothing changed: nothing to write


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_ties_go_to_the_first_quota_by_name(order):
    named = [quota("b", tunnels=2), quota("a", tunnels=2), quota("c", tunnels=3)]
    limits = limits_of([named[i] for i in order])
    assert limits.tunnels.quota == "team-a/a"
