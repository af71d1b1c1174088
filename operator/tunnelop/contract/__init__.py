"""What the operator and the relay agent share, and nothing else: the table format, the
names and ports of a relay's objects, and how the agent authenticates readers. No pydantic and
no Kubernetes client: the agent depends on this package, not on the API models."""
