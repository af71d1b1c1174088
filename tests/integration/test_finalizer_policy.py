"""The release finalizer set at creation by a MutatingAdmissionPolicy, inside the API server:
a local leader applies the policy and its binding instead of registering kopf's mutating
webhook, and deletes them when it stops; the policy adds the finalizer once, keeps the others,
leaves UPDATEs alone and works with no operator running. The default, --finalizer-mode webhook,
brings the webhook back. (The chart's copy: tests/integration/test_chart.py.)"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from support import objects, tools
from support.operator import (
    OperatorProcess,
    delete_webhook_configurations,
    session_operator_aside,
)
from tunnelop.builders.finalizer_policy import (
    build_finalizer_policy,
    build_finalizer_policy_binding,
)
from tunnelop.contract.naming import FINALIZER, FINALIZER_POLICY

FOREIGN = "example.test/keep"
POLICY = "mutatingadmissionpolicy.v1.admissionregistration.k8s.io"
BINDING = "mutatingadmissionpolicybinding.v1.admissionregistration.k8s.io"


def created(namespace: str, name: str, finalizers: list[str] | None = None) -> dict[str, Any]:
    """`kubectl create`'s answer: the object as the create stored it, before any other write."""
    manifest = objects.tunnel(name)
    if finalizers is not None:
        manifest["metadata"]["finalizers"] = finalizers
    result = tools.kubectl(
        "create",
        "-n",
        namespace,
        "-o",
        "json",
        "--show-managed-fields",
        "-f",
        "-",
        input=json.dumps(manifest),
    )
    return json.loads(result.stdout)


def mutating_webhooks() -> list[str]:
    """The webhooks of the MutatingWebhookConfiguration a local operator registers (kopf
    creates the object even with none in it)."""
    found = objects.get("mutatingwebhookconfiguration", "tunnelop.dev") or {}
    return [w["name"] for w in found.get("webhooks") or []]


async def in_force(namespace: str) -> None:
    """Until a new Tunnel gets the finalizer from the create itself (the API server loads a
    new policy within moments)."""
    attempts = iter(range(1000))

    def with_finalizer() -> bool:
        name = f"probe-{next(attempts)}"
        try:
            body = created(namespace, name)
        except subprocess.CalledProcessError as error:
            # A CRD created moments ago: the API server refuses creates of the kind a policy
            # matches until it knows the schema (docs/install.md; why webhook is the default).
            if "There can be a delay" in error.stderr:
                return False
            raise
        return FINALIZER in (body["metadata"].get("finalizers") or [])

    await objects.wait_for(with_finalizer, timeout=120, what="the finalizer policy in force")


def release(namespace: str) -> None:
    """Remove the finalizers of the namespace's Tunnels (no operator may be running)."""
    for tunnel in objects.list_objects("tunnel", namespace):
        patch = '{"metadata":{"finalizers":null}}'
        name = tunnel["metadata"]["name"]
        tools.kubectl("patch", "tunnel", name, "-n", namespace, "--type=merge", "-p", patch)


@contextlib.asynccontextmanager
async def policy_operator(tmp_path) -> AsyncIterator[OperatorProcess]:
    """A local operator with --finalizer-mode policy, stopped cleanly at the end."""
    local = OperatorProcess(tools.KUBECONFIG, tmp_path / "policy.log", "--finalizer-mode", "policy")
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


async def test_the_leader_applies_the_policy_and_registers_no_mutating_webhook(
    request: pytest.FixtureRequest, crds: Any, namespace: str, tmp_path
) -> None:
    async with session_operator_aside(request), policy_operator(tmp_path):
        await _policy_in_place(namespace)


async def _policy_in_place(namespace: str) -> None:
    policy = objects.get(POLICY, FINALIZER_POLICY)
    binding = objects.get(BINDING, FINALIZER_POLICY)
    assert policy is not None and binding is not None
    shown = tools.kubectl("get", POLICY, FINALIZER_POLICY, "-o", "json", "--show-managed-fields")
    managers = {m["manager"] for m in json.loads(shown.stdout)["metadata"]["managedFields"]}
    assert managers == {"tunnelop"}
    assert policy["spec"]["mutations"] == build_finalizer_policy()["spec"]["mutations"]
    assert binding["spec"] == build_finalizer_policy_binding()["spec"]
    # No create calls into the operator to mutate; validation still does.
    assert mutating_webhooks() == []
    validating = objects.get("validatingwebhookconfiguration", "tunnelop.dev")
    assert [w["name"] for w in validating["webhooks"]] == ["validate-tunnel.tunnelop.dev"]

    await in_force(namespace)
    # The create's own answer has it: no write of the operator's was needed.
    plain = created(namespace, "plain")
    assert plain["metadata"]["finalizers"] == [FINALIZER]
    assert {m["manager"] for m in plain["metadata"]["managedFields"]} == {"kubectl-create"}
    # Another finalizer stays, in front; ours is added once, and never twice.
    foreign = created(namespace, "foreign", [FOREIGN])
    assert foreign["metadata"]["finalizers"] == [FOREIGN, FINALIZER]
    both = created(namespace, "both", [FINALIZER, FOREIGN])
    assert both["metadata"]["finalizers"] == [FINALIZER, FOREIGN]
    await objects.wait_for(
        lambda: (objects.get("tunnel", "foreign", namespace) or {}).get("status"),
        what="the operator's status on the Tunnel",
    )
    assert objects.get("tunnel", "foreign", namespace)["metadata"]["finalizers"] == [
        FOREIGN,
        FINALIZER,
    ]
    # The namespace goes with the test: the operator removes its own finalizer then.
    for name in ("foreign", "both"):
        patch = json.dumps({"metadata": {"finalizers": [FINALIZER]}})
        tools.kubectl("patch", "tunnel", name, "-n", namespace, "--type=merge", "-p", patch)


async def test_with_no_operator_the_policy_still_sets_it_and_leaves_updates_alone(
    request: pytest.FixtureRequest, crds: Any, namespace: str
) -> None:
    async with session_operator_aside(request):
        # As a killed operator leaves them: nobody answers any webhook now.
        assert objects.get(POLICY, FINALIZER_POLICY) is None
        objects.apply([build_finalizer_policy(), build_finalizer_policy_binding()])
        try:
            await in_force(namespace)
            tunnel = created(namespace, "alone", [FOREIGN])
            assert tunnel["metadata"]["finalizers"] == [FOREIGN, FINALIZER]
            # An UPDATE that drops it is the writer's to make: the policy matches CREATE only.
            patch = json.dumps({"metadata": {"finalizers": [FOREIGN]}})
            tools.kubectl("patch", "tunnel", "alone", "-n", namespace, "--type=merge", "-p", patch)
            kept = objects.get("tunnel", "alone", namespace)
            assert kept["metadata"]["finalizers"] == [FOREIGN]
        finally:
            release(namespace)
            delete_webhook_configurations()
        assert objects.get(BINDING, FINALIZER_POLICY) is None


async def test_a_clean_stop_deletes_the_policy_and_webhook_mode_brings_the_webhook_back(
    request: pytest.FixtureRequest, crds: Any, namespace: str, tmp_path
) -> None:
    async with session_operator_aside(request):
        async with policy_operator(tmp_path):
            assert objects.get(BINDING, FINALIZER_POLICY) is not None
            assert mutating_webhooks() == []
        assert objects.get(BINDING, FINALIZER_POLICY) is None
        assert objects.get(POLICY, FINALIZER_POLICY) is None

        webhook = OperatorProcess(tools.KUBECONFIG, tmp_path / "webhook.log")  # the default
        await webhook.start()
        try:
            assert objects.get(POLICY, FINALIZER_POLICY) is None
            assert mutating_webhooks() == ["add-finalizer.tunnelop.dev"]
            tunnel = created(namespace, "by-webhook", [FOREIGN])
            assert tunnel["metadata"]["finalizers"] == [FOREIGN, FINALIZER]
        finally:
            await webhook.stop()
            release(namespace)


async def test_no_webhook_registers_none_and_the_controller_sets_the_finalizer(
    request: pytest.FixtureRequest, crds: Any, namespace: str, tmp_path
) -> None:
    async with session_operator_aside(request):
        bare = OperatorProcess(tools.KUBECONFIG, tmp_path / "bare.log", "--no-webhook")
        await bare.start(wait_for="leading")
        try:
            assert objects.get("validatingwebhookconfiguration", "tunnelop.dev") is None
            assert mutating_webhooks() == []
            tunnel = created(namespace, "no-webhook")
            assert FINALIZER not in (tunnel["metadata"].get("finalizers") or [])

            def finalized() -> bool:
                found = objects.get("tunnel", "no-webhook", namespace) or {}
                return FINALIZER in (found.get("metadata", {}).get("finalizers") or [])

            await objects.wait_for(finalized, timeout=60, what="the controller's finalizer")
        finally:
            await bare.stop()
            release(namespace)
