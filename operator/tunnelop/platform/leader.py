"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

The record (holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions) is
written with optimistic concurrency: created if absent (a 409 means another candidate was
first), replaced with its resourceVersion (a 409 means someone else wrote in between).

Expiry is judged without comparing clocks: a candidate notes, on its own monotonic clock, when
it first saw the record in its current form; the lease is expired once the record has stayed
unchanged for leaseDurationSeconds from then. The leader renews every retry period and stops
leading if no renewal succeeded within the renew deadline, counted from the moment it *sent*
its last successful renewal; since every other candidate starts counting no earlier than the
server stored that renewal, the leader stops at least (lease duration - renew deadline) before
anyone else can take over.

Worst case takeover after the leader dies without a word (SIGKILL): the last renewal was stored
at T; a follower polling every retry period first sees it by T + retry, considers it expired
lease duration later, and notices at its next poll: T + lease + 2 x retry. With the defaults
(10 s, 2 s) that is 14 s, within 15 s. A leader that stops cleanly releases the lease (empty
holder), and the next poll of a follower takes it: within one retry period.

The decisions are pure functions of (record, observation, now, identity), tested apart from
the loop that talks to the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from tunnelop.platform import logs, metrics
from tunnelop.platform.kube import Kube, KubeError

log = logs.get(__name__)
LEASE_API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Timing:
    """lease_duration > renew_deadline (the leader stops before anyone may take over) and
    renew_deadline > retry_period (at least one retry before giving up)."""

    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election timing: lease duration > renew deadline > retry period > 0, got "
                f"{self.lease_duration}, {self.renew_deadline}, {self.retry_period}"
            )

    @classmethod
    def for_lease(cls, lease_duration: float) -> Timing:
        """The default proportions (10 s : 7 s : 2 s) scaled to another lease duration."""
        return cls(lease_duration, 0.7 * lease_duration, 0.2 * lease_duration)

    @property
    def worst_takeover(self) -> float:
        """Seconds from a silent death of the leader to a follower leading (see above)."""
        return self.lease_duration + 2 * self.retry_period


@dataclass(frozen=True)
class LeaseRecord:
    holder: str = ""
    lease_duration: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> LeaseRecord:
        spec = spec or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observation:
    """A record as last read, and when (local monotonic clock) it was first read so."""

    record: LeaseRecord
    since: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading `record` at `now`: its clock restarts only on change."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def is_expired(observation: Observation, now: float) -> bool:
    """Free (no holder) or unchanged for its whole lease duration."""
    record = observation.record
    return not record.holder or now >= observation.since + record.lease_duration


def next_record(
    current: LeaseRecord | None,
    observation: Observation | None,
    now: float,
    wall_time: str,
    identity: str,
    lease_duration: int,
) -> LeaseRecord | None:
    """What to write to acquire or renew the lease, or None when another holder's lease is
    still running. `current` is the record as just read (None: no Lease yet) and
    `observation` the candidate's observation of it."""
    if current is None:
        return LeaseRecord(identity, lease_duration, wall_time, wall_time, 0)
    if current.holder == identity:
        return replace(current, lease_duration=lease_duration, renew_time=wall_time)
    if observation is None or observation.record != current or not is_expired(observation, now):
        return None
    return LeaseRecord(identity, lease_duration, wall_time, wall_time, current.transitions + 1)


def released(current: LeaseRecord, wall_time: str) -> LeaseRecord:
    """As client-go's ReleaseOnCancel: no holder, so that the next candidate takes it at once."""
    return LeaseRecord("", 1, wall_time, wall_time, current.transitions)


def micro_time(at: datetime.datetime | None = None) -> str:
    """The API's MicroTime format."""
    at = at or datetime.datetime.now(datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod's name (HOSTNAME in a pod) and a random suffix: a restarted pod of the same name
    is a new candidate, never mistaken for the old leader."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}_{secrets.token_hex(4)}"


class LeaderElector:
    """Campaigns for the Lease `namespace/name` and, once leading, keeps renewing it.

    `run()` returns when leadership is lost (the renew deadline passed or another holder was
    seen); cancelling it releases the lease if held. `leading` is set while leading; `lost` once
    leadership, once held, is gone. `on_started` and `on_stopped` are called on each change.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str | None = None,
        timing: Timing | None = None,
        *,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timing = timing or Timing()
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.clock = clock
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self.observation: Observation | None = None
        self.last_error: str | None = None
        self.lease_read = False  # read at least once: a follower able to take over
        self._last_sent = 0.0  # monotonic time the last successful write was sent

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def lease_seconds(self) -> int:
        return max(1, round(self.timing.lease_duration))

    def status(self) -> tuple[bool, str]:
        """For readiness: a leader is ready; so is a follower that can read the Lease (it
        stands by to take over), but not one that cannot reach the API server."""
        if self.is_leader:
            return True, f"leading as {self.identity}"
        holder = self.observation.record.holder if self.observation else ""
        why = f"; last error: {self.last_error}" if self.last_error else ""
        standing_by = self.lease_read and self.last_error is None
        return standing_by, f"following {holder or 'nobody'} as {self.identity}{why}"

    async def run(self) -> None:
        try:
            await self._acquire()
            self._start_leading()
            reason = await self._renew()
            self._stop_leading(reason)
        except asyncio.CancelledError:
            if self.is_leader:
                await self._release()
                self._stop_leading("shutting down", clean=True)
            raise

    @contextlib.asynccontextmanager
    async def campaign(self) -> AsyncIterator[asyncio.Task[None]]:
        """Run the campaign in the background; leaving the block releases the lease if held."""
        task = asyncio.create_task(self.run(), name=f"leader election {self.name}")
        try:
            yield task
        finally:
            while not task.done():  # cancel again should an await inside swallow it
                task.cancel()
                await asyncio.wait({task}, timeout=1)
            if not task.cancelled() and task.exception() is not None:
                log.error("leader election failed", error=repr(task.exception()))

    # ---- the loop ---------------------------------------------------------------------

    async def _acquire(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the attempt completes, and the campaign would not stop.
                async with asyncio.timeout(self.timing.retry_period):
                    acquired = await self._try()
                if acquired:
                    return
            except Exception as exc:  # API errors, timeouts, connection failures
                self._note_error(exc)
            await asyncio.sleep(self.timing.retry_period)

    async def _renew(self) -> str:
        """Renew until that fails for the whole renew deadline; why leadership ended."""
        renewed = self._last_sent
        while True:
            remaining = renewed + self.timing.renew_deadline - self.clock()
            await asyncio.sleep(max(0.0, min(self.timing.retry_period, remaining)))
            remaining = renewed + self.timing.renew_deadline - self.clock()
            if remaining <= 0:
                return f"could not renew within {self.timing.renew_deadline:g} s"
            try:
                async with asyncio.timeout(remaining):
                    ok = await self._try()
                if ok:
                    renewed = self._last_sent
                    continue
            except Exception as exc:  # API errors, timeouts, connection failures
                self._note_error(exc)
                continue
            holder = self.observation.record.holder if self.observation else ""
            if holder and holder != self.identity:
                return f"the lease is held by {holder}"

    async def _try(self) -> bool:
        """One read and, if it is ours to take or keep, one write. True when we hold it."""
        sent = self.clock()
        lease = await self.kube.get(LEASE_API, "Lease", self.name, self.namespace)
        self.lease_read, self.last_error = True, None
        current = LeaseRecord.from_spec(lease["spec"]) if lease else None
        now = self.clock()
        if current is not None:
            self.observation = observe(self.observation, current, now)
        wanted = next_record(
            current, self.observation, now, micro_time(), self.identity, self.lease_seconds
        )
        if wanted is None:
            return False
        try:
            if lease is None:
                await self.kube.create(self._new_lease(wanted))
            else:
                await self.kube.replace({**lease, "spec": wanted.to_spec()})
        except KubeError as exc:
            if exc.status == 409:  # another candidate wrote first
                return False
            raise
        self._last_sent = sent
        self.observation = Observation(wanted, now)
        self.last_error = None
        return True

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(self.timing.retry_period):
                await self._release_once()
            log.info("leader lease released", lease=self.name, identity=self.identity)
        except Exception as exc:  # API errors, timeouts, connection failures
            # It expires by itself within its duration.
            log.warning("could not release the leader lease", lease=self.name, error=str(exc))

    async def _release_once(self) -> None:
        lease = await self.kube.get(LEASE_API, "Lease", self.name, self.namespace)
        if lease is None:
            return
        current = LeaseRecord.from_spec(lease["spec"])
        if current.holder != self.identity:
            return
        with contextlib.suppress(KubeError):  # 409: changed meanwhile, no longer ours to free
            await self.kube.replace({**lease, "spec": released(current, micro_time()).to_spec()})

    def _new_lease(self, record: LeaseRecord) -> dict[str, Any]:
        return {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record.to_spec(),
        }

    def _note_error(self, exc: Exception) -> None:
        status = exc.status if isinstance(exc, KubeError) else 0
        self.last_error = str(exc) or type(exc).__name__
        log.warning(
            "leader election: cannot read or write the lease",
            lease=f"{self.namespace}/{self.name}",
            status=status,
            error=self.last_error,
        )

    def _start_leading(self) -> None:
        self.leading.set()
        metrics.LEADER.set(1)
        log.info("started leading", lease=f"{self.namespace}/{self.name}", identity=self.identity)
        if self.on_started:
            self.on_started()

    def _stop_leading(self, reason: str, *, clean: bool = False) -> None:
        self.leading.clear()
        self.lost.set()
        metrics.LEADER.set(0)
        (log.info if clean else log.warning)(
            "stopped leading", lease=self.name, identity=self.identity, reason=reason
        )
        if self.on_stopped:
            self.on_stopped(reason)
