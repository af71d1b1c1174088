"""How many tunnels one relay carries: its table (split over shard Secrets) is budgeted to
1 MiB in all, so that every shard fits a Secret whatever the spread, and the scheduler refuses a tunnel whose entry would not fit (CapacityExhausted). This measures the
entry sizes of realistic tunnel mixes, how many tunnels fit, and what a full table costs the
operator (holding a written version) and the agent (parsing and indexing it).

    python bench/bench_table.py

Writes bench/results/table-capacity.json.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

from tunnelop.agent.index import TableIndex
from tunnelop.api.v1alpha1 import PortSpan
from tunnelop.contract.table import (
    TABLE_BUDGET_BYTES,
    TableEntry,
    parse_table_json,
    table_documents,
    token_sha256,
)
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import Allocation, AllocationTable, TunnelRequest

RESULTS = Path(__file__).parent / "results"
WORDS = ("web", "game", "ssh", "minecraft", "blog", "api", "home", "nas", "dev", "mc-server")


def tenant_entry(rng: random.Random, i: int, mix: str) -> TableEntry:
    """One tunnel as providers' tenants name them: user-<n> namespaces, short names."""
    namespace = f"user-{rng.randrange(100_000)}"
    name = f"{rng.choice(WORDS)}-{i}"
    protocol = rng.choice(("tcp", "udp", "http")) if mix == "mixed" else mix
    extra: dict = {}
    if mix == "mixed" and rng.random() < 0.3:
        extra["bandwidth_bps"] = rng.choice((1_000_000, 10_000_000, 100_000_000))
    if mix == "mixed" and rng.random() < 0.1:
        extra["allow_source_ranges"] = ("203.0.113.0/24",)
    return TableEntry(
        namespace=namespace,
        name=name,
        token_sha256=token_sha256(f"token-{i}"),
        protocol=protocol,
        remote_port=20000 + i % 45000 if protocol != "http" else None,
        subdomain=f"{name}-{namespace}"[:63] if protocol == "http" else None,
        **extra,
    )


def fill(mix: str, seed: int = 1) -> dict:
    rng = random.Random(seed)
    entries: list[TableEntry] = []
    used = 0
    while True:
        entry = tenant_entry(rng, len(entries), mix)
        # Counted as the scheduler counts it: as if suspended (a suspension needs the room).
        size = dataclasses.replace(entry, suspended=True).size()
        if used + size > TABLE_BUDGET_BYTES or len(entries) >= 45000:
            break
        entries.append(entry)
        used += size
    texts = table_documents("relay-1", entries)
    started = time.perf_counter()
    shards = [parse_table_json(text) for text in texts]
    TableIndex.union("relay-1", [TableIndex.build("relay-1", d.entries) for d in shards])
    agent_load = time.perf_counter() - started

    table = AllocationTable()
    table.upsert_relay(
        RelayView(
            name="relay-1",
            protocols=("tcp", "udp", "http"),
            port_range=PortSpan(1024, 65535),
            http_domain="t.example",
        )
    )
    started = time.perf_counter()
    table.table_written("relay-1", entries)
    hold = time.perf_counter() - started
    for e in entries:
        table.restore(
            Allocation(
                (e.namespace, e.name),
                "relay-1",
                e.protocol,
                port=e.remote_port,
                subdomain=e.subdomain,
                http_domain="t.example" if e.subdomain else None,
                table_bytes=e.size(),
            )
        )
    started = time.perf_counter()
    placed = table.schedule(TunnelRequest(key=("x", "y"), protocol="tcp", table_bytes=200))
    schedule_full = time.perf_counter() - started
    return {
        "mix": mix,
        "tunnels": len(entries),
        "table_bytes": sum(len(text.encode()) for text in texts),
        "largest_shard_bytes": max(len(text.encode()) for text in texts),
        "entry_bytes_median": statistics.median(e.size() for e in entries),
        "entry_bytes_max": max(e.size() for e in entries),
        "agent_parse_and_index_seconds": round(agent_load, 4),
        "operator_hold_written_table_seconds": round(hold, 4),
        "next_tunnel_refused": type(placed).__name__ == "Unschedulable",
        "schedule_on_full_relay_seconds": round(schedule_full, 6),
    }


def main() -> None:
    results = {
        "budget_bytes": TABLE_BUDGET_BYTES,
        "mixes": [fill(mix) for mix in ("tcp", "http", "mixed")],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "table-capacity.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for row in results["mixes"]:
        print(
            f"{row['mix']:>6}: {row['tunnels']} tunnels per relay "
            f"(median entry {row['entry_bytes_median']} B), agent loads it in "
            f"{row['agent_parse_and_index_seconds']} s"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
