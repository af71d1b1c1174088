"""How the operator turns relay agents' metrics into Tunnel status: parsing, totals that only
grow across agent and operator restarts, and a bounded write rate."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from tunnelop.agent.metering import Meter, TunnelCollector
from tunnelop.contract.tunnel_metrics import Refusal
from tunnelop.controllers.traffic import (
    Observed,
    TrafficCollector,
    TrafficOptions,
    client_condition,
)
from tunnelop.domain.quota.period import period_start
from tunnelop.domain.quota.period import rfc3339 as month_text
from tunnelop.domain.traffic_report import (
    AgentReading,
    Totals,
    advance,
    due_writes,
    parse_agent_metrics,
    rfc3339,
    traffic_status,
)


def agent_metrics_text() -> str:
    """What an agent exports, rendered by the agent's own collector."""
    meter = Meter("eu-1")
    meter.observe_client("team-a/web", alive=True, online=True)
    meter.tunnels["team-a/web"].bytes_in = 1234
    meter.tunnels["team-a/web"].bytes_out = 99
    meter.tunnels["team-a/web"].active_connections = 2
    meter.observe_client("team-b/game.v2", alive=False, online=False)
    registry = CollectorRegistry()
    registry.register(TunnelCollector(meter))
    return generate_latest(registry).decode()


def test_the_operator_reads_what_the_agent_exports():
    readings = parse_agent_metrics(agent_metrics_text())
    web = readings[("team-a", "web")]
    assert (web.bytes_in, web.bytes_out, web.active_connections, web.connected) == (
        1234,
        99,
        2,
        True,
    )
    assert web.last_seen is not None
    game = readings[("team-b", "game.v2")]
    assert (game.connected, game.bytes_in, game.last_seen) == (False, 0, None)


def test_unrelated_series_are_ignored():
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.5\n"
    assert parse_agent_metrics(text) == {}


def test_first_reading_continues_from_reported_status():
    reading = AgentReading(bytes_in=100, bytes_out=10)
    # A restarted operator: status already counted more than this agent's counters show
    # (the agent restarted earlier); totals never go back.
    totals = advance(None, {"bytesIn": 5000, "bytesOut": 700}, reading)
    assert (totals.bytes_in, totals.bytes_out) == (5000, 700)
    # A fresh tunnel: the agent's counters are the totals.
    totals = advance(None, None, reading)
    assert (totals.bytes_in, totals.bytes_out) == (100, 10)


def test_agent_restart_counts_the_new_counter_in_full():
    totals = advance(None, None, AgentReading(bytes_in=1000))
    totals = advance(totals, None, AgentReading(bytes_in=1500))
    assert totals.bytes_in == 1500
    totals = advance(totals, None, AgentReading(bytes_in=200))  # the agent restarted
    assert totals.bytes_in == 1700


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=30))
def test_totals_never_decrease(counters):
    totals = None
    last_total = 0
    for value in counters:
        totals = advance(totals, None, AgentReading(bytes_in=value))
        assert totals.bytes_in >= last_total
        last_total = totals.bytes_in


def test_traffic_status_shape():
    totals = Totals(bytes_in=5, bytes_out=6, agent_in=5, agent_out=6)
    status = traffic_status(totals, AgentReading(active_connections=1, last_seen=1_700_000_000.7))
    assert status == {
        "bytesIn": 5,
        "bytesOut": 6,
        "activeConnections": 1,
        "lastSeen": "2023-11-14T22:13:20Z",
    }
    assert "lastSeen" not in traffic_status(totals, AgentReading())
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_urgent_writes_always_go_and_routine_ones_are_bounded():
    a, b, c, d = ("ns", "a"), ("ns", "b"), ("ns", "c"), ("ns", "d")
    candidates = [
        (a, True, 99.0),  # ClientConnected flipped just after a write: goes anyway
        (b, False, 95.0),  # written 5 s ago: too recent
        (c, False, 10.0),
        (d, False, 20.0),
    ]
    assert due_writes(candidates, now=100.0, min_interval=30.0, budget=1) == [a, c]
    assert due_writes(candidates, now=100.0, min_interval=30.0, budget=5) == [a, c, d]
    assert due_writes(candidates, now=100.0, min_interval=30.0, budget=0) == [a]


@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0, max_value=1000)), min_size=0, max_size=50
    ),
    st.integers(min_value=0, max_value=20),
)
def test_routine_writes_never_exceed_the_budget(flags, budget):
    candidates = [(("ns", str(i)), urgent, at) for i, (urgent, at) in enumerate(flags)]
    due = due_writes(candidates, now=1000.0, min_interval=30.0, budget=budget)
    urgent = [key for key, is_urgent, _ in candidates if is_urgent]
    assert set(urgent) <= set(due)
    assert len(due) - len(urgent) <= budget
    for key, is_urgent, at in candidates:
        if key in due and not is_urgent:
            assert 1000.0 - at >= 30.0


def test_client_condition_says_what_to_do():
    totals = Totals(0, 0, 0, 0)
    connected = Observed("eu-1", totals, AgentReading(connected=True))
    condition = client_condition(connected, False, "web", 3)
    assert (condition["status"], condition["reason"]) == ("True", "ClientConnected")
    gone = Observed("eu-1", totals, AgentReading(connected=False))
    condition = client_condition(gone, False, "web", 3)
    assert (condition["status"], condition["reason"]) == ("False", "ClientNotConnected")
    assert "web-frpc" in condition["message"]
    assert client_condition(gone, True, "web", 3)["reason"] == "TunnelSuspended"
    assert client_condition(None, False, "web", 3) is None


# ---- refusals ---------------------------------------------------------------------------------


def refused_agent_metrics_text(accepted_after: bool) -> str:
    meter = Meter("eu-1")
    meter.observe_refusal("team-a/web", "NewProxy", "tunnel team-a/web: set type = 'http'")
    if accepted_after:
        meter.observe_client("team-a/web", alive=True, online=True)
    registry = CollectorRegistry()
    registry.register(TunnelCollector(meter))
    return generate_latest(registry).decode()


def test_the_operator_reads_the_agents_last_refusal():
    reading = parse_agent_metrics(refused_agent_metrics_text(accepted_after=False))[
        ("team-a", "web")
    ]
    assert reading.last_refusal is not None
    assert (reading.last_refusal.op, reading.last_refusal.reason) == (
        "NewProxy",
        "tunnel team-a/web: set type = 'http'",
    )
    assert reading.standing_refusal() == reading.last_refusal


def test_the_newest_refusal_wins_if_several_are_exported():
    text = (
        "# TYPE tunnelop_tunnel_last_refusal_timestamp_seconds gauge\n"
        'tunnelop_tunnel_last_refusal_timestamp_seconds{namespace="n",tunnel="t",relay="r",op="Login",reason="old"} 10\n'
        'tunnelop_tunnel_last_refusal_timestamp_seconds{namespace="n",tunnel="t",relay="r",op="Ping",reason="new"} 20\n'
    )
    assert parse_agent_metrics(text)[("n", "t")].last_refusal == Refusal(20, "Ping", "new")


def test_a_refusal_stands_while_the_client_has_no_proxy_online():
    # Its heartbeats go on (last_seen moves) while its proxy is refused: the refusal stands.
    reading = AgentReading(last_seen=100.0, last_refusal=Refusal(99.0, "NewProxy", "x"))
    assert reading.standing_refusal() is not None
    reading.connected = True
    assert reading.standing_refusal() is None


def test_the_agent_forgets_a_refusal_once_it_accepts_the_proxy():
    meter = Meter("eu-1")
    meter.observe_refusal("team-a/web", "NewProxy", "locations is not allowed")
    meter.observe_client("team-a/web", alive=True, online=None, run_id="r1")
    assert meter.tunnels["team-a/web"].last_refusal is not None  # a heartbeat changes nothing
    meter.observe_client("team-a/web", alive=True, online=True, run_id="r1")
    assert meter.tunnels["team-a/web"].last_refusal is None


def test_client_condition_says_the_relay_refused_the_client_and_why():
    refusal = Refusal(200.0, "NewProxy", "tunnel team-a/web: set type = 'http'")
    refused = Observed(
        "eu-1", Totals(0, 0, 0, 0), AgentReading(last_seen=100.0, last_refusal=refusal)
    )
    condition = client_condition(refused, False, "web", 3)
    assert (condition["status"], condition["reason"]) == ("False", "ClientRefused")
    assert condition["message"] == (
        "relay eu-1 refused the client's NewProxy: tunnel team-a/web: set type = 'http'"
    )
    # Suspension says more; a connected client is connected.
    assert client_condition(refused, True, "web", 3)["reason"] == "TunnelSuspended"
    connected = Observed(
        "eu-1", Totals(0, 0, 0, 0), AgentReading(connected=True, last_refusal=refusal)
    )
    assert client_condition(connected, False, "web", 3)["reason"] == "ClientConnected"


def _collector(status: dict) -> TrafficCollector:
    tunnel = {"spec": {}, "status": status}
    rt = SimpleNamespace(
        traffic={}, client_problems={}, cache=SimpleNamespace(tunnels={("team-a", "web"): tunnel})
    )
    return TrafficCollector(rt, TrafficOptions())  # type: ignore[arg-type]


def test_a_new_refusal_is_a_routine_write_and_once_shown_no_write():
    refusal = Refusal(200.0, "Login", "credentials refused by relay eu-1")
    reading = AgentReading(last_seen=100.0, last_refusal=refusal)
    not_connected = {
        "type": "ClientConnected",
        "status": "False",
        "reason": "ClientNotConnected",
        "message": "No frpc is connected to relay eu-1: run frpc with the frpc.toml of Secret web-frpc",
    }
    this_month = month_text(period_start(datetime.datetime.now(datetime.UTC)))
    status = {
        "conditions": [not_connected],
        "traffic": {
            "bytesIn": 0,
            "bytesOut": 0,
            "activeConnections": 0,
            "periodStart": this_month,
            "periodBytes": 0,
        },
    }
    # Not urgent (no flip): it waits for the write budget, like traffic.
    assert _collector(status)._observe(("team-a", "web"), "eu-1", reading) is False
    shown = client_condition(Observed("eu-1", Totals(0, 0, 0, 0), reading), False, "web", 1)
    assert shown is not None
    status["conditions"] = [shown]
    # Read again and again: status already says it, nothing to write.
    collector = _collector(status)
    for _ in range(3):
        assert collector._observe(("team-a", "web"), "eu-1", reading) is None


def test_period_bytes_grow_with_the_totals_and_restart_each_month():
    collector = _collector(
        {
            "traffic": {
                "bytesIn": 1000,
                "bytesOut": 500,
                "periodStart": "2025-06-01T00:00:00Z",
                "periodBytes": 700,
            }
        }
    )
    collector.now = lambda: datetime.datetime(2025, 6, 20, tzinfo=datetime.UTC)
    key = ("team-a", "web")
    # A restarted operator: the agent counted less than status says; nothing new yet.
    collector._observe(key, "eu-1", AgentReading(bytes_in=100, bytes_out=0))
    observed = collector.observed[key]
    assert (observed.totals.bytes_in, observed.period_bytes) == (1000, 700)
    # 300 more bytes in, 200 out: into June's count and the totals alike.
    collector._observe(key, "eu-1", AgentReading(bytes_in=400, bytes_out=200))
    observed = collector.observed[key]
    assert observed.period_bytes == 1200
    assert observed.traffic()["periodStart"] == "2025-06-01T00:00:00Z"
    # July: the bytes read now are July's; June's are not carried over.
    collector.now = lambda: datetime.datetime(2025, 7, 1, 0, 0, 5, tzinfo=datetime.UTC)
    collector._observe(key, "eu-1", AgentReading(bytes_in=450, bytes_out=200))
    observed = collector.observed[key]
    assert (observed.period_bytes, observed.traffic()["periodStart"]) == (
        50,
        "2025-07-01T00:00:00Z",
    )
    assert observed.traffic()["bytesIn"] == 1350
