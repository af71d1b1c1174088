"""A RelayPool's built-in autoscaler under a burst, then with the load gone.

Run with `make bench-pools` (also part of `make bench`; starts the local cluster if needed).
The operator (`tunnelop run`) and an autoscaled pool (capacity 10 tunnels per relay, target
60%, minReplicas 1) whose relays are the local cluster's paper relays (the control plane
only: their pods run on kwok's fake nodes). Then:

- burst: N tunnels of the pool created at once (32 concurrent creates): the time until every
  one is Ready, how many scale-up decisions it took (one is the goal: waiting tunnels count
  as demand), and the relays at the end;
- scale-down: every tunnel deleted: the time until the pool is back at minReplicas (it
  shrinks by one relay per scaleDownDelaySeconds, each drained before it is deleted).

Writes bench/results/pools.json and pools.png (Ready tunnels, relays and desired relays over
time), and prints a summary. Data-plane moves (failover, a blocked port, scale-down with
connected clients) are timed by tests/e2e/test_moves.py, which prints its numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import report  # noqa: E402
from kubernetes.aio import client, config  # noqa: E402

from support import load, objects, tools  # noqa: E402
from support.cluster import ensure_cluster, teardown  # noqa: E402
from support.operator import OperatorProcess  # noqa: E402

CAPACITY = 10
TARGET = 60


@contextlib.asynccontextmanager
async def api_client(kubeconfig: Path):
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        await api.close()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pool_manifest(name: str, max_replicas: int, delay: int) -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "RelayPool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "ports": {"range": "34000-34999"},
                    "capacity": {"tunnels": CAPACITY},
                    "exposure": {"type": "LoadBalancer", "address": "198.51.100.30"},
                }
            },
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": max_replicas,
                "targetUtilization": TARGET,
                "scaleDownDelaySeconds": delay,
            },
        },
    }


def snapshot(pool: str, namespace: str) -> dict[str, int]:
    tunnels = objects.list_objects("tunnel", namespace)
    relays = objects.list_objects("relaynode", selector=f"tunnelop.dev/pool={pool}")
    status = (objects.get("relaypool", pool) or {}).get("status") or {}
    return {
        "ready_tunnels": sum(
            1 for t in tunnels if (objects.condition(t, "Ready") or {}).get("status") == "True"
        ),
        "tunnels": len(tunnels),
        "relays": len(relays),
        "desired": status.get("desiredReplicas") or 0,
    }


async def watch_until(
    pool: str, namespace: str, start: float, done, timeline: list[dict[str, Any]], timeout: float
) -> float:
    """Sample the pool every 0.5 s into `timeline` until `done(sample)`; seconds taken."""
    while True:
        sample = await asyncio.to_thread(snapshot, pool, namespace)
        sample["t"] = round(time.monotonic() - start, 2)
        timeline.append(sample)
        if done(sample):
            return sample["t"]
        if sample["t"] > timeout:
            raise TimeoutError(f"not done after {timeout} s: {sample}")
        await asyncio.sleep(0.5)


def scale_events(pool: str) -> list[str]:
    return [
        f"{e['reason']}: {e['message']}"
        for e in objects.events("default", pool, kind="RelayPool")
        if e["reason"] in ("ScaledUp", "ScaledDown")
    ]


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster = ensure_cluster()
    run_id = uuid.uuid4().hex[:5]
    pool, namespace = f"bpool-{run_id}", f"bench-pools-{run_id}"
    operator = OperatorProcess(
        cluster.kubeconfig, workdir / "operator.log", "--log-level", "WARNING"
    )
    timeline: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    max_replicas = -(-args.tunnels * 100 // (CAPACITY * TARGET)) + 2
    try:
        tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        tools.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        await operator.start()
        tools.kubectl("create", "namespace", namespace)
        objects.apply(pool_manifest(pool, max_replicas, args.scale_down_delay))
        await objects.wait_condition("relaypool", pool, None, "Ready", timeout=120)
        log(f"pool {pool} ready with 1 relay; applying {args.tunnels} tunnels at once")

        start = time.monotonic()
        async with api_client(cluster.kubeconfig) as api:
            await load.create_tunnels(api, namespace, args.tunnels, placement={"pool": pool})
        result["seconds_to_create"] = round(time.monotonic() - start, 2)
        burst = await watch_until(
            pool,
            namespace,
            start,
            lambda s: s["ready_tunnels"] == args.tunnels,
            timeline,
            timeout=600,
        )
        ups = scale_events(pool)
        end = timeline[-1]
        result["burst"] = {
            "tunnels": args.tunnels,
            "seconds_to_all_ready": burst,
            "relays_at_end": end["relays"],
            "desired_at_end": end["desired"],
            "scale_decisions": ups,
        }
        log(f"all {args.tunnels} Ready after {burst:.1f} s on {end['relays']} relays; {ups}")

        down_start = time.monotonic()
        tools.kubectl("delete", "tunnels", "--all", "-n", namespace, "--wait=false")
        shrink = await watch_until(
            pool,
            namespace,
            start,
            lambda s: s["tunnels"] == 0 and s["relays"] == 1 and s["desired"] == 1,
            timeline,
            timeout=60 + end["relays"] * (args.scale_down_delay + 30),
        )
        result["scale_down"] = {
            "from_relays": end["relays"],
            "scale_down_delay_seconds": args.scale_down_delay,
            "seconds_to_min_replicas": round(time.monotonic() - down_start, 2),
            "per_relay_seconds": round(
                (time.monotonic() - down_start) / max(end["relays"] - 1, 1), 2
            ),
        }
        log(f"back to 1 relay {shrink - burst:.1f} s after the tunnels went")
    finally:
        tools.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        tools.kubectl("delete", "relaypool", pool, "--ignore-not-found", check=False)
        await operator.stop()
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            tools.kubectl("delete", kind, "tunnelop.dev", "--ignore-not-found", check=False)
        teardown(cluster)
    result["timeline"] = timeline
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    t = [s["t"] for s in timeline]
    fig, left = plt.subplots(figsize=(10, 4.5))
    left.plot(t, [s["ready_tunnels"] for s in timeline], color="C0", label="Ready tunnels")
    left.set_xlabel("seconds from the burst")
    left.set_ylabel("tunnels")
    right = left.twinx()
    right.step(t, [s["relays"] for s in timeline], where="post", color="C1", label="relays")
    right.step(
        t, [s["desired"] for s in timeline], where="post", color="C2", ls="--", label="desired"
    )
    right.set_ylabel("relays")
    lines = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(lines, labels, fontsize=8, loc="center right")
    left.set_title(
        f"autoscaled pool: {result['burst']['tunnels']} tunnels at once, then none "
        f"(capacity {CAPACITY}, target {TARGET}%), {result['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=100, help="the burst (default 100)")
    parser.add_argument(
        "--scale-down-delay", type=int, default=5, help="scaleDownDelaySeconds (default 5)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    result: dict[str, Any] = {
        **report.header(),
        "capacity_tunnels": CAPACITY,
        "target_utilization": TARGET,
    }
    with tempfile.TemporaryDirectory(prefix="bench-pools-") as tmp:
        result.update(await run(args, Path(tmp)))
    out = args.output / "pools.json"
    report.publish(result, out, plot)
    burst, down = result["burst"], result["scale_down"]
    print("pool benchmark:")
    print(
        f"  burst of {burst['tunnels']} tunnels (created in {result['seconds_to_create']} s): "
        f"all Ready in {burst['seconds_to_all_ready']} s "
        f"on {burst['relays_at_end']} relays, {len(burst['scale_decisions'])} scale-up "
        "decision(s)"
    )
    print(
        f"  scale-down from {down['from_relays']} relays to 1: "
        f"{down['seconds_to_min_replicas']} s ({down['per_relay_seconds']} s per relay, "
        f"delay {down['scale_down_delay_seconds']} s)"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
