"""Objects shaped as the operator writes them, built by its own builders, for the benchmarks
that need them without an operator (the minimal write set, the memory accounting)."""

from __future__ import annotations

import secrets
from typing import Any

from tunnelop.builders.frpc import build_frpc_config
from tunnelop.builders.relay import build_credentials_secret
from tunnelop.contract import naming


def credentials(
    namespace: str, name: str, uid: str, relay: str, port: int
) -> tuple[dict[str, Any], str]:
    """A tcp tunnel's `<tunnel>-frpc` Secret on `relay`:`port`, and its token."""
    token = secrets.token_urlsafe(24)
    frpc_toml = build_frpc_config(
        namespace=namespace,
        tunnel_name=name,
        protocol="tcp",
        server_addr=f"{relay}.relays.example.test",
        server_port=naming.CONTROL_PORT,
        relay_token="r" * 32,
        tunnel_token=token,
        remote_port=port,
    )
    secret = build_credentials_secret(namespace, name, uid, frpc_toml=frpc_toml, token=token)
    return secret, token
