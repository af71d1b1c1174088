"""The local cluster is a real Kubernetes: Deployments get Ready pods on kwok's fake nodes,
and CRDs become Established and serve objects."""

from __future__ import annotations

import asyncio
import json
import textwrap

from kubernetes.aio import client

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


async def test_nodes_are_ready_fake_nodes(kube: client.ApiClient) -> None:
    nodes = (await client.CoreV1Api(kube).list_node()).items
    assert len(nodes) >= 3
    for node in nodes:
        assert (node.metadata.annotations or {}).get(KWOK_NODE_ANNOTATION) == "fake"
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name


async def test_deployment_gets_ready_pods_on_kwok_nodes(kubectl, kube, namespace) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 3
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers: [{name: web, image: registry.example/web:1}]
        """
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    kubectl("wait", "-n", namespace, "deployment/web", "--for=condition=Available", "--timeout=90s")
    pods = (
        await client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector="app=web")
    ).items
    assert len(pods) == 3
    fake_nodes = {
        n.metadata.name
        for n in (await client.CoreV1Api(kube).list_node()).items
        if (n.metadata.annotations or {}).get(KWOK_NODE_ANNOTATION) == "fake"
    }
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.spec.node_name in fake_nodes
        ready = {c.type: c.status for c in pod.status.conditions}
        assert ready["Ready"] == "True"


async def test_crd_becomes_established_and_serves_objects(kubectl, namespace) -> None:
    crd = textwrap.dedent(
        """
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {name: widgets.test.tunnelop.dev}
        spec:
          group: test.tunnelop.dev
          scope: Namespaced
          names: {plural: widgets, singular: widget, kind: Widget}
          versions:
          - name: v1
            served: true
            storage: true
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec:
                    type: object
                    properties:
                      size: {type: integer, minimum: 1}
        """
    )
    kubectl("apply", "-f", "-", input=crd)
    kubectl("wait", "crd/widgets.test.tunnelop.dev", "--for=condition=Established", "--timeout=60s")
    widget = "apiVersion: test.tunnelop.dev/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}"
    # Discovery may lag Established by a moment.
    for _ in range(20):
        if kubectl("apply", "-n", namespace, "-f", "-", input=widget, check=False).returncode == 0:
            break
        await asyncio.sleep(0.5)
    got = json.loads(kubectl("get", "-n", namespace, "widget/w", "-o", "json").stdout)
    assert got["spec"] == {"size": 3}
    # The schema is enforced by the real API server.
    bad = widget.replace("size: 3", "size: 0")
    result = kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert "spec.size" in result.stderr
