"""What keeps the operator's cost per tunnel flat at thousands of tunnels, each shortcut
checked to skip only what it may: the cached Tunnel without managedFields (and its short
strings shared), the echo of the operator's own status write not reconciled again, the
relay table's own writes not parsed again, and a relay's status written at most once a
second while only its counts change."""

from __future__ import annotations

import asyncio
from typing import Any

from tunnelop.contract.naming import table_secret_name
from tunnelop.contract.table import TABLE_SHARDS, TableEntry, shard_of
from tunnelop.controllers.caches import slim_tunnel
from tunnelop.controllers.state import Runtime
from tunnelop.controllers.watches import on_tunnel
from tunnelop.platform.workqueue import WorkQueue


def tunnel(name: str, version: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "resourceVersion": version,
            "labels": {"team": "a"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"spec": {}}',
                "note": "kept",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"protocol": "tcp"},
        "status": status,
    }


def test_a_kept_tunnel_lacks_only_what_no_controller_reads():
    kept = slim_tunnel(tunnel("a", "1", relayNode="edge-1"))
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"note": "kept"}
    assert kept["metadata"]["labels"] == {"team": "a"}
    assert kept["spec"] == {"protocol": "tcp"} and kept["status"] == {"relayNode": "edge-1"}


def test_kept_tunnels_share_their_short_strings():
    # Two parses of the same text make distinct string objects, as two watch events do.
    first = slim_tunnel(tunnel("a", "1", relayNode="".join(["edge", "-1"])))
    second = slim_tunnel(tunnel("b", "1", relayNode="".join(["edge", "-", "1"])))
    assert first["status"]["relayNode"] is second["status"]["relayNode"]


async def _nothing(key: Any) -> None:
    return None


def runtime() -> tuple[Runtime, list]:
    rt = Runtime(kube=None, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    rt.tunnel_queue = WorkQueue("tunnels", _nothing)
    rt.service_queue = WorkQueue("loadbalancers", _nothing)
    rt.client_queue = WorkQueue("clients", _nothing)
    added: list = []
    rt.tunnel_queue.add = added.append  # type: ignore[method-assign]
    return rt, added


async def test_the_echo_of_the_operators_own_write_is_not_reconciled_again():
    rt, added = runtime()
    on_tunnel(rt, "ADDED", tunnel("a", "1"))
    assert added == [("shop", "a")]
    # The status write's reply, cached by the reconcile that wrote it ...
    rt.cache.remember_tunnel(("shop", "a"), tunnel("a", "2", relayNode="edge-1"))
    on_tunnel(rt, "MODIFIED", tunnel("a", "2", relayNode="edge-1"))  # ... and its echo
    assert added == [("shop", "a")]
    on_tunnel(rt, "MODIFIED", tunnel("a", "3", relayNode="edge-1"))  # anyone else's write
    assert added == [("shop", "a"), ("shop", "a")]
    # A relist hands every tunnel over as ADDED: each is reconciled, whatever the cache holds.
    on_tunnel(rt, "ADDED", tunnel("a", "3", relayNode="edge-1"))
    assert len(added) == 3
    await asyncio.sleep(0)


class TableKube:
    """Answers each table write with a new resourceVersion, as the API server does."""

    def __init__(self) -> None:
        self.version = 0

    async def overwrite(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}


async def test_a_relay_table_write_of_this_process_is_known_by_its_version():
    from support.objects import relay_node
    from tunnelop.controllers.relaytables import RelayTables
    from tunnelop.domain.scheduling import AllocationTable

    kube = TableKube()
    relay = relay_node("edge-1")
    relay["metadata"]["uid"] = "u-1"
    relays = {"edge-1": relay}
    tables = RelayTables(kube, "tunnelop-relays", AllocationTable(), relays, lambda _: None, 0)  # type: ignore[arg-type]
    await tables.flush("edge-1")
    assert kube.version == TABLE_SHARDS  # every shard once
    versions = [str(v) for v in range(1, TABLE_SHARDS + 1)]
    own = [
        (s, v) for s in range(TABLE_SHARDS) for v in versions if tables.is_own_write("edge-1", s, v)
    ]
    assert sorted(s for s, _ in own) == list(range(TABLE_SHARDS))  # each shard knows its own
    assert sorted(v for _, v in own) == sorted(versions)
    assert not tables.is_own_write("edge-1", 0, "99")  # anyone else's: parsed and compared
    assert not tables.is_own_write("edge-2", 0, "1") and not tables.is_own_write("edge-1", 0, None)


class StatusKube:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, kind, name, namespace, patch, **_: Any) -> dict[str, Any]:
        self.patches.append(patch)
        return {"metadata": {"name": name}, "status": patch}


async def test_a_relay_status_that_only_changes_counts_is_written_once_a_second():
    from tunnelop.controllers import relays

    kube = StatusKube()
    rt = Runtime(kube=kube, relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    later: list = []
    rt.relay_queue = WorkQueue("relays", _nothing)
    rt.relay_queue.add_after = lambda name, delay: later.append((name, delay))  # type: ignore[method-assign]
    rt.tunnel_queue = WorkQueue("tunnels", _nothing)
    ready = [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}]
    body = {"metadata": {"name": "edge-1"}, "status": {"conditions": ready}}

    def status(tunnels: int, conditions=ready) -> dict[str, Any]:
        return {"conditions": conditions, "allocated": {"tunnels": tunnels}}

    await relays._report_changes(rt, body, status(1))
    body = {"metadata": {"name": "edge-1"}, "status": status(1)}
    await relays._report_changes(rt, body, status(2))  # counts only, at once: later
    assert len(kube.patches) == 1 and later and later[0][0] == "edge-1"
    assert 0 < later[0][1] <= relays.COUNTS_INTERVAL
    not_ready = [{**ready[0], "status": "False", "reason": "PodNotReady"}]
    await relays._report_changes(rt, body, status(2, not_ready))  # a condition: at once
    assert len(kube.patches) == 2


async def test_a_relay_that_turns_ready_or_moves_address_has_its_tunnels_reconciled():
    """The one path by which a bound tunnel learns that its relay became ready: its own status
    write (RelayNotReady) is not reconciled again."""
    from tunnelop.api.v1alpha1 import PortSpan
    from tunnelop.controllers import relays
    from tunnelop.domain.relayview import RelayView
    from tunnelop.domain.scheduling import Allocation

    rt = Runtime(kube=StatusKube(), relay_namespace="tunnelop-relays")  # type: ignore[arg-type]
    rt.relay_queue = WorkQueue("relays", _nothing)
    rt.tunnel_queue = WorkQueue("tunnels", _nothing)
    added: list = []
    rt.tunnel_queue.add = added.append  # type: ignore[method-assign]
    for name in ("edge-1", "edge-2"):
        rt.table.upsert_relay(RelayView(name=name, port_range=PortSpan(20000, 20099)))
    assert rt.table.restore(Allocation(("shop", "a"), "edge-1", "tcp", port=20000))
    assert rt.table.restore(Allocation(("shop", "b"), "edge-2", "tcp", port=20000))

    def status(ready: str, address: str | None = None, tunnels: int = 1) -> dict[str, Any]:
        found = {"conditions": [{"type": "Ready", "status": ready}], "allocated": {"t": tunnels}}
        return {**found, "publicAddress": address} if address else found

    body = {"metadata": {"name": "edge-1"}, "status": status("False")}
    await relays._report_changes(rt, body, status("True", "a.example"))
    assert added == [("shop", "a")]  # edge-1's tunnel, not edge-2's
    body["status"] = status("True", "a.example")
    rt.relay_status_written_at.clear()
    await relays._report_changes(rt, body, status("True", "a.example", tunnels=2))
    assert added == [("shop", "a")]  # only counts: nothing a tunnel shows
    body["status"] = status("True", "a.example", tunnels=2)
    await relays._report_changes(rt, body, status("True", "b.example", tunnels=2))
    assert added == [("shop", "a")] * 2


async def test_a_relay_table_is_written_at_once_after_a_quiet_spell_and_batched_in_a_burst():
    from support.objects import relay_node
    from tunnelop.controllers.relaytables import RelayTables
    from tunnelop.domain.scheduling import AllocationTable

    kube = TableKube()
    relay = relay_node("edge-1")
    relay["metadata"]["uid"] = "u-1"
    debounce = 1.0  # long beside any scheduling delay: the waits below are its, or none
    tables = RelayTables(
        kube, "tunnelop-relays", AllocationTable(), {"edge-1": relay}, lambda _: None, debounce
    )  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await tables.flush("edge-1")  # nothing written for a while: no wait
    assert loop.time() - started < debounce / 2 and kube.version == TABLE_SHARDS
    await tables.flush("edge-1")  # nothing changed: no write, no wait
    assert loop.time() - started < debounce / 2 and kube.version == TABLE_SHARDS
    # Five tunnels of one shard, right after: one write, after the debounce.
    names = [n for n in (f"t{i}" for i in range(200)) if shard_of("team", n) == 3][:5]
    for port, name in enumerate(names, 20000):
        tables.set_entry("edge-1", TableEntry("team", name, "0" * 64, "tcp", remote_port=port))
    started = loop.time()
    await asyncio.gather(*(tables.sync("edge-1", ("team", n)) for n in names))
    assert kube.version == TABLE_SHARDS + 1 and loop.time() - started >= debounce * 0.9


async def test_a_foreign_table_is_rewritten_even_when_the_first_rewrite_fails(monkeypatch):
    """Someone else's write to a relay's table is overwritten at once; when the API server
    refuses that rewrite, it is retried (no reconcile may come to do it)."""
    from support.objects import relay_node
    from tunnelop.contract.table import TableEntry
    from tunnelop.controllers import relaytables
    from tunnelop.domain.scheduling import AllocationTable
    from tunnelop.platform.kube import KubeError

    class FlakyKube(TableKube):
        def __init__(self) -> None:
            super().__init__()
            self.refusals = 1
            self.written: list[dict[str, Any]] = []

        async def overwrite(self, obj: dict[str, Any]) -> dict[str, Any]:
            if self.refusals:
                self.refusals -= 1
                raise KubeError(503, "the API server is away")
            self.written.append(obj)
            return await super().overwrite(obj)

    real_sleep = asyncio.sleep
    monkeypatch.setattr(relaytables.asyncio, "sleep", lambda _s: real_sleep(0))
    kube = FlakyKube()
    relay = relay_node("edge-1")
    relay["metadata"]["uid"] = "u-1"
    tables = relaytables.RelayTables(
        kube,  # type: ignore[arg-type]
        "tunnelop-relays",
        AllocationTable(),
        {"edge-1": relay},
        lambda _: None,
        0,
    )
    for shard in range(TABLE_SHARDS):
        tables.remember_written("edge-1", shard, {})
    intruder = TableEntry(
        namespace="evil", name="x", protocol="tcp", remote_port=20001, token_sha256="0" * 64
    )
    shard = shard_of("evil", "x")
    tables.observed("edge-1", shard, {("evil", "x"): intruder})
    for _ in range(50):
        if kube.written:
            break
        await real_sleep(0.01)
    assert len(kube.written) == 1  # refused once, then written
    assert tables._written[("edge-1", shard)] == {}  # the intruder is gone from the table
    assert kube.written[0]["metadata"]["name"] == table_secret_name("edge-1", shard)
    await real_sleep(0)
    assert not tables._background
