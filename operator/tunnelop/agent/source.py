"""Where the agent's table comes from: its relay's table Secrets (one per shard), watched
through the API server with the pod's own, read-only ServiceAccount (it may read those Secrets
and nothing else), and a copy of each on the pod's disk.

The copy is what keeps the relay serving through outages (invariant 3): when the API server
or the operator is down, the agent keeps its last table in memory, and a restarted agent
starts from the copy before the API server answers, so known clients can reconnect.

Each shard is watched apart, so the shards may arrive in any order: while the operator moves
a port from one tunnel to another, the agent may briefly see both name it. frps binds a port
(or routes a host name) once, so the newcomer is refused until the old holder's shard arrives
and its proxy is closed; the operator itself frees a port only once the shard without it is
written (decision 0012).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from tunnelop.agent.index import TableIndex
from tunnelop.contract.naming import TABLE_KEY, shard_secret_name
from tunnelop.contract.table import TABLE_SHARDS, TableEntry, parse_table_json, table_documents
from tunnelop.platform import logs
from tunnelop.platform.informer import Informer
from tunnelop.platform.kube import Kube

log = logs.get(__name__)


def state_file(shard: int) -> str:
    """The disk copy of a shard: table.json for shard 0 (the name of earlier versions)."""
    return "table.json" if shard == 0 else f"table-{shard}.json"


def write_copies(state_dir: Path, relay: str, entries: Iterable[TableEntry]) -> None:
    """A whole table as the agent keeps it on disk (a relay started with no API server, in
    tests and benchmarks, serves it)."""
    for shard, text in enumerate(table_documents(relay, entries)):
        (state_dir / state_file(shard)).write_text(text)


class TableSource:
    """Keeps `index` current: from the state copies at start, then from the Secrets' watches.
    `index` is the union of the shards known so far; `loaded` says every shard is known."""

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
        self.secrets = [shard_secret_name(secret, shard) for shard in range(TABLE_SHARDS)]
        self.state_dir = state_dir
        self.on_change = on_change
        self.index: TableIndex | None = None
        self.texts: list[str | None] = [None] * TABLE_SHARDS
        self._shards: list[TableIndex | None] = [None] * TABLE_SHARDS
        self.source = "none"  # where the last shard came from: "state" or "api"
        self._kube: Kube | None = None
        self._informers: list[Informer] = []
        self._connecting: asyncio.Task[None] | None = None
        self._saves: set[asyncio.Task[None]] = set()
        self._save_lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return all(text is not None for text in self.texts)

    @property
    def synced_at(self) -> float | None:
        """Monotonic time the API server last answered every shard's watch (None: some shard's
        watch never was answered)."""
        times = [i.contacted_at for i in self._informers]
        if len(times) < TABLE_SHARDS or None in times:
            return None
        return min(t for t in times if t is not None)

    async def start(self) -> None:
        await self._load_state()
        self._connecting = asyncio.create_task(self._watch(), name="table-watch")

    async def stop(self) -> None:
        if self._connecting:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        for informer in self._informers:
            await informer.stop()
        if self._kube:
            await self._kube.close()

    # ---- applying a table -------------------------------------------------------------

    def apply(self, text: str, source: str, shard: int | None = None) -> bool:
        """Adopt a shard's document (read from where `shard` must be); False, and that
        shard's old version kept, if it is not valid."""
        try:
            document = parse_table_json(text)
            if shard is not None and document.shard != shard:
                raise ValueError(f"shard {shard}'s Secret holds shard {document.shard}")
            if text == self.texts[document.shard]:
                return True
            shard_index = TableIndex.build(document.relay, document.entries)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("table refused; keeping the previous one", source=source, error=str(exc))
            return False
        if document.relay != self.relay:
            log.error(
                "table is of another relay; ignored", source=source, table_relay=document.relay
            )
            return False
        self._shards[document.shard] = shard_index
        self.texts[document.shard] = text
        self.index = TableIndex.union(self.relay, [s for s in self._shards if s is not None])
        self.source = source
        log.info(
            "table loaded",
            source=source,
            shard=document.shard,
            shard_tunnels=len(shard_index),
            tunnels=len(self.index),
        )
        if self.on_change:
            self.on_change(self.index)
        return True

    async def _load_state(self) -> None:
        if self.state_dir is None:
            return
        for shard in range(TABLE_SHARDS):
            path = self.state_dir / state_file(shard)
            if path.exists():
                self.apply(await asyncio.to_thread(path.read_text), "state", shard)

    async def _save_state(self, shard: int, text: str) -> None:
        if self.state_dir is None:
            return
        path = self.state_dir / state_file(shard)

        def write() -> None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic: a crash leaves the old copy or the new one

        try:
            async with self._save_lock:  # in order, one at a time
                await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("cannot keep a copy of the table", error=str(exc))

    # ---- watching the Secret ----------------------------------------------------------

    async def _watch(self) -> None:
        """Connect (retrying while there is no usable config), then follow each shard's
        Secret: a watch of its own, as the ServiceAccount may read only those names."""
        delay = 0.5
        while True:
            try:
                self._kube = await self.kube_factory()
                break
            except Exception as exc:
                self._interrupted(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        for name in self.secrets:
            informer = Informer(
                self._kube,
                f"/api/v1/namespaces/{self.namespace}/secrets",
                self._on_event,
                fields=f"metadata.name={name}",
                on_interrupted=self._interrupted,
            )
            self._informers.append(informer)
            informer.start()

    @staticmethod
    def _interrupted(exc: Exception) -> None:
        # The API server is down or refuses: keep serving the table we have.
        log.warning("table watch interrupted; serving the last table", error=str(exc))

    def _on_event(self, kind: str, secret: dict[str, Any]) -> None:
        if kind not in ("ADDED", "MODIFIED"):
            return  # a deleted table goes with its relay: keep serving until then
        name = (secret.get("metadata") or {}).get("name")
        raw = (secret.get("data") or {}).get(TABLE_KEY)
        try:
            text = base64.b64decode(raw, validate=True).decode() if raw else None
        except ValueError as exc:  # not base64, or not UTF-8
            log.error(
                "table Secret unreadable; keeping the previous table", secret=name, error=str(exc)
            )
            return
        if text is None:
            log.error("table Secret has no table", secret=name, key=TABLE_KEY)
            return
        if name not in self.secrets:
            log.error("table Secret not of this relay's shards; ignored", secret=name)
            return
        shard = self.secrets.index(name)
        if self.apply(text, "api", shard):
            task = asyncio.create_task(self._save_state(shard, text))
            self._saves.add(task)
            task.add_done_callback(self._saves.discard)
