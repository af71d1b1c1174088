"""Tunnels and relays against the real API server with the operator running: a relay gets
its workload, a tunnel gets a relay, a port and ready-to-run credentials; unschedulable
tunnels say why; deletion releases; a deleted relay's tunnels move."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from support import objects, tools
from support.objects import relay_node, tunnel, wait_condition
from support.operator import restart_settled
from tunnelop.contract.table import TABLE_SHARDS

RUN = uuid.uuid4().hex[:6]


async def test_relay_gets_its_workload_and_becomes_ready(
    operator, relay_namespace, cleanup_relays
) -> None:
    name = f"rw-{RUN}"
    cleanup_relays.append(name)
    objects.apply(
        relay_node(
            name, exposure={"type": "NodePort", "address": "203.0.113.7"}, ports="30000-30099"
        )
    )
    relay = await wait_condition("relaynode", name, None, "Ready", timeout=60)
    assert relay["status"]["publicAddress"] == "203.0.113.7"
    ns = relay_namespace
    deployment = objects.get("deployment", f"relay-{name}", ns)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    containers = {c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert containers == {"frps", "agent"}
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("RelayNode", name)
    service = objects.get("service", f"relay-{name}", ns)
    assert service["spec"]["type"] == "NodePort"
    assert 7000 in {p["port"] for p in service["spec"]["ports"]}
    role = objects.get("role", f"relay-{name}", ns)
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [
                f"relay-{name}-table",
                *(f"relay-{name}-table-{shard}" for shard in range(1, TABLE_SHARDS)),
            ],
            "verbs": ["get", "list", "watch"],
        }
    ]
    config = objects.secret_data(f"relay-{name}-config", ns)
    assert "frps.toml" in config and "allowPorts" in config["frps.toml"]


async def test_tunnel_gets_a_port_credentials_and_ready(operator, namespace, ready_relay) -> None:
    name, placement = await ready_relay(f"tr-{RUN}", "21000-21009")
    objects.apply(tunnel("ssh", **placement), namespace)
    tools.kubectl("wait", "-n", namespace, "tunnel/ssh", "--for=condition=Ready", "--timeout=60s")
    ssh = objects.get("tunnel", "ssh", namespace)
    status = ssh["status"]
    assert status["relayNode"] == name
    assert 21000 <= status["remotePort"] <= 21009
    assert status["endpoint"] == f"{name}.relays.example.test:{status['remotePort']}"
    assert status["credentialsSecret"] == "ssh-frpc"
    scheduled = objects.condition(ssh, "Scheduled")
    assert (
        scheduled["status"] == "True"
        and scheduled["observedGeneration"] == ssh["metadata"]["generation"]
    )
    frpc = objects.frpc_config("ssh", namespace)
    assert frpc["serverAddr"] == f"{name}.relays.example.test"
    assert frpc["proxies"][0]["remotePort"] == status["remotePort"]
    assert frpc["proxies"][0]["type"] == "tcp"
    token = objects.secret_data("ssh-frpc", namespace)["token"]
    assert frpc["metadatas"]["token"] == token
    # The operator wrote only status and its finalizer: no annotations on the user's object.
    assert not (ssh["metadata"].get("annotations") or {})
    assert ssh["metadata"]["finalizers"] == ["tunnelop.dev/finalizer"]
    await objects.wait_for(
        lambda: "Scheduled" in objects.event_reasons(namespace, "ssh"), what="a Scheduled Event"
    )

    # Deleting the Secret rotates the token.
    tools.kubectl("delete", "secret", "ssh-frpc", "-n", namespace)
    rotated = await objects.wait_for(
        lambda: (
            (objects.secret_data("ssh-frpc", namespace) or {}).get("token") not in (None, token)
        ),
        what="a new token",
    )
    assert rotated


@pytest.mark.parametrize(
    "case",
    ["NoRelayMatches", "PortTaken", "CapacityExhausted", "ProtocolNotAllowed"],
)
async def test_unschedulable_tunnels_say_why(
    case, operator, namespace, ready_relay, cleanup_relays
) -> None:
    capacity = {"capacity": {"tunnels": 1}} if case == "CapacityExhausted" else {}
    name, placement = await ready_relay(f"un-{case.lower()}-{RUN}", "22000-22009", **capacity)
    if case == "NoRelayMatches":
        objects.apply(
            tunnel("lost", relay={"nodeSelector": {"tunnelop.test/none": "x"}}), namespace
        )
    elif case == "PortTaken":
        objects.apply(tunnel("first", remotePort=22005, **placement), namespace)
        await wait_condition("tunnel", "first", namespace, "Ready")
        objects.apply(tunnel("lost", remotePort=22005, **placement), namespace)
    elif case == "CapacityExhausted":
        objects.apply(tunnel("first", **placement), namespace)
        await wait_condition("tunnel", "first", namespace, "Ready")
        objects.apply(tunnel("lost", **placement), namespace)
    else:  # http asked of a relay that allows tcp and udp only: the seed case of HTTP abuse
        other = {"tunnelop.test/case": uuid.uuid4().hex[:8]}
        objects.apply(tunnel("lost", "http", relay={"nodeSelector": other}), namespace)
        await wait_condition("tunnel", "lost", namespace, "Scheduled", "False", "NoRelayMatches")
        extra = f"un-http-{RUN}"
        cleanup_relays.append(extra)
        objects.apply(
            relay_node(extra, labels=other, ports="22100-22109")
        )  # retried on relay change
    lost = await wait_condition("tunnel", "lost", namespace, "Scheduled", "False", case, timeout=60)
    message = objects.condition(lost, "Scheduled")["message"]
    # What is wrong, and what to change.
    expected = {
        "NoRelayMatches": ("match spec.relay", "change spec.relay"),
        "PortTaken": ("port 22005 taken by tunnel first of this namespace", "spec.remotePort"),
        "CapacityExhausted": (f"({name}) is full (capacity.tunnels)", "wait for tunnels"),
        "ProtocolNotAllowed": ("does not allow protocol http", "change spec.protocol"),
    }[case]
    assert all(part.lower() in message.lower() for part in expected), message
    ready = objects.condition(lost, "Ready")
    assert ready["status"] == "False"

    # Events are posted in the background, just after the status.
    await objects.wait_for(
        lambda: case in objects.event_reasons(namespace, "lost"), timeout=15, what=f"a {case} Event"
    )


async def test_deleting_a_tunnel_releases_its_port(
    operator, namespace, relay_namespace, ready_relay
) -> None:
    name, placement = await ready_relay(f"rel-{RUN}", "23000-23009")
    objects.apply(tunnel("a", remotePort=23003, **placement), namespace)
    await wait_condition("tunnel", "a", namespace, "Ready")
    objects.apply(tunnel("b", remotePort=23003, **placement), namespace)
    await wait_condition("tunnel", "b", namespace, "Scheduled", "False", "PortTaken")
    tools.kubectl("delete", "tunnel", "a", "-n", namespace, "--timeout=30s")
    b = await wait_condition("tunnel", "b", namespace, "Ready")
    assert b["status"]["remotePort"] == 23003
    [entry] = objects.relay_table(name, relay_namespace)
    token = objects.secret_data("b-frpc", namespace)["token"]
    assert (entry["name"], entry["remotePort"]) == ("b", 23003)
    assert entry["tokenSha256"] == hashlib.sha256(token.encode()).hexdigest()


async def test_deleting_a_relay_moves_its_tunnels_keeping_ports(
    operator, namespace, relay_label, cleanup_relays
) -> None:
    first, second = f"mv1-{RUN}", f"mv2-{RUN}"
    cleanup_relays.extend([first, second])
    placement = {"relay": {"nodeSelector": relay_label}}
    objects.apply(relay_node(first, labels=relay_label, ports="24000-24099"))
    await wait_condition("relaynode", first, None, "Ready")
    objects.apply([tunnel(f"t{i}", **placement) for i in range(5)], namespace)
    before = {}
    for i in range(5):
        t = await wait_condition("tunnel", f"t{i}", namespace, "Ready")
        before[f"t{i}"] = t["status"]["remotePort"]
    objects.apply(relay_node(second, labels=relay_label, ports="24000-24099"))
    await wait_condition("relaynode", second, None, "Ready")
    tools.kubectl("delete", "relaynode", first, "--wait=false")

    def moved():
        ts = [objects.get("tunnel", f"t{i}", namespace) for i in range(5)]
        return (
            ts
            if all(
                t["status"].get("relayNode") == second
                and objects.condition(t, "Ready")["status"] == "True"
                for t in ts
            )
            else None
        )

    after = await objects.wait_for(moved, timeout=60, what="tunnels moved to the second relay")
    assert {t["metadata"]["name"]: t["status"]["remotePort"] for t in after} == before

    def reasons() -> list[str]:
        return tools.kubectl(
            "get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}"
        ).stdout.split()

    # Events are written in the background, and after a busy spell of the shared operator
    # (its Event budget spent) as a summary a few seconds later, with the same reason.
    await objects.wait_for(lambda: "Moved" in reasons(), timeout=30, what="a Moved Event")
    await objects.wait_for(lambda: objects.get("relaynode", first) is None, what="relay gone")


async def test_restart_with_everything_in_place_writes_nothing(
    operator, namespace, relay_namespace, ready_relay
) -> None:
    name, placement = await ready_relay(f"rs-{RUN}", "25000-25099")
    objects.apply([tunnel(f"t{i}", **placement) for i in range(5)], namespace)
    for i in range(5):
        await wait_condition("tunnel", f"t{i}", namespace, "Ready")
    # Everything in place includes the relay's status: its counts follow the table writes
    # at most once a second, and a restart rightly writes counts that are behind.
    await objects.wait_for(
        lambda: (
            (objects.get("relaynode", name).get("status") or {}).get("allocated", {}).get("tunnels")
            == 5
        ),
        timeout=30,
        what="the relay's status counting the 5 tunnels",
    )

    def snapshot() -> dict[str, dict]:
        watched = objects.list_objects("tunnel", namespace) + objects.list_objects(
            "secret", namespace, "tunnelop.dev/tunnel"
        )
        watched += objects.relay_table_secrets(name, relay_namespace)
        watched.append(objects.get("relaynode", name))
        return objects.snapshot_of(watched)

    before = snapshot()
    await restart_settled(operator)
    objects.assert_unchanged(before, snapshot())


async def test_a_table_changed_by_anyone_else_is_rewritten(
    operator, namespace, relay_namespace, ready_relay
) -> None:
    """A rogue entry (a hand edit, a process that lost its lease) does not stay on a relay."""
    name, placement = await ready_relay(f"rt-{RUN}", "26000-26009")
    objects.apply(tunnel("kept", **placement), namespace)
    await wait_condition("tunnel", "kept", namespace, "Ready")
    # The rogue entry goes into the Secret of its own shard: the operator reads it as a table.
    secret = objects.table_secret_of(name, "elsewhere", "rogue")
    table = json.loads(objects.secret_data(secret, relay_namespace)["table.json"])
    rogue = {
        "namespace": "elsewhere",
        "name": "rogue",
        "tokenSha256": "0" * 64,
        "protocol": "tcp",
        "remotePort": 26009,
    }
    edited = {**table, "tunnels": [*table["tunnels"], rogue]}
    data = base64.b64encode(json.dumps(edited).encode()).decode()
    patch = json.dumps({"data": {"table.json": data}})
    tools.kubectl("patch", "secret", secret, "-n", relay_namespace, "-p", patch)

    def names() -> list[str]:
        return [t["name"] for t in objects.relay_table(name, relay_namespace)]

    await objects.wait_for(lambda: names() == ["kept"], timeout=30, what="the rogue entry gone")


async def test_concurrent_tunnels_asking_for_one_custom_domain_get_it_one_at_a_time(
    operator, kube, relay_namespace, ready_relay
) -> None:
    """Tenants racing for one host name: admission may let several through (none sees the
    others yet); the scheduler gives the name to one, the others wait with CustomDomainTaken,
    and one of them gets it once the holder is gone."""
    name, placement = await ready_relay(
        f"cd-{RUN}", "27000-27009", protocols=["http"], httpDomain=f"cd-{RUN}.example.test"
    )
    domain = f"shop-{RUN}.example.org"
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    namespaces = [f"race-{RUN}-{i}" for i in range(6)]
    await asyncio.gather(
        *(
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            for ns in namespaces
        )
    )

    async def create(ns: str) -> str | None:
        """None when admitted, else the API server's refusal."""
        body = tunnel("site", "http", customDomains=[domain], **placement)
        try:
            await custom.create_namespaced_custom_object(
                "tunnelop.dev", "v1alpha1", ns, "tunnels", body
            )
        except ApiException as exc:
            return str(exc.body)
        return None

    def states(candidates: list[str]) -> dict[str, tuple[str, str, str]] | None:
        """(Ready status, Scheduled reason, Scheduled message) per namespace, once each has
        its answer: Ready, or waiting for the name."""
        found = {}
        for ns in candidates:
            t = objects.get("tunnel", "site", ns)
            ready, scheduled = objects.condition(t, "Ready"), objects.condition(t, "Scheduled")
            if not ready or not scheduled:
                return None
            if ready["status"] != "True" and scheduled["reason"] != "CustomDomainTaken":
                return None
            found[ns] = (ready["status"], scheduled["reason"], scheduled["message"])
        return found

    def holders_in_table() -> list[str]:
        table = objects.relay_table(name, relay_namespace)
        return [t["namespace"] for t in table if domain in t.get("customDomains", [])]

    try:
        refusals = await asyncio.gather(*(create(ns) for ns in namespaces))
        admitted = [ns for ns, refusal in zip(namespaces, refusals, strict=True) if not refusal]
        for refusal in filter(None, refusals):
            assert "spec.customDomains" in refusal and domain in refusal, refusal
        assert admitted
        settled = await objects.wait_for(lambda: states(admitted), what="every tunnel's answer")
        [holder] = [ns for ns, (ready, _, _) in settled.items() if ready == "True"]
        assert holders_in_table() == [holder]
        waiting = [ns for ns in admitted if ns != holder]
        for ns in waiting:
            _, reason, message = settled[ns]
            assert reason == "CustomDomainTaken"
            assert (
                f"spec.customDomains {domain} is held by a tunnel of another namespace" in message
            )
        if not waiting:
            return  # admission saw every create but the first one: nothing to hand on
        tools.kubectl("delete", "tunnel", "site", "-n", holder, "--timeout=30s")

        def handed_on() -> str | None:
            """The one waiting tunnel now Ready, once the others name it as the holder."""
            found = states(waiting) or {}
            ready = [ns for ns, (status, _, _) in found.items() if status == "True"]
            if len(ready) != 1:
                return None
            told = "is held by a tunnel of another namespace"
            others = [found[ns] for ns in waiting if ns != ready[0]]
            if all(r == "CustomDomainTaken" and told in m for _, r, m in others):
                return ready[0]
            return None

        successor = await objects.wait_for(handed_on, what="the name handed on to one tunnel")
        assert await objects.wait_for(lambda: holders_in_table() == [successor], what="the table")
    finally:
        for ns in namespaces:
            tools.kubectl("delete", "namespace", ns, "--wait=false")
