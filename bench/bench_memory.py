"""What the operator keeps per tunnel, structure by structure (no cluster).

The operator's state at N bound tcp tunnels is built through the operator's own code, from
objects shaped as the API server returns them (a Tunnel with managedFields of two managers
and a bound status, its credentials Secret, its relay's table), and tracemalloc measures what
each structure adds:

- the Tunnel cache (controllers/caches.py), as the watch hands tunnels over;
- the informers' identities (platform/informer.py: what vanished in a watch gap);
- the credentials (token and frpc.toml checksum per tunnel, controllers/watches.py);
- the allocation table (domain/scheduling) and the relay tables' entries (relaytables.py).

    python bench/bench_memory.py --tunnels 10000

Writes bench/results/memory-<N>.json. The operator's RSS at N tunnels (bench_scale.py) is
these plus the interpreter and libraries (~70 MiB before any tunnel) and what the allocator
keeps from bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import operator_objects  # noqa: E402
import report  # noqa: E402

from support.objects import relay_node  # noqa: E402
from tunnelop.api.v1alpha1 import RelayNode, Tunnel  # noqa: E402
from tunnelop.contract import naming  # noqa: E402
from tunnelop.contract.table import (  # noqa: E402
    TableEntry,
    split_by_shard,
    table_json,
    token_sha256,
)
from tunnelop.controllers import watches  # noqa: E402
from tunnelop.controllers.relaytables import RelayTables  # noqa: E402
from tunnelop.controllers.state import Runtime  # noqa: E402
from tunnelop.domain.relayview import RelayView  # noqa: E402
from tunnelop.domain.scheduling import TunnelRequest  # noqa: E402
from tunnelop.platform.informer import Informer  # noqa: E402

RELAYS = 10


def tunnel_body(i: int, relay: str, port: int) -> dict[str, Any]:
    """A bound Tunnel as a watch event carries it: fresh strings, as each parse makes them."""
    name, namespace = f"t-{i:05d}", f"user-{i % 500}"
    when = f"2026-12-01T08:{i // 600 % 60:02d}:{i // 10 % 60:02d}Z"
    text = json.dumps(
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "Tunnel",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"{i:08x}-7c1e-4f7e-9b2a-1c2d3e4f5a6b",
                "resourceVersion": str(100000 + i),
                "generation": 1,
                "creationTimestamp": when,
                "finalizers": [naming.FINALIZER],
                "managedFields": [
                    {
                        "manager": "kubectl-client-side-apply",
                        "operation": "Update",
                        "apiVersion": "tunnelop.dev/v1alpha1",
                        "time": when,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {".": {}, "f:protocol": {}, "f:relay": {}}},
                    },
                    {
                        "manager": "tunnelop",
                        "operation": "Update",
                        "apiVersion": "tunnelop.dev/v1alpha1",
                        "time": when,
                        "fieldsType": "FieldsV1",
                        "subresource": "status",
                        "fieldsV1": {"f:status": {".": {}, "f:conditions": {}, "f:endpoint": {}}},
                    },
                ],
            },
            "spec": {"protocol": "tcp", "relay": {"nodeSelector": {"tier": "free"}}},
            "status": {
                "observedGeneration": 1,
                "relayNode": relay,
                "remotePort": port,
                "endpoint": f"{relay}.relays.example.test:{port}",
                "credentialsSecret": f"{name}-frpc",
                "conditions": [
                    {
                        "type": t,
                        "status": "True",
                        "reason": r,
                        "message": m,
                        "observedGeneration": 1,
                        "lastTransitionTime": when,
                    }
                    for t, r, m in (
                        ("Scheduled", "Scheduled", f"Bound to relay {relay}"),
                        (
                            "Ready",
                            "TunnelReady",
                            f"Visitors connect to {relay}.relays.example.test:{port}",
                        ),
                    )
                ],
            },
        }
    )
    return json.loads(text)


def credentials(body: dict[str, Any], relay: str, port: int) -> tuple[dict[str, Any], str]:
    """The tunnel's credentials Secret as a watch event carries it (fresh strings)."""
    meta = body["metadata"]
    secret, token = operator_objects.credentials(
        meta["namespace"], meta["name"], meta["uid"], relay, port
    )
    return json.loads(json.dumps(secret)), token


def measured(step) -> int:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = step()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    del kept
    return after - before


async def run(count: int) -> dict[str, Any]:
    relays = [f"relay-{r}" for r in range(RELAYS)]
    placed = [(i, relays[i % RELAYS], 20000 + i // RELAYS) for i in range(count)]
    bodies = [tunnel_body(i, relay, port) for i, relay, port in placed]
    secrets_ = [
        credentials(b, relay, port) for b, (_, relay, port) in zip(bodies, placed, strict=True)
    ]
    rt = Runtime(kube=None, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    for relay in relays:
        body = relay_node(relay, ports="20000-39999", labels={"tier": "free"})
        model = RelayNode.model_validate(body)
        rt.table.upsert_relay(RelayView.from_model(model, ready=True))
    rt.tables = RelayTables(None, "tunnelop-relays", rt.table, {}, lambda _: None)  # type: ignore[arg-type]
    informers = [Informer(None, p, lambda k, o: None) for p in ("tunnels", "secrets")]  # type: ignore[arg-type]
    sizes: dict[str, int] = {}

    def as_parsed() -> dict:
        # For comparison: the Tunnels as parsed, as the cache kept them before slimming.
        return {i: json.loads(json.dumps(b)) for i, b in enumerate(bodies)}

    def cache() -> None:
        for body in bodies:
            rt.cache.remember_tunnel(
                (body["metadata"]["namespace"], body["metadata"]["name"]), body
            )

    def identities() -> None:
        for body in bodies:
            informers[0]._dispatch("ADDED", body)
        for secret, _ in secrets_:
            informers[1]._dispatch("ADDED", secret)

    def credential_memory() -> None:
        for secret, _ in secrets_:
            watches._remember_credentials(rt, secret)

    def allocations() -> None:
        for body in bodies:
            request = TunnelRequest.from_tunnel(Tunnel.model_validate(body))
            rt.table.schedule(request)

    def table_entries() -> None:
        for body, (_, token) in zip(bodies, secrets_, strict=True):
            meta, status = body["metadata"], body["status"]
            entry = TableEntry(
                meta["namespace"],
                meta["name"],
                token_sha256(token),
                "tcp",
                remote_port=status["remotePort"],
            )
            rt.tables.set_entry(status["relayNode"], entry)
        for relay in relays:
            # As after a write: serialized (each entry keeps its line) and written, shard by
            # shard.
            for shard, part in enumerate(split_by_shard(rt.tables.desired(relay).values())):
                table_json(relay, part, shard)
                rt.tables.remember_written(relay, shard, {(e.namespace, e.name): e for e in part})

    tracemalloc.start()
    steps = (
        ("tunnel_cache", cache),
        ("informer_identities", identities),
        ("credentials", credential_memory),
        ("allocation_table", allocations),
        ("relay_table_entries", table_entries),
    )
    for name, step in steps:
        sizes[name] = measured(step)
    as_parsed_size = measured(as_parsed)
    tracemalloc.stop()
    per_tunnel = {k: round(v / count) for k, v in sizes.items()}
    return {
        **report.header(),
        "tunnels": count,
        "bytes_per_tunnel": per_tunnel,
        "bytes_per_tunnel_total": sum(per_tunnel.values()),
        "tunnel_cache_bytes_per_tunnel_as_parsed": round(as_parsed_size / count),
        "mib_at_this_size": round(sum(sizes.values()) / 2**20, 1),
        "mib_per_1000_tunnels": round(sum(sizes.values()) / count * 1000 / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=10000)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    result = asyncio.run(run(args.tunnels))
    out = args.output / f"memory-{args.tunnels}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
