"""tunnelop_api_requests_total names each request by verb and resource, as the per-tunnel
request counts of docs/benchmarks.md read them."""

from __future__ import annotations

import pytest

from tunnelop.platform import kube, metrics


def _count(verb: str, resource: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "tunnelop_api_requests_total", {"verb": verb, "resource": resource}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("method", "path", "verb", "resource"),
    [
        ("POST", "/apis/tunnelop.dev/v1alpha1/namespaces/a/tunnels", "POST", "tunnels"),
        ("GET", "/apis/tunnelop.dev/v1alpha1/tunnels", "LIST", "tunnels"),
        ("GET", "/apis/tunnelop.dev/v1alpha1/namespaces/a/tunnels/t", "GET", "tunnels"),
        (
            "PATCH",
            "/apis/tunnelop.dev/v1alpha1/namespaces/a/tunnels/t/status",
            "PATCH",
            "tunnels/status",
        ),
        ("PATCH", "/api/v1/namespaces/a/secrets/t-frpc", "PATCH", "secrets"),
        ("GET", "/api/v1/namespaces/a", "GET", "namespaces"),
        ("GET", "/api/v1/namespaces", "LIST", "namespaces"),
        ("PATCH", "/apis/tunnelop.dev/v1alpha1/relaynodes/r/status", "PATCH", "relaynodes/status"),
        ("POST", "/api/v1/namespaces/a/events", "POST", "events"),
    ],
)
def test_each_request_is_counted_by_verb_and_resource(method, path, verb, resource) -> None:
    before = _count(verb, resource)
    kube._counted(method, path)
    assert _count(verb, resource) == before + 1


async def test_each_request_is_timed_by_verb_and_resource_even_when_refused() -> None:
    """A request that fails is timed too: a slow refusal is what an operator must see."""

    class Refusing:
        async def param_serialize(self, **_: object) -> tuple[()]:
            return ()

        async def call_api(self, *_: object, **__: object) -> object:
            raise kube.ApiException(status=500, reason="boom")

    labels = {"verb": "PATCH", "resource": "secrets"}
    before = metrics.REGISTRY.get_sample_value(
        "tunnelop_api_request_duration_seconds_count", labels
    )
    with pytest.raises(kube.KubeError):
        await kube.Kube(Refusing()).request("PATCH", "/api/v1/namespaces/a/secrets/s", {})  # type: ignore[arg-type]
    after = metrics.REGISTRY.get_sample_value("tunnelop_api_request_duration_seconds_count", labels)
    assert after == (before or 0) + 1
