"""A list-and-watch informer for kinds with many objects (Tunnels, their Secrets), also
used by the relay agent for its one table Secret.

kopf gives every watched object a worker of its own, and its bookkeeping grows with their
number; at thousands of tunnels that dominated the operator's CPU (measured; see
docs/decisions/0004-own-informer-for-tunnels.md). This informer keeps no per-object state:
it lists once, then follows the watch, and hands each object to a callback that only updates
a cache and enqueues a key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tunnelop.platform import logs
from tunnelop.platform.kube import Kube

log = logs.get(__name__)
Handler = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, object)


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
    ) -> None:
        self.kube = kube
        self.path = path
        self.handler = handler
        self.labels = labels
        self.fields = fields
        self.on_interrupted = on_interrupted
        self.synced = asyncio.Event()
        # Monotonic time of the API server's last answer (a list or any watch event).
        self.contacted_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        # Only identities, to tell the handler what vanished while the watch was down.
        self._known: dict[tuple[str, str], dict[str, Any]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer {self.path}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def list(self) -> tuple[list[dict[str, Any]], str]:
        query = [("labelSelector", self.labels)] if self.labels else []
        if self.fields:
            query.append(("fieldSelector", self.fields))
        result = await self.kube.request("GET", self.path, query=query) or {}
        self.contacted_at = time.monotonic()
        return result.get("items", []), result.get("metadata", {}).get("resourceVersion", "")

    async def _run(self) -> None:
        version = ""
        while True:
            try:
                if not version:
                    items, version = await self.list()
                    present = {_identity(obj) for obj in items}
                    for key in set(self._known) - present:
                        self._dispatch("DELETED", self._known[key])
                    for obj in items:
                        self._dispatch("ADDED", obj)
                    self.synced.set()
                async for event in self.kube.watch(
                    self.path, resource_version=version, labels=self.labels, fields=self.fields
                ):
                    self.contacted_at = time.monotonic()
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        version = ""  # 410 Gone and the like: list again
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self._dispatch(kind, obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API server restarts, timeouts, expired versions
                if self.on_interrupted:
                    self.on_interrupted(exc)
                else:
                    log.warning("watch interrupted; listing again", path=self.path, error=str(exc))
                version = ""
                await asyncio.sleep(1)

    def _dispatch(self, kind: str, obj: dict[str, Any]) -> None:
        key = _identity(obj)
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            meta = obj.get("metadata", {})
            self._known[key] = {
                "metadata": {
                    "namespace": meta.get("namespace"),
                    "name": meta.get("name"),
                    "labels": meta.get("labels"),
                }
            }
        try:
            self.handler(kind, obj)
        except Exception:
            log.exception("informer handler failed", path=self.path, name=key[1])


def _identity(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace") or "", meta.get("name") or ""
