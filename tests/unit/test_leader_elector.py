"""The elector's loop against an in-memory Lease store that behaves as the API server does
(409 on a stale resourceVersion or an existing name): one leader at a time, release on
cancel hands over at the next poll, and a leader that cannot renew stops within its renew
deadline, before its lease could be taken."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from tunnelop.platform.kube import KubeError
from tunnelop.platform.leader import LeaderElector, Timing

FAST = Timing(lease_duration=1.0, renew_deadline=0.7, retry_period=0.2)


class LeaseStore:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.unreachable: set[str] = set()  # identities whose requests fail

    def client(self, identity: str) -> Any:
        store = self

        class Client:
            async def get(self, api_version, kind, name, namespace=None):
                store.check(identity)
                return copy.deepcopy(store.lease)

            async def create(self, obj):
                store.check(identity)
                if store.lease is not None:
                    raise KubeError(409, "already exists")
                return store.put(obj)

            async def replace(self, obj):
                store.check(identity)
                if obj["metadata"].get("resourceVersion") != str(store.version):
                    raise KubeError(409, "the object has been modified")
                return store.put(obj)

        return Client()

    def check(self, identity: str) -> None:
        if identity in self.unreachable:
            raise KubeError(0, "connection refused")

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(obj)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


def elector(store: LeaseStore, identity: str, events: list[str]) -> LeaderElector:
    return LeaderElector(
        store.client(identity),
        "ns",
        "tunnelop",
        identity,
        FAST,
        on_started=lambda: events.append(f"{identity} started"),
        on_stopped=lambda why: events.append(f"{identity} stopped: {why}"),
    )


async def test_release_on_cancel_hands_over_at_the_next_poll():
    store, events = LeaseStore(), []
    a, b = elector(store, "a", events), elector(store, "b", events)
    async with a.campaign():
        await asyncio.wait_for(a.leading.wait(), 1)
        async with b.campaign():
            await asyncio.sleep(0.6)  # several polls of b, several renewals of a
            assert (a.is_leader, b.is_leader, store.holder) == (True, False, "a")
            # Ready: it read the Lease and stands by to take over.
            assert b.status() == (True, "following a as b")
        assert store.holder == "a"
    assert store.holder is None  # released
    async with b.campaign():
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(b.leading.wait(), 1)
        assert loop.time() - began < FAST.retry_period  # no waiting for the expiry
    assert events[:2] == ["a started", "a stopped: shutting down"]
    # created by a (0), taken by b (1), released by b: transitions count takers only
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1


async def test_a_follower_is_ready_only_while_it_can_read_the_lease():
    store, events = LeaseStore(), []
    a, b = elector(store, "a", events), elector(store, "b", events)
    assert b.status()[0] is False  # nothing read yet
    async with a.campaign():
        await asyncio.wait_for(a.leading.wait(), 1)
        async with b.campaign():
            await asyncio.sleep(0.3)
            assert b.status() == (True, "following a as b")
            store.unreachable.add("b")
            await asyncio.sleep(0.5)
            ready, message = b.status()
            assert not ready and "connection refused" in message
            store.unreachable.discard("b")
            await asyncio.sleep(0.5)
            assert b.status() == (True, "following a as b")


async def test_a_leader_that_cannot_renew_stops_before_the_lease_can_be_taken():
    store, events = LeaseStore(), []
    a, b = elector(store, "a", events), elector(store, "b", events)
    loop = asyncio.get_running_loop()
    async with a.campaign() as a_task, b.campaign():
        await asyncio.wait_for(a.leading.wait(), 1)
        store.unreachable.add("a")
        cut = loop.time()
        await asyncio.wait_for(a.lost.wait(), 2)
        a_stopped = loop.time() - cut
        await asyncio.wait_for(b.leading.wait(), 3)
        b_started = loop.time() - cut
        await a_task  # run() returned: leadership is over for good
    assert a_stopped <= FAST.renew_deadline + 0.05
    assert b_started > a_stopped
    assert b_started <= FAST.worst_takeover + 0.1
    assert "a stopped: could not renew within 0.7 s" in events
