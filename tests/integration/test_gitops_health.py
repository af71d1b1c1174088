"""Argo CD's health checks and kstatus, as Argo CD, Flux and kpt compute them: the Lua
scripts of resource_customizations/ run by gopher-lua against their test cases (as Argo CD's
own test does) and against live objects of the API server, and kstatus (cli-utils) against
the same live objects. The table of reasons is in docs/gitops.md."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from support import objects, tools
from support.objects import relay_node, tunnel, wait_condition, wait_for

RUN = uuid.uuid4().hex[:6]
CUSTOMIZATIONS = tools.REPO / "resource_customizations"
SCRIPTS = CUSTOMIZATIONS / "tunnelop.dev"

# What kstatus says of each test case, where it is not what Argo CD's health says in its
# own words (Healthy: Current, Progressing: InProgress, Degraded: Failed). Each is a
# limit of kstatus's rules, explained in docs/gitops.md.
KSTATUS_DIFFERS = {
    # No status yet: kstatus cannot tell a resource that reports conditions from one that
    # never will.
    "RelayNode/testdata/progressing_no_status.yaml": "Current",
    "RelayPool/testdata/progressing_no_status.yaml": "Current",
    "Tunnel/testdata/progressing_no_status.yaml": "Current",
    "TunnelQuota/testdata/progressing_no_status.yaml": "Current",
    # Being deleted.
    "RelayNode/testdata/progressing_deleting.yaml": "Terminating",
    "Tunnel/testdata/progressing_deleting.yaml": "Terminating",
    # Ready=True: what else is going on kstatus does not read.
    "RelayNode/testdata/progressing_draining.yaml": "Current",
    "RelayNode/testdata/degraded_service_ports_refused.yaml": "Current",
    "Tunnel/testdata/progressing_in_cluster_client_pending.yaml": "Current",
    "Tunnel/testdata/progressing_in_cluster_client_not_connected.yaml": "Current",
    "Tunnel/testdata/degraded_in_cluster_client_refused.yaml": "Current",
    # Ready=False without Stalled: in progress for kstatus.
    "RelayNode/testdata/degraded_failover.yaml": "InProgress",
    "RelayNode/testdata/degraded_invalid_spec.yaml": "InProgress",
    "RelayPool/testdata/degraded_invalid_spec.yaml": "InProgress",
    "RelayPool/testdata/degraded_invalid_template.yaml": "InProgress",
    "Tunnel/testdata/degraded_unlisted_reason.yaml": "InProgress",
    # kstatus has no Suspended: a stopped tunnel is not Ready, a quota that stops is.
    "Tunnel/testdata/suspended_namespace.yaml": "InProgress",
    "Tunnel/testdata/suspended_spec.yaml": "InProgress",
    "Tunnel/testdata/suspended_traffic_quota_exceeded.yaml": "InProgress",
    "Tunnel/testdata/suspended_while_waiting.yaml": "InProgress",
    "TunnelQuota/testdata/suspended_by_another_quota.yaml": "Current",
    "TunnelQuota/testdata/suspended_spec.yaml": "Current",
    "TunnelQuota/testdata/suspended_traffic_quota_exceeded.yaml": "Current",
}
KSTATUS_OF_HEALTH = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}


def health_test_cases() -> list[tuple[str, dict[str, str]]]:
    """(kind/testdata/file.yaml, expected health) of every health_test.yaml."""
    cases = []
    for tests in sorted(SCRIPTS.glob("*/health_test.yaml")):
        kind = tests.parent.name
        for test in yaml.safe_load(tests.read_text())["tests"]:
            cases.append((f"{kind}/{test['inputPath']}", test["healthStatus"]))
    return cases


def run_json_lines(tool: str, *args: str, input: str) -> list[dict[str, str]]:
    result = tools.run(tool, *args, kubeconfig=None, input=input)
    return [json.loads(line) for line in result.stdout.splitlines()]


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    script = str(SCRIPTS / kind / "health.lua")
    (answer,) = run_json_lines("health-check", "eval", script, input=json.dumps(obj))
    return answer["status"], answer["message"]


def kstatus(obj: dict[str, Any]) -> str:
    (answer,) = run_json_lines("kstatus-check", input=json.dumps(obj))
    return answer["status"]


def test_each_script_gives_each_test_case_its_health() -> None:
    result = tools.run("health-check", "test", str(CUSTOMIZATIONS), kubeconfig=None, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{len(health_test_cases())} passed, 0 failed"


def test_a_wrong_expectation_or_an_unlisted_case_fails(tmp_path: Path) -> None:
    copy = tmp_path / "resource_customizations"
    shutil.copytree(CUSTOMIZATIONS, copy)
    tests_file = copy / "tunnelop.dev" / "Tunnel" / "health_test.yaml"
    tests = yaml.safe_load(tests_file.read_text())
    tests["tests"][0]["healthStatus"]["message"] = "another message"
    tests_file.write_text(yaml.safe_dump(tests))
    (copy / "tunnelop.dev" / "RelayPool" / "testdata" / "forgotten.yaml").write_text("{}\n")
    result = tools.run("health-check", "test", str(copy), kubeconfig=None, check=False)
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failures == [
        "FAIL tunnelop.dev/RelayPool/testdata/forgotten.yaml: not named by any test in "
        "health_test.yaml",
        f"FAIL tunnelop.dev/Tunnel/{tests['tests'][0]['inputPath']}",
    ]


def test_a_script_needing_a_library_argocd_cm_does_not_open_fails(tmp_path: Path) -> None:
    script = tmp_path / "health.lua"
    script.write_text('return {status = "Healthy", message = string.upper("up")}\n')
    obj = json.dumps({"kind": "Tunnel", "metadata": {"name": "t"}})
    strict = tools.run("health-check", "eval", str(script), kubeconfig=None, input=obj, check=False)
    assert strict.returncode == 1 and "string" in strict.stderr
    (opened,) = run_json_lines("health-check", "-open-libs", "eval", str(script), input=obj)
    assert (opened["status"], opened["message"]) == ("Healthy", "UP")


def test_kstatus_of_each_test_case() -> None:
    found, expected = {}, {}
    for case, health_status in health_test_cases():
        obj = yaml.safe_load((SCRIPTS / case).read_text())
        found[case] = kstatus(obj)
        expected[case] = KSTATUS_DIFFERS.get(case) or KSTATUS_OF_HEALTH[health_status["status"]]
    assert found == expected


async def test_live_objects(operator, namespace, relay_label, cleanup_relays) -> None:
    """A ready relay, pool, quota and tunnel; a tunnel that waits for room, one that fits
    nowhere and a suspended one; then the namespace suspended by its quota."""
    relay = f"gh-{RUN}"
    pool = f"gh-pool-{RUN}"
    cleanup_relays.append(relay)
    objects.apply(
        relay_node(relay, labels=relay_label, ports="21200-21299", capacity={"tunnels": 2})
    )
    objects.apply(
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "RelayPool",
            "metadata": {"name": pool},
            "spec": {
                "replicas": 1,
                "template": {
                    "metadata": {"labels": {"tunnelop.test/pool": pool}},
                    "spec": {
                        "ports": {"range": "21300-21399"},
                        "exposure": {"type": "LoadBalancer", "address": "198.51.100.30"},
                    },
                },
            },
        }
    )
    try:
        objects.apply(
            {
                "apiVersion": "tunnelop.dev/v1alpha1",
                "kind": "TunnelQuota",
                "metadata": {"name": "tier"},
                "spec": {"hard": {"tunnels": 10}},
            },
            namespace,
        )
        on_relay = {"relay": {"nodeSelector": relay_label}}
        objects.apply(tunnel("ready", **on_relay), namespace)
        objects.apply(tunnel("stopped", suspended=True, **on_relay), namespace)
        await wait_condition("tunnel", "ready", namespace, "Ready")
        await wait_condition("tunnel", "stopped", namespace, "Ready", "False", "TunnelSuspended")
        # The relay holds two tunnels, as many as it can: a third waits for room.
        objects.apply(tunnel("waiting", **on_relay), namespace)
        nowhere = {"relay": {"nodeSelector": {"tunnelop.test/nothing": RUN}}}
        objects.apply(tunnel("nowhere", **nowhere), namespace)
        await wait_condition("tunnel", "waiting", namespace, "Ready", "False", "CapacityExhausted")
        await wait_condition("tunnel", "nowhere", namespace, "Ready", "False", "NoRelayMatches")
        await wait_condition("relaypool", pool, None, "Ready")

        def live(kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
            obj = objects.get(kind.lower(), name, ns)
            assert obj is not None, f"{kind} {name}"
            return obj

        seen = {
            ("RelayNode", relay): live("RelayNode", relay),
            ("RelayPool", pool): live("RelayPool", pool),
            ("TunnelQuota", "tier"): await quota_counted(namespace, tunnels=2),
            **{
                ("Tunnel", n): live("Tunnel", n, namespace)
                for n in ("ready", "stopped", "waiting", "nowhere")
            },
        }
        shown = {key: (health(key[0], obj)[0], kstatus(obj)) for key, obj in seen.items()}
        assert shown == {
            ("RelayNode", relay): ("Healthy", "Current"),
            ("RelayPool", pool): ("Healthy", "Current"),
            ("TunnelQuota", "tier"): ("Healthy", "Current"),
            ("Tunnel", "ready"): ("Healthy", "Current"),
            ("Tunnel", "stopped"): ("Suspended", "InProgress"),
            ("Tunnel", "waiting"): ("Progressing", "InProgress"),
            ("Tunnel", "nowhere"): ("Degraded", "Failed"),
        }
        message = health("Tunnel", seen[("Tunnel", "nowhere")])[1]
        assert message.startswith("NoRelayMatches: 0/") and "spec.relay" in message
        assert health("Tunnel", seen[("Tunnel", "ready")])[1] == (
            f"Visitors connect to {seen[('Tunnel', 'ready')]['status']['endpoint']}"
        )

        # The provider's kill switch: the quota and every tunnel of the namespace stop.
        tools.kubectl(
            "patch",
            "tunnelquota",
            "tier",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"suspended":true}}',
        )
        await wait_condition("tunnel", "ready", namespace, "Ready", "False", "NamespaceSuspended")
        quota = await wait_condition("tunnelquota", "tier", namespace, "Suspended")
        assert health("TunnelQuota", quota)[0] == "Suspended"
        assert health("Tunnel", live("Tunnel", "ready", namespace))[0] == "Suspended"
    finally:
        tools.kubectl("delete", "relaypool", pool, "--ignore-not-found", "--wait=false")


async def quota_counted(namespace: str, tunnels: int) -> dict[str, Any]:
    """The quota, once its status counts `tunnels` bound tunnels."""

    def counted():
        quota = objects.get("tunnelquota", "tier", namespace) or {}
        used = (quota.get("status") or {}).get("used") or {}
        return quota if used.get("tunnels") == tunnels else None

    return await wait_for(counted, what=f"TunnelQuota tier counting {tunnels} tunnels")
