"""The objects as the watches last saw them (and as the operator's own writes returned them):
what the controllers read instead of asking the API server, and the indexes the admission
webhook needs.

The event loop is the only writer. The admission webhook reads from a thread of its own
(controllers/webhook.py), so what it reads — relay views, tunnels and their indexes,
quotas — changes only under `lock`, which the webhook holds while it reviews."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tunnelop.domain.quota import Limits, limits_of, parse_quotas
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import TunnelKey
from tunnelop.platform import logs

log = logs.get(__name__)


@dataclass(frozen=True)
class ServiceTarget:
    """What the client controller needs to know of a Service: the ports a client may forward
    to, as (port, protocol); `any_port` for a headless or ExternalName Service, whose name
    resolves to pods or another host, where any port may serve."""

    ports: frozenset[tuple[int, str]]
    any_port: bool = False

    @classmethod
    def of(cls, body: dict[str, Any]) -> ServiceTarget:
        spec = body.get("spec") or {}
        any_port = spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None"
        ports = frozenset(
            (p["port"], p.get("protocol") or "TCP")
            for p in spec.get("ports") or []
            if isinstance(p.get("port"), int)
        )
        return cls(ports, any_port)


# What no controller reads of a Tunnel and would cost memory per tunnel: who wrote which
# field (several managers per object), and kubectl's copy of the whole applied object.
_UNREAD_METADATA = ("managedFields",)
_UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


# Strings up to this long are interned when kept: keys, reasons, protocols, timestamps and
# relay names repeat across thousands of tunnels, and each watch event parses its own copies.
_INTERNED_UP_TO = 64


def slim_tunnel(body: dict[str, Any]) -> dict[str, Any]:
    """The Tunnel as kept in memory: without what no controller reads, and with its short
    strings shared with every other tunnel's."""
    meta = body.get("metadata") or {}
    kept = {k: v for k, v in meta.items() if k not in _UNREAD_METADATA}
    annotations = meta.get("annotations")
    if annotations:
        kept["annotations"] = {k: v for k, v in annotations.items() if k not in _UNREAD_ANNOTATIONS}
    return _shared({**body, "metadata": kept})


def _shared(value: Any) -> Any:
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= _INTERNED_UP_TO:
        return sys.intern(value)
    return value


@dataclass
class Caches:
    tunnels: dict[TunnelKey, dict[str, Any]] = field(default_factory=dict)
    relays: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The relay Deployments, by relay name.
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # InCluster tunnels' frpc Deployments, by tunnel.
    client_deployments: dict[TunnelKey, dict[str, Any]] = field(default_factory=dict)
    # Every Service, by (namespace, name): what an InCluster tunnel's target needs of it.
    services: dict[TunnelKey, ServiceTarget] = field(default_factory=dict)
    # Every RelayNode as last seen, for admission: known as soon as it is watched, before the
    # relay controller has run its workload.
    relay_views: dict[str, RelayView] = field(default_factory=dict)
    # subdomain -> tunnels that ask for or hold it (for the webhook's uniqueness check)
    subdomains: dict[str, set[TunnelKey]] = field(default_factory=dict)
    # custom domain (lowercase) -> tunnels whose spec.customDomains names it (likewise)
    custom_domains: dict[str, set[TunnelKey]] = field(default_factory=dict)
    # namespace -> its tunnels' keys (what a namespace's quotas count)
    namespace_tunnels: dict[str, set[TunnelKey]] = field(default_factory=dict)
    # namespace -> TunnelQuota name -> object
    quotas: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Services of the load-balancer class tunnelop.dev/relay by (namespace, name), slimmed
    # to what the LoadBalancer controller reads; Services of other classes are not kept.
    load_balancers: dict[TunnelKey, dict[str, Any]] = field(default_factory=dict)
    # namespace -> the effective limits of its quotas, computed once per quota change
    _limits: dict[str, Limits] = field(default_factory=dict)
    # Held by the writers of what admission reads, and by admission while it reads.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # RelayNodes as admission sees them ----------------------------------------------------

    def remember_relay_view(self, view: RelayView) -> None:
        with self.lock:
            self.relay_views[view.name] = view

    def forget_relay_view(self, name: str) -> None:
        with self.lock:
            self.relay_views.pop(name, None)

    # Tunnels --------------------------------------------------------------------------------

    def remember_tunnel(self, key: TunnelKey, body: dict[str, Any]) -> None:
        body = slim_tunnel(body)
        with self.lock:
            self._index(key, self.tunnels.get(key), remove=True)
            self.tunnels[key] = body
            self._index(key, body)
            self.namespace_tunnels.setdefault(key[0], set()).add(key)

    def forget_tunnel(self, key: TunnelKey) -> None:
        with self.lock:
            self._index(key, self.tunnels.pop(key, None), remove=True)
            keys = self.namespace_tunnels.get(key[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.namespace_tunnels[key[0]]

    def tunnels_in(self, namespace: str) -> list[TunnelKey]:
        return sorted(self.namespace_tunnels.get(namespace, ()))

    # TunnelQuotas ----------------------------------------------------------------------------

    def remember_quota(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with self.lock:
            self.quotas.setdefault(meta["namespace"], {})[meta["name"]] = body
            self._limits.pop(meta["namespace"], None)

    def forget_quota(self, namespace: str, name: str) -> None:
        with self.lock:
            found = self.quotas.get(namespace)
            if found is not None:
                found.pop(name, None)
                if not found:
                    del self.quotas[namespace]
            self._limits.pop(namespace, None)

    def quota(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.quotas.get(namespace, {}).get(name)

    def quotas_in(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's TunnelQuota objects, by name."""
        found = self.quotas.get(namespace, {})
        return [found[name] for name in sorted(found)]

    def limits(self, namespace: str) -> Limits:
        """The namespace's effective limits (the tightest of its quotas; none without one).
        A quota that does not validate is skipped, with a warning."""
        limits = self._limits.get(namespace)
        if limits is None:
            with self.lock:
                quotas, errors = parse_quotas(self.quotas_in(namespace))
                limits = self._limits[namespace] = limits_of(quotas)
            for error in errors:
                log.warning("TunnelQuota ignored", namespace=namespace, error=error)
        return limits

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
