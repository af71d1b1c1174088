"""The frpc the operator runs for an InCluster tunnel: a Deployment in the tenant's namespace,
owned by the Tunnel, running the pinned upstream frpc with the tunnel's credentials Secret as
its config.

The Secret's frpc.toml is the one an External tenant runs: it reads the local service from
TUNNELOP_LOCAL_IP and TUNNELOP_LOCAL_PORT (builders/frpc.py), which the pod sets to the
target Service's cluster DNS name and port. So switching a tunnel between External and
InCluster changes neither its Secret nor its token.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tunnelop.api.v1alpha1 import Tunnel
from tunnelop.builders.relay import NONROOT_UID
from tunnelop.contract.naming import (
    CONFIG_CHECKSUM_ANNOTATION,
    DEFAULT_FRPC_IMAGE,
    FRPC_CONFIG_KEY,
    LOCAL_IP_ENV,
    LOCAL_PORT_ENV,
    OWNER_API_VERSION,
    client_deployment_name,
    client_labels,
    client_selector,
    service_dns_name,
)

FRPC_CONTAINER = "frpc"
FRPC_CONFIG_DIR = "/etc/frp"
CONFIG_VOLUME = "config"
# On the Deployment: a digest of everything the operator sets in it, so that a reconcile
# compares one value with the watched Deployment instead of writing it again (no request on
# an operator restart).
SPEC_CHECKSUM_ANNOTATION = "tunnelop.dev/spec-checksum"
# frpc is a small Go process: about 15 MiB resident logged in (measured), growing with open
# visitor connections (buffers). The requests reserve little; the memory limit keeps a runaway from
# hurting the tenant's other pods. No CPU limit: throttling would delay every byte that passes
# through the tunnel.
CLIENT_RESOURCES = {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "128Mi"}}
# A pod that cannot start (image pull, crash loop) is reported (the Deployment's Progressing
# condition, shown in the Tunnel's ClientConnected) after this long, not Kubernetes' 10 min:
# frpc starts in well under a second.
PROGRESS_DEADLINE_SECONDS = 120


def tunnel_owner_reference(tunnel: Tunnel) -> dict[str, Any]:
    """The Tunnel as controller of an object: deleting it deletes the object."""
    name, uid = tunnel.metadata.name, tunnel.metadata.uid
    if not name or not uid:
        raise ValueError("the Tunnel needs metadata.name and metadata.uid to own objects")
    return {
        "apiVersion": OWNER_API_VERSION,
        "kind": "Tunnel",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_client_deployment(
    tunnel: Tunnel,
    *,
    credentials_secret: str,
    credentials_checksum: str,
    image: str = DEFAULT_FRPC_IMAGE,
) -> dict[str, Any]:
    """Deployment <tunnel>-frpc: one frpc forwarding to spec.client.target. The pod template
    carries `credentials_checksum` (of the Secret's frpc.toml and token): a rotated token or
    a move to another relay rewrites the Secret, and so rolls the pod (frpc reads its config
    once)."""
    name, namespace = tunnel.metadata.name, tunnel.metadata.namespace
    if not name or not namespace:
        raise ValueError("the Tunnel needs metadata.name and metadata.namespace")
    client = tunnel.spec.client
    if client.type != "InCluster" or client.target is None:
        raise ValueError(
            f"spec.client.type must be InCluster with a target to run frpc, got {client.type!r}"
        )
    if not credentials_checksum:
        raise ValueError("the credentials Secret's checksum is needed to roll the pod with it")
    target = client.target
    container = {
        "name": FRPC_CONTAINER,
        "image": image,
        "command": ["/usr/bin/frpc"],
        "args": ["-c", f"{FRPC_CONFIG_DIR}/{FRPC_CONFIG_KEY}"],
        # What the Secret's frpc.toml takes the local service from.
        "env": [
            {"name": LOCAL_IP_ENV, "value": service_dns_name(target.service, namespace)},
            {"name": LOCAL_PORT_ENV, "value": str(target.port)},
        ],
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": FRPC_CONFIG_DIR, "readOnly": True}],
        "resources": {k: dict(v) for k, v in CLIENT_RESOURCES.items()},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec = {
        # frpc talks to the relay only, never to the API server.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no env vars for every Service of the namespace
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NONROOT_UID,
            "runAsGroup": NONROOT_UID,
            "fsGroup": NONROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": CONFIG_VOLUME,
                "secret": {
                    "secretName": credentials_secret,
                    # frpc.toml holds the token too: the bare token key is not needed.
                    "items": [{"key": FRPC_CONFIG_KEY, "path": FRPC_CONFIG_KEY}],
                    "defaultMode": 0o440,  # readable by the pod's group (fsGroup) only
                },
            }
        ],
    }
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": client_deployment_name(name),
            "namespace": namespace,
            "labels": client_labels(name),
            "ownerReferences": [tunnel_owner_reference(tunnel)],
        },
        "spec": {
            "replicas": 1,
            # The old frpc goes before the new one logs in: the relay takes one client per
            # tunnel, and after a rotation the old one's token is refused anyway.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 2,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "selector": {"matchLabels": client_selector(name)},
            "template": {
                "metadata": {
                    "labels": client_labels(name),
                    "annotations": {CONFIG_CHECKSUM_ANNOTATION: credentials_checksum},
                },
                "spec": pod_spec,
            },
        },
    }
    deployment["metadata"]["annotations"] = {SPEC_CHECKSUM_ANNOTATION: spec_checksum(deployment)}
    return deployment


def spec_checksum(obj: dict[str, Any]) -> str:
    """sha256 of an object as the operator builds it (its own checksum annotation left out)."""
    meta = {k: v for k, v in obj["metadata"].items() if k != "annotations"}
    canonical = json.dumps({**obj, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
