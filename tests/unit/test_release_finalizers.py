"""`tunnelop release-finalizers` (the chart's uninstall hook), without an API server: which
finalizers go and which stay, the patches that never overwrite a concurrent change, when the
operator counts as stopped, and the command line's refusals. tests/integration/test_chart.py
runs the command against the API server as the chart's ServiceAccount."""

from __future__ import annotations

from typing import Any

import pytest

from tunnelop.cli import build_parser
from tunnelop.platform.kube import KubeError
from tunnelop.platform.leader import LeaseRecord, Observation
from tunnelop.uninstall import (
    Options,
    ReleaseError,
    lease_holder,
    lenient_webhooks_patch,
    parse_deployment,
    release,
    release_object,
    release_patch,
    running_pods,
    wait_until_stopped,
)

# ---- pure parts ------------------------------------------------------------------------------


def test_only_tunnelops_finalizers_go_and_the_others_keep_their_order() -> None:
    finalizers = ["example.com/a", "tunnelop.dev/finalizer", "example.com/b", "tunnelop.dev/kopf"]
    assert release_patch(finalizers) == [
        {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
        {
            "op": "replace",
            "path": "/metadata/finalizers",
            "value": ["example.com/a", "example.com/b"],
        },
    ]
    assert release_patch(["tunnelop.dev/finalizer"])[1]["value"] == []


@pytest.mark.parametrize("finalizers", [[], ["example.com/a"], ["tunnelop.devx/lookalike"]])
def test_nothing_to_patch_without_a_finalizer_of_tunnelops(finalizers) -> None:
    assert release_patch(finalizers) is None


def test_failing_webhooks_are_made_lenient_and_the_others_left_alone() -> None:
    configuration = {
        "webhooks": [
            {"name": "validate-tunnel.tunnelop.dev", "failurePolicy": "Fail"},
            {"name": "other.tunnelop.dev", "failurePolicy": "Ignore"},
        ]
    }
    assert lenient_webhooks_patch(configuration) == [
        {"op": "test", "path": "/webhooks/0/name", "value": "validate-tunnel.tunnelop.dev"},
        {"op": "test", "path": "/webhooks/0/failurePolicy", "value": "Fail"},
        {"op": "add", "path": "/webhooks/0/failurePolicy", "value": "Ignore"},
    ]
    configuration["webhooks"][0]["failurePolicy"] = "Ignore"
    assert lenient_webhooks_patch(configuration) is None
    assert lenient_webhooks_patch({}) is None


def pod(name: str, phase: str | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


def test_a_pod_runs_until_it_ended_even_while_being_deleted() -> None:
    pods = [
        pod("new", None),
        pod("stopping", "Running", deleting=True),
        pod("done", "Succeeded"),
        pod("crashed", "Failed", deleting=True),
        pod("leader", "Running"),
    ]
    assert running_pods(pods) == ["leader", "new", "stopping"]


def test_a_lease_is_held_until_released_or_unchanged_for_its_duration() -> None:
    held = Observation(LeaseRecord("op-1_abc", 10, "t0", "t0"), since=100.0)
    assert lease_holder(held, 105.0) == "op-1_abc"
    assert lease_holder(held, 110.0) is None  # expired: its holder stopped renewing
    assert lease_holder(Observation(LeaseRecord("", 1), since=100.0), 100.0) is None
    assert lease_holder(None, 0.0) is None  # no Lease


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tunnelop", r"must be NAMESPACE/DEPLOYMENT \(e.g. tunnelop-system/tunnelop\)"),
        ("a/b/c", "must be NAMESPACE/DEPLOYMENT"),
        ("/tunnelop", "must be NAMESPACE/DEPLOYMENT"),
        ("Tunnelop-System/tunnelop", "the namespace must be a DNS label"),
        ("tunnelop-system/Tunnelop", "the Deployment must be a Kubernetes object name"),
        ("tunnelop-system/tunnelop.v2", None),
    ],
)
def test_a_deployment_is_named_namespace_slash_name(value, message) -> None:
    if message is None:
        assert parse_deployment(value) == tuple(value.split("/"))
        return
    with pytest.raises(ValueError, match=message):
        parse_deployment(value)
    assert parse_deployment("tunnelop-system/tunnelop") == ("tunnelop-system", "tunnelop")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --deployment"),
        (["--deployment", "tunnelop"], "--deployment: must be NAMESPACE/DEPLOYMENT"),
        (["--deployment", "a/b", "--lease", "Lease"], "--lease: must be a Lease name"),
        (["--deployment", "a/b", "--stop-timeout", "0"], "--stop-timeout: must be more than 0"),
        (
            ["--deployment", "a/b", "--webhook-configuration", "a b"],
            "--webhook-configuration: must be a ValidatingWebhookConfiguration name",
        ),
        (
            ["--deployment", "a/b", "--finalizer-policy-binding", "Policy"],
            "--finalizer-policy-binding: must be a MutatingAdmissionPolicyBinding name",
        ),
    ],
)
def test_bad_flags_are_refused_by_name(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["release-finalizers", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ---- against a scripted API server -----------------------------------------------------------


class ScriptedKube:
    """Answers PATCH with the next of `patch_answers` (an exception is raised), GET with the
    next of `reads`, lists of pods and the Lease from `pod_lists` and `leases`."""

    def __init__(
        self,
        patch_answers: list[Any] | None = None,
        reads: list[dict[str, Any] | None] | None = None,
        pod_lists: list[list[dict[str, Any]]] | None = None,
        leases: list[dict[str, Any] | None] | None = None,
    ) -> None:
        self.patch_answers = list(patch_answers or [])
        self.reads = list(reads or [])
        self.pod_lists = list(pod_lists or [])
        self.leases = list(leases or [])
        self.patches: list[tuple[str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        assert method == "PATCH"
        self.patches.append((path, body))
        answer = self.patch_answers.pop(0) if self.patch_answers else {}
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None):
        if kind == "Lease":
            return self.leases.pop(0) if len(self.leases) > 1 else self.leases[0]
        return self.reads.pop(0)

    async def list(self, api_version: str, kind: str, namespace: str | None = None, **_: Any):
        assert kind == "Pod"
        return self.pod_lists.pop(0) if len(self.pod_lists) > 1 else self.pod_lists[0]


def tunnel(finalizers: list[str], version: str = "1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "team-a",
            "finalizers": finalizers,
            "resourceVersion": version,
        }
    }


async def test_a_change_in_between_is_read_again_and_kept() -> None:
    changed_meanwhile = KubeError(422, "the test operation failed")
    kube = ScriptedKube(
        patch_answers=[changed_meanwhile, {}],
        reads=[tunnel(["tunnelop.dev/finalizer", "example.com/new"], "2")],
    )
    assert await release_object(kube, "Tunnel", tunnel(["tunnelop.dev/finalizer"]))
    (path, first), (_, second) = kube.patches
    assert path == "/apis/tunnelop.dev/v1alpha1/namespaces/team-a/tunnels/web"
    assert first[0]["value"] == ["tunnelop.dev/finalizer"]
    assert second == [
        {
            "op": "test",
            "path": "/metadata/finalizers",
            "value": ["tunnelop.dev/finalizer", "example.com/new"],
        },
        {"op": "replace", "path": "/metadata/finalizers", "value": ["example.com/new"]},
    ]


async def test_an_object_gone_or_released_meanwhile_needs_nothing() -> None:
    gone = ScriptedKube(patch_answers=[KubeError(404, "not found")])
    assert not await release_object(gone, "Tunnel", tunnel(["tunnelop.dev/finalizer"]))
    released = ScriptedKube(patch_answers=[KubeError(409, "conflict")], reads=[tunnel([])])
    assert not await release_object(released, "Tunnel", tunnel(["tunnelop.dev/finalizer"]))
    assert len(released.patches) == 1


async def test_a_refused_patch_names_the_object() -> None:
    kube = ScriptedKube(patch_answers=[KubeError(403, "forbidden")])
    with pytest.raises(ReleaseError, match="finalizers of Tunnel team-a/web: 403: forbidden"):
        await release_object(kube, "Tunnel", tunnel(["tunnelop.dev/finalizer"]))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lease(holder: str, renewed: str) -> dict[str, Any]:
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 10, "renewTime": renewed}
    return {"spec": spec}


async def test_stopped_once_no_pod_is_left_and_the_lease_is_released(monkeypatch) -> None:
    clock = Clock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr("tunnelop.uninstall.asyncio.sleep", sleep)
    kube = ScriptedKube(
        pod_lists=[[pod("leader", "Running", deleting=True)], [pod("leader", "Running")], []],
        leases=[
            lease("leader_1", "t1"),
            lease("leader_1", "t2"),
            lease("leader_1", "t2"),
            lease("", "t3"),
        ],
    )
    options = Options("tunnelop-system", "tunnelop", lease="tunnelop", stop_timeout=60)
    await wait_until_stopped(kube, options, "app=tunnelop", clock)
    assert clock.now == 3.0  # the pods gone after 2 polls, the Lease released at the 4th


async def test_an_operator_that_does_not_stop_fails_the_command_saying_why(monkeypatch) -> None:
    clock = Clock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr("tunnelop.uninstall.asyncio.sleep", sleep)
    renewals = [lease("leader_1", f"t{i}") for i in range(100)]  # renewed at every poll
    kube = ScriptedKube(pod_lists=[[pod("leader", "Running")]], leases=renewals)
    options = Options("tunnelop-system", "tunnelop", lease="tunnelop", stop_timeout=5)
    with pytest.raises(ReleaseError) as error:
        await wait_until_stopped(kube, options, "app=tunnelop", clock)
    assert str(error.value) == (
        "the operator did not stop within 5 s of scaling Deployment tunnelop-system/tunnelop "
        "to 0: pods leader still exist; Lease tunnelop-system/tunnelop is held by leader_1"
    )


class RecordingKube:
    """Every request in order; the operator's Deployment gone already, one Tunnel with
    tunnelop's finalizer, the binding present (or absent: 404)."""

    def __init__(self, binding_present: bool = True) -> None:
        self.requests: list[tuple[str, str]] = []
        self.binding_present = binding_present

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.requests.append((method, path))
        if path.endswith("/scale"):
            raise KubeError(404, "not found")
        if method == "DELETE" and not self.binding_present:
            raise KubeError(404, "not found")
        return {}

    async def list(self, api_version: str, kind: str, namespace: str | None = None, **_: Any):
        self.requests.append(("LIST", kind))
        return [tunnel(["tunnelop.dev/finalizer"])] if kind == "Tunnel" else []


BINDING_PATH = (
    "/apis/admissionregistration.k8s.io/v1/mutatingadmissionpolicybindings/"
    "add-finalizer.tunnelop.dev"
)


@pytest.mark.parametrize("present", [True, False], ids=["bound", "unbound"])
async def test_the_finalizer_policy_is_unbound_before_any_finalizer_is_released(present) -> None:
    kube = RecordingKube(binding_present=present)
    options = Options(
        "tunnelop-system", "tunnelop", finalizer_policy_binding="add-finalizer.tunnelop.dev"
    )
    counts = await release(options, kube)
    assert counts["Tunnel"] == 1
    unbind = kube.requests.index(("DELETE", BINDING_PATH))
    first_read = kube.requests.index(("LIST", "Tunnel"))
    assert unbind < first_read
    # Without the flag (the chart's webhook fallback) nothing of the kind is deleted.
    kube = RecordingKube()
    await release(Options("tunnelop-system", "tunnelop"), kube)
    assert [r for r in kube.requests if r[0] == "DELETE"] == []
