"""The agent process: the plugin endpoint frps calls (localhost), the health and metrics
endpoint (pod address), the table source and the meter, on one event loop.

Nothing on the plugin path awaits anything but the request body: the table is in memory and
each answer is computed synchronously (decisions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tunnelop.agent import decisions
from tunnelop.agent.index import TableIndex
from tunnelop.agent.metering import Meter, TunnelCollector, parse_frps_metrics
from tunnelop.agent.source import TableSource
from tunnelop.contract import basicauth
from tunnelop.contract.naming import (
    AGENT_PLUGIN_PATH,
    DASHBOARD_USER,
    PLUGIN_USER,
    SERVICE_ACCOUNT_DIR,
)
from tunnelop.platform import logs
from tunnelop.platform.addresses import split_host_port
from tunnelop.platform.kube import Kube

log = logs.get(__name__)
# Most calls are accepted unchanged (every heartbeat): that answer is serialized once.
_PLAIN_ACCEPT = decisions.accept().response
_PLAIN_ACCEPT_BODY = json.dumps(_PLAIN_ACCEPT).encode()


@dataclass
class AgentOptions:
    relay: str
    namespace: str
    table_secret: str
    listen: str  # host:port of the plugin endpoint
    health_listen: str  # host:port of /healthz, /readyz and /metrics
    frps_dashboard: str  # base URL of frps's dashboard API
    dashboard_password: str | None
    # frps's credentials for the plugin endpoint; None only with allow_unauthenticated_plugin
    plugin_password: str | None
    state_dir: Path | None
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    kubeconfig: str | None = None
    meter_interval: float = 5.0
    # For tests and benchmarks that run the agent without frps's credentials: anyone who
    # reaches the plugin endpoint can then speak for frps.
    allow_unauthenticated_plugin: bool = False

    def __post_init__(self) -> None:
        if not self.plugin_password and not self.allow_unauthenticated_plugin:
            raise ValueError(
                "the plugin endpoint needs frps's password (TUNNELOP_PLUGIN_PASSWORD, key "
                "plugin-password of the relay's config Secret); refusing to serve it without"
            )


class RateLimitedLog:
    """Logs an event the first time, then at most once per `interval` seconds with the count
    since the last line: a flood cannot fill the disk."""

    def __init__(self, event: str, interval: float = 10.0) -> None:
        self.event = event
        self.interval = interval
        self.suppressed = 0
        self._last: float | None = None

    def note(self, now: float, **fields: object) -> bool:
        """Count one occurrence; True if it was logged."""
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        log.warning(self.event, suppressed_since_last=self.suppressed, **fields)
        self._last, self.suppressed = now, 0
        return True


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.meter = Meter(options.relay)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tunnelop_agent_plugin_requests",
            "frps plugin calls answered, by operation and result",
            ["op", "result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tunnelop_agent_plugin_request_seconds",
            "Time to answer a plugin call, from request to response",
            ["op"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=self.registry,
        )
        self.table_tunnels = Gauge(
            "tunnelop_agent_table_tunnels",
            "Tunnels in the agent's allocation table",
            registry=self.registry,
        )
        self.table_age = Gauge(
            "tunnelop_agent_table_sync_age_seconds",
            "Seconds since the API server last confirmed the table (grows during outages)",
            registry=self.registry,
        )
        self.table_age.set_function(self._table_age)
        self.unauthorized = Counter(
            "tunnelop_agent_plugin_unauthorized",
            "Calls to the plugin endpoint without frps's credentials (refused, not decided)",
            registry=self.registry,
        )
        self.refusals = Counter(
            "tunnelop_agent_refusals",
            "Plugin calls refused, by operation and cause",
            ["op", "cause"],
            registry=self.registry,
        )
        self._unauthorized_log = RateLimitedLog("plugin call without frps's credentials refused")
        self.meter_errors = Counter(
            "tunnelop_agent_meter_errors",
            "frps metric readings that failed",
            registry=self.registry,
        )
        self.registry.register(TunnelCollector(self.meter))
        self.source = TableSource(
            lambda: Kube.connect(options.kubeconfig, options.service_account_dir),
            relay=options.relay,
            namespace=options.namespace,
            secret=options.table_secret,
            state_dir=options.state_dir,
            on_change=self._on_table,
        )
        # The hot path's fixed parts, computed once: what frps's Authorization header must be
        # (Go sends exactly "Basic " + base64(user:password)), and each op's metric children.
        self._frps_authorization = (
            basicauth.header(PLUGIN_USER, options.plugin_password)["Authorization"].encode()
            if options.plugin_password
            else None
        )
        self._counted = {
            (op, result): self.requests.labels(op, result)
            for op in (*decisions.OPS, "other")
            for result in ("accepted", "rejected")
        }
        self._timed = {op: self.latency.labels(op) for op in (*decisions.OPS, "other")}
        self._runners: list[web.BaseRunner] = []
        self._meter_task: asyncio.Task[None] | None = None

    def _on_table(self, index: TableIndex) -> None:
        self.table_tunnels.set(len(index))
        self.meter.retain(index)

    def _table_age(self) -> float:
        synced = self.source.synced_at
        return float("nan") if synced is None else time.monotonic() - synced

    # ---- plugin endpoint ----------------------------------------------------------------

    async def _plugin_or_404(self, request: web.BaseRequest) -> web.Response:
        if request.method != "POST" or request.path != AGENT_PLUGIN_PATH:
            return web.Response(status=404, text=f"POST {AGENT_PLUGIN_PATH} only\n")
        return await self.handle_plugin(request)

    async def handle_plugin(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        if not self._plugin_authorized(request.headers.get("Authorization", "")):
            # Not frps: nothing is decided and nothing observed.
            self.unauthorized.inc()
            self._unauthorized_log.note(time.monotonic(), peer=request.remote)
            return web.Response(
                status=401,
                text="unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="tunnelop-agent-plugin"'},
            )
        op = request.query.get("op", "")
        try:
            body = json.loads(await request.read())
            content = body.get("content") if isinstance(body, dict) else None
            op = op or (body.get("op", "") if isinstance(body, dict) else "")
        except ValueError:
            content = None
        decision = self.decide(op, content)
        # Only frps's own ops as label values: a request cannot make up series.
        label = op if isinstance(op, str) and op in decisions.OPS else "other"
        self._counted[label, "rejected" if decision.rejected else "accepted"].inc()
        self._timed[label].observe(time.perf_counter() - started)
        response = decision.response
        body = _PLAIN_ACCEPT_BODY if response == _PLAIN_ACCEPT else json.dumps(response).encode()
        return web.Response(body=body, content_type="application/json")

    def decide(self, op: str, content: object) -> decisions.Decision:
        """Decide one call and note what it tells: the client's session, its proxy, or the
        refusal (in the metrics, the log and, for the tunnel's own client, its last refusal)."""
        index = self.source.index
        if index is None:
            # No table yet (first start, API unreachable): refuse, never guess.
            decision = decisions.reject(
                f"relay {self.options.relay} is starting and has no allocation table yet; "
                "frpc retries",
                cause=decisions.NOT_READY,
            )
        else:
            decision = decisions.decide(index, op, content, self.meter.sessions, time.monotonic())
        known = index is not None and decision.tunnel in index.by_tunnel
        if known and (decision.client_alive or decision.proxy_online is not None):
            assert decision.tunnel is not None
            self.meter.observe_client(
                decision.tunnel,
                alive=decision.client_alive,
                online=decision.proxy_online,
                run_id=decision.run_id,
            )
        if decision.rejected:
            self._refused(op, decision, known)
        return decision

    def _refused(self, op: str, decision: decisions.Decision, known: bool) -> None:
        label = op if isinstance(op, str) and op in decisions.OPS else "other"
        cause = decision.cause if decision.cause in decisions.CAUSES else decisions.MALFORMED
        self.refusals.labels(label, cause).inc()
        # A visitor refused is not news about the tunnel's client.
        if known and op != decisions.NEW_USER_CONN and decision.tunnel and decision.reason:
            self.meter.observe_refusal(decision.tunnel, op, decision.reason)
        # As the client named it (bounded: the name may be anything a stranger sent).
        namespace, _, name = (decision.tunnel or "/")[:300].partition("/")
        log.info(
            "refused",
            op=label,
            cause=cause,
            namespace=namespace or None,
            name=name or None,
            reason=decision.detail or decision.reason,
        )

    def _plugin_authorized(self, header: str) -> bool:
        expected = self._frps_authorization
        if expected is None:
            return self.options.allow_unauthenticated_plugin
        # Constant time: the header as frps sends it, byte for byte; else decoded, for any
        # other client that spells basic auth differently (say, "basic" in lower case).
        given = header.encode(errors="replace")
        if hmac.compare_digest(given, expected):
            return True
        password = self.options.plugin_password or ""
        return basicauth.matches(header, PLUGIN_USER, password)

    # ---- health and metrics -------------------------------------------------------------

    async def handle_healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def handle_readyz(self, _: web.Request) -> web.Response:
        if self.source.loaded:
            return web.Response(text=f"ok: {len(self.source.index or ())} tunnels\n")
        return web.Response(status=503, text="no allocation table yet\n")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        # Tenant names and traffic are not public: with HostNetwork this port may face the
        # internet. Scrapers use the relay's dashboard credentials.
        if not self._authorized(request.headers.get("Authorization", "")):
            return web.Response(
                status=401,
                text="unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="tunnelop-agent"'},
            )
        output = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _authorized(self, header: str) -> bool:
        password = self.options.dashboard_password
        return not password or basicauth.matches(header, DASHBOARD_USER, password)

    # ---- metering -----------------------------------------------------------------------

    async def _meter_forever(self) -> None:
        password = self.options.dashboard_password
        headers = basicauth.header(DASHBOARD_USER, password) if password else {}
        url = self.options.frps_dashboard.rstrip("/") + "/metrics"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout, trust_env=False) as http:
            while True:
                try:
                    async with http.get(url) as response:
                        response.raise_for_status()
                        text = await response.text()
                    proxies = await asyncio.to_thread(parse_frps_metrics, text)
                    self.meter.observe_frps(proxies, self.source.index)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # frps starting or restarting
                    self.meter_errors.inc()
                    log.debug("cannot read frps metrics", error=str(exc))
                await asyncio.sleep(self.options.meter_interval)

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.source.start()
        health = web.Application()
        health.router.add_get("/healthz", self.handle_healthz)
        health.router.add_get("/readyz", self.handle_readyz)
        health.router.add_get("/metrics", self.handle_metrics)
        runners: list[tuple[web.BaseRunner, str]] = [
            # The plugin endpoint serves one path for frps alone: aiohttp's low-level server,
            # without an application's routing and middleware on every call.
            (
                web.ServerRunner(web.Server(self._plugin_or_404), access_log=None),
                self.options.listen,
            ),
            (web.AppRunner(health, access_log=None), self.options.health_listen),
        ]
        for runner, address in runners:
            host, port = split_host_port(address)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self._runners.append(runner)
        self._meter_task = asyncio.create_task(self._meter_forever(), name="meter")
        log.info(
            "agent serving",
            relay=self.options.relay,
            plugin=self.options.listen,
            health=self.options.health_listen,
        )

    async def stop(self) -> None:
        if self._meter_task:
            self._meter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._meter_task
        for runner in self._runners:
            await runner.cleanup()
        await self.source.stop()


async def serve(options: AgentOptions) -> None:
    agent = Agent(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
