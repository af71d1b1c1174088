"""The API models accept what the architecture promises and reject the rest with messages
that name the field and the allowed values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tunnelop.api.v1alpha1 import (
    API_VERSION,
    Condition,
    PortSpan,
    RelayNode,
    RelayPool,
    Tunnel,
    TunnelQuota,
    bits_per_second,
    byte_count,
    error_messages,
    find_condition,
    format_quantity,
    merge_spans,
    parse_object,
    parse_port_span,
)


def tunnel(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Tunnel", "metadata": {"name": "t"}, "spec": spec}


def relay_node(name: str = "relay-1", **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", {"range": "20000-29999"})
    return {
        "apiVersion": API_VERSION,
        "kind": "RelayNode",
        "metadata": {"name": name},
        "spec": spec,
    }


def messages(model: type, obj: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(obj)
    return error_messages(caught.value)


# Tunnel --------------------------------------------------------------------------------------


def test_minimal_tunnel_gets_defaults() -> None:
    parsed = Tunnel.model_validate(tunnel(protocol="tcp"))
    assert parsed.spec.protocol == "tcp"
    assert parsed.spec.client.type == "External"
    assert parsed.spec.suspended is False
    assert parsed.spec.remote_port is None and parsed.spec.bandwidth_bps is None
    assert parsed.status.conditions == []


def test_json_names_are_camel_case_as_in_the_architecture() -> None:
    parsed = Tunnel.model_validate(
        tunnel(
            protocol="tcp",
            remotePort=25565,
            relay={"pool": "free", "node": "relay-1", "nodeSelector": {"region": "eu"}},
            bandwidth="10M",
            allowSourceRanges=["203.0.113.0/24"],
            suspended=True,
        )
    )
    dumped = parsed.model_dump(mode="json", exclude_unset=True)
    assert set(dumped["spec"]) == {
        "protocol",
        "remotePort",
        "relay",
        "bandwidth",
        "allowSourceRanges",
        "suspended",
    }
    assert dumped["spec"]["relay"]["nodeSelector"] == {"region": "eu"}
    assert parsed.spec.bandwidth_bps == 10_000_000


def test_tunnel_status_fields() -> None:
    status = {
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "message": "visitors can connect",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "relayNode": "relay-1",
        "remotePort": 20001,
        "endpoint": "relay-1.example.com:20001",
        "credentialsSecret": "t-frpc",
        "traffic": {
            "bytesIn": 10,
            "bytesOut": 20,
            "activeConnections": 1,
            "lastSeen": "2025-01-01T00:00:05Z",
        },
    }
    parsed = Tunnel.model_validate({**tunnel(protocol="tcp"), "status": status})
    ready = find_condition(parsed.status.conditions, "Ready")
    assert ready is not None and ready.status == "True"
    assert parsed.status.traffic.bytes_out == 20
    assert parsed.model_dump(mode="json", exclude_unset=True)["status"] == status


def test_remote_port_only_for_tcp_and_udp() -> None:
    assert Tunnel.model_validate(tunnel(protocol="udp", remotePort=51820)).spec.remote_port == 51820
    assert messages(Tunnel, tunnel(protocol="http", remotePort=80)) == [
        "spec.remotePort: only allowed when spec.protocol is tcp or udp, got protocol 'http'"
    ]


def test_subdomain_and_custom_domains_only_for_http_and_https() -> None:
    Tunnel.model_validate(tunnel(protocol="https", subdomain="blog", customDomains=["a.example"]))
    assert messages(
        Tunnel, tunnel(protocol="tcp", subdomain="blog", customDomains=["a.example"])
    ) == [
        "spec.subdomain: only allowed when spec.protocol is http or https, got protocol 'tcp'",
        "spec.customDomains: only allowed when spec.protocol is http or https, got protocol 'tcp'",
    ]
    # An empty list says nothing, whatever the protocol.
    Tunnel.model_validate(tunnel(protocol="tcp", customDomains=[]))


@pytest.mark.parametrize("protocol", ["TCP", "ftp", "", 6])
def test_protocol_names_the_allowed_values(protocol: Any) -> None:
    (message,) = messages(Tunnel, tunnel(protocol=protocol))
    assert message.startswith("spec.protocol: ")
    assert all(p in message for p in ("'tcp'", "'udp'", "'http'", "'https'"))


def test_protocol_is_required() -> None:
    assert messages(Tunnel, tunnel()) == ["spec.protocol: required field is missing"]


@pytest.mark.parametrize("port", [0, 65536, -1, "80", True, 80.0])
def test_remote_port_range_and_type(port: Any) -> None:
    (message,) = messages(Tunnel, tunnel(protocol="tcp", remotePort=port))
    assert message.startswith("spec.remotePort: must be a port number")


@pytest.mark.parametrize(
    ("subdomain", "hint"),
    [
        ("Blog", "use lowercase"),
        ("my_site", "'-' instead of '_'"),
        ("a.b", "without dots"),
        ("x" * 64, "at most 63"),
    ],
)
def test_subdomain_is_a_dns_label(subdomain: str, hint: str) -> None:
    (message,) = messages(Tunnel, tunnel(protocol="http", subdomain=subdomain))
    assert message.startswith("spec.subdomain: must be a DNS label")
    assert hint in message


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("*.example.com", "wildcards are not supported"),
        ("Example.com", "use lowercase"),
        ("example.com.", "without the trailing dot"),
        ("a..b", "must be a DNS name"),
    ],
)
def test_custom_domains_are_dns_names_without_wildcards(domain: str, expected: str) -> None:
    (message,) = messages(Tunnel, tunnel(protocol="https", customDomains=["ok.example", domain]))
    assert message.startswith("spec.customDomains[1]: ")
    assert expected in message


def test_custom_domains_must_not_repeat() -> None:
    assert messages(Tunnel, tunnel(protocol="https", customDomains=["a.example", "a.example"])) == [
        "spec.customDomains: must not repeat entries, got 'a.example' more than once"
    ]


@pytest.mark.parametrize(
    ("value", "bps"),
    [
        ("10M", 10**7),
        ("500k", 500_000),
        ("1G", 10**9),
        ("1.5G", 1_500_000_000),
        ("1Mi", 2**20),
        (2048, 2048),
    ],
)
def test_bandwidth_is_a_quantity_of_bits_per_second(value: Any, bps: int) -> None:
    assert Tunnel.model_validate(tunnel(protocol="tcp", bandwidth=value)).spec.bandwidth_bps == bps
    assert bits_per_second(value) == bps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10m", "'m' means milli (1/1000), write 'M' for mega"),
        ("10K", "write 'k' for kilo"),
        ("10Mbps", "the unit is implied"),
        ("0", "must be greater than zero"),
        (0, "must be greater than zero"),
        ("0.5", "whole number of bits per second"),
        ("1.5Ki", "binary suffix"),
        (-1, "must not be negative"),
        (1.5, "must be an integer or a string like '10M'"),
        (True, "must be an integer or a string"),
        ("10E", "must be at most"),
    ],
)
def test_bandwidth_errors_explain_the_format(value: Any, expected: str) -> None:
    (message,) = messages(Tunnel, tunnel(protocol="tcp", bandwidth=value))
    assert message.startswith("spec.bandwidth: ")
    assert expected in message


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("10.0.0.1/8", "did you mean '10.0.0.0/8'?"),
        ("203.0.113.7", "write '203.0.113.7/32'"),
        ("2001:db8::1", "write '2001:db8::1/128'"),
        ("10.0.0.0/33", "must be a CIDR"),
        ("010.0.0.0/8", "must be a CIDR"),
        ("nonsense", "must be a CIDR"),
    ],
)
def test_allow_source_ranges_are_cidrs(cidr: str, expected: str) -> None:
    (message,) = messages(Tunnel, tunnel(protocol="tcp", allowSourceRanges=[cidr]))
    assert message.startswith("spec.allowSourceRanges[0]: ")
    assert expected in message


@pytest.mark.parametrize("protocol", ["tcp", "https"])
def test_allow_source_ranges_accept_ipv4_and_ipv6(protocol: str) -> None:
    ranges = ["203.0.113.0/24", "2001:db8::/32", "0.0.0.0/0", "198.51.100.7/32"]
    spec = Tunnel.model_validate(tunnel(protocol=protocol, allowSourceRanges=ranges)).spec
    assert spec.allow_source_ranges == ranges


@pytest.mark.parametrize("protocol", ["udp", "http"])
def test_allow_source_ranges_are_refused_where_the_relay_cannot_check_them(protocol: str) -> None:
    """frps asks the agent about each tcp and https connection only: a range on udp or http
    would be a promise nobody keeps."""
    (message,) = messages(Tunnel, tunnel(protocol=protocol, allowSourceRanges=["10.0.0.0/8"]))
    assert message.startswith(
        "spec.allowSourceRanges: only allowed when spec.protocol is tcp or https, "
        f"got protocol '{protocol}': "
    )
    assert Tunnel.model_validate(tunnel(protocol=protocol, allowSourceRanges=[])).spec


def test_in_cluster_client_needs_a_target_and_external_refuses_one() -> None:
    target = {"service": "web", "port": 8080}
    ok = Tunnel.model_validate(
        tunnel(protocol="http", client={"type": "InCluster", "target": target})
    )
    assert ok.spec.client.target is not None and ok.spec.client.target.port == 8080
    assert messages(Tunnel, tunnel(protocol="http", client={"type": "InCluster"})) == [
        "spec.client.target: required when spec.client.type is InCluster"
    ]
    assert messages(Tunnel, tunnel(protocol="http", client={"target": target})) == [
        "spec.client.target: only allowed when spec.client.type is InCluster, got type 'External'"
    ]
    (message,) = messages(Tunnel, tunnel(protocol="tcp", client={"type": "Pod"}))
    assert message == "spec.client.type: Input should be 'External' or 'InCluster'"


def test_client_target_is_a_service_and_port() -> None:
    result = messages(
        Tunnel,
        tunnel(
            protocol="tcp", client={"type": "InCluster", "target": {"service": "Web", "port": 0}}
        ),
    )
    assert result[0].startswith("spec.client.target.service: must be a DNS-1035 label")
    assert result[1].startswith("spec.client.target.port: must be a port number within 1-65535")


def test_unknown_fields_are_named() -> None:
    assert messages(Tunnel, tunnel(protocol="tcp", remoteport=80)) == [
        "spec.remoteport: unknown field (field names are camelCase; see `kubectl explain`)"
    ]


def test_null_reads_as_omitted_as_in_the_api_server() -> None:
    parsed = Tunnel.model_validate(
        tunnel(protocol="tcp", remotePort=None, customDomains=None, relay=None)
    )
    assert parsed.spec.remote_port is None and parsed.spec.custom_domains == []


def test_strict_types() -> None:
    result = messages(Tunnel, tunnel(protocol="tcp", suspended="yes"))
    assert result == ["spec.suspended: Input should be a valid boolean"]


def test_wrong_kind_or_version() -> None:
    obj = {**tunnel(protocol="tcp"), "apiVersion": "tunnelop.dev/v1"}
    assert messages(Tunnel, obj) == ["apiVersion: Input should be 'tunnelop.dev/v1alpha1'"]
    with pytest.raises(
        ValueError, match="kind: must be one of Tunnel, RelayNode, RelayPool, TunnelQuota"
    ):
        parse_object({**obj, "kind": "Tunel"})


# RelayNode -----------------------------------------------------------------------------------


def test_relay_node_defaults() -> None:
    node = RelayNode.model_validate(relay_node())
    assert node.spec.protocols == ["tcp", "udp"]
    assert node.spec.exposure.type == "LoadBalancer"
    assert node.spec.unschedulable is False
    assert node.spec.ports.span() == PortSpan(20000, 29999)


def test_relay_ports_reserved_and_blocked() -> None:
    node = RelayNode.model_validate(
        relay_node(
            ports={"range": "20000-20009", "reserved": [20001, "20002-20003"], "blocked": ["20008"]}
        )
    )
    ports = node.spec.ports
    assert ports.reserved_spans() == [PortSpan(20001, 20003)]  # merged
    assert ports.blocked_spans() == [PortSpan(20008, 20008)]


@pytest.mark.parametrize(
    ("port_range", "expected"),
    [
        (
            "29999-20000",
            "the first port must not be greater than the last, got '29999-20000' (did you mean '20000-29999'?)",
        ),
        ("0-100", "ports must be within 1-65535, got '0-100'"),
        ("1-65536", "ports must be within 1-65535, got '1-65536'"),
        ("8080", "must be a range like '20000-29999', got '8080'"),
        (8080, "must be a range like '20000-29999' (a string), got 8080"),
        ("a-b", "must be a range like '20000-29999', got 'a-b'"),
    ],
)
def test_port_range_is_well_formed(port_range: Any, expected: str) -> None:
    assert messages(RelayNode, relay_node(ports={"range": port_range})) == [
        f"spec.ports.range: {expected}"
    ]


def test_port_range_is_required() -> None:
    assert messages(RelayNode, relay_node(ports={})) == [
        "spec.ports.range: required field is missing"
    ]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (0, "must be a port number within 1-65535, got 0"),
        ("70000", "ports must be within 1-65535, got '70000'"),
        ("30-20", "the first port must not be greater than the last"),
        ("20-", "must be a port like 8080 or a range like '20000-29999', got '20-'"),
        (1.5, "must be a port like 8080 or a range like '20000-29999', got float"),
    ],
)
def test_reserved_and_blocked_items_are_ports_or_ranges(item: Any, expected: str) -> None:
    for field in ("reserved", "blocked"):
        (message,) = messages(RelayNode, relay_node(ports={"range": "1-2", field: [80, item]}))
        assert message.startswith(f"spec.ports.{field}[1]: {expected}")


def test_protocols_are_unique_known_and_http_needs_a_domain() -> None:
    (message,) = messages(RelayNode, relay_node(protocols=["tcp", "tcp"]))
    assert message == "spec.protocols: must not repeat entries, got 'tcp' more than once"
    (message,) = messages(RelayNode, relay_node(protocols=["quic"]))
    assert message.startswith("spec.protocols[0]: Input should be 'tcp', 'udp', 'http' or 'https'")
    assert messages(RelayNode, relay_node(protocols=["tcp", "http"])) == [
        "spec.httpDomain: required when protocols include http or https, got protocols ['tcp', 'http']"
    ]
    node = RelayNode.model_validate(relay_node(protocols=["http"], httpDomain="relay.example.com"))
    assert node.spec.http_domain == "relay.example.com"


def test_exposure_and_template() -> None:
    node = RelayNode.model_validate(
        relay_node(
            exposure={"type": "HostNetwork", "address": "2001:db8::10"},
            capacity={"tunnels": 0, "bandwidth": "1G"},
            template={
                "images": {"frps": "example.org/frps:v0.71.0"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "relay", "operator": "Exists"}],
                "resources": {"limits": {"memory": "256Mi"}},
            },
        )
    )
    assert node.spec.capacity_bps == 10**9
    assert node.spec.template.tolerations[0]["operator"] == "Exists"
    (message,) = messages(RelayNode, relay_node(exposure={"type": "Ingress"}))
    assert (
        message == "spec.exposure.type: Input should be 'LoadBalancer', 'NodePort' or 'HostNetwork'"
    )
    (message,) = messages(RelayNode, relay_node(exposure={"address": "relay_1.example.com"}))
    assert message.startswith("spec.exposure.address: must be an IP address or a DNS name")
    (message,) = messages(RelayNode, relay_node(template={"nodeSelector": {"bad key!": "x"}}))
    assert message.startswith("spec.template.nodeSelector: label keys are")


@pytest.mark.parametrize("name", ["Relay-1", "1relay", "relay.one", "r" * 58])
def test_relay_node_names_are_dns_1035_labels(name: str) -> None:
    (message,) = messages(RelayNode, relay_node(name=name))
    assert message.startswith("metadata.name: must be a DNS-1035 label: at most 57")


# RelayPool -----------------------------------------------------------------------------------


def pool(**spec: Any) -> dict[str, Any]:
    spec.setdefault("template", {"spec": {"ports": {"range": "40000-44999"}}})
    return {
        "apiVersion": API_VERSION,
        "kind": "RelayPool",
        "metadata": {"name": "free"},
        "spec": spec,
    }


def test_relay_pool() -> None:
    parsed = RelayPool.model_validate(
        pool(
            replicas=3,
            autoscaling={"maxReplicas": 5},
            template={
                "metadata": {"labels": {"tier": "free"}},
                "spec": {"ports": {"range": "1-9"}},
            },
        )
    )
    assert parsed.spec.replicas == 3
    assert parsed.spec.autoscaling is not None
    assert (parsed.spec.autoscaling.min_replicas, parsed.spec.autoscaling.target_utilization) == (
        1,
        80,
    )
    assert parsed.spec.template.spec.protocols == ["tcp", "udp"]
    status = RelayPool.model_validate(
        {
            **pool(),
            "status": {"replicas": 2, "readyReplicas": 1, "selector": "tunnelop.dev/pool=free"},
        }
    ).status
    assert status.selector == "tunnelop.dev/pool=free"


def test_relay_pool_autoscaling_bounds() -> None:
    assert messages(RelayPool, pool(autoscaling={"minReplicas": 4, "maxReplicas": 2})) == [
        "spec.autoscaling.maxReplicas: must be greater than or equal to minReplicas (4), got 2"
    ]
    (message,) = messages(RelayPool, pool(autoscaling={"maxReplicas": 2, "targetUtilization": 150}))
    assert (
        message == "spec.autoscaling.targetUtilization: Input should be less than or equal to 100"
    )


def test_relay_pool_template_is_a_relay_node_spec() -> None:
    (message,) = messages(RelayPool, pool(template={"spec": {"ports": {"range": "9-1"}}}))
    assert message.startswith("spec.template.spec.ports.range: the first port must not be greater")


# TunnelQuota ---------------------------------------------------------------------------------


def quota(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TunnelQuota",
        "metadata": {"name": "q"},
        "spec": spec,
    }


def test_tunnel_quota() -> None:
    parsed = TunnelQuota.model_validate(
        quota(
            hard={
                "tunnels": 2,
                "bandwidthPerTunnel": "10M",
                "totalBandwidth": 20_000_000,
                "monthlyTraffic": "100Gi",
                "protocols": ["tcp"],
                "pools": ["free"],
            }
        )
    )
    hard = parsed.spec.hard
    assert byte_count(hard.monthly_traffic) == 100 * 2**30
    assert hard.protocols == ["tcp"] and hard.pools == ["free"]
    assert parsed.spec.suspended is False
    # Omitted limits do not apply; an empty list allows nothing.
    assert TunnelQuota.model_validate(quota()).spec.hard.protocols is None
    assert TunnelQuota.model_validate(quota(hard={"protocols": []})).spec.hard.protocols == []
    status = TunnelQuota.model_validate(
        {
            **quota(),
            "status": {
                "used": {"tunnels": 1, "bandwidth": "10M", "traffic": "3Gi"},
                "periodStart": "2025-01-01T00:00:00Z",
            },
        }
    ).status
    assert status.used.traffic == "3Gi" and status.period_start is not None


def test_tunnel_quota_errors() -> None:
    result = messages(
        TunnelQuota,
        quota(hard={"tunnels": -1, "monthlyTraffic": "100GB", "protocols": ["tcp", "tcp"]}),
    )
    assert result[0] == "spec.hard.tunnels: Input should be greater than or equal to 0"
    assert result[1].startswith(
        "spec.hard.monthlyTraffic: must be a quantity of bytes like '100Gi'"
    )
    assert result[2] == "spec.hard.protocols: must not repeat entries, got 'tcp' more than once"


# Helpers -------------------------------------------------------------------------------------


def test_quantity_helpers() -> None:
    assert byte_count("1.5G") == 1_500_000_000
    assert format_quantity(10_000_000) == "10M"
    assert format_quantity(3 * 2**30, binary=True) == "3Gi"
    assert format_quantity(1234) == "1234"
    assert format_quantity(0) == "0"


def test_port_span_helpers() -> None:
    assert parse_port_span(80) == PortSpan(80, 80)
    assert parse_port_span("80-90") == PortSpan(80, 90)
    assert len(PortSpan(1, 10)) == 10 and 5 in PortSpan(1, 10) and str(PortSpan(7, 7)) == "7"
    assert merge_spans([PortSpan(4, 6), PortSpan(1, 2), PortSpan(3, 3), PortSpan(10, 12)]) == [
        PortSpan(1, 6),
        PortSpan(10, 12),
    ]


def test_condition_model() -> None:
    condition = Condition.model_validate(
        {"type": "Ready", "status": "False", "reason": "NoRelayAvailable"}
    )
    assert condition.reason == "NoRelayAvailable"
    with pytest.raises(ValidationError):
        Condition.model_validate({"type": "Ready", "status": "Maybe"})
