"""The quota glue of the controllers, by example: what a stored Tunnel takes from its quota,
and which quota status changes wait for the bounded write rate."""

from __future__ import annotations

from tunnelop.api.v1alpha1 import TunnelQuota
from tunnelop.controllers.quotas import _figures_only, pools_limit, use_of
from tunnelop.domain.quota import limits_of


def quota(name: str, **hard) -> TunnelQuota:
    return TunnelQuota.model_validate(
        {"kind": "TunnelQuota", "metadata": {"name": name, "namespace": "alice"},
         "spec": {"hard": hard}}
    )  # fmt: skip


def stored(spec: dict) -> dict:
    return {"metadata": {"namespace": "alice", "name": "t"}, "spec": spec}


def test_a_stored_tunnel_takes_its_bandwidth_or_the_default_per_tunnel():
    limits = limits_of([quota("tier", bandwidthPerTunnel="10M")])
    use = use_of(stored({"protocol": "udp", "bandwidth": "2M", "relay": {"pool": "free"}}), limits)
    assert (use.key, use.bandwidth, use.protocol, use.pool) == (
        ("alice", "t"), 2_000_000, "udp", "free",
    )  # fmt: skip
    assert use_of(stored({"protocol": "tcp"}), limits).bandwidth == 10_000_000
    assert use_of(stored({"protocol": "tcp"}), limits_of([])).bandwidth is None
    # Unreadable (stored before a rule existed): counted without a limit, never a crash.
    assert use_of(stored({"protocol": "tcp", "bandwidth": "fast"}), limits).bandwidth is None


def test_the_pools_refusal_names_every_quota_that_lists_pools():
    limits = limits_of([quota("tier", pools=["free", "paid"]), quota("cap", pools=["free"])])
    assert pools_limit(limits) == (
        "hard.pools [free] of TunnelQuota alice/cap and "
        "hard.pools [free, paid] of TunnelQuota alice/tier"
    )
    assert pools_limit(limits_of([])) == "hard.pools"


def test_only_figure_changes_wait_for_the_write_rate():
    def status(tunnels: int, traffic: str, reason: str, message: str) -> dict:
        return {
            "used": {"tunnels": tunnels, "traffic": traffic},
            "conditions": [
                {"type": "Exceeded", "status": "False", "reason": reason, "message": message}
            ],
        }

    old = status(2, "1k", "WithinLimits", "Within limits: 2/5 tunnels, 1k traffic")
    assert _figures_only(old, status(2, "5k", "WithinLimits", "Within limits: 2/5, 5k"))
    assert not _figures_only(old, status(3, "1k", "WithinLimits", "Within limits: 3/5"))
    assert not _figures_only(old, status(2, "1k", "OverLimit", "3/2 tunnels"))
    assert not _figures_only({}, old)  # a first status is written at once
