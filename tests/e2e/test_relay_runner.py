"""The relay-pod runner plays kubelet for relay pods: a plain pod that runs frps from a
ConfigMap really serves, and a real frpc pushes bytes through it on loopback. It also plays
the cloud's load balancer for relay Services (this module asks for it), and holds a relay's
pod down for as long as a test wants, as failing readiness probes would."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import textwrap
import uuid
from typing import Any

import pytest
from kubernetes.aio import client

from support import objects, tools
from support.dataplane import (
    TEST_RELAY_LABEL,
    delete_relay,
    on,
    running_frpc,
    until_closed,
    wait_agent_ready,
)
from support.netutil import echo_server, port_closes, wait_for_echo
from support.objects import relay_node, tunnel, wait_condition, wait_for
from support.relay_runner import RELAY_LABEL, RelayPodRunner
from tunnelop.contract.naming import CONTROL_PORT, PLUGIN_PORT

RELAY_NAMESPACE = "tunnelop-system"
RUN = uuid.uuid4().hex[:5]


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"serve_load_balancers": True}


FRPS_TOML = textwrap.dedent(
    """
    # The pod IP comes from the downward API; the runner resolves it to the relay's address.
    bindAddr = "{{ .Envs.POD_IP }}"
    bindPort = 7000
    proxyBindAddr = "{{ .Envs.POD_IP }}"
    auth.method = "token"
    auth.token = "{{ .Envs.FRP_TOKEN }}"
    allowPorts = [{ start = 17000, end = 17999 }]
    """
)


async def test_frps_pod_carries_real_bytes_from_frpc(
    kube: client.ApiClient, namespace: str, relay_runner: RelayPodRunner, tmp_path
) -> None:
    relay = f"proof-{uuid.uuid4().hex[:6]}"
    token = uuid.uuid4().hex
    core = client.CoreV1Api(kube)
    await core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="frps"), data={"frps.toml": FRPS_TOML}
        ),
    )
    await core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="frps-token"), string_data={"token": token}
        ),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="relay", labels={RELAY_LABEL: relay}),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="frps",
                    image=f"ghcr.io/fatedier/frps:{tools.versions()['FRP_VERSION']}",
                    command=["frps"],
                    args=["-c", "/etc/frp/frps.toml"],
                    env=[
                        client.V1EnvVar(
                            name="POD_IP",
                            value_from=client.V1EnvVarSource(
                                field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
                            ),
                        ),
                        client.V1EnvVar(
                            name="FRP_TOKEN",
                            value_from=client.V1EnvVarSource(
                                secret_key_ref=client.V1SecretKeySelector(
                                    name="frps-token", key="token"
                                )
                            ),
                        ),
                    ],
                    volume_mounts=[client.V1VolumeMount(name="config", mount_path="/etc/frp")],
                )
            ],
            volumes=[
                client.V1Volume(
                    name="config", config_map=client.V1ConfigMapVolumeSource(name="frps")
                )
            ],
        ),
    )
    await core.create_namespaced_pod(namespace, pod)
    address = relay_runner.address_of(relay)
    # A loopback address of its own, never the host's own 127.0.0.1.
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network("127.0.0.0/8")
    assert address != "127.0.0.1"

    remote_port = 17000 + int(uuid.uuid4().int % 1000)
    async with echo_server() as local_port:
        frpc_toml = tmp_path / "frpc.toml"
        frpc_toml.write_text(
            textwrap.dedent(
                f"""
                serverAddr = "{address}"
                serverPort = 7000
                auth.method = "token"
                auth.token = "{token}"
                loginFailExit = false
                [[proxies]]
                name = "echo"
                type = "tcp"
                localIP = "127.0.0.1"
                localPort = {local_port}
                remotePort = {remote_port}
                """
            )
        )
        frpc = await asyncio.create_subprocess_exec(
            str(tools.tool("frpc")),
            "-c",
            str(frpc_toml),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            payload = os.urandom(64 * 1024)
            try:
                echoed = await wait_for_echo(address, remote_port, payload, timeout=30)
            except TimeoutError:
                raise AssertionError(relay_runner.logs(relay)) from None
            assert echoed == payload
        finally:
            frpc.terminate()
            await frpc.wait()

    # The pod is what runs: deleting it stops frps, and its control port closes.
    await core.delete_namespaced_pod("relay", namespace, grace_period_seconds=0)
    assert await port_closes(address, 7000, timeout=15), "frps still listening after pod deletion"
    assert relay_runner.pod_for(relay) is None


# ---- the cloud's load balancer, and outages that last ---------------------------------------


@pytest.fixture(scope="module")
async def lb_relay(operator, relay_runner: RelayPodRunner):
    """A relay exposed by a LoadBalancer Service and no spec.exposure.address, as a pool's
    relays are; its address comes from the load balancer the runner plays."""
    name = f"lb-{RUN}"
    objects.apply(
        relay_node(
            name,
            ports="23000-23099",
            labels={TEST_RELAY_LABEL: name},
            exposure={"type": "LoadBalancer"},
        )
    )
    try:
        yield name
    finally:
        delete_relay(name)
        await until_closed(relay_runner.address_of(name), PLUGIN_PORT, timeout=30)


async def answers(address: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def deployment_of(relay: str) -> dict[str, Any]:
    (found,) = objects.list_objects("deployment", RELAY_NAMESPACE, f"{RELAY_LABEL}={relay}")
    return found


async def ready_replicas_become(relay: str, count: int) -> None:
    def reached():
        status = deployment_of(relay).get("status") or {}
        return (status.get("readyReplicas") or 0) == count

    await wait_for(reached, timeout=60, what=f"relay {relay}'s Deployment at {count} ready")


def pod_ready(pod: dict[str, Any] | None) -> str | None:
    found = objects.condition(pod, "Ready")
    return found["status"] if found else None


async def test_load_balancer_relay_gets_the_runners_address(
    lb_relay: str, relay_runner: RelayPodRunner, namespace: str, tmp_path
) -> None:
    address = relay_runner.address_of(lb_relay)
    await wait_condition("relaynode", lb_relay, None, "Ready", timeout=90)

    def public_address():
        return ((objects.get("relaynode", lb_relay) or {}).get("status") or {}).get("publicAddress")

    # Ready comes from the Deployment; the address from the load balancer, read back after.
    assert await wait_for(public_address, timeout=30, what="publicAddress") == address
    service = objects.get("service", f"relay-{lb_relay}", RELAY_NAMESPACE)
    assert [i["ip"] for i in service["status"]["loadBalancer"]["ingress"]] == [address]
    await wait_agent_ready(relay_runner, lb_relay)
    assert await answers(address, CONTROL_PORT)

    # A visitor of the load balancer's address reaches a tunnel on the relay.
    objects.apply(tunnel("echo", "tcp", **on(lb_relay)), namespace)
    placed = await wait_condition("tunnel", "echo", namespace, "Ready")
    port = placed["status"]["remotePort"]
    assert placed["status"]["endpoint"] == f"{address}:{port}"
    payload = os.urandom(64 * 1024)
    async with echo_server() as local, running_frpc("echo", namespace, local, tmp_path) as frpc:
        try:
            assert await wait_for_echo(address, port, payload, timeout=30) == payload
        except TimeoutError:
            raise AssertionError(frpc.logs() + relay_runner.logs(lb_relay)) from None


async def test_held_down_relay_is_not_ready_until_brought_up(
    lb_relay: str, relay_runner: RelayPodRunner, kube: client.ApiClient
) -> None:
    address = relay_runner.address_of(lb_relay)
    await wait_condition("relaynode", lb_relay, None, "Ready", timeout=90)
    await wait_agent_ready(relay_runner, lb_relay)

    await relay_runner.hold_down(lb_relay)
    try:
        # The deployment controller counts the pod unready; the operator reads that.
        await ready_replicas_become(lb_relay, 0)
        await wait_condition(
            "relaynode", lb_relay, None, "Ready", "False", "RelayPodNotReady", timeout=60
        )
        assert not await answers(address, CONTROL_PORT)

        # The Deployment's next pod is held down as well, though kwok reports it ready first.
        held = relay_runner.pod_for(lb_relay)
        assert held is not None
        await client.CoreV1Api(kube).delete_namespaced_pod(
            held.name, held.namespace, grace_period_seconds=0
        )

        def next_pod_unready():
            pod = relay_runner.pod_for(lb_relay)
            if pod is None or pod.uid == held.uid:
                return None
            found = objects.get("pod", pod.name, pod.namespace)
            return pod if pod_ready(found) == "False" else None

        await wait_for(next_pod_unready, timeout=60, what="the next pod held down")
        await ready_replicas_become(lb_relay, 0)
        assert not await answers(address, CONTROL_PORT)
    finally:
        await relay_runner.bring_up(lb_relay)

    await ready_replicas_become(lb_relay, 1)
    await wait_condition("relaynode", lb_relay, None, "Ready", timeout=60)
    assert await answers(address, CONTROL_PORT)
