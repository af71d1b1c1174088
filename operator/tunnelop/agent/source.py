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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tunnelop.agent.index import TableIndex
from tunnelop.contract.naming import TABLE_KEY
from tunnelop.contract.table import parse_table_json
from tunnelop.platform import logs
from tunnelop.platform.informer import Informer
from tunnelop.platform.kube import Kube

log = logs.get(__name__)
STATE_FILE = "table.json"


class TableSource:
    """Keeps `index` current: from the state copy at start, then from the Secret's watch."""

    def __init__(
        self,
        kube_factory: Callable[[], Awaitable[Kube]],
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
        self.source = "none"  # "state" or "api"
        self._informer: Informer | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._saves: set[asyncio.Task[None]] = set()
        self._save_lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self.index is not None

    @property
    def synced_at(self) -> float | None:
        """Monotonic time the API server last answered the watch (None: never)."""
        return self._informer.contacted_at if self._informer else None

    async def start(self) -> None:
        await self._load_state()
        self._connecting = asyncio.create_task(self._watch(), name="table-watch")

    async def stop(self) -> None:
        if self._connecting:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._informer:
            await self._informer.stop()
            await self._informer.kube.close()

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
            async with self._save_lock:  # in order, one at a time
                await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("cannot keep a copy of the table", error=str(exc))

    def _state_path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir else None

    # ---- watching the Secret ----------------------------------------------------------

    async def _watch(self) -> None:
        """Connect (retrying while there is no usable config), then follow the Secret."""
        delay = 0.5
        while True:
            try:
                kube = await self.kube_factory()
                break
            except Exception as exc:
                self._interrupted(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        self._informer = Informer(
            kube,
            f"/api/v1/namespaces/{self.namespace}/secrets",
            self._on_event,
            fields=f"metadata.name={self.secret}",
            on_interrupted=self._interrupted,
        )
        self._informer.start()

    @staticmethod
    def _interrupted(exc: Exception) -> None:
        # The API server is down or refuses: keep serving the table we have.
        log.warning("table watch interrupted; serving the last table", error=str(exc))

    def _on_event(self, kind: str, secret: dict[str, Any]) -> None:
        if kind not in ("ADDED", "MODIFIED"):
            return  # a deleted table goes with its relay: keep serving until then
        raw = (secret.get("data") or {}).get(TABLE_KEY)
        try:
            text = base64.b64decode(raw, validate=True).decode() if raw else None
        except ValueError as exc:  # not base64, or not UTF-8
            log.error("table Secret unreadable; keeping the previous table", error=str(exc))
            return
        if text is None:
            log.error("table Secret has no table", secret=self.secret, key=TABLE_KEY)
            return
        if self.apply(text, "api"):
            task = asyncio.create_task(self._save_state(text))
            self._saves.add(task)
            task.add_done_callback(self._saves.discard)
