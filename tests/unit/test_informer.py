"""The informer: a failing list is logged with its HTTP status, counted, retried with
exponential back-off and reported by healthy(); a handler that raises gets the object again
until it succeeds, unless a newer event for that object came first."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tunnelop.platform import informer as informer_module
from tunnelop.platform import metrics
from tunnelop.platform.informer import Informer, Listed, backoff
from tunnelop.platform.kube import Kube, KubeError


def secret(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class FakeKube:
    """Lists fail `failures` times with 403, then answer `items`; watches send `events`
    then stay open."""

    def __init__(self, failures: int = 0, items=(), events=()) -> None:
        self.failures = failures
        self.items = list(items)
        self.events = list(events)

    async def request(self, method, path, query=None):
        if self.failures:
            self.failures -= 1
            raise KubeError(403, 'secrets is forbidden: User "op" cannot list')
        return {"items": self.items, "metadata": {"resourceVersion": "1"}}

    pages = Kube.pages  # paging over request() above

    async def watch(self, path, **_):
        for event in self.events:
            yield event
        await asyncio.Event().wait()


def test_backoff_doubles_from_one_second_to_thirty():
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


async def test_a_forbidden_list_backs_off_counts_and_reports_unhealthy(monkeypatch):
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(informer_module.asyncio, "sleep", fake_sleep)
    path = f"/api/v1/secrets-{uuid.uuid4().hex[:6]}"
    kube = FakeKube(failures=4, items=[secret("a", "1")])
    seen: list[str] = []
    inf = Informer(kube, path, lambda kind, obj: seen.append(kind))  # type: ignore[arg-type]
    assert inf.healthy() == (False, f"{path}: not synced yet")
    health_while_failing = []
    kube_request = kube.request

    async def request(*args, **kwargs):
        health_while_failing.append(inf.healthy())
        return await kube_request(*args, **kwargs)

    kube.request = request  # type: ignore[method-assign]
    inf.start()
    await asyncio.wait_for(inf.synced.wait(), 5)
    await inf.stop()
    assert delays[:4] == [1, 2, 4, 8]
    ok, message = health_while_failing[-1]  # just before the list that worked
    assert not ok and "HTTP 403" in message and "forbidden" in message
    assert inf.healthy() == (True, f"{path}: synced")
    assert seen == ["ADDED"]
    failures = metrics.REGISTRY.get_sample_value(
        "tunnelop_informer_failures_total", {"path": path, "status": "403"}
    )
    assert failures == 4


async def test_a_raising_handler_gets_the_object_again_until_it_succeeds():
    calls: list[str] = []

    def handler(kind: str, obj: dict[str, Any]) -> None:
        calls.append(obj["metadata"]["resourceVersion"])
        if len(calls) < 3:
            raise RuntimeError("cache not ready")

    inf = Informer(FakeKube(items=[secret("a", "1")]), "/x", handler, max_backoff=0.05)  # type: ignore[arg-type]
    inf.start()
    for _ in range(100):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # no further redelivery after the success
    await inf.stop()
    assert calls == ["1", "1", "1"]


async def test_a_newer_event_replaces_the_pending_redelivery():
    calls: list[str] = []

    def handler(kind: str, obj: dict[str, Any]) -> None:
        version = obj["metadata"]["resourceVersion"]
        calls.append(version)
        if version == "1":
            raise RuntimeError("cannot handle version 1")

    kube = FakeKube(
        items=[secret("a", "1")], events=[{"type": "MODIFIED", "object": secret("a", "2")}]
    )
    inf = Informer(kube, "/x", handler, max_backoff=0.2)  # type: ignore[arg-type]
    inf.start()
    await asyncio.sleep(0.5)
    await inf.stop()
    assert calls == ["1", "2"]  # the stale version 1 was never handed over again


class PagedKube:
    """Answers a list in pages of two (continue tokens), as the API server does with limit."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.queries: list[list[tuple[str, str]]] = []

    async def request(self, method, path, query=None):
        self.queries.append(list(query or []))
        start = int(dict(query or []).get("continue") or 0)
        page = self.names[start : start + 2]
        more = start + 2 < len(self.names)
        meta = {"resourceVersion": "7", **({"continue": str(start + 2)} if more else {})}
        return {"items": [secret(n, "7") for n in page], "metadata": meta}

    pages = Kube.pages

    async def watch(self, path, **_):
        await asyncio.Event().wait()
        yield {}


async def test_a_list_in_pages_hands_over_every_object_and_what_vanished():
    kube = PagedKube(["a", "b", "c", "d", "e"])
    seen: list[tuple[str, str]] = []
    inf = Informer(
        kube, "/api/v1/secrets", lambda kind, obj: seen.append((kind, obj["metadata"]["name"]))
    )  # type: ignore[arg-type]
    assert await inf.list() == "7"
    assert seen == [("ADDED", n) for n in "abcde"]
    assert all(("limit", "500") in q for q in kube.queries) and len(kube.queries) == 3
    kube.names = ["a", "c", "e"]
    seen.clear()
    await inf.list()
    assert sorted(k for k in seen if k[0] == "DELETED") == [("DELETED", "b"), ("DELETED", "d")]


async def test_started_from_a_list_made_elsewhere_it_watches_at_once_and_hands_over_the_replay():
    kube = FakeKube(
        items=[secret("a", "5")],  # what a later list finds: "b" vanished
        events=[
            {"type": "MODIFIED", "object": secret("a", "4")},
            {"type": "ERROR", "object": {"code": 410}},  # too old: list again
        ],
    )
    lists = 0
    kube_request = kube.request

    async def request(*args, **kwargs):
        nonlocal lists
        lists += 1
        return await kube_request(*args, **kwargs)

    kube.request = request  # type: ignore[method-assign]
    watched_from: list[str] = []
    first_events, kube.events = kube.events, []  # sent by the first watch only
    kube_watch = kube.watch

    async def watch(path, **kwargs):
        watched_from.append(kwargs["resource_version"])
        if len(watched_from) == 1:
            for event in first_events:
                yield event
        async for event in kube_watch(path, **kwargs):
            yield event

    kube.watch = watch  # type: ignore[method-assign]
    seen: list[tuple[str, str, str]] = []
    inf = Informer(
        kube,  # type: ignore[arg-type]
        "/x",
        lambda kind, obj: seen.append(
            (kind, obj["metadata"]["name"], obj["metadata"].get("resourceVersion", ""))
        ),
    )
    cache = {"a": secret("a", "3")}
    listed = Listed("3", replay=(cache[name] for name in ["a"]))
    listed.add(secret("a", "3"))
    listed.add(secret("b", "2"))
    cache["a"] = secret("a", "3b")  # written after the list: the replay hands over this one
    inf.start(listed)
    await asyncio.wait_for(inf.synced.wait(), 5)
    for _ in range(50):
        await asyncio.sleep(0)
    await inf.stop()
    assert watched_from[0] == "3"
    assert seen[:2] == [("ADDED", "a", "3b"), ("MODIFIED", "a", "4")]
    # Only the list after the ERROR: and it tells what vanished since the list made elsewhere.
    assert lists == 1
    assert [(k, n) for k, n, _ in seen[2:]] == [("ADDED", "a"), ("DELETED", "b")]
