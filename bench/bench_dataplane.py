"""The data plane on loopback: real frps, the relay agent and real frpc, against the targets.

Run with `make bench-dataplane` (also part of `make bench`; starts the local cluster if
needed). Four measurements, explained in docs/benchmarks.md:
1. ready-to-echo: the operator (`tunnelop run`) and relays run by the relay-pod runner;
   tunnels created in small concurrent batches, each timed from the watch event that shows
   it Ready to the first byte echoed through it by an frpc started from its Secret at that
   moment (target: p99 <= 2 s);
2. suspension: for tunnels with a connected frpc, spec.suspended=true is patched and timed
   until a new visitor is refused and until the frpc is kicked (target: max <= 5 s);
3. new-user-conn: connect() to first echoed byte of new visitor connections, through an
   frps whose agent checks NewUserConn and through the same without that op (standalone
   frps and agent processes; target: <= 1 ms added at p50);
4. throughput: bytes pushed through a tcp tunnel of frps with the agent and of frps alone
   with no plugin, alternating (target: ratio >= 0.95).
Writes bench/results/dataplane.json and dataplane.png, and prints a summary.

Everything binds to loopback addresses of its own (127.0.200.x for the relays, 127.0.201.x
for the standalone frps), and every process started here is stopped at the end, on errors
and on SIGINT/SIGTERM too (and gets SIGKILL should this script die).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import datetime
import json
import logging
import os
import platform
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import load, objects, tools  # noqa: E402
from support.cluster import ensure_cluster, teardown  # noqa: E402
from support.dataplane import start_relay  # noqa: E402
from support.netutil import echo_server  # noqa: E402
from support.operator import OperatorProcess  # noqa: E402
from support.relay_runner import RelayPodRunner  # noqa: E402
from tunnelop.agent.source import write_copies  # noqa: E402
from tunnelop.api.v1alpha1 import API_VERSION, RelayNode  # noqa: E402
from tunnelop.builders.frpc import build_frpc_config  # noqa: E402
from tunnelop.builders.frps import (  # noqa: E402
    CLIENT_HEARTBEAT_INTERVAL,
    POD_IP_TEMPLATE,
    build_frps_config,
)
from tunnelop.contract.naming import (  # noqa: E402
    AGENT_HEALTH_PORT,
    CONTROL_PORT,
    DASHBOARD_PASSWORD_ENV,
    DASHBOARD_PORT,
    DASHBOARD_USER,
    LOCALHOST,
    PLUGIN_PASSWORD_ENV,
    PLUGIN_PORT,
    STATE_DIR_ENV,
    table_secret_name,
)
from tunnelop.contract.table import TableEntry, token_sha256  # noqa: E402

GROUP, VERSION = API_VERSION.split("/")
PHASES = ("ready", "suspend", "newuserconn", "throughput")
TARGETS = {
    "ready_to_echo_seconds": 2.0,  # p99 of Ready -> first echoed byte
    "suspension_seconds": 5.0,  # max of refused and kicked
    "new_user_conn_added_ms": 1.0,  # difference of the p50s
    "throughput_ratio": 0.95,  # with the agent / without any plugin
}
# frpc logs this when frps answers its heartbeat with an error (a rejected Ping), and closes
# its session in the same step: the moment the client is kicked.
KICK_SIGNAL = "pong message contains error"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # frp colours its log lines
NEW_USER_CONN = "NewUserConn"
# The standalone relays of measurements 3 and 4, on consecutive loopback addresses.
WITH_AGENT, WITHOUT_NEW_USER_CONN, WITHOUT_PLUGIN = "with-agent", "agent-no-newuserconn", "plain"
STANDALONE_PORTS = {"echo": 31000, "sink": 31001}


class Interrupt:
    """SIGINT/SIGTERM/SIGHUP cancel the measurements once, never the cleanup: a signal that
    arrives while cleaning up is remembered, and honoured when the cleanup is done."""

    def __init__(self) -> None:
        self.requested = False
        self.cleaning = 0
        self.task: asyncio.Task[Any] | None = None

    def request(self) -> None:
        if not self.requested:
            self.requested = True
            log("stopping: cleaning up first")
            if self.task is not None and not self.cleaning:
                self.task.cancel()

    @contextlib.contextmanager
    def cleaning_up(self) -> Any:
        self.cleaning += 1
        try:
            yield
        finally:
            self.cleaning -= 1

    def check(self) -> None:
        if self.requested:
            raise asyncio.CancelledError


INTERRUPT = Interrupt()


def log(message: str) -> None:
    print(f"[dataplane {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float], qs: tuple[int, ...], digits: int = 3) -> dict[str, float]:
    if not values:
        return {}
    out = {f"p{q}": round(percentile(values, q), digits) for q in qs}
    out["max"] = round(max(values), digits)
    out["mean"] = round(statistics.fmean(values), digits)
    return out


# ---- processes ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGKILL when this script dies, so that nothing outlives it."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """A process this benchmark starts: its output in a log file, its own process group."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Proc:
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, grace: float = 5) -> None:
        if self.process is not None:
            await tools.terminate_group(self.process, grace)

    def logs(self, start: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


class Processes:
    """Every process of the run, stopped together at the end."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    async def start(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, log_path, env)
        self.all.append(proc)
        return await proc.start()

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.all), return_exceptions=True)


def frpc_argv(config_path: Path) -> list[str]:
    return [str(tools.tool("frpc")), "-c", str(config_path)]


def plain_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: no KUBECONFIG, no proxies, HOME in the run's directory."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    env.update(extra)
    return env


def check_free(address: str, ports: list[int]) -> None:
    """Fail early, and say why, when another process holds one of our addresses' ports."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError as exc:
                raise SystemExit(
                    f"{address}:{port} is in use ({exc.strerror}); pick other loopback "
                    "addresses with --relay-address / --standalone-address"
                ) from None


# ---- visitors -----------------------------------------------------------------------------------


async def visit(host: str, port: int, timeout: float = 1.0) -> str:
    """One new visitor connection sending one byte: "echo" if it comes back; "closed" if frps
    accepts the connection and then closes (or resets) it without an answer, which is how a
    visitor refused by the agent's NewUserConn check looks; "refused" if nothing listens on
    the port (the proxy is gone); "timeout" otherwise."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return "timeout"
    except OSError:
        return "refused"
    try:
        writer.write(b"x")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(1), timeout)
        return "echo" if data == b"x" else "closed"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "closed"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def first_echo(host: str, port: int, deadline: float, interval: float = 0.02) -> bool:
    """Visit every `interval` until a byte comes back (True) or the deadline passes."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if await visit(host, port, timeout=min(1.0, max(0.05, deadline - loop.time()))) == "echo":
            return True
        await asyncio.sleep(interval)
    return False


# ---- 1. Ready -> first echo ---------------------------------------------------------------------


@dataclass
class LiveTunnel:
    name: str
    relay: str
    host: str
    port: int
    frpc: Proc


@dataclass
class ClusterRun:
    api: client.ApiClient
    namespace: str
    label: dict[str, str]
    relays: list[str]
    workdir: Path
    procs: Processes
    echo_port: int
    kept: list[LiveTunnel] = field(default_factory=list)


def frpc_login_failures(text: str) -> int:
    return sum(
        1
        for line in text.splitlines()
        if "connect to server error" in line or "login to server failed" in line
    )


async def ready_to_echo(run: ClusterRun, count: int, batch: int, keep: int) -> dict[str, Any]:
    custom = client.CustomObjectsApi(run.api)
    core = client.CoreV1Api(run.api)
    ready_at: dict[str, float] = {}
    ready_obj: dict[str, dict[str, Any]] = {}
    waiters: dict[str, asyncio.Event] = {}
    watching = asyncio.Event()

    async def watch_ready() -> None:
        while True:
            try:
                async with watch.Watch() as w:
                    stream = w.stream(
                        custom.list_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        run.namespace,
                        "tunnels",
                        timeout_seconds=120,
                    )
                    watching.set()
                    async for event in stream:
                        obj = event["object"]
                        name = obj["metadata"]["name"]
                        if name not in ready_at and load.is_ready(obj):
                            ready_at[name] = time.monotonic()
                            ready_obj[name] = obj
                            waiters.setdefault(name, asyncio.Event()).set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an expired or broken watch: watch again (it relists)
                log(f"tunnel watch interrupted ({exc}); watching again")
                await asyncio.sleep(0.2)

    async def one(i: int) -> dict[str, Any]:
        try:
            return await measure(f"t-{i:03d}")
        except Exception as exc:  # one tunnel's failure is a data point, not the end
            return {"name": f"t-{i:03d}", "error": f"{type(exc).__name__}: {exc}"}

    async def measure(name: str) -> dict[str, Any]:
        body = objects.tunnel(name, "tcp", relay={"nodeSelector": run.label})
        waiter = waiters.setdefault(name, asyncio.Event())
        created = time.monotonic()
        await custom.create_namespaced_custom_object(GROUP, VERSION, run.namespace, "tunnels", body)
        try:
            await asyncio.wait_for(waiter.wait(), 120)
        except TimeoutError:
            return {"name": name, "error": "not Ready within 120 s"}
        ready = ready_at[name]
        status = ready_obj[name]["status"]
        # The visitor's address: the endpoint's host, i.e. the relay's public (loopback) address.
        host, port = status["endpoint"].rsplit(":", 1)[0], int(status["remotePort"])
        secret = await core.read_namespaced_secret(f"{name}-frpc", run.namespace)
        frpc_toml = base64.b64decode(secret.data["frpc.toml"]).decode()
        secret_read = time.monotonic()
        path = run.workdir / "frpc" / f"{name}.toml"
        path.write_text(frpc_toml)  # as the operator wrote it; the port is in the environment
        frpc = await run.procs.start(
            f"frpc {name}",
            frpc_argv(path),
            path.with_suffix(".log"),
            plain_env(run.workdir, TUNNELOP_LOCAL_PORT=str(run.echo_port)),
        )
        started = time.monotonic()
        ok = await first_echo(host, port, asyncio.get_running_loop().time() + 30)
        echoed = time.monotonic()
        result = {
            "name": name,
            "relay": status.get("relayNode"),
            "create_to_ready": round(ready - created, 4),
            "ready_to_secret_read": round(secret_read - ready, 4),
            "ready_to_frpc_started": round(started - ready, 4),
            "ready_to_echo": round(echoed - ready, 4),
            "frpc_login_failures": frpc_login_failures(frpc.logs()),
        }
        if not ok:
            result["error"] = f"no echo within 30 s; frpc log:\n{frpc.tail()}"
            await frpc.stop()
        elif len(run.kept) < keep:
            run.kept.append(LiveTunnel(name, status.get("relayNode", ""), host, port, frpc))
        else:
            await frpc.stop()
        return result

    watcher = asyncio.create_task(watch_ready(), name="watch-ready")
    try:
        await asyncio.wait_for(watching.wait(), 30)
        await asyncio.sleep(0.5)  # the watch request is on its way before the first create
        results: list[dict[str, Any]] = []
        for first in range(0, count, batch):
            results += await asyncio.gather(
                *(one(i) for i in range(first, min(count, first + batch)))
            )
            done = [r for r in results if "error" not in r]
            if done:
                log(
                    f"  {len(results)}/{count} tunnels; last batch Ready->echo "
                    + " ".join(
                        f"{r['ready_to_echo']:.2f}" for r in results[-batch:] if "error" not in r
                    )
                )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    good = [r for r in results if "error" not in r]
    failures = [r for r in results if "error" in r]
    latencies = [r["ready_to_echo"] for r in good]
    out: dict[str, Any] = {
        "tunnels": count,
        "measured": len(good),
        "failures": len(failures),
        "relays": len(run.relays),
        "batch": batch,
        "ready_to_echo_seconds": summary(latencies, (50, 95, 99)),
        "create_to_ready_seconds": summary([r["create_to_ready"] for r in good], (50, 99)),
        "ready_to_frpc_started_seconds": summary(
            [r["ready_to_frpc_started"] for r in good], (50, 99)
        ),
        "tunnels_with_frpc_login_failures": sum(1 for r in good if r["frpc_login_failures"]),
        "target_p99_seconds": TARGETS["ready_to_echo_seconds"],
        "met": bool(latencies)
        and not failures
        and percentile(latencies, 99) <= TARGETS["ready_to_echo_seconds"],
        "samples": results,
    }
    for f in failures[:3]:
        log(f"  FAILED {f['name']}: {f['error']}")
    return out


# ---- 2. Suspension -------------------------------------------------------------------------------


async def poll_refused(
    host: str, port: int, since: float, timeout: float
) -> tuple[float | None, str | None]:
    """Seconds from `since` until a new visitor is refused (closed without echo, or the port
    closed), visiting every 50 ms; and how ("closed" or "refused", see visit())."""
    while time.monotonic() - since < timeout:
        outcome = await visit(host, port)
        if outcome in ("closed", "refused"):
            return time.monotonic() - since, outcome
        await asyncio.sleep(0.05)
    return None, None


async def poll_kicked(frpc: Proc, offset: int, since: float, timeout: float) -> float | None:
    """Seconds from `since` until the frpc logs KICK_SIGNAL, reading its log every 50 ms."""
    while time.monotonic() - since < timeout:
        if KICK_SIGNAL in frpc.logs(offset):
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


async def suspension(run: ClusterRun, timeout: float = 20) -> dict[str, Any]:
    custom = client.CustomObjectsApi(run.api)
    samples: list[dict[str, Any]] = []
    example = None
    for t in run.kept:
        # frpc pings on a fixed period since its start: a random wait spreads the patches
        # over the heartbeat phase (back to back, each would land where the last kick did).
        await asyncio.sleep(random.uniform(0, CLIENT_HEARTBEAT_INTERVAL))
        if await visit(t.host, t.port) != "echo":
            samples.append({"name": t.name, "error": "no echo before the suspension"})
            continue
        offset = t.frpc.log_size()
        since = time.monotonic()
        refused = asyncio.create_task(poll_refused(t.host, t.port, since, timeout))
        kicked = asyncio.create_task(poll_kicked(t.frpc, offset, since, timeout))
        await custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            run.namespace,
            "tunnels",
            t.name,
            {"spec": {"suspended": True}},
            _content_type="application/merge-patch+json",
        )
        patched = time.monotonic() - since
        (refused_s, how), kicked_s = await asyncio.gather(refused, kicked)
        sample: dict[str, Any] = {
            "name": t.name,
            "relay": t.relay,
            "patch_seconds": round(patched, 4),
            "refused_seconds": None if refused_s is None else round(refused_s, 4),
            "refused_how": how,
            "kicked_seconds": None if kicked_s is None else round(kicked_s, 4),
        }
        if refused_s is None or kicked_s is None:
            sample["error"] = f"not refused or not kicked within {timeout} s"
        samples.append(sample)
        if example is None and kicked_s is not None:
            example = next(
                (
                    ANSI.sub("", line)
                    for line in t.frpc.logs(offset).splitlines()
                    if KICK_SIGNAL in line
                ),
                None,
            )
        log(
            f"  {t.name}: refused ({how}) after {seconds(refused_s)}, kicked after {seconds(kicked_s)}"
        )
    good = [s for s in samples if "error" not in s]
    refused = [s["refused_seconds"] for s in good]
    kicked = [s["kicked_seconds"] for s in good]
    worst = max(refused + kicked, default=float("inf"))
    return {
        "tunnels": len(samples),
        "failures": len(samples) - len(good),
        "refused_seconds": summary(refused, (50,)),
        # "closed": refused by the agent's NewUserConn check; "refused": the proxy was gone.
        "refused_how": {
            h: sum(1 for s in good if s["refused_how"] == h) for h in ("closed", "refused")
        },
        "kicked_seconds": summary(kicked, (50,)),
        "frpc_heartbeat_interval_seconds": CLIENT_HEARTBEAT_INTERVAL,
        "kick_signal": f"frpc log line containing {KICK_SIGNAL!r}",
        "kick_log_example": example,
        "target_max_seconds": TARGETS["suspension_seconds"],
        "met": bool(good) and len(good) == len(samples) and worst <= TARGETS["suspension_seconds"],
        "samples": samples,
    }


async def cluster_phases(
    args: argparse.Namespace, workdir: Path, procs: Processes, result: dict[str, Any]
) -> None:
    cluster = ensure_cluster()
    run_id = uuid.uuid4().hex[:6]
    relays = [f"bdp-{run_id}-{i}" for i in range(args.relays)]
    namespace = f"bench-dp-{run_id}"
    operator: OperatorProcess | None = None
    runner: RelayPodRunner | None = None
    api: client.ApiClient | None = None
    run: ClusterRun | None = None
    try:
        tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        tools.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
        api = client.ApiClient(cfg)
        log("starting the operator and the relay-pod runner")
        operator = OperatorProcess(
            cluster.kubeconfig, workdir / "operator.log", "--log-level", "WARNING"
        )
        await operator.start()
        runner = RelayPodRunner(
            cluster.kubeconfig, workdir / "relay-pods", first_address=args.relay_address
        )
        for relay in relays:
            check_free(
                runner.address_of(relay),
                [CONTROL_PORT, PLUGIN_PORT, AGENT_HEALTH_PORT, DASHBOARD_PORT],
            )
        await runner.start()
        label = {"tunnelop.bench/dataplane": run_id}
        for i, relay in enumerate(relays):
            first = 30000 + i * 1000
            await start_relay(
                runner,
                relay,
                ports=f"{first}-{first + 999}",
                protocols=["tcp"],
                labels=label,
            )
        log(f"relays {', '.join(f'{r} on {runner.address_of(r)}' for r in relays)} serve")
        core = client.CoreV1Api(api)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        (workdir / "frpc").mkdir(exist_ok=True)
        async with echo_server() as echo_port:
            run = ClusterRun(api, namespace, label, relays, workdir, procs, echo_port)
            # The suspension needs tunnels with a connected frpc: the first ones of 1 stay.
            keep = args.suspend_tunnels if "suspend" in args.phases else 0
            count = max(args.tunnels, keep) if "ready" in args.phases else keep
            log(f"1. Ready -> first echo: {count} tunnels in batches of {args.batch}")
            ready = await ready_to_echo(run, count, args.batch, keep)
            if "ready" in args.phases:
                result["ready_to_echo"] = ready
            if keep:
                log(f"2. suspension: {len(run.kept)} tunnels with a connected frpc")
                result["suspension"] = await suspension(run)
    finally:
        with INTERRUPT.cleaning_up():
            await cleanup_cluster(cluster, namespace, relays, run, runner, operator, api)
    INTERRUPT.check()


async def cleanup_cluster(
    cluster: Any,
    namespace: str,
    relays: list[str],
    run: ClusterRun | None,
    runner: RelayPodRunner | None,
    operator: OperatorProcess | None,
    api: client.ApiClient | None,
) -> None:
    """Stop everything cluster_phases started, in an order that lets the operator release its
    finalizers; a step that fails is reported and the next one still runs."""

    async def step(what: str, action: Any) -> None:
        try:
            outcome = action()
            if asyncio.iscoroutine(outcome):
                await outcome
        except Exception as exc:
            log(f"cleanup: {what} failed: {exc}")

    log("cleaning up the cluster objects")
    if run is not None:
        await step("stopping frpc", lambda: asyncio.gather(*(t.frpc.stop() for t in run.kept)))
    for kind, names in (("namespace", [namespace]), ("relaynode", relays)):
        await step(
            f"deleting {kind}",
            lambda kind=kind, names=names: tools.kubectl(
                "delete", kind, *names, "--ignore-not-found", "--wait=false", check=False
            ),
        )
    if operator is not None and operator.process and operator.process.returncode is None:
        # The operator removes its finalizers: wait while it runs (bounded).
        await step("waiting for the finalizers", lambda: wait_gone(namespace, relays, 60))
    if runner is not None:
        await step("stopping the relay-pod runner", runner.stop)
    if operator is not None:
        await step("stopping the operator", operator.stop)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            await step(
                f"deleting the {kind}",
                lambda kind=kind: tools.kubectl(
                    "delete", kind, "tunnelop.dev", "--ignore-not-found", check=False
                ),
            )
    if api is not None:
        await step("closing the API client", api.close)
    await step("stopping the cluster (if started here)", lambda: teardown(cluster))


async def wait_gone(namespace: str, relays: list[str], timeout: float) -> None:
    """Until the operator has released the Tunnels and RelayNodes (their finalizers); the
    namespace itself goes on without it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = tools.kubectl(
            "get", "tunnels", "-n", namespace, "--ignore-not-found", "-o", "name", check=False
        ).stdout.strip()
        left += tools.kubectl(
            "get", "relaynode", *relays, "--ignore-not-found", "-o", "name", check=False
        ).stdout.strip()
        if not left:
            return
        await asyncio.sleep(0.5)
    log(f"tunnels of {namespace} or relays {relays} still there after {timeout} s; left behind")


# ---- 3 and 4. Standalone frps, with and without the agent ---------------------------------------


@dataclass
class Standalone:
    variant: str
    name: str
    address: str
    password: str
    tunnels: dict[str, int]  # tunnel name -> remote port
    pids: dict[str, int]  # "frps", "agent" -> process id


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def standalone_frps_config(
    relay_name: str, address: str, token: str, password: str, plugin_password: str, variant: str
) -> str:
    """The operator's frps.toml for a RelayNode, rendered as frps would see it in the pod
    (pod IP and the pod's localhost both being `address`), minus NewUserConn or minus the
    whole plugin for the comparison variants."""
    relay = RelayNode.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "RelayNode",
            "metadata": {"name": relay_name},
            "spec": {
                "ports": {
                    "range": f"{min(STANDALONE_PORTS.values())}-{max(STANDALONE_PORTS.values())}"
                },
                "protocols": ["tcp"],
                "exposure": {"type": "HostNetwork", "address": address},
            },
        }
    )
    text = build_frps_config(
        relay, token=token, dashboard_password=password, plugin_password=plugin_password
    )
    for needle in (POD_IP_TEMPLATE, LOCALHOST, "[[httpPlugins]]"):
        if needle not in text:
            raise AssertionError(f"the operator's frps.toml has no {needle!r} any more:\n{text}")
    text = text.replace(POD_IP_TEMPLATE, address).replace(LOCALHOST, address)
    if variant == WITHOUT_NEW_USER_CONN:
        ops = re.search(r"^ops = (\[.*\])$", text, re.MULTILINE)
        if ops is None or NEW_USER_CONN not in json.loads(ops[1]):
            raise AssertionError(
                f"no ops with {NEW_USER_CONN} in the operator's frps.toml:\n{text}"
            )
        fewer = [op for op in json.loads(ops[1]) if op != NEW_USER_CONN]
        text = text.replace(ops[0], f"ops = {json.dumps(fewer)}")
    elif variant == WITHOUT_PLUGIN:
        head = text[: text.index("[[httpPlugins]]")]
        text = head[: head.rstrip("\n").rfind("\n\n") + 1]  # with the plugin's comment lines
    return text


async def wait_http_ok(url: str, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(trust_env=False) as http:
        while time.monotonic() < deadline:
            if not proc.running:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not serve {url}:\n{proc.tail()}")


async def wait_port(address: str, port: int, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.running:
        try:
            _, writer = await asyncio.open_connection(address, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {address}:{port}:\n{proc.tail()}")


async def start_standalone(
    variant: str,
    address: str,
    tunnels: list[str],
    local_ports: dict[str, int],
    workdir: Path,
    procs: Processes,
) -> Standalone:
    check_free(
        address,
        [CONTROL_PORT, PLUGIN_PORT, AGENT_HEALTH_PORT, DASHBOARD_PORT, *STANDALONE_PORTS.values()],
    )
    root = workdir / variant
    (root / "state").mkdir(parents=True)
    relay_name = f"bench-{variant}"
    token, password = secrets.token_hex(16), secrets.token_hex(12)
    plugin_password = secrets.token_hex(16)
    namespace = "bench"
    tunnel_tokens = {t: secrets.token_hex(16) for t in STANDALONE_PORTS}
    (root / "frps.toml").write_text(
        standalone_frps_config(relay_name, address, token, password, plugin_password, variant)
    )
    pids: dict[str, int] = {}
    if variant != WITHOUT_PLUGIN:
        entries = [
            TableEntry(namespace, t, token_sha256(tunnel_tokens[t]), "tcp", remote_port=port)
            for t, port in STANDALONE_PORTS.items()
        ]
        write_copies(root / "state", relay_name, entries)
        # No API server: the agent serves the table it finds in its state directory.
        agent = await procs.start(
            f"agent {variant}",
            [
                str(Path(sys.executable).parent / "tunnelop"),
                "agent",
                "--relay",
                relay_name,
                "--namespace",
                namespace,
                "--table-secret",
                table_secret_name(relay_name),
                "--listen",
                f"{address}:{PLUGIN_PORT}",
                "--health-listen",
                f"{address}:{AGENT_HEALTH_PORT}",
                "--frps-dashboard",
                f"http://{address}:{DASHBOARD_PORT}",
                "--log-format",
                "json",
            ],
            root / "agent.log",
            plain_env(
                root,
                **{
                    STATE_DIR_ENV: str(root / "state"),
                    DASHBOARD_PASSWORD_ENV: password,
                    PLUGIN_PASSWORD_ENV: plugin_password,
                },
            ),
        )
        await wait_http_ok(f"http://{address}:{AGENT_HEALTH_PORT}/readyz", 30, agent)
        pids["agent"] = agent.process.pid  # type: ignore[union-attr]
    frps = await procs.start(
        f"frps {variant}",
        [str(tools.tool("frps")), "-c", str(root / "frps.toml")],
        root / "frps.log",
        plain_env(root),
    )
    await wait_port(address, CONTROL_PORT, 30, frps)
    pids["frps"] = frps.process.pid  # type: ignore[union-attr]
    for t in tunnels:
        text = build_frpc_config(
            namespace=namespace,
            tunnel_name=t,
            protocol="tcp",
            server_addr=address,
            server_port=CONTROL_PORT,
            relay_token=token,
            tunnel_token=tunnel_tokens[t],
            remote_port=STANDALONE_PORTS[t],
        )
        path = root / f"frpc-{t}.toml"
        path.write_text(text)
        await procs.start(
            f"frpc {variant}/{t}",
            frpc_argv(path),
            path.with_suffix(".log"),
            plain_env(root, TUNNELOP_LOCAL_PORT=str(local_ports[t])),
        )
    return Standalone(
        variant, relay_name, address, password, {t: STANDALONE_PORTS[t] for t in tunnels}, pids
    )


class Sink:
    """A TCP sink on its own thread: reads and discards; reports (bytes, time of the last
    byte) per connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.results: queue.Queue[tuple[int, float]] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="sink", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        buffer = memoryview(bytearray(1 << 20))
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            total, last = 0, time.perf_counter()
            with conn:
                conn.settimeout(120)
                try:
                    while n := conn.recv_into(buffer):
                        total += n
                        last = time.perf_counter()
                except OSError:
                    pass
            self.results.put((total, last))

    def drain(self) -> None:
        while not self.results.empty():
            self.results.get_nowait()

    def close(self) -> None:
        self.server.close()


def push(address: str, port: int, size: int, sink: Sink) -> tuple[float, int]:
    """Push `size` random bytes through the tunnel into the sink; returns (MB/s, bytes the
    sink got), timed from connect() to the sink's last byte."""
    chunk = memoryview(os.urandom(1 << 20))
    sink.drain()
    start = time.perf_counter()
    with socket.create_connection((address, port), timeout=120) as s:
        sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            s.sendall(chunk[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # frps closes once its copy is done
            pass
    total, last = sink.results.get(timeout=120)
    return total / (last - start) / 1e6, total


def sink_ready(address: str, port: int, sink: Sink, timeout: float = 30) -> None:
    """Until a probe byte reaches the sink through the tunnel."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sink.drain()
        try:
            with socket.create_connection((address, port), timeout=2) as s:
                s.sendall(b"x")
                s.shutdown(socket.SHUT_WR)
                s.settimeout(2)
                while s.recv(1024):
                    pass
            total, _ = sink.results.get(timeout=2)
            if total == 1:
                return
        except (OSError, queue.Empty):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing reached the sink through {address}:{port}")


def echo_latencies(targets: list[tuple[str, int]], count: int, warmup: int) -> list[list[float]]:
    """connect() to the first echoed byte of a 1-byte echo on a new connection, in seconds,
    for each target in turn (the order alternates every round), `count` rounds."""
    out: list[list[float]] = [[] for _ in targets]
    for round_ in range(warmup + count):
        order = list(range(len(targets)))
        if round_ % 2:
            order.reverse()
        for i in order:
            start = time.perf_counter()
            with socket.create_connection(targets[i], timeout=5) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(b"x")
                data = s.recv(1)
                elapsed = time.perf_counter() - start
            if data != b"x":
                raise RuntimeError(f"no echo through {targets[i]}")
            if round_ >= warmup:
                out[i].append(elapsed)
    return out


async def agent_new_user_conn_seconds(relay: Standalone) -> dict[str, float] | None:
    """The agent's own answer time for NewUserConn (its histogram's sum / count)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{relay.address}:{AGENT_HEALTH_PORT}/metrics"
    credentials = base64.b64encode(f"{DASHBOARD_USER}:{relay.password}".encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}
    try:
        async with (
            aiohttp.ClientSession(trust_env=False) as http,
            http.get(url, headers=headers) as r,
        ):
            text = await r.text()
    except (aiohttp.ClientError, OSError):
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("op") == NEW_USER_CONN and s.name.endswith(("_sum", "_count")):
                values[s.name.rsplit("_", 1)[1]] = s.value
    if not values.get("count"):
        return None
    return {
        "calls": int(values["count"]),
        "mean_ms": round(values["sum"] / values["count"] * 1e3, 4),
    }


async def standalone_phases(
    args: argparse.Namespace, workdir: Path, procs: Processes, result: dict[str, Any]
) -> None:
    base = [int(x) for x in args.standalone_address.split(".")]
    variants = (WITH_AGENT, WITHOUT_NEW_USER_CONN, WITHOUT_PLUGIN)
    addresses = {v: ".".join(map(str, [*base[:3], base[3] + i])) for i, v in enumerate(variants)}
    latency, throughput = "newuserconn" in args.phases, "throughput" in args.phases
    plan = {  # the tunnels each relay serves: "echo" for 3, "sink" for 4
        WITH_AGENT: (["echo"] if latency else []) + (["sink"] if throughput else []),
        WITHOUT_NEW_USER_CONN: ["echo"] if latency else [],
        WITHOUT_PLUGIN: ["sink"] if throughput else [],
    }
    sink = Sink()
    try:
        async with echo_server() as echo_port:
            local = {"echo": echo_port, "sink": sink.port}
            relays: dict[str, Standalone] = {}
            for variant, tunnels in plan.items():
                if tunnels:
                    relays[variant] = await start_standalone(
                        variant, addresses[variant], tunnels, local, workdir, procs
                    )
            log("standalone frps: " + ", ".join(f"{v} on {r.address}" for v, r in relays.items()))
            loop = asyncio.get_running_loop()
            for relay in relays.values():
                if "echo" in relay.tunnels and not await first_echo(
                    relay.address, relay.tunnels["echo"], loop.time() + 30, interval=0.2
                ):
                    raise RuntimeError(f"no echo through standalone frps {relay.variant}")
                if "sink" in relay.tunnels:
                    await asyncio.to_thread(sink_ready, relay.address, relay.tunnels["sink"], sink)
            if latency:
                log(f"3. NewUserConn: {args.connections} new connections each, alternating")
                result["new_user_conn"] = await new_user_conn(
                    relays[WITH_AGENT], relays[WITHOUT_NEW_USER_CONN], args.connections
                )
            if throughput:
                log(f"4. throughput: {args.push_mb} MB x {args.repetitions}, alternating")
                result["throughput"] = await measure_throughput(
                    relays[WITH_AGENT], relays[WITHOUT_PLUGIN], sink, args
                )
    finally:
        sink.close()


async def new_user_conn(with_check: Standalone, without: Standalone, count: int) -> dict[str, Any]:
    warmup = 50
    a, b = await asyncio.to_thread(
        echo_latencies,
        [
            (with_check.address, with_check.tunnels["echo"]),
            (without.address, without.tunnels["echo"]),
        ],
        count,
        warmup,
    )
    a_ms, b_ms = [x * 1e3 for x in a], [x * 1e3 for x in b]
    added = percentile(a_ms, 50) - percentile(b_ms, 50)
    return {
        "connections_each": count,
        "warmup_each": warmup,
        "with_check_ms": summary(a_ms, (50, 90, 99), 4),
        "without_check_ms": summary(b_ms, (50, 90, 99), 4),
        "added_p50_ms": round(added, 4),
        "added_p99_ms": round(percentile(a_ms, 99) - percentile(b_ms, 99), 4),
        "agent_answer_time": await agent_new_user_conn_seconds(with_check),
        "target_added_p50_ms": TARGETS["new_user_conn_added_ms"],
        "met": added <= TARGETS["new_user_conn_added_ms"],
        "_with": a_ms,
        "_without": b_ms,
    }


async def measure_throughput(
    with_agent: Standalone, plain: Standalone, sink: Sink, args: argparse.Namespace
) -> dict[str, Any]:
    size = args.push_mb * 1_000_000
    runs: dict[str, list[float]] = {WITH_AGENT: [], WITHOUT_PLUGIN: []}
    # CPU seconds each process spent per push: telling where wall time is noisy.
    cpu: dict[str, list[float]] = {"frps with agent": [], "agent": [], "frps alone": []}
    for rep in range(args.repetitions):
        for relay in [with_agent, plain] if rep % 2 == 0 else [plain, with_agent]:
            before = {k: cpu_seconds(pid) for k, pid in relay.pids.items()}
            mbps, total = await asyncio.to_thread(
                push, relay.address, relay.tunnels["sink"], size, sink
            )
            spent = {k: cpu_seconds(pid) - before[k] for k, pid in relay.pids.items()}
            if total != size:
                raise RuntimeError(f"{relay.variant}: the sink got {total} of {size} bytes")
            if relay is with_agent:
                cpu["frps with agent"].append(spent["frps"])
                cpu["agent"].append(spent["agent"])
            else:
                cpu["frps alone"].append(spent["frps"])
            runs[relay.variant].append(round(mbps, 1))
            log(f"  {relay.variant}: {mbps:.1f} MB/s")
    ratio = statistics.median(runs[WITH_AGENT]) / statistics.median(runs[WITHOUT_PLUGIN])
    return {
        "bytes_per_push": size,
        "repetitions": args.repetitions,
        "with_agent_mb_s": runs[WITH_AGENT],
        "without_plugin_mb_s": runs[WITHOUT_PLUGIN],
        "with_agent_median_mb_s": statistics.median(runs[WITH_AGENT]),
        "without_plugin_median_mb_s": statistics.median(runs[WITHOUT_PLUGIN]),
        "ratio": round(ratio, 3),
        "cpu_seconds_per_push_median": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "target_ratio": TARGETS["throughput_ratio"],
        "met": ratio >= TARGETS["throughput_ratio"],
    }


# ---- report -------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log("matplotlib is not installed; no plot")
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ready_ax, suspend_ax), (conn_ax, tput_ax) = axes

    def skipped(ax: Any, what: str) -> None:
        ax.text(0.5, 0.5, f"{what}: not measured", ha="center", va="center")
        ax.set_axis_off()

    ready = result.get("ready_to_echo")
    if ready and ready["measured"]:
        lat = sorted(s["ready_to_echo"] for s in ready["samples"] if "error" not in s)
        ready_ax.plot(lat, [i / len(lat) for i in range(1, len(lat) + 1)], marker=".")
        ready_ax.axvline(TARGETS["ready_to_echo_seconds"], color="red", ls="--", label="target")
        ready_ax.set_xlim(left=0)
        ready_ax.set_xlabel("Tunnel Ready -> first echoed byte (s)")
        ready_ax.set_ylabel("fraction of tunnels")
        s = ready["ready_to_echo_seconds"]
        ready_ax.set_title(
            f"1. {ready['measured']} tunnels: p50 {s['p50']}s p95 {s['p95']}s p99 {s['p99']}s"
        )
        ready_ax.legend(loc="lower right")
    else:
        skipped(ready_ax, "1. Ready -> first echo")

    susp = result.get("suspension")
    if susp and susp["tunnels"]:
        good = [s for s in susp["samples"] if "error" not in s]
        xs = range(len(good))
        suspend_ax.plot(xs, [s["refused_seconds"] for s in good], "o", label="new visitor refused")
        suspend_ax.plot(xs, [s["kicked_seconds"] for s in good], "s", label="frpc kicked")
        suspend_ax.axhline(TARGETS["suspension_seconds"], color="red", ls="--", label="target")
        suspend_ax.set_ylim(bottom=0)
        suspend_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        suspend_ax.set_xlabel("tunnel")
        suspend_ax.set_ylabel("seconds after the suspending patch")
        suspend_ax.set_title(
            f"2. suspension: refused p50 {susp['refused_seconds'].get('p50')}s, "
            f"kicked p50 {susp['kicked_seconds'].get('p50')}s"
        )
        suspend_ax.legend(loc="upper right", fontsize="small")
    else:
        skipped(suspend_ax, "2. suspension")

    conn = result.get("new_user_conn")
    if conn:
        for key, label in (
            ("_with", "NewUserConn checked by the agent"),
            ("_without", "no NewUserConn op"),
        ):
            lat = sorted(conn[key])
            conn_ax.plot(lat, [i / len(lat) for i in range(1, len(lat) + 1)], label=label)
        # Up to twice the p90s: the few slowest connections would squeeze the rest together.
        right = 2 * max(conn["with_check_ms"]["p90"], conn["without_check_ms"]["p90"])
        conn_ax.set_xlim(0, right)
        conn_ax.set_xlabel(f"connect() -> first echoed byte (ms; cut at {right:.1f})")
        conn_ax.set_ylabel("fraction of connections")
        conn_ax.set_title(f"3. new visitor connections: +{conn['added_p50_ms']} ms at p50")
        conn_ax.legend(loc="lower right", fontsize="small")
    else:
        skipped(conn_ax, "3. NewUserConn")

    tput = result.get("throughput")
    if tput:
        n = len(tput["with_agent_mb_s"])
        xs = list(range(n))
        tput_ax.bar([x - 0.2 for x in xs], tput["with_agent_mb_s"], 0.4, label="frps + agent")
        tput_ax.bar(
            [x + 0.2 for x in xs], tput["without_plugin_mb_s"], 0.4, label="frps, no plugin"
        )
        tput_ax.set_xticks(xs, [f"rep {x + 1}" for x in xs])
        tput_ax.set_ylabel("MB/s")
        tput_ax.set_title(f"4. tcp throughput: ratio {tput['ratio']}")
        tput_ax.legend(loc="lower right", fontsize="small")
    else:
        skipped(tput_ax, "4. throughput")

    machine = result["machine"]
    fig.suptitle(
        f"data plane on loopback, {result['date']}: {machine['cpus']} CPUs, load average "
        f"{machine['loadavg_start'][0]} at the start (other work on the machine skews timings)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def print_summary(result: dict[str, Any]) -> None:
    lines = [
        f"data plane benchmark ({result['run_seconds']} s, load {result['machine']['loadavg_start']})"
    ]
    r = result.get("ready_to_echo")
    if r:
        s = r["ready_to_echo_seconds"]
        lines.append(
            f"  1. Ready -> first echo, {r['measured']}/{r['tunnels']} tunnels: p50 {s.get('p50')} s, "
            f"p95 {s.get('p95')} s, p99 {s.get('p99')} s, max {s.get('max')} s "
            f"(target p99 <= {r['target_p99_seconds']} s: {verdict(r['met'])})"
        )
    r = result.get("suspension")
    if r:
        lines.append(
            f"  2. suspension, {r['tunnels']} tunnels: refused p50 {r['refused_seconds'].get('p50')} s "
            f"max {r['refused_seconds'].get('max')} s; kicked p50 {r['kicked_seconds'].get('p50')} s "
            f"max {r['kicked_seconds'].get('max')} s (target <= {r['target_max_seconds']} s: "
            f"{verdict(r['met'])})"
        )
    r = result.get("new_user_conn")
    if r:
        a, b = r["with_check_ms"], r["without_check_ms"]
        lines.append(
            f"  3. new connection, {r['connections_each']} each: with NewUserConn p50 {a['p50']} ms "
            f"p99 {a['p99']} ms; without p50 {b['p50']} ms p99 {b['p99']} ms; added at p50 "
            f"{r['added_p50_ms']} ms (target <= {r['target_added_p50_ms']} ms: {verdict(r['met'])})"
        )
    r = result.get("throughput")
    if r:
        lines.append(
            f"  4. throughput: with agent {r['with_agent_mb_s']} MB/s, no plugin "
            f"{r['without_plugin_mb_s']} MB/s; ratio of medians {r['ratio']} "
            f"(target >= {r['target_ratio']}: {verdict(r['met'])})"
        )
    for e in result.get("errors", []):
        lines.append(f"  error: {e}")
    print("\n".join(lines))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument("--tunnels", type=int, default=50, help="tunnels for 1 (default 50)")
    parser.add_argument("--batch", type=int, default=5, help="tunnels created at once (default 5)")
    parser.add_argument(
        "--relays", type=int, default=2, help="relays run by the runner (default 2)"
    )
    parser.add_argument(
        "--suspend-tunnels", type=int, default=10, help="tunnels for 2 (default 10)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1000,
        help="new connections per variant for 3 (default 1000)",
    )
    parser.add_argument("--push-mb", type=int, default=200, help="MB per push for 4 (default 200)")
    parser.add_argument(
        "--repetitions", type=int, default=9, help="pushes per variant for 4 (default 9)"
    )
    parser.add_argument(
        "--relay-address", default="127.0.200.2", help="first loopback address of the relays"
    )
    parser.add_argument(
        "--standalone-address",
        default="127.0.201.2",
        help="first of three loopback addresses of the standalone frps",
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the logs and configs of the run"
    )
    args = parser.parse_args()
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if unknown := args.phases - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; choose from {PHASES}")

    # The relay-pod runner's warnings, told apart from this script's own lines.
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, INTERRUPT.request)

    started = time.monotonic()
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "frp": tools.versions()["FRP_VERSION"],
            "kubernetes": tools.versions()["KUBERNETES_VERSION"],
        },
        "parameters": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("output", "keep_workdir")
        },
        "targets": TARGETS,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    procs = Processes()
    failed = False

    async def phases() -> None:
        if args.phases & {"ready", "suspend"}:
            await cluster_phases(args, workdir, procs, result)
        await procs.stop_all()
        INTERRUPT.check()
        if args.phases & {"newuserconn", "throughput"}:
            await standalone_phases(args, workdir, procs, result)

    INTERRUPT.task = asyncio.create_task(phases(), name="phases")
    try:
        await INTERRUPT.task
    except asyncio.CancelledError:
        failed = True
        result.setdefault("errors", []).append("interrupted")
    except Exception as exc:
        failed = True
        result.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        await procs.stop_all()
    result["run_seconds"] = round(time.monotonic() - started, 1)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    # A failed or interrupted run leaves the published results alone.
    out = (workdir if failed else args.output) / "dataplane.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(result, out.with_suffix(".png"))
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    if "new_user_conn" in public:
        public["new_user_conn"] = {
            k: v for k, v in public["new_user_conn"].items() if not k.startswith("_")
        }
    out.write_text(json.dumps(public, indent=2) + "\n")
    print_summary(result)
    print(f"results: {out} and {out.with_suffix('.png')}")
    if failed or args.keep_workdir:
        print(f"logs and configs of this run: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
