"""A keyed work queue, as in client-go: watches only say *which* object changed; workers
reconcile it from the latest cached state. A key is never processed by two workers at once,
a key enqueued while pending is coalesced, and a failed reconcile is retried with back-off."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from tunnelop.platform import logs

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

    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._pending:
            return
        self._pending.add(key)
        self._queue.put_nowait(key)

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

    def __len__(self) -> int:
        return len(self._pending) + len(self._active)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._active.add(key)
            try:
                await self._reconcile(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Requeue as again:
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
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
