"""Tunnel: a public endpoint for a service behind NAT, applied by a tenant in its namespace."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tunnelop.api.v1alpha1.common import (
    AGE_COLUMN,
    ApiModel,
    Condition,
    Int64,
    KindInfo,
    NonNegativeInt,
    ObservedStatus,
    PrinterColumn,
    Resource,
    StatusModel,
    cel_rule,
    cel_text,
    conditions_field,
    crd_rules,
    ready_column,
    unique_list,
)
from tunnelop.api.v1alpha1.formats import (
    Cidr,
    DnsLabel,
    DnsName,
    LabelMap,
    RelayObjectName,
    ServiceName,
)
from tunnelop.api.v1alpha1.ports import Port
from tunnelop.api.v1alpha1.quantity import PositiveBitRate, bits_per_second

Protocol = Literal["tcp", "udp", "http", "https"]
PORT_PROTOCOLS = ("tcp", "udp")  # reached on a port of the relay
HTTP_PROTOCOLS = ("http", "https")  # reached by host name on the relay's HTTP(S) port
# The protocols whose visitors the relay can check against spec.allowSourceRanges: frps asks
# the relay agent about each new tcp and https connection (NewUserConn), and about no http
# request and no udp packet, so a range there would be a promise nobody keeps.
SOURCE_RANGE_PROTOCOLS = ("tcp", "https")
SOURCE_RANGE_PROTOCOLS_CEL = '["tcp", "https"]'
SOURCE_RANGES_FORBIDDEN = "only allowed when spec.protocol is tcp or https"
SOURCE_RANGES_WHY = (
    "the relay checks visitors' addresses per connection for tcp and https, and sees no "
    "single http request or udp packet"
)


def _forbidden_unless(protocols: tuple[str, ...], info: ValidationInfo) -> None:
    protocol = info.data.get("protocol")
    if protocol is not None and protocol not in protocols:
        raise PydanticCustomError(
            "forbidden_for_protocol",
            f"only allowed when spec.protocol is {' or '.join(protocols)}, "
            f"got protocol '{protocol}'",
        )


class RelayPlacement(ApiModel):
    """Constraints on the RelayNode a tunnel is scheduled to. All are optional; among the
    nodes that match, the scheduler picks the least loaded one."""

    pool: RelayObjectName | None = Field(
        default=None, description="Only consider RelayNodes of this RelayPool."
    )
    node: RelayObjectName | None = Field(
        default=None,
        description=(
            "Run on this RelayNode only. The tunnel stays unscheduled while that node is "
            "full, cordoned or not ready."
        ),
    )
    node_selector: LabelMap = Field(
        default_factory=dict,
        description=(
            "Only consider RelayNodes whose labels include all of these, e.g. "
            "{region: eu, tier: paid}."
        ),
    )


class ClientTarget(ApiModel):
    """The in-cluster Service an operator-run frpc forwards to."""

    service: ServiceName = Field(
        description="Name of a Service in the tunnel's namespace that receives the traffic."
    )
    port: Port = Field(description="Port number of that Service (1-65535).")


class TunnelClient(ApiModel):
    """Who runs frpc, the client end of the tunnel."""

    model_config = ConfigDict(
        json_schema_extra=crd_rules(
            cel_rule(
                'has(self.target) || !has(self.type) || self.type != "InCluster"',
                "required when spec.client.type is InCluster",
                field_path=".target",
                reason="FieldValueRequired",
            ),
            cel_rule(
                '!has(self.target) || (has(self.type) && self.type == "InCluster")',
                "only allowed when spec.client.type is InCluster",
                field_path=".target",
                reason="FieldValueForbidden",
            ),
        )
    )

    type: Literal["External", "InCluster"] = Field(
        default="External",
        description=(
            "External (default): you run frpc yourself with the configuration in the "
            "credentials Secret (status.credentialsSecret). InCluster: the operator runs frpc "
            "in the tunnel's namespace and forwards to spec.client.target."
        ),
    )
    target: ClientTarget | None = Field(
        default=None,
        validate_default=True,
        description="The Service to forward to. Required for InCluster, not allowed for External.",
    )

    @field_validator("target")
    @classmethod
    def _target_matches_type(
        cls, target: ClientTarget | None, info: ValidationInfo
    ) -> ClientTarget | None:
        client_type = info.data.get("type")
        if client_type == "InCluster" and target is None:
            raise PydanticCustomError(
                "target_required", "required when spec.client.type is InCluster"
            )
        if client_type == "External" and target is not None:
            raise PydanticCustomError(
                "target_forbidden",
                "only allowed when spec.client.type is InCluster, got type 'External'",
            )
        return target


class TunnelSpec(ApiModel):
    """The desired tunnel."""

    model_config = ConfigDict(
        json_schema_extra=crd_rules(
            cel_rule(
                '!has(self.remotePort) || self.protocol in ["tcp", "udp"]',
                "only allowed when spec.protocol is tcp or udp",
                message_expression=cel_text(
                    "only allowed when spec.protocol is tcp or udp, got protocol '{p}'",
                    p="self.protocol",
                ),
                field_path=".remotePort",
                reason="FieldValueForbidden",
            ),
            cel_rule(
                '!has(self.subdomain) || self.protocol in ["http", "https"]',
                "only allowed when spec.protocol is http or https",
                message_expression=cel_text(
                    "only allowed when spec.protocol is http or https, got protocol '{p}'",
                    p="self.protocol",
                ),
                field_path=".subdomain",
                reason="FieldValueForbidden",
            ),
            cel_rule(
                "!has(self.customDomains) || size(self.customDomains) == 0"
                ' || self.protocol in ["http", "https"]',
                "only allowed when spec.protocol is http or https",
                message_expression=cel_text(
                    "only allowed when spec.protocol is http or https, got protocol '{p}'",
                    p="self.protocol",
                ),
                field_path=".customDomains",
                reason="FieldValueForbidden",
            ),
            cel_rule(
                "!has(self.allowSourceRanges) || size(self.allowSourceRanges) == 0"
                f" || self.protocol in {SOURCE_RANGE_PROTOCOLS_CEL}",
                SOURCE_RANGES_FORBIDDEN,
                message_expression=cel_text(
                    SOURCE_RANGES_FORBIDDEN + ", got protocol '{p}': " + SOURCE_RANGES_WHY,
                    p="self.protocol",
                ),
                field_path=".allowSourceRanges",
                reason="FieldValueForbidden",
            ),
        )
    )

    protocol: Protocol = Field(
        description=(
            "How visitors reach the tunnel: tcp or udp on a port of the relay "
            "(status.remotePort), or http or https by host name (spec.subdomain under the "
            "relay's httpDomain, and spec.customDomains). http and https need a RelayNode that "
            "allows them in spec.protocols."
        )
    )
    remote_port: Port | None = Field(
        default=None,
        description=(
            "The public port on the relay (1-65535), for tcp and udp only. Omit it to get a "
            "free port allocated; set it to pin one, which must be inside the relay's "
            "spec.ports.range, neither reserved nor blocked there, not one the relay uses "
            "itself (such as 7000, where frpc logs in), and free. The allocated port is in "
            "status.remotePort."
        ),
    )
    subdomain: DnsLabel | None = Field(
        default=None,
        description=(
            "The host name label under the relay's httpDomain, for http and https only: "
            "'blog' serves blog.<httpDomain>. A DNS label (lowercase letters, digits, '-'; at "
            "most 63). Omit it to get one generated; the result is in status.subdomain."
        ),
    )
    custom_domains: unique_list(DnsName, 16) = Field(
        default_factory=list,
        description=(
            "Your own host names served by this tunnel, for http and https only, such as "
            "www.example.com. Point their DNS at the relay (status.endpoint). Wildcards are "
            "not supported. At most 16."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    relay: RelayPlacement = Field(
        default_factory=RelayPlacement,
        description="Where the tunnel may run: a RelayPool, a RelayNode or node labels.",
    )
    bandwidth: PositiveBitRate | None = Field(
        default=None,
        description=(
            "Speed limit in bits per second, enforced on the relay, as a Kubernetes quantity "
            "like the CNI bandwidth annotation: 10M is 10 Mbit/s, 500k is 500 kbit/s; binary "
            "suffixes (Ki, Mi, Gi) are accepted too. Omit it for the namespace's "
            "TunnelQuota bandwidthPerTunnel, or no limit without one."
        ),
    )
    allow_source_ranges: unique_list(Cidr, 64) = Field(
        default_factory=list,
        description=(
            "If set, only visitors from these CIDRs may connect, e.g. [203.0.113.0/24, "
            "2001:db8::/32]; others' connections are closed by the relay. For tcp and https "
            "only: the relay checks each new connection of those, but sees no single http "
            "request or udp packet (use https, or authenticate in the application). Omit it "
            "to allow everyone. At most 64."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    suspended: StrictBool = Field(
        default=False,
        description=(
            "true stops the tunnel: the relay refuses new visitors and disconnects the client "
            "while keeping the port or subdomain reserved. false (default) resumes it."
        ),
    )
    client: TunnelClient = Field(
        default_factory=TunnelClient,
        description="Who runs frpc: you (External, the default) or the operator (InCluster).",
    )

    @field_validator("remote_port")
    @classmethod
    def _remote_port_needs_port_protocol(cls, value: int | None, info: ValidationInfo):
        if value is not None:
            _forbidden_unless(PORT_PROTOCOLS, info)
        return value

    @field_validator("subdomain")
    @classmethod
    def _subdomain_needs_http(cls, value: str | None, info: ValidationInfo):
        if value is not None:
            _forbidden_unless(HTTP_PROTOCOLS, info)
        return value

    @field_validator("custom_domains")
    @classmethod
    def _custom_domains_need_http(cls, value: list[str], info: ValidationInfo):
        if value:
            _forbidden_unless(HTTP_PROTOCOLS, info)
        return value

    @field_validator("allow_source_ranges")
    @classmethod
    def _source_ranges_need_a_checked_protocol(cls, value: list[str], info: ValidationInfo):
        protocol = info.data.get("protocol")
        if value and protocol is not None and protocol not in SOURCE_RANGE_PROTOCOLS:
            raise PydanticCustomError(
                "forbidden_for_protocol",
                f"{SOURCE_RANGES_FORBIDDEN}, got protocol '{protocol}': {SOURCE_RANGES_WHY}",
            )
        return value

    @property
    def bandwidth_bps(self) -> int | None:
        """spec.bandwidth in bits per second, None when unlimited."""
        return None if self.bandwidth is None else bits_per_second(self.bandwidth)


class TunnelTraffic(StatusModel):
    """Traffic through the tunnel as metered by its relay."""

    bytes_in: Int64 | None = Field(
        default=None, description="Bytes received from visitors since the tunnel was created."
    )
    bytes_out: Int64 | None = Field(
        default=None, description="Bytes sent to visitors since the tunnel was created."
    )
    active_connections: NonNegativeInt | None = Field(
        default=None, description="Visitor connections open right now."
    )
    last_seen: datetime | None = Field(
        default=None,
        description=(
            "When the tunnel's client was last seen alive (login, proxy or heartbeat), as of "
            "the last traffic report: it moves with the counts, not with every heartbeat."
        ),
    )
    period_start: datetime | None = Field(
        default=None,
        description=(
            "The start of the traffic period periodBytes covers: the first instant of the "
            "calendar month (UTC), as in the namespace's TunnelQuota status.periodStart."
        ),
    )
    period_bytes: Int64 | None = Field(
        default=None,
        description=(
            "Bytes in and out since periodStart, counted against the namespace's "
            "TunnelQuota hard.monthlyTraffic; starts again from zero each month."
        ),
    )


class TunnelStatus(ObservedStatus):
    """What the operator observed and allocated."""

    conditions: list[Condition] = conditions_field(
        "Ready (usable by visitors), Scheduled (bound to a RelayNode), Admitted (accepted by "
        "the namespace's TunnelQuota) and ClientConnected (frpc is logged in), each with a "
        "CamelCase reason."
    )
    relay_node: Annotated[StrictStr, Field(max_length=253)] | None = Field(
        default=None, description="The RelayNode the tunnel is scheduled to."
    )
    remote_port: Port | None = Field(
        default=None, description="The public port on the relay, for tcp and udp tunnels."
    )
    subdomain: Annotated[StrictStr, Field(max_length=63)] | None = Field(
        default=None, description="The subdomain in use, for http and https tunnels."
    )
    endpoint: Annotated[StrictStr, Field(max_length=512)] | None = Field(
        default=None,
        description=(
            "Where visitors connect: host:port for tcp and udp, a URL for http and https."
        ),
    )
    url: Annotated[StrictStr, Field(max_length=512)] | None = Field(
        default=None,
        description="The full URL, for http and https tunnels, e.g. https://blog.relay.example.com.",
    )
    credentials_secret: Annotated[StrictStr, Field(max_length=253)] | None = Field(
        default=None,
        description=(
            "Name of the Secret in this namespace holding the tunnel's token and a "
            "ready-to-run frpc configuration."
        ),
    )
    traffic: TunnelTraffic = Field(
        default_factory=TunnelTraffic, description="Traffic metered by the relay."
    )


class Tunnel(Resource):
    """A public endpoint on a relay for a service behind NAT. Apply it in your namespace;
    the operator schedules it to a RelayNode, allocates a port or subdomain and writes frpc
    credentials to a Secret."""

    crd = KindInfo(
        kind="Tunnel",
        plural="tunnels",
        short_names=("tun",),
        scope="Namespaced",
        printer_columns=(
            PrinterColumn("Protocol", ".spec.protocol", "tcp, udp, http or https."),
            PrinterColumn("Relay", ".status.relayNode", "The RelayNode serving the tunnel."),
            PrinterColumn("Endpoint", ".status.endpoint", "Where visitors connect."),
            ready_column("Whether visitors can use the tunnel."),
            PrinterColumn(
                "Client",
                '.status.conditions[?(@.type=="ClientConnected")].status',
                "Whether the tunnel's frpc is connected to its relay.",
            ),
            PrinterColumn(
                "In", ".status.traffic.bytesIn", "Bytes from visitors (metered).", "integer"
            ),
            PrinterColumn(
                "Out", ".status.traffic.bytesOut", "Bytes to visitors (metered).", "integer"
            ),
            PrinterColumn(
                "Bandwidth", ".spec.bandwidth", "Speed limit in bits per second.", priority=1
            ),
            PrinterColumn(
                "Suspended", ".spec.suspended", "Whether the tunnel is stopped.", "boolean", 1
            ),
            AGE_COLUMN,
        ),
        selectable_fields=(".spec.protocol", ".status.relayNode"),
    )

    kind: Literal["Tunnel"] = Field(default="Tunnel", description="Tunnel.")
    spec: TunnelSpec = Field(description="The desired tunnel.")
    status: TunnelStatus = Field(
        default_factory=TunnelStatus, description="Written by the operator; read-only for users."
    )
