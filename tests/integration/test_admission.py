"""Bad input is rejected by the real API server — by the schema, by CEL, or by tunnelop's
admission webhook — with a message that names the offending field."""

from __future__ import annotations

import asyncio
import json
import tomllib
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings

from support import objects, tools
from support.strategies import junk, sometimes, tunnel_specs

RUN = uuid.uuid4().hex[:6]
TCP_RELAY = f"adm-{RUN}-tcp"
WEB_RELAY = f"adm-{RUN}-web"
WEB_DOMAIN = f"web-{RUN}.example.test"
ONLY_OURS = {"tunnelop.test/run": RUN}  # keeps other tests' relays out of these tunnels' way
HELD_DOMAIN = f"shop-{RUN}.example.org"  # a custom domain the holder tunnel has


@dataclass(frozen=True)
class Case:
    id: str
    layer: str  # schema | cel | webhook
    field: str  # the field the message must name
    manifest: dict[str, Any]


def tunnel(spec: dict[str, Any], name: str = "t") -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": name},
        "spec": spec,
    }


def relay(spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    spec = {"ports": {"range": "40000-40999"}, **spec}
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "RelayNode",
        "metadata": {"name": name or f"bad-{RUN}"},
        "spec": spec,
    }


def pool(spec: dict[str, Any]) -> dict[str, Any]:
    template = {"spec": {"ports": {"range": "40000-40999"}}}
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "RelayPool",
        "metadata": {"name": f"bad-{RUN}"},
        "spec": {"template": template, **spec},
    }


def quota(hard: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "TunnelQuota",
        "metadata": {"name": "q"},
        "spec": {"hard": hard},
    }


on_tcp_relay = {"relay": {"node": TCP_RELAY}}
on_ours = {"relay": {"nodeSelector": ONLY_OURS}}

CASES = [
    # --- schema: types, ranges, formats
    Case("protocol-missing", "schema", "spec.protocol", tunnel({"remotePort": 20000})),
    Case("protocol-unknown", "schema", "spec.protocol", tunnel({"protocol": "ftp"})),
    Case("protocol-uppercase", "schema", "spec.protocol", tunnel({"protocol": "TCP"})),
    Case(
        "remote-port-zero",
        "schema",
        "spec.remotePort",
        tunnel({"protocol": "tcp", "remotePort": 0}),
    ),
    Case(
        "remote-port-too-big",
        "schema",
        "spec.remotePort",
        tunnel({"protocol": "tcp", "remotePort": 70000}),
    ),
    Case(
        "remote-port-string",
        "schema",
        "spec.remotePort",
        tunnel({"protocol": "tcp", "remotePort": "http"}),
    ),
    Case(
        "remote-port-typo", "schema", "remotPort", tunnel({"protocol": "tcp", "remotPort": 20000})
    ),
    Case(
        "subdomain-not-dns-label",
        "schema",
        "spec.subdomain",
        tunnel({"protocol": "http", "subdomain": "My_Site"}),
    ),
    Case(
        "subdomain-too-long",
        "schema",
        "spec.subdomain",
        tunnel({"protocol": "http", "subdomain": "a" * 64}),
    ),
    Case(
        "custom-domain-wildcard",
        "schema",
        "spec.customDomains",
        tunnel({"protocol": "http", "customDomains": ["*.example.com"]}),
    ),
    Case(
        "custom-domain-space",
        "schema",
        "spec.customDomains",
        tunnel({"protocol": "https", "customDomains": ["my site.example.com"]}),
    ),
    Case(
        "bandwidth-unit",
        "schema",
        "spec.bandwidth",
        tunnel({"protocol": "tcp", "bandwidth": "10Mbps"}),
    ),
    Case(
        "bandwidth-negative",
        "schema",
        "spec.bandwidth",
        tunnel({"protocol": "tcp", "bandwidth": "-5M"}),
    ),
    Case(
        "cidr-prefix-too-long",
        "schema",
        "spec.allowSourceRanges",
        tunnel({"protocol": "tcp", "allowSourceRanges": ["10.0.0.0/33"]}),
    ),
    Case(
        "cidr-garbage",
        "schema",
        "spec.allowSourceRanges",
        tunnel({"protocol": "tcp", "allowSourceRanges": ["office"]}),
    ),
    Case(
        "suspended-string",
        "schema",
        "spec.suspended",
        tunnel({"protocol": "tcp", "suspended": "yes"}),
    ),
    Case(
        "client-type-unknown",
        "schema",
        "spec.client.type",
        tunnel({"protocol": "tcp", "client": {"type": "Sidecar"}}),
    ),
    Case(
        "relay-node-bad-name",
        "schema",
        "spec.relay.node",
        tunnel({"protocol": "tcp", "relay": {"node": "Relay_1"}}),
    ),
    # --- CEL: cross-field rules
    Case(
        "subdomain-on-tcp",
        "cel",
        "spec.subdomain",
        tunnel({"protocol": "tcp", "subdomain": "blog"}),
    ),
    Case(
        "remote-port-on-http",
        "cel",
        "spec.remotePort",
        tunnel({"protocol": "http", "remotePort": 20000}),
    ),
    Case(
        "custom-domains-on-udp",
        "cel",
        "spec.customDomains",
        tunnel({"protocol": "udp", "customDomains": ["a.example.com"]}),
    ),
    Case(
        "source-ranges-on-udp",
        "cel",
        "spec.allowSourceRanges",
        tunnel({"protocol": "udp", "allowSourceRanges": ["203.0.113.0/24"]}),
    ),
    Case(
        "source-ranges-on-http",
        "cel",
        "spec.allowSourceRanges",
        tunnel({"protocol": "http", "allowSourceRanges": ["203.0.113.0/24"]}),
    ),
    Case(
        "target-on-external",
        "cel",
        "spec.client.target",
        tunnel(
            {
                "protocol": "tcp",
                "client": {"type": "External", "target": {"service": "web", "port": 80}},
            }
        ),
    ),
    Case(
        "in-cluster-without-target",
        "cel",
        "spec.client.target",
        tunnel({"protocol": "tcp", "client": {"type": "InCluster"}}),
    ),
    Case(
        "target-port-zero",
        "schema",
        "spec.client.target.port",
        tunnel(
            {
                "protocol": "tcp",
                "client": {"type": "InCluster", "target": {"service": "web", "port": 0}},
            }
        ),
    ),
    Case(
        "port-range-inverted", "cel", "spec.ports.range", relay({"ports": {"range": "30000-20000"}})
    ),
    Case(
        "port-range-from-zero", "schema", "spec.ports.range", relay({"ports": {"range": "0-100"}})
    ),
    Case(
        "port-range-past-65535",
        "cel",
        "spec.ports.range",
        relay({"ports": {"range": "20000-70000"}}),
    ),
    Case("port-range-garbage", "schema", "spec.ports.range", relay({"ports": {"range": "lots"}})),
    Case(
        "reserved-inverted",
        "cel",
        "spec.ports.reserved",
        relay({"ports": {"range": "40000-40999", "reserved": ["5-3"]}}),
    ),
    Case(
        "blocked-too-big",
        "schema",
        "spec.ports.blocked",
        relay({"ports": {"range": "40000-40999", "blocked": [70000]}}),
    ),
    Case(
        "relay-protocol-unknown", "schema", "spec.protocols", relay({"protocols": ["tcp", "ftp"]})
    ),
    Case(
        "relay-http-without-domain", "cel", "spec.httpDomain", relay({"protocols": ["tcp", "http"]})
    ),
    Case(
        "relay-wildcard-domain",
        "schema",
        "spec.httpDomain",
        relay({"protocols": ["http"], "httpDomain": "*.example.com"}),
    ),
    Case(
        "relay-exposure-unknown",
        "schema",
        "spec.exposure.type",
        relay({"exposure": {"type": "Ingress"}}),
    ),
    Case(
        "relay-capacity-negative",
        "schema",
        "spec.capacity.tunnels",
        relay({"capacity": {"tunnels": -1}}),
    ),
    Case("relay-name-not-dns-1035", "cel", "metadata.name", relay({}, name=f"1relay-{RUN}")),
    Case(
        "pool-min-above-max",
        "cel",
        "spec.autoscaling",
        pool({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
    ),
    Case(
        "pool-utilization-percent",
        "schema",
        "spec.autoscaling.targetUtilization",
        pool({"autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetUtilization": 150}}),
    ),
    Case("pool-replicas-negative", "schema", "spec.replicas", pool({"replicas": -1})),
    Case("quota-tunnels-negative", "schema", "spec.hard.tunnels", quota({"tunnels": -1})),
    Case(
        "quota-traffic-garbage",
        "schema",
        "spec.hard.monthlyTraffic",
        quota({"monthlyTraffic": "lots"}),
    ),
    Case("quota-protocol-unknown", "schema", "spec.hard.protocols", quota({"protocols": ["smtp"]})),
    # --- webhook: rules that depend on other objects
    Case(
        "port-reserved",
        "webhook",
        "spec.remotePort",
        tunnel({"protocol": "tcp", "remotePort": 20001, **on_ours}),
    ),
    Case(
        "port-in-reserved-range",
        "webhook",
        "spec.remotePort",
        tunnel({"protocol": "tcp", "remotePort": 20505, **on_ours}),
    ),
    Case(
        "port-blocked",
        "webhook",
        "spec.remotePort",
        tunnel({"protocol": "udp", "remotePort": 20150, **on_ours}),
    ),
    Case(
        "port-outside-every-range",
        "webhook",
        "spec.remotePort",
        tunnel({"protocol": "tcp", "remotePort": 30000, **on_ours}),
    ),
    Case(
        "http-on-tcp-only-relay",
        "webhook",
        "spec.protocol",
        tunnel({"protocol": "http", **on_tcp_relay}),
    ),
    Case(
        "udp-on-web-relay",
        "webhook",
        "spec.protocol",
        tunnel({"protocol": "udp", "relay": {"node": WEB_RELAY}}),
    ),
    Case(
        "subdomain-taken-across-namespaces",
        "webhook",
        "spec.subdomain",
        tunnel({"protocol": "http", "subdomain": "taken", **on_ours}),
    ),
    Case(
        "custom-domain-taken-across-namespaces",
        "webhook",
        "spec.customDomains",
        tunnel({"protocol": "https", "customDomains": [HELD_DOMAIN], **on_ours}),
    ),
    Case(
        "custom-domain-under-a-relays-http-domain",
        "webhook",
        "spec.customDomains",
        # Placed on the tcp relay: the name is the provider's all the same.
        tunnel({"protocol": "http", "customDomains": [f"blog.{WEB_DOMAIN}"], **on_tcp_relay}),
    ),
]


def apply(manifest: dict[str, Any], namespace: str | None, dry_run: bool = True):
    args = ["create", "-f", "-", "-o", "name"]
    if dry_run:
        args.append("--dry-run=server")
    if namespace and manifest["kind"] in ("Tunnel", "TunnelQuota"):
        args += ["-n", namespace]
    return tools.kubectl(*args, input=json.dumps(manifest), check=False)


@pytest.fixture(scope="module")
async def admission_world(operator, kube):
    """Two relays with known ports and protocols, and a tunnel holding subdomain 'taken' and
    custom domain HELD_DOMAIN."""
    relays = [
        relay(
            {
                "ports": {
                    "range": "20000-20999",
                    "reserved": [20001, "20500-20509"],
                    "blocked": ["20100-20199"],
                },
            },
            name=TCP_RELAY,
        ),
        relay(
            {
                "ports": {"range": "21000-21999"},
                "protocols": ["tcp", "http", "https"],
                "httpDomain": WEB_DOMAIN,
            },
            name=WEB_RELAY,
        ),
    ]
    for r in relays:
        r["metadata"]["labels"] = dict(ONLY_OURS)
        # An address of their own: a relay without one is not Ready (AddressPending).
        r["spec"]["exposure"] = {"type": "LoadBalancer", "address": "198.51.100.40"}
        result = apply(r, None, dry_run=False)
        assert result.returncode == 0, result.stderr
    for r in relays:
        await objects.wait_condition("relaynode", r["metadata"]["name"], None, "Ready")
    holder_ns = f"adm-holder-{RUN}"
    tools.kubectl("create", "namespace", holder_ns)
    holder = tunnel(
        {"protocol": "http", "subdomain": "taken", "customDomains": [HELD_DOMAIN], **on_ours},
        name="holder",
    )
    result = apply(holder, holder_ns, dry_run=False)
    assert result.returncode == 0, result.stderr
    # The webhook learns of new objects through its watches: wait until it knows them.
    probe = tunnel({"protocol": "tcp", "remotePort": 20001, **on_ours})
    probe_sub = tunnel({"protocol": "http", "subdomain": "taken", **on_ours})
    probe_domain = tunnel({"protocol": "http", "customDomains": [HELD_DOMAIN], **on_ours})
    for _ in range(100):
        if all("denied" in apply(p, "default").stderr for p in (probe, probe_sub, probe_domain)):
            break
        await asyncio.sleep(0.1)
    yield
    tools.kubectl("delete", "namespace", holder_ns, "--wait=false")
    tools.kubectl("delete", "relaynode", TCP_RELAY, WEB_RELAY, "--ignore-not-found")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_invalid_manifest_is_rejected_naming_the_field(
    case: Case, admission_world, namespace
) -> None:
    result = apply(case.manifest, namespace)
    assert result.returncode != 0, f"{case.id} was admitted: {result.stdout}"
    message = result.stderr
    assert case.field in message, f"{case.id}: message does not name {case.field}: {message}"
    from_webhook = "admission webhook" in message
    assert from_webhook == (case.layer == "webhook"), message


async def test_custom_domain_denials_name_the_domain_and_say_what_to_do(
    admission_world, namespace
) -> None:
    taken = apply(
        tunnel({"protocol": "http", "customDomains": [HELD_DOMAIN], **on_ours}), namespace
    )
    assert taken.returncode != 0
    assert f"spec.customDomains: '{HELD_DOMAIN}' is already asked for" in taken.stderr
    # Another tenant's tunnel is not named: whether it exists is none of this tenant's business.
    assert "by a tunnel of another namespace" in taken.stderr
    assert "holder" not in taken.stderr.replace(f"adm-holder-{RUN}", "")
    under = f"x.{WEB_DOMAIN}"
    provider = apply(tunnel({"protocol": "http", "customDomains": [under], **on_ours}), namespace)
    assert provider.returncode != 0
    assert f"spec.customDomains: '{under}' is under {WEB_DOMAIN}" in provider.stderr
    assert "use spec.subdomain instead" in provider.stderr


async def test_a_subdomain_making_another_tunnels_custom_domain_is_denied(
    admission_world, namespace
) -> None:
    """Possible only for a custom domain admitted before a relay took its parent as httpDomain
    (the provider's mistake): the name still has one owner."""
    domain = f"late-{RUN}.example.test"
    owner = tunnel({"protocol": "http", "customDomains": [f"www.{domain}"], **on_ours}, "owner")
    result = apply(owner, namespace, dry_run=False)
    assert result.returncode == 0, result.stderr
    name = f"adm-{RUN}-late"
    late = relay({"protocols": ["http"], "httpDomain": domain}, name=name)
    late["metadata"]["labels"] = dict(ONLY_OURS)
    try:
        assert apply(late, None, dry_run=False).returncode == 0
        on_late = tunnel({"protocol": "http", "subdomain": "www", "relay": {"node": name}})
        # Until the webhook has seen the relay, nothing matches spec.relay.
        denied = await objects.wait_for(
            lambda: apply(on_late, "default").stderr, what="the webhook's new relay"
        )
        assert f"spec.subdomain: 'www' makes www.{domain}, a custom domain" in denied
        assert "a custom domain of a tunnel of another namespace" in denied
        assert f"{namespace}/owner" not in denied
    finally:
        tools.kubectl("delete", "relaynode", name, "--ignore-not-found")


async def test_valid_tunnels_on_those_relays_are_admitted(admission_world, namespace) -> None:
    for spec in (
        {"protocol": "tcp", "remotePort": 20002, **on_ours},
        {
            "protocol": "tcp",
            "remotePort": 21150,
            **on_ours,
        },  # blocked on one relay, free on the other
        {"protocol": "udp", "remotePort": 20999, **on_tcp_relay},
        {"protocol": "http", "subdomain": f"free-{RUN}", **on_ours},
        {"protocol": "tcp"},
    ):
        result = apply(tunnel(spec), namespace)
        assert result.returncode == 0, f"{spec}: {result.stderr}"


async def test_unrelated_update_is_admitted_after_the_relay_blocks_the_port(
    admission_world, namespace
) -> None:
    """A tenant can still suspend a tunnel whose pinned port the provider blocked later."""
    name = f"late-block-{RUN}"
    pinned = relay({"ports": {"range": "22000-22099"}}, name=name)
    pinned["metadata"]["labels"] = {"tunnelop.test/late": RUN}
    assert apply(pinned, None, dry_run=False).returncode == 0
    try:
        spec = {"protocol": "tcp", "remotePort": 22010, "relay": {"node": name}}
        for _ in range(50):  # until the webhook has seen the new relay
            created = apply(tunnel(spec, name="game"), namespace, dry_run=False)
            if created.returncode == 0:
                break
            await asyncio.sleep(0.1)
        assert created.returncode == 0, created.stderr
        tools.kubectl(
            "patch",
            "relaynode",
            name,
            "--type=merge",
            "-p",
            '{"spec":{"ports":{"blocked":[22010]}}}',
        )
        denied = None
        for _ in range(50):  # the webhook now refuses the port to new tunnels...
            denied = apply(tunnel(spec, name="game2"), namespace)
            if denied.returncode != 0:
                break
            await asyncio.sleep(0.1)
        assert denied.returncode != 0 and "spec.remotePort" in denied.stderr
        # ...but an update that does not touch the port goes through.
        suspended = objects.patch_tunnel(
            "game", namespace, {"spec": {"suspended": True}}, check=False
        )
        assert suspended.returncode == 0, suspended.stderr
    finally:
        tools.kubectl("delete", "relaynode", name, "--ignore-not-found")


def test_documented_examples_apply_cleanly(admission_world, namespace) -> None:
    examples = sorted((tools.REPO / "docs" / "examples").glob("*.yaml"))
    assert len(examples) >= 9
    kinds = {p: yaml.safe_load(p.read_text())["kind"] for p in examples}
    cluster_scoped = [p for p in examples if kinds[p] in ("RelayNode", "RelayPool")]
    namespaced = [p for p in examples if p not in cluster_scoped]
    try:
        for path in cluster_scoped + namespaced:
            args = ["apply", "-f", str(path)] + (["-n", namespace] if path in namespaced else [])
            result = tools.kubectl(*args, check=False)
            assert result.returncode == 0, f"{path.name}: {result.stderr}"
    finally:
        for path in cluster_scoped:
            tools.kubectl("delete", "-f", str(path), "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def custom_objects(cluster):
    from kubernetes import client as sync_client
    from kubernetes import config as sync_config

    api = sync_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield sync_client.CustomObjectsApi(api)
    api.close()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=sometimes(tunnel_specs, junk))
def test_generated_tunnels_get_a_clean_answer_from_the_api_server(
    spec, custom_objects, admission_world
) -> None:
    """Generated specs through the real schema, CEL and webhook: admitted, or denied with a
    4xx that names a field — never a server error, never a hung request."""
    from kubernetes.client.exceptions import ApiException

    body = tunnel(spec if isinstance(spec, dict) else {"protocol": spec})
    if isinstance(spec, dict):
        spec.setdefault("relay", on_ours)  # only our relays decide the webhook's answer
    try:  # NaN and infinity cannot be sent as JSON at all: nothing for the server to judge
        json.dumps(body, allow_nan=False)
    except ValueError:
        assume(False)
    try:
        custom_objects.create_namespaced_custom_object(
            "tunnelop.dev",
            "v1alpha1",
            "default",
            "tunnels",
            body,
            dry_run="All",
            _request_timeout=30,
        )
    except ApiException as error:
        assert error.status in (400, 422), (error.status, error.body)
        message = json.loads(error.body)["message"]
        assert "spec" in message or "metadata" in message, message
        assert "Internal error" not in message, message


def test_kubectl_explain_describes_every_tunnel_spec_field(crds) -> None:
    from tunnelop.api.v1alpha1 import TunnelSpec

    text = tools.kubectl("explain", "tunnel.spec").stdout
    for name, info in TunnelSpec.model_fields.items():
        field = info.alias or name
        assert f"  {field}\t" in text or f"  {field} " in text, f"{field} missing:\n{text}"
    detail = tools.kubectl("explain", "tunnel.spec.remotePort").stdout
    assert "The public port on the relay" in detail


async def test_printer_columns_and_short_names(admission_world, namespace) -> None:
    pool_name = f"cols-{RUN}"
    made = [
        apply(tunnel({"protocol": "tcp", **on_ours}, name="cols"), namespace, dry_run=False),
        apply({**pool({"replicas": 0}), "metadata": {"name": pool_name}}, None, dry_run=False),
        apply(quota({"tunnels": 3, "monthlyTraffic": "10Gi"}), namespace, dry_run=False),
    ]
    try:
        assert all(m.returncode == 0 for m in made), [m.stderr for m in made]
        expected = {
            "tun": ["NAME", "PROTOCOL", "RELAY", "ENDPOINT", "READY", "AGE"],
            "rn": ["NAME", "ADDRESS", "TUNNELS", "CAPACITY", "READY", "AGE"],
            "rp": ["NAME", "REPLICAS", "READY", "MIN", "MAX", "AGE"],
            "tq": ["NAME", "TUNNELS", "MAX TUNNELS", "TRAFFIC", "MAX TRAFFIC", "SUSPENDED", "AGE"],
        }
        for short_name, columns in expected.items():
            header = tools.kubectl("get", short_name, "-n", namespace).stdout.splitlines()[0]
            positions = [header.find(column) for column in columns]
            assert -1 not in positions and positions == sorted(positions), header
        row = tools.kubectl("get", "tun", "cols", "-n", namespace, "--no-headers").stdout
        assert row.split()[1] == "tcp", row
    finally:
        tools.kubectl("delete", "relaypool", pool_name, "--ignore-not-found")
    # The category lists all four kinds.
    kinds = tools.kubectl("api-resources", "--categories=tunnelop", "-o", "name").stdout.split()
    assert sorted(kinds) == sorted(
        [
            "tunnels.tunnelop.dev",
            "relaynodes.tunnelop.dev",
            "relaypools.tunnelop.dev",
            "tunnelquotas.tunnelop.dev",
        ]
    )


def relay_listen_ports(name: str, relay_namespace: str) -> set[int] | None:
    """The ports a relay uses itself, read from the objects the operator made for it: its
    frps.toml, its Deployment (container ports, the agent's listen flags) and its Service
    (which holds no tunnel ports yet). None until all of them exist."""
    workload = f"relay-{name}"
    config = objects.secret_data(f"relay-{name}-config", relay_namespace).get("frps.toml")
    deployment = objects.get("deployment", workload, relay_namespace)
    if config is None or deployment is None:
        return None
    service = None
    if not deployment["spec"]["template"]["spec"].get("hostNetwork"):
        service = objects.get("service", workload, relay_namespace)
        if service is None:
            return None
    return objects.relay_own_ports(tomllib.loads(config), deployment, service)


@pytest.mark.parametrize("exposure", ["LoadBalancer", "HostNetwork"])
async def test_ports_the_relay_uses_itself_are_refused_naming_the_port(
    admission_world, namespace, relay_namespace, exposure
) -> None:
    """A Tunnel asking for a port the relay listens on (or its Service maps) is denied at
    admission, on a relay whose range covers them all."""
    name = f"own-{RUN}-{exposure.lower()}"
    body = relay(
        {
            "ports": {"range": "1-9999"},
            "protocols": ["tcp", "udp", "http", "https"],
            "httpDomain": f"{name}.example.test",
            "exposure": {"type": exposure},
            "unschedulable": True,  # other tests' tunnels stay off it
        },
        name=name,
    )
    assert apply(body, None, dry_run=False).returncode == 0
    try:
        own = await objects.wait_for(
            lambda: relay_listen_ports(name, relay_namespace), what=f"objects of relay {name}"
        )
        assert {7000, 7400, 7401, 7500} <= own  # the artifacts were read at all

        def ask(port: int):
            spec = {"protocol": "tcp", "remotePort": port, "relay": {"node": name}}
            return apply(tunnel(spec), namespace)

        # Until the webhook has seen the relay, nothing matches spec.relay and all is admitted:
        # wait until a port outside the range is refused.
        await objects.wait_for(lambda: ask(10000).returncode != 0, what="the webhook's relay")
        for port in sorted(own):
            result = ask(port)
            assert result.returncode != 0, f"remotePort {port} was admitted on {name}"
            assert f"spec.remotePort: {port} " in result.stderr, result.stderr
            assert "the relay's own port" in result.stderr, result.stderr
        free = next(p for p in range(7001, 9999) if p not in own)
        assert ask(free).returncode == 0, f"{free} was refused"
    finally:
        tools.kubectl("delete", "relaynode", name, "--ignore-not-found")
