"""Two `tunnelop run` processes against the real API server: only the holder of the Lease is
ready and reconciles; a SIGKILLed leader is replaced within 15 s, a SIGTERMed one hands over
at once; a leader that finds another holder stops and exits non-zero; and a SIGKILL of the
leader in the middle of 500 Tunnel creates loses nothing and gives no port twice (invariants
1 and 8), in the Tunnels' statuses and in the relays' table Secrets."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from kubernetes.aio import client

from support import load, objects, tools
from support.objects import relay_node, wait_condition
from support.operator import OperatorProcess, leading
from tunnelop.contract.naming import table_secret_name
from tunnelop.contract.table import TABLE_SHARDS, parse_table_json

LEASE = "tunnelop"


async def lease_holder(kube: client.ApiClient, namespace: str) -> str | None:
    lease = await client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, namespace)
    return lease.spec.holder_identity


def identity_of(process: OperatorProcess) -> str:
    """The candidate identity the process announced in its log."""
    # The whole log: logs() is its tail, where a busy DEBUG log has long pushed the line out.
    for line in process.log_path.read_text(errors="replace").splitlines():
        if "campaigning for leadership" in line:
            return json.loads(line)["identity"]
    raise AssertionError(f"no identity in the log:\n{process.logs()}")


async def metric(process: OperatorProcess, name: str, labels: str = "") -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{process.health_port}/metrics") as response,
    ):
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def leader_and_follower(
    pair: list[OperatorProcess], timeout: float = 60
) -> tuple[OperatorProcess, OperatorProcess]:
    """The one process ready as the leader (waiting for it), and the other."""
    leader = await the_leader(pair, timeout)
    return leader, next(p for p in pair if p is not leader)


async def the_leader(pair: list[OperatorProcess], timeout: float = 60) -> OperatorProcess:
    """The one process ready as the leader (waiting for it); the other must not lead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        answers = [await p.readyz() for p in pair]
        ready = [p for p, answer in zip(pair, answers, strict=True) if leading(*answer)]
        if ready:
            assert len(ready) == 1, f"both lead: {answers}"
            return ready[0]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no leader: {[await p.readyz() for p in pair]}")


@pytest.fixture
async def pair(cluster, crds, operator, relay_namespace, tmp_path: Path):
    """Two candidates; the session's operator steps aside meanwhile."""
    await operator.stop()
    processes = [
        OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"operator-{i}.log",
            "--leader-elect",
            "--relay-namespace",
            relay_namespace,
            "--log-level",
            "DEBUG",
        )
        for i in range(2)
    ]
    try:
        for p in processes:
            await p.start(wait_for="health")
            # Health comes up first; the campaign (and the identity it logs) a moment later.
            await objects.wait_for(
                lambda p=p: "campaigning for leadership" in p.log_path.read_text(errors="replace"),
                timeout=30,
                what="the campaign's first log line",
            )
        yield processes
    finally:
        for p in processes:
            await p.stop()
        await operator.start()


@pytest.fixture
def three_relays():
    label = {"tunnelop.test/election": uuid.uuid4().hex[:8]}
    names = [f"ha-{label['tunnelop.test/election']}-{i}" for i in range(3)]
    objects.apply([relay_node(n, labels=label, ports="45000-45999") for n in names])
    yield names, label
    tools.kubectl("delete", "relaynode", *names, "--ignore-not-found", "--wait=false")


async def test_only_the_leader_reconciles_while_the_follower_stands_by_ready(
    pair, kube, namespace, relay_namespace, three_relays
) -> None:
    names, label = three_relays
    leader, follower = await leader_and_follower(pair)
    # Ready, so that a disruption budget counts it, but not leading.
    status, body = await follower.readyz()
    assert status == 200
    assert f"[+]leader: following {identity_of(leader)}" in body
    assert "[+]controllers" not in body
    assert await lease_holder(kube, relay_namespace) == identity_of(leader)

    objects.apply(objects.tunnel("web", relay={"nodeSelector": label}), namespace)
    await wait_condition("tunnel", "web", namespace, "Ready", timeout=60)
    bound = objects.get("tunnel", "web", namespace)
    assert bound is not None and bound["status"]["relayNode"] in names

    success = 'controller="tunnels",result="success"'
    assert await metric(leader, "tunnelop_reconciles_total", success) >= 1
    assert await metric(follower, "tunnelop_reconciles_total", success) == 0
    assert await metric(leader, "tunnelop_leader") == 1
    assert await metric(follower, "tunnelop_leader") == 0
    written = f'"relay table written", "relay": "{bound["status"]["relayNode"]}"'
    assert any(
        "relay table written" in line and bound["status"]["relayNode"] in line
        for line in leader.logs().splitlines()
    ), written
    assert "relay table written" not in follower.logs()
    assert "allocation table restored" not in follower.logs()


async def test_sigkill_of_the_leader_hands_over_within_15_seconds(
    pair, kube, relay_namespace
) -> None:
    leader, follower = await leader_and_follower(pair)
    new_identity = identity_of(follower)
    await leader.kill()
    killed = time.monotonic()
    lease_at = ready_at = None
    while time.monotonic() - killed < 30 and (lease_at is None or ready_at is None):
        if lease_at is None and await lease_holder(kube, relay_namespace) == new_identity:
            lease_at = time.monotonic() - killed
        if ready_at is None and await follower.leads():
            ready_at = time.monotonic() - killed
        await asyncio.sleep(0.1)
    print(
        f"\ntakeover after SIGKILL: Lease names the follower after {lease_at:.1f} s, "
        f"it is ready as the leader after {ready_at:.1f} s"
    )
    assert lease_at is not None and lease_at <= 15
    assert ready_at is not None and ready_at <= 15


async def test_sigterm_of_the_leader_releases_the_lease_at_once(
    pair, kube, relay_namespace
) -> None:
    leader, follower = await leader_and_follower(pair)
    assert leader.process is not None
    await leader.stop()
    exited = time.monotonic()
    assert leader.process.returncode == 0
    assert "leader lease released" in leader.logs()
    await follower.wait_ready(timeout=10)
    took = time.monotonic() - exited
    print(f"\ntakeover after SIGTERM: follower ready {took:.1f} s after the leader exited")
    assert took <= 4  # one retry period (2 s), then kopf's start
    assert await lease_holder(kube, relay_namespace) == identity_of(follower)


async def test_a_leader_that_sees_another_holder_stops_and_exits_non_zero(
    pair, kube, relay_namespace
) -> None:
    leader = await the_leader(pair)
    assert leader.process is not None
    coordination = client.CoordinationV1Api(kube)
    lease = await coordination.read_namespaced_lease(LEASE, relay_namespace)
    lease.spec.holder_identity = "intruder"
    lease.spec.lease_duration_seconds = 600
    await coordination.replace_namespaced_lease(LEASE, relay_namespace, lease)
    code = await asyncio.wait_for(leader.process.wait(), 10)
    assert code == 1
    assert "leadership lost: stopping every reconcile now and exiting" in leader.logs()
    await coordination.delete_namespaced_lease(LEASE, relay_namespace)  # let the other lead


async def test_sigkill_of_the_leader_during_500_creates_loses_nothing(
    pair, kube, namespace, relay_namespace, three_relays
) -> None:
    names, label = three_relays
    leader, follower = await leader_and_follower(pair)
    for name in names:
        await wait_condition("relaynode", name, None, "Ready", timeout=90)
    creating = asyncio.create_task(
        load.create_tunnels(kube, namespace, 500, placement={"nodeSelector": label}, concurrency=16)
    )
    await asyncio.sleep(2.5)
    assert not creating.done(), "the creates finished before the kill: make them slower"
    await leader.kill()
    killed = time.monotonic()
    await follower.wait_ready(timeout=30)
    print(f"\nfollower ready {time.monotonic() - killed:.1f} s after the SIGKILL")
    created = await creating
    tunnels = await load.wait_all_ready(kube, namespace, len(created), timeout=300)

    assert load.duplicate_ports(tunnels) == {}
    assert {t["status"]["relayNode"] for t in tunnels} <= set(names)
    # What the relays enforce: exactly the tunnels, each once, where their status says.
    core = client.CoreV1Api(kube)
    entries = []
    for relay in names:
        for shard in range(TABLE_SHARDS):
            secret = await core.read_namespaced_secret(
                table_secret_name(relay, shard), relay_namespace
            )
            document = parse_table_json(base64.b64decode(secret.data["table.json"]))
            assert (document.relay, document.shard) == (relay, shard)
            entries += [(relay, e) for e in document.entries if e.namespace == namespace]
    in_status = {
        t["metadata"]["name"]: (t["status"]["relayNode"], t["status"]["remotePort"])
        for t in tunnels
    }
    holders = collections.defaultdict(list)
    for relay, e in entries:
        holders[(relay, e.protocol, e.remote_port)].append(e.name)
    twice = {
        port: [(name, "status:", in_status.get(name)) for name in names]
        for port, names in holders.items()
        if len(names) > 1
    }
    assert twice == {}, f"{len(twice)} table ports held twice; first: {list(twice.items())[:3]}"
    in_tables = {e.name: (relay, e.remote_port) for relay, e in entries}
    assert len(entries) == len(in_tables) == len(created)
    assert in_tables == in_status


async def test_a_leader_change_keeps_a_tunnel_quota_exact(pair, namespace) -> None:
    """hard.tunnels 3 and 6 tunnels racing to be bound (created before their relay, so that
    admission lets all in): exactly 3 bound before a SIGKILL of the leader and after the
    follower took over; a deleted one makes room for exactly one waiting tunnel."""
    leader, follower = await leader_and_follower(pair)
    label = {"tunnelop.test/election": uuid.uuid4().hex[:8]}
    names = [f"q{i}" for i in range(6)]
    objects.apply([objects.tunnel(n, relay={"nodeSelector": label}) for n in names], namespace)
    await objects.apply_quota(namespace, "tier", {"tunnels": 3})
    relay = f"haq-{label['tunnelop.test/election']}"
    objects.apply(relay_node(relay, labels=label, ports="46000-46099"))
    try:

        def ready_ones(expected: int) -> list[str] | None:
            found = [objects.get("tunnel", n, namespace) for n in names]
            ready = sorted(t["metadata"]["name"] for t in found if load.is_ready(t))
            waiting = [
                t
                for t in found
                if (objects.condition(t, "Scheduled") or {}).get("reason") == "QuotaExceeded"
            ]
            enough = len(ready) == expected and len(waiting) == len(names) - expected
            return ready if enough else None

        before = await objects.wait_for(lambda: ready_ones(3), what="3 bound, 3 waiting")
        await leader.kill()
        assert await the_leader([follower], timeout=30) is follower
        await follower.wait_settled(len(objects.list_objects("tunnel")))
        assert ready_ones(3) == before  # nothing moved, nothing more bound
        tools.kubectl("delete", "tunnel", before[0], "-n", namespace, "--timeout=30s")
        names.remove(before[0])
        after = await objects.wait_for(lambda: ready_ones(3), what="one waiting tunnel bound")
        assert set(before[1:]) < set(after)
    finally:
        tools.kubectl("delete", "relaynode", relay, "--ignore-not-found", "--wait=false")
