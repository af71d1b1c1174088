"""Invariant 1 at scale: a thousand tunnels created at once, and two thousand while the
operator is killed with SIGKILL again and again — never a port given twice, nothing leaked,
and no Ready tunnel's port ever changed."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from support import load, objects, tools
from support.objects import relay_node, wait_condition
from support.operator import OperatorProcess


@pytest.fixture
def three_relays(request):
    label = {"tunnelop.test/scale": uuid.uuid4().hex[:8]}
    names = [f"scale-{label['tunnelop.test/scale']}-{i}" for i in range(3)]
    objects.apply([relay_node(n, labels=label, ports="40000-44999") for n in names])
    yield names, label
    tools.kubectl("delete", "relaynode", *names, "--ignore-not-found", "--wait=false")


async def _wait_relays_ready(names: list[str]) -> None:
    for name in names:
        await wait_condition("relaynode", name, None, "Ready", timeout=90)


async def test_thousand_concurrent_tunnels_get_distinct_ports_and_valid_configs(
    operator, kube, namespace, relay_namespace, three_relays
) -> None:
    names, label = three_relays
    await _wait_relays_ready(names)
    created = await load.create_tunnels(kube, namespace, 1000, placement={"nodeSelector": label})
    tunnels = await load.wait_all_ready(kube, namespace, len(created), timeout=300)

    assert load.duplicate_ports(tunnels) == {}
    relays_used = {t["status"]["relayNode"] for t in tunnels}
    assert relays_used == set(names)  # spread over all three
    configs = await load.frpc_configs(kube, namespace)
    assert set(configs) == set(created)
    for t in tunnels:
        frpc = configs[t["metadata"]["name"]]
        assert frpc["serverAddr"] == f"{t['status']['relayNode']}.relays.example.test"
        assert frpc["proxies"][0]["remotePort"] == t["status"]["remotePort"]
    tables = await load.relay_tables(kube, relay_namespace)
    on_relays = set().union(*(tables.get(n, set()) for n in names))
    assert on_relays == {f"{namespace}/{n}" for n in created}


async def test_sigkill_during_creation_loses_nothing_and_moves_nothing(
    cluster, crds, operator, kube, namespace, relay_namespace, three_relays, tmp_path
) -> None:
    names, label = three_relays
    await _wait_relays_ready(names)
    # The session's operator steps aside; this test kills its own, again and again.
    await operator.stop()
    victim = OperatorProcess(
        cluster.kubeconfig, tmp_path / "victim.log", "--relay-namespace", relay_namespace
    )
    await victim.start()
    ready_ports: dict[str, tuple[str, int]] = {}
    violations: list[str] = []

    async def watch_ports() -> None:
        """Record every Ready tunnel's (relay, port); it must never change afterwards."""
        while True:
            for t in await load.list_tunnels(kube, namespace):
                if not load.is_ready(t):
                    continue
                name, status = t["metadata"]["name"], t["status"]
                seen = (status["relayNode"], status["remotePort"])
                if ready_ports.setdefault(name, seen) != seen:
                    violations.append(f"{name}: {ready_ports[name]} -> {seen}")
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_ports())
    creating = asyncio.create_task(
        load.create_tunnels(
            kube, namespace, 2000, placement={"nodeSelector": label}, concurrency=16
        )
    )
    try:
        for _ in range(5):
            await asyncio.sleep(2.5)
            await victim.kill()
            await asyncio.sleep(0.5)
            await victim.start()
        created = await creating
        tunnels = await load.wait_all_ready(kube, namespace, len(created), timeout=400)
    finally:
        watcher.cancel()
        await victim.stop()
        await operator.start()

    assert violations == []
    assert load.duplicate_ports(tunnels) == {}
    tables = await load.relay_tables(kube, relay_namespace)
    on_relays = set().union(*(tables.get(n, set()) for n in names))
    assert on_relays == {f"{namespace}/{t['metadata']['name']}" for t in tunnels}  # no leaks
    for t in tunnels:  # the final answer matches the one first seen Ready
        name = t["metadata"]["name"]
        if name in ready_ports:
            assert ready_ports[name] == (t["status"]["relayNode"], t["status"]["remotePort"])
