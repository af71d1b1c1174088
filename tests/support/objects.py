"""Manifests and waits shared by the scheduling, relay and end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import tomllib
from typing import Any

from support import tools
from tunnelop.contract.naming import RELAY_LABEL, table_secret_name
from tunnelop.contract.table import TABLE_SHARDS, shard_of

GROUP_VERSION = "tunnelop.dev/v1alpha1"


def relay_node(
    name: str,
    *,
    ports: str = "20000-20999",
    protocols: list[str] | None = None,
    labels: dict[str, str] | None = None,
    exposure: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": {"range": ports}, **spec}
    if protocols:
        body["protocols"] = protocols
    body["exposure"] = exposure or {"type": "HostNetwork", "address": f"{name}.relays.example.test"}
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "RelayNode",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": body,
    }


def tunnel(name: str, protocol: str = "tcp", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Tunnel",
        "metadata": {"name": name},
        "spec": {"protocol": protocol, **spec},
    }


def apply(obj: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None) -> None:
    items = obj if isinstance(obj, list) else [obj]
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    args = ["apply", "--server-side", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    tools.kubectl(*args, input=doc)


def get(kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    result = tools.kubectl(*args, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def list_objects(
    kind: str, namespace: str | None = None, selector: str = ""
) -> list[dict[str, Any]]:
    args = ["get", kind, "-o", "json"] + (["-n", namespace] if namespace else ["-A"])
    if selector:
        args += ["-l", selector]
    return json.loads(tools.kubectl(*args, timeout=300).stdout)["items"]


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return None


async def wait_for(predicate, timeout: float = 60, interval: float = 0.3, what: str = "condition"):
    """Poll `predicate()` until it returns something truthy; return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_condition(
    kind: str,
    name: str,
    namespace: str | None,
    type_: str,
    status: str = "True",
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def check():
        obj = get(kind, name, namespace)
        c = condition(obj, type_)
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            return obj
        return None

    try:
        return await wait_for(check, timeout, what=f"{kind}/{name} {type_}={status} {reason or ''}")
    except TimeoutError as exc:
        last = (get(kind, name, namespace) or {}).get("status")
        raise TimeoutError(f"{exc}; last status: {json.dumps(last)}") from None


def rewritten(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Of two snapshots (name -> object), the objects whose resourceVersion moved, with their
    status before and after: what a "writes nothing" test reports when it fails."""
    return {
        key: {"before": before[key].get("status"), "after": (after.get(key) or {}).get("status")}
        for key in before
        if before[key]["metadata"]["resourceVersion"]
        != ((after.get(key) or {}).get("metadata") or {}).get("resourceVersion")
    }


def snapshot_of(objs: list[dict[str, Any] | None]) -> dict[str, dict]:
    """name -> object, for `rewritten` and `assert_unchanged`."""
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objs if o}


def assert_unchanged(before: dict[str, dict], after: dict[str, dict]) -> None:
    """No object of the snapshot was written in between (its resourceVersion is the same)."""
    changed = rewritten(before, after)
    assert not changed, json.dumps(changed, indent=1)[:4000]


def patch_tunnel(
    tunnel_name: str, namespace: str, patch: dict[str, Any], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl patch --type=merge` of a Tunnel, as a user or GitOps tool would write it."""
    return tools.kubectl(
        "patch",
        "tunnel",
        tunnel_name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=check,
    )


def set_suspended(tunnel_name: str, namespace: str, suspended: bool) -> None:
    """Suspend or resume a Tunnel, as a provider would (merge patch of spec.suspended)."""
    patch_tunnel(tunnel_name, namespace, {"spec": {"suspended": suspended}})


def secret_data(name: str, namespace: str) -> dict[str, str]:
    secret = get("secret", name, namespace) or {}
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def relay_table_secrets(relay: str, namespace: str) -> list[dict[str, Any]]:
    """The Secrets of a relay's table, one per shard that exists, in shard order."""
    secrets = list_objects("secret", namespace, f"{RELAY_LABEL}={relay}")
    found = {s["metadata"]["name"]: s for s in secrets}
    names = [table_secret_name(relay, shard) for shard in range(TABLE_SHARDS)]
    return [found[name] for name in names if name in found]


def relay_table(relay: str, namespace: str) -> list[dict[str, Any]]:
    """Every entry of a relay's table (all its shards), as JSON, sorted by namespace/name."""
    entries = []
    for secret in relay_table_secrets(relay, namespace):
        text = base64.b64decode((secret.get("data") or {}).get("table.json") or "").decode()
        entries += json.loads(text)["tunnels"] if text else []
    return sorted(entries, key=lambda e: (e["namespace"], e["name"]))


def table_secret_of(relay: str, tunnel_namespace: str, tunnel: str) -> str:
    """The Secret of the relay's table shard that holds a tunnel."""
    return table_secret_name(relay, shard_of(tunnel_namespace, tunnel))


def with_local_lines(text: str, local_ip_line: str, local_port_line: str) -> str:
    """An frpc.toml with its localIP and localPort lines (frp templates, not TOML) replaced."""
    lines = text.splitlines(keepends=True)
    for start, replacement in (("localIP = ", local_ip_line), ("localPort = ", local_port_line)):
        (i,) = [i for i, line in enumerate(lines) if line.startswith(start)]
        lines[i] = replacement + "\n"
    return "".join(lines)


def parse_frpc(text: str, local_port: int = 8080) -> dict[str, Any]:
    """An frpc.toml as frpc reads it with TUNNELOP_LOCAL_PORT set (and no TUNNELOP_LOCAL_IP)."""
    return tomllib.loads(
        with_local_lines(text, 'localIP = "127.0.0.1"', f"localPort = {local_port}")
    )


def frpc_config(tunnel_name: str, namespace: str) -> dict[str, Any]:
    return parse_frpc(secret_data(f"{tunnel_name}-frpc", namespace)["frpc.toml"])


def events(namespace: str, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The Events about object `name` in `namespace` (cluster-scoped objects: "default"),
    oldest first."""
    selector = f"involvedObject.name={name}" + (f",involvedObject.kind={kind}" if kind else "")
    result = tools.kubectl(
        "get", "events", "-n", namespace, "--field-selector", selector, "-o", "json"
    )
    found = json.loads(result.stdout)["items"]
    return sorted(found, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")


def event_reasons(namespace: str, name: str) -> list[str]:
    """The reasons of the Events about object `name` in `namespace`."""
    return tools.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()


def relay_own_ports(
    frps: dict[str, Any], deployment: dict[str, Any], service: dict[str, Any] | None
) -> set[int]:
    """Every port a relay uses itself, read from what the operator builds for it: its parsed
    frps.toml, its Deployment (container ports, the agent's listen flags) and its Service
    without tunnel ports (None with HostNetwork)."""
    ports = {frps["bindPort"], frps["webServer"]["port"]}
    ports |= {frps[key] for key in ("vhostHTTPPort", "vhostHTTPSPort") if key in frps}
    ports |= {_port_of(plugin["addr"]) for plugin in frps["httpPlugins"]}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        ports |= {p["containerPort"] for p in container.get("ports", [])}
        args = container.get("args", [])
        for flag in ("--listen", "--health-listen"):
            if flag in args:
                ports.add(_port_of(args[args.index(flag) + 1]))
    for entry in (service or {}).get("spec", {}).get("ports", []):
        ports |= {entry["port"], entry["targetPort"]}
    return ports


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---- TunnelQuota ---------------------------------------------------------------------------


def tunnel_quota(name: str, hard: dict, suspended: bool = False) -> dict:
    return {
        "apiVersion": "tunnelop.dev/v1alpha1",
        "kind": "TunnelQuota",
        "metadata": {"name": name},
        "spec": {"hard": hard, "suspended": suspended},
    }


async def apply_quota(namespace: str, name: str, hard: dict, suspended: bool = False) -> None:
    """Apply a TunnelQuota and wait until the operator counts it (its Ready condition)."""
    apply(tunnel_quota(name, hard, suspended), namespace)

    def counted():
        found = get("tunnelquota", name, namespace)
        ready = condition(found, "Ready")
        generation = found["metadata"]["generation"] if found else None
        return ready and ready["observedGeneration"] == generation and found

    await wait_for(counted, what=f"TunnelQuota {name} counted")


def patch_quota(namespace: str, name: str, spec: dict) -> None:
    patch = json.dumps({"spec": spec})
    tools.kubectl("patch", "tq", name, "-n", namespace, "--type=merge", "-p", patch)
