"""Property tests: whatever a user writes into a Tunnel, validation either accepts it or
raises a ValidationError with clean, field-naming messages; never another exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from support.strategies import (
    bad_label,
    junk,
    name_1035,
    quota_specs,
    relay_specs,
    sometimes,
    tunnel_specs,
)
from tunnelop.api.v1alpha1 import (
    RelayNode,
    RelayPool,
    Tunnel,
    TunnelQuota,
    bits_per_second,
    error_messages,
)


def tunnel(spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": "t"},
        "spec": spec,
    }


def assert_clean(error: ValidationError) -> None:
    messages = error_messages(error)
    assert messages, "a ValidationError names at least one problem"
    for message in messages:
        assert isinstance(message, str) and message.strip()
        assert "\n" not in message and "Traceback" not in message
        # Every problem names its field, e.g. "spec.remotePort: ...".
        assert ": " in message, message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=sometimes(tunnel_specs, junk))
def test_tunnel_validation_never_crashes(spec: Any) -> None:
    try:
        parsed = Tunnel.model_validate(tunnel(spec))
    except ValidationError as error:
        assert_clean(error)
        return
    # What validates is usable: the speed limit converts and the object round-trips.
    if parsed.spec.bandwidth is not None:
        assert bits_per_second(parsed.spec.bandwidth) > 0
    dumped = parsed.model_dump(mode="json", exclude_unset=True)
    assert Tunnel.model_validate(dumped) == parsed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=sometimes(relay_specs, junk), name=sometimes(name_1035, bad_label))
def test_relay_validation_never_crashes(spec: Any, name: Any) -> None:
    objects = [
        (RelayNode, {"kind": "RelayNode", "metadata": {"name": name}, "spec": spec}),
        (
            RelayPool,
            {"kind": "RelayPool", "metadata": {"name": name}, "spec": {"template": {"spec": spec}}},
        ),
    ]
    for model, obj in objects:
        try:
            model.model_validate(obj)
        except ValidationError as error:
            assert_clean(error)


@settings(max_examples=200, deadline=None)
@given(spec=sometimes(quota_specs, junk))
def test_quota_validation_never_crashes(spec: Any) -> None:
    try:
        TunnelQuota.model_validate({"kind": "TunnelQuota", "metadata": {"name": "q"}, "spec": spec})
    except ValidationError as error:
        assert_clean(error)


@pytest.mark.parametrize("value", ["{x}", "{}", "%s", "{0!r}"])
def test_braces_in_input_do_not_break_messages(value: str) -> None:
    # Messages embed user input; a template engine must not interpret it.
    with pytest.raises(ValidationError) as caught:
        Tunnel.model_validate(tunnel({"protocol": "http", "subdomain": value, "bandwidth": value}))
    assert any(value in message for message in error_messages(caught.value))


@settings(max_examples=200, deadline=None)
@given(
    whole=st.integers(min_value=0, max_value=10**9),
    fraction=st.text(alphabet="0123456789", max_size=3),
    suffix=st.sampled_from(["k", "M", "G", "T", "P", "E"]),
)
def test_decimal_quantities_convert_exactly(whole: int, fraction: str, suffix: str) -> None:
    # Up to three decimal places fit every decimal suffix, as in Kubernetes ("1.5k" is 1500).
    text = f"{whole}.{fraction}{suffix}" if fraction else f"{whole}{suffix}"
    exponent = {"k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}[suffix]
    expected = (whole * 10 ** len(fraction) + int(fraction or "0")) * 10 ** (
        exponent - len(fraction)
    )
    if expected <= 2**63 - 1:
        assert bits_per_second(text) == expected
    else:
        with pytest.raises(ValueError, match="at most"):
            bits_per_second(text)
