"""Building blocks shared by the four kinds: model base classes, conditions, object metadata,
CEL rules, readable validation errors, and the CRD facts each kind declares about itself."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "tunnelop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Integers and booleans as the API server sees them: JSON `true` is not 1 and "80" is not 80.
Int = StrictInt
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Int64 = Annotated[StrictInt, Field(ge=0)]  # counters and generations: int64 in the API server


def _reject_duplicates(values: list[Any]) -> list[Any]:
    seen: list[Any] = []  # a list, not a set: items may be unhashable in principle
    for value in values:
        if value in seen:
            raise PydanticCustomError(
                "duplicate", f"must not repeat entries, got {value!r} more than once"
            )
        seen.append(value)
    return values


def unique_list(item: Any, max_items: int) -> Any:
    """A list type without repeated entries, declared a set to the API server (which then
    rejects duplicates too and merges it entry by entry under server-side apply)."""
    return Annotated[
        list[item],
        Field(max_length=max_items, json_schema_extra={"x-kubernetes-list-type": "set"}),
        AfterValidator(_reject_duplicates),
    ]


class ApiModel(BaseModel):
    """Base of every spec object: camelCase JSON names, unknown fields rejected.

    Rejecting unknown fields costs nothing for objects read from the API server (it prunes
    them before anyone sees the object) and catches typos in manifests checked offline."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_omitted(cls, data: Any) -> Any:
        # As in the API server, which drops `field: null` (Helm templates write it) before
        # defaulting and validation: the field then reads as omitted.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class StatusModel(ApiModel):
    """Base of status objects: written by the operator, so tolerant of fields it added later."""

    model_config = ConfigDict(extra="ignore")


class ObservedStatus(StatusModel):
    """Base of a kind's top-level status: which generation of the spec it describes."""

    observed_generation: Int64 | None = Field(
        default=None, description="The metadata.generation this status describes."
    )


def cel_rule(
    rule: str,
    message: str,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry. `field_path` (like ".remotePort") makes the API
    server report the error on that field instead of on the object holding the rule."""
    entry = {"rule": rule, "message": message}
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def cel_text(template: str, **expressions: str) -> str:
    """A CEL messageExpression: `template` with each `{name}` replaced by the value of the CEL
    expression given for it, e.g. `cel_text("got '{p}'", p="self.protocol")`."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(json.dumps(literal))  # a JSON string is a valid CEL string literal
        if name is not None:
            parts.append(expressions[name])  # must be a string expression
    return " + ".join(parts)


def crd_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` for a model whose object carries CEL rules."""
    return {"x-kubernetes-validations": list(rules)}


CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(StatusModel):
    """One aspect of the object's state, in the shape Kubernetes uses everywhere."""

    type: Annotated[StrictStr, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)] = Field(
        description="Which aspect this condition reports, in CamelCase, such as Ready or Scheduled."
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="Whether the condition holds: True, False or Unknown."
    )
    reason: (
        Annotated[StrictStr, Field(max_length=1024, pattern=CONDITION_REASON_PATTERN)] | None
    ) = Field(
        default=None,
        description=(
            "A one-word CamelCase cause of the last transition, for programs and alerts, "
            "such as NoRelayAvailable or PortBlocked."
        ),
    )
    message: Annotated[StrictStr, Field(max_length=32768)] | None = Field(
        default=None, description="A human-readable explanation of the last transition."
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed from one value to another."
    )
    observed_generation: Int64 | None = Field(
        default=None,
        description=(
            "The metadata.generation of the object the condition was computed from; older than "
            "the current generation means the condition may be stale."
        ),
    )


def conditions_field(description: str) -> Any:
    """A `conditions` list keyed by type, so that server-side apply merges by condition type."""
    return Field(
        default_factory=list,
        max_length=32,
        description=description,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of the given type, if present."""
    return next((c for c in conditions if c.type == type_), None)


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata the operator and webhook read. Other metadata
    fields are kept as given; the API server owns their validation."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="allow",
    )

    name: StrictStr | None = None
    generate_name: StrictStr | None = None
    namespace: StrictStr | None = None
    uid: StrictStr | None = None
    resource_version: StrictStr | None = None
    generation: Int | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    finalizers: list[StrictStr] = Field(default_factory=list)


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get`."""

    name: str
    json_path: str
    description: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    priority: int = 0  # 1 shows the column only with `-o wide`

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


def ready_column(description: str) -> PrinterColumn:
    return PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', description)


AGE_COLUMN = PrinterColumn(
    "Age", ".metadata.creationTimestamp", "Time since the object was created.", type="date"
)


@dataclass(frozen=True)
class KindInfo:
    """What the CustomResourceDefinition of a kind says beyond its schema."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    scope: Literal["Namespaced", "Cluster"]
    printer_columns: tuple[PrinterColumn, ...]
    # Field paths usable with `kubectl get --field-selector` (and watches of the operator).
    selectable_fields: tuple[str, ...] = ()
    # The scale subresource as {specReplicasPath, statusReplicasPath, labelSelectorPath}.
    scale: Mapping[str, str] | None = None
    categories: tuple[str, ...] = ("tunnelop",)
    # CEL rules on the whole object (they may read metadata.name).
    root_rules: tuple[dict[str, str], ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


class Resource(ApiModel):
    """Base of the four top-level kinds."""

    crd: ClassVar[KindInfo]

    api_version: Literal["tunnelop.dev/v1alpha1"] = Field(
        default=API_VERSION, description="The API version of the object."
    )
    kind: str  # each kind narrows it to its own name
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


# Readable errors ------------------------------------------------------------------------------

_FRIENDLIER = {
    "extra_forbidden": "unknown field (field names are camelCase; see `kubectl explain`)",
    "missing": "required field is missing",
}


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def error_path(loc: Iterable[int | str]) -> str:
    """`("spec", "allowSourceRanges", 2)` -> `spec.allowSourceRanges[2]`; odd keys (a typo
    with a space or newline) are quoted: `spec["remote port"]`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


def error_messages(error: ValidationError) -> list[str]:
    """One line per problem, naming the field: `spec.remotePort: only allowed when ...`."""
    lines = []
    for detail in error.errors(include_url=False, include_context=False, include_input=False):
        message = _FRIENDLIER.get(detail["type"], detail["msg"])
        loc = detail["loc"]
        if detail["type"] != "extra_forbidden":
            # pydantic names a defaulted field by its Python name; users know the JSON name.
            loc = tuple(to_camel(p) if isinstance(p, str) and "_" in p else p for p in loc)
        path = error_path(loc)
        lines.append(f"{path}: {message}" if path else message)
    return lines
