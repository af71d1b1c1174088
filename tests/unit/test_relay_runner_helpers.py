"""Pure helpers of the relay-pod runner: how a pod spec becomes a local command line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from support.relay_runner import _argv, _expand, _field_value, _rewrite, default_image_map


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


def test_localhost_becomes_the_relay_address_but_not_inside_a_longer_address() -> None:
    pod = {"127.0.0.1": "127.0.0.120"}
    assert _rewrite("http://127.0.0.1:7400/handler", pod) == "http://127.0.0.120:7400/handler"
    assert _rewrite('bindAddr = "127.0.0.120"', pod) == 'bindAddr = "127.0.0.120"'
    assert _rewrite("127.0.0.12 127.0.0.1", pod) == "127.0.0.12 127.0.0.120"


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
