"""`make demo`: tunnelop end to end on this machine, told as a story of steps.

hack/demo.sh has started the local cluster. From there this script installs tunnelop with
Helm as a provider installs it (hack/demo_helm.py): the chart's CRDs, RBAC, webhooks and two
operator replicas, whose pods the relay-pod runner runs as local processes from the image
with their ServiceAccount's token, so the chart's RBAC is what the operator gets. Once one
replica leads, it creates two RelayNodes whose pods the runner runs too (frps and the relay
agent, each relay on its own loopback address), starts two local services (a small HTTP site
and a TCP echo), applies a Tunnel for each, runs frpc from each Tunnel's credentials Secret
as it is (the local port in its environment, TUNNELOP_LOCAL_PORT), sends visitor traffic
through the relays and shows the Tunnels' endpoints, client connection and metered traffic.

Then it keeps running until Ctrl-C (or, with --check, verifies what it saw and prints the
figures), and stops and deletes everything it started or created, in reverse order: the
Tunnels and RelayNodes while the operator still runs (it releases their finalizers), then
`helm uninstall`.

Run it through `make demo` (or `make demo CHECK=1`); it needs PYTHONPATH=tests to reuse the
test support code (tests/support).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import demo_helm
from demo_helm import (
    CREATED_LABEL,
    DEMO_VALUES,
    LEASE,
    OPERATOR_SELECTOR,
    RELAY_NAMESPACE,
    RELEASE,
    RELEASE_NAMESPACE,
    TRAFFIC_INTERVAL,
)
from kubernetes.aio import client, config, watch
from kubernetes.aio.client.exceptions import ApiException

from support import objects, tools
from support.dataplane import Frpc, http_site, served_http, start_relay, until_closed
from support.netutil import echo_once, echo_server, wait_for_echo
from support.operator import delete_webhook_configurations, operator_pods
from support.operator import leader as leading_pod
from support.relay_runner import RelayPodRunner
from tunnelop.contract.naming import FINALIZER_POLICY, PLUGIN_PORT

NAMESPACE = "tunnelop-demo"  # the tenant's namespace: the demo's Tunnels and their Secrets
FIRST_ADDRESS = "127.0.100.2"  # pods get 127.0.100.2, .3, ...: apart from the tests' 127.0.0.x
HTTP_DOMAIN = "tunnels.demo.test"
GROUP, VERSION = objects.GROUP_VERSION.split("/")

LEADER_TIMEOUT = 120
READY_TIMEOUT = 60
VISITOR_TIMEOUT = 30
METERING_TIMEOUT = 45

SITE_BODY = "<h1>Hello from a web site on this machine, served through tunnelop</h1>\n"
ECHO_LINE = b"hello through the relay\n"
ECHO_BULK = os.urandom(64 * 1024)

# (name, protocols, httpDomain or None) of the demo's RelayNodes.
RELAYS = [
    ("demo-web", ["http"], HTTP_DOMAIN),
    ("demo-tcp", ["tcp", "udp"], None),
]
RELAY_PORTS = "20000-20099"

TUNNELS_YAML = f"""\
apiVersion: tunnelop.dev/v1alpha1
kind: Tunnel
metadata:
  name: web
spec:
  protocol: http
  subdomain: web     # visitors open http://web.{HTTP_DOMAIN}
---
apiVersion: tunnelop.dev/v1alpha1
kind: Tunnel
metadata:
  name: echo
spec:
  protocol: tcp      # visitors connect to <relay address>:<allocated port>
"""
TUNNELS = ["web", "echo"]


class DemoFailed(Exception):
    """Something the demo shows did not happen; the message says what."""


# ---- output ---------------------------------------------------------------------------------


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def say(text: str = "", indent: int = 4) -> None:
    print(textwrap.indent(text.rstrip("\n"), " " * indent) if text else "", flush=True)


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def kubectl_shown(*args: str) -> None:
    """Run kubectl and print the command and its output, as a user would see them."""
    say(f"$ kubectl {shlex.join(args)}")
    result = tools.kubectl(*args, check=False)
    say(result.stdout + result.stderr)


# ---- the Tunnels as the API server reports them, as it happens ------------------------------


@dataclass
class TunnelWatch:
    """Watches the demo's Tunnels and remembers when each first reached a milestone:
    "ready" (Ready=True), "connected" (ClientConnected=True), "metered" (status.traffic
    bytesIn and bytesOut both above zero)."""

    api: client.ApiClient
    namespace: str
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    first: dict[str, dict[str, float]] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        args = (GROUP, VERSION, self.namespace, "tunnels")
        while True:
            try:
                listing = await custom.list_namespaced_custom_object(*args)
                for item in listing["items"]:
                    await self._seen(item)
                async with watch.Watch() as w:
                    version = listing["metadata"]["resourceVersion"]
                    stream = w.stream(
                        custom.list_namespaced_custom_object,
                        *args,
                        resource_version=version,
                        timeout_seconds=300,
                    )
                    async for event in stream:
                        if event["type"] in ("ADDED", "MODIFIED"):
                            await self._seen(event["object"])
                        elif event["type"] == "DELETED":  # an earlier run's, deleted first
                            self._forget(event["object"])
            except asyncio.CancelledError:
                raise
            except Exception:  # an expired watch, a restarting API server: list again
                await asyncio.sleep(1)

    def _forget(self, tunnel: dict[str, Any]) -> None:
        name = tunnel["metadata"]["name"]
        if _uid(self.latest.get(name)) == _uid(tunnel):
            self.latest.pop(name, None)
            self.first.pop(name, None)

    async def _seen(self, tunnel: dict[str, Any]) -> None:
        name = tunnel["metadata"]["name"]
        now = time.monotonic()
        if _uid(self.latest.get(name)) not in (None, _uid(tunnel)):  # the same name, anew
            self.first.pop(name, None)
        self.latest[name] = tunnel
        firsts = self.first.setdefault(name, {})
        traffic = (tunnel.get("status") or {}).get("traffic") or {}
        reached = {
            "ready": _condition_true(tunnel, "Ready"),
            "connected": _condition_true(tunnel, "ClientConnected"),
            "metered": (traffic.get("bytesIn") or 0) > 0 and (traffic.get("bytesOut") or 0) > 0,
        }
        for milestone, yes in reached.items():
            if yes:
                firsts.setdefault(milestone, now)
        async with self._changed:
            self._changed.notify_all()

    async def reached(self, name: str, milestone: str, timeout: float) -> float:
        """When the tunnel first reached the milestone; TimeoutError if not within timeout."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: milestone in self.first.get(name, {}))
        return self.first[name][milestone]

    def status(self, name: str) -> dict[str, Any]:
        return (self.latest.get(name) or {}).get("status") or {}


def _uid(obj: dict[str, Any] | None) -> str | None:
    return obj["metadata"].get("uid") if obj else None


def _condition_true(obj: dict[str, Any], type_: str) -> bool:
    found = objects.condition(obj, type_)
    return bool(found and found["status"] == "True")


# ---- the demo -------------------------------------------------------------------------------


@dataclass
class Figures:
    applied: float = 0.0
    ready: float = 0.0
    first_byte: float = 0.0
    metered: float | None = None
    connected: float | None = None


class Demo:
    def __init__(self, check: bool, workdir: Path, cluster_stops: bool) -> None:
        self.check = check
        self.workdir = workdir
        self.cluster_stops = cluster_stops  # stopped at the end: nothing in it to delete
        self.cleanups: list[tuple[str | None, Callable[[], Awaitable[None]]]] = []
        self.addresses: dict[str, str] = {}
        self.ports: dict[str, int] = {}  # local service ports
        self.figures = {name: Figures() for name in TUNNELS}
        self.frpc: dict[str, Frpc] = {}
        self.failures: list[str] = []
        self.running = False  # up and waiting for Ctrl-C
        self.created_namespace = False
        self.installed = 0.0  # when `helm install` (or upgrade) started
        self.leading = 0.0  # when one operator replica led, Ready

    def on_cleanup(self, what: str | None, action: Callable[[], Awaitable[None]]) -> None:
        """Register how to undo what was just started or created; undone in reverse order."""
        self.cleanups.append((what, action))

    async def run(self) -> None:
        """The story, top to bottom."""
        await self.watch_tunnels()
        await self.start_pod_runner()
        await self.install_with_helm()
        await self.wait_for_the_leader()
        await self.delete_leftovers()
        await self.create_relays()
        await self.start_local_services()
        await self.apply_tunnels()
        await self.start_frpc()
        await self.visit_the_site()
        await self.talk_to_the_echo_service()
        await self.wait_for_the_meters()
        self.show_tunnels_and_relays()
        self.show_figures()
        self.explain_your_own_tunnel()
        if self.check:
            self.report_check()
        else:
            await self.keep_running()

    # ---- the steps ----------------------------------------------------------------------

    async def watch_tunnels(self) -> None:
        """Not a step of its own: from here on the demo sees every change of its Tunnels
        (once the chart has installed the CRDs)."""
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(tools.KUBECONFIG), client_configuration=cfg)
        self.api = client.ApiClient(cfg)
        self.on_cleanup(None, self.api.close)
        self.tunnels = TunnelWatch(self.api, NAMESPACE)
        watching = asyncio.create_task(self.tunnels.run(), name="tunnel-watch")
        self.on_cleanup(None, lambda: _cancel(watching))

    async def start_pod_runner(self) -> None:
        step("Starting the relay-pod runner: it plays kubelet for tunnelop's pods")
        say(
            "kwok's fake nodes run nothing. The runner runs the containers of the operator's\n"
            "pods (the chart's Deployment, with its ServiceAccount's token: the chart's RBAC is\n"
            "what the operator gets) and of relay pods (frps and the `tunnelop agent` sidecar)\n"
            f"as local processes, each pod on its own loopback address from {FIRST_ADDRESS} on."
        )
        runner = RelayPodRunner(
            tools.KUBECONFIG,
            self.workdir / "pods",
            first_address=FIRST_ADDRESS,
            operator_selector=OPERATOR_SELECTOR,
        )
        # The relays' addresses first: the same ones whatever the operator's pods take.
        for name, _, _ in RELAYS:
            runner.address_of(name)
        self.on_cleanup(
            "relay-pod runner stopped (operator replicas, frps and agents)", runner.stop
        )
        await runner.start()
        self.runner = runner

    async def install_with_helm(self) -> None:
        step("Installing tunnelop with Helm, as a provider installs it on their cluster")
        for namespace in (RELEASE_NAMESPACE, RELAY_NAMESPACE):
            await _namespace_exists(namespace)  # until an earlier run's deletion is over
        status = demo_helm.release_status()
        action = demo_helm.action_for(status)
        if action == "install":
            await self._delete_stray_webhooks()
        else:
            say(
                f"Release {RELEASE} is installed already ({status}), as an interrupted run leaves it:"
            )
            if action == "reinstall":
                # No hook: nothing runs its pod yet, and the release comes straight back.
                say(
                    f"installed again.\n$ helm uninstall {RELEASE} -n {RELEASE_NAMESPACE} "
                    "--no-hooks"
                )
                demo_helm.uninstall(hooks=False)
            else:
                say("upgraded to the demo's values.")
            say("")
        before = {
            (kind, name): objects.get(kind, name)
            for kind, name in [("namespace", RELEASE_NAMESPACE), *demo_helm.CHART_OBJECTS]
        }
        take_ownership = demo_helm.needs_take_ownership(
            [before[key] for key in demo_helm.CHART_OBJECTS if before[key]]
        )
        args = demo_helm.helm_args("upgrade" if action == "upgrade" else "install", take_ownership)
        say("On your own cluster (docs/install.md):")
        say("")
        say(f"  {demo_helm.provider_command()}")
        say("")
        say("Here, with what only the demo needs:")
        say("")
        say(f"$ {demo_helm.shown(args)}")
        say("")
        for value, why in DEMO_VALUES:
            say(f"{value}: " + textwrap.indent(why, "  ").lstrip())
        if take_ownership:
            say(
                "--take-ownership: the CRDs were applied with kubectl before (the tests do), and\n"
                "Helm adopts them (docs/install.md, coming from `kubectl apply -f crds/`)."
            )
        say("")
        created = [key for key, obj in before.items() if obj is None]
        if not self.cluster_stops:  # this run's, and those an interrupted run left
            self.on_cleanup(None, self._delete_created)
        # Before helm runs: an install interrupted half-way is uninstalled too.
        self.on_cleanup(f"uninstalled: helm uninstall {RELEASE} -n {RELEASE_NAMESPACE}", _uninstall)
        self.installed = time.monotonic()
        result = demo_helm.helm(*args, check=False)
        if result.returncode != 0:
            raise DemoFailed(f"helm {args[0]} failed:\n{result.stderr.strip()}")
        say(textwrap.indent(_helm_summary(result.stdout), "  "))
        for kind, name in created:  # the chart's and --create-namespace's, to be deleted at the end
            tools.kubectl("label", kind, name, f"{CREATED_LABEL}=true", "--overwrite", check=False)

    async def wait_for_the_leader(self) -> None:
        step("Waiting for one operator replica to lead: it holds the Lease, is Ready and labelled")
        core = client.CoreV1Api(self.api)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_TIMEOUT
        while True:
            listing = await core.list_namespaced_pod(
                RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR
            )
            pods = operator_pods(self.api.sanitize_for_serialization(listing))
            holder = await self._lease_holder()
            if leader := leading_pod(pods, holder):
                break
            if loop.time() > deadline:
                raise DemoFailed(
                    f"no operator replica led {LEADER_TIMEOUT} s after helm install: pods "
                    f"{[(p.name, 'Ready' if p.ready else 'not Ready', p.role) for p in pods]}, Lease "
                    f"holder {holder!r}; the operator pods' logs: {self.workdir / 'pods'}"
                )
            await asyncio.sleep(0.5)
        self.leading = time.monotonic()
        kubectl_shown("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide")  # only the operator's
        kubectl_shown(
            "get", "lease", LEASE, "-n", RELEASE_NAMESPACE, "-o", "jsonpath={.spec.holderIdentity}"
        )
        say(
            f"\n{leader.name} leads ({leader.address}), "
            f"{seconds(self.leading - self.installed)} after helm started: it holds the Lease,\n"
            "reconciles and answers the admission webhook: its pod carries tunnelop.dev/role=leader,\n"
            "which the webhook Service selects. The other replica is Ready too, standing by\n"
            "(tunnelop.dev/role=follower), and takes over if the leader goes."
        )
        pod = next((p for p in self.runner.operator_pods() if p.name == leader.name), None)
        if pod and pod.containers:
            say(f"the leader's log: {pod.containers[0].log_path}")

    async def delete_leftovers(self) -> None:
        """An interrupted earlier run may have left its Tunnels and RelayNodes: deleted by
        the operator now running, so that this run's figures start from nothing."""
        tunnels = [name for name in TUNNELS if objects.get("tunnel", name, NAMESPACE)]
        relays = [name for name, _, _ in RELAYS if objects.get("relaynode", name)]
        if not tunnels and not relays:
            return
        step("Deleting an earlier run's Tunnels and RelayNodes (the operator releases them)")
        if tunnels:
            tools.kubectl("delete", "tunnel", "-n", NAMESPACE, *tunnels, "--timeout=60s")
            say(f"Tunnels {', '.join(tunnels)} deleted")
        if relays:
            tools.kubectl("delete", "relaynode", *relays, "--timeout=60s")
            # Their pods gone and their processes stopped: the new ones take the same address.
            selector = f"tunnelop.dev/relay in ({','.join(relays)})"
            tools.kubectl(
                *("wait", "--for=delete", "pod", "-n", RELAY_NAMESPACE, "-l", selector),
                "--timeout=60s",
                check=False,  # none left to wait for
            )
            for name in relays:
                await until_closed(self.runner.address_of(name), PLUGIN_PORT, timeout=30)
            say(f"RelayNodes {', '.join(relays)} deleted")

    async def create_relays(self) -> None:
        names = ", ".join(name for name, _, _ in RELAYS)
        step(f"Creating RelayNodes {names}, exposed with HostNetwork on their pods' addresses")
        say(f"The operator runs their pods in {RELAY_NAMESPACE}, the chart's relay namespace.")
        self.on_cleanup("RelayNodes deleted", self._delete_relays)
        started = time.monotonic()
        try:
            addresses = await asyncio.gather(
                *(
                    start_relay(
                        self.runner,
                        name,
                        ports=RELAY_PORTS,
                        protocols=protocols,
                        http_domain=domain,
                    )
                    for name, protocols, domain in RELAYS
                )
            )
        except TimeoutError as exc:
            raise DemoFailed(f"a RelayNode did not become Ready: {exc}") from None
        for (name, protocols, domain), address in zip(RELAYS, addresses, strict=True):
            self.addresses[name] = address
            what = f"http under {domain} (port 80)" if domain else "/".join(protocols)
            say(f"{name}: Ready at {address}, serving {what}, ports {RELAY_PORTS}")
        say(
            f"both Ready, frps and agents serving, {seconds(time.monotonic() - started)} after apply"
        )

    async def start_local_services(self) -> None:
        step("Starting two local services (127.0.0.1 only, nothing public)")
        stack = contextlib.AsyncExitStack()
        self.on_cleanup("local HTTP site and TCP echo stopped", stack.aclose)
        # The site closes its connection after each answer, like `python -m http.server`:
        # frps counts an HTTP tunnel's bytes when the relay's connection to frpc closes, and
        # keeps an idle one open for 60 s, so a keep-alive site's traffic would show late.
        site = http_site(SITE_BODY, keep_alive=False)
        self.ports["web"] = await stack.enter_async_context(site)
        self.ports["echo"] = await stack.enter_async_context(echo_server())
        say(f"HTTP site: http://127.0.0.1:{self.ports['web']}/  (closes after each answer)")
        say(f"TCP echo:  127.0.0.1:{self.ports['echo']}")

    async def apply_tunnels(self) -> None:
        step(f"Applying two Tunnels in namespace {NAMESPACE}")
        if not await _namespace_exists(NAMESPACE):
            tools.kubectl("create", "namespace", NAMESPACE)
            tools.kubectl("label", "namespace", NAMESPACE, f"{CREATED_LABEL}=true")
        namespace = objects.get("namespace", NAMESPACE) or {}
        # Created by this run, or by an earlier one that was interrupted.
        if (namespace["metadata"].get("labels") or {}).get(CREATED_LABEL) == "true":
            self.created_namespace = True
            self.on_cleanup(f"namespace {NAMESPACE} deleted", lambda: _delete_namespace(NAMESPACE))
        say(f"$ kubectl apply -n {NAMESPACE} -f - <<EOF")
        say(TUNNELS_YAML + "EOF")
        self.on_cleanup("Tunnels deleted", self._delete_tunnels)
        applied = time.monotonic()
        tools.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=TUNNELS_YAML)
        for name in TUNNELS:
            self.figures[name].applied = applied
            try:
                self.figures[name].ready = await self.tunnels.reached(name, "ready", READY_TIMEOUT)
            except TimeoutError:
                raise DemoFailed(
                    f"Tunnel {NAMESPACE}/{name} was not Ready {READY_TIMEOUT} s after apply; "
                    f"its status: {json.dumps(self.tunnels.status(name))}"
                ) from None
        for name in TUNNELS:
            status = self.tunnels.status(name)
            say(
                f"{name}: Ready after {seconds(self.figures[name].ready - applied)}, "
                f"on {status.get('relayNode')}, endpoint {status.get('endpoint')}"
            )

    async def start_frpc(self) -> None:
        step("Starting frpc for each Tunnel, from its Secret <name>-frpc as it is")
        for name in TUNNELS:
            frpc = Frpc.from_secret(name, NAMESPACE, self.ports[name], self.workdir)
            self.on_cleanup(f"frpc for {name} stopped", frpc.stop)
            await frpc.start()
            self.frpc[name] = frpc
            say(f"{name}: TUNNELOP_LOCAL_PORT={self.ports[name]} frpc -c {frpc.config_path}")

    async def visit_the_site(self) -> None:
        step("A visitor opens the site through the relay (vhost port 80, by host name)")
        host = f"web.{HTTP_DOMAIN}"
        address = self.addresses["demo-web"]
        say(f"$ curl -H 'Host: {host}' http://{address}/")
        try:
            body = await served_http(address, host, timeout=VISITOR_TIMEOUT)
        except TimeoutError as exc:
            raise DemoFailed(f"{exc}\nfrpc log of web:\n{self.frpc['web'].logs()}") from None
        self.figures["web"].first_byte = time.monotonic()
        say(body)
        if body != SITE_BODY:
            raise DemoFailed(
                f"the relay answered GET http://{address}/ (Host: {host}) with {body!r}, "
                f"not the local site's page {SITE_BODY!r}"
            )
        say("(the local site's page, byte for byte)")

    async def talk_to_the_echo_service(self) -> None:
        status = self.tunnels.status("echo")
        address, port = self.addresses[status["relayNode"]], status["remotePort"]
        step(f"A visitor talks to the echo service through the relay at {address}:{port}")
        say(f"$ printf {ECHO_LINE.decode()!r} | nc {address} {port}")
        try:
            line = await wait_for_echo(address, port, ECHO_LINE, timeout=VISITOR_TIMEOUT)
        except TimeoutError as exc:
            raise DemoFailed(f"{exc}\nfrpc log of echo:\n{self.frpc['echo'].logs()}") from None
        self.figures["echo"].first_byte = time.monotonic()
        say(line.decode())
        if line != ECHO_LINE:
            raise DemoFailed(
                f"the echo through {address}:{port} returned {line!r}, not {ECHO_LINE!r}"
            )
        try:
            bulk = await echo_once(address, port, ECHO_BULK, timeout=10)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise DemoFailed(
                f"64 KiB sent through {address}:{port} did not come back: {exc!r}"
            ) from None
        if bulk != ECHO_BULK:
            raise DemoFailed(f"64 KiB sent through {address}:{port} came back different")
        say("and 64 KiB of random bytes: back unchanged")

    async def wait_for_the_meters(self) -> None:
        step(
            "Waiting for the relays' meters in the Tunnels' status "
            f"(the operator reads the agents every {TRAFFIC_INTERVAL} s)"
        )

        async def milestone(name: str, what: str) -> None:  # "metered" or "connected"
            with contextlib.suppress(TimeoutError):
                at = await self.tunnels.reached(name, what, METERING_TIMEOUT)
                setattr(self.figures[name], what, at)

        await asyncio.gather(
            *(milestone(name, what) for name in TUNNELS for what in ("metered", "connected"))
        )
        for name in TUNNELS:
            figures, status = self.figures[name], self.tunnels.status(name)
            traffic = status.get("traffic")
            client_connected = objects.condition(self.tunnels.latest.get(name), "ClientConnected")
            if figures.metered is None:
                self.failures.append(
                    f"Tunnel {NAMESPACE}/{name}: status.traffic.bytesIn/bytesOut not both above "
                    f"zero {METERING_TIMEOUT} s after its visitor traffic; status.traffic: "
                    f"{json.dumps(traffic)}"
                )
            if figures.connected is None:
                self.failures.append(
                    f"Tunnel {NAMESPACE}/{name}: condition ClientConnected not True "
                    f"{METERING_TIMEOUT} s after its visitor traffic, with frpc running; "
                    f"condition: {json.dumps(client_connected)}"
                )
            if figures.metered is not None and figures.connected is not None:
                say(
                    f"{name}: ClientConnected=True, {traffic.get('bytesIn')} bytes in, "
                    f"{traffic.get('bytesOut')} bytes out"
                )
        for failure in self.failures:
            say(f"NOT SEEN: {failure}")

    def show_tunnels_and_relays(self) -> None:
        step("What the cluster says")
        kubectl_shown("get", "tun,rn", "-A")

    def show_figures(self) -> None:
        step("Figures")
        rows = [
            (
                "tunnel",
                "helm install->first byte",
                "apply->Ready",
                "Ready->first byte",
                "->in status",
                "bytes in",
                "bytes out",
            )
        ]
        for name in TUNNELS:
            f, traffic = self.figures[name], self.tunnels.status(name).get("traffic") or {}
            rows.append(
                (
                    name,
                    seconds(f.first_byte - self.installed),
                    seconds(f.ready - f.applied),
                    seconds(f.first_byte - f.ready),
                    seconds(max(0.0, f.metered - f.first_byte)) if f.metered else "-",
                    str(traffic.get("bytesIn", "-")),
                    str(traffic.get("bytesOut", "-")),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        say(
            "\nhelm install->first byte: from `helm install` until the tunnel's first visitor was"
            "\nanswered (the operator's pods up and one leading, the relays Ready, the Tunnel"
            "\napplied and Ready, frpc started from its Secret and logged in)."
            "\nReady->first byte: frpc started from the Secret, logged in, first visitor answered."
            "\n->in status: from that first byte until status.traffic showed bytes both ways (the"
            "\nagent reads frps, the operator reads the agent, then writes the status)."
        )
        say(
            f"\nhelm install to one operator replica leading (Lease held, pod Ready): "
            f"{seconds(self.leading - self.installed)}"
        )
        say(f"helm install to here: {seconds(time.monotonic() - self.installed)}")

    def explain_your_own_tunnel(self) -> None:
        step("Add your own Tunnel")
        say(
            f"""\
In another terminal, from this checkout:

  export KUBECONFIG=$PWD/.cluster/kubeconfig PATH=$(hack/tools.sh path):$PATH
  kubectl apply -n {NAMESPACE} -f - <<EOF
  apiVersion: tunnelop.dev/v1alpha1
  kind: Tunnel
  metadata:
    name: mine
  spec:
    protocol: tcp    # or: protocol: http and subdomain: mine, for http://mine.{HTTP_DOMAIN}
  EOF
  kubectl wait -n {NAMESPACE} --for=condition=Ready tunnel/mine
  kubectl get secret -n {NAMESPACE} mine-frpc -o jsonpath='{{.data.frpc\\.toml}}' | base64 -d > mine.toml
  # with the port of your service on this machine (frpc stops if it is not set):
  TUNNELOP_LOCAL_PORT=8080 frpc -c mine.toml
  kubectl get tun -n {NAMESPACE} mine    # ENDPOINT is where visitors connect
"""
        )
        if self.created_namespace:
            say(
                f"\nThe demo deletes namespace {NAMESPACE}, and your Tunnel with it, when it stops."
            )

    def report_check(self) -> None:
        if self.failures:
            raise DemoFailed("".join(f"\n  - {failure}" for failure in self.failures))
        step("CHECK passed: HTTP body and echo matched, every Tunnel metered and ClientConnected")

    async def keep_running(self) -> None:
        web, echo = self.tunnels.status("web"), self.tunnels.status("echo")
        host, port = echo["endpoint"].rsplit(":", 1)
        tries = [
            (
                f"curl -H 'Host: {web['subdomain']}.{HTTP_DOMAIN}' http://{self.addresses['demo-web']}/",
                "the site",
            ),
            (f"nc {host} {port}", "if you have nc: type a line, it comes back"),
            ("kubectl get tun,rn -A", "In and Out grow (a TCP connection's bytes when it closes)"),
            (
                f"kubectl get pods -n {RELEASE_NAMESPACE}",
                "the operator: the leader 1/1, the other 0/1",
            ),
            (f"helm list -n {RELEASE_NAMESPACE}", "the release"),
        ]
        width = max(len(command) for command, _ in tries)
        say("Meanwhile, try the tunnels yourself:\n")
        for command, note in tries:
            say(f"  {command.ljust(width)}  # {note}")
        step("The demo keeps running until Ctrl-C; then it stops and deletes what it started")
        self.running = True
        await asyncio.Event().wait()

    # ---- undoing ------------------------------------------------------------------------

    async def cleanup(self) -> bool:
        """Undo everything, in reverse order; False if something could not be undone."""
        step("Cleaning up")
        clean = True
        while self.cleanups:
            what, action = self.cleanups.pop()
            try:
                await action()
            except Exception as exc:
                clean = False
                say(f"{what or 'cleanup'}: FAILED ({type(exc).__name__}: {exc})")
            else:
                if what:
                    say(what)
        return clean

    # The Tunnels and RelayNodes go before `helm uninstall`: their finalizers need the
    # operator still running (without it, deleting them waits for the next operator).

    async def _delete_tunnels(self) -> None:
        # In its own namespace, with yours.
        which = ["--all"] if self.created_namespace else TUNNELS
        tools.kubectl(
            "delete", "tunnel", "-n", NAMESPACE, *which, "--ignore-not-found", "--timeout=60s"
        )

    async def _delete_relays(self) -> None:
        names = [name for name, _, _ in RELAYS]
        tools.kubectl("delete", "relaynode", *names, "--ignore-not-found", "--timeout=60s")

    async def _delete_created(self) -> None:
        """The namespaces and CRDs the demo brought into a cluster that keeps running (the
        chart keeps the CRDs and the relay namespace on uninstall)."""
        created = f"{CREATED_LABEL}=true"
        # The tenant's namespace has gone its own way already.
        namespaces = f"kubernetes.io/metadata.name in ({RELEASE_NAMESPACE},{RELAY_NAMESPACE})"
        for kind, selector, wait in (
            ("namespace", f"{created},{namespaces}", "--wait=false"),
            ("crd", created, "--timeout=60s"),
        ):
            deleted = tools.kubectl("delete", kind, "-l", selector, wait, "-o", "name")
            for line in deleted.stdout.splitlines():  # kind.group/name
                kind_and_group, _, name = line.partition("/")
                if name:
                    say(f"{kind_and_group.split('.')[0]} {name} deleted")

    async def _delete_stray_webhooks(self) -> None:
        """Webhook configurations or a finalizer policy without a release are an operator's
        run outside the chart (a test run that was killed): Helm would refuse to install over
        them."""
        kinds = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
        policy = (
            "mutatingadmissionpolicy.v1.admissionregistration.k8s.io",  # applied first, deleted last
            FINALIZER_POLICY,
        )
        if any(objects.get(kind, "tunnelop.dev") for kind in kinds) or objects.get(*policy):
            delete_webhook_configurations()
            say(
                "(webhook configurations and finalizer policy of an operator run outside Helm: deleted)"
            )

    async def _lease_holder(self) -> str | None:
        coordination = client.CoordinationV1Api(self.api)
        try:
            lease = await coordination.read_namespaced_lease(LEASE, RELEASE_NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease.spec.holder_identity


async def _uninstall() -> None:
    # In a thread: the relay-pod runner, on this event loop, runs the uninstall hook's pod.
    await asyncio.to_thread(demo_helm.uninstall)


def _helm_summary(output: str) -> str:
    """helm's answer without its NOTES beyond their first lines (what it installed where)."""
    lines = output.splitlines()
    if "NOTES:" in lines:
        notes = lines.index("NOTES:")
        lines = lines[: notes + 3]
    return "\n".join(line for line in lines if line.strip())


async def _namespace_exists(name: str) -> bool:
    """Whether the namespace exists, once an earlier run's deletion of it is over."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (namespace := objects.get("namespace", name)) is not None:
        if not namespace["metadata"].get("deletionTimestamp"):
            return True
        if loop.time() > deadline:
            raise DemoFailed(f"namespace {name} has been terminating for over a minute")
        await asyncio.sleep(0.5)
    return False


async def _delete_namespace(name: str) -> None:
    tools.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _stop_cluster() -> None:
    down = await asyncio.create_subprocess_exec(
        str(tools.REPO / "hack" / "cluster.sh"),
        "down",
        env=tools.env_with_tools(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await down.communicate()
    if down.returncode != 0:
        raise RuntimeError(output.decode(errors="replace"))


# ---- running it -----------------------------------------------------------------------------


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the traffic and print the figures, then clean up and exit (make demo CHECK=1)",
    )
    parser.add_argument(
        "--stop-cluster",
        action="store_true",
        help="stop the local cluster at the end (hack/demo.sh passes it when it started it)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tunnelop-demo-"))
    logging.basicConfig(
        filename=workdir / "demo.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    os.chdir(tools.REPO)  # helm is given the chart as ./helm/tunnelop, as a user types it
    demo = Demo(args.check, workdir, cluster_stops=args.stop_cluster)
    if args.stop_cluster:
        demo.on_cleanup("local cluster stopped", _stop_cluster)

    loop = asyncio.get_running_loop()
    story = asyncio.create_task(demo.run(), name="demo")
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        story.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)

    code = 0
    try:
        await story
    except asyncio.CancelledError:
        # Ctrl-C: the end of an interactive demo that was up, else an interruption.
        code = 0 if demo.running and not demo.check else 130
    except Exception as exc:
        code = 130 if interrupted else 1  # a kubectl call gets the terminal's Ctrl-C too
        failed = f"\n{'CHECK ' if args.check else ''}FAILED:"
        if interrupted:
            pass
        elif isinstance(exc, DemoFailed):
            print(f"{failed} {exc}", flush=True)
        else:
            traceback.print_exception(exc)
            detail = f"\n{exc.stderr}" if isinstance(exc, subprocess.CalledProcessError) else ""
            print(f"{failed} {type(exc).__name__}: {exc}{detail}", flush=True)

    def still_cleaning() -> None:
        print("(cleaning up; a moment)", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, still_cleaning)
    if not await demo.cleanup() and code == 0:
        code = 1
        print(f"\n{'CHECK ' if args.check else ''}FAILED: cleaning up, as said above", flush=True)
    if code == 1:
        print(f"\nLogs are kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if code == 130:
        print("Interrupted.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
