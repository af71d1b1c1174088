"""Invariants 1 and 8 checked from the cluster's objects alone: what each relay enforces (its
table Secret) against the live Tunnels, their statuses and their credentials Secrets.

Nothing here asks the operator: the expectations come from independent artifacts (a tunnel's
status, the token in its `<name>-frpc` Secret, the RelayNode's httpDomain), so a check cannot
share a bug with the code it checks. Reading is separate from checking: `world_from_objects`
and `check_tables` are pure and tested on hand-made inputs (tests/unit/test_invariants_helpers.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import client

from tunnelop.contract.table import TableEntry, parse_table_json, token_sha256

GROUP, VERSION = "tunnelop.dev", "v1alpha1"
RELAY_LABEL = "tunnelop.dev/relay"
TUNNEL_LABEL = "tunnelop.dev/tunnel"
TABLE_KEY = "table.json"
# relay-<relay>-table is a relay's shard 0, relay-<relay>-table-<k> its shard k.
TABLE_SECRET = re.compile(r"relay-(?P<relay>.+?)-table(?:-(?P<shard>[1-9][0-9]*))?")
TOKEN_KEY = "token"

# tcp and udp are separate listeners on a relay: one port number may serve one of each.
PORT_FAMILIES = ("tcp", "udp")
SUBDOMAIN_PROTOCOLS = ("http", "https")
# Scheduled=False reasons that stay until something changes (docs/operator.md, "When a tunnel
# fits nowhere"): a tunnel showing one of them has had its answer. NoRelayReady is left out on
# purpose: the relays of a test become ready, so that answer is still on its way.
FINAL_UNSCHEDULED_REASONS = frozenset(
    {
        "NoRelayMatches",
        "ProtocolNotAllowed",
        "PortNotAllowed",
        "CapacityExhausted",
        "PortTaken",
        "SubdomainTaken",
        "CustomDomainNotAllowed",
        "CustomDomainTaken",
        "InvalidSpec",
    }
)

TunnelKey = tuple[str, str]


@dataclass(frozen=True)
class TunnelFacts:
    """One Tunnel as its object and its credentials Secret show it."""

    namespace: str
    name: str
    protocol: str
    live: bool  # exists and has no deletionTimestamp
    relay: str | None  # status.relayNode
    remote_port: int | None
    subdomain: str | None
    scheduled: str | None  # the Scheduled condition's status: "True", "False" or None
    scheduled_reason: str | None
    ready: bool
    token_digest: str | None  # sha256 of the token in <name>-frpc; None without that Secret

    @property
    def key(self) -> TunnelKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class World:
    """A snapshot of what the checks compare."""

    tunnels: dict[TunnelKey, TunnelFacts]
    tables: dict[str, tuple[TableEntry, ...]]  # relay -> entries of relay-<relay>-table
    unreadable_tables: dict[str, str]  # relay -> why its table.json could not be read
    relays: dict[str, str | None]  # existing RelayNodes -> spec.httpDomain
    deleting_relays: frozenset[str]  # RelayNodes with a deletionTimestamp

    def fingerprint(self) -> str:
        """Equal for two snapshots that no check could tell apart."""
        return json.dumps(
            [
                sorted(map(repr, self.tunnels.values())),
                {r: sorted(map(repr, entries)) for r, entries in sorted(self.tables.items())},
                sorted(self.unreadable_tables.items()),
                sorted(self.relays.items()),
                sorted(self.deleting_relays),
            ]
        )


# ---- reading -------------------------------------------------------------------------------


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def _decode(value: str) -> str:
    return base64.b64decode(value).decode()


def tunnel_facts(tunnel: dict[str, Any], token: str | None) -> TunnelFacts:
    meta, status = tunnel["metadata"], tunnel.get("status") or {}
    scheduled = _condition(tunnel, "Scheduled") or {}
    ready = _condition(tunnel, "Ready") or {}
    return TunnelFacts(
        namespace=meta["namespace"],
        name=meta["name"],
        protocol=(tunnel.get("spec") or {}).get("protocol", ""),
        live=not meta.get("deletionTimestamp"),
        relay=status.get("relayNode"),
        remote_port=status.get("remotePort"),
        subdomain=status.get("subdomain"),
        scheduled=scheduled.get("status"),
        scheduled_reason=scheduled.get("reason"),
        ready=ready.get("status") == "True",
        token_digest=token_sha256(token) if token is not None else None,
    )


def world_from_objects(
    tunnels: Iterable[dict[str, Any]],
    credentials: Iterable[dict[str, Any]],
    table_secrets: Iterable[dict[str, Any]],
    relay_nodes: Iterable[dict[str, Any]],
) -> World:
    """Objects as the API returns them (JSON dicts) -> World. A credentials Secret counts for
    the tunnel it is named after (`<tunnel>-frpc`); a table Secret for the relay of its name
    (`relay-<relay>-table`)."""
    tokens: dict[TunnelKey, str] = {}
    for secret in credentials:
        meta = secret["metadata"]
        if not meta["name"].endswith("-frpc"):
            continue
        raw = (secret.get("data") or {}).get(TOKEN_KEY)
        if raw is not None:
            tokens[(meta["namespace"], meta["name"].removesuffix("-frpc"))] = _decode(raw)
    facts = {}
    for tunnel in tunnels:
        meta = tunnel["metadata"]
        key = (meta["namespace"], meta["name"])
        facts[key] = tunnel_facts(tunnel, tokens.get(key))

    tables: dict[str, tuple[TableEntry, ...]] = {}
    unreadable: dict[str, str] = {}
    for secret in table_secrets:
        name = secret["metadata"]["name"]
        found = TABLE_SECRET.fullmatch(name)
        if found is None:
            continue
        relay, shard = found["relay"], int(found["shard"] or 0)
        try:
            document = parse_table_json(_decode(secret["data"][TABLE_KEY]))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            unreadable[relay] = f"{name}: {type(exc).__name__}: {exc}"
            continue
        if (document.relay, document.shard) != (relay, shard):
            unreadable[relay] = (
                f"{name} says it is shard {document.shard} of relay {document.relay!r}"
            )
            continue
        tables[relay] = tables.get(relay, ()) + tuple(document.entries)

    relays, deleting = {}, set()
    for node in relay_nodes:
        name = node["metadata"]["name"]
        relays[name] = (node.get("spec") or {}).get("httpDomain")
        if node["metadata"].get("deletionTimestamp"):
            deleting.add(name)
    return World(facts, tables, unreadable, relays, frozenset(deleting))


async def read_world(
    api: client.ApiClient, relay_namespace: str, namespace: str, relay_prefix: str
) -> World:
    """The Tunnels and credentials of `namespace`, and the RelayNodes whose name starts with
    `relay_prefix` and their table Secrets (also those of relays already gone)."""
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    tunnels, credentials, relay_secrets, relay_nodes = await asyncio.gather(
        custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "tunnels"),
        core.list_namespaced_secret(namespace, label_selector=TUNNEL_LABEL),
        core.list_namespaced_secret(relay_namespace, label_selector=RELAY_LABEL),
        custom.list_cluster_custom_object(GROUP, VERSION, "relaynodes"),
    )
    plain = api.sanitize_for_serialization
    return world_from_objects(
        tunnels["items"],
        [plain(s) for s in credentials.items],
        [
            plain(s)
            for s in relay_secrets.items
            if (s.metadata.labels or {}).get(RELAY_LABEL, "").startswith(relay_prefix)
        ],
        [n for n in relay_nodes["items"] if n["metadata"]["name"].startswith(relay_prefix)],
    )


# ---- checking ------------------------------------------------------------------------------


def _show(key: TunnelKey) -> str:
    return f"{key[0]}/{key[1]}"


def _where(facts: TunnelFacts | None) -> str:
    if facts is None:
        return "no such Tunnel exists"
    if not facts.live:
        return "the Tunnel is being deleted"
    if facts.relay is None:
        return f"the Tunnel is not bound (Scheduled={facts.scheduled} {facts.scheduled_reason})"
    return f"the Tunnel is bound to {facts.relay}"


def _http_domain(world: World, relay: str) -> str:
    # A relay already gone has no httpDomain to read: its subdomains still clash among
    # themselves.
    return world.relays.get(relay) or f"(httpDomain of {relay})"


def check_tables(world: World) -> list[str]:
    """Every way the relays' tables and the live tunnels disagree, one sentence each; [] when
    they agree."""
    violations = [
        f"table of {r} cannot be read: {why}" for r, why in world.unreadable_tables.items()
    ]
    live = {key: t for key, t in world.tunnels.items() if t.live}
    live_digests = {t.token_digest for t in live.values() if t.token_digest}

    for relay, entries in sorted(world.tables.items()):
        seen: set[TunnelKey] = set()
        for entry in entries:
            key = (entry.namespace, entry.name)
            if key in seen:
                violations.append(f"table of {relay} holds {_show(key)} twice")
            seen.add(key)
            facts = live.get(key)
            if entry.token_sha256 not in live_digests:
                violations.append(
                    f"table of {relay} accepts token digest {entry.token_sha256[:12]}… for "
                    f"{_show(key)}, which is no live tunnel's current token "
                    f"({_where(world.tunnels.get(key))})"
                )
            if facts is None or facts.relay != relay:
                violations.append(
                    f"table of {relay} holds {_show(key)} ({entry.protocol} "
                    f"{entry.remote_port or entry.subdomain}) but {_where(world.tunnels.get(key))}"
                )
                continue
            wrong = [
                f"{field} {got!r} where the status says {want!r}"
                for field, got, want in (
                    ("protocol", entry.protocol, facts.protocol),
                    ("remotePort", entry.remote_port, facts.remote_port),
                    ("subdomain", entry.subdomain, facts.subdomain),
                )
                if got != want
            ]
            if facts.token_digest is None:
                wrong.append("a token digest, but the tunnel has no credentials Secret")
            elif entry.token_sha256 != facts.token_digest:
                wrong.append("the digest of another token than the one in its credentials Secret")
            if wrong:
                violations.append(f"table of {relay} has for {_show(key)}: " + "; ".join(wrong))

    for key, facts in sorted(live.items()):
        if facts.relay is None:
            if facts.scheduled == "True":
                violations.append(f"{_show(key)} says Scheduled=True but names no relayNode")
            continue
        in_table = any((e.namespace, e.name) == key for e in world.tables.get(facts.relay, ()))
        if not in_table:
            violations.append(
                f"{_show(key)} is bound to {facts.relay} (Scheduled={facts.scheduled}) but "
                f"{'is not in its table' if facts.relay in world.tables else 'that relay has no table'}"
            )

    violations += _double_claims(world, live)
    return violations


def _double_claims(world: World, live: dict[TunnelKey, TunnelFacts]) -> list[str]:
    """No (relay, family, port) and no (httpDomain, subdomain) held by two tunnels, whether
    the claim is an entry in a table or a live tunnel's status."""
    ports: dict[tuple[str, str, int], set[TunnelKey]] = collections.defaultdict(set)
    subdomains: dict[tuple[str, str], set[TunnelKey]] = collections.defaultdict(set)

    def claim(relay: str, protocol: str, port: int | None, sub: str | None, key: TunnelKey):
        if protocol in PORT_FAMILIES and port is not None:
            ports[(relay, protocol, port)].add(key)
        if protocol in SUBDOMAIN_PROTOCOLS and sub is not None:
            subdomains[(_http_domain(world, relay), sub)].add(key)

    for relay, entries in world.tables.items():
        for e in entries:
            claim(relay, e.protocol, e.remote_port, e.subdomain, (e.namespace, e.name))
    for key, t in live.items():
        if t.relay is not None:
            claim(t.relay, t.protocol, t.remote_port, t.subdomain, key)
    holders = ", ".join
    return [
        f"{family} port {port} of {relay} is held by {holders(sorted(map(_show, keys)))}"
        for (relay, family, port), keys in sorted(ports.items())
        if len(keys) > 1
    ] + [
        f"subdomain {sub} of {domain} is held by {holders(sorted(map(_show, keys)))}"
        for (domain, sub), keys in sorted(subdomains.items())
        if len(keys) > 1
    ]


def duplicates_within_tables(world: World) -> list[str]:
    """Two entries of one table on one (family, port) or one subdomain. A table Secret is read
    in one piece, so this holds at every instant, even while the operator is busy or dead
    (the other checks compare several objects and need quiescence)."""
    found = []
    for relay, entries in sorted(world.tables.items()):
        claims: dict[tuple[str, object], list[str]] = collections.defaultdict(list)
        for e in entries:
            if e.protocol in PORT_FAMILIES and e.remote_port is not None:
                claims[(e.protocol, e.remote_port)].append(_show((e.namespace, e.name)))
            if e.protocol in SUBDOMAIN_PROTOCOLS and e.subdomain is not None:
                claims[("subdomain", e.subdomain)].append(_show((e.namespace, e.name)))
        found += [
            f"table of {relay} gives {kind} {value} to {', '.join(sorted(names))}"
            for (kind, value), names in sorted(claims.items(), key=repr)
            if len(names) > 1
        ]
    return found


def unsettled(world: World) -> list[str]:
    """What still has to happen before the checks may compare: tunnels without their answer
    (Ready, or Scheduled=False for a reason that stays), objects being deleted, tables of
    relays that are gone."""
    waiting = []
    for key, t in sorted(world.tunnels.items()):
        if not t.live:
            waiting.append(f"{_show(key)} is being deleted")
        elif not t.ready and not (
            t.scheduled == "False" and t.scheduled_reason in FINAL_UNSCHEDULED_REASONS
        ):
            waiting.append(f"{_show(key)} is neither Ready nor finally unschedulable")
    waiting += [f"relay {r} is being deleted" for r in sorted(world.deleting_relays)]
    waiting += [
        f"table of {r} outlives its RelayNode"
        for r in sorted(set(world.tables) | set(world.unreadable_tables))
        if r not in world.relays
    ]
    return waiting


async def wait_quiescent(
    read, *, stable_for: float = 5, timeout: float = 120, interval: float = 0.5
) -> tuple[World, list[str]]:
    """Poll `read()` (-> World) until nothing is unsettled and the snapshot has not changed
    for `stable_for` seconds. Returns the last snapshot and what was still unsettled ([] when
    quiescence came before `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    world = await read()
    since, fingerprint = loop.time(), world.fingerprint()
    while True:
        waiting = unsettled(world)
        now = loop.time()
        if not waiting and now - since >= stable_for:
            return world, []
        if now > deadline:
            return world, waiting or [f"objects still changing after {timeout:.0f}s"]
        await asyncio.sleep(interval)
        world = await read()
        if world.fingerprint() != fingerprint:
            since, fingerprint = loop.time(), world.fingerprint()
