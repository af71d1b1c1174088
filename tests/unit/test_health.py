"""The operator's health endpoints over real HTTP: /readyz lists every check and is 503 until
all pass, /healthz fails when the event loop stalls, /metrics serves the tunnelop_* registry."""

from __future__ import annotations

import aiohttp

from support.netutil import free_port
from tunnelop.platform import metrics
from tunnelop.platform.health import Health


async def test_readyz_lists_each_check_and_needs_all_of_them():
    health = Health()
    port = free_port()
    await health.start("127.0.0.1", port)
    leading = {"now": False}
    health.add_check(
        "leader", lambda: (leading["now"], "leading" if leading["now"] else "following b")
    )
    health.add_check("informer /api/v1/secrets", lambda: (True, "synced"))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 503
                assert (await r.text()).splitlines() == [
                    "[+]informer /api/v1/secrets: synced",
                    "[-]leader: following b",
                    "not ready",
                ]
            leading["now"] = True
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200 and "[+]leader: leading" in await r.text()
            health.add_check("broken", lambda: 1 / 0)
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 503
                assert "[-]broken: check raised ZeroDivisionError" in await r.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
            metrics.LEADER.set(1)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
                assert r.status == 200 and "tunnelop_leader 1.0" in text
                assert "# TYPE tunnelop_reconciles_total counter" in text
    finally:
        metrics.LEADER.set(0)
        await health.stop()


def test_no_check_means_not_ready():
    assert Health().readiness() == (False, [])


def test_a_stalled_loop_fails_liveness():
    now = {"t": 0.0}
    health = Health(stall_after=10, clock=lambda: now["t"])
    assert health.liveness() == (True, "ok")
    now["t"] = 10.5
    assert health.liveness() == (False, "event loop stalled for 10.5 s")


def test_scheduling_latency_is_observed_once_from_the_first_enqueue():
    now = {"t": 100.0}
    clock = metrics.SchedulingLatency(clock=lambda: now["t"])
    before = metrics.REGISTRY.get_sample_value("tunnelop_scheduling_latency_seconds_count") or 0
    clock.enqueued("k")
    now["t"] = 101.0
    clock.enqueued("k")  # a second event before binding changes nothing
    now["t"] = 102.5
    assert clock.bound("k") == 2.5
    assert clock.bound("k") is None  # bound already
    after = metrics.REGISTRY.get_sample_value("tunnelop_scheduling_latency_seconds_count")
    assert after == before + 1
