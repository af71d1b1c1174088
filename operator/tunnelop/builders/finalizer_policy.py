"""The MutatingAdmissionPolicy that sets the release finalizer on a Tunnel at creation, and
its binding. The API server applies it itself, so a create costs no call into the operator
(the mutating webhook add-finalizer did the same with one). Where the policy is not served
or not installed, the webhook does it, and without either the controller adds the finalizer,
one write later.

A local operator applies these objects as built here; the chart's template
(helm/tunnelop/templates/finalizer-policy.yaml) renders the same, with the chart's labels and
its webhooks' namespaceSelector (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunnelop.contract.naming import FINALIZER, FINALIZER_POLICY, MANAGED_BY, OWNER_API_VERSION

API_VERSION = "admissionregistration.k8s.io/v1"
POLICY_KIND = "MutatingAdmissionPolicy"
BINDING_KIND = "MutatingAdmissionPolicyBinding"
LOCAL_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "tunnelop"}


def build_finalizer_policy(
    *,
    name: str = FINALIZER_POLICY,
    finalizer: str = FINALIZER,
    labels: Mapping[str, str] | None = None,
    namespace_selector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The policy: on CREATE of a Tunnel that lacks `finalizer`, append it (finalizers
    others set stay, in their order); UPDATE is never matched."""
    group, version = OWNER_API_VERSION.split("/")
    quoted = f'"{finalizer}"'
    constraints: dict[str, Any] = {
        "matchPolicy": "Equivalent",
        "resourceRules": [
            {
                "apiGroups": [group],
                "apiVersions": [version],
                "operations": ["CREATE"],
                "resources": ["tunnels"],
                "scope": "Namespaced",
            }
        ],
    }
    if namespace_selector is not None:
        constraints["namespaceSelector"] = dict(namespace_selector)
    return {
        "apiVersion": API_VERSION,
        "kind": POLICY_KIND,
        "metadata": {"name": name, "labels": dict(labels or LOCAL_LABELS)},
        "spec": {
            # Unapplied (a CEL error, a cost limit): the controller adds the finalizer itself.
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "matchConstraints": constraints,
            # Present already (a manifest that carries it, a re-created object): no patch.
            "matchConditions": [
                {
                    "name": "finalizer-absent",
                    "expression": (
                        "!has(object.metadata.finalizers)"
                        f" || !({quoted} in object.metadata.finalizers)"
                    ),
                }
            ],
            "mutations": [
                {
                    # A JSON patch appends to the list as it is: an apply configuration would
                    # merge the same set, but the JSON patch says exactly what changes.
                    "patchType": "JSONPatch",
                    "jsonPatch": {
                        "expression": (
                            "has(object.metadata.finalizers)"
                            ' ? [JSONPatch{op: "add", path: "/metadata/finalizers/-",'
                            f" value: {quoted}}}]"
                            ' : [JSONPatch{op: "add", path: "/metadata/finalizers",'
                            f" value: [{quoted}]}}]"
                        )
                    },
                }
            ],
        },
    }


def build_finalizer_policy_binding(
    *,
    name: str = FINALIZER_POLICY,
    policy: str = FINALIZER_POLICY,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The binding that puts the policy in force (the policy alone does nothing): the
    pre-delete hook deletes it first, so that no Tunnel gets the finalizer after the
    finalizers are released."""
    return {
        "apiVersion": API_VERSION,
        "kind": BINDING_KIND,
        "metadata": {"name": name, "labels": dict(labels or LOCAL_LABELS)},
        "spec": {"policyName": policy},
    }
