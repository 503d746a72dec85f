"""
Leader election through a ``coordination.k8s.io/v1`` Lease, the way client-go's
``tools/leaderelection`` does it, so that of several router replicas exactly one writes
EndpointSlices.

The rules (client-go's ``tryAcquireOrRenew``), kept in :class:`LeaseElection` with no I/O:

- No Lease yet: create it naming this replica (``holderIdentity``, ``acquireTime``,
  ``renewTime``, ``leaseDurationSeconds``, ``leaseTransitions: 0``).
- Someone else holds it: wait until ``leaseDurationSeconds`` have passed **on our own clock**
  since we last saw the record change.  Comparing the holder's ``renewTime`` with our clock
  would make the election as good as the worst clock skew between replicas; timing what we
  observed needs no agreement on the time of day.
- It is ours, or free (empty holder, or expired): write it back with our identity and the
  ``resourceVersion`` we read.  Two replicas racing for it both read the same version; the
  API server accepts one write and answers 409 Conflict to the other.
- A leader renews every ``retry_period``.  When it has not renewed successfully for
  ``renew_deadline`` (less than the lease duration), it stops acting as leader *before* the
  lease can expire and another replica take over: there are never two writers.
- On a clean stop the leader releases the Lease (empty holder, a one-second duration), so a
  successor takes over at once instead of after the lease duration.

Defaults are client-go's (and kube-controller-manager's): 15 s lease, 10 s renew deadline,
2 s retry period.  A new leader takes over at most ``lease_duration + retry_period`` after
the old one stopped renewing.

:class:`LeaderElector` drives it on the reactor through :class:`KubeAPI` and starts and stops
a child service (the EndpointSlice controller) as leadership comes and goes.
"""

from __future__ import annotations

import datetime
import random as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.application.service import Service as TwistedService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._kubeapi import LEASES, APIError, KubeAPI
from ._warnings import WARN_INTERVAL, RepeatedWarnings, bounded, error_text

JITTER_FACTOR = 1.2
"""client-go's ``JitterFactor``: retries wait ``retry_period * (1 + random() * 1.2)``."""


@dataclass(frozen=True)
class ElectionTiming:
    """How long a lease lasts, how long a leader keeps trying to renew, how often it tries."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's NewLeaderElector checks the same two inequalities.
        if not self.lease_duration > self.renew_deadline:
            raise ValueError("the lease duration must be greater than the renew deadline")
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(
                f"the renew deadline must be greater than {JITTER_FACTOR} x the retry period")
        if self.retry_period <= 0:
            raise ValueError("the retry period must be positive")


def micro_time(seconds: float) -> str:
    """Kubernetes' MicroTime (RFC 3339 with microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(spec: Mapping[str, Any]) -> tuple[object, ...]:
    """What identifies one version of the election record (client-go compares the same)."""
    return (spec.get("holderIdentity") or "", spec.get("leaseDurationSeconds"),
            spec.get("acquireTime"), spec.get("renewTime"), spec.get("leaseTransitions"))


@dataclass(frozen=True)
class Create:
    """Create the Lease with this body."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """Replace the Lease with this body (it carries the resourceVersion that was read)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Wait:
    """Another replica holds a lease that has not expired by our clock."""

    holder: str


Decision = Create | Update | Wait


class LeaseElection:
    """client-go's election rules as plain Python: Lease objects and times in, decisions out.

    ``now`` is the caller's clock (seconds).  It is used for the times written into the
    Lease and for timing what was observed; it never has to agree with other replicas'."""

    def __init__(self, identity: str, name: str, namespace: str,
                 timing: ElectionTiming | None = None) -> None:
        if not identity:
            raise ValueError("a leader election needs a non-empty identity")
        self.identity = identity
        self.name = name
        self.namespace = namespace
        self.timing = timing or ElectionTiming()
        self.observed: tuple[object, ...] | None = None
        self.observed_at = 0.0
        self.holder = ""
        self.leading = False
        self.renewed_at: float | None = None
        """When this replica last wrote the Lease successfully as its holder."""

    # -- decisions ---------------------------------------------------------------------

    def decide(self, lease: Mapping[str, Any] | None, now: float) -> Decision:
        """What to do about ``lease`` (as read; None when there is none)."""
        seconds = round(self.timing.lease_duration)
        if lease is None:
            return Create(self._body(None, {
                "holderIdentity": self.identity, "leaseDurationSeconds": seconds,
                "acquireTime": micro_time(now), "renewTime": micro_time(now),
                "leaseTransitions": 0}))
        spec = lease.get("spec") or {}
        record = _record(spec)
        if record != self.observed:
            self.observed, self.observed_at = record, now
        holder = spec.get("holderIdentity") or ""
        self.holder = holder
        duration = spec.get("leaseDurationSeconds")
        duration = float(duration) if isinstance(duration, int | float) else \
            self.timing.lease_duration
        if holder and holder != self.identity and self.observed_at + duration > now:
            return Wait(holder)
        transitions = spec.get("leaseTransitions")
        transitions = transitions if isinstance(transitions, int) else 0
        ours = holder == self.identity
        acquired = spec.get("acquireTime") if ours else micro_time(now)
        return Update(self._body(lease, {
            "holderIdentity": self.identity, "leaseDurationSeconds": seconds,
            "acquireTime": acquired or micro_time(now), "renewTime": micro_time(now),
            "leaseTransitions": transitions if ours else transitions + 1}))

    def release(self, lease: Mapping[str, Any], now: float) -> Update | None:
        """The write that gives the lease up (None when it is not ours to give)."""
        spec = lease.get("spec") or {}
        if (spec.get("holderIdentity") or "") != self.identity:
            return None
        return Update(self._body(lease, {
            **{k: v for k, v in spec.items()},
            "holderIdentity": "", "leaseDurationSeconds": 1,
            "acquireTime": micro_time(now), "renewTime": micro_time(now)}))

    def _body(self, lease: Mapping[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            version = (lease.get("metadata") or {}).get("resourceVersion")
            if version:
                metadata["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": metadata, "spec": spec}

    # -- outcomes ----------------------------------------------------------------------

    def written(self, lease: Mapping[str, Any] | None, now: float) -> bool:
        """A Create or Update sent at ``now`` was accepted; True when this replica just
        became leader."""
        if lease is not None:
            self.observed = _record(lease.get("spec") or {})
        self.observed_at = now
        self.holder = self.identity
        self.renewed_at = now
        became = not self.leading
        self.leading = True
        return became

    def lost(self, holder: str = "") -> bool:
        """Leadership is gone (another holder seen, or the deadline passed); True when this
        replica was leading until now."""
        was = self.leading
        self.leading = False
        self.renewed_at = None
        if holder:
            self.holder = holder
        return was

    def must_step_down(self, now: float) -> bool:
        """A leader that has not renewed for ``renew_deadline`` stops leading: the lease it
        last wrote is still valid for ``lease_duration - renew_deadline`` seconds, so nobody
        else can lead yet."""
        return (self.leading and self.renewed_at is not None
                and now - self.renewed_at >= self.timing.renew_deadline)

    def call_timeout(self, now: float) -> float:
        """How long one API call may take: a leader's renewal must not outlive its
        deadline; a candidate's try no longer than a retry period (at least one second)."""
        if self.leading and self.renewed_at is not None:
            left = self.timing.renew_deadline - (now - self.renewed_at)
            return max(0.1, left)
        return max(1.0, self.timing.retry_period)


class LeaderElector(TwistedService):
    """Runs a :class:`LeaseElection` against the API server and runs ``child`` (any
    ``IService``, e.g. the EndpointSlice controller) only while this replica leads."""

    log = Logger()

    def __init__(self, clock: Any, api: KubeAPI, election: LeaseElection,
                 child: IService | None = None, *,
                 on_change: Callable[[bool], None] | None = None,
                 random: Callable[[], float] = _random.random,
                 warn_interval: float = WARN_INTERVAL) -> None:
        self.clock = clock
        self.api = api
        self.election = election
        self.child = child
        self.on_change = on_change
        self.random = random
        self.transitions = 0
        """Times this replica became leader."""
        self.errors = 0
        self.last_error = ""
        self.warnings = RepeatedWarnings(self.log, warn_interval)
        """Failures every retry period while the API server is away: summarised."""
        self._timer: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        self._stopped = True

    # -- service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopped = False
        self._schedule(0.0)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        self._cancel_timers()
        if self._in_flight is not None:
            self._in_flight.cancel()
        if not self.election.leading:
            return None
        self._lose("stopping")
        return Deferred.fromCoroutine(self._release())

    async def _release(self) -> None:
        """Give the lease up so that a successor need not wait for it to expire."""
        election = self.election
        try:
            lease = await self._timed(self.api.get(LEASES, election.namespace, election.name),
                                      election.timing.retry_period)
            release = election.release(lease, self.clock.seconds())
            if release is not None:
                await self._timed(self.api.replace(LEASES, election.namespace, election.name,
                                                   release.body),
                                  election.timing.retry_period)
                self.log.info("released lease {ns}/{name}", ns=election.namespace,
                              name=election.name)
        except Exception as error:  # noqa: BLE001 - best effort: the lease expires anyway
            self.log.warn("could not release lease {ns}/{name} ({error}); it expires in "
                          "{seconds:.0f}s", ns=election.namespace, name=election.name,
                          error=error_text(error), seconds=election.timing.lease_duration)

    # -- the loop ----------------------------------------------------------------------

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._deadline = None

    def _schedule(self, delay: float | None = None) -> None:
        if self._stopped:
            return
        if delay is None:
            delay = self.election.timing.retry_period
            if not self.election.leading:  # candidates spread out; a leader renews on time
                delay *= 1 + self.random() * JITTER_FACTOR
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self._try)

    def _timed(self, work: Deferred[Any], timeout: float) -> Deferred[Any]:
        return work.addTimeout(timeout, self.clock)

    def _try(self) -> None:
        self._timer = None
        if self._stopped or self._in_flight is not None:
            return
        work = Deferred.fromCoroutine(self._attempt())
        self._in_flight = work
        work.addBoth(self._attempted)

    def _attempted(self, result: object) -> None:
        self._in_flight = None
        if isinstance(result, Failure) and result.value is not None:
            self._failed(result.value)
        self._schedule()

    async def _attempt(self) -> None:
        election = self.election
        timeout = election.call_timeout(self.clock.seconds())
        try:
            lease = await self._timed(self.api.get(LEASES, election.namespace, election.name),
                                      timeout)
        except APIError as error:
            if error.status != 404:
                raise
            lease = None
        decision = election.decide(lease, self.clock.seconds())
        if isinstance(decision, Wait):
            self._recovered("read again after {count} failures; {holder} holds it",
                            holder=decision.holder)
            self.last_error = ""
            if election.lost(decision.holder):
                self._stepped_down(f"{decision.holder} holds the lease")
            return
        # The write's send time, not its answer's: the API server stored it after this, so
        # a rival's "observed at" is later still, and stepping down renew_deadline after
        # it keeps this replica's leadership inside what the others will wait for.
        sent = self.clock.seconds()
        timeout = election.call_timeout(sent)
        if isinstance(decision, Create):
            written = await self._timed(
                self.api.create(LEASES, election.namespace, decision.body), timeout)
        else:
            written = await self._timed(
                self.api.replace(LEASES, election.namespace, election.name, decision.body),
                timeout)
        if self._stopped:
            return
        self._recovered("renewed again after {count} failures" if election.leading
                        else "acquired after {count} failures")
        if election.written(written if isinstance(written, Mapping) else None, sent):
            self._lead()
        self._arm_deadline()
        self.last_error = ""

    def _recovered(self, what: str, **fields: object) -> None:
        """The API answered: say so once after failures (they were summarised)."""
        failures = self.warnings.reset()
        if failures:
            self.log.info("lease {ns}/{name}: " + what, ns=self.election.namespace,
                          name=self.election.name, count=failures, **fields)

    def _failed(self, error: BaseException) -> None:
        if self._stopped:
            return
        self.errors += 1
        if isinstance(error, APIError) and error.status == 409:
            # Another replica wrote first: normal in a race; the next read shows who.
            self.last_error = "conflict"
            self.log.debug("lease {name}: conflict, another replica wrote first",
                           name=self.election.name)
        else:
            text = error_text(error)
            self.last_error = bounded(text)
            self.warnings.failed(text, self.clock.seconds(), "lease {ns}/{name}: {error}",
                                 ns=self.election.namespace, name=self.election.name,
                                 error=text)
        if self.election.must_step_down(self.clock.seconds()):
            self._lose("could not renew within the deadline")

    def _arm_deadline(self) -> None:
        """Step down when the renew deadline passes, even if an API call is hanging."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        renewed = self.election.renewed_at
        if renewed is None:
            return
        due = renewed + self.election.timing.renew_deadline - self.clock.seconds()
        self._deadline = self.clock.callLater(max(0.0, due), self._check_deadline)

    def _check_deadline(self) -> None:
        self._deadline = None
        if self.election.must_step_down(self.clock.seconds()):
            if self._in_flight is not None:
                self._in_flight.cancel()
            self._lose("could not renew within the deadline")
            self._schedule()

    # -- leadership ----------------------------------------------------------------------

    def _lead(self) -> None:
        self.transitions += 1
        self.log.info("{me} became leader (lease {ns}/{name})", me=self.election.identity,
                      ns=self.election.namespace, name=self.election.name)
        if self.child is not None and not self.child.running:
            self.child.startService()
        if self.on_change is not None:
            self.on_change(True)

    def _lose(self, why: str) -> None:
        if self.election.lost():
            self._stepped_down(why)

    def _stepped_down(self, why: str) -> None:
        self.log.warn("{me} stopped leading: {why}", me=self.election.identity, why=why)
        if self.child is not None and self.child.running:
            self.child.stopService()
        if self.on_change is not None:
            self.on_change(False)

    @property
    def leading(self) -> bool:
        return self.election.leading

    def status(self) -> dict[str, object]:
        return {"identity": self.election.identity, "leader": self.election.leading,
                "holder": self.election.holder, "lease":
                f"{self.election.namespace}/{self.election.name}",
                "transitions": self.transitions, "errors": self.errors,
                **({"last_error": self.last_error} if self.last_error else {})}
