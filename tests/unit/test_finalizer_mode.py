"""Who sets the finalizer at a Tunnel's creation (--finalizer-mode): the policy where the API
server serves it, else kopf's mutating webhook; behind a Service, what the chart installed.
tests/integration/test_admission.py checks the same against the API server."""

from __future__ import annotations

import pytest

from tunnelop.cli import build_parser
from tunnelop.manager import Options, _finalizer_webhook
from tunnelop.platform.admission_policies import serves_mutating_policies
from tunnelop.platform.webhook_tls import CaBundleInjector

SERVICE = ("tunnelop-system", "tunnelop-webhook")


@pytest.mark.parametrize(
    ("mode", "policy_applied", "webhook"),
    [
        ("auto", True, False),
        ("auto", False, True),  # not served, or not applied: the webhook as before
        ("policy", True, False),
        ("policy", False, False),  # forced: the controller adds it, one write later
        ("webhook", False, True),
    ],
)
def test_a_local_run_registers_the_mutating_webhook_only_without_the_policy(
    mode, policy_applied, webhook
) -> None:
    assert _finalizer_webhook(Options(finalizer_mode=mode), policy_applied) is webhook


@pytest.mark.parametrize(("mode", "webhook"), [("policy", False), ("webhook", True)])
def test_behind_a_service_the_chart_decided(mode, webhook) -> None:
    options = Options(finalizer_mode=mode, webhook_service=SERVICE)
    assert _finalizer_webhook(options, policy_applied=False) is webhook


def test_served_means_both_kinds_in_the_group_versions_resources() -> None:
    resources = [
        {"name": "mutatingadmissionpolicies", "kind": "MutatingAdmissionPolicy"},
        {"name": "mutatingadmissionpolicies/status", "kind": "MutatingAdmissionPolicy"},
        {"name": "mutatingadmissionpolicybindings", "kind": "MutatingAdmissionPolicyBinding"},
        {"name": "validatingwebhookconfigurations", "kind": "ValidatingWebhookConfiguration"},
    ]
    assert serves_mutating_policies({"resources": resources})
    assert not serves_mutating_policies({"resources": resources[-1:]})  # 1.35 without v1
    assert not serves_mutating_policies({"resources": resources[2:]})
    assert not serves_mutating_policies(None)


def test_the_flag_defaults_to_webhook_and_refuses_other_modes(capsys) -> None:
    parser = build_parser()
    assert parser.parse_args(["run"]).finalizer_mode == "webhook"
    assert parser.parse_args(["run", "--finalizer-mode", "policy"]).finalizer_mode == "policy"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--finalizer-mode", "both"])
    assert "--finalizer-mode: invalid choice" in capsys.readouterr().err


class Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def request(self, method: str, path: str, body=None, **_) -> None:
        self.paths.append(path)
        return None


async def test_with_the_policy_no_ca_bundle_is_kept_in_a_mutating_configuration() -> None:
    kube = Recorder()
    injector = CaBundleInjector(
        kube, "tunnelop.dev", SERVICE, b"", plurals=("validatingwebhookconfigurations",)
    )
    await injector.set_ca(b"ca")
    assert kube.paths == [
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/tunnelop.dev"
    ]
