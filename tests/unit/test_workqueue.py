"""The work queue: a reconcile that raises is retried with back-off until it succeeds, each
result is counted, and drain() lets reconciles in flight finish (or cuts them at the timeout)
while taking no new keys."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from tunnelop.platform import metrics
from tunnelop.platform.workqueue import WorkQueue


def counted(queue: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "tunnelop_reconciles_total", {"controller": queue, "result": result}
    )
    return value or 0.0


async def test_a_failing_reconcile_is_retried_with_growing_delays_until_it_succeeds():
    name = f"q-{uuid.uuid4().hex[:6]}"
    attempts: list[float] = []
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    async def reconcile(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 4:
            raise RuntimeError("API server said no")
        done.set()

    queue = WorkQueue(name, reconcile, workers=2)
    queue.start()
    queue.add("k")
    await asyncio.wait_for(done.wait(), 10)
    await queue.stop()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4
    assert gaps[0] >= 0.35 and gaps[1] >= 0.75 and gaps[2] >= 1.55  # 0.4, 0.8, 1.6 s
    assert counted(name, "error") == 3 and counted(name, "success") == 1
    assert (
        metrics.REGISTRY.get_sample_value(
            "tunnelop_reconcile_duration_seconds_count", {"controller": name}
        )
        == 4
    )
    assert metrics.REGISTRY.get_sample_value("tunnelop_workqueue_depth", {"queue": name}) == 0


async def test_drain_lets_reconciles_in_flight_finish_and_takes_no_new_keys():
    started, finished = [], []
    release = asyncio.Event()

    async def reconcile(key: str) -> None:
        started.append(key)
        await release.wait()
        finished.append(key)

    queue = WorkQueue(f"q-{uuid.uuid4().hex[:6]}", reconcile, workers=2)
    queue.start()
    queue.add("a")
    queue.add("b")
    queue.add("c")  # waits: both workers are busy
    await asyncio.sleep(0.05)
    assert sorted(started) == ["a", "b"]
    draining = asyncio.create_task(queue.drain(timeout=5))
    await asyncio.sleep(0.05)
    queue.add("d")
    release.set()
    assert await draining is True
    assert sorted(finished) == ["a", "b"]  # c and d were never started
    assert sorted(started) == ["a", "b"]


async def test_drain_cancels_what_outlives_the_timeout():
    cancelled = asyncio.Event()

    async def reconcile(key: str) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    queue = WorkQueue(f"q-{uuid.uuid4().hex[:6]}", reconcile, workers=1)
    queue.start()
    queue.add("slow")
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await queue.drain(timeout=0.3) is False
    assert 0.25 <= loop.time() - began < 2
    assert cancelled.is_set()
