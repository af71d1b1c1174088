"""Creating many tunnels at once and checking the invariants over all of them; shared by the
scale tests and `make bench`."""

from __future__ import annotations

import asyncio
import base64
import collections
from typing import Any

from kubernetes.aio import client

from support import objects

GROUP, VERSION = "tunnelop.dev", "v1alpha1"


async def create_tunnels(
    api: client.ApiClient,
    namespace: str,
    count: int,
    *,
    placement: dict[str, Any],
    concurrency: int = 32,
    prefix: str = "t",
    on_created=None,
) -> list[str]:
    """Create `count` tcp tunnels concurrently; returns their names."""
    custom = client.CustomObjectsApi(api)
    gate = asyncio.Semaphore(concurrency)
    names = [f"{prefix}-{i:05d}" for i in range(count)]

    async def create(name: str) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Tunnel",
            "metadata": {"name": name},
            "spec": {"protocol": "tcp", "relay": placement},
        }
        async with gate:
            await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "tunnels", body)
        if on_created:
            on_created(name)

    await asyncio.gather(*(create(n) for n in names))
    return names


async def list_tunnels(api: client.ApiClient, namespace: str | None = None) -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(api)
    if namespace:
        result = await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "tunnels")
    else:
        result = await custom.list_cluster_custom_object(GROUP, VERSION, "tunnels")
    return result["items"]


def is_ready(tunnel: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (tunnel.get("status") or {}).get("conditions") or []
    )


async def wait_all_ready(
    api: client.ApiClient, namespace: str, count: int, timeout: float = 300
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        tunnels = await list_tunnels(api, namespace)
        ready = [t for t in tunnels if is_ready(t)]
        if len(ready) == count == len(tunnels):
            return tunnels
        if loop.time() > deadline:
            raise TimeoutError(f"{len(ready)}/{count} tunnels Ready after {timeout}s")
        await asyncio.sleep(1)


def duplicate_ports(tunnels: list[dict[str, Any]]) -> dict[tuple[str, int], list[str]]:
    """(relay, port) held by more than one tunnel (tcp family)."""
    holders: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for t in tunnels:
        status = t.get("status") or {}
        if status.get("remotePort"):
            holders[(status["relayNode"], status["remotePort"])].append(t["metadata"]["name"])
    return {k: v for k, v in holders.items() if len(v) > 1}


async def frpc_configs(api: client.ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    """Every tunnel credentials Secret's frpc.toml, parsed, by tunnel name."""
    core = client.CoreV1Api(api)
    secrets = await core.list_namespaced_secret(namespace, label_selector="tunnelop.dev/tunnel")
    return {
        s.metadata.labels["tunnelop.dev/tunnel"]: objects.parse_frpc(
            base64.b64decode(s.data["frpc.toml"]).decode()
        )
        for s in secrets.items
    }
