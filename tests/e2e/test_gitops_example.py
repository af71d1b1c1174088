"""The example GitOps layout of docs/examples/gitops, applied as Argo CD applies it
(server-side apply under its field manager): the provider's fleet, then the tenant's
tunnels. Everything becomes Ready, kstatus says Current and Argo CD's health checks say
Healthy; the chart values render against the chart's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import objects, tools
from support.objects import wait_condition, wait_for

EXAMPLE = tools.REPO / "docs" / "examples" / "gitops"
SCRIPTS = tools.REPO / "resource_customizations" / "tunnelop.dev"
GITOPS_MANAGER = "argocd-controller"


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"serve_load_balancers": True}  # the example's relays are LoadBalancer-exposed


def manifests(directory: Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(directory.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def sync(directory: Path) -> None:
    tools.kubectl(
        "apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-R", "-f", str(directory)
    )


def judged(obj: dict[str, Any]) -> tuple[str, str]:
    """(Argo CD health, kstatus) of a live object."""
    doc = json.dumps(obj)
    script = SCRIPTS / obj["kind"] / "health.lua"
    health = json.loads(
        tools.run("health-check", "eval", str(script), kubeconfig=None, input=doc).stdout
    )
    kstatus = json.loads(tools.run("kstatus-check", kubeconfig=None, input=doc).stdout)
    return health["status"], kstatus["status"]


def test_the_chart_values_render() -> None:
    values = EXAMPLE / "provider" / "values.yaml"
    rendered = tools.helm(
        "template",
        "tunnelop",
        str(tools.REPO / "helm" / "tunnelop"),
        "-n",
        "tunnelop-system",
        "-f",
        str(values),
        kubeconfig=None,
    ).stdout
    deployments = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    (operator,) = deployments
    assert operator["spec"]["replicas"] == 2
    image = operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/platform/tunnelop:0.1.0"


async def test_the_example_layout_becomes_ready(cluster, crds, operator, relay_runner) -> None:
    provider, tenant = EXAMPLE / "provider" / "fleet", EXAMPLE / "tenant"
    try:
        sync(provider)
        sync(tenant)
        pool = await wait_condition("relaypool", "edge", None, "Ready", timeout=120)
        assert pool["status"]["readyReplicas"] == 2
        for doc in manifests(tenant):
            await wait_condition("tunnel", doc["metadata"]["name"], "team-a", "Ready", timeout=90)

        def quota_counts():
            quota = objects.get("tunnelquota", "standard", "team-a") or {}
            return ((quota.get("status") or {}).get("used") or {}).get("tunnels") == 2

        await wait_for(quota_counts, what="TunnelQuota standard counting the two tunnels")

        seen = {}
        for doc in [*manifests(provider), *manifests(tenant)]:
            if doc["kind"] == "Namespace":
                continue
            meta = doc["metadata"]
            live = objects.get(doc["kind"].lower(), meta["name"], meta.get("namespace"))
            seen[f"{doc['kind']}/{meta['name']}"] = judged(live)
        for relay in objects.list_objects("relaynode", selector="tunnelop.dev/pool=edge"):
            seen[f"RelayNode/{relay['metadata']['name']}"] = judged(relay)
        assert len(seen) == 6  # the pool, its two relays, the quota, two tunnels
        assert set(seen.values()) == {("Healthy", "Current")}, seen
    finally:
        tools.kubectl("delete", "-R", "-f", str(tenant), "--ignore-not-found", check=False)
        tools.kubectl(
            "delete", "-R", "-f", str(provider), "--ignore-not-found", "--wait=false", check=False
        )
