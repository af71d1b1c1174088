"""The LoadBalancer controller's reconcile against a recording stand-in for the API server:
what it writes (Tunnels, the Service's status only), what it deletes, and which Events it
posts, once each."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tunnelop.controllers import loadbalancers
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.watches import on_service, on_tunnel
from tunnelop.domain.loadbalancers.request import POOL_ANNOTATION
from tunnelop.platform.kube import KubeError
from tunnelop.platform.workqueue import Requeue, WorkQueue

KEY = ("shop", "web")


class RecordingKube:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[tuple[dict[str, Any], str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse: KubeError | None = None

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.applied.append(obj)
        return obj

    async def apply_status(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        self.statuses.append((obj, field_manager))
        return {**service(), "status": obj["status"]}

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        self.deleted.append((namespace, name))

    async def event(
        self, regarding: dict, *, type_: str, reason: str, message: str, **_: Any
    ) -> None:
        self.events.append((regarding["kind"], reason, message))


def service(**annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "tunnelop.dev/relay",
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        },
        "status": {"loadBalancer": {}},
    }


def runtime(*, synced: bool = True) -> tuple[Runtime, RecordingKube]:
    kube = RecordingKube()
    rt = Runtime(kube=kube, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    rt.service_queue = WorkQueue("loadbalancers", lambda key: loadbalancers.reconcile(rt, key))
    rt.tunnel_queue = WorkQueue("tunnels", _nothing)
    rt.client_queue = WorkQueue("clients", _nothing)  # the InCluster clients: not run here
    watches = [asyncio.Event(), asyncio.Event()]
    if synced:
        for watch in watches:
            watch.set()
    rt.load_balancer_watches = watches
    rt.cache.relays["edge-1"] = {"status": {"publicAddress": "203.0.113.7"}}
    return rt, kube


async def _nothing(key: Any) -> None:
    return None


def stored(manifest: dict[str, Any], ready: bool, scheduled: dict | None = None) -> dict:
    """The Tunnel as the API server would return it after the operator worked on it."""
    body = copy.deepcopy(manifest)
    body["metadata"]["generation"] = 1
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "reason": "R"}]
    if scheduled:
        conditions.append({"type": "Scheduled", "observedGeneration": 1, **scheduled})
    body["status"] = {"relayNode": "edge-1" if ready else None, "conditions": conditions}
    return body


async def settle(rt: Runtime) -> None:
    """Let the background Event posts run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_waits_until_services_and_tunnels_are_synced():
    rt, kube = runtime(synced=False)
    rt.cache.load_balancers[KEY] = service()
    with pytest.raises(Requeue):
        await loadbalancers.reconcile(rt, KEY)
    assert not kube.applied and not kube.deleted


async def test_tunnels_are_applied_then_the_status_written_once_they_are_ready():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    await loadbalancers.reconcile(rt, KEY)
    assert sorted(t["metadata"]["name"] for t in kube.applied) == ["web-53-udp", "web-80-tcp"]
    assert kube.statuses == []  # nothing Ready: nothing to say yet
    for manifest in kube.applied:
        rt.cache.remember_tunnel(("shop", manifest["metadata"]["name"]), stored(manifest, True))
    kube.applied.clear()
    await loadbalancers.reconcile(rt, KEY)
    assert kube.applied == []  # up to date: not written again
    ((written, manager),) = kube.statuses
    assert manager == "tunnelop-loadbalancer"
    # Only the status, by name: no spec, labels or annotations of the user's Service.
    assert written == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "status": {
            "loadBalancer": {
                "ingress": [
                    {
                        "ip": "203.0.113.7",
                        "ipMode": "Proxy",
                        "ports": [
                            {"port": 53, "protocol": "UDP"},
                            {"port": 80, "protocol": "TCP"},
                        ],
                    }
                ]
            }
        },
    }
    await loadbalancers.reconcile(rt, KEY)
    assert len(kube.statuses) == 1  # the cached Service has it now: no second write


async def test_a_port_the_relay_cannot_give_is_one_warning_on_the_service():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    await loadbalancers.reconcile(rt, KEY)
    taken = {"status": "False", "reason": "PortTaken", "message": "port 80 is held by a/b"}
    for manifest in kube.applied:
        name = manifest["metadata"]["name"]
        body = stored(manifest, False, taken) if name == "web-80-tcp" else stored(manifest, True)
        rt.cache.remember_tunnel(("shop", name), body)
    await loadbalancers.reconcile(rt, KEY)
    await loadbalancers.reconcile(rt, KEY)
    await settle(rt)
    assert kube.events == [
        ("Service", "PortTaken", "port 80/TCP (http) (Tunnel web-80-tcp): port 80 is held by a/b")
    ]


async def test_tunnels_go_when_the_service_leaves_the_class():
    rt, kube = runtime()
    on_service(rt, "ADDED", service())
    assert KEY in rt.cache.load_balancers and len(rt.service_queue) == 1
    await loadbalancers.reconcile(rt, KEY)
    for manifest in kube.applied:
        on_tunnel(rt, "ADDED", stored(manifest, True))
    other = service()
    other["spec"]["loadBalancerClass"] = "example.com/cloud"
    on_service(rt, "MODIFIED", other)
    assert KEY not in rt.cache.load_balancers
    await loadbalancers.reconcile(rt, KEY)
    assert sorted(kube.deleted) == [("shop", "web-53-udp"), ("shop", "web-80-tcp")]


async def test_services_of_other_classes_are_not_kept_nor_queued():
    rt, _ = runtime()
    for spec in ({"type": "LoadBalancer"}, {"type": "ClusterIP"}):
        body = {"metadata": {"name": "db", "namespace": "shop"}, "spec": spec}
        on_service(rt, "ADDED", body)
        on_service(rt, "DELETED", body)
    assert rt.cache.load_balancers == {} and len(rt.service_queue) == 0


async def test_a_port_left_the_service_loses_its_tunnel():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    await loadbalancers.reconcile(rt, KEY)
    for manifest in kube.applied:
        rt.cache.remember_tunnel(("shop", manifest["metadata"]["name"]), stored(manifest, True))
    fewer = service()
    fewer["spec"]["ports"] = fewer["spec"]["ports"][:1]
    rt.cache.load_balancers[KEY] = fewer
    await loadbalancers.reconcile(rt, KEY)
    assert kube.deleted == [("shop", "web-53-udp")]


async def test_a_foreign_tunnel_of_the_same_name_is_left_alone():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    rt.cache.remember_tunnel(
        ("shop", "web-80-tcp"),
        {"metadata": {"name": "web-80-tcp", "namespace": "shop"}, "spec": {"protocol": "tcp"}},
    )
    await loadbalancers.reconcile(rt, KEY)
    await settle(rt)
    assert [t["metadata"]["name"] for t in kube.applied] == ["web-53-udp"]
    assert kube.deleted == []
    assert [reason for _, reason, _ in kube.events] == ["TunnelNameTaken"]


async def test_a_refused_tunnel_is_reported_once_and_tried_again_later():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    kube.refuse = KubeError(422, "spec.remotePort: 80 is not available on any RelayNode")
    for _ in range(2):
        with pytest.raises(Requeue):
            await loadbalancers.reconcile(rt, KEY)
    await settle(rt)
    reasons = sorted(message for _, reason, message in kube.events if reason == "TunnelRefused")
    assert reasons == [
        "Tunnel web-53-udp: spec.remotePort: 80 is not available on any RelayNode",
        "Tunnel web-80-tcp: spec.remotePort: 80 is not available on any RelayNode",
    ]


async def test_a_bad_annotation_is_one_event_and_the_tunnels_stay():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    await loadbalancers.reconcile(rt, KEY)
    for manifest in kube.applied:
        rt.cache.remember_tunnel(("shop", manifest["metadata"]["name"]), stored(manifest, True))
    kube.applied.clear()
    rt.cache.load_balancers[KEY] = service(**{POOL_ANNOTATION: "Not_A_Pool"})
    await loadbalancers.reconcile(rt, KEY)
    await loadbalancers.reconcile(rt, KEY)
    await settle(rt)
    assert kube.applied == [] and kube.deleted == []
    ((kind, reason, message),) = kube.events
    assert (kind, reason) == ("Service", "InvalidService")
    assert message.startswith(f"annotation {POOL_ANNOTATION}: must be a DNS-1035 label")


async def test_a_recreated_service_replaces_the_tunnels_of_its_predecessor():
    rt, kube = runtime()
    rt.cache.load_balancers[KEY] = service()
    await loadbalancers.reconcile(rt, KEY)
    for manifest in kube.applied:
        rt.cache.remember_tunnel(("shop", manifest["metadata"]["name"]), stored(manifest, True))
    kube.applied.clear()
    again = service()
    again["metadata"]["uid"] = "u2"
    rt.cache.load_balancers[KEY] = again
    await loadbalancers.reconcile(rt, KEY)
    await settle(rt)
    assert sorted(kube.deleted) == [("shop", "web-53-udp"), ("shop", "web-80-tcp")]
    # Created anew once those are gone (their deletion reconciles the Service), not before,
    # and not reported as someone else's.
    assert kube.applied == [] and kube.events == []
    for name in ("web-53-udp", "web-80-tcp"):
        rt.cache.forget_tunnel(("shop", name))
    await loadbalancers.reconcile(rt, KEY)
    owners = {t["metadata"]["ownerReferences"][0]["uid"] for t in kube.applied}
    assert len(kube.applied) == 2 and owners == {"u2"}
