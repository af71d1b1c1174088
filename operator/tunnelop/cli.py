"""The `tunnelop` command line: one entry point for the operator and its relay agent."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunnelop import __version__
from tunnelop.contract.naming import DEFAULT_AGENT_IMAGE, DEFAULT_FRPC_IMAGE, DEFAULT_FRPS_IMAGE
from tunnelop.platform.addresses import split_host_port
from tunnelop.platform.events import GLOBAL_BURST, GLOBAL_REFILL


def positive_number(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number of `unit` > 0."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of {unit}, got {value!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0 {unit}, got {value}")
        if number == float("inf"):
            raise argparse.ArgumentTypeError(f"must be finite, got {value}")
        return number

    parse.__name__ = unit  # argparse names the type in some messages
    return parse


positive_seconds = positive_number("seconds")
events_per_second = positive_number("Events a second")


def checked(module: str, function: str, *, returns_input: bool = False, **kwargs: Any) -> Any:
    """An argparse type from `module.function`, a checker that raises ValueError naming what
    is wrong; imported at first use, so that `tunnelop --help` loads no API models. With
    `returns_input`, the value as given rather than what the checker returns."""

    def parse(value: str) -> Any:
        check = getattr(importlib.import_module(module), function)
        try:
            result = check(value, **kwargs)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value if returns_input else result

    parse.__name__ = function  # argparse names the type in some messages
    return parse


host_port = checked("tunnelop.platform.addresses", "split_host_port", returns_input=True)
port_range = checked(
    "tunnelop.api.v1alpha1", "parse_port_span", returns_input=True, allow_single=False
)
image_reference = checked("tunnelop.api.v1alpha1.formats", "check_image")
tunnel_ref = checked("tunnelop.client.options", "parse_tunnel_ref")
local_host = checked("tunnelop.client.options", "check_local_host")
webhook_service = checked("tunnelop.platform.webhook_tls", "parse_service")
deployment_ref = checked("tunnelop.uninstall", "parse_deployment")


def lease_seconds(value: str) -> int:
    """argparse type: a whole number of seconds >= 3 (a Lease counts in seconds)."""
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of seconds, got {value!r}"
        ) from None
    if seconds < 3:
        raise argparse.ArgumentTypeError(f"must be at least 3 seconds, got {seconds}")
    return seconds


def positive_count(value: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {count}")
    return count


def port_number(value: str) -> int:
    """argparse type: a port of 1-65535."""
    from tunnelop.client.options import check_local_port

    try:
        return check_local_port(int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {value!r}") from None


def object_name(kind: str) -> Callable[[str], str]:
    """argparse type: the name of a `kind` object (a DNS subdomain)."""

    def check(value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value) or len(value) > 253:
            raise argparse.ArgumentTypeError(
                f"must be a {kind} name (lowercase letters, digits, '-' and '.', starting and "
                f"ending with a letter or digit), got {value!r}"
            )
        return value

    return check


def webhook_flags_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of `tunnelop run`'s webhook flags, if anything."""
    certificate = args.webhook_cert_secret or args.webhook_cert_dir
    if args.no_webhook and (args.webhook_service or certificate):
        return "--no-webhook: no --webhook-service, --webhook-cert-secret or --webhook-cert-dir with it"
    if args.webhook_service and not certificate:
        return "--webhook-service needs --webhook-cert-secret NAME or --webhook-cert-dir DIR"
    if certificate and not args.webhook_service:
        which = "--webhook-cert-secret" if args.webhook_cert_secret else "--webhook-cert-dir"
        return (
            f"{which} needs --webhook-service NAMESPACE/NAME (the Service the webhook is called at)"
        )
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelop",
        description="Run a tunnel-relay service for frp declaratively on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"tunnelop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    crds = sub.add_parser(
        "crds",
        help="write the CustomResourceDefinitions generated from the API models",
        description=(
            "Write one CustomResourceDefinition per kind to OUTPUT_DIR, generated from the "
            "API models. With --check, write nothing and fail if the files differ."
        ),
    )
    crds.add_argument(
        "--output-dir",
        type=Path,
        default=Path("crds"),
        help="directory of the CRD files (default: crds)",
    )
    crds.add_argument(
        "--check",
        action="store_true",
        help="exit 1 and print a diff if the files are not what the models generate",
    )
    run = sub.add_parser(
        "run",
        help="run the operator against the current kubeconfig (or in-cluster config)",
        description="Run the operator: scheduling, allocation, relays and admission webhook.",
    )
    run.add_argument(
        "--relay-namespace",
        default="tunnelop-system",
        help="namespace of the relay workloads (default: tunnelop-system)",
    )
    run.add_argument(
        "--webhook-host",
        default="127.0.0.1",
        help="address the admission webhook listens on and is called at (default: 127.0.0.1)",
    )
    run.add_argument("--webhook-port", type=int, default=9443, help="webhook port (default: 9443)")
    run.add_argument("--no-webhook", action="store_true", help="run without the admission webhook")
    run.add_argument(
        "--webhook-service",
        type=webhook_service,
        default=None,
        metavar="NAMESPACE/NAME",
        help=(
            "serve the webhook behind this Service, in a cluster: the Validating- and "
            "MutatingWebhookConfiguration named tunnelop.dev exist already (the chart's); the "
            "operator only keeps their caBundle (with --webhook-cert-secret). Needs "
            "--webhook-cert-secret or --webhook-cert-dir. Without it (local runs) the operator "
            "registers the webhook itself at https://WEBHOOK_HOST:WEBHOOK_PORT"
        ),
    )
    run.add_argument(
        "--finalizer-mode",
        choices=("auto", "policy", "webhook"),
        default="webhook",
        help=(
            "who sets the release finalizer on a Tunnel at creation: the API server, by the "
            "MutatingAdmissionPolicy add-finalizer.tunnelop.dev (policy), or the operator's "
            "mutating webhook add-finalizer (webhook); auto: the policy where the API server "
            "serves MutatingAdmissionPolicy (admissionregistration.k8s.io/v1), else the "
            "webhook. Locally the leader applies the policy and deletes it when it stops; "
            "behind --webhook-service the chart installs one or the other, and policy only "
            "tells the operator to serve no add-finalizer webhook (default: webhook: the policy makes "
            "creates fail with 503 for a while after a CRD upgrade)"
        ),
    )
    certificate = run.add_mutually_exclusive_group()
    certificate.add_argument(
        "--webhook-cert-secret",
        type=object_name("Secret"),
        default=None,
        metavar="NAME",
        help=(
            "Secret of the operator's namespace (POD_NAMESPACE, else its ServiceAccount's) with "
            "the webhook's CA and serving certificate: created if absent, renewed by the leader "
            "30 days before it expires, its CA injected into the configurations' caBundle"
        ),
    )
    certificate.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "directory with tls.crt and tls.key (cert-manager's Secret, mounted), reread when "
            "they change; the caBundle is left to cert-manager's CA injector"
        ),
    )
    run.add_argument(
        "--service-account-dir",
        default=None,
        help="where the pod's ServiceAccount token and CA are mounted (default: the usual place)",
    )
    run.add_argument(
        "--traffic-interval",
        type=positive_seconds,
        default=10.0,
        help=(
            "seconds between readings of the relay agents' traffic metrics (default: 10); a "
            "tunnel's traffic status is written at most every 3 intervals"
        ),
    )
    run.add_argument(
        "--tunnel-workers",
        type=positive_count,
        default=256,
        help=(
            "Tunnel reconciles at once (default: 256); each waits for its relay's table write, "
            "which the tunnels of one relay share, so more of them make fuller writes"
        ),
    )
    run.add_argument(
        "--event-qps",
        type=events_per_second,
        default=GLOBAL_REFILL,
        help=(
            f"Events posted a second at most, once a burst has spent --event-burst (default: "
            f"{GLOBAL_REFILL:g}); what is refused is summed into one Event per namespace and "
            "reason (each object's status keeps its own state)"
        ),
    )
    run.add_argument(
        "--event-burst",
        type=positive_count,
        default=GLOBAL_BURST,
        help=f"Events posted at once before --event-qps applies (default: {GLOBAL_BURST})",
    )
    run.add_argument(
        "--service-node-port-range",
        type=port_range,
        default="30000-32767",
        help=(
            "the API server's --service-node-port-range (default: 30000-32767): a "
            "LoadBalancer relay's Service takes a node port from it per tunnel port, and a "
            "NodePort relay's tunnel ports must lie in it"
        ),
    )
    run.add_argument(
        "--agent-image",
        type=image_reference,
        default=None,
        help=(
            "the relay agent's image in relay pods whose RelayNode sets no "
            f"spec.template.images.agent (default: {DEFAULT_AGENT_IMAGE}); the chart passes "
            "its own image, so a registry mirror serves the relays too"
        ),
    )
    run.add_argument(
        "--frps-image",
        type=image_reference,
        default=None,
        help=(
            "frps's image in relay pods whose RelayNode sets no spec.template.images.frps "
            f"(default: {DEFAULT_FRPS_IMAGE})"
        ),
    )
    run.add_argument(
        "--frpc-image",
        type=image_reference,
        default=None,
        help=(
            "the image of the frpc the operator runs for tunnels whose spec.client.type is "
            f"InCluster (default: {DEFAULT_FRPC_IMAGE})"
        ),
    )
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "campaign for a Lease and reconcile only while holding it (default: on when "
            "running in a pod, off otherwise)"
        ),
    )
    run.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the leader Lease (default: the relay namespace)",
    )
    run.add_argument(
        "--leader-election-id",
        default="tunnelop",
        help="name of the leader Lease (default: tunnelop)",
    )
    run.add_argument(
        "--lease-duration",
        type=lease_seconds,
        default=10,
        help=(
            "seconds a leader's lease lasts without renewal (default: 10); the renew deadline "
            "is 0.7 and the retry period 0.2 of it, so a follower takes over from a dead leader "
            "within 1.4 x this"
        ),
    )
    run.add_argument(
        "--health-listen",
        type=host_port,
        default="127.0.0.1:8081",
        help="/healthz, /readyz and /metrics (default: 127.0.0.1:8081)",
    )
    agent = sub.add_parser(
        "agent",
        help="run the relay agent (the sidecar of a relay pod)",
        description=(
            "Run the relay agent: frps's server plugin, answering from the relay's allocation "
            "table, plus traffic metering and health endpoints."
        ),
    )
    agent.add_argument("--relay", required=True, help="name of the RelayNode")
    agent.add_argument("--namespace", required=True, help="namespace of the table Secrets")
    agent.add_argument(
        "--table-secret",
        required=True,
        help="name of the table's first Secret (shard 0); shard k is in <name>-k",
    )
    agent.add_argument(
        "--listen",
        type=host_port,
        default="127.0.0.1:7400",
        help="plugin endpoint (default: 127.0.0.1:7400)",
    )
    agent.add_argument(
        "--health-listen",
        type=host_port,
        default="127.0.0.1:7401",
        help="/healthz, /readyz and /metrics (default: 127.0.0.1:7401)",
    )
    agent.add_argument(
        "--frps-dashboard",
        default="http://127.0.0.1:7500",
        help="frps dashboard URL, for metering (default: http://127.0.0.1:7500)",
    )
    agent.add_argument(
        "--service-account-dir",
        default=None,
        help="where the pod's ServiceAccount token and CA are mounted (default: the usual place)",
    )
    agent.add_argument("--kubeconfig", default=None, help="kubeconfig, when not in a pod")
    agent.add_argument(
        "--allow-unauthenticated-plugin",
        action="store_true",
        help=(
            "serve the plugin endpoint without frps's credentials (tests only: anyone who "
            "reaches it can then speak for frps). Without this flag the agent needs "
            "TUNNELOP_PLUGIN_PASSWORD, the password in the plugin addr of frps.toml"
        ),
    )
    agent.add_argument(
        "--meter-interval",
        type=positive_seconds,
        default=5.0,
        help="seconds between readings of frps's traffic figures (default: 5)",
    )
    top = sub.add_parser(
        "top",
        help="list the tunnels with the most traffic this month",
        description=(
            "List the tunnels (or, with --namespaces, the namespaces) that carried the most "
            "bytes this period (calendar month, UTC), with their share of the total, from "
            "status.traffic.periodBytes of every Tunnel the current kubeconfig can read."
        ),
    )
    top.add_argument("--namespaces", action="store_true", help="rank namespaces instead of tunnels")
    top.add_argument(
        "--limit", type=positive_count, default=10, help="how many rows to show (default: 10)"
    )
    top.add_argument("-n", "--namespace", default=None, help="only the Tunnels of this namespace")
    top.add_argument("--kubeconfig", default=None, help="kubeconfig (default: KUBECONFIG)")
    client = sub.add_parser(
        "client",
        help="run frpc for a tunnel and follow it when it moves to another relay",
        description=(
            "Run frpc from the Tunnel's credentials Secret (<tunnel>-frpc) for a service on "
            "this machine, and restart it with the new config whenever the operator rewrites "
            "the Secret (the tunnel moved to another relay, or its token changed). Needs list "
            "and watch on that Secret. Stops frpc and exits 0 on SIGTERM or SIGINT."
        ),
    )
    client.add_argument(
        "tunnel", type=tunnel_ref, metavar="NAMESPACE/TUNNEL", help="the Tunnel to run frpc for"
    )
    client.add_argument(
        "--local-port",
        type=port_number,
        required=True,
        help="port of the local service the tunnel forwards to (1-65535)",
    )
    client.add_argument(
        "--local-ip",
        type=local_host,
        default="127.0.0.1",
        help="address or host name of the local service (default: 127.0.0.1)",
    )
    client.add_argument("--frpc", default="frpc", help="the frpc binary (default: frpc on PATH)")
    client.add_argument("--kubeconfig", default=None, help="kubeconfig (default: KUBECONFIG)")
    client.add_argument(
        "--stop-grace",
        type=positive_seconds,
        default=10.0,
        help="seconds frpc gets to stop after SIGTERM before SIGKILL (default: 10)",
    )
    release = sub.add_parser(
        "release-finalizers",
        help="stop the operator and remove tunnelop's finalizers (before an uninstall)",
        description=(
            "What `helm uninstall` runs first (the chart's pre-delete hook): scale the "
            "operator's Deployment to 0 and wait until its pods are gone and its Lease is "
            "free, then remove every finalizer starting with tunnelop.dev/ from all Tunnels, "
            "RelayNodes, RelayPools and TunnelQuotas (other finalizers stay), so that deleting "
            "them, or a namespace holding Tunnels, never waits for an operator. The relays "
            "keep serving from their last table. Running it twice is fine."
        ),
    )
    release.add_argument(
        "--deployment",
        type=deployment_ref,
        required=True,
        metavar="NAMESPACE/NAME",
        help="the operator's Deployment, scaled to 0 through its scale subresource",
    )
    release.add_argument(
        "--lease",
        type=object_name("Lease"),
        default=None,
        metavar="NAME",
        help=(
            "the operator's leader Lease, in the Deployment's namespace: waited for until "
            "released or expired (a leader still running would put the finalizers back)"
        ),
    )
    release.add_argument(
        "--webhook-configuration",
        type=object_name("ValidatingWebhookConfiguration"),
        default=None,
        metavar="NAME",
        help=(
            "the operator's ValidatingWebhookConfiguration: its webhooks with failurePolicy "
            "Fail are set to Ignore once the operator is stopped, or the API server would "
            "refuse the finalizers' removal from Tunnels"
        ),
    )
    release.add_argument(
        "--finalizer-policy-binding",
        type=object_name("MutatingAdmissionPolicyBinding"),
        default=None,
        metavar="NAME",
        help=(
            "the binding of the policy that sets tunnelop's finalizer on new Tunnels: deleted "
            "before the finalizers are released, or a Tunnel created meanwhile would keep one"
        ),
    )
    release.add_argument(
        "--stop-timeout",
        type=positive_seconds,
        default=120.0,
        help="seconds the operator's pods get to stop before the command fails (default: 120)",
    )
    release.add_argument(
        "--service-account-dir",
        default=None,
        help="where the pod's ServiceAccount token and CA are mounted (default: the usual place)",
    )
    release.add_argument("--kubeconfig", default=None, help="kubeconfig, when not in a pod")
    for command in (run, agent, client, release):
        command.add_argument(
            "--log-format",
            choices=["auto", "json", "console"],
            default="auto",
            help="json or console; auto (default) is json unless stderr is a terminal",
        )
        command.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    return parser


def run_agent(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from tunnelop.agent.server import AgentOptions, serve
    from tunnelop.contract.naming import (
        DASHBOARD_PASSWORD_ENV,
        PLUGIN_PASSWORD_ENV,
        SERVICE_ACCOUNT_DIR,
        STATE_DIR_ENV,
    )
    from tunnelop.platform import logs

    logs.configure(args.log_format, args.log_level.upper())
    state_dir = os.environ.get(STATE_DIR_ENV)
    try:
        options = AgentOptions(
            relay=args.relay,
            namespace=args.namespace,
            table_secret=args.table_secret,
            listen=args.listen,
            health_listen=args.health_listen,
            frps_dashboard=args.frps_dashboard,
            dashboard_password=os.environ.get(DASHBOARD_PASSWORD_ENV) or None,
            plugin_password=os.environ.get(PLUGIN_PASSWORD_ENV) or None,
            state_dir=Path(state_dir) if state_dir else None,
            service_account_dir=args.service_account_dir or SERVICE_ACCOUNT_DIR,
            kubeconfig=args.kubeconfig,
            meter_interval=args.meter_interval,
            allow_unauthenticated_plugin=args.allow_unauthenticated_plugin,
        )
    except ValueError as error:
        print(f"tunnelop agent: {error}", file=sys.stderr)
        return 2
    asyncio.run(serve(options))
    return 0


def run_top(args: argparse.Namespace) -> int:
    import asyncio
    import datetime

    from kubernetes.aio.config import ConfigException

    from tunnelop.domain.leaderboard import render, top_namespaces, top_tunnels
    from tunnelop.platform.kube import GROUP_VERSION, Kube, KubeError

    async def read_tunnels() -> list[dict]:
        kube = await Kube.connect(args.kubeconfig)
        try:
            return await kube.list(GROUP_VERSION, "Tunnel", args.namespace)
        finally:
            await kube.close()

    try:
        tunnels = asyncio.run(read_tunnels())
    except (KubeError, OSError, ConfigException) as exc:  # no cluster, no kubeconfig, no access
        print(f"tunnelop top: cannot list Tunnels: {exc}", file=sys.stderr)
        return 1
    now = datetime.datetime.now(datetime.UTC)
    rank = top_namespaces if args.namespaces else top_tunnels
    sys.stdout.write(render(rank(tunnels, now, args.limit)))
    return 0


def run_client(args: argparse.Namespace) -> int:
    import asyncio
    import shutil

    from tunnelop.client.follow import NoClusterConfig, follow
    from tunnelop.client.options import ClientOptions
    from tunnelop.platform import logs

    frpc = shutil.which(args.frpc)
    if frpc is None:
        print(
            f"tunnelop client: --frpc: {args.frpc!r} is not an executable file or on PATH",
            file=sys.stderr,
        )
        return 2
    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        print(f"tunnelop client: --kubeconfig: no such file {args.kubeconfig!r}", file=sys.stderr)
        return 2
    logs.configure(args.log_format, args.log_level.upper())
    namespace, tunnel = args.tunnel
    options = ClientOptions(
        namespace=namespace,
        tunnel=tunnel,
        local_port=args.local_port,
        local_ip=args.local_ip,
        frpc=frpc,
        kubeconfig=args.kubeconfig,
        stop_grace=args.stop_grace,
    )
    try:
        asyncio.run(follow(options))
    except NoClusterConfig as exc:
        print(f"tunnelop client: no usable kubeconfig or in-cluster config: {exc}", file=sys.stderr)
        return 1
    return 0


def run_release_finalizers(args: argparse.Namespace) -> int:
    import asyncio

    from tunnelop import uninstall
    from tunnelop.contract.naming import SERVICE_ACCOUNT_DIR
    from tunnelop.platform import logs

    logs.configure(args.log_format, args.log_level.upper())
    namespace, deployment = args.deployment
    options = uninstall.Options(
        namespace=namespace,
        deployment=deployment,
        lease=args.lease,
        webhook_configuration=args.webhook_configuration,
        finalizer_policy_binding=args.finalizer_policy_binding,
        stop_timeout=args.stop_timeout,
        kubeconfig=args.kubeconfig,
        service_account_dir=args.service_account_dir or SERVICE_ACCOUNT_DIR,
    )
    return asyncio.run(uninstall.run(options))


def run_crds(output_dir: Path, check: bool) -> int:
    # Imported here so that `tunnelop version` stays fast and free of the API's imports.
    from tunnelop.api import crdgen

    if check:
        diff = crdgen.diff_crds(output_dir)
        if diff:
            sys.stdout.write(diff)
            print(
                f"\n{output_dir} is out of date with the API models; run `tunnelop crds "
                f"--output-dir {output_dir}`",
                file=sys.stderr,
            )
            return 1
        print(f"{output_dir} is up to date", file=sys.stderr)
        return 0
    for path in crdgen.write_crds(output_dir):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"tunnelop {__version__}")
        return 0
    if args.command == "crds":
        return run_crds(args.output_dir, args.check)
    if args.command == "agent":
        return run_agent(args)
    if args.command == "top":
        return run_top(args)
    if args.command == "client":
        return run_client(args)
    if args.command == "release-finalizers":
        return run_release_finalizers(args)
    if args.command == "run":
        from tunnelop import manager
        from tunnelop.contract.naming import SERVICE_ACCOUNT_DIR

        error = webhook_flags_error(args)
        if error:
            print(f"tunnelop run: error: {error}", file=sys.stderr)
            return 2
        health_host, health_port = split_host_port(args.health_listen)
        leader_elect = manager.in_pod() if args.leader_elect is None else args.leader_elect
        return manager.main(
            manager.Options(
                relay_namespace=args.relay_namespace,
                webhook_host=args.webhook_host,
                webhook_port=args.webhook_port,
                webhook=not args.no_webhook,
                log_format=args.log_format,
                log_level=args.log_level.upper(),
                traffic_interval=args.traffic_interval,
                workers=args.tunnel_workers,
                event_burst=args.event_burst,
                event_qps=args.event_qps,
                service_node_port_range=args.service_node_port_range,
                frps_image=args.frps_image,
                agent_image=args.agent_image,
                frpc_image=args.frpc_image,
                leader_elect=leader_elect,
                leader_election_namespace=args.leader_election_namespace,
                leader_election_id=args.leader_election_id,
                lease_duration=args.lease_duration,
                health_host=health_host,
                health_port=health_port,
                webhook_service=args.webhook_service,
                webhook_cert_secret=args.webhook_cert_secret,
                webhook_cert_dir=args.webhook_cert_dir,
                finalizer_mode=args.finalizer_mode,
                service_account_dir=args.service_account_dir or SERVICE_ACCOUNT_DIR,
            )
        )
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
