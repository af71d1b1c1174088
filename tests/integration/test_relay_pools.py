"""RelayPools against the real API server: a pool owns its RelayNodes, `kubectl scale` and the
/scale subresource size it, the built-in autoscaler serves a burst in one step and shrinks
after the delay without flapping, a template change rolls out relay by relay, and a template
that would make broken relays makes none and says why."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

from kubernetes.aio import client

from support import objects, tools
from support.objects import tunnel, wait_condition, wait_for

POOL_LABEL = "tunnelop.dev/pool"


def relay_pool(
    name: str, *, replicas: int = 1, capacity: int | None = None, labels=None, **spec: Any
) -> dict[str, Any]:
    template: dict[str, Any] = {
        "ports": {"range": "21100-21199"},
        # An address of its own: the relays are Ready without a load balancer, and a pool's
        # relays can outnumber the fake Nodes (a HostNetwork pod takes a Node's ports).
        "exposure": {"type": "LoadBalancer", "address": "198.51.100.20"},
    }
    if capacity is not None:
        template["capacity"] = {"tunnels": capacity}
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "RelayPool",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": labels} if labels else {}, "spec": template},
            **spec,
        },
    }


def pool_relays(pool: str) -> list[dict[str, Any]]:
    return objects.list_objects("relaynode", selector=f"{POOL_LABEL}={pool}")


def active(relays: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in relays
        if not r["spec"].get("drain") and not r["metadata"].get("deletionTimestamp")
    ]


def ready_count(relays: list[dict[str, Any]]) -> int:
    return sum(
        1 for r in active(relays) if (objects.condition(r, "Ready") or {}).get("status") == "True"
    )


async def until_pool(pool: str, replicas: int, timeout: float = 90) -> list[dict[str, Any]]:
    """Until the pool has exactly `replicas` RelayNodes, all ready, none going away, and says
    so (readyReplicas, Ready)."""

    def settled():
        relays = pool_relays(pool)
        body = objects.get("relaypool", pool) or {}
        status = body.get("status") or {}
        if (
            len(relays) == replicas
            and ready_count(relays) == replicas
            and status.get("readyReplicas") == replicas
            and status.get("replicas") == replicas
            and (objects.condition(body, "Ready") or {}).get("status") == "True"
        ):
            return relays
        return None

    try:
        return await wait_for(settled, timeout, what=f"pool {pool} at {replicas} ready relays")
    except TimeoutError as exc:
        body = objects.get("relaypool", pool) or {}
        names = [(r["metadata"]["name"], r["spec"].get("drain")) for r in pool_relays(pool)]
        raise TimeoutError(
            f"{exc}; relays {names}; status {json.dumps(body.get('status'))}"
        ) from None


def pool_events(pool: str) -> list[dict[str, Any]]:
    return objects.events("default", pool, kind="RelayPool")


def delete_pool(pool: str, tunnels_of: str | None = None) -> None:
    """Delete the pool (its relays go with it), after the tunnels of namespace `tunnels_of`."""
    if tunnels_of:
        tools.kubectl("delete", "tunnels", "--all", "-n", tunnels_of, "--wait=false")
    tools.kubectl("delete", "relaypool", pool, "--ignore-not-found", "--wait=false")


def autoscaling(max_replicas: int, target: int, delay: int) -> dict[str, int]:
    """spec.autoscaling from 1 relay up to `max_replicas`."""
    return {
        "minReplicas": 1,
        "maxReplicas": max_replicas,
        "targetUtilization": target,
        "scaleDownDelaySeconds": delay,
    }


def bound_endpoints(namespace: str, names: list[str]) -> list[tuple[str, int]]:
    found = []
    for name in names:
        status = (objects.get("tunnel", name, namespace) or {}).get("status") or {}
        found.append((status.get("relayNode"), status.get("remotePort")))
    return found


async def test_a_pool_owns_its_relays_and_kubectl_scale_and_the_scale_subresource_size_it(
    crds, operator, kube
) -> None:
    pool = f"p{uuid.uuid4().hex[:6]}"
    objects.apply(relay_pool(pool, replicas=2, labels={"tier": "free"}))
    try:
        relays = await until_pool(pool, 2)
        body = objects.get("relaypool", pool)
        assert sorted(r["metadata"]["name"] for r in relays) == [f"{pool}-0", f"{pool}-1"]
        for relay in relays:
            meta = relay["metadata"]
            assert meta["labels"]["tier"] == "free"
            assert meta["labels"][POOL_LABEL] == pool
            (owner,) = meta["ownerReferences"]
            assert (owner["kind"], owner["uid"], owner["controller"]) == (
                "RelayPool",
                body["metadata"]["uid"],
                True,
            )
        assert body["status"]["selector"] == f"{POOL_LABEL}={pool}"
        assert objects.condition(body, "Scaling")["reason"] == "Converged"

        tools.kubectl("scale", "relaypool", pool, "--replicas=3")
        await until_pool(pool, 3)
        custom = client.CustomObjectsApi(kube)
        scale = await custom.get_cluster_custom_object_scale(
            "tunnelop.dev", "v1alpha1", "relaypools", pool
        )
        assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)
        assert scale["status"]["selector"] == f"{POOL_LABEL}={pool}"
        # The selector selects the pool's relays (and their pods, for an HPA on their CPU).
        selected = tools.kubectl("get", "rn", "-l", scale["status"]["selector"], "-o", "name")
        assert len(selected.stdout.split()) == 3
        pods = tools.kubectl(
            "get", "pods", "-n", "tunnelop-system", "-l", scale["status"]["selector"], "-o", "name"
        )
        assert len(pods.stdout.split()) == 3

        # What an HPA or KEDA does: write spec.replicas through /scale.
        await custom.patch_cluster_custom_object_scale(
            "tunnelop.dev", "v1alpha1", "relaypools", pool, {"spec": {"replicas": 1}}
        )
        relays = await until_pool(pool, 1)
        assert [r["metadata"]["name"] for r in relays] == [f"{pool}-0"]
        reasons = Counter(e["reason"] for e in pool_events(pool))
        assert reasons["RelayCreated"] == 3 and reasons["RelayDeleted"] == 2, reasons
    finally:
        delete_pool(pool)
    await wait_for(lambda: not pool_relays(pool), 60, what="the pool's relays deleted with it")


async def test_a_full_pool_keeps_tunnels_waiting_until_a_relay_is_added(
    crds, operator, namespace
) -> None:
    pool = f"p{uuid.uuid4().hex[:6]}"
    objects.apply(relay_pool(pool, replicas=1, capacity=2))
    try:
        await until_pool(pool, 1)
        for i in range(3):
            objects.apply(tunnel(f"t{i}", relay={"pool": pool}), namespace)
        await wait_condition("tunnel", "t0", namespace, "Ready")
        await wait_condition("tunnel", "t1", namespace, "Ready")
        waiting = await wait_condition(
            "tunnel", "t2", namespace, "Scheduled", "False", reason="CapacityExhausted"
        )
        assert "full" in objects.condition(waiting, "Scheduled")["message"]

        tools.kubectl("scale", "relaypool", pool, "--replicas=2")
        placed = await wait_condition("tunnel", "t2", namespace, "Ready", timeout=60)
        assert placed["status"]["relayNode"] == f"{pool}-1"
        # Tunnels of a pool land only on its relays.
        assert {relay for relay, _ in bound_endpoints(namespace, ["t0", "t1", "t2"])} <= {
            f"{pool}-0",
            f"{pool}-1",
        }
    finally:
        delete_pool(pool, tunnels_of=namespace)


async def test_an_autoscaled_pool_serves_a_burst_in_one_step_and_shrinks_after_the_delay(
    crds, operator, namespace
) -> None:
    pool = f"p{uuid.uuid4().hex[:6]}"
    objects.apply(relay_pool(pool, capacity=10, autoscaling=autoscaling(6, 60, 3)))
    names = [f"t{i:02d}" for i in range(24)]
    try:
        await until_pool(pool, 1)
        objects.apply([tunnel(n, relay={"pool": pool}) for n in names], namespace)
        for name in names:
            await wait_condition("tunnel", name, namespace, "Ready", timeout=120)
        endpoints = bound_endpoints(namespace, names)
        assert len(set(endpoints)) == len(endpoints), endpoints  # no port given twice
        relays = pool_relays(pool)
        assert len(active(relays)) >= 4
        ups = [e for e in pool_events(pool) if e["reason"] == "ScaledUp"]
        # One step: the first decision went from 1 relay to enough for the whole burst.
        assert len(ups) == 1, [e["message"] for e in ups]
        assert "from 1 to" in ups[0]["message"]
        assert int(ups[0]["message"].split("from 1 to ")[1].split()[0]) >= 4, ups[0]["message"]
        body = objects.get("relaypool", pool)
        assert body["status"]["desiredReplicas"] >= 4
        assert body["status"]["utilization"] <= 60

        tools.kubectl("delete", "tunnels", "--all", "-n", namespace)
        await until_pool(pool, 1, timeout=120)
        downs = [e for e in pool_events(pool) if e["reason"] == "ScaledDown"]
        assert downs, "the pool shrank without saying so"
        assert objects.get("relaypool", pool)["status"]["desiredReplicas"] == 1
    finally:
        delete_pool(pool, tunnels_of=namespace)


async def test_a_load_held_at_the_boundary_does_not_make_the_pool_flap(
    crds, operator, namespace
) -> None:
    pool = f"p{uuid.uuid4().hex[:6]}"
    objects.apply(relay_pool(pool, capacity=10, autoscaling=autoscaling(4, 50, 1)))
    try:
        await until_pool(pool, 1)
        # 10 tunnels at a 50% target need exactly 2 relays.
        objects.apply([tunnel(f"t{i}", relay={"pool": pool}) for i in range(10)], namespace)
        for i in range(10):
            await wait_condition("tunnel", f"t{i}", namespace, "Ready", timeout=60)
        await until_pool(pool, 2)
        before = len([e for e in pool_events(pool) if e["reason"] in ("ScaledUp", "ScaledDown")])
        # The load wobbles across the boundary: an 11th tunnel comes and goes, many times
        # the scale-down delay.
        for _ in range(4):
            objects.apply(tunnel("wobble", relay={"pool": pool}), namespace)
            await wait_condition("tunnel", "wobble", namespace, "Ready", timeout=60)
            await asyncio.sleep(2)
            tools.kubectl("delete", "tunnel", "wobble", "-n", namespace)
            await asyncio.sleep(2)
        await asyncio.sleep(3)
        changes = [
            e["message"] for e in pool_events(pool) if e["reason"] in ("ScaledUp", "ScaledDown")
        ][before:]
        # At most one step up (to 3 relays for 11 tunnels), and it stays there.
        assert len(changes) <= 1, changes
        assert all("Scaled up" in c for c in changes), changes
    finally:
        delete_pool(pool, tunnels_of=namespace)


async def test_a_template_change_rolls_out_relay_by_relay_and_tunnels_follow(
    crds, operator, namespace
) -> None:
    pool = f"p{uuid.uuid4().hex[:6]}"
    objects.apply(relay_pool(pool, replicas=2, capacity=10, labels={"version": "a"}))
    names = [f"t{i}" for i in range(6)]
    try:
        await until_pool(pool, 2)
        objects.apply([tunnel(n, relay={"pool": pool}) for n in names], namespace)
        for name in names:
            await wait_condition("tunnel", name, namespace, "Ready", timeout=60)
        old = {r["metadata"]["uid"] for r in pool_relays(pool)}

        objects.apply(relay_pool(pool, replicas=2, capacity=10, labels={"version": "b"}))
        most_draining = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180
        while True:
            relays = pool_relays(pool)
            draining = [r for r in relays if r["spec"].get("drain")]
            most_draining = max(most_draining, len(draining))
            current = [r for r in relays if r["metadata"]["labels"].get("version") == "b"]
            if len(relays) == 2 and len(current) == 2 and ready_count(relays) == 2:
                break
            assert loop.time() < deadline, [r["metadata"]["name"] for r in relays]
            await asyncio.sleep(0.2)
        assert most_draining == 1  # the disruption budget: one relay at a time
        relays = pool_relays(pool)
        assert not {r["metadata"]["uid"] for r in relays} & old  # every relay was replaced
        new = {r["metadata"]["name"] for r in relays}
        for name in names:
            moved = await wait_condition("tunnel", name, namespace, "Ready", timeout=60)
            assert moved["status"]["relayNode"] in new
        endpoints = bound_endpoints(namespace, names)
        assert len(set(endpoints)) == len(endpoints)
        for name in names:
            await wait_for(
                lambda name=name: "Moved" in objects.event_reasons(namespace, name),
                what=f"the Moved Event of {name}",
            )
    finally:
        delete_pool(pool, tunnels_of=namespace)


async def test_a_template_that_makes_invalid_relays_makes_none_and_names_the_field(
    crds, operator
) -> None:
    pool = f"p{uuid.uuid4().hex[:6]}"
    objects.apply(relay_pool(pool, replicas=2, labels={POOL_LABEL: "another"}))
    try:
        body = await wait_condition("relaypool", pool, None, "InvalidTemplate", "True")
        message = objects.condition(body, "InvalidTemplate")["message"]
        assert f'spec.template.metadata.labels["{POOL_LABEL}"]' in message, message
        assert objects.condition(body, "Scaling")["reason"] == "TemplateInvalid"
        await asyncio.sleep(2)
        assert not pool_relays(pool) and not pool_relays("another")

        objects.apply(relay_pool(pool, replicas=2, labels={"tier": "fixed"}))
        await until_pool(pool, 2)
        assert objects.condition(objects.get("relaypool", pool), "InvalidTemplate")["status"] == (
            "False"
        )
    finally:
        delete_pool(pool)
