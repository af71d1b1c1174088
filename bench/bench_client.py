"""The operator's own CPU per request to the API server, by event loop and request path
(decision 0013 says what was chosen from these figures).

Each variant makes REQUESTS requests (a server-side apply of a credentials-sized Secret and a
merge patch of it, 32 in flight, as the operator writes a tunnel's credentials) and counts the
process's CPU:

- path `kube`: through `Kube.request`, the operator's door (the kubernetes.aio ApiClient's
  parameter serialization and REST client, then aiohttp);
- path `session`: the same aiohttp session, TLS context and bearer token, the request built
  by hand: what a lighter path than the ApiClient could save at best;
- loop `asyncio` (the operator's) and `uvloop` (where installed).

The variants take turns, ROUNDS times, so that the machine's speed, which drifts between
minutes, weighs on all of them alike; the median of each is reported.

    python bench/bench_client.py --requests 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import report  # noqa: E402

from support.cluster import ensure_cluster  # noqa: E402
from tunnelop.platform.kube import FIELD_MANAGER, Kube  # noqa: E402

CONCURRENCY = 32
Send = Callable[[str, str, dict[str, Any], str, str], Awaitable[None]]


def _through_kube(kube: Kube) -> Send:
    async def send(method: str, path: str, body: dict[str, Any], ctype: str, query: str) -> None:
        params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else None
        await kube.request(method, path, body, query=params, content_type=ctype)  # type: ignore[arg-type]

    return send


async def _through_session(kube: Kube) -> Send:
    """The ApiClient's own aiohttp session and configuration, no ApiClient in between."""
    cfg = kube.api.configuration
    auth: dict[str, str] = {}
    await kube.api.update_params_for_auth(auth, [], ["BearerToken"], "/", "GET", None)
    rest = kube.api.rest_client
    if rest.pool_manager is None:
        rest.pool_manager = rest._create_pool_manager()
    session = rest.pool_manager

    async def send(method: str, path: str, body: dict[str, Any], ctype: str, query: str) -> None:
        url = cfg.host + path + (f"?{query}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": ctype, **auth}
        async with session.request(method, url, data=json.dumps(body), headers=headers) as r:
            data = await r.read()
            if r.status >= 300:
                raise RuntimeError(f"{r.status}: {data[:200]!r}")
            json.loads(data)

    return send


async def cpu_per_request(kubeconfig: str, path: str, requests: int) -> dict[str, float]:
    kube = await Kube.connect(kubeconfig)
    namespace = f"bench-client-{uuid.uuid4().hex[:6]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    send = _through_kube(kube) if path == "kube" else await _through_session(kube)
    base = f"/api/v1/namespaces/{namespace}/secrets"
    limit = asyncio.Semaphore(CONCURRENCY)

    async def credentials(i: int) -> None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"c-{i}", "namespace": namespace},
            "stringData": {"token": "t" * 32, "frpc.toml": "f" * 600},
        }
        async with limit:
            await send(
                "PATCH",
                f"{base}/c-{i}",
                secret,
                "application/apply-patch+yaml",
                f"fieldManager={FIELD_MANAGER}&force=true",
            )
            await send(
                "PATCH",
                f"{base}/c-{i}",
                {"metadata": {"labels": {"round": f"r{i}"}}},
                "application/merge-patch+json",
                "",
            )

    try:
        await credentials(-1)  # connections and token in place before the clock starts
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(credentials(i) for i in range(requests // 2)))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        await kube.delete("v1", "Namespace", namespace)
        await kube.close()
    return {"cpu_ms": cpu / requests * 1000, "per_second": requests / wall}


def run(loop: str, coro: Awaitable[dict[str, float]]) -> dict[str, float]:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    values = [result["variants"][n]["cpu_ms_per_request"]["median"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(names, values)
    ax.set_xlabel("client CPU per request (ms, median of rounds)")
    ax.set_title(f"{result['requests']} requests, {CONCURRENCY} in flight, per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    cluster = ensure_cluster()
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        print(">> uvloop is not installed: the asyncio loop alone", file=sys.stderr)
    variants = [(loop, path) for loop in loops for path in ("kube", "session")]
    rounds: dict[str, list[dict[str, float]]] = {f"{lp} {p}": [] for lp, p in variants}
    for r in range(args.rounds):
        for loop, path in variants:
            found = run(loop, cpu_per_request(str(cluster.kubeconfig), path, args.requests))
            rounds[f"{loop} {path}"].append(found)
            print(
                f"   round {r + 1} {loop} {path}: {found['cpu_ms']:.3f} ms a request, "
                f"{found['per_second']:.0f}/s",
                file=sys.stderr,
            )
    result: dict[str, Any] = {
        **report.header(),
        "requests": args.requests,
        "concurrency": CONCURRENCY,
        "variants": {
            name: {
                "cpu_ms_per_request": {
                    "median": round(statistics.median(f["cpu_ms"] for f in found), 3),
                    "rounds": [round(f["cpu_ms"], 3) for f in found],
                },
                "requests_per_second": [round(f["per_second"]) for f in found],
            }
            for name, found in rounds.items()
        },
    }
    report.publish(result, args.output / "client.json", plot)
    print(json.dumps({n: v["cpu_ms_per_request"] for n, v in result["variants"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
