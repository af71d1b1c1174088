"""Real bytes through real frps, the real agent and real frpc, on loopback. The relay pod runs
from the pod spec the operator wrote; frpc runs from the frpc.toml the operator wrote, with
only localPort filled in."""

from __future__ import annotations

import os
import uuid

import pytest

from support import objects
from support.dataplane import running_frpc, start_relay
from support.netutil import echo_server, wait_for_echo
from support.objects import tunnel, wait_condition

RUN = uuid.uuid4().hex[:5]


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    """One relay for the module, offering every protocol."""
    name = f"dp-{RUN}"
    address = await start_relay(
        relay_runner,
        name,
        ports="21000-21999",
        protocols=["tcp", "udp", "http", "https"],
        http_domain="tunnels.test",
        labels={"tunnelop.test/relay": name},
    )
    yield name, address
    objects.tools.kubectl("delete", "relaynode", name, "--ignore-not-found", "--wait=false")


def on(relay_name: str) -> dict:
    return {"relay": {"nodeSelector": {"tunnelop.test/relay": relay_name}}}


async def test_tcp_echo(relay, namespace, tmp_path, relay_runner) -> None:
    relay_name, address = relay
    objects.apply(tunnel("echo", "tcp", **on(relay_name)), namespace)
    ready = await wait_condition("tunnel", "echo", namespace, "Ready")
    port = ready["status"]["remotePort"]
    assert ready["status"]["endpoint"] == f"{address}:{port}"
    async with echo_server() as local, running_frpc("echo", namespace, local, tmp_path) as frpc:
        payload = os.urandom(256 * 1024)
        try:
            assert await wait_for_echo(address, port, payload, timeout=20) == payload
        except TimeoutError:
            raise AssertionError(frpc.logs() + relay_runner.logs(relay_name)) from None
