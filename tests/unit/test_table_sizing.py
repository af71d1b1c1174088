"""A tunnel's room in its relay's table is counted as if it were suspended: a suspension (by
the tenant or its namespace's quota) grows the entry, and must never find the table full."""

from __future__ import annotations

from tunnelop.api.v1alpha1 import API_VERSION, Tunnel
from tunnelop.contract.table import TableEntry
from tunnelop.controllers.tunnels import table_bytes_of


def tunnel(**spec) -> Tunnel:
    return Tunnel.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "Tunnel",
            "metadata": {"name": "game", "namespace": "team-a"},
            "spec": {"protocol": "tcp", **spec},
        }
    )


def entry(suspended: bool, port: int = 21000) -> TableEntry:
    return TableEntry("team-a", "game", "0" * 64, "tcp", remote_port=port, suspended=suspended)


def test_the_counted_room_is_the_suspended_entrys_size() -> None:
    counted = table_bytes_of(tunnel(), 21000, None, None)
    assert counted == entry(suspended=True).size()
    assert counted > entry(suspended=False).size()


def test_before_a_port_is_known_the_longest_one_is_counted() -> None:
    assert table_bytes_of(tunnel(), None, None, None) == entry(True, port=65535).size()
