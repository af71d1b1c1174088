"""Kubernetes-style quantities for bandwidth (bits per second) and traffic (bytes).

A quantity is an integer, or a string of a number and an optional suffix: decimal k, M, G, T,
P, E (powers of 1000) or binary Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024). This is the format
of the CNI bandwidth annotation ("10M") and of resource requests ("100Gi"), narrowed to whole
non-negative values: a fraction of a bit or "500m" (milli) is never what a user means.

Models keep the value as written, so that status and `kubectl get` show what the user wrote;
`bits_per_second` and `byte_count` give the number.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from tunnelop.api.v1alpha1.common import cel_rule

MULTIPLIERS: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY = re.compile(r"(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
QUANTITY_MAX_LENGTH = 32
MAX_DIGITS = 18
# Decimal places a decimal suffix absorbs: "1.5k" is 1500, "1.0001k" is not whole.
DECIMAL_PLACES = {"": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
INT64_MAX = 2**63 - 1
SUFFIX_HELP = "k, M, G, T, P, E for powers of 1000; Ki, Mi, Gi, Ti, Pi, Ei for powers of 1024"


def _hint(text: str) -> str:
    """A nudge for the usual mistakes, added to the error message."""
    number = re.match(r"^[0-9.]+", text)
    suffix = text[number.end() :] if number else ""
    if suffix == "m":
        return "; 'm' means milli (1/1000), write 'M' for mega"
    if suffix == "K":
        return "; write 'k' for kilo"
    if re.fullmatch(r"(?i)[kmgtpe]?i?(b|bit|bits|bps|b/s|byte|bytes)", suffix):
        return "; write the number and suffix only (the unit is implied), e.g. '10M'"
    if text != text.strip():
        return "; remove the spaces"
    return ""


def _check_kubernetes_can_count(value: str, number: str, suffix: str, unit: str) -> None:
    """Refuse what the API server's `quantity(...).isInteger()` refuses, so that the models
    and the CRD agree: Kubernetes parses up to 18 digits exactly, and treats a value as whole
    only when its decimal places fit in the suffix ("1.5k" yes; "1.0", "1.5Ki" no)."""
    whole, _, fraction = number.partition(".")
    if len(whole) + len(fraction) > MAX_DIGITS:
        raise ValueError(
            f"must have at most {MAX_DIGITS} digits, got {value!r}; use a larger suffix"
        )
    if fraction and suffix.endswith("i"):
        raise ValueError(
            f"must not combine decimal places with a binary suffix, got {value!r}; write a "
            f"whole number ('1536Mi') or use a decimal suffix ('1.5G')"
        )
    places = DECIMAL_PLACES.get(suffix, 0)
    if len(fraction) > places:
        allowed = (
            f"at most {places} decimal places with suffix '{suffix}'"
            if places
            else ("no decimal places" + (f" with suffix '{suffix}'" if suffix else ""))
        )
        raise ValueError(f"must be a whole number of {unit} with {allowed}, got {value!r}")


def parse_quantity(value: object, *, unit: str, example: str) -> int:
    """The whole number of `unit`s `value` stands for. Raises ValueError with a message for
    users (without the field name, which the caller knows)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"must be an integer or a string like '{example}' ({unit}), got {type(value).__name__}"
        )
    if isinstance(value, int):
        amount = value
    else:
        match = _QUANTITY.fullmatch(value) if len(value) <= QUANTITY_MAX_LENGTH else None
        if match is None:
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise ValueError(
                f"must be a quantity of {unit} like '{example}': a number with an optional "
                f"suffix ({SUFFIX_HELP}), got {shown!r}{_hint(value)}"
            )
        number, suffix = match.group("number"), match.group("suffix") or ""
        _check_kubernetes_can_count(value, number, suffix, unit)
        exact = Decimal(number) * MULTIPLIERS[suffix]
        amount = int(exact)
    if amount < 0:
        raise ValueError(f"must not be negative, got {value}")
    if amount > INT64_MAX:
        raise ValueError(f"must be at most {INT64_MAX} {unit}, got {value!r}")
    return amount


def bits_per_second(value: int | str) -> int:
    """`"10M"` -> 10_000_000: a bandwidth quantity in bits per second."""
    return parse_quantity(value, unit="bits per second", example="10M")


def byte_count(value: int | str) -> int:
    """`"100Gi"` -> 107_374_182_400: a traffic quantity in bytes."""
    return parse_quantity(value, unit="bytes", example="100Gi")


def format_quantity(amount: int, *, binary: bool = False) -> str:
    """The shortest exact quantity string: 10_000_000 -> "10M", 2**30 (binary) -> "1Gi"."""
    if amount < 0:
        raise ValueError("quantities are never negative")
    suffixes = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"] if binary else ["E", "P", "T", "G", "M", "k"]
    for suffix in suffixes:
        if amount and amount % MULTIPLIERS[suffix] == 0:
            return f"{amount // MULTIPLIERS[suffix]}{suffix}"
    return str(amount)


def _quantity_type(*, unit: str, example: str, positive: bool, error_type: str) -> Any:
    def validate(value: object) -> int | str:
        try:
            amount = parse_quantity(value, unit=unit, example=example)
        except ValueError as exc:
            raise PydanticCustomError(error_type, str(exc)) from None
        if positive and amount == 0:
            raise PydanticCustomError(error_type, f"must be greater than zero, got {value!r}")
        return value  # type: ignore[return-value]  # int or str, checked by parse_quantity

    rules = [
        cel_rule(
            "type(self) == int || (isQuantity(self) && quantity(self).isInteger())",
            f"must be a whole number of {unit} that fits in 64 bits, like '{example}'",
        )
    ]
    if positive:
        rules.append(
            cel_rule(
                "type(self) == int || !isQuantity(self)"
                ' || quantity(self).isGreaterThan(quantity("0"))',
                f"must be greater than zero, like '{example}'",
            )
        )
    schema = {
        # An int or a string: no `type`, as structural schemas require for int-or-string.
        "x-kubernetes-int-or-string": True,
        # pattern and maxLength apply to the string form only, minimum to the integer form;
        # maxLength also bounds the CEL cost estimate (Kubernetes 1.34 and later).
        "pattern": QUANTITY_PATTERN,
        "maxLength": QUANTITY_MAX_LENGTH,
        "minimum": 1 if positive else 0,
        "x-kubernetes-validations": rules,
    }
    return Annotated[int | str, PlainValidator(validate), WithJsonSchema(schema)]


BitRate = _quantity_type(
    unit="bits per second", example="10M", positive=False, error_type="bit_rate"
)
PositiveBitRate = _quantity_type(
    unit="bits per second", example="10M", positive=True, error_type="bit_rate"
)
ByteQuantity = _quantity_type(
    unit="bytes", example="100Gi", positive=False, error_type="byte_quantity"
)
