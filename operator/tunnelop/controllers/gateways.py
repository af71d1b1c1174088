"""The Gateway API controller: GatewayClasses of controllerName tunnelop.dev/gateway-controller,
their Gateways, and the TCPRoutes and UDPRoutes attached to them.

Read, translate, write: the caches (gateway_api.GatewayApi and the operator's own) become a
World, domain/gateway translates it, and this module applies the Tunnels wanted, deletes
the Tunnels it made that are no longer wanted, and writes the statuses. One reconcile
covers the whole translation (a route's status depends on every Gateway it names, a
listener's on every route): changes in a burst coalesce into one pass, and a pass that
changes nothing writes nothing.

The operator writes only the status of Gateway API objects (merge patches of the status
subresource, guarded by resourceVersion: a stale cache retries instead of overwriting),
keeping the conditions and route parents entries of other controllers, and the Tunnels it
owns through their routes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from tunnelop.builders.route_tunnel import covers, route_tunnel
from tunnelop.controllers.gateway_api import KINDS, GatewayApi
from tunnelop.controllers.state import Runtime
from tunnelop.domain.gateway import (
    GROUP,
    GatewayClassView,
    GatewayView,
    Key,
    RelayState,
    RouteView,
    Translation,
    World,
    class_status,
    gateway_status,
    route_parents,
    translate,
)
from tunnelop.platform import logs
from tunnelop.platform.kube import GROUP_VERSION, KubeError
from tunnelop.platform.workqueue import Requeue, WorkQueue

log = logs.get(__name__)
# The one key of the Gateway API work queue: every pass translates everything.
EVERYTHING = "gateway-api"
PLURALS = {kind: plural for plural, kind in KINDS.items()}


def start(rt: Runtime, health: Any = None) -> GatewayApi:
    """The Gateway API caches and watches, and their work queue (one worker: one pass at a
    time, each over everything)."""
    queue: WorkQueue[str] = WorkQueue("gateways", lambda _: reconcile(rt), 1)
    api = GatewayApi(rt.kube, lambda: queue.add(EVERYTHING), health=health)
    for body in rt.cache.tunnels.values():
        api.on_tunnel("ADDED", body)
    rt.gateway_api, rt.gateway_queue = api, queue
    api.start()
    queue.start()
    return api


def poke(rt: Runtime) -> None:
    """Something a Gateway may depend on changed (a relay, a pool): translate again, if the
    Gateway API is in use at all."""
    if rt.gateway_api is not None and rt.gateway_api.gateways:
        rt.gateway_api.poke()


async def reconcile(rt: Runtime) -> None:
    api = rt.gateway_api
    if api is None or not api.installed():
        return
    if not api.synced():
        raise Requeue(0.5)  # never delete a Tunnel for a route not listed yet
    world = world_of(rt, api)
    result = translate(world)
    errors = await _write_tunnels(rt, api, result)
    if errors != api.write_errors:
        api.write_errors = errors
        result = translate(replace(world, write_errors=errors))
    await _write_statuses(rt, api, result)


def world_of(rt: Runtime, api: GatewayApi) -> World:
    routes = []
    for (kind, _, _), body in api.routes.items():
        routes.append(RouteView.of(kind, body))
    return World(
        classes={name: GatewayClassView.of(b) for name, b in api.classes.items()},
        gateways={key: GatewayView.of(b) for key, b in api.gateways.items()},
        routes=routes,
        services=api.services,
        namespace_labels=api.namespaces,
        relays={
            name: RelayState.of(body, rt.cache.relay_views.get(name))
            for name, body in rt.cache.relays.items()
        },
        pools=set(rt.cache.pools),
        tunnels=dict(api.tunnels),
        port_holders=PortHolders(rt),
        write_errors=dict(api.write_errors),
    )


class PortHolders(Mapping[tuple[str, str, int], Key]):
    """(relay, tcp | udp, port) -> the Tunnel holding it, read from the allocation table one
    relay at a time, as the translation asks."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._by_relay: dict[str, dict[tuple[str, int], Key]] = {}

    def _of(self, relay: str) -> dict[tuple[str, int], Key]:
        if relay not in self._by_relay:
            self._by_relay[relay] = {
                (a.protocol, a.port): a.key
                for a in self._rt.table.allocations_on(relay)
                if a.port is not None
            }
        return self._by_relay[relay]

    def __getitem__(self, key: tuple[str, str, int]) -> Key:
        relay, family, port = key
        return self._of(relay)[(family, port)]

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        for view in self._rt.table.relays():
            for family, port in self._of(view.name):
                yield (view.name, family, port)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# ---- Tunnels ------------------------------------------------------------------------------


async def _write_tunnels(rt: Runtime, api: GatewayApi, result: Translation) -> dict[Key, str]:
    """Apply the Tunnels wanted, delete the others made for routes; the refused writes."""
    errors: dict[Key, str] = {}
    for key, want in sorted(result.tunnels.items()):
        manifest = route_tunnel(want)
        if covers(rt.cache.tunnels.get(key), manifest):
            continue
        try:
            await rt.kube.apply(manifest)
        except KubeError as exc:
            if not 400 <= exc.status < 500 or exc.status == 429:
                raise
            errors[key] = exc.message or f"HTTP {exc.status}"
            log.warning(
                "Tunnel for a route refused", tunnel=f"{key[0]}/{key[1]}", error=exc.message
            )
            continue
        log.info(
            "Tunnel for a route applied",
            tunnel=f"{key[0]}/{key[1]}",
            route=f"{want.route.kind} {want.route.meta.namespace}/{want.route.meta.name}",
            listener=f"{want.gateway[0]}/{want.gateway[1]}/{want.listener}",
        )
    for key in sorted(set(api.tunnels) - set(result.tunnels)):
        if not _made_for_a_route(rt.cache.tunnels.get(key)):
            continue
        await rt.kube.delete(GROUP_VERSION, "Tunnel", key[1], key[0])
        log.info("Tunnel for a route deleted: no longer wanted", tunnel=f"{key[0]}/{key[1]}")
    return errors


def _made_for_a_route(body: dict[str, Any] | None) -> bool:
    """Only what this controller made is deleted: a Tunnel owned by a TCPRoute or UDPRoute."""
    if body is None or body["metadata"].get("deletionTimestamp"):
        return False
    owners = body["metadata"].get("ownerReferences") or []
    return any(
        o.get("apiVersion", "").startswith(f"{GROUP}/") and o.get("kind") in PLURALS for o in owners
    )


# ---- statuses -----------------------------------------------------------------------------


async def _write_statuses(rt: Runtime, api: GatewayApi, result: Translation) -> None:
    for name, (view, verdict) in result.classes.items():
        body = api.classes.get(name)
        if body is not None:
            old = body.get("status") or {}
            new = class_status(old, verdict, view.meta.generation)
            await _patch_status(api, "gatewayclasses", body, old, new)
    for key, outcome in result.gateways.items():
        body = api.gateways.get(key)
        if body is not None:
            old = body.get("status") or {}
            await _patch_status(api, "gateways", body, old, gateway_status(old, outcome))
    for key, body in list(api.routes.items()):
        old = body.get("status") or {}
        parents = route_parents(old, result.routes.get(key))
        if parents != (old.get("parents") or []):
            await _patch_status(api, PLURALS[key[0]], body, old, {"parents": parents})


async def _patch_status(
    api: GatewayApi, plural: str, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]
) -> None:
    if all(old.get(k) == v for k, v in new.items()):
        return
    meta = body["metadata"]
    namespace = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    path = f"/apis/{GROUP}/v1{namespace}/{plural}/{meta['name']}/status"
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": new}
    try:
        written = await api.kube.request(
            "PATCH", path, patch, content_type="application/merge-patch+json"
        )
    except KubeError as exc:
        if exc.status == 404:
            return  # deleted meanwhile
        if exc.status != 409:
            raise
        # Changed since the cache saw it: read it again and translate again.
        current = await api.kube.request("GET", path.removesuffix("/status"))
        if current:
            api.remember(plural, current, replacing=None)
        raise Requeue(0.1) from None
    if written:
        api.remember(plural, written, replacing=meta["resourceVersion"])
