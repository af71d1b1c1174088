"""The InCluster client controller (controllers/clients.py): when it runs, keeps and deletes a
tunnel's frpc Deployment, and what it tells the Tunnel's ClientConnected condition, with the
API server played by a recorder."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tunnelop.builders.client import SPEC_CHECKSUM_ANNOTATION
from tunnelop.controllers import clients
from tunnelop.controllers.caches import ServiceTarget
from tunnelop.controllers.state import ClientProblem, Runtime
from tunnelop.controllers.traffic import client_condition
from tunnelop.domain.traffic_report import AgentReading, Observed, Totals
from tunnelop.platform.workqueue import Requeue

KEY = ("team-a", "db")


class RecordingKube:
    """What the controller asked of the API server; apply answers with the object."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(obj)
        return copy.deepcopy(obj)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        self.deleted.append((namespace, name))

    async def event(
        self, regarding: dict[str, Any], *, type_: str, reason: str, message: str, **_: Any
    ):
        self.events.append((type_, reason, message))


class Queue:
    def __init__(self) -> None:
        self.keys: list[Any] = []

    def add(self, key: Any) -> None:
        self.keys.append(key)


def tunnel_body(
    client: dict[str, Any] | None = None, ready: bool = True, protocol: str = "tcp"
) -> dict[str, Any]:
    client = client or {"type": "InCluster", "target": {"service": "postgres", "port": 5432}}
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": KEY[1], "namespace": KEY[0], "uid": "uid-db", "generation": 1},
        "spec": {"protocol": protocol, "client": client},
        "status": {
            "relayNode": "eu-1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime(kube=RecordingKube(), relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    runtime.tunnel_queue = Queue()  # type: ignore[assignment]
    runtime.client_watches_synced = [asyncio.Event()]
    runtime.client_watches_synced[0].set()
    runtime.cache.remember_tunnel(KEY, tunnel_body())
    runtime.cache.services[(KEY[0], "postgres")] = ServiceTarget(frozenset({(5432, "TCP")}))
    runtime.credential_checksums[KEY] = "sum-1"
    return runtime


async def settle() -> None:
    await asyncio.sleep(0)  # Events are posted in the background


def available(deployment: dict[str, Any]) -> dict[str, Any]:
    live = copy.deepcopy(deployment)
    live["metadata"]["generation"] = 1
    live["status"] = {"observedGeneration": 1, "availableReplicas": 1, "updatedReplicas": 1}
    return live


# ---- reconcile ----------------------------------------------------------------------------


async def test_a_ready_in_cluster_tunnel_gets_its_frpc_once(rt: Runtime) -> None:
    kube: RecordingKube = rt.kube  # type: ignore[assignment]
    await clients.reconcile(rt, KEY)
    (deployment,) = kube.applied
    assert deployment["metadata"]["name"] == "db-frpc"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["tunnelop.dev/config-checksum"] == "sum-1"
    assert rt.client_problems[KEY].reason == "ClientStarting"
    assert rt.tunnel_queue.keys == [KEY]  # type: ignore[union-attr]
    await settle()
    assert [(t, r) for t, r, _ in kube.events] == [("Normal", "ClientCreated")]

    # Its pod available: nothing to write, nothing keeps the client from serving.
    rt.cache.client_deployments[KEY] = available(deployment)
    await clients.reconcile(rt, KEY)
    assert len(kube.applied) == 1
    assert KEY not in rt.client_problems


async def test_a_new_secret_rolls_the_client_and_a_rewrite_in_between_does_not_stop_it(
    rt: Runtime,
) -> None:
    kube: RecordingKube = rt.kube  # type: ignore[assignment]
    await clients.reconcile(rt, KEY)
    rt.cache.client_deployments[KEY] = available(kube.applied[-1])
    # The Secret deleted (the token rotates): no checksum known for a moment.
    del rt.credential_checksums[KEY]
    await clients.reconcile(rt, KEY)
    assert kube.deleted == [] and len(kube.applied) == 1
    rt.credential_checksums[KEY] = "sum-2"
    await clients.reconcile(rt, KEY)
    rolled = kube.applied[-1]
    assert len(kube.applied) == 2
    assert rolled["spec"]["template"]["metadata"]["annotations"] == {
        "tunnelop.dev/config-checksum": "sum-2"
    }


async def test_no_client_before_the_tunnel_is_ready_but_a_running_one_stays(rt: Runtime) -> None:
    kube: RecordingKube = rt.kube  # type: ignore[assignment]
    rt.cache.remember_tunnel(KEY, tunnel_body(ready=False))
    await clients.reconcile(rt, KEY)
    assert kube.applied == [] and KEY not in rt.client_problems
    rt.cache.remember_tunnel(KEY, tunnel_body(ready=True))
    await clients.reconcile(rt, KEY)
    rt.cache.client_deployments[KEY] = available(kube.applied[-1])
    rt.cache.remember_tunnel(KEY, tunnel_body(ready=False))  # say, its relay restarts
    await clients.reconcile(rt, KEY)
    assert kube.deleted == [] and len(kube.applied) == 1


@pytest.mark.parametrize(
    "body",
    [tunnel_body(client={"type": "External"}), None],
    ids=["back-to-external", "tunnel-deleted"],
)
async def test_the_client_goes_when_the_tunnel_no_longer_wants_it(
    rt: Runtime, body: dict[str, Any] | None
) -> None:
    kube: RecordingKube = rt.kube  # type: ignore[assignment]
    await clients.reconcile(rt, KEY)
    rt.cache.client_deployments[KEY] = available(kube.applied[-1])
    if body is None:
        rt.cache.forget_tunnel(KEY)
    else:
        rt.cache.remember_tunnel(KEY, body)
    await clients.reconcile(rt, KEY)
    assert kube.deleted == [("team-a", "db-frpc")]
    assert KEY not in rt.cache.client_deployments and KEY not in rt.client_problems


async def test_a_missing_target_stops_the_client_and_says_so(rt: Runtime) -> None:
    kube: RecordingKube = rt.kube  # type: ignore[assignment]
    await clients.reconcile(rt, KEY)
    rt.cache.client_deployments[KEY] = available(kube.applied[-1])
    del rt.cache.services[(KEY[0], "postgres")]
    await clients.reconcile(rt, KEY)
    assert kube.deleted == [("team-a", "db-frpc")]
    problem = rt.client_problems[KEY]
    assert problem.reason == "TargetServiceNotFound"
    assert "Service postgres does not exist in namespace team-a" in problem.message
    await settle()
    assert ("Warning", "TargetServiceNotFound") in [(t, r) for t, r, _ in kube.events]
    # Back: the client starts again.
    rt.cache.services[(KEY[0], "postgres")] = ServiceTarget(frozenset({(5432, "TCP")}))
    await clients.reconcile(rt, KEY)
    assert len(kube.applied) == 2
    assert rt.client_problems[KEY].reason == "ClientStarting"


async def test_nothing_is_decided_before_the_watches_listed_everything(rt: Runtime) -> None:
    rt.client_watches_synced[0].clear()
    with pytest.raises(Requeue):
        await clients.reconcile(rt, KEY)
    assert rt.kube.applied == []  # type: ignore[attr-defined]


async def test_an_unchanged_client_costs_no_request_after_a_restart(rt: Runtime) -> None:
    kube: RecordingKube = rt.kube  # type: ignore[assignment]
    await clients.reconcile(rt, KEY)
    live = available(kube.applied[-1])
    # A new process: only what the watch listed.
    rt.cache.client_deployments.clear()
    rt.cache.client_deployments[KEY] = live
    kube.applied.clear()
    await clients.reconcile(rt, KEY)
    assert kube.applied == []
    # A Deployment edited by someone else carries another checksum (or none): put back.
    live["metadata"]["annotations"][SPEC_CHECKSUM_ANNOTATION] = "edited"
    await clients.reconcile(rt, KEY)
    assert len(kube.applied) == 1


# ---- what it finds --------------------------------------------------------------------------


def test_service_target_reads_ports_and_any_port_services() -> None:
    service = {
        "spec": {
            "clusterIP": "10.0.0.7",
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}, {"port": 80}],
        }
    }
    assert ServiceTarget.of(service) == ServiceTarget(
        frozenset({(53, "UDP"), (53, "TCP"), (80, "TCP")})
    )
    assert ServiceTarget.of({"spec": {"clusterIP": "None"}}).any_port
    assert ServiceTarget.of({"spec": {"type": "ExternalName", "externalName": "x.io"}}).any_port


@pytest.mark.parametrize(
    ("protocol", "port", "found", "reason"),
    [
        ("tcp", 5432, ServiceTarget(frozenset({(5432, "TCP")})), None),
        ("http", 80, ServiceTarget(frozenset({(80, "TCP")})), None),
        ("udp", 53, ServiceTarget(frozenset({(53, "UDP")})), None),
        ("udp", 53, ServiceTarget(frozenset({(53, "TCP")})), "TargetPortNotFound"),
        ("tcp", 8080, ServiceTarget(frozenset({(80, "TCP")})), "TargetPortNotFound"),
        ("tcp", 8080, ServiceTarget(frozenset(), any_port=True), None),
        ("tcp", 5432, None, "TargetServiceNotFound"),
    ],
)
def test_target_problem(
    protocol: str, port: int, found: ServiceTarget | None, reason: str | None
) -> None:
    problem = clients.target_problem("team-a", "web", port, protocol, found)
    assert (problem.reason if problem else None) == reason


def test_a_wrong_port_names_the_field_and_the_ports_offered() -> None:
    found = ServiceTarget(frozenset({(80, "TCP"), (443, "TCP")}))
    problem = clients.target_problem("team-a", "web", 8080, "tcp", found)
    assert problem is not None
    assert problem.message.startswith("spec.client.target.port: Service web has no TCP port 8080")
    assert "80/TCP, 443/TCP" in problem.message


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"observedGeneration": 2, "availableReplicas": 1, "updatedReplicas": 1}, None),
        ({"observedGeneration": 1, "availableReplicas": 1, "updatedReplicas": 1}, "ClientStarting"),
        ({"observedGeneration": 2, "replicas": 1}, "ClientStarting"),
        (
            {
                "observedGeneration": 2,
                "conditions": [
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "message": 'pods "db-frpc-1" is forbidden: exceeded quota: pods',
                    }
                ],
            },
            "ClientUnavailable",
        ),
        (
            {
                "observedGeneration": 2,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "db-frpc-1" has timed out progressing.',
                    }
                ],
            },
            "ClientUnavailable",
        ),
    ],
    ids=["available", "old-generation", "no-pod-yet", "pod-refused", "deadline-exceeded"],
)
def test_deployment_problem(status: dict[str, Any], reason: str | None) -> None:
    deployment = {"metadata": {"name": "db-frpc", "generation": 2}, "status": status}
    problem = clients.deployment_problem("db", deployment)
    assert (problem.reason if problem else None) == reason
    if problem is not None and problem.warning:
        message = status["conditions"][0]["message"]
        assert message in problem.message and "Deployment db-frpc" in problem.message


# ---- what ClientConnected says ----------------------------------------------------------------


def test_client_connected_for_an_in_cluster_tunnel() -> None:
    totals = Totals(0, 0, 0, 0)
    gone = Observed("eu-1", totals, AgentReading(connected=False))
    connected = Observed("eu-1", totals, AgentReading(connected=True))
    missing = ClientProblem("TargetServiceNotFound", "Service postgres does not exist")
    # What keeps the operator's frpc from serving, even before any reading.
    shown = client_condition(None, False, "db", 1, True, missing)
    assert (shown["status"], shown["reason"]) == ("False", "TargetServiceNotFound")
    assert client_condition(gone, False, "db", 1, True, missing)["reason"] == (
        "TargetServiceNotFound"
    )
    # Connected is connected; suspended comes first.
    assert client_condition(connected, False, "db", 1, True, missing)["status"] == "True"
    assert client_condition(gone, True, "db", 1, True, missing)["reason"] == "TunnelSuspended"
    # Not connected, nothing known against it: the operator's frpc is named, not the tenant's.
    shown = client_condition(gone, False, "db", 1, True, None)
    assert shown["reason"] == "ClientNotConnected"
    assert "Deployment db-frpc" in shown["message"]
    assert "run frpc" not in shown["message"]
    assert client_condition(None, False, "db", 1, True, None) is None
