"""A test-side stand-in for the kubelet, for relay pods (and, opted in, the operator's own).

Pods on kwok's fake nodes are reported Running but run nothing. The runner brings the pods
that carry the `tunnelop.dev/relay` label to life: it runs each container's own command and
args as a local process, with the pod's environment (downward API included) and its Secret,
ConfigMap and projected volumes written to a temporary directory. So the pod spec the
operator wrote is the thing that runs.

What differs from a kubelet, and why:
- A container image is mapped to a local binary (`frps`/`frpc` from the tool cache, the
  project's own entry point for tunnelop images), since nothing is pulled here.
- Each relay (the label's value) gets its own loopback address, 127.0.0.2, 127.0.0.3, ...,
  stable across pod re-creation (an operator pod: one of its own, kept by its name); `status.podIP` and `status.hostIP` in the downward API
  resolve to it, so a process that binds to its pod IP binds to that address, and the runner
  reports it as the pod's `status.podIP`, so that others reach the pod by its IP.
- Volume mount paths are rewritten: every mountPath that appears in a container's command,
  args, env values or in a materialized text file is replaced by the local directory.
- A pod has a network namespace of its own, and so a localhost of its own: 127.0.0.1 in
  args, env values and materialized files becomes the relay's address, so two relays'
  localhost-only ports (frps's plugin and dashboard ports) do not collide. Likewise 0.0.0.0
  (all of the pod's addresses) becomes the pod's address, so two operator replicas that
  listen on 0.0.0.0:8081 do not collide either.
- $(VAR) references in args are expanded from the container's env, as the kubelet does.
- A container that exits is restarted with a capped back-off, as with restartPolicy Always.
  With restartPolicy Never (or OnFailure, once it exits 0) it stays down, and once every
  container of the pod has ended the runner reports the pod Succeeded or Failed with each
  container's exit code, as a kubelet: a Job's controller then counts the pod.
- Pods labelled `tunnelop.test/kubelet=relay-runner` (a chart's hook Job sets it through its
  pod labels) are run whatever other label they carry, and the runner reports their whole
  status, Running (with their address, ready) included: the local cluster's kwok leaves them
  alone (hack/cluster.sh), since it would report a Job's pod Succeeded at once, before
  anything ran. Such a pod being deleted is stopped and then removed (grace period 0), as a
  kubelet confirms a deletion, also when the runner stops (nothing else would ever remove
  it); readiness probes are not performed for them.

- The frpc pods the operator runs for InCluster Tunnels (CLIENT_SELECTOR, the operator's
  own selector for them) run too, from the frpc image mapping, each tunnel's pod on an address
  of its own (kept across rolls). There is no cluster DNS here: `serve_service(namespace,
  name, address)` stands in for it. A Service's DNS name (`<name>.<namespace>.svc`, or with
  `.cluster.local`) in a container's env values, args or materialized files is rewritten to
  the address the test gave for it, when the pod starts (so before the Tunnel is applied);
  a pod that names a Service the runner was given no address for is logged.

Opt-ins play the rest of a cluster for tests of failover, of relays without a fixed
address, and of the operator installed as pods:
- `serve_load_balancers=True`: the cloud's load balancer (as MetalLB would be). A Service of
  type LoadBalancer that carries the relay label gets the relay's loopback address as
  `status.loadBalancer.ingress`; the relay's processes bind that address, so a visitor of
  ingress-ip:port reaches them where the Service's port equals its targetPort.
- `hold_down(relay)` / `bring_up(relay)`: a pod outage that lasts. The relay's containers
  stop and stay down (new pods of the relay too) and the pod is reported not ready, as a
  kubelet reports failed readiness probes; bring_up runs them again and reports the pod ready
  once the containers' readiness probes (tcpSocket, httpGet) pass.
- `operator_selector="app.kubernetes.io/name=tunnelop,app.kubernetes.io/component=operator"`:
  the operator's own pods (a Deployment, a Helm release) run too, from the same tunnelop
  image mapping, each on its own address. Their ServiceAccount token comes from the
  TokenRequest API and KUBERNETES_SERVICE_HOST/PORT name the API server, so the operator runs
  with its real RBAC (its in-cluster config: the token directory must be named in its args,
  `--service-account-dir`, as the mount path is rewritten only where it appears). Their
  readiness is what their readinessProbe says (initialDelaySeconds, periodSeconds,
  timeoutSeconds, success and failure thresholds as a kubelet counts them): a follower
  replica is not ready. Liveness probes are not performed. The runner also plays the
  endpoint slice controller for the Services that select these pods (the controller cannot:
  the API server refuses loopback addresses in an IPv4 slice): an FQDN-type EndpointSlice
  whose addresses are the pods' loopback addresses, ready as the pods are. With the local
  cluster's --enable-aggregator-routing the API server resolves a webhook's Service
  reference through it, so the chart's webhook Service reaches the leader.

Run it inside a test (see the `relay_runner` fixture) or on its own:
    python -m support.relay_runner --kubeconfig .cluster/kubeconfig
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.aio import client, config, watch
from kubernetes.aio.client.exceptions import ApiException

from support import tools

RELAY_LABEL = "tunnelop.dev/relay"
LOCALHOST = "127.0.0.1"
LOCALHOST_PATTERN = re.compile(r"(?<![\d.])127\.0\.0\.1(?!\d)")
ANY_ADDRESS = "0.0.0.0"
# The whole address, not a CIDR: 0.0.0.0/0 in a config means every source, not the pod.
ANY_ADDRESS_PATTERN = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d/])")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_READY_CONDITIONS = ("Ready", "ContainersReady")
# Pods the runner runs from start to end, reporting their whole status; the local cluster's
# kwok disregards them (hack/cluster.sh names the same label).
KUBELET_LABEL = "tunnelop.test/kubelet"
KUBELET_SELECTOR = f"{KUBELET_LABEL}=relay-runner"
# InCluster Tunnels' frpc pods: the operator's selector for them (contract.naming's
# CLIENT_SELECTOR, which a unit test keeps equal), and the tunnel they serve.
TUNNEL_LABEL = "tunnelop.dev/tunnel"
CLIENT_SELECTOR = f"app.kubernetes.io/name=tunnelop-frpc,{TUNNEL_LABEL}"
# A Service's cluster DNS name, as a pod names it, for the warning about unserved ones.
SERVICE_NAME_PATTERN = re.compile(
    r"(?<![A-Za-z0-9.-])([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc"
    r"(\.cluster\.local)?(?!\.?[A-Za-z0-9-])"
)
TERMINAL_PHASES = ("Succeeded", "Failed")
log = logging.getLogger("relay-runner")


def default_image_map(image: str) -> Path | None:
    """Map a container image to the local binary that plays it.

    `ghcr.io/fatedier/frps:v0.71.0` -> cached frps; `.../tunnelop:dev` -> the project's
    entry point in the active virtualenv.
    """
    repository = image.rsplit("@", 1)[0]
    name = repository.rsplit("/", 1)[-1].split(":", 1)[0]
    if name in ("frps", "frpc"):
        return tools.tool(name)
    if name.startswith("tunnelop"):
        entry = Path(sys.executable).parent / "tunnelop"
        return entry if entry.exists() else None
    return None


@dataclass
class Container:
    """One container of a pod, running as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    readiness: ReadinessCheck | None = None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    supervisor: asyncio.Task[None] | None = None
    image: str = ""
    # When its process last started; its exit code and end once it ended for good (a
    # restartPolicy that does not run it again).
    started_at: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None

    @property
    def running(self) -> bool:
        return self.supervisor is not None and not self.supervisor.done()


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    relay: str
    address: str
    root: Path
    containers: list[Container] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports
    stopping: bool = False
    held: bool = False  # containers kept down (hold_down)
    # The readiness the runner reports for the pod: None leaves it to kwok (Ready at once).
    readiness: bool | None = None
    # A pod of the operator (operator_selector): `relay` is then namespace/name, and its
    # readiness follows its readiness probes.
    operator: bool = False
    # Seconds between SIGTERM and SIGKILL: an operator pod's terminationGracePeriodSeconds
    # (its leader releases the Lease on the way out), 5 for relay pods.
    grace: float = 5.0
    # A pod labelled KUBELET_SELECTOR: the runner reports its whole status (kwok does not).
    owned: bool = False
    # An InCluster Tunnel's frpc pod (CLIENT_SELECTOR): `relay` is then client_key(...).
    client: bool = False
    restart_policy: str = "Always"
    token_refresher: asyncio.Task[None] | None = None
    prober: asyncio.Task[None] | None = None
    # Set when the pod stops or is held: wakes a supervisor out of its restart back-off.
    halted: asyncio.Event = field(default_factory=asyncio.Event)
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def may_run(self) -> bool:
        return not (self.stopping or self.held)


@dataclass(frozen=True)
class Completion:
    """A pod the runner ran to its end: each container's exit code and log file."""

    namespace: str
    name: str
    phase: str
    exit_codes: dict[str, int]
    logs: dict[str, Path]

    def log_text(self) -> str:
        return "\n".join(
            f"--- {self.name}/{c} (exit code {code})\n"
            + (self.logs[c].read_text(errors="replace") if self.logs[c].exists() else "")
            for c, code in self.exit_codes.items()
        )


@dataclass(frozen=True)
class ReadinessCheck:
    """A container's readinessProbe, as the runner performs it: connect to `port`, and for
    an httpGet probe expect a 2xx or 3xx answer to GET `path`."""

    port: int
    path: str | None = None  # None: a tcpSocket probe
    https: bool = False
    # How a kubelet times and counts it (the probe's fields, with Kubernetes' defaults).
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3


class RelayPodRunner:
    """Watches relay pods and runs their containers locally, each relay on its own address."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path | None = None,
        image_map: Callable[[str], Path | None] = default_image_map,
        label: str = RELAY_LABEL,
        first_address: str = "127.0.0.2",
        serve_load_balancers: bool = False,
        operator_selector: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="relay-runner-"))
        self.image_map = image_map
        self.label = label
        self.serve_load_balancers = serve_load_balancers
        self.operator_selector = operator_selector
        # Services by (namespace, name), and those that select operator pods the runner runs.
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._served: set[tuple[str, str]] = set()
        self._next_address = ipaddress.IPv4Address(first_address)
        self._addresses: dict[str, str] = {}
        # Cluster DNS stood in for: (namespace, Service) -> the address its name resolves to.
        self._service_addresses: dict[tuple[str, str], str] = {}
        self.pods: dict[str, RunningPod] = {}
        # The pods run to their end (restartPolicy Never or OnFailure), in that order.
        self.completions: list[Completion] = []
        self._completed_uids: set[str] = set()
        self._held: set[str] = set()  # relays whose pods are kept down
        self._terminating: set[asyncio.Future[None]] = set()
        self._api: client.ApiClient | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._server: tuple[str, int] | None = None

    # ---- public API -------------------------------------------------------------------

    async def start(self) -> None:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        self._api = client.ApiClient(cfg)
        host = cfg.host.split("://", 1)[-1].rstrip("/")
        server_host, _, server_port = host.rpartition(":")
        self._server = (server_host, int(server_port or 443))
        self._ca_file = cfg.ssl_ca_cert
        core = client.CoreV1Api(self._api)
        watches = [
            (
                "pods",
                self.label,
                core.list_pod_for_all_namespaces,
                self._pod_listing(operator=False),
                self._pod_event_handler(operator=False),
            ),
            (
                "owned-pods",
                KUBELET_SELECTOR,
                core.list_pod_for_all_namespaces,
                self._pod_listing(operator=False, owned=True),
                self._pod_event_handler(operator=False, owned=True),
            ),
            (
                "client-pods",
                CLIENT_SELECTOR,
                core.list_pod_for_all_namespaces,
                self._pod_listing(operator=False, client=True),
                self._pod_event_handler(operator=False, client=True),
            ),
        ]
        if self.operator_selector:
            watches.append(
                (
                    "operator-pods",
                    self.operator_selector,
                    core.list_pod_for_all_namespaces,
                    self._pod_listing(operator=True),
                    self._pod_event_handler(operator=True),
                )
            )
        if self.operator_selector:
            watches.append(
                (
                    "controller-slices",
                    CONTROLLER_SLICES,
                    client.DiscoveryV1Api(self._api).list_endpoint_slice_for_all_namespaces,
                    self._on_controller_slices,
                    self._on_controller_slice_event,
                )
            )
            watches.append(
                (
                    "operator-services",
                    "",
                    core.list_service_for_all_namespaces,
                    self._on_operator_services,
                    self._on_operator_service_event,
                )
            )
        if self.serve_load_balancers:
            watches.append(
                (
                    "services",
                    self.label,
                    core.list_service_for_all_namespaces,
                    self._on_services,
                    self._on_service_event,
                )
            )
        synced = []
        for what, selector, list_call, on_listing, on_event in watches:
            done = asyncio.Event()
            synced.append(done)
            self._watchers.append(
                asyncio.create_task(
                    self._watch_forever(what, selector, list_call, on_listing, on_event, done),
                    name=f"relay-runner-watch-{what}",
                )
            )
        await asyncio.wait_for(asyncio.gather(*(done.wait() for done in synced)), timeout=30)

    async def stop(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        for watcher in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await asyncio.gather(*self._terminating, *(self._stop_pod(uid) for uid in list(self.pods)))
        if self._api:
            with contextlib.suppress(ApiException):
                await self._confirm_owned_deletions()
            await self._api.close()

    async def _confirm_owned_deletions(self) -> None:
        """The deletions of pods of its own that are still pending (their containers are
        stopped now): confirmed on the way out, as nothing else ever would."""
        core = client.CoreV1Api(self._api)
        owned = await core.list_pod_for_all_namespaces(label_selector=KUBELET_SELECTOR)
        for pod in owned.items:
            if pod.metadata.deletion_timestamp is not None and pod.spec.node_name:
                await self._confirm_deletion(pod)

    def address_of(self, relay: str) -> str:
        """The loopback address of a relay (the value of its pod's relay label)."""
        if relay not in self._addresses:
            self._addresses[relay] = str(self._next_address)
            self._next_address += 1
        return self._addresses[relay]

    def serve_service(self, namespace: str, name: str, address: str) -> None:
        """Stand in for cluster DNS: in pods started from now on, Service `name` of
        `namespace` by its DNS name (`<name>.<namespace>.svc`, `...svc.cluster.local`) is
        `address` (where the test runs what the Service's pods would serve)."""
        self._service_addresses[(namespace, name)] = address

    def client_pod(self, namespace: str, tunnel: str) -> RunningPod | None:
        """The running frpc pod of an InCluster Tunnel."""
        return self.pod_for(client_key(namespace, tunnel))

    def client_logs(self, namespace: str, tunnel: str) -> str:
        """The logs of an InCluster Tunnel's frpc pod, for test failure messages."""
        return self.logs(client_key(namespace, tunnel))

    def operator_pods(self) -> list[RunningPod]:
        """The operator's pods the runner runs (operator_selector)."""
        return [pod for pod in self.pods.values() if pod.operator and not pod.stopping]

    def pod_for(self, relay: str) -> RunningPod | None:
        for pod in self.pods.values():
            if pod.relay == relay and not pod.stopping:
                return pod
        return None

    def logs(self, relay: str) -> str:
        """All container logs of a relay's current pod (or of an operator pod, by
        namespace/name), for test failure messages."""
        pod = self.pod_for(relay)
        if pod is None:
            return f"(no running pod for relay {relay})"
        parts = []
        for c in pod.containers:
            text = c.log_path.read_text(errors="replace") if c.log_path.exists() else ""
            parts.append(f"--- {pod.name}/{c.name} (restarts: {c.restarts})\n{text}")
        return "\n".join(parts)

    async def hold_down(self, relay: str) -> None:
        """A pod outage that lasts: stop the relay's containers and keep them down, also in
        pods of the relay created later, and report the pod not ready (Ready and
        ContainersReady False, no container ready), as a kubelet does after failed readiness
        probes. Returns once the processes are gone and the API reports the pod not ready."""
        self._held.add(relay)
        pod = self.pod_for(relay)
        if pod is None:
            return
        pod.held = True
        pod.readiness = False
        pod.halted.set()
        await asyncio.gather(*(_terminate(c) for c in pod.containers))
        # A supervisor that was starting a process when held stops that process itself.
        supervisors = [c.supervisor for c in pod.containers if c.supervisor]
        await asyncio.gather(*supervisors, return_exceptions=True)
        await self._sync_readiness(pod)
        log.info("holding down relay %s (pod %s)", relay, pod.name)

    async def bring_up(self, relay: str, timeout: float = 60) -> None:
        """End a hold_down: run the relay's containers again and, once their readiness probes
        pass, report the pod ready. TimeoutError (with the containers' logs) if they do not
        pass within `timeout` seconds."""
        self._held.discard(relay)
        pod = self.pod_for(relay)
        if pod is None:
            return
        pod.held = False
        pod.halted.clear()
        for container in pod.containers:
            if not container.running:
                self._run(pod, container)
        try:
            await asyncio.wait_for(_until_ready(pod), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"relay {relay}: readiness probes failing {timeout}s after bring_up\n"
                + self.logs(relay)
            ) from None
        pod.readiness = True
        await self._sync_readiness(pod)
        log.info("brought up relay %s (pod %s)", relay, pod.name)

    # ---- watching ---------------------------------------------------------------------

    async def _watch_forever(
        self,
        what: str,
        selector: str,
        list_call: Callable[..., Any],
        on_listing: Callable[[list[Any]], Awaitable[None]],
        on_event: Callable[[str, Any], Awaitable[None]],
        synced: asyncio.Event,
    ) -> None:
        """List, then watch from the listing's version; relist when the watch breaks."""
        while True:
            try:
                listing = await list_call(label_selector=selector)
                await on_listing(listing.items)
                synced.set()
                async with watch.Watch() as w:
                    events = w.stream(
                        list_call,
                        label_selector=selector,
                        resource_version=listing.metadata.resource_version,
                        timeout_seconds=300,
                    )
                    async for event in events:
                        await on_event(event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server restarts, a watch expires: relist
                log.warning("%s watch interrupted (%s); relisting", what, exc)
                await asyncio.sleep(1)

    def _pod_listing(
        self, operator: bool, owned: bool = False, client: bool = False
    ) -> Callable[[list[Any]], Awaitable[None]]:
        async def on_listing(pods: list[Any]) -> None:
            for pod in pods:
                await self._on_pod(pod, operator, owned, client)
            listed = {pod.metadata.uid for pod in pods}
            for uid, running in list(self.pods.items()):
                kind = (running.operator, running.owned, running.client)
                if kind == (operator, owned, client) and uid not in listed:
                    await self._stop_pod(uid)

        return on_listing

    def _pod_event_handler(
        self, operator: bool, owned: bool = False, client: bool = False
    ) -> Callable[[str, Any], Awaitable[None]]:
        async def on_event(kind: str, pod: Any) -> None:
            if kind == "DELETED":
                await self._stop_pod(pod.metadata.uid)
            else:
                await self._on_pod(pod, operator, owned, client)

        return on_event

    async def _on_pod(
        self, pod: Any, operator: bool = False, owned: bool = False, client: bool = False
    ) -> None:
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            await self._stop_pod(uid)
            if owned and pod.spec.node_name:
                await self._confirm_deletion(pod)
            return
        if uid in self.pods:
            await self._keep_status(self.pods[uid], pod)
            return
        if not pod.spec.node_name:
            return  # not scheduled yet
        phase = pod.status.phase if pod.status else None
        if phase in TERMINAL_PHASES:  # ended before the runner ran it: nothing to run
            if owned and uid not in self._completed_uids:
                log.warning(
                    "pod %s/%s is %s, but this runner did not run it: an earlier runner did, or "
                    "a kwok that does not leave pods labelled %s alone (a local cluster "
                    "started before hack/cluster.sh said so: restart it, make cluster-down)",
                    pod.metadata.namespace,
                    pod.metadata.name,
                    phase,
                    KUBELET_SELECTOR,
                )
            return
        try:
            await self._start_pod(pod, operator, owned, client)
        except Exception:
            log.exception("cannot run pod %s/%s", pod.metadata.namespace, pod.metadata.name)

    async def _confirm_deletion(self, pod: Any) -> None:
        """A deleted pod whose containers are stopped is removed, as a kubelet confirms a
        graceful deletion (grace period 0)."""
        core = client.CoreV1Api(self._api)
        with contextlib.suppress(ApiException):  # gone already
            await core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                ),
            )

    async def _keep_status(self, running: RunningPod, pod: Any) -> None:
        """What the runner reports stays reported: kwok's pod-ready stage, which runs while a
        pod is Pending, may land after the runner's own report and write its fake IP and
        Ready over it."""
        if running.stopping:
            return
        labels = dict(pod.metadata.labels or {})
        if running.operator and labels != running.labels:
            # A relabelled pod (the leader's tunnelop.dev/role) joins or leaves the Services
            # that select it, as with the endpoint slice controller.
            running.labels = labels
            await self._sync_endpoints(running.namespace)
        if (pod.status.pod_ip if pod.status else None) != running.address:
            await self._report_pod_ip(pod, running.address)
        if running.readiness is not None:
            await self._sync_readiness(running)

    async def _on_services(self, services: list[Any]) -> None:
        for service in services:
            await self._on_service(service)

    async def _on_service_event(self, kind: str, service: Any) -> None:
        if kind != "DELETED":
            await self._on_service(service)

    async def _on_service(self, service: Any) -> None:
        """A relay's LoadBalancer Service gets the relay's address, as MetalLB gives one."""
        meta = service.metadata
        if service.spec.type != "LoadBalancer" or meta.deletion_timestamp is not None:
            return
        address = self.address_of((meta.labels or {}).get(self.label) or meta.name)
        balancer = service.status.load_balancer if service.status else None
        current = [i.ip for i in (balancer.ingress if balancer else None) or []]
        patch = _load_balancer_status(current, address)
        if patch is None:
            return
        core = client.CoreV1Api(self._api)
        try:
            # A merge patch replaces the ingress list as a whole.
            await core.patch_namespaced_service_status(
                meta.name, meta.namespace, patch, _content_type="application/merge-patch+json"
            )
        except ApiException as exc:
            log.warning("cannot set the address of Service %s: %s", meta.name, exc.reason)
            return
        log.info("load balancer address %s for Service %s/%s", address, meta.namespace, meta.name)

    # ---- the endpoints of the operator's Services ---------------------------------------

    async def _on_operator_services(self, services: list[Any]) -> None:
        self._services.clear()
        for service in services:
            await self._on_operator_service_event("ADDED", service)

    async def _on_operator_service_event(self, kind: str, service: Any) -> None:
        key = (service.metadata.namespace, service.metadata.name)
        if kind == "DELETED":  # its EndpointSlice goes with it (owner reference)
            self._services.pop(key, None)
            self._served.discard(key)
            return
        self._services[key] = self._api.sanitize_for_serialization(service)
        await self._sync_endpoints(key[0], key[1])

    async def _sync_endpoints(self, namespace: str, only: str | None = None) -> None:
        """Write the EndpointSlice of each Service of `namespace` that selects operator
        pods: the endpoint slice controller cannot (the API server refuses loopback
        addresses in an IPv4 slice), so the runner writes an FQDN slice whose "names" are
        the pods' addresses. The API server routes a webhook's Service reference through it
        when it runs with --enable-aggregator-routing (else it dials the cluster IP)."""
        discovery = client.DiscoveryV1Api(self._api)
        for (service_namespace, name), service in list(self._services.items()):
            if service_namespace != namespace or (only is not None and name != only):
                continue
            pods = [p for p in self.operator_pods() if p.namespace == namespace]
            body = _endpoint_slice(service, pods)
            if body is None:
                if (namespace, name) in self._served:  # its last pod is gone
                    self._served.discard((namespace, name))
                    with contextlib.suppress(ApiException):
                        await discovery.delete_namespaced_endpoint_slice(
                            _slice_name(name), namespace
                        )
                continue
            self._served.add((namespace, name))
            try:
                await discovery.patch_namespaced_endpoint_slice(
                    body["metadata"]["name"],
                    namespace,
                    body,
                    field_manager="relay-runner",
                    force=True,
                    _content_type="application/apply-patch+yaml",
                )
                await self._drop_stale_controller_slices(namespace, name)
            except ApiException as exc:
                log.warning("cannot write the endpoints of Service %s: %s", name, exc.reason)

    async def _on_controller_slices(self, slices: list[Any]) -> None:
        for endpoint_slice in slices:
            await self._on_controller_slice_event("ADDED", endpoint_slice)

    async def _on_controller_slice_event(self, kind: str, endpoint_slice: Any) -> None:
        """The controller may write its slice again from a new pod's kwok IP (before the
        runner reported the pod's address): dropped again."""
        meta = endpoint_slice.metadata
        service = (meta.labels or {}).get("kubernetes.io/service-name")
        if kind != "DELETED" and (meta.namespace, service) in self._served:
            with contextlib.suppress(ApiException):
                await self._drop_stale_controller_slices(meta.namespace, service)

    async def _drop_stale_controller_slices(self, namespace: str, service: str) -> None:
        """The endpoint slice controller's own slice of the Service holds kwok's fake pod
        IPs, written before the runner reported the pods' addresses (later updates fail:
        loopback). The API server prefers that slice (the Service's IP family), and would
        call an address nothing serves: delete it while it has a ready endpoint (the
        controller cannot write it again while the pods' IPs are loopback ones)."""
        discovery = client.DiscoveryV1Api(self._api)
        selector = f"kubernetes.io/service-name={service},{CONTROLLER_SLICES}"
        slices = await discovery.list_namespaced_endpoint_slice(namespace, label_selector=selector)
        for stale in slices.items:
            if any(
                e.conditions is None or e.conditions.ready is not False
                for e in stale.endpoints or []
            ):
                with contextlib.suppress(ApiException):
                    await discovery.delete_namespaced_endpoint_slice(stale.metadata.name, namespace)
                log.info(
                    "deleted the stale EndpointSlice %s of Service %s", stale.metadata.name, service
                )

    # ---- running a pod ----------------------------------------------------------------

    async def _start_pod(
        self, pod: Any, operator: bool = False, owned: bool = False, client: bool = False
    ) -> None:
        meta = pod.metadata
        # An operator pod's address is its own (a replica's pods never share one); a client
        # pod's is its tunnel's (a rolled pod takes its predecessor's).
        if client:
            relay = client_key(meta.namespace, (meta.labels or {}).get(TUNNEL_LABEL, meta.name))
        elif operator or owned:
            relay = f"{meta.namespace}/{meta.name}"
        else:
            relay = (meta.labels or {}).get(self.label) or meta.name
        address = self.address_of(relay)
        root = self.workdir / f"{meta.namespace}.{meta.name}.{meta.uid[:8]}"
        root.mkdir(parents=True, exist_ok=True)
        running = RunningPod(meta.uid, meta.namespace, meta.name, relay, address, root)
        running.labels = dict(meta.labels or {})
        if operator:
            grace = pod.spec.termination_grace_period_seconds
            running.grace = float(30 if grace is None else min(grace, 30))
        running.owned = owned
        running.client = client
        running.restart_policy = pod.spec.restart_policy or "Always"
        running.ports = {
            p.name: p.container_port
            for spec in pod.spec.containers
            for p in spec.ports or []
            if p.name
        }
        if operator:  # not ready until its readiness probes say so, as with a kubelet
            running.operator = True
            running.readiness = False
        elif relay in self._held:  # a new pod of a held relay (its Deployment re-created it)
            running.held = True
            running.readiness = False
        self.pods[meta.uid] = running

        mounts_by_volume = await self._materialize_volumes(pod, root, address)
        running.token_refresher = asyncio.create_task(
            self._refresh_tokens(pod, mounts_by_volume), name=f"{meta.name}/tokens"
        )
        for spec in pod.spec.containers:
            binary = self.image_map(spec.image)
            if binary is None:
                log.warning(
                    "no local binary for image %s; container %s skipped", spec.image, spec.name
                )
                continue
            path_map = {
                m.mount_path: str(mounts_by_volume[m.name])
                for m in spec.volume_mounts or []
                if m.name in mounts_by_volume
            }
            # A pod's localhost (and its every address) is its own; here its own is its
            # loopback address.
            path_map[LOCALHOST] = path_map[ANY_ADDRESS] = address
            env = await self._container_env(pod, spec, address, path_map)
            argv = _argv(binary, spec.command, spec.args)
            args = [self._rewrite_for_pod(_expand(a, env), path_map) for a in argv[1:]]
            argv = [argv[0], *args]
            unserved = _unserved_services([*argv[1:], *env.values()], self._service_addresses)
            if unserved:
                log.warning(
                    "pod %s/%s: container %s names Service(s) %s, which serve_service gave no "
                    "address: there is no cluster DNS here",
                    meta.namespace,
                    meta.name,
                    spec.name,
                    ", ".join(unserved),
                )
            if operator and not _names_token_dir(spec):
                log.warning(
                    "pod %s: container %s mounts its ServiceAccount token at %s, but no arg "
                    "names that path: here it is at %s (pass --service-account-dir)",
                    meta.name,
                    spec.name,
                    SERVICE_ACCOUNT_DIR,
                    path_map.get(SERVICE_ACCOUNT_DIR),
                )
            container = Container(spec.name, argv, env, root / f"{spec.name}.log", image=spec.image)
            try:
                container.readiness = _readiness_check(self._api.sanitize_for_serialization(spec))
            except ValueError as exc:
                log.warning("pod %s: %s; bring_up will not wait for it", meta.name, exc)
            running.containers.append(container)
            if running.may_run:
                self._run(running, container)
        await self._report_pod_ip(pod, address)
        if owned:
            await self._report_running(running)
        await self._sync_readiness(running)
        if operator:
            running.prober = asyncio.create_task(
                self._probe_forever(running), name=f"{meta.name}/readiness"
            )
            await self._sync_endpoints(meta.namespace)
        log.info(
            "%s pod %s/%s for %s on %s",
            "running" if running.may_run else "holding down",
            meta.namespace,
            meta.name,
            relay,
            address,
        )

    async def _report_pod_ip(self, pod: Any, address: str) -> None:
        """Report the relay's address as the pod's IP, as a kubelet reports the IP it gave the
        pod: whoever reaches the pod by its IP (the operator scraping the agent) reaches the
        processes run here. kwok's fake IP is replaced; kwok does not set it again."""
        core = client.CoreV1Api(self._api)
        status: dict[str, Any] = {"podIP": address, "podIPs": [{"ip": address}]}
        if pod.spec.host_network:  # the API server wants the pod IP to be the host's then
            status.update(hostIP=address, hostIPs=[{"ip": address}])
        body = {"status": status}
        try:
            # A merge patch replaces the IP lists (a strategic one would merge them by ip).
            await core.patch_namespaced_pod_status(
                pod.metadata.name,
                pod.metadata.namespace,
                body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            log.warning("cannot report the IP of pod %s: %s", pod.metadata.name, exc.reason)

    def _run(self, pod: RunningPod, container: Container) -> None:
        container.supervisor = asyncio.create_task(
            self._supervise(pod, container), name=f"{pod.name}/{container.name}"
        )

    async def _supervise(self, pod: RunningPod, container: Container) -> None:
        """Run a container and restart it when it exits, with a capped back-off."""
        backoff = 0.5
        while pod.may_run:
            with container.log_path.open("ab") as out:
                container.process = await asyncio.create_subprocess_exec(
                    *container.argv,
                    env=container.env,
                    cwd=pod.root,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as a whole
                    preexec_fn=tools.die_with_parent,  # no container outlives the runner
                )
            container.started_at = _now()
            if not pod.may_run:  # stopped or held while the process started
                await _terminate(container)
                return
            code = await container.process.wait()
            if not pod.may_run:
                return
            if not _runs_again(pod.restart_policy, code):
                container.exit_code, container.finished_at = code, _now()
                log.info("%s/%s exited with %s; done", pod.name, container.name, code)
                await self._report_completion(pod)
                return
            container.restarts += 1
            log.warning("%s/%s exited with %s; restarting", pod.name, container.name, code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pod.halted.wait(), backoff)
            backoff = min(backoff * 2, 10)

    async def _report_running(self, pod: RunningPod) -> None:
        """A pod of the runner's own (KUBELET_SELECTOR) reported Running, its containers
        started and ready, as a kubelet does once it has started them."""
        core = client.CoreV1Api(self._api)
        async with pod.status_lock:  # a container that ended already reported the end
            if pod.uid in self._completed_uids:
                return
            try:
                await core.patch_namespaced_pod_status(
                    pod.name,
                    pod.namespace,
                    {"status": _running_status(pod.containers, _now())},
                    _content_type="application/strategic-merge-patch+json",
                )
            except ApiException as exc:
                log.warning("cannot report pod %s running: %s", pod.name, exc.reason)

    async def _report_completion(self, pod: RunningPod) -> None:
        """Once every container of the pod has ended for good: the pod Succeeded (all
        exited 0) or Failed, each container terminated with its exit code, as a kubelet
        reports it (a Job's controller counts the pod then)."""
        if pod.stopping or any(c.exit_code is None for c in pod.containers):
            return
        status = _completed_status(pod.containers, _now())
        core = client.CoreV1Api(self._api)
        async with pod.status_lock:
            try:
                await core.patch_namespaced_pod_status(
                    pod.name,
                    pod.namespace,
                    {"status": status},
                    _content_type="application/strategic-merge-patch+json",
                )
            except ApiException as exc:
                log.warning("cannot report the end of pod %s: %s", pod.name, exc.reason)
            self._completed_uids.add(pod.uid)
        self.completions.append(
            Completion(
                pod.namespace,
                pod.name,
                status["phase"],
                {c.name: c.exit_code for c in pod.containers if c.exit_code is not None},
                {c.name: c.log_path for c in pod.containers},
            )
        )
        log.info("pod %s/%s %s", pod.namespace, pod.name, status["phase"])

    async def _stop_pod(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is None:
            return
        # Shielded and remembered: a stop() that cancels the watcher in the middle of this
        # still waits for the pod's processes to be gone (they hold the relay's address).
        task = asyncio.ensure_future(self._terminate_pod(pod))
        self._terminating.add(task)
        task.add_done_callback(self._terminating.discard)
        await asyncio.shield(task)
        if pod.operator:
            with contextlib.suppress(ApiException):
                await self._sync_endpoints(pod.namespace)

    async def _terminate_pod(self, pod: RunningPod) -> None:
        pod.stopping = True
        pod.halted.set()
        for task in (pod.token_refresher, pod.prober):
            if task:
                task.cancel()
        await asyncio.gather(*(_terminate(c, pod.grace) for c in pod.containers))
        for c in pod.containers:
            if c.supervisor:
                c.supervisor.cancel()
        shutil.rmtree(pod.root / "volumes", ignore_errors=True)
        log.info("stopped pod %s/%s", pod.namespace, pod.name)

    async def _probe_forever(self, pod: RunningPod) -> None:
        """Probe each container's readinessProbe as a kubelet does, and report the pod ready
        while every one passes (a container without a probe counts as ready)."""
        checks = [c.readiness for c in pod.containers if c.readiness is not None]
        states = [(False, 0)] * len(checks)
        if checks:
            await asyncio.sleep(min(c.initial_delay for c in checks))
        while not pod.stopping:
            results = await asyncio.gather(
                *(_probe(pod.address, c, timeout=c.timeout) for c in checks)
            )
            states = [
                _readiness_after(ready, streak, passed, check)
                for (ready, streak), passed, check in zip(states, results, checks, strict=True)
            ]
            ready = all(r for r, _ in states)
            if ready != pod.readiness:
                pod.readiness = ready
                log.info("pod %s/%s %s", pod.namespace, pod.name, "ready" if ready else "not ready")
                try:
                    await self._sync_readiness(pod)
                    await self._sync_endpoints(pod.namespace)
                except ApiException as exc:
                    log.warning("cannot report the readiness of %s: %s", pod.name, exc.reason)
            await asyncio.sleep(min((c.period for c in checks), default=10))

    async def _sync_readiness(self, pod: RunningPod) -> None:
        """Report the pod's readiness as the runner decided it (pod.readiness), as a kubelet
        reports its probes' results; nothing when the API already says so."""
        if pod.readiness is None:
            return
        core = client.CoreV1Api(self._api)
        async with pod.status_lock:  # one read-then-patch at a time, on the newest decision
            try:
                current = await core.read_namespaced_pod_status(pod.name, pod.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return  # deleted meanwhile
                raise
            status = self._api.sanitize_for_serialization(current.status) or {}
            if status.get("phase") != "Running":
                # kwok's pod-ready stage still owns a Pending pod and would mark it ready
                # after us; its move to Running is an event that brings the runner back here.
                return
            # Held down: not running at all; failing its probes: running, not ready.
            patch = _readiness_status(status, pod.readiness, _now(), running=not pod.held)
            if patch is None:
                return
            await core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                {"status": patch},
                # Strategic: conditions merge by type; containerStatuses is replaced whole.
                _content_type="application/strategic-merge-patch+json",
            )

    # ---- volumes and environment ------------------------------------------------------

    async def _materialize_volumes(self, pod: Any, root: Path, address: str) -> dict[str, Path]:
        core = client.CoreV1Api(self._api)
        ns = pod.metadata.namespace
        out: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            target = root / "volumes" / volume.name
            target.mkdir(parents=True, exist_ok=True)
            files: dict[str, bytes] = {}
            if volume.secret:
                secret = await core.read_namespaced_secret(volume.secret.secret_name, ns)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                files = _select_items(data, volume.secret.items)
            elif volume.config_map:
                cm = await core.read_namespaced_config_map(volume.config_map.name, ns)
                files = _select_items(_config_map_bytes(cm), volume.config_map.items)
            elif volume.projected:
                files = await self._projected(pod, volume.projected)
            elif volume.empty_dir is not None:
                pass
            else:
                log.warning(
                    "volume %s of %s: only secret, configMap, projected and emptyDir are supported",
                    volume.name,
                    pod.metadata.name,
                )
            for rel, content in files.items():
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                path.chmod(0o600)
            out[volume.name] = target
        # Rewrite mount paths inside materialized text files (configs that name other files).
        path_map = {
            m.mount_path: str(out[m.name])
            for spec in pod.spec.containers
            for m in spec.volume_mounts or []
            if m.name in out
        }
        path_map[LOCALHOST] = path_map[ANY_ADDRESS] = address
        for directory in out.values():
            for path in directory.rglob("*"):
                if path.is_file():
                    try:
                        text = path.read_text()
                    except UnicodeDecodeError:
                        continue
                    rewritten = self._rewrite_for_pod(text, path_map)
                    if rewritten != text:
                        path.write_text(rewritten)
        return out

    async def _service_account_token(self, pod: Any, sat: Any) -> bytes:
        """A token bound to the pod, from the TokenRequest API, as the kubelet gets it."""
        core = client.CoreV1Api(self._api)
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[sat.audience] if sat.audience else [],
                expiration_seconds=sat.expiration_seconds or 3600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        )
        token = await core.create_namespaced_service_account_token(
            pod.spec.service_account_name or "default", pod.metadata.namespace, request
        )
        return token.status.token.encode()

    async def _refresh_tokens(self, pod: Any, volumes: dict[str, Path]) -> None:
        """Rewrite projected ServiceAccount tokens before they expire, as the kubelet does
        (at 80% of their lifetime), so a relay that runs for hours keeps its API access."""
        sources = [
            (volumes[v.name], source.service_account_token)
            for v in pod.spec.volumes or []
            if v.projected and v.name in volumes
            for source in v.projected.sources or []
            if source.service_account_token
        ]
        if not sources:
            return
        lifetime = min(sat.expiration_seconds or 3600 for _, sat in sources)
        while True:
            await asyncio.sleep(lifetime * 0.8)
            for directory, sat in sources:
                try:
                    token = await self._service_account_token(pod, sat)
                except ApiException as exc:
                    log.warning("cannot refresh the token of %s: %s", pod.metadata.name, exc)
                    continue
                path = directory / sat.path
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(token)
                tmp.replace(path)

    async def _projected(self, pod: Any, projected: Any) -> dict[str, bytes]:
        core = client.CoreV1Api(self._api)
        ns = pod.metadata.namespace
        files: dict[str, bytes] = {}
        for source in projected.sources or []:
            if source.service_account_token:
                sat = source.service_account_token
                files[sat.path] = await self._service_account_token(pod, sat)
            elif source.config_map:
                try:
                    cm = await core.read_namespaced_config_map(source.config_map.name, ns)
                except ApiException as exc:
                    if exc.status == 404 and source.config_map.optional:
                        continue
                    raise
                files.update(_select_items(_config_map_bytes(cm), source.config_map.items))
            elif source.secret:
                secret = await core.read_namespaced_secret(source.secret.name, ns)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                files.update(_select_items(data, source.secret.items))
            elif source.downward_api:
                for item in source.downward_api.items or []:
                    if item.field_ref:
                        value = _field_value(pod, item.field_ref.field_path, "")
                        files[item.path] = value.encode()
        return files

    async def _container_env(
        self, pod: Any, spec: Any, address: str, path_map: dict[str, str]
    ) -> dict[str, str]:
        core = client.CoreV1Api(self._api)
        ns = pod.metadata.namespace
        # What the kubelet injects; the API server is outside the pod, so not rewritten.
        injected = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "HOSTNAME": pod.metadata.name,
        }
        if self._server:
            injected["KUBERNETES_SERVICE_HOST"] = self._server[0]
            injected["KUBERNETES_SERVICE_PORT"] = str(self._server[1])
        env: dict[str, str] = {}
        for source in spec.env_from or []:
            prefix = source.prefix or ""
            if source.secret_ref:
                secret = await core.read_namespaced_secret(source.secret_ref.name, ns)
                for k, v in (secret.data or {}).items():
                    env[prefix + k] = base64.b64decode(v).decode()
            if source.config_map_ref:
                cm = await core.read_namespaced_config_map(source.config_map_ref.name, ns)
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
        for var in spec.env or []:
            if var.value_from is None:
                env[var.name] = _expand(var.value or "", {**injected, **env})
                continue
            ref = var.value_from
            if ref.field_ref:
                env[var.name] = _field_value(pod, ref.field_ref.field_path, address)
            elif ref.secret_key_ref:
                secret = await core.read_namespaced_secret(ref.secret_key_ref.name, ns)
                raw = (secret.data or {}).get(ref.secret_key_ref.key)
                if raw is not None:
                    env[var.name] = base64.b64decode(raw).decode()
            elif ref.config_map_key_ref:
                cm = await core.read_namespaced_config_map(ref.config_map_key_ref.name, ns)
                value = (cm.data or {}).get(ref.config_map_key_ref.key)
                if value is not None:
                    env[var.name] = value
        return {**injected, **{k: self._rewrite_for_pod(v, path_map) for k, v in env.items()}}

    def _rewrite_for_pod(self, text: str, path_map: dict[str, str]) -> str:
        """Mount paths and the pod's own addresses (_rewrite), then Service DNS names."""
        return _resolve_service_names(_rewrite(text, path_map), self._service_addresses)


# ---- helpers (pure) ------------------------------------------------------------------


def _argv(binary: Path, command: list[str] | None, args: list[str] | None) -> list[str]:
    """The image's entry point is the local binary; an explicit command names it again."""
    if command:
        return [str(binary), *command[1:], *(args or [])]
    return [str(binary), *(args or [])]


def _rewrite(text: str, path_map: dict[str, str]) -> str:
    # Longest mount path first, so /etc/frp/tls wins over /etc/frp. A rewritten path is held
    # as a placeholder until the end, so that no shorter mount rewrites it again (a mount at
    # /tmp would else rewrite the local path of every other mount under /tmp).
    placeholders: dict[str, str] = {}
    for mount in sorted(path_map, key=len, reverse=True):
        if mount == LOCALHOST:
            # The whole address only: 127.0.0.160 (a relay's own address) stays as it is.
            text = LOCALHOST_PATTERN.sub(path_map[mount], text)  # an IPv4 address: no escapes
        elif mount == ANY_ADDRESS:
            text = ANY_ADDRESS_PATTERN.sub(path_map[mount], text)
        elif mount in text:
            placeholder = f"\0{len(placeholders)}\0"
            placeholders[placeholder] = path_map[mount]
            text = text.replace(mount, placeholder)
    for placeholder, path in placeholders.items():
        text = text.replace(placeholder, path)
    return text


def client_key(namespace: str, tunnel: str) -> str:
    """What the runner keeps an InCluster Tunnel's frpc pods (and their address) under."""
    return f"client:{namespace}/{tunnel}"


def _resolve_service_names(text: str, addresses: dict[tuple[str, str], str]) -> str:
    """Each Service's cluster DNS name in `text` (`<name>.<namespace>.svc`, optionally
    `.cluster.local`; whole names only) replaced by its address in `addresses`, as cluster
    DNS would resolve it. Done after the pod's own addresses are rewritten, so that a
    Service served on 127.0.0.1 stays there."""
    for (namespace, name), address in addresses.items():
        pattern = (
            rf"(?<![A-Za-z0-9.-]){re.escape(name)}\.{re.escape(namespace)}\.svc"
            r"(\.cluster\.local)?(?!\.?[A-Za-z0-9-])"
        )
        text = re.sub(pattern, address, text)
    return text


def _unserved_services(texts: list[str], addresses: dict[tuple[str, str], str]) -> list[str]:
    """The Service DNS names in `texts` that `addresses` has no address for."""
    found = {
        f"{m.group(3)}/{m.group(1)}"
        for text in texts
        for m in SERVICE_NAME_PATTERN.finditer(text)
        if (m.group(3), m.group(1)) not in addresses
    }
    return sorted(found)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values."""
    for name, replacement in env.items():
        value = value.replace(f"$({name})", replacement)
    return value


def _select_items(data: dict[str, bytes], items: list[Any] | None) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {item.path: data[item.key] for item in items if item.key in data}


def _config_map_bytes(cm: Any) -> dict[str, bytes]:
    data = {k: v.encode() for k, v in (cm.data or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
    return data


def _field_value(pod: Any, field_path: str, address: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name or "",
        "spec.serviceAccountName": pod.spec.service_account_name or "",
        "status.podIP": address,
        "status.podIPs": address,
        "status.hostIP": address,
    }
    if field_path in simple:
        return simple[field_path]
    for prefix, mapping in (
        ("metadata.labels", meta.labels),
        ("metadata.annotations", meta.annotations),
    ):
        if field_path.startswith(prefix + "['"):
            key = field_path[len(prefix) + 2 : -2]
            return (mapping or {}).get(key, "")
    return ""


def _load_balancer_status(current_ips: list[str | None], address: str) -> dict[str, Any] | None:
    """The Service status patch that gives it `address` as its one ingress, or None when it
    has that already."""
    if current_ips == [address]:
        return None
    return {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}


def _readiness_check(container: dict[str, Any]) -> ReadinessCheck | None:
    """A container's readinessProbe (a serialized V1Container) as the runner performs it;
    None without a probe, or with an exec or grpc one, which the runner cannot perform."""
    probe = container.get("readinessProbe") or {}
    if "tcpSocket" in probe:
        port, path, https = probe["tcpSocket"]["port"], None, False
    elif "httpGet" in probe:
        get = probe["httpGet"]
        port, path, https = get["port"], get.get("path") or "/", get.get("scheme") == "HTTPS"
    else:
        return None
    timing = {
        name: probe[field]
        for name, field in (
            ("initial_delay", "initialDelaySeconds"),
            ("period", "periodSeconds"),
            ("timeout", "timeoutSeconds"),
            ("success_threshold", "successThreshold"),
            ("failure_threshold", "failureThreshold"),
        )
        if probe.get(field) is not None
    }
    if isinstance(port, int) or str(port).isdigit():
        return ReadinessCheck(int(port), path, https, **timing)
    named = {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}
    if port not in named:
        raise ValueError(
            f"readinessProbe of container {container.get('name')}: port {port!r} is neither "
            f"a number nor one of its named ports ({', '.join(sorted(named)) or 'none'})"
        )
    return ReadinessCheck(named[port], path, https, **timing)


def _readiness_status(
    status: dict[str, Any], ready: bool, now: str, running: bool | None = None
) -> dict[str, Any] | None:
    """The pod status patch (strategic merge) that reports the pod's containers `ready` or
    not, as a kubelet does after its readiness probes: the Ready and ContainersReady
    conditions, and each container's ready, started and state. A not-ready pod's containers
    are running (failing readiness probes) or not (held down: the default when not ready).
    None when `status` (a serialized V1PodStatus) reports that already."""
    running = ready if running is None else running
    wanted = "True" if ready else "False"
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    statuses = status.get("containerStatuses") or []
    if (
        all(conditions.get(t, {}).get("status") == wanted for t in POD_READY_CONDITIONS)
        and all(s.get("ready") is ready for s in statuses)
        and all(("running" in (s.get("state") or {})) is running for s in statuses)
    ):
        return None
    unready = " ".join(s["name"] for s in statuses)
    patch_conditions = []
    for type_ in POD_READY_CONDITIONS:
        old = conditions.get(type_, {})
        unchanged = old.get("status") == wanted and old.get("lastTransitionTime")
        patch_conditions.append(
            {
                "type": type_,
                "status": wanted,
                "lastProbeTime": None,
                "lastTransitionTime": old["lastTransitionTime"] if unchanged else now,
                # null removes a not-ready reason and message in a strategic merge patch.
                "reason": None if ready else "ContainersNotReady",
                "message": None if ready else f"containers with unready status: [{unready}]",
            }
        )
    return {
        "conditions": patch_conditions,
        "containerStatuses": [_container_status(s, ready, running, now) for s in statuses],
    }


def _container_status(old: dict[str, Any], ready: bool, running: bool, now: str) -> dict[str, Any]:
    status = {k: v for k, v in old.items() if k not in ("ready", "started", "state")}
    was_running = "running" in (old.get("state") or {})
    if running and was_running:
        state: dict[str, Any] = old["state"]
    elif running:
        state = {"running": {"startedAt": now}}
        # It comes back: one more restart, as the kubelet counts them.
        status["restartCount"] = old.get("restartCount", 0) + 1
    else:
        reason = {"reason": "CrashLoopBackOff", "message": "held down by the relay-pod runner"}
        state = {"waiting": reason}
    return {**status, "ready": ready, "started": running, "state": state}


def _runs_again(restart_policy: str, exit_code: int) -> bool:
    """Whether a kubelet restarts a container that exited with `exit_code`."""
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return exit_code != 0
    return True  # Always


def _running_status(containers: list[Container], now: str) -> dict[str, Any]:
    """The status (a strategic merge patch: conditions merge by type) of a pod whose
    containers the runner has just started: Running, initialized, each container running
    and ready (no readiness probe is performed for such a pod)."""
    conditions = [
        {"type": type_, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
        for type_ in ("Initialized", *POD_READY_CONDITIONS)
    ]
    return {
        "phase": "Running",
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": c.restarts,
                "state": {"running": {"startedAt": c.started_at or now}},
            }
            for c in containers
        ],
    }


def _completed_status(containers: list[Container], now: str) -> dict[str, Any]:
    """The status (a strategic merge patch) of a pod whose containers have all ended for
    good: Succeeded when each exited 0, else Failed; not ready (reason PodCompleted); each
    container terminated with its exit code (reason Completed for 0, else Error), as a
    kubelet reports it."""
    succeeded = all(c.exit_code == 0 for c in containers)
    conditions = [
        {
            "type": type_,
            "status": "False",
            "reason": "PodCompleted",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
        for type_ in POD_READY_CONDITIONS
    ]
    return {
        "phase": "Succeeded" if succeeded else "Failed",
        "conditions": conditions,
        "containerStatuses": [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": c.restarts,
                "state": {
                    "terminated": {
                        "exitCode": c.exit_code,
                        "reason": "Completed" if c.exit_code == 0 else "Error",
                        "startedAt": c.started_at or now,
                        "finishedAt": c.finished_at or now,
                    }
                },
            }
            for c in containers
        ],
    }


ENDPOINT_SLICE_MANAGER = "relay-runner.tunnelop.test"
CONTROLLER_SLICES = "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"


def _endpoint_slice(service: dict[str, Any], pods: list[RunningPod]) -> dict[str, Any] | None:
    """The EndpointSlice (FQDN type, each pod's loopback address as its name) of `service`
    (a serialized V1Service) for the operator `pods` its selector matches, each ready as
    the runner reports it; None for a Service without a selector, of another kind, or that
    selects none of them."""
    spec, meta = service.get("spec") or {}, service["metadata"]
    selector = spec.get("selector") or {}
    if not selector or spec.get("type") == "ExternalName":
        return None
    chosen = [p for p in pods if selector.items() <= p.labels.items() and not p.stopping]
    if not chosen:
        return None
    ports = []
    for port in spec.get("ports") or []:
        target = port.get("targetPort", port["port"])
        if not isinstance(target, int) and not str(target).isdigit():
            target = next((p.ports[target] for p in chosen if target in p.ports), None)
            if target is None:
                continue  # no pod names that port: no endpoint for it
        # The API server matches a slice port to the Service's by name, "" when unnamed.
        ports.append(
            {
                "name": port.get("name") or "",
                "port": int(target),
                "protocol": port.get("protocol", "TCP"),
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": _slice_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                "kubernetes.io/service-name": meta["name"],
                "endpointslice.kubernetes.io/managed-by": ENDPOINT_SLICE_MANAGER,
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta["uid"]}
            ],
        },
        "addressType": "FQDN",
        "ports": ports,
        "endpoints": [
            {
                "addresses": [p.address],
                "conditions": {"ready": p.readiness is True},
                "targetRef": {
                    "kind": "Pod",
                    "namespace": p.namespace,
                    "name": p.name,
                    "uid": p.uid,
                },
            }
            for p in sorted(chosen, key=lambda p: p.name)
        ],
    }


def _slice_name(service: str) -> str:
    return f"{service}-relay-runner"


def _readiness_after(
    ready: bool, streak: int, passed: bool, check: ReadinessCheck
) -> tuple[bool, int]:
    """A kubelet's count of probe results: a not-ready container turns ready after
    successThreshold passes in a row, a ready one unready after failureThreshold failures in
    a row. (ready, streak), where streak counts the results in a row that disagree with
    ready."""
    if passed == ready:
        return ready, 0
    threshold = check.success_threshold if passed else check.failure_threshold
    if streak + 1 >= threshold:
        return passed, 0
    return ready, streak + 1


def _names_token_dir(container: Any) -> bool:
    """Whether the container can find its ServiceAccount token here: it mounts none at the
    usual place, or names that place in its command, args or env (which the runner
    rewrites to where the token is)."""
    mounted = any(m.mount_path == SERVICE_ACCOUNT_DIR for m in container.volume_mounts or [])
    named = [*(container.command or []), *(container.args or [])]
    named += [v.value or "" for v in container.env or []]
    return not mounted or any(SERVICE_ACCOUNT_DIR in value for value in named)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _until_ready(pod: RunningPod, interval: float = 0.3) -> None:
    """Until every container's readiness probe passes (as the kubelet probes, from outside
    the pod, at the pod's address)."""
    checks = [c.readiness for c in pod.containers if c.readiness is not None]
    while True:
        if all(await asyncio.gather(*(_probe(pod.address, c) for c in checks))):
            return
        await asyncio.sleep(interval)


async def _probe(address: str, check: ReadinessCheck, timeout: float = 2.0) -> bool:
    tls = None
    if check.https:  # the kubelet does not verify a probe's certificate
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, check.port, ssl=tls), timeout
        )
    except (OSError, TimeoutError):
        return False
    try:
        if check.path is None:
            return True
        writer.write(f"GET {check.path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        status_line = (await asyncio.wait_for(reader.readline(), timeout)).split()
        code = status_line[1] if len(status_line) >= 2 else b""
        return code.isdigit() and 200 <= int(code) < 400
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def _terminate(container: Container, grace: float = 5.0) -> None:
    if container.process is not None:
        await tools.terminate_group(container.process, grace)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=tools.KUBECONFIG)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay-runner %(message)s")
    runner = RelayPodRunner(args.kubeconfig, args.workdir)
    await runner.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.stop()


if __name__ == "__main__":
    asyncio.run(_main())
