"""Hypothesis strategies for API objects: plausible values with invalid ones and junk mixed
in, shared by the model, webhook and API-server property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Values of the wrong type that a YAML file can hold.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def sometimes(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy:
    """Mostly plausible values, with invalid ones and junk mixed in."""
    return st.one_of(valid, valid, invalid, junk)


label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
bad_label = st.sampled_from(["", "-a", "a-", "UPPER", "under_score", "dot.ted", "x" * 64, "ü"])
dns_name = st.lists(label, min_size=1, max_size=4).map(".".join)
bad_dns_name = st.sampled_from(
    ["*.example.com", "Example.com", "example.com.", "a..b", "a b.com", "x" * 254, ""]
)
ports = st.integers(min_value=1, max_value=65535)
bad_ports = st.sampled_from([0, -1, 65536, 10**9, "80", 80.5, True])
quantity = st.builds(
    lambda n, frac, suffix: f"{n}{frac}{suffix}",
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", ".5", ".25", ".001"]),
    st.sampled_from(["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "E", "Ei"]),
)
bad_quantity = st.sampled_from(
    ["10m", "10K", "10Mbps", "10 M", "-5", "1e3", "", "M", "1.", ".5", "9" * 40, "99E", "0"]
)
cidr = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f"{ip}/32"),
    st.ip_addresses(v=6).map(lambda ip: f"{ip}/128"),
    st.sampled_from(["10.0.0.0/8", "0.0.0.0/0", "2001:db8::/32", "::/0"]),
)
bad_cidr = st.sampled_from(
    ["10.0.0.1/8", "10.0.0.0", "10.0.0.0/33", "010.0.0.0/8", "::ffff:1.2.3.4/128", "fe80::/10%x"]
)
name_1035 = st.from_regex(r"[a-z]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
label_map = st.dictionaries(label, label, max_size=3)
bad_label_map = st.sampled_from([{"a": 1}, {"bad key!": "v"}, {"k": "bad value!"}, ["a"]])

tunnel_specs = st.fixed_dictionaries(
    {
        "protocol": sometimes(
            st.sampled_from(["tcp", "udp", "http", "https"]), st.sampled_from(["TCP", "ftp", ""])
        )
    },
    optional={
        "remotePort": sometimes(ports, bad_ports),
        "subdomain": sometimes(label, bad_label),
        "customDomains": sometimes(
            st.lists(dns_name, max_size=3), st.lists(bad_dns_name, min_size=1, max_size=2)
        ),
        "relay": sometimes(
            st.fixed_dictionaries(
                {},
                optional={"pool": name_1035, "node": name_1035, "nodeSelector": label_map},
            ),
            st.fixed_dictionaries({}, optional={"pool": bad_label, "nodeSelector": bad_label_map}),
        ),
        "bandwidth": sometimes(
            st.one_of(quantity, st.integers(min_value=1, max_value=10**12)), bad_quantity
        ),
        "allowSourceRanges": sometimes(
            st.lists(cidr, max_size=3), st.lists(bad_cidr, min_size=1, max_size=2)
        ),
        "suspended": sometimes(st.booleans(), st.sampled_from(["true", 1, "yes"])),
        "client": sometimes(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["External", "InCluster"])},
                optional={"target": st.fixed_dictionaries({"service": name_1035, "port": ports})},
            ),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["external", "Pod", ""])},
                optional={
                    "target": st.fixed_dictionaries({"service": bad_label, "port": bad_ports})
                },
            ),
        ),
        "unknownField": st.just(1),
    },
)


port_items = st.lists(
    sometimes(
        st.one_of(
            ports, ports.map(str), st.tuples(ports, ports).map(lambda p: f"{min(p)}-{max(p)}")
        ),
        st.sampled_from(["0-10", "20-10", "1-70000", "a-b", "80-", "-80", " 80", 0]),
    ),
    max_size=3,
)
relay_specs = st.fixed_dictionaries(
    {
        "ports": sometimes(
            st.fixed_dictionaries(
                {
                    "range": sometimes(
                        st.sampled_from(["20000-29999", "1-65535", "80-80"]),
                        st.sampled_from(["29999-20000", "0-100", "80", "1-65536"]),
                    )
                },
                optional={"reserved": port_items, "blocked": port_items},
            ),
            st.just({}),
        )
    },
    optional={
        "protocols": sometimes(
            st.lists(st.sampled_from(["tcp", "udp", "http", "https"]), min_size=1, max_size=4),
            st.sampled_from([[], ["ftp"], ["tcp", "tcp"]]),
        ),
        "httpDomain": sometimes(dns_name, bad_dns_name),
        "capacity": st.fixed_dictionaries(
            {},
            optional={
                "tunnels": sometimes(st.integers(0, 10**4), st.just(-1)),
                "bandwidth": sometimes(quantity, bad_quantity),
            },
        ),
        "exposure": st.fixed_dictionaries(
            {},
            optional={
                "type": sometimes(
                    st.sampled_from(["LoadBalancer", "NodePort", "HostNetwork"]), st.just("Ingress")
                ),
                "address": sometimes(st.one_of(dns_name, st.ip_addresses().map(str)), bad_dns_name),
            },
        ),
        "unschedulable": sometimes(st.booleans(), st.just("no")),
    },
)


quota_specs = st.fixed_dictionaries(
    {},
    optional={
        "hard": st.fixed_dictionaries(
            {},
            optional={
                "tunnels": sometimes(st.integers(0, 100), st.just(-1)),
                "bandwidthPerTunnel": sometimes(quantity, bad_quantity),
                "totalBandwidth": sometimes(st.integers(0, 10**9), bad_quantity),
                "monthlyTraffic": sometimes(quantity, bad_quantity),
                "protocols": sometimes(
                    st.lists(
                        st.sampled_from(["tcp", "udp", "http", "https"]), max_size=2, unique=True
                    ),
                    st.just(["tcp", "tcp"]),
                ),
                "pools": sometimes(
                    st.lists(name_1035, max_size=2, unique=True),
                    st.lists(bad_label, min_size=1, max_size=1),
                ),
            },
        ),
        "suspended": sometimes(st.booleans(), st.just("false")),
    },
)
