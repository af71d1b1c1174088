"""The operator pod's role label: written with a merge patch of the label alone, retried
until the API server takes it (the pod is not ready meanwhile), and serialized, so that a
replica taking over while its follower label is on the way ends labelled leader."""

from __future__ import annotations

import asyncio
from typing import Any

from tunnelop.platform.kube import KubeError
from tunnelop.platform.pod_role import ROLE_LABEL, PodRole


class PodStore:
    """One pod's labels, as the API server keeps them; `failures` patches fail first."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.labels: dict[str, str] = {"app.kubernetes.io/name": "tunnelop"}
        self.failures = failures
        self.delay = delay
        self.patches: list[dict[str, Any]] = []

    async def patch(self, api_version, kind, name, namespace, patch):
        assert (api_version, kind, name, namespace) == ("v1", "Pod", "op-1", "tunnelop-system")
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise KubeError(403, 'pods "op-1" is forbidden')
        self.patches.append(patch)
        self.labels.update(patch["metadata"]["labels"])
        return {"metadata": {"labels": dict(self.labels)}}


async def test_not_ready_until_the_label_is_written_then_ready_with_it():
    store = PodStore(failures=2)
    role = PodRole(store, "tunnelop-system", "op-1")  # type: ignore[arg-type]
    assert role.readiness()[0] is False
    await role.set("follower", max_delay=0.01)
    assert role.readiness() == (True, f"pod tunnelop-system/op-1 labelled {ROLE_LABEL}=follower")
    # Only the label is patched: the pod's other labels are the Deployment's.
    assert store.patches == [{"metadata": {"labels": {ROLE_LABEL: "follower"}}}]
    assert store.labels == {"app.kubernetes.io/name": "tunnelop", ROLE_LABEL: "follower"}


async def test_a_failing_write_says_why_in_readiness():
    store = PodStore(failures=100)
    role = PodRole(store, "tunnelop-system", "op-1")  # type: ignore[arg-type]
    task = asyncio.create_task(role.set("follower", max_delay=0.01))
    await asyncio.sleep(0.05)
    ready, message = role.readiness()
    assert not ready and "forbidden" in message
    task.cancel()


async def test_leader_written_after_a_follower_label_still_on_its_way():
    store = PodStore(delay=0.05)
    role = PodRole(store, "tunnelop-system", "op-1")  # type: ignore[arg-type]
    follower = asyncio.create_task(role.set("follower"))
    await asyncio.sleep(0)
    await role.set("leader")
    await follower
    assert store.labels[ROLE_LABEL] == "leader"
    assert role.role == "leader"
