"""`tunnelop client` follows its tunnel to another relay with no one touching it: real frps
(relay pods run by the relay-pod runner), the real operator and real frpc. The relay the
tunnel is on is deleted; the operator moves the tunnel to the other relay its nodeSelector
matches and rewrites the tunnel's Secret; the client restarts frpc with the new config and
visitors are served at the new endpoint."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from support import objects
from support.dataplane import (
    TEST_RELAY_LABEL,
    TunnelopClient,
    delete_relay,
    on,
    serving_relays,
)
from support.netutil import echo_server, wait_for_echo
from support.objects import tunnel, wait_condition, wait_for
from tunnelop.contract.naming import CONTROL_PORT

RUN = uuid.uuid4().hex[:5]
SHARED = f"follow-{RUN}"  # the label value both relays carry, which the tunnel selects
RELAY_PORTS = {f"fa-{RUN}": "27000-27049", f"fb-{RUN}": "27050-27099"}


@pytest.fixture(scope="module")
async def relays(operator, relay_runner) -> AsyncIterator[dict[str, str]]:
    """Two relays a tunnel on `on(SHARED)` may land on, with disjoint port ranges so that a
    move changes the remote port too; name -> address."""
    labels = {TEST_RELAY_LABEL: SHARED}
    async with serving_relays(relay_runner, RELAY_PORTS, labels=labels) as addresses:
        yield addresses


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie is gone too


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


async def assert_echo(endpoint: str, *diagnostics) -> None:
    host, port = split_endpoint(endpoint)
    payload = os.urandom(64 * 1024)
    try:
        assert await wait_for_echo(host, port, payload, timeout=60) == payload
    except TimeoutError:
        raise AssertionError(
            f"no echo through {endpoint}:\n" + "\n".join(d() for d in diagnostics)
        ) from None


async def test_the_client_follows_its_tunnel_to_another_relay(
    relays, namespace, tmp_path, relay_runner, cluster
):
    objects.apply(tunnel("echo", "tcp", **on(SHARED)), namespace)
    ready = await wait_condition("tunnel", "echo", namespace, "Ready")
    first, endpoint = ready["status"]["relayNode"], ready["status"]["endpoint"]
    (second,) = set(relays) - {first}
    assert split_endpoint(endpoint)[0] == relays[first]

    async with echo_server() as local:
        client = TunnelopClient(
            f"{namespace}/echo", local, cluster.kubeconfig, tmp_path / "client.log"
        )
        await client.start()
        try:
            diagnostics = (client.logs, lambda: relay_runner.logs(first))
            await assert_echo(endpoint, *diagnostics)
            started = await client.wait_event("starting frpc")
            assert started["relay"] == f"{relays[first]}:{CONTROL_PORT}"

            # The provider takes the relay away; nobody touches the tenant's side.
            delete_relay(first)

            def moved():
                status = (objects.get("tunnel", "echo", namespace) or {}).get("status") or {}
                return status if status.get("relayNode") == second else None

            status = await wait_for(moved, timeout=60, what=f"the tunnel on {second}")
            new_endpoint = status["endpoint"]
            assert new_endpoint == f"{relays[second]}:{status['remotePort']}"
            assert new_endpoint != endpoint
            await wait_for(  # Events are written in the background
                lambda: "Moved" in objects.event_reasons(namespace, "echo"), what="a Moved Event"
            )

            await assert_echo(new_endpoint, client.logs, lambda: relay_runner.logs(second))
            restart = await client.wait_event("tunnel moved; restarting frpc")
            assert restart["from_relay"] == f"{relays[first]}:{CONTROL_PORT}"
            assert restart["to_relay"] == f"{relays[second]}:{CONTROL_PORT}"
            assert restart["to_remote_port"] == status["remotePort"]
            # frpc's own lines, in the client's JSON log: the new frpc runs the proxy.
            await client.wait_line(
                lambda e: (
                    e.get("logger") == "frpc"
                    and e.get("pid") == restart["pid"]
                    and e["event"].endswith("[echo] start proxy success")
                ),
                "the new frpc's proxy started",
            )
            assert not alive(started["pid"])
        finally:
            code = await client.stop()
        assert code == 0, client.logs()
        stopped = await client.wait_event("frpc stopped")
        assert not alive(restart["pid"])
        assert stopped["secret"] == f"{namespace}/echo-frpc"
