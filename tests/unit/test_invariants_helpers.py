"""The checks of tests/support/invariants.py on hand-made objects: a consistent world passes,
and each kind of disagreement between relay tables and live tunnels is named. The objects
are written as the API would return them; tables are encoded with the contract's own
table_json, the format the relay agent reads."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from support.invariants import (
    World,
    check_tables,
    duplicates_within_tables,
    unsettled,
    world_from_objects,
)
from tunnelop.contract.naming import table_secret_name
from tunnelop.contract.table import TableEntry, table_documents, token_sha256

NS = "tenant"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tunnel(
    name: str,
    protocol: str = "tcp",
    relay: str | None = "r1",
    port: int | None = None,
    subdomain: str | None = None,
    *,
    scheduled: tuple[str, str] = ("True", "Scheduled"),
    ready: str = "True",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "conditions": [
            {"type": "Scheduled", "status": scheduled[0], "reason": scheduled[1]},
            {"type": "Ready", "status": ready, "reason": "TunnelReady"},
        ]
    }
    if relay:
        status |= {"relayNode": relay, "remotePort": port, "subdomain": subdomain}
    status = {k: v for k, v in status.items() if v is not None}
    return {"metadata": meta, "spec": {"protocol": protocol}, "status": status}


def credentials(name: str, token: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}-frpc", "namespace": NS},
        "data": {"token": b64(token), "frpc.toml": b64("")},
    }


def entry(name: str, token: str, protocol="tcp", port=None, subdomain=None) -> TableEntry:
    return TableEntry(NS, name, token_sha256(token), protocol, port, subdomain)


def table(relay: str, *entries: TableEntry) -> list[dict[str, Any]]:
    """A relay's table: the Secrets of its shards."""
    return [
        {
            "metadata": {"name": table_secret_name(relay, shard)},
            "data": {"table.json": b64(text)},
        }
        for shard, text in enumerate(table_documents(relay, entries))
    ]


def relay_node(name: str, http_domain: str | None = None, deleting: bool = False):
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"httpDomain": http_domain} if http_domain else {}}


RELAYS = [relay_node("r1"), relay_node("r2", "h.example"), relay_node("r3", "h.example")]


def consistent() -> tuple[list, list, list]:
    """ssh on r1:20000 tcp, dns on r1:20000 udp (another family), web on r2 by subdomain."""
    tunnels = [
        tunnel("ssh", "tcp", "r1", 20000),
        tunnel("dns", "udp", "r1", 20000),
        tunnel("web", "http", "r2", subdomain="blog"),
        tunnel("lost", "tcp", None, scheduled=("False", "PortTaken"), ready="False"),
    ]
    secrets = [credentials(n, f"tok-{n}") for n in ("ssh", "dns", "web", "lost")]
    tables = [
        table("r1", entry("ssh", "tok-ssh", "tcp", 20000), entry("dns", "tok-dns", "udp", 20000)),
        table("r2", entry("web", "tok-web", "http", subdomain="blog")),
        table("r3"),
    ]
    return tunnels, secrets, tables


def world(tunnels, secrets, tables, relays=RELAYS) -> World:
    """`tables` holds whole tables (lists of Secrets) or single Secrets."""
    secrets_of_tables = []
    for found in tables:
        secrets_of_tables += found if isinstance(found, list) else [found]
    return world_from_objects(tunnels, secrets, secrets_of_tables, relays)


def test_a_consistent_world_has_no_violation_and_is_settled() -> None:
    w = world(*consistent())
    assert check_tables(w) == []
    assert duplicates_within_tables(w) == []
    assert unsettled(w) == []


def test_the_entry_of_a_deleted_tunnel_is_named() -> None:
    tunnels, secrets, tables = consistent()
    tunnels = [t for t in tunnels if t["metadata"]["name"] != "ssh"]
    violations = check_tables(world(tunnels, secrets[1:], tables))
    assert any("tenant/ssh" in v and "no such Tunnel exists" in v for v in violations)
    assert any("no live tunnel's current token" in v for v in violations)


def test_a_tunnel_being_deleted_is_not_live() -> None:
    tunnels, secrets, tables = consistent()
    tunnels[0] = tunnel("ssh", "tcp", "r1", 20000, deleting=True)
    w = world(tunnels, secrets, tables)
    assert any("tenant/ssh" in v and "being deleted" in v for v in check_tables(w))
    assert unsettled(w) == ["tenant/ssh is being deleted"]


def test_an_entry_left_on_the_old_relay_is_named() -> None:
    """The tunnel was scheduled afresh on r3 while r1 kept its entry (and its port)."""
    tunnels, secrets, tables = consistent()
    tunnels[0] = tunnel("ssh", "tcp", "r3", 20000)
    tables[2] = table("r3", entry("ssh", "tok-ssh", "tcp", 20000))
    violations = check_tables(world(tunnels, secrets, tables))
    assert violations == ["table of r1 holds tenant/ssh (tcp 20000) but the Tunnel is bound to r3"]


def test_a_bound_tunnel_missing_from_its_table_is_named() -> None:
    tunnels, secrets, tables = consistent()
    tables[0] = table("r1", entry("dns", "tok-dns", "udp", 20000))
    assert check_tables(world(tunnels, secrets, tables)) == [
        "tenant/ssh is bound to r1 (Scheduled=True) but is not in its table"
    ]
    # and a relay whose table Secret is gone altogether
    assert check_tables(world(tunnels, secrets, tables[1:])) == [
        "tenant/dns is bound to r1 (Scheduled=True) but that relay has no table",
        "tenant/ssh is bound to r1 (Scheduled=True) but that relay has no table",
    ]


def test_an_entry_of_an_unbound_tunnel_is_named() -> None:
    tunnels, secrets, tables = consistent()
    tables[2] = table("r3", entry("lost", "tok-lost", "tcp", 20001))
    (violation,) = check_tables(world(tunnels, secrets, tables))
    assert "table of r3 holds tenant/lost" in violation and "not bound" in violation


def test_an_entry_with_another_port_or_subdomain_is_named() -> None:
    tunnels, secrets, tables = consistent()
    tables[0] = table(
        "r1", entry("ssh", "tok-ssh", "tcp", 20001), entry("dns", "tok-dns", "udp", 20000)
    )
    tables[1] = table("r2", entry("web", "tok-web", "http", subdomain="shop"))
    assert check_tables(world(tunnels, secrets, tables)) == [
        "table of r1 has for tenant/ssh: remotePort 20001 where the status says 20000",
        "table of r2 has for tenant/web: subdomain 'shop' where the status says 'blog'",
    ]


def test_a_rotated_token_still_accepted_is_named() -> None:
    tunnels, secrets, tables = consistent()
    secrets[0] = credentials("ssh", "tok-ssh-rotated")
    violations = check_tables(world(tunnels, secrets, tables))
    assert len(violations) == 2
    assert "no live tunnel's current token" in violations[0]
    assert "another token than the one in its credentials Secret" in violations[1]


def test_an_entry_of_a_tunnel_without_credentials_is_named() -> None:
    tunnels, secrets, tables = consistent()
    violations = check_tables(world(tunnels, secrets[1:], tables))
    assert any("has no credentials Secret" in v for v in violations)


def test_a_port_held_twice_is_named_from_statuses_and_from_tables() -> None:
    tunnels, secrets, tables = consistent()
    # Two statuses on r1 tcp 20000; the table agrees with both statuses.
    tunnels.append(tunnel("ftp", "tcp", "r1", 20000))
    secrets.append(credentials("ftp", "tok-ftp"))
    tables[0] = table(
        "r1",
        entry("ssh", "tok-ssh", "tcp", 20000),
        entry("dns", "tok-dns", "udp", 20000),
        entry("ftp", "tok-ftp", "tcp", 20000),
    )
    w = world(tunnels, secrets, tables)
    assert check_tables(w) == ["tcp port 20000 of r1 is held by tenant/ftp, tenant/ssh"]
    assert duplicates_within_tables(w) == ["table of r1 gives tcp 20000 to tenant/ftp, tenant/ssh"]


def test_a_stale_entry_on_a_port_given_again_is_a_double_claim() -> None:
    """The crash window: r1 still enforces gone/20000 while ssh got 20000 too."""
    tunnels, secrets, tables = consistent()
    tables[0] = table(
        "r1",
        entry("ssh", "tok-ssh", "tcp", 20000),
        entry("dns", "tok-dns", "udp", 20000),
        entry("gone", "tok-gone", "tcp", 20000),
    )
    violations = check_tables(world(tunnels, secrets, tables))
    assert "tcp port 20000 of r1 is held by tenant/gone, tenant/ssh" in violations


def test_one_port_on_two_relays_or_two_families_is_fine() -> None:
    tunnels, secrets, tables = consistent()
    tunnels.append(tunnel("ftp", "tcp", "r3", 20000))
    secrets.append(credentials("ftp", "tok-ftp"))
    tables[2] = table("r3", entry("ftp", "tok-ftp", "tcp", 20000))
    assert check_tables(world(tunnels, secrets, tables)) == []


def test_a_subdomain_held_twice_under_one_http_domain_is_named() -> None:
    """r2 and r3 share httpDomain h.example: one subdomain, two relays, still a clash."""
    tunnels, secrets, tables = consistent()
    tunnels.append(tunnel("blog2", "https", "r3", subdomain="blog"))
    secrets.append(credentials("blog2", "tok-blog2"))
    tables[2] = table("r3", entry("blog2", "tok-blog2", "https", subdomain="blog"))
    assert check_tables(world(tunnels, secrets, tables)) == [
        "subdomain blog of h.example is held by tenant/blog2, tenant/web"
    ]
    # Under different httpDomains the same subdomain is two different names.
    relays = [relay_node("r1"), relay_node("r2", "h.example"), relay_node("r3", "i.example")]
    assert check_tables(world(tunnels, secrets, tables, relays)) == []


def test_scheduled_without_a_relay_is_named() -> None:
    tunnels, secrets, tables = consistent()
    tunnels[3] = tunnel("lost", "tcp", None, scheduled=("True", "Scheduled"))
    assert check_tables(world(tunnels, secrets, tables)) == [
        "tenant/lost says Scheduled=True but names no relayNode"
    ]


def test_an_unreadable_table_is_named() -> None:
    tunnels, secrets, tables = consistent()
    tables[2] = {"metadata": {"name": "relay-r3-table"}, "data": {"table.json": b64("{")}}
    (violation,) = check_tables(world(tunnels, secrets, tables))
    assert violation.startswith("table of r3 cannot be read: relay-r3-table: JSONDecodeError")
    tables[2] = table("r1")[0]  # r1's shard 0 under r3's Secret name
    tables[2]["metadata"]["name"] = "relay-r3-table"
    (violation,) = check_tables(world(tunnels, secrets, tables))
    assert violation == (
        "table of r3 cannot be read: relay-r3-table says it is shard 0 of relay 'r1'"
    )
    tables[2] = table("r3")[1]  # r3's shard 1 under the name of its shard 2
    tables[2]["metadata"]["name"] = "relay-r3-table-2"
    (violation,) = check_tables(world(tunnels, secrets, tables))
    assert violation == (
        "table of r3 cannot be read: relay-r3-table-2 says it is shard 1 of relay 'r3'"
    )


def test_what_is_not_settled_yet() -> None:
    tunnels, secrets, tables = consistent()
    tunnels[0] = tunnel("ssh", "tcp", "r1", 20000, ready="False")  # RelayNotReady, say
    tunnels[3] = tunnel("lost", "tcp", None, scheduled=("False", "NoRelayReady"), ready="False")
    tunnels.append({"metadata": {"name": "new", "namespace": NS}, "spec": {"protocol": "udp"}})
    relays = [*RELAYS[:2], relay_node("r3", "h.example", deleting=True)]
    tables.append(table("r9"))
    assert unsettled(world(tunnels, secrets, tables, relays)) == [
        "tenant/lost is neither Ready nor finally unschedulable",
        "tenant/new is neither Ready nor finally unschedulable",
        "tenant/ssh is neither Ready nor finally unschedulable",
        "relay r3 is being deleted",
        "table of r9 outlives its RelayNode",
    ]


def test_the_fingerprint_follows_what_the_checks_see() -> None:
    first = world(*consistent())
    assert first.fingerprint() == world(*consistent()).fingerprint()
    tunnels, secrets, tables = consistent()
    secrets[0] = credentials("ssh", "tok-ssh-rotated")
    assert world(tunnels, secrets, tables).fingerprint() != first.fingerprint()


@given(
    st.lists(
        st.tuples(st.sampled_from(["r1", "r2", "r3"]), st.sampled_from(["tcp", "udp"])),
        min_size=1,
        max_size=12,
    ),
    st.data(),
)
def test_any_consistent_world_passes_and_any_leftover_entry_is_caught(placements, data) -> None:
    """Tunnels on distinct (relay, family, port) with tables written from their statuses pass;
    adding to some table the entry of a tunnel that is gone always fails the check."""
    next_port: dict[tuple[str, str], int] = {}
    tunnels, secrets, entries = [], [], {"r1": [], "r2": [], "r3": []}
    for i, (relay, family) in enumerate(placements):
        port = next_port[(relay, family)] = next_port.get((relay, family), 20000) + 1
        tunnels.append(tunnel(f"t{i}", family, relay, port))
        secrets.append(credentials(f"t{i}", f"tok{i}"))
        entries[relay].append(entry(f"t{i}", f"tok{i}", family, port))
    tables = [table(r, *es) for r, es in entries.items()]
    assert check_tables(world(tunnels, secrets, tables)) == []

    relay = data.draw(st.sampled_from(["r1", "r2", "r3"]))
    port = data.draw(st.integers(20000, 20003))
    entries[relay].append(entry("gone", "tok-gone", "tcp", port))
    tables = [table(r, *es) for r, es in entries.items()]
    violations = check_tables(world(tunnels, secrets, tables))
    assert any("tenant/gone" in v and "no such Tunnel exists" in v for v in violations)
