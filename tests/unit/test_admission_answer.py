"""The Tunnel validation answered by the operator's own webhook path: the AdmissionReview
answer kopf would give (uid echoed, allowed or refused with 422 and the reasons), admitted
while starting up, and never a refusal from a malformed or hostile review."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from support.objects import relay_node
from tunnelop.api.v1alpha1 import RelayNode
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.webhook import review_answer
from tunnelop.domain.relayview import RelayView


def runtime() -> Runtime:
    rt = Runtime(kube=None, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    model = RelayNode.model_validate(relay_node("edge", protocols=["tcp"], ports="20000-20099"))
    rt.cache.relay_views["edge"] = RelayView.from_model(model)
    return rt


def review(spec: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    obj = {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": "t", "namespace": "shop"},
        "spec": spec,
    }
    request = {"uid": "u-1", "operation": operation, "namespace": "shop", "object": obj}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def test_an_offered_protocol_is_admitted_with_the_uid_echoed():
    answer = review_answer(runtime(), review({"protocol": "tcp", "remotePort": 20001}))
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"] == {"uid": "u-1", "allowed": True}


def test_a_refusal_names_the_field_with_422():
    answer = review_answer(runtime(), review({"protocol": "udp"}))
    response = answer["response"]
    assert response["allowed"] is False and response["status"]["code"] == 422
    assert "udp" in response["status"]["message"] and "edge" in response["status"]["message"]
    port = review_answer(runtime(), review({"protocol": "tcp", "remotePort": 30000}))
    assert not port["response"]["allowed"] and "30000" in port["response"]["status"]["message"]


def test_starting_up_admits():
    assert review_answer(None, review({"protocol": "udp"}))["response"]["allowed"] is True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(json_values)
def test_a_malformed_review_never_crashes_or_refuses_for_the_wrong_reason(junk):
    body = {"request": {"uid": "u", "object": {"metadata": {"name": "t"}, "spec": junk}}}
    answer = review_answer(runtime(), body)
    assert answer["response"]["uid"] == "u"
    if not answer["response"]["allowed"]:
        assert answer["response"]["status"]["message"]
