"""Runs the operator: the health endpoints at once, then (with leader election) a campaign
for the Lease, and only while leading kopf with tunnelop's handlers, settings and admission
webhook. A follower runs no watch and no webhook: it is ready (standing by, so that a
disruption budget can count it), and in a pod it labels itself tunnelop.dev/role=follower; the
leader labels itself leader once ready, and the chart's webhook Service selects that label
(platform/pod_role.py).

The webhook, two ways. Locally (no --webhook-service) kopf registers the configurations
itself, with a throw-away certificate for 127.0.0.1. In a cluster (--webhook-service) the
chart owns the configurations and the Service; the operator serves behind that Service with
a certificate from a Secret it creates and renews (--webhook-cert-secret), injecting its CA
into the configurations' caBundle, or from files cert-manager mounts (--webhook-cert-dir).

The release finalizer at a Tunnel's creation, two ways (--finalizer-mode). Where the API server
serves MutatingAdmissionPolicy, a policy sets it inside the API server: no call into the
operator. Locally the leader applies the policy and its binding (server-side apply) and
registers no mutating webhook; it deletes them on a clean stop, as kopf takes its webhook
entries down. Elsewhere kopf's mutating webhook add-finalizer sets it; behind a Service the
chart installs one or the other. Without either, the controller adds it, one write later.

Losing the lease stops every reconcile at once and exits non-zero (the pod restarts as a
follower, as with controller-runtime). SIGTERM makes a leader drain the reconciles in flight
(bounded), stop kopf (which takes its webhook entries down), release the lease and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from tunnelop.api.v1alpha1 import parse_port_span
from tunnelop.builders.finalizer_policy import (
    BINDING_KIND,
    POLICY_KIND,
    build_finalizer_policy,
    build_finalizer_policy_binding,
)
from tunnelop.builders.relay import PINNED_IMAGES, DefaultRelayImages
from tunnelop.contract.naming import DEFAULT_FRPC_IMAGE, FINALIZER_POLICY, SERVICE_ACCOUNT_DIR
from tunnelop.platform import admission_policies, certs, logs, webhook_tls
from tunnelop.platform.events import GLOBAL_BURST, GLOBAL_REFILL
from tunnelop.platform.health import Health
from tunnelop.platform.kube import Kube, KubeError, use_service_account_dir
from tunnelop.platform.leader import LeaderElector, Timing
from tunnelop.platform.pod_role import POD_NAME_ENV, PodRole

log = logs.get(__name__)
WEBHOOK_CONFIGURATION = "tunnelop.dev"
LEADERSHIP_LOST_EXIT = 1


@dataclass(frozen=True)
class Options:
    relay_namespace: str = "tunnelop-system"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 9443
    webhook: bool = True
    log_format: str = "auto"
    workers: int = 256
    log_level: str = "INFO"
    traffic_interval: float = 10.0
    # Events: at most event_burst at once, then event_qps a second (kubelet's flags).
    event_burst: int = GLOBAL_BURST
    event_qps: float = GLOBAL_REFILL
    service_node_port_range: str = "30000-32767"
    # Images of relay pods whose RelayNode names none (None: the pinned defaults).
    frps_image: str | None = None
    agent_image: str | None = None
    # The frpc image of InCluster tunnels' clients (None: the pinned default).
    frpc_image: str | None = None
    leader_elect: bool = False
    leader_election_namespace: str | None = None  # default: the relay namespace
    leader_election_id: str = "tunnelop"
    lease_duration: float = 10.0
    health_host: str = "127.0.0.1"
    health_port: int = 8081
    # SIGTERM: how long the reconciles in flight may take to finish, then kopf to stop.
    drain_timeout: float = 10.0
    stop_timeout: float = 3.0
    # Behind a Service (NAMESPACE, NAME) with a chart-owned webhook configuration; None:
    # kopf registers the webhook itself at https://webhook_host:webhook_port (local runs).
    webhook_service: tuple[str, str] | None = None
    # The serving certificate behind a Service: a Secret the operator keeps in its own
    # namespace, or a directory with tls.crt and tls.key (cert-manager).
    webhook_cert_secret: str | None = None
    webhook_cert_dir: Path | None = None
    # Who sets the finalizer at creation: "policy" (a MutatingAdmissionPolicy), "webhook"
    # (kopf's add-finalizer), "auto" (the policy where the API server serves it).
    finalizer_mode: str = "webhook"
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    # How often the leader checks whether the webhook certificate needs renewal.
    cert_check_interval: float = 300.0
    # How often the webhook server rereads its certificate files for a change.
    cert_file_check_interval: float = 10.0


def in_pod(service_account_dir: str = SERVICE_ACCOUNT_DIR) -> bool:
    """Running in a Kubernetes pod: the API server's address in the env, or a mounted token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or os.path.exists(
        os.path.join(service_account_dir, "token")
    )


def service_account_login(directory: str, env: Mapping[str, str]) -> kopf.ConnectionInfo | None:
    """kopf's connection from the pod's ServiceAccount token in `directory` (kopf's own
    in-cluster login knows only the usual place); None outside a pod."""
    token_file = Path(directory, "token")
    if not token_file.is_file():
        return None
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    server = (
        f"https://{f'[{host}]' if ':' in host else host}:{port}"
        if host
        else "https://kubernetes.default.svc"
    )
    ca_file, namespace_file = Path(directory, "ca.crt"), Path(directory, "namespace")
    return kopf.ConnectionInfo(
        server=server,
        ca_path=str(ca_file) if ca_file.is_file() else None,
        scheme="Bearer",
        token=token_file.read_text().strip(),
        default_namespace=namespace_file.read_text().strip() if namespace_file.is_file() else None,
    )


def _register_handlers(options: Options, finalizer_webhook: bool) -> kopf.OperatorRegistry:
    # Importing the controller modules registers their handlers in kopf's default registry.
    from tunnelop.controllers import watches, webhook
    from tunnelop.controllers.traffic import TrafficOptions

    registry = kopf.get_default_registry()
    if options.webhook:
        webhook.register_validate_tunnel(registry)
    if options.webhook and finalizer_webhook:
        webhook.register_add_finalizer(registry)

    @kopf.on.login(errors=kopf.ErrorsMode.IGNORED)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Read again at every (re-)login: the kubelet rotates the token file.
        in_pod = service_account_login(options.service_account_dir, os.environ)
        return in_pod or kopf.login_via_client(**kwargs)

    @kopf.on.startup(backoff=1)
    async def start_runtime(memo: kopf.Memo, **_: object) -> None:
        traffic = TrafficOptions(
            interval=options.traffic_interval,
            # A traffic-only change waits for a few rounds; ClientConnected goes at once.
            min_write_interval=3 * options.traffic_interval,
        )
        await watches.start(
            memo,
            options.relay_namespace,
            options.workers,
            traffic,
            node_port_range=parse_port_span(options.service_node_port_range, allow_single=False),
            relay_images=relay_images(options),
            frpc_image=options.frpc_image or DEFAULT_FRPC_IMAGE,
            event_burst=options.event_burst,
            event_qps=options.event_qps,
        )

    @kopf.on.cleanup()
    async def stop_runtime(memo: kopf.Memo, **_: object) -> None:
        runtime = getattr(memo, "runtime", None)
        if runtime is not None:
            await runtime.stop()

    return registry


def relay_images(options: Options) -> DefaultRelayImages:
    return DefaultRelayImages(
        frps=options.frps_image or PINNED_IMAGES.frps,
        agent=options.agent_image or PINNED_IMAGES.agent,
    )


def build_settings(options: Options, workdir: Path) -> kopf.OperatorSettings:
    from tunnelop.controllers.webhook import AdmissionServer  # with the other controllers

    settings = kopf.OperatorSettings()
    # The controllers post their own Events; kopf's per-handler Events would be noise.
    settings.posting.enabled = False
    # kopf's own bookkeeping, should any handler need it, lives in status, never in
    # annotations: Git owns metadata and spec (invariant 5).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.finalizer = "tunnelop.dev/kopf"
    # Watch only what is ours among Secrets and Deployments (server-side filtering).
    settings.watching.label_selectors["v1", "secrets"] = "tunnelop.dev/tunnel"
    settings.watching.label_selectors["apps", "deployments"] = "tunnelop.dev/relay"
    settings.watching.server_timeout = 300
    if options.webhook and options.webhook_service is not None:
        # The chart owns the configurations (kopf's `managed` stays off) and the Service.
        directory = serving_directory(options, workdir)
        settings.admission.server = AdmissionServer(
            addr=options.webhook_host,
            port=options.webhook_port,
            certfile=str(directory / certs.CERT_KEY),
            pkeyfile=str(directory / certs.KEY_KEY),
            # A renewed Secret or a cert-manager rotation changes the files: served anew.
            file_check_interval=options.cert_file_check_interval,
        )
    elif options.webhook:
        cert = certs.issue_webhook_certificate(
            workdir / "webhook", [options.webhook_host, "localhost"]
        )
        settings.admission.server = AdmissionServer(
            addr=options.webhook_host,
            port=options.webhook_port,
            host=options.webhook_host,
            certfile=str(cert.cert_file),
            pkeyfile=str(cert.key_file),
            cadata=cert.ca_pem,
        )
        settings.admission.managed = WEBHOOK_CONFIGURATION
    return settings


def serving_directory(options: Options, workdir: Path) -> Path:
    """Where the webhook server reads tls.crt and tls.key behind a Service."""
    return options.webhook_cert_dir or workdir / "webhook"


def _missing_cert_files(directory: Path) -> list[str]:
    return [name for name in (certs.CERT_KEY, certs.KEY_KEY) if not (directory / name).is_file()]


async def run(options: Options) -> int:
    """The exit code: 0 after SIGTERM or SIGINT, non-zero when leadership was lost or kopf
    ended by itself."""
    logs.configure(options.log_format, options.log_level)
    use_service_account_dir(options.service_account_dir)
    if options.webhook and options.webhook_cert_dir is not None:
        missing = _missing_cert_files(options.webhook_cert_dir)
        if missing:
            log.error(
                "--webhook-cert-dir lacks the serving certificate",
                directory=str(options.webhook_cert_dir),
                missing=missing,
            )
            return 2
    stopping = asyncio.Event()
    _on_signals(stopping.set)
    health = Health()
    pod_name = os.environ.get(POD_NAME_ENV, "").strip() if options.leader_elect else ""
    if pod_name:
        # Not ready before the pod's role label is this process's own (pod_role.py).
        health.add_check("pod-role", lambda: (False, f"labelling pod {pod_name}"))
    await health.start(options.health_host, options.health_port)
    kube = None
    labelling: asyncio.Task[None] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="tunnelop-") as workdir:
            certificate = pod_role = None
            if (options.webhook and options.webhook_cert_secret) or pod_name:
                kube = await Kube.connect()
            if pod_name:
                assert kube is not None
                pod_role = PodRole(kube, _own_namespace(options), pod_name)
                health.add_check("pod-role", pod_role.readiness)
                labelling = asyncio.create_task(pod_role.set("follower"), name="pod role")
            if options.webhook and options.webhook_cert_secret:
                assert kube is not None
                certificate = await _prepare_certificate(options, kube, Path(workdir))
            if not options.leader_elect:
                health.add_check("leader", lambda: (True, "leader election disabled"))
                return await _lead(options, health, stopping, None, Path(workdir), certificate)
            return await _campaign_then_lead(
                options, health, stopping, Path(workdir), certificate, pod_role
            )
    finally:
        if labelling is not None:
            labelling.cancel()
        if kube is not None:
            await kube.close()
        await health.stop()


def _own_namespace(options: Options) -> str:
    return webhook_tls.operator_namespace(
        os.environ, options.service_account_dir, options.relay_namespace
    )


async def _prepare_certificate(
    options: Options, kube: Kube, workdir: Path
) -> webhook_tls.SecretCertificate:
    """Every replica, at start-up: the webhook certificate from the Secret in the operator's
    own namespace, the Secret created if absent. A failure here is retried by the leader."""
    assert options.webhook_service is not None and options.webhook_cert_secret is not None
    certificate = webhook_tls.SecretCertificate(
        kube,
        _own_namespace(options),
        options.webhook_cert_secret,
        options.webhook_service,
        serving_directory(options, workdir),
        WEBHOOK_CONFIGURATION,
        check_interval=options.cert_check_interval,
        # With the finalizer policy the chart installs no MutatingWebhookConfiguration.
        plurals=webhook_tls.CONFIGURATION_PLURALS[:1]
        if options.finalizer_mode == "policy"
        else webhook_tls.CONFIGURATION_PLURALS,
    )
    try:
        await certificate.prepare()
    except Exception as exc:  # the API server away, no right yet: the leader tries again
        log.warning(
            "cannot read the webhook certificate yet", secret=certificate.where, error=str(exc)
        )
    return certificate


async def _take_over_certificate(
    certificate: webhook_tls.SecretCertificate, health: Health
) -> None:
    """Until the leader serves the Secret's current certificate (retried: without it the
    webhook cannot serve; /readyz says why meanwhile)."""
    delay = 1.0
    while True:
        try:
            await certificate.take_over()
            health.add_check(
                "webhook-certificate", lambda: (True, f"from Secret {certificate.where}")
            )
            return
        except Exception as exc:  # the API server away, no right to the Secret: again
            message = f"cannot read or write Secret {certificate.where}: {exc}"
            health.add_check("webhook-certificate", lambda message=message: (False, message))
            log.warning("webhook certificate not ready; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _campaign_then_lead(
    options: Options,
    health: Health,
    stopping: asyncio.Event,
    workdir: Path,
    certificate: webhook_tls.SecretCertificate | None,
    pod_role: PodRole | None,
) -> int:
    namespace = options.leader_election_namespace or options.relay_namespace
    kube = await Kube.connect()
    try:
        await _ensure_namespace(kube, namespace)
        elector = LeaderElector(
            kube,
            namespace,
            options.leader_election_id,
            timing=Timing.for_lease(options.lease_duration),
        )
        health.add_check("leader", elector.status)
        log.info(
            "campaigning for leadership",
            lease=f"{namespace}/{options.leader_election_id}",
            identity=elector.identity,
        )
        # Leaving this block releases the lease if it is still held (a clean stop).
        async with elector.campaign() as campaign:
            await _first(elector.leading.wait(), stopping.wait(), campaign)
            if not elector.is_leader:
                return 0 if stopping.is_set() else LEADERSHIP_LOST_EXIT
            routing = (
                asyncio.create_task(_route_webhook_here(health, pod_role), name="webhook route")
                if pod_role is not None
                else None
            )
            try:
                return await _lead(options, health, stopping, elector.lost, workdir, certificate)
            finally:
                if routing is not None:
                    routing.cancel()
                if pod_role is not None and stopping.is_set():
                    # Off the webhook Service before the Lease goes to the other replica.
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(pod_role.set("follower"), timeout=2)
    finally:
        await kube.close()


async def _lead(
    options: Options,
    health: Health,
    stopping: asyncio.Event,
    lost: asyncio.Event | None,
    workdir: Path,
    certificate: webhook_tls.SecretCertificate | None,
) -> int:
    policy = await _apply_finalizer_policy(options) if options.webhook_service is None else False
    registry = _register_handlers(options, _finalizer_webhook(options, policy))
    memo = kopf.Memo()
    memo.health = health  # the controllers register their readiness checks on it
    health.add_check(
        "controllers",
        lambda: (
            (True, "started")
            if getattr(memo, "runtime", None) is not None
            else (False, "starting: restoring the allocation table")
        ),
    )
    stop_kopf = asyncio.Event()
    waiters = [asyncio.ensure_future(stopping.wait())]
    if lost is not None:
        waiters.append(asyncio.ensure_future(lost.wait()))
    keeper: asyncio.Task[None] | None = None
    try:
        if certificate is not None:
            # The webhook server must find the certificate files when it starts.
            taken = asyncio.ensure_future(_take_over_certificate(certificate, health))
            await _first(taken, *waiters)
            if not taken.done():
                taken.cancel()
                return _left_before_leading(lost)
            keeper = asyncio.create_task(certificate.keep(), name="webhook certificate")
        return await _run_kopf(options, registry, memo, stop_kopf, stopping, lost, waiters, workdir)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if keeper is not None:
            keeper.cancel()
        # A lost lease leaves the policy to the next leader, which may have applied it already.
        if policy and stopping.is_set() and not (lost is not None and lost.is_set()):
            await _delete_finalizer_policy(options.stop_timeout)


def _finalizer_webhook(options: Options, policy_applied: bool) -> bool:
    """Whether kopf serves (and, locally, registers) the mutating webhook add-finalizer."""
    if options.webhook_service is not None:
        return options.finalizer_mode != "policy"  # the chart installed the one or the other
    return options.finalizer_mode == "webhook" or (
        options.finalizer_mode == "auto" and not policy_applied
    )


async def _apply_finalizer_policy(options: Options) -> bool:
    """A local leader: the finalizer policy and its binding applied where the API server
    serves them (and --finalizer-mode allows); whether they are in place. A failure leaves
    the finalizer to the webhook (auto) or to the controller (policy)."""
    if options.finalizer_mode == "webhook":
        return False
    kube = await Kube.connect()
    try:
        if not await admission_policies.served(kube):
            log.info(
                "MutatingAdmissionPolicy is not served: the finalizer comes from "
                + ("the controller" if options.finalizer_mode == "policy" else "the webhook"),
                mode=options.finalizer_mode,
            )
            return False
        # The policy first: a binding to a policy not yet there does nothing.
        await admission_policies.apply(kube, build_finalizer_policy())
        await admission_policies.apply(kube, build_finalizer_policy_binding())
    except (KubeError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("cannot apply the finalizer policy", name=FINALIZER_POLICY, error=str(exc))
        return False
    finally:
        await kube.close()
    log.info("finalizer set at creation by a MutatingAdmissionPolicy", name=FINALIZER_POLICY)
    return True


async def _delete_finalizer_policy(timeout: float) -> None:
    """On a clean stop: the binding first (then the policy does nothing), then the policy;
    bounded, as a stop must be. One left behind keeps setting the finalizer, which the next
    operator removes as usual."""
    kube = await Kube.connect()
    try:
        async with asyncio.timeout(timeout):
            await admission_policies.delete(kube, BINDING_KIND, FINALIZER_POLICY)
            await admission_policies.delete(kube, POLICY_KIND, FINALIZER_POLICY)
        log.info("finalizer policy deleted", name=FINALIZER_POLICY)
    except (KubeError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("cannot delete the finalizer policy", name=FINALIZER_POLICY, error=str(exc))
    finally:
        await kube.close()


async def _route_webhook_here(health: Health, pod_role: PodRole) -> None:
    """Once this leader is ready (caches restored, certificate served), label its pod so
    that the webhook Service routes admission calls to it."""
    await health.until_ready()
    await pod_role.set("leader")


def _left_before_leading(lost: asyncio.Event | None) -> int:
    return LEADERSHIP_LOST_EXIT if lost is not None and lost.is_set() else 0


async def _run_kopf(
    options: Options,
    registry: kopf.OperatorRegistry,
    memo: kopf.Memo,
    stop_kopf: asyncio.Event,
    stopping: asyncio.Event,
    lost: asyncio.Event | None,
    waiters: list[asyncio.Future[Any]],
    workdir: Path,
) -> int:
    settings = build_settings(options, workdir)
    if settings.admission.server is not None:
        settings.admission.server.memo = memo  # its Tunnel reviews read the caches
    # kopf cancels, when it ends, every task created after this point.
    existing = asyncio.all_tasks()
    tasks = await kopf.spawn_tasks(
        registry=registry,
        settings=settings,
        clusterwide=True,
        standalone=True,
        stop_flag=stop_kopf,
        memo=memo,
    )
    # kopf installed its own SIGTERM/SIGINT handlers: ours decide the order of shutdown.
    _on_signals(stopping.set)
    operator = asyncio.create_task(kopf.run_tasks(tasks, ignored=existing), name="kopf")
    await _first(operator, *waiters)
    if lost is not None and lost.is_set():
        log.error("leadership lost: stopping every reconcile now and exiting")
        await _cancel_everything_else()
        return LEADERSHIP_LOST_EXIT
    if stopping.is_set():
        await _drain(getattr(memo, "runtime", None), options.drain_timeout)
        stop_kopf.set()
        # kopf's webhook server waits for the API server's keep-alive connections to close
        # (aiohttp's graceful shutdown, up to a minute): bounded, so that the Lease goes to
        # the other replica at once. Nothing writes by then: the queues are drained.
        done, _ = await asyncio.wait({operator}, timeout=options.stop_timeout)
        if not done:
            log.info("kopf still stopping; cancelled", waited=options.stop_timeout)
            operator.cancel()
            await asyncio.wait({operator}, timeout=1)
            return 0
    try:
        await operator
    except Exception:
        log.exception("the operator ended with an error")
        return 1
    return 0 if stopping.is_set() else 1


async def _drain(runtime: Any, timeout: float) -> None:
    """Let the reconciles in flight finish (both queues share the deadline)."""
    if runtime is None:
        return
    finished = await asyncio.gather(*(q.drain(timeout) for q in runtime.queues()))
    log.info("work queues drained", complete=all(finished), timeout=timeout)


async def _cancel_everything_else(grace: float = 3.0) -> None:
    """Another process may be leading already: cancel every task (workers, table writers,
    kopf) in one go, so that none of them gets past its next await."""
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    for task in others:
        task.cancel()
    await asyncio.wait(others, timeout=grace)


async def _first(*awaitables: Any) -> set[asyncio.Future[Any]]:
    """Wait for the first of `awaitables` (coroutines become tasks, cancelled if unfinished)."""
    futures = [asyncio.ensure_future(a) for a in awaitables]
    created = [f for f, a in zip(futures, awaitables, strict=True) if f is not a]
    try:
        done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        return done
    finally:
        for future in created:
            if not future.done():
                future.cancel()


def _on_signals(callback: Any) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, callback)


async def _ensure_namespace(kube: Kube, name: str) -> None:
    """The Lease's namespace, for local runs (in a cluster the chart creates it)."""
    try:
        if await kube.get("v1", "Namespace", name) is None:
            await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except KubeError as exc:  # e.g. no right to read namespaces: the campaign will say more
        log.warning("cannot check the lease namespace", namespace=name, error=str(exc))


def main(options: Options) -> int:
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130
