"""The relay agent's metering (tunnelop.agent.metering): parsing frps's /metrics, keeping
per-tunnel totals across readings and frps restarts, noting clients from plugin calls, and
exporting `tunnelop_tunnel_*` through a Prometheus collector.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tunnelop.agent import metering
from tunnelop.agent.index import TableIndex
from tunnelop.agent.metering import (
    FrpsProxy,
    Meter,
    TunnelCollector,
    parse_frps_metrics,
)
from tunnelop.agent.sessions import REGISTRATION_READINGS
from tunnelop.contract.table import TableEntry, token_sha256
from tunnelop.contract.tunnel_metrics import Refusal

RELAY = "relay-a"

# What frps v0.71 serves on its dashboard port's /metrics (Go client_golang text format),
# with some of the Go runtime's and promhttp's families around frp's own.
FRPS_METRICS = """\
# HELP frp_server_client_counts The current client counts of frps
# TYPE frp_server_client_counts gauge
frp_server_client_counts 3
# HELP frp_server_connection_counts The current connection counts
# TYPE frp_server_connection_counts gauge
frp_server_connection_counts{name="team-a.ssh",type="tcp"} 2
frp_server_connection_counts{name="team-b.web",type="http"} 0
# HELP frp_server_proxy_counts The current proxy counts
# TYPE frp_server_proxy_counts gauge
frp_server_proxy_counts{type="http"} 1
frp_server_proxy_counts{type="tcp"} 1
# HELP frp_server_proxy_counts_detailed The current number of proxies grouped by type and name
# TYPE frp_server_proxy_counts_detailed gauge
frp_server_proxy_counts_detailed{name="team-a.ssh",type="tcp"} 1
frp_server_proxy_counts_detailed{name="team-b.web",type="http"} 1
# HELP frp_server_traffic_in The total in traffic
# TYPE frp_server_traffic_in counter
frp_server_traffic_in{name="team-a.ssh",type="tcp"} 1.2345678e+07
frp_server_traffic_in{name="team-b.web",type="http"} 512
frp_server_traffic_in{name="team-c.gone",type="udp"} 4096
# HELP frp_server_traffic_out The total out traffic
# TYPE frp_server_traffic_out counter
frp_server_traffic_out{name="team-a.ssh",type="tcp"} 87654
frp_server_traffic_out{name="team-b.web",type="http"} 2.048e+06
frp_server_traffic_out{name="team-c.gone",type="udp"} 8192
# HELP go_gc_duration_seconds A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.3e-05
go_gc_duration_seconds{quantile="0.5"} 4.1e-05
go_gc_duration_seconds{quantile="1"} 0.000311
go_gc_duration_seconds_sum 0.001207
go_gc_duration_seconds_count 21
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
# HELP go_info Information about the Go environment.
# TYPE go_info gauge
go_info{version="go1.24.4"} 1
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.37
# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code.
# TYPE promhttp_metric_handler_requests_total counter
promhttp_metric_handler_requests_total{code="200"} 17
promhttp_metric_handler_requests_total{code="500"} 0
"""


def entry(key: str, protocol: str = "tcp") -> TableEntry:
    namespace, name = key.split("/", 1)
    return TableEntry(
        namespace=namespace,
        name=name,
        token_sha256=token_sha256(f"token-of-{key}"),
        protocol=protocol,
        remote_port=21000 if protocol == "tcp" else None,
        subdomain=None if protocol == "tcp" else name,
    )


def index_of(*keys: str) -> TableIndex:
    return TableIndex.build(RELAY, [entry(k) for k in keys])


def reading(**proxies: tuple[float, float]) -> dict[str, FrpsProxy]:
    """frps reading of online proxies: name (with `__` for the dot) -> (bytes in, bytes out)."""
    return {
        name.replace("__", "."): FrpsProxy(bytes_in=i, bytes_out=o, connections=1, online=True)
        for name, (i, o) in proxies.items()
    }


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """metering's clock, set by hand (the real time module is left alone)."""
    fake = SimpleNamespace(now=1_700_000_000.0)
    monkeypatch.setattr(metering, "time", SimpleNamespace(time=lambda: fake.now))
    return fake


# ---- parse_frps_metrics -----------------------------------------------------------------------


def test_parse_reads_each_proxys_traffic_connections_and_presence() -> None:
    proxies = parse_frps_metrics(FRPS_METRICS)
    assert proxies == {
        "team-a.ssh": FrpsProxy(bytes_in=12_345_678, bytes_out=87_654, connections=2, online=True),
        "team-b.web": FrpsProxy(bytes_in=512, bytes_out=2_048_000, connections=0, online=True),
        # Closed: frps keeps its traffic counters but drops it from proxy_counts_detailed.
        "team-c.gone": FrpsProxy(bytes_in=4096, bytes_out=8192, connections=0, online=False),
    }


def test_parse_ignores_families_without_a_proxy_name() -> None:
    text = """\
# TYPE go_goroutines gauge
go_goroutines 42
# TYPE frp_server_client_counts gauge
frp_server_client_counts 3
# TYPE frp_server_proxy_counts gauge
frp_server_proxy_counts{type="tcp"} 1
"""
    assert parse_frps_metrics(text) == {}
    assert parse_frps_metrics("") == {}


def test_parse_counts_a_proxy_registered_only_while_detailed_count_is_positive() -> None:
    text = """\
# TYPE frp_server_proxy_counts_detailed gauge
frp_server_proxy_counts_detailed{name="ns.up",type="tcp"} 1
frp_server_proxy_counts_detailed{name="ns.down",type="tcp"} 0
"""
    proxies = parse_frps_metrics(text)
    assert proxies["ns.up"].online is True
    assert proxies["ns.down"].online is False


def test_parse_reads_counters_exposed_without_type_lines() -> None:
    # Untyped samples keep their names: the _total suffix is only stripped when present.
    text = 'frp_server_traffic_in{name="ns.t",type="tcp"} 10\nfrp_server_traffic_out{name="ns.t",type="tcp"} 20\n'
    assert parse_frps_metrics(text) == {"ns.t": FrpsProxy(bytes_in=10, bytes_out=20)}


def test_parse_rejects_text_that_is_not_prometheus_format() -> None:
    # The agent catches this around the scrape; the parser must not guess.
    with pytest.raises(ValueError):
        parse_frps_metrics("<html>404 page not found</html>\n")


proxy_names = st.tuples(
    st.text("abcxyz-", min_size=1, max_size=6), st.text("abc.xyz-", min_size=1, max_size=8)
).map(".".join)
counts = st.integers(min_value=0, max_value=2**53)


@given(
    st.dictionaries(
        proxy_names,
        st.tuples(counts, counts, st.integers(0, 10_000), st.booleans()),
        max_size=6,
    )
)
def test_parse_reads_back_any_frps_exposition(figures: dict) -> None:
    lines = []
    for family, kind, column in (
        ("frp_server_traffic_in", "counter", 0),
        ("frp_server_traffic_out", "counter", 1),
        ("frp_server_connection_counts", "gauge", 2),
    ):
        lines += [f"# HELP {family} x", f"# TYPE {family} {kind}"]
        lines += [f'{family}{{name="{n}",type="tcp"}} {v[column]}' for n, v in figures.items()]
    lines += ["# TYPE frp_server_proxy_counts_detailed gauge"]
    lines += [
        f'frp_server_proxy_counts_detailed{{name="{n}",type="tcp"}} 1'
        for n, v in figures.items()
        if v[3]
    ]
    parsed = parse_frps_metrics("\n".join(lines) + "\n")
    assert parsed == {
        n: FrpsProxy(bytes_in=i, bytes_out=o, connections=c, online=up)
        for n, (i, o, c, up) in figures.items()
    }


# ---- Meter.observe_frps -----------------------------------------------------------------------


def test_first_reading_takes_frps_totals() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(parse_frps_metrics(FRPS_METRICS), index_of("team-a/ssh", "team-b/web"))
    ssh = meter.tunnels["team-a/ssh"]
    assert (ssh.bytes_in, ssh.bytes_out, ssh.active_connections, ssh.online) == (
        12_345_678,
        87_654,
        2,
        True,
    )
    web = meter.tunnels["team-b/web"]
    assert (web.bytes_in, web.bytes_out, web.active_connections) == (512, 2_048_000, 0)
    assert meter.readings == 1


def test_totals_are_integers() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(parse_frps_metrics(FRPS_METRICS), None)
    traffic = meter.tunnels["team-a/ssh"]
    assert type(traffic.bytes_in) is int
    assert type(traffic.bytes_out) is int
    assert type(traffic.active_connections) is int


def test_readings_add_only_what_frps_counted_since_the_last_one() -> None:
    meter = Meter(RELAY)
    index = index_of("ns/t")
    meter.observe_frps(reading(ns__t=(100, 10)), index)
    meter.observe_frps(reading(ns__t=(250, 10)), index)
    meter.observe_frps(reading(ns__t=(250, 40)), index)
    traffic = meter.tunnels["ns/t"]
    assert (traffic.bytes_in, traffic.bytes_out) == (250, 40)
    assert meter.readings == 3


def test_frps_restart_counts_the_new_counters_in_full() -> None:
    meter = Meter(RELAY)
    index = index_of("ns/t")
    meter.observe_frps(reading(ns__t=(1000, 500)), index)
    meter.observe_frps(reading(ns__t=(30, 20)), index)  # frps restarted: counters start over
    traffic = meter.tunnels["ns/t"]
    assert (traffic.bytes_in, traffic.bytes_out) == (1030, 520)
    meter.observe_frps(reading(ns__t=(80, 20)), index)  # and grow from there
    assert (traffic.bytes_in, traffic.bytes_out) == (1080, 520)


def test_a_restart_of_only_one_counter_is_still_a_fresh_start_for_it() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(reading(ns__t=(1000, 500)), None)
    meter.observe_frps(reading(ns__t=(1200, 100)), None)
    traffic = meter.tunnels["ns/t"]
    assert (traffic.bytes_in, traffic.bytes_out) == (1200, 600)


def test_proxies_of_tunnels_not_in_the_table_are_ignored() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(parse_frps_metrics(FRPS_METRICS), index_of("team-a/ssh"))
    assert set(meter.tunnels) == {"team-a/ssh"}


def test_without_a_table_every_proxy_named_namespace_dot_name_counts() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(parse_frps_metrics(FRPS_METRICS), None)
    assert set(meter.tunnels) == {"team-a/ssh", "team-b/web", "team-c/gone"}


@pytest.mark.parametrize("name", ["nodot", ".lead", "trail.", ""])
def test_proxy_names_that_are_not_namespace_dot_name_are_ignored(name: str) -> None:
    meter = Meter(RELAY)
    meter.observe_frps({name: FrpsProxy(bytes_in=5, online=True)}, None)
    assert meter.tunnels == {}
    assert meter.readings == 1


def test_dotted_tunnel_names_split_at_the_first_dot() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(reading(**{"ns.my.tunnel": (7, 8)}), index_of("ns/my.tunnel"))
    assert meter.tunnels["ns/my.tunnel"].bytes_in == 7


def test_tunnels_frps_forgot_are_offline_and_count_afresh_when_back() -> None:
    meter = Meter(RELAY)
    index = index_of("ns/t", "ns/u")
    meter.observe_frps(reading(ns__t=(1000, 100), ns__u=(5, 5)), index)
    meter.observe_frps(reading(ns__u=(6, 6)), index)  # frps restarted, t not back yet
    traffic = meter.tunnels["ns/t"]
    assert traffic.online is False
    assert traffic.active_connections == 0
    assert (traffic.bytes_in, traffic.bytes_out) == (1000, 100)  # totals kept
    meter.observe_frps(reading(ns__t=(1500, 100), ns__u=(6, 6)), index)
    # 1500 is above the last reading (1000), but frps forgot the tunnel in between:
    # everything it reports now is new.
    assert (traffic.bytes_in, traffic.bytes_out) == (2500, 200)
    assert traffic.online is True


def test_empty_reading_marks_every_tunnel_offline() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(reading(ns__t=(1, 1), ns__u=(1, 1)), None)
    meter.observe_frps({}, None)
    assert [t.online for t in meter.tunnels.values()] == [False, False]


def test_closed_proxy_in_frps_metrics_is_offline_but_keeps_counting() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(parse_frps_metrics(FRPS_METRICS), None)
    gone = meter.tunnels["team-c/gone"]
    assert gone.online is False
    assert (gone.bytes_in, gone.bytes_out) == (4096, 8192)


def test_frps_reading_sets_connections_and_last_seen_of_online_proxies(clock) -> None:
    meter = Meter(RELAY)
    meter.observe_frps(
        {
            "ns.up": FrpsProxy(connections=3, online=True),
            "ns.down": FrpsProxy(connections=0, online=False),
        },
        None,
    )
    assert meter.tunnels["ns/up"].active_connections == 3
    assert meter.tunnels["ns/up"].last_seen == clock.now
    assert meter.tunnels["ns/down"].last_seen is None
    clock.now += 30
    meter.observe_frps({"ns.up": FrpsProxy(connections=1, online=True)}, None)
    assert meter.tunnels["ns/up"].last_seen == clock.now
    assert meter.tunnels["ns/up"].active_connections == 1


def test_going_offline_keeps_the_last_seen_time(clock) -> None:
    meter = Meter(RELAY)
    meter.observe_frps({"ns.t": FrpsProxy(online=True)}, None)
    seen = clock.now
    clock.now += 60
    meter.observe_frps({"ns.t": FrpsProxy(online=False)}, None)
    meter.observe_frps({}, None)
    assert meter.tunnels["ns/t"].last_seen == seen


# ---- Meter.observe_client and retain ----------------------------------------------------------


def test_observe_client_alive_sets_last_seen_and_creates_the_tunnel(clock) -> None:
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=None)
    traffic = meter.tunnels["ns/t"]
    assert traffic.last_seen == clock.now
    assert traffic.online is False  # a login alone is not a registered proxy
    assert (traffic.bytes_in, traffic.bytes_out) == (0, 0)


def test_observe_client_proxy_online(clock) -> None:
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=True)
    assert meter.tunnels["ns/t"].online is True
    assert meter.tunnels["ns/t"].last_seen == clock.now


def test_observe_client_proxy_closed_goes_offline_with_no_connections_and_same_last_seen(
    clock,
) -> None:
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=True, run_id="r1")
    meter.observe_frps({"ns.t": FrpsProxy(bytes_in=10, connections=4, online=True)}, None)
    seen = clock.now
    clock.now += 10
    meter.observe_client("ns/t", alive=False, online=False, run_id="r1")
    traffic = meter.tunnels["ns/t"]
    assert traffic.online is False
    assert traffic.active_connections == 0
    assert traffic.last_seen == seen
    assert traffic.bytes_in == 10


@pytest.mark.parametrize("closing_run_id", ["r-other", None])
def test_a_close_proxy_of_another_session_changes_nothing(closing_run_id: str | None) -> None:
    # A late CloseProxy of a replaced session (or a forged one) must not flip the tunnel.
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=True, run_id="r1")
    meter.observe_frps({"ns.t": FrpsProxy(connections=2, online=True)}, None)
    meter.observe_client("ns/t", alive=False, online=False, run_id=closing_run_id)
    traffic = meter.tunnels["ns/t"]
    assert (traffic.online, traffic.active_connections) == (True, 2)


def test_a_proxy_only_frps_knows_of_goes_offline_by_frps_reading_not_by_close_proxy() -> None:
    meter = Meter(RELAY)
    meter.observe_frps({"ns.t": FrpsProxy(online=True)}, None)  # the agent restarted
    meter.observe_client("ns/t", alive=False, online=False, run_id="r1")
    assert meter.tunnels["ns/t"].online is True
    meter.observe_frps({"ns.t": FrpsProxy(online=False)}, None)
    assert meter.tunnels["ns/t"].online is False


def test_an_accepted_proxy_frps_never_registers_goes_offline_with_a_refusal(clock) -> None:
    meter = Meter(RELAY)
    index = index_of("ns/t")
    meter.observe_client("ns/t", alive=True, online=True, run_id="r1")
    for _ in range(REGISTRATION_READINGS):
        meter.observe_frps({}, index)
        assert meter.tunnels["ns/t"].online is True  # the reading may predate it
        assert meter.tunnels["ns/t"].last_refusal is None
    clock.now += 5
    meter.observe_frps({}, index)
    traffic = meter.tunnels["ns/t"]
    assert traffic.online is False
    assert traffic.last_refusal == Refusal(
        clock.now, "NewProxy", "frps did not register the proxy (see the relay's frps log)"
    )
    # Nothing stale: the tunnel's next frpc is not "another frpc of a connected tunnel".
    assert meter.sessions.proxy_run_id("ns/t") is None


def test_a_proxy_frps_registers_late_but_within_the_readings_stays_online() -> None:
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=True, run_id="r1")
    meter.observe_frps({}, None)
    meter.observe_frps({"ns.t": FrpsProxy(online=True)}, None)
    for _ in range(REGISTRATION_READINGS + 1):
        meter.observe_frps({"ns.t": FrpsProxy(online=True)}, None)
    traffic = meter.tunnels["ns/t"]
    assert traffic.online is True
    assert traffic.last_refusal is None


def test_accepted_calls_bind_their_session_to_the_tunnel() -> None:
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=None, run_id="r1")
    assert meter.sessions.tunnel_of("r1", time.monotonic()) == "ns/t"
    meter.retain(index_of("ns/u"))
    assert meter.sessions.tunnel_of("r1", time.monotonic()) is None


def test_observe_refusal_keeps_the_last_one_truncated(clock) -> None:
    meter = Meter(RELAY)
    meter.observe_refusal("ns/t", "Login", "first")
    clock.now += 1
    meter.observe_refusal("ns/t", "NewProxy", "x" * 500)
    refusal = meter.tunnels["ns/t"].last_refusal
    assert refusal == Refusal(clock.now, "NewProxy", "x" * 200)


def test_observe_client_with_online_unknown_leaves_the_state() -> None:
    meter = Meter(RELAY)
    meter.observe_frps({"ns.t": FrpsProxy(connections=2, online=True)}, None)
    meter.observe_client("ns/t", alive=True, online=None)
    traffic = meter.tunnels["ns/t"]
    assert traffic.online is True
    assert traffic.active_connections == 2


def test_a_client_seen_by_plugin_before_frps_reports_it_counts_from_frps_first_reading() -> None:
    meter = Meter(RELAY)
    meter.observe_client("ns/t", alive=True, online=True)
    meter.observe_frps(reading(ns__t=(300, 400)), index_of("ns/t"))
    traffic = meter.tunnels["ns/t"]
    assert (traffic.bytes_in, traffic.bytes_out) == (300, 400)


def test_retain_forgets_tunnels_that_left_the_table() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(reading(ns__t=(1, 1), ns__u=(2, 2), other__v=(3, 3)), None)
    meter.retain(index_of("ns/u"))
    assert set(meter.tunnels) == {"ns/u"}
    assert meter.tunnels["ns/u"].bytes_in == 2
    meter.retain(index_of())
    assert meter.tunnels == {}


def test_a_tunnel_back_in_the_table_after_retain_starts_from_zero() -> None:
    meter = Meter(RELAY)
    meter.observe_frps(reading(ns__t=(100, 100)), index_of("ns/t"))
    meter.retain(index_of())
    meter.observe_frps(reading(ns__t=(150, 100)), index_of("ns/t"))
    # Forgotten with its last reading: frps's whole counter counts again.
    assert meter.tunnels["ns/t"].bytes_in == 150


# ---- TunnelCollector --------------------------------------------------------------------------


def scrape(meter: Meter) -> str:
    registry = CollectorRegistry()
    registry.register(TunnelCollector(meter))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(namespace: str, tunnel: str) -> tuple[tuple[str, str], ...]:
    return (("namespace", namespace), ("relay", RELAY), ("tunnel", tunnel))


def test_collector_exports_every_tunnel_with_namespace_tunnel_and_relay_labels(clock) -> None:
    meter = Meter(RELAY)
    meter.observe_frps(parse_frps_metrics(FRPS_METRICS), index_of("team-a/ssh", "team-b/web"))
    meter.observe_client("team-b/web", alive=True, online=True, run_id="r1")
    meter.observe_client("team-b/web", alive=False, online=False, run_id="r1")
    meter.observe_refusal("team-b/web", "NewProxy", "tunnel team-b/web: set type = 'http'")
    text = scrape(meter)
    assert "# TYPE tunnelop_tunnel_bytes_in_total counter" in text
    assert "# TYPE tunnelop_tunnel_bytes_out_total counter" in text
    assert "# TYPE tunnelop_tunnel_active_connections gauge" in text
    assert "# TYPE tunnelop_tunnel_client_connected gauge" in text
    assert "# TYPE tunnelop_tunnel_last_seen_timestamp_seconds gauge" in text
    assert (
        'tunnelop_tunnel_bytes_in_total{namespace="team-a",relay="relay-a",tunnel="ssh"} 1.2345678e+07'
        in text
    )
    found = samples(text)
    ssh, web = labels("team-a", "ssh"), labels("team-b", "web")
    assert found == {
        ("tunnelop_tunnel_bytes_in_total", ssh): 12_345_678,
        ("tunnelop_tunnel_bytes_in_total", web): 512,
        ("tunnelop_tunnel_bytes_out_total", ssh): 87_654,
        ("tunnelop_tunnel_bytes_out_total", web): 2_048_000,
        ("tunnelop_tunnel_active_connections", ssh): 2,
        ("tunnelop_tunnel_active_connections", web): 0,
        ("tunnelop_tunnel_client_connected", ssh): 1,
        ("tunnelop_tunnel_client_connected", web): 0,
        ("tunnelop_tunnel_last_seen_timestamp_seconds", ssh): clock.now,
        ("tunnelop_tunnel_last_seen_timestamp_seconds", web): clock.now,
        (
            "tunnelop_tunnel_last_refusal_timestamp_seconds",
            tuple(
                sorted(
                    (*web, ("op", "NewProxy"), ("reason", "tunnel team-b/web: set type = 'http'"))
                )
            ),
        ): clock.now,
    }


def test_collector_leaves_out_last_seen_of_clients_never_seen() -> None:
    meter = Meter(RELAY)
    meter.observe_frps({"ns.t": FrpsProxy(bytes_in=1, online=False)}, None)
    found = samples(scrape(meter))
    assert found[("tunnelop_tunnel_bytes_in_total", labels("ns", "t"))] == 1
    assert not any(name.startswith("tunnelop_tunnel_last_seen") for name, _ in found)


def test_collector_labels_dotted_tunnel_names_whole() -> None:
    meter = Meter(RELAY)
    meter.observe_frps({"ns.my.tunnel": FrpsProxy(bytes_out=9, online=True)}, None)
    found = samples(scrape(meter))
    assert found[("tunnelop_tunnel_bytes_out_total", labels("ns", "my.tunnel"))] == 9


def test_collector_reads_the_meter_at_scrape_time() -> None:
    meter = Meter(RELAY)
    registry = CollectorRegistry()
    registry.register(TunnelCollector(meter))
    assert "tunnelop_tunnel_bytes_in_total{" not in generate_latest(registry).decode()
    meter.observe_frps(reading(ns__t=(10, 0), ns__u=(20, 0)), None)
    assert 'tunnel="t"} 10.0' in generate_latest(registry).decode()
    meter.retain(index_of("ns/u"))
    after = generate_latest(registry).decode()
    assert 'tunnel="t"' not in after
    assert 'tunnelop_tunnel_bytes_in_total{namespace="ns",relay="relay-a",tunnel="u"} 20.0' in after


def test_collector_registers_beside_other_collectors() -> None:
    # describe() is empty, so registering claims no names and never clashes.
    registry = CollectorRegistry()
    registry.register(TunnelCollector(Meter(RELAY)))
    registry.register(TunnelCollector(Meter("relay-b")))


# ---- property: totals across frps readings and restarts ---------------------------------------

# One step between two readings: frps counts more, or restarts (counters start over and
# count a little, strictly less than before), or restarts and has not seen the proxy yet.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("grow"), st.integers(0, 10**9), st.integers(0, 10**9)),
        st.tuples(
            st.just("restart"), st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True)
        ),
        st.tuples(st.just("absent"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(steps=steps)
def test_totals_never_decrease_and_sum_what_frps_counted(steps: list) -> None:
    meter = Meter(RELAY)
    index = index_of("ns/t")
    frps_in = frps_out = 0  # frps's counters
    want_in = want_out = 0  # what frps counted in all, across restarts
    last_in = last_out = 0
    for kind, a, b in steps:
        if kind == "grow":
            frps_in, frps_out = frps_in + a, frps_out + b
            want_in, want_out = want_in + a, want_out + b
        elif kind == "restart":
            # Strictly below the previous value (or 0 from 0): visible as a restart.
            frps_in, frps_out = int(frps_in * a), int(frps_out * b)
            want_in, want_out = want_in + frps_in, want_out + frps_out
        else:
            frps_in = frps_out = 0
        proxies = {} if kind == "absent" else reading(ns__t=(float(frps_in), float(frps_out)))
        meter.observe_frps(proxies, index)
        traffic = meter.tunnels.get("ns/t")
        got_in, got_out = (traffic.bytes_in, traffic.bytes_out) if traffic else (0, 0)
        assert got_in >= last_in
        assert got_out >= last_out
        assert (got_in, got_out) == (want_in, want_out)
        last_in, last_out = got_in, got_out
    assert meter.readings == len(steps)
