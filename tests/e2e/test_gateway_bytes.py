"""The Gateway API end to end: a Gateway of tunnelop's class with a TCP and a UDP listener on
a relay the relay-pod runner runs, a TCPRoute and a UDPRoute to Services; the operator makes
a Tunnel per route with an in-cluster client, the runner runs the client pods (the upstream
frpc from the Deployments the operator wrote), and a visitor's bytes sent to the Gateway's
address reach the backends and come back.

There is no cluster DNS here: the runner is told where each backend Service's name resolves
(serve_service), and the backend runs in the test on that loopback address."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from support import objects, tools
from support.dataplane import serving_relay, udp_echo_server, wait_for_udp_echo
from support.netutil import echo_server, wait_for_echo
from support.objects import wait_condition, wait_for
from support.relay_runner import RelayPodRunner

RUN = uuid.uuid4().hex[:5]
GROUP = "gateway.networking.k8s.io"
CONTROLLER = "tunnelop.dev/gateway-controller"
TCP_PORT, UDP_PORT = 23410, 23411


@pytest.fixture(scope="module")
async def relay(operator, relay_runner, gateway_api_crds):
    """One relay for the module; returns (name, address)."""
    async with serving_relay(relay_runner, f"gwb-{RUN}", ports="23400-23499") as relay:
        yield relay


@asynccontextmanager
async def served_echo(
    runner: RelayPodRunner, namespace: str, service: str, protocol: str
) -> AsyncIterator[int]:
    """An echo server on a loopback address of its own, and Service `service` whose DNS name
    resolves there for the runner's pods; yields the Service's port."""
    address = runner.address_of(f"service:{namespace}/{service}")
    serve = echo_server if protocol == "TCP" else udp_echo_server
    async with serve(address) as port:
        runner.serve_service(namespace, service, address)
        objects.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service},
                "spec": {
                    "selector": {"app": service},
                    "ports": [{"name": "main", "port": port, "protocol": protocol}],
                },
            },
            namespace,
        )
        yield port


def gateway_api_objects(class_name: str, relay: str, tcp_backend: int, udp_backend: int) -> list:
    def route(kind: str, section: str, service: str, port: int) -> dict:
        return {
            "apiVersion": f"{GROUP}/v1",
            "kind": kind,
            "metadata": {"name": service},
            "spec": {
                "parentRefs": [{"name": "edge", "sectionName": section}],
                "rules": [{"backendRefs": [{"name": service, "port": port}]}],
            },
        }

    return [
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Gateway",
            "metadata": {"name": "edge", "annotations": {"tunnelop.dev/node": relay}},
            "spec": {
                "gatewayClassName": class_name,
                "listeners": [
                    {"name": "tcp", "protocol": "TCP", "port": TCP_PORT},
                    {"name": "udp", "protocol": "UDP", "port": UDP_PORT},
                ],
            },
        },
        route("TCPRoute", "tcp", "echo-tcp", tcp_backend),
        route("UDPRoute", "udp", "echo-udp", udp_backend),
    ]


def listeners_programmed(namespace: str) -> dict | None:
    body = objects.get("gateway", "edge", namespace)
    listeners = ((body or {}).get("status") or {}).get("listeners") or []
    programmed = [
        entry["name"]
        for entry in listeners
        if any(c["type"] == "Programmed" and c["status"] == "True" for c in entry["conditions"])
    ]
    return body if sorted(programmed) == ["tcp", "udp"] else None


def diagnostics(runner: RelayPodRunner, relay: str, namespace: str) -> str:
    tunnels = objects.list_objects("tunnel", namespace, selector="tunnelop.dev/route-kind")
    gateway = objects.get("gateway", "edge", namespace) or {}
    lines = [f"gateway status: {json.dumps(gateway.get('status'))}"]
    for tun in tunnels:
        name = tun["metadata"]["name"]
        lines += [f"tunnel {name}: {json.dumps(tun.get('status'))}"]
        lines += [runner.client_logs(namespace, name)]
    lines.append(runner.logs(relay))
    return "\n".join(lines)


async def test_a_gateway_carries_bytes_to_its_tcp_and_udp_routes_backends(
    relay, namespace, relay_runner
):
    relay_name, address = relay
    class_name = f"gwc-bytes-{RUN}"
    objects.apply(
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": class_name},
            "spec": {"controllerName": CONTROLLER},
        }
    )
    try:
        async with AsyncExitStack() as stack:
            tcp_backend = await stack.enter_async_context(
                served_echo(relay_runner, namespace, "echo-tcp", "TCP")
            )
            udp_backend = await stack.enter_async_context(
                served_echo(relay_runner, namespace, "echo-udp", "UDP")
            )
            objects.apply(
                gateway_api_objects(class_name, relay_name, tcp_backend, udp_backend), namespace
            )
            gateway = await wait_for(
                lambda: listeners_programmed(namespace), 60, what="both listeners Programmed"
            )
            # The Gateway's address is its relay's: visitors go there.
            assert gateway["status"]["addresses"] == [{"type": "IPAddress", "value": address}]

            payload = os.urandom(64 * 1024)
            try:
                assert await wait_for_echo(address, TCP_PORT, payload, timeout=60) == payload
                datagram = os.urandom(512)
                assert await wait_for_udp_echo(address, UDP_PORT, datagram, timeout=60) == datagram
            except (TimeoutError, AssertionError):
                raise AssertionError(diagnostics(relay_runner, relay_name, namespace)) from None

            for tun in objects.list_objects(
                "tunnel", namespace, selector="tunnelop.dev/route-kind"
            ):
                await wait_condition(
                    "tunnel", tun["metadata"]["name"], namespace, "ClientConnected", timeout=30
                )
    finally:
        tools.kubectl("delete", "gateways,tcproutes,udproutes", "--all", "-n", namespace)
        tools.kubectl("delete", "gatewayclass", class_name, "--ignore-not-found")
