"""Kube.overwrite against the real API server: how a relay's table Secret is written. It
creates the Secret when missing, replaces all of it when present (what someone else put in
is gone), and returns the new resourceVersion, by which the operator knows its own writes."""

from __future__ import annotations

import base64

from support import objects, tools
from tunnelop.platform.kube import Kube


def secret(namespace: str, table: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "relay-edge-table", "namespace": namespace, "labels": {"a": "b"}},
        "type": "Opaque",
        "data": {"table.json": base64.b64encode(table.encode()).decode()},
    }


def stored(namespace: str) -> dict:
    return objects.get("secret", "relay-edge-table", namespace)


async def test_overwrite_creates_then_replaces_the_whole_secret(cluster, namespace) -> None:
    kube = await Kube.connect(str(cluster.kubeconfig))
    try:
        created = await kube.overwrite(secret(namespace, '{"tunnels":[]}'))
        assert created is not None
        first = stored(namespace)
        assert base64.b64decode(first["data"]["table.json"]) == b'{"tunnels":[]}'
        assert first["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

        # Someone else adds a key: the next write drops it (the table is the operator's).
        tools.kubectl(
            "patch", "secret", "relay-edge-table", "-n", namespace,
            "--type=merge", "-p", '{"data":{"extra":"eA=="}}',
        )  # fmt: skip
        written = await kube.overwrite(secret(namespace, '{"tunnels":[1]}'))
        assert written is not None
        now = stored(namespace)
        assert set(now["data"]) == {"table.json"}
        assert base64.b64decode(now["data"]["table.json"]) == b'{"tunnels":[1]}'
        assert now["metadata"]["labels"] == {"a": "b"}
        assert now["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
        assert int(now["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    finally:
        await kube.close()
