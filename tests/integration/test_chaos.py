"""Invariants 1, 2 and 8 under chaos: while tunnels are created (some asking for a port or a
subdomain another one holds), deleted, have their tokens rotated, and relays are deleted and
replaced, the operator is killed with SIGKILL every few seconds. Afterwards, once everything
has settled, what every relay enforces (its table Secret) must be exactly the live tunnels
bound to it, with their current tokens, and no port or subdomain may be held twice.

Random in what it does (the seed is printed; TUNNELOP_CHAOS_SEED replays a run's choices,
though not the timing of its kills), deterministic in what it asserts. TUNNELOP_CHAOS_SECONDS
sets how long the churn lasts (default 90; `make chaos` runs longer ones with several seeds).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from support import invariants, tools
from support.objects import GROUP_VERSION, relay_node, wait_condition
from support.operator import OperatorProcess

GROUP, VERSION = GROUP_VERSION.split("/")
SECONDS = float(os.environ.get("TUNNELOP_CHAOS_SECONDS") or 90)
SEED = int(os.environ.get("TUNNELOP_CHAOS_SEED") or random.SystemRandom().randrange(2**32))

# Small port ranges, so that ports are given again and again and relays fill up.
PORTS = (41000, 41007)
RELAY_KINDS = {
    "a": {"ports": f"{PORTS[0]}-{PORTS[1]}"},
    "b": {"ports": f"{PORTS[0]}-{PORTS[1]}"},
    "w": {"ports": f"{PORTS[0]}-{PORTS[0] + 3}", "protocols": ["tcp", "udp", "http"]},
}
SUBDOMAINS = ("blog", "shop", "api", "wiki")  # asked for by several tunnels: they clash
MAX_LIVE_TUNNELS = 40


class Chaos:
    """The churn and what it did, for the report."""

    def __init__(
        self,
        kube: client.ApiClient,
        namespace: str,
        relay_namespace: str,
        run: str,
        seed: int,
        operator_factory,
    ) -> None:
        self.kube = kube
        self.custom = client.CustomObjectsApi(kube)
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace
        self.relay_namespace = relay_namespace
        self.label = {"tunnelop.test/chaos": run}
        self.prefix = f"chaos-{run}-"
        self.http_domain = f"{run}.chaos.test"
        self.seed = seed
        self.new_operator = operator_factory
        self.operator: OperatorProcess | None = None
        self.stop = asyncio.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.live: list[str] = []  # tunnels created and not deleted by the churn
        self.relays: dict[str, str] = {}  # kind -> current relay name
        self.generation = collections.Counter[str]()
        self.lost_relays: set[str] = set()  # deleted by the churn: their tunnels may move
        self.ready_endpoints: dict[str, tuple] = {}
        self.observed: dict[str, float] = {}  # violation seen during the churn -> when
        self.started = time.monotonic()

    def rng(self, task: str) -> random.Random:
        """One generator per task, so that each task's choices follow from the seed."""
        return random.Random(f"{self.seed}/{task}")

    async def pause(self, seconds: float) -> bool:
        """Sleep, cut short when the churn stops; True while it goes on."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    # ---- relays ----------------------------------------------------------------------------

    def relay_body(self, kind: str) -> dict[str, Any]:
        name = f"{self.prefix}{kind}{self.generation[kind]}"
        self.generation[kind] += 1
        spec = dict(RELAY_KINDS[kind])
        if "http" in spec.get("protocols", ()):
            spec["httpDomain"] = self.http_domain
        return relay_node(
            name,
            labels=self.label,
            # A Service, not HostNetwork: relays of other tests may hold the fake nodes' ports.
            exposure={"type": "LoadBalancer", "address": f"{name}.relays.example.test"},
            **spec,
        )

    async def add_relay(self, kind: str) -> str:
        body = self.relay_body(kind)
        await self.custom.create_cluster_custom_object(GROUP, VERSION, "relaynodes", body)
        self.relays[kind] = body["metadata"]["name"]
        return self.relays[kind]

    async def remove_relay(self, kind: str) -> None:
        name = self.relays.pop(kind)
        self.lost_relays.add(name)  # before the delete: a move may be seen at once
        await self.custom.delete_cluster_custom_object(GROUP, VERSION, "relaynodes", name)
        self.counts["relays deleted"] += 1

    # ---- tunnels ---------------------------------------------------------------------------

    def tunnel_body(self, rng: random.Random, index: int) -> dict[str, Any]:
        protocol = rng.choices(["tcp", "udp", "http"], weights=[4, 3, 3])[0]
        spec: dict[str, Any] = {"protocol": protocol, "relay": {"nodeSelector": self.label}}
        if protocol != "http" and rng.random() < 0.25:
            spec["remotePort"] = rng.randint(*PORTS)
        if protocol == "http" and rng.random() < 0.4:
            spec["subdomain"] = rng.choice(SUBDOMAINS)
        return {
            "apiVersion": GROUP_VERSION,
            "kind": "Tunnel",
            "metadata": {"name": f"t{index:04d}-{protocol}"},
            "spec": spec,
        }

    async def create_tunnel(self, body: dict[str, Any]) -> None:
        try:
            await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "tunnels", body
            )
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            self.counts["creates denied at admission"] += 1
            return
        self.live.append(body["metadata"]["name"])
        self.counts["tunnels created"] += 1

    async def creator(self) -> None:
        rng, index = self.rng("create"), 0
        while not self.stop.is_set():
            burst = [] if len(self.live) >= MAX_LIVE_TUNNELS else range(rng.randint(1, 4))
            bodies = []
            for _ in burst:
                bodies.append(self.tunnel_body(rng, index))
                index += 1
            await asyncio.gather(*(self.create_tunnel(b) for b in bodies))
            await self.pause(rng.uniform(0.1, 0.6))

    async def deleter(self) -> None:
        rng = self.rng("delete")
        while await self.pause(rng.uniform(0.2, 0.8)):
            for _ in range(rng.randint(1, 2)):
                if len(self.live) > 5:
                    name = self.live.pop(rng.randrange(len(self.live)))
                    await self.ignore_missing(
                        self.custom.delete_namespaced_custom_object(
                            GROUP, VERSION, self.namespace, "tunnels", name
                        )
                    )
                    self.counts["tunnels deleted"] += 1

    async def rotator(self) -> None:
        """Deleting a tunnel's credentials Secret rotates its token."""
        rng = self.rng("rotate")
        while await self.pause(rng.uniform(0.5, 2)):
            if self.live:
                name = rng.choice(self.live)
                await self.ignore_missing(
                    self.core.delete_namespaced_secret(f"{name}-frpc", self.namespace)
                )
                self.counts["tokens rotated"] += 1

    async def mover(self) -> None:
        """Deletes a relay (its tunnels must move) and puts a new one in its place later."""
        rng = self.rng("move")
        while await self.pause(rng.uniform(8, 20)):
            kind = rng.choice(sorted(self.relays))
            await self.remove_relay(kind)
            await self.pause(rng.uniform(3, 10))
            await self.add_relay(kind)  # even when stopping: the world ends with every kind

    async def killer(self) -> None:
        rng = self.rng("kill")
        # Soon after a start is when the backlog is worked off, the busiest time to die.
        while await self.pause(rng.uniform(0.5, 3.5)):
            await self.restart_operator()
            self.counts["operator kills"] += 1

    async def restart_operator(self) -> None:
        if self.operator is not None:
            await self.operator.kill()
        self.operator = self.new_operator()
        await self.operator.start()

    @staticmethod
    async def ignore_missing(call) -> None:
        try:
            await call
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ---- watching --------------------------------------------------------------------------

    async def read(self) -> invariants.World:
        return await invariants.read_world(
            self.kube, self.relay_namespace, self.namespace, self.prefix
        )

    async def watcher(self) -> None:
        """What can be judged at any instant: no table gives one port or subdomain twice,
        and a Ready tunnel's endpoint changes only when its relay was deleted."""
        while not self.stop.is_set():
            world = await self.read()
            now = round(time.monotonic() - self.started, 1)
            for violation in invariants.duplicates_within_tables(world):
                self.observed.setdefault(violation, now)
            for key, t in world.tunnels.items():
                if not (t.live and t.ready):
                    continue
                endpoint = (t.relay, t.remote_port, t.subdomain)
                before = self.ready_endpoints.setdefault(key[1], endpoint)
                if before != endpoint:
                    self.ready_endpoints[key[1]] = endpoint
                    if before[0] not in self.lost_relays:
                        moved = f"Ready tunnel {key[1]} moved from {before} to {endpoint}"
                        self.observed.setdefault(moved + " though its relay is still there", now)
            await self.pause(0.5)

    async def run(self, seconds: float) -> None:
        """Every kind of churn at once for `seconds`; the first failure of one stops all."""
        tasks = [
            asyncio.create_task(task())
            for task in (
                self.creator,
                self.deleter,
                self.rotator,
                self.mover,
                self.killer,
                self.watcher,
            )
        ]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
            self.stop.set()  # each task ends its current step
            await asyncio.gather(*tasks)
        finally:
            self.stop.set()
            for task in tasks:
                task.cancel()


async def test_chaos_relay_tables_equal_live_tunnels(
    cluster, crds, operator, kube, namespace, relay_namespace, tmp_path
) -> None:
    print(f"chaos seed {SEED} (TUNNELOP_CHAOS_SEED={SEED} to replay), {SECONDS:.0f} s of churn")
    log = tmp_path / "operator.log"

    def new_operator() -> OperatorProcess:
        # A new process each time, on a new webhook port: it registers its webhook anew.
        return OperatorProcess(cluster.kubeconfig, log, "--relay-namespace", relay_namespace)

    chaos = Chaos(kube, namespace, relay_namespace, uuid.uuid4().hex[:6], SEED, new_operator)
    # The session's operator steps aside: two operators must never allocate at once.
    await operator.stop()
    try:
        await chaos.restart_operator()
        for kind in RELAY_KINDS:
            await chaos.add_relay(kind)
        for name in list(chaos.relays.values()):
            await wait_condition("relaynode", name, None, "Ready", timeout=60)
        await chaos.run(SECONDS)
        await chaos.restart_operator()  # one last crash, then let it settle
        world, unsettled = await invariants.wait_quiescent(chaos.read, stable_for=5, timeout=90)
        violations = invariants.check_tables(world)

        summary = (
            f"seed {SEED}: {dict(chaos.counts)}; {len(world.tunnels)} tunnels at the end, "
            f"{sum(t.ready for t in world.tunnels.values())} Ready; relays "
            f"{sorted(world.relays)}"
        )
        print(summary)
        problems = (
            [f"did not settle: {u}" for u in unsettled]
            + [f"at the end: {v}" for v in violations]
            + [f"during the churn (t={t}s): {v}" for v, t in chaos.observed.items()]
        )
        assert not problems, _report(summary, problems, log)
    finally:
        chaos.stop.set()
        if chaos.operator is not None:
            await chaos.operator.stop()
        await operator.start()
        tools.kubectl(
            "delete",
            "relaynode",
            "-l",
            f"tunnelop.test/chaos={chaos.label['tunnelop.test/chaos']}",
            "--ignore-not-found",
            "--wait=false",
        )


def _report(summary: str, problems: list[str], log: Path) -> str:
    tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
    return "\n".join(
        [summary, f"{len(problems)} violations:", *problems, "operator log, last lines:", *tail]
    )
