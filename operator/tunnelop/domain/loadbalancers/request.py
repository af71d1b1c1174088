"""What a Service of the load-balancer class `tunnelop.dev/relay` asks for: one tunnel per
port, placed and limited by its annotations. Pure; the Service is a plain dict as the API
server returns it.

The Service belongs to its owner (and to Git): everything here only reads it. A problem with
the Service as a whole (a bad annotation) raises InvalidService with one message per problem,
each naming the annotation or field and what it may be; a problem with one port (SCTP, source
ranges on udp) refuses that port only, and the others are still served.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tunnelop.api.v1alpha1 import RelayPlacement, error_messages
from tunnelop.api.v1alpha1.formats import Cidr, check_cidr
from tunnelop.api.v1alpha1.quantity import PositiveBitRate

LOAD_BALANCER_CLASS = "tunnelop.dev/relay"
# On each Tunnel made for a Service: the Service's name (the Service is also its controller).
SERVICE_LABEL = "tunnelop.dev/service"

POOL_ANNOTATION = "tunnelop.dev/pool"
RELAY_NODE_ANNOTATION = "tunnelop.dev/relay-node"
NODE_SELECTOR_ANNOTATION = "tunnelop.dev/relay-node-selector"
BANDWIDTH_ANNOTATION = "tunnelop.dev/bandwidth"
# Kubernetes' own fallback for spec.loadBalancerSourceRanges, honoured as Kubernetes does.
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
READ_ANNOTATIONS = (
    POOL_ANNOTATION,
    RELAY_NODE_ANNOTATION,
    NODE_SELECTOR_ANNOTATION,
    BANDWIDTH_ANNOTATION,
    SOURCE_RANGES_ANNOTATION,
)

# A Tunnel's name is also a label value (on its credentials Secret, and on what runs its
# client): at most 63 characters.
TUNNEL_NAME_MAX = 63
PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}
# Kubernetes reads a range list that holds this as "everyone" (service.IsAllowAll).
ALLOW_ALL = "0.0.0.0/0"

UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
SOURCE_RANGES_UNSUPPORTED = "SourceRangesUnsupported"

_BANDWIDTH = TypeAdapter(PositiveBitRate)
_CIDR = TypeAdapter(Cidr)


class InvalidService(ValueError):
    """The Service cannot be served as it is; `problems` names each annotation or field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServicePort:
    """One port of the Service, as Kubernetes names it in Events and status."""

    port: int
    protocol: str  # TCP, UDP or SCTP
    name: str | None = None

    def __str__(self) -> str:
        named = f" ({self.name})" if self.name else ""
        return f"{self.port}/{self.protocol}{named}"


@dataclass(frozen=True)
class PortTunnel:
    """The Tunnel that serves one port of the Service."""

    service_port: ServicePort
    name: str
    protocol: str  # tcp or udp


@dataclass(frozen=True)
class PortRefused:
    """A port of the Service that gets no Tunnel, and why."""

    service_port: ServicePort
    reason: str
    message: str


@dataclass(frozen=True)
class ServiceRequest:
    """What the Service asks of the relays."""

    placement: dict[str, Any] = field(default_factory=dict)  # spec.relay of its Tunnels
    bandwidth: str | None = None
    source_ranges: tuple[str, ...] = ()
    tunnels: tuple[PortTunnel, ...] = ()
    refused: tuple[PortRefused, ...] = ()


def is_relay_load_balancer(service: dict[str, Any]) -> bool:
    """Of type LoadBalancer and of the class tunnelop.dev/relay: the only Services served."""
    spec = service.get("spec") if isinstance(service, dict) else None
    return (
        isinstance(spec, dict)
        and spec.get("type") == "LoadBalancer"
        and spec.get("loadBalancerClass") == LOAD_BALANCER_CLASS
    )


def slim(service: dict[str, Any]) -> dict[str, Any]:
    """The part of a Service the controller keeps in memory: what request_of and the status
    report read, nothing more."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    annotations = meta.get("annotations") or {}
    kept_meta = {
        k: meta[k]
        for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
        if k in meta
    }
    read = {k: v for k, v in annotations.items() if k in READ_ANNOTATIONS}
    if read:
        kept_meta["annotations"] = read
    kept_spec = {
        k: spec[k]
        for k in ("type", "loadBalancerClass", "ports", "loadBalancerSourceRanges")
        if k in spec
    }
    load_balancer = (service.get("status") or {}).get("loadBalancer") or {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": kept_meta,
        "spec": kept_spec,
        "status": {"loadBalancer": load_balancer},
    }


def request_of(service: dict[str, Any]) -> ServiceRequest:
    """The Tunnels the Service asks for; InvalidService when an annotation or field is
    wrong (every problem named, not just the first)."""
    meta = service.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidService(["metadata.name: the Service has no name"])
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    spec = service.get("spec") or {}
    problems: list[str] = []
    placement = _placement(annotations, problems)
    bandwidth = _bandwidth(annotations, problems)
    ranges = _source_ranges(spec, annotations, problems)
    ports = _ports(spec, problems)
    if problems:
        raise InvalidService(problems)
    tunnels: list[PortTunnel] = []
    refused: list[PortRefused] = []
    for port in ports:
        protocol = PROTOCOLS.get(port.protocol)
        if protocol is None:
            refused.append(
                PortRefused(
                    port,
                    UNSUPPORTED_PROTOCOL,
                    f"port {port}: protocol {port.protocol} is not supported; a relay carries "
                    "TCP and UDP",
                )
            )
        elif ranges and protocol == "udp":
            refused.append(
                PortRefused(
                    port,
                    SOURCE_RANGES_UNSUPPORTED,
                    f"port {port}: the relay cannot restrict a UDP port to "
                    "spec.loadBalancerSourceRanges (it sees no connection to check, only "
                    "packets); remove the ranges or this port, or serve it over TCP",
                )
            )
        else:
            tunnels.append(PortTunnel(port, tunnel_name(name, port.port, protocol), protocol))
    return ServiceRequest(placement, bandwidth, ranges, tuple(tunnels), tuple(refused))


def tunnel_name(service: str, port: int, protocol: str) -> str:
    """`<service>-<port>-<protocol>`, e.g. web-443-tcp: unique per Service (a Service has one
    port per number and protocol) and across Services (the last two parts are always the
    port's). A Service name too long for that keeps a prefix and a digest of the whole name."""
    suffix = f"-{port}-{protocol}"
    if len(service) + len(suffix) <= TUNNEL_NAME_MAX:
        return service + suffix
    digest = hashlib.sha256(service.encode()).hexdigest()[:8]
    keep = TUNNEL_NAME_MAX - len(suffix) - len(digest) - 1
    return f"{service[:keep].rstrip('-')}-{digest}{suffix}"


# ---- pieces ----------------------------------------------------------------------------


def _placement(annotations: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    for annotation, key in ((POOL_ANNOTATION, "pool"), (RELAY_NODE_ANNOTATION, "node")):
        value = annotations.get(annotation)
        if value is None:
            continue
        try:
            RelayPlacement.model_validate({key: value})
        except ValidationError as error:
            problems += [_about(annotation, m) for m in error_messages(error)]
            continue
        placement[key] = value
    selector = annotations.get(NODE_SELECTOR_ANNOTATION)
    if selector is not None:
        labels = _parse_selector(selector, problems)
        if labels is not None:
            try:
                RelayPlacement.model_validate({"nodeSelector": labels})
            except ValidationError as error:
                problems += [_about(NODE_SELECTOR_ANNOTATION, m) for m in error_messages(error)]
            else:
                placement["nodeSelector"] = labels
    return placement


def _parse_selector(text: Any, problems: list[str]) -> dict[str, str] | None:
    """Parse key=value,key2=value2 (equality only: the RelayNodes' labels must match)."""
    shape = "comma-separated key=value pairs such as 'region=eu,tier=paid'"
    if not isinstance(text, str) or not text.strip():
        problems.append(_about(NODE_SELECTOR_ANNOTATION, f"must be {shape}, got {text!r}"))
        return None
    labels: dict[str, str] = {}
    for pair in text.split(","):
        key, equals, value = pair.strip().partition("=")
        if not equals or not key.strip() or "!" in key or value.startswith("="):
            problems.append(
                _about(NODE_SELECTOR_ANNOTATION, f"must be {shape}, got {pair.strip()!r}")
            )
            return None
        key = key.strip()
        if key in labels:
            problems.append(_about(NODE_SELECTOR_ANNOTATION, f"names {key!r} twice"))
            return None
        labels[key] = value.strip()
    return labels


def _bandwidth(annotations: dict[str, Any], problems: list[str]) -> str | None:
    value = annotations.get(BANDWIDTH_ANNOTATION)
    if value is None:
        return None
    try:
        return _BANDWIDTH.validate_python(value)
    except ValidationError as error:
        problems += [f"annotation {BANDWIDTH_ANNOTATION}: {m}" for m in error_messages(error)]
        return None


def _source_ranges(
    spec: dict[str, Any], annotations: dict[str, Any], problems: list[str]
) -> tuple[str, ...]:
    """spec.loadBalancerSourceRanges, else the annotation, as Kubernetes reads them; a list
    that holds 0.0.0.0/0 lets everyone in, as Kubernetes says. Host bits are cleared, as
    the API server accepts them in the field but a Tunnel does not."""
    field_ranges = spec.get("loadBalancerSourceRanges")
    if field_ranges:
        where = "spec.loadBalancerSourceRanges"
        texts = field_ranges if isinstance(field_ranges, list) else [field_ranges]
    else:
        where = f"annotation {SOURCE_RANGES_ANNOTATION}"
        raw = annotations.get(SOURCE_RANGES_ANNOTATION)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return ()
        texts = raw.split(",") if isinstance(raw, str) else [raw]
    ranges: list[str] = []
    for text in texts:
        network = _network(text)
        if network is None:
            problems.append(
                f"{where}: each range must be a CIDR such as 203.0.113.0/24 or "
                f"2001:db8::/32, got {text!r}"
            )
            continue
        if network not in ranges:
            ranges.append(network)
    if ALLOW_ALL in ranges:
        return ()
    return tuple(sorted(ranges))


def _network(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        network = str(ipaddress.ip_network(text.strip(), strict=False))
        check_cidr(network)
        _CIDR.validate_python(network)
    except ValueError:  # ValidationError is one too
        return None
    return network


def _ports(spec: dict[str, Any], problems: list[str]) -> list[ServicePort]:
    ports = spec.get("ports")
    if not isinstance(ports, list) or not ports:
        problems.append("spec.ports: a LoadBalancer Service needs at least one port")
        return []
    found: list[ServicePort] = []
    for index, port in enumerate(ports):
        number = port.get("port") if isinstance(port, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            problems.append(f"spec.ports[{index}].port: must be 1-65535, got {number!r}")
            continue
        protocol = str(port.get("protocol") or "TCP")
        if any((p.port, p.protocol) == (number, protocol) for p in found):
            problems.append(f"spec.ports[{index}]: {number}/{protocol} is listed twice")
            continue
        name = port.get("name") or None
        found.append(ServicePort(number, protocol, None if name is None else str(name)))
    return found


def _about(annotation: str, message: str) -> str:
    """A RelayPlacement error about an annotation's value, named as the user wrote it: the
    model's field name (`pool: ...`) is replaced by the annotation's."""
    _, colon, rest = message.partition(": ")
    return f"annotation {annotation}: {rest if colon else message}"
