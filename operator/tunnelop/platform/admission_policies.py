"""MutatingAdmissionPolicies and their bindings (admissionregistration.k8s.io/v1): whether the
API server serves them, and the few writes a local operator makes (server-side apply as
tunnelop, delete). The objects themselves come from the builders."""

from __future__ import annotations

from typing import Any

from tunnelop.platform.kube import FIELD_MANAGER, Kube, KubeError

GROUP_VERSION = "admissionregistration.k8s.io/v1"
POLICIES = "mutatingadmissionpolicies"
BINDINGS = "mutatingadmissionpolicybindings"
PLURALS = {
    "MutatingAdmissionPolicy": POLICIES,
    "MutatingAdmissionPolicyBinding": BINDINGS,
}


def _path(plural: str, name: str | None = None) -> str:
    return f"/apis/{GROUP_VERSION}/{plural}" + (f"/{name}" if name else "")


def serves_mutating_policies(discovery: dict[str, Any] | None) -> bool:
    """Whether an API resource list (GET /apis/admissionregistration.k8s.io/v1) has both
    kinds (GA and on by default from Kubernetes 1.36; absent before)."""
    names = {r.get("name") for r in (discovery or {}).get("resources") or []}
    return {POLICIES, BINDINGS} <= names


async def served(kube: Kube) -> bool:
    try:
        discovery = await kube.request("GET", f"/apis/{GROUP_VERSION}")
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return serves_mutating_policies(discovery)


async def apply(kube: Kube, obj: dict[str, Any]) -> dict[str, Any] | None:
    """Server-side apply as tunnelop (forced: the local operator owns these objects)."""
    path = _path(PLURALS[obj["kind"]], obj["metadata"]["name"])
    return await kube.request(
        "PATCH",
        path,
        obj,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )


async def delete(kube: Kube, kind: str, name: str) -> bool:
    """Delete one; whether it existed."""
    try:
        await kube.request("DELETE", _path(PLURALS[kind], name))
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return True
