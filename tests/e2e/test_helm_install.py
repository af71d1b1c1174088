"""The chart installed for real: `helm install` into a fresh namespace, its two operator pods
run by the relay-pod runner from the chart's image with their ServiceAccount's projected token
(so the chart's RBAC is what the operator gets: a missing permission fails here). One pod
leads; a tenant's Tunnel on a relay becomes Ready through it and carries bytes; the chart's
webhook Service answers the API server; the leader's pod deleted, the other takes over; an
upgrade keeps the tunnel's port; an uninstall (its pre-delete hook run by the runner too, to
its end) leaves the tunnel carrying bytes and nothing that blocks deleting Tunnels; a
re-install adopts the tunnel and puts the finalizers back. The release starts from an older
chart whose Tunnel CRD lacks a field, so the upgrade shows the CRDs upgraded too; and a
permission taken from the installed ClusterRole shows the operator really refused.

No other operator may run meanwhile: the session's operator, if an earlier module started it,
steps aside for this module."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client

from support import objects, tools
from support.dataplane import on, running_frpc, serving_relay
from support.netutil import echo_server, wait_for_echo
from support.operator import (
    OperatorPod,
    leader,
    operator_pods,
    session_operator_aside,
    standing_by,
    wait_webhook_denial,
)
from support.relay_runner import KUBELET_SELECTOR, RelayPodRunner

RUN = uuid.uuid4().hex[:5]
RELEASE = "tunnelop"
RELEASE_NAMESPACE = f"tunnelop-helm-{RUN}"
RELAY_NAMESPACE = "tunnelop-system"  # where support.dataplane looks for relay pods
CHART = tools.REPO / "helm" / "tunnelop"
OPERATOR_SELECTOR = (
    f"app.kubernetes.io/name=tunnelop,app.kubernetes.io/instance={RELEASE},"
    "app.kubernetes.io/component=operator"
)
# The image's repository name is what the runner maps to the project's entry point.
VALUES = [
    "image.repository=ghcr.io/tunnelop/tunnelop",
    "image.tag=dev",
    f"relayNamespace.name={RELAY_NAMESPACE}",
    "relayNamespace.create=false",
    "trafficInterval=1",
    # The uninstall hook's pod is the runner's from start to end (kwok would report it
    # Succeeded at once, before anything ran).
    "uninstall.podLabels.{}={}".format(*KUBELET_SELECTOR.replace(".", "\\.").split("=")),
]
HOOK_JOB = f"{RELEASE}-release-finalizers"
OURS = "tunnelop.dev/"


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"operator_selector": OPERATOR_SELECTOR}


def helm(*args: str, check: bool = True):
    result = tools.helm(*args, "--namespace", RELEASE_NAMESPACE, check=False, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {args[0]}: {result.stderr}")
    return result


def older_chart(directory: Path) -> Path:
    """The chart as an older release shipped it: its Tunnel CRD without spec.suspended (and
    its printer column), at a lower version."""
    copy = directory / "tunnelop"
    shutil.copytree(CHART, copy)
    crd_file = copy / "files" / "crds" / "tunnels.tunnelop.dev.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["suspended"]
        version["additionalPrinterColumns"] = [
            c
            for c in version.get("additionalPrinterColumns", [])
            if "suspended" not in c["jsonPath"]
        ]
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    chart = yaml.safe_load((copy / "Chart.yaml").read_text())
    chart["version"] = "0.0.1-older"
    (copy / "Chart.yaml").write_text(yaml.safe_dump(chart, sort_keys=False))
    return copy


def tunnel_crd_knows_suspended() -> bool:
    crd = objects.get("customresourcedefinition", "tunnels.tunnelop.dev") or {}
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return "suspended" in spec["properties"]


@pytest.fixture(scope="module")
async def release(
    request: pytest.FixtureRequest,
    crds,
    relay_runner: RelayPodRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[float]:
    """The chart installed into RELEASE_NAMESPACE; yields the monotonic time `helm install`
    was started at."""
    # Its webhook configurations, left behind, would block helm.
    async with session_operator_aside(request):
        tools.kubectl("create", "namespace", RELAY_NAMESPACE, check=False)
        started = time.monotonic()
        # The test suite applied crds/ with kubectl: the documented way to take them over.
        helm(
            "install",
            RELEASE,
            str(older_chart(tmp_path_factory.mktemp("chart"))),
            "--create-namespace",
            "--take-ownership",
            *sets(VALUES),
        )
        try:
            yield started
        finally:
            # In a thread: the runner, on this event loop, runs the uninstall hook meanwhile.
            uninstall = ("uninstall", RELEASE, "--wait", "--timeout", "120s")
            await asyncio.to_thread(helm, *uninstall, check=False)
            tools.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=false", check=False)
            # The CRDs outlive the release: should the test have stopped before its upgrade,
            # the older chart's would be left for every later test. Put crds/ back.
            tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
            tools.kubectl("wait", "--for=condition=Established", "-f", str(crds), "--timeout=60s")


def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


async def release_pods(kube: client.ApiClient) -> list[OperatorPod]:
    pods = await client.CoreV1Api(kube).list_namespaced_pod(
        RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR
    )
    return operator_pods(kube.sanitize_for_serialization(pods))


async def one_leader(kube: client.ApiClient, runner: RelayPodRunner, timeout: float = 120) -> str:
    """The leader's pod, once it leads (labelled leader, ready, the Lease holder) and the
    other replica stands by ready (which the disruption budget counts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pods: list[OperatorPod] = []
    while loop.time() < deadline:
        pods = await release_pods(kube)
        leading = leader(pods, lease_holder())
        if leading and len(pods) == 2 and len(standing_by(pods)) == 1:
            return leading.name
        await asyncio.sleep(0.5)
    raise AssertionError(f"no one leader: {pods}, Lease {lease_holder()}\n{operator_logs(runner)}")


def disruptions_allowed() -> int | None:
    budget = objects.get("poddisruptionbudget", RELEASE, RELEASE_NAMESPACE) or {}
    return (budget.get("status") or {}).get("disruptionsAllowed")


def lease_holder() -> str | None:
    lease = objects.get("lease", RELEASE, RELEASE_NAMESPACE) or {}
    return (lease.get("spec") or {}).get("holderIdentity")


def operator_logs(runner: RelayPodRunner) -> str:
    return "\n".join(
        f"--- {p.name}\n" + runner.logs(f"{p.namespace}/{p.name}")[-4000:]
        for p in runner.operator_pods()
    )


async def ready_tunnel(name: str, namespace: str, relay: str) -> dict:
    objects.apply(objects.tunnel(name, **on(relay)), namespace)
    return await objects.wait_condition("tunnel", name, namespace, "Ready", timeout=90)


async def uninstall(runner: RelayPodRunner) -> float:
    """`helm uninstall`, once its hook has run to its end in the runner; how long it took.
    helm waits in a thread: the runner, on this event loop, runs the hook meanwhile."""
    started, ran = time.monotonic(), len(runner.completions)
    args = ("uninstall", RELEASE, "--wait", "--timeout", "120s")
    result = await asyncio.to_thread(helm, *args, check=False)
    hooks = [c for c in runner.completions[ran:] if c.name.startswith(f"{HOOK_JOB}-")]
    logs = "\n".join(c.log_text() for c in hooks)
    assert result.returncode == 0, f"helm uninstall: {result.stderr}\n{logs}"
    assert [c.phase for c in hooks] == ["Succeeded"], (
        f"the hook's pod did not run to its end here: {hooks}\n{logs}"
    )
    return time.monotonic() - started


async def refused_until_given_back(
    runner: RelayPodRunner, leader: str, namespace: str, relay: str
) -> None:
    granted = objects.get("clusterrole", RELEASE)
    narrowed = copy.deepcopy(granted)
    for rule in narrowed["rules"]:
        rule["resources"] = [r for r in rule["resources"] if r != "tunnels/status"]
    narrowed["rules"] = [r for r in narrowed["rules"] if r["resources"]]
    tools.kubectl("replace", "-f", "-", input=json.dumps(narrowed))
    try:
        objects.apply(objects.tunnel("rbac-probe", **on(relay)), namespace)

        def refused() -> bool:
            log = runner.logs(f"{RELEASE_NAMESPACE}/{leader}")
            return any(
                "cannot patch resource" in line
                and "tunnels/status" in line
                and "rbac-probe" in line
                for line in log.splitlines()
            )

        await objects.wait_for(refused, timeout=60, what="the leader refused tunnels/status")
        probe = objects.get("tunnel", "rbac-probe", namespace)
        assert objects.condition(probe, "Ready") is None, probe.get("status")
    finally:
        granted["metadata"].pop("resourceVersion", None)
        tools.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(granted)
        )
    await objects.wait_condition("tunnel", "rbac-probe", namespace, "Ready", timeout=60)


def ours(kind: str, name: str, namespace: str | None = None) -> list[str]:
    """tunnelop's finalizers on an object."""
    finalizers = (objects.get(kind, name, namespace) or {}).get("metadata", {}).get("finalizers")
    return [f for f in finalizers or [] if f.startswith(OURS)]


async def echoed(address: str, port: int, runner: RelayPodRunner, *logs) -> None:
    payload = os.urandom(64 * 1024)
    try:
        assert await wait_for_echo(address, port, payload, timeout=30) == payload
    except TimeoutError:
        raise AssertionError("\n".join([*(f() for f in logs), operator_logs(runner)])) from None


@pytest.fixture
def tenant() -> Iterator[str]:
    """A tenant's namespace, which the test itself deletes (and so not the `namespace`
    fixture, whose teardown expects it to exist)."""
    name = f"tenant-{RUN}"
    tools.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        tools.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


async def test_helm_installed_operator_serves_a_tenant_tunnel(
    release: float, kube: client.ApiClient, relay_runner: RelayPodRunner, tenant: str, tmp_path
) -> None:
    namespace = tenant
    leader = await one_leader(kube, relay_runner)
    # Both replicas ready, so a node drain may evict either one: the budget allows one.
    await objects.wait_for(
        lambda: disruptions_allowed() == 1, timeout=30, what="the budget allowing one eviction"
    )
    # The operators run the chart's command line with the chart's ServiceAccount.
    pods = relay_runner.operator_pods()
    assert len(pods) == 2, [p.name for p in pods]

    relay = f"helm-{RUN}"
    async with serving_relay(relay_runner, relay, ports="46200-46299") as (_, address):
        # The API server calls the chart's webhook Service, which reaches the leader.
        denial = await wait_webhook_denial(
            namespace,
            lambda name: objects.tunnel(name, remotePort=30000, **on(relay)),
            "spec.remotePort",
        )
        assert "admission webhook" in denial

        ready = await ready_tunnel("echo", namespace, relay)
        port = ready["status"]["remotePort"]
        endpoint = ready["status"]["endpoint"]
        assert endpoint == f"{address}:{port}"
        async with echo_server() as local, running_frpc("echo", namespace, local, tmp_path) as frpc:
            await echoed(address, port, relay_runner, frpc.logs)
            print(f"helm install to first echoed byte: {time.monotonic() - release:.1f} s")

            # The leader's pod deleted: the other replica takes the Lease and reconciles.
            deleted = time.monotonic()
            tools.kubectl("delete", "pod", leader, "-n", RELEASE_NAMESPACE, "--wait=false")
            await objects.wait_for(
                lambda: (lease_holder() or f"{leader}_").split("_")[0] != leader,
                timeout=60,
                what="a new Lease holder",
            )
            held = time.monotonic() - deleted
            await ready_tunnel("after-takeover", namespace, relay)
            print(
                f"leader pod deleted to new Lease holder: {held:.1f} s, "
                f"to a new Tunnel Ready: {time.monotonic() - deleted:.1f} s"
            )
            await echoed(address, port, relay_runner, frpc.logs)

            # The older release's CRD refuses a field of this version (strict field
            # validation); the upgrade brings the CRDs with it, and a changed value rolls the
            # pods keeping the tunnel's port.
            assert not tunnel_crd_knows_suspended()
            with_new_field = objects.tunnel("suspended", suspended=True, **on(relay))
            refused = tools.kubectl(
                "apply",
                "--server-side",
                "-n",
                namespace,
                "-f",
                "-",
                input=json.dumps(with_new_field),
                check=False,
            )
            assert refused.returncode != 0 and "suspended" in refused.stderr, refused.stderr
            helm(
                "upgrade",
                RELEASE,
                str(CHART),
                *sets([*VALUES, "logLevel=DEBUG"]),
                "--wait",
                "--timeout",
                "120s",
            )
            leader = await one_leader(kube, relay_runner)
            kept = objects.get("tunnel", "echo", namespace)
            assert kept["status"]["remotePort"] == port
            assert kept["status"]["endpoint"] == endpoint
            await echoed(address, port, relay_runner, frpc.logs)
            assert tunnel_crd_knows_suspended()
            objects.apply(with_new_field, namespace)
            assert objects.get("tunnel", "suspended", namespace)["spec"]["suspended"] is True
            tools.kubectl("delete", "tunnel", "suspended", "-n", namespace)

            # RBAC is real: with patch on tunnels/status taken from the installed ClusterRole,
            # the leader is refused (403) and the tunnel waits; given back, it becomes Ready.
            await refused_until_given_back(relay_runner, leader, namespace, relay)

            # Uninstalled: the hook stopped the operator and released tunnelop's finalizers;
            # no webhook configuration is left, and the relay keeps carrying the tunnel from
            # its last table.
            assert ours("tunnel", "echo", namespace) and ours("relaynode", relay)
            took = await uninstall(relay_runner)
            print(f"helm uninstall, its hook included: {took:.1f} s")
            for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
                assert objects.get(kind, "tunnelop.dev") is None, kind
            assert objects.list_objects("pod", RELEASE_NAMESPACE, OPERATOR_SELECTOR) == []
            held = {
                f"Tunnel {t['metadata']['name']}": ours("tunnel", t["metadata"]["name"], namespace)
                for t in objects.list_objects("tunnel", namespace)
            }
            held[f"RelayNode {relay}"] = ours("relaynode", relay)
            assert not any(held.values()), held
            await echoed(address, port, relay_runner, frpc.logs)

            # Installed again: the new release adopts the tunnel, port and endpoint unchanged,
            # and puts its finalizers back.
            helm("install", RELEASE, str(CHART), *sets(VALUES))
            await one_leader(kube, relay_runner)
            await ready_tunnel("after-reinstall", namespace, relay)
            adopted = objects.get("tunnel", "echo", namespace)
            assert adopted["status"]["remotePort"] == port
            assert adopted["status"]["endpoint"] == endpoint
            await objects.wait_for(
                lambda: ours("tunnel", "echo", namespace) and ours("relaynode", relay),
                timeout=60,
                what="tunnelop's finalizers back on the Tunnel and the RelayNode",
            )
            await echoed(address, port, relay_runner, frpc.logs)

    # Uninstalled for good: the tenant's namespace, with its Tunnels and their credentials
    # Secrets, is deleted by itself.
    await uninstall(relay_runner)
    tunnels = [t["metadata"]["name"] for t in objects.list_objects("tunnel", namespace)]
    assert sorted(tunnels) == ["after-reinstall", "after-takeover", "echo", "rbac-probe"]
    secrets = objects.list_objects("secret", namespace, "tunnelop.dev/tunnel")
    assert len(secrets) == len(tunnels), [x["metadata"]["name"] for x in secrets]
    tools.kubectl("delete", "namespace", namespace, "--wait=false")
    # The namespace controller deletes it, after the namespaces every earlier test left to
    # it (its queue, not tunnelop, sets the pace: 60 s were once not enough on two cores).
    await objects.wait_for(
        lambda: objects.get("namespace", namespace) is None,
        timeout=180,
        what=f"namespace {namespace} deleted: {json.dumps(objects.get('namespace', namespace))}",
    )
