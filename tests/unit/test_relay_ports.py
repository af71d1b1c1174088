"""The ports a tunnel may have on a relay, checked against what the relay is built of.

For random RelayNodes whose range covers the ports the relay uses itself, the ports the
scheduler hands out must be exactly those frps.toml allows, and never one the relay listens
on. The expectations come from the built artifacts (frps.toml, Deployment, Service), not from
the rule in RelayView, so a listener added to a builder but not to the rule fails here.
"""

from __future__ import annotations

import itertools
import tomllib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from support.objects import relay_own_ports
from tunnelop.api.v1alpha1 import API_VERSION, RelayNode
from tunnelop.builders import build_deployment, build_frps_config, build_service
from tunnelop.domain.admission import review
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import Allocation, AllocationTable, TunnelRequest, Unschedulable

# Ports a relay may use itself, under some exposure and protocols: the ranges are drawn around
# them. (Test data only: which of them a given relay uses is read from its artifacts.)
NEAR = (80, 443, 7000, 7400, 7401, 7500, 8080, 8443)
EXPOSURES = ("LoadBalancer", "NodePort", "HostNetwork")


@st.composite
def relay_nodes(draw: st.DrawFn) -> RelayNode:
    anchor = draw(st.sampled_from(NEAR))
    first = max(1, anchor - draw(st.integers(0, 500)))
    # Up to ~2,000 ports: enough for 7000-8443 in one range, small enough to fill quickly.
    last = min(65535, anchor + draw(st.integers(0, 1500)))

    whole = f"{first}-{last}"

    def holes() -> list[int | str]:
        start = st.integers(max(1, first - 20), min(65535, last + 20))
        run = st.builds(lambda a, width: f"{a}-{min(65535, a + width)}", start, st.integers(0, 80))
        items = draw(st.lists(st.one_of(start, run), max_size=4))
        if draw(st.integers(0, 19)) == 0:
            items.append(whole)  # now and then nothing is left to allocate
        return items

    protocols = draw(
        st.lists(st.sampled_from(["tcp", "udp", "http", "https"]), min_size=1, unique=True)
    )
    spec: dict[str, Any] = {
        "ports": {
            "range": f"{first}-{last}",
            "reserved": holes(),
            "blocked": holes(),
        },
        "protocols": protocols,
        "exposure": {"type": draw(st.sampled_from(EXPOSURES))},
    }
    if {"http", "https"} & set(protocols):
        spec["httpDomain"] = "r.example.com"
    return RelayNode.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "RelayNode",
            "metadata": {"name": "r1", "uid": "uid-r1"},
            "spec": spec,
        }
    )


# What the artifacts say ------------------------------------------------------------------------


def frps_config(node: RelayNode) -> dict[str, Any]:
    return tomllib.loads(
        build_frps_config(node, token="t", dashboard_password="p", plugin_password="pp")
    )


def allow_ports(config: dict[str, Any]) -> set[int]:
    """allowPorts of frps.toml, singles and ranges expanded."""
    ports: set[int] = set()
    for entry in config["allowPorts"]:
        if "single" in entry:
            ports.add(entry["single"])
        else:
            ports.update(range(entry["start"], entry["end"] + 1))
    return ports


def listen_ports(node: RelayNode, config: dict[str, Any]) -> set[int]:
    """Every port the relay uses itself, from its frps.toml, its Deployment (container ports,
    the agent's listen flags) and its Service without tunnel ports."""
    deployment = build_deployment(node, "ns", config_checksum="c")
    service = build_service(node, "ns", allocated_ports=[])
    return relay_own_ports(config, deployment, service)


def handed_out(view: RelayView, protocol: str) -> set[int]:
    """Every port the scheduler gives tunnels without a remotePort, until it refuses one."""
    table = AllocationTable()
    table.upsert_relay(view)
    ports: set[int] = set()
    for n in itertools.count():
        result = table.schedule(TunnelRequest(("ns", f"t{n}"), protocol))
        if isinstance(result, Unschedulable):
            return ports
        assert result.port not in ports
        ports.add(result.port)
    raise AssertionError("unreachable")


# Properties --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(node=relay_nodes())
def test_scheduler_hands_out_exactly_what_frps_allows_and_no_relay_port(node: RelayNode) -> None:
    config = frps_config(node)
    allowed_by_frps = allow_ports(config)
    own = listen_ports(node, config)
    view = RelayView.from_model(node)
    for protocol in ("tcp", "udp"):
        ports = handed_out(view, protocol)
        if protocol not in node.spec.protocols:
            assert ports == set()
            continue
        if ports:
            assert ports == allowed_by_frps, protocol
        else:
            # Nothing to hand out: frps allows only its own bindPort, as an empty allowPorts
            # would mean "every port".
            assert allowed_by_frps == {config["bindPort"]}
        assert not ports & own, f"{protocol}: relay ports handed out: {sorted(ports & own)}"


@settings(max_examples=100, deadline=None)
@given(node=relay_nodes())
def test_allow_ports_are_the_range_minus_reserved_blocked_and_relay_ports(node: RelayNode) -> None:
    ports = node.spec.ports
    config = frps_config(node)
    holes = [*ports.reserved_spans(), *ports.blocked_spans()]
    own = listen_ports(node, config)
    expected = {p for p in ports.span() if not any(p in hole for hole in holes) and p not in own}
    if node.spec.exposure.type == "NodePort":  # a tunnel's port is its node port
        expected &= set(range(30000, 32768))
    assert allow_ports(config) == (expected or {config["bindPort"]})
    assert RelayView.from_model(node).allowed_port_count() == len(expected)


@settings(max_examples=100, deadline=None)
@given(node=relay_nodes())
def test_admission_refuses_every_relay_port_naming_it(node: RelayNode) -> None:
    view = RelayView.from_model(node)
    config = frps_config(node)
    in_range = sorted(p for p in listen_ports(node, config) if p in node.spec.ports.span())
    for port in in_range:
        manifest = {
            "apiVersion": API_VERSION,
            "kind": "Tunnel",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"protocol": "tcp", "remotePort": port},
        }
        denials = review(manifest, None, [view], [])
        [denial] = [d for d in denials if d.startswith("spec.remotePort:")]
        assert denial.startswith(f"spec.remotePort: {port} ")
        assert "the relay's own port (" in denial


# Examples ------------------------------------------------------------------------------------------


def view(**fields: Any) -> RelayView:
    return RelayView.from_model(
        RelayNode.model_validate(
            {
                "apiVersion": API_VERSION,
                "kind": "RelayNode",
                "metadata": {"name": "r1"},
                "spec": fields,
            }
        )
    )


def test_refusals_say_what_the_relay_uses_the_port_for() -> None:
    relay = view(
        ports={"range": "1-9999", "reserved": [7000, 22]},
        protocols=["tcp", "http", "https"],
        httpDomain="r.example.com",
    )
    assert (
        relay.port_refusal(7000) == "the relay's own port (frps control port, where frpc logs in)"
    )
    assert "frps vhost port for http tunnels" in (relay.port_refusal(8080) or "")
    assert "relay's Service for https tunnels" in (relay.port_refusal(443) or "")
    assert relay.port_refusal(22) == "reserved"
    assert relay.port_refusal(10000) == "outside 1-9999"
    assert relay.port_refusal(8081) is None
    assert relay.describe_ports() == (
        "1-9999 except the relay's own ports 80, 443, 7000, 7400, 7401, 7500, 8080, 8443 "
        "and reserved 22, 7000"
    )


def test_relay_ports_follow_exposure_and_protocols() -> None:
    def refused(**fields: Any) -> set[int]:
        relay = view(ports={"range": "1-9999"}, **fields)
        return {p for p in (80, 443, 7000, 7400, 7401, 7500, 8080, 8443) if relay.port_refusal(p)}

    web = {"protocols": ["tcp", "http", "https"], "httpDomain": "r.example.com"}
    assert refused() == {7000, 7400, 7401, 7500}
    assert refused(**web) == {80, 443, 7000, 7400, 7401, 7500, 8080, 8443}
    # On the Node's network frps serves http(s) on 80/443 itself, and no Service maps ports.
    assert refused(exposure={"type": "HostNetwork"}, **web) == {80, 443, 7000, 7400, 7401, 7500}
    assert refused(exposure={"type": "HostNetwork"}) == {7000, 7400, 7401, 7500}


def test_offering_http_later_moves_a_tunnel_off_the_vhost_port() -> None:
    """Relay ports depend on the protocols: when http is enabled, a tunnel holding 8080 must
    move, and 8080 is no longer handed out."""
    table = AllocationTable()
    table.upsert_relay(view(ports={"range": "8080-8081"}))
    first = table.schedule(TunnelRequest(("ns", "a"), "tcp"))
    assert isinstance(first, Allocation) and first.port == 8080
    table.upsert_relay(
        view(ports={"range": "8080-8081"}, protocols=["tcp", "http"], httpDomain="r.example.com")
    )
    assert table.misplaced() == [first]
    assert "the relay's own port" in (table.misplacement(first.key) or "")
    table.release(first.key)
    ports = {table.schedule(TunnelRequest(("ns", n), "tcp")) for n in ("b", "c")}
    assert {a.port for a in ports if isinstance(a, Allocation)} == {8081}
