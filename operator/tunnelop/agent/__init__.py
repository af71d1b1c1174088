"""The relay agent: the sidecar of every relay pod. frps asks it, through the server-plugin
API on localhost, whether to accept each login, proxy, heartbeat and visitor connection; it
answers from its relay's allocation table, and meters traffic from frps's own metrics."""
