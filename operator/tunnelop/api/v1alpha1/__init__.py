"""tunnelop.dev/v1alpha1: Tunnel, RelayNode, RelayPool and TunnelQuota.

The pydantic models here are the single source of truth of the API: the admission webhook
and the operator validate with them, and `tunnelop crds` generates the CRDs from them.
"""

from tunnelop.api.v1alpha1.common import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    KindInfo,
    ObjectMeta,
    PrinterColumn,
    Resource,
    error_messages,
    find_condition,
)
from tunnelop.api.v1alpha1.ports import PortSpan, merge_spans, parse_port_span
from tunnelop.api.v1alpha1.quantity import (
    bits_per_second,
    byte_count,
    format_quantity,
    parse_quantity,
)
from tunnelop.api.v1alpha1.relaynode import (
    RelayAllocation,
    RelayCapacity,
    RelayCapacityStatus,
    RelayExposure,
    RelayImages,
    RelayNode,
    RelayNodeSpec,
    RelayNodeStatus,
    RelayPodTemplate,
    RelayPorts,
)
from tunnelop.api.v1alpha1.relaypool import (
    RelayNodeTemplate,
    RelayNodeTemplateMetadata,
    RelayPool,
    RelayPoolAutoscaling,
    RelayPoolSpec,
    RelayPoolStatus,
)
from tunnelop.api.v1alpha1.tunnel import (
    HTTP_PROTOCOLS,
    PORT_PROTOCOLS,
    SOURCE_RANGE_PROTOCOLS,
    ClientTarget,
    Protocol,
    RelayPlacement,
    Tunnel,
    TunnelClient,
    TunnelSpec,
    TunnelStatus,
    TunnelTraffic,
)
from tunnelop.api.v1alpha1.tunnelquota import (
    QuotaLimits,
    QuotaUsage,
    TunnelQuota,
    TunnelQuotaSpec,
    TunnelQuotaStatus,
)

# The kinds in the order CRDs are generated and documented.
KINDS: tuple[type[Resource], ...] = (Tunnel, RelayNode, RelayPool, TunnelQuota)
KINDS_BY_NAME: dict[str, type[Resource]] = {kind.crd.kind: kind for kind in KINDS}


def parse_object(obj: dict) -> Resource:
    """Validate a manifest of any of the four kinds (chosen by its `kind`).
    Raises pydantic.ValidationError, or ValueError for an unknown kind."""
    kind = obj.get("kind") if isinstance(obj, dict) else None
    model = KINDS_BY_NAME.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"kind: must be one of {', '.join(KINDS_BY_NAME)}, got {kind!r}")
    return model.model_validate(obj)


__all__ = [
    "API_VERSION",
    "GROUP",
    "HTTP_PROTOCOLS",
    "KINDS",
    "KINDS_BY_NAME",
    "PORT_PROTOCOLS",
    "SOURCE_RANGE_PROTOCOLS",
    "VERSION",
    "ClientTarget",
    "Condition",
    "KindInfo",
    "ObjectMeta",
    "PortSpan",
    "PrinterColumn",
    "Protocol",
    "QuotaLimits",
    "QuotaUsage",
    "RelayAllocation",
    "RelayCapacity",
    "RelayCapacityStatus",
    "RelayExposure",
    "RelayImages",
    "RelayNode",
    "RelayNodeSpec",
    "RelayNodeStatus",
    "RelayNodeTemplate",
    "RelayNodeTemplateMetadata",
    "RelayPlacement",
    "RelayPodTemplate",
    "RelayPool",
    "RelayPoolAutoscaling",
    "RelayPoolSpec",
    "RelayPoolStatus",
    "RelayPorts",
    "Resource",
    "Tunnel",
    "TunnelClient",
    "TunnelQuota",
    "TunnelQuotaSpec",
    "TunnelQuotaStatus",
    "TunnelSpec",
    "TunnelStatus",
    "TunnelTraffic",
    "bits_per_second",
    "byte_count",
    "error_messages",
    "find_condition",
    "format_quantity",
    "merge_spans",
    "parse_object",
    "parse_port_span",
    "parse_quantity",
]
