"""The ready-to-run frpc config handed to a tenant, and the endpoint visitors use."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tunnelop.api.v1alpha1 import HTTP_PROTOCOLS, PORT_PROTOCOLS
from tunnelop.builders import _toml as toml
from tunnelop.builders.frps import CLIENT_HEARTBEAT_INTERVAL, CLIENT_HEARTBEAT_TIMEOUT
from tunnelop.contract.naming import LOCAL_IP_ENV, LOCAL_PORT_ENV

# frp renders its config file as a Go template with the environment in .Envs, so the file the
# operator writes runs unedited: the tenant names the local service when starting frpc. There
# is no default port: a guess (22, 8080...) would publish whatever listens there, unasked.
RUN_EXAMPLE = "TUNNELOP_LOCAL_PORT=8080 frpc -c frpc.toml"
# Go templates without sprig have no function that fails with a message, but executing an
# undefined template does, quoting its name: unset, frpc stops with
#   template "TUNNELOP_LOCAL_PORT is not set: ..." not defined
_LOCAL_PORT_FROM_ENV = (
    "{{ with .Envs.TUNNELOP_LOCAL_PORT }}{{ . }}{{ else }}"
    '{{ template "TUNNELOP_LOCAL_PORT is not set: start frpc with the port of your service,'
    ' e.g. TUNNELOP_LOCAL_PORT=8080 frpc -c frpc.toml" }}{{ end }}'
)
_LOCAL_IP_FROM_ENV = '"{{ or .Envs.TUNNELOP_LOCAL_IP "127.0.0.1" }}"'

_PROTOCOL_NOTES = {
    "tcp": ("Visitors connect to the relay on remotePort; frpc forwards to localIP:localPort.",),
    "udp": ("Visitors send to the relay's remotePort; frpc forwards to localIP:localPort.",),
    "http": ("Visitors reach your HTTP service by host name through the relay.",),
    "https": (
        "The relay routes by TLS server name and passes the TLS through: your service",
        "must serve HTTPS itself, with a certificate for these host names.",
    ),
}


def build_frpc_config(
    *,
    namespace: str,
    tunnel_name: str,
    protocol: str,
    server_addr: str,
    server_port: int,
    relay_token: str,
    tunnel_token: str,
    remote_port: int | None = None,
    subdomain: str | None = None,
    custom_domains: Sequence[str] = (),
    local_ip: str | None = None,
    local_port: int | None = None,
) -> str:
    """frpc.toml for one tunnel, ready to run as it is.

    tcp and udp need `remote_port` (always allocated by the operator: frps would pick a random
    one for 0); http and https need `subdomain` or `custom_domains`. Without `local_port` and
    `local_ip` (an External client: the tenant runs frpc) frpc reads them from
    TUNNELOP_LOCAL_PORT (required) and TUNNELOP_LOCAL_IP (default 127.0.0.1) when it starts;
    given (the operator runs frpc), they are written as they are."""
    if (local_ip is None) != (local_port is None):
        raise ValueError("local_ip and local_port are given together or not at all")
    if local_port is not None and not 0 < local_port < 65536:
        raise ValueError(f"local_port must be from 1 to 65535, got {local_port}")
    if local_ip == "":
        raise ValueError("local_ip must be an IP address or a host name, got ''")
    if protocol in PORT_PROTOCOLS:
        if remote_port is None:
            raise ValueError(f"remote_port is required for protocol {protocol}")
        if subdomain is not None or custom_domains:
            raise ValueError(f"subdomain and custom_domains are for http and https, not {protocol}")
    elif protocol in HTTP_PROTOCOLS:
        if remote_port is not None:
            raise ValueError(f"remote_port is for tcp and udp, not {protocol}")
        if subdomain is None and not custom_domains:
            raise ValueError(f"subdomain or custom_domains is required for protocol {protocol}")
    else:
        raise ValueError(f"protocol must be one of tcp, udp, http, https, got {protocol!r}")

    if local_ip is None or local_port is None:
        how_to_run = [
            "# Run it with the port of your service on this machine, e.g.:",
            f"#   {RUN_EXAMPLE}",
            f"# (and {LOCAL_IP_ENV}=<address> if the service runs on another machine).",
            "# Use the file as it is. Keep it secret: its tokens are the tunnel's.",
        ]
        local = [
            f"# frpc fills these in from the environment: {LOCAL_IP_ENV} (default 127.0.0.1)",
            f"# and {LOCAL_PORT_ENV} (required: unset, frpc stops and names it).",
            f"localIP = {_LOCAL_IP_FROM_ENV}",
            f"localPort = {_LOCAL_PORT_FROM_ENV}",
        ]
    else:
        how_to_run = [
            "# Run it with: frpc -c frpc.toml",
            "# Keep it secret: its tokens are the tunnel's.",
        ]
        local = [f"localIP = {toml.string(local_ip)}", f"localPort = {toml.integer(local_port)}"]
    lines = [
        f"# frpc config of Tunnel {namespace}/{tunnel_name}, written by tunnelop.",
        *how_to_run,
        "",
        f"serverAddr = {toml.string(server_addr)}",
        f"serverPort = {toml.integer(server_port)}",
        "",
        "# The relay's token lets frpc connect; the relay then checks this tunnel's own token.",
        'auth.method = "token"',
        f"auth.token = {toml.string(relay_token)}",
        "# The relay names the proxy <user>.<name>, i.e. after the namespace and the Tunnel.",
        f"user = {toml.string(namespace)}",
        f"metadatas.token = {toml.string(tunnel_token)}",
        f"metadatas.tunnel = {toml.string(f'{namespace}/{tunnel_name}')}",
        "",
        "# Keep retrying while the relay is unreachable or refuses the tunnel (e.g. suspended).",
        "loginFailExit = false",
        "transport.tls.enable = true",
        "# Heartbeats every second: the relay drops a client that has not passed one for 3 s.",
        f"transport.heartbeatInterval = {toml.integer(CLIENT_HEARTBEAT_INTERVAL)}",
        f"transport.heartbeatTimeout = {toml.integer(CLIENT_HEARTBEAT_TIMEOUT)}",
        "",
        *(f"# {line}" for line in _PROTOCOL_NOTES[protocol]),
        "[[proxies]]",
        f"name = {toml.string(tunnel_name)}",
        f"type = {toml.string(protocol)}",
        *local,
    ]
    if remote_port is not None:
        lines.append(f"remotePort = {toml.integer(remote_port)}")
    if subdomain is not None:
        lines.append(f"subdomain = {toml.string(subdomain)}")
    if custom_domains:
        lines.append(f"customDomains = {toml.strings(custom_domains)}")
    return "\n".join(lines) + "\n"


def endpoint(
    protocol: str,
    public_address: str,
    remote_port: int | None,
    subdomain: str | None,
    http_domain: str | None,
) -> str:
    """Where visitors connect: "host:port" for tcp and udp (an IPv6 address in brackets),
    "http://sub.domain" or "https://sub.domain" for http and https."""
    if protocol in PORT_PROTOCOLS:
        if remote_port is None:
            raise ValueError(f"remote_port is required for protocol {protocol}")
        return f"{_host(public_address)}:{remote_port}"
    if protocol in HTTP_PROTOCOLS:
        if not subdomain or not http_domain:
            raise ValueError(f"subdomain and http_domain are required for protocol {protocol}")
        return f"{protocol}://{subdomain}.{http_domain}"
    raise ValueError(f"protocol must be one of tcp, udp, http, https, got {protocol!r}")


def _host(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a DNS name
    return f"[{ip}]" if ip.version == 6 else str(ip)
