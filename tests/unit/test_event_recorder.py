"""The Event recorder against a fake clock and a stand-in API server that keeps the Events it
is sent: dedup into counts, the per-object spam filter, the aggregator, the global limit and
its summaries, and the bound on writes whatever is offered."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelop.controllers.state import Runtime
from tunnelop.platform import metrics
from tunnelop.platform.events import COMBINED, EventRecorder
from tunnelop.platform.kube import KubeError

SUMMARY = re.compile(r"^(\w+): (\d+) more \w+ (in this namespace|cluster-wide) \(events rate")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class EventStore:
    """Events by name, as the API server would keep them, and every write in order."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.fail_posts = False
        self.forbid_patch = False

    async def event(
        self,
        regarding: dict[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        name: str | None = None,
        count: int = 1,
    ) -> None:
        self.writes.append(("POST", reason))
        if self.fail_posts:
            raise KubeError(403, "namespace is being terminated")
        assert name and name not in self.events
        self.events[name] = {
            "object": regarding["metadata"]["name"],
            "namespace": regarding["metadata"].get("namespace"),
            "type": type_,
            "reason": reason,
            "message": message,
            "count": count,
        }

    async def event_count(self, namespace: str, name: str, *, count: int, message: str) -> None:
        self.writes.append(("PATCH", name))
        if self.forbid_patch:
            raise KubeError(403, "cannot patch resource events")
        if name not in self.events:
            raise KubeError(404, f"events {name!r} not found")
        assert count > self.events[name]["count"]
        self.events[name].update(count=count, message=message)

    def about(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events.values() if e["object"] == name]

    def summaries(self) -> list[dict[str, Any]]:
        return [e for e in self.events.values() if SUMMARY.match(e["message"])]


def tunnel(name: str, namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
    }


async def never(_: float) -> None:
    await asyncio.Event().wait()  # summaries only when a test flushes them


def recorder(**limits: Any) -> tuple[EventRecorder, EventStore, Clock]:
    store, clock = EventStore(), Clock()
    limits.setdefault("sleep", never)
    return EventRecorder(store, clock=clock, **limits), store, clock


async def test_a_lone_event_is_posted_at_once():
    rec, store, _ = recorder()
    rec.record(tunnel("ssh"), "Normal", "Scheduled", "Bound to edge-1 port 20001")
    await asyncio.sleep(0)
    (event,) = store.events.values()
    assert event == {
        "object": "ssh",
        "namespace": "shop",
        "type": "Normal",
        "reason": "Scheduled",
        "message": "Bound to edge-1 port 20001",
        "count": 1,
    }
    await rec.stop()


async def test_the_same_event_again_counts_on_the_one_posted_within_the_window():
    rec, store, clock = recorder()
    for _ in range(3):
        rec.record(tunnel("ssh"), "Warning", "PortTaken", "port 22 is held")
        await rec.idle()
        clock.now += 60
    assert [e["count"] for e in store.about("ssh")] == [3]
    assert [op for op, _ in store.writes] == ["POST", "PATCH", "PATCH"]
    clock.now += 600  # past the window: a new Event
    rec.record(tunnel("ssh"), "Warning", "PortTaken", "port 22 is held")
    await rec.idle()
    assert sorted(e["count"] for e in store.about("ssh")) == [1, 3]
    # Another object, or another message, is another Event.
    rec.record(tunnel("web"), "Warning", "PortTaken", "port 22 is held")
    rec.record(tunnel("ssh"), "Warning", "PortTaken", "port 23 is held")
    await rec.idle()
    assert len(store.events) == 4


async def test_repeats_while_the_event_is_being_written_make_one_write():
    rec, store, _ = recorder()
    for _ in range(5):
        rec.record(tunnel("ssh"), "Normal", "Moved", "from a to b")
    await rec.idle()
    assert store.writes == [("POST", "Moved")]
    assert [e["count"] for e in store.events.values()] == [5]


async def test_one_flapping_object_is_held_by_its_own_spam_filter():
    rec, store, clock = recorder(burst=1000)
    before = metrics.EVENTS_DROPPED.labels(reason="Flap")._value.get()
    for _ in range(30):
        rec.record(tunnel("ssh"), "Warning", "Flap", "it flaps")
        clock.now += 1
    rec.record(tunnel("web"), "Warning", "Flap", "it flaps")  # others are not held
    await rec.idle()
    assert [e["count"] for e in store.about("ssh")] == [25]
    assert [e["count"] for e in store.about("web")] == [1]
    assert rec.dropped["object", "Flap"] == 5
    assert metrics.EVENTS_DROPPED.labels(reason="Flap")._value.get() - before == 5
    assert store.summaries() == []  # said enough: not summed up
    clock.now += 300  # one token back
    rec.record(tunnel("ssh"), "Warning", "Flap", "it flaps")
    rec.record(tunnel("ssh"), "Warning", "Flap", "it flaps")
    await rec.idle()
    assert [e["count"] for e in store.about("ssh")] == [26]


async def test_many_messages_of_one_reason_are_combined_into_one_event():
    rec, store, _ = recorder()
    for port in range(12):
        rec.record(tunnel("ssh"), "Warning", "PortTaken", f"port {port} is held")
    await rec.idle()
    events = store.about("ssh")
    assert len(events) == 10
    combined = [e for e in events if e["message"].startswith(COMBINED)]
    assert [(e["count"], e["message"]) for e in combined] == [(3, COMBINED + "port 11 is held")]
    rec.record(tunnel("ssh"), "Warning", "PortTaken", "port 0 is held")  # seen: its own
    await rec.idle()
    assert {e["message"]: e["count"] for e in store.about("ssh")}["port 0 is held"] == 2


async def test_a_burst_of_objects_costs_the_burst_and_a_summary_per_namespace():
    rec, store, clock = recorder(burst=50, rate=5)
    before = metrics.EVENTS_DROPPED.labels(reason="Scheduled")._value.get()
    for i in range(1000):
        namespace = "shop" if i % 2 else "lab"
        rec.record(tunnel(f"t{i}", namespace), "Normal", "Scheduled", f"Bound to port {i}")
    await rec.idle()
    assert len(store.writes) == 50
    assert rec.waiting == 950 and rec.dropped["global", "Scheduled"] == 950
    assert metrics.EVENTS_DROPPED.labels(reason="Scheduled")._value.get() - before == 950
    # While sums wait, a new Event joins them even when a token is there.
    clock.now += 10
    rec.record(tunnel("late", "shop"), "Normal", "Scheduled", "Bound to port 9999")
    rec.flush_summaries()
    await rec.idle()
    assert len(store.writes) == 52
    summaries = sorted((e["namespace"], e["object"], e["message"]) for e in store.summaries())
    assert summaries == [
        (
            "lab",
            "t998",
            "Scheduled: 475 more tunnels in this namespace (events rate-limited; "
            "each tunnel's status.conditions has its own)",
        ),
        (
            "shop",
            "late",
            "Scheduled: 476 more tunnels in this namespace (events rate-limited; "
            "each tunnel's status.conditions has its own)",
        ),
    ]
    assert rec.waiting == 0
    # Summed up: the next Event is posted on its own again.
    rec.record(tunnel("next", "shop"), "Normal", "Scheduled", "Bound to port 1")
    await rec.idle()
    assert [e["count"] for e in store.about("next")] == [1]


async def test_summaries_wait_for_tokens_and_are_posted_by_the_recorder_itself():
    clock = Clock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    store = EventStore()
    rec = EventRecorder(store, burst=2, rate=0.1, summary_delay=5, clock=clock, sleep=sleep)
    for namespace in ("a", "b", "c", "d"):
        for i in range(3):
            rec.record(tunnel(f"t{i}", namespace), "Normal", "Scheduled", "Bound")
    for _ in range(200):
        await asyncio.sleep(0)
        if rec.waiting == 0:
            break
    await rec.idle()
    # 2 at once, then one summary per 10 s (the rate), each namespace in turn.
    assert rec.waiting == 0
    assert sorted(e["namespace"] for e in store.summaries()) == ["a", "b", "c", "d"]
    assert clock.now - 1000 >= 30
    counts = sorted(int(SUMMARY.match(e["message"])[2]) for e in store.summaries())  # type: ignore[index]
    assert counts == [1, 3, 3, 3]  # a's third, then b, c and d while a's sum waited
    assert any(e["message"].startswith("Scheduled: 1 more tunnel in") for e in store.summaries())
    await rec.stop()


async def test_an_event_deleted_meanwhile_is_posted_anew():
    rec, store, _ = recorder()
    rec.record(tunnel("ssh"), "Normal", "Moved", "from a to b")
    await rec.idle()
    store.events.clear()  # its TTL
    rec.record(tunnel("ssh"), "Normal", "Moved", "from a to b")
    await rec.idle()
    assert [op for op, _ in store.writes] == ["POST", "PATCH", "POST"]
    assert [e["count"] for e in store.about("ssh")] == [2]


async def test_without_the_right_to_patch_repeats_are_new_events_that_add_up():
    rec, store, _ = recorder()
    store.forbid_patch = True
    for _ in range(4):
        rec.record(tunnel("ssh"), "Normal", "Moved", "from a to b")
        await rec.idle()
    assert [op for op, _ in store.writes] == ["POST", "PATCH", "POST", "POST", "POST"]
    assert [e["count"] for e in store.about("ssh")] == [1, 1, 1, 1]


async def test_a_refused_post_neither_raises_nor_stops_the_next():
    rec, store, _ = recorder()
    store.fail_posts = True
    rec.record(tunnel("ssh"), "Normal", "Moved", "from a to b")
    await rec.idle()
    store.fail_posts = False
    rec.record(tunnel("ssh"), "Normal", "Moved", "from a to b")
    await rec.idle()
    assert [e["count"] for e in store.about("ssh")] == [2]


async def test_the_runtime_posts_through_its_recorder_and_stops_it():
    store = EventStore()
    closed = []

    async def close() -> None:
        closed.append(True)

    store.close = close  # type: ignore[attr-defined]
    rt = Runtime(kube=store, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    for i in range(60):
        rt.post_event(tunnel(f"t{i}"), "Normal", "Scheduled", "Bound")
    assert rt.events.waiting == 10
    await rt.events.idle()
    assert len(store.writes) == 50
    await rt.stop()
    assert rt.events._summaries is None and closed


# One offer: seconds since the last, object, reason, message; or a pause that lets writes run.
OFFERS = st.lists(
    st.one_of(
        st.tuples(
            st.floats(min_value=0, max_value=30),
            st.integers(0, 40),
            st.sampled_from(["Scheduled", "Moved", "PortTaken"]),
            st.integers(0, 12),
        ),
        st.just("yield"),
        st.just("flush"),
    ),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(
    offers=OFFERS,
    burst=st.integers(1, 20),
    rate=st.floats(min_value=0.01, max_value=5),
    cache=st.integers(2, 64),
)
def test_writes_stay_within_the_buckets_and_every_offer_is_accounted_for(
    offers: list[Any], burst: int, rate: float, cache: int
) -> None:
    async def run() -> None:
        rec, store, clock = recorder(burst=burst, rate=rate, cache_size=cache)
        start, offered = clock.now, 0
        for offer in offers:
            if offer == "yield":
                await asyncio.sleep(0)
            elif offer == "flush":
                rec.flush_summaries()
            else:
                seconds, obj, reason, message = offer
                clock.now += seconds
                namespace = "shop" if obj % 3 else "lab"
                rec.record(tunnel(f"t{obj}", namespace), "Normal", reason, f"m{message}")
                offered += 1
        await rec.idle()
        assert len(store.writes) <= burst + rate * (clock.now - start) + 1e-6
        summaries = store.summaries()
        counted = sum(e["count"] for e in store.events.values() if e not in summaries)
        assert counted + sum(rec.dropped.values()) == offered
        summed = sum(int(SUMMARY.match(e["message"])[2]) for e in summaries)  # type: ignore[index]
        globally = sum(n for (limit, _), n in rec.dropped.items() if limit == "global")
        assert summed + rec.waiting == globally
        await rec.stop()

    asyncio.run(run())


def test_the_runtime_spends_the_event_budget_it_was_given() -> None:
    # `tunnelop run --event-burst/--event-qps` reach the recorder through the Runtime.
    rt = Runtime(kube=EventStore(), relay_namespace="tunnelop-system", event_burst=3, event_qps=0.5)  # type: ignore[arg-type]
    assert (rt.events.bucket.burst, rt.events.bucket.rate) == (3, 0.5)
    assert (Runtime(kube=EventStore(), relay_namespace="r").events.bucket.burst) == 50  # type: ignore[arg-type]
