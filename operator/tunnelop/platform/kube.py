"""A small async door to the Kubernetes API, on the kubernetes.aio client: plain dicts in and
out, server-side apply for what the operator owns, merge patches for status and finalizers.

The generated typed methods are avoided on the hot path: every object here is a dict built by
the pure builders, and (de)serialising through generated models would cost more than the
request itself at thousands of tunnels.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.config import incluster_config

from tunnelop.contract.naming import SERVICE_ACCOUNT_DIR
from tunnelop.platform import metrics

FIELD_MANAGER = "tunnelop"
# On users' objects too, what the operator writes (status, its finalizer) shows under its own
# name in metadata.managedFields, beside the GitOps tool's (docs/gitops.md).
OWNED_BY_US = (("fieldManager", FIELD_MANAGER),)
TOO_MANY_REQUESTS_RETRIES = 20
LIST_PAGE = 500
GROUP_VERSION = "tunnelop.dev/v1alpha1"


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _retry_after(headers: Any) -> float:
    try:
        return min(2.0, max(0.1, float(headers.get("Retry-After", "0.5"))))
    except (TypeError, ValueError):
        return 0.5


def _counted(method: str, path: str) -> tuple[str, str]:
    """Count the request in tunnelop_api_requests_total (a GET of a collection is a LIST);
    returns its verb and resource."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]  # after /api/v1 or /apis/group/version
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource; /namespaces/<name> alone is a Namespace
    resource = "/".join(rest[0:1] + rest[2:3]) or "-"
    verb = "LIST" if method == "GET" and len(rest) == 1 else method
    metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
    return verb, resource


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(api_version: str, plural: str, name: str | None, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{ns}/{plural}" + (f"/{name}" if name else "")


PLURALS = {
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Namespace": "namespaces",
    "Pod": "pods",
    "Node": "nodes",
    "Tunnel": "tunnels",
    "RelayNode": "relaynodes",
    "RelayPool": "relaypools",
    "TunnelQuota": "tunnelquotas",
    "Lease": "leases",
}


def _load_incluster(cfg: client.Configuration, service_account_dir: str) -> None:
    loader = incluster_config.InClusterConfigLoader(
        token_filename=f"{service_account_dir}/token",
        cert_filename=f"{service_account_dir}/ca.crt",
    )
    loader.load_and_set(cfg)


# Where the pod's ServiceAccount token and CA are, for every connection of this process that
# names no other place (`tunnelop run --service-account-dir` sets it once, at start-up).
_service_account_dir = SERVICE_ACCOUNT_DIR


def use_service_account_dir(path: str) -> None:
    global _service_account_dir
    _service_account_dir = path


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, service_account_dir: str | None = None
    ) -> Kube:
        """In-cluster config when running in a pod (the token and CA mounted in
        `service_account_dir`), else the kubeconfig (KUBECONFIG)."""
        cfg = client.Configuration()
        try:
            _load_incluster(cfg, service_account_dir or _service_account_dir)
        except config.ConfigException:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        # Thousands of tunnels are reconciled concurrently: allow enough parallel requests.
        cfg.connection_pool_maxsize = 64
        # No proxies from the environment: reading them (and ~/.netrc) on every request
        # cost more CPU than the requests themselves (measured).
        cfg.client_session_kwargs = {"trust_env": False}
        return cls(client.ApiClient(cfg))

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        params = await self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        for attempt in range(TOO_MANY_REQUESTS_RETRIES + 1):
            verb, resource = _counted(method, path)
            sent = time.monotonic()
            try:
                response = await self.api.call_api(*params, _request_timeout=30)
                data = await response.read()
            except ApiException as exc:
                raise KubeError(exc.status or 0, str(exc.reason)) from exc
            finally:
                metrics.API_REQUEST_DURATION.labels(verb=verb, resource=resource).observe(
                    time.monotonic() - sent
                )
            # 429: the API server asks to come back (priority and fairness, or a new CRD's
            # storage still initializing); it says when.
            if response.status != 429 or attempt == TOO_MANY_REQUESTS_RETRIES:
                break
            await asyncio.sleep(_retry_after(response.headers))
        if response.status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except ValueError:
                message = data.decode(errors="replace")
            raise KubeError(response.status, message)
        return json.loads(data) if data else None

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        labels: str = "",
        fields: str = "",
        timeout: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request, as they arrive (ends when the server closes it)."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
        ]
        if labels:
            query.append(("labelSelector", labels))
        if fields:
            query.append(("fieldSelector", fields))
        params = await self.api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        metrics.API_REQUESTS.labels(verb="WATCH", resource=path.rsplit("/", 1)[-1]).inc()
        response = await self.api.call_api(*params, _request_timeout=timeout + 30)
        stream = response.response
        try:
            if stream.status >= 400:
                raise KubeError(stream.status, (await stream.read()).decode(errors="replace"))
            while line := await stream.content.readline():
                yield json.loads(line)
        finally:
            stream.release()

    # ---- objects ------------------------------------------------------------------------

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.request("GET", _path(api_version, PLURALS[kind], name, namespace))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, *, labels: str = ""
    ) -> list[dict[str, Any]]:
        path = _path(api_version, PLURALS[kind], None, namespace)
        return [obj async for page, _ in self.pages(path, labels=labels) for obj in page]

    async def pages(
        self, path: str, *, labels: str = "", fields: str = ""
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """A list in pages of LIST_PAGE objects, with the list's resourceVersion: at tens of
        thousands of objects the whole list at once would be held in memory twice (the
        response and its objects), and that peak stays in the process's RSS."""
        query = [("limit", str(LIST_PAGE))]
        if labels:
            query.append(("labelSelector", labels))
        if fields:
            query.append(("fieldSelector", fields))
        token = ""
        while True:
            result = await self.request(
                "GET", path, query=query + ([("continue", token)] if token else [])
            )
            meta = (result or {}).get("metadata") or {}
            yield (result or {}).get("items", []), meta.get("resourceVersion", "")
            token = meta.get("continue") or ""
            if not token:
                return

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply of an object the operator owns (idempotent, conflict-free)."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], PLURALS[obj["kind"]], meta["name"], meta.get("namespace"))
        return await self.request(
            "PATCH",
            path,
            obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def apply_status(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any] | None:
        """Server-side apply of the status subresource of an object the operator does not own
        (a user's Service), as `field_manager`: only the status fields it names are the
        operator's, and nothing of the object's spec, labels or annotations is written."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], PLURALS[obj["kind"]], meta["name"], meta.get("namespace"))
        return await self.request(
            "PATCH",
            path + "/status",
            obj,
            query=[("fieldManager", field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def overwrite(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Write the whole of an object that only the operator writes (a relay's table
        Secret): an unconditional PUT, or a server-side apply when it does not exist yet.
        Not apply every time: the API server parses an apply patch as YAML, which cost a
        quarter of its CPU for tables of a few hundred KB at a steady stream of tunnels
        (decision 0011)."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], PLURALS[obj["kind"]], meta["name"], meta.get("namespace"))
        try:
            return await self.request("PUT", path, obj, query=[("fieldManager", FIELD_MANAGER)])
        except KubeError as exc:
            if exc.status != 404:
                raise
        return await self.apply(obj)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create; a KubeError with status 409 when it exists already."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], PLURALS[obj["kind"]], None, meta.get("namespace"))
        return await self.request("POST", path, obj)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Replace (PUT), guarded by the metadata.resourceVersion it carries: a KubeError with
        status 409 when the object changed since it was read."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], PLURALS[obj["kind"]], meta["name"], meta.get("namespace"))
        return await self.request("PUT", path, obj)

    async def patch(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch an object the operator owns (a KubeError with status 404 if gone)."""
        path = _path(api_version, PLURALS[kind], name, namespace)
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> None:
        """Delete; gone already is fine."""
        try:
            await self.request("DELETE", _path(api_version, PLURALS[kind], name, namespace))
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def patch_status(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        status: dict[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource of a tunnelop object; with `resource_version`,
        only if the object is still that version (a KubeError with status 409 otherwise)."""
        path = _path(GROUP_VERSION, PLURALS[kind], name, namespace) + "/status"
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._merge_patch_as_ours(path, body)

    async def set_finalizers(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        finalizers: list[str],
        resource_version: str,
    ) -> dict[str, Any] | None:
        """Replace metadata.finalizers, guarded by resourceVersion (optimistic locking)."""
        path = _path(GROUP_VERSION, PLURALS[kind], name, namespace)
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        return await self._merge_patch_as_ours(path, body)

    async def _merge_patch_as_ours(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A merge patch under the operator's field manager, so managedFields tell its
        fields (status, its finalizer) from a GitOps tool's."""
        return await self.request(
            "PATCH",
            path,
            body,
            query=list(OWNED_BY_US),
            content_type="application/merge-patch+json",
        )

    async def add_finalizer(
        self, kind: str, body: dict[str, Any], finalizer: str
    ) -> dict[str, Any]:
        """The object with `finalizer` added (a no-op when present)."""
        return await self._set_finalizer(kind, body, finalizer, present=True)

    async def remove_finalizer(
        self, kind: str, body: dict[str, Any], finalizer: str
    ) -> dict[str, Any]:
        """The object with `finalizer` removed (a no-op when absent)."""
        return await self._set_finalizer(kind, body, finalizer, present=False)

    async def _set_finalizer(
        self, kind: str, body: dict[str, Any], finalizer: str, *, present: bool
    ) -> dict[str, Any]:
        meta = body["metadata"]
        current = meta.get("finalizers") or []
        if (finalizer in current) == present:
            return body
        wanted = [*current, finalizer] if present else [f for f in current if f != finalizer]
        updated = await self.set_finalizers(
            kind, meta["name"], meta.get("namespace"), wanted, meta["resourceVersion"]
        )
        return updated or body

    async def event(
        self,
        regarding: dict[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        name: str | None = None,
        count: int = 1,
    ) -> None:
        """Post a core/v1 Event about an object (shown by `kubectl describe`). Events about
        a cluster-scoped object live in the default namespace, as the API server requires
        (as a Node's do). Controllers post through platform/events.py, which names the Event
        to update its count later (`event_count`)."""
        meta = regarding["metadata"]
        namespace = meta.get("namespace") or "default"
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name or f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": regarding.get("apiVersion", GROUP_VERSION),
                "kind": regarding["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "tunnelop"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
            "reportingComponent": "tunnelop",
        }
        await self.request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    async def event_count(self, namespace: str, name: str, *, count: int, message: str) -> None:
        """The same Event seen again: its count, lastTimestamp and latest message (as
        client-go's recorder patches them). A KubeError 404 if it is gone."""
        patch = {"count": count, "lastTimestamp": _now(), "message": message[:1024]}
        await self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/events/{name}",
            patch,
            content_type="application/merge-patch+json",
        )
