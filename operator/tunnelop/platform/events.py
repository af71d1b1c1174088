"""Events, recorded the way client-go's EventCorrelator does it, and kept off the hot path.

`EventRecorder.record` decides synchronously and never waits on the API server: the write
(when there is one) runs in a task the recorder owns. Each Event offered goes through:

1. the per-object spam filter: a token bucket per object (burst 25, one token per 5 minutes,
   client-go's defaults), so one flapping object cannot flood; what it refuses is dropped;
2. the aggregator: the 10th distinct message of the same (object, type, reason) within the
   window becomes "(combined from similar events): <message>", one Event for all of them;
3. the global token bucket (burst 50, 5 a second by default): every write, create or count
   update, takes a token, so the Events cost at most `burst + rate * seconds` writes however
   many objects change at once. What it refuses is counted (tunnelop_events_dropped_total by
   reason) and summed per (namespace, kind, type, reason); while sums wait, every new Event
   joins them, and after `summary_delay` seconds each sum is posted, as tokens allow, as one
   Event on the latest object it covers ("Scheduled: 512 more tunnels in this namespace ...").
   A summary takes a token too, so the bound holds with them; there is at most one per
   (namespace, kind, type, reason) every `summary_delay` seconds. Summing rather than
   queueing: a queue of 10,000 Events is still 10,000 writes, only later, while each
   object's status already carries its own state;
4. dedup: the same (object, type, reason, message) again within the window (10 minutes)
   PATCHes the existing Event's count and lastTimestamp instead of creating another. Updates
   that arrive while the Event is being written are folded into one write. A role that may
   create but not patch Events (403) makes each repeat an Event of its own.

The caches (dedup, aggregation, spam buckets) are LRUs of `cache_size` keys each, as
client-go's, so memory stays bounded at any number of objects. A lone Event (one tunnel
bound on a quiet operator) finds full buckets and is posted at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from tunnelop.platform import logs, metrics

log = logs.get(__name__)

COMBINED = "(combined from similar events): "
SIMILAR_MESSAGES = 10  # client-go's maxEvents of its EventAggregator
WINDOW = 600.0  # seconds; client-go's aggregation and dedup interval
OBJECT_BURST = 25  # client-go's spam filter: burst and refill (1 per 5 minutes)
OBJECT_REFILL = 1 / 300
GLOBAL_BURST = 50
GLOBAL_REFILL = 5.0
SUMMARY_DELAY = 5.0
CACHE_SIZE = 4096

K = TypeVar("K")
V = TypeVar("V")


class EventWriter(Protocol):
    async def event(
        self,
        regarding: dict[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        name: str | None = None,
        count: int = 1,
    ) -> None: ...

    async def event_count(self, namespace: str, name: str, *, count: int, message: str) -> None: ...


class TokenBucket:
    """`burst` tokens at most, `rate` more a second."""

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class _Similar:
    since: float
    messages: set[str] = field(default_factory=set)


@dataclass
class _Recorded:
    """One Event as posted (or about to be): its name, and the count the server has."""

    regarding: dict[str, Any]
    type_: str
    reason: str
    message: str
    name: str
    since: float
    count: int = 0
    written: int = 0
    created: bool = False
    writing: bool = False


@dataclass
class _Dropped:
    regarding: dict[str, Any]  # the latest object it covers
    count: int = 0


ObjectKey = tuple[str, ...]


def _object_key(regarding: dict[str, Any]) -> ObjectKey:
    meta = regarding.get("metadata") or {}
    if meta.get("uid"):
        return (meta["uid"],)
    return (regarding.get("kind", ""), meta.get("namespace") or "", meta.get("name", ""))


def summary_message(reason: str, kind: str, namespace: str | None, count: int) -> str:
    what = kind.lower()
    where = "in this namespace" if namespace else "cluster-wide"
    detail = "status.conditions" if kind == "Tunnel" else "status"
    return (
        f"{reason}: {count} more {what}{'s' if count != 1 else ''} {where} (events rate-limited; "
        f"each {what}'s {detail} has its own)"
    )


class EventRecorder:
    def __init__(
        self,
        kube: EventWriter,
        *,
        burst: int = GLOBAL_BURST,
        rate: float = GLOBAL_REFILL,
        object_burst: int = OBJECT_BURST,
        object_rate: float = OBJECT_REFILL,
        window: float = WINDOW,
        summary_delay: float = SUMMARY_DELAY,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kube = kube
        self._clock = clock
        self._sleep = sleep
        self.window = window
        self.summary_delay = summary_delay
        self.object_burst = object_burst
        self.object_rate = object_rate
        self.bucket = TokenBucket(burst, rate, clock())
        self._objects: _Lru[ObjectKey, TokenBucket] = _Lru(cache_size)
        self._similar: _Lru[tuple[Any, ...], _Similar] = _Lru(cache_size)
        self._recorded: _Lru[tuple[Any, ...], _Recorded] = _Lru(cache_size)
        # Sums of what the global bucket refused, oldest first, until posted.
        self._dropped: OrderedDict[tuple[str, str, str, str], _Dropped] = OrderedDict()
        # What was refused, by limit ("object", "global") and Event reason.
        self.dropped: Counter[tuple[str, str]] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._summaries: asyncio.Task[None] | None = None
        self._serial = 0
        self.patching = True  # until the API server refuses it (403)

    def record(self, regarding: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Decide now, write in the background; never raises for the API's sake."""
        now = self._clock()
        obj = _object_key(regarding)
        bucket = self._objects.get(obj)
        if bucket is None:
            bucket = TokenBucket(self.object_burst, self.object_rate, now)
            self._objects.put(obj, bucket)
        if not bucket.take(now):
            self._drop(reason)
            return
        message = message[:1024]
        key = self._aggregate(obj, type_, reason, message, now)
        if key[-1] == COMBINED:
            message = COMBINED + message
        if self._dropped or not self.bucket.take(now):
            self._drop(reason, regarding, type_)
            return
        entry = self._recorded.get(key)
        if entry is None or now - entry.since > self.window:
            entry = _Recorded(regarding, type_, reason, message, self._name(regarding), now)
            self._recorded.put(key, entry)
        entry.message = message
        entry.count += 1
        self._write(entry)

    def _aggregate(
        self, obj: ObjectKey, type_: str, reason: str, message: str, now: float
    ) -> tuple[Any, ...]:
        """The dedup key: per message, or one for all after enough similar messages."""
        similar_key = (obj, type_, reason)
        similar = self._similar.get(similar_key)
        if similar is None or now - similar.since > self.window:
            similar = _Similar(now)
            self._similar.put(similar_key, similar)
        if message in similar.messages or len(similar.messages) < SIMILAR_MESSAGES - 1:
            similar.messages.add(message)
            return (*similar_key, message)
        return (*similar_key, COMBINED)

    def _name(self, regarding: dict[str, Any]) -> str:
        # As client-go: the object's name and a suffix unique in this process.
        self._serial += 1
        return f"{regarding['metadata']['name']}.{time.time_ns() + self._serial:x}"

    def _drop(self, reason: str, regarding: dict[str, Any] | None = None, type_: str = "") -> None:
        self.dropped["object" if regarding is None else "global", reason] += 1
        metrics.EVENTS_DROPPED.labels(reason=reason).inc()
        if regarding is None:
            return  # the object's own spam filter: it has said enough
        meta = regarding["metadata"]
        key = (meta.get("namespace") or "", regarding.get("kind", ""), type_, reason)
        dropped = self._dropped.get(key)
        if dropped is None:
            dropped = self._dropped[key] = _Dropped(regarding)
        dropped.regarding = regarding
        dropped.count += 1
        if self._summaries is None:
            self._summaries = asyncio.create_task(self._post_summaries())

    async def _post_summaries(self) -> None:
        try:
            while self._dropped:
                await self._sleep(self.summary_delay)
                self.flush_summaries()
        finally:
            self._summaries = None

    @property
    def waiting(self) -> int:
        """Refused Events not summed up in a posted Event yet."""
        return sum(d.count for d in self._dropped.values())

    def flush_summaries(self) -> None:
        """Post the oldest sums of refused Events, one token each, while tokens last."""
        while self._dropped and self.bucket.take(self._clock()):
            (namespace, kind, type_, reason), dropped = self._dropped.popitem(last=False)
            message = summary_message(reason, kind, namespace or None, dropped.count)
            self._spawn(
                self.kube.event(
                    dropped.regarding,
                    type_=type_,
                    reason=reason,
                    message=message,
                    name=self._name(dropped.regarding),
                ),
                reason,
            )

    def _write(self, entry: _Recorded) -> None:
        if not entry.writing:
            entry.writing = True
            self._spawn(self._write_counts(entry), entry.reason)

    async def _write_counts(self, entry: _Recorded) -> None:
        # One write at a time per Event: counts that arrive meanwhile go in the next one.
        try:
            while entry.written < entry.count:
                count = entry.count
                posted = count
                if entry.created:
                    if self.patching and await self._patch(entry, count):
                        entry.written = count
                        continue
                    if not self.patching:
                        posted = count - entry.written  # the earlier Event keeps its count
                    entry.name = self._name(entry.regarding)
                await self.kube.event(
                    entry.regarding,
                    type_=entry.type_,
                    reason=entry.reason,
                    message=entry.message,
                    name=entry.name,
                    count=posted,
                )
                entry.created = True
                entry.written = count
        finally:
            entry.writing = False

    async def _patch(self, entry: _Recorded, count: int) -> bool:
        """The count written on the posted Event; False when it must be posted anew."""
        meta = entry.regarding["metadata"]
        try:
            await self.kube.event_count(
                meta.get("namespace") or "default", entry.name, count=count, message=entry.message
            )
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 403:
                # A role with create but no patch on events (an older chart): each repeat
                # becomes an Event of its own, as before the recorder, still rate-limited.
                self.patching = False
                log.warning("cannot patch events; repeats are posted as new Events", error=str(exc))
            elif status != 404:  # 404: deleted meanwhile (its TTL), posted anew
                raise
            return False
        return True

    def _spawn(self, work: Awaitable[None], reason: str) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # e.g. the namespace is being deleted
                log.debug("cannot post event", reason=reason, error=str(exc))

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Until the writes started so far are done (tests, and a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._summaries] if self._summaries else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
