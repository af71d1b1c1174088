"""The operator pod's role label, tunnelop.dev/role: leader or follower.

Every replica is ready (a follower stands by to take over), so that a PodDisruptionBudget
lets a node drain evict any one of them; but only the leader serves the admission webhook
(it alone holds the caches admission reads). The chart's webhook Service therefore selects
tunnelop.dev/role=leader, as a CloudNativePG read-write Service selects its primary. The
leader sets the label once it is ready to answer; every replica sets follower before it
reports ready, so a pod restarted after losing the Lease is never routed to by an old label.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from tunnelop.platform import logs
from tunnelop.platform.kube import Kube

log = logs.get(__name__)
ROLE_LABEL = "tunnelop.dev/role"
POD_NAME_ENV = "POD_NAME"
Role = Literal["leader", "follower"]


class PodRole:
    """Labels one pod (`namespace`/`name`, the operator's own) with its role."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.role: Role | None = None  # the label last written
        self.last_error: str | None = None
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def set(self, role: Role, *, max_delay: float = 10.0) -> None:
        """Write the label, retrying until it is written (or the task is cancelled). Writes
        are serialized: a replica that takes over while its follower label is still on the
        way labels itself leader after it."""
        async with self._lock:
            delay = 0.5
            while True:
                try:
                    await self.kube.patch(
                        "v1",
                        "Pod",
                        self.name,
                        self.namespace,
                        {"metadata": {"labels": {ROLE_LABEL: role}}},
                    )
                except Exception as exc:  # the API server away, no right to pods: again
                    self.last_error = str(exc)
                    log.warning(
                        "cannot label the operator pod", pod=self.where, role=role, error=str(exc)
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_delay)
                    continue
                self.role, self.last_error = role, None
                log.info("operator pod labelled", pod=self.where, label=f"{ROLE_LABEL}={role}")
                return

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: ready once this process has written the label at least once, so
        that a label left by the pod's previous process (a leader that lost the Lease and
        restarted) never routes the webhook here."""
        if self.role is not None:
            return True, f"pod {self.where} labelled {ROLE_LABEL}={self.role}"
        why = f"; last error: {self.last_error}" if self.last_error else ""
        return False, f"labelling pod {self.where} {ROLE_LABEL}=follower{why}"
