"""RelayNode: one relay, that is one frps with one public address, run by the operator."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from tunnelop.api.v1alpha1.common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
    KindInfo,
    NonNegativeInt,
    ObjectMeta,
    ObservedStatus,
    PrinterColumn,
    Resource,
    StatusModel,
    cel_rule,
    conditions_field,
    crd_rules,
    ready_column,
    unique_list,
)
from tunnelop.api.v1alpha1.formats import (
    AnnotationMap,
    DnsName,
    FreeFormObject,
    Host,
    ImageRef,
    LabelMap,
    check_relay_name,
    relay_name_rule,
)
from tunnelop.api.v1alpha1.ports import (
    PortOrRange,
    PortRange,
    PortSpan,
    merge_spans,
    parse_port_span,
)
from tunnelop.api.v1alpha1.quantity import BitRate, bits_per_second
from tunnelop.api.v1alpha1.tunnel import HTTP_PROTOCOLS, Protocol

DEFAULT_PROTOCOLS = ["tcp", "udp"]


class RelayPorts(ApiModel):
    """The public ports of the relay that tcp and udp tunnels get."""

    range: PortRange = Field(
        description=(
            "The ports handed out to tunnels, written 'first-last' within 1-65535, e.g. "
            "'20000-29999'. The relay must be reachable on all of them (tcp and udp). Ports the "
            "relay uses itself are never handed out: 7000, 7400, 7401, 7500, and with http or "
            "https also 80/443 and, behind a Service, 8080/8443."
        )
    )
    reserved: Annotated[list[PortOrRange], Field(max_length=64)] = Field(
        default_factory=list,
        description=(
            "Ports kept out of tunnels' reach, e.g. for the provider's own services: never "
            "allocated and refused when a Tunnel asks for one with spec.remotePort. Numbers or "
            "'first-last' ranges, e.g. [25565, '27015-27030']. At most 64 entries."
        ),
    )
    blocked: Annotated[list[PortOrRange], Field(max_length=64)] = Field(
        default_factory=list,
        description=(
            "Ports that must not be used at all, e.g. because the hosting provider or an ISP "
            "filters them; numbers or 'first-last' ranges. Tunnels already on a newly blocked "
            "port are moved to another port, with an Event. At most 64 entries."
        ),
    )

    def span(self) -> PortSpan:
        return parse_port_span(self.range, allow_single=False)

    def reserved_spans(self) -> list[PortSpan]:
        return merge_spans(parse_port_span(item) for item in self.reserved)

    def blocked_spans(self) -> list[PortSpan]:
        return merge_spans(parse_port_span(item) for item in self.blocked)


class RelayCapacity(ApiModel):
    """Limits of what the scheduler places on the relay. Omitted means no limit."""

    tunnels: NonNegativeInt | None = Field(
        default=None, description="The most tunnels the relay serves; 0 admits none."
    )
    bandwidth: BitRate | None = Field(
        default=None,
        description=(
            "The sum of the tunnels' spec.bandwidth the relay accepts, in bits per second, "
            "e.g. 1G. Tunnels without a bandwidth limit do not count."
        ),
    )


class RelayExposure(ApiModel):
    """How the relay is reached from the internet."""

    type: Literal["LoadBalancer", "NodePort", "HostNetwork"] = Field(
        default="LoadBalancer",
        description=(
            "LoadBalancer (default): a Service of type LoadBalancer. NodePort: a Service of "
            "type NodePort. HostNetwork: the relay Pod uses its Node's network and ports "
            "directly, which suits large port ranges on a dedicated Node."
        ),
    )
    address: Host | None = Field(
        default=None,
        description=(
            "The public IP address or DNS name that clients and visitors use, e.g. "
            "relay1.example.com. Omit it to use the address the Service or Node reports; the "
            "result is in status.publicAddress."
        ),
    )
    annotations: AnnotationMap = Field(
        default_factory=dict,
        description=(
            "Annotations for the relay's Service, e.g. for a cloud load balancer or MetalLB."
        ),
    )


class RelayImages(ApiModel):
    """Container images of the relay Pod; omitted ones use the operator's defaults (its
    --frps-image and --agent-image: the pinned frps and the chart's own image)."""

    frps: ImageRef | None = Field(default=None, description="The frps image.")
    agent: ImageRef | None = Field(
        default=None, description="The relay agent image (the tunnelop sidecar next to frps)."
    )


class RelayPodTemplate(ApiModel):
    """Settings of the relay Pod the operator creates."""

    images: RelayImages = Field(default_factory=RelayImages, description="Image overrides.")
    node_selector: LabelMap = Field(
        default_factory=dict,
        description="Labels a Kubernetes Node must have to run the relay Pod.",
    )
    tolerations: Annotated[list[FreeFormObject], Field(max_length=32)] = Field(
        default_factory=list,
        description=(
            "Tolerations of the relay Pod, as in a Pod spec, e.g. to run on Nodes tainted "
            "for relays."
        ),
    )
    resources: FreeFormObject | None = Field(
        default=None,
        description=(
            "Resource requests and limits of the frps container, as in a container spec: "
            "{requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 256Mi}}."
        ),
    )


class RelayNodeSpec(ApiModel):
    """The desired relay."""

    model_config = ConfigDict(
        json_schema_extra=crd_rules(
            cel_rule(
                '!has(self.protocols) || !self.protocols.exists(p, p == "http" || p == "https")'
                " || has(self.httpDomain)",
                "required when protocols include http or https",
                field_path=".httpDomain",
                reason="FieldValueRequired",
            )
        )
    )

    ports: RelayPorts = Field(
        description="The public ports for tcp and udp tunnels: a range, minus reserved and blocked."
    )
    protocols: Annotated[unique_list(Protocol, 4), Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_PROTOCOLS),
        description=(
            "The tunnel protocols this relay serves, from tcp, udp, http and https. Default "
            "[tcp, udp]: http and https must be opted in per relay (they carry the abuse "
            "risk) and need spec.httpDomain."
        ),
        json_schema_extra={"default": DEFAULT_PROTOCOLS},
    )
    capacity: RelayCapacity = Field(
        default_factory=RelayCapacity,
        description="The most tunnels and bandwidth the scheduler puts on this relay.",
    )
    exposure: RelayExposure = Field(
        default_factory=RelayExposure, description="How the relay is reached from the internet."
    )
    http_domain: DnsName | None = Field(
        default=None,
        description=(
            "The base domain of http and https tunnels' subdomains, e.g. relay1.example.com "
            "serves blog.relay1.example.com. Point a wildcard DNS record (*.relay1.example.com) "
            "at the relay. Required when protocols include http or https."
        ),
        validate_default=True,
    )
    unschedulable: StrictBool = Field(
        default=False,
        description=(
            "true cordons the relay: no new tunnels are scheduled to it, existing ones keep "
            "running. false (default) makes it schedulable."
        ),
    )
    drain: StrictBool = Field(
        default=False,
        description=(
            "true drains the relay, as `kubectl drain` does a Node: no new tunnels, and its "
            "tunnels move to other relays (keeping their port where it is free there), each "
            "move reported. A tunnel no other relay can take stays, serving, and says why. "
            "A RelayPool sets it on the relays it removes. Default false."
        ),
    )
    failover_after_seconds: Annotated[StrictInt, Field(ge=0, le=86400)] = Field(
        default=60,
        description=(
            "How long the relay's pod may stay not ready before its tunnels move to other "
            "relays (failover), in seconds (0-86400). 0 never moves them: they wait for the "
            "relay to come back. Default 60."
        ),
    )
    template: RelayPodTemplate = Field(
        default_factory=RelayPodTemplate,
        description="Settings of the relay Pod: images, Node selection, tolerations, resources.",
    )

    @field_validator("http_domain")
    @classmethod
    def _required_for_http(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocols = info.data.get("protocols") or []
        if value is None and any(p in HTTP_PROTOCOLS for p in protocols):
            raise PydanticCustomError(
                "http_domain_required",
                f"required when protocols include http or https, got protocols {protocols}",
            )
        return value

    @property
    def capacity_bps(self) -> int | None:
        bandwidth = self.capacity.bandwidth
        return None if bandwidth is None else bits_per_second(bandwidth)


class RelayAllocation(StatusModel):
    """What is in use on the relay."""

    tunnels: NonNegativeInt | None = Field(
        default=None, description="Tunnels scheduled to the relay."
    )
    ports: NonNegativeInt | None = Field(
        default=None, description="Ports allocated to tcp and udp tunnels."
    )
    bandwidth: BitRate | None = Field(
        default=None,
        description="The sum of the scheduled tunnels' spec.bandwidth, in bits per second.",
    )


class RelayCapacityStatus(StatusModel):
    """The relay's effective capacity, after reserved and blocked ports."""

    tunnels: NonNegativeInt | None = Field(
        default=None,
        description=(
            "How many tunnels fit: spec.capacity.tunnels, or without it the allocatable ports "
            "(tcp and udp tunnels) and no limit for http and https."
        ),
    )
    ports: NonNegativeInt | None = Field(
        default=None, description="Ports of spec.ports.range that are neither reserved nor blocked."
    )
    bandwidth: BitRate | None = Field(
        default=None, description="spec.capacity.bandwidth, when set."
    )


class RelayNodeStatus(ObservedStatus):
    """What the operator observed of the relay."""

    conditions: list[Condition] = conditions_field(
        "Ready (frps and the agent serve on the public address) and other conditions, each "
        "with a CamelCase reason."
    )
    public_address: Annotated[StrictStr, Field(max_length=253)] | None = Field(
        default=None,
        description="The IP address or DNS name clients and visitors connect to.",
    )
    allocated: RelayAllocation = Field(
        default_factory=RelayAllocation, description="What is in use on the relay."
    )
    capacity: RelayCapacityStatus = Field(
        default_factory=RelayCapacityStatus,
        description="The effective capacity, for comparison with allocated.",
    )


# The relay's objects are named "relay-<name>" (Service names are DNS labels of at most 63).
RELAY_NODE_NAME_MAX = 57


class RelayNodeMeta(ObjectMeta):
    """Metadata of a RelayNode, whose name becomes Service and Pod names."""

    @field_validator("name")
    @classmethod
    def _name_is_dns_1035_label(cls, name: str | None) -> str | None:
        return check_relay_name(name, RELAY_NODE_NAME_MAX)


class RelayNode(Resource):
    """One relay: an frps with its relay agent and one public address, run by the operator.
    Tunnels are scheduled to RelayNodes the way Pods are scheduled to Nodes."""

    crd = KindInfo(
        kind="RelayNode",
        plural="relaynodes",
        short_names=("rn",),
        scope="Cluster",
        printer_columns=(
            PrinterColumn("Address", ".status.publicAddress", "The public address."),
            PrinterColumn(
                "Tunnels", ".status.allocated.tunnels", "Tunnels scheduled here.", "integer"
            ),
            PrinterColumn(
                "Capacity", ".status.capacity.tunnels", "How many tunnels fit.", "integer"
            ),
            ready_column("Whether the relay serves."),
            PrinterColumn("Protocols", ".spec.protocols", "Protocols served.", priority=1),
            PrinterColumn(
                "Unschedulable", ".spec.unschedulable", "Cordoned.", "boolean", priority=1
            ),
            PrinterColumn(
                "Drain", ".spec.drain", "Moving its tunnels away.", "boolean", priority=1
            ),
            AGE_COLUMN,
        ),
        selectable_fields=(".spec.unschedulable", ".spec.drain"),
        root_rules=(relay_name_rule(RELAY_NODE_NAME_MAX),),
    )

    kind: Literal["RelayNode"] = Field(default="RelayNode", description="RelayNode.")
    metadata: RelayNodeMeta = Field(default_factory=RelayNodeMeta)
    spec: RelayNodeSpec = Field(description="The desired relay.")
    status: RelayNodeStatus = Field(
        default_factory=RelayNodeStatus,
        description="Written by the operator; read-only for users.",
    )
