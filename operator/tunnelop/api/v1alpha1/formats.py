"""Names and addresses: DNS labels and names, object names, CIDRs, hosts, images and labels.

Each type checks itself in Python with a message for users and carries the matching
OpenAPI/CEL schema, so the API server and the models accept the same values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from tunnelop.api.v1alpha1.common import cel_rule, cel_text

# RFC 1123 label (at most 63 characters; the pattern enforces it per label).
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL_PATTERN = rf"^{_LABEL}$"
DNS_NAME_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
# RFC 1035 label: starts with a letter; what a Service name must be.
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_KEY_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
IMAGE_PATTERN = r"^[^\s]+$"

DNS_LABEL_MAX = 63
DNS_NAME_MAX = 253
CIDR_MAX = 43  # "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
IMAGE_MAX = 512


def _show(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57] + "...")


def _dns_hint(text: str) -> str:
    if text != text.lower():
        return " (use lowercase)"
    if "_" in text:
        return " (use '-' instead of '_')"
    if text.endswith("."):
        return " (without the trailing dot)"
    if " " in text:
        return " (remove the spaces)"
    return ""


def check_dns_label(text: str) -> str:
    if len(text) > DNS_LABEL_MAX or not re.fullmatch(DNS_LABEL_PATTERN, text):
        raise ValueError(
            "must be a DNS label: at most 63 lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit, without dots, got {_show(text)}{_dns_hint(text)}"
        )
    return text


def check_dns_name(text: str) -> str:
    if text.startswith("*"):
        raise ValueError(f"wildcards are not supported, got {_show(text)}")
    if len(text) > DNS_NAME_MAX or not re.fullmatch(DNS_NAME_PATTERN, text):
        raise ValueError(
            "must be a DNS name such as 'example.com': dot-separated labels of lowercase "
            "letters, digits and '-', each at most 63 characters, 253 in all, "
            f"got {_show(text)}{_dns_hint(text)}"
        )
    return text


def check_dns_1035_label(text: str, max_length: int = DNS_LABEL_MAX) -> str:
    if len(text) > max_length or not re.fullmatch(DNS_1035_LABEL_PATTERN, text):
        raise ValueError(
            f"must be a DNS-1035 label: at most {max_length} lowercase letters, digits and "
            f"'-', starting with a letter and ending with a letter or digit, got {_show(text)}"
            f"{_dns_hint(text)}"
        )
    return text


def relay_name_rule(max_length: int) -> dict[str, str]:
    """CEL on the whole object: relay names become Service and Pod names (DNS-1035 labels);
    a RelayPool's name also prefixes its RelayNodes' names, so it is shorter."""
    message = (
        f"must be a DNS-1035 label: at most {max_length} lowercase letters, digits and '-', "
        "starting with a letter and ending with a letter or digit"
    )
    return cel_rule(
        f"size(self.metadata.name) <= {max_length}"
        f" && self.metadata.name.matches(r'{DNS_1035_LABEL_PATTERN}')",
        # The schema does not describe metadata.name, so the error is reported on metadata.
        f"metadata.name {message}",
        field_path=".metadata",
        reason="FieldValueInvalid",
    )


def check_relay_name(name: str | None, max_length: int) -> str | None:
    """The same rule in Python (the name is unset on objects built in code before creation)."""
    if name is not None:
        try:
            check_dns_1035_label(name, max_length)
        except ValueError as exc:
            raise PydanticCustomError("relay_name", str(exc)) from None
    return name


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, in the forms Kubernetes accepts: no zone, no IPv4-mapped IPv6."""
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None
    return address


def check_cidr(text: str) -> str:
    example = "such as '203.0.113.0/24' or '2001:db8::/32'"
    address, slash, bits = text.partition("/")
    if not slash:
        if _parse_ip(text) is not None:
            width = 32 if "." in text else 128
            raise ValueError(
                f"must be a CIDR with a prefix length, got {_show(text)} "
                f"(for a single address write '{text}/{width}')"
            )
        raise ValueError(f"must be a CIDR {example}, got {_show(text)}")
    ip = _parse_ip(address)
    if ip is None or not re.fullmatch(r"0|[1-9][0-9]{0,2}", bits) or int(bits) > ip.max_prefixlen:
        raise ValueError(f"must be a CIDR {example}, got {_show(text)}")
    network = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    if network.network_address != ip:
        raise ValueError(
            f"must be a network address with no host bits set, got {_show(text)} "
            f"(did you mean '{network}'?)"
        )
    return text


def check_host(text: str) -> str:
    if _parse_ip(text) is not None:
        return text
    try:
        return check_dns_name(text)
    except ValueError:
        raise ValueError(
            f"must be an IP address or a DNS name such as 'relay1.example.com', got {_show(text)}"
            f"{_dns_hint(text)}"
        ) from None


def check_image(text: str) -> str:
    if not text or len(text) > IMAGE_MAX or not re.fullmatch(IMAGE_PATTERN, text):
        raise ValueError(
            "must be a container image reference such as 'ghcr.io/fatedier/frps:v0.71.0' "
            f"(no spaces, at most {IMAGE_MAX} characters), got {_show(text)}"
        )
    return text


def check_label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if (
        len(name) > DNS_LABEL_MAX
        or not _LABEL_KEY_NAME.fullmatch(name)
        or (slash and (len(prefix) > DNS_NAME_MAX or not re.fullmatch(DNS_NAME_PATTERN, prefix)))
    ):
        raise ValueError(
            "label keys are an optional DNS-name prefix and '/', then at most 63 letters, "
            f"digits, '-', '_' or '.', starting and ending with a letter or digit, got {_show(key)}"
        )
    return key


def check_label_value(value: str) -> str:
    if len(value) > DNS_LABEL_MAX or not re.fullmatch(LABEL_VALUE_PATTERN, value):
        raise ValueError(
            "label values are empty or at most 63 letters, digits, '-', '_' or '.', starting "
            f"and ending with a letter or digit, got {_show(value)}"
        )
    return value


# pydantic types -------------------------------------------------------------------------------


def _string_type(check: Callable[[str], str], error_type: str, schema: dict[str, Any]) -> Any:
    """A str whose Python check and CRD schema travel together."""

    def validate(value: object) -> str:
        if not isinstance(value, str):
            raise PydanticCustomError(error_type, f"must be a string, got {type(value).__name__}")
        try:
            return check(value)
        except ValueError as exc:
            raise PydanticCustomError(error_type, str(exc)) from None

    return Annotated[str, PlainValidator(validate), WithJsonSchema({"type": "string", **schema})]


DnsLabel = _string_type(
    check_dns_label, "dns_label", {"pattern": DNS_LABEL_PATTERN, "maxLength": DNS_LABEL_MAX}
)
DnsName = _string_type(
    check_dns_name, "dns_name", {"pattern": DNS_NAME_PATTERN, "maxLength": DNS_NAME_MAX}
)
ServiceName = _string_type(
    lambda text: check_dns_1035_label(text),
    "service_name",
    {"pattern": DNS_1035_LABEL_PATTERN, "maxLength": DNS_LABEL_MAX},
)
# RelayNodes and RelayPools name Services and Pods after themselves: DNS-1035 labels.
RelayObjectName = ServiceName
Cidr = _string_type(
    check_cidr,
    "cidr",
    {
        "maxLength": CIDR_MAX,
        "x-kubernetes-validations": [
            cel_rule(
                "isCIDR(self) && cidr(self) == cidr(self).masked()",
                "must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32, with no host bits set",
                message_expression=cel_text(
                    "must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32, with no host "
                    "bits set, got '{value}'",
                    value="self",
                ),
            )
        ],
    },
)
Host = _string_type(
    check_host,
    "host",
    {
        "maxLength": DNS_NAME_MAX,
        "x-kubernetes-validations": [
            cel_rule(
                f"isIP(self) || self.matches(r'{DNS_NAME_PATTERN}')",
                "must be an IP address or a DNS name such as relay1.example.com",
            )
        ],
    },
)
ImageRef = _string_type(
    check_image, "image", {"pattern": IMAGE_PATTERN, "maxLength": IMAGE_MAX, "minLength": 1}
)


def _check_string_map(
    value: object, kind: str, check_value: Callable[[str], object] | None
) -> dict[str, str]:
    """A map of label keys (as labels and annotations have) to strings, at most 64 entries;
    `kind` ("labels", "annotations") names it in errors."""
    singular = kind.removesuffix("s")
    if not isinstance(value, dict):
        raise PydanticCustomError(
            kind, f"must be a map of {singular} keys to values, got {type(value).__name__}"
        )
    if len(value) > 64:
        raise PydanticCustomError(kind, f"must have at most 64 entries, got {len(value)}")
    for key, item in value.items():
        try:
            if not isinstance(key, str) or not isinstance(item, str):
                raise ValueError(f"keys and values must be strings, got {key!r}: {item!r}")
            check_label_key(key)
            if check_value is not None:
                check_value(item)
        except ValueError as exc:
            raise PydanticCustomError(kind, str(exc).replace("label", singular)) from None
    return value


def _string_map_type(
    kind: str, check_value: Callable[[str], object] | None, value_schema: dict[str, Any]
) -> Any:
    """A map type with label keys, checked in Python and carrying the same OpenAPI schema."""
    return Annotated[
        dict[str, str],
        PlainValidator(lambda value: _check_string_map(value, kind, check_value)),
        WithJsonSchema(
            {"type": "object", "maxProperties": 64, "additionalProperties": value_schema}
        ),
    ]


AnnotationMap = _string_map_type("annotations", None, {"type": "string"})
LabelMap = _string_map_type(
    "labels",
    check_label_value,
    {"type": "string", "maxLength": DNS_LABEL_MAX, "pattern": LABEL_VALUE_PATTERN},
)

# Free-form Kubernetes objects (tolerations, resources): passed through to the relay Pod,
# where the API server validates them against the core types.
FreeFormObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
