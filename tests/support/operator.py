"""The operator as a real process (`tunnelop run`), for tests that need it running — and
killing: stop() sends SIGTERM, kill() sends SIGKILL. Each process gets its own health port
(/healthz, /readyz, /metrics); readyz() tells whether it leads and is ready."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from support import objects, tools
from support.netutil import free_port
from tunnelop.contract.naming import FINALIZER_POLICY
from tunnelop.manager import LEADERSHIP_LOST_EXIT
from tunnelop.platform.pod_role import ROLE_LABEL


class OperatorProcess:
    """`tunnelop run` with `extra_args`, logging to `log_path`. It dies with its parent. With
    own_process_group, a Ctrl-C in the terminal does not reach it, so that its parent can
    still delete objects that carry its finalizers before stopping it. `env` adds to its
    environment (POD_NAMESPACE, say, as a pod gets it from the downward API). With
    restart_on_lost_lease, a process that exits because it lost its Lease (a machine so
    loaded that a renewal timed out) is started again, as a pod's restartPolicy would."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *extra_args: str,
        own_process_group: bool = False,
        env: dict[str, str] | None = None,
        restart_on_lost_lease: bool = False,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.webhook_port = free_port()
        self.health_port = free_port()
        self.extra_args = extra_args
        self.own_process_group = own_process_group
        self.env = env or {}
        self.process: asyncio.subprocess.Process | None = None
        self.restart_on_lost_lease = restart_on_lost_lease
        self.restarts = 0
        self._stopping = False
        self._keeper: asyncio.Task[None] | None = None

    @property
    def argv(self) -> list[str]:
        entry = Path(sys.executable).parent / "tunnelop"
        return [
            str(entry),
            "run",
            "--log-format",
            "json",
            "--webhook-port",
            str(self.webhook_port),
            "--health-listen",
            f"127.0.0.1:{self.health_port}",
            *self.extra_args,
        ]

    async def start(self, wait_for: str = "webhook") -> None:
        """Start; then wait for its "webhook" (a leader's, registered and answering),
        "leading" (ready as the leader) or "health" (the health port answers: a follower
        too); "none": not at all."""
        self._stopping = False
        await self._spawn()
        if self.restart_on_lost_lease and (self._keeper is None or self._keeper.done()):
            self._keeper = asyncio.create_task(self._restart_after_lost_lease())
        if wait_for == "webhook":
            await self._wait_for_webhook()
        elif wait_for == "leading":
            await self.wait_ready()
        elif wait_for == "health":
            await self._until(lambda status, _: status is not None, "health endpoints")

    async def _spawn(self) -> None:
        env = tools.env_with_tools(KUBECONFIG=str(self.kubeconfig), **self.env)
        self.process = await tools.spawn_logged(
            self.argv, self.log_path, env, own_group=self.own_process_group
        )

    async def _restart_after_lost_lease(self) -> None:
        while self.process is not None:
            code = await self.process.wait()
            if self._stopping or code != LEADERSHIP_LOST_EXIT:
                return
            self.restarts += 1
            with self.log_path.open("ab") as log:
                log.write(b'{"event": "test harness: lost its Lease; started again"}\n')
            await self._spawn()

    async def readyz(self) -> tuple[int | None, str]:
        """(HTTP status, body) of /readyz; (None, why) when nothing answers."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
                http.get(f"http://127.0.0.1:{self.health_port}/readyz") as response,
            ):
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, str(exc)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The operator's /metrics: (name, sorted labels) -> value."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"http://127.0.0.1:{self.health_port}/metrics") as response,
        ):
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def wait_settled(self, tunnels: int, timeout: float = 60) -> None:
        """Until this process has reconciled at least `tunnels` tunnels and both work queues
        are empty: what a restart would rewrite has been written by then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            samples = await self.metrics()
            reconciled = sum(
                value
                for (name, labels), value in samples.items()
                if name == "tunnelop_reconciles_total" and ("controller", "tunnels") in labels
            )
            depth = sum(
                value for (name, _), value in samples.items() if name == "tunnelop_workqueue_depth"
            )
            if reconciled >= tunnels and depth == 0:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the operator did not settle in {timeout}s:\n{self.logs()}")

    async def leads(self) -> bool:
        """Ready as the leader (a follower standing by is ready too, but says following)."""
        return leading(*await self.readyz())

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until this process leads and is ready (its controllers started)."""
        await self._until(leading, "/readyz 200 as the leader", timeout)

    async def _until(self, accept, what: str, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body = ""
        while loop.time() < deadline:
            if self.process and self.process.returncode is not None:
                raise RuntimeError(
                    f"operator exited with {self.process.returncode}:\n{self.logs()}"
                )
            status, body = await self.readyz()
            if accept(status, body):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {what} after {timeout}s; last /readyz: {body}\n{self.logs()}")

    async def _wait_for_webhook(self, timeout: float = 60) -> None:
        """Until the webhook configuration points at this process and its port answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        url = f"https://127.0.0.1:{self.webhook_port}/"
        while loop.time() < deadline:
            if self.process and self.process.returncode is not None:
                raise RuntimeError(
                    f"operator exited with {self.process.returncode}:\n{self.logs()}"
                )
            result = tools.kubectl(
                "get",
                "validatingwebhookconfiguration",
                "tunnelop.dev",
                "-o",
                "jsonpath={.webhooks[*].clientConfig.url}",
                kubeconfig=self.kubeconfig,
                check=False,
            )
            if url in result.stdout:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.webhook_port)
                    writer.close()
                    return
                except OSError:
                    pass
            await asyncio.sleep(0.3)
        raise TimeoutError(f"the operator's webhook did not come up:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path.exists() else ""

    async def stop(self) -> None:
        self._stopping = True
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as a crashed or evicted operator."""
        self._stopping = True
        if self.process and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()


@dataclass(frozen=True)
class OperatorPod:
    """An operator replica's pod as the API reports it."""

    name: str
    ready: bool
    role: str  # its tunnelop.dev/role label ("" until the replica has written it)
    address: str | None


def operator_pods(listing: dict[str, Any]) -> list[OperatorPod]:
    """The running operator pods of a pod list (a serialized V1PodList), by name."""
    pods = []
    for pod in listing.get("items") or []:
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        role = (meta.get("labels") or {}).get(ROLE_LABEL, "")
        pods.append(
            OperatorPod(meta["name"], conditions.get("Ready") == "True", role, status.get("podIP"))
        )
    return sorted(pods, key=lambda p: p.name)


def leader(pods: list[OperatorPod], holder: str | None) -> OperatorPod | None:
    """The leading replica: the one pod labelled leader (what the webhook Service selects),
    Ready and holding the Lease (its holderIdentity is `<pod name>_<random>`); None while
    that is not so (no holder yet, a takeover under way, a stale label or holder)."""
    leaders = [p for p in pods if p.role == "leader"]
    if len(leaders) != 1 or not leaders[0].ready or not holder:
        return None
    return leaders[0] if holder.startswith(f"{leaders[0].name}_") else None


def standing_by(pods: list[OperatorPod]) -> list[OperatorPod]:
    """The followers that are ready to take over (a disruption budget counts them)."""
    return [p for p in pods if p.ready and p.role == "follower"]


def leading(status: int | None, body: str) -> bool:
    """Whether a /readyz answer is a ready leader's (or a process without leader election)."""
    return status == 200 and ("[+]leader: leading" in body or "election disabled" in body)


def session_operator(request: Any) -> OperatorProcess | None:
    """The session's operator process (the `operator` fixture) if an earlier test started
    it, else None (asking for the fixture would start it)."""
    for definition in request._fixturemanager.getfixturedefs("operator", request.node) or ():
        cached = getattr(definition, "cached_result", None)
        if cached and cached[2] is None:
            return cached[0]
    return None


@contextlib.asynccontextmanager
async def session_operator_aside(request: Any) -> AsyncIterator[None]:
    """The session's operator, if running, stopped meanwhile with its webhook configurations
    (another operator runs, or none may); started again afterwards."""
    other = session_operator(request)
    if other is not None:
        await other.stop()
    delete_webhook_configurations()
    try:
        yield
    finally:
        delete_webhook_configurations()
        if other is not None:
            await other.start()


def delete_webhook_configurations(kubeconfig: Path = tools.KUBECONFIG) -> None:
    """Remove the admission webhooks the operator registered (they are cluster-wide and
    would point at a process that is gone), and the finalizer policy a local leader applied
    (a killed one leaves it; the chart's has the same name)."""
    tools.kubectl(
        "delete",
        "validatingwebhookconfiguration,mutatingwebhookconfiguration",
        "tunnelop.dev",
        "--ignore-not-found",
        kubeconfig=kubeconfig,
        check=False,
    )
    # Apart: an API server that does not serve the kinds refuses the whole command.
    tools.kubectl(
        "delete",
        "mutatingadmissionpolicybinding.v1.admissionregistration.k8s.io,"
        "mutatingadmissionpolicy.v1.admissionregistration.k8s.io",
        FINALIZER_POLICY,
        "--ignore-not-found",
        kubeconfig=kubeconfig,
        check=False,
    )


async def restart_settled(operator: OperatorProcess) -> None:
    """Stop and start `operator`, until it leads and has reconciled every tunnel of the
    cluster with its queues empty: what a restart would rewrite has been written by then."""
    await operator.stop()
    await operator.start()
    await operator.wait_ready()
    await operator.wait_settled(len(objects.list_objects("tunnel")))


def chart_webhook_configurations(namespace: str, service: str, port: int) -> list[dict]:
    """The two configurations as the chart writes them: the operator's webhooks (ids
    validate-tunnel and add-finalizer, served at /<id>), a Service reference, no caBundle."""

    def webhook(id_: str, operations: list[str]) -> dict:
        return {
            "name": f"{id_}.tunnelop.dev",
            "clientConfig": {
                "service": {
                    "namespace": namespace,
                    "name": service,
                    "path": f"/{id_}",
                    "port": port,
                }
            },
            "rules": [
                {
                    "apiGroups": ["tunnelop.dev"],
                    "apiVersions": ["v1alpha1"],
                    "resources": ["tunnels"],
                    "operations": operations,
                    "scope": "*",
                }
            ],
            # Fail, so that a webhook the API server cannot reach or trust shows as an error
            # instead of an admission.
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }

    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "tunnelop.dev"},
            "webhooks": [webhook("validate-tunnel", ["CREATE", "UPDATE"])],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "tunnelop.dev"},
            "webhooks": [webhook("add-finalizer", ["CREATE"])],
        },
    ]


def ca_bundles() -> list[str]:
    """Every webhook's caBundle, in both configurations."""
    bundles = []
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        body = objects.get(kind, "tunnelop.dev") or {}
        bundles += [w["clientConfig"].get("caBundle", "") for w in body.get("webhooks", [])]
    return bundles


async def wait_webhook_denial(
    namespace: str, manifest: Callable[[str], dict], field: str, timeout: float = 60
) -> str:
    """The admission webhook's denial (naming `field`) of `manifest(name)`, retried under
    new names: the leader's caches learn through their watches of what the rule needs, and
    an attempt admitted before that is deleted again."""
    attempts: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        name = f"denied-{len(attempts)}"
        result = tools.kubectl(
            "create", "-n", namespace, "-f", "-", input=json.dumps(manifest(name)), check=False
        )
        attempts.append(result.stderr)
        if result.returncode == 0:
            tools.kubectl("delete", "tunnel", name, "-n", namespace, "--wait=false")
        elif field in result.stderr and "admission webhook" in result.stderr:
            return result.stderr
        await asyncio.sleep(0.5)
    raise AssertionError(f"no denial by the webhook naming {field}; last answers: {attempts[-3:]}")
