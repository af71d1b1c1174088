"""The local cluster for tests: reuse a running one, or start one and stop it afterwards."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import tools

CLUSTER_SCRIPT = tools.REPO / "hack" / "cluster.sh"


@dataclass(frozen=True)
class LocalCluster:
    kubeconfig: Path
    started_here: bool


def healthy(kubeconfig: Path = tools.KUBECONFIG) -> bool:
    if not kubeconfig.exists():
        return False
    result = tools.kubectl(
        "--request-timeout=3s", "get", "--raw", "/readyz", kubeconfig=kubeconfig, check=False
    )
    return result.returncode == 0


def ensure_cluster() -> LocalCluster:
    """A healthy cluster on .cluster/kubeconfig; started here only if none is running."""
    if healthy():
        return LocalCluster(tools.KUBECONFIG, started_here=False)
    subprocess.run([str(CLUSTER_SCRIPT), "up"], check=True, env=tools.env_with_tools())
    return LocalCluster(tools.KUBECONFIG, started_here=True)


def teardown(cluster: LocalCluster) -> None:
    """Stop the cluster if this run started it (TUNNELOP_KEEP_CLUSTER=1 keeps it)."""
    if cluster.started_here and not os.environ.get("TUNNELOP_KEEP_CLUSTER"):
        subprocess.run([str(CLUSTER_SCRIPT), "down"], check=False, env=tools.env_with_tools())
