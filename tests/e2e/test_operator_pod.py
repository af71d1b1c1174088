"""The operator installed as pods: a Deployment of two replicas with the command line the
chart passes, run by the relay-pod runner from the tunnelop image as a kubelet would, with
its ServiceAccount's token (bound to cluster-admin here; the chart's least-privilege roles
are tested with the chart). Both replicas are ready; one leads and labels its pod
tunnelop.dev/role=leader, the other follower; the leader makes a RelayNode Ready, whose pods
the same runner runs; the webhook certificate Secret lands in the operator's own namespace
(POD_NAMESPACE), its CA in the chart's webhook configurations, and the API server calls the
leader through the webhook Service, which selects the leader's label (the runner writes its
endpoints, following the labels as the endpoint slice controller does)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from kubernetes.aio import client

from support import objects, tools
from support.dataplane import on, serving_relay
from support.operator import (
    OperatorPod,
    OperatorProcess,
    ca_bundles,
    chart_webhook_configurations,
    delete_webhook_configurations,
    leader,
    operator_pods,
    standing_by,
    wait_webhook_denial,
)
from support.relay_runner import RelayPodRunner
from tunnelop.contract.naming import DEFAULT_AGENT_IMAGE, SERVICE_ACCOUNT_DIR
from tunnelop.platform.pod_role import ROLE_LABEL

OPERATOR_LABELS = {"app.kubernetes.io/name": "tunnelop", "app.kubernetes.io/component": "operator"}
WEBHOOK_SERVICE = "tunnelop-webhook"
SELECTOR = "app.kubernetes.io/component=operator"
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
            f"{namespace}/{WEBHOOK_SERVICE}",
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
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
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
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": WEBHOOK_SERVICE, "namespace": namespace},
                "spec": {
                    "selector": {**OPERATOR_LABELS, ROLE_LABEL: "leader"},
                    "ports": [{"name": "https", "port": 443, "targetPort": "webhook"}],
                },
            },
            *chart_webhook_configurations(namespace, WEBHOOK_SERVICE, 443),
            operator_deployment(namespace, relay_namespace),
        ]
    )
    try:
        yield namespace
    finally:
        delete_webhook_configurations()  # failurePolicy Fail: not without the operator
        tools.kubectl("delete", "deployment", "tunnelop", "-n", namespace, "--wait=true")
        tools.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")
        await operator.start()


async def pod_roles(kube: client.ApiClient, namespace: str) -> list[OperatorPod]:
    """The operator's running pods, as the API reports them."""
    pods = await client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=operator"
    )
    return operator_pods(kube.sanitize_for_serialization(pods))


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
        pods_now = await pod_roles(kube, namespace)
        leading = leader(pods_now, lease_holder(relay_namespace))
        if leading and len(standing_by(pods_now)) == 1:
            break
        if loop.time() > deadline:
            raise AssertionError(f"not one leader and one ready follower: {pods_now}\n{logs()}")
        await asyncio.sleep(0.5)
    leader_pod, follower = leading.name, standing_by(pods_now)[0].name

    # Two processes, each on an address of its own; the leader's label names the Lease
    # holder, by the pod's name (its HOSTNAME).
    pods = relay_runner.operator_pods()
    assert sorted(p.name for p in pods) == sorted([leader_pod, follower])
    assert len({p.address for p in pods}) == 2

    # The operator found its own namespace in the pod and created its webhook Secret there;
    # its CA went into the chart's configurations.
    secret = await client.CoreV1Api(kube).read_namespaced_secret("tunnelop-webhook-cert", namespace)
    assert secret.type == "kubernetes.io/tls"
    await objects.wait_for(
        lambda: ca_bundles() == [secret.data["ca.crt"]] * 2, timeout=30, what="caBundle injected"
    )

    # The follower runs all along, ready to take over, out of the webhook Service.
    follower_pod = next(p for p in pods if p.name == follower)
    assert all(c.running for c in follower_pod.containers)

    # The leader, in its pod, does its job: a relay becomes Ready, its pod run by the runner;
    # the API server reaches the leader's webhook through the Service, whose one endpoint
    # is the leader's. The leader's pod deleted, another replica takes over, labels itself
    # leader and serves the same certificate: the webhook keeps working with the caBundle
    # unchanged.
    relay = f"inpod-{RUN}"

    def bad_tunnel(name: str) -> dict:
        return objects.tunnel(name, remotePort=30000, **on(relay))

    try:
        async with serving_relay(relay_runner, relay, ports="46000-46099"):
            node = objects.get("relaynode", relay)
            assert objects.condition(node, "Ready")["status"] == "True"
            denial = await wait_webhook_denial(namespace, bad_tunnel, "spec.remotePort")
            assert "validate-tunnel.tunnelop.dev" in denial
            assert await ready_endpoints(kube, namespace) == [address_of(relay_runner, leader_pod)]

            tools.kubectl("delete", "pod", leader_pod, "-n", namespace, "--grace-period=0")

            def new_leader_behind_the_service() -> str | None:
                # The follower, or the Deployment's replacement pod: whichever campaigns first
                # once the old leader released the Lease.
                pods = operator_pods({"items": objects.list_objects("pod", namespace, SELECTOR)})
                taken = leader(pods, lease_holder(relay_namespace))
                if taken is None or taken.name == leader_pod:
                    return None
                behind = ready_endpoints_now(namespace) == [address_of(relay_runner, taken.name)]
                return taken.name if behind else None

            new_leader = await objects.wait_for(
                new_leader_behind_the_service, timeout=90, what="a new leader behind the Service"
            )
            await wait_webhook_denial(namespace, bad_tunnel, "spec.remotePort")
            assert ca_bundles() == [secret.data["ca.crt"]] * 2
            assert new_leader != leader_pod
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None


def lease_holder(namespace: str) -> str | None:
    lease = objects.get("lease", "tunnelop", namespace) or {}
    return (lease.get("spec") or {}).get("holderIdentity")


def address_of(runner: RelayPodRunner, pod: str) -> str | None:
    return next((p.address for p in runner.operator_pods() if p.name == pod), None)


async def ready_endpoints(kube: client.ApiClient, namespace: str) -> list[str]:
    """The ready addresses of the webhook Service's EndpointSlices."""
    slices = await client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={WEBHOOK_SERVICE}"
    )
    return [e.addresses[0] for s in slices.items for e in s.endpoints or [] if e.conditions.ready]


def ready_endpoints_now(namespace: str) -> list[str]:
    result = tools.kubectl(
        "get",
        "endpointslices",
        "-n",
        namespace,
        "-l",
        f"kubernetes.io/service-name={WEBHOOK_SERVICE}",
        "-o",
        "json",
    )
    return [
        e["addresses"][0]
        for s in json.loads(result.stdout)["items"]
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    ]
