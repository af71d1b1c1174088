"""The GitOps contract, statically: Argo CD's layout of the health checks, every reason the
operator writes classified by the Tunnel's script and tested, the scripts within the Lua
libraries Argo CD opens for argocd-cm, and the Go helpers pinned as versions.env says. The
scripts themselves run in tests/integration/test_gitops_health.py (they need the helper)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from support import tools
from tunnelop.controllers.tunnels import STALLED_REASONS
from tunnelop.domain.quota import NAMESPACE_SUSPENDED, QUOTA_EXCEEDED, TRAFFIC_QUOTA_EXCEEDED
from tunnelop.domain.scheduling import REASONS

CUSTOMIZATIONS = tools.REPO / "resource_customizations" / "tunnelop.dev"
KINDS = ("Tunnel", "RelayNode", "RelayPool", "TunnelQuota")
# Every reason of a Tunnel's Ready=False: the scheduler's, the quota gate's and holds, and
# the controller's own.
TUNNEL_READY_FALSE = {
    *REASONS,
    QUOTA_EXCEEDED,
    NAMESPACE_SUSPENDED,
    TRAFFIC_QUOTA_EXCEEDED,
    "InvalidSpec",
    "TunnelSuspended",
    "RelayNotReady",
}


def lua_reason_tables(kind: str) -> dict[str, set[str]]:
    """`local suspendedReasons = { A = true, ... }` -> {"suspended": {"A", ...}}."""
    script = (CUSTOMIZATIONS / kind / "health.lua").read_text()
    tables = re.findall(r"local (\w+)Reasons = \{(.*?)\}", script, re.DOTALL)
    return {name: set(re.findall(r"(\w+) = true", body)) for name, body in tables}


def test_each_kind_has_argo_cds_layout() -> None:
    assert sorted(p.name for p in CUSTOMIZATIONS.iterdir()) == sorted(KINDS)
    for kind in KINDS:
        directory = CUSTOMIZATIONS / kind
        tests = yaml.safe_load((directory / "health_test.yaml").read_text())["tests"]
        named = {t["inputPath"] for t in tests}
        assert named == {f"testdata/{p.name}" for p in (directory / "testdata").iterdir()}
        for test in tests:
            assert set(test) == {"healthStatus", "inputPath"}
            assert test["healthStatus"]["status"] in (
                "Healthy",
                "Progressing",
                "Degraded",
                "Suspended",
            )
            obj = yaml.safe_load((directory / test["inputPath"]).read_text())
            assert (obj["apiVersion"], obj["kind"]) == ("tunnelop.dev/v1alpha1", kind)
            # The file name says the expected health, so a reader finds cases by it.
            expected = test["healthStatus"]["status"].lower()
            assert Path(test["inputPath"]).name.startswith(expected), test["inputPath"]


def test_every_tunnel_reason_is_classified_once() -> None:
    tables = lua_reason_tables("Tunnel")
    assert set(tables) == {"suspended", "progressing", "degraded"}
    listed = [reason for table in tables.values() for reason in table]
    assert len(listed) == len(set(listed)), "a reason is in two tables"
    assert set(listed) == TUNNEL_READY_FALSE


def test_argo_cds_degraded_is_kstatus_failed() -> None:
    # What needs someone to act is Degraded in Argo CD and Stalled (kstatus: Failed) in
    # the operator's status: one list, two readers.
    assert lua_reason_tables("Tunnel")["degraded"] == STALLED_REASONS


def test_every_tunnel_reason_has_a_test_case() -> None:
    shown = set()
    for path in (CUSTOMIZATIONS / "Tunnel" / "testdata").iterdir():
        for c in (yaml.safe_load(path.read_text()).get("status") or {}).get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "False":
                shown.add(c["reason"])
    assert TUNNEL_READY_FALSE <= shown


@pytest.mark.parametrize("kind", KINDS)
def test_scripts_use_only_what_argocd_cm_opens(kind: str) -> None:
    # From argocd-cm, without useOpenLibs, Argo CD opens base, table and package only.
    script = (CUSTOMIZATIONS / kind / "health.lua").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    assert not re.search(r"\b(string|math|io|os|debug|coroutine)\.|\brequire\b|:\w+\(", code)


@pytest.mark.parametrize(
    ("helper", "module", "pin"),
    [
        ("health-check", "github.com/yuin/gopher-lua", "GOPHER_LUA_VERSION"),
        ("kstatus-check", "sigs.k8s.io/cli-utils", "CLI_UTILS_VERSION"),
    ],
)
def test_go_helpers_require_the_pinned_versions(helper: str, module: str, pin: str) -> None:
    go_mod = (tools.REPO / "hack" / helper / "go.mod").read_text()
    assert re.search(rf"^\s*{re.escape(module)} (\S+)$", go_mod, re.M)[1] == tools.versions()[pin]


def test_the_example_layout_holds_valid_objects() -> None:
    from tunnelop.api.v1alpha1 import parse_object

    example = tools.REPO / "docs" / "examples" / "gitops"
    kinds = []
    for path in sorted([*example.glob("provider/fleet/*.yaml"), *example.glob("tenant/*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.append(doc["kind"])
            if doc["kind"] == "Namespace":
                continue
            parsed = parse_object(doc)
            # In Git with no -n: namespaced objects carry their namespace.
            assert (parsed.metadata.namespace is None) == (doc["kind"] == "RelayPool")
            # The autoscaler sizes the pool: spec.replicas in Git would be drift.
            assert doc["kind"] != "RelayPool" or "replicas" not in doc["spec"]
    assert sorted(kinds) == ["Namespace", "RelayPool", "Tunnel", "Tunnel", "TunnelQuota"]


def test_every_health_script_carries_the_one_shared_prelude() -> None:
    """The helpers every health.lua needs live once (hack/health-prelude.lua); a script whose
    copy differs is caught, and `make health-scripts` puts the prelude back."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "health_prelude", Path(__file__).resolve().parents[2] / "hack" / "health_prelude.py"
    )
    assert spec is not None and spec.loader is not None
    health_prelude = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_prelude)
    prelude = health_prelude.PRELUDE.read_text()
    assert len(health_prelude.SCRIPTS) == 4
    for script in health_prelude.SCRIPTS:
        text = script.read_text()
        assert health_prelude.with_prelude(text, prelude) == text, script
        drifted = text.replace("local function because(c)", "local function because(cond)")
        assert health_prelude.with_prelude(drifted, prelude) == text
