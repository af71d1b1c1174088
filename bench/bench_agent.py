"""How many frps plugin calls one relay agent answers per second, and how fast.

Every connected client sends a heartbeat (Ping) every second (the frpc.toml the operator
writes), and each is a plugin call; so the agent's rate bounds the clients one relay can hold. The agent runs as a real process with a
table of TUNNELS entries (served from its on-disk copy, no API server needed); a client
keeps CONCURRENCY requests in flight, as frps does with many clients, mixing Ping (90%) and
NewUserConn (10%) calls, each client with a session (run_id) of its own, and with frps's
credentials for the plugin endpoint.

    python bench/bench_agent.py --tunnels 5000 --seconds 10

The load generator is Python too and shares the cores, so the request rate it reaches is a
floor; the agent's CPU time per call is the figure that sizes a relay.

Writes bench/results/agent-<tunnels>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tunnelop.agent.source import write_copies
from tunnelop.contract import basicauth
from tunnelop.contract.naming import PLUGIN_PASSWORD_ENV, PLUGIN_USER
from tunnelop.contract.table import TableEntry, token_sha256

ADDRESS = "127.0.0.250"
RESULTS = Path(__file__).parent / "results"
HEARTBEAT_INTERVAL = 1.0  # builders/frps.py CLIENT_HEARTBEAT_INTERVAL
PLUGIN_PASSWORD = "bench-plugin-password"


def table(tunnels: int) -> tuple[list[TableEntry], list[dict]]:
    entries, clients = [], []
    for i in range(tunnels):
        ns, name, token = f"tenant-{i % 500}", f"t{i}", f"token-{i}"
        entries.append(TableEntry(ns, name, token_sha256(token), "tcp", remote_port=20000 + i))
        metas = {"tunnel": f"{ns}/{name}", "token": token}
        user = {"user": ns, "metas": metas, "run_id": f"run-{i:08x}"}
        clients.append(user)
    return entries, clients


async def run(tunnels: int, seconds: float, concurrency: int) -> dict:
    entries, clients = table(tunnels)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        write_copies(state, "bench", entries)
        (state / "kubeconfig").write_text(
            "apiVersion: v1\nkind: Config\nclusters: [{name: x, cluster: {server: "
            '"https://127.0.0.1:9"}}]\nusers: [{name: x, user: {token: x}}]\n'
            "contexts: [{name: x, context: {cluster: x, user: x}}]\ncurrent-context: x\n"
        )
        agent = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "tunnelop"),
            "agent",
            "--relay=bench",
            "--namespace=x",
            "--table-secret=x",
            f"--listen={ADDRESS}:7400",
            f"--health-listen={ADDRESS}:7401",
            f"--frps-dashboard=http://{ADDRESS}:7500",
            f"--kubeconfig={state / 'kubeconfig'}",
            "--log-level=ERROR",
            env={
                **os.environ,
                "TUNNELOP_STATE_DIR": str(state),
                PLUGIN_PASSWORD_ENV: PLUGIN_PASSWORD,
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            return await _load(agent.pid, clients, seconds, concurrency)
        finally:
            agent.terminate()
            await agent.wait()


async def _load(pid: int, clients: list[dict], seconds: float, concurrency: int) -> dict:
    url = f"http://{ADDRESS}:7400/handler"
    connector = aiohttp.TCPConnector(limit=concurrency)
    frps = basicauth.header(PLUGIN_USER, PLUGIN_PASSWORD)
    async with aiohttp.ClientSession(connector=connector, headers=frps) as http:
        for _ in range(100):  # until it serves
            try:
                async with http.get(f"http://{ADDRESS}:7401/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        latencies: list[float] = []
        rejected = 0
        deadline = time.perf_counter() + seconds
        cpu_start = _cpu_seconds(pid)
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal rejected
            while time.perf_counter() < deadline:
                user = random.choice(clients)
                if random.random() < 0.9:
                    op, content = "Ping", {"user": user, "timestamp": 0}
                else:
                    ns, _, name = user["metas"]["tunnel"].partition("/")
                    op = "NewUserConn"
                    content = {
                        "user": user,
                        "proxy_name": f"{ns}.{name}",
                        "proxy_type": "tcp",
                        "remote_addr": "203.0.113.9:5000",
                    }
                body = {"version": "0.1.0", "op": op, "content": content}
                t0 = time.perf_counter()
                async with http.post(f"{url}?version=0.1.0&op={op}", json=body) as response:
                    answer = await response.json()
                latencies.append(time.perf_counter() - t0)
                rejected += bool(answer["reject"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(pid) - cpu_start
        rss = _rss_mib(pid)
    latencies.sort()
    rate = len(latencies) / elapsed
    return {
        "tunnels": len(clients),
        "concurrency": concurrency,
        "requests": len(latencies),
        "rejected": rejected,
        "requests_per_second": round(rate, 1),
        # The agent holding the whole table, after serving the load (every client's session).
        "agent_rss_mib": rss,
        "agent_cpu_seconds_per_second": round(cpu / elapsed, 3),
        "latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 3),
            "p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        },
        # The agent's own cost per call, whatever the load generator manages to send:
        # the rate one core of agent could answer, and the clients that carries at one
        # Ping per client per heartbeat interval (1 s).
        "agent_cpu_ms_per_call": round(cpu / len(latencies) * 1000, 3),
        "calls_per_agent_core_second": int(len(latencies) / cpu) if cpu else None,
        "clients_per_agent_core_at_1s_heartbeat": int(len(latencies) / cpu * HEARTBEAT_INTERVAL)
        if cpu
        else None,
        "note": "load generator and agent share the machine's cores; latency includes "
        "the Python load generator's own queueing",
    }


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    result = asyncio.run(run(args.tunnels, args.seconds, args.concurrency))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"agent-{args.tunnels}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
