"""The quota's status as the operator writes it is accepted by the real API server (what
`kubectl get tq` shows of it is in test_quotas.py, with the operator writing it); the
kubectl-only leaderboard sorts Tunnels by this month's bytes."""

from __future__ import annotations

import datetime
import json

import pytest
import yaml

from tunnelop.api.v1alpha1 import TunnelQuota
from tunnelop.domain.quota import DeletedTraffic, Usage, limits_of, quota_status

pytestmark = pytest.mark.usefixtures("crds")

NOW = datetime.datetime.now(datetime.UTC)


def apply(kubectl, namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def patch_status(kubectl, namespace: str, kind: str, name: str, status: dict, *extra: str) -> dict:
    result = kubectl(
        "patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), "-o", "json", *extra,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_quota_status_is_valid(kubectl, namespace):
    manifest = {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "TunnelQuota",
        "metadata": {"name": "tier", "namespace": namespace},
        "spec": {"hard": {"tunnels": 2, "totalBandwidth": "20M", "monthlyTraffic": "20Gi"}},
    }
    apply(kubectl, namespace, manifest)
    quota = TunnelQuota.model_validate(manifest)
    ledger = DeletedTraffic().record("0d8f3a54-uid", 1_000_000, NOW)
    usage = Usage(tunnels=2, bandwidth=20_000_000, traffic=17_300_000_000, waiting=1)
    status = quota_status(quota, limits_of([quota]), usage, ledger, NOW)
    # A server-side dry run: validated and returned as stored, but not kept, so that an
    # operator running in the same session (which writes the real figures) cannot interfere.
    stored = patch_status(kubectl, namespace, "tunnelquota", "tier", status, "--dry-run=server")
    assert stored["status"]["used"] == {"tunnels": 2, "bandwidth": "20M", "traffic": "17.3G"}
    assert stored["status"]["deletedBytes"] == 1_000_000
    assert stored["status"]["deletingTunnels"] == ["0d8f3a54-uid"]
    reasons = {c["type"]: c["reason"] for c in stored["status"]["conditions"]}
    assert reasons == {
        "Ready": "Enforced",
        "Exceeded": "QuotaExceeded",
        "Suspended": "NotSuspended",
        "TrafficQuotaWarning": "TrafficNearLimit",
    }


def test_tunnels_sort_by_this_months_bytes_with_kubectl_only(kubectl, namespace):
    month = NOW.strftime("%Y-%m-01T00:00:00Z")
    for name, period_bytes in (("big", 9_000_000), ("none", None), ("small", 5), ("mid", 700)):
        apply(
            kubectl,
            namespace,
            {
                "apiVersion": "tunnelop.dev/v1alpha1",
                "kind": "Tunnel",
                "metadata": {"name": name},
                # A node that does not exist: an operator of the same session leaves it unbound.
                "spec": {"protocol": "tcp", "relay": {"node": "no-such-relay"}},
            },
        )
        if period_bytes is not None:
            traffic = {"periodStart": month, "periodBytes": period_bytes}
            patch_status(kubectl, namespace, "tunnel", name, {"traffic": traffic})
    listed = kubectl(
        "get", "tun", "-n", namespace, "--sort-by=.status.traffic.periodBytes",
        "-o", "custom-columns=TUNNEL:.metadata.name,BYTES:.status.traffic.periodBytes",
        "--no-headers",
    ).stdout.split("\n")  # fmt: skip
    names = [line.split()[0] for line in listed if line.strip()]
    assert [n for n in names if n != "none"] == ["small", "mid", "big"]
    assert set(names) == {"big", "none", "small", "mid"}
