"""InCluster clients end to end: a Tunnel with spec.client.type InCluster gets a frpc
Deployment from the operator, the relay-pod runner runs its pod (the upstream frpc from the
pod spec and the Secret the operator wrote), and a visitor's bytes reach the target Service
through the relay and back.

There is no cluster DNS here: the runner is told where each target Service's name resolves
(serve_service), and the service itself runs in the test on that loopback address.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from support import objects, tools
from support.dataplane import on, serving_relay, udp_echo_server, wait_for_udp_echo
from support.netutil import echo_server, wait_for_echo
from support.objects import tunnel, wait_condition, wait_for
from support.relay_runner import RelayPodRunner

RUN = uuid.uuid4().hex[:5]
IN_CLUSTER = "app.kubernetes.io/name=tunnelop-frpc"


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    """One relay for the module; returns (name, address)."""
    async with serving_relay(relay_runner, f"ic-{RUN}", ports="23100-23199") as relay:
        yield relay


def target_service(name: str, port: int, protocol: str = "TCP") -> dict:
    """A Service as a tenant has it for its workload (no pod backs it here: the runner
    resolves its name to where the test serves)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "main", "port": port, "targetPort": port, "protocol": protocol}],
        },
    }


def in_cluster(service: str, port: int) -> dict:
    return {"client": {"type": "InCluster", "target": {"service": service, "port": port}}}


@asynccontextmanager
async def served_echo(
    runner: RelayPodRunner, namespace: str, service: str, protocol: str = "TCP"
) -> AsyncIterator[int]:
    """An echo server on a loopback address of its own, and Service `service` whose DNS name
    resolves there (for the runner's pods); yields the Service's port."""
    address = runner.address_of(f"service:{namespace}/{service}")
    serve = echo_server if protocol == "TCP" else udp_echo_server
    async with serve(address) as port:
        runner.serve_service(namespace, service, address)
        objects.apply(target_service(service, port, protocol), namespace)
        yield port


def client_deployment(name: str, namespace: str) -> dict | None:
    return objects.get("deployment", f"{name}-frpc", namespace)


def pod_checksum(deployment: dict | None) -> str | None:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(
        "tunnelop.dev/config-checksum"
    )


def resident_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        // 1024
    )


def diagnostics(runner: RelayPodRunner, relay_name: str, namespace: str, name: str) -> str:
    pods = tools.kubectl(
        "get", "pods", "-n", namespace, "-l", IN_CLUSTER, "-o", "wide", check=False
    )
    tun = objects.get("tunnel", name, namespace) or {}
    return "\n".join(
        [
            f"tunnel status: {tun.get('status')}",
            pods.stdout + pods.stderr,
            runner.client_logs(namespace, name),
            runner.logs(relay_name),
        ]
    )


async def test_in_cluster_tcp_client_serves_rolls_with_its_secret_and_goes_when_external(
    relay, namespace, relay_runner
):
    relay_name, address = relay
    name = "echo"
    # The client pod passes the strictest Pod Security level, enforced here.
    tools.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    async with served_echo(relay_runner, namespace, "echo-svc") as service_port:
        applied_at = time.monotonic()
        objects.apply(
            tunnel(name, "tcp", **on(relay_name), **in_cluster("echo-svc", service_port)), namespace
        )
        ready = await wait_condition("tunnel", name, namespace, "Ready")
        ready_after = time.monotonic() - applied_at
        port = ready["status"]["remotePort"]
        payload = os.urandom(64 * 1024)
        try:
            assert await wait_for_echo(address, port, payload, timeout=60) == payload
        except TimeoutError:
            raise AssertionError(diagnostics(relay_runner, relay_name, namespace, name)) from None
        first_byte_after = time.monotonic() - applied_at
        print(
            f"\nInCluster tcp: Tunnel applied -> Ready {ready_after:.1f} s, "
            f"-> first echo through the relay {first_byte_after:.1f} s"
        )

        # What runs is the operator's Deployment, as the runner brought its pod to life.
        deployment = client_deployment(name, namespace)
        assert deployment is not None
        owner = deployment["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("Tunnel", name, True)
        assert owner["uid"] == ready["metadata"]["uid"]
        pod = relay_runner.client_pod(namespace, name)
        assert pod is not None and pod.containers[0].name == "frpc"
        connected = await wait_condition(
            "tunnel", name, namespace, "ClientConnected", "True", timeout=30
        )
        assert f"relay {relay_name}" in objects.condition(connected, "ClientConnected")["message"]
        process = pod.containers[0].process
        if process is not None and process.returncode is None:  # the figure behind its requests
            print(
                f"InCluster tcp: frpc resident after 64 KiB echoed: {resident_mib(process.pid)} MiB"
            )
        # The operator writes only the Tunnel's status: spec, labels, annotations are the user's.
        assert set(connected["metadata"].get("annotations") or {}) <= {
            "kubectl.kubernetes.io/last-applied-configuration"
        }
        assert "labels" not in connected["metadata"]

        # A deleted Secret rotates the token: a new Secret, a rolled pod, bytes flow again.
        secret = objects.secret_data(f"{name}-frpc", namespace)
        checksum = pod_checksum(deployment)
        tools.kubectl("delete", "secret", f"{name}-frpc", "-n", namespace)
        rotated_at = time.monotonic()

        def rotated() -> dict | None:
            found = objects.get("secret", f"{name}-frpc", namespace)
            if not found:
                return None
            token = base64.b64decode(found["data"]["token"]).decode()
            return found if token != secret["token"] else None

        await wait_for(rotated, timeout=30, what="a new token in the credentials Secret")
        rolled = await wait_for(
            lambda: (d := client_deployment(name, namespace)) and pod_checksum(d) != checksum,
            timeout=30,
            what="the client Deployment's pod template following the new Secret",
        )
        assert rolled
        try:
            assert await wait_for_echo(address, port, payload, timeout=60) == payload
        except TimeoutError:
            raise AssertionError(diagnostics(relay_runner, relay_name, namespace, name)) from None
        new_pod = relay_runner.client_pod(namespace, name)
        assert new_pod is not None and new_pod.uid != pod.uid
        print(f"InCluster tcp: Secret deleted -> echo again {time.monotonic() - rotated_at:.1f} s")

        # Back to External: the operator's frpc goes, the tenant's would be the client now.
        objects.patch_tunnel(
            name, namespace, {"spec": {"client": {"type": "External", "target": None}}}
        )
        await wait_for(
            lambda: client_deployment(name, namespace) is None,
            timeout=30,
            what="the client Deployment deleted",
        )
        await wait_for(
            lambda: relay_runner.client_pod(namespace, name) is None,
            timeout=30,
            what="the client pod stopped",
        )
        gone = await wait_condition(
            "tunnel", name, namespace, "ClientConnected", "False", "ClientNotConnected", timeout=30
        )
        assert "run frpc" in objects.condition(gone, "ClientConnected")["message"]
        await objects.wait_for(  # Events are written in the background
            lambda: "ClientDeleted" in objects.event_reasons(namespace, name),
            timeout=30,
            what="a ClientDeleted Event",
        )


async def test_in_cluster_udp_client_serves(relay, namespace, relay_runner):
    relay_name, address = relay
    name = "voice"
    async with served_echo(relay_runner, namespace, "voice-svc", "UDP") as service_port:
        objects.apply(
            tunnel(name, "udp", **on(relay_name), **in_cluster("voice-svc", service_port)),
            namespace,
        )
        ready = await wait_condition("tunnel", name, namespace, "Ready")
        port = ready["status"]["remotePort"]
        try:
            echoed = await wait_for_udp_echo(address, port, b"hello over udp", timeout=60)
        except TimeoutError:
            raise AssertionError(diagnostics(relay_runner, relay_name, namespace, name)) from None
        assert echoed == b"hello over udp"
        await wait_condition("tunnel", name, namespace, "ClientConnected", "True", timeout=30)


async def test_no_client_runs_until_the_target_service_offers_the_port(
    relay, namespace, relay_runner
):
    """A missing Service, or a port it does not offer, is said in ClientConnected (and an
    Event); frpc starts once the Service is there."""
    relay_name, _ = relay
    name = "db"
    objects.apply(tunnel(name, "tcp", **on(relay_name), **in_cluster("db-svc", 5432)), namespace)
    missing = await wait_condition(
        "tunnel", name, namespace, "ClientConnected", "False", "TargetServiceNotFound"
    )
    message = objects.condition(missing, "ClientConnected")["message"]
    assert message.startswith("spec.client.target.service: Service db-svc does not exist")
    assert client_deployment(name, namespace) is None
    assert "TargetServiceNotFound" in objects.event_reasons(namespace, name)

    objects.apply(target_service("db-svc", 5433), namespace)  # the pod's port, say
    wrong = await wait_condition(
        "tunnel", name, namespace, "ClientConnected", "False", "TargetPortNotFound"
    )
    assert (
        "has no TCP port 5432 (it has 5433/TCP)"
        in (objects.condition(wrong, "ClientConnected")["message"])
    )
    assert client_deployment(name, namespace) is None

    # Where its name resolves (nothing listens there: logging in needs no visitor).
    relay_runner.serve_service(
        namespace, "db-svc", relay_runner.address_of(f"service:{namespace}/db-svc")
    )
    objects.apply(target_service("db-svc", 5432), namespace)
    await wait_for(
        lambda: client_deployment(name, namespace) is not None,
        timeout=30,
        what="the client Deployment once the Service offers the port",
    )
    await wait_condition("tunnel", name, namespace, "ClientConnected", "True", timeout=60)


async def test_a_client_pod_the_namespace_refuses_is_said_in_client_connected(
    relay, namespace, relay_runner
):
    """The Deployment cannot create its pod (here a ResourceQuota allows none): the API
    server's refusal is in ClientConnected, reason ClientUnavailable, and in an Event."""
    relay_name, _ = relay
    name = "cache"
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}},
    }
    objects.apply(quota, namespace)
    relay_runner.serve_service(
        namespace, "cache-svc", relay_runner.address_of(f"service:{namespace}/cache-svc")
    )
    objects.apply(target_service("cache-svc", 6379), namespace)
    objects.apply(tunnel(name, "tcp", **on(relay_name), **in_cluster("cache-svc", 6379)), namespace)
    refused = await wait_condition(
        "tunnel", name, namespace, "ClientConnected", "False", "ClientUnavailable", timeout=60
    )
    message = objects.condition(refused, "ClientConnected")["message"]
    assert message.startswith(f"Deployment {name}-frpc cannot create frpc's pod")
    assert "exceeded quota" in message
    assert "ClientUnavailable" in objects.event_reasons(namespace, name)


async def test_operator_restart_leaves_a_running_client_alone(
    relay, namespace, relay_runner, operator
):
    """A restarted operator finds the client Deployment as it would write it (its spec
    checksum), and the Tunnel's status current: no write, no roll, the same pod serving."""
    relay_name, address = relay
    name = "steady"
    async with served_echo(relay_runner, namespace, "steady-svc") as service_port:
        objects.apply(
            tunnel(name, "tcp", **on(relay_name), **in_cluster("steady-svc", service_port)),
            namespace,
        )
        ready = await wait_condition("tunnel", name, namespace, "Ready")
        port = ready["status"]["remotePort"]
        payload = os.urandom(4096)
        assert await wait_for_echo(address, port, payload, timeout=60) == payload
        await wait_condition("tunnel", name, namespace, "ClientConnected", "True", timeout=30)

        def counted() -> bool:
            status = (objects.get("tunnel", name, namespace) or {}).get("status") or {}
            return (status.get("traffic") or {}).get("bytesIn", 0) > 0

        await wait_for(counted, timeout=20, what="traffic in status")
        await asyncio.sleep(4)  # past the traffic write interval: nothing is pending

        def snapshot() -> dict[str, dict]:
            return objects.snapshot_of(
                [
                    objects.get("tunnel", name, namespace),
                    objects.get("secret", f"{name}-frpc", namespace),
                    client_deployment(name, namespace),
                ]
            )

        pod = relay_runner.client_pod(namespace, name)
        before = snapshot()
        await operator.stop()
        await operator.start()
        await asyncio.sleep(6)  # several traffic rounds (1 s) and every reconcile
        objects.assert_unchanged(before, snapshot())
        assert relay_runner.client_pod(namespace, name) is pod
        assert await wait_for_echo(address, port, payload, timeout=20) == payload
