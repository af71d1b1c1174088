"""The traffic controller: reads every relay agent's metrics on an interval and queues the
tunnels whose status should say something new (ClientConnected flipped, or traffic changed).
The Tunnel controller writes the status, so each Tunnel keeps a single writer.

Writes are bounded: a ClientConnected change is written at the next reconcile, a traffic-only
change at most once per `min_write_interval` per tunnel and at most `max_writes_per_second`
overall, however many bytes move.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from tunnelop.contract import basicauth, naming
from tunnelop.controllers import quotametrics, quotas
from tunnelop.controllers.state import ClientProblem, Runtime
from tunnelop.domain import conditions
from tunnelop.domain.quota import advance_period_bytes
from tunnelop.domain.quota.period import parse_time, period_start
from tunnelop.domain.scheduling import TunnelKey
from tunnelop.domain.traffic_report import (
    AgentReading,
    Observed,
    Totals,
    advance,
    due_writes,
    parse_agent_metrics,
    total_bytes,
)
from tunnelop.platform import logs

log = logs.get(__name__)
SCRAPE_TIMEOUT = 3.0
# The status.traffic fields whose change is worth a write (lastSeen alone is not).
COUNTED_FIELDS = ("bytesIn", "bytesOut", "activeConnections", "periodStart")


@dataclass
class TrafficOptions:
    interval: float = 10.0
    min_write_interval: float = 30.0
    max_writes_per_second: float = 20.0


class TrafficCollector:
    def __init__(self, rt: Runtime, options: TrafficOptions) -> None:
        self.rt = rt
        self.options = options
        # The readings live in the runtime, where the Tunnel controller reads them.
        self.observed: dict[TunnelKey, Observed] = rt.traffic
        self.written_at: dict[TunnelKey, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.now = lambda: datetime.datetime.now(datetime.UTC)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="traffic")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
            while True:
                try:
                    await self.collect_once(http)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the API server away: try again next round
                    log.warning("traffic round failed", error=str(exc))
                await asyncio.sleep(self.options.interval)

    async def collect_once(self, http: aiohttp.ClientSession) -> None:
        rt = self.rt
        pods = await rt.kube.list("v1", "Pod", rt.relay_namespace, labels=naming.RELAY_LABEL)
        agents = {
            relay: ip for relay, ip in _agent_addresses(pods).items() if relay in rt.cache.relays
        }
        scraped = await asyncio.gather(
            *(self._scrape(http, relay, ip) for relay, ip in agents.items())
        )
        now = time.monotonic()
        candidates: list[tuple[TunnelKey, bool, float]] = []
        for relay, readings in zip(agents, scraped, strict=True):
            if readings is None:
                continue
            for alloc in rt.table.allocations_on(relay):
                change = self._observe(alloc.key, relay, readings.get(alloc.key, AgentReading()))
                if change is not None:
                    candidates.append((alloc.key, change, self.written_at.get(alloc.key, 0.0)))
        budget = int(self.options.max_writes_per_second * self.options.interval)
        assert rt.tunnel_queue is not None
        for key in due_writes(candidates, now, self.options.min_write_interval, budget):
            self.written_at[key] = now
            rt.tunnel_queue.add(key)
        for key in [k for k in self.observed if k not in rt.cache.tunnels]:
            self.observed.pop(key, None)
            self.written_at.pop(key, None)
        self._account(self.now())

    def _account(self, now: datetime.datetime) -> None:
        """Each capped namespace's traffic from this round's readings: a namespace crossing
        hard.monthlyTraffic (or a new period lifting it) has its tunnels reconciled now, so
        the hold applies within the traffic interval; its quotas report the new figures (at
        their bounded write rate). Then the leaderboard gauges."""
        rt = self.rt
        for namespace in list(rt.cache.quotas):
            before = rt.quota_traffic.get(namespace)
            if quotas.refresh_traffic(rt, namespace, now):
                quotas.requeue_namespace(rt, namespace)
            elif rt.quota_traffic.get(namespace) != before:
                quotas.requeue_quotas(rt, namespace)
        period = period_start(now)
        per_tunnel = [
            (key[0], key[1], observed.period_bytes)
            for key, observed in self.observed.items()
            if observed.period_start == period and observed.period_bytes > 0
        ]
        per_namespace: dict[str, int] = {}
        for namespace, _, count in per_tunnel:
            per_namespace[namespace] = per_namespace.get(namespace, 0) + count
        per_namespace.update(rt.quota_traffic)  # with deleted tunnels' bytes, where counted
        quotametrics.export_leaderboard(per_tunnel, per_namespace.items(), now)

    def _observe(self, key: TunnelKey, relay: str, reading: AgentReading) -> bool | None:
        """Record a reading; None if status already says it all, else whether the change is
        urgent (ClientConnected flips) rather than traffic only."""
        status = (self.rt.cache.tunnels.get(key) or {}).get("status") or {}
        reported = status.get("traffic")
        previous = self.observed.get(key)
        if previous is not None and previous.relay != relay:
            # Moved: the new relay's agent counts from zero on top of what was counted.
            t = previous.totals
            totals = advance(Totals(t.bytes_in, t.bytes_out, 0, 0), reported, reading)
        else:
            totals = advance(previous.totals if previous else None, reported, reading)
        # This month's bytes: the growth of the totals since the last reading (or since what
        # status reports, for the first reading of this process) goes into now's period.
        grown = totals.bytes_in + totals.bytes_out
        delta = max(0, grown - total_bytes(previous.totals if previous else None, reported))
        if previous is not None:
            since, counted = previous.period_start, previous.period_bytes
        else:
            since = parse_time((reported or {}).get("periodStart"))
            counted = (reported or {}).get("periodBytes")
        start, period_bytes = advance_period_bytes(
            since, counted if isinstance(counted, int) else 0, delta, self.now()
        )
        observed = Observed(relay, totals, reading, start, period_bytes)
        self.observed[key] = observed
        shown = conditions.find(status.get("conditions"), "ClientConnected")
        if shown is None:
            # A client that connects is news; one that never did waits for the budget (a
            # first reading of many tunnels must not write them all at once).
            return reading.connected
        if (shown.get("status") == "True") != reading.connected:
            return True
        suspended = bool(
            ((self.rt.cache.tunnels.get(key) or {}).get("spec") or {}).get("suspended")
        )
        due = client_condition(observed, suspended, key[1], None, *client_of(self.rt, key))
        if due is not None and any(shown.get(f) != due[f] for f in ("reason", "message")):
            # Say, the relay refused the client: worth a write, within the write budget (a
            # stranger's refused guesses change nothing more often than that).
            return False
        new = observed.traffic()
        old = reported or {}
        if any(new.get(f) != old.get(f) for f in COUNTED_FIELDS):
            return False
        return None

    async def _scrape(
        self, http: aiohttp.ClientSession, relay: str, ip: str
    ) -> dict[TunnelKey, AgentReading] | None:
        secrets = self.rt.relay_secrets.get(relay)
        if secrets is None:
            return None
        url = f"http://{_host(ip)}:{naming.AGENT_HEALTH_PORT}/metrics"
        auth = basicauth.header(naming.DASHBOARD_USER, secrets.dashboard_password)
        try:
            async with http.get(url, headers=auth) as response:
                response.raise_for_status()
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("cannot read relay agent metrics", relay=relay, error=str(exc))
            return None
        return await asyncio.to_thread(parse_agent_metrics, text)


def _agent_addresses(pods: list[dict[str, Any]]) -> dict[str, str]:
    """relay -> pod IP of its running relay pod."""
    out: dict[str, str] = {}
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        relay = (meta.get("labels") or {}).get(naming.RELAY_LABEL)
        if relay and status.get("podIP") and not meta.get("deletionTimestamp"):
            if status.get("phase") in (None, "Running"):
                out[relay] = status["podIP"]
    return out


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def client_condition(
    observed: Observed | None,
    suspended: bool,
    tunnel: str,
    generation: int | None,
    in_cluster: bool = False,
    problem: ClientProblem | None = None,
) -> dict[str, Any] | None:
    """ClientConnected, from the last reading of the tunnel's relay agent (None before one),
    and for an InCluster tunnel from what keeps the operator's frpc from serving (`problem`,
    shown even before a reading)."""
    if observed is not None and observed.reading.connected:
        return conditions.condition(
            "ClientConnected",
            True,
            "ClientConnected",
            f"frpc is connected to relay {observed.relay}",
            generation,
        )
    if observed is None and problem is None:
        return None
    refusal = observed.reading.standing_refusal() if observed is not None else None
    if suspended:
        reason, message = "TunnelSuspended", "The tunnel is suspended: its client is refused"
    elif problem is not None:
        reason, message = problem.reason, problem.message
    elif observed is not None and refusal is not None:
        reason = "ClientRefused"
        message = f"relay {observed.relay} refused the client's {refusal.op}: {refusal.reason}"
    elif observed is not None and in_cluster:
        deployment = naming.client_deployment_name(tunnel)
        reason = "ClientNotConnected"
        message = (
            f"The operator's frpc (Deployment {deployment}) is not connected to relay "
            f"{observed.relay}; its log says why: kubectl logs deployment/{deployment}"
        )
    else:
        assert observed is not None
        reason = "ClientNotConnected"
        message = (
            f"No frpc is connected to relay {observed.relay}: run frpc with the frpc.toml of "
            f"Secret {naming.credentials_secret_name(tunnel)}"
        )
    return conditions.condition("ClientConnected", False, reason, message, generation)


def client_of(rt: Runtime, key: TunnelKey) -> tuple[bool, ClientProblem | None]:
    """Whether the tunnel's client is the operator's (InCluster), and what keeps it from
    serving, for client_condition."""
    spec = (rt.cache.tunnels.get(key) or {}).get("spec") or {}
    in_cluster = (spec.get("client") or {}).get("type") == "InCluster"
    return in_cluster, rt.client_problems.get(key)
