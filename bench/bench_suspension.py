"""Suspension for every protocol, whatever the client's config (target: new visitors refused
within 5 s).

Run with `make bench-suspension` (also part of `make bench`; starts the local cluster if
needed). The operator (`tunnelop run`) and one relay run by the relay-pod runner, offering
tcp, udp and http. For each protocol, tunnels are served by a real frpc started from the
Secret the operator wrote, in two variants: the config as written (heartbeats every second)
and the same with heartbeats disabled (`transport.heartbeatInterval = -1`, what a tenant who
wants to outlast a suspension would try). Each tunnel is suspended (`spec.suspended: true`)
once, at a random moment, and timed from the patch:

- refused: until new visitors are refused for good (the first refused attempt after the
  last served one, followed by 3 s of nothing but refusals; one visitor every 100 ms:
  a tcp connection echoing a line, a udp datagram echoed, an http GET by host name);
- kicked: until frpc's session is over (its log shows it connecting again).

Writes bench/results/suspension.json and suspension.png, and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import report  # noqa: E402

from support import objects, tools  # noqa: E402
from support.cluster import ensure_cluster, teardown  # noqa: E402
from support.dataplane import (  # noqa: E402
    Frpc,
    edited_config,
    http_body,
    http_site,
    start_relay,
    tcp_served,
    time_to_refusal,
    udp_echo_server,
    udp_served,
    until_served,
)
from support.netutil import echo_server  # noqa: E402
from support.operator import OperatorProcess  # noqa: E402
from support.relay_runner import RelayPodRunner  # noqa: E402

TARGET_SECONDS = 5.0
PROTOCOLS = ("tcp", "udp", "http")
VARIANTS = {
    "as written": {},
    "heartbeats disabled": {"transport.heartbeatInterval = ": "transport.heartbeatInterval = -1"},
}
HTTP_DOMAIN = "suspension.bench"
RECONNECT = "try to connect to server"  # frpc's line when it starts a new session


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 3),
        "max": round(ordered[-1], 3),
        "count": len(ordered),
    }


async def kicked_after(frpc: Frpc, offset: int, since: float, timeout: float) -> float | None:
    """Seconds from `since` until frpc starts a new session (its old one is over)."""
    loop = asyncio.get_running_loop()
    while loop.time() - since < timeout:
        if RECONNECT in frpc.logs()[offset:]:
            return loop.time() - since
        await asyncio.sleep(0.05)
    return None


async def one(
    protocol: str, variant: str, index: int, relay: tuple[str, str], namespace: str, workdir: Path
) -> dict[str, Any]:
    relay_name, address = relay
    name = f"{protocol}-{'hb' if variant == 'as written' else 'nohb'}-{index}"
    spec: dict[str, Any] = {"relay": {"node": relay_name}}
    if protocol == "http":
        spec["subdomain"] = f"{name}-{uuid.uuid4().hex[:4]}"
    objects.apply(objects.tunnel(name, protocol, **spec), namespace)
    ready = await objects.wait_condition("tunnel", name, namespace, "Ready", timeout=60)
    port = ready["status"].get("remotePort")
    text = edited_config(
        objects.secret_data(f"{name}-frpc", namespace)["frpc.toml"], VARIANTS[variant]
    )
    if protocol == "tcp":
        service = echo_server()

        async def attempt() -> bool:
            return await tcp_served(address, port)
    elif protocol == "udp":
        service = udp_echo_server()

        async def attempt() -> bool:
            return await udp_served(address, port)
    else:
        service = http_site(name)

        async def attempt() -> bool:
            return await http_body(address, f"{spec['subdomain']}.{HTTP_DOMAIN}") == name

    loop = asyncio.get_running_loop()
    sample: dict[str, Any] = {"protocol": protocol, "variant": variant, "tunnel": name}
    async with service as local:
        frpc = await Frpc(text, workdir, local).start()
        try:
            await until_served(attempt, timeout=60)
            await asyncio.sleep(random.uniform(0, 1))  # anywhere in the heartbeat period
            offset = len(frpc.logs())
            since = loop.time()
            objects.set_suspended(name, namespace, True)
            kicked = asyncio.create_task(kicked_after(frpc, offset, since, 30))
            sample["refused_seconds"] = round(
                await time_to_refusal(attempt, since, hold=3, timeout=30), 3
            )
            kicked_s = await kicked
            sample["kicked_seconds"] = None if kicked_s is None else round(kicked_s, 3)
        except (AssertionError, TimeoutError) as exc:
            sample["error"] = str(exc)
        finally:
            await frpc.stop()
    tools.kubectl("delete", "tunnel", name, "-n", namespace, "--wait=false", check=False)
    return sample


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster = ensure_cluster()
    run_id = uuid.uuid4().hex[:5]
    relay_name, namespace = f"bsus-{run_id}", f"bench-suspension-{run_id}"
    operator = OperatorProcess(
        cluster.kubeconfig, workdir / "operator.log", "--log-level", "WARNING"
    )
    runner = RelayPodRunner(
        cluster.kubeconfig, workdir / "relay-pods", first_address=args.relay_address
    )
    samples: list[dict[str, Any]] = []
    try:
        tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        tools.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
        await operator.start()
        await runner.start()
        address = await start_relay(
            runner,
            relay_name,
            ports="33000-33199",
            protocols=list(PROTOCOLS),
            http_domain=HTTP_DOMAIN,
        )
        tools.kubectl("create", "namespace", namespace)
        for protocol in PROTOCOLS:
            for variant in VARIANTS:
                for index in range(args.repetitions):
                    sample = await one(
                        protocol, variant, index, (relay_name, address), namespace, workdir
                    )
                    samples.append(sample)
                    log(
                        f"{protocol:4} {variant:19} refused after "
                        f"{sample.get('refused_seconds')} s, kicked after "
                        f"{sample.get('kicked_seconds')} s {sample.get('error', '')}"
                    )
    finally:
        tools.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        tools.kubectl("delete", "relaynode", relay_name, "--ignore-not-found", check=False)
        await runner.stop()
        await operator.stop()
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            tools.kubectl("delete", kind, "tunnelop.dev", "--ignore-not-found", check=False)
        teardown(cluster)
    groups: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        for variant in VARIANTS:
            mine = [s for s in samples if (s["protocol"], s["variant"]) == (protocol, variant)]
            good = [s for s in mine if "error" not in s]
            refused = [s["refused_seconds"] for s in good]
            groups[f"{protocol}, {variant}"] = {
                "refused_seconds": summary(refused),
                "kicked_seconds": summary(
                    [s["kicked_seconds"] for s in good if s["kicked_seconds"] is not None]
                ),
                "failures": len(mine) - len(good),
                "met": bool(good) and len(good) == len(mine) and max(refused) <= TARGET_SECONDS,
            }
    return {"groups": groups, "samples": samples}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = list(result["groups"])
    for i, label in enumerate(labels):
        protocol, variant = label.split(", ", 1)
        mine = [
            s
            for s in result["samples"]
            if (s["protocol"], s["variant"]) == (protocol, variant) and "error" not in s
        ]
        ax.plot([i - 0.1] * len(mine), [s["refused_seconds"] for s in mine], "o", color="C0")
        ax.plot(
            [i + 0.1] * len(mine),
            [s["kicked_seconds"] for s in mine if s["kicked_seconds"] is not None],
            "s",
            color="C1",
            markersize=4,
        )
    ax.plot([], [], "o", color="C0", label="new visitors refused for good")
    ax.plot([], [], "s", color="C1", label="frpc's session over")
    ax.axhline(TARGET_SECONDS, color="red", ls="--", label="target (refused)")
    ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    ax.set_ylabel("seconds after the suspending patch")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(f"suspension by protocol and client config, {result['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repetitions", type=int, default=5, help="tunnels per protocol and variant (default 5)"
    )
    parser.add_argument(
        "--relay-address", default="127.0.202.2", help="the relay's loopback address"
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    result: dict[str, Any] = {
        **report.header(),
        "versions": {"frp": tools.versions()["FRP_VERSION"]},
        "repetitions": args.repetitions,
        "target_refused_seconds": TARGET_SECONDS,
    }
    with tempfile.TemporaryDirectory(prefix="bench-suspension-") as tmp:
        result.update(await run(args, Path(tmp)))
    out = args.output / "suspension.json"
    report.publish(result, out, plot)
    print("suspension benchmark:")
    for label, group in result["groups"].items():
        refused, kicked = group["refused_seconds"], group["kicked_seconds"]
        print(
            f"  {label:28} refused p50 {refused.get('p50')} s max {refused.get('max')} s; "
            f"session over p50 {kicked.get('p50')} s max {kicked.get('max')} s; "
            f"failures {group['failures']} (target <= {TARGET_SECONDS} s: "
            f"{'met' if group['met'] else 'MISSED'})"
        )
    print(f"results: {out}")
    return 0 if all(g["met"] for g in result["groups"].values()) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
