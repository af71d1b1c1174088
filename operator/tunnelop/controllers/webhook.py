"""The admission webhooks for Tunnels: thin glue between the operator's caches (relays as
watched, tunnels by subdomain and by custom domain) and the pure rules in
tunnelop.domain.admission.

The webhook is served from a thread of its own, with its own event loop: the API server
waits for it on every Tunnel create, and on the operator's loop each review queued behind
hundreds of reconciles (p50 0.26 s at a 10,000-tunnel burst, docs/benchmarks.md). The
Tunnel validation is answered in that thread, reading the caches under their lock; any
other webhook is handed to kopf on the operator's loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp.web
import kopf
from pydantic import ValidationError

from tunnelop.api.v1alpha1 import GROUP, VERSION, Tunnel
from tunnelop.controllers import quotas
from tunnelop.controllers.state import FINALIZER, Runtime
from tunnelop.domain import admission
from tunnelop.domain.quota import quota_denials
from tunnelop.domain.relayview import RelayView
from tunnelop.platform import logs, metrics

log = logs.get(__name__)
VALIDATE_TUNNEL = "validate-tunnel"


def _claims(
    rt: Runtime, subdomain: str, relays: dict[str, RelayView]
) -> list[admission.SubdomainClaim]:
    claims = []
    for key in rt.cache.subdomains.get(subdomain, ()):
        body = rt.cache.tunnels.get(key)
        if body is None:
            continue
        try:
            tunnel = Tunnel.model_validate(body)
        except ValidationError:
            continue
        bound = relays.get(tunnel.status.relay_node or "")
        domains = (
            frozenset({bound.http_domain})
            if bound and bound.http_domain
            else admission.possible_http_domains(tunnel.spec, relays.values())
        )
        claims.append(admission.SubdomainClaim(key[0], key[1], subdomain, domains))
    return claims


def _host_claims(
    rt: Runtime, spec: dict[str, Any], relays: dict[str, RelayView]
) -> list[admission.HostClaim]:
    """The custom domains of other tunnels that this one's custom domains, or its subdomain
    under any relay's httpDomain, may collide with."""
    domains = spec.get("customDomains")
    hosts = (
        {d.lower() for d in domains if isinstance(d, str)} if isinstance(domains, list) else set()
    )
    subdomain = spec.get("subdomain")
    if isinstance(subdomain, str):
        hosts |= {f"{subdomain}.{r.http_domain}" for r in relays.values() if r.http_domain}
    return [
        admission.HostClaim(key[0], key[1], host)
        for host in sorted(hosts)
        for key in sorted(rt.cache.custom_domains.get(host, ()))
    ]


def _quota_denials(
    rt: Runtime, namespace: str, obj: dict[str, Any], old: dict[str, Any] | None
) -> list[str]:
    """The namespace's TunnelQuotas against the Tunnel, with its other Tunnels as the caches
    know them (those being deleted left out)."""
    obj = {**obj, "metadata": {**(obj.get("metadata") or {}), "namespace": namespace}}
    try:
        tunnel = Tunnel.model_validate(obj)
        previous = Tunnel.model_validate(old) if old else None
    except ValidationError:
        return []  # the schema and the rules above answer for a spec that does not validate
    limits = rt.cache.limits(namespace)
    return quota_denials(tunnel, previous, limits, quotas.namespace_uses(rt, namespace, limits))


async def validate_tunnel(
    body: kopf.Body,
    old: Any,
    memo: kopf.Memo,
    namespace: str | None,
    name: str | None,
    **_: Any,
) -> None:
    denials = tunnel_denials(
        getattr(memo, "runtime", None), dict(body), dict(old) if old else None, namespace, name
    )
    if denials:
        raise kopf.AdmissionError("; ".join(denials), code=422)


def register_validate_tunnel(registry: kopf.OperatorRegistry) -> None:
    """The validating webhook validate-tunnel, registered only when the operator serves
    webhooks (not with --no-webhook: kopf refuses to start with handlers and no server)."""
    kopf.on.validate(
        GROUP,
        VERSION,
        "tunnels",
        id=VALIDATE_TUNNEL,
        operations=["CREATE", "UPDATE"],
        # The scheduler enforces the same rules when it binds: while the operator is down,
        # tenants' GitOps syncs go on and get their answer in status instead.
        ignore_failures=True,
        registry=registry,
    )(validate_tunnel)


def tunnel_denials(
    rt: Runtime | None,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    namespace: str | None,
    name: str | None,
) -> list[str]:
    """Why the Tunnel create or update is refused; nothing when it is admitted."""
    if rt is None:
        return []  # starting up: the scheduler will answer in status
    try:
        with rt.cache.lock:  # the event loop writes the caches while this thread reads
            relays = rt.cache.relay_views
            spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
            subdomain = spec.get("subdomain")
            claims = _claims(rt, subdomain, relays) if isinstance(subdomain, str) else []
            host_claims = _host_claims(rt, spec, relays)
            denials = admission.review(obj, old, relays.values(), claims, host_claims)
            if namespace in rt.cache.quotas:
                denials += _quota_denials(rt, namespace, obj, old)
    except Exception:
        # A bug here must not turn into a puzzling denial: admit, and let the scheduler,
        # which enforces the same rules, answer in the tunnel's status.
        log.exception("admission review failed; admitting", namespace=namespace, name=name)
        return []
    return denials


def review_answer(rt: Runtime | None, review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview answer to a Tunnel validation request (as kopf would give it)."""
    request = review.get("request") or {}
    obj = request.get("object") or {}
    old = request.get("oldObject") or None
    name = request.get("name") or (obj.get("metadata") or {}).get("name")
    denials = tunnel_denials(rt, obj, old, request.get("namespace"), name)
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": not denials}
    if denials:
        response["status"] = {"message": "; ".join(denials), "code": 422}
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


WebhookFn = Callable[..., Awaitable[Any]]


class AdmissionServer(kopf.WebhookServer):
    """kopf's webhook server (its TLS, its certificate reloads, its registration), run in a
    thread of its own and answering the Tunnel validation by itself: kopf's generic path
    (causes, diffs, handler bookkeeping) cost several times the review itself at a burst
    (measured, docs/benchmarks.md). Other webhooks go to kopf on the operator's loop."""

    memo: kopf.Memo | None = None

    async def __call__(self, fn: WebhookFn) -> AsyncIterator[Any]:  # type: ignore[override]
        """kopf's server, iterated in the serving thread: each client configuration it
        yields (one per certificate) is passed on to kopf here."""
        loop = asyncio.get_running_loop()
        configs: asyncio.Queue[Any] = asyncio.Queue()
        serving = _ServingThread(self._serve_in_thread(_on_loop(fn, loop), loop, configs))
        serving.start()
        try:
            while True:
                config = await configs.get()
                if isinstance(config, BaseException):
                    raise config
                yield config
        finally:
            await serving.stop()

    async def _serve_in_thread(
        self, fn: WebhookFn, loop: asyncio.AbstractEventLoop, configs: asyncio.Queue[Any]
    ) -> None:
        # kopf's own generator, unwrapped: kopf's wrapper would remember it for the server's
        # `async with` to close, and that runs on the operator's loop, not this thread's.
        generator = kopf.WebhookServer.__call__.__wrapped__  # type: ignore[attr-defined]
        try:
            async for config in generator(self, fn):
                loop.call_soon_threadsafe(configs.put_nowait, config)
        except Exception as error:  # e.g. the port is taken: kopf sees it on its loop
            loop.call_soon_threadsafe(configs.put_nowait, error)

    async def _serve(  # type: ignore[override]
        self, fn: WebhookFn, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        if request.match_info.get("id") != VALIDATE_TUNNEL:
            return await kopf.WebhookServer._serve(fn, request)
        started = time.perf_counter()
        try:
            review = json.loads(await request.read())
        except ValueError as error:
            raise aiohttp.web.HTTPBadRequest(reason=str(error)) from None
        rt = getattr(self.memo, "runtime", None)
        answer = review_answer(rt, review)
        response = aiohttp.web.json_response(answer)
        result = "allowed" if answer["response"]["allowed"] else "denied"
        metrics.ADMISSION_REVIEW_DURATION.labels(result).observe(time.perf_counter() - started)
        return response


def _on_loop(fn: WebhookFn, loop: asyncio.AbstractEventLoop) -> WebhookFn:
    """`fn` (kopf's, bound to the operator's loop) callable from the serving thread."""

    async def call(*args: Any, **kwargs: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop)
        return await asyncio.wrap_future(future)

    return call


class _ServingThread:
    """A thread running one coroutine on an event loop of its own, until stopped."""

    def __init__(self, coroutine: Any) -> None:
        self._coroutine = coroutine
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="admission", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._coroutine)
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def start(self) -> None:
        self._thread.start()

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Cancel the coroutine (its server stops listening) and wait for the thread."""
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._cancel)
            except RuntimeError:  # the loop closed between the check and the call
                pass
            await asyncio.to_thread(self._thread.join)


ADD_FINALIZER = "add-finalizer"


async def add_finalizer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """The release finalizer, set at creation: it saves a write and a reconcile per tunnel."""
    finalizers = list(body.get("metadata", {}).get("finalizers") or [])
    if FINALIZER not in finalizers:
        patch.metadata["finalizers"] = [*finalizers, FINALIZER]


def register_add_finalizer(registry: kopf.OperatorRegistry) -> None:
    """The mutating webhook add-finalizer, registered only where the API server does not set
    the finalizer itself (a MutatingAdmissionPolicy, builders/finalizer_policy.py): in a
    local run kopf registers every handler's webhook, and each one costs every create a
    call into the operator."""
    kopf.on.mutate(
        GROUP,
        VERSION,
        "tunnels",
        id=ADD_FINALIZER,
        operations=["CREATE"],
        # Without it the controller adds the finalizer itself, one write later.
        ignore_failures=True,
        registry=registry,
    )(add_finalizer)
