"""Names, labels, ports and images of the objects the operator creates for relays and tunnels.

The reconcilers, the relay agent and the test-side pod runner all rely on these, so they
live in one place, beside the table format.
"""

from __future__ import annotations

import re

import tunnelop
from tunnelop.contract.table import TABLE_SHARDS

# On every object of a relay and on its pod template; the value is the RelayNode's name.
RELAY_LABEL = "tunnelop.dev/relay"
# On a tunnel's credentials Secret; the value is the Tunnel's name.
TUNNEL_LABEL = "tunnelop.dev/tunnel"
# Pod annotation: a digest of the frps config. frps has no hot reload, so a new config must
# roll the pod, and a changed pod template is what makes the Deployment roll it.
CONFIG_CHECKSUM_ANNOTATION = "tunnelop.dev/config-checksum"

# The finalizer the operator keeps on Tunnels and RelayNodes until it has released what they
# hold (ports, relay objects).
FINALIZER = "tunnelop.dev/finalizer"
# The MutatingAdmissionPolicy (and its binding) that sets FINALIZER on a Tunnel at creation,
# named as the webhook it replaces (add-finalizer.<webhook configuration>); the chart's
# template and the pre-delete hook use the same name.
FINALIZER_POLICY = "add-finalizer.tunnelop.dev"

MANAGED_BY = "tunnelop"
RELAY_APP = "tunnelop-relay"
# app.kubernetes.io/name of an InCluster tunnel's frpc Deployment and pod.
CLIENT_APP = "tunnelop-frpc"

# The API group and version of tunnelop's kinds (the api package defines the same; a unit test
# keeps the two equal, so the agent needs no pydantic models to know it).
OWNER_API_VERSION = "tunnelop.dev/v1alpha1"

# Ports of the relay pod.
CONTROL_PORT = 7000  # frps: where frpc logs in (public)
PLUGIN_PORT = 7400  # agent: frps server-plugin calls (localhost only)
AGENT_HEALTH_PORT = 7401  # agent: /healthz and /readyz for the kubelet (pod address)
DASHBOARD_PORT = 7500  # frps: dashboard API the agent meters traffic with (localhost only)
LOCALHOST = "127.0.0.1"

# frps listens for http/https tunnels on unprivileged ports behind a Service (which maps the
# public 80/443 to them), and on 80/443 directly with HostNetwork, where nothing maps ports.
VHOST_HTTP_PORT = 8080
VHOST_HTTPS_PORT = 8443
HOST_NETWORK_HTTP_PORT = 80
HOST_NETWORK_HTTPS_PORT = 443
PUBLIC_HTTP_PORT = 80
PUBLIC_HTTPS_PORT = 443

DEFAULT_FRPS_IMAGE = "docker.io/fatedier/frps:v0.71.0"
# The frpc the operator runs for InCluster tunnels: the same frp release as frps.
DEFAULT_FRPC_IMAGE = "docker.io/fatedier/frpc:v0.71.0"
DEFAULT_AGENT_IMAGE = f"ghcr.io/tunnelop/tunnelop:{tunnelop.__version__}"

# Paths inside the relay pod.
FRPS_CONFIG_DIR = "/etc/frp"
FRPS_CONFIG_KEY = "frps.toml"
AGENT_STATE_DIR = "/var/lib/tunnelop"  # the agent keeps its last known table here
# Where the kubelet mounts the pod's ServiceAccount token; named in the agent's args so that
# the path is visible in the pod spec (and follows a remapped mount).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# Keys of the relay's config Secret and table Secret, and of a tunnel's credentials Secret.
TOKEN_KEY = "token"
DASHBOARD_PASSWORD_KEY = "dashboard-password"
PLUGIN_PASSWORD_KEY = "plugin-password"
TABLE_KEY = "table.json"
FRPC_CONFIG_KEY = "frpc.toml"

DASHBOARD_USER = "admin"
AGENT_PLUGIN_NAME = "tunnelop-agent"
AGENT_PLUGIN_PATH = "/handler"
# frps authenticates to the agent's plugin endpoint with HTTP basic auth (the credentials are
# in the plugin's addr URL): with HostNetwork that endpoint is on the node's localhost, where
# any process could otherwise speak for frps.
PLUGIN_USER = "frps"
# The frps server-plugin operations the agent decides on (NewWorkConn carries nothing it needs).
AGENT_PLUGIN_OPS = ("Login", "NewProxy", "CloseProxy", "Ping", "NewUserConn")

# Environment variables of the relay containers.
POD_IP_ENV = "TUNNELOP_POD_IP"
DASHBOARD_PASSWORD_ENV = "TUNNELOP_DASHBOARD_PASSWORD"
PLUGIN_PASSWORD_ENV = "TUNNELOP_PLUGIN_PASSWORD"
STATE_DIR_ENV = "TUNNELOP_STATE_DIR"

# Environment variables frpc reads the tenant's local service from: the frpc.toml the
# operator writes refers to them, and `tunnelop client` sets them.
LOCAL_PORT_ENV = "TUNNELOP_LOCAL_PORT"
LOCAL_IP_ENV = "TUNNELOP_LOCAL_IP"


def common_labels(relay: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels of a relay's objects."""
    return {
        "app.kubernetes.io/name": RELAY_APP,
        "app.kubernetes.io/instance": relay,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "tunnelop",
    }


def relay_labels(relay: str) -> dict[str, str]:
    """Labels of every object of a relay and of its pod: the common ones and RELAY_LABEL."""
    return {**common_labels(relay), RELAY_LABEL: relay}


def relay_selector(relay: str) -> dict[str, str]:
    """The relay pod's selector (Deployment and Service). A Deployment's selector is immutable,
    so it holds only labels that never change for a relay."""
    return {"app.kubernetes.io/name": RELAY_APP, RELAY_LABEL: relay}


def relay_object_name(relay: str) -> str:
    """Deployment, Service, ServiceAccount, Role and RoleBinding of a relay."""
    return f"relay-{relay}"


def config_secret_name(relay: str) -> str:
    """The relay's frps config, shared token, dashboard password and plugin password."""
    return f"relay-{relay}-config"


def table_secret_name(relay: str, shard: int = 0) -> str:
    """A shard of the relay's allocation table; the shards are the only objects its agent may
    read. Shard 0 keeps the name of the single table of earlier versions."""
    return shard_secret_name(f"relay-{relay}-table", shard)


def shard_secret_name(first: str, shard: int) -> str:
    """The Secret of a table's shard, from the name of its first: `<first>-<shard>`."""
    return first if shard == 0 else f"{first}-{shard}"


def table_shard_of_secret(relay: str, secret: str) -> int | None:
    """Which shard of the relay's table a Secret of that name holds (None: none)."""
    base = table_secret_name(relay)
    if secret == base:
        return 0
    prefix, _, number = secret.rpartition("-")
    if prefix != base or not number.isdigit() or number != str(int(number)):
        return None
    return int(number) if 0 < int(number) < TABLE_SHARDS else None


def credentials_secret_name(tunnel: str) -> str:
    """A tunnel's token and ready-to-run frpc config, in the tenant's namespace."""
    return f"{tunnel}-frpc"


def client_deployment_name(tunnel: str) -> str:
    """The frpc the operator runs for an InCluster tunnel, in the tenant's namespace."""
    return f"{tunnel}-frpc"


def client_labels(tunnel: str) -> dict[str, str]:
    """Labels of an InCluster tunnel's frpc Deployment and pod."""
    return {
        "app.kubernetes.io/name": CLIENT_APP,
        "app.kubernetes.io/instance": tunnel,
        "app.kubernetes.io/component": "client",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "tunnelop",
        TUNNEL_LABEL: tunnel,
    }


def client_selector(tunnel: str) -> dict[str, str]:
    """The frpc pod's selector (immutable in a Deployment: only labels that never change)."""
    return {"app.kubernetes.io/name": CLIENT_APP, TUNNEL_LABEL: tunnel}


# What selects every InCluster client's Deployment and pod (the operator's watch, the test
# ground's pod runner).
CLIENT_SELECTOR = f"app.kubernetes.io/name={CLIENT_APP},{TUNNEL_LABEL}"


def service_dns_name(service: str, namespace: str) -> str:
    """A Service's name in cluster DNS, without the cluster domain (which differs between
    clusters): pods resolve it through their DNS search path."""
    return f"{service}.{namespace}.svc"


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_NAME = re.compile(rf"{_DNS_LABEL}")
_SUBDOMAIN_NAME = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_LABEL_RULE = "a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit, at most {max})"
_SUBDOMAIN_RULE = (
    "a Kubernetes object name (lower-case letters, digits, '-' and '.', starting and ending "
    "with a letter or digit, at most {max})"
)


def parse_namespaced_name(
    value: str, what: str, *, example: str, dns_label: bool = False, max_name: int = 253
) -> tuple[str, str]:
    """ "NAMESPACE/NAME" of `what` (e.g. "Service", "tunnel") -> (namespace, name), or a
    ValueError that names the part at fault and what it may be. A Service's name is a DNS
    label (`dns_label`), most objects' a DNS subdomain of at most `max_name`."""
    namespace, slash, name = value.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise ValueError(f"must be NAMESPACE/{what.upper()} (e.g. {example}), got {value!r}")
    if len(namespace) > 63 or not _LABEL_NAME.fullmatch(namespace):
        rule = _LABEL_RULE.format(max=63)
        raise ValueError(f"the namespace must be {rule}, got {namespace!r}")
    pattern, rule, limit = (
        (_LABEL_NAME, _LABEL_RULE, min(max_name, 63))
        if dns_label
        else (_SUBDOMAIN_NAME, _SUBDOMAIN_RULE, max_name)
    )
    if len(name) > limit or not pattern.fullmatch(name):
        raise ValueError(f"the {what} must be {rule.format(max=limit)}, got {name!r}")
    return namespace, name
