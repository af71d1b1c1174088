"""What `tunnelop client` is told: which tunnel, which local service, which frpc."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tunnelop.contract.naming import credentials_secret_name

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAMESPACE = re.compile(rf"^{_DNS_LABEL}$")
_OBJECT_NAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
MAX_NAMESPACE = 63
# The Secret's name, <tunnel>-frpc, must stay within the 253 characters of an object name.
MAX_TUNNEL_NAME = 253 - len(credentials_secret_name(""))
_HOST_NAME = re.compile(
    r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$"
)


def parse_tunnel_ref(value: str) -> tuple[str, str]:
    """ "NAMESPACE/TUNNEL" -> (namespace, tunnel), or ValueError saying what is allowed."""
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"must be NAMESPACE/TUNNEL, e.g. default/web, got {value!r}")
    if len(namespace) > MAX_NAMESPACE or not _NAMESPACE.match(namespace):
        raise ValueError(
            "the namespace must be a DNS label (lower-case letters, digits and '-', starting "
            f"and ending with a letter or digit, at most {MAX_NAMESPACE}), got {namespace!r}"
        )
    if len(name) > MAX_TUNNEL_NAME or not _OBJECT_NAME.match(name):
        raise ValueError(
            "the tunnel must be a Kubernetes object name (lower-case letters, digits, '-' and "
            f"'.', starting and ending with a letter or digit, at most {MAX_TUNNEL_NAME}), "
            f"got {name!r}"
        )
    return namespace, name


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
