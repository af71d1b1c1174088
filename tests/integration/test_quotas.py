"""TunnelQuota against the real API server with the operator running: every limit refused at
admission with the field, the value, the limit and the quota named; the count held exactly
when tunnels race to be bound (and across a restart), waiting tunnels scheduled as soon as
room appears; the tightest of several quotas wins; the namespace kill switch; a limit
lowered below use moves nothing."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from support import objects, tools
from support.objects import relay_node, tunnel, wait_condition
from support.operator import restart_settled

RUN = uuid.uuid4().hex[:6]
GV = ("tunnelop.dev", "v1alpha1")


def refusal(manifest: dict, namespace: str) -> str:
    """The API server's answer to creating `manifest` (empty when admitted)."""
    doc = json.dumps(manifest)
    result = tools.kubectl("create", "-n", namespace, "-f", "-", input=doc, check=False)
    return "" if result.returncode == 0 else result.stderr


def table(relay: str, relay_namespace: str) -> dict[tuple[str, str], dict]:
    entries = objects.relay_table(relay, relay_namespace)
    return {(e["namespace"], e["name"]): e for e in entries}


def states(namespace: str) -> dict[str, tuple[str, str, str]]:
    """name -> (Ready status, Scheduled reason, Scheduled message), for tunnels with both."""
    found = {}
    for t in objects.list_objects("tunnel", namespace):
        ready, scheduled = objects.condition(t, "Ready"), objects.condition(t, "Scheduled")
        if ready and scheduled:
            found[t["metadata"]["name"]] = (
                ready["status"],
                scheduled["reason"],
                scheduled["message"],
            )
    return found


async def settled(namespace: str, names: list[str], ready: int) -> dict[str, tuple]:
    """Until every tunnel has its answer (Ready, or waiting for the quota) and `ready` of them
    are Ready."""

    def check():
        found = states(namespace)
        if set(found) != set(names):
            return None
        answered = all(s == "True" or r == "QuotaExceeded" for s, r, _ in found.values())
        count = sum(1 for s, _, _ in found.values() if s == "True")
        return found if answered and count == ready else None

    try:
        return await objects.wait_for(check, timeout=90, what=f"{ready} of {len(names)} Ready")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {json.dumps(states(namespace), indent=1)}") from None


def ready_names(found: dict[str, tuple]) -> set[str]:
    return {name for name, (status, _, _) in found.items() if status == "True"}


async def pool_relay(name: str, ports: str, pool: str, label: dict, cleanup: list) -> dict:
    cleanup.append(name)
    objects.apply(relay_node(name, labels={**label, "tunnelop.dev/pool": pool}, ports=ports))
    await wait_condition("relaynode", name, None, "Ready")
    return {"relay": {"nodeSelector": label}}


# ---- admission -------------------------------------------------------------------------------


async def test_each_limit_is_refused_at_admission_naming_field_value_limit_and_quota(
    operator, namespace, relay_namespace, relay_label, cleanup_relays
) -> None:
    relay = f"qa-{RUN}"
    placement = await pool_relay(relay, "28000-28009", "free", relay_label, cleanup_relays)
    await objects.apply_quota(
        namespace,
        "tier",
        {
            "tunnels": 2,
            "protocols": ["tcp"],
            "bandwidthPerTunnel": "10M",
            "totalBandwidth": "15M",
            "pools": ["free"],
        },
    )
    ref = f"TunnelQuota {namespace}/tier"
    # No spec.bandwidth: it gets hard.bandwidthPerTunnel, in the relay's table (the agent
    # enforces it server-side).
    objects.apply(tunnel("first", **placement), namespace)
    await wait_condition("tunnel", "first", namespace, "Ready")
    assert table(relay, relay_namespace)[(namespace, "first")]["bandwidthBps"] == 10_000_000
    first = objects.get("tunnel", "first", namespace)
    assert "bandwidth" not in first["spec"]  # the spec is the tenant's: never written

    cases = {
        "hard.protocols": (
            tunnel("web", "http", bandwidth="1M", **placement),
            f"spec.protocol: http is not in hard.protocols [tcp] of {ref}; allowed here: tcp",
        ),
        "hard.bandwidthPerTunnel": (
            tunnel("fast", bandwidth="50M", **placement),
            f"spec.bandwidth: 50M is above hard.bandwidthPerTunnel 10M of {ref}",
        ),
        "hard.totalBandwidth": (
            tunnel("wide", bandwidth="10M", **placement),
            "spec.bandwidth: 10M makes the namespace's total 20M, above hard.totalBandwidth "
            f"15M of {ref} (10M in use by 1 other Tunnels, 5M free)",
        ),
        "hard.pools": (
            tunnel("paid", bandwidth="1M", relay={"pool": "paid"}),
            f"spec.relay.pool: paid is not in hard.pools [free] of {ref}; allowed here: free",
        ),
    }
    for limit, (manifest, expected) in cases.items():
        answer = refusal(manifest, namespace)
        assert expected in answer, f"{limit}: {answer}"
    objects.apply(tunnel("second", bandwidth="5M", **placement), namespace)
    await wait_condition("tunnel", "second", namespace, "Ready")
    answer = refusal(tunnel("third", bandwidth="1M", **placement), namespace)
    assert (
        f"metadata.name: creating Tunnel 'third' makes 3 Tunnels in namespace {namespace}, "
        f"above hard.tunnels 2 of {ref}" in answer
    ), answer


async def test_tunnels_without_a_pool_go_only_to_relays_of_allowed_pools(
    operator, namespace, relay_namespace, relay_label, cleanup_relays
) -> None:
    placement = await pool_relay(f"qp-{RUN}", "28100-28109", "paid", relay_label, cleanup_relays)
    await objects.apply_quota(namespace, "tier", {"pools": ["free"]})
    objects.apply(tunnel("t", **placement), namespace)
    waiting = await wait_condition("tunnel", "t", namespace, "Scheduled", "False", "NoRelayMatches")
    message = objects.condition(waiting, "Scheduled")["message"]
    assert f"hard.pools [free] of TunnelQuota {namespace}/tier" in message, message
    # The provider opens the paid pool to the namespace: scheduled, without polling.
    objects.patch_quota(namespace, "tier", {"hard": {"pools": ["free", "paid"]}})
    bound = await wait_condition("tunnel", "t", namespace, "Ready")
    assert bound["status"]["relayNode"] == f"qp-{RUN}"


# ---- the exact count -------------------------------------------------------------------------


async def test_twelve_created_at_once_under_a_limit_of_five(
    operator, kube, namespace, relay_namespace, ready_relay
) -> None:
    relay, placement = await ready_relay(f"q12-{RUN}", "28200-28299")
    await objects.apply_quota(namespace, "tier", {"tunnels": 5})
    custom = client.CustomObjectsApi(kube)

    async def create(name: str) -> str | None:
        try:
            await custom.create_namespaced_custom_object(
                *GV, namespace, "tunnels", tunnel(name, **placement)
            )
        except ApiException as exc:
            return str(exc.body)
        return None

    names = [f"t{i:02d}" for i in range(12)]
    answers = await asyncio.gather(*(create(name) for name in names))
    admitted = [n for n, answer in zip(names, answers, strict=True) if answer is None]
    for answer in filter(None, answers):
        assert f"above hard.tunnels 5 of TunnelQuota {namespace}/tier" in answer, answer
    assert len(admitted) >= 5
    found = await settled(namespace, admitted, ready=5)
    for name in set(admitted) - ready_names(found):
        _, reason, message = found[name]
        assert reason == "QuotaExceeded"
        assert message == (
            f"5/5 tunnels of hard.tunnels (TunnelQuota {namespace}/tier) are in use; the "
            "tunnel is scheduled when one is deleted or the limit is raised"
        )
    in_table = {name for ns, name in table(relay, relay_namespace) if ns == namespace}
    assert in_table == ready_names(found)


@pytest.fixture
async def five_of_twelve(operator, namespace, relay_label, cleanup_relays):
    """Twelve tunnels of one namespace under hard.tunnels 5, racing to be bound: created
    before their relay exists, so that admission lets all twelve in and they all reach the
    scheduling gate at once when the relay comes up. Returns (relay, names)."""
    names = [f"t{i:02d}" for i in range(12)]
    placement = {"relay": {"nodeSelector": relay_label}}
    objects.apply([tunnel(name, **placement) for name in names], namespace)
    await objects.apply_quota(namespace, "tier", {"tunnels": 5})
    relay = f"q5-{RUN}-{uuid.uuid4().hex[:4]}"
    cleanup_relays.append(relay)
    objects.apply(relay_node(relay, labels=relay_label, ports="28300-28399"))
    return relay, names


async def test_the_limit_holds_exactly_and_waiting_tunnels_take_room_as_it_appears(
    namespace, relay_namespace, five_of_twelve
) -> None:
    relay, names = five_of_twelve
    found = await settled(namespace, names, ready=5)

    def in_table() -> set[str]:
        return {name for ns, name in table(relay, relay_namespace) if ns == namespace}

    assert in_table() == ready_names(found)
    a_waiting_one = sorted(set(names) - ready_names(found))[0]
    await objects.wait_for(
        lambda: "QuotaExceeded" in objects.event_reasons(namespace, a_waiting_one),
        what="a QuotaExceeded Event",
    )
    ports = {
        name: objects.get("tunnel", name, namespace)["status"]["remotePort"]
        for name in ready_names(found)
    }

    # Raised to 8: three more, at once; the five keep their ports.
    objects.patch_quota(namespace, "tier", {"hard": {"tunnels": 8}})
    found = await settled(namespace, names, ready=8)
    assert await objects.wait_for(lambda: in_table() == ready_names(found), what="the table")
    for name, port in ports.items():
        assert objects.get("tunnel", name, namespace)["status"]["remotePort"] == port

    # One deleted: one more of the waiting ones takes its place.
    gone = sorted(ready_names(found))[0]
    tools.kubectl("delete", "tunnel", gone, "-n", namespace, "--timeout=30s")
    names.remove(gone)
    found = await settled(namespace, names, ready=8)
    assert await objects.wait_for(lambda: in_table() == ready_names(found), what="the table")
    used = await objects.wait_for(
        lambda: (
            (objects.get("tunnelquota", "tier", namespace).get("status") or {})
            .get("used", {})
            .get("tunnels")
            == 8
        ),
        what="status.used.tunnels 8",
    )
    assert used
    # kubectl shows use beside the limits.
    shown = tools.kubectl("get", "tq", "tier", "-n", namespace).stdout.split("\n")
    assert shown[0].split() == [
        "NAME", "TUNNELS", "MAX", "TUNNELS", "BANDWIDTH", "MAX", "BANDWIDTH", "TRAFFIC",
        "MAX", "TRAFFIC", "SUSPENDED", "AGE",
    ]  # fmt: skip
    assert shown[1].split()[:3] == ["tier", "8", "8"]


async def test_a_restart_with_waiting_tunnels_moves_nothing(
    operator, namespace, relay_namespace, five_of_twelve
) -> None:
    relay, names = five_of_twelve
    found = await settled(namespace, names, ready=5)

    def snapshot() -> dict[str, dict]:
        watched = objects.list_objects("tunnel", namespace)
        watched += objects.relay_table_secrets(relay, relay_namespace)
        return objects.snapshot_of(watched)

    before = snapshot()
    await restart_settled(operator)
    objects.assert_unchanged(before, snapshot())
    assert ready_names(states(namespace)) == ready_names(found)


async def test_several_quotas_all_apply_and_the_tightest_wins(
    operator, namespace, ready_relay
) -> None:
    _, placement = await ready_relay(f"qs-{RUN}", "28400-28409")
    await objects.apply_quota(namespace, "tier", {"tunnels": 4, "bandwidthPerTunnel": "20M"})
    await objects.apply_quota(namespace, "cap", {"tunnels": 2})
    for name in ("a", "b"):
        objects.apply(tunnel(name, bandwidth="20M", **placement), namespace)
        await wait_condition("tunnel", name, namespace, "Ready")
    answer = refusal(tunnel("c", **placement), namespace)
    assert f"above hard.tunnels 2 of TunnelQuota {namespace}/cap" in answer, answer
    answer = refusal(tunnel("d", bandwidth="30M", **placement), namespace)
    assert f"above hard.bandwidthPerTunnel 20M of TunnelQuota {namespace}/tier" in answer


# ---- the kill switch -------------------------------------------------------------------------


async def test_the_kill_switch_stops_every_tunnel_and_lifting_it_restores_the_ports(
    operator, namespace, relay_namespace, ready_relay
) -> None:
    relay, placement = await ready_relay(f"qk-{RUN}", "28500-28509")
    await objects.apply_quota(namespace, "tier", {"tunnels": 5})
    names = ["a", "b"]
    objects.apply([tunnel(name, **placement) for name in names], namespace)
    ports, generations = {}, {}
    for name in names:
        ready = await wait_condition("tunnel", name, namespace, "Ready")
        ports[name] = ready["status"]["remotePort"]
        generations[name] = ready["metadata"]["generation"]

    objects.patch_quota(namespace, "tier", {"suspended": True})
    for name in names:
        held = await wait_condition(
            "tunnel", name, namespace, "Ready", "False", "NamespaceSuspended"
        )
        message = objects.condition(held, "Ready")["message"]
        assert f"spec.suspended of TunnelQuota {namespace}/tier" in message
        assert held["status"]["remotePort"] == ports[name]
        # The spec stays the tenant's: not written.
        assert held["metadata"]["generation"] == generations[name]
        assert held["spec"]["suspended"] is False
    await objects.wait_for(
        lambda: all(table(relay, relay_namespace)[(namespace, n)].get("suspended") for n in names),
        what="the table entries suspended",
    )
    for name in names:
        await objects.wait_for(
            lambda name=name: "NamespaceSuspended" in objects.event_reasons(namespace, name),
            what="a NamespaceSuspended Event",
        )
    await wait_condition(
        "tunnelquota", "tier", namespace, "Suspended", "True", "NamespaceSuspended"
    )
    # Created while suspended: it waits.
    objects.apply(tunnel("late", **placement), namespace)
    await wait_condition("tunnel", "late", namespace, "Scheduled", "False", "NamespaceSuspended")

    objects.patch_quota(namespace, "tier", {"suspended": False})
    for name in [*names, "late"]:
        ready = await wait_condition("tunnel", name, namespace, "Ready")
        if name in ports:
            assert ready["status"]["remotePort"] == ports[name]
    await objects.wait_for(
        lambda: not any(e.get("suspended") for e in table(relay, relay_namespace).values()),
        what="the table entries running",
    )


# ---- a limit lowered below use ---------------------------------------------------------------


async def test_a_limit_lowered_below_use_moves_nothing_and_new_tunnels_wait(
    operator, namespace, relay_namespace, ready_relay
) -> None:
    relay, placement = await ready_relay(f"ql-{RUN}", "28600-28609")
    await objects.apply_quota(namespace, "tier", {"tunnels": 5})
    names = ["a", "b", "c"]
    objects.apply([tunnel(name, **placement) for name in names], namespace)
    # One more, placed where no relay is yet: admitted, not bound.
    nowhere = {"tunnelop.test/none": RUN}
    objects.apply(tunnel("later", relay={"nodeSelector": nowhere}), namespace)
    ports = {}
    for name in names:
        ready = await wait_condition("tunnel", name, namespace, "Ready")
        ports[name] = ready["status"]["remotePort"]
    await wait_condition("tunnel", "later", namespace, "Scheduled", "False", "NoRelayMatches")

    objects.patch_quota(namespace, "tier", {"hard": {"tunnels": 2}})
    over = await wait_condition("tunnelquota", "tier", namespace, "Exceeded", "True", "OverLimit")
    message = objects.condition(over, "Exceeded")["message"]
    assert message.startswith("3/2 tunnels of hard.tunnels: the limit is below what is in use")
    # The tunnel that was not bound moves to the relay now: it waits for room instead.
    selector = {"tunnelop.test/none": None, **placement["relay"]["nodeSelector"]}
    patch = json.dumps({"spec": {"relay": {"nodeSelector": selector}}})
    tools.kubectl("patch", "tunnel", "later", "-n", namespace, "--type=merge", "-p", patch)
    await wait_condition("tunnel", "later", namespace, "Scheduled", "False", "QuotaExceeded")
    for name in names:
        t = objects.get("tunnel", name, namespace)
        assert objects.condition(t, "Ready")["status"] == "True"
        assert t["status"]["remotePort"] == ports[name]
    assert {n for ns, n in table(relay, relay_namespace) if ns == namespace} == set(names)
    answer = refusal(tunnel("more", **placement), namespace)
    assert "above hard.tunnels 2" in answer, answer
