"""Invariant 1 at scale: a thousand tunnels created at once, and two thousand while the
operator is killed with SIGKILL again and again — never a port given twice, nothing leaked,
no Ready tunnel's port ever changed, and every relay's table holds exactly the live tunnels
bound to it, with their ports and current tokens (invariant 8)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from support import invariants, load, objects, tools
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


async def _settled_table_violations(kube, relay_namespace, namespace, label) -> list[str]:
    """Once nothing changes any more: where the relays' tables and the live tunnels disagree."""
    prefix = f"scale-{label['tunnelop.test/scale']}-"
    world, unsettled = await invariants.wait_quiescent(
        lambda: invariants.read_world(kube, relay_namespace, namespace, prefix),
        timeout=120,
        interval=2,  # thousands of objects per read
    )
    return [f"did not settle: {u}" for u in unsettled[:20]] + invariants.check_tables(world)


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
    assert await _settled_table_violations(kube, relay_namespace, namespace, label) == []


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
        # Checked while the victim still runs: a restart of the session's operator would be
        # one more crash point, after the ones under test.
        table_violations = await _settled_table_violations(kube, relay_namespace, namespace, label)
    finally:
        watcher.cancel()
        await victim.stop()
        await operator.start()

    assert violations == []
    assert load.duplicate_ports(tunnels) == {}
    # Ports, token digests and names in every relay's table, not names alone: an entry left
    # behind by a crash keeps its port enforced on the relay and its token accepted.
    assert table_violations == [], "\n".join(table_violations[:50])
    for t in tunnels:  # the final answer matches the one first seen Ready
        name = t["metadata"]["name"]
        if name in ready_ports:
            assert ready_ports[name] == (t["status"]["relayNode"], t["status"]["remotePort"])
