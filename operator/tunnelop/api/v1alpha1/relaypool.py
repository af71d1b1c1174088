"""RelayPool: a group of RelayNodes made from one template, scaled by count or by load."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictInt, StrictStr, ValidationInfo, field_validator
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
    cel_rule,
    conditions_field,
    crd_rules,
)
from tunnelop.api.v1alpha1.formats import LabelMap, check_relay_name, relay_name_rule
from tunnelop.api.v1alpha1.relaynode import RelayNodeSpec

# The pool's RelayNodes are named "<pool>-<index>" (index up to 5 digits), which must stay a
# valid RelayNode name.
RELAY_POOL_NAME_MAX = 51
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class RelayPoolMeta(ObjectMeta):
    """Metadata of a RelayPool, whose name prefixes its RelayNodes' names."""

    @field_validator("name")
    @classmethod
    def _name_is_dns_1035_label(cls, name: str | None) -> str | None:
        return check_relay_name(name, RELAY_POOL_NAME_MAX)


class RelayNodeTemplateMetadata(ApiModel):
    """Metadata given to every RelayNode of the pool."""

    labels: LabelMap = Field(
        default_factory=dict,
        description=(
            "Labels of the RelayNodes, e.g. {region: eu}, which Tunnels can select with "
            "spec.relay.nodeSelector. The operator adds tunnelop.dev/pool=<pool name>."
        ),
    )


class RelayNodeTemplate(ApiModel):
    """The RelayNode every replica of the pool is made from."""

    metadata: RelayNodeTemplateMetadata = Field(
        default_factory=RelayNodeTemplateMetadata, description="Labels of the RelayNodes."
    )
    spec: RelayNodeSpec = Field(description="The spec of each RelayNode, as in a RelayNode.")


class RelayPoolAutoscaling(ApiModel):
    """Scaling by load: the operator keeps the pool's average utilization near a target."""

    model_config = ConfigDict(
        json_schema_extra=crd_rules(
            cel_rule(
                "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                "must be greater than or equal to minReplicas",
                field_path=".maxReplicas",
                reason="FieldValueInvalid",
            )
        )
    )

    min_replicas: PositiveInt = Field(
        default=1, description="The fewest RelayNodes, at least 1. Default 1."
    )
    max_replicas: PositiveInt = Field(
        description="The most RelayNodes; must be greater than or equal to minReplicas."
    )
    target_utilization: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        default=80,
        description=(
            "The target average utilization in percent (1-100), where a relay's utilization "
            "is the highest of its tunnel count and bandwidth relative to its capacity. "
            "Default 80."
        ),
    )
    scale_down_delay_seconds: Annotated[StrictInt, Field(ge=0, le=86400)] = Field(
        default=300,
        description=(
            "How long the load must stay low before a RelayNode is removed, in seconds "
            "(0-86400). Default 300. Tunnels of a removed RelayNode are moved first."
        ),
    )

    @field_validator("max_replicas")
    @classmethod
    def _not_below_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_replicas")
        if minimum is not None and value < minimum:
            raise PydanticCustomError(
                "max_below_min",
                f"must be greater than or equal to minReplicas ({minimum}), got {value}",
            )
        return value


class RelayPoolSpec(ApiModel):
    """The desired pool."""

    replicas: NonNegativeInt = Field(
        default=1,
        description=(
            "How many RelayNodes the pool runs. Changed by `kubectl scale`, a "
            "HorizontalPodAutoscaler or KEDA through the scale subresource. While "
            "spec.autoscaling is set, the operator's autoscaler decides instead, within its "
            "minReplicas and maxReplicas. Default 1."
        ),
    )
    template: RelayNodeTemplate = Field(description="What each RelayNode of the pool looks like.")
    autoscaling: RelayPoolAutoscaling | None = Field(
        default=None,
        description="Scale the pool by load between minReplicas and maxReplicas.",
    )
    max_draining: PositiveInt = Field(
        default=1,
        description=(
            "The disruption budget: at most this many of the pool's RelayNodes drain at once "
            "(scale-down and template roll-out move tunnels off a relay before removing it). "
            "Default 1."
        ),
    )


class RelayPoolStatus(ObservedStatus):
    """What the operator observed of the pool."""

    replicas: NonNegativeInt | None = Field(
        default=None, description="RelayNodes that belong to the pool now."
    )
    ready_replicas: NonNegativeInt | None = Field(
        default=None, description="RelayNodes of the pool whose Ready condition is True."
    )
    desired_replicas: NonNegativeInt | None = Field(
        default=None,
        description="The count the pool is moving to: spec.replicas, or the autoscaler's choice.",
    )
    utilization: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None,
        description="The pool's average utilization in percent, as the autoscaler measures it.",
    )
    selector: Annotated[StrictStr, Field(max_length=1024)] | None = Field(
        default=None,
        description=(
            "Label selector of the pool's RelayNodes in string form "
            "(tunnelop.dev/pool=<name>), for the scale subresource."
        ),
    )
    conditions: list[Condition] = conditions_field(
        "Ready (all desired RelayNodes are ready) and other conditions, each with a "
        "CamelCase reason."
    )


class RelayPool(Resource):
    """A group of RelayNodes made from one template. Scale it with spec.replicas (kubectl
    scale, HPA, KEDA) or let the operator scale it by load with spec.autoscaling."""

    crd = KindInfo(
        kind="RelayPool",
        plural="relaypools",
        short_names=("rp",),
        scope="Cluster",
        printer_columns=(
            PrinterColumn("Replicas", ".spec.replicas", "Desired RelayNodes.", "integer"),
            PrinterColumn("Ready", ".status.readyReplicas", "Ready RelayNodes.", "integer"),
            PrinterColumn(
                "Min", ".spec.autoscaling.minReplicas", "Autoscaling minimum.", "integer"
            ),
            PrinterColumn(
                "Max", ".spec.autoscaling.maxReplicas", "Autoscaling maximum.", "integer"
            ),
            AGE_COLUMN,
        ),
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
        root_rules=(relay_name_rule(RELAY_POOL_NAME_MAX),),
    )

    kind: Literal["RelayPool"] = Field(default="RelayPool", description="RelayPool.")
    metadata: RelayPoolMeta = Field(default_factory=RelayPoolMeta)
    spec: RelayPoolSpec = Field(description="The desired pool.")
    status: RelayPoolStatus = Field(
        default_factory=RelayPoolStatus,
        description="Written by the operator; read-only for users.",
    )
