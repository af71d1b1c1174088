"""Talking to Kubernetes and running a process: the API client, informers, the work queue,
leader election, health and metrics endpoints, certificates and logging. Nothing here knows a
tunnel from a relay."""
