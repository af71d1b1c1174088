"""What the agent answers frps, as pure functions of the allocation table, the sessions the
agent knows of and the request.

frps's server-plugin protocol (frp v0.71, pkg/plugin/server): frps POSTs
`{"version", "op", "content"}` and expects `{"reject", "reject_reason", "unchange",
"content"}`, where `unchange: true` keeps the content as it was and otherwise `content` must be
the whole (modified) content. Booleans are JSON booleans. frps waits for the answer with no
timeout and holds that client meanwhile, so nothing here does I/O.

A rejection reason reaches the frpc user (frps sends it back in the login, proxy or pong
error), so each says what to change; but a client without a valid token learns nothing about
the relay's tunnels: an unknown tunnel and a wrong token get the same answer, after the same
work. Every refusal also carries a `cause` from CAUSES, for the relay's metrics and logs, and
a `detail` with the precise reason for the operator (never sent to the client).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from tunnelop.agent.index import Allowed, TableIndex
from tunnelop.contract.naming import credentials_secret_name
from tunnelop.contract.table import token_sha256

LOGIN = "Login"
NEW_PROXY = "NewProxy"
CLOSE_PROXY = "CloseProxy"
PING = "Ping"
NEW_USER_CONN = "NewUserConn"
OPS = frozenset({LOGIN, NEW_PROXY, CLOSE_PROXY, PING, NEW_USER_CONN})

# Why a call was refused: a fixed set, so that a request cannot make up metric labels.
MALFORMED = "malformed"
MISSING_CREDENTIALS = "missing_credentials"
UNKNOWN_TUNNEL = "unknown_tunnel"
BAD_TOKEN = "bad_token"
WRONG_USER = "wrong_user"
SUSPENDED = "suspended"
RUN_ID_TAKEN = "run_id_taken"
ALREADY_CONNECTED = "already_connected"
WRONG_NAME = "wrong_name"
WRONG_TYPE = "wrong_type"
LOAD_BALANCING = "load_balancing"
WRONG_PORT = "wrong_port"
WRONG_SUBDOMAIN = "wrong_subdomain"
FOREIGN_DOMAIN = "foreign_domain"
NO_HOST = "no_host"
ROUTING_OPTION = "routing_option"
SOURCE_RANGES_UNENFORCEABLE = "source_ranges_unenforceable"
UNKNOWN_PROXY = "unknown_proxy"
OUTSIDE_SOURCE_RANGES = "outside_source_ranges"
NOT_READY = "not_ready"
NOT_REGISTERED = "not_registered"  # frps did not register a proxy the agent accepted
CAUSES = frozenset(
    {
        MALFORMED,
        MISSING_CREDENTIALS,
        UNKNOWN_TUNNEL,
        BAD_TOKEN,
        WRONG_USER,
        SUSPENDED,
        RUN_ID_TAKEN,
        ALREADY_CONNECTED,
        WRONG_NAME,
        WRONG_TYPE,
        LOAD_BALANCING,
        WRONG_PORT,
        WRONG_SUBDOMAIN,
        FOREIGN_DOMAIN,
        NO_HOST,
        ROUTING_OPTION,
        SOURCE_RANGES_UNENFORCEABLE,
        UNKNOWN_PROXY,
        OUTSIDE_SOURCE_RANGES,
        NOT_READY,
        NOT_REGISTERED,
    }
)

# frp's bandwidth units are bytes per second, in KB (1024) or MB.
_KIB = 1024
# Compared against when the tunnel is unknown, so that an unknown tunnel and a wrong token
# cost the same: no timing tells a stranger which tunnels exist.
_DUMMY_DIGEST = token_sha256("no tunnel has this token")


class SessionView(Protocol):
    """What the decisions read of the sessions the agent knows of (sessions.py)."""

    def tunnel_of(self, run_id: str, now: float) -> str | None:
        """The tunnel whose live session has this run_id, if any."""
        ...

    def proxy_run_id(self, tunnel: str) -> str | None:
        """The run_id of the session whose proxy of the tunnel is online, if known."""
        ...


class _NoSessions:
    def tunnel_of(self, run_id: str, now: float) -> str | None:
        return None

    def proxy_run_id(self, tunnel: str) -> str | None:
        return None


NO_SESSIONS: SessionView = _NoSessions()


@dataclass(frozen=True)
class Decision:
    """The answer to frps, and what it tells metering about the tunnel (if one was named)."""

    response: dict[str, Any]
    tunnel: str | None = None  # "namespace/name", as the client named it
    client_alive: bool = False  # a login, proxy or heartbeat of the tunnel's client passed
    proxy_online: bool | None = None  # NewProxy accepted: True; CloseProxy: False
    run_id: str | None = None  # the client session the call came from, when frps said
    cause: str | None = None  # refused: one of CAUSES
    detail: str | None = None  # refused: the precise reason, for the relay's log

    @property
    def rejected(self) -> bool:
        return bool(self.response.get("reject"))

    @property
    def reason(self) -> str | None:
        """The reason the client is given (None when accepted)."""
        return self.response.get("reject_reason") if self.rejected else None


def accept(tunnel: str | None = None, **observed: Any) -> Decision:
    return Decision({"reject": False, "unchange": True}, tunnel, **observed)


def reject(
    reason: str,
    tunnel: str | None = None,
    *,
    cause: str = MALFORMED,
    detail: str | None = None,
    run_id: str | None = None,
) -> Decision:
    return Decision(
        {"reject": True, "reject_reason": reason, "unchange": True},
        tunnel,
        run_id=run_id,
        cause=cause,
        detail=detail or reason,
    )


def credentials_refused(relay: str) -> str:
    """The one answer to a client whose tunnel is unknown or whose token is wrong."""
    return (
        f"credentials refused by relay {relay}: use the current frpc.toml from your Tunnel's "
        "credentials Secret (<tunnel>-frpc)"
    )


def decide(
    index: TableIndex,
    op: str,
    content: Any,
    sessions: SessionView = NO_SESSIONS,
    now: float = 0.0,
) -> Decision:
    """The answer to one plugin call. Never raises: malformed content is rejected with a
    reason (except CloseProxy, which is only noted). `now` is a monotonic time, for the
    sessions' liveness."""
    handler = _HANDLERS.get(op) if isinstance(op, str) else None
    if handler is None:
        # An op this agent was not configured for: never block frps on it.
        return accept()
    if not isinstance(content, dict):
        return accept() if op == CLOSE_PROXY else reject("malformed plugin request: no content")
    try:
        return handler(_Call(index, content, sessions, now))
    except (TypeError, ValueError, AttributeError) as exc:
        return reject(f"malformed {op} request: {exc}")


@dataclass(frozen=True)
class _Call:
    index: TableIndex
    content: dict[str, Any]
    sessions: SessionView
    now: float


# ---- the ops --------------------------------------------------------------------------------


def login(call: _Call) -> Decision:
    """A client logs in: its tunnel must be on this relay, its token valid, and the tunnel
    not suspended. The login's user must be the tunnel's namespace (frps names proxies
    `<user>.<name>`, which is how traffic is told apart). A run_id (empty on a client's first
    login: frps then makes one) must not be another tunnel's: frps would hand that tunnel's
    session to this client."""
    content = call.content
    run_id = _run_id(content.get("run_id"))
    found = _authenticate(call.index, content.get("metas"), content.get("user"), run_id)
    if isinstance(found, Decision):
        return found
    taken = _run_id_taken(call, found, run_id)
    if taken is not None:
        return taken
    return accept(found.key, client_alive=True, run_id=run_id)


def new_proxy(call: _Call) -> Decision:
    """A proxy must be exactly the tunnel's allocation: name, type, port or host names, with
    no option that would route a shared host's requests elsewhere. The tunnel's bandwidth is
    forced, limited by frps itself (mode "server")."""
    content = call.content
    user = _user(content)
    run_id = _run_id(user.get("run_id"))
    found = _authenticate(call.index, user.get("metas"), user.get("user"), run_id)
    if isinstance(found, Decision):
        return found
    taken = _run_id_taken(call, found, run_id)
    if taken is not None:
        return taken
    refused = _proxy_refusal(call.index, found, content)
    if refused is not None:
        cause, reason = refused
        return reject(reason, found.key, cause=cause, run_id=run_id)
    online_from = call.sessions.proxy_run_id(found.key)
    if online_from is not None and online_from != run_id:
        return reject(
            f"tunnel {found.key} is already connected from another frpc: only one frpc may run "
            "per tunnel; stop the other one (this one retries)",
            found.key,
            cause=ALREADY_CONNECTED,
            run_id=run_id,
        )
    entry = found.entry
    if entry.bandwidth_bps is None:
        return accept(found.key, client_alive=True, proxy_online=True, run_id=run_id)
    forced = {
        **content,
        "bandwidth_limit": frp_bandwidth(entry.bandwidth_bps),
        "bandwidth_limit_mode": "server",
    }
    return Decision(
        {"reject": False, "unchange": False, "content": forced},
        found.key,
        client_alive=True,
        proxy_online=True,
        run_id=run_id,
    )


def ping(call: _Call) -> Decision:
    """A heartbeat: rejecting it makes frps answer the client with an error, and frpc then
    closes its session: this is how a suspended or deleted tunnel's client is kicked. (frps
    also drops a client whose last accepted Ping is too old: see builders/frps.py.)"""
    user = _user(call.content)
    run_id = _run_id(user.get("run_id"))
    found = _authenticate(call.index, user.get("metas"), user.get("user"), run_id)
    if isinstance(found, Decision):
        return found
    taken = _run_id_taken(call, found, run_id)
    if taken is not None:
        return taken
    return accept(found.key, client_alive=True, run_id=run_id)


def new_user_conn(call: _Call) -> Decision:
    """A visitor connects: the tunnel must be live and the visitor's address inside
    spec.allowSourceRanges (when set)."""
    content, index = call.content, call.index
    name = content.get("proxy_name")
    found = index.by_proxy.get(name) if isinstance(name, str) else None
    if found is None:
        return reject(f"proxy {name!r} is not a tunnel of relay {index.relay}", cause=UNKNOWN_PROXY)
    key = found.key
    if found.entry.suspended:
        return reject(f"tunnel {key} is suspended", key, cause=SUSPENDED)
    if found.networks:
        address = visitor_address(content.get("remote_addr"))
        if address is None or not any(address in net for net in found.networks):
            return reject(
                f"visitor {content.get('remote_addr')} is outside the allowSourceRanges of "
                f"tunnel {key}",
                key,
                cause=OUTSIDE_SOURCE_RANGES,
            )
    return accept(key)


def close_proxy(call: _Call) -> Decision:
    """Only noted: the proxy went offline. The run_id tells whose proxy: metering marks the
    tunnel offline only when it is the session whose proxy is online (a late CloseProxy of a
    replaced session, or a forged one, changes nothing)."""
    content, index = call.content, call.index
    name = content.get("proxy_name")
    found = index.by_proxy.get(name) if isinstance(name, str) else None
    run_id = _run_id(_user(content).get("run_id"))
    return accept(found.key if found else None, proxy_online=False, run_id=run_id)


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


def _run_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _authenticate(
    index: TableIndex, metas: Any, user: Any, run_id: str | None
) -> Allowed | Decision:
    """The tunnel a client speaks for, if its credentials hold on this relay."""
    metas = metas if isinstance(metas, dict) else {}
    tunnel, token = metas.get("tunnel"), metas.get("token")
    if not isinstance(tunnel, str) or not isinstance(token, str) or not tunnel or not token:
        return reject(
            "this relay requires metadatas.tunnel and metadatas.token: use the frpc.toml "
            "from your Tunnel's credentials Secret (<tunnel>-frpc)",
            cause=MISSING_CREDENTIALS,
            run_id=run_id,
        )
    found = index.by_tunnel.get(tunnel)
    # The same work whether the tunnel exists or not: digest, then a constant-time compare.
    digest = token_sha256(token)
    matches = hmac.compare_digest(digest, found.entry.token_sha256 if found else _DUMMY_DIGEST)
    if found is None or not matches:
        cause = UNKNOWN_TUNNEL if found is None else BAD_TOKEN
        detail = (
            f"tunnel {tunnel} is not on relay {index.relay}"
            if found is None
            else f"wrong token for tunnel {tunnel} (the valid one is in Secret "
            f"{credentials_secret_name(found.entry.name)})"
        )
        return reject(
            credentials_refused(index.relay), tunnel, cause=cause, detail=detail, run_id=run_id
        )
    if user != found.entry.namespace:
        return reject(
            f"tunnel {tunnel} must log in as user {found.entry.namespace!r} (its namespace), "
            f"got {user!r}: set user = {found.entry.namespace!r}",
            tunnel,
            cause=WRONG_USER,
            run_id=run_id,
        )
    if found.entry.suspended:
        return reject(
            f"tunnel {tunnel} is suspended (spec.suspended)", tunnel, cause=SUSPENDED, run_id=run_id
        )
    return found


def _run_id_taken(call: _Call, found: Allowed, run_id: str | None) -> Decision | None:
    """A refusal if the run_id is a live session of another tunnel: frps keys client
    sessions by run_id, and a login reusing one replaces that session."""
    if run_id is None:
        return None
    owner = call.sessions.tunnel_of(run_id, call.now)
    if owner is None or owner == found.key:
        return None
    return reject(
        f"run id {run_id} is in use by another client of relay {call.index.relay}: restart "
        "frpc without a run id (frps then gives it a new one)",
        found.key,
        cause=RUN_ID_TAKEN,
        detail=f"run id {run_id} of tunnel {owner} claimed by tunnel {found.key}",
        run_id=run_id,
    )


def _proxy_refusal(
    index: TableIndex, found: Allowed, content: dict[str, Any]
) -> tuple[str, str] | None:
    """(cause, reason) if the proxy is not exactly the tunnel's allocation."""
    entry, key = found.entry, found.key
    name = content.get("proxy_name")
    if name != found.proxy_name:
        return WRONG_NAME, (
            f"tunnel {key} allows one proxy, named {entry.name!r} (frps sees "
            f"{found.proxy_name!r}); got {name!r}: set name = {entry.name!r} under [[proxies]]"
        )
    proxy_type = content.get("proxy_type")
    if proxy_type != entry.protocol:
        return WRONG_TYPE, (
            f"tunnel {key} is of type {entry.protocol!r}, got proxy type {proxy_type!r}: "
            f"set type = {entry.protocol!r}"
        )
    if content.get("group") or content.get("group_key"):
        return LOAD_BALANCING, f"tunnel {key}: load-balancing groups are not offered; remove group"
    if entry.allow_source_ranges and entry.protocol not in SOURCE_RANGE_PROTOCOLS:
        # The API refuses this; the table may still carry it (an older operator, a hand
        # edit): the agent cannot enforce it, so it does not serve the tunnel.
        return SOURCE_RANGES_UNENFORCEABLE, (
            f"tunnel {key}: spec.allowSourceRanges cannot be enforced for {entry.protocol} "
            "tunnels on this relay; remove it from the Tunnel's spec"
        )
    if entry.protocol in ("tcp", "udp"):
        port = content.get("remote_port") or 0
        if port != entry.remote_port:
            return WRONG_PORT, (
                f"tunnel {key} is allocated port {entry.remote_port} on relay {index.relay}, "
                f"got remotePort {port}: set remotePort = {entry.remote_port}"
            )
        return None
    return _host_refusal(found, content)


# frps asks the plugin about each visitor (NewUserConn) only for proxies served through
# BaseProxy.startCommonTCPListenersHandler (server/proxy/proxy.go): tcp (tcp.go), https
# (https.go) and tcpmux (tcpmux.go). http visitors go through frps's reverse proxy
# (server/proxy/http.go) and udp packets through udp.go's own loop: no call, so no check.
SOURCE_RANGE_PROTOCOLS = frozenset({"tcp", "https"})

# NewProxy keys (frp pkg/msg/msg.go) that change how frps routes requests to a host name
# (pkg/util/vhost/router.go keys routes by domain, location and HTTP user, and falls back
# from a user's route to the all-users one): refused, named as the tenant writes them in
# frpc.toml. A relay serves one whole host name per tunnel.
# Left alone, because they only concern the tenant's own route (server/proxy/http.go copies
# them into its RouteConfig): host_header_rewrite and headers (what its backend receives),
# response_headers (what its visitors receive), http_user / http_pwd (basic auth in front of
# its own host names).
_ROUTING_OPTIONS = (("locations", "locations"), ("route_by_http_user", "routeByHTTPUser"))


def _host_refusal(found: Allowed, content: dict[str, Any]) -> tuple[str, str] | None:
    entry, key = found.entry, found.key
    for wire, option in _ROUTING_OPTIONS:
        value = content.get(wire)
        if value and value != [""]:
            return ROUTING_OPTION, (
                f"tunnel {key}: this relay does not allow {option} (its tunnels serve whole "
                f"host names); remove {option} from frpc.toml"
            )
    raw_subdomain = content.get("subdomain") or None
    subdomain = raw_subdomain.lower() if isinstance(raw_subdomain, str) else raw_subdomain
    if subdomain is not None and subdomain != found.subdomain:
        return WRONG_SUBDOMAIN, (
            f"tunnel {key} is allocated subdomain {entry.subdomain!r}, got {raw_subdomain!r}: "
            f"set subdomain = {entry.subdomain!r}"
        )
    domains = content.get("custom_domains") or []
    foreign = sorted({_lower(d) for d in domains} - found.domains)
    if foreign:
        allowed = ", ".join(entry.custom_domains) or "none"
        return FOREIGN_DOMAIN, (
            f"tunnel {key} may not serve {', '.join(map(str, foreign))}: the custom domains in "
            f"its spec are {allowed}"
        )
    if subdomain is None and not domains:
        return NO_HOST, (
            f"tunnel {key} needs subdomain = {entry.subdomain!r} (or its custom domains)"
        )
    return None


def _lower(domain: Any) -> Any:
    """Host names compare case-insensitively (frps's router lowercases them)."""
    return domain.lower() if isinstance(domain, str) else domain


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
