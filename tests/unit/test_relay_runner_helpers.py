"""Pure helpers of the relay-pod runner: how a pod spec becomes a local command line, and
what it reports as load balancer and kubelet (addresses, readiness)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import tools
from support.netutil import free_port
from support.relay_runner import (
    CLIENT_SELECTOR,
    LOCALHOST,
    Container,
    ReadinessCheck,
    _argv,
    _completed_status,
    _expand,
    _field_value,
    _load_balancer_status,
    _probe,
    _readiness_check,
    _readiness_status,
    _resolve_service_names,
    _rewrite,
    _running_status,
    _runs_again,
    _unserved_services,
    default_image_map,
)
from tunnelop.contract import naming


def test_image_entry_point_is_the_local_binary() -> None:
    frps = Path("/cache/frps")
    assert _argv(frps, ["frps"], ["-c", "/etc/frp/frps.toml"]) == [
        "/cache/frps",
        "-c",
        "/etc/frp/frps.toml",
    ]
    assert _argv(frps, None, ["-c", "x"]) == ["/cache/frps", "-c", "x"]
    assert _argv(frps, ["/usr/bin/frps", "-c", "x"], None) == ["/cache/frps", "-c", "x"]


def test_longest_mount_path_wins() -> None:
    mounts = {"/etc/frp": "/tmp/a", "/etc/frp/tls": "/tmp/b"}
    assert _rewrite("-c /etc/frp/frps.toml", mounts) == "-c /tmp/a/frps.toml"
    assert _rewrite("/etc/frp/tls/ca.crt", mounts) == "/tmp/b/ca.crt"


def test_env_expansion_like_kubernetes() -> None:
    assert _expand("$(HOST):7000", {"HOST": "127.0.0.2"}) == "127.0.0.2:7000"
    assert _expand("$(MISSING)", {}) == "$(MISSING)"


def test_downward_api_pod_ip_is_the_relay_address() -> None:
    pod = SimpleNamespace(
        metadata=SimpleNamespace(
            name="p", namespace="ns", uid="u", labels={"a": "b"}, annotations=None
        ),
        spec=SimpleNamespace(node_name="fake-1", service_account_name="relay"),
    )
    assert _field_value(pod, "status.podIP", "127.0.0.3") == "127.0.0.3"
    assert _field_value(pod, "metadata.namespace", "") == "ns"
    assert _field_value(pod, "metadata.labels['a']", "") == "b"
    assert _field_value(pod, "metadata.annotations['x']", "") == ""


def test_unknown_images_are_not_run() -> None:
    assert default_image_map("registry.example/nginx:1.27") is None


def test_localhost_is_rewritten_as_a_whole_address_only() -> None:
    to_relay = {LOCALHOST: "127.0.0.160"}
    assert _rewrite("--listen 127.0.0.1:7400", to_relay) == "--listen 127.0.0.160:7400"
    # The relay's own address, or another one that starts alike, is no localhost.
    assert _rewrite("bindAddr = 127.0.0.160", to_relay) == "bindAddr = 127.0.0.160"
    assert _rewrite("127.0.0.10 127.0.0.1", to_relay) == "127.0.0.10 127.0.0.160"


# ---- InCluster clients and cluster DNS ----------------------------------------------------------


def test_client_pods_are_selected_as_the_operator_selects_them() -> None:
    assert CLIENT_SELECTOR == naming.CLIENT_SELECTOR
    try:
        binary = default_image_map(naming.DEFAULT_FRPC_IMAGE)
    except tools.ToolMissing:
        pytest.skip("frpc is not built (make tools)")
    assert binary is not None and binary.name == "frpc"


SERVED = {("team-a", "web"): "127.0.61.40", ("team-b", "web"): "127.0.61.41"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web.team-a.svc", "127.0.61.40"),
        ("web.team-a.svc.cluster.local", "127.0.61.40"),
        ("http://web.team-a.svc:8080/x", "http://127.0.61.40:8080/x"),
        ("web.team-b.svc web.team-a.svc", "127.0.61.41 127.0.61.40"),
        ('localIP = "web.team-a.svc.cluster.local"', 'localIP = "127.0.61.40"'),
        # Whole names only: another Service, namespace or domain stays as it is.
        ("myweb.team-a.svc", "myweb.team-a.svc"),
        ("web.team-a.svc.example.com", "web.team-a.svc.example.com"),
        ("web.team-a.svcs", "web.team-a.svcs"),
        ("web.team-c.svc", "web.team-c.svc"),
        ("a.web.team-a.svc", "a.web.team-a.svc"),
        ("web.team-a", "web.team-a"),
    ],
)
def test_service_dns_names_become_the_address_the_test_gave(text: str, expected: str) -> None:
    assert _resolve_service_names(text, SERVED) == expected


def test_service_names_resolve_after_the_pods_own_addresses() -> None:
    """A Service the test serves on 127.0.0.1 is the machine's localhost, not the pod's."""
    path_map = {LOCALHOST: "127.0.61.9"}
    served = {("team-a", "web"): "127.0.0.1"}
    text = "--local web.team-a.svc:80 --admin 127.0.0.1:7400"
    rewritten = _resolve_service_names(_rewrite(text, path_map), served)
    assert rewritten == "--local 127.0.0.1:80 --admin 127.0.61.9:7400"


def test_names_of_services_without_an_address_are_reported() -> None:
    texts = ["web.team-a.svc", "db.team-a.svc.cluster.local:5432", "kubernetes.io", "x.y"]
    assert _unserved_services(texts, SERVED) == ["team-a/db"]
    assert _unserved_services(["web.team-a.svc"], SERVED) == []


# ---- the load balancer ------------------------------------------------------------------------


def test_load_balancer_gives_the_relay_address_once() -> None:
    wanted = {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.5"}]}}}
    assert _load_balancer_status([], "127.0.0.5") == wanted
    assert _load_balancer_status(["127.0.0.9"], "127.0.0.5") == wanted
    assert _load_balancer_status(["127.0.0.5", "127.0.0.9"], "127.0.0.5") == wanted
    assert _load_balancer_status([None], "127.0.0.5") == wanted  # a hostname-only ingress
    assert _load_balancer_status(["127.0.0.5"], "127.0.0.5") is None


# ---- readiness ----------------------------------------------------------------------------------


def test_readiness_probes_as_the_runner_performs_them() -> None:
    tcp = {"name": "frps", "readinessProbe": {"tcpSocket": {"port": 7000}}}
    assert _readiness_check(tcp) == ReadinessCheck(7000)
    http = {
        "name": "agent",
        "ports": [{"name": "health", "containerPort": 7401}],
        "readinessProbe": {"httpGet": {"port": "health", "path": "/readyz"}},
    }
    assert _readiness_check(http) == ReadinessCheck(7401, "/readyz")
    https = {"readinessProbe": {"httpGet": {"port": "8443", "scheme": "HTTPS"}}}
    assert _readiness_check(https) == ReadinessCheck(8443, "/", https=True)
    assert _readiness_check({"readinessProbe": {"exec": {"command": ["true"]}}}) is None
    assert _readiness_check({"name": "plain"}) is None


def test_a_probe_on_an_unknown_named_port_is_refused_by_name() -> None:
    container = {
        "name": "agent",
        "ports": [{"name": "health", "containerPort": 7401}],
        "readinessProbe": {"tcpSocket": {"port": "metrics"}},
    }
    with pytest.raises(ValueError, match=r"container agent: port 'metrics'.*\(health\)"):
        _readiness_check(container)


def kwok_ready_status() -> dict:
    """A pod's status as kwok's pod-ready stage writes it."""
    since = "2026-01-01T00:00:00Z"
    return {
        "phase": "Running",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": since},
            {"type": "Ready", "status": "True", "lastTransitionTime": since},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": since},
        ],
        "containerStatuses": [
            {
                "name": name,
                "image": f"{name}:1",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": since}},
            }
            for name in ("frps", "agent")
        ],
    }


def apply_status_patch(status: dict, patch: dict) -> dict:
    """The strategic merge the API server does: conditions by type, containerStatuses whole."""
    conditions = {c["type"]: c for c in status["conditions"]}
    for c in patch["conditions"]:
        merged = {**conditions.get(c["type"], {}), **c}
        conditions[c["type"]] = {k: v for k, v in merged.items() if v is not None}
    return {
        **status,
        "conditions": list(conditions.values()),
        "containerStatuses": patch["containerStatuses"],
    }


def test_held_down_pod_is_reported_not_ready_as_a_kubelet_would() -> None:
    status = kwok_ready_status()
    patch = _readiness_status(status, False, "2026-01-01T00:05:00Z")
    assert patch is not None
    ready = [c for c in patch["conditions"] if c["type"] in ("Ready", "ContainersReady")]
    assert [(c["status"], c["reason"]) for c in ready] == [("False", "ContainersNotReady")] * 2
    assert ready[0]["message"] == "containers with unready status: [frps agent]"
    assert all(c["lastTransitionTime"] == "2026-01-01T00:05:00Z" for c in ready)
    frps, agent = patch["containerStatuses"]
    assert (frps["name"], frps["image"], frps["restartCount"]) == ("frps", "frps:1", 0)
    assert not frps["ready"] and not agent["ready"] and not frps["started"]
    assert frps["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    # Once reported, nothing more to patch.
    assert _readiness_status(apply_status_patch(status, patch), False, "later") is None


def test_brought_up_pod_is_ready_again_with_one_more_restart() -> None:
    down = _readiness_status(kwok_ready_status(), False, "2026-01-01T00:05:00Z")
    held = apply_status_patch(kwok_ready_status(), down)
    patch = _readiness_status(held, True, "2026-01-01T00:09:00Z")
    assert patch is not None
    up = apply_status_patch(held, patch)
    ready = {c["type"]: c for c in up["conditions"]}
    assert ready["Ready"] == {
        "type": "Ready",
        "status": "True",
        "lastTransitionTime": "2026-01-01T00:09:00Z",
    }
    assert ready["Initialized"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    for container in up["containerStatuses"]:
        assert container["ready"] and container["started"]
        assert container["state"] == {"running": {"startedAt": "2026-01-01T00:09:00Z"}}
        assert container["restartCount"] == 1
    assert _readiness_status(up, True, "later") is None


def test_a_ready_pod_keeps_its_transition_times() -> None:
    status = kwok_ready_status()
    status["containerStatuses"][1]["ready"] = False  # one container not ready yet
    patch = _readiness_status(status, True, "2026-01-01T00:09:00Z")
    assert patch is not None
    assert {c["lastTransitionTime"] for c in patch["conditions"]} == {"2026-01-01T00:00:00Z"}


def test_restart_policies_as_a_kubelet_applies_them() -> None:
    assert [_runs_again("Always", code) for code in (0, 1)] == [True, True]
    assert [_runs_again("OnFailure", code) for code in (0, 1, 137)] == [False, True, True]
    assert [_runs_again("Never", code) for code in (0, 1)] == [False, False]


def ended(name: str, exit_code: int, restarts: int = 0) -> Container:
    container = Container(name, ["x"], {}, Path("/logs") / name, image=f"{name}:1")
    container.restarts = restarts
    container.started_at, container.exit_code = "2026-01-01T00:01:00Z", exit_code
    container.finished_at = "2026-01-01T00:02:00Z"
    return container


def test_a_started_pod_of_its_own_is_reported_running_and_ready() -> None:
    container = Container("job", ["x"], {}, Path("/logs/job"), image="tunnelop:dev")
    status = _running_status([container], "2026-01-01T00:00:05Z")
    assert status["phase"] == "Running"
    assert status["startTime"] == "2026-01-01T00:00:05Z"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Initialized": "True", "Ready": "True", "ContainersReady": "True"}
    (reported,) = status["containerStatuses"]
    assert (reported["name"], reported["image"], reported["restartCount"]) == (
        "job",
        "tunnelop:dev",
        0,
    )
    assert reported["ready"] and reported["started"]
    assert reported["state"] == {"running": {"startedAt": "2026-01-01T00:00:05Z"}}


def test_a_pod_whose_containers_all_exited_0_succeeded() -> None:
    status = _completed_status([ended("main", 0), ended("side", 0, restarts=2)], "now")
    assert status["phase"] == "Succeeded"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Ready": ("False", "PodCompleted"),
        "ContainersReady": ("False", "PodCompleted"),
    }
    main, side = status["containerStatuses"]
    assert main["state"] == {
        "terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": "2026-01-01T00:01:00Z",
            "finishedAt": "2026-01-01T00:02:00Z",
        }
    }
    assert not main["ready"] and not main["started"]
    assert (side["image"], side["restartCount"]) == ("side:1", 2)


def test_one_container_that_failed_fails_the_pod() -> None:
    status = _completed_status([ended("main", 0), ended("check", 3)], "now")
    assert status["phase"] == "Failed"
    terminated = [c["state"]["terminated"] for c in status["containerStatuses"]]
    assert [(t["exitCode"], t["reason"]) for t in terminated] == [(0, "Completed"), (3, "Error")]


@contextlib.asynccontextmanager
async def http_answering(status_line: bytes):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_probes_pass_on_a_listening_port_and_a_good_answer() -> None:
    async with http_answering(b"HTTP/1.1 200 OK") as ok, http_answering(b"HTTP/1.1 503 No") as no:
        assert await _probe("127.0.0.1", ReadinessCheck(ok))
        assert await _probe("127.0.0.1", ReadinessCheck(ok, "/readyz"))
        assert not await _probe("127.0.0.1", ReadinessCheck(no, "/readyz"))
    assert not await _probe("127.0.0.1", ReadinessCheck(free_port()))
