"""The client sessions the relay agent knows of (tunnelop.agent.sessions): which tunnel a
run_id speaks for while its session lives, whose proxy of a tunnel is online, and frps's
metrics as the ground truth for a proxy being registered."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelop.agent.sessions import (
    MAX_RUN_IDS_PER_TUNNEL,
    REGISTRATION_READINGS,
    SESSION_TTL,
    Sessions,
)


def test_a_run_id_belongs_to_its_tunnel_while_the_session_lives() -> None:
    sessions = Sessions()
    sessions.seen("ns/a", "r1", now=100.0)
    assert sessions.tunnel_of("r1", 100.0 + SESSION_TTL) == "ns/a"
    assert sessions.tunnel_of("r1", 100.0 + SESSION_TTL + 0.1) is None
    assert sessions.tunnel_of("other", 100.0) is None


def test_each_accepted_call_keeps_the_session_alive() -> None:
    sessions = Sessions()
    for second in range(30):
        sessions.seen("ns/a", "r1", now=float(second))
    assert sessions.tunnel_of("r1", 29.0 + SESSION_TTL) == "ns/a"


def test_calls_without_a_run_id_bind_nothing() -> None:
    sessions = Sessions()
    sessions.seen("ns/a", None, now=1.0)
    assert sessions.bound == {}


def test_an_expired_run_id_may_be_taken_by_another_tunnel() -> None:
    sessions = Sessions()
    sessions.seen("ns/a", "r1", now=0.0)
    sessions.seen("ns/b", "r1", now=SESSION_TTL + 1)
    assert sessions.tunnel_of("r1", SESSION_TTL + 1) == "ns/b"
    assert "ns/a" not in sessions.run_ids


def test_forget_expired_drops_dead_sessions() -> None:
    sessions = Sessions()
    sessions.seen("ns/a", "r1", now=0.0)
    sessions.seen("ns/a", "r2", now=5.0)
    sessions.forget_expired(now=SESSION_TTL + 1)
    assert set(sessions.bound) == {"r2"}
    assert list(sessions.run_ids["ns/a"]) == ["r2"]


def test_a_tunnel_keeps_only_its_newest_run_ids() -> None:
    sessions = Sessions()
    for i in range(MAX_RUN_IDS_PER_TUNNEL + 3):
        sessions.seen("ns/a", f"r{i}", now=float(i))
    assert len(sessions.bound) == MAX_RUN_IDS_PER_TUNNEL
    newest = [f"r{i}" for i in range(3, MAX_RUN_IDS_PER_TUNNEL + 3)]
    assert list(sessions.run_ids["ns/a"]) == newest


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ns/a", "ns/b", "ns/c"]), st.text("xyz", max_size=3)),
        max_size=60,
    )
)
def test_memory_stays_bounded_by_the_table(calls: list[tuple[str, str]]) -> None:
    sessions = Sessions()
    for now, (tunnel, run_id) in enumerate(calls):
        sessions.seen(tunnel, run_id or None, float(now) / 100)
        sessions.proxy_accepted(tunnel, run_id or None)
    assert len(sessions.bound) <= 3 * MAX_RUN_IDS_PER_TUNNEL
    assert len(sessions.proxies) <= 3
    # The two indexes agree.
    assert {r for runs in sessions.run_ids.values() for r in runs} == set(sessions.bound)
    sessions.retain({"ns/b"})
    assert set(sessions.run_ids) <= {"ns/b"}
    assert set(sessions.proxies) <= {"ns/b"}
    assert all(tunnel == "ns/b" for tunnel, _ in sessions.bound.values())


def test_a_proxy_closes_only_by_its_own_session() -> None:
    sessions = Sessions()
    sessions.proxy_accepted("ns/a", "r1")
    assert sessions.proxy_run_id("ns/a") == "r1"
    assert sessions.proxy_closed("ns/a", "r2") is False
    assert sessions.proxy_closed("ns/a", None) is False
    assert sessions.proxy_run_id("ns/a") == "r1"
    assert sessions.proxy_closed("ns/a", "r1") is True
    assert sessions.proxy_run_id("ns/a") is None
    assert sessions.proxy_closed("ns/a", "r1") is False


def test_an_accepted_proxy_is_online_until_frps_shows_it_or_readings_pass_without() -> None:
    sessions = Sessions()
    sessions.proxy_accepted("ns/a", "r1")
    for _ in range(REGISTRATION_READINGS):
        assert sessions.frps_reading("ns/a", registered=False) == (True, False)
    # One more reading without it: not online, and frps never registered it.
    assert sessions.frps_reading("ns/a", registered=False) == (False, True)
    assert sessions.proxy_run_id("ns/a") is None  # no stale "online" blocks the next login
    assert sessions.frps_reading("ns/a", registered=False) == (False, False)


def test_a_registered_proxy_frps_no_longer_shows_is_offline() -> None:
    sessions = Sessions()
    sessions.proxy_accepted("ns/a", "r1")
    assert sessions.frps_reading("ns/a", registered=True) == (True, False)
    assert sessions.frps_reading("ns/a", registered=False) == (False, False)
    assert sessions.proxy_run_id("ns/a") is None


def test_a_proxy_frps_shows_without_the_agent_knowing_its_session_is_online() -> None:
    # Say the agent restarted: frps's metrics still say the proxy is registered.
    sessions = Sessions()
    assert sessions.frps_reading("ns/a", registered=True) == (True, False)
    assert sessions.proxies["ns/a"].run_id is None
    # Nobody's CloseProxy closes it (whose it is is unknown); frps's next reading does.
    assert sessions.proxy_closed("ns/a", "r1") is False
    assert sessions.proxy_run_id("ns/a") is None  # and no session is refused for it
    assert sessions.frps_reading("ns/a", registered=False) == (False, False)
