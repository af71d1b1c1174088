"""Services of the load-balancer class tunnelop.dev/relay: what each asks for (request) and
what its status and Events say about the Tunnels that serve it (report)."""
