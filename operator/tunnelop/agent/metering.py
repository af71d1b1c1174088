"""Per-tunnel traffic, read from the local frps and exported as `tunnelop_tunnel_*` metrics.

frps's own Prometheus metrics (its dashboard port, localhost only) carry, per proxy:
`frp_server_traffic_in` / `_out` (bytes), `frp_server_connection_counts` (open visitor
connections) and `frp_server_proxy_counts_detailed` (1 while the proxy is registered).

Two properties of frps shape what the figures mean:
- frps adds a connection's bytes when it closes (for http tunnels, its pooled connection to
  frpc; only udp counts as it goes), so a long-lived connection shows no traffic until it
  ends; activeConnections is what shows it live.
- frps's counters start from zero when frps restarts. The agent keeps its own totals, adding
  what frps counted since the last reading, so `tunnelop_tunnel_*_bytes_total` only grows
  (they start again only when the agent itself restarts, which a Prometheus counter allows).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from time import monotonic

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from tunnelop.agent.index import TableIndex, split_proxy_name
from tunnelop.agent.sessions import Sessions
from tunnelop.contract import tunnel_metrics
from tunnelop.contract.tunnel_metrics import Refusal

TRAFFIC_IN = "frp_server_traffic_in"
TRAFFIC_OUT = "frp_server_traffic_out"
CONNECTIONS = "frp_server_connection_counts"
PROXY_ONLINE = "frp_server_proxy_counts_detailed"
# Recorded as the tunnel's last refusal when frps never showed a proxy the agent accepted.
NOT_REGISTERED_REASON = "frps did not register the proxy (see the relay's frps log)"
NEW_PROXY = "NewProxy"


@dataclass
class FrpsProxy:
    """One proxy as frps reports it."""

    bytes_in: float = 0.0
    bytes_out: float = 0.0
    connections: float = 0.0
    online: bool = False


def parse_frps_metrics(text: str) -> dict[str, FrpsProxy]:
    """frps's /metrics text -> proxy name -> figures. Unknown families are ignored."""
    proxies: dict[str, FrpsProxy] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.labels.get("name")
            if not name:
                continue
            proxy = proxies.setdefault(name, FrpsProxy())
            # The parser names counter samples with _total; frps's have no suffix.
            metric = sample.name.removesuffix("_total")
            if metric == TRAFFIC_IN:
                proxy.bytes_in += sample.value
            elif metric == TRAFFIC_OUT:
                proxy.bytes_out += sample.value
            elif metric == CONNECTIONS:
                proxy.connections += sample.value
            elif metric == PROXY_ONLINE:
                proxy.online = proxy.online or sample.value > 0
    return proxies


@dataclass
class TunnelTraffic:
    """What the agent reports for one tunnel."""

    bytes_in: int = 0
    bytes_out: int = 0
    active_connections: int = 0
    online: bool = False
    last_seen: float | None = None  # unix time the client was last seen alive
    last_refusal: Refusal | None = None
    # The last frps readings, to add only what is new (and to notice an frps restart).
    _frps_in: float = 0.0
    _frps_out: float = 0.0


@dataclass
class Meter:
    """Totals per tunnel ("namespace/name"), fed by frps readings and by plugin calls."""

    relay: str
    tunnels: dict[str, TunnelTraffic] = field(default_factory=dict)
    readings: int = 0
    # Whose proxy is online, and which tunnel each client session speaks for.
    sessions: Sessions = field(default_factory=Sessions)

    def observe_frps(self, proxies: dict[str, FrpsProxy], index: TableIndex | None) -> None:
        """Add one frps reading. Proxies of tunnels not in the table (anymore) are ignored."""
        self.readings += 1
        seen: set[str] = set()
        for name, proxy in proxies.items():
            parts = split_proxy_name(name)
            if parts is None:
                continue
            key = "/".join(parts)
            if index is not None and key not in index.by_tunnel:
                continue
            seen.add(key)
            traffic = self.tunnels.setdefault(key, TunnelTraffic())
            traffic.bytes_in += int(_delta(traffic._frps_in, proxy.bytes_in))
            traffic.bytes_out += int(_delta(traffic._frps_out, proxy.bytes_out))
            traffic._frps_in, traffic._frps_out = proxy.bytes_in, proxy.bytes_out
            traffic.active_connections = int(proxy.connections)
            self._set_online(key, traffic, proxy.online)
            if proxy.online:
                traffic.last_seen = time.time()
        for key, traffic in self.tunnels.items():
            if key not in seen:  # frps forgot it (restarted): offline, counting from zero
                self._set_online(key, traffic, False)
                traffic.active_connections = 0
                traffic._frps_in = traffic._frps_out = 0.0
        self.sessions.forget_expired(monotonic())

    def _set_online(self, key: str, traffic: TunnelTraffic, registered: bool) -> None:
        traffic.online, never_registered = self.sessions.frps_reading(key, registered)
        if never_registered:
            self.observe_refusal(key, NEW_PROXY, NOT_REGISTERED_REASON)

    def observe_client(
        self, key: str, *, alive: bool, online: bool | None, run_id: str | None = None
    ) -> None:
        """A plugin call about a tunnel's client, from its session `run_id`: a login, proxy
        or heartbeat that passed, or a proxy that closed (which counts only from the session
        whose proxy is online)."""
        traffic = self.tunnels.setdefault(key, TunnelTraffic())
        if alive:
            traffic.last_seen = time.time()
            self.sessions.seen(key, run_id, monotonic())
        if online is True:
            self.sessions.proxy_accepted(key, run_id)
            traffic.online = True
            traffic.last_refusal = None  # what was refused before is past
        elif online is False and self.sessions.proxy_closed(key, run_id):
            traffic.online = False
            traffic.active_connections = 0

    def observe_refusal(self, key: str, op: str, reason: str) -> None:
        """A refused call of a tunnel's client (a tunnel of the table: the caller checks)."""
        traffic = self.tunnels.setdefault(key, TunnelTraffic())
        limit = tunnel_metrics.REFUSAL_REASON_MAX_CHARS
        traffic.last_refusal = Refusal(time.time(), op, reason[:limit])

    def retain(self, index: TableIndex) -> None:
        """Forget tunnels that left the table."""
        for key in [k for k in self.tunnels if k not in index.by_tunnel]:
            del self.tunnels[key]
        self.sessions.retain(index.by_tunnel)


def _delta(previous: float, current: float) -> float:
    """What frps counted since the previous reading; all of it after an frps restart."""
    return current - previous if current >= previous else current


class TunnelCollector:
    """Exports a Meter as `tunnelop_tunnel_*` (read at scrape time, so tunnels that leave the
    table leave the metrics)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        bytes_in = CounterMetricFamily(
            tunnel_metrics.BYTES_IN,
            "Bytes from visitors to the tunnel's service, as counted by frps (a connection "
            "counts when it closes; udp as it goes)",
            labels=tunnel_metrics.LABELS,
        )
        bytes_out = CounterMetricFamily(
            tunnel_metrics.BYTES_OUT,
            "Bytes from the tunnel's service back to visitors, as counted by frps",
            labels=tunnel_metrics.LABELS,
        )
        connections = GaugeMetricFamily(
            tunnel_metrics.ACTIVE_CONNECTIONS,
            "Visitor connections open through the tunnel",
            labels=tunnel_metrics.LABELS,
        )
        online = GaugeMetricFamily(
            tunnel_metrics.CLIENT_CONNECTED,
            "1 while the tunnel's frpc is connected and its proxy registered",
            labels=tunnel_metrics.LABELS,
        )
        last_seen = GaugeMetricFamily(
            tunnel_metrics.LAST_SEEN,
            "When the tunnel's client was last seen alive (login, proxy or heartbeat)",
            labels=tunnel_metrics.LABELS,
        )
        refused = GaugeMetricFamily(
            tunnel_metrics.LAST_REFUSAL,
            "When the relay last refused a call of the tunnel's client, with the operation "
            "and the reason the client was given",
            labels=tunnel_metrics.LABELS + tunnel_metrics.REFUSAL_LABELS,
        )
        relay = self.meter.relay
        for key, traffic in sorted(self.meter.tunnels.items()):
            namespace, _, name = key.partition("/")
            labels = [namespace, name, relay]
            bytes_in.add_metric(labels, traffic.bytes_in)
            bytes_out.add_metric(labels, traffic.bytes_out)
            connections.add_metric(labels, traffic.active_connections)
            online.add_metric(labels, 1 if traffic.online else 0)
            if traffic.last_seen is not None:
                last_seen.add_metric(labels, traffic.last_seen)
            refusal = traffic.last_refusal
            if refusal is not None:
                refused.add_metric([*labels, refusal.op, refusal.reason], refusal.at)
        yield from (bytes_in, bytes_out, connections, online, last_seen, refused)
