"""The operator's own HTTP endpoints, on a port of their own:

- /healthz: the process is alive and its event loop turns (a heartbeat ticks every second;
  500 when it stalled for more than `stall_after` seconds);
- /readyz: 200 when every registered check passes (the manager registers "leader", which a
  follower standing by passes too, the leader its controllers and certificate), else 503;
  the body lists each check and its message;
- /metrics: the Prometheus text of the operator's registry (platform/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tunnelop.platform import logs, metrics

log = logs.get(__name__)
Check = Callable[[], tuple[bool, str]]  # (passes, message)


class Health:
    def __init__(
        self,
        registry: CollectorRegistry = metrics.REGISTRY,
        *,
        stall_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.stall_after = stall_after
        self.clock = clock
        self.checks: dict[str, Check] = {}
        self._beat = clock()
        self._heart: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: Check) -> None:
        """Register (or replace) a readiness check."""
        self.checks[name] = check

    def remove_check(self, name: str) -> None:
        self.checks.pop(name, None)

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether every check passes, and one line per check (a check that raises fails)."""
        lines, ready = [], bool(self.checks)
        for name, check in sorted(self.checks.items()):
            try:
                ok, message = check()
            except Exception as exc:
                ok, message = False, f"check raised {type(exc).__name__}: {exc}"
            ready = ready and ok
            lines.append(f"[{'+' if ok else '-'}]{name}: {message}")
        return ready, lines

    async def until_ready(self, interval: float = 0.2) -> None:
        """Return once every check passes (checks are functions to call, not events)."""
        while not self.readiness()[0]:  # noqa: ASYNC110
            await asyncio.sleep(interval)

    def liveness(self) -> tuple[bool, str]:
        stalled = self.clock() - self._beat
        if stalled > self.stall_after:
            return False, f"event loop stalled for {stalled:.1f} s"
        return True, "ok"

    # ---- server -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> None:
        self._heart = asyncio.create_task(self._heartbeat(), name="health heartbeat")
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("health endpoints listening", address=f"{host}:{port}")

    async def stop(self) -> None:
        if self._heart is not None:
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart
        if self._runner is not None:
            await self._runner.cleanup()

    async def _heartbeat(self) -> None:
        while True:
            self._beat = self.clock()
            await asyncio.sleep(1)

    async def _healthz(self, _: web.Request) -> web.Response:
        ok, message = self.liveness()
        return web.Response(status=200 if ok else 500, text=message + "\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, lines = self.readiness()
        lines.append("ready" if ready else "not ready")
        return web.Response(status=200 if ready else 503, text="\n".join(lines) + "\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
