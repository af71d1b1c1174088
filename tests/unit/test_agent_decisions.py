"""The relay agent's answers to frps's server-plugin calls (tunnelop.agent.decisions) and the
allocation-table index they consult (tunnelop.agent.index).

Requests are shaped like frps v0.71 sends them: Login carries `user` and `metas` at the top,
NewProxy / Ping / NewUserConn / CloseProxy carry them under `user`. Every accept and reject
path is covered, rejection reasons are checked to say what to change, and property tests feed
`decide` arbitrary JSON and other tenants' allocations.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelop.agent.decisions import (
    CAUSES,
    CLOSE_PROXY,
    LOGIN,
    NEW_PROXY,
    NEW_USER_CONN,
    PING,
    Decision,
    accept,
    decide,
    frp_bandwidth,
    reject,
    visitor_address,
)
from tunnelop.agent.index import TableIndex, proxy_name, split_proxy_name
from tunnelop.contract.table import TableEntry, token_sha256

RELAY = "relay-a"
# The one answer to a client whose tunnel is unknown or whose token is wrong.
REFUSED = (
    "credentials refused by relay relay-a: use the current frpc.toml from your Tunnel's "
    "credentials Secret (<tunnel>-frpc)"
)
OPS = (LOGIN, NEW_PROXY, PING, NEW_USER_CONN, CLOSE_PROXY)
GATED_OPS = (LOGIN, NEW_PROXY, PING, NEW_USER_CONN)

# Long random-looking tokens: no hypothesis draw comes up with one of these.
TOKENS = {
    "team-a/ssh": "tok-3f9c2a71d04e4b6f8e15c0a9b7d2e6f1-ssh",
    "team-a/game": "tok-8b1e5d93a2c74f06b9d3e7a1c5f0e284-game",
    "team-b/web": "tok-c6a04f2e9d1b47e3a85f6b0d2c9e7a13-web",
    "team-b/limited": "tok-5e7d1c3b9a0f42d6be81c4a7f3e92d05-limited",
    "team-c/frozen": "tok-a9f2e6d0c3b1475e8d6c2f0b4a7e1d39-frozen",
    "team-c/office": "tok-1d4b8e2f6c0a49d3a7e5b1c9f3d08e62-office",
}


def entry(key: str, protocol: str, **fields: Any) -> TableEntry:
    namespace, name = key.split("/")
    return TableEntry(
        namespace=namespace,
        name=name,
        token_sha256=token_sha256(TOKENS[key]),
        protocol=protocol,
        **fields,
    )


ENTRIES = (
    entry("team-a/ssh", "tcp", remote_port=21000),
    entry("team-a/game", "udp", remote_port=27015),
    entry("team-b/web", "http", subdomain="web-team-b", custom_domains=("www.example.com",)),
    entry(
        "team-b/limited",
        "tcp",
        remote_port=21001,
        bandwidth_bps=10_000_000,
        allow_source_ranges=("10.0.0.0/8", "2001:db8::/32"),
    ),
    entry("team-c/frozen", "tcp", remote_port=21002, suspended=True),
    entry("team-c/office", "https", subdomain="office", allow_source_ranges=("192.168.1.7",)),
)

INDEX = TableIndex.build(RELAY, ENTRIES)


# ---- request builders, shaped like frps v0.71 -------------------------------------------------


def metas(key: str, token: str | None = None) -> dict[str, str]:
    return {"token": TOKENS[key] if token is None else token, "tunnel": key}


def user_info(key: str, *, user: str | None = None, token: str | None = None) -> dict[str, Any]:
    return {
        "user": key.split("/")[0] if user is None else user,
        "metas": metas(key, token),
        "run_id": "8d2f0c1a9b7e",
    }


def login_content(key: str, *, user: str | None = None, token: str | None = None) -> dict:
    return {
        "version": "0.71.0",
        "hostname": "",
        "os": "linux",
        "arch": "amd64",
        "user": key.split("/")[0] if user is None else user,
        "privilege_key": "0123abcd",
        "timestamp": 1_700_000_000,
        "metas": metas(key, token),
        "run_id": "8d2f0c1a9b7e",
        "pool_count": 1,
        "client_address": "127.0.0.1:5555",
    }


def new_proxy_content(key: str, proxy_type: str, **fields: Any) -> dict[str, Any]:
    namespace, name = key.split("/")
    content: dict[str, Any] = {
        "user": user_info(key),
        "proxy_name": f"{namespace}.{name}",
        "proxy_type": proxy_type,
        "use_encryption": False,
        "use_compression": False,
        "bandwidth_limit": "",
        "bandwidth_limit_mode": "",
        "metas": None,
        "remote_port": 0,
        "custom_domains": None,
        "subdomain": "",
    }
    content.update(fields)
    return content


def ping_content(key: str, **user: Any) -> dict[str, Any]:
    return {"user": user_info(key, **user), "timestamp": 0, "privilege_key": ""}


def user_conn_content(proxy: str, remote_addr: str, key: str = "team-a/ssh") -> dict[str, Any]:
    return {
        "user": user_info(key),
        "proxy_name": proxy,
        "proxy_type": "tcp",
        "remote_addr": remote_addr,
    }


def close_content(proxy: str, key: str = "team-a/ssh") -> dict[str, Any]:
    return {"user": user_info(key), "proxy_name": proxy}


def reason(decision: Decision) -> str:
    assert decision.rejected, decision.response
    return decision.response["reject_reason"]


def assert_plain_accept(decision: Decision) -> None:
    assert decision.response == {"reject": False, "unchange": True}
    assert not decision.rejected


# ---- the index --------------------------------------------------------------------------------


def test_index_keys_tunnels_by_namespace_slash_name_and_proxies_by_frps_name() -> None:
    assert len(INDEX) == len(ENTRIES)
    assert INDEX.relay == RELAY
    assert set(INDEX.by_tunnel) == set(TOKENS)
    assert INDEX.by_proxy["team-a.ssh"] is INDEX.by_tunnel["team-a/ssh"]
    allowed = INDEX.by_tunnel["team-b/web"]
    assert allowed.key == "team-b/web"
    assert allowed.proxy_name == "team-b.web"
    assert allowed.entry is ENTRIES[2]


def test_index_parses_source_ranges_non_strictly_and_single_addresses_as_hosts() -> None:
    index = TableIndex.build(
        RELAY,
        [entry("team-a/ssh", "tcp", remote_port=1, allow_source_ranges=("10.1.2.3/8", "::1"))],
    )
    assert index.by_tunnel["team-a/ssh"].networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert INDEX.by_tunnel["team-a/ssh"].networks == ()


def test_empty_index() -> None:
    index = TableIndex.build(RELAY, [])
    assert len(index) == 0
    decision = decide(index, LOGIN, login_content("team-a/ssh"))
    assert reason(decision) == REFUSED
    assert decision.cause == "unknown_tunnel"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ns.tunnel", ("ns", "tunnel")),
        ("ns.my.dotted.tunnel", ("ns", "my.dotted.tunnel")),
        ("nodot", None),
        (".tunnel", None),
        ("ns.", None),
        ("", None),
    ],
)
def test_split_proxy_name(name: str, expected: tuple[str, str] | None) -> None:
    assert split_proxy_name(name) == expected


@given(
    namespace=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    tunnel=st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True),
)
def test_proxy_name_splits_back_for_dns_names(namespace: str, tunnel: str) -> None:
    assert split_proxy_name(proxy_name(namespace, tunnel)) == (namespace, tunnel)


# ---- response shape ---------------------------------------------------------------------------


def test_accept_and_reject_serialise_with_json_booleans() -> None:
    accepted = json.dumps(accept("ns/t").response)
    assert '"reject": false' in accepted
    assert '"unchange": true' in accepted
    rejected = json.dumps(reject("because", "ns/t").response)
    assert '"reject": true' in rejected
    assert '"unchange": true' in rejected
    assert '"reject_reason": "because"' in rejected


def test_decisions_from_decide_serialise_with_json_booleans() -> None:
    ok = json.dumps(decide(INDEX, LOGIN, login_content("team-a/ssh")).response)
    assert '"reject": false' in ok
    refused = json.dumps(decide(INDEX, LOGIN, login_content("team-a/ssh", token="x")).response)
    assert '"reject": true' in refused
    forced = json.dumps(
        decide(
            INDEX, NEW_PROXY, new_proxy_content("team-b/limited", "tcp", remote_port=21001)
        ).response
    )
    assert '"reject": false' in forced
    assert '"unchange": false' in forced


# ---- Login ------------------------------------------------------------------------------------


def test_login_with_valid_credentials_is_accepted_and_marks_the_client_alive() -> None:
    decision = decide(INDEX, LOGIN, login_content("team-a/ssh"))
    assert_plain_accept(decision)
    assert decision.tunnel == "team-a/ssh"
    assert decision.client_alive
    assert decision.proxy_online is None


@pytest.mark.parametrize(
    "bad_metas",
    [
        None,
        {},
        "token=x",
        ["team-a/ssh"],
        {"tunnel": "team-a/ssh"},
        {"token": TOKENS["team-a/ssh"]},
        {"tunnel": "", "token": TOKENS["team-a/ssh"]},
        {"tunnel": "team-a/ssh", "token": ""},
        {"tunnel": "team-a/ssh", "token": 12345},
        {"tunnel": ["team-a/ssh"], "token": TOKENS["team-a/ssh"]},
    ],
)
def test_login_without_usable_metas_is_rejected_pointing_at_the_credentials_secret(
    bad_metas: Any,
) -> None:
    content = login_content("team-a/ssh")
    content["metas"] = bad_metas
    decision = decide(INDEX, LOGIN, content)
    text = reason(decision)
    assert "metadatas.tunnel" in text
    assert "metadatas.token" in text
    assert "-frpc" in text
    assert decision.tunnel is None
    assert not decision.client_alive


def test_login_without_metas_key_is_rejected() -> None:
    content = login_content("team-a/ssh")
    del content["metas"]
    assert "metadatas.token" in reason(decide(INDEX, LOGIN, content))


def test_login_for_a_tunnel_not_on_this_relay_gets_the_credentials_answer() -> None:
    content = login_content("team-a/ssh")
    content["metas"]["tunnel"] = "team-a/elsewhere"
    decision = decide(INDEX, LOGIN, content)
    assert reason(decision) == REFUSED
    assert "elsewhere" not in reason(decision)
    assert decision.cause == "unknown_tunnel"
    # The relay's log has the precise reason.
    assert decision.detail == "tunnel team-a/elsewhere is not on relay relay-a"
    assert decision.tunnel == "team-a/elsewhere"
    assert not decision.client_alive


def test_login_with_wrong_token_gets_the_same_answer_as_an_unknown_tunnel() -> None:
    decision = decide(INDEX, LOGIN, login_content("team-a/ssh", token="guess"))
    assert reason(decision) == REFUSED
    assert decision.cause == "bad_token"
    assert decision.detail is not None and "Secret ssh-frpc" in decision.detail
    assert decision.tunnel == "team-a/ssh"
    assert not decision.client_alive


def test_login_with_another_tunnels_token_is_rejected() -> None:
    content = login_content("team-a/ssh", token=TOKENS["team-a/game"])
    decision = decide(INDEX, LOGIN, content)
    assert (reason(decision), decision.cause) == (REFUSED, "bad_token")


def test_login_token_is_compared_as_sha256_not_as_digest() -> None:
    # The table holds the digest; presenting the digest itself must not work.
    content = login_content("team-a/ssh", token=token_sha256(TOKENS["team-a/ssh"]))
    assert decide(INDEX, LOGIN, content).cause == "bad_token"


def test_an_unknown_tunnel_costs_a_digest_and_a_constant_time_compare_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No timing tells a stranger whether a tunnel exists: both paths hash the token and
    # compare it in constant time.
    from tunnelop.agent import decisions

    calls: list[str] = []
    real_digest, real_compare = decisions.token_sha256, decisions.hmac.compare_digest
    monkeypatch.setattr(
        decisions, "token_sha256", lambda t: calls.append("digest") or real_digest(t)
    )
    monkeypatch.setattr(
        decisions.hmac,
        "compare_digest",
        lambda a, b: calls.append("compare") or real_compare(a, b),
    )
    unknown = login_content("team-a/ssh")
    unknown["metas"]["tunnel"] = "team-a/elsewhere"
    decide(INDEX, LOGIN, unknown)
    on_unknown = list(calls)
    calls.clear()
    decide(INDEX, LOGIN, login_content("team-a/ssh", token="guess"))
    assert on_unknown == calls == ["digest", "compare"]


@pytest.mark.parametrize("user", ["team-b", "", None, "TEAM-A", 7])
def test_login_as_a_user_other_than_the_namespace_says_which_user_to_set(user: Any) -> None:
    content = login_content("team-a/ssh")
    content["user"] = user
    decision = decide(INDEX, LOGIN, content)
    text = reason(decision)
    assert "set user = 'team-a'" in text
    assert repr(user) in text
    assert decision.tunnel == "team-a/ssh"


def test_login_of_a_suspended_tunnel_is_rejected() -> None:
    decision = decide(INDEX, LOGIN, login_content("team-c/frozen"))
    assert "tunnel team-c/frozen is suspended (spec.suspended)" == reason(decision)
    assert decision.tunnel == "team-c/frozen"
    assert not decision.client_alive


def test_wrong_token_is_reported_before_suspension() -> None:
    # A stranger learns nothing about the tunnel's state without its token.
    decision = decide(INDEX, LOGIN, login_content("team-c/frozen", token="guess"))
    assert (reason(decision), decision.cause) == (REFUSED, "bad_token")


def test_login_with_unencodable_token_is_rejected_as_malformed() -> None:
    # json.loads accepts lone surrogates ("\ud800"), which str.encode refuses.
    content = json.loads(json.dumps(login_content("team-a/ssh")).replace("tok-3f9c", "\\ud800"))
    assert reason(decide(INDEX, LOGIN, content)).startswith("malformed Login request")


# ---- NewProxy ---------------------------------------------------------------------------------


def test_tcp_proxy_on_its_allocated_port_is_accepted_unchanged() -> None:
    decision = decide(INDEX, NEW_PROXY, new_proxy_content("team-a/ssh", "tcp", remote_port=21000))
    assert_plain_accept(decision)
    assert decision.tunnel == "team-a/ssh"
    assert decision.client_alive
    assert decision.proxy_online is True


def test_udp_proxy_on_its_allocated_port_is_accepted() -> None:
    content = new_proxy_content("team-a/game", "udp", remote_port=27015)
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_http_proxy_with_its_subdomain_is_accepted() -> None:
    content = new_proxy_content("team-b/web", "http", subdomain="web-team-b")
    decision = decide(INDEX, NEW_PROXY, content)
    assert_plain_accept(decision)
    assert decision.proxy_online is True


def test_http_proxy_with_its_subdomain_and_custom_domain_is_accepted() -> None:
    content = new_proxy_content(
        "team-b/web", "http", subdomain="web-team-b", custom_domains=["www.example.com"]
    )
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_http_proxy_with_only_its_custom_domain_is_accepted() -> None:
    content = new_proxy_content("team-b/web", "http", custom_domains=["www.example.com"])
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_https_proxy_with_its_subdomain_is_accepted() -> None:
    content = new_proxy_content("team-c/office", "https", subdomain="office")
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_new_proxy_credentials_are_read_from_the_user_field() -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    # Proxy-level metas are the proxy's own, not credentials.
    content["metas"] = metas("team-a/ssh")
    content["user"]["metas"] = {}
    assert "metadatas.token" in reason(decide(INDEX, NEW_PROXY, content))


@pytest.mark.parametrize("user", [None, "team-a", ["team-a"], 3])
def test_new_proxy_without_a_user_object_is_rejected(user: Any) -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    content["user"] = user
    assert "metadatas.tunnel" in reason(decide(INDEX, NEW_PROXY, content))


def test_new_proxy_with_wrong_token_is_rejected() -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    content["user"] = user_info("team-a/ssh", token="guess")
    decision = decide(INDEX, NEW_PROXY, content)
    assert (reason(decision), decision.cause) == (REFUSED, "bad_token")


def test_new_proxy_of_wrong_user_is_rejected() -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    content["user"] = user_info("team-a/ssh", user="team-b")
    assert "set user = 'team-a'" in reason(decide(INDEX, NEW_PROXY, content))


def test_new_proxy_of_suspended_tunnel_is_rejected() -> None:
    content = new_proxy_content("team-c/frozen", "tcp", remote_port=21002)
    assert "is suspended" in reason(decide(INDEX, NEW_PROXY, content))


def test_new_proxy_for_a_tunnel_not_on_this_relay_is_rejected() -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    content["user"]["metas"]["tunnel"] = "team-z/ssh"
    decision = decide(INDEX, NEW_PROXY, content)
    assert (reason(decision), decision.cause) == (REFUSED, "unknown_tunnel")


@pytest.mark.parametrize("name", ["team-a.other", "ssh", "team-b.ssh", "", None])
def test_new_proxy_with_another_name_says_which_name_to_set(name: Any) -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000, proxy_name=name)
    decision = decide(INDEX, NEW_PROXY, content)
    text = reason(decision)
    assert "set name = 'ssh' under [[proxies]]" in text
    assert "'team-a.ssh'" in text  # what frps calls it
    assert repr(name) in text
    assert decision.tunnel == "team-a/ssh"
    assert decision.proxy_online is None


@pytest.mark.parametrize("proxy_type", ["udp", "stcp", "xtcp", "http", "", None])
def test_new_proxy_of_another_type_says_which_type_to_set(proxy_type: Any) -> None:
    content = new_proxy_content("team-a/ssh", proxy_type, remote_port=21000)
    text = reason(decide(INDEX, NEW_PROXY, content))
    assert "set type = 'tcp'" in text
    assert repr(proxy_type) in text


@pytest.mark.parametrize("port", [21001, 22, 0, None, "21000"])
def test_tcp_proxy_on_another_port_names_the_allocated_port(port: Any) -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=port)
    text = reason(decide(INDEX, NEW_PROXY, content))
    assert "allocated port 21000 on relay relay-a" in text
    assert "set remotePort = 21000" in text


def test_tcp_proxy_without_remote_port_is_rejected() -> None:
    content = new_proxy_content("team-a/ssh", "tcp")
    del content["remote_port"]
    assert "got remotePort 0" in reason(decide(INDEX, NEW_PROXY, content))


def test_udp_proxy_on_another_port_names_the_allocated_port() -> None:
    content = new_proxy_content("team-a/game", "udp", remote_port=27016)
    assert "set remotePort = 27015" in reason(decide(INDEX, NEW_PROXY, content))


def test_http_proxy_with_another_subdomain_names_the_allocated_one() -> None:
    content = new_proxy_content("team-b/web", "http", subdomain="office")
    text = reason(decide(INDEX, NEW_PROXY, content))
    assert "allocated subdomain 'web-team-b'" in text
    assert "got 'office'" in text
    assert "set subdomain = 'web-team-b'" in text


def test_http_proxy_with_a_foreign_custom_domain_names_it_and_the_allowed_ones() -> None:
    content = new_proxy_content(
        "team-b/web",
        "http",
        subdomain="web-team-b",
        custom_domains=["www.example.com", "bank.example.org"],
    )
    text = reason(decide(INDEX, NEW_PROXY, content))
    assert "may not serve bank.example.org" in text
    assert "www.example.com" in text.split(":", 1)[1]  # the allowed list


def test_https_proxy_with_any_custom_domain_when_none_are_allowed_says_none() -> None:
    content = new_proxy_content(
        "team-c/office", "https", subdomain="office", custom_domains=["office.example.com"]
    )
    text = reason(decide(INDEX, NEW_PROXY, content))
    assert "may not serve office.example.com" in text
    assert text.endswith("are none")


def test_http_proxy_with_neither_subdomain_nor_domains_says_which_subdomain() -> None:
    content = new_proxy_content("team-b/web", "http", subdomain="", custom_domains=[])
    assert "needs subdomain = 'web-team-b'" in reason(decide(INDEX, NEW_PROXY, content))


@pytest.mark.parametrize(("group", "group_key"), [("lb", ""), ("", "secret"), ("lb", "secret")])
def test_proxy_in_a_load_balancing_group_is_rejected(group: str, group_key: str) -> None:
    content = new_proxy_content(
        "team-a/ssh", "tcp", remote_port=21000, group=group, group_key=group_key
    )
    assert "remove group" in reason(decide(INDEX, NEW_PROXY, content))


def test_empty_group_fields_are_no_group() -> None:
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000, group="", group_key="")
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_new_proxy_with_unhashable_custom_domains_is_rejected_as_malformed() -> None:
    content = new_proxy_content("team-b/web", "http", subdomain="web-team-b")
    content["custom_domains"] = [["www.example.com"]]
    assert reason(decide(INDEX, NEW_PROXY, content)).startswith("malformed NewProxy request")


def test_bandwidth_is_forced_server_side_in_frps_units_keeping_the_rest() -> None:
    content = new_proxy_content(
        "team-b/limited",
        "tcp",
        remote_port=21001,
        bandwidth_limit="100MB",
        bandwidth_limit_mode="client",
        use_encryption=True,
    )
    original = json.loads(json.dumps(content))
    decision = decide(INDEX, NEW_PROXY, content)
    assert not decision.rejected
    assert decision.tunnel == "team-b/limited"
    assert decision.client_alive
    assert decision.proxy_online is True
    response = decision.response
    assert response["reject"] is False
    assert response["unchange"] is False
    forced = response["content"]
    assert forced["bandwidth_limit"] == "1221KB"  # 10_000_000 bit/s / 8 / 1024
    assert forced["bandwidth_limit_mode"] == "server"
    # The whole content goes back: every other field exactly as frps sent it.
    rest = {k: v for k, v in forced.items() if not k.startswith("bandwidth_limit")}
    assert rest == {k: v for k, v in original.items() if not k.startswith("bandwidth_limit")}
    assert content == original  # the request itself is left alone
    wire = json.dumps(response)
    assert '"unchange": false' in wire
    assert '"reject": false' in wire


def test_bandwidth_is_not_forced_on_a_rejected_proxy() -> None:
    content = new_proxy_content("team-b/limited", "tcp", remote_port=21000)
    decision = decide(INDEX, NEW_PROXY, content)
    assert "set remotePort = 21001" in reason(decision)
    assert "content" not in decision.response


@pytest.mark.parametrize(
    ("bits", "unit"),
    [
        (10_000_000, "1221KB"),
        (8 * 1024, "1KB"),
        (8 * 1024 * 100, "100KB"),
        (1_000_000_000, "122070KB"),
        (1, "1KB"),  # never 0KB: frps reads 0 as "no limit"
    ],
)
def test_frp_bandwidth(bits: int, unit: str) -> None:
    assert frp_bandwidth(bits) == unit


@given(st.integers(min_value=1, max_value=10**12))
def test_frp_bandwidth_is_the_nearest_whole_kib_per_second_and_at_least_one(bits: int) -> None:
    unit = frp_bandwidth(bits)
    assert unit.endswith("KB")
    kib = int(unit.removesuffix("KB"))
    assert kib >= 1
    assert abs(kib * 1024 * 8 - bits) <= max(4 * 1024, 8 * 1024 - bits)


# ---- Ping -------------------------------------------------------------------------------------


def test_ping_with_valid_credentials_is_accepted_and_marks_the_client_alive() -> None:
    decision = decide(INDEX, PING, ping_content("team-b/web"))
    assert_plain_accept(decision)
    assert decision.tunnel == "team-b/web"
    assert decision.client_alive
    assert decision.proxy_online is None


def test_ping_of_a_suspended_tunnel_is_rejected_so_frpc_is_kicked() -> None:
    decision = decide(INDEX, PING, ping_content("team-c/frozen"))
    assert "suspended" in reason(decision)
    assert not decision.client_alive


def test_ping_of_a_tunnel_that_left_the_relay_is_rejected() -> None:
    index = TableIndex.build(RELAY, [e for e in ENTRIES if e.name != "web"])
    decision = decide(index, PING, ping_content("team-b/web"))
    assert (reason(decision), decision.cause) == (REFUSED, "unknown_tunnel")


def test_ping_with_wrong_token_or_user_is_rejected() -> None:
    assert reason(decide(INDEX, PING, ping_content("team-b/web", token="x"))) == REFUSED
    assert "set user = 'team-b'" in reason(
        decide(INDEX, PING, ping_content("team-b/web", user="team-a"))
    )


def test_ping_without_user_is_rejected() -> None:
    assert "metadatas.token" in reason(decide(INDEX, PING, {"timestamp": 0, "privilege_key": ""}))


# ---- NewUserConn ------------------------------------------------------------------------------


def test_visitor_to_a_tunnel_without_source_ranges_is_accepted() -> None:
    decision = decide(INDEX, NEW_USER_CONN, user_conn_content("team-a.ssh", "203.0.113.9:40000"))
    assert_plain_accept(decision)
    assert decision.tunnel == "team-a/ssh"
    assert not decision.client_alive  # a visitor says nothing about the client
    assert decision.proxy_online is None


@pytest.mark.parametrize(
    "remote_addr",
    [
        "10.0.0.1:40000",
        "10.255.255.255:1",
        "[2001:db8::1]:5",
        "[2001:db8:ffff::]:65535",
        "[::ffff:10.1.2.3]:40000",  # IPv4-mapped: counts as 10.1.2.3
    ],
)
def test_visitor_inside_allow_source_ranges_is_accepted(remote_addr: str) -> None:
    content = user_conn_content("team-b.limited", remote_addr)
    decision = decide(INDEX, NEW_USER_CONN, content)
    assert_plain_accept(decision)
    assert decision.tunnel == "team-b/limited"


@pytest.mark.parametrize(
    "remote_addr",
    [
        "11.0.0.1:40000",
        "127.0.0.5:40000",
        "[::1]:5",
        "[2001:db9::1]:5",
        "[::ffff:192.168.1.1]:40000",
        "not-an-address",
        "",
        "10.0.0.1.5:1",
    ],
)
def test_visitor_outside_allow_source_ranges_is_rejected_naming_the_address(
    remote_addr: str,
) -> None:
    decision = decide(INDEX, NEW_USER_CONN, user_conn_content("team-b.limited", remote_addr))
    text = reason(decision)
    assert (
        f"visitor {remote_addr} is outside the allowSourceRanges of tunnel team-b/limited" == text
    )
    assert decision.tunnel == "team-b/limited"


def test_visitor_without_remote_addr_is_rejected_when_ranges_are_set() -> None:
    content = user_conn_content("team-b.limited", "10.0.0.1:1")
    del content["remote_addr"]
    assert "outside the allowSourceRanges" in reason(decide(INDEX, NEW_USER_CONN, content))


def test_single_address_source_range_admits_exactly_that_address() -> None:
    inside = user_conn_content("team-c.office", "192.168.1.7:443")
    outside = user_conn_content("team-c.office", "192.168.1.8:443")
    assert_plain_accept(decide(INDEX, NEW_USER_CONN, inside))
    assert decide(INDEX, NEW_USER_CONN, outside).rejected


def test_ipv6_loopback_visitor_matches_an_ipv6_range() -> None:
    index = TableIndex.build(
        RELAY, [entry("team-a/ssh", "tcp", remote_port=21000, allow_source_ranges=("::1/128",))]
    )
    assert_plain_accept(decide(index, NEW_USER_CONN, user_conn_content("team-a.ssh", "[::1]:5")))
    assert decide(index, NEW_USER_CONN, user_conn_content("team-a.ssh", "127.0.0.1:5")).rejected


def test_visitor_to_a_suspended_tunnel_is_rejected() -> None:
    decision = decide(INDEX, NEW_USER_CONN, user_conn_content("team-c.frozen", "10.0.0.1:1"))
    assert reason(decision) == "tunnel team-c/frozen is suspended"
    assert decision.tunnel == "team-c/frozen"


@pytest.mark.parametrize("proxy", ["team-a.nope", "team-a/ssh", "ssh", "", None, 5, ["team-a.ssh"]])
def test_visitor_to_an_unknown_proxy_is_rejected(proxy: Any) -> None:
    decision = decide(INDEX, NEW_USER_CONN, user_conn_content(proxy, "10.0.0.1:1"))
    assert reason(decision) == f"proxy {proxy!r} is not a tunnel of relay relay-a"
    assert decision.tunnel is None


@pytest.mark.parametrize(
    ("remote_addr", "expected"),
    [
        ("1.2.3.4:5678", ipaddress.IPv4Address("1.2.3.4")),
        ("[::1]:5", ipaddress.IPv6Address("::1")),
        ("[2001:db8::7]:443", ipaddress.IPv6Address("2001:db8::7")),
        ("[::ffff:1.2.3.4]:5", ipaddress.IPv4Address("1.2.3.4")),
        ("1.2.3.4", ipaddress.IPv4Address("1.2.3.4")),
        ("host.example:80", None),
        ("", None),
        (None, None),
        (1234, None),
    ],
)
def test_visitor_address(remote_addr: Any, expected: Any) -> None:
    assert visitor_address(remote_addr) == expected


# ---- CloseProxy and other ops -----------------------------------------------------------------


def test_close_proxy_is_noted_as_offline() -> None:
    decision = decide(INDEX, CLOSE_PROXY, close_content("team-a.ssh"))
    assert_plain_accept(decision)
    assert decision.tunnel == "team-a/ssh"
    assert decision.proxy_online is False
    assert not decision.client_alive


def test_close_proxy_of_suspended_or_unknown_tunnels_is_still_accepted() -> None:
    frozen = decide(INDEX, CLOSE_PROXY, close_content("team-c.frozen"))
    assert_plain_accept(frozen)
    assert frozen.tunnel == "team-c/frozen"
    unknown = decide(INDEX, CLOSE_PROXY, close_content("team-z.gone"))
    assert_plain_accept(unknown)
    assert unknown.tunnel is None
    assert unknown.proxy_online is False


@pytest.mark.parametrize("content", [None, [], "x", 3, {}, {"proxy_name": 3}])
def test_malformed_close_proxy_is_accepted(content: Any) -> None:
    decision = decide(INDEX, CLOSE_PROXY, content)
    assert_plain_accept(decision)
    assert decision.tunnel is None


@pytest.mark.parametrize("op", ["NewWorkConn", "", "login", "Unknown"])
def test_unknown_op_is_accepted_unchanged(op: str) -> None:
    decision = decide(INDEX, op, {"user": user_info("team-a/ssh")})
    assert_plain_accept(decision)
    assert decision.tunnel is None


@pytest.mark.parametrize("op", GATED_OPS)
@pytest.mark.parametrize("content", [None, [], "content", 0, True])
def test_gated_op_without_a_content_object_is_rejected(op: str, content: Any) -> None:
    assert reason(decide(INDEX, op, content)) == "malformed plugin request: no content"


# ---- properties -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


# Junk near frps's shape: real tunnel keys, tokens, users, proxy names and allocations mixed
# with arbitrary JSON, so that handlers get past their first checks (and sometimes all of them).
def mostly(usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` three times in four, else arbitrary JSON."""
    return st.sampled_from([usual, usual, usual, json_values]).flatmap(lambda chosen: chosen)


NAMESPACES = ("team-a", "team-b", "team-c")
near_values = st.one_of(
    json_values,
    st.sampled_from(sorted(TOKENS)),  # real tunnel keys
    st.sampled_from(NAMESPACES),
    st.sampled_from(sorted(INDEX.by_proxy)),
    st.sampled_from(["tcp", "udp", "http", "https"]),
    st.sampled_from([21000, 21001, 21002, 27015, "web-team-b", "office"]),
)
matched_metas = st.sampled_from(sorted(TOKENS)).map(lambda k: {"tunnel": k, "token": TOKENS[k]})
mixed_metas = st.fixed_dictionaries(
    {
        "tunnel": st.sampled_from([*sorted(TOKENS), "team-z/gone", ""]),
        "token": st.sampled_from([*sorted(TOKENS.values()), "guess", ""]),
    }
)
near_metas = mostly(st.one_of(matched_metas, mixed_metas))
near_user = st.fixed_dictionaries(
    {"user": mostly(st.sampled_from(NAMESPACES)), "metas": near_metas},
    optional={"run_id": near_values},
)
near_optional = {
    "proxy_name": mostly(st.sampled_from(sorted(INDEX.by_proxy))),
    "proxy_type": mostly(st.sampled_from(["tcp", "udp", "http", "https"])),
    "remote_port": mostly(st.sampled_from([0, 21000, 21001, 21002, 27015])),
    "subdomain": mostly(st.sampled_from(["", "web-team-b", "office"])),
    "custom_domains": mostly(st.lists(st.sampled_from(["www.example.com", "x.example"]))),
    "group": near_values,
    "group_key": near_values,
    "remote_addr": mostly(st.sampled_from(["10.0.0.1:1", "[::1]:5", "192.168.1.7:2", "x"])),
    "bandwidth_limit": near_values,
}
login_like = st.fixed_dictionaries(
    {"user": mostly(st.sampled_from(NAMESPACES)), "metas": near_metas}, optional=near_optional
)
others_like = st.fixed_dictionaries(
    {"user": mostly(near_user), "proxy_name": near_optional["proxy_name"]},
    optional={k: v for k, v in near_optional.items() if k != "proxy_name"},
)
loose = st.dictionaries(st.sampled_from([*near_optional, "user", "metas"]), near_values)
# (op, content): each op mostly with content of its own shape.
near_requests = st.one_of(
    st.tuples(st.just(LOGIN), login_like),
    st.tuples(st.sampled_from([NEW_PROXY, PING, NEW_USER_CONN, CLOSE_PROXY]), others_like),
    st.tuples(st.sampled_from(OPS), st.one_of(login_like, others_like, loose)),
    st.tuples(st.text(max_size=12), loose),
)
any_op = st.one_of(st.sampled_from(OPS), st.text(max_size=12))


def _credentials_hold(op: str, content: dict[str, Any]) -> bool:
    """The oracle: does the content carry a valid token of a live tunnel, as its user?"""
    user = content if op == LOGIN else content.get("user")
    if not isinstance(user, dict):
        return False
    creds = user.get("metas")
    if not isinstance(creds, dict) or not isinstance(creds.get("tunnel"), str):
        return False
    if creds["tunnel"] not in TOKENS:
        return False
    key = creds["tunnel"]
    found = INDEX.by_tunnel[key]
    return (
        creds.get("token") == TOKENS[key]
        and user.get("user") == found.entry.namespace
        and not found.entry.suspended
    )


def _check_shape(decision: Decision) -> dict[str, Any]:
    assert isinstance(decision, Decision)
    response = decision.response
    assert isinstance(response, dict)
    assert isinstance(response["reject"], bool)
    assert isinstance(response["unchange"], bool)
    if response["reject"]:
        assert isinstance(response["reject_reason"], str) and response["reject_reason"]
        assert response["unchange"] is True
    if not response["unchange"]:
        assert isinstance(response["content"], dict)
    wire = json.dumps(response)
    assert ('"reject": true' in wire) is response["reject"]
    assert ('"reject": false' in wire) is not response["reject"]
    return response


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=any_op, content=json_values)
def test_arbitrary_json_never_raises_and_gated_ops_reject_it(op: str, content: Any) -> None:
    response = _check_shape(decide(INDEX, op, content))
    if op in (LOGIN, NEW_PROXY, PING):
        assert response["reject"] is True
    elif op == NEW_USER_CONN:
        # A visitor is let in by proxy name (frps only asks about registered proxies).
        assert response["reject"] is True or content.get("proxy_name") in INDEX.by_proxy
    elif op == CLOSE_PROXY:
        assert response == {"reject": False, "unchange": True}
    elif isinstance(content, dict):
        assert response == {"reject": False, "unchange": True}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=near_requests)
def test_near_miss_requests_never_raise_and_need_valid_credentials(
    request: tuple[str, dict[str, Any]],
) -> None:
    op, content = request
    response = _check_shape(decide(INDEX, op, content))
    if response["reject"]:
        return
    if op in (LOGIN, NEW_PROXY, PING):
        assert _credentials_hold(op, content)
    if op == NEW_PROXY:
        found = INDEX.by_tunnel[content["user"]["metas"]["tunnel"]]
        assert content.get("proxy_name") == found.proxy_name
        assert content.get("proxy_type") == found.entry.protocol
        if found.entry.protocol in ("tcp", "udp"):
            assert content.get("remote_port") == found.entry.remote_port
    elif op == NEW_USER_CONN:
        found = INDEX.by_proxy.get(content.get("proxy_name"))  # type: ignore[arg-type]
        assert found is not None and not found.entry.suspended
        if found.networks:
            remote_addr = content.get("remote_addr")
            assert isinstance(remote_addr, str)
            address = ipaddress.ip_address(remote_addr.rsplit(":", 1)[0].strip("[]"))
            assert any(address in net for net in found.networks)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(sorted(TOKENS)),
    op=st.sampled_from((LOGIN, NEW_PROXY, PING)),
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_valid_credentials_with_junk_fields_never_raise(
    key: str, op: str, extra: dict[str, Any]
) -> None:
    content: dict[str, Any]
    if op == LOGIN:
        content = {**extra, **login_content(key)}
    else:
        content = {**extra, "user": user_info(key)}
    response = _check_shape(decide(INDEX, op, content))
    if op != NEW_PROXY:
        assert response["reject"] is INDEX.by_tunnel[key].entry.suspended


# A generated relay table: unique names, ports, subdomains and custom domains per tunnel.
PROTOCOLS = ("tcp", "udp", "http", "https")


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[TableEntry, str]]:
    count = draw(st.integers(min_value=2, max_value=8))
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["n1", "n2", "n3"]), st.text("abcdef", min_size=1, max_size=4)
            ),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    ports = draw(st.lists(st.integers(1024, 65535), min_size=count, max_size=count, unique=True))
    labels = draw(
        st.lists(
            st.text("ghijkl", min_size=1, max_size=5),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    table = []
    for i, (namespace, name) in enumerate(keys):
        protocol = draw(st.sampled_from(PROTOCOLS))
        token = f"secret-{i}-8c1f0e6b2d9a4735"
        http = protocol in ("http", "https")
        domains = (
            tuple(
                f"{d}.{labels[i]}.example"
                for d in draw(st.sets(st.sampled_from("abc"), max_size=2))
            )
            if http
            else ()
        )
        table.append(
            (
                TableEntry(
                    namespace=namespace,
                    name=name,
                    token_sha256=token_sha256(token),
                    protocol=protocol,
                    remote_port=None if http else ports[i],
                    subdomain=labels[i] if http else None,
                    custom_domains=domains,
                    bandwidth_bps=draw(st.none() | st.integers(1, 10**9)),
                ),
                token,
            )
        )
    return table


def _claim(own: TableEntry, token: str, proxy_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "user": {
            "user": own.namespace,
            "metas": {"token": token, "tunnel": f"{own.namespace}/{own.name}"},
            "run_id": "r",
        },
        "proxy_name": proxy_name(own.namespace, own.name),
        "proxy_type": proxy_type,
        "remote_port": fields.get("remote_port", 0),
        "subdomain": fields.get("subdomain", ""),
        "custom_domains": fields.get("custom_domains"),
        "bandwidth_limit": "",
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), data=st.data())
def test_a_tenant_cannot_claim_another_tenants_port_or_host_names(
    table: list[tuple[TableEntry, str]], data: st.DataObject
) -> None:
    index = TableIndex.build(RELAY, [e for e, _ in table])
    attacker, victim = data.draw(st.permutations(range(len(table))))[:2]
    own, token = table[attacker]
    target = table[victim][0]
    if target.protocol in ("tcp", "udp"):
        claim = _claim(own, token, target.protocol, remote_port=target.remote_port)
    else:
        variant = data.draw(
            st.sampled_from(["subdomain", "domain", "own-subdomain+domain", "both"])
            if target.custom_domains
            else st.just("subdomain")
        )
        domain = data.draw(st.sampled_from(sorted(target.custom_domains) or [""]))
        subdomain = {
            "subdomain": target.subdomain,
            "domain": "",
            "own-subdomain+domain": own.subdomain or "",
            "both": target.subdomain,
        }[variant]
        domains = [] if variant == "subdomain" else [domain]
        claim = _claim(own, token, target.protocol, subdomain=subdomain, custom_domains=domains)
    decision = decide(index, NEW_PROXY, claim)
    assert decision.rejected, (own, target, claim)
    assert decision.tunnel == f"{own.namespace}/{own.name}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), data=st.data())
def test_every_tenant_may_claim_its_own_allocation(
    table: list[tuple[TableEntry, str]], data: st.DataObject
) -> None:
    # The counterpart of the property above: the claims are refused for whose they are.
    index = TableIndex.build(RELAY, [e for e, _ in table])
    own, token = data.draw(st.sampled_from(table))
    if own.protocol in ("tcp", "udp"):
        claim = _claim(own, token, own.protocol, remote_port=own.remote_port)
    else:
        domains = (
            data.draw(st.sets(st.sampled_from(own.custom_domains))) if own.custom_domains else set()
        )
        claim = _claim(
            own, token, own.protocol, subdomain=own.subdomain, custom_domains=sorted(domains)
        )
    decision = decide(index, NEW_PROXY, claim)
    assert not decision.rejected, decision.response
    assert decision.proxy_online is True
    if own.bandwidth_bps is None:
        assert decision.response == {"reject": False, "unchange": True}
    else:
        assert decision.response["content"]["bandwidth_limit"] == frp_bandwidth(own.bandwidth_bps)


# ---- causes -----------------------------------------------------------------------------------


def _refusals() -> list[tuple[str, str, dict[str, Any], str]]:
    """(name, op, content, expected cause) for every refusal path without sessions."""
    missing = login_content("team-a/ssh")
    missing["metas"] = {}
    unknown = login_content("team-a/ssh")
    unknown["metas"]["tunnel"] = "team-z/x"
    tcp = "team-a/ssh"
    return [
        ("missing", LOGIN, missing, "missing_credentials"),
        ("unknown", LOGIN, unknown, "unknown_tunnel"),
        ("token", LOGIN, login_content(tcp, token="guess"), "bad_token"),
        ("user", LOGIN, login_content(tcp, user="team-b"), "wrong_user"),
        ("suspended", LOGIN, login_content("team-c/frozen"), "suspended"),
        ("name", NEW_PROXY, new_proxy_content(tcp, "tcp", proxy_name="x"), "wrong_name"),
        ("type", NEW_PROXY, new_proxy_content(tcp, "udp", remote_port=21000), "wrong_type"),
        (
            "group",
            NEW_PROXY,
            new_proxy_content(tcp, "tcp", remote_port=21000, group="g"),
            "load_balancing",
        ),
        ("port", NEW_PROXY, new_proxy_content(tcp, "tcp", remote_port=1), "wrong_port"),
        (
            "subdomain",
            NEW_PROXY,
            new_proxy_content("team-b/web", "http", subdomain="office"),
            "wrong_subdomain",
        ),
        (
            "domain",
            NEW_PROXY,
            new_proxy_content("team-b/web", "http", custom_domains=["x.example"]),
            "foreign_domain",
        ),
        ("host", NEW_PROXY, new_proxy_content("team-b/web", "http"), "no_host"),
        (
            "locations",
            NEW_PROXY,
            new_proxy_content("team-b/web", "http", subdomain="web-team-b", locations=["/a"]),
            "routing_option",
        ),
        (
            "visitor",
            NEW_USER_CONN,
            user_conn_content("team-b.limited", "8.8.8.8:1"),
            "outside_source_ranges",
        ),
        ("proxy", NEW_USER_CONN, user_conn_content("team-z.x", "8.8.8.8:1"), "unknown_proxy"),
        (
            "frozen visitor",
            NEW_USER_CONN,
            user_conn_content("team-c.frozen", "1.1.1.1:1"),
            "suspended",
        ),
        ("no content", PING, None, "malformed"),  # type: ignore[list-item]
    ]


@pytest.mark.parametrize(
    ("name", "op", "content", "cause"), _refusals(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_refusal_has_its_cause_from_the_fixed_set(
    name: str, op: str, content: Any, cause: str
) -> None:
    decision = decide(INDEX, op, content)
    assert decision.rejected
    assert decision.cause == cause
    assert decision.cause in CAUSES
    assert decision.detail  # the relay's log always has a reason


def test_accepted_calls_have_no_cause() -> None:
    decision = decide(INDEX, LOGIN, login_content("team-a/ssh"))
    assert (decision.cause, decision.detail, decision.reason) == (None, None, None)


# ---- routing options and host names -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("locations", ["/api"], "locations"),
        ("locations", ["", "/admin"], "locations"),
        ("locations", "/", "locations"),
        ("route_by_http_user", "alice", "routeByHTTPUser"),
    ],
)
@pytest.mark.parametrize(
    ("key", "protocol", "subdomain"),
    [("team-b/web", "http", "web-team-b"), ("team-c/office", "https", "office")],
)
def test_routing_options_are_refused_naming_the_frpc_option(
    field: str, value: Any, option: str, key: str, protocol: str, subdomain: str
) -> None:
    content = new_proxy_content(key, protocol, subdomain=subdomain, **{field: value})
    decision = decide(INDEX, NEW_PROXY, content)
    assert decision.cause == "routing_option"
    text = reason(decision)
    assert f"does not allow {option}" in text
    assert f"remove {option} from frpc.toml" in text


@pytest.mark.parametrize(
    "fields",
    [
        {"locations": None},
        {"locations": []},
        {"locations": [""]},
        {"route_by_http_user": ""},
        # Only the tenant's own route: its backend's Host and headers, its visitors' response
        # headers, basic auth in front of its own host names.
        {"host_header_rewrite": "backend.internal"},
        {"headers": {"X-From": "relay"}},
        {"response_headers": {"X-Frame-Options": "DENY"}},
        {"http_user": "u", "http_pwd": "p"},
    ],
)
def test_options_that_only_concern_the_tenants_own_route_are_accepted(fields: dict) -> None:
    content = new_proxy_content("team-b/web", "http", subdomain="web-team-b", **fields)
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_host_names_compare_case_insensitively() -> None:
    content = new_proxy_content(
        "team-b/web", "http", subdomain="Web-Team-B", custom_domains=["WWW.Example.COM"]
    )
    assert_plain_accept(decide(INDEX, NEW_PROXY, content))


def test_a_foreign_domain_in_other_case_is_still_foreign() -> None:
    content = new_proxy_content("team-b/web", "http", custom_domains=["Office.Example.com"])
    assert decide(INDEX, NEW_PROXY, content).cause == "foreign_domain"


# ---- allowSourceRanges the relay cannot enforce ------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "fields"),
    [("udp", {"remote_port": 27015}), ("http", {"subdomain": "web-team-b"})],
)
def test_source_ranges_on_udp_and_http_are_refused_fail_closed(
    protocol: str, fields: dict[str, Any]
) -> None:
    key = "team-a/game" if protocol == "udp" else "team-b/web"
    base = INDEX.by_tunnel[key].entry
    entry_ = TableEntry(**{**base.__dict__, "allow_source_ranges": ("10.0.0.0/8",)})
    index = TableIndex.build(RELAY, [entry_])
    decision = decide(index, NEW_PROXY, new_proxy_content(key, protocol, **fields))
    assert decision.cause == "source_ranges_unenforceable"
    text = reason(decision)
    assert "spec.allowSourceRanges" in text
    assert protocol in text


def test_source_ranges_on_tcp_and_https_are_enforced_per_visitor_not_refused() -> None:
    tcp = decide(INDEX, NEW_PROXY, new_proxy_content("team-b/limited", "tcp", remote_port=21001))
    https = decide(
        INDEX, NEW_PROXY, new_proxy_content("team-c/office", "https", subdomain="office")
    )
    assert not tcp.rejected
    assert not https.rejected


# ---- sessions: run_id and one frpc per tunnel -------------------------------------------------


class FakeSessions:
    def __init__(self, bound: dict[str, str] | None = None, proxies: dict[str, str] | None = None):
        self.bound = bound or {}
        self.proxies = proxies or {}

    def tunnel_of(self, run_id: str, now: float) -> str | None:
        return self.bound.get(run_id)

    def proxy_run_id(self, tunnel: str) -> str | None:
        return self.proxies.get(tunnel)


RUN_ID = "8d2f0c1a9b7e"  # the run_id of the request builders


@pytest.mark.parametrize(
    ("op", "content"),
    [
        (LOGIN, login_content("team-a/ssh")),
        (NEW_PROXY, new_proxy_content("team-a/ssh", "tcp", remote_port=21000)),
        (PING, ping_content("team-a/ssh")),
    ],
)
def test_a_run_id_of_another_tunnels_live_session_is_refused(op: str, content: dict) -> None:
    sessions = FakeSessions(bound={RUN_ID: "team-b/web"})
    decision = decide(INDEX, op, content, sessions)
    assert decision.cause == "run_id_taken"
    assert "team-b" not in reason(decision)  # whose it is stays in the relay's log
    assert decision.detail is not None and "team-b/web" in decision.detail
    assert not decision.client_alive


@pytest.mark.parametrize(
    ("op", "content"),
    [
        (LOGIN, login_content("team-a/ssh")),
        (NEW_PROXY, new_proxy_content("team-a/ssh", "tcp", remote_port=21000)),
        (PING, ping_content("team-a/ssh")),
    ],
)
def test_a_run_id_of_the_tunnels_own_session_is_accepted(op: str, content: dict) -> None:
    decision = decide(INDEX, op, content, FakeSessions(bound={RUN_ID: "team-a/ssh"}))
    assert not decision.rejected
    assert decision.run_id == RUN_ID


def test_a_first_login_without_run_id_is_accepted() -> None:
    content = login_content("team-a/ssh")
    content["run_id"] = ""
    decision = decide(INDEX, LOGIN, content, FakeSessions(bound={"": "team-b/web"}))
    assert not decision.rejected
    assert decision.run_id is None


def test_a_second_frpc_of_a_connected_tunnel_is_refused_saying_only_one_may_run() -> None:
    sessions = FakeSessions(proxies={"team-a/ssh": "another-run"})
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    decision = decide(INDEX, NEW_PROXY, content, sessions)
    assert decision.cause == "already_connected"
    assert "only one frpc may run per tunnel" in reason(decision)
    assert decision.proxy_online is None


def test_the_connected_session_may_register_its_proxy_again() -> None:
    sessions = FakeSessions(proxies={"team-a/ssh": RUN_ID})
    content = new_proxy_content("team-a/ssh", "tcp", remote_port=21000)
    assert decide(INDEX, NEW_PROXY, content, sessions).proxy_online is True


def test_close_proxy_carries_its_session() -> None:
    decision = decide(INDEX, CLOSE_PROXY, close_content("team-a.ssh"))
    assert (decision.tunnel, decision.run_id, decision.proxy_online) == (
        "team-a/ssh",
        RUN_ID,
        False,
    )


# ---- property: no enumeration ------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tables(),
    data=st.data(),
    op=st.sampled_from((LOGIN, NEW_PROXY, PING)),
    token=st.text(min_size=1, max_size=40),
    user=st.text(max_size=10),
    stranger=st.text("abcdefxyz-", min_size=1, max_size=6),
)
def test_an_unknown_tunnel_and_a_wrong_token_get_identical_answers(
    table: list[tuple[TableEntry, str]],
    data: st.DataObject,
    op: str,
    token: str,
    user: str,
    stranger: str,
) -> None:
    index = TableIndex.build(RELAY, [e for e, _ in table])
    known, real_token = data.draw(st.sampled_from(table))
    if token == real_token:
        token += "x"
    unknown_key = f"nobody/{stranger}"

    def call(tunnel: str) -> dict[str, Any]:
        metas_ = {"tunnel": tunnel, "token": token}
        if op == LOGIN:
            return {"user": user, "metas": metas_, "run_id": ""}
        return {"user": {"user": user, "metas": metas_, "run_id": "r"}, "proxy_name": "x"}

    on_known = decide(index, op, call(f"{known.namespace}/{known.name}"))
    on_unknown = decide(index, op, call(unknown_key))
    assert on_known.response == on_unknown.response
    assert on_known.rejected
    assert (on_known.cause, on_unknown.cause) == ("bad_token", "unknown_tunnel")
