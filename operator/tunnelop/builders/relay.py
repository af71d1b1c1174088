"""The Kubernetes objects of a relay and of a tunnel's credentials, as plain dicts in the
form `kubectl apply` takes (camelCase). Secrets carry base64 `data`, the form the API server
returns, so a reconciler can compare live and desired objects and skip needless writes.

Everything of a relay lives in the relay namespace, carries the relay's labels and is owned
by its RelayNode, so deleting the RelayNode deletes it all.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tunnelop.api.v1alpha1 import RelayNode
from tunnelop.builders.frps import vhost_ports
from tunnelop.contract.naming import (
    AGENT_HEALTH_PORT,
    AGENT_STATE_DIR,
    CONFIG_CHECKSUM_ANNOTATION,
    CONTROL_PORT,
    DASHBOARD_PASSWORD_ENV,
    DASHBOARD_PASSWORD_KEY,
    DASHBOARD_PORT,
    DEFAULT_AGENT_IMAGE,
    DEFAULT_FRPS_IMAGE,
    FRPC_CONFIG_KEY,
    FRPS_CONFIG_DIR,
    FRPS_CONFIG_KEY,
    LOCALHOST,
    MANAGED_BY,
    OWNER_API_VERSION,
    PLUGIN_PASSWORD_ENV,
    PLUGIN_PASSWORD_KEY,
    PLUGIN_PORT,
    POD_IP_ENV,
    PUBLIC_HTTP_PORT,
    PUBLIC_HTTPS_PORT,
    SERVICE_ACCOUNT_DIR,
    STATE_DIR_ENV,
    TABLE_KEY,
    TOKEN_KEY,
    TUNNEL_LABEL,
    config_secret_name,
    credentials_secret_name,
    relay_labels,
    relay_object_name,
    relay_selector,
    table_secret_name,
)
from tunnelop.contract.table import TABLE_SHARDS, TableEntry, table_json
from tunnelop.domain.relayview import POOL_LABEL

# The API server refuses Secrets whose data exceeds 1 MiB.
MAX_SECRET_DATA_BYTES = 1024 * 1024

# An unprivileged user for the containers: neither image needs root, and runAsNonRoot can
# only be checked by the kubelet when the user is numeric.
NONROOT_UID = 65532

FRPS_CONTAINER = "frps"
AGENT_CONTAINER = "agent"
CONFIG_VOLUME = "config"
STATE_VOLUME = "state"

# The agent is a small Python process; frps gets spec.template.resources or these requests.
AGENT_RESOURCES = {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "192Mi"}}
# Every connected client's heartbeat (one a second) is a plugin call costing the agent about
# 0.22 ms of CPU (bench/bench_agent.py): a quarter of a millicore per tunnel the relay may
# carry (spec.capacity.tunnels) on top of its base request, up to two cores.
AGENT_MILLICORES_PER_TUNNEL = 0.25
AGENT_MAX_MILLICORES = 2000
DEFAULT_FRPS_RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"}}


# Metadata -------------------------------------------------------------------------------------


def relay_owner_reference(relay: RelayNode) -> dict[str, Any]:
    """The RelayNode as controller of an object: deleting it deletes the object."""
    name, uid = relay.metadata.name, relay.metadata.uid
    if not name or not uid:
        raise ValueError("the RelayNode needs metadata.name and metadata.uid to own objects")
    return {
        "apiVersion": OWNER_API_VERSION,
        "kind": "RelayNode",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _relay_name(relay: RelayNode) -> str:
    if not relay.metadata.name:
        raise ValueError("the RelayNode needs metadata.name")
    return relay.metadata.name


def _relay_metadata(relay: RelayNode, namespace: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": relay_labels(_relay_name(relay)),
        "ownerReferences": [relay_owner_reference(relay)],
    }


def _secret_data(values: Mapping[str, str]) -> dict[str, str]:
    """Secret `data`: base64 of each value."""
    data = {key: base64.b64encode(value.encode()).decode("ascii") for key, value in values.items()}
    size = sum(len(value.encode()) for value in values.values())
    if size > MAX_SECRET_DATA_BYTES:
        raise ValueError(f"Secret data of {size} bytes exceeds the API server's 1 MiB limit")
    return data


def config_checksum(*texts: str) -> str:
    """sha256 hex digest of the texts; each is length-prefixed, so ("ab", "c") and ("a", "bc")
    differ."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode()
        digest.update(f"{len(raw)}:".encode())
        digest.update(raw)
    return digest.hexdigest()


# Config Secret and RBAC --------------------------------------------------------------------


def build_config_secret(
    relay: RelayNode,
    namespace: str,
    *,
    frps_toml: str,
    token: str,
    dashboard_password: str,
    plugin_password: str,
) -> dict[str, Any]:
    """Secret relay-<r>-config: frps.toml (mounted into frps), the relay's shared token (for
    frpc configs), the dashboard password and the plugin password (both for the agent; frps
    finds them in frps.toml)."""
    relay_name = _relay_name(relay)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _relay_metadata(relay, namespace, config_secret_name(relay_name)),
        "type": "Opaque",
        "data": _secret_data(
            {
                FRPS_CONFIG_KEY: frps_toml,
                TOKEN_KEY: token,
                DASHBOARD_PASSWORD_KEY: dashboard_password,
                PLUGIN_PASSWORD_KEY: plugin_password,
            }
        ),
    }


def build_service_account(relay: RelayNode, namespace: str) -> dict[str, Any]:
    relay_name = _relay_name(relay)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _relay_metadata(relay, namespace, relay_object_name(relay_name)),
    }


def build_role(relay: RelayNode, namespace: str) -> dict[str, Any]:
    """Read access to the relay's own table Secrets (its shards) and nothing else: the pod is
    internet-facing. (list and watch with resourceNames work with a
    metadata.name field selector.)"""
    relay_name = _relay_name(relay)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _relay_metadata(relay, namespace, relay_object_name(relay_name)),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [
                    table_secret_name(relay_name, shard) for shard in range(TABLE_SHARDS)
                ],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def build_role_binding(relay: RelayNode, namespace: str) -> dict[str, Any]:
    relay_name = _relay_name(relay)
    name = relay_object_name(relay_name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _relay_metadata(relay, namespace, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


# Deployment ------------------------------------------------------------------------------------


def _pod_labels(relay: RelayNode) -> dict[str, str]:
    """The relay's labels, and its pool's: a RelayPool's status.selector then selects its
    relay pods too, so a HorizontalPodAutoscaler on their CPU can size the pool."""
    labels = relay_labels(relay.metadata.name or "")
    pool = relay.metadata.labels.get(POOL_LABEL)
    if pool:
        labels[POOL_LABEL] = pool
    return labels


def _pod_ip_env() -> dict[str, Any]:
    return {
        "name": POD_IP_ENV,
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
    }


def _hardened(*, needs_low_ports: bool = False) -> dict[str, Any]:
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if needs_low_ports:
        # Binding 80/443 on the Node's network takes NET_BIND_SERVICE, which Kubernetes only
        # makes effective for root (no ambient capabilities): root with that one capability.
        context["capabilities"]["add"] = ["NET_BIND_SERVICE"]
        context["runAsNonRoot"] = False
        context["runAsUser"] = 0
    return context


def _frps_container(relay: RelayNode, image: str) -> dict[str, Any]:
    spec = relay.spec
    vhost = vhost_ports(spec)
    ports = [{"name": "control", "containerPort": CONTROL_PORT, "protocol": "TCP"}]
    ports += [
        {"name": protocol, "containerPort": port, "protocol": "TCP"}
        for protocol, port in vhost.items()
    ]
    return {
        "name": FRPS_CONTAINER,
        "image": image,
        "command": ["/usr/bin/frps"],
        "args": ["-c", f"{FRPS_CONFIG_DIR}/{FRPS_CONFIG_KEY}"],
        "env": [_pod_ip_env()],
        "ports": ports,
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": FRPS_CONFIG_DIR, "readOnly": True}],
        "readinessProbe": {"tcpSocket": {"port": CONTROL_PORT}, "periodSeconds": 5},
        "livenessProbe": {
            "tcpSocket": {"port": CONTROL_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": copy.deepcopy(spec.template.resources or DEFAULT_FRPS_RESOURCES),
        "securityContext": _hardened(needs_low_ports=any(p < 1024 for p in vhost.values())),
    }


def agent_resources(relay: RelayNode) -> dict[str, Any]:
    """The agent's requests and limits, its CPU request sized for the relay's capacity (no CPU
    limit: a throttled agent would delay every frps call)."""
    resources = copy.deepcopy(AGENT_RESOURCES)
    tunnels = relay.spec.capacity.tunnels or 0
    base = int(resources["requests"]["cpu"].removesuffix("m"))
    millicores = min(AGENT_MAX_MILLICORES, base + math.ceil(tunnels * AGENT_MILLICORES_PER_TUNNEL))
    resources["requests"]["cpu"] = f"{millicores}m"
    return resources


def _agent_container(relay: RelayNode, namespace: str, image: str) -> dict[str, Any]:
    relay_name = _relay_name(relay)
    return {
        "name": AGENT_CONTAINER,
        "image": image,
        "command": ["tunnelop"],
        "args": [
            "agent",
            "--relay",
            relay_name,
            "--namespace",
            namespace,
            "--table-secret",
            table_secret_name(relay_name),
            "--listen",
            f"{LOCALHOST}:{PLUGIN_PORT}",
            "--health-listen",
            f"$({POD_IP_ENV}):{AGENT_HEALTH_PORT}",
            "--frps-dashboard",
            f"http://{LOCALHOST}:{DASHBOARD_PORT}",
            "--service-account-dir",
            SERVICE_ACCOUNT_DIR,
        ],
        "env": [
            _pod_ip_env(),
            {
                "name": DASHBOARD_PASSWORD_ENV,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": config_secret_name(relay_name),
                        "key": DASHBOARD_PASSWORD_KEY,
                    }
                },
            },
            # What frps authenticates its plugin calls with (never in args: any process on
            # the node may read a process's command line).
            {
                "name": PLUGIN_PASSWORD_ENV,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": config_secret_name(relay_name),
                        "key": PLUGIN_PASSWORD_KEY,
                    }
                },
            },
            # Where the agent keeps its last known table, to serve through API outages.
            {"name": STATE_DIR_ENV, "value": AGENT_STATE_DIR},
        ],
        "ports": [{"name": "health", "containerPort": AGENT_HEALTH_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": STATE_VOLUME, "mountPath": AGENT_STATE_DIR}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": AGENT_HEALTH_PORT},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": AGENT_HEALTH_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": agent_resources(relay),
        "securityContext": _hardened(),
    }


@dataclass(frozen=True)
class DefaultRelayImages:
    """The images of a relay pod whose RelayNode names none: the pinned upstream frps and
    the tunnelop image of this release (the operator's --frps-image and --agent-image, so
    that a registry mirror serves the relays too)."""

    frps: str = DEFAULT_FRPS_IMAGE
    agent: str = DEFAULT_AGENT_IMAGE


PINNED_IMAGES = DefaultRelayImages()


def build_deployment(
    relay: RelayNode,
    namespace: str,
    *,
    config_checksum: str,
    images: DefaultRelayImages = PINNED_IMAGES,
) -> dict[str, Any]:
    """The relay pod: frps and the agent side by side. Images: spec.template.images, else
    `images`."""
    spec = relay.spec
    relay_name = _relay_name(relay)
    name = relay_object_name(relay_name)
    host_network = spec.exposure.type == "HostNetwork"
    frps = spec.template.images.frps or images.frps
    agent = spec.template.images.agent or images.agent

    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "automountServiceAccountToken": True,  # the agent reads its table from the API
        "enableServiceLinks": False,  # no env vars for every Service of the namespace
    }
    if host_network:
        pod_spec["hostNetwork"] = True
        # Keep cluster DNS (the agent resolves the API server) on the Node's network.
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if spec.template.node_selector:
        pod_spec["nodeSelector"] = dict(spec.template.node_selector)
    if spec.template.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(spec.template.tolerations)
    pod_spec["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_spec["containers"] = [
        _frps_container(relay, frps),
        _agent_container(relay, namespace, agent),
    ]
    pod_spec["volumes"] = [
        {
            "name": CONFIG_VOLUME,
            "secret": {
                "secretName": config_secret_name(relay_name),
                # Only the config: the agent's passwords come by env, the token stays out.
                "items": [{"key": FRPS_CONFIG_KEY, "path": FRPS_CONFIG_KEY}],
                "defaultMode": 0o440,  # readable by the pod's group (fsGroup) only
            },
        },
        {"name": STATE_VOLUME, "emptyDir": {}},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _relay_metadata(relay, namespace, name),
        "spec": {
            "replicas": 1,
            # One frps per public address: the old pod must let go of the ports (and the
            # Node's, with HostNetwork) before the new one binds them.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": relay_selector(relay_name)},
            "template": {
                "metadata": {
                    "labels": _pod_labels(relay),
                    # frps has no hot reload: a new config must roll the pod.
                    "annotations": {CONFIG_CHECKSUM_ANNOTATION: config_checksum},
                },
                "spec": pod_spec,
            },
        },
    }


# Service ---------------------------------------------------------------------------------------


def _tunnel_service_ports(
    allocated_ports: Iterable[tuple[int, str]], node_port: bool
) -> list[dict[str, Any]]:
    ports = set()
    for port, protocol in allocated_ports:
        protocol = protocol.upper()
        if protocol not in ("TCP", "UDP"):
            raise ValueError(f"allocated port {port}: protocol must be TCP or UDP, got {protocol}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"allocated port must be within 1-65535, got {port!r}")
        ports.add((port, protocol))
    entries = []
    for port, protocol in sorted(ports):
        entry: dict[str, Any] = {
            # Unique (a port may be allocated for both TCP and UDP) and a valid port name.
            "name": f"{protocol[0].lower()}-{port}",
            "port": port,
            "targetPort": port,
            "protocol": protocol,
        }
        if node_port:
            # Visitors use the allocated port itself, so it must be the node port too (the
            # API server's --service-node-port-range must cover spec.ports.range).
            entry["nodePort"] = port
        entries.append(entry)
    return entries


def build_service(
    relay: RelayNode, namespace: str, *, allocated_ports: list[tuple[int, str]]
) -> dict[str, Any] | None:
    """The relay's public face: control port, http/https if offered, one entry per allocated
    tunnel port ((port, "TCP"|"UDP")). None with HostNetwork, where the pod is its own face."""
    spec = relay.spec
    if spec.exposure.type == "HostNetwork":
        return None
    relay_name = _relay_name(relay)
    vhost = vhost_ports(spec)
    public = {"http": PUBLIC_HTTP_PORT, "https": PUBLIC_HTTPS_PORT}
    ports: list[dict[str, Any]] = [
        {"name": "control", "port": CONTROL_PORT, "targetPort": CONTROL_PORT, "protocol": "TCP"}
    ]
    ports += [
        {"name": protocol, "port": public[protocol], "targetPort": port, "protocol": "TCP"}
        for protocol, port in vhost.items()
    ]
    ports += _tunnel_service_ports(allocated_ports, node_port=spec.exposure.type == "NodePort")
    metadata = _relay_metadata(relay, namespace, relay_object_name(relay_name))
    if spec.exposure.annotations:
        metadata["annotations"] = dict(spec.exposure.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": spec.exposure.type,
            # Local keeps visitors' source addresses, which allowSourceRanges checks.
            "externalTrafficPolicy": "Local",
            "selector": relay_selector(relay_name),
            "ports": ports,
        },
    }


# Allocation table --------------------------------------------------------------------------------


def build_table_secret(
    relay: RelayNode, namespace: str, entries: list[TableEntry], shard: int
) -> dict[str, Any]:
    """Secret relay-<r>-table[-<shard>]: one shard of the allocation table the agent
    enforces, key table.json."""
    relay_name = _relay_name(relay)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _relay_metadata(relay, namespace, table_secret_name(relay_name, shard)),
        "type": "Opaque",
        "data": _secret_data({TABLE_KEY: table_json(relay_name, entries, shard)}),
    }


# Tunnel credentials -------------------------------------------------------------------------------


def build_credentials_secret(
    tunnel_namespace: str, tunnel_name: str, tunnel_uid: str, *, frpc_toml: str, token: str
) -> dict[str, Any]:
    """Secret <tunnel>-frpc in the tenant's namespace, owned by the Tunnel: its token and a
    ready-to-run frpc.toml."""
    if not tunnel_uid:
        raise ValueError("the Tunnel's uid is needed to own its credentials Secret")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": credentials_secret_name(tunnel_name),
            "namespace": tunnel_namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, TUNNEL_LABEL: tunnel_name},
            "ownerReferences": [
                {
                    "apiVersion": OWNER_API_VERSION,
                    "kind": "Tunnel",
                    "name": tunnel_name,
                    "uid": tunnel_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "type": "Opaque",
        "data": _secret_data({FRPC_CONFIG_KEY: frpc_toml, TOKEN_KEY: token}),
    }
