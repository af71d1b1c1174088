"""The objects as the watches last saw them (and as the operator's own writes returned them):
what the controllers read instead of asking the API server, and the indexes the admission
webhook needs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import TunnelKey


@dataclass
class Caches:
    tunnels: dict[TunnelKey, dict[str, Any]] = field(default_factory=dict)
    relays: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The relay Deployments, by relay name.
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every RelayNode as last seen, for admission: known as soon as it is watched, before the
    # relay controller has run its workload.
    relay_views: dict[str, RelayView] = field(default_factory=dict)
    # subdomain -> tunnels that ask for or hold it (for the webhook's uniqueness check)
    subdomains: dict[str, set[TunnelKey]] = field(default_factory=dict)
    # custom domain (lowercase) -> tunnels whose spec.customDomains names it (likewise)
    custom_domains: dict[str, set[TunnelKey]] = field(default_factory=dict)

    def remember_tunnel(self, key: TunnelKey, body: dict[str, Any]) -> None:
        self._index(key, self.tunnels.get(key), remove=True)
        self.tunnels[key] = body
        self._index(key, body)

    def forget_tunnel(self, key: TunnelKey) -> None:
        self._index(key, self.tunnels.pop(key, None), remove=True)

    def _index(self, key: TunnelKey, body: dict[str, Any] | None, remove: bool = False) -> None:
        if not body:
            return
        spec = body.get("spec") or {}
        subdomains = {spec.get("subdomain"), (body.get("status") or {}).get("subdomain")}
        _update(self.subdomains, key, subdomains, remove)
        domains = spec.get("customDomains")
        hosts = (
            {d.lower() for d in domains if isinstance(d, str)} if isinstance(domains, list) else ()
        )
        _update(self.custom_domains, key, hosts, remove)


def _update(
    index: dict[str, set[TunnelKey]], key: TunnelKey, names: Iterable[Any], remove: bool
) -> None:
    for name in names:
        if not isinstance(name, str):
            continue
        holders = index.setdefault(name, set())
        if remove:
            holders.discard(key)
            if not holders:
                del index[name]
        else:
            holders.add(key)
