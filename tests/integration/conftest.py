"""Fixtures of the integration tests that place tunnels on relays of their own."""

from __future__ import annotations

import uuid

import pytest

from support import objects, tools
from support.objects import relay_node, wait_condition


@pytest.fixture
def relay_label() -> dict[str, str]:
    """A label only this test's relays carry, so its tunnels land only there."""
    return {"tunnelop.test/case": uuid.uuid4().hex[:8]}


@pytest.fixture
def cleanup_relays():
    names: list[str] = []
    yield names
    if names:
        tools.kubectl("delete", "relaynode", *names, "--ignore-not-found", "--wait=false")


@pytest.fixture
def ready_relay(relay_label, cleanup_relays):
    """Applies a RelayNode carrying this test's label, waits until it is Ready, and returns
    its name and the spec.relay that places tunnels on it (removed after the test)."""

    async def make(name: str, ports: str, **spec) -> tuple[str, dict]:
        cleanup_relays.append(name)
        objects.apply(relay_node(name, labels=relay_label, ports=ports, **spec))
        await wait_condition("relaynode", name, None, "Ready")
        return name, {"relay": {"nodeSelector": relay_label}}

    return make
