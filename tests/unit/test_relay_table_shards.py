"""A relay's table is written shard by shard (decision 0012). What the allocator holds for a
relay must be every shard as written plus every shard write in flight: one shard's confirmed
write may not free what another shard's Secret still names."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from support.objects import relay_node
from tunnelop.api.v1alpha1 import PortSpan
from tunnelop.contract.naming import table_secret_name
from tunnelop.contract.table import TABLE_SHARDS, TableEntry, parse_table_json, shard_of
from tunnelop.controllers.relaytables import RelayTables
from tunnelop.domain.relayview import RelayView
from tunnelop.domain.scheduling import Allocation, AllocationTable, TunnelRequest

RELAY = "r1"


class GatedKube:
    """Answers table writes at once, except those of a gated Secret name, which wait."""

    def __init__(self) -> None:
        self.version = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.names: list[str] = []
        self.contents: dict[str, list[list[str]]] = {}  # each write's tunnels, by Secret
        self.lose_replies: set[str] = set()  # Secrets whose writes land, then fail

    async def overwrite(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        if name in self.gates:
            await self.gates[name].wait()
        self.version += 1
        self.names.append(name)
        document = json.loads(base64.b64decode(obj["data"]["table.json"]))
        self.contents.setdefault(name, []).append([t["name"] for t in document["tunnels"]])
        if name in self.lose_replies:
            raise ConnectionError("the reply was lost")
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}


def two_keys_of_two_shards() -> tuple[tuple[str, str], tuple[str, str]]:
    first = ("ns", "a")
    other = next(("ns", f"b{i}") for i in range(100) if shard_of("ns", f"b{i}") != shard_of(*first))
    return first, other


def setup() -> tuple[AllocationTable, RelayTables, GatedKube]:
    table = AllocationTable()
    table.upsert_relay(
        RelayView(name=RELAY, protocols=("tcp",), port_range=PortSpan(100, 102), http_domain=None)
    )
    body = relay_node(RELAY)
    body["metadata"]["uid"] = "u-1"
    kube = GatedKube()
    tables = RelayTables(kube, "relays", table, {RELAY: body}, lambda _: None, 0)  # type: ignore[arg-type]
    return table, tables, kube


async def place(table: AllocationTable, tables: RelayTables, key: tuple[str, str]) -> Allocation:
    alloc = table.schedule(TunnelRequest(key=key, protocol="tcp"))
    assert isinstance(alloc, Allocation)
    tables.set_entry(RELAY, TableEntry(*key, "0" * 64, "tcp", remote_port=alloc.port))
    await tables.sync(RELAY, key)
    return alloc


async def test_a_confirmed_shard_does_not_free_what_another_shard_still_names():
    table, tables, kube = setup()
    await tables.ensure(RELAY)
    first, other = two_keys_of_two_shards()
    held = await place(table, tables, first)

    # The first tunnel is deleted: its shard's rewrite is stuck on the way.
    gate = kube.gates[table_secret_name(RELAY, shard_of(*first))] = asyncio.Event()
    table.release(first)
    removal = asyncio.create_task(tables.remove_everywhere(first))
    await asyncio.sleep(0.01)
    assert not removal.done()

    # Another shard's write lands meanwhile: the first shard's Secret still names the port.
    await place(table, tables, other)
    assert first in table.table_holders(RELAY)
    third = table.schedule(TunnelRequest(key=("ns", "c"), protocol="tcp"))
    assert isinstance(third, Allocation) and third.port != held.port
    fourth = table.schedule(TunnelRequest(key=("ns", "d"), protocol="tcp"))
    assert not isinstance(fourth, Allocation)  # the only port left is still named

    gate.set()
    await removal
    assert first not in table.table_holders(RELAY)
    again = table.schedule(TunnelRequest(key=("ns", "d"), protocol="tcp"))
    assert isinstance(again, Allocation) and again.port == held.port


async def test_a_tunnel_change_rewrites_only_its_shard():
    table, tables, kube = setup()
    await tables.ensure(RELAY)
    assert len(kube.names) == len(set(kube.names)) == 8  # every shard once, even empty
    first, _ = two_keys_of_two_shards()
    kube.names.clear()
    await place(table, tables, first)
    assert kube.names == [table_secret_name(RELAY, shard_of(*first))]
    kube.names.clear()
    await tables.flush(RELAY)  # nothing changed
    assert kube.names == []


async def test_a_whole_table_of_an_earlier_version_is_held_then_rewritten_in_shards():
    """Before shards, a relay's table was one document in relay-<r>-table. A restore holds
    everything it names, and writes it again shard by shard."""
    table, tables, kube = setup()
    keys = [("ns", f"t{i}") for i in range(3)]
    entries = {k: TableEntry(*k, "0" * 64, "tcp", remote_port=100 + i) for i, k in enumerate(keys)}
    whole = json.dumps(
        {"relay": RELAY, "tunnels": [e.to_json() for e in entries.values()]}
    )  # as earlier versions wrote it
    with pytest.raises(KeyError):
        parse_table_json(whole)  # the agent never takes it for a shard
    document = parse_table_json(whole, whole_ok=True)
    assert (document.relay, document.shard) == (RELAY, 0)

    tables.remember_written(RELAY, 0, {(e.namespace, e.name): e for e in document.entries})
    assert table.table_holders(RELAY) == set(keys)  # held, though no status names them
    assert tables.incomplete() == [RELAY]
    await tables.flush(RELAY)
    assert sorted(kube.names) == sorted(table_secret_name(RELAY, s) for s in range(TABLE_SHARDS))
    assert tables.incomplete() == []
    assert tables.written_entries(RELAY) == entries
    for shard in range(TABLE_SHARDS):
        assert all(shard_of(*k) == shard for k in tables._written[(RELAY, shard)])


async def test_a_removal_waits_for_a_write_in_flight_that_still_names_the_tunnel():
    """A tunnel set, its shard's write under way, then dropped: the removal returns only once
    a write without it has landed, not while the write naming it is still on the way."""
    _, tables, kube = setup()
    await tables.ensure(RELAY)
    key = ("ns", "a")
    secret = table_secret_name(RELAY, shard_of(*key))
    gate = kube.gates[secret] = asyncio.Event()
    tables.set_entry(RELAY, TableEntry(*key, "0" * 64, "tcp", remote_port=100))
    adding = asyncio.create_task(tables.sync(RELAY, key))
    await asyncio.sleep(0.01)  # the write naming it is in flight
    tables.drop_entry(RELAY, key)
    removing = asyncio.create_task(tables.remove_everywhere(key))
    await asyncio.sleep(0.01)
    assert not removing.done()
    gate.set()
    await asyncio.gather(adding, removing)
    assert key not in tables._written[(RELAY, shard_of(*key))]
    assert kube.contents[secret][-1] == []  # the last write of its shard names nobody


async def test_a_write_whose_reply_was_lost_keeps_holding_what_it_names():
    """A shard's write lands but its reply is lost: what it names stays held, even through
    another shard's confirmed write, until a write of that shard is confirmed."""
    table, tables, kube = setup()
    await tables.ensure(RELAY)
    first, other = two_keys_of_two_shards()
    secret = table_secret_name(RELAY, shard_of(*first))
    kube.lose_replies.add(secret)
    alloc = table.schedule(TunnelRequest(key=first, protocol="tcp"))
    assert isinstance(alloc, Allocation)
    tables.set_entry(RELAY, TableEntry(*first, "0" * 64, "tcp", remote_port=alloc.port))
    with pytest.raises(ConnectionError):
        await tables.sync(RELAY, first)
    assert kube.contents[secret][-1] == ["a"]  # it landed all the same

    table.release(first)  # deleted meanwhile
    tables.drop_entry(RELAY, first)
    await place(table, tables, other)  # another shard's write is confirmed
    assert first in table.table_holders(RELAY)  # shard 0's Secret may still name it

    kube.lose_replies.clear()
    await tables.remove_everywhere(first)
    assert kube.contents[secret][-1] == []
    assert first not in table.table_holders(RELAY)
