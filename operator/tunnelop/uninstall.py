"""`tunnelop release-finalizers`: what `helm uninstall` runs first (the chart's pre-delete
hook), so that no Tunnel, RelayNode, RelayPool or TunnelQuota keeps a finalizer that only a
running operator would remove; else deleting one of them, or a namespace holding Tunnels,
would wait for an operator that is gone.

1. The operator's Deployment is scaled to 0 through its scale subresource, and the command
   waits until none of its pods is left (a pod being deleted may still run) and its leader
   Lease is free or expired: a leader still running would put the finalizers straight back.
2. The binding of the MutatingAdmissionPolicy that sets the finalizer on new Tunnels is
   deleted: the API server would otherwise go on setting it, on a Tunnel created after step 4
   read the Tunnels, and nobody would remove it.
3. With no operator left to answer, a validating webhook with failurePolicy Fail would refuse
   every change to a Tunnel, these ones too: the chart's configuration is set to Ignore
   (helm deletes it right after).
4. Every finalizer of tunnelop (prefix `tunnelop.dev/`) is removed from every object of the
   four kinds; other finalizers stay. Each write is a JSON patch that first tests the list as
   it was read, so a concurrent change is never overwritten: the object is read again and
   the patch retried.

Run twice, it finds nothing more to do: a missing Deployment, Lease, binding or configuration
is no error. It exits 0 having logged what it released, non-zero with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from tunnelop.contract.naming import parse_namespaced_name
from tunnelop.platform import admission_policies, logs
from tunnelop.platform.kube import GROUP_VERSION, PLURALS, Kube, KubeError
from tunnelop.platform.leader import LeaseRecord, Observation, is_expired, observe

log = logs.get(__name__)

FINALIZER_PREFIX = "tunnelop.dev/"
KINDS = ("Tunnel", "RelayNode", "RelayPool", "TunnelQuota")
TERMINAL_PHASES = ("Succeeded", "Failed")
JSON_PATCH = "application/json-patch+json"
# A JSON patch whose test failed (the object changed since it was read): 422 from the API
# server; 409 for a conflict of a concurrent write.
CHANGED_MEANWHILE = (409, 422)
ATTEMPTS = 5


class ReleaseError(Exception):
    """The command cannot finish; the message says why."""


@dataclass(frozen=True)
class Options:
    namespace: str  # of the operator's Deployment, and of its Lease
    deployment: str
    lease: str | None = None
    webhook_configuration: str | None = None
    finalizer_policy_binding: str | None = None
    stop_timeout: float = 120.0
    kubeconfig: str | None = None
    service_account_dir: str | None = None
    poll_interval: float = 1.0
    concurrency: int = 16


# ---- pure parts ---------------------------------------------------------------------------


def parse_deployment(value: str) -> tuple[str, str]:
    """NAMESPACE/NAME of the operator's Deployment; ValueError naming what is wrong."""
    return parse_namespaced_name(value, "Deployment", example="tunnelop-system/tunnelop")


def is_ours(finalizer: str) -> bool:
    return finalizer.startswith(FINALIZER_PREFIX)


def release_patch(finalizers: list[str]) -> list[dict[str, Any]] | None:
    """The JSON patch that removes tunnelop's finalizers from `finalizers` (the list as
    read) and keeps the others, only if the list is still the one read; None when there is
    nothing of tunnelop's to remove."""
    kept = [f for f in finalizers if not is_ours(f)]
    if len(kept) == len(finalizers):
        return None
    return [
        {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
        {"op": "replace", "path": "/metadata/finalizers", "value": kept},
    ]


def lenient_webhooks_patch(configuration: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The JSON patch that sets failurePolicy Ignore on each webhook of a (validating)
    webhook configuration that has Fail, each tested first; None when none has."""
    patch: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        if webhook.get("failurePolicy", "Fail") != "Fail":  # absent means Fail in v1
            continue
        path = f"/webhooks/{index}"
        patch.append({"op": "test", "path": f"{path}/name", "value": webhook["name"]})
        if "failurePolicy" in webhook:
            patch.append({"op": "test", "path": f"{path}/failurePolicy", "value": "Fail"})
        patch.append({"op": "add", "path": f"{path}/failurePolicy", "value": "Ignore"})
    return patch or None


def running_pods(pods: list[dict[str, Any]]) -> list[str]:
    """Names of the pods whose containers may still run: all but those in a terminal phase.
    A pod being deleted counts: its containers run until the kubelet has stopped them."""
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
    )


def lease_holder(observation: Observation | None, now: float) -> str | None:
    """Who still holds the leader Lease as last observed (None: free, expired or absent)."""
    if observation is None or is_expired(observation, now):
        return None
    return observation.record.holder


# ---- talking to the API server ---------------------------------------------------------------


def _path(kind: str, name: str | None = None, namespace: str | None = None) -> str:
    base = f"/apis/{GROUP_VERSION}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{PLURALS[kind]}" + (f"/{name}" if name else "")


async def scale_to_zero(kube: Kube, namespace: str, deployment: str) -> str | None:
    """Scale the Deployment to 0; its pods' label selector, or None when it is gone."""
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}/scale"
    try:
        scale = await kube.request(
            "PATCH", path, {"spec": {"replicas": 0}}, content_type="application/merge-patch+json"
        )
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise
    return ((scale or {}).get("status") or {}).get("selector") or None


async def wait_until_stopped(
    kube: Kube,
    options: Options,
    selector: str | None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until no pod of the Deployment may run and no one holds the Lease; ReleaseError
    after options.stop_timeout."""
    deadline = clock() + options.stop_timeout
    observation: Observation | None = None
    while True:
        running: list[str] = []
        if selector:
            running = running_pods(await kube.list("v1", "Pod", options.namespace, labels=selector))
        if options.lease:
            lease = await kube.get(
                "coordination.k8s.io/v1", "Lease", options.lease, options.namespace
            )
            record = LeaseRecord.from_spec((lease or {}).get("spec")) if lease else None
            observation = observe(observation, record, clock()) if record else None
        holder = lease_holder(observation, clock())
        if not running and holder is None:
            return
        if clock() >= deadline:
            waiting = []
            if running:
                waiting.append(f"pods {', '.join(running)} still exist")
            if holder:
                waiting.append(f"Lease {options.namespace}/{options.lease} is held by {holder}")
            raise ReleaseError(
                f"the operator did not stop within {options.stop_timeout:g} s of scaling "
                f"Deployment {options.namespace}/{options.deployment} to 0: {'; '.join(waiting)}"
            )
        await asyncio.sleep(options.poll_interval)


async def make_webhooks_lenient(kube: Kube, name: str) -> int:
    """Set failurePolicy Ignore on the validating webhooks of configuration `name` that
    have Fail; how many were changed (0 when it is absent)."""
    path = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"
    for _ in range(ATTEMPTS):
        try:
            configuration = await kube.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return 0
            raise
        patch = lenient_webhooks_patch(configuration or {})
        if patch is None:
            return 0
        try:
            await kube.request("PATCH", path, patch, content_type=JSON_PATCH)
        except KubeError as exc:
            if exc.status in CHANGED_MEANWHILE:
                continue
            if exc.status == 404:
                return 0
            raise
        return sum(1 for op in patch if op["op"] == "add")
    raise ReleaseError(f"ValidatingWebhookConfiguration {name} kept changing; try again")


async def release_object(kube: Kube, kind: str, obj: dict[str, Any]) -> bool:
    """Remove tunnelop's finalizers from one object; whether it had any (False when it is
    gone meanwhile)."""
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    where = f"{kind} {namespace}/{meta['name']}" if namespace else f"{kind} {meta['name']}"
    path = _path(kind, meta["name"], namespace)
    for _ in range(ATTEMPTS):
        patch = release_patch(meta.get("finalizers") or [])
        if patch is None:
            return False
        try:
            await kube.request("PATCH", path, patch, content_type=JSON_PATCH)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            if exc.status not in CHANGED_MEANWHILE:
                raise ReleaseError(f"cannot remove the finalizers of {where}: {exc}") from exc
        fresh = await kube.get(GROUP_VERSION, kind, meta["name"], namespace)
        if fresh is None:
            return False
        meta = fresh["metadata"]
    raise ReleaseError(f"{where} kept changing while its finalizers were removed; try again")


async def release_kind(kube: Kube, kind: str, concurrency: int) -> tuple[int, int]:
    """(released, total): how many objects of `kind` (all namespaces) lost a finalizer of
    tunnelop's, of how many."""
    objects = await kube.list(GROUP_VERSION, kind)
    gate = asyncio.Semaphore(concurrency)

    async def one(obj: dict[str, Any]) -> bool:
        async with gate:
            return await release_object(kube, kind, obj)

    released = await asyncio.gather(*(one(obj) for obj in objects))
    return sum(released), len(objects)


async def release(options: Options, kube: Kube) -> dict[str, int]:
    """The four steps; the number of objects released per kind."""
    target = f"{options.namespace}/{options.deployment}"
    started = time.monotonic()
    selector = await scale_to_zero(kube, options.namespace, options.deployment)
    if selector is None:
        log.info("the operator's Deployment is gone: nothing to scale", deployment=target)
    else:
        log.info("operator scaled to 0; waiting for its pods to stop", deployment=target)
    await wait_until_stopped(kube, options, selector)
    log.info(
        "the operator is stopped", deployment=target, seconds=round(time.monotonic() - started, 1)
    )
    if options.finalizer_policy_binding:
        deleted = await admission_policies.delete(
            kube, "MutatingAdmissionPolicyBinding", options.finalizer_policy_binding
        )
        if deleted:
            log.info(
                "finalizer policy unbound: new Tunnels get no finalizer of tunnelop's",
                binding=options.finalizer_policy_binding,
            )
    if options.webhook_configuration:
        lenient = await make_webhooks_lenient(kube, options.webhook_configuration)
        if lenient:
            log.info(
                "validating webhooks set to failurePolicy Ignore: no operator answers any more",
                configuration=options.webhook_configuration,
                webhooks=lenient,
            )
    counts = {}
    for kind in KINDS:
        released, total = await release_kind(kube, kind, options.concurrency)
        counts[kind] = released
        log.info("finalizers released", kind=kind, released=released, objects=total)
    return counts


async def run(options: Options) -> int:
    """0 once every finalizer of tunnelop is released; 1 with the reason logged otherwise."""
    from kubernetes.aio.config import ConfigException

    try:
        kube = await Kube.connect(options.kubeconfig, options.service_account_dir)
    except (ConfigException, OSError) as exc:
        log.error("no usable in-cluster config or kubeconfig", error=str(exc))
        return 1
    try:
        counts = await release(options, kube)
    except ReleaseError as exc:
        log.error("cannot release the finalizers", error=str(exc))
        return 1
    except KubeError as exc:
        log.error("cannot release the finalizers: the API server refused", error=str(exc))
        return 1
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        log.error("cannot release the finalizers: the API server is unreachable", error=str(exc))
        return 1
    finally:
        await kube.close()
    log.info("tunnelop's finalizers released", released=counts, total=sum(counts.values()))
    return 0
