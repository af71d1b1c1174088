"""What the agent answers frps, as pure functions of the allocation table and the request.

frps's server-plugin protocol (frp v0.71, pkg/plugin/server): frps POSTs
`{"version", "op", "content"}` and expects `{"reject", "reject_reason", "unchange",
"content"}`, where `unchange: true` keeps the content as it was and otherwise `content` must be
the whole (modified) content. Booleans are JSON booleans. frps waits for the answer with no
timeout and holds that client meanwhile, so nothing here does I/O.

A rejection reason reaches the frpc user (frps sends it back in the login, proxy or pong
error), so each says what to change.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any

from tunnelop.agent.index import Allowed, TableIndex
from tunnelop.contract.naming import credentials_secret_name
from tunnelop.contract.table import token_sha256

LOGIN = "Login"
NEW_PROXY = "NewProxy"
CLOSE_PROXY = "CloseProxy"
PING = "Ping"
NEW_USER_CONN = "NewUserConn"
OPS = frozenset({LOGIN, NEW_PROXY, CLOSE_PROXY, PING, NEW_USER_CONN})

# frp's bandwidth units are bytes per second, in KB (1024) or MB.
_KIB = 1024


@dataclass(frozen=True)
class Decision:
    """The answer to frps, and what it tells metering about the tunnel (if one was named)."""

    response: dict[str, Any]
    tunnel: str | None = None  # "namespace/name"
    client_alive: bool = False  # a login, proxy or heartbeat of the tunnel's client passed
    proxy_online: bool | None = None  # NewProxy accepted: True; CloseProxy: False

    @property
    def rejected(self) -> bool:
        return bool(self.response.get("reject"))


def accept(tunnel: str | None = None, **observed: Any) -> Decision:
    return Decision({"reject": False, "unchange": True}, tunnel, **observed)


def reject(reason: str, tunnel: str | None = None) -> Decision:
    return Decision({"reject": True, "reject_reason": reason, "unchange": True}, tunnel)


def decide(index: TableIndex, op: str, content: Any) -> Decision:
    """The answer to one plugin call. Never raises: malformed content is rejected with a
    reason (except CloseProxy, which is only noted)."""
    handler = _HANDLERS.get(op) if isinstance(op, str) else None
    if handler is None:
        # An op this agent was not configured for: never block frps on it.
        return accept()
    if not isinstance(content, dict):
        return accept() if op == CLOSE_PROXY else reject("malformed plugin request: no content")
    try:
        return handler(index, content)
    except (TypeError, ValueError, AttributeError) as exc:
        return reject(f"malformed {op} request: {exc}")


# ---- the ops --------------------------------------------------------------------------------


def login(index: TableIndex, content: dict[str, Any]) -> Decision:
    """A client logs in: its tunnel must be on this relay, its token valid, and the tunnel
    not suspended. The login's user must be the tunnel's namespace (frps names proxies
    `<user>.<name>`, which is how traffic is told apart)."""
    found = _authenticate(index, _metas(content), content.get("user"))
    if isinstance(found, Decision):
        return found
    return accept(found.key, client_alive=True)


def new_proxy(index: TableIndex, content: dict[str, Any]) -> Decision:
    """A proxy must be exactly the tunnel's allocation: name, type, port or host names. The
    tunnel's bandwidth is forced, limited by frps itself (mode "server")."""
    user = _user(content)
    found = _authenticate(index, user.get("metas"), user.get("user"))
    if isinstance(found, Decision):
        return found
    entry = found.entry
    key = found.key
    name = content.get("proxy_name")
    if name != found.proxy_name:
        local = entry.name
        return reject(
            f"tunnel {key} allows one proxy, named {local!r} (frps sees {found.proxy_name!r}); "
            f"got {name!r}: set name = {local!r} under [[proxies]]",
            key,
        )
    proxy_type = content.get("proxy_type")
    if proxy_type != entry.protocol:
        return reject(
            f"tunnel {key} is of type {entry.protocol!r}, got proxy type {proxy_type!r}: "
            f"set type = {entry.protocol!r}",
            key,
        )
    if content.get("group") or content.get("group_key"):
        return reject(f"tunnel {key}: load-balancing groups are not offered; remove group", key)
    if entry.protocol in ("tcp", "udp"):
        port = content.get("remote_port") or 0
        if port != entry.remote_port:
            return reject(
                f"tunnel {key} is allocated port {entry.remote_port} on relay {index.relay}, "
                f"got remotePort {port}: set remotePort = {entry.remote_port}",
                key,
            )
    else:
        subdomain = content.get("subdomain") or None
        if subdomain is not None and subdomain != entry.subdomain:
            return reject(
                f"tunnel {key} is allocated subdomain {entry.subdomain!r}, got {subdomain!r}: "
                f"set subdomain = {entry.subdomain!r}",
                key,
            )
        domains = content.get("custom_domains") or []
        foreign = sorted(set(domains) - set(entry.custom_domains))
        if foreign:
            allowed = ", ".join(entry.custom_domains) or "none"
            return reject(
                f"tunnel {key} may not serve {', '.join(foreign)}: the custom domains in its "
                f"spec are {allowed}",
                key,
            )
        if subdomain is None and not domains:
            return reject(
                f"tunnel {key} needs subdomain = {entry.subdomain!r} (or its custom domains)", key
            )
    if entry.bandwidth_bps is None:
        return accept(key, client_alive=True, proxy_online=True)
    forced = {
        **content,
        "bandwidth_limit": frp_bandwidth(entry.bandwidth_bps),
        "bandwidth_limit_mode": "server",
    }
    return Decision(
        {"reject": False, "unchange": False, "content": forced},
        key,
        client_alive=True,
        proxy_online=True,
    )


def ping(index: TableIndex, content: dict[str, Any]) -> Decision:
    """A heartbeat: rejecting it makes frps answer the client with an error, and frpc then
    closes its session: this is how a suspended or deleted tunnel's client is kicked."""
    user = _user(content)
    found = _authenticate(index, user.get("metas"), user.get("user"))
    if isinstance(found, Decision):
        return found
    return accept(found.key, client_alive=True)


def new_user_conn(index: TableIndex, content: dict[str, Any]) -> Decision:
    """A visitor connects: the tunnel must be live and the visitor's address inside
    spec.allowSourceRanges (when set)."""
    name = content.get("proxy_name")
    found = index.by_proxy.get(name) if isinstance(name, str) else None
    if found is None:
        return reject(f"proxy {name!r} is not a tunnel of relay {index.relay}")
    key = found.key
    if found.entry.suspended:
        return reject(f"tunnel {key} is suspended", key)
    if found.networks:
        address = visitor_address(content.get("remote_addr"))
        if address is None or not any(address in net for net in found.networks):
            return reject(
                f"visitor {content.get('remote_addr')} is outside the allowSourceRanges of "
                f"tunnel {key}",
                key,
            )
    return accept(key)


def close_proxy(index: TableIndex, content: dict[str, Any]) -> Decision:
    """Only noted: the proxy went offline."""
    name = content.get("proxy_name")
    found = index.by_proxy.get(name) if isinstance(name, str) else None
    return accept(found.key if found else None, proxy_online=False)


_HANDLERS = {
    LOGIN: login,
    NEW_PROXY: new_proxy,
    PING: ping,
    NEW_USER_CONN: new_user_conn,
    CLOSE_PROXY: close_proxy,
}


# ---- pieces ---------------------------------------------------------------------------------


def _user(content: dict[str, Any]) -> dict[str, Any]:
    user = content.get("user")
    return user if isinstance(user, dict) else {}


def _metas(content: dict[str, Any]) -> Any:
    return content.get("metas")


def _authenticate(index: TableIndex, metas: Any, user: Any) -> Allowed | Decision:
    """The tunnel a client speaks for, if its credentials hold on this relay."""
    metas = metas if isinstance(metas, dict) else {}
    tunnel, token = metas.get("tunnel"), metas.get("token")
    if not isinstance(tunnel, str) or not isinstance(token, str) or not tunnel or not token:
        return reject(
            "this relay requires metadatas.tunnel and metadatas.token: use the frpc.toml "
            "from your Tunnel's credentials Secret (<tunnel>-frpc)"
        )
    found = index.by_tunnel.get(tunnel)
    if found is None:
        return reject(
            f"tunnel {tunnel} is not on relay {index.relay} (deleted, moved or not scheduled "
            "yet): use the current frpc.toml from its credentials Secret",
            tunnel,
        )
    secret = credentials_secret_name(found.entry.name)
    digest = token_sha256(token)
    if not hmac.compare_digest(digest, found.entry.token_sha256):
        return reject(
            f"invalid token for tunnel {tunnel}: use the token from Secret {secret}", tunnel
        )
    if user != found.entry.namespace:
        return reject(
            f"tunnel {tunnel} must log in as user {found.entry.namespace!r} (its namespace), "
            f"got {user!r}: set user = {found.entry.namespace!r}",
            tunnel,
        )
    if found.entry.suspended:
        return reject(f"tunnel {tunnel} is suspended (spec.suspended)", tunnel)
    return found


def frp_bandwidth(bits_per_second: int) -> str:
    """spec.bandwidth (bits/s) in frp's unit: whole KB/s (1024 bytes), at least 1KB."""
    kib = max(1, round(bits_per_second / 8 / _KIB))
    return f"{kib}KB"


def visitor_address(remote_addr: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of frps's `remote_addr` ("1.2.3.4:5678" or "[::1]:5678"), None if unparsable.
    An IPv4-mapped IPv6 address counts as its IPv4 address."""
    if not isinstance(remote_addr, str):
        return None
    host = remote_addr.rsplit(":", 1)[0] if ":" in remote_addr else remote_addr
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address
