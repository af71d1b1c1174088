"""A list-and-watch informer for kinds with many objects (Tunnels, their Secrets), also
used by the relay agent for its one table Secret.

kopf gives every watched object a worker of its own, and its bookkeeping grows with their
number; at thousands of tunnels that dominated the operator's CPU (measured; see
docs/decisions/0004-own-informer-for-tunnels.md). This informer keeps no per-object state:
it lists once, then follows the watch, and hands each object to a callback that only updates
a cache and enqueues a key.

An informer may start from a list made elsewhere (`Listed`: the operator's start-up restore
lists Tunnels and their Secrets anyway) and watch from its resourceVersion: at 50,000 tunnels
listing them twice was most of a restart (docs/benchmarks.md).

Failures are logged with their HTTP status, counted (tunnelop_informer_failures_total) and
retried with exponential back-off (1 s doubling to 30 s, reset by a working watch); `healthy()`
tells readiness whether the informer has synced and is not failing. A handler that raises
gets the object again later, with the same back-off, unless a newer event for the same object
reaches it first: no key is lost to a failing handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tunnelop.platform import logs, metrics
from tunnelop.platform.kube import Kube, KubeError

log = logs.get(__name__)
Handler = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, object)
YIELD_EVERY = 20
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0


@dataclass
class Listed:
    """A list made elsewhere, for an informer to start from instead of listing again: its
    resourceVersion and the identities it held (namespace, name, labels); with `replay`,
    objects to hand over as ADDED before the watch, each read when it is handed over (a
    generator over a cache: a write since the list must not be handed over as older)."""

    version: str
    identities: list[dict[str, Any]] = field(default_factory=list)
    replay: Iterable[dict[str, Any]] = ()

    def add(self, obj: dict[str, Any]) -> None:
        self.identities.append(_identity_metadata(obj))


def backoff(failures: int, first: float = FIRST_BACKOFF, most: float = MAX_BACKOFF) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1, 2, 4, ... up to `most`)."""
    return min(most, first * 2 ** min(max(failures - 1, 0), 16))


class Informer:
    def __init__(
        self,
        kube: Kube,
        path: str,
        handler: Handler,
        *,
        labels: str = "",
        fields: str = "",
        on_interrupted: Callable[[Exception], None] | None = None,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.kube = kube
        self.path = path
        self.handler = handler
        self.labels = labels
        self.fields = fields
        self.on_interrupted = on_interrupted
        self.max_backoff = max_backoff
        self.synced = asyncio.Event()
        # Monotonic time of the API server's last answer (a list or any watch event).
        self.contacted_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        # Only identities, to tell the handler what vanished while the watch was down.
        self._known: dict[tuple[str, str], dict[str, Any]] = {}
        self.failures = 0  # in a row, reset by a working watch
        self.last_error: str | None = None
        # Objects whose handler raised, to hand over again: identity -> (timer, attempts)
        self._redeliveries: dict[tuple[str, str], tuple[asyncio.TimerHandle, int]] = {}

    def start(self, listed: Listed | None = None) -> None:
        """Start listing and watching; from `listed`, watching at once."""
        self._task = asyncio.create_task(self._run(listed), name=f"informer {self.path}")

    def healthy(self) -> tuple[bool, str]:
        """For readiness: (ok, what to say)."""
        if self.last_error is not None:
            return False, f"{self.path}: failing ({self.failures} in a row): {self.last_error}"
        if not self.synced.is_set():
            return False, f"{self.path}: not synced yet"
        return True, f"{self.path}: synced"

    async def stop(self) -> None:
        for timer, _ in self._redeliveries.values():
            timer.cancel()
        self._redeliveries.clear()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def list(self) -> str:
        """List in pages, handing each object over as ADDED, and then what vanished since the
        last list as DELETED; the list's resourceVersion."""
        present: set[tuple[str, str]] = set()
        version = ""
        async for items, page_version in self.kube.pages(
            self.path, labels=self.labels, fields=self.fields
        ):
            version = page_version
            self.contacted_at = time.monotonic()
            self.last_error = None
            for obj in items:
                present.add(_identity(obj))
                self._dispatch("ADDED", obj)
            await asyncio.sleep(0)  # a page at a time: the webhook and workers run between
        for key in set(self._known) - present:
            self._dispatch("DELETED", self._known[key])
        return version

    async def _resume(self, listed: Listed) -> str:
        """Take over a list made elsewhere: remember what it held, hand over its replay."""
        for identity in listed.identities:
            self._known[_identity(identity)] = identity
        for handed, obj in enumerate(listed.replay, 1):
            self._dispatch("ADDED", obj)
            if handed % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        listed.identities, listed.replay = [], ()  # no longer needed: let them go
        self.contacted_at = time.monotonic()
        return listed.version

    async def _run(self, listed: Listed | None = None) -> None:
        version = await self._resume(listed) if listed is not None else ""
        if version:
            self.synced.set()
        while True:
            try:
                if not version:
                    version = await self.list()
                    self.synced.set()
                handed = 0
                async for event in self.kube.watch(
                    self.path, resource_version=version, labels=self.labels, fields=self.fields
                ):
                    handed += 1
                    if handed % YIELD_EVERY == 0:
                        # Buffered events are read without a pause: let the webhook and the
                        # workers run between them.
                        await asyncio.sleep(0)
                    self._answered()
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        version = ""  # 410 Gone and the like: list again
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self._dispatch(kind, obj)
                else:
                    self._answered()  # the server closed the watch at its timeout
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API server restarts, timeouts, 403, expired versions
                delay = self._failed(exc)
                version = ""
                await asyncio.sleep(delay)

    def _answered(self) -> None:
        # Only the watch resets the back-off: a list that succeeds before a watch that keeps
        # failing (a 403 on watch alone) must not retry every second.
        self.contacted_at = time.monotonic()
        self.failures = 0
        self.last_error = None

    def _failed(self, exc: Exception) -> float:
        """Record a failed list or watch; the seconds to wait before the next try."""
        status = exc.status if isinstance(exc, KubeError) else 0
        message = exc.message if isinstance(exc, KubeError) else f"{type(exc).__name__}: {exc}"
        self.failures += 1
        self.last_error = f"HTTP {status}: {message}" if status else message
        metrics.INFORMER_FAILURES.labels(path=self.path, status=str(status)).inc()
        delay = backoff(self.failures, most=self.max_backoff)
        if self.on_interrupted:
            self.on_interrupted(exc)
        log.warning(
            "list or watch failed; listing again",
            path=self.path,
            status=status,
            error=message,
            failures=self.failures,
            retry_in=delay,
        )
        return delay

    def _dispatch(self, kind: str, obj: dict[str, Any]) -> None:
        key = _identity(obj)
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = _identity_metadata(obj)
        self._deliver(key, kind, obj)

    def _deliver(self, key: tuple[str, str], kind: str, obj: dict[str, Any]) -> None:
        pending = self._redeliveries.pop(key, None)
        if pending is not None:
            pending[0].cancel()  # this event is newer than the one waiting to be retried
        try:
            self.handler(kind, obj)
        except Exception:
            attempts = (pending[1] if pending else 0) + 1
            delay = backoff(attempts, most=self.max_backoff)
            log.exception(
                "informer handler failed; handing the object over again",
                path=self.path,
                namespace=key[0],
                name=key[1],
                attempts=attempts,
                retry_in=delay,
            )
            # The count stays in the entry, so that the back-off grows at the next failure.
            timer = asyncio.get_running_loop().call_later(delay, self._deliver, key, kind, obj)
            self._redeliveries[key] = (timer, attempts)


def _identity_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an object to hand over its deletion later (the handlers read labels)."""
    meta = obj.get("metadata", {})
    return {
        "metadata": {
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "labels": meta.get("labels"),
        }
    }


def _identity(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace") or "", meta.get("name") or ""
