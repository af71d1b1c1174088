"""Pure helpers of the runner for the operator's own pods: their every-address listeners,
their readiness probes as a kubelet times and counts them, a follower reported running but
not ready, the check that the operator can find its ServiceAccount token, and the endpoints
of their Services."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from support.relay_runner import (
    ANY_ADDRESS,
    LOCALHOST,
    SERVICE_ACCOUNT_DIR,
    ReadinessCheck,
    RunningPod,
    _endpoint_slice,
    _names_token_dir,
    _readiness_after,
    _readiness_check,
    _readiness_status,
    _rewrite,
)


def test_every_address_of_a_pod_is_its_own_address() -> None:
    path_map = {LOCALHOST: "127.0.0.201", ANY_ADDRESS: "127.0.0.201"}
    assert _rewrite("0.0.0.0:8081", path_map) == "127.0.0.201:8081"
    assert _rewrite("--webhook-host=0.0.0.0", path_map) == "--webhook-host=127.0.0.201"
    # A CIDR of every source, or another address that contains it, is left alone.
    assert _rewrite("allow 0.0.0.0/0", path_map) == "allow 0.0.0.0/0"
    assert _rewrite("10.0.0.0.0", path_map) == "10.0.0.0.0"


def test_a_probe_keeps_its_timing() -> None:
    container = {
        "name": "operator",
        "ports": [{"name": "health", "containerPort": 8081}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "health"},
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
    }
    assert _readiness_check(container) == ReadinessCheck(
        8081, "/readyz", initial_delay=2, period=5, timeout=3, failure_threshold=2
    )


def test_readiness_counts_results_in_a_row_as_a_kubelet_does() -> None:
    check = ReadinessCheck(8081, "/readyz", success_threshold=2, failure_threshold=3)
    state = (False, 0)
    for passed, expected in [
        (True, (False, 1)),
        (False, (False, 0)),  # a failure breaks the run of passes
        (True, (False, 1)),
        (True, (True, 0)),  # two passes in a row: ready
        (False, (True, 1)),
        (False, (True, 2)),
        (True, (True, 0)),
        (False, (True, 1)),
        (False, (True, 2)),
        (False, (False, 0)),  # three failures in a row: not ready
    ]:
        state = _readiness_after(*state, passed, check)
        assert state == expected


def running_pod_status() -> dict:
    ready = {"status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {
        "phase": "Running",
        "conditions": [{"type": t, **ready} for t in ("Initialized", "Ready", "ContainersReady")],
        "containerStatuses": [
            {
                "name": "operator",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }
        ],
    }


def merged(status: dict, patch: dict) -> dict:
    """The strategic merge the API server does: conditions by type, containerStatuses whole."""
    conditions = {c["type"]: c for c in status["conditions"]}
    for c in patch["conditions"]:
        both = {**conditions.get(c["type"], {}), **c}
        conditions[c["type"]] = {k: v for k, v in both.items() if v is not None}
    return {
        **status,
        "conditions": list(conditions.values()),
        "containerStatuses": patch["containerStatuses"],
    }


def test_a_follower_is_reported_running_and_not_ready() -> None:
    patch = _readiness_status(running_pod_status(), False, "2026-01-01T00:05:00Z", running=True)
    assert patch is not None
    assert {(c["type"], c["status"]) for c in patch["conditions"]} == {
        ("Ready", "False"),
        ("ContainersReady", "False"),
    }
    (operator,) = patch["containerStatuses"]
    assert operator["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert (operator["ready"], operator["started"], operator["restartCount"]) == (False, True, 0)
    follower = merged(running_pod_status(), patch)
    assert _readiness_status(follower, False, "later", running=True) is None
    # Leading later: ready, still the same run of the container.
    leading = _readiness_status(follower, True, "2026-01-01T00:09:00Z", running=True)
    assert leading is not None
    assert leading["containerStatuses"][0]["restartCount"] == 0


def container(args: list[str], mounts: list[str], env: dict[str, str] | None = None):
    return SimpleNamespace(
        command=None,
        args=args,
        env=[SimpleNamespace(name=k, value=v) for k, v in (env or {}).items()],
        volume_mounts=[SimpleNamespace(mount_path=m) for m in mounts],
    )


def test_the_operator_must_name_its_token_directory_to_find_it_here() -> None:
    assert _names_token_dir(container(["run"], []))
    assert not _names_token_dir(container(["run"], [SERVICE_ACCOUNT_DIR]))
    assert _names_token_dir(
        container(["run", "--service-account-dir", SERVICE_ACCOUNT_DIR], [SERVICE_ACCOUNT_DIR])
    )
    assert _names_token_dir(container(["run"], [SERVICE_ACCOUNT_DIR], {"SA": SERVICE_ACCOUNT_DIR}))


LABELS = {"app.kubernetes.io/name": "tunnelop", "app.kubernetes.io/component": "operator"}


def operator_pod(name: str, address: str, ready: bool, labels=LABELS) -> RunningPod:
    pod = RunningPod(f"uid-{name}", "tunnelop", name, f"tunnelop/{name}", address, Path("/x"))
    pod.labels, pod.ports, pod.readiness, pod.operator = (
        dict(labels),
        {"webhook": 9443},
        ready,
        True,
    )
    return pod


def webhook_service(**spec) -> dict:
    return {
        "metadata": {"name": "tunnelop-webhook", "namespace": "tunnelop", "uid": "svc-uid"},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": "tunnelop"},
            "ports": [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}],
            **spec,
        },
    }


def test_the_webhook_service_routes_to_the_ready_replica() -> None:
    pods = [
        operator_pod("b", "127.0.0.201", ready=False),
        operator_pod("a", "127.0.0.200", ready=True),
        operator_pod("other", "127.0.0.202", ready=True, labels={"app": "else"}),
    ]
    body = _endpoint_slice(webhook_service(), pods)
    assert body["addressType"] == "FQDN"  # an IPv4 slice may not hold loopback addresses
    assert body["metadata"]["labels"]["kubernetes.io/service-name"] == "tunnelop-webhook"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"
    assert body["ports"] == [{"name": "https", "port": 9443, "protocol": "TCP"}]
    assert [(e["addresses"], e["conditions"]["ready"]) for e in body["endpoints"]] == [
        (["127.0.0.200"], True),
        (["127.0.0.201"], False),
    ]


def test_ports_without_a_target_and_services_without_endpoints() -> None:
    unnamed = webhook_service(
        ports=[{"port": 8081}, {"name": "x", "port": 1, "targetPort": "nope"}]
    )
    body = _endpoint_slice(unnamed, [operator_pod("a", "127.0.0.200", ready=True)])
    # The API server matches slice ports to the Service's by name: "" when it has none.
    assert body["ports"] == [{"name": "", "port": 8081, "protocol": "TCP"}]
    assert _endpoint_slice(webhook_service(selector={}), []) is None
    assert _endpoint_slice(webhook_service(type="ExternalName"), []) is None
    relay_pods_only = webhook_service(selector={"tunnelop.dev/relay": "r"})
    assert _endpoint_slice(relay_pods_only, [operator_pod("a", "127.0.0.200", ready=True)]) is None
