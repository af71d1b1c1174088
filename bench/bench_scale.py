"""Scale and speed: tunnels to Ready near the API server's limit, a restart at that size,
a steady stream, and the operator's memory (docs/benchmarks.md explains every figure).

One run, one local cluster, one client (32 requests in flight), in this order:

1. the limit: the API server's raw create rate (ConfigMaps), then the minimal write set a
   tunnel needs done by a tight loop with no operator: the Tunnel's create (with the
   admission the API server runs by itself), its credentials Secret, its status, and its
   shard of its relay's table, rewritten every 200 ms while it changes (the operator's
   coalescing);
2. the burst: the operator (`tunnelop run`, a process) with R RelayNodes; N Tunnels created
   at once, each timed from its create request to the watch event that shows it Ready;
   admission's share (create rate, webhook latency from the API server's histogram), the
   requests each tunnel cost (the operator's tunnelop_api_requests_total), its RSS;
3. the restart: the operator stopped (SIGTERM) and started again at N tunnels; the time until
   it is ready and every tunnel has been reconciled, the writes it made, the ports changed;
4. the steady stream: RATE tunnels/s for SECONDS, each timed to Ready.

    python bench/bench_scale.py --tunnels 10000 --relays 10
    python bench/bench_scale.py --tunnels 50000 --relays 20 --steady-seconds 0   # simulated

Writes bench/results/scale-<N>.json (each figure with its target and whether it was met) and
scale-<N>.png. Relays are paper relays: their pods run on kwok's fake nodes, as the control
plane sees them; the relay agent's side is bench_agent.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import operator_objects  # noqa: E402
import report  # noqa: E402

from support import objects, tools  # noqa: E402
from support.cluster import ensure_cluster  # noqa: E402
from support.operator import OperatorProcess, delete_webhook_configurations  # noqa: E402
from tunnelop.api.v1alpha1 import RelayNode  # noqa: E402
from tunnelop.builders.frpc import endpoint  # noqa: E402
from tunnelop.builders.relay import build_table_secret  # noqa: E402
from tunnelop.contract import naming  # noqa: E402
from tunnelop.contract.table import TableEntry, shard_of, token_sha256  # noqa: E402
from tunnelop.platform.kube import GROUP_VERSION, Kube, KubeError  # noqa: E402

RELAY_NAMESPACE = "tunnelop-relays"
TABLE_DEBOUNCE = 0.2  # controllers/relaytables.py: the operator's coalescing window
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
# Writes a restart may make that are not about tunnels: the leader's Lease and the admission
# objects a local run registers for itself.
NOT_TUNNEL_WRITES = ("leases", "mutatingadmissionpolicies", "mutatingadmissionpolicybindings")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def figure(value: float, target: str, met: bool | None) -> dict[str, Any]:
    return {"value": value, "target": target, "met": met}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# The processes that share the machine's cores, by the name the kernel gives them (at most
# 15 characters): how many cores each used is what explains a rate below its target.
CPU_PROCESSES = ("kube-apiserver", "etcd", "kube-controller", "kube-scheduler", "kwok-controller")


def cpu_seconds(operator_pid: int | None) -> dict[str, float]:
    """CPU seconds (user and system) used so far by the control plane's processes, the
    operator and this benchmark."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        pid = int(entry.name)
        name = (
            "operator"
            if pid == operator_pid
            else "benchmark"
            if pid == os.getpid()
            else comm
            if comm in CPU_PROCESSES
            else None
        )
        if name is not None:
            user, system = fields.split()[11:13]
            found[name] = found.get(name, 0.0) + (int(user) + int(system)) / tick
    return found


def cores_used(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores each process used on average between two readings of cpu_seconds."""
    return {
        name: round((after[name] - before.get(name, 0.0)) / seconds, 2)
        for name in sorted(after)
        if seconds > 0
    }


def cpu_ms_per_tunnel(
    before: dict[str, float], after: dict[str, float], tunnels: int
) -> dict[str, float]:
    """CPU milliseconds each process spent per tunnel between two readings of cpu_seconds:
    what a tunnel costs the API server (and etcd) with the operator and without it."""
    return {
        name: round((after[name] - before.get(name, 0.0)) / tunnels * 1000, 2)
        for name in sorted(after)
    }


def tunnel_body(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Tunnel",
        "metadata": {"name": name},
        "spec": {"protocol": "tcp", "relay": {"nodeSelector": selector}},
    }


def is_ready(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


class Sampler:
    """Every second: the operator's RSS, the tunnels Ready so far, the load average."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.samples: list[dict[str, float]] = []
        self.pid: int | None = None
        self.ready = 0
        self._task: asyncio.Task[None] | None = None

    def run(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            sample = {
                "t": round(time.monotonic() - self.start, 2),
                "ready": self.ready,
                "load1": os.getloadavg()[0],
            }
            if self.pid is not None:
                with contextlib.suppress(OSError):
                    sample["rss_mib"] = rss_mib(self.pid)
            self.samples.append(sample)
            await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    return _samples(text)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def apiserver_metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await asyncio.to_thread(lambda: tools.kubectl("get", "--raw", "/metrics").stdout)
    return _samples(text)


def delta(after: dict, before: dict, name: str, **match: str) -> dict[tuple, float]:
    """Per label set of metric `name` whose labels include `match`: after - before."""
    out = {}
    for (n, labels), value in after.items():
        if n != name or any(dict(labels).get(k) != v for k, v in match.items()):
            continue
        out[labels] = value - before.get((n, labels), 0.0)
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """As PromQL's histogram_quantile over cumulative bucket counts (upper bound -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(count - previous_count, 1e-9)
            return round(previous_bound + (bound - previous_bound) * share, 4)
        previous_bound, previous_count = bound, count
    return None


def quantiles_of(after: dict, before: dict, name: str, **match: str) -> dict[str, Any]:
    """Count, p50 and p99 of a histogram of the operator's between two scrapes, over the
    label sets that include `match`."""
    buckets: dict[float, float] = {}
    for labels, value in delta(after, before, f"{name}_bucket", **match).items():
        bound = float(dict(labels)["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return {
        "count": int(buckets.get(float("inf"), 0)),
        "p50": histogram_quantile(buckets, 0.5),
        "p99": histogram_quantile(buckets, 0.99),
    }


def _label_sets(scraped: dict, name: str) -> list[tuple[tuple[str, str], ...]]:
    """The label sets of a histogram (its bucket bound left out)."""
    return sorted(
        {
            tuple((k, v) for k, v in labels if k != "le")
            for n, labels in scraped
            if n == f"{name}_bucket"
        }
    )


def webhook_latency(after: dict, before: dict) -> dict[str, Any]:
    """p50/p99 of the API server's calls to each admission webhook on Tunnel creates."""
    name = "apiserver_admission_webhook_admission_duration_seconds_bucket"
    per_webhook: dict[str, dict[float, float]] = {}
    for labels, value in delta(after, before, name, operation="CREATE").items():
        found = dict(labels)
        buckets = per_webhook.setdefault(f"{found['type']}/{found['name']}", {})
        bound = float(found["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return {
        webhook: {
            "calls": int(buckets.get(float("inf"), 0)),
            "p50_seconds": histogram_quantile(buckets, 0.5),
            "p99_seconds": histogram_quantile(buckets, 0.99),
        }
        for webhook, buckets in sorted(per_webhook.items())
        if buckets.get(float("inf"), 0) > 0
    }


def operator_requests(after: dict, before: dict) -> dict[str, float]:
    """The operator's requests between two scrapes, as 'VERB resource' -> count."""
    counted = delta(after, before, "tunnelop_api_requests_total")
    return {f"{dict(k)['verb']} {dict(k)['resource']}": v for k, v in sorted(counted.items()) if v}


def per_tunnel(requests: dict[str, float], tunnels: int) -> dict[str, float]:
    return {k: round(v / tunnels, 3) for k, v in requests.items()}


def writes_of(requests: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in requests.items() if k.split()[0] in WRITE_VERBS}


def tunnel_writes(requests: dict[str, float]) -> dict[str, float]:
    return {
        k: v
        for k, v in writes_of(requests).items()
        if k.split()[1].split("/")[0] not in NOT_TUNNEL_WRITES
    }


# ---- 1. the limit ------------------------------------------------------------------------


async def in_flight(count: int, concurrency: int, one) -> float:
    """Run one(i) for i < count with `concurrency` in flight; the seconds it took."""
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with gate:
            await one(i)

    start = time.monotonic()
    await asyncio.gather(*(run(i) for i in range(count)))
    return time.monotonic() - start


async def raw_create_rate(kube: Kube, count: int, concurrency: int, kind: str) -> float:
    """Creates per second of `count` plain ConfigMaps, or of Tunnels with no operator running
    (no webhook: what a Tunnel's create costs the API server by itself)."""
    namespace = f"bench-raw-{uuid.uuid4().hex[:6]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    async def create(i: int) -> None:
        if kind == "Tunnel":
            body = tunnel_body(f"t-{i:05d}", {"x": "y"})
        else:
            body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}}
        body["metadata"] = {"name": f"c-{i:05d}", "namespace": namespace}
        await kube.create(body)

    seconds = await in_flight(count, concurrency, create)
    await delete_namespace_fast(kube, namespace)
    return count / seconds


def _with_uid(body: dict[str, Any], uid: str) -> dict[str, Any]:
    body["metadata"]["uid"] = uid
    return body


async def minimal_write_set(
    kube: Kube, count: int, concurrency: int, relays: int
) -> dict[str, Any]:
    """The minimal write set's rate for `count` tunnels in a namespace of its own (deleted
    after), with this loop's CPU and the cores each process used meanwhile."""
    namespace = f"bench-floor-{uuid.uuid4().hex[:6]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    floor = MinimalWriteSet(kube, namespace, relays)
    cpu_before, client_before = cpu_seconds(None), time.process_time()
    started = time.monotonic()
    rate = await floor.rate(count, concurrency)
    seconds = time.monotonic() - started
    cpu_after, client_cpu = cpu_seconds(None), time.process_time() - client_before
    await delete_namespace_fast(kube, namespace)
    return {
        "per_second": round(rate, 1),
        "table_writes": floor.table_writes,
        # The loop's own CPU (it serializes the tables as an operator would), on shared cores.
        "client_cpu_seconds": round(client_cpu, 1),
        "cores_used": cores_used(cpu_before, cpu_after, seconds),
        "cpu_ms_per_tunnel": cpu_ms_per_tunnel(cpu_before, cpu_after, count),
    }


class MinimalWriteSet:
    """What any operator must get the API server to take for each tunnel, done by a tight
    loop: the Tunnel's create, its credentials Secret (server-side apply, as the operator),
    its status (a merge patch, as the operator) and its shard of its relay's table, rewritten
    whole (a PUT, as the operator) every 200 ms while it changes. The relays are named, not
    created: nothing else runs for them."""

    def __init__(self, kube: Kube, namespace: str, relays: int) -> None:
        self.kube = kube
        self.namespace = namespace
        self.relays = [
            RelayNode.model_validate(
                _with_uid(objects.relay_node(f"floor-{namespace}-{i}"), f"floor-{i}")
            )
            for i in range(relays)
        ]
        # Each relay's table by shard, and the shards changed since their last write.
        self.entries: dict[tuple[int, int], dict[tuple[str, str], TableEntry]] = {}
        self.dirty: set[tuple[int, int]] = set()
        self.table_writes = 0

    async def _tables(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or self.dirty:
            await asyncio.sleep(TABLE_DEBOUNCE)
            writes = []
            dirty, self.dirty = self.dirty, set()
            for i, shard in sorted(dirty):
                secret = build_table_secret(
                    self.relays[i], self.namespace, list(self.entries[(i, shard)].values()), shard
                )
                # The relays are not created: no owner for the garbage collector to miss.
                del secret["metadata"]["ownerReferences"]
                writes.append(self.kube.overwrite(secret))
            self.table_writes += len(writes)
            await asyncio.gather(*writes)

    async def one(self, i: int) -> None:
        name = f"t-{i:05d}"
        index = i % len(self.relays)
        relay = self.relays[index].metadata.name or ""
        port = 20000 + i // len(self.relays)
        created = await self.kube.create(
            {
                **tunnel_body(name, {"x": "y"}),
                "metadata": {"name": name, "namespace": self.namespace},
            }
        )
        assert created is not None
        secret, token = operator_objects.credentials(
            self.namespace, name, created["metadata"]["uid"], relay, port
        )
        at = (index, shard_of(self.namespace, name))
        self.entries.setdefault(at, {})[(self.namespace, name)] = TableEntry(
            self.namespace, name, token_sha256(token), "tcp", remote_port=port
        )
        self.dirty.add(at)
        await self.kube.apply(secret)
        address = f"{relay}.relays.example.test"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition = {"lastTransitionTime": now, "observedGeneration": 1, "status": "True"}
        status = {
            "observedGeneration": 1,
            "relayNode": relay,
            "remotePort": port,
            "endpoint": endpoint("tcp", address, port, None, None),
            "credentialsSecret": naming.credentials_secret_name(name),
            "conditions": [
                {
                    **condition,
                    "type": "Scheduled",
                    "reason": "Scheduled",
                    "message": f"Bound to relay {relay}",
                },
                {
                    **condition,
                    "type": "Ready",
                    "reason": "TunnelReady",
                    "message": "Visitors connect",
                },
            ],
        }
        await self.kube.patch_status("Tunnel", name, self.namespace, status)

    async def rate(self, count: int, concurrency: int) -> float:
        stop = asyncio.Event()
        tables = asyncio.create_task(self._tables(stop))
        seconds = await in_flight(count, concurrency, self.one)
        stop.set()
        await tables
        return count / seconds


async def delete_namespace_fast(kube: Kube, namespace: str) -> None:
    """Its Tunnels without finalizers, each kind deleted by one request (the namespace
    controller would take minutes at tens of thousands), then the namespace; until gone."""
    tunnels = await kube.list(GROUP_VERSION, "Tunnel", namespace)
    await in_flight(len(tunnels), 32, lambda i: _strip_finalizers(kube, tunnels[i]))
    for collection in (
        f"/apis/{GROUP_VERSION}/namespaces/{namespace}/tunnels",
        f"/api/v1/namespaces/{namespace}/secrets",
        f"/api/v1/namespaces/{namespace}/events",
    ):
        # The API server goes on deleting when the request's 30 s are up: waited for below.
        with contextlib.suppress(KubeError, TimeoutError, aiohttp.ClientError):
            await kube.request("DELETE", collection)
    await kube.delete("v1", "Namespace", namespace)
    for _ in range(600):
        if await kube.get("v1", "Namespace", namespace) is None:
            return
        await asyncio.sleep(1)


async def _strip_finalizers(kube: Kube, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    if meta.get("finalizers"):
        with contextlib.suppress(KubeError):
            await kube.patch(
                GROUP_VERSION,
                "Tunnel",
                meta["name"],
                meta["namespace"],
                {"metadata": {"finalizers": None}},
            )


# ---- 2-4. with the operator --------------------------------------------------------------


class ReadyWatch:
    """Stamps the moment each Tunnel of the namespace is first seen Ready."""

    def __init__(self, kube: Kube, namespace: str, sampler: Sampler) -> None:
        self.kube = kube
        self.namespace = namespace
        self.sampler = sampler
        self.ready_at: dict[str, float] = {}
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        path = f"/apis/{GROUP_VERSION}/namespaces/{self.namespace}/tunnels"
        version = ""
        while True:
            try:
                if not version:
                    listed = await self.kube.request("GET", path) or {}
                    for obj in listed.get("items", []):
                        self._seen(obj)
                    version = listed["metadata"]["resourceVersion"]
                async for event in self.kube.watch(path, resource_version=version, timeout=60):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = ""
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._seen(obj)
            except (KubeError, aiohttp.ClientError, TimeoutError):
                version = ""
                await asyncio.sleep(0.5)

    def _seen(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name not in self.ready_at and is_ready(obj):
            self.ready_at[name] = time.monotonic()
            self.sampler.ready = len(self.ready_at)
            self.changed.set()

    async def until(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not names <= self.ready_at.keys():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(names - self.ready_at.keys())
                raise TimeoutError(f"{len(missing)} tunnels not Ready, e.g. {missing[:5]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 5))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def bindings(kube: Kube, namespace: str) -> dict[str, tuple[Any, Any]]:
    return {
        t["metadata"]["name"]: (
            (t.get("status") or {}).get("relayNode"),
            (t.get("status") or {}).get("remotePort"),
        )
        for t in await kube.list(GROUP_VERSION, "Tunnel", namespace)
    }


def duplicate_ports(bound: dict[str, tuple[Any, Any]]) -> int:
    seen: dict[tuple[Any, Any], int] = {}
    for where in bound.values():
        if where[1] is not None:
            seen[where] = seen.get(where, 0) + 1
    return sum(n - 1 for n in seen.values() if n > 1)


async def burst(
    kube: Kube,
    operator: OperatorProcess,
    watch: ReadyWatch,
    namespace: str,
    selector: dict[str, str],
    count: int,
    concurrency: int,
) -> dict[str, Any]:
    metrics_url = f"http://127.0.0.1:{operator.health_port}/metrics"
    api_before, op_before = await apiserver_metrics(), await scrape(metrics_url)
    operator_pid = operator.process.pid if operator.process else None
    cpu_before = cpu_seconds(operator_pid)
    requested: dict[str, float] = {}

    async def create(i: int) -> None:
        name = f"t-{i:05d}"
        requested[name] = time.monotonic()
        body = tunnel_body(name, selector)
        body["metadata"]["namespace"] = namespace
        await kube.create(body)

    start = time.monotonic()
    create_seconds = await in_flight(count, concurrency, create)
    await watch.until(set(requested), timeout=max(600, count / 5))
    end = max(watch.ready_at[n] for n in requested)
    cpu_after = cpu_seconds(operator_pid)
    cores = cores_used(cpu_before, cpu_after, time.monotonic() - start)
    await asyncio.sleep(3)  # the operator's last status writes and table writes land
    api_after, op_after = await apiserver_metrics(), await scrape(metrics_url)
    latencies = [watch.ready_at[n] - requested[n] for n in requested]
    requests = operator_requests(op_after, op_before)
    return {
        "create_seconds": round(create_seconds, 3),
        "creates_per_second": round(count / create_seconds, 1),
        "all_ready_seconds": round(end - start, 3),
        "tunnels_per_second": round(count / (end - start), 1),
        "time_to_ready_seconds": summary(latencies),
        "webhooks": webhook_latency(api_after, api_before),
        # The same reviews as the operator timed them: the rest is the way there and back.
        "operator_review_seconds": quantiles_of(
            op_after, op_before, "tunnelop_admission_review_duration_seconds"
        ),
        "cores_used": cores,
        "cpu_ms_per_tunnel": cpu_ms_per_tunnel(cpu_before, cpu_after, count),
        "operator_requests": requests,
        "operator_requests_per_tunnel": per_tunnel(requests, count),
        "operator_writes_per_tunnel": round(sum(writes_of(requests).values()) / count, 3),
        "_latencies": latencies,
        "_ready_offsets": sorted(watch.ready_at[n] - start for n in requested),
        "_create_offsets": sorted(t - start for t in requested.values()),
    }


async def steady(
    kube: Kube,
    operator: OperatorProcess,
    watch: ReadyWatch,
    namespace: str,
    selector: dict[str, str],
    rate: float,
    seconds: float,
    first: int,
) -> dict[str, Any]:
    count = int(rate * seconds)
    requested: dict[str, float] = {}
    metrics_url = f"http://127.0.0.1:{operator.health_port}/metrics"
    api_before, op_before = await apiserver_metrics(), await scrape(metrics_url)
    operator_pid = operator.process.pid if operator.process else None
    cpu_before = cpu_seconds(operator_pid)
    start = time.monotonic()

    async def create(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        name = f"t-{first + i:05d}"
        body = tunnel_body(name, selector)
        body["metadata"]["namespace"] = namespace
        requested[name] = time.monotonic()
        await kube.create(body)

    await asyncio.gather(*(create(i) for i in range(count)))
    await watch.until(set(requested), timeout=120)
    cores = cores_used(cpu_before, cpu_seconds(operator_pid), time.monotonic() - start)
    api_after, op_after = await apiserver_metrics(), await scrape(metrics_url)
    latencies = [watch.ready_at[n] - requested[n] for n in requested]
    return {
        "rate_per_second": rate,
        "seconds": seconds,
        "tunnels": count,
        "time_to_ready_seconds": summary(latencies),
        "cores_used": cores,
        "webhooks": webhook_latency(api_after, api_before),
        "operator_review_seconds": quantiles_of(
            op_after, op_before, "tunnelop_admission_review_duration_seconds"
        ),
        # Where a tunnel's time goes: its reconcile, and each request of the operator.
        "tunnel_reconcile_seconds": quantiles_of(
            op_after, op_before, "tunnelop_reconcile_duration_seconds", controller="tunnels"
        ),
        "operator_request_seconds": {
            f"{dict(labels)['verb']} {dict(labels)['resource']}": quantiles_of(
                op_after, op_before, "tunnelop_api_request_duration_seconds", **dict(labels)
            )
            for labels in _label_sets(op_after, "tunnelop_api_request_duration_seconds")
            if dict(labels)["verb"] in WRITE_VERBS
        },
        "_latencies": latencies,
    }


async def restart(
    operator: OperatorProcess, kube: Kube, namespace: str, count: int
) -> dict[str, Any]:
    """Stop the operator, start it again; until it is ready and has reconciled every tunnel."""
    before = await bindings(kube, namespace)
    api_before = await apiserver_metrics()
    await operator.stop()
    started = time.monotonic()
    await operator.start(wait_for="none")
    url = f"http://127.0.0.1:{operator.health_port}/metrics"
    ready_at = steady_at = None
    last: dict = {}
    while time.monotonic() - started < 300:
        status, _ = await operator.readyz()
        if status == 200 and ready_at is None:
            ready_at = time.monotonic() - started
        with contextlib.suppress(aiohttp.ClientError):
            last = await scrape(url)
        reconciled = sum(
            delta(last, {}, "tunnelop_reconciles_total", controller="tunnels").values()
        )
        depth = last.get(("tunnelop_workqueue_depth", (("queue", "tunnels"),)), 1)
        if ready_at is not None and reconciled >= count and depth == 0:
            steady_at = time.monotonic() - started
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(5)  # anything the restart would still write shows up now
    after = await bindings(kube, namespace)
    api_after = await apiserver_metrics()
    final = await scrape(url)
    requests = operator_requests(final, {})
    api_writes = {
        f"{dict(k)['verb']} {dict(k)['resource']}{'/' + dict(k)['subresource'] if dict(k).get('subresource') else ''}": v
        for k, v in delta(api_after, api_before, "apiserver_request_total").items()
        if v
        and dict(k).get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE")
        and dict(k).get("resource") in ("tunnels", "secrets", "services", "events", "relaynodes")
    }
    return {
        "ready_seconds": round(ready_at, 2) if ready_at is not None else None,
        "steady_seconds": round(steady_at, 2) if steady_at is not None else None,
        "operator_requests": requests,
        "operator_tunnel_writes": tunnel_writes(requests),
        "apiserver_writes_during_restart": api_writes,
        "port_changes": sum(1 for n, b in before.items() if after.get(n) != b),
    }


COUNTED_RESOURCES = ("tunnels.tunnelop.dev", "secrets", "events", "relaynodes.tunnelop.dev")


async def object_counts(tunnels: int, wait_seconds: float = 120) -> dict[str, float]:
    """The API server's own object counts. It refreshes them about once a minute
    (apiserver_storage_objects), so wait until they show the tunnels created."""
    deadline = time.monotonic() + wait_seconds
    while True:
        found = await apiserver_metrics()
        counts = {}
        for (name, labels), value in found.items():
            if name in ("apiserver_storage_objects", "apiserver_resource_objects"):
                resource = dict(labels).get("resource", "")
                if resource in COUNTED_RESOURCES:
                    counts[resource] = value
        if counts.get("tunnels.tunnelop.dev", 0) >= tunnels or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(5)


def ensure_fake_nodes(count: int) -> None:
    """HostNetwork relays take one node each (their ports): kwok adds fake nodes as needed."""
    nodes = tools.kubectl("get", "nodes", "-o", "name").stdout.split()
    if len(nodes) >= count:
        return
    env = tools.env_with_tools(KWOK_WORKDIR=str(REPO / ".cluster" / "kwok"))
    subprocess.run(
        [
            str(tools.tool("kwokctl")),
            "-v=WARN",
            "scale",
            "node",
            "--name",
            "tunnelop",
            "--replicas",
            str(count),
        ],
        check=True,
        env=env,
    )
    tools.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    b = result["burst"]
    cdf, rate, rss = axes
    for label, lat in (
        ("burst", b["_latencies"]),
        ("steady", result.get("steady", {}).get("_latencies")),
    ):
        if lat:
            lat = sorted(lat)
            cdf.plot(lat, [i / len(lat) for i in range(1, len(lat) + 1)], label=label)
    cdf.set_xscale("log")
    cdf.set_xlabel("create to Ready (s, log)")
    cdf.set_ylabel("fraction of tunnels")
    cdf.set_title("time to Ready")
    cdf.legend()
    for label, offsets in (("created", b["_create_offsets"]), ("Ready", b["_ready_offsets"])):
        per_second: dict[int, int] = {}
        for t in offsets:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        xs = list(range(0, int(max(offsets)) + 1))
        rate.plot(xs, [per_second.get(x, 0) for x in xs], label=f"{label} per second")
    for when, style in (("before", "--"), ("after", ":")):
        if f"minimal_write_set_{when}" in result["limit"]:
            rate.axhline(
                result["limit"][f"minimal_write_set_{when}"]["per_second"],
                ls=style,
                c="grey",
                label=f"minimal write set rate, {when} the operator's run",
            )
    rate.set_xlabel("seconds since the burst's first create")
    rate.set_ylabel("tunnels per second")
    rate.set_title(f"burst of {result['tunnels']}: {b['tunnels_per_second']}/s")
    rate.legend(fontsize=8)
    samples = [s for s in result["_samples"] if "rss_mib" in s]
    rss.plot([s["t"] for s in samples], [s["rss_mib"] for s in samples], label="operator RSS (MiB)")
    rss.set_xlabel("seconds since the run began")
    rss.set_ylabel("MiB")
    twin = rss.twinx()
    twin.plot(
        [s["t"] for s in result["_samples"]],
        [s["ready"] for s in result["_samples"]],
        c="tab:green",
        label="tunnels Ready",
    )
    twin.set_ylabel("tunnels Ready")
    rss.set_title("operator RSS over the run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=10000)
    parser.add_argument("--relays", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--steady-rate", type=float, default=20)
    parser.add_argument("--steady-seconds", type=float, default=300, help="0: no steady stream")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="one more argument of `tunnelop run` (repeat it), e.g. --operator-arg=--tunnel-workers=128",
    )
    args = parser.parse_args()

    args.output.mkdir(parents=True, exist_ok=True)
    cluster = ensure_cluster()
    tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    tools.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    ensure_fake_nodes(args.relays + 1)
    kube = await Kube.connect(str(cluster.kubeconfig))
    result: dict[str, Any] = {
        **report.header(),
        "tunnels": args.tunnels,
        "relays": args.relays,
        "concurrency": args.concurrency,
        "operator_args": args.operator_arg,
    }
    n = args.tunnels
    print(
        f">> the limit: {n} ConfigMaps, then the minimal write set of {n} tunnels", file=sys.stderr
    )
    raw = await raw_create_rate(kube, n, args.concurrency, "ConfigMap")
    tunnel_creates = await raw_create_rate(kube, n, args.concurrency, "Tunnel")
    floor_before = await minimal_write_set(kube, n, args.concurrency, args.relays)
    result["limit"] = {
        "raw_create_per_second": round(raw, 1),
        "tunnel_create_per_second_without_operator": round(tunnel_creates, 1),
        "minimal_write_set_per_second": floor_before["per_second"],
        "minimal_write_set_before": floor_before,
    }
    print(
        f"   raw {raw:.1f}/s, tunnel creates {tunnel_creates:.1f}/s, "
        f"minimal write set {floor_before['per_second']:.1f} tunnels/s",
        file=sys.stderr,
    )

    label = {"tunnelop.bench/run": uuid.uuid4().hex[:8]}
    relays = [f"bench-{label['tunnelop.bench/run']}-{i}" for i in range(args.relays)]
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    log = args.output / "operator.log.tmp"
    # The finalizer by the policy: one webhook call less per create (docs/benchmarks.md).
    operator = OperatorProcess(
        cluster.kubeconfig,
        log,
        *("--log-level", "WARNING", "--finalizer-mode", "policy"),
        *args.operator_arg,
        own_process_group=True,
    )
    sampler = Sampler(time.monotonic())
    sampler.run()
    watch = ReadyWatch(kube, namespace, sampler)
    try:
        await operator.start()
        assert operator.process is not None
        sampler.pid = operator.process.pid
        objects.apply([objects.relay_node(r, labels=label, ports="20000-39999") for r in relays])
        for r in relays:
            await objects.wait_condition("relaynode", r, None, "Ready", timeout=120)
        await kube.create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        watch.start()
        await asyncio.sleep(1)
        rss_idle = rss_mib(operator.process.pid)
        print(f">> the burst: {n} tunnels on {args.relays} relays", file=sys.stderr)
        result["burst"] = await burst(kube, operator, watch, namespace, label, n, args.concurrency)
        result["burst"]["duplicate_ports"] = duplicate_ports(await bindings(kube, namespace))
        rss_burst = rss_mib(operator.process.pid)
        print(f"   {result['burst']['tunnels_per_second']}/s; restart", file=sys.stderr)
        result["restart"] = await restart(operator, kube, namespace, n)
        sampler.pid = operator.process.pid
        await asyncio.sleep(2)
        rss_restarted = rss_mib(operator.process.pid)
        result["memory"] = {
            "operator_rss_idle_mib": rss_idle,
            "operator_rss_after_burst_mib": rss_burst,
            "operator_rss_after_restart_mib": rss_restarted,
            "growth_per_1000_tunnels_mib": round((rss_restarted - rss_idle) / n * 1000, 1),
        }
        result["object_counts"] = await object_counts(n)
        if args.steady_seconds > 0:
            print(
                f">> steady: {args.steady_rate}/s for {args.steady_seconds:.0f} s", file=sys.stderr
            )
            result["steady"] = await steady(
                kube, operator, watch, namespace, label, args.steady_rate, args.steady_seconds, n
            )
        # The floor again, on the same machine minutes later: its speed drifts between
        # phases (docs/benchmarks.md), and the burst is judged against the floor around it.
        print(">> the minimal write set again, the operator stopped", file=sys.stderr)
        await operator.stop()
        delete_webhook_configurations()
        floor_after = await minimal_write_set(kube, n, args.concurrency, args.relays)
        result["limit"]["minimal_write_set_after"] = floor_after
        result["limit"]["minimal_write_set_per_second"] = round(
            statistics.fmean([floor_before["per_second"], floor_after["per_second"]]), 1
        )
        print(f"   minimal write set {floor_after['per_second']:.1f} tunnels/s", file=sys.stderr)
    finally:
        await watch.stop()
        await sampler.stop()
        result["_samples"] = sampler.samples
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        loads = [s["load1"] for s in sampler.samples]
        if loads:
            result["machine"]["load1_during"] = {
                "mean": round(statistics.fmean(loads), 2),
                "max": round(max(loads), 2),
            }
        print(">> cleaning up", file=sys.stderr)
        await operator.stop()
        delete_webhook_configurations()
        with contextlib.suppress(Exception):
            await delete_namespace_fast(kube, namespace)
        for r in relays:
            with contextlib.suppress(KubeError):
                await kube.patch(
                    GROUP_VERSION, "RelayNode", r, None, {"metadata": {"finalizers": None}}
                )
            await kube.delete(GROUP_VERSION, "RelayNode", r)
        tools.kubectl(
            "delete",
            "deployments,secrets,services,serviceaccounts,roles,rolebindings",
            "-n",
            RELAY_NAMESPACE,
            "-l",
            f"{naming.RELAY_LABEL} in ({','.join(relays)})",
            "--wait=false",
            check=False,
        )
        await kube.close()
    result["targets"] = targets(result)
    out = args.output / f"scale-{n}.json"
    public = _public(result)
    report.publish(public, out, lambda _r, p: plot(result, p))
    print(json_dump(public["targets"]))
    return 0


def targets(r: dict[str, Any]) -> dict[str, Any]:
    limit, b, rs, mem = r["limit"], r["burst"], r["restart"], r["memory"]
    floor, raw = limit["minimal_write_set_per_second"], limit["raw_create_per_second"]
    ratio = round(b["tunnels_per_second"] / floor, 3)
    admission = round(b["creates_per_second"] / raw, 3)
    found = {
        "burst_ratio_to_minimal_write_set": figure(ratio, ">= 0.8", ratio >= 0.8),
        # The floor before the operator's run and after it, apart (the target is judged
        # against their mean, the floor around the burst).
        **{
            f"burst_ratio_to_minimal_write_set_{when}": figure(
                round(
                    b["tunnels_per_second"] / limit[f"minimal_write_set_{when}"]["per_second"], 3
                ),
                "reported",
                None,
            )
            for when in ("before", "after")
            if f"minimal_write_set_{when}" in limit
        },
        "burst_ratio_to_raw_create_rate": figure(
            round(b["tunnels_per_second"] / raw, 3), "reported", None
        ),
        "burst_all_ready": figure(
            len(b["_latencies"]), f"== {r['tunnels']}", len(b["_latencies"]) == r["tunnels"]
        ),
        "burst_duplicate_ports": figure(b["duplicate_ports"], "== 0", b["duplicate_ports"] == 0),
        "admission_ratio_to_raw_create_rate": figure(admission, ">= 0.5", admission >= 0.5),
        "webhook_p99_seconds": figure(
            {k: v["p99_seconds"] for k, v in b["webhooks"].items()}, "reported", None
        ),
        "restart_steady_seconds": figure(
            rs["steady_seconds"],
            "<= 30",
            rs["steady_seconds"] is not None and rs["steady_seconds"] <= 30,
        ),
        "restart_tunnel_writes": figure(
            sum(rs["operator_tunnel_writes"].values()), "== 0", not rs["operator_tunnel_writes"]
        ),
        "restart_port_changes": figure(rs["port_changes"], "== 0", rs["port_changes"] == 0),
        "operator_rss_mib": figure(
            max(mem["operator_rss_after_burst_mib"], mem["operator_rss_after_restart_mib"]),
            "<= 300",
            max(mem["operator_rss_after_burst_mib"], mem["operator_rss_after_restart_mib"]) <= 300,
        ),
        "operator_rss_growth_per_1000_tunnels_mib": figure(
            mem["growth_per_1000_tunnels_mib"], "reported", None
        ),
    }
    if "steady" in r:
        p99 = r["steady"]["time_to_ready_seconds"]["p99"]
        found["steady_time_to_ready_p99_seconds"] = figure(p99, "<= 2", p99 <= 2)
    return found


def _public(result: dict[str, Any]) -> dict[str, Any]:
    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if not str(k).startswith("_")}
        return d

    public = strip(result)
    samples = result.get("_samples", [])
    public["samples"] = samples[:: max(1, len(samples) // 400)]  # RSS and Ready over time
    return public


def json_dump(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
