"""The objects as the watches last saw them (and as the operator's own writes returned them):
what the controllers read instead of asking the API server, and the indexes the admission
webhook needs."""

from __future__ import annotations

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

    def remember_tunnel(self, key: TunnelKey, body: dict[str, Any]) -> None:
        self._index_subdomain(key, self.tunnels.get(key), remove=True)
        self.tunnels[key] = body
        self._index_subdomain(key, body)

    def forget_tunnel(self, key: TunnelKey) -> None:
        self._index_subdomain(key, self.tunnels.pop(key, None), remove=True)

    def _index_subdomain(
        self, key: TunnelKey, body: dict[str, Any] | None, remove: bool = False
    ) -> None:
        if not body:
            return
        for sub in {
            (body.get("spec") or {}).get("subdomain"),
            (body.get("status") or {}).get("subdomain"),
        }:
            if not isinstance(sub, str):
                continue
            holders = self.subdomains.setdefault(sub, set())
            if remove:
                holders.discard(key)
                if not holders:
                    del self.subdomains[sub]
            else:
                holders.add(key)
