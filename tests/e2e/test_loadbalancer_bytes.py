"""The load-balancer class end to end: a visitor's bytes, sent to the address a Service of
the class tunnelop.dev/relay shows in status.loadBalancer, pass the relay (real frps and
agent), the frpc the operator runs for the Service's Tunnel (an InCluster client, run by the
relay-pod runner from its pod spec) and reach the server behind the Service, and come back.

There is no cluster DNS or kube-proxy here: the runner is told where the Service's name
resolves (serve_service), and the server runs in the test on that loopback address, on the
Service's port (where the Service's cluster IP would take the connection).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from support import objects, tools
from support.dataplane import serving_relay, udp_echo_server, wait_for_udp_echo
from support.netutil import echo_server, wait_for_echo
from support.objects import wait_condition, wait_for
from support.relay_runner import RelayPodRunner

RUN = uuid.uuid4().hex[:5]
TCP_PORT, UDP_PORT = 23201, 23202


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    """One relay for the module, offering the Service's ports; returns (name, address)."""
    async with serving_relay(relay_runner, f"lbb-{RUN}", ports="23200-23209") as relay:
        yield relay


def game_service(relay_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "game", "annotations": {"tunnelop.dev/relay-node": relay_name}},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "tunnelop.dev/relay",
            "allocateLoadBalancerNodePorts": False,
            "selector": {"app": "game"},
            "ports": [
                {"name": "java", "port": TCP_PORT, "targetPort": TCP_PORT, "protocol": "TCP"},
                {"name": "bedrock", "port": UDP_PORT, "targetPort": UDP_PORT, "protocol": "UDP"},
            ],
        },
    }


def diagnostics(runner: RelayPodRunner, relay_name: str, namespace: str) -> str:
    tunnels = tools.kubectl("get", "tun,deploy,pods", "-n", namespace, "-o", "wide", check=False)
    lines = [tunnels.stdout + tunnels.stderr]
    for tunnel in (f"game-{TCP_PORT}-tcp", f"game-{UDP_PORT}-udp"):
        lines.append(f"{tunnel}: {(objects.get('tunnel', tunnel, namespace) or {}).get('status')}")
        lines.append(runner.client_logs(namespace, tunnel))
    lines.append(runner.logs(relay_name))
    return "\n".join(lines)


async def test_a_visitors_bytes_reach_the_server_behind_the_service(
    relay, namespace, relay_runner
) -> None:
    relay_name, address = relay
    backend = relay_runner.address_of(f"service:{namespace}/game")
    async with echo_server(backend, TCP_PORT), udp_echo_server(backend, UDP_PORT):
        relay_runner.serve_service(namespace, "game", backend)  # before its frpc pods start
        objects.apply(game_service(relay_name), namespace)

        def ingress() -> list[dict[str, Any]]:
            body = objects.get("service", "game", namespace) or {}
            return ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []

        expected = [
            {
                "ip": address,
                "ipMode": "Proxy",
                "ports": [
                    {"port": TCP_PORT, "protocol": "TCP"},
                    {"port": UDP_PORT, "protocol": "UDP"},
                ],
            }
        ]
        try:
            await wait_for(lambda: ingress() == expected, what="the relay's address in status")
        except TimeoutError:
            raise AssertionError(diagnostics(relay_runner, relay_name, namespace)) from None

        # A visitor knows only the Service's external address and ports.
        visitor_ip = ingress()[0]["ip"]
        payload = os.urandom(64 * 1024)
        datagram = os.urandom(512)
        try:
            assert await wait_for_echo(visitor_ip, TCP_PORT, payload, timeout=60) == payload
            assert await wait_for_udp_echo(visitor_ip, UDP_PORT, datagram, timeout=60) == datagram
        except TimeoutError:
            raise AssertionError(diagnostics(relay_runner, relay_name, namespace)) from None
        for tunnel in (f"game-{TCP_PORT}-tcp", f"game-{UDP_PORT}-udp"):
            await wait_condition("tunnel", tunnel, namespace, "ClientConnected", timeout=30)

    # Deleting the Service takes its Tunnels, and their frpc with them.
    tools.kubectl("delete", "service", "game", "-n", namespace)
    await wait_for(
        lambda: not objects.list_objects("tunnel", namespace, "tunnelop.dev/service=game"),
        what="the Service's Tunnels deleted",
    )
