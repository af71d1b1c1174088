"""The operator installed as pods: a Deployment of two replicas with the command line the
chart passes, run by the relay-pod runner from the tunnelop image as a kubelet would, with
its ServiceAccount's token (bound to cluster-admin here; the chart's least-privilege roles
are tested with the chart). One replica leads and is ready, the other follows and is not;
the leader makes a RelayNode Ready, whose pods the same runner runs; and the webhook
certificate Secret lands in the operator's own namespace (POD_NAMESPACE)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from kubernetes.aio import client

from support import objects, tools
from support.dataplane import serving_relay
from support.operator import OperatorProcess, delete_webhook_configurations
from support.relay_runner import RelayPodRunner
from tunnelop.contract.naming import DEFAULT_AGENT_IMAGE, SERVICE_ACCOUNT_DIR

OPERATOR_LABELS = {"app.kubernetes.io/name": "tunnelop", "app.kubernetes.io/component": "operator"}
RUN = uuid.uuid4().hex[:5]


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"operator_selector": ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items())}


def operator_deployment(namespace: str, relay_namespace: str) -> dict[str, Any]:
    """What the chart installs, reduced to what running in a pod needs."""
    container = {
        "name": "operator",
        "image": DEFAULT_AGENT_IMAGE,
        "args": [
            "run",
            "--leader-elect",
            "--relay-namespace",
            relay_namespace,
            "--health-listen",
            "0.0.0.0:8081",
            "--webhook-host",
            "0.0.0.0",
            "--webhook-port",
            "9443",
            "--webhook-service",
            f"{namespace}/tunnelop-webhook",
            "--webhook-cert-secret",
            "tunnelop-webhook-cert",
            "--service-account-dir",
            SERVICE_ACCOUNT_DIR,
            "--log-format",
            "json",
        ],
        "env": [
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            }
        ],
        "ports": [
            {"name": "health", "containerPort": 8081},
            {"name": "webhook", "containerPort": 9443},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "health"},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tunnelop", "namespace": namespace, "labels": OPERATOR_LABELS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": OPERATOR_LABELS},
            "template": {
                "metadata": {"labels": OPERATOR_LABELS},
                "spec": {"serviceAccountName": "tunnelop", "containers": [container]},
            },
        },
    }


@pytest.fixture
async def installed(operator: OperatorProcess, namespace: str, relay_namespace: str):
    """The operator's ServiceAccount, its binding and its Deployment in `namespace`; the
    session's operator process steps aside meanwhile."""
    await operator.stop()
    delete_webhook_configurations()
    binding = f"tunnelop-e2e-{RUN}"
    objects.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "tunnelop", "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": binding},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "tunnelop", "namespace": namespace}
                ],
            },
            operator_deployment(namespace, relay_namespace),
        ]
    )
    try:
        yield namespace
    finally:
        tools.kubectl("delete", "deployment", "tunnelop", "-n", namespace, "--wait=true")
        tools.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")
        await operator.start()


async def ready_pods(kube: client.ApiClient, namespace: str) -> tuple[list[str], list[str]]:
    """(ready, not ready) names of the operator's running pods, as the API reports them."""
    pods = await client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=operator"
    )
    ready, unready = [], []
    for pod in pods.items:
        if pod.metadata.deletion_timestamp or (pod.status.phase != "Running"):
            continue
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        (ready if conditions.get("Ready") == "True" else unready).append(pod.metadata.name)
    return ready, unready


async def test_the_operator_runs_in_pods_and_its_leader_makes_a_relay_ready(
    installed: str, kube: client.ApiClient, relay_runner: RelayPodRunner, relay_namespace: str
) -> None:
    namespace = installed

    def logs() -> str:
        pods = relay_runner.operator_pods()
        return "\n".join(relay_runner.logs(f"{p.namespace}/{p.name}") for p in pods)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        split = await ready_pods(kube, namespace)
        if len(split[0]) == 1 and len(split[1]) == 1:
            break
        if loop.time() > deadline:
            raise AssertionError(f"not one ready and one not ready: {split}\n{logs()}")
        await asyncio.sleep(0.5)
    (leader,), (follower,) = split

    # Two processes, each on an address of its own; the ready one holds the Lease, by the
    # pod's name (its HOSTNAME).
    pods = relay_runner.operator_pods()
    assert sorted(p.name for p in pods) == sorted([leader, follower])
    assert len({p.address for p in pods}) == 2
    lease = await client.CoordinationV1Api(kube).read_namespaced_lease("tunnelop", relay_namespace)
    assert lease.spec.holder_identity.startswith(f"{leader}_"), lease.spec.holder_identity

    # The operator found its own namespace in the pod and created its webhook Secret there.
    secret = await client.CoreV1Api(kube).read_namespaced_secret("tunnelop-webhook-cert", namespace)
    assert secret.type == "kubernetes.io/tls"

    # The leader, in its pod, does its job: a relay becomes Ready, its pod run by the runner.
    relay = f"inpod-{RUN}"
    try:
        async with serving_relay(relay_runner, relay, ports="46000-46099"):
            node = objects.get("relaynode", relay)
            assert objects.condition(node, "Ready")["status"] == "True"
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None

    # The follower is running all along, only not ready (as a kubelet reports failing probes).
    follower_pod = next(p for p in pods if p.name == follower)
    assert all(c.running for c in follower_pod.containers)
