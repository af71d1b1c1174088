"""The allocation table as it travels from the operator to a relay's agent: TABLE_SHARDS JSON
documents, one per table Secret of the relay (key table.json), each holding the tunnels whose
key hashes to its shard. Only token digests, never tokens: the relay pod is internet-facing.

Why shards: a tunnel's change rewrites only its shard, an eighth of the relay's table, and a
relay of a thousand tunnels was a 270 KB write per new tunnel at a steady stream (decision
0012)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def token_sha256(token: str) -> str:
    """How a tunnel token appears in the relay's table: the relay pod is internet-facing, so
    it only ever sees digests."""
    return hashlib.sha256(token.encode()).hexdigest()


# Every relay's table is split over this many Secrets. Fixed: the operator and the agent must
# agree on it, and each document says it, so that a mismatch is refused rather than guessed.
TABLE_SHARDS = 8


def shard_of(namespace: str, name: str) -> int:
    """The shard a tunnel's entry lives in: stable across processes and versions (crc32, not
    Python's salted hash), so a tunnel never moves between shards."""
    return zlib.crc32(f"{namespace}/{name}".encode()) % TABLE_SHARDS


# The API server refuses a Secret whose data exceeds 1 MiB; the table keeps a margin for the
# document's head and tail, so a relay stops taking tunnels before its table cannot be written.
SECRET_DATA_LIMIT_BYTES = 1024 * 1024
TABLE_BUDGET_BYTES = SECRET_DATA_LIMIT_BYTES - 4096


@dataclass(frozen=True)
class TableEntry:
    """One tunnel as its relay's agent sees it. No plaintext token: only its sha256."""

    namespace: str
    name: str
    token_sha256: str
    protocol: str
    remote_port: int | None = None
    subdomain: str | None = None
    custom_domains: tuple[str, ...] = ()
    bandwidth_bps: int | None = None
    allow_source_ranges: tuple[str, ...] = ()
    suspended: bool = False

    def to_json(self) -> dict[str, Any]:
        """camelCase, with unset fields left out to keep big tables small."""
        entry: dict[str, Any] = {
            "namespace": self.namespace,
            "name": self.name,
            "tokenSha256": self.token_sha256,
            "protocol": self.protocol,
        }
        if self.remote_port is not None:
            entry["remotePort"] = self.remote_port
        if self.subdomain is not None:
            entry["subdomain"] = self.subdomain
        if self.custom_domains:
            entry["customDomains"] = sorted(self.custom_domains)
        if self.bandwidth_bps is not None:
            entry["bandwidthBps"] = self.bandwidth_bps
        if self.allow_source_ranges:
            entry["allowSourceRanges"] = sorted(self.allow_source_ranges)
        if self.suspended:
            entry["suspended"] = True
        return entry

    @functools.cached_property
    def line(self) -> str:
        """The entry's line in table.json, made once: a relay's table is written whole, and
        serializing every entry on every write was a quarter of the operator's time at a
        steady stream (docs/benchmarks.md)."""
        digest = self.token_sha256
        if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
            raise ValueError(
                f"tunnel {self.namespace}/{self.name}: token_sha256 must be a lowercase "
                "sha256 hex digest (never the token itself)"
            )
        return json.dumps(self.to_json(), separators=(",", ":"))

    def size(self) -> int:
        """Bytes this entry takes in table.json (its line and separator)."""
        return len(json.dumps(self.to_json(), separators=(",", ":"))) + 2

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> TableEntry:
        """The inverse of to_json."""
        return cls(
            namespace=entry["namespace"],
            name=entry["name"],
            token_sha256=entry["tokenSha256"],
            protocol=entry["protocol"],
            remote_port=entry.get("remotePort"),
            subdomain=entry.get("subdomain"),
            custom_domains=tuple(entry.get("customDomains") or ()),
            bandwidth_bps=entry.get("bandwidthBps"),
            allow_source_ranges=tuple(entry.get("allowSourceRanges") or ()),
            suspended=bool(entry.get("suspended")),
        )


@dataclass(frozen=True)
class TableDocument:
    """One shard of a relay's table, as read from its Secret."""

    relay: str
    shard: int
    entries: list[TableEntry]


def parse_table_json(text: str | bytes, *, whole_ok: bool = False) -> TableDocument:
    """table.json -> its relay, shard and entries; the inverse of table_json. Refuses
    (ValueError) a document of another shard count, or naming a tunnel of another shard: an
    entry must be in exactly one place.

    With `whole_ok`, a whole table as versions before shards wrote it (no "shard") is read
    as shard 0 holding every entry: the operator's restore must hold what an older table
    names until it is rewritten in shards."""
    data = json.loads(text)
    if whole_ok and "shard" not in data and "shards" not in data:
        return TableDocument(data["relay"], 0, [TableEntry.from_json(t) for t in data["tunnels"]])
    relay, shard, shards = data["relay"], data["shard"], data["shards"]
    if shards != TABLE_SHARDS or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ValueError(
            f"table of relay {relay!r}: shard {shard!r} of {shards!r}; this version splits "
            f"tables in {TABLE_SHARDS} shards, 0 to {TABLE_SHARDS - 1}"
        )
    entries = [TableEntry.from_json(t) for t in data["tunnels"]]
    for entry in entries:
        if shard_of(entry.namespace, entry.name) != shard:
            raise ValueError(
                f"table of relay {relay!r}, shard {shard}: tunnel "
                f"{entry.namespace}/{entry.name} belongs to shard "
                f"{shard_of(entry.namespace, entry.name)}"
            )
    return TableDocument(relay, shard, entries)


_SHA256_HEX = frozenset("0123456789abcdef")


def split_by_shard(entries: Iterable[TableEntry]) -> list[list[TableEntry]]:
    """The entries of a relay's table, by shard (TABLE_SHARDS lists, empty ones included)."""
    shards: list[list[TableEntry]] = [[] for _ in range(TABLE_SHARDS)]
    for entry in entries:
        shards[shard_of(entry.namespace, entry.name)].append(entry)
    return shards


def table_documents(relay_name: str, entries: Iterable[TableEntry]) -> list[str]:
    """A whole table as its TABLE_SHARDS documents, in shard order."""
    return [
        table_json(relay_name, part, shard) for shard, part in enumerate(split_by_shard(entries))
    ]


def table_json(relay_name: str, entries: Iterable[TableEntry], shard: int) -> str:
    """{"relay": r, "shard": k, "shards": n, "tunnels": [...]}, sorted by namespace/name, one
    tunnel per line: compact for relays with thousands of tunnels, and readable and diffable
    all the same. Every entry must belong to `shard`."""
    ordered = sorted(entries, key=lambda e: (e.namespace, e.name))
    for entry in ordered:
        if shard_of(entry.namespace, entry.name) != shard:
            raise ValueError(f"tunnel {entry.namespace}/{entry.name} is not of shard {shard}")
    for previous, entry in itertools.pairwise(ordered):
        if (previous.namespace, previous.name) == (entry.namespace, entry.name):
            raise ValueError(f"tunnel {entry.namespace}/{entry.name} is in the table twice")
    lines = [e.line for e in ordered]
    head = (
        '{"relay":'
        + json.dumps(relay_name)
        + f',"shard":{shard},"shards":{TABLE_SHARDS},"tunnels":['
    )
    if not lines:
        return head + "]}\n"
    return head + "\n" + ",\n".join(lines) + "\n]}\n"
