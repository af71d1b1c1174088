"""Tunnels moved by the operator, with real frps, the relay agent and real frpc, the client
following with `tunnelop client` (no human, no edited config):

- failover: a relay's pod goes down and stays down; after its failoverAfterSeconds its tunnel
  moves to another relay, keeping its port, and traffic flows again through the new relay;
- a port newly blocked on a relay (an ISP filters it): the tunnel on it gets a new port and
  works there; the other tunnel on the relay is not touched;
- a RelayPool scaled down: the relay it removes is drained with connected clients, they
  follow to the relay that stays, and the drained relay is deleted.

Each prints how long it took (the numbers the docs quote)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from support import objects, tools
from support.dataplane import (
    TunnelopClient,
    serving_relays,
    tcp_served,
    until_served,
)
from support.netutil import echo_server
from support.objects import tunnel, wait_condition, wait_for

CASE_LABEL = "tunnelop.test/moves"
FAILOVER_SECONDS = 10


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"serve_load_balancers": True}  # the pool's relays are LoadBalancer-exposed


def endpoint_of(body: dict[str, Any]) -> tuple[str, int]:
    host, _, port = body["status"]["endpoint"].rpartition(":")
    return host, int(port)


@asynccontextmanager
async def following_client(
    cluster, namespace: str, name: str, local_port: int, tmp_path
) -> AsyncIterator[TunnelopClient]:
    client = TunnelopClient(
        f"{namespace}/{name}", local_port, cluster.kubeconfig, tmp_path / f"client-{name}.log"
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


def relays(runner, *names: str, ports: str, **spec: Any):
    """The test's relays, all on one port range, labelled for a nodeSelector on the first."""
    return serving_relays(
        runner, dict.fromkeys(names, ports), labels={CASE_LABEL: names[0]}, **spec
    )


async def test_failover_moves_the_tunnel_of_a_dead_relay_and_the_client_follows(
    cluster, crds, operator, relay_runner, namespace, tmp_path
) -> None:
    first, second = f"fo-a-{uuid.uuid4().hex[:4]}", f"fo-b-{uuid.uuid4().hex[:4]}"
    spec = {"failoverAfterSeconds": FAILOVER_SECONDS}
    async with relays(relay_runner, first, second, ports="23000-23099", **spec) as addresses:
        # Only the first takes the tunnel at first.
        tools.kubectl(
            "patch", "relaynode", second, "--type=merge", "-p", '{"spec":{"unschedulable":true}}'
        )
        objects.apply(tunnel("game", relay={"nodeSelector": {CASE_LABEL: first}}), namespace)
        bound = await wait_condition("tunnel", "game", namespace, "Ready")
        assert bound["status"]["relayNode"] == first
        port = bound["status"]["remotePort"]
        tools.kubectl(
            "patch", "relaynode", second, "--type=merge", "-p", '{"spec":{"unschedulable":false}}'
        )
        async with (
            echo_server() as local,
            following_client(cluster, namespace, "game", local, tmp_path) as client,
        ):
            await until_served(lambda: tcp_served(addresses[first], port), timeout=60)
            loop = asyncio.get_running_loop()
            down = loop.time()
            await relay_runner.hold_down(first)
            try:
                moved = await wait_for(
                    lambda: (
                        (t := objects.get("tunnel", "game", namespace))["status"].get("relayNode")
                        == second
                        and t
                    ),
                    timeout=FAILOVER_SECONDS + 10,
                    what=f"the tunnel moved off {first} within the grace period plus 10 s",
                )
                moved_after = loop.time() - down
                host, new_port = endpoint_of(moved)
                assert (host, new_port) == (addresses[second], port)  # its port, kept
                await until_served(lambda: tcp_served(host, new_port), timeout=60)
                served_after = loop.time() - down
                print(
                    f"\nfailover: relay down -> tunnel moved {moved_after:.1f} s, -> traffic "
                    f"again {served_after:.1f} s (failoverAfterSeconds {FAILOVER_SECONDS})"
                )
                await wait_for(
                    lambda: "Moved" in objects.event_reasons(namespace, "game"),
                    what="the Moved Event",
                )
                relay = await wait_condition(
                    "relaynode", first, None, "Draining", "True", "Failover"
                )
                assert "failover" in objects.condition(relay, "Draining")["message"]
                assert client.restarts() >= 1, client.logs()[-3000:]
            finally:
                await relay_runner.bring_up(first)


async def test_a_newly_blocked_port_moves_only_the_tunnel_on_it(
    cluster, crds, operator, relay_runner, namespace, tmp_path
) -> None:
    name = f"bl-{uuid.uuid4().hex[:4]}"
    async with relays(relay_runner, name, ports="23100-23199") as addresses:
        address = addresses[name]
        placement = {"relay": {"nodeSelector": {CASE_LABEL: name}}}
        objects.apply([tunnel("blocked", **placement), tunnel("bystander", **placement)], namespace)
        blocked = await wait_condition("tunnel", "blocked", namespace, "Ready")
        bystander = await wait_condition("tunnel", "bystander", namespace, "Ready")
        old_port = blocked["status"]["remotePort"]
        secret_before = objects.get("secret", "bystander-frpc", namespace)
        async with (
            echo_server() as local,
            following_client(cluster, namespace, "blocked", local, tmp_path) as client,
            following_client(cluster, namespace, "bystander", local, tmp_path) as other,
        ):
            await until_served(lambda: tcp_served(address, old_port), timeout=60)
            bystander_port = bystander["status"]["remotePort"]
            await until_served(lambda: tcp_served(address, bystander_port), timeout=60)

            loop = asyncio.get_running_loop()
            start = loop.time()
            patch = {"spec": {"ports": {"range": "23100-23199", "blocked": [str(old_port)]}}}
            tools.kubectl("patch", "relaynode", name, "--type=merge", "-p", json.dumps(patch))
            moved = await wait_for(
                lambda: (
                    (t := objects.get("tunnel", "blocked", namespace))["status"].get("remotePort")
                    not in (None, old_port)
                    and t
                ),
                what="the tunnel on the blocked port moved",
            )
            host, new_port = endpoint_of(moved)
            assert host == address  # the only relay it may use: a new port there
            await until_served(lambda: tcp_served(host, new_port), timeout=60)
            print(
                f"\nblocked port: blocked -> traffic on port {new_port} {loop.time() - start:.1f} s"
            )
            assert not await tcp_served(address, old_port)  # frps no longer listens there
            (event,) = await wait_for(
                lambda: [e for e in objects.events(namespace, "blocked") if e["reason"] == "Moved"],
                what="the Moved Event",
            )
            assert f"port {old_port} is blocked" in event["message"], event["message"]

            # The bystander: same endpoint, same Secret, its frpc never restarted, still served.
            after = objects.get("tunnel", "bystander", namespace)
            assert after["status"]["endpoint"] == bystander["status"]["endpoint"]
            secret_after = objects.get("secret", "bystander-frpc", namespace)
            assert (
                secret_after["metadata"]["resourceVersion"]
                == secret_before["metadata"]["resourceVersion"]
            )
            assert "Moved" not in objects.event_reasons(namespace, "bystander")
            assert other.restarts() == 0, other.logs()[-3000:]
            # A new port list restarts the relay's frps (it has no hot reload): the
            # bystander's frpc reconnects by itself, to the same endpoint.
            await until_served(lambda: tcp_served(address, bystander_port), timeout=30)
            assert client.restarts() >= 1


async def test_scale_down_drains_a_relay_with_connected_clients_and_they_follow(
    cluster, crds, operator, relay_runner, namespace, tmp_path
) -> None:
    pool = f"sd{uuid.uuid4().hex[:4]}"
    template = {
        "metadata": {"labels": {CASE_LABEL: pool}},
        "spec": {"ports": {"range": "23200-23299"}, "exposure": {"type": "LoadBalancer"}},
    }
    objects.apply(
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "RelayPool",
            "metadata": {"name": pool},
            "spec": {"replicas": 2, "template": template},
        }
    )
    names = [f"{pool}-0", f"{pool}-1"]
    try:
        for name in names:
            await wait_condition("relaynode", name, None, "Ready", timeout=90)
        objects.apply([tunnel(f"t{i}", relay={"pool": pool}) for i in range(2)], namespace)
        bound = [await wait_condition("tunnel", f"t{i}", namespace, "Ready") for i in range(2)]
        assert {b["status"]["relayNode"] for b in bound} == set(names)  # spread, one each
        async with (
            echo_server() as local,
            following_client(cluster, namespace, "t0", local, tmp_path) as c0,
            following_client(cluster, namespace, "t1", local, tmp_path) as c1,
        ):
            for b in bound:
                await until_served(lambda b=b: tcp_served(*endpoint_of(b)), timeout=60)
            loop = asyncio.get_running_loop()
            start = loop.time()
            tools.kubectl("scale", "relaypool", pool, "--replicas=1")
            # The newest relay goes (equal load); its tunnel moves to the one that stays.
            leaving, staying = names[1], names[0]
            on_leaving = next(i for i, b in enumerate(bound) if b["status"]["relayNode"] == leaving)
            moved = await wait_for(
                lambda: (
                    (t := objects.get("tunnel", f"t{on_leaving}", namespace))["status"].get(
                        "relayNode"
                    )
                    == staying
                    and t
                ),
                timeout=60,
                what=f"t{on_leaving} moved to {staying}",
            )
            await until_served(lambda: tcp_served(*endpoint_of(moved)), timeout=60)
            followed = loop.time() - start
            await wait_for(
                lambda: objects.get("relaynode", leaving) is None,
                timeout=90,
                what=f"{leaving} deleted once drained",
            )
            removed = loop.time() - start
            print(
                f"\nscale-down: client following on the staying relay {followed:.1f} s, "
                f"drained relay deleted {removed:.1f} s"
            )
            other = 1 - on_leaving
            # Both relays handed out the first port of the range: the staying relay's own
            # tunnel holds it, so the moved one gets another (never the same port twice).
            assert endpoint_of(moved)[1] != bound[other]["status"]["remotePort"]
            assert (c0 if on_leaving == 0 else c1).restarts() >= 1
            assert (c0 if other == 0 else c1).restarts() == 0
            assert await tcp_served(*endpoint_of(bound[other]))
        events = [e["reason"] for e in objects.events("default", pool)]
        assert "RelayDraining" in events and "RelayDeleted" in events, events
    finally:
        tools.kubectl("delete", "tunnels", "--all", "-n", namespace, "--wait=false")
        tools.kubectl("delete", "relaypool", pool, "--ignore-not-found", "--timeout=90s")
        await wait_for(
            lambda: not objects.list_objects("relaynode", selector=f"tunnelop.dev/pool={pool}"),
            timeout=90,
            what="the pool's relays gone",
        )
