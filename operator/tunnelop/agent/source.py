"""Where the agent's table comes from: its relay's table Secret, watched through the API
server with the pod's own, read-only ServiceAccount (it may read that one Secret and nothing
else), and a copy on the pod's disk.

The copy is what keeps the relay serving through outages (invariant 3): when the API server
or the operator is down, the agent keeps its last table in memory, and a restarted agent
starts from the copy before the API server answers, so known clients can reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunnelop import logs
from tunnelop.agent.table import TableIndex
from tunnelop.builders.names import TABLE_KEY
from tunnelop.builders.relay import parse_table_json
from tunnelop.kube import Kube

log = logs.get(__name__)
STATE_FILE = "table.json"


class TableSource:
    """Keeps `index` current: from the state copy at start, then from the Secret's watch."""

    def __init__(
        self,
        kube_factory: Callable[[], Any],
        *,
        relay: str,
        namespace: str,
        secret: str,
        state_dir: Path | None,
        on_change: Callable[[TableIndex], None] | None = None,
    ) -> None:
        self.kube_factory = kube_factory
        self.relay = relay
        self.namespace = namespace
        self.secret = secret
        self.state_dir = state_dir
        self.on_change = on_change
        self.index: TableIndex | None = None
        self.text: str | None = None
        self.synced_at: float | None = None  # monotonic time of the last answer from the API
        self.source = "none"  # "state" or "api"
        self._task: asyncio.Task[None] | None = None
        self._kube: Kube | None = None

    @property
    def loaded(self) -> bool:
        return self.index is not None

    async def start(self) -> None:
        await self._load_state()
        self._task = asyncio.create_task(self._watch_forever(), name="table-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kube:
            await self._kube.close()

    # ---- applying a table -------------------------------------------------------------

    def apply(self, text: str, source: str) -> bool:
        """Adopt a table text; False (and the old table kept) if it is not valid."""
        if text == self.text:
            return True
        try:
            relay, entries = parse_table_json(text)
            index = TableIndex.build(relay, entries)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("table refused; keeping the previous one", source=source, error=str(exc))
            return False
        if relay != self.relay:
            log.error("table is of another relay; ignored", source=source, table_relay=relay)
            return False
        self.index, self.text, self.source = index, text, source
        log.info("table loaded", source=source, tunnels=len(index))
        if self.on_change:
            self.on_change(index)
        return True

    async def _load_state(self) -> None:
        path = self._state_path()
        if path is None or not path.exists():
            return
        text = await asyncio.to_thread(path.read_text)
        self.apply(text, "state")

    async def _save_state(self, text: str) -> None:
        path = self._state_path()
        if path is None:
            return

        def write() -> None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic: a crash leaves the old copy or the new one

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("cannot keep a copy of the table", error=str(exc))

    def _state_path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir else None

    # ---- watching the Secret ----------------------------------------------------------

    async def _watch_forever(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/secrets"
        fields = f"metadata.name={self.secret}"
        delay = 0.5
        while True:
            try:
                if self._kube is None:
                    self._kube = await self.kube_factory()
                listing = await self._kube.request("GET", path, query=[("fieldSelector", fields)])
                assert listing is not None
                for item in listing.get("items", []):
                    await self._on_secret(item)
                self.synced_at = time.monotonic()
                version = listing["metadata"]["resourceVersion"]
                delay = 0.5
                async for event in self._kube.watch(path, resource_version=version, fields=fields):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind in ("ADDED", "MODIFIED"):
                        await self._on_secret(obj)
                    elif kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    self.synced_at = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The API server is down or refuses: keep serving the table we have.
                log.warning("table watch interrupted; serving the last table", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _on_secret(self, secret: dict[str, Any]) -> None:
        raw = (secret.get("data") or {}).get(TABLE_KEY)
        if raw is None:
            log.error("table Secret has no table", secret=self.secret, key=TABLE_KEY)
            return
        text = base64.b64decode(raw).decode()
        if self.apply(text, "api"):
            await self._save_state(text)
