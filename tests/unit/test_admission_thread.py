"""The admission server runs in a thread of its own: a Tunnel review is answered there over
real TLS on loopback even while the operator's loop is busy, other webhooks still reach kopf
on the operator's loop, stopping frees the port, and reviews read the caches consistently
while the loop rewrites them."""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from support.objects import relay_node
from tunnelop.api.v1alpha1 import RelayNode
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.webhook import VALIDATE_TUNNEL, AdmissionServer, tunnel_denials
from tunnelop.domain.relayview import RelayView
from tunnelop.platform import certs, metrics


def runtime() -> Runtime:
    rt = Runtime(kube=None, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    model = RelayNode.model_validate(
        relay_node("edge", protocols=["tcp", "http"], ports="20000-20099", httpDomain="e.test")
    )
    rt.cache.remember_relay_view(RelayView.from_model(model))
    return rt


def tunnel(name: str, spec: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def review(obj: dict[str, Any]) -> dict[str, Any]:
    request = {"uid": "u-7", "operation": "CREATE", "namespace": "shop", "object": obj}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


class Memo:
    def __init__(self, rt: Runtime) -> None:
        self.runtime = rt


async def serve(tmp_path, rt: Runtime, fn):
    cert = certs.issue_webhook_certificate(tmp_path, ["127.0.0.1"])
    server = AdmissionServer(
        addr="127.0.0.1",
        host="127.0.0.1",
        certfile=str(cert.cert_file),
        pkeyfile=str(cert.key_file),
        cadata=cert.ca_pem,
    )
    server.memo = Memo(rt)  # type: ignore[assignment]
    config = await anext(server(fn))
    context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
    return server, config["url"], context


async def post(url: str, context: ssl.SSLContext, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, ssl=context) as response:
            assert response.status == 200
            return await response.json()


async def test_a_tunnel_review_is_answered_while_the_operator_loop_is_blocked(tmp_path):
    async def kopf_fn(data: dict[str, Any], **_: Any) -> dict[str, Any]:
        raise AssertionError("the Tunnel validation never goes through kopf")

    server, url, context = await serve(tmp_path, runtime(), kopf_fn)
    answers: list[dict[str, Any]] = []
    denied_before = reviews_counted("denied")

    def client() -> None:
        obj = tunnel("t", {"protocol": "udp"})
        answers.append(asyncio.run(post(f"{url}/{VALIDATE_TUNNEL}", context, review(obj))))

    try:
        caller = threading.Thread(target=client)
        caller.start()
        # The operator's loop does not run until the answer came: only another thread could
        # have served it.
        caller.join(timeout=30)
        assert not caller.is_alive()
    finally:
        await server.__aexit__(None, None, None)  # as kopf leaves it
    response = answers[0]["response"]
    assert response["uid"] == "u-7" and response["allowed"] is False
    assert "udp" in response["status"]["message"]
    assert reviews_counted("denied") == denied_before + 1  # timed, by its result


def reviews_counted(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "tunnelop_admission_review_duration_seconds_count", {"result": result}
    )
    return value or 0.0


async def test_other_webhooks_reach_kopf_on_the_operator_loop(tmp_path):
    seen: list[tuple[str | None, threading.Thread]] = []

    async def kopf_fn(data: dict[str, Any], webhook: str | None = None, **_: Any) -> Any:
        seen.append((webhook, threading.current_thread()))
        return {"response": {"uid": data["request"]["uid"], "allowed": True}}

    server, url, context = await serve(tmp_path, runtime(), kopf_fn)
    try:
        answer = await post(f"{url}/add-finalizer", context, review(tunnel("t", {})))
    finally:
        await server.__aexit__(None, None, None)  # as kopf leaves it
    assert answer == {"response": {"uid": "u-7", "allowed": True}}
    assert seen == [("add-finalizer", threading.main_thread())]


async def test_stopping_frees_the_port(tmp_path):
    async def kopf_fn(data: dict[str, Any], **_: Any) -> Any:
        return {}

    server, url, context = await serve(tmp_path, runtime(), kopf_fn)
    await server.__aexit__(None, None, None)  # as kopf leaves it
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(f"{url}/{VALIDATE_TUNNEL}", context, review(tunnel("t", {})))
    assert not [t for t in threading.enumerate() if t.name == "admission"]


def test_reviews_read_the_caches_whole_while_the_loop_rewrites_them():
    """A subdomain held by one tunnel is refused to another on every review, however the
    other tunnels of the namespace, the relays and the quotas churn meanwhile."""
    rt = runtime()
    holder = tunnel("holder", {"protocol": "http", "subdomain": "shop"})
    rt.cache.remember_tunnel(("shop", "holder"), holder)
    rt.cache.remember_quota(
        {"metadata": {"namespace": "shop", "name": "q"}, "spec": {"hard": {"tunnels": 100000}}}
    )
    edge = rt.cache.relay_views["edge"]
    writer_done = threading.Event()
    answers: list[list[str]] = []

    def reviewer() -> None:
        claim = tunnel("claimer", {"protocol": "http", "subdomain": "shop"})
        while not writer_done.is_set() or len(answers) < 50:
            answers.append(tunnel_denials(rt, claim, None, "shop", "claimer"))
            # Real reviews arrive over the network, the GIL free in between: without this
            # pause a tight loop re-takes the lock before the writer wakes and starves it.
            time.sleep(0)

    thread = threading.Thread(target=reviewer)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        thread.start()
        for i in range(300):
            # Other tunnels come and go on the same subdomain, relays too, as a burst would.
            key = ("shop", f"t{i % 50}")
            rt.cache.remember_tunnel(key, tunnel(key[1], {"protocol": "http", "subdomain": "shop"}))
            rt.cache.forget_tunnel(("shop", f"t{(i + 25) % 50}"))
            rt.cache.remember_relay_view(replace(edge, name=f"edge-{i % 10}"))
            rt.cache.forget_relay_view(f"edge-{(i + 5) % 10}")
            rt.cache.remember_quota(
                {
                    "metadata": {"namespace": "shop", "name": f"q{i % 3}"},
                    "spec": {"hard": {"tunnels": 1000}},
                }
            )
        writer_done.set()
        thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert len(answers) >= 50
    assert all(any("'shop'" in d for d in denials) for denials in answers)
