"""tunnelop installed with Helm for `make demo`, as a provider installs it on a cluster.

The pure half says which helm command to run and which operator pod leads; hack/demo.py runs
them. The demo installs the chart's defaults (release `tunnelop` in namespace
tunnelop-system, relays in tunnelop-relays, the CRDs with the chart, two replicas) plus two
values that only the demo needs (DEMO_VALUES).
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Literal

from support import tools

RELEASE = "tunnelop"
RELEASE_NAMESPACE = "tunnelop-system"  # docs/install.md's namespace
RELAY_NAMESPACE = "tunnelop-relays"  # the chart's default relayNamespace.name
CHART = "./helm/tunnelop"  # relative to the checkout, where the demo runs
LEASE = "tunnelop"  # the chart's default leaderElection.leaseName
OPERATOR_SELECTOR = (
    f"app.kubernetes.io/name=tunnelop,app.kubernetes.io/instance={RELEASE},"
    "app.kubernetes.io/component=operator"
)
TRAFFIC_INTERVAL = 2  # seconds between the operator's readings of the relay agents' meters

# (value, why the demo sets it): what differs from `helm install` on a provider's cluster.
DEMO_VALUES = [
    (
        "image.tag=dev",
        "nothing is pulled here: the relay-pod runner runs any tunnelop image as this\n"
        "checkout's `tunnelop`, so the tag says `dev` (this working tree); a cluster pulls\n"
        "ghcr.io/tunnelop/tunnelop:<appVersion>, the chart's default",
    ),
    (
        f"trafficInterval={TRAFFIC_INTERVAL}",
        f"the operator reads the relays' meters every {TRAFFIC_INTERVAL} s (default 10 s), so"
        "\nthe traffic shows in the Tunnels' status within seconds of the visitors",
    ),
    (
        "uninstall.podLabels.tunnelop\\.test/kubelet=relay-runner",
        "the uninstall hook's pod (it stops the operator and releases tunnelop's finalizers)\n"
        "is run here by the relay-pod runner from start to end; the local cluster's fake\n"
        "nodes would report it done without running it",
    ),
]

# The chart's cluster-wide objects that may exist before it is installed: the CRDs (applied
# with `kubectl apply -f crds/` by the tests) and the relay namespace.
CRDS = [
    f"{plural}.tunnelop.dev" for plural in ("tunnels", "relaynodes", "relaypools", "tunnelquotas")
]
CHART_OBJECTS = [
    *(("customresourcedefinition", name) for name in CRDS),
    ("namespace", RELAY_NAMESPACE),
]

# Put on the namespaces and CRDs the demo brought into a cluster it leaves running, so that
# its end (or the end of the next run, after an interrupted one) deletes them again.
CREATED_LABEL = "demo.tunnelop.dev/created"

Action = Literal["install", "upgrade", "reinstall"]


def action_for(release_status: str | None) -> Action:
    """What to do about an earlier release (its `helm status`, None without one): install
    anew; upgrade a deployed one (an interrupted demo left it); uninstall and install again
    one that is failed or stuck half-way (pending-install, uninstalling, ...)."""
    if release_status is None:
        return "install"
    return "upgrade" if release_status == "deployed" else "reinstall"


def owned_by_release(obj: dict[str, Any]) -> bool:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return (
        annotations.get("meta.helm.sh/release-name") == RELEASE
        and annotations.get("meta.helm.sh/release-namespace") == RELEASE_NAMESPACE
    )


def needs_take_ownership(existing: list[dict[str, Any]]) -> bool:
    """Whether Helm must adopt objects of the chart that exist without belonging to the
    release (e.g. CRDs applied with kubectl): Helm refuses to install over them otherwise."""
    return any(not owned_by_release(obj) for obj in existing)


def helm_args(action: Literal["install", "upgrade"], take_ownership: bool) -> list[str]:
    """The demo's helm command line (without the `helm`)."""
    args = [action, RELEASE, CHART, "-n", RELEASE_NAMESPACE]
    if action == "install":
        args.append("--create-namespace")
    if take_ownership:
        args.append("--take-ownership")
    for value, _ in DEMO_VALUES:
        args += ["--set", value]
    return args


def provider_command() -> str:
    """`helm install` as a provider types it on their own cluster: the chart's defaults."""
    return shlex.join(
        ["helm", "install", RELEASE, CHART, "-n", RELEASE_NAMESPACE, "--create-namespace"]
    )


def shown(args: list[str]) -> str:
    """A helm command as typed, each --set on a line of its own."""
    head, sets = [], []
    rest = iter(args)
    for arg in rest:
        if arg == "--set":
            sets.append(f"--set {shlex.quote(next(rest))}")
        else:
            head.append(arg)
    return " \\\n    ".join([shlex.join(["helm", *head]), *sets])


# ---- the cluster, through the cached tools ----------------------------------------------------


def helm(*args: str, check: bool = True, timeout: float = 180):
    return tools.helm(*args, check=check, timeout=timeout)


def release_status() -> str | None:
    """The release's status (deployed, failed, pending-install, ...), None without one."""
    result = helm("status", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        if "not found" in result.stderr:
            return None
        raise RuntimeError(f"helm status {RELEASE}: {result.stderr.strip()}")
    return json.loads(result.stdout)["info"]["status"]


def uninstall(*, hooks: bool = True) -> None:
    """`helm uninstall`; its hook's pod needs the relay-pod runner running meanwhile (call it
    from a thread when the runner shares this thread's event loop)."""
    args = ["uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "120s"]
    helm(*args, *([] if hooks else ["--no-hooks"]))
