"""The Gateway API's objects as last seen, and the watches that keep them: GatewayClasses,
Gateways, TCPRoutes and UDPRoutes (each watched while its CRD serves v1), and the Services
and Namespaces their routes name (watched while any of those CRDs is installed).

The operator runs without the Gateway API: it watches CustomResourceDefinitions, starts a
kind's watch when its CRD appears (established, serving v1) and stops it when the CRD goes,
so installing the CRDs later needs no restart. Every change only updates a cache and asks
for one reconcile of the whole translation (controllers/gateways.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tunnelop.domain import conditions
from tunnelop.domain.gateway import GROUP, ROUTE_KIND_LABEL, Key, ServiceView, TunnelSeen
from tunnelop.platform import logs
from tunnelop.platform.informer import Informer
from tunnelop.platform.kube import Kube

log = logs.get(__name__)

# Plural -> kind, of the Gateway API kinds served (v1, standard channel).
KINDS = {
    "gatewayclasses": "GatewayClass",
    "gateways": "Gateway",
    "tcproutes": "TCPRoute",
    "udproutes": "UDPRoute",
}
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# What routes name: watched only while some Gateway API kind is.
SUPPORT_PATHS = {"services": "/api/v1/services", "namespaces": "/api/v1/namespaces"}


def crd_serves_v1(body: dict[str, Any]) -> str | None:
    """The plural of a Gateway API kind tunnelop serves if `body` is its CRD, established
    and serving v1; None otherwise."""
    spec = body.get("spec") or {}
    plural = (spec.get("names") or {}).get("plural")
    if spec.get("group") != GROUP or plural not in KINDS:
        return None
    if not conditions.is_true((body.get("status") or {}).get("conditions"), "Established"):
        return None
    served = any(v.get("name") == "v1" and v.get("served") for v in spec.get("versions") or [])
    return plural if served else None


@dataclass
class GatewayApi:
    kube: Kube
    # Asks for a reconcile of the translation.
    poke: Callable[[], None]
    health: Any = None
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    gateways: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # (kind, namespace, name) -> route
    routes: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    services: dict[Key, ServiceView] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    # The Tunnels made for routes, as last seen (fed by the Tunnel informer).
    tunnels: dict[Key, TunnelSeen] = field(default_factory=dict)
    # Tunnels whose last write was refused, with the API server's message.
    write_errors: dict[Key, str] = field(default_factory=dict)
    informers: dict[str, Informer] = field(default_factory=dict)
    _crds: Informer | None = None
    _served: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._crds = Informer(self.kube, CRD_PATH, self._on_crd)
        self._crds.start()
        self._add_health(self._crds)
        self._background(self._say_when_absent())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for informer in [*self.informers.values(), *([self._crds] if self._crds else [])]:
            await informer.stop()

    def installed(self) -> bool:
        return bool(self._served)

    def synced(self) -> bool:
        """Every watch that runs has listed once: the caches are whole."""
        running = [*self.informers.values(), *([self._crds] if self._crds else [])]
        return all(i.synced.is_set() for i in running)

    # ---- CRDs ---------------------------------------------------------------------------

    async def _say_when_absent(self) -> None:
        assert self._crds is not None
        await self._crds.synced.wait()
        if not self._served:
            log.info(
                "Gateway API CRDs not installed: no Gateway API watch runs; they start when "
                "the CRDs (gateway.networking.k8s.io v1) are installed",
            )

    def _on_crd(self, kind: str, body: dict[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        plural = name.split(".", 1)[0]
        if plural not in KINDS or not name.endswith(f".{GROUP}"):
            return
        serving = kind != "DELETED" and crd_serves_v1(body) == plural
        if serving and plural not in self._served:
            self._served.add(plural)
            log.info("Gateway API kind served: watching it", kind=KINDS[plural])
            self._watch(plural, f"/apis/{GROUP}/v1/{plural}", self._handler(plural))
            for support, path in SUPPORT_PATHS.items():
                if support not in self.informers:
                    self._watch(support, path, getattr(self, f"_on_{support}"))
        elif not serving and plural in self._served:
            self._served.discard(plural)
            log.info("Gateway API kind no longer served: its watch stops", kind=KINDS[plural])
            self._unwatch(plural)
            self._forget(plural)
            if not self._served:
                for support in SUPPORT_PATHS:
                    self._unwatch(support)
                self.services.clear()
                self.namespaces.clear()
            self.poke()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch(self, name: str, path: str, handler: Callable[[str, dict[str, Any]], None]) -> None:
        informer = Informer(self.kube, path, handler)
        self.informers[name] = informer
        informer.start()
        self._add_health(informer)

    def _unwatch(self, name: str) -> None:
        informer = self.informers.pop(name, None)
        if informer is not None:
            if self.health is not None:
                self.health.remove_check(f"informer {informer.path}")
            self._background(informer.stop())

    def _add_health(self, informer: Informer) -> None:
        if self.health is not None:
            self.health.add_check(f"informer {informer.path}", informer.healthy)

    def _forget(self, plural: str) -> None:
        if plural == "gatewayclasses":
            self.classes.clear()
        elif plural == "gateways":
            self.gateways.clear()
        else:
            route_kind = KINDS[plural]
            self.routes = {k: v for k, v in self.routes.items() if k[0] != route_kind}

    # ---- objects ------------------------------------------------------------------------

    def _handler(self, plural: str) -> Callable[[str, dict[str, Any]], None]:
        def on_object(kind: str, body: dict[str, Any]) -> None:
            cache, key = self._cache_of(plural, body)
            if kind == "DELETED":
                cache.pop(key, None)
            else:
                cache[key] = body
            self.poke()

        return on_object

    def _cache_of(self, plural: str, body: dict[str, Any]) -> tuple[dict[Any, Any], Any]:
        meta = body.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        if plural == "gatewayclasses":
            return self.classes, name
        if plural == "gateways":
            return self.gateways, (namespace, name)
        return self.routes, (KINDS[plural], namespace, name)

    def remember(self, plural: str, body: dict[str, Any], *, replacing: str | None) -> None:
        """Keep an object as the operator's own write returned it (or as read again), unless
        the cache holds a version other than `replacing` (a newer event came first)."""
        cache, key = self._cache_of(plural, body)
        cached = cache.get(key)
        if cached is None:
            return  # deleted meanwhile
        if replacing is None or cached["metadata"].get("resourceVersion") == replacing:
            cache[key] = body

    def _on_services(self, kind: str, body: dict[str, Any]) -> None:
        view = ServiceView.of(body)
        key = (view.namespace, view.name)
        before = self.services.get(key)
        if kind == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = view
        if (None if kind == "DELETED" else view) != before:
            self.poke()

    def _on_namespaces(self, kind: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        labels = None if kind == "DELETED" else dict(meta.get("labels") or {})
        if labels is None:
            before = self.namespaces.pop(name, None)
        else:
            before = self.namespaces.get(name)
            self.namespaces[name] = labels
        if labels != before:
            self.poke()

    def on_tunnel(self, kind: str, body: dict[str, Any]) -> None:
        """A Tunnel changed (from the Tunnel informer): one made for a route is followed."""
        meta = body.get("metadata") or {}
        if ROUTE_KIND_LABEL not in (meta.get("labels") or {}):
            return
        key = (meta.get("namespace", ""), meta.get("name", ""))
        seen = None if kind == "DELETED" else TunnelSeen.of(body)
        before = self.tunnels.pop(key, None) if seen is None else self.tunnels.get(key)
        if seen is not None:
            self.tunnels[key] = seen
        if seen != before:
            self.poke()
