"""Draining a relay against the real API server, checked against what the relays' tables hold:
spec.drain moves its tunnels (keeping their port where it is free) with an Event and the
relay's Draining condition; a tunnel with nowhere to go stays, serving, and says so, and moves
once room appears; deleting a relay moves what can move and unbinds the rest, saying why, and
the relay goes only once its table names nobody."""

from __future__ import annotations

import functools
import json

from support import objects, tools
from support.invariants import check_tables, read_world, wait_quiescent
from support.objects import tunnel, wait_condition, wait_for


def patch_relay(name: str, spec: dict) -> None:
    tools.kubectl("patch", "relaynode", name, "--type=merge", "-p", json.dumps({"spec": spec}))


async def settled_and_consistent(kube, relay_namespace: str, namespace: str, prefix: str) -> None:
    read = functools.partial(read_world, kube, relay_namespace, namespace, prefix)
    world, waiting = await wait_quiescent(read, stable_for=2, timeout=60)
    assert not waiting, waiting
    assert check_tables(world) == []


async def test_spec_drain_moves_tunnels_keeping_their_port_and_reports_each_move(
    crds, operator, kube, namespace, relay_namespace, ready_relay, relay_label
) -> None:
    prefix = f"dr-{relay_label['tunnelop.test/case']}"
    first, placement = await ready_relay(f"{prefix}-a", "21200-21299")
    objects.apply([tunnel(f"t{i}", **placement) for i in range(3)], namespace)
    before = {}
    for i in range(3):
        ready = await wait_condition("tunnel", f"t{i}", namespace, "Ready")
        assert ready["status"]["relayNode"] == first
        before[f"t{i}"] = ready["status"]["remotePort"]
    second, _ = await ready_relay(f"{prefix}-b", "21200-21299")

    patch_relay(first, {"drain": True})
    for name, port in before.items():
        moved = await wait_for(
            lambda name=name: (
                (t := objects.get("tunnel", name, namespace))["status"].get("relayNode") == second
                and objects.condition(t, "Ready")["status"] == "True"
                and t
            ),
            what=f"{name} moved to {second}",
        )
        assert moved["status"]["remotePort"] == port  # free there: kept
        assert moved["status"]["endpoint"].endswith(f":{port}")
        (event,) = await wait_for(
            lambda name=name: [
                e for e in objects.events(namespace, name) if e["reason"] == "Moved"
            ],
            what=f"the Moved Event of {name}",
        )
        assert f"from {first}:{port} to {second}:{port}" in event["message"]
        assert "spec.drain" in event["message"]
    await wait_condition("relaynode", first, None, "Draining", "True", "DrainRequested")
    await wait_for(
        lambda: (
            "no tunnel left"
            in objects.condition(objects.get("relaynode", first), "Draining")["message"]
        ),
        what="the drained relay saying it is empty",
    )
    assert not objects.get("relaynode", first)["status"]["allocated"].get("tunnels")
    await settled_and_consistent(kube, relay_namespace, namespace, prefix)

    # A drained relay takes no new tunnel; undrained, it does again.
    objects.apply(tunnel("late", **placement), namespace)
    late = await wait_condition("tunnel", "late", namespace, "Ready")
    assert late["status"]["relayNode"] == second
    patch_relay(first, {"drain": False})
    await wait_condition("relaynode", first, None, "Draining", "False", "NotDraining")


async def test_a_tunnel_with_nowhere_to_go_stays_and_says_so_until_room_appears(
    crds, operator, kube, namespace, relay_namespace, ready_relay, relay_label
) -> None:
    prefix = f"dr-{relay_label['tunnelop.test/case']}"
    first, placement = await ready_relay(f"{prefix}-a", "21300-21399")
    second, _ = await ready_relay(f"{prefix}-b", "21300-21399", unschedulable=True)
    objects.apply(tunnel("game", **placement), namespace)
    game = await wait_condition("tunnel", "game", namespace, "Ready")
    port = game["status"]["remotePort"]

    patch_relay(first, {"drain": True})
    stuck = await wait_condition("tunnel", "game", namespace, "Scheduled", "True", "MovePending")
    message = objects.condition(stuck, "Scheduled")["message"]
    assert "spec.drain" in message and "cordoned" in message, message
    assert stuck["status"]["relayNode"] == first  # still serving where it is
    assert objects.condition(stuck, "Ready")["status"] == "True"
    await wait_for(
        lambda: (
            "nowhere to go"
            in (objects.condition(objects.get("relaynode", first), "Draining") or {}).get(
                "message", ""
            )
        ),
        what="the drained relay saying its tunnel has nowhere to go",
    )
    await settled_and_consistent(kube, relay_namespace, namespace, prefix)

    patch_relay(second, {"unschedulable": False})
    moved = await wait_condition("tunnel", "game", namespace, "Scheduled", "True", "Scheduled")
    assert (moved["status"]["relayNode"], moved["status"]["remotePort"]) == (second, port)
    await settled_and_consistent(kube, relay_namespace, namespace, prefix)


async def test_deleting_a_relay_moves_what_can_move_and_unbinds_the_rest(
    crds, operator, kube, namespace, relay_namespace, ready_relay, relay_label
) -> None:
    prefix = f"dr-{relay_label['tunnelop.test/case']}"
    first, placement = await ready_relay(f"{prefix}-a", "21400-21499")
    # Cordoned while the tunnels are placed, so that both land on the first relay.
    second, _ = await ready_relay(f"{prefix}-b", "21400-21499", unschedulable=True)
    objects.apply(tunnel("pinned", relay={"node": first}), namespace)
    objects.apply(tunnel("free", **placement), namespace)
    await wait_condition("tunnel", "pinned", namespace, "Ready")
    free = await wait_condition("tunnel", "free", namespace, "Ready")
    assert free["status"]["relayNode"] == first
    patch_relay(second, {"unschedulable": False})
    tools.kubectl("delete", "relaynode", first, "--wait=false")

    # The pinned tunnel cannot go anywhere: unbound, saying why; the relay goes.
    unbound = await wait_condition("tunnel", "pinned", namespace, "Scheduled", "False")
    assert first in objects.condition(unbound, "Scheduled")["message"]
    await wait_for(lambda: objects.get("relaynode", first) is None, what=f"{first} gone")
    free = await wait_condition("tunnel", "free", namespace, "Ready")
    assert free["status"]["relayNode"] == second
    read = functools.partial(read_world, kube, relay_namespace, namespace, prefix)
    world, _ = await wait_quiescent(read, stable_for=2, timeout=60)
    assert check_tables(world) == []
    assert first not in world.tables  # its table went with it, naming nobody
