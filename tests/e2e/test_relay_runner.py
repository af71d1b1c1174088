"""The relay-pod runner plays kubelet for relay pods: a plain pod that runs frps from a
ConfigMap really serves, and a real frpc pushes bytes through it on loopback."""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid

from kubernetes.aio import client

from support import tools
from support.netutil import echo_server, port_closes, wait_for_echo
from support.relay_runner import RELAY_LABEL, RelayPodRunner

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
    assert address.startswith("127.0.0.") and address != "127.0.0.1"

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
