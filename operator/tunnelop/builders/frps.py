"""The frps config of a relay: TOML text, rendered from its RelayNode."""

from __future__ import annotations

from urllib.parse import quote

from tunnelop.api.v1alpha1 import PortSpan, RelayNode, RelayNodeSpec
from tunnelop.builders import _toml as toml
from tunnelop.contract.naming import (
    AGENT_PLUGIN_NAME,
    AGENT_PLUGIN_OPS,
    AGENT_PLUGIN_PATH,
    CONTROL_PORT,
    DASHBOARD_PORT,
    DASHBOARD_USER,
    LOCALHOST,
    PLUGIN_PORT,
    PLUGIN_USER,
    POD_IP_ENV,
)
from tunnelop.domain import relayview
from tunnelop.domain.relayview import DEFAULT_NODE_PORT_RANGE, RelayView

# frp renders its config as a Go template with the environment in .Envs; the pod gets its
# address from the downward API, so frps binds the pod address and nothing else.
POD_IP_TEMPLATE = "{{ .Envs." + POD_IP_ENV + " }}"

# How fast a suspension (or deletion) takes effect, whatever the client's config (target: 5 s).
# frps asks the agent about every Ping, and a rejected Ping neither refreshes the client's
# last heartbeat nor lets the client go on: frps answers it with the error and frpc closes
# its session. frps's heartbeat worker (server/control.go, heartbeatWorker) checks every
# second and closes a control whose last *accepted* Ping is older than HEARTBEAT_TIMEOUT.
# - A client running the generated frpc.toml pings every CLIENT_HEARTBEAT_INTERVAL s (plus
#   frpc's 10% jitter): it is kicked at its next Ping, at most about 1 s after the agent
#   learns of the suspension.
# - A client that pings rarely or never (`transport.heartbeatInterval = -1`), or a patched
#   one that ignores the error, is dropped by frps 3 to 4 s after its last accepted Ping.
#   Until then its http and udp visitors are served (frps asks the agent about visitors of
#   tcp and https tunnels only), so this timeout is the bound for them.
# The client gives up on a relay that has not answered for CLIENT_HEARTBEAT_TIMEOUT s.
HEARTBEAT_TIMEOUT = 3
CLIENT_HEARTBEAT_INTERVAL = 1
CLIENT_HEARTBEAT_TIMEOUT = 3


def vhost_ports(spec: RelayNodeSpec) -> dict[str, int]:
    """The ports frps serves http and https tunnels on: {"http": 8080, "https": 8443}, or
    80/443 with HostNetwork; only for the protocols the relay offers."""
    return relayview.vhost_ports(spec.exposure.type, spec.protocols)


def _allow_ports(view: RelayView) -> list[str]:
    spans = view.allowed_spans()
    # Named only when the range covers them, so that the text (and with it the config
    # checksum, which rolls the relay pod) stays as it was for every other relay.
    own = " the relay's own," if any(p in view.port_range for p in view.own_ports()) else ""
    lines = [f"# Ports tunnels may bind: spec.ports.range minus{own} reserved and blocked ports."]
    if not spans:
        # frps reads an empty allowPorts as "every port": allow only the control port, which
        # frps itself holds, so that no tunnel can bind anything.
        spans = [PortSpan(CONTROL_PORT, CONTROL_PORT)]
    lines.append("allowPorts = [")
    for span in spans:
        if span.first == span.last:
            lines.append(f"  {{ single = {span.first} }},")
        else:
            lines.append(f"  {{ start = {span.first}, end = {span.last} }},")
    lines.append("]")
    return lines


def build_frps_config(
    relay: RelayNode,
    *,
    token: str,
    dashboard_password: str,
    plugin_password: str,
    node_port_range: PortSpan = DEFAULT_NODE_PORT_RANGE,
) -> str:
    """frps.toml of a relay. Deterministic: the same relay and secrets give the same text, so
    its checksum changes (and the pod rolls) only when the config does."""
    spec = relay.spec
    name = relay.metadata.name or ""
    lines = [
        f"# frps config of RelayNode {name}, written by tunnelop; edits are overwritten.",
        "",
        "# The relay listens on its pod address only (frp fills in the template from the",
        "# environment at start).",
        f"bindAddr = {_template(POD_IP_TEMPLATE)}",
        f"bindPort = {toml.integer(CONTROL_PORT)}",
        f"proxyBindAddr = {_template(POD_IP_TEMPLATE)}",
        "",
        "# One relay-wide token lets frpc in; the agent then checks each tunnel's own token",
        "# (metadatas.token) on Login.",
        'auth.method = "token"',
        f"auth.token = {toml.string(token)}",
        "",
        "# Clients must speak TLS.",
        "transport.tls.force = true",
        f"# Clients ping every {CLIENT_HEARTBEAT_INTERVAL}s; the agent refuses the Ping of a suspended tunnel,",
        "# and frps drops a client whose last accepted Ping is older than this many seconds,",
        "# pinging or not: a suspension holds within seconds whatever the client's config.",
        f"transport.heartbeatTimeout = {toml.integer(HEARTBEAT_TIMEOUT)}",
        "",
        *_allow_ports(RelayView.from_model(relay, node_port_range=node_port_range)),
    ]
    vhost = vhost_ports(spec)
    if vhost:
        lines += ["", "# http and https tunnels, by host name under the relay's domain."]
        if "http" in vhost:
            lines.append(f"vhostHTTPPort = {toml.integer(vhost['http'])}")
        if "https" in vhost:
            lines.append(f"vhostHTTPSPort = {toml.integer(vhost['https'])}")
        lines.append(f"subDomainHost = {toml.string(spec.http_domain or '')}")
    lines += [
        "",
        "# Dashboard API and metrics, on localhost only, for the agent's metering.",
        f"webServer.addr = {toml.string(LOCALHOST)}",
        f"webServer.port = {toml.integer(DASHBOARD_PORT)}",
        f"webServer.user = {toml.string(DASHBOARD_USER)}",
        f"webServer.password = {toml.string(dashboard_password)}",
        "enablePrometheus = true",
        "",
        'log.to = "console"',
        'log.level = "info"',
        "",
        "# The relay agent allows or refuses every login, proxy, heartbeat and visitor",
        "# connection from the allocation table of this relay. frps authenticates with the",
        "# credentials in addr (Go's HTTP client sends them as basic auth).",
        "[[httpPlugins]]",
        f"name = {toml.string(AGENT_PLUGIN_NAME)}",
        f"addr = {toml.string(plugin_addr(plugin_password))}",
        f"path = {toml.string(AGENT_PLUGIN_PATH)}",
        f"ops = {toml.strings(AGENT_PLUGIN_OPS)}",
    ]
    return "\n".join(lines) + "\n"


def plugin_addr(password: str) -> str:
    """The agent's plugin address with frps's credentials in it, e.g.
    `http://frps:<password>@127.0.0.1:7400` (frps appends the path)."""
    if not password:
        raise ValueError("plugin_password must not be empty: the agent refuses frps without it")
    return f"http://{PLUGIN_USER}:{quote(password, safe='')}@{LOCALHOST}:{PLUGIN_PORT}"


def _template(expression: str) -> str:
    """A TOML string holding a Go template action, which `toml.string` refuses on purpose."""
    return f'"{expression}"'
