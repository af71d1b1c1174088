"""Pure builders: RelayNodes and tunnel allocations in, frp configs and Kubernetes objects
(plain dicts, as `kubectl apply` takes them) out. No I/O and no API calls, so the
reconcilers stay thin and every output is checked against golden files."""

from tunnelop.builders.client import build_client_deployment
from tunnelop.builders.frpc import LOCAL_IP_ENV, LOCAL_PORT_ENV, build_frpc_config, endpoint
from tunnelop.builders.frps import build_frps_config, vhost_ports
from tunnelop.builders.relay import (
    build_config_secret,
    build_credentials_secret,
    build_deployment,
    build_role,
    build_role_binding,
    build_service,
    build_service_account,
    build_table_secret,
    config_checksum,
    relay_owner_reference,
)

__all__ = [
    "LOCAL_IP_ENV",
    "LOCAL_PORT_ENV",
    "build_client_deployment",
    "build_config_secret",
    "build_credentials_secret",
    "build_deployment",
    "build_frpc_config",
    "build_frps_config",
    "build_role",
    "build_role_binding",
    "build_service",
    "build_service_account",
    "build_table_secret",
    "config_checksum",
    "endpoint",
    "relay_owner_reference",
    "vhost_ports",
]
