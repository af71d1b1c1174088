"""The GitOps contract (invariant 5) as Argo CD and Flux see it. The provider's and the
tenant's manifests are applied from a directory with server-side apply under a GitOps field
manager; the operator works (relays started, tunnels scheduled, credentials written, traffic
through real frps metered into status, tunnels moved when the provider drains a relay in
Git); then `kubectl diff --server-side` with the same manager finds nothing to change, and
every field the operator holds on those objects is in status or is its finalizer."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import objects, tools
from support.dataplane import running_frpc, wait_agent_ready
from support.netutil import echo_server, wait_for_echo
from support.objects import GROUP_VERSION, wait_condition, wait_for
from tunnelop.controllers.state import FINALIZER
from tunnelop.platform.kube import FIELD_MANAGER

GITOPS_MANAGER = "argocd-controller"
CASE_LABEL = "tunnelop.test/gitops"
TUNNELS = ("game", "voice")


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"serve_load_balancers": True}  # the relays are LoadBalancer-exposed, as in Git


def provider_manifests(case: str, namespace: str, *, moved: bool) -> list[dict[str, Any]]:
    """The provider's repository: two relays and the tenant's quota. At first the second
    relay is cordoned, so the tunnels land on the first; `moved`: the provider drains the
    first and uncordons the second, in Git."""

    def relay(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": GROUP_VERSION,
            "kind": "RelayNode",
            "metadata": {"name": name, "labels": {CASE_LABEL: case}},
            "spec": {
                "ports": {"range": "24000-24099"},
                "protocols": ["tcp", "udp"],
                "exposure": {"type": "LoadBalancer"},
                **spec,
            },
        }

    first, second = f"{case}-a", f"{case}-b"
    return [
        relay(first, drain=True) if moved else relay(first),
        relay(second) if moved else relay(second, unschedulable=True),
        {
            "apiVersion": GROUP_VERSION,
            "kind": "TunnelQuota",
            "metadata": {"name": "standard", "namespace": namespace},
            "spec": {"hard": {"tunnels": 5, "protocols": ["tcp", "udp"]}},
        },
    ]


def tenant_manifests(case: str, namespace: str) -> list[dict[str, Any]]:
    """The tenant's repository: two Tunnels, and a Service of type LoadBalancer with the class
    tunnelop.dev/relay, on which the operator writes status.loadBalancer only (its Tunnel is
    the operator's own, owned by the Service)."""
    placement = {"nodeSelector": {CASE_LABEL: case}}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "arcade",
                "namespace": namespace,
                "annotations": {"tunnelop.dev/relay-node-selector": f"{CASE_LABEL}={case}"},
            },
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": "tunnelop.dev/relay",
                "selector": {"app": "arcade"},
                "ports": [{"name": "play", "port": 24050, "protocol": "TCP", "targetPort": 8080}],
            },
        },
        {
            "apiVersion": GROUP_VERSION,
            "kind": "Tunnel",
            "metadata": {"name": "game", "namespace": namespace},
            "spec": {"protocol": "tcp", "relay": placement},
        },
        {
            "apiVersion": GROUP_VERSION,
            "kind": "Tunnel",
            "metadata": {"name": "voice", "namespace": namespace},
            "spec": {"protocol": "udp", "bandwidth": "20M", "relay": placement},
        },
    ]


def write_repository(directory: Path, case: str, namespace: str, *, moved: bool) -> None:
    directory.mkdir(exist_ok=True)
    for name, docs in (
        ("provider.yaml", provider_manifests(case, namespace, moved=moved)),
        ("tenant.yaml", tenant_manifests(case, namespace)),
    ):
        (directory / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def sync(directory: Path) -> None:
    """What Argo CD's sync with ServerSideApply=true does (Flux: its own manager name)."""
    tools.kubectl(
        "apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", str(directory)
    )


def live_objects(directory: Path) -> list[dict[str, Any]]:
    """Every object of the directory, as the API server has it now, managedFields included."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            meta = doc["metadata"]
            where = ["-n", meta["namespace"]] if "namespace" in meta else []
            # kubectl hides managedFields unless asked.
            shown = tools.kubectl(
                "get",
                doc["kind"].lower(),
                meta["name"],
                *where,
                "-o",
                "json",
                "--show-managed-fields",
            )
            found.append(json.loads(shown.stdout))
    return found


def drift_risks(obj: dict[str, Any]) -> list[str]:
    """What in `obj`'s managedFields is neither the GitOps tool's applied configuration nor
    the operator's status and finalizer: each would be drift waiting to happen."""
    out = []
    name = f"{obj['kind']} {obj['metadata']['name']}"
    for entry in obj["metadata"]["managedFields"]:
        manager, fields = entry["manager"], dict(entry.get("fieldsV1") or {})
        if manager == GITOPS_MANAGER and entry["operation"] == "Apply":
            continue
        if not manager.startswith(FIELD_MANAGER):  # tunnelop, tunnelop-loadbalancer
            out.append(f"{name}: {manager} ({entry['operation']}) holds {fields}")
        elif entry.get("subresource") != "status" and fields != {
            "f:metadata": {"f:finalizers": {".": {}, f'v:"{FINALIZER}"': {}}}
        }:
            out.append(f"{name}: the operator holds {fields}")
    return out


def operator_holds(obj: dict[str, Any]) -> set[str]:
    """What the operator holds in `obj`: "status", "finalizer"."""
    held = set()
    for entry in obj["metadata"]["managedFields"]:
        if entry["manager"].startswith(FIELD_MANAGER):
            held.add("status" if entry.get("subresource") == "status" else "finalizer")
    return held


async def test_no_drift_after_the_operator_worked(
    cluster, crds, operator, relay_runner, namespace, tmp_path
) -> None:
    case = f"gd-{uuid.uuid4().hex[:4]}"
    first, second = f"{case}-a", f"{case}-b"
    git = tmp_path / "git"
    write_repository(git, case, namespace, moved=False)
    sync(git)
    try:
        for relay in (first, second):
            await wait_condition("relaynode", relay, None, "Ready", timeout=90)
        await wait_agent_ready(relay_runner, first)
        for name in TUNNELS:
            bound = await wait_condition("tunnel", name, namespace, "Ready", timeout=60)
            assert bound["status"]["relayNode"] == first

        # Traffic through the relay, metered into the tunnel's status by the operator.
        game = objects.get("tunnel", "game", namespace)
        host, _, port = game["status"]["endpoint"].rpartition(":")
        async with echo_server() as local, running_frpc("game", namespace, local, tmp_path):
            assert await wait_for_echo(host, int(port), b"git is the truth") == b"git is the truth"
            await wait_condition("tunnel", "game", namespace, "ClientConnected", timeout=60)
            await wait_for(
                lambda: (
                    (objects.get("tunnel", "game", namespace)["status"].get("traffic") or {}).get(
                        "bytesIn", 0
                    )
                    > 0
                ),
                timeout=60,
                what="the game tunnel's traffic in its status",
            )

        # The provider moves the tenant off the first relay, in Git.
        write_repository(git, case, namespace, moved=True)
        sync(git)
        for name in TUNNELS:
            await wait_for(
                lambda name=name: (
                    objects.get("tunnel", name, namespace)["status"].get("relayNode") == second
                ),
                timeout=60,
                what=f"tunnel {name} moved to {second}",
            )
        drained = await wait_condition(
            "relaynode", first, None, "Draining", "True", "DrainRequested"
        )
        await wait_for(
            lambda: (
                (objects.get("relaynode", first)["status"].get("allocated") or {}).get("tunnels")
                == 0
            ),
            what=f"{first} empty",
        )
        assert drained["spec"]["drain"] is True

        # The Service of the class got its relay's address, and only that was written on it.
        await wait_for(
            lambda: (
                (objects.get("service", "arcade", namespace).get("status") or {})
                .get("loadBalancer", {})
                .get("ingress")
            ),
            timeout=60,
            what="the arcade Service's load-balancer address",
        )
        diff_args = ("diff", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", str(git))
        diff = tools.kubectl(*diff_args, check=False)
        assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr

        live = live_objects(git)
        assert [risk for obj in live for risk in drift_risks(obj)] == []
        held = {f"{obj['kind']}/{obj['metadata']['name']}": operator_holds(obj) for obj in live}
        # RelayNodes get the finalizer from the operator; Tunnels from admission at creation
        # (policy or webhook), which leaves it to no manager (the API server does not attribute
        # what admission adds), so no apply ever removes it.
        assert held == {
            f"RelayNode/{first}": {"status", "finalizer"},
            f"RelayNode/{second}": {"status", "finalizer"},
            "TunnelQuota/standard": {"status"},
            "Service/arcade": {"status"},
            "Tunnel/game": {"status"},
            "Tunnel/voice": {"status"},
        }
        for obj in live:
            if obj["kind"] in ("Tunnel", "RelayNode"):
                assert FINALIZER in obj["metadata"]["finalizers"]

        # The check sees drift when there is some: a hand edit of a field Git sets.
        objects.patch_tunnel("voice", namespace, {"spec": {"bandwidth": "30M"}})
        diff = tools.kubectl(*diff_args, "--force-conflicts", check=False)  # as Argo CD
        assert diff.returncode == 1 and "30M" in diff.stdout, diff.stdout + diff.stderr
    finally:
        tools.kubectl("delete", "-f", str(git), "--ignore-not-found", "--wait=false", check=False)
