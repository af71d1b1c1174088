"""What `tunnelop client` is told: which tunnel, which local service, which frpc."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tunnelop.contract.naming import credentials_secret_name, parse_namespaced_name

# The Secret's name, <tunnel>-frpc, must stay within the 253 characters of an object name.
MAX_TUNNEL_NAME = 253 - len(credentials_secret_name(""))
_HOST_NAME = re.compile(
    r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$"
)


def parse_tunnel_ref(value: str) -> tuple[str, str]:
    """ "NAMESPACE/TUNNEL" -> (namespace, tunnel), or ValueError saying what is allowed."""
    return parse_namespaced_name(value, "tunnel", example="default/web", max_name=MAX_TUNNEL_NAME)


def check_local_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a port from 1 to 65535, got {value}")
    return value


def check_local_host(value: str) -> str:
    """An IP address or a host name: frpc.toml quotes it, so nothing else may pass."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if len(value) > 253 or not _HOST_NAME.match(value):
            raise ValueError(f"must be an IP address or a host name, got {value!r}") from None
    return value


@dataclass(frozen=True)
class ClientOptions:
    namespace: str
    tunnel: str
    local_port: int
    local_ip: str
    frpc: str  # path of the frpc binary
    kubeconfig: str | None = None
    # Seconds frpc gets to close its connections after SIGTERM, before SIGKILL.
    stop_grace: float = 10.0

    @property
    def secret_name(self) -> str:
        return credentials_secret_name(self.tunnel)
