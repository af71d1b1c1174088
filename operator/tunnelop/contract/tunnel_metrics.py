"""The per-tunnel metrics a relay agent exports on its /metrics and the operator reads back:
one set of names and labels for both sides."""

from __future__ import annotations

BYTES_IN = "tunnelop_tunnel_bytes_in"  # a counter: exposed with _total
BYTES_OUT = "tunnelop_tunnel_bytes_out"  # a counter: exposed with _total
ACTIVE_CONNECTIONS = "tunnelop_tunnel_active_connections"
CLIENT_CONNECTED = "tunnelop_tunnel_client_connected"
LAST_SEEN = "tunnelop_tunnel_last_seen_timestamp_seconds"

LABELS = ("namespace", "tunnel", "relay")
