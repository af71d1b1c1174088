"""The chart installed for real: `helm install` into a fresh namespace, its two operator pods
run by the relay-pod runner from the chart's image with their ServiceAccount's projected token
(so the chart's RBAC is what the operator gets: a missing permission fails here). One pod
leads; a tenant's Tunnel on a relay becomes Ready through it and carries bytes; the chart's
webhook Service answers the API server; the leader's pod deleted, the other takes over; an
upgrade keeps the tunnel's port; an uninstall leaves nothing that blocks deleting Tunnels.

No other operator may run meanwhile: the session's operator, if an earlier module started it,
steps aside for this module."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from kubernetes.aio import client

from support import objects, tools
from support.dataplane import on, running_frpc, serving_relay
from support.netutil import echo_server, wait_for_echo
from support.operator import delete_webhook_configurations, wait_webhook_denial
from support.relay_runner import RelayPodRunner
from tunnelop.platform.pod_role import ROLE_LABEL

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
]


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    return {"operator_selector": OPERATOR_SELECTOR}


def helm(*args: str, check: bool = True):
    result = tools.helm(*args, "--namespace", RELEASE_NAMESPACE, check=False, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {args[0]}: {result.stderr}")
    return result


def session_operator(request: pytest.FixtureRequest):
    """The session's operator process if an earlier module started it, else None (asking for
    the fixture would start it)."""
    for definition in request._fixturemanager.getfixturedefs("operator", request.node) or ():
        cached = getattr(definition, "cached_result", None)
        if cached and cached[2] is None:
            return cached[0]
    return None


@pytest.fixture(scope="module")
async def release(
    request: pytest.FixtureRequest, crds, relay_runner: RelayPodRunner
) -> AsyncIterator[float]:
    """The chart installed into RELEASE_NAMESPACE; yields the monotonic time `helm install`
    was started at."""
    other = session_operator(request)
    if other is not None:
        await other.stop()
    delete_webhook_configurations()  # a leftover of a stopped operator would block helm
    tools.kubectl("create", "namespace", RELAY_NAMESPACE, check=False)
    started = time.monotonic()
    # The session applied crds/ with kubectl: the documented way to take them over.
    helm("install", RELEASE, str(CHART), "--create-namespace", "--take-ownership", *sets(VALUES))
    try:
        yield started
    finally:
        helm("uninstall", RELEASE, "--wait", "--timeout", "60s", check=False)
        tools.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=false", check=False)
        delete_webhook_configurations()
        if other is not None:
            await other.start()


def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


async def operator_pods(kube: client.ApiClient) -> dict[str, tuple[bool, str]]:
    """name -> (ready, tunnelop.dev/role) of the release's running operator pods."""
    pods = await client.CoreV1Api(kube).list_namespaced_pod(
        RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR
    )
    roles = {}
    for pod in pods.items:
        if pod.metadata.deletion_timestamp or pod.status.phase != "Running":
            continue
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        role = (pod.metadata.labels or {}).get(ROLE_LABEL, "")
        roles[pod.metadata.name] = (conditions.get("Ready") == "True", role)
    return roles


async def one_leader(kube: client.ApiClient, runner: RelayPodRunner, timeout: float = 120) -> str:
    """The leader's pod, once both replicas are ready (the follower standing by, which the
    disruption budget counts) and exactly one, the Lease holder, is labelled leader (what
    the webhook Service selects)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    roles: dict[str, tuple[bool, str]] = {}
    while loop.time() < deadline:
        roles = await operator_pods(kube)
        holder = lease_holder()
        leaders = [name for name, (_, role) in roles.items() if role == "leader"]
        if (
            sorted(roles.values()) == [(True, "follower"), (True, "leader")]
            and holder
            and holder.startswith(f"{leaders[0]}_")
        ):
            return leaders[0]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no one leader: {roles}, Lease {lease_holder()}\n{operator_logs(runner)}")


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

            # An upgrade with a changed value rolls the pods and keeps the tunnel's port.
            helm(
                "upgrade",
                RELEASE,
                str(CHART),
                *sets([*VALUES, "logLevel=DEBUG"]),
                "--wait",
                "--timeout",
                "120s",
            )
            await one_leader(kube, relay_runner)
            kept = objects.get("tunnel", "echo", namespace)
            assert kept["status"]["remotePort"] == port
            assert kept["status"]["endpoint"] == endpoint
            await echoed(address, port, relay_runner, frpc.logs)

            # Uninstalled: no webhook configuration is left, and the relay keeps carrying
            # the tunnel from its last table.
            helm("uninstall", RELEASE, "--wait", "--timeout", "60s")
            for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
                assert objects.get(kind, "tunnelop.dev") is None, kind
            await echoed(address, port, relay_runner, frpc.logs)

            # Installed again: the new release adopts the tunnel, port and endpoint unchanged.
            helm("install", RELEASE, str(CHART), *sets(VALUES))
            await one_leader(kube, relay_runner)
            await ready_tunnel("after-reinstall", namespace, relay)
            adopted = objects.get("tunnel", "echo", namespace)
            assert adopted["status"]["remotePort"] == port
            assert adopted["status"]["endpoint"] == endpoint
            await echoed(address, port, relay_runner, frpc.logs)

    # Uninstalled for good: Tunnels keep their finalizer (docs/install.md), so the tenant's
    # namespace is deleted once their finalizers are removed by hand, which no webhook
    # refuses any more.
    helm("uninstall", RELEASE, "--wait", "--timeout", "60s")
    tools.kubectl("delete", "namespace", namespace, "--wait=false")
    for name in ("echo", "after-takeover", "after-reinstall"):
        tools.kubectl(
            "patch",
            "tunnel",
            name,
            "-n",
            namespace,
            "--type=json",
            "-p",
            '[{"op":"remove","path":"/metadata/finalizers"}]',
        )
    await objects.wait_for(
        lambda: objects.get("namespace", namespace) is None,
        timeout=60,
        what=f"namespace {namespace} deleted: {json.dumps(objects.get('namespace', namespace))}",
    )
