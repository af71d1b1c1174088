"""The operator in a pod connects kopf with the pod's ServiceAccount token from where
`--service-account-dir` says (kopf's own in-cluster login knows only the usual place)."""

from __future__ import annotations

from tunnelop.manager import service_account_login


def test_the_pods_token_makes_kopfs_connection(tmp_path) -> None:
    (tmp_path / "token").write_text("the-token\n")
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "namespace").write_text("tunnelop")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    info = service_account_login(str(tmp_path), env)
    assert info is not None
    assert (info.server, info.token, info.scheme) == (
        "https://10.0.0.1:6443",
        "the-token",
        "Bearer",
    )
    assert (info.ca_path, info.default_namespace) == (str(tmp_path / "ca.crt"), "tunnelop")


def test_an_ipv6_api_server_and_a_missing_host(tmp_path) -> None:
    (tmp_path / "token").write_text("t")
    info = service_account_login(str(tmp_path), {"KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert info is not None and info.server == "https://[fd00::1]:443"
    assert info.ca_path is None and info.default_namespace is None
    assert service_account_login(str(tmp_path), {}).server == "https://kubernetes.default.svc"


def test_outside_a_pod_there_is_no_such_connection(tmp_path) -> None:
    assert service_account_login(str(tmp_path), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
