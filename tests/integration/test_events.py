"""The Event recorder against the real API server: a repeat updates the posted Event's count
(the merge PATCH the API server must accept), and what the overall limit holds back arrives
as one summary Event."""

from __future__ import annotations

from support import objects, tools
from tunnelop.platform.events import EventRecorder
from tunnelop.platform.kube import Kube


def config_map(name: str, namespace: str) -> dict:
    tools.kubectl("create", "configmap", name, "-n", namespace)
    return {"apiVersion": "v1", "kind": "ConfigMap", **objects.get("configmap", name, namespace)}


async def test_a_repeat_counts_on_the_posted_event_and_a_burst_is_summed_up(
    cluster, namespace
) -> None:
    kube = await Kube.connect(str(cluster.kubeconfig))
    recorder = EventRecorder(kube, burst=3, rate=0.001, summary_delay=0.5)
    try:
        web = config_map("web", namespace)
        for _ in range(2):
            recorder.record(web, "Warning", "PortTaken", "port 80 is held by a/b")
            await recorder.idle()
        (event,) = objects.events(namespace, "web", "ConfigMap")
        assert (event["reason"], event["count"]) == ("PortTaken", 2)
        assert event["message"] == "port 80 is held by a/b"

        # One token left: "a" gets its Event, "b" and "c" are summed up on "c".
        others = [config_map(name, namespace) for name in "abc"]
        for body in others:
            recorder.record(body, "Normal", "Scheduled", "Bound")
        await recorder.idle()
        assert [e["reason"] for e in objects.events(namespace, "a", "ConfigMap")] == ["Scheduled"]
        assert recorder.waiting == 2
        recorder.bucket.tokens = 1  # as if time had passed
        await objects.wait_for(lambda: recorder.waiting == 0, what="the summary taken")
        await recorder.idle()
        (summary,) = objects.events(namespace, "c", "ConfigMap")
        assert summary["message"].startswith("Scheduled: 2 more configmaps in this namespace")
        assert objects.events(namespace, "b", "ConfigMap") == []
    finally:
        await recorder.stop()
        await kube.close()
