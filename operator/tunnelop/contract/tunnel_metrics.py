"""The per-tunnel metrics a relay agent exports on its /metrics and the operator reads back:
one set of names and labels for both sides."""

from __future__ import annotations

from dataclasses import dataclass

BYTES_IN = "tunnelop_tunnel_bytes_in"  # a counter: exposed with _total
BYTES_OUT = "tunnelop_tunnel_bytes_out"  # a counter: exposed with _total
ACTIVE_CONNECTIONS = "tunnelop_tunnel_active_connections"
CLIENT_CONNECTED = "tunnelop_tunnel_client_connected"
LAST_SEEN = "tunnelop_tunnel_last_seen_timestamp_seconds"

LABELS = ("namespace", "tunnel", "relay")
# The last call of the tunnel's client the relay refused, with the reason the client was
# given: a gauge of the refusal's time, labelled with LABELS + REFUSAL_LABELS.
LAST_REFUSAL = "tunnelop_tunnel_last_refusal_timestamp_seconds"
REFUSAL_LABELS = ("op", "reason")
REFUSAL_REASON_MAX_CHARS = 200


@dataclass(frozen=True)
class Refusal:
    """The last call of a tunnel's client its relay refused: what the agent exports as
    LAST_REFUSAL and the operator reads back."""

    at: float  # unix time
    op: str
    reason: str  # as the client was told, at most REFUSAL_REASON_MAX_CHARS
