"""Shared fixtures: the local cluster, an async API client, per-test namespaces, and the
relay-pod runner. Tests under tests/unit need none of them."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client, config

from support import cluster as local_cluster
from support import tools
from support.operator import OperatorProcess, delete_webhook_configurations
from support.relay_runner import RelayPodRunner

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The directory says what a test needs; the marker lets `-m` select by it.
    for item in items:
        parts = Path(item.fspath).relative_to(HERE).parts
        if parts[0] == "integration":
            item.add_marker(pytest.mark.integration)
        elif parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> Iterator[local_cluster.LocalCluster]:
    """The local cluster: reused when running, else started now and stopped at the end."""
    running = local_cluster.ensure_cluster()
    yield running
    local_cluster.teardown(running)


@pytest.fixture(scope="session")
async def kube(cluster: local_cluster.LocalCluster) -> AsyncIterator[client.ApiClient]:
    """An async API client (kubernetes.aio) for the local cluster."""
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)
    yield api
    await api.close()


@pytest.fixture
async def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    core = client.CoreV1Api(kube)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    await core.delete_namespace(name)


@pytest.fixture(scope="module")
def relay_runner_options() -> dict[str, Any]:
    """Extra RelayPodRunner arguments for a module's runner. A module overrides this fixture
    to ask for more, e.g. `{"serve_load_balancers": True}` to have LoadBalancer Services of
    relays get the relay's address."""
    return {}


@pytest.fixture(scope="module")
async def relay_runner(
    cluster: local_cluster.LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    relay_runner_options: dict[str, Any],
) -> AsyncIterator[RelayPodRunner]:
    """Plays kubelet for relay pods: runs their containers locally on 127.0.0.x. One per
    test module that uses it, stopped with it: relays of other modules (the integration
    suites) stay paper relays, whose status no agent changes."""
    runner = RelayPodRunner(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("relay-pods"),
        # Two checkouts may run end-to-end tests at once on one machine: each its own range.
        first_address=os.environ.get("TUNNELOP_TEST_FIRST_RELAY_ADDRESS", "127.0.0.2"),
        **relay_runner_options,
    )
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
def kubectl(cluster: local_cluster.LocalCluster):
    """kubectl from the tool cache, bound to the local cluster."""

    def run(*args: str, **kwargs):
        return tools.kubectl(*args, kubeconfig=cluster.kubeconfig, **kwargs)

    return run


@pytest.fixture(scope="session")
def crds(cluster: local_cluster.LocalCluster) -> Path:
    """tunnelop's CRDs, applied from crds/ and Established."""
    crd_dir = tools.REPO / "crds"
    tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
    tools.kubectl("wait", "--for=condition=Established", "-f", str(crd_dir), "--timeout=60s")
    return crd_dir


@pytest.fixture(scope="session")
def gateway_api_crds(cluster: local_cluster.LocalCluster) -> Path:
    """The Gateway API's standard-channel CRDs (GATEWAY_API_VERSION in hack/versions.env,
    cached by `make tools` from the module proxy), applied and Established."""
    crd_dir = Path(
        subprocess.run(
            [str(tools.TOOLS_SCRIPT), "gateway-api-crds"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    if not any(crd_dir.glob("*.yaml")):
        raise tools.ToolMissing(f"no Gateway API CRDs in {crd_dir}; run `make tools` first")
    tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
    tools.kubectl("wait", "--for=condition=Established", "-f", str(crd_dir), "--timeout=60s")
    return crd_dir


RELAY_NAMESPACE = "tunnelop-system"


@pytest.fixture(scope="session")
def relay_namespace() -> str:
    """Where the operator runs relay workloads."""
    return RELAY_NAMESPACE


@pytest.fixture(scope="session")
async def operator(
    cluster: local_cluster.LocalCluster, crds: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OperatorProcess]:
    """`tunnelop run` as a real process, with its admission webhook registered. It runs with
    leader election, as in a pod, so that every integration run goes through the campaign:
    it is alone, so it leads at once (a Lease left by a killed process expires in 10 s)."""
    process = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "log",
        "--leader-elect",
        "--relay-namespace",
        RELAY_NAMESPACE,
        # Read relay agents' traffic every second, so tests see it quickly.
        "--traffic-interval",
        "1",
        # Tests read each object's own Events: a budget this suite never spends, so none is
        # summed into a namespace's summary (test_events.py covers the default budget).
        "--event-burst",
        "100000",
        "--event-qps",
        "1000",
        restart_on_lost_lease=True,
    )
    await process.start()
    yield process
    await process.stop()
    delete_webhook_configurations()
