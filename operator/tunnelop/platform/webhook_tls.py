"""The admission webhook's certificate when the operator runs behind a Service: kept in a
Secret of the operator's own namespace that every replica reads (so a new leader serves the
same certificate), and its CA kept in the caBundle of the webhook configurations, which the
chart owns (only caBundle is ever written here; rules, failurePolicy and the Service reference
stay the chart's).

The Secret is created if absent: two replicas starting together both try, the API server
takes one, the other reads it (409). Only the leader renews it, with a write guarded by the
Secret's resourceVersion.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunnelop.contract.naming import parse_namespaced_name
from tunnelop.platform import certs, logs
from tunnelop.platform.kube import FIELD_MANAGER, Kube, KubeError

log = logs.get(__name__)
ADMISSION_PATH = "/apis/admissionregistration.k8s.io/v1"
CONFIGURATION_PLURALS = ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")
POD_NAMESPACE_ENV = "POD_NAMESPACE"
RETRY_WRITES = 5


def operator_namespace(env: Mapping[str, str], service_account_dir: str, fallback: str) -> str:
    """The operator's own namespace: POD_NAMESPACE (the downward API), else the namespace of
    its ServiceAccount token, else `fallback` (local runs)."""
    if env.get(POD_NAMESPACE_ENV):
        return env[POD_NAMESPACE_ENV].strip()
    try:
        namespace = Path(service_account_dir, "namespace").read_text().strip()
    except OSError:
        namespace = ""
    return namespace or fallback


def parse_service(value: str) -> tuple[str, str]:
    """NAMESPACE/NAME of the webhook's Service; ValueError naming what is wrong."""
    return parse_namespaced_name(
        value, "Service", example="tunnelop-system/tunnelop-webhook", dns_label=True
    )


# ---- the Secret -----------------------------------------------------------------------------


def secret_body(
    namespace: str, name: str, pair: certs.WebhookPair, resource_version: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/managed-by": FIELD_MANAGER,
            "app.kubernetes.io/component": "webhook",
        },
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in pair.secret_data().items()},
    }


def pair_of(secret: Mapping[str, Any]) -> certs.WebhookPair | None:
    """The pair a Secret holds; None when it lacks one (or holds something undecodable)."""
    data: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            return None
    return certs.WebhookPair.from_secret_data(data)


async def load_or_create(
    kube: Kube, namespace: str, name: str, hosts: list[str]
) -> certs.WebhookPair | None:
    """What every replica does at start: the Secret's pair, the Secret created with a new one
    if absent (another replica's, if it was first). None when the Secret exists without a
    usable pair: the leader will fill it."""
    secret = await kube.get("v1", "Secret", name, namespace)
    if secret is None:
        pair = certs.issue_pair(hosts, _now())
        try:
            await kube.create(secret_body(namespace, name, pair))
            log.info("webhook certificate created", secret=f"{namespace}/{name}")
            return pair
        except KubeError as exc:
            if exc.status != 409:
                raise
        # Another replica created it between our read and our create: theirs it is.
        secret = await kube.get("v1", "Secret", name, namespace)
        if secret is None:
            raise KubeError(404, f"Secret {namespace}/{name} vanished right after a conflict")
    return pair_of(secret)


async def ensure_current(
    kube: Kube, namespace: str, name: str, hosts: list[str]
) -> certs.WebhookPair:
    """What the leader does: the Secret's pair, renewed first if due (created if absent).
    A write that conflicts with another one rereads and decides again."""
    for _ in range(RETRY_WRITES):
        secret = await kube.get("v1", "Secret", name, namespace)
        current = pair_of(secret) if secret is not None else None
        now = _now()
        renewal = certs.renewal_due(current, hosts, now)
        if renewal is None and current is not None:
            return current
        assert renewal is not None
        pair = certs.issue_pair(hosts, now, keep_ca=None if renewal.new_ca else current)
        try:
            if secret is None:
                await kube.create(secret_body(namespace, name, pair))
            else:
                version = secret["metadata"]["resourceVersion"]
                await kube.replace(secret_body(namespace, name, pair, version))
        except KubeError as exc:
            if exc.status == 409:
                continue
            raise
        log.info(
            "webhook certificate issued",
            secret=f"{namespace}/{name}",
            reason=renewal.reason,
            new_ca=renewal.new_ca,
        )
        return pair
    raise KubeError(409, f"Secret {namespace}/{name} kept changing while being renewed")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# ---- caBundle in the webhook configurations -------------------------------------------------


def _serves(webhook: Mapping[str, Any], service: tuple[str, str]) -> bool:
    ref = (webhook.get("clientConfig") or {}).get("service") or {}
    return (ref.get("namespace"), ref.get("name")) == service


def ca_bundle_patch(
    configuration: Mapping[str, Any], ca_pem: bytes, service: tuple[str, str]
) -> dict[str, Any] | None:
    """The strategic merge patch that sets caBundle to `ca_pem` in each webhook of
    `configuration` that calls `service`, and touches nothing else (webhooks merge by name);
    guarded by the configuration's resourceVersion. None when every caBundle is right."""
    bundle = base64.b64encode(ca_pem).decode()
    changes = [
        {"name": webhook["name"], "clientConfig": {"caBundle": bundle}}
        for webhook in configuration.get("webhooks") or []
        if _serves(webhook, service)
        and (webhook.get("clientConfig") or {}).get("caBundle") != bundle
    ]
    if not changes:
        return None
    version = (configuration.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": version}, "webhooks": changes}


def foreign_webhooks(configuration: Mapping[str, Any], service: tuple[str, str]) -> list[str]:
    """The webhooks of `configuration` that do not call `service` (left alone, and said)."""
    return [
        str(webhook.get("name"))
        for webhook in configuration.get("webhooks") or []
        if not _serves(webhook, service)
    ]


class CaBundleInjector:
    """Keeps caBundle equal to the CA in the webhooks of the configurations named
    `configuration` that call `service` (of the kinds `plurals`: both, unless the chart sets
    the finalizer by a MutatingAdmissionPolicy and installs no mutating webhook): at once,
    and whenever they change (a helm upgrade or re-install writes them anew)."""

    def __init__(
        self,
        kube: Kube,
        configuration: str,
        service: tuple[str, str],
        ca_pem: bytes,
        *,
        retry: float = 2.0,
        plurals: tuple[str, ...] = CONFIGURATION_PLURALS,
    ) -> None:
        self.kube = kube
        self.configuration = configuration
        self.service = service
        self.ca_pem = ca_pem
        self.retry = retry
        self.plurals = plurals
        self._absent_said: set[str] = set()

    async def set_ca(self, ca_pem: bytes) -> None:
        """A new CA: written into both configurations now."""
        self.ca_pem = ca_pem
        for plural in self.plurals:
            try:
                await self.inject(plural, await self._get(plural))
            except KubeError as exc:  # the watch will try again on the next change
                log.warning("cannot inject the caBundle", kind=plural, error=str(exc))

    async def run(self) -> None:
        await asyncio.gather(*(self._keep(plural) for plural in self.plurals))

    async def inject(self, plural: str, configuration: dict[str, Any] | None) -> None:
        """Patch `configuration` (the current one, or None if absent) if its caBundle is off;
        on a conflict, read it again."""
        for _ in range(RETRY_WRITES):
            if configuration is None:
                if plural not in self._absent_said:
                    self._absent_said.add(plural)
                    log.warning(
                        "no webhook configuration to inject the caBundle into yet",
                        kind=plural,
                        name=self.configuration,
                    )
                return
            self._absent_said.discard(plural)
            foreign = foreign_webhooks(configuration, self.service)
            if foreign:
                log.warning(
                    "webhooks not calling the webhook Service keep their caBundle",
                    kind=plural,
                    webhooks=foreign,
                    service="/".join(self.service),
                )
            patch = ca_bundle_patch(configuration, self.ca_pem, self.service)
            if patch is None:
                return
            try:
                await self.kube.request(
                    "PATCH",
                    f"{ADMISSION_PATH}/{plural}/{self.configuration}",
                    patch,
                    content_type="application/strategic-merge-patch+json",
                )
                log.info("caBundle injected", kind=plural, name=self.configuration)
                return
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
            configuration = await self._get(plural)

    async def _get(self, plural: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request("GET", f"{ADMISSION_PATH}/{plural}/{self.configuration}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def _keep(self, plural: str) -> None:
        """List (by name), inject, watch from there; again after any interruption."""
        path = f"{ADMISSION_PATH}/{plural}"
        fields = f"metadata.name={self.configuration}"
        while True:
            try:
                listing = await self.kube.request("GET", path, query=[("fieldSelector", fields)])
                items = (listing or {}).get("items") or []
                await self.inject(plural, items[0] if items else None)
                version = (listing or {}).get("metadata", {}).get("resourceVersion", "")
                async for event in self.kube.watch(
                    path, resource_version=version, fields=fields, timeout=240
                ):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        await self.inject(plural, event["object"])
                    elif event.get("type") == "ERROR":
                        break  # e.g. 410 Gone: list again
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server restarts, no right to watch: try again
                log.warning("webhook configuration watch interrupted", kind=plural, error=str(exc))
                await asyncio.sleep(self.retry)


class SecretCertificate:
    """One replica's view of the webhook certificate kept in Secret `namespace/secret`: the
    serving certificate and key written to `directory`, where the webhook server reads them
    (and rereads them when they change)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        secret: str,
        service: tuple[str, str],
        directory: Path,
        configuration: str,
        *,
        check_interval: float = 300.0,
        plurals: tuple[str, ...] = CONFIGURATION_PLURALS,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.secret = secret
        self.service = service
        self.directory = directory
        self.hosts = certs.service_host_names(*service)
        self.check_interval = check_interval
        self.pair: certs.WebhookPair | None = None
        self.injector = CaBundleInjector(kube, configuration, service, b"", plurals=plurals)

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.secret}"

    async def prepare(self) -> None:
        """Every replica, at start-up: the Secret's certificate, created if absent."""
        pair = await load_or_create(self.kube, self.namespace, self.secret, self.hosts)
        if pair is not None:
            self._serve(pair)

    async def take_over(self) -> None:
        """On becoming leader: the Secret's current certificate (renewed first if due), so a
        new leader serves what the last one did, and its CA in the caBundle."""
        pair = await ensure_current(self.kube, self.namespace, self.secret, self.hosts)
        self._serve(pair)
        await self.injector.set_ca(pair.ca_cert)

    async def keep(self) -> None:
        """While leading: the caBundle kept in place, the Secret checked for renewal."""
        await asyncio.gather(self.injector.run(), self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self._check()
            except Exception as exc:  # the API server away: the next check tries again
                log.warning(
                    "cannot check the webhook certificate", secret=self.where, error=str(exc)
                )

    async def _check(self) -> None:
        pair = await ensure_current(self.kube, self.namespace, self.secret, self.hosts)
        if pair == self.pair:
            if self.injector.ca_pem != pair.ca_cert:  # the second step of a CA change
                await self.injector.set_ca(pair.ca_cert)
            return
        if self.pair is not None and pair.ca_cert != self.pair.ca_cert:
            # A new CA: trusted alongside the old one until the server has switched, so no
            # admission call fails in between.
            await self.injector.set_ca(pair.ca_cert + self.pair.ca_cert)
        self._serve(pair)
        log.info("serving a renewed webhook certificate", secret=self.where)

    def _serve(self, pair: certs.WebhookPair) -> None:
        certs.write_pair(self.directory, pair)
        self.pair = pair
