"""The allocation table as the agent consults it: one immutable index per version of the
table, swapped whole when a new version arrives, so a plugin call never sees half an update.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from tunnelop.contract.table import TableEntry

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allowed:
    """One tunnel's entry, with what the hot path needs pre-computed."""

    entry: TableEntry
    # What frps calls the proxy: frpc prefixes the proxy name with its user (the namespace).
    proxy_name: str
    networks: tuple[Network, ...]
    # Host names lowercased, as frps's vhost router compares them.
    subdomain: str | None = None
    domains: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.entry.namespace}/{self.entry.name}"


@dataclass(frozen=True)
class TableIndex:
    relay: str
    by_tunnel: dict[str, Allowed] = field(default_factory=dict)
    by_proxy: dict[str, Allowed] = field(default_factory=dict)

    @classmethod
    def build(cls, relay: str, entries: Iterable[TableEntry]) -> TableIndex:
        by_tunnel: dict[str, Allowed] = {}
        by_proxy: dict[str, Allowed] = {}
        for entry in entries:
            allowed = Allowed(
                entry=entry,
                proxy_name=proxy_name(entry.namespace, entry.name),
                networks=tuple(
                    ipaddress.ip_network(cidr, strict=False) for cidr in entry.allow_source_ranges
                ),
                subdomain=entry.subdomain.lower() if entry.subdomain else None,
                domains=frozenset(d.lower() for d in entry.custom_domains),
            )
            by_tunnel[allowed.key] = allowed
            by_proxy[allowed.proxy_name] = allowed
        return cls(relay, by_tunnel, by_proxy)

    @classmethod
    def union(cls, relay: str, shards: Iterable[TableIndex]) -> TableIndex:
        """The index of a whole table from its shards' (a tunnel is in one shard only)."""
        by_tunnel: dict[str, Allowed] = {}
        by_proxy: dict[str, Allowed] = {}
        for shard in shards:
            by_tunnel.update(shard.by_tunnel)
            by_proxy.update(shard.by_proxy)
        return cls(relay, by_tunnel, by_proxy)

    def __len__(self) -> int:
        return len(self.by_tunnel)


def proxy_name(namespace: str, tunnel: str) -> str:
    """frps's name of a tunnel's proxy: `<user>.<name>`, with user = namespace. A namespace
    has no dots, so the first dot splits it back."""
    return f"{namespace}.{tunnel}"


def split_proxy_name(name: str) -> tuple[str, str] | None:
    namespace, dot, tunnel = name.partition(".")
    return (namespace, tunnel) if dot and namespace and tunnel else None
