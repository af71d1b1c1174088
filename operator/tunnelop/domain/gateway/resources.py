"""Read-only views of the Gateway API objects and Services the translation needs, parsed from
the API server's JSON. The CRDs validate most of it; what they cannot (or what an older CRD
let through) is read leniently here and judged by the translation, never by an exception."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunnelop.domain.gateway.vocabulary import GROUP

Key = tuple[str, str]  # (namespace, name)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


@dataclass(frozen=True)
class Meta:
    namespace: str
    name: str
    uid: str = ""
    generation: int | None = None
    # RFC 3339, as the API server writes it: compares in time order as text.
    created: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Meta:
        meta = _mapping(body.get("metadata"))
        annotations = {
            k: v for k, v in _mapping(meta.get("annotations")).items() if isinstance(v, str)
        }
        return cls(
            namespace=_text(meta.get("namespace")) or "",
            name=_text(meta.get("name")) or "",
            uid=_text(meta.get("uid")) or "",
            generation=_number(meta.get("generation")),
            created=_text(meta.get("creationTimestamp")) or "",
            annotations=annotations,
        )

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def age_order(self) -> tuple[str, str, str]:
        """The standard's tie-break between conflicting objects: oldest first, then by
        namespace and name."""
        return (self.created, self.namespace, self.name)


@dataclass(frozen=True)
class Reference:
    """A parametersRef (of a GatewayClass or a Gateway's infrastructure)."""

    group: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, value: Any) -> Reference | None:
        ref = _mapping(value)
        if not ref:
            return None
        return cls(
            group=ref.get("group") if isinstance(ref.get("group"), str) else "",
            kind=_text(ref.get("kind")) or "",
            name=_text(ref.get("name")) or "",
            namespace=_text(ref.get("namespace")),
        )


@dataclass(frozen=True)
class GatewayClassView:
    meta: Meta
    controller: str
    parameters: Reference | None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> GatewayClassView:
        spec = _mapping(body.get("spec"))
        return cls(
            meta=Meta.of(body),
            controller=_text(spec.get("controllerName")) or "",
            parameters=Reference.of(spec.get("parametersRef")),
        )


@dataclass(frozen=True)
class RouteKindRef:
    group: str
    kind: str


@dataclass(frozen=True)
class ListenerView:
    name: str
    port: int
    protocol: str
    # allowedRoutes.namespaces.from: Same (the default), All or Selector
    routes_from: str = "Same"
    routes_selector: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    # allowedRoutes.kinds; None when not given (the protocol's own kind)
    route_kinds: tuple[RouteKindRef, ...] | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> ListenerView:
        allowed = _mapping(raw.get("allowedRoutes"))
        namespaces = _mapping(allowed.get("namespaces"))
        kinds = None
        if isinstance(allowed.get("kinds"), list):
            kinds = tuple(
                RouteKindRef(
                    group=k["group"] if isinstance(k.get("group"), str) else GROUP,
                    kind=_text(k.get("kind")) or "",
                )
                for k in _items(allowed["kinds"])
            )
        selector = namespaces.get("selector")
        return cls(
            name=_text(raw.get("name")) or "",
            port=_number(raw.get("port")) or 0,
            protocol=_text(raw.get("protocol")) or "",
            routes_from=_text(namespaces.get("from")) or "Same",
            routes_selector=selector if isinstance(selector, Mapping) else None,
            route_kinds=kinds,
        )


@dataclass(frozen=True)
class AddressRequest:
    """One of a Gateway's spec.addresses."""

    type: str
    value: str | None


@dataclass(frozen=True)
class GatewayView:
    meta: Meta
    class_name: str
    listeners: tuple[ListenerView, ...]
    addresses: tuple[AddressRequest, ...] = ()
    infrastructure_parameters: Reference | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> GatewayView:
        spec = _mapping(body.get("spec"))
        infrastructure = _mapping(spec.get("infrastructure"))
        return cls(
            meta=Meta.of(body),
            class_name=_text(spec.get("gatewayClassName")) or "",
            listeners=tuple(ListenerView.of(raw) for raw in _items(spec.get("listeners"))),
            addresses=tuple(
                AddressRequest(
                    type=_text(a.get("type")) or "IPAddress", value=_text(a.get("value"))
                )
                for a in _items(spec.get("addresses"))
            ),
            infrastructure_parameters=Reference.of(infrastructure.get("parametersRef")),
        )


@dataclass(frozen=True)
class ParentRefView:
    group: str
    kind: str
    name: str
    namespace: str | None = None
    section: str | None = None
    port: int | None = None
    # As written in the route's spec (with group and kind defaulted): what status echoes.
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> ParentRefView:
        group = raw["group"] if isinstance(raw.get("group"), str) else GROUP
        kind = _text(raw.get("kind")) or "Gateway"
        return cls(
            group=group,
            kind=kind,
            name=_text(raw.get("name")) or "",
            namespace=_text(raw.get("namespace")),
            section=_text(raw.get("sectionName")),
            port=_number(raw.get("port")),
            raw={**raw, "group": group, "kind": kind},
        )

    def gateway_key(self, route_namespace: str) -> Key | None:
        """The Gateway this names, None for another kind of parent."""
        if self.group != GROUP or self.kind != "Gateway":
            return None
        return (self.namespace or route_namespace, self.name)


@dataclass(frozen=True)
class BackendRefView:
    group: str
    kind: str
    name: str
    namespace: str | None = None
    port: int | None = None
    weight: int = 1

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> BackendRefView:
        weight = _number(raw.get("weight"))
        return cls(
            group=raw["group"] if isinstance(raw.get("group"), str) else "",
            kind=_text(raw.get("kind")) or "Service",
            name=_text(raw.get("name")) or "",
            namespace=_text(raw.get("namespace")),
            port=_number(raw.get("port")),
            weight=1 if weight is None else weight,
        )


@dataclass(frozen=True)
class RouteView:
    kind: str  # TCPRoute | UDPRoute
    meta: Meta
    parents: tuple[ParentRefView, ...]
    # Each rule's backendRefs (TCPRoute and UDPRoute v1 allow exactly one rule).
    rules: tuple[tuple[BackendRefView, ...], ...]

    @classmethod
    def of(cls, kind: str, body: Mapping[str, Any]) -> RouteView:
        spec = _mapping(body.get("spec"))
        return cls(
            kind=kind,
            meta=Meta.of(body),
            parents=tuple(ParentRefView.of(p) for p in _items(spec.get("parentRefs"))),
            rules=tuple(
                tuple(BackendRefView.of(b) for b in _items(rule.get("backendRefs")))
                for rule in _items(spec.get("rules"))
            ),
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.meta.namespace, self.meta.name)


@dataclass(frozen=True)
class ServiceView:
    """A Service as far as a backendRef needs it: its ports, each with its protocol."""

    namespace: str
    name: str
    ports: frozenset[tuple[int, str]]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ServiceView:
        meta = Meta.of(body)
        ports = frozenset(
            (p["port"], _text(p.get("protocol")) or "TCP")
            for p in _items(_mapping(body.get("spec")).get("ports"))
            if _number(p.get("port")) is not None
        )
        return cls(namespace=meta.namespace, name=meta.name, ports=ports)
