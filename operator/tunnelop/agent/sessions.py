"""The client sessions the agent knows of: which tunnel each live run_id speaks for, and
whose proxy of each tunnel is online.

frps keys a client's session (its control) by run_id: a login that presents a live run_id
replaces that session, and every later call of the session carries it. So a run_id belongs to
one tunnel while its session lives, and a proxy goes offline only by the CloseProxy of the
session that registered it. frps's own metrics stay the ground truth for a proxy being
online: an accepted proxy frps never shows is dropped after a few readings.

Memory is bounded by the table: at most MAX_RUN_IDS_PER_TUNNEL sessions and one proxy per
tunnel in it, and tunnels that leave the table are forgotten.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

# A session whose last accepted call (login, proxy or heartbeat) is older than this is no
# longer live: frps drops a client 3-4 s after its last accepted heartbeat (builders/frps.py).
SESSION_TTL = 10.0
# A tenant's own frpc restarts (each with a new run_id) must not grow memory without bound.
MAX_RUN_IDS_PER_TUNNEL = 4
# frps readings (one per meter interval) an accepted proxy may be missing from before it is
# taken as not registered: the reading in flight when it was accepted may predate it.
REGISTRATION_READINGS = 2


@dataclass
class ProxyState:
    """A tunnel's proxy, accepted by the agent or seen in frps's metrics."""

    run_id: str | None  # None: seen in frps's metrics only (say, the agent restarted)
    registered: bool = False  # frps showed it
    missing_readings: int = 0


@dataclass
class Sessions:
    # run_id -> (tunnel, monotonic time of its last accepted call)
    bound: dict[str, tuple[str, float]] = field(default_factory=dict)
    # tunnel -> its run_ids, oldest first (insertion order)
    run_ids: dict[str, dict[str, None]] = field(default_factory=dict)
    proxies: dict[str, ProxyState] = field(default_factory=dict)

    # ---- what the decisions read (decisions.SessionView) ------------------------------------

    def tunnel_of(self, run_id: str, now: float) -> str | None:
        bound = self.bound.get(run_id)
        if bound is None or now - bound[1] > SESSION_TTL:
            return None
        return bound[0]

    def proxy_run_id(self, tunnel: str) -> str | None:
        proxy = self.proxies.get(tunnel)
        return proxy.run_id if proxy else None

    # ---- what the agent notes ---------------------------------------------------------------

    def seen(self, tunnel: str, run_id: str | None, now: float) -> None:
        """An accepted login, proxy or heartbeat of the tunnel's session `run_id`."""
        if run_id is None:
            return
        previous = self.bound.get(run_id)
        if previous is not None and previous[0] != tunnel:
            self._unbind(run_id)  # expired session of another tunnel (decisions checked)
        self.bound[run_id] = (tunnel, now)
        mine = self.run_ids.setdefault(tunnel, {})
        mine.pop(run_id, None)
        mine[run_id] = None  # newest last
        while len(mine) > MAX_RUN_IDS_PER_TUNNEL:
            oldest = next(iter(mine))
            self._unbind(oldest)

    def proxy_accepted(self, tunnel: str, run_id: str | None) -> None:
        self.proxies[tunnel] = ProxyState(run_id)

    def proxy_closed(self, tunnel: str, run_id: str | None) -> bool:
        """A CloseProxy: True if it closed the tunnel's online proxy (same session)."""
        proxy = self.proxies.get(tunnel)
        if proxy is None or run_id is None or proxy.run_id != run_id:
            return False
        del self.proxies[tunnel]
        return True

    def frps_reading(self, tunnel: str, registered: bool) -> tuple[bool, bool]:
        """One frps reading of a tunnel's proxy -> (online, never registered). An accepted
        proxy counts as online until frps shows it or REGISTRATION_READINGS pass without."""
        proxy = self.proxies.get(tunnel)
        if registered:
            if proxy is None:
                self.proxies[tunnel] = ProxyState(None, registered=True)
            else:
                proxy.registered, proxy.missing_readings = True, 0
            return True, False
        if proxy is None:
            return False, False
        if proxy.registered:  # frps dropped it
            del self.proxies[tunnel]
            return False, False
        proxy.missing_readings += 1
        if proxy.missing_readings > REGISTRATION_READINGS:
            del self.proxies[tunnel]
            return False, True
        return True, False

    def forget_expired(self, now: float) -> None:
        for run_id in [r for r, (_, at) in self.bound.items() if now - at > SESSION_TTL]:
            self._unbind(run_id)

    def retain(self, tunnels: Container[str]) -> None:
        """Forget the sessions and proxies of tunnels that left the table."""
        for tunnel in [t for t in self.run_ids if t not in tunnels]:
            for run_id in list(self.run_ids[tunnel]):
                self._unbind(run_id)
        for tunnel in [t for t in self.proxies if t not in tunnels]:
            del self.proxies[tunnel]

    def _unbind(self, run_id: str) -> None:
        bound = self.bound.pop(run_id, None)
        if bound is None:
            return
        mine = self.run_ids.get(bound[0])
        if mine is not None:
            mine.pop(run_id, None)
            if not mine:
                del self.run_ids[bound[0]]
