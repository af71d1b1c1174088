"""Ports and port ranges: a port is an integer in 1-65535, a range is written "first-last".

RelayNode lists accept either form, as an integer (8080) or a string ("8080", "25565-25575").
The models keep the value as written; `parse_port_span` turns it into a `PortSpan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from tunnelop.api.v1alpha1.common import cel_rule, cel_text

PORT_MIN = 1
PORT_MAX = 65535
PORT_RANGE_PATTERN = r"^[0-9]{1,5}-[0-9]{1,5}$"
PORT_OR_RANGE_PATTERN = r"^[0-9]{1,5}(-[0-9]{1,5})?$"
PORT_TEXT_MAX_LENGTH = 11  # "65535-65535"

_PORT_RANGE = re.compile(PORT_RANGE_PATTERN)
_PORT_OR_RANGE = re.compile(PORT_OR_RANGE_PATTERN)


@dataclass(frozen=True, order=True)
class PortSpan:
    """An inclusive run of ports; a single port is a span with first == last."""

    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def overlaps(self, other: PortSpan) -> bool:
        return self.first <= other.last and other.first <= self.last


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_port(value: object) -> int:
    """The port number; ValueError for anything but an integer in 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a port number (an integer), got {type(value).__name__}")
    if not PORT_MIN <= value <= PORT_MAX:
        raise ValueError(f"must be a port number within {PORT_MIN}-{PORT_MAX}, got {value}")
    return value


def parse_port_span(value: object, *, allow_single: bool = True) -> PortSpan:
    """`8080`, `"8080"` or `"20000-29999"` as a PortSpan. Raises ValueError with a message for
    users (without the field name, which the caller knows)."""
    example = (
        "a port like 8080 or a range like '20000-29999'"
        if allow_single
        else ("a range like '20000-29999'")
    )
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be {example}, got {type(value).__name__}")
    if isinstance(value, int):
        if not allow_single:
            raise ValueError(f"must be {example} (a string), got {value}")
        port = check_port(value)
        return PortSpan(port, port)
    pattern = _PORT_OR_RANGE if allow_single else _PORT_RANGE
    if not pattern.fullmatch(value):
        raise ValueError(f"must be {example}, got {_show(value)}")
    first, _, last = value.partition("-")
    span = PortSpan(int(first), int(last or first))
    if not (PORT_MIN <= span.first <= PORT_MAX and PORT_MIN <= span.last <= PORT_MAX):
        raise ValueError(f"ports must be within {PORT_MIN}-{PORT_MAX}, got '{value}'")
    if span.first > span.last:
        raise ValueError(
            f"the first port must not be greater than the last, got '{value}' "
            f"(did you mean '{span.last}-{span.first}'?)"
        )
    return span


def merge_spans(spans: Iterable[PortSpan]) -> list[PortSpan]:
    """Sorted spans with overlapping and adjacent ones joined."""
    merged: list[PortSpan] = []
    for span in sorted(spans):
        if merged and span.first <= merged[-1].last + 1:
            last = merged[-1]
            merged[-1] = PortSpan(last.first, max(last.last, span.last))
        else:
            merged.append(span)
    return merged


# pydantic types -------------------------------------------------------------------------------


def _validate_port(value: object) -> int:
    try:
        return check_port(value)
    except ValueError as exc:
        raise PydanticCustomError("port", str(exc)) from None


def _validate_port_range(value: object) -> str:
    try:
        parse_port_span(value, allow_single=False)
    except ValueError as exc:
        raise PydanticCustomError("port_range", str(exc)) from None
    return value  # type: ignore[return-value]  # a str, checked above


def _validate_port_or_range(value: object) -> int | str:
    try:
        parse_port_span(value, allow_single=True)
    except ValueError as exc:
        raise PydanticCustomError("port_or_range", str(exc)) from None
    return value  # type: ignore[return-value]  # an int or str, checked above


# CEL reads the numbers of a string range; the guard keeps a malformed string (already
# reported by `pattern`) from turning into a CEL evaluation error.
_BOUNDS_CEL = "self.split('-').all(p, int(p) >= 1 && int(p) <= 65535)"
_ORDER_CEL = "int(self.split('-')[0]) <= int(self.split('-')[1])"

Port = Annotated[
    int,
    PlainValidator(_validate_port),
    WithJsonSchema({"type": "integer", "minimum": PORT_MIN, "maximum": PORT_MAX}),
]

PortRange = Annotated[
    str,
    PlainValidator(_validate_port_range),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": PORT_RANGE_PATTERN,
            "maxLength": PORT_TEXT_MAX_LENGTH,
            "x-kubernetes-validations": [
                cel_rule(
                    f"!self.matches(r'{PORT_RANGE_PATTERN}') || {_BOUNDS_CEL}",
                    "ports must be within 1-65535",
                    message_expression=cel_text(
                        "ports must be within 1-65535, got '{value}'", value="self"
                    ),
                ),
                cel_rule(
                    f"!self.matches(r'{PORT_RANGE_PATTERN}') || {_ORDER_CEL}",
                    "the first port must not be greater than the last",
                    message_expression=cel_text(
                        "the first port must not be greater than the last, got '{value}'",
                        value="self",
                    ),
                ),
            ],
        }
    ),
]

PortOrRange = Annotated[
    int | str,
    PlainValidator(_validate_port_or_range),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "minimum": PORT_MIN,
            "maximum": PORT_MAX,
            "pattern": PORT_OR_RANGE_PATTERN,
            "maxLength": PORT_TEXT_MAX_LENGTH,
            "x-kubernetes-validations": [
                cel_rule(
                    f"type(self) == int || !self.matches(r'{PORT_OR_RANGE_PATTERN}') || {_BOUNDS_CEL}",
                    "ports must be within 1-65535",
                ),
                cel_rule(
                    f"type(self) == int || !self.matches(r'{PORT_RANGE_PATTERN}') || {_ORDER_CEL}",
                    "the first port must not be greater than the last",
                ),
            ],
        }
    ),
]
