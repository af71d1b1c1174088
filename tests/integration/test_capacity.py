"""A relay never takes more than its exposure can carry: a LoadBalancer relay's Service takes a
node port per tunnel port from the cluster's node-port range, so with a range of five node
ports (the operator told with --service-node-port-range) a relay takes four tcp/udp tunnels
(the control port takes one), refuses the next with CapacityExhausted naming node ports, and
keeps its Service, its tunnels and deletions working; a freed port lets the waiting tunnel in."""

from __future__ import annotations

import uuid

from support import objects, tools
from support.objects import relay_node, tunnel, wait_condition
from support.operator import OperatorProcess


async def test_a_full_load_balancer_relay_refuses_the_next_tunnel_and_keeps_working(
    cluster, crds, operator, namespace, relay_namespace, tmp_path
) -> None:
    name = f"lb-{uuid.uuid4().hex[:6]}"
    label = {"tunnelop.test/case": name}
    # The session's operator steps aside for one that knows the smaller node-port range.
    await operator.stop()
    own = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        "--relay-namespace",
        relay_namespace,
        "--service-node-port-range",
        "30000-30004",
    )
    await own.start()
    try:
        objects.apply(
            relay_node(
                name,
                labels=label,
                ports="21000-21099",
                exposure={"type": "LoadBalancer", "address": "198.51.100.9"},
            )
        )
        await wait_condition("relaynode", name, None, "Ready")
        placement = {"nodeSelector": label}
        for i, protocol in enumerate(("tcp", "udp", "tcp", "udp")):
            objects.apply(tunnel(f"t{i}", protocol, relay=placement), namespace)
        for i in range(4):
            await wait_condition("tunnel", f"t{i}", namespace, "Ready")

        objects.apply(tunnel("t4", relay=placement), namespace)
        waiting = await wait_condition(
            "tunnel", "t4", namespace, "Scheduled", "False", reason="CapacityExhausted"
        )
        message = objects.condition(waiting, "Scheduled")["message"]
        assert "node port" in message, message

        service = objects.get("service", f"relay-{name}", relay_namespace)
        tunnel_ports = {
            (p["port"], p["protocol"]) for p in service["spec"]["ports"] if p["name"] != "control"
        }
        bound = {
            (t["status"]["remotePort"], t["spec"]["protocol"].upper())
            for t in (objects.get("tunnel", f"t{i}", namespace) for i in range(4))
        }
        assert tunnel_ports == bound  # the Service carries exactly the tunnels' ports
        relay = objects.get("relaynode", name)
        assert objects.condition(relay, "ServiceExposed")["status"] == "True"

        # Deleting works on a full relay, and the room it frees goes to the waiting tunnel.
        tools.kubectl("delete", "tunnel", "t0", "-n", namespace, "--wait=false")
        await objects.wait_for(
            lambda: objects.get("tunnel", "t0", namespace) is None, what="t0 deleted"
        )
        await wait_condition("tunnel", "t4", namespace, "Ready", timeout=60)
    finally:
        tools.kubectl("delete", "relaynode", name, "--ignore-not-found", "--wait=false")
        await own.stop()
        await operator.start()
