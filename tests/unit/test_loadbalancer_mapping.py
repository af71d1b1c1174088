"""The load-balancer class tunnelop.dev/relay, pure: a Service in, its Tunnels, its
status.loadBalancer and the problems to report out; bad annotations named, never a crash."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.strategies import junk, label, sometimes
from tunnelop.api.v1alpha1 import Tunnel
from tunnelop.builders.service_tunnels import build_service_tunnels
from tunnelop.domain.loadbalancers.report import load_balancer_status, port_problems, to_report
from tunnelop.domain.loadbalancers.request import (
    BANDWIDTH_ANNOTATION,
    NODE_SELECTOR_ANNOTATION,
    POOL_ANNOTATION,
    RELAY_NODE_ANNOTATION,
    SERVICE_LABEL,
    SOURCE_RANGES_ANNOTATION,
    TUNNEL_NAME_MAX,
    InvalidService,
    is_relay_load_balancer,
    request_of,
    slim,
    tunnel_name,
)

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def service(
    ports: Any = None,
    annotations: dict[str, Any] | None = None,
    name: str = "web",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "0f6e2a9c-uid",
            "annotations": annotations or {},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "tunnelop.dev/relay",
            "ports": ports
            if ports is not None
            else [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
            ],
            **spec,
        },
    }


def problems_of(svc: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidService) as raised:
        request_of(svc)
    return raised.value.problems


# ---- which Services ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "served"),
    [
        ({"type": "LoadBalancer", "loadBalancerClass": "tunnelop.dev/relay"}, True),
        ({"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}, False),
        ({"type": "LoadBalancer"}, False),  # the cloud's
        ({"type": "ClusterIP", "loadBalancerClass": "tunnelop.dev/relay"}, False),
        ({}, False),
    ],
)
def test_only_load_balancers_of_the_class_are_served(spec, served):
    assert is_relay_load_balancer({"metadata": {"name": "s"}, "spec": spec}) is served


def test_what_is_kept_of_a_service_is_what_is_read():
    svc = service(
        annotations={
            POOL_ANNOTATION: "eu",
            "kubectl.kubernetes.io/last-applied-configuration": "x" * 5000,
        },
        selector={"app": "web"},
        clusterIP="10.0.0.7",
    )
    svc["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    kept = slim(svc)
    assert kept["metadata"]["annotations"] == {POOL_ANNOTATION: "eu"}
    assert "managedFields" not in kept["metadata"]
    assert set(kept["spec"]) == {"type", "loadBalancerClass", "ports"}
    assert request_of(kept) == request_of(svc)


# ---- Service -> Tunnels --------------------------------------------------------------------


def test_one_in_cluster_tunnel_per_port_owned_by_the_service():
    svc = service(annotations={POOL_ANNOTATION: "eu", BANDWIDTH_ANNOTATION: "10M"})
    manifests = build_service_tunnels(svc, request_of(svc))
    by_name = {m["metadata"]["name"]: m for m in manifests}
    assert set(by_name) == {"web-80-tcp", "web-53-udp"}
    http = by_name["web-80-tcp"]
    assert http["metadata"]["namespace"] == "shop"
    assert http["metadata"]["labels"][SERVICE_LABEL] == "web"
    assert http["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "0f6e2a9c-uid",
         "controller": True}
    ]  # fmt: skip
    assert http["spec"] == {
        "protocol": "tcp",
        "remotePort": 80,
        # The Service by its name and its own port: that is where its cluster IP listens.
        "client": {"type": "InCluster", "target": {"service": "web", "port": 80}},
        "relay": {"pool": "eu"},
        "bandwidth": "10M",
    }
    assert by_name["web-53-udp"]["spec"]["protocol"] == "udp"
    assert by_name["web-53-udp"]["spec"]["client"]["target"] == {"service": "web", "port": 53}
    for manifest in manifests:
        Tunnel.model_validate(manifest)  # what the API server will be asked to store


def test_placement_annotations_become_spec_relay():
    svc = service(
        annotations={
            RELAY_NODE_ANNOTATION: "edge-1",
            NODE_SELECTOR_ANNOTATION: "region=eu, tier = paid",
        }
    )
    assert request_of(svc).placement == {
        "node": "edge-1",
        "nodeSelector": {"region": "eu", "tier": "paid"},
    }
    assert request_of(service()).placement == {}


def test_sctp_is_refused_and_the_other_ports_served():
    svc = service([{"name": "sig", "port": 3868, "protocol": "SCTP"}, {"name": "web", "port": 80}])
    request = request_of(svc)
    assert [t.name for t in request.tunnels] == ["web-80-tcp"]  # protocol defaults to TCP
    (refused,) = request.refused
    assert refused.reason == "UnsupportedProtocol"
    assert "3868/SCTP (sig)" in refused.message and "TCP and UDP" in refused.message


def test_source_ranges_restrict_tcp_ports_and_refuse_udp_ones():
    svc = service(loadBalancerSourceRanges=["203.0.113.7/24", "2001:db8::/32"])
    request = request_of(svc)
    # Host bits cleared, as a Tunnel wants them (the API server lets the Service keep them).
    assert request.source_ranges == ("2001:db8::/32", "203.0.113.0/24")
    assert [t.name for t in request.tunnels] == ["web-80-tcp"]
    (refused,) = request.refused
    assert refused.reason == "SourceRangesUnsupported" and "53/UDP (dns)" in refused.message
    (tunnel,) = build_service_tunnels(svc, request)
    assert tunnel["spec"]["allowSourceRanges"] == ["2001:db8::/32", "203.0.113.0/24"]


def test_source_ranges_follow_kubernetes_rules():
    # The annotation counts only without the field; 0.0.0.0/0 means everyone.
    annotated = service(annotations={SOURCE_RANGES_ANNOTATION: "10.0.0.0/8, 192.168.0.0/16"})
    assert request_of(annotated).source_ranges == ("10.0.0.0/8", "192.168.0.0/16")
    both = service(
        annotations={SOURCE_RANGES_ANNOTATION: "10.0.0.0/8"},
        loadBalancerSourceRanges=["198.51.100.0/24"],
    )
    assert request_of(both).source_ranges == ("198.51.100.0/24",)
    everyone = service(loadBalancerSourceRanges=["0.0.0.0/0", "10.0.0.0/8"])
    assert request_of(everyone).source_ranges == ()
    assert len(request_of(everyone).tunnels) == 2  # udp too: nothing to restrict


@pytest.mark.parametrize(
    ("annotations", "named", "allowed"),
    [
        ({POOL_ANNOTATION: "EU_pool"}, POOL_ANNOTATION, "DNS-1035 label"),
        ({RELAY_NODE_ANNOTATION: "-edge"}, RELAY_NODE_ANNOTATION, "DNS-1035 label"),
        ({NODE_SELECTOR_ANNOTATION: "region"}, NODE_SELECTOR_ANNOTATION, "key=value pairs"),
        ({NODE_SELECTOR_ANNOTATION: "region!=eu"}, NODE_SELECTOR_ANNOTATION, "key=value"),
        ({NODE_SELECTOR_ANNOTATION: "a=x y"}, NODE_SELECTOR_ANNOTATION, "label values"),
        ({NODE_SELECTOR_ANNOTATION: "a=1,a=2"}, NODE_SELECTOR_ANNOTATION, "twice"),
        ({BANDWIDTH_ANNOTATION: "10 Mbps"}, BANDWIDTH_ANNOTATION, "like '10M'"),
        ({BANDWIDTH_ANNOTATION: "0"}, BANDWIDTH_ANNOTATION, "greater than zero"),
        ({SOURCE_RANGES_ANNOTATION: "10.0.0.0/8,lan"}, SOURCE_RANGES_ANNOTATION, "CIDR"),
    ],
)
def test_a_bad_annotation_is_named_with_what_it_may_be(annotations, named, allowed):
    (problem,) = problems_of(service(annotations=annotations))
    assert problem.startswith(f"annotation {named}: "), problem
    assert allowed in problem


def test_every_bad_annotation_is_named_at_once():
    problems = problems_of(
        service(annotations={POOL_ANNOTATION: "A", BANDWIDTH_ANNOTATION: "fast"}, ports=[])
    )
    assert [p.split(":")[0] for p in problems] == [
        f"annotation {POOL_ANNOTATION}",
        f"annotation {BANDWIDTH_ANNOTATION}",
        "spec.ports",
    ]


# ---- names -----------------------------------------------------------------------------

service_names = st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
protocols = st.sampled_from(["tcp", "udp"])
port_numbers = st.integers(min_value=1, max_value=65535)


@given(service_names, port_numbers, protocols)
def test_a_tunnel_name_is_a_short_dns_label_and_stable(name, port, protocol):
    made = tunnel_name(name, port, protocol)
    assert len(made) <= TUNNEL_NAME_MAX and DNS_LABEL.fullmatch(made)
    assert made.endswith(f"-{port}-{protocol}")
    assert made == tunnel_name(name, port, protocol)
    if len(name) <= TUNNEL_NAME_MAX - len(f"-{port}-{protocol}"):
        assert made == f"{name}-{port}-{protocol}"


@given(st.lists(st.tuples(service_names, port_numbers, protocols), min_size=2, unique=True))
def test_no_two_ports_of_any_services_share_a_tunnel_name(ports):
    names = [tunnel_name(*p) for p in ports]
    assert len(set(names)) == len(names)


# ---- never a crash -----------------------------------------------------------------------

annotation_values = sometimes(
    st.one_of(label, st.sampled_from(["10M", "500k", "region=eu", "a=b,c=d", "10.0.0.0/8"])),
    st.text(max_size=30),
)
ports_lists = st.lists(
    sometimes(
        st.fixed_dictionaries(
            {"port": sometimes(port_numbers, st.sampled_from([0, 70000, "80", True]))},
            optional={
                "name": label,
                "protocol": st.sampled_from(["TCP", "UDP", "SCTP", "tcp", ""]),
                "targetPort": st.one_of(port_numbers, label),
            },
        ),
        junk,
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    annotations=st.dictionaries(
        st.sampled_from(
            [
                POOL_ANNOTATION,
                RELAY_NODE_ANNOTATION,
                NODE_SELECTOR_ANNOTATION,
                BANDWIDTH_ANNOTATION,
                SOURCE_RANGES_ANNOTATION,
                "other.example/x",
            ]
        ),
        annotation_values,
    ),
    ports=sometimes(ports_lists, junk) | st.just([{"port": 80}, {"port": 80, "protocol": "TCP"}]),
    ranges=sometimes(st.lists(st.sampled_from(["10.1.2.3/8", "::/0", "x", ""])), junk),
    name=service_names,
)
def test_any_service_gets_tunnels_that_validate_or_named_problems(annotations, ports, ranges, name):
    svc = service(ports, annotations, name=name, loadBalancerSourceRanges=ranges)
    try:
        request = request_of(svc)
    except InvalidService as invalid:
        assert invalid.problems
        for problem in invalid.problems:
            assert problem.startswith(
                ("annotation tunnelop.dev/", "annotation service.beta", "spec.")
            )
            assert "\n" not in problem
        return
    for manifest in build_service_tunnels(svc, request):
        Tunnel.model_validate(manifest)
    served = {t.service_port for t in request.tunnels} | {r.service_port for r in request.refused}
    assert len(served) == len(request.tunnels) + len(request.refused)


# ---- Tunnels -> status and Events --------------------------------------------------------


def tunnel_body(ready: bool, relay: str | None = "edge-1", scheduled: dict | None = None) -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "reason": "X"}]
    if scheduled:
        conditions.append({"type": "Scheduled", "observedGeneration": 1, **scheduled})
    return {
        "metadata": {"generation": 1},
        "status": {"relayNode": relay, "conditions": conditions},
    }


def test_ingress_is_the_relays_address_once_tunnels_are_ready():
    request = request_of(service())
    addresses = {"edge-1": "203.0.113.7", "edge-2": "relay2.example.com"}
    assert load_balancer_status(request, {}, addresses) == {}
    not_yet = {"web-80-tcp": tunnel_body(False), "web-53-udp": tunnel_body(False)}
    assert load_balancer_status(request, not_yet, addresses) == {}
    ready = {"web-80-tcp": tunnel_body(True), "web-53-udp": tunnel_body(True)}
    assert load_balancer_status(request, ready, addresses) == {
        "ingress": [
            {
                "ip": "203.0.113.7",
                "ipMode": "Proxy",
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}],
            }
        ]
    }
    split = {"web-80-tcp": tunnel_body(True), "web-53-udp": tunnel_body(True, "edge-2")}
    assert load_balancer_status(request, split, addresses)["ingress"] == [
        {"ip": "203.0.113.7", "ipMode": "Proxy", "ports": [{"port": 80, "protocol": "TCP"}]},
        {"hostname": "relay2.example.com", "ports": [{"port": 53, "protocol": "UDP"}]},
    ]
    # A relay without a public address yet is left out.
    assert load_balancer_status(request, ready, {}) == {}


def test_a_port_the_relay_cannot_give_is_reported_once_per_reason():
    request = request_of(service())
    taken = {"status": "False", "reason": "PortTaken", "message": "port 80 is held by a/b"}
    tunnels = {
        "web-80-tcp": tunnel_body(False, None, taken),
        "web-53-udp": tunnel_body(True, scheduled={"status": "True", "reason": "Scheduled"}),
    }
    problems = port_problems(request, tunnels)
    assert list(problems) == ["web-80-tcp"]
    (problem,) = to_report(problems, {})
    assert problem.reason == "PortTaken"
    assert problem.event_message() == (
        "port 80/TCP (http) (Tunnel web-80-tcp): port 80 is held by a/b"
    )
    assert to_report(problems, {"web-80-tcp": "PortTaken"}) == []
    assert to_report(problems, {"web-80-tcp": "QuotaExceeded"}) == [problem]
    # A condition about an older spec says nothing about the current one.
    stale = tunnel_body(False, None, taken)
    stale["metadata"]["generation"] = 2
    assert port_problems(request, {"web-80-tcp": stale}) == {}


def test_the_documented_example_gets_the_documented_tunnels():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "loadbalancer.md").read_text()
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))
    example["metadata"]["uid"] = "example-uid"
    assert is_relay_load_balancer(example)
    manifests = build_service_tunnels(example, request_of(example))
    assert sorted(m["metadata"]["name"] for m in manifests) == ["game-19132-udp", "game-25565-tcp"]
    for manifest in manifests:
        tunnel = Tunnel.model_validate(manifest)
        assert tunnel.spec.relay.pool == "eu-free" and tunnel.spec.bandwidth == "20M"
