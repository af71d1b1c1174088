"""Tunnels to Ready on the local cluster, against the API server's own raw create rate.

Run with `make bench` (starts the local cluster if needed). In one run, from one client:
1. the raw rate: N plain ConfigMaps created with the same client and concurrency;
2. the operator (`tunnelop run`, as a process) with R RelayNodes; N Tunnels created at once,
   each timed from its create request to the first watch event that shows it Ready;
3. the operator's memory (RSS) once all are Ready.
Writes bench/results/tunnels-<N>.json and a plot beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

from kubernetes.aio import client, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import load, objects, tools  # noqa: E402
from support.cluster import ensure_cluster  # noqa: E402
from support.operator import OperatorProcess, delete_webhook_configurations  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mib": round(fields["VmRSS"], 1), "peak_rss_mib": round(fields["VmHWM"], 1)}


async def raw_create_rate(api: client.ApiClient, count: int, concurrency: int) -> float:
    core = client.CoreV1Api(api)
    ns = f"bench-raw-{uuid.uuid4().hex[:6]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    gate = asyncio.Semaphore(concurrency)

    async def create(i: int) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"c-{i:05d}"},
            "data": {"k": "v"},
        }
        async with gate:
            await core.create_namespaced_config_map(ns, body)

    start = time.monotonic()
    await asyncio.gather(*(create(i) for i in range(count)))
    elapsed = time.monotonic() - start
    await core.delete_namespace(ns)
    return count / elapsed


async def tunnels_to_ready(
    api: client.ApiClient, namespace: str, count: int, relays: int, concurrency: int
) -> dict:
    label = {"tunnelop.bench/run": uuid.uuid4().hex[:8]}
    names = [f"bench-{label['tunnelop.bench/run']}-{i}" for i in range(relays)]
    objects.apply([objects.relay_node(n, labels=label, ports="20000-39999") for n in names])
    for n in names:
        await objects.wait_condition("relaynode", n, None, "Ready", timeout=120)

    requested: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    done = asyncio.Event()

    async def watch_ready() -> None:
        custom = client.CustomObjectsApi(api)
        while not done.is_set():
            async with watch.Watch() as w:
                async for event in w.stream(
                    custom.list_namespaced_custom_object,
                    "tunnelop.dev",
                    "v1alpha1",
                    namespace,
                    "tunnels",
                    timeout_seconds=60,
                ):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if name not in ready_at and load.is_ready(obj):
                        ready_at[name] = time.monotonic()
                        if len(ready_at) == count:
                            done.set()
                            return

    watcher = asyncio.create_task(watch_ready())
    await asyncio.sleep(0.5)
    start = time.monotonic()
    custom = client.CustomObjectsApi(api)
    gate = asyncio.Semaphore(concurrency)

    async def create(i: int) -> None:
        name = f"t-{i:05d}"
        body = {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "Tunnel",
            "metadata": {"name": name},
            "spec": {"protocol": "tcp", "relay": {"nodeSelector": label}},
        }
        async with gate:
            requested[name] = time.monotonic()
            await custom.create_namespaced_custom_object(
                "tunnelop.dev", "v1alpha1", namespace, "tunnels", body
            )

    await asyncio.gather(*(create(i) for i in range(count)))
    created = time.monotonic()
    await asyncio.wait_for(done.wait(), timeout=max(300, count / 5))
    watcher.cancel()
    end = max(ready_at.values())
    latencies = [ready_at[n] - requested[n] for n in requested]
    tunnels = await load.list_tunnels(api, namespace)
    return {
        "tunnels": count,
        "relays": relays,
        "create_seconds": round(created - start, 3),
        "all_ready_seconds": round(end - start, 3),
        "tunnels_per_second": round(count / (end - start), 1),
        "time_to_ready_seconds": {
            "p50": round(percentile(latencies, 50), 3),
            "p95": round(percentile(latencies, 95), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies), 3),
            "mean": round(statistics.fmean(latencies), 3),
        },
        "duplicates": len(load.duplicate_ports(tunnels)),
        "relay_names": names,
        "_latencies": latencies,
        "_ready_offsets": sorted(t - start for t in ready_at.values()),
    }


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offsets = result["_ready_offsets"]
    left.plot(offsets, range(1, len(offsets) + 1))
    left.set_xlabel("seconds since the first create")
    left.set_ylabel("tunnels Ready")
    left.set_title(
        f"{result['tunnels']} tunnels: {result['tunnels_per_second']}/s "
        f"(raw create rate {result['raw_create_per_second']}/s)"
    )
    lat = sorted(result["_latencies"])
    right.plot(lat, [i / len(lat) for i in range(1, len(lat) + 1)])
    right.set_xlabel("create to Ready (s)")
    right.set_ylabel("fraction of tunnels")
    t = result["time_to_ready_seconds"]
    right.set_title(f"p50 {t['p50']}s  p95 {t['p95']}s  p99 {t['p99']}s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    cluster = ensure_cluster()
    tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    tools.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
    cfg = client.Configuration()
    from kubernetes.aio import config

    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = args.concurrency * 2
    api = client.ApiClient(cfg)
    args.output.mkdir(parents=True, exist_ok=True)
    operator = OperatorProcess(
        cluster.kubeconfig, args.output / "operator.log.tmp", "--log-level", "WARNING"
    )
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    try:
        raw = await raw_create_rate(api, args.tunnels, args.concurrency)
        await operator.start()
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        result = await tunnels_to_ready(api, namespace, args.tunnels, args.relays, args.concurrency)
        result["raw_create_per_second"] = round(raw, 1)
        result["ratio_to_raw_create_rate"] = round(result["tunnels_per_second"] / raw, 3)
        result["operator_memory"] = rss_mib(operator.process.pid)
        result["concurrency"] = args.concurrency
        result["machine"] = {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        }
        result["kubernetes"] = tools.versions()["KUBERNETES_VERSION"]
        out = args.output / f"tunnels-{args.tunnels}.json"
        plot(result, out.with_suffix(".png"))
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        out.write_text(json.dumps(public, indent=2) + "\n")
        print(json.dumps(public, indent=2))
    finally:
        # While the operator runs: its finalizers let the Tunnels and RelayNodes go.
        tools.kubectl("delete", "namespace", namespace, "--timeout=600s", check=False)
        names = result.get("relay_names", []) if "result" in locals() else []
        if names:
            tools.kubectl("delete", "relaynode", *names, "--timeout=120s", check=False)
        await operator.stop()
        delete_webhook_configurations()
        await api.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
