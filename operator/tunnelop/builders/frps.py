"""The frps config of a relay: TOML text, rendered from its RelayNode."""

from __future__ import annotations

from tunnelop.api.v1alpha1 import PortSpan, RelayNode, RelayNodeSpec, merge_spans
from tunnelop.builders import _toml as toml
from tunnelop.contract.naming import (
    AGENT_HEALTH_PORT,
    AGENT_PLUGIN_NAME,
    AGENT_PLUGIN_OPS,
    AGENT_PLUGIN_PATH,
    CONTROL_PORT,
    DASHBOARD_PORT,
    DASHBOARD_USER,
    HOST_NETWORK_HTTP_PORT,
    HOST_NETWORK_HTTPS_PORT,
    LOCALHOST,
    PLUGIN_PORT,
    POD_IP_ENV,
    VHOST_HTTP_PORT,
    VHOST_HTTPS_PORT,
)

# frp renders its config as a Go template with the environment in .Envs; the pod gets its
# address from the downward API, so frps binds the pod address and nothing else.
POD_IP_TEMPLATE = "{{ .Envs." + POD_IP_ENV + " }}"

# Clients ping every CLIENT_HEARTBEAT_INTERVAL seconds. A rejected Ping (tunnel suspended or
# deleted) is answered with an error, and frpc closes its session at once: this interval bounds
# how fast a suspension kicks a client (target: 5 s). A client that stops pinging (say, its
# config was edited) is dropped by frps after HEARTBEAT_TIMEOUT.
HEARTBEAT_TIMEOUT = 30
CLIENT_HEARTBEAT_INTERVAL = 3


def vhost_ports(spec: RelayNodeSpec) -> dict[str, int]:
    """The ports frps serves http and https tunnels on, for the protocols the relay offers:
    {"http": 8080, "https": 8443}, or 80/443 with HostNetwork (no Service maps ports)."""
    host_network = spec.exposure.type == "HostNetwork"
    ports = {
        "http": HOST_NETWORK_HTTP_PORT if host_network else VHOST_HTTP_PORT,
        "https": HOST_NETWORK_HTTPS_PORT if host_network else VHOST_HTTPS_PORT,
    }
    return {protocol: port for protocol, port in ports.items() if protocol in spec.protocols}


def relay_listen_ports(spec: RelayNodeSpec) -> list[int]:
    """Ports the relay pod itself listens on at its address (control, agent health, vhost);
    a tunnel could never bind them, so they are never offered to tunnels."""
    return sorted({CONTROL_PORT, AGENT_HEALTH_PORT, *vhost_ports(spec).values()})


def subtract_spans(spans: list[PortSpan], holes: list[PortSpan]) -> list[PortSpan]:
    """`spans` without any port of `holes`, merged and sorted."""
    result: list[PortSpan] = []
    for span in merge_spans(spans):
        pieces = [span]
        for hole in merge_spans(holes):
            next_pieces = []
            for piece in pieces:
                if not piece.overlaps(hole):
                    next_pieces.append(piece)
                    continue
                if piece.first < hole.first:
                    next_pieces.append(PortSpan(piece.first, hole.first - 1))
                if hole.last < piece.last:
                    next_pieces.append(PortSpan(hole.last + 1, piece.last))
            pieces = next_pieces
        result.extend(pieces)
    return merge_spans(result)


def allowed_port_spans(spec: RelayNodeSpec) -> list[PortSpan]:
    """The tunnel ports of the relay: spec.ports.range minus reserved and blocked (and minus
    the relay's own listening ports, should the range cover them)."""
    holes = [
        *spec.ports.reserved_spans(),
        *spec.ports.blocked_spans(),
        *(PortSpan(p, p) for p in relay_listen_ports(spec)),
    ]
    return subtract_spans([spec.ports.span()], holes)


def _allow_ports(spans: list[PortSpan]) -> list[str]:
    if not spans:
        # frps reads an empty allowPorts as "every port": allow only the control port, which
        # frps itself holds, so that no tunnel can bind anything.
        spans = [PortSpan(CONTROL_PORT, CONTROL_PORT)]
    lines = ["allowPorts = ["]
    for span in spans:
        if span.first == span.last:
            lines.append(f"  {{ single = {span.first} }},")
        else:
            lines.append(f"  {{ start = {span.first}, end = {span.last} }},")
    lines.append("]")
    return lines


def build_frps_config(relay: RelayNode, *, token: str, dashboard_password: str) -> str:
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
        f"# Clients ping every {CLIENT_HEARTBEAT_INTERVAL}s (the agent kicks a suspended one on its",
        "# next ping); one that stops pinging is dropped after this many seconds.",
        f"transport.heartbeatTimeout = {toml.integer(HEARTBEAT_TIMEOUT)}",
        "",
        "# Ports tunnels may bind: spec.ports.range minus reserved and blocked ports.",
        *_allow_ports(allowed_port_spans(spec)),
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
        "# connection from the allocation table of this relay.",
        "[[httpPlugins]]",
        f"name = {toml.string(AGENT_PLUGIN_NAME)}",
        f"addr = {toml.string(f'{LOCALHOST}:{PLUGIN_PORT}')}",
        f"path = {toml.string(AGENT_PLUGIN_PATH)}",
        f"ops = {toml.strings(AGENT_PLUGIN_OPS)}",
    ]
    return "\n".join(lines) + "\n"


def _template(expression: str) -> str:
    """A TOML string holding a Go template action, which `toml.string` refuses on purpose."""
    return f'"{expression}"'
