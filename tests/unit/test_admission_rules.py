"""The webhook's relay-dependent rules, as pure functions: what is denied, what is admitted,
and that generated input never makes them raise."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.strategies import junk, sometimes, tunnel_specs
from tunnelop.api.v1alpha1 import PortSpan, Tunnel
from tunnelop.domain.admission import (
    HostClaim,
    SubdomainClaim,
    possible_http_domains,
    review,
    subdomain_hosts,
)
from tunnelop.domain.relayview import RelayView

TCP = RelayView(
    name="tcp-1",
    labels={"region": "eu"},
    port_range=PortSpan(20000, 20999),
    reserved=(PortSpan(20001, 20001),),
    blocked=(PortSpan(20100, 20199),),
)
WEB = RelayView(
    name="web-1",
    labels={"region": "us", "tunnelop.dev/pool": "web"},
    protocols=("tcp", "http", "https"),
    port_range=PortSpan(21000, 21999),
    http_domain="web.example.com",
)
RELAYS = [TCP, WEB]


def tunnel(spec: Any, namespace: str = "tenant", name: str = "t") -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_free_choice_is_admitted() -> None:
    assert review(tunnel({"protocol": "tcp"}), None, RELAYS, []) == []
    assert review(tunnel({"protocol": "tcp", "remotePort": 21150}), None, RELAYS, []) == []


def test_reserved_and_blocked_ports_are_named_with_the_reason() -> None:
    [reserved] = review(
        tunnel({"protocol": "tcp", "remotePort": 20001, "relay": {"node": "tcp-1"}}),
        None,
        RELAYS,
        [],
    )
    assert reserved.startswith("spec.remotePort: 20001 ") and "tcp-1: reserved" in reserved
    [blocked] = review(tunnel({"protocol": "udp", "remotePort": 20150}), None, RELAYS, [])
    assert (
        "tcp-1: blocked" in blocked
        and "20000-20999 except reserved 20001 and blocked 20100-20199" in blocked
    )


def test_protocol_must_be_offered_by_a_matching_relay() -> None:
    [denial] = review(
        tunnel({"protocol": "http", "relay": {"nodeSelector": {"region": "eu"}}}), None, RELAYS, []
    )
    assert denial.startswith("spec.protocol: 'http'") and "tcp, udp" in denial
    assert review(tunnel({"protocol": "http", "relay": {"pool": "web"}}), None, RELAYS, []) == []


def test_no_matching_relay_is_left_to_the_scheduler() -> None:
    assert (
        review(tunnel({"protocol": "https", "relay": {"node": "elsewhere"}}), None, RELAYS, [])
        == []
    )


def test_subdomain_is_unique_per_http_domain_across_namespaces() -> None:
    claim = SubdomainClaim("other", "site", "blog", frozenset({"web.example.com"}))
    [denial] = review(tunnel({"protocol": "http", "subdomain": "blog"}), None, RELAYS, [claim])
    assert denial.startswith("spec.subdomain: 'blog'") and "other/site" not in denial
    assert "by a tunnel of another namespace" in denial
    # The same tunnel re-applied holds its own claim; another domain does not conflict.
    assert (
        review(
            tunnel({"protocol": "http", "subdomain": "blog"}, "other", "site"),
            None,
            RELAYS,
            [claim],
        )
        == []
    )
    elsewhere = SubdomainClaim("other", "site", "blog", frozenset({"other.example.com"}))
    assert (
        review(tunnel({"protocol": "http", "subdomain": "blog"}), None, RELAYS, [elsewhere]) == []
    )


def test_a_custom_domain_another_tunnel_asks_for_is_denied() -> None:
    claim = HostClaim("alice", "shop", "www.shop.test")
    spec = {"protocol": "https", "customDomains": ["ok.test", "www.shop.test"]}
    [denial] = review(tunnel(spec, "bob", "mine"), None, RELAYS, [], [claim])
    assert denial.startswith("spec.customDomains: 'www.shop.test' is already asked for")
    assert "alice/shop" not in denial and "a tunnel of another namespace" in denial
    # The tunnel's own claim, re-applied: admitted; so is an update that keeps the name.
    assert review(tunnel(spec, "alice", "shop"), None, RELAYS, [], [claim]) == []
    suspended = tunnel({**spec, "suspended": True}, "bob", "mine")
    assert review(suspended, tunnel(spec, "bob", "mine"), RELAYS, [], [claim]) == []
    # Even where no relay matches spec.relay: the name is cluster-wide.
    nowhere = tunnel({**spec, "relay": {"node": "elsewhere"}}, "bob", "mine")
    assert len(review(nowhere, None, RELAYS, [], [claim])) == 1


def test_a_custom_domain_under_any_relays_http_domain_is_denied() -> None:
    for domain in ("web.example.com", "blog.web.example.com"):
        # Placed on the tcp relay, where web.example.com is not even served: still the provider's.
        spec = {"protocol": "http", "customDomains": [domain], "relay": {"node": "tcp-1"}}
        denials = review(tunnel(spec), None, RELAYS, [])
        assert denials[0].startswith(f"spec.customDomains: {domain!r} is under web.example.com")
        assert "use spec.subdomain instead" in denials[0]
    assert (
        review(tunnel({"protocol": "http", "customDomains": ["example.com"]}), None, RELAYS, [])
        == []
    )


def test_a_subdomain_making_another_tunnels_custom_domain_is_denied() -> None:
    claim = HostClaim("alice", "shop", "blog.web.example.com")
    spec = {"protocol": "http", "subdomain": "blog"}
    [denial] = review(tunnel(spec, "bob", "b"), None, RELAYS, [], [claim])
    assert denial.startswith("spec.subdomain: 'blog' makes blog.web.example.com")
    assert "alice/shop" not in denial and "a tunnel of another namespace" in denial
    parsed = Tunnel.model_validate(tunnel(spec)).spec
    assert subdomain_hosts(parsed, RELAYS) == ["blog.web.example.com"]


def test_update_is_judged_only_on_what_changed() -> None:
    old = tunnel({"protocol": "tcp", "remotePort": 20150})  # admitted before 20150 was blocked
    suspended = tunnel({"protocol": "tcp", "remotePort": 20150, "suspended": True})
    assert review(suspended, old, RELAYS, []) == []
    moved = tunnel({"protocol": "tcp", "remotePort": 20160})
    assert review(moved, old, RELAYS, [])[0].startswith("spec.remotePort")


def test_schema_errors_are_reported_too() -> None:
    [denial] = review(tunnel({"protocol": "tcp", "remotePort": 0}), None, RELAYS, [])
    assert denial.startswith("spec.remotePort:")


def test_http_domains_follow_placement() -> None:
    spec = Tunnel.model_validate(tunnel({"protocol": "http"})).spec
    assert possible_http_domains(spec, RELAYS) == {"web.example.com"}


relay_views = st.builds(
    lambda name, first, size, protocols, domain, region: RelayView(
        name=name,
        labels={"region": region},
        protocols=tuple(protocols),
        port_range=PortSpan(first, min(65535, first + size)),
        reserved=(PortSpan(first, first),),
        http_domain=domain,
    ),
    st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True),
    st.integers(1, 65535),
    st.integers(0, 2000),
    st.lists(st.sampled_from(["tcp", "udp", "http", "https"]), min_size=1, max_size=4, unique=True),
    st.one_of(st.none(), st.sampled_from(["a.example.com", "b.example.com"])),
    st.sampled_from(["eu", "us"]),
)
claims = st.lists(
    st.builds(
        SubdomainClaim,
        st.sampled_from(["a", "b"]),
        st.sampled_from(["x", "y"]),
        st.sampled_from(["blog", "shop", "www"]),
        st.frozensets(st.sampled_from(["a.example.com", "b.example.com"])),
    ),
    max_size=4,
)
host_claims = st.lists(
    st.builds(
        HostClaim,
        st.sampled_from(["a", "b"]),
        st.sampled_from(["x", "y"]),
        st.sampled_from(["www.example.org", "blog.a.example.com", "a.example.com"]),
    ),
    max_size=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=sometimes(tunnel_specs, junk),
    old_spec=st.one_of(st.none(), tunnel_specs),
    relays=st.lists(relay_views, max_size=4),
    held=claims,
    hosts=host_claims,
)
def test_generated_tunnels_are_admitted_or_denied_cleanly(
    spec, old_spec, relays, held, hosts
) -> None:
    old = tunnel(old_spec) if old_spec is not None else None
    denials = review(tunnel(spec), old, relays, held, hosts)
    assert isinstance(denials, list)
    for denial in denials:
        assert isinstance(denial, str) and "\n" not in denial and "Traceback" not in denial
        field, _, message = denial.partition(": ")
        assert field and message, denial  # "<field path>: <what is wrong>"
