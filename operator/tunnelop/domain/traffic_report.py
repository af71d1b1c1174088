"""Tunnel traffic as the operator reports it: pure pieces. The agents' counters (per relay
pod, starting from zero when an agent restarts) become totals since the tunnel was created,
and what changed decides whether a status write is due.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tunnelop.contract.tunnel_metrics import (
    ACTIVE_CONNECTIONS,
    BYTES_IN,
    BYTES_OUT,
    CLIENT_CONNECTED,
    LAST_REFUSAL,
    LAST_SEEN,
    Refusal,
)
from tunnelop.domain.scheduling import TunnelKey


@dataclass
class AgentReading:
    """One tunnel in one scrape of its relay's agent."""

    bytes_in: int = 0
    bytes_out: int = 0
    active_connections: int = 0
    connected: bool = False
    last_seen: float | None = None
    last_refusal: Refusal | None = None

    def standing_refusal(self) -> Refusal | None:
        """The last refusal, while the client has no proxy online: the agent forgets it when
        it accepts the tunnel's proxy, so a client that logs in and pings but whose proxy is
        refused still shows why."""
        return None if self.connected else self.last_refusal


def parse_agent_metrics(text: str) -> dict[TunnelKey, AgentReading]:
    """The agent's /metrics text -> (namespace, tunnel) -> reading."""
    readings: dict[TunnelKey, AgentReading] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            namespace, tunnel = sample.labels.get("namespace"), sample.labels.get("tunnel")
            if not namespace or not tunnel:
                continue
            reading = readings.setdefault((namespace, tunnel), AgentReading())
            name = sample.name.removesuffix("_total")
            if name == BYTES_IN:
                reading.bytes_in = int(sample.value)
            elif name == BYTES_OUT:
                reading.bytes_out = int(sample.value)
            elif name == ACTIVE_CONNECTIONS:
                reading.active_connections = int(sample.value)
            elif name == CLIENT_CONNECTED:
                reading.connected = sample.value > 0
            elif name == LAST_SEEN:
                reading.last_seen = sample.value
            elif name == LAST_REFUSAL:
                refusal = Refusal(
                    sample.value, sample.labels.get("op", ""), sample.labels.get("reason", "")
                )
                if reading.last_refusal is None or refusal.at > reading.last_refusal.at:
                    reading.last_refusal = refusal
    return readings


@dataclass
class Totals:
    """A tunnel's totals since creation, and the agent counters they were last advanced
    with (to tell new bytes from an agent restart)."""

    bytes_in: int
    bytes_out: int
    agent_in: int
    agent_out: int


def advance(previous: Totals | None, reported: dict | None, reading: AgentReading) -> Totals:
    """Totals after a reading.

    With no previous reading in this operator process, the totals start from what status
    reports (a restarted operator continues where it left): the agent's counters are taken
    as already counted, up to the reported total.
    """
    if previous is None:
        reported = reported or {}
        base_in = int(reported.get("bytesIn") or 0)
        base_out = int(reported.get("bytesOut") or 0)
        return Totals(
            max(base_in, reading.bytes_in),
            max(base_out, reading.bytes_out),
            reading.bytes_in,
            reading.bytes_out,
        )
    return Totals(
        previous.bytes_in + _new(previous.agent_in, reading.bytes_in),
        previous.bytes_out + _new(previous.agent_out, reading.bytes_out),
        reading.bytes_in,
        reading.bytes_out,
    )


def _new(previous: int, current: int) -> int:
    """Bytes counted since the previous reading; all of them after an agent restart."""
    return current - previous if current >= previous else current


def traffic_status(totals: Totals, reading: AgentReading) -> dict:
    """status.traffic, camelCase."""
    traffic: dict = {
        "bytesIn": totals.bytes_in,
        "bytesOut": totals.bytes_out,
        "activeConnections": reading.active_connections,
    }
    if reading.last_seen:
        traffic["lastSeen"] = rfc3339(reading.last_seen)
    return traffic


def rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(timestamp), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Observed:
    """A tunnel's traffic as last read from the agent of `relay`, with its bytes of the
    current period (calendar month, UTC; see domain/quota/period.py)."""

    relay: str
    totals: Totals
    reading: AgentReading
    period_start: datetime.datetime | None = None
    period_bytes: int = 0

    def traffic(self) -> dict:
        traffic = traffic_status(self.totals, self.reading)
        if self.period_start is not None:
            traffic["periodStart"] = self.period_start.strftime("%Y-%m-%dT%H:%M:%SZ")
            traffic["periodBytes"] = self.period_bytes
        return traffic


def total_bytes(totals: Totals | None, reported: dict | None) -> int:
    """Bytes in and out so far: of the totals when there are some, else as status reports."""
    if totals is not None:
        return totals.bytes_in + totals.bytes_out
    reported = reported or {}
    return int(reported.get("bytesIn") or 0) + int(reported.get("bytesOut") or 0)


def due_writes(
    candidates: Iterable[tuple[TunnelKey, bool, float]],
    now: float,
    min_interval: float,
    budget: int,
) -> list[TunnelKey]:
    """Which tunnels get a status write now, from (key, urgent, last written at).

    Urgent ones (ClientConnected flipped) always go. Traffic-only changes go once their last
    write is `min_interval` old, oldest first, at most `budget` of them: the write rate stays
    bounded however many bytes move.
    """
    urgent, routine = [], []
    for key, is_urgent, written_at in candidates:
        if is_urgent:
            urgent.append(key)
        elif now - written_at >= min_interval:
            routine.append((written_at, key))
    routine.sort()
    return urgent + [key for _, key in routine[: max(0, budget)]]
