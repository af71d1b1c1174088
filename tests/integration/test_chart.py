"""The Helm chart (helm/tunnelop): `helm lint`; the logic of its templates; its values refused
with a message naming the value; the chart rendered with the default and a full set of
values and validated by the real API server (server-side dry run); its RBAC asked of the API
server's authorizer and exercised by the operator's own writes, impersonated; and its install
onto CRDs applied with kubectl before.

The tests of the rendered output need only helm; the rest need the local cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

import tunnelop
from support import objects, tools
from support.operator import delete_webhook_configurations, session_operator_aside
from tunnelop.api.v1alpha1 import RelayNode, Tunnel
from tunnelop.builders import relay as relay_builders
from tunnelop.builders.client import build_client_deployment
from tunnelop.builders.finalizer_policy import (
    build_finalizer_policy,
    build_finalizer_policy_binding,
)
from tunnelop.builders.route_tunnel import route_tunnel
from tunnelop.contract import naming
from tunnelop.contract.table import TABLE_SHARDS
from tunnelop.domain.gateway import RouteView, Target, TunnelWant

CHART = tools.REPO / "helm" / "tunnelop"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
WEBHOOK_CONFIGURATION = "tunnelop.dev"
FINALIZER_POLICY = naming.FINALIZER_POLICY
# What helm finds on a cluster that serves MutatingAdmissionPolicy v1 (helm template, asking
# none, finds nothing of the kind).
SERVES_POLICIES = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"


# ---- rendering -----------------------------------------------------------------------------


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm from the tool cache, without a cluster (lint and template)."""
    return tools.helm(*args, kubeconfig=None, check=check)


def render_text(
    *sets: str,
    values: Path | None = None,
    release: str = "tunnelop",
    namespace: str = "tunnelop-system",
    api_versions: tuple[str, ...] = (),
) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for api_version in api_versions:
        args += ["--api-versions", api_version]
    if values is not None:
        args += ["--values", str(values)]
    for assignment in sets:
        args += ["--set", assignment]
    return helm(*args).stdout


def render(*sets: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(*sets, **kwargs)) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name or 'anything'}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def flags(docs: list[dict[str, Any]]) -> dict[str, str | None]:
    """`tunnelop run`'s flags as the Deployment passes them: --name=value -> {name: value}."""
    container = operator_container(docs)
    assert container["command"] == ["tunnelop"]
    assert container["args"][0] == "run"
    parsed: dict[str, str | None] = {}
    for arg in container["args"][1:]:
        name, _, value = arg.partition("=")
        parsed[name] = value or None
    return parsed


def refused(*sets: str) -> str:
    """helm's error for values it must refuse."""
    args = ["template", "t", str(CHART)]
    for assignment in sets:
        args += ["--set", assignment]
    result = helm(*args, check=False)
    assert result.returncode != 0, f"helm rendered {sets}"
    return result.stderr


# ---- lint and values ---------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_helm_lint_passes(values):
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("replicas=0", "/replicas"),
        ("webhook.failurePolicy=Never", "/webhook/failurePolicy"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
        ("image.digest=latest", "/image/digest"),
        ("relayNamespace.name=Relays_1", "/relayNamespace/name"),
        ("leaderElection.leaseDuration=2", "/leaderElection/leaseDuration"),
        ("logFormat=xml", "/logFormat"),
        ("relayImages.agent=a b", "/relayImages/agent"),
        ("clientImages.frpc=a b", "/clientImages/frpc"),
        ("crds.instal=true", "instal"),
        ("podDisruptionBudget.unhealthyPodEvictionPolicy=Never", "unhealthyPodEvictionPolicy"),
        ("uninstall.activeDeadlineSeconds=10", "/uninstall/activeDeadlineSeconds"),
        ("uninstall.releaseFinalizers=yes", "/uninstall/releaseFinalizers"),
    ],
)
def test_schema_refuses_bad_values_naming_them(assignment, named):
    assert named in refused(assignment)


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["serviceNodePortRange=32767-30000"], "serviceNodePortRange"),
        (["serviceNodePortRange=0-100"], "serviceNodePortRange"),
        (["replicas=2", "podDisruptionBudget.minAvailable=2"], "podDisruptionBudget.minAvailable"),
        (
            ["certManager.enabled=true", "certManager.issuerRef.kind=ClusterIssuer"],
            "certManager.issuerRef.name",
        ),
        (
            ["terminationGracePeriodSeconds=300", "uninstall.activeDeadlineSeconds=300"],
            "uninstall.activeDeadlineSeconds 300: must exceed terminationGracePeriodSeconds + 60",
        ),
    ],
)
def test_values_that_contradict_each_other_are_refused(assignments, message):
    assert message in refused(*assignments)


# ---- the operator's Deployment -----------------------------------------------------------------


def test_default_install_runs_two_leader_elected_replicas_with_restricted_security():
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert flags(docs) == {
        "--leader-elect": None,
        "--leader-election-namespace": "tunnelop-system",
        "--leader-election-id": "tunnelop",
        "--lease-duration": "10",
        "--relay-namespace": "tunnelop-relays",
        "--health-listen": "0.0.0.0:8081",
        "--webhook-host": "0.0.0.0",
        "--webhook-port": "9443",
        "--webhook-service": "tunnelop-system/tunnelop-webhook",
        "--webhook-cert-secret": "tunnelop-webhook-cert",
        "--traffic-interval": "10",
        "--service-node-port-range": "30000-32767",
        # The relay agents run the chart's own image (a mirror serves them too).
        "--agent-image": f"ghcr.io/tunnelop/tunnelop:{tunnelop.__version__}",
        # Named always: the client policy allows this image only.
        "--frpc-image": naming.DEFAULT_FRPC_IMAGE,
        "--log-level": "INFO",
        "--log-format": "json",
        "--service-account-dir": "/var/run/secrets/kubernetes.io/serviceaccount",
        # The finalizer by the operator's webhook: the default (docs/install.md says why).
        "--finalizer-mode": "webhook",
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["image"] == f"ghcr.io/tunnelop/tunnelop:{tunnelop.__version__}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "health": 8081,
        "webhook": 9443,
    }
    # The restricted Pod Security Standard, and nothing writable but /tmp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "tmp")
    # The replicas prefer different nodes.
    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_webhook_service_routes_to_the_leader_and_metrics_to_every_replica():
    """Every replica is ready (the budget counts the follower standing by); admission goes
    to the pod the leader labelled tunnelop.dev/role=leader."""
    docs = render()
    pods = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    services = {s["metadata"]["name"]: s["spec"] for s in of_kind(docs, "Service")}
    assert services["tunnelop-webhook"]["selector"] == {**pods, "tunnelop.dev/role": "leader"}
    assert services["tunnelop-metrics"]["selector"] == pods
    assert services["tunnelop-metrics"]["publishNotReadyAddresses"] is True


def test_one_replica_gets_no_disruption_budget():
    """minAvailable 1 of 1 would block every node drain."""
    assert of_kind(render("replicas=1"), "PodDisruptionBudget") == []
    assert of_kind(render("podDisruptionBudget.enabled=false"), "PodDisruptionBudget") == []


def test_image_by_digest_wins_over_the_tag():
    digest = "sha256:" + "ab" * 32
    docs = render("image.repository=registry.example.test/tunnelop", f"image.digest={digest}")
    assert operator_container(docs)["image"] == f"registry.example.test/tunnelop@{digest}"
    docs = render("image.tag=1.2.3")
    assert operator_container(docs)["image"] == "ghcr.io/tunnelop/tunnelop:1.2.3"
    # The relay agents follow the chart's image, digest included, unless named.
    docs = render("image.repository=registry.example.test/tunnelop", f"image.digest={digest}")
    assert flags(docs)["--agent-image"] == f"registry.example.test/tunnelop@{digest}"
    assert "--frps-image" not in flags(docs)
    docs = render("relayImages.agent=a.test/agent:1", "relayImages.frps=a.test/frps:v0.71.0")
    assert (flags(docs)["--agent-image"], flags(docs)["--frps-image"]) == (
        "a.test/agent:1",
        "a.test/frps:v0.71.0",
    )


def test_values_reach_the_flags_and_the_pod():
    docs = render(values=FULL_VALUES, release="full", namespace="tunnelop-full")
    args = flags(docs)
    assert args["--lease-duration"] == "15"
    assert args["--leader-election-id"] == "tunnelop-full"
    assert args["--relay-namespace"] == "tunnelop-full-relays"
    assert args["--traffic-interval"] == "5"
    assert args["--service-node-port-range"] == "20000-32767"
    assert args["--log-format"] == "console"
    assert args["--frpc-image"] == "registry.example.test/mirror/frpc:v0.71.0"
    policy = one(docs, "ValidatingAdmissionPolicy")
    assert "registry.example.test/mirror/frpc:v0.71.0" in json.dumps(policy["spec"]["validations"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "tunnelop-critical"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["serviceAccountName"] == "tunnelop-operator"
    spread = pod["topologySpreadConstraints"][0]
    # The chart adds the pods' own selector to a constraint that has none.
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]


# ---- the uninstall hook -------------------------------------------------------------------------


def test_uninstall_hook_releases_the_finalizers_as_the_operator_before_helm_deletes():
    docs = render()
    job = one(docs, "Job")
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "tunnelop-release-finalizers"
    assert meta["namespace"] == "tunnelop-system"
    assert meta["annotations"] == {
        "helm.sh/hook": "pre-delete",
        "helm.sh/hook-weight": "0",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
    }
    assert meta["labels"]["app.kubernetes.io/component"] == "uninstall"
    assert 0 < spec["backoffLimit"] <= 3
    assert spec["activeDeadlineSeconds"] == 300
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/name": "tunnelop",
        "app.kubernetes.io/instance": "tunnelop",
        "app.kubernetes.io/component": "uninstall",
    }
    deployment = one(docs, "Deployment")
    operator_pod = deployment["spec"]["template"]["spec"]
    # Not one of the operator's pods (their Services and budget select by component).
    assert not deployment["spec"]["selector"]["matchLabels"].items() <= (
        spec["template"]["metadata"]["labels"].items()
    )
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == operator_pod["serviceAccountName"] == "tunnelop"
    assert pod["securityContext"] == operator_pod["securityContext"]
    (container,) = pod["containers"]
    operator = operator_container(docs)
    assert container["securityContext"] == operator["securityContext"]
    assert container["image"] == operator["image"]
    assert container["command"] == ["tunnelop"]
    assert container["args"] == [
        "release-finalizers",
        f"--deployment=tunnelop-system/{deployment['metadata']['name']}",
        "--lease=tunnelop",
        f"--webhook-configuration={WEBHOOK_CONFIGURATION}",
        "--stop-timeout=60",  # terminationGracePeriodSeconds (30) + 30
        "--log-level=INFO",
        "--log-format=json",
        "--service-account-dir=/var/run/secrets/kubernetes.io/serviceaccount",
    ]
    assert container["resources"]["limits"]["memory"] == "256Mi"
    # The command line the chart passes is one the command takes.
    from tunnelop.cli import build_parser

    parsed = build_parser().parse_args(container["args"])
    assert parsed.deployment == ("tunnelop-system", "tunnelop")
    assert parsed.stop_timeout < spec["activeDeadlineSeconds"]


def test_uninstall_hook_takes_the_pods_values_and_can_be_turned_off():
    docs = render(values=FULL_VALUES, release="full", namespace="tunnelop-full")
    job = one(docs, "Job")
    template = job["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "edge"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert template["spec"]["serviceAccountName"] == "tunnelop-operator"
    assert template["spec"]["priorityClassName"] == "tunnelop-critical"
    assert template["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert job["spec"]["activeDeadlineSeconds"] == 600
    args = template["spec"]["containers"][0]["args"]
    assert "--deployment=tunnelop-full/tunnelop-full" in args
    assert "--lease=tunnelop-full" in args
    assert "--stop-timeout=75" in args  # terminationGracePeriodSeconds 45 + 30

    off = render("uninstall.releaseFinalizers=false")
    assert of_kind(off, "Job") == []
    # Nor do the hook's rights remain.
    home_rules = one(off, "Role", "tunnelop")["rules"]
    assert not [r for r in home_rules if "deployments/scale" in r["resources"]]
    # The replicas still label their own pods (the webhook Service), but list none.
    pod_rules = [r for r in home_rules if "pods" in r["resources"]]
    assert [r["verbs"] for r in pod_rules] == [["patch"]]
    cluster_rules = one(off, "ClusterRole")["rules"]
    assert not [
        r for r in cluster_rules if "relaypools" in r["resources"] and "patch" in r["verbs"]
    ]


# ---- webhooks and certificates --------------------------------------------------------------


def _handlers() -> dict[str, Any]:
    """The operator's admission handlers, as kopf registers them (by id) where no policy sets
    the finalizer (add-finalizer is registered only then)."""
    from tunnelop.controllers import webhook

    registry = kopf.OperatorRegistry()
    webhook.register_validate_tunnel(registry)
    webhook.register_add_finalizer(registry)
    return {h.id: h for h in registry._webhooks.get_all_handlers()}


def test_webhook_configurations_mirror_the_operators_handlers():
    docs = render("finalizer.mode=webhook")
    service = one(docs, "Service", "tunnelop-webhook")
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    pods = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == {**pods, "tunnelop.dev/role": "leader"}
    handlers = _handlers()
    kinds = {
        "validating": "ValidatingWebhookConfiguration",
        "mutating": "MutatingWebhookConfiguration",
    }
    rendered = {}
    for reason, kind in kinds.items():
        config = one(docs, kind, WEBHOOK_CONFIGURATION)
        assert "annotations" not in config["metadata"], "no cert-manager injection by default"
        for hook in config["webhooks"]:
            rendered[hook["name"]] = (reason, hook)
    assert sorted(rendered) == sorted(f"{i}.{WEBHOOK_CONFIGURATION}" for i in handlers)
    for handler_id, handler in handlers.items():
        reason, hook = rendered[f"{handler_id}.{WEBHOOK_CONFIGURATION}"]
        assert reason == handler.reason.value
        assert hook["clientConfig"] == {
            "service": {
                "name": "tunnelop-webhook",
                "namespace": "tunnelop-system",
                "path": f"/{handler_id}",
                "port": 443,
            }
        }, "no caBundle: injected at run time, and left alone by helm upgrade"
        assert hook["rules"] == [
            {
                "apiGroups": [handler.selector.group],
                "apiVersions": [handler.selector.version],
                "operations": list(handler.operations),
                "resources": [handler.selector.any_name],
                "scope": "Namespaced",
            }
        ]
        # The handlers admit on their own failures: so does the API server, by default.
        assert handler.ignore_failures
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert 1 <= hook["timeoutSeconds"] <= 30
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [
            "kube-system",
            "tunnelop-system",
        ]


@pytest.mark.parametrize(
    ("sets", "api_versions"),
    [(("finalizer.mode=auto",), (SERVES_POLICIES,)), (("finalizer.mode=policy",), ())],
    ids=["auto-where-served", "forced"],
)
def test_finalizer_policy_replaces_the_mutating_webhook_where_served(sets, api_versions):
    docs = render(*sets, api_versions=api_versions)
    assert of_kind(docs, "MutatingWebhookConfiguration") == []
    validating = one(docs, "ValidatingWebhookConfiguration", WEBHOOK_CONFIGURATION)
    assert [w["name"] for w in validating["webhooks"]] == [
        f"validate-tunnel.{WEBHOOK_CONFIGURATION}"
    ]
    policy = one(docs, "MutatingAdmissionPolicy", FINALIZER_POLICY)
    binding = one(docs, "MutatingAdmissionPolicyBinding", FINALIZER_POLICY)
    # The objects a local operator applies, with the chart's labels and namespaceSelector.
    selector = validating["webhooks"][0]["namespaceSelector"]
    labels = policy["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert policy == build_finalizer_policy(labels=labels, namespace_selector=selector)
    assert binding == build_finalizer_policy_binding(labels=labels)
    # The operator serves no add-finalizer; the hook unbinds the policy, and may.
    assert flags(docs)["--finalizer-mode"] == "policy"
    hook_args = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--finalizer-policy-binding={FINALIZER_POLICY}" in hook_args
    from tunnelop.cli import build_parser

    assert build_parser().parse_args(hook_args).finalizer_policy_binding == FINALIZER_POLICY
    admission = [
        r
        for r in one(docs, "ClusterRole")["rules"]
        if r["apiGroups"] == ["admissionregistration.k8s.io"]
    ]
    assert admission[-1] == {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingadmissionpolicybindings"],
        "resourceNames": [FINALIZER_POLICY],
        "verbs": ["delete"],
    }
    # Without the hook, no right to it either.
    off = render(*sets, "uninstall.releaseFinalizers=false", api_versions=api_versions)
    assert "mutatingadmissionpolicybindings" not in json.dumps(one(off, "ClusterRole"))


@pytest.mark.parametrize(
    "api_versions", [(), (SERVES_POLICIES,)], ids=["not-served", "default-webhook"]
)
def test_finalizer_webhook_where_the_policy_is_not_served_or_not_wanted(api_versions):
    sets = ("finalizer.mode=auto",) if not api_versions else ()
    docs = render(*sets, api_versions=api_versions)
    assert of_kind(docs, "MutatingAdmissionPolicy") == []
    assert of_kind(docs, "MutatingAdmissionPolicyBinding") == []
    mutating = one(docs, "MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION)
    assert [w["name"] for w in mutating["webhooks"]] == [f"add-finalizer.{WEBHOOK_CONFIGURATION}"]
    assert flags(docs)["--finalizer-mode"] == "webhook"
    hook_args = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in hook_args if a.startswith("--finalizer-policy-binding")]
    assert "mutatingadmissionpolicybindings" not in json.dumps(one(docs, "ClusterRole"))


def test_self_managed_certificate_is_the_operators_secret():
    docs = render()
    assert "--webhook-cert-dir" not in flags(docs)
    assert flags(docs)["--webhook-cert-secret"] == "tunnelop-webhook-cert"
    assert of_kind(docs, "Certificate") == [] and of_kind(docs, "Issuer") == []
    # The operator may create the Secret, and read and rotate that one only.
    rules = one(docs, "Role", "tunnelop")["rules"]
    secret_rules = [r for r in rules if r["resources"] == ["secrets"]]
    assert {"verbs": ["create"]} == {"verbs": secret_rules[0]["verbs"]}
    assert secret_rules[1]["resourceNames"] == ["tunnelop-webhook-cert"]


def test_cert_manager_issues_the_certificate_and_injects_its_ca():
    docs = render("certManager.enabled=true")
    args = flags(docs)
    assert args["--webhook-cert-dir"] == "/certs"
    assert "--webhook-cert-secret" not in args
    assert args["--webhook-service"] == "tunnelop-system/tunnelop-webhook"
    certificate = one(docs, "Certificate")
    assert certificate["spec"]["secretName"] == "tunnelop-webhook-cert"
    assert certificate["spec"]["dnsNames"] == [
        "tunnelop-webhook.tunnelop-system.svc",
        "tunnelop-webhook.tunnelop-system.svc.cluster.local",
    ]
    issuer = one(docs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "kind": "Issuer",
        "name": issuer["metadata"]["name"],
    }
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = one(docs, kind)["metadata"]["annotations"]
        assert annotations == {
            "cert-manager.io/inject-ca-from": f"tunnelop-system/{certificate['metadata']['name']}"
        }
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-cert", "mountPath": "/certs", "readOnly": True} in pod["containers"][
        0
    ]["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-cert")
    assert volume["secret"]["secretName"] == "tunnelop-webhook-cert"
    # cert-manager writes the Secret: the operator gets no right to it.
    role = one(docs, "Role", "tunnelop")
    assert not [r for r in role["rules"] if r["resources"] == ["secrets"]]


def test_cert_manager_with_an_issuer_of_the_cluster():
    docs = render(
        "certManager.enabled=true",
        "certManager.issuerRef.kind=ClusterIssuer",
        "certManager.issuerRef.name=internal-ca",
    )
    assert of_kind(docs, "Issuer") == []
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {
        "kind": "ClusterIssuer",
        "name": "internal-ca",
    }


# ---- CRDs and namespaces ----------------------------------------------------------------------


def _generated_crds() -> dict[str, dict[str, Any]]:
    crds = (yaml.safe_load(p.read_text()) for p in (tools.REPO / "crds").glob("*.yaml"))
    return {crd["metadata"]["name"]: crd for crd in crds}


def test_crds_are_installed_as_generated_and_kept_on_uninstall():
    rendered = {c["metadata"]["name"]: c for c in of_kind(render(), "CustomResourceDefinition")}
    generated = _generated_crds()
    assert sorted(rendered) == sorted(generated)
    for name, crd in rendered.items():
        assert crd["spec"] == generated[name]["spec"], f"{name} differs from crds/"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tunnelop"
    assert of_kind(render("crds.install=false"), "CustomResourceDefinition") == []
    unkept = of_kind(render("crds.keep=false"), "CustomResourceDefinition")
    assert unkept and all("annotations" not in c["metadata"] for c in unkept)


def test_relay_namespace_is_created_and_kept():
    namespace = one(render(), "Namespace")
    assert namespace["metadata"]["name"] == "tunnelop-relays"
    assert namespace["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert of_kind(render("relayNamespace.create=false"), "Namespace") == []
    # Relays in the release namespace: that one is not the chart's to create.
    same = render("relayNamespace.name=tunnelop-system")
    assert of_kind(same, "Namespace") == []
    assert flags(same)["--relay-namespace"] == "tunnelop-system"
    enforced = one(render("relayNamespace.podSecurityEnforce=restricted"), "Namespace")
    assert enforced["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ---- RBAC, monitoring, network policies (rendered) --------------------------------------


def test_rbac_names_every_verb_and_resource():
    """No wildcard anywhere, and the cluster-wide rules never write what they only read."""
    docs = render()
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    cluster_rules = one(docs, "ClusterRole")["rules"]
    webhooks = [r for r in cluster_rules if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert webhooks == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            "resourceNames": [WEBHOOK_CONFIGURATION],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ]
    assert one(docs, "Role", "tunnelop-relays")["metadata"]["namespace"] == "tunnelop-relays"


def _operator_metric_names() -> set[str]:
    """Every series name the operator exposes at /metrics."""
    from tunnelop.controllers import quotametrics  # noqa: F401  (registers the quota gauges)
    from tunnelop.platform import metrics

    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def test_alerts_use_the_operators_real_metric_names():
    docs = render("metrics.prometheusRule.enabled=true")
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "TunnelopOperatorNotLeading",
        "TunnelopRelayDown",
        "TunnelopRelayPoolFull",
        "TunnelopQuotaExceeded",
        "TunnelopWebhookErrors",
    }
    used = {name for r in rules for name in re.findall(r"\btunnelop_[a-z_]+", r["expr"])}
    assert used, "the alerts use tunnelop's metrics"
    assert used <= _operator_metric_names(), used - _operator_metric_names()
    # Scoped to the operator's own series, as the ServiceMonitor's job labels them.
    leading = next(r for r in rules if r["alert"] == "TunnelopOperatorNotLeading")
    assert 'job="tunnelop-metrics"' in leading["expr"]


def test_service_monitor_scrapes_the_metrics_service():
    docs = render("metrics.serviceMonitor.enabled=true")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "tunnelop-metrics")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    webhook_labels = one(docs, "Service", "tunnelop-webhook")["metadata"]["labels"]
    assert not selected.items() <= webhook_labels.items(), "the webhook Service is not scraped"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_relay_agents_metrics_port_is_open_only_to_the_operator():
    docs = render("networkPolicy.enabled=true")
    relays = one(docs, "NetworkPolicy", "tunnelop-relays")
    assert relays["metadata"]["namespace"] == "tunnelop-relays"
    open_to_all, agent = relays["spec"]["ingress"]
    assert "from" not in open_to_all
    port = naming.AGENT_HEALTH_PORT
    tcp_open = [p for p in open_to_all["ports"] if p["protocol"] == "TCP"]
    for public in (naming.CONTROL_PORT, 80, 443, 20000, 65535, 1):
        assert any(p["port"] <= public <= p["endPort"] for p in tcp_open), public
    assert not any(p["port"] <= port <= p["endPort"] for p in tcp_open)
    assert agent["ports"] == [{"port": port, "protocol": "TCP"}]
    operator_pods = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert agent["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "tunnelop-system"}
            },
            "podSelector": {"matchLabels": operator_pods},
        }
    ]


def notes() -> str:
    """NOTES.txt as `helm install` prints it. Even a client-side dry run asks the cluster
    (its version, and whether the chart's objects exist): --take-ownership lets it pass the
    CRDs applied by the tests."""
    args = ["install", "tunnelop", str(CHART), "-n", "tunnelop-system", "--dry-run=client"]
    args.append("--take-ownership")
    printed = tools.helm(*args).stdout
    return printed[printed.index("NOTES:") :]


def test_notes_tell_the_provider_what_to_apply_next(cluster):
    notes_text = notes()
    for kind in ("RelayPool", "TunnelQuota", "Tunnel"):
        assert f"kind: {kind}" in notes_text
    assert "kubectl apply" in notes_text
    assert "rollout status deployment/tunnelop" in notes_text


# ---- against the API server ------------------------------------------------------------------

# Stand-ins for the CRDs of prometheus-operator and cert-manager (not installed on the local
# cluster): the API server then accepts the chart's objects of their kinds; their fields are
# checked by the tests above.
STAND_IN_CRDS = {
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "PodMonitor", "podmonitors"),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ("cert-manager.io", "Issuer", "issuers"),
    ("cert-manager.io", "Certificate", "certificates"),
}


def _stand_in_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def third_party_crds(cluster) -> Iterator[None]:
    """The stand-in CRDs, for this module only (a real one, if installed, is left alone)."""
    created = []
    for group, kind, plural in sorted(STAND_IN_CRDS):
        name = f"{plural}.{group}"
        if tools.kubectl("get", "crd", name, check=False).returncode != 0:
            tools.kubectl("create", "-f", "-", input=json.dumps(_stand_in_crd(group, kind, plural)))
            created.append(name)
    if created:
        tools.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in created]
        )
    yield
    if created:
        tools.kubectl("delete", "crd", *created, "--wait=false")


@pytest.fixture
def namespaces(cluster) -> Iterator[Any]:
    """Creates namespaces (kept if they existed), deleted after the test."""
    created: list[str] = []

    def make(*names: str) -> None:
        for name in names:
            if tools.kubectl("get", "namespace", name, check=False).returncode != 0:
                tools.kubectl("create", "namespace", name)
                created.append(name)

    yield make
    if created:
        tools.kubectl("delete", "namespace", *created, "--wait=false")


def server_dry_run(manifest: str, *impersonate: str) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --server-side --dry-run=server`: validated, admitted and authorized by
    the API server, stored nowhere."""
    args = ["apply", "--server-side", "--dry-run=server", "--force-conflicts"]
    args += ["--field-manager=tunnelop-chart-test", "-f", "-", *impersonate]
    return tools.kubectl(*args, input=manifest, check=False)


def suffix() -> str:
    return uuid.uuid4().hex[:6]


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
def test_rendered_chart_passes_the_api_servers_validation(crds, third_party_crds, namespaces, full):
    """Every object of the chart, as the API server validates it (schemas, CRD schemas,
    admission), for the default values and with every optional part on."""
    release_namespace = f"chart-dry-run-{suffix()}"
    if full:
        values = yaml.safe_load(FULL_VALUES.read_text())
        relay_namespace = values["relayNamespace"]["name"]
        manifest = render_text(values=FULL_VALUES, release="full", namespace=release_namespace)
    else:
        relay_namespace = "tunnelop-relays"
        manifest = render_text(namespace=release_namespace)
    # Namespaced objects are checked in namespaces that exist (a dry run creates none).
    namespaces(release_namespace, relay_namespace)
    # The session's operator may run with its own webhook configurations of the chart's name
    # (kopf's, calling a url): applied onto them, a dry run would merge url and service.
    docs = [doc for doc in yaml.safe_load_all(manifest) if doc]
    renamed = f"-dry-run-{suffix()}"
    for doc in docs:
        # The same for the finalizer policy a local operator applies under the chart's name.
        if doc["kind"].endswith("WebhookConfiguration") or doc["kind"].startswith(
            "MutatingAdmissionPolicy"
        ):
            doc["metadata"]["name"] += renamed
        if doc["kind"] == "MutatingAdmissionPolicyBinding":
            doc["spec"]["policyName"] += renamed
    manifest = yaml.safe_dump_all(docs)
    result = server_dry_run(manifest)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len([doc for doc in yaml.safe_load_all(manifest) if doc])


def test_notes_examples_are_accepted_by_the_api_server(crds, namespaces):
    """The RelayPool, TunnelQuota and Tunnel the NOTES tell a provider to apply are valid."""
    examples = re.findall(
        r"cat <<EOF \| kubectl apply (?:-n <tenant-namespace> )?-f -\n(.*?)\n\s*EOF", notes(), re.S
    )
    assert len(examples) == 3
    tenant = f"chart-notes-{suffix()}"
    namespaces(tenant)
    for example in examples:
        manifest = "\n".join(line[3:] for line in example.splitlines())
        obj = yaml.safe_load(manifest)
        if obj["kind"] != "RelayPool":
            obj["metadata"]["namespace"] = tenant
        result = server_dry_run(json.dumps(obj))
        assert result.returncode == 0, f"{obj['kind']}: {result.stderr}"


def test_install_adopts_crds_applied_with_kubectl(crds, namespaces):
    """The README's way until now (kubectl apply --server-side -f crds/) leaves CRDs Helm does
    not own: `helm install` refuses them, `helm install --take-ownership` adopts them, and so
    does an install after the CRDs got Helm's ownership labels and annotations."""
    release, namespace = f"adopt-{suffix()}", f"chart-adopt-{suffix()}"
    namespaces(namespace)
    install = ["install", release, str(CHART), "-n", namespace, "--dry-run=server"]
    install += ["--set", f"relayNamespace.name={namespace}-relays"]  # one no other test has
    unowned = tools.helm(*install, check=False)
    assert unowned.returncode != 0
    assert "CustomResourceDefinition" in unowned.stderr
    assert "cannot be imported into the current release" in unowned.stderr
    adopted = tools.helm(*install, "--take-ownership", check=False)
    assert adopted.returncode == 0, adopted.stderr
    names = sorted(_generated_crds())
    ownership = [
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    ]
    tools.kubectl("annotate", "--overwrite", "crd", *names, *ownership)
    tools.kubectl("label", "--overwrite", "crd", *names, "app.kubernetes.io/managed-by=Helm")
    try:
        labelled = tools.helm(*install, check=False)
        assert "CustomResourceDefinition" not in labelled.stderr, labelled.stderr
    finally:
        tools.kubectl(
            "annotate",
            "crd",
            *names,
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
        )
        tools.kubectl("label", "crd", *names, "app.kubernetes.io/managed-by-")


# ---- RBAC against the API server's authorizer -----------------------------------------------------


@pytest.fixture
def installed_rbac(crds, namespaces) -> Iterator[dict[str, str]]:
    """The chart's ServiceAccount, ClusterRole, Roles and bindings created for real under a
    release name of their own (the rest of the chart is not installed)."""
    ids = suffix()
    release, namespace, relays, tenant = (
        f"rbac-{ids}",
        f"chart-rbac-{ids}",
        f"chart-rbac-relays-{ids}",
        f"chart-rbac-tenant-{ids}",
    )
    namespaces(namespace, relays, tenant)
    docs = render(
        f"relayNamespace.name={relays}",
        "relayNamespace.create=false",
        # As on a cluster that serves MutatingAdmissionPolicy (the hook unbinds it).
        "finalizer.mode=policy",
        release=release,
        namespace=namespace,
    )
    wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    # The admission policy that narrows the operator's Deployments outside the relay namespace.
    wanted |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    objects = [d for d in docs if d["kind"] in wanted]
    tools.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    cluster_role = one(docs, "ClusterRole")["metadata"]["name"]
    policy = one(docs, "ValidatingAdmissionPolicy")["metadata"]["name"]
    home_rules = next(r for r in of_kind(docs, "Role") if r["metadata"]["namespace"] == namespace)
    cert_secret = next(
        r for r in home_rules["rules"] if r["resources"] == ["secrets"] and r.get("resourceNames")
    )
    yield {
        "release": release,
        "namespace": namespace,
        "relays": relays,
        "tenant": tenant,
        "account": f"system:serviceaccount:{namespace}:{one(docs, 'ServiceAccount')['metadata']['name']}",
        "cert_secret": cert_secret["resourceNames"][0],
        "deployment": one(docs, "Deployment")["metadata"]["name"],
        "finalizer_policy": [d for d in docs if d["kind"].startswith("MutatingAdmissionPolicy")],
        "frpc_image": flags(docs)["--frpc-image"],
        "policy": policy,
    }
    tools.kubectl("delete", "clusterrolebinding,clusterrole", cluster_role, "--ignore-not-found")
    tools.kubectl(
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        policy,
        "--ignore-not-found",
    )


def access(user: str, checks: list[tuple[str, str, str | None, str | None]]) -> dict[tuple, bool]:
    """SubjectAccessReviews for `user` (a ServiceAccount), all in one request: for each
    (verb, resource[/subresource][.group], namespace, name) whether the authorizer allows it."""
    namespace_of_account = user.split(":")[2]
    reviews = []
    for verb, resource, namespace, name in checks:
        resource, _, group = resource.partition(".")
        resource, _, subresource = resource.partition("/")
        attributes = {"verb": verb, "resource": resource, "group": group}
        if subresource:
            attributes["subresource"] = subresource
        if namespace:
            attributes["namespace"] = namespace
        if name:
            attributes["name"] = name
        reviews.append(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{namespace_of_account}",
                        "system:authenticated",
                    ],
                    "resourceAttributes": attributes,
                },
            }
        )
    listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": reviews})
    printed = tools.kubectl("create", "-f", "-", "-o", "json", input=listed).stdout
    items, decoder, at = [], json.JSONDecoder(), 0
    while printed[at:].strip():  # one JSON object per review, one after the other
        item, end = decoder.raw_decode(printed[at:].lstrip())
        items.append(item)
        at = len(printed) - len(printed[at:].lstrip()) + end
    return {check: item["status"]["allowed"] for check, item in zip(checks, items, strict=True)}


def test_operator_may_do_what_it_does_and_nothing_more(installed_rbac):
    rbac = installed_rbac
    relays, tenant, home = rbac["relays"], rbac["tenant"], rbac["namespace"]
    needed = [
        # Tunnels, quotas, relays and pools (controllers, informers, kopf).
        ("list", "tunnels.tunnelop.dev", None, None),
        ("watch", "tunnels.tunnelop.dev", None, None),
        ("patch", "tunnels.tunnelop.dev", tenant, "t"),
        ("patch", "tunnels/status.tunnelop.dev", tenant, "t"),
        ("update", "tunnels/finalizers.tunnelop.dev", tenant, "t"),
        # The load-balancer class: Services watched, their status written, their Tunnels.
        ("list", "services", None, None),
        ("watch", "services", None, None),
        ("patch", "services/status", tenant, "web"),
        ("create", "tunnels.tunnelop.dev", tenant, None),
        ("delete", "tunnels.tunnelop.dev", tenant, "web-80-tcp"),
        ("list", "tunnelquotas.tunnelop.dev", None, None),
        ("get", "tunnelquotas.tunnelop.dev", tenant, "q"),
        ("patch", "tunnelquotas/status.tunnelop.dev", tenant, "q"),
        ("watch", "relaynodes.tunnelop.dev", None, None),
        ("create", "relaynodes.tunnelop.dev", None, None),
        ("patch", "relaynodes.tunnelop.dev", None, "r"),
        ("delete", "relaynodes.tunnelop.dev", None, "r"),
        ("patch", "relaynodes/status.tunnelop.dev", None, "r"),
        ("watch", "relaypools.tunnelop.dev", None, None),
        ("patch", "relaypools/status.tunnelop.dev", None, "p"),
        # Tunnels made for TCPRoutes and UDPRoutes, and the Gateway API's status.
        ("create", "tunnels.tunnelop.dev", tenant, None),
        ("delete", "tunnels.tunnelop.dev", tenant, "t"),
        ("watch", "gatewayclasses.gateway.networking.k8s.io", None, None),
        ("list", "gateways.gateway.networking.k8s.io", None, None),
        ("watch", "tcproutes.gateway.networking.k8s.io", None, None),
        ("watch", "udproutes.gateway.networking.k8s.io", None, None),
        ("get", "gateways.gateway.networking.k8s.io", tenant, "g"),
        ("patch", "gatewayclasses/status.gateway.networking.k8s.io", None, "c"),
        ("patch", "gateways/status.gateway.networking.k8s.io", tenant, "g"),
        ("patch", "tcproutes/status.gateway.networking.k8s.io", tenant, "r"),
        ("patch", "udproutes/status.gateway.networking.k8s.io", tenant, "r"),
        ("watch", "services", None, None),
        ("watch", "namespaces", None, None),
        # Tenants' credentials Secrets, Events, Nodes, Namespaces, kopf's watches.
        ("list", "secrets", None, None),
        ("watch", "secrets", None, None),
        ("create", "secrets", tenant, None),
        ("patch", "secrets", tenant, "t-frpc"),
        ("create", "events", tenant, None),
        ("create", "events", "default", None),
        ("patch", "events", tenant, "t.1"),
        ("get", "nodes", None, "node-1"),
        ("get", "namespaces", None, relays),
        ("watch", "deployments.apps", None, None),
        # InCluster Tunnels' frpc Deployments (narrowed by the client policy) and targets.
        ("create", "deployments.apps", tenant, None),
        ("patch", "deployments.apps", tenant, "t-frpc"),
        ("delete", "deployments.apps", tenant, "t-frpc"),
        ("list", "services", None, None),
        ("watch", "services", None, None),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", None, None),
        (
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
            WEBHOOK_CONFIGURATION,
        ),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
            WEBHOOK_CONFIGURATION,
        ),
        # The relays' workloads.
        ("get", "secrets", relays, "relay-r-config"),
        ("patch", "secrets", relays, "relay-r-table"),
        ("patch", "services", relays, "relay-r"),
        ("get", "services", relays, "relay-r"),
        ("list", "pods", relays, None),
        ("patch", "deployments.apps", relays, "relay-r"),
        ("create", "serviceaccounts", relays, None),
        ("create", "roles.rbac.authorization.k8s.io", relays, None),
        ("create", "rolebindings.rbac.authorization.k8s.io", relays, None),
        # The Lease and the webhook certificate, in the release namespace.
        ("create", "leases.coordination.k8s.io", home, None),
        ("update", "leases.coordination.k8s.io", home, "tunnelop"),
        ("create", "secrets", home, None),
        ("update", "secrets", home, rbac["cert_secret"]),
        ("get", "secrets", home, rbac["cert_secret"]),
        # Its own pod's role label.
        ("patch", "pods", home, "tunnelop-6d9f7c-abcde"),
    ]
    refused = [
        ("*", "*.*", None, None),
        ("delete", "nodes", None, "node-1"),
        ("create", "namespaces", None, None),
        ("delete", "namespaces", None, tenant),
        ("get", "secrets", "kube-system", "any"),
        ("delete", "secrets", tenant, "t-frpc"),
        ("delete", "secrets", relays, "relay-r-table"),
        ("get", "secrets", home, f"sh.helm.release.v1.{rbac['release']}.v1"),
        ("update", "tunnels.tunnelop.dev", tenant, "t"),
        # A user's Service: only its status is the operator's.
        ("patch", "services", tenant, "web"),
        ("update", "services", tenant, "web"),
        ("delete", "services", tenant, "web"),
        ("update", "services/status", tenant, "web"),
        ("update", "services/finalizers", tenant, "web"),
        # Of the Gateway API's objects only the status is written.
        ("patch", "gateways.gateway.networking.k8s.io", tenant, "g"),
        ("update", "tcproutes.gateway.networking.k8s.io", tenant, "r"),
        ("delete", "gatewayclasses.gateway.networking.k8s.io", None, "c"),
        ("get", "services", tenant, "s"),
        ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io", None, "other"),
        ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None, None),
        (
            "delete",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
            WEBHOOK_CONFIGURATION,
        ),
        ("update", "leases.coordination.k8s.io", home, "another-lease"),
        ("update", "leases.coordination.k8s.io", relays, "tunnelop"),
        ("create", "pods", relays, None),
        ("update", "deployments.apps", tenant, "t-frpc"),
        ("create", "pods", tenant, None),
        ("create", "services", tenant, None),
        ("patch", "services", tenant, "web"),
        ("delete", "services", tenant, "web"),
        ("escalate", "roles.rbac.authorization.k8s.io", relays, None),
        ("bind", "roles.rbac.authorization.k8s.io", relays, None),
        ("create", "clusterroles.rbac.authorization.k8s.io", None, None),
        ("impersonate", "serviceaccounts", relays, None),
        ("create", "pods/exec", relays, None),
        ("patch", "pods", tenant, "any"),
        ("patch", "pods", relays, "relay-r-abcde"),
        ("delete", "pods", home, "tunnelop-6d9f7c-abcde"),
    ]
    answers = access(rbac["account"], needed + refused)
    missing = [check for check in needed if not answers[check]]
    excess = [check for check in refused if answers[check]]
    assert not missing, f"the operator lacks {missing}"
    assert not excess, f"the operator may {excess}"


def test_uninstall_hook_may_do_what_the_command_does_and_nothing_more(installed_rbac):
    """The pre-delete hook runs `tunnelop release-finalizers` as the operator's
    ServiceAccount: the rights it needs on top of the operator's, narrowly."""
    rbac = installed_rbac
    relays, tenant, home = rbac["relays"], rbac["tenant"], rbac["namespace"]
    deployment = rbac["deployment"]
    needed = [
        ("get", "deployments/scale.apps", home, deployment),
        ("patch", "deployments/scale.apps", home, deployment),
        ("list", "pods", home, None),
        ("get", "leases.coordination.k8s.io", home, "tunnelop"),
        (
            "get",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
            WEBHOOK_CONFIGURATION,
        ),
        (
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
            WEBHOOK_CONFIGURATION,
        ),
        (
            "delete",
            "mutatingadmissionpolicybindings.admissionregistration.k8s.io",
            None,
            FINALIZER_POLICY,
        ),
    ]
    for resource in ("tunnels", "relaynodes", "relaypools", "tunnelquotas"):
        namespace = tenant if resource in ("tunnels", "tunnelquotas") else None
        needed += [
            ("list", f"{resource}.tunnelop.dev", None, None),
            ("get", f"{resource}.tunnelop.dev", namespace, "x"),
            ("patch", f"{resource}.tunnelop.dev", namespace, "x"),
        ]
    refused = [
        ("patch", "deployments/scale.apps", home, "another"),
        ("update", "deployments/scale.apps", home, deployment),
        ("patch", "deployments/scale.apps", relays, "relay-r"),
        ("patch", "deployments/scale.apps", tenant, deployment),
        ("list", "pods", tenant, None),
        ("delete", "pods", home, None),
        ("delete", "relaypools.tunnelop.dev", None, "x"),
        ("delete", "tunnelquotas.tunnelop.dev", tenant, "x"),
        ("update", "relaypools.tunnelop.dev", None, "x"),
        ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io", None, None),
        ("delete", "mutatingadmissionpolicybindings.admissionregistration.k8s.io", None, "x"),
        ("patch", "mutatingadmissionpolicybindings.admissionregistration.k8s.io", None, None),
        ("delete", "mutatingadmissionpolicies.admissionregistration.k8s.io", None, None),
    ]
    answers = access(rbac["account"], needed + refused)
    missing = [check for check in needed if not answers[check]]
    excess = [check for check in refused if answers[check]]
    assert not missing, f"the uninstall hook lacks {missing}"
    assert not excess, f"the uninstall hook may {excess}"


def _relay(name: str) -> RelayNode:
    body = {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "RelayNode",
        "metadata": {"name": name, "uid": str(uuid.uuid4())},
        "spec": {"ports": {"range": "20000-20099"}, "exposure": {"type": "LoadBalancer"}},
    }
    return RelayNode.model_validate(body)


def test_operator_writes_pass_as_its_service_account(installed_rbac):
    """The objects the operator writes, built by its own builders and sent the way it sends
    them (server-side apply), impersonating its ServiceAccount: the API server's authorizer
    and RBAC's escalation check (the relay agent's Role) pass them."""
    rbac = installed_rbac
    relays, tenant = rbac["relays"], rbac["tenant"]
    relay = _relay(f"chart-{suffix()}")
    writes = [
        relay_builders.build_config_secret(
            relay,
            relays,
            frps_toml="# frps",
            token="t",
            dashboard_password="d",
            plugin_password="p",
        ),
        relay_builders.build_table_secret(relay, relays, [], 0),
        relay_builders.build_service_account(relay, relays),
        relay_builders.build_role(relay, relays),
        relay_builders.build_deployment(relay, relays, config_checksum="0"),
        relay_builders.build_service(relay, relays, allocated_ports=[(20000, "TCP")]),
        relay_builders.build_credentials_secret(
            tenant, "t", str(uuid.uuid4()), frpc_toml="# frpc", token="t"
        ),
        _route_tunnel(tenant),
        client_deployment(tenant, rbac["frpc_image"]),
    ]
    # Created with a POST, as the leader elector and Kube.event do.
    created = [
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "tunnelop", "namespace": rbac["namespace"]},
            "spec": {"holderIdentity": "chart-test", "leaseDurationSeconds": 10},
        },
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"t.{suffix()}", "namespace": tenant},
            "involvedObject": {
                "apiVersion": "tunnelop.dev/v1alpha1",
                "kind": "Tunnel",
                "name": "t",
                "namespace": tenant,
            },
            "reason": "Scheduled",
            "message": "chart test",
            "type": "Normal",
        },
    ]
    as_operator = [f"--as={rbac['account']}", "--as-group=system:authenticated"]
    for obj in writes:
        result = server_dry_run(json.dumps(obj), *as_operator)
        assert result.returncode == 0, f"{obj['kind']} {obj['metadata']['name']}: {result.stderr}"
    # A Service of the load-balancer class: status.loadBalancer written as the LoadBalancer
    # controller writes it (server-side apply of the status subresource), its spec not.
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": tenant},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "tunnelop.dev/relay",
            "allocateLoadBalancerNodePorts": False,
            "ports": [{"name": "http", "port": 80}],
        },
    }
    tools.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(service))
    ingress = [{"ip": "203.0.113.7", "ipMode": "Proxy", "ports": [{"port": 80, "protocol": "TCP"}]}]
    status = {**service, "status": {"loadBalancer": {"ingress": ingress}}}
    del status["spec"]
    args = ["apply", "--server-side", "--dry-run=server", "--subresource=status"]
    args += ["--field-manager=tunnelop-loadbalancer", "-f", "-", *as_operator]
    result = tools.kubectl(*args, input=json.dumps(status), check=False)
    assert result.returncode == 0, f"Service status: {result.stderr}"
    respecced = {**service, "spec": {**service["spec"], "ports": [{"name": "http", "port": 81}]}}
    result = server_dry_run(json.dumps(respecced), *as_operator)
    assert result.returncode != 0 and "forbidden" in result.stderr.lower(), result.stderr
    # RBAC checks a RoleBinding against the Role it names, which a dry run does not store.
    role = relay_builders.build_role(relay, relays)
    role["metadata"].pop("ownerReferences")  # no RelayNode here to own it
    tools.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(role))
    binding = relay_builders.build_role_binding(relay, relays)
    result = server_dry_run(json.dumps(binding), *as_operator)
    assert result.returncode == 0, f"RoleBinding: {result.stderr}"
    for obj in created:
        args = ["create", "--dry-run=server", "-f", "-", *as_operator]
        result = tools.kubectl(*args, input=json.dumps(obj), check=False)
        assert result.returncode == 0, f"{obj['kind']} {obj['metadata']['name']}: {result.stderr}"
    # Nor can it grant more than it holds, or write roles outside the relay namespace.
    wider_role = relay_builders.build_role(relay, relays)
    wider_role["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]})
    tenant_role = relay_builders.build_role(relay, tenant)
    for obj in (wider_role, tenant_role):
        result = server_dry_run(json.dumps(obj), *as_operator)
        assert result.returncode != 0, f"the operator could write {obj}"
        assert "forbidden" in result.stderr.lower()


def _route_tunnel(namespace: str) -> dict[str, Any]:
    """A Tunnel as the Gateway API controller applies it for a TCPRoute."""
    route = RouteView.of(
        "TCPRoute",
        {"metadata": {"name": "db", "namespace": namespace, "uid": str(uuid.uuid4())}},
    )
    return route_tunnel(
        TunnelWant(
            key=(namespace, "db-tcp-0123abcd"),
            protocol="tcp",
            port=20000,
            node="r",
            pool=None,
            target=Target("postgres", 5432),
            route=route,
            gateway=(namespace, "edge"),
            listener="tcp",
        )
    )


def client_deployment(namespace: str, image: str, tunnel: str = "t") -> dict[str, Any]:
    """An InCluster Tunnel's frpc Deployment, as the operator builds it."""
    model = Tunnel.model_validate(
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "Tunnel",
            "metadata": {"name": tunnel, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {
                "protocol": "tcp",
                "client": {"type": "InCluster", "target": {"service": "web", "port": 80}},
            },
        }
    )
    return build_client_deployment(
        model,
        credentials_secret=naming.credentials_secret_name(tunnel),
        credentials_checksum="0",
        image=image,
    )


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _edited(deployment: dict[str, Any], edit) -> dict[str, Any]:
    changed = json.loads(json.dumps(deployment))
    edit(changed)
    return changed


def _as_operator(rbac: dict[str, str]) -> list[str]:
    return [f"--as={rbac['account']}", "--as-group=system:authenticated"]


async def test_client_policy_lets_the_operator_write_its_clients_and_nothing_else(
    installed_rbac, no_operator
):
    """RBAC lets the operator write Deployments in every namespace; the chart's admission
    policy lets through only an InCluster client as the operator builds it (outside the
    relay namespace), and names the rule a refusal breaks. No operator runs meanwhile: it
    would delete the client Deployment written here by hand, which no InCluster Tunnel
    wants."""
    rbac = installed_rbac
    tenant, home = rbac["tenant"], rbac["namespace"]
    as_operator = _as_operator(rbac)
    client = client_deployment(tenant, rbac["frpc_image"])

    def someone_elses(d: dict[str, Any]) -> None:
        d["metadata"]["labels"]["app.kubernetes.io/name"] = "nginx"

    refused = {
        "not an InCluster client": _edited(client, someone_elses),
        "an API token": _edited(
            client, lambda d: _pod_spec(d).update(automountServiceAccountToken=True)
        ),
        "another ServiceAccount": _edited(
            client, lambda d: _pod_spec(d).update(serviceAccountName="admin")
        ),
        "the host's network": _edited(client, lambda d: _pod_spec(d).update(hostNetwork=True)),
        "another image": _edited(
            client, lambda d: _pod_spec(d)["containers"][0].update(image="busybox:1")
        ),
        "another command": _edited(
            client, lambda d: _pod_spec(d)["containers"][0].update(args=["sh", "-c", "id"])
        ),
        "a privileged container": _edited(
            client,
            lambda d: _pod_spec(d)["containers"][0].update(securityContext={"privileged": True}),
        ),
        "another Secret": _edited(
            client,
            lambda d: _pod_spec(d)["volumes"][0]["secret"].update(secretName="admin-token"),
        ),
        "a Secret in the environment": _edited(
            client,
            lambda d: _pod_spec(d)["containers"][0]["env"].append(
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "admin", "key": "k"}}}
            ),
        ),
        "no Tunnel as its controller": _edited(
            client, lambda d: d["metadata"].pop("ownerReferences")
        ),
    }
    # The policy is enforced once the API server has loaded it: wait for the first refusal.
    first = json.dumps(refused["not an InCluster client"])
    await objects.wait_for(
        lambda: server_dry_run(first, *as_operator).returncode != 0,
        timeout=30,
        what="the client policy in force",
    )
    result = server_dry_run(json.dumps(client), *as_operator)
    assert result.returncode == 0, result.stderr
    for what, obj in refused.items():
        result = server_dry_run(json.dumps(obj), *as_operator)
        assert result.returncode != 0, f"the operator could write a client with {what}"
        assert rbac["policy"] in result.stderr, f"{what}: {result.stderr}"
    # It deletes its clients (a Tunnel gone back to External)...
    unowned = _edited(client, lambda d: d["metadata"].pop("ownerReferences"))
    tools.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(unowned))
    removed = tools.kubectl(
        "delete", "deployment", "t-frpc", "-n", tenant, "--dry-run=server", *as_operator
    )
    assert removed.returncode == 0, removed.stderr
    # ... but touches no other Deployment, its own included.
    own = ["deployment", rbac["deployment"], "-n", home, "--dry-run=server", *as_operator]
    tools.kubectl("create", "deployment", rbac["deployment"], "-n", home, "--image=x")
    deleted = tools.kubectl("delete", *own, check=False)
    assert deleted.returncode != 0 and rbac["policy"] in deleted.stderr, deleted.stderr
    # (Scaling it, the uninstall hook's deployments/scale, is another resource: the hook's
    # own test below scales it under this policy.)
    # An administrator is not concerned.
    result = server_dry_run(json.dumps(refused["an API token"]))
    assert result.returncode == 0, result.stderr


def apply_agent_rbac(relay: RelayNode, relays: str) -> str:
    """A relay agent's ServiceAccount, Role and RoleBinding, as the operator writes them;
    the ServiceAccount's user name."""
    agent_objects = [
        relay_builders.build_service_account(relay, relays),
        relay_builders.build_role(relay, relays),
        relay_builders.build_role_binding(relay, relays),
    ]
    for obj in agent_objects:
        obj["metadata"].pop("ownerReferences")  # no RelayNode here to own them
    listed = {"apiVersion": "v1", "kind": "List", "items": agent_objects}
    tools.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(listed))
    return f"system:serviceaccount:{relays}:{naming.relay_object_name(relay.metadata.name)}"


def test_relay_agent_reads_only_its_own_table(installed_rbac):
    """The relay agents' RBAC pattern: a ServiceAccount, Role and RoleBinding per relay, the
    Role naming the relay's table Secrets (its shards) only."""
    relays = installed_rbac["relays"]
    relay, other = _relay(f"chart-{suffix()}"), f"relay-chart-{suffix()}-table"
    agent = apply_agent_rbac(relay, relays)
    table = naming.table_secret_name(relay.metadata.name)
    last_shard = naming.table_secret_name(relay.metadata.name, TABLE_SHARDS - 1)
    beyond = naming.shard_secret_name(table, TABLE_SHARDS)
    answers = access(
        agent,
        [
            ("get", "secrets", relays, table),
            ("watch", "secrets", relays, table),
            ("watch", "secrets", relays, last_shard),
            ("get", "secrets", relays, beyond),
            ("get", "secrets", relays, naming.config_secret_name(relay.metadata.name)),
            ("get", "secrets", relays, other),
            ("list", "secrets", relays, None),
            ("patch", "secrets", relays, table),
            ("get", "tunnels.tunnelop.dev", None, None),
        ],
    )
    assert list(answers.values()) == [True, True, True, False, False, False, False, False, False], (
        answers
    )


def can_i(user: str, *args: str) -> str:
    """`kubectl auth can-i ARGS --as USER`: "yes" or "no", as an administrator would ask."""
    result = tools.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    return result.stdout.strip()


def test_kubectl_auth_can_i_agrees(installed_rbac):
    """The same questions through `kubectl auth can-i`, for the operator and a relay agent."""
    rbac = installed_rbac
    operator, relays, tenant = rbac["account"], rbac["relays"], rbac["tenant"]
    assert can_i(operator, "*", "*") == "no"
    assert can_i(operator, "delete", "nodes") == "no"
    assert can_i(operator, "get", "secrets", "-n", "kube-system") == "no"
    assert can_i(operator, "patch", "tunnels.tunnelop.dev/status", "-n", tenant) == "yes"
    assert can_i(operator, "create", "secrets", "-n", tenant) == "yes"
    assert can_i(operator, "create", "deployments.apps", "-n", relays) == "yes"
    assert (
        can_i(operator, "create", "deployments.apps", "-n", tenant) == "yes"
    )  # the policy narrows
    assert can_i(operator, "update", "deployments.apps", "-n", tenant) == "no"

    relay = _relay(f"can-i-{suffix()}")
    agent = apply_agent_rbac(relay, relays)
    own_table = f"secrets/{naming.table_secret_name(relay.metadata.name)}"
    assert can_i(agent, "get", own_table, "-n", relays) == "yes"
    assert (
        can_i(
            agent, "get", f"secrets/{naming.config_secret_name(relay.metadata.name)}", "-n", relays
        )
        == "no"
    )
    assert can_i(agent, "get", "secrets/relay-another-table", "-n", relays) == "no"
    assert can_i(agent, "patch", own_table, "-n", relays) == "no"
    assert can_i(agent, "list", "tunnels.tunnelop.dev") == "no"


# ---- the uninstall hook's command, as the chart's ServiceAccount -------------------------------


@pytest.fixture
async def no_operator(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """No operator runs meanwhile (it would put the finalizers straight back)."""
    async with session_operator_aside(request):
        yield


def service_account_kubeconfig(rbac: dict[str, str], path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a token from the
    TokenRequest API), as the hook's pod does in-cluster."""
    account = rbac["account"].rsplit(":", 1)[1]
    token = tools.kubectl(
        "create", "token", account, "-n", rbac["namespace"], "--duration=10m"
    ).stdout.strip()
    config = json.loads(tools.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config["users"] = [{"name": "hook", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "hook"
    path.write_text(json.dumps(config))
    return path


def release_finalizers(kubeconfig: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """`tunnelop release-finalizers` as the hook runs it: its exit code and JSON log lines."""
    command = [sys.executable, "-m", "tunnelop.cli", "release-finalizers", *args]
    command += ["--kubeconfig", str(kubeconfig), "--log-format", "json"]
    # Outside a pod: no in-cluster config, whatever this machine has.
    command += ["--service-account-dir", str(kubeconfig.parent / "no-service-account")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.returncode, lines


def finalizers_of(kind: str, name: str, namespace: str | None = None) -> list[str]:
    return (objects.get(kind, name, namespace) or {})["metadata"].get("finalizers", [])


def tcp_tunnel(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": name},
        "spec": {"protocol": "tcp"},
    }


async def tunnel_gets_the_finalizer_at_creation(namespace: str, name: str) -> None:
    """The installed policy in force (the API server takes a moment to load a new one):
    a Tunnel created with no operator running has the finalizer; deleted again."""

    def created_with_it() -> bool:
        created = json.loads(
            tools.kubectl(
                "create",
                "-n",
                namespace,
                "-o",
                "json",
                "-f",
                "-",
                input=json.dumps(tcp_tunnel(name)),
            ).stdout
        )
        objects.patch_tunnel(name, namespace, {"metadata": {"finalizers": None}})
        tools.kubectl("delete", "tunnel", name, "-n", namespace, "--wait=true")
        return created["metadata"].get("finalizers") == ["tunnelop.dev/finalizer"]

    await objects.wait_for(
        created_with_it, timeout=30, what="the chart's finalizer policy in force"
    )


async def test_release_finalizers_stops_the_operator_and_keeps_foreign_finalizers(
    installed_rbac, no_operator, tmp_path
):
    """What the hook does, against the API server, with the chart's RBAC: the operator's
    Deployment scaled to 0 and its pods gone; tunnelop's finalizers removed from objects of
    all four kinds, another one kept; a validating webhook with failurePolicy Fail (nothing
    answers it) made lenient first, since it refuses every change to a Tunnel; run again,
    nothing more to do. The chart's finalizer policy, installed, is unbound first: a Tunnel
    created after the release gets no finalizer of tunnelop's."""
    rbac = installed_rbac
    home, tenant, deployment = rbac["namespace"], rbac["tenant"], rbac["deployment"]
    tools.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac["finalizer_policy"]}),
    )
    await tunnel_gets_the_finalizer_at_creation(tenant, f"before-{suffix()}")
    ids = suffix()
    image = "--image=registry.example.test/tunnelop:0"
    tools.kubectl("create", "deployment", deployment, "-n", home, "--replicas=2", image)
    await objects.wait_for(
        lambda: len(objects.list_objects("pod", home)) == 2, what="the operator's two pods"
    )
    ours, foreign = "tunnelop.dev/finalizer", "example.test/keep"
    made = [
        ("tunnel", f"t-{ids}", tenant, {"protocol": "tcp"}, [ours, foreign]),
        ("tunnelquota", f"q-{ids}", tenant, {"hard": {"tunnels": 3}}, ["tunnelop.dev/kopf"]),
        ("relaynode", f"rn-{ids}", None, {"ports": {"range": "20000-20099"}}, [foreign, ours]),
        (
            "relaypool",
            f"rp-{ids}",
            None,
            {"replicas": 0, "template": {"spec": {"ports": {"range": "20000-20099"}}}},
            [ours],
        ),
    ]
    kinds = {"tunnel": "Tunnel", "tunnelquota": "TunnelQuota"}
    kinds |= {"relaynode": "RelayNode", "relaypool": "RelayPool"}
    for kind, name, namespace, spec, finalizers in made:
        meta = {"name": name, "finalizers": finalizers}
        body = {"apiVersion": "tunnelop.dev/v1alpha1", "kind": kinds[kind], "metadata": meta}
        objects.apply({**body, "spec": spec}, namespace)
    # Nothing answers this webhook: while it is Fail, no Tunnel of the tenant can change.
    failing = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION},
        "webhooks": [
            {
                "name": f"validate-tunnel.{WEBHOOK_CONFIGURATION}",
                "clientConfig": {"service": {"name": "nobody", "namespace": home, "path": "/v"}},
                "rules": [
                    {
                        "apiGroups": ["tunnelop.dev"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["UPDATE"],
                        "resources": ["tunnels"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": tenant}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
        ],
    }
    tools.kubectl("create", "-f", "-", input=json.dumps(failing))
    label = ["label", "tunnel", f"t-{ids}", "-n", tenant, "probe=1"]
    refused = tools.kubectl(*label, check=False)
    assert refused.returncode != 0 and "nobody" in refused.stderr, refused.stderr

    kubeconfig = service_account_kubeconfig(rbac, tmp_path / "hook.kubeconfig")
    flags = [f"--deployment={home}/{deployment}", "--lease=tunnelop"]
    flags += [f"--webhook-configuration={WEBHOOK_CONFIGURATION}", "--stop-timeout=60"]
    flags += [f"--finalizer-policy-binding={FINALIZER_POLICY}"]
    try:
        code, logged = release_finalizers(kubeconfig, *flags)
        assert code == 0, logged
        assert objects.get("deployment", deployment, home)["spec"]["replicas"] == 0
        assert objects.list_objects("pod", home) == []
        webhook = objects.get("validatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
        assert webhook["webhooks"][0]["failurePolicy"] == "Ignore"
        assert objects.get("mutatingadmissionpolicybinding", FINALIZER_POLICY) is None
        kept = {name: finalizers_of(kind, name, ns) for kind, name, ns, _, _ in made}
        assert kept == {
            f"t-{ids}": [foreign],
            f"q-{ids}": [],
            f"rn-{ids}": [foreign],
            f"rp-{ids}": [],
        }
        # Unbound: a Tunnel created now gets no finalizer of tunnelop's.
        after = f"after-{suffix()}"
        made.append(("tunnel", after, tenant, {}, []))
        objects.apply(tcp_tunnel(after), tenant)
        assert finalizers_of("tunnel", after, tenant) == []
        released = {line["kind"]: line["released"] for line in logged if "kind" in line}
        assert sorted(released) == ["RelayNode", "RelayPool", "Tunnel", "TunnelQuota"]
        assert all(count >= 1 for count in released.values()), released
        # Idempotent: nothing left to do, and no error.
        again, logged = release_finalizers(kubeconfig, *flags)
        assert again == 0, logged
        assert logged[-1]["total"] == 0, logged[-1]
        # Beyond the chart's rights: refused, and the command says so.
        code, logged = release_finalizers(kubeconfig, f"--deployment={tenant}/{deployment}")
        assert code == 1
        assert "403" in logged[-1]["error"] and logged[-1]["level"] == "error", logged
    finally:
        delete_webhook_configurations()  # else a failed run leaves the Tunnel unchangeable
        for kind, name, namespace, _, _ in made:
            where = ["-n", namespace] if namespace else []
            patch = '{"metadata":{"finalizers":null}}'
            tools.kubectl("patch", kind, name, *where, "--type=merge", "-p", patch, check=False)
            tools.kubectl("delete", kind, name, *where, "--ignore-not-found", check=False)
