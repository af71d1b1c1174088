"""`make demo`'s install (hack/demo_helm.py): the helm command it runs, what it does about
an earlier run's release, which operator pod it takes for the leader, and that it installs
the chart's defaults. And hack/demo.py imports, so a renamed test helper fails here rather
than in the demo."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import yaml

from support.operator import leader, operator_pods, standing_by
from tunnelop.platform.pod_role import ROLE_LABEL

HACK = Path(__file__).parents[2] / "hack"
CHART_VALUES = HACK.parent / "helm" / "tunnelop" / "values.yaml"


@pytest.fixture(scope="module")
def demo_helm():
    sys.path.insert(0, str(HACK))
    try:
        yield importlib.import_module("demo_helm")
    finally:
        sys.path.remove(str(HACK))


def test_demo_script_imports(demo_helm) -> None:
    sys.path.insert(0, str(HACK))
    try:
        demo = importlib.import_module("demo")
    finally:
        sys.path.remove(str(HACK))
    assert demo.RELEASE_NAMESPACE == "tunnelop-system"


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (None, "install"),
        ("deployed", "upgrade"),
        ("failed", "reinstall"),
        ("pending-install", "reinstall"),
        ("uninstalling", "reinstall"),
    ],
)
def test_an_earlier_release_is_upgraded_or_reinstalled(demo_helm, status, action) -> None:
    assert demo_helm.action_for(status) == action


def test_install_command_is_the_providers_plus_the_demo_values(demo_helm) -> None:
    args = demo_helm.helm_args("install", take_ownership=False)
    provider = demo_helm.provider_command().split()[1:]
    assert args[: len(provider)] == provider
    assert args[len(provider) :] == [
        "--set",
        "image.tag=dev",
        "--set",
        "trafficInterval=2",
        "--set",
        "uninstall.podLabels.tunnelop\\.test/kubelet=relay-runner",
    ]
    assert "--take-ownership" not in args


def test_upgrade_takes_no_create_namespace_and_ownership_only_when_asked(demo_helm) -> None:
    args = demo_helm.helm_args("upgrade", take_ownership=True)
    assert args[:5] == ["upgrade", "tunnelop", "./helm/tunnelop", "-n", "tunnelop-system"]
    assert "--create-namespace" not in args
    assert "--take-ownership" in args


def test_shown_command_puts_each_value_on_its_own_line(demo_helm) -> None:
    shown = demo_helm.shown(demo_helm.helm_args("install", take_ownership=False))
    assert shown.splitlines() == [
        "helm install tunnelop ./helm/tunnelop -n tunnelop-system --create-namespace \\",
        "    --set image.tag=dev \\",
        "    --set trafficInterval=2 \\",
        "    --set 'uninstall.podLabels.tunnelop\\.test/kubelet=relay-runner'",
    ]


def owned(release: str, namespace: str) -> dict:
    return {
        "metadata": {
            "annotations": {
                "meta.helm.sh/release-name": release,
                "meta.helm.sh/release-namespace": namespace,
            }
        }
    }


def test_take_ownership_only_of_objects_another_release_or_kubectl_made(demo_helm) -> None:
    assert not demo_helm.needs_take_ownership([])
    assert not demo_helm.needs_take_ownership([owned("tunnelop", "tunnelop-system")])
    assert demo_helm.needs_take_ownership([{"metadata": {}}])  # kubectl apply -f crds/
    assert demo_helm.needs_take_ownership([owned("tunnelop", "elsewhere")])


def pod(
    name: str, ready: bool, phase: str = "Running", deleting: bool = False, role: str = ""
) -> dict:
    metadata: dict = {"name": name, "labels": {ROLE_LABEL: role} if role else {}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {
        "phase": phase,
        "podIP": "127.0.100.4",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return {"metadata": metadata, "status": status}


def test_leader_is_the_ready_pod_labelled_leader_holding_the_lease() -> None:
    pods = operator_pods(
        {
            "items": [
                pod("op-b", ready=True, role="follower"),
                pod("op-a", ready=True, role="leader"),
                pod("op-c", True, "Pending"),
            ]
        }
    )
    assert [(p.name, p.ready, p.role) for p in pods] == [
        ("op-a", True, "leader"),
        ("op-b", True, "follower"),
    ]
    assert leader(pods, "op-a_1f2e3d4c").name == "op-a"
    assert [p.name for p in standing_by(pods)] == ["op-b"]
    assert leader(pods, None) is None
    assert leader(pods, "op-b_1f2e3d4c") is None  # a takeover under way
    assert leader(pods, "op-ab_1f2e3d4c") is None  # another pod's name, longer


def test_no_leader_while_the_label_is_stale_missing_or_the_pod_is_going() -> None:
    both = operator_pods(
        {"items": [pod("op-a", True, role="leader"), pod("op-b", True, role="leader")]}
    )
    assert leader(both, "op-a_1f2e3d4c") is None
    unlabelled = operator_pods({"items": [pod("op-a", True), pod("op-b", True)]})
    assert leader(unlabelled, "op-a_1f2e3d4c") is None
    not_ready = operator_pods({"items": [pod("op-a", False, role="leader")]})
    assert leader(not_ready, "op-a_1f2e3d4c") is None
    going = operator_pods({"items": [pod("op-a", True, role="leader", deleting=True)]})
    assert leader(going, "op-a_1f2e3d4c") is None


def test_demo_installs_the_charts_defaults(demo_helm) -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert demo_helm.RELAY_NAMESPACE == values["relayNamespace"]["name"]
    assert demo_helm.LEASE == values["leaderElection"]["leaseName"]
    assert values["crds"]["install"] is True
    for value, _ in demo_helm.DEMO_VALUES:  # only values the chart has
        node = values
        path = value.split("=", 1)[0].replace("\\.", "\0").split(".")
        for key in (k.replace("\0", ".") for k in path):
            if node == {}:  # a map of the user's own keys (labels)
                break
            assert key in node, value
            node = node[key]
