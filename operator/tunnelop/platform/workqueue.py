"""A keyed work queue, as in client-go: watches only say *which* object changed; workers
reconcile it from the latest cached state. A key is never processed by two workers at once,
a key enqueued while pending is coalesced, and a failed reconcile is retried with back-off.
Each queue reports its depth, reconciles by result and their duration (platform/metrics.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from tunnelop.platform import logs, metrics

log = logs.get(__name__)
K = TypeVar("K", bound=Hashable)


class Requeue(Exception):
    """Raised by a reconcile that wants another pass later (not an error)."""

    def __init__(self, after: float = 1.0) -> None:
        super().__init__(f"requeue after {after}s")
        self.after = after


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        reconcile: Callable[[K], Awaitable[None]],
        workers: int = 16,
        max_backoff: float = 60.0,
    ) -> None:
        self.name = name
        self._reconcile = reconcile
        self._workers = workers
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._pending: set[K] = set()  # queued, not yet picked up
        self._active: set[K] = set()  # being reconciled
        self._dirty: set[K] = set()  # changed again while active: run once more after
        self._failures: dict[K, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self._busy: set[asyncio.Task[None]] = set()  # workers in a reconcile
        self._depth = metrics.QUEUE_DEPTH.labels(queue=name)
        self._duration = metrics.RECONCILE_DURATION.labels(controller=name)

    def add(self, key: K) -> None:
        if self._draining:
            return  # shutting down: the next leader lists everything anew
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._pending:
            return
        self._pending.add(key)
        self._queue.put_nowait(key)
        self._depth.set(len(self))

    def add_after(self, key: K, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def abort(self) -> None:
        """Stop at once, without waiting: leadership is lost and another process may already
        be reconciling. Each worker stops at its next await."""
        self._draining = True
        for task in self._tasks:
            task.cancel()

    async def drain(self, timeout: float) -> bool:
        """For a graceful shutdown: take no new keys, let the reconciles in flight finish for
        up to `timeout` seconds, then cancel the rest. True when nothing was cut short."""
        self._draining = True
        busy = set(self._busy)
        for task in self._tasks:
            if task not in busy:
                task.cancel()  # waiting for a key that will not come
        # A busy worker ends by itself after its reconcile (see _work).
        _, unfinished = await asyncio.wait(busy, timeout=timeout) if busy else (set(), set())
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return not unfinished

    def __len__(self) -> int:
        return len(self._pending) + len(self._active)

    async def _work(self) -> None:
        while not self._draining:
            key = await self._queue.get()
            if self._draining:
                break
            self._pending.discard(key)
            self._active.add(key)
            worker = asyncio.current_task()
            assert worker is not None
            self._busy.add(worker)
            started = time.monotonic()
            result = "error"
            try:
                await self._reconcile(key)
                self._failures.pop(key, None)
                result = "success"
            except asyncio.CancelledError:
                result = "cancelled"
                raise
            except Requeue as again:
                result = "requeue"
                self.add_after(key, again.after)
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._max_backoff, 0.2 * 2 ** min(failures, 10))
                log.warning(
                    "reconcile failed; retrying",
                    queue=self.name,
                    key=str(key),
                    error=str(exc),
                    retry_in=round(delay, 2),
                    exc_info=failures > 3,
                )
                self.add_after(key, delay)
            finally:
                self._duration.observe(time.monotonic() - started)
                metrics.RECONCILES.labels(controller=self.name, result=result).inc()
                self._active.discard(key)
                self._busy.discard(worker)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                self._depth.set(len(self))
