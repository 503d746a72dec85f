"""Leader election through a Lease: the rules (LeaseElection, no I/O) and the driver
(LeaderElector) on a Clock, against an in-memory Lease store with the API server's
optimistic concurrency, including replicas racing with skewed clocks and partitions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from edgemesh.sources import APIError
from edgemesh.sources._election import (
    LEASES,
    Create,
    ElectionTiming,
    LeaderElector,
    LeaseElection,
    Update,
    Wait,
    micro_time,
)


class LeaseStore:
    """The API server's side of Leases: resourceVersions, 404 and 409 as a real one."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.writes: list[tuple[str, str]] = []

    def get(self, name: str) -> dict[str, Any]:
        if name not in self.objects:
            raise APIError(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        return copy.deepcopy(self.objects[name])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.objects:
            raise APIError(409, "AlreadyExists", "already exists")
        return self._store(name, body)

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        have = self.objects.get(name)
        if have is None:
            raise APIError(404, "NotFound", "not found")
        if body["metadata"].get("resourceVersion") != have["metadata"]["resourceVersion"]:
            raise APIError(409, "Conflict", "the object has been modified")
        return self._store(name, body)

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[name] = stored
        self.writes.append((name, stored["spec"].get("holderIdentity") or ""))
        return copy.deepcopy(stored)


class StoreAPI:
    """One replica's view of the store: calls answered after ``latency`` seconds, or never
    while ``partitioned`` (the call hangs until its timeout cancels it)."""

    def __init__(self, clock: Clock, store: LeaseStore, latency: float = 0.0) -> None:
        self.clock = clock
        self.store = store
        self.latency = latency
        self.partitioned = False
        self.calls = 0

    def _call(self, work: Any) -> Deferred[Any]:
        self.calls += 1
        if self.partitioned:
            return Deferred()
        try:
            result = work()
        except APIError as error:
            if not self.latency:
                return fail(error)
            d: Deferred[Any] = Deferred()
            self.clock.callLater(self.latency, d.errback, error)
            return d
        if not self.latency:
            return succeed(result)
        d = Deferred()
        self.clock.callLater(self.latency, d.callback, result)
        return d

    def get(self, resource: Any, namespace: Any, name: str) -> Deferred[Any]:
        assert resource is LEASES
        return self._call(lambda: self.store.get(name))

    def create(self, resource: Any, namespace: Any, body: Any) -> Deferred[Any]:
        return self._call(lambda: self.store.create(body))

    def replace(self, resource: Any, namespace: Any, name: str, body: Any) -> Deferred[Any]:
        return self._call(lambda: self.store.replace(name, body))


class SkewedClock:
    """A replica's clock: the shared timeline plus a fixed offset (its time of day is
    wrong, its seconds are not)."""

    def __init__(self, clock: Clock, offset: float) -> None:
        self.clock = clock
        self.offset = offset

    def seconds(self) -> float:
        return self.clock.seconds() + self.offset

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)


def lease(holder: str, version: str = "1", renew: float = 0.0,
          transitions: int = 0, duration: int = 15) -> dict[str, Any]:
    return {"metadata": {"name": "edgemesh-router", "namespace": "edgemesh",
                         "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "acquireTime": micro_time(renew), "renewTime": micro_time(renew),
                     "leaseTransitions": transitions}}


def election(identity: str = "a") -> LeaseElection:
    return LeaseElection(identity, "edgemesh-router", "edgemesh")


# -- the rules ---------------------------------------------------------------------------

def test_no_lease_creates_one_naming_this_replica() -> None:
    decision = election().decide(None, 100.0)
    assert isinstance(decision, Create)
    spec = decision.body["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["renewTime"] == micro_time(100.0) == "1970-01-01T00:01:40.000000Z"
    assert "resourceVersion" not in decision.body["metadata"]


def test_a_held_lease_is_waited_for_by_our_own_clock_not_its_renew_time() -> None:
    rules = election("b")
    # Its renewTime is an hour in the past by our clock (skew): still we wait, because we
    # have only just seen it change.
    assert rules.decide(lease("a", renew=1000.0), 4600.0) == Wait("a")
    assert rules.decide(lease("a", renew=1000.0), 4614.9) == Wait("a")
    taken = rules.decide(lease("a", renew=1000.0), 4615.0)
    assert isinstance(taken, Update)
    assert taken.body["spec"]["holderIdentity"] == "b"
    assert taken.body["spec"]["leaseTransitions"] == 1
    assert taken.body["metadata"]["resourceVersion"] == "1"


def test_a_renewed_lease_restarts_the_wait() -> None:
    rules = election("b")
    assert isinstance(rules.decide(lease("a", "1", renew=0.0), 0.0), Wait)
    assert isinstance(rules.decide(lease("a", "2", renew=10.0), 10.0), Wait)
    assert isinstance(rules.decide(lease("a", "2", renew=10.0), 24.0), Wait)
    assert isinstance(rules.decide(lease("a", "2", renew=10.0), 25.0), Update)


def test_renewing_our_own_lease_keeps_acquire_time_and_transitions() -> None:
    rules = election("a")
    held = lease("a", renew=5.0, transitions=3)
    decision = rules.decide(held, 7.0)
    assert isinstance(decision, Update)
    assert decision.body["spec"]["acquireTime"] == held["spec"]["acquireTime"]
    assert decision.body["spec"]["renewTime"] == micro_time(7.0)
    assert decision.body["spec"]["leaseTransitions"] == 3


def test_a_released_lease_is_taken_at_once() -> None:
    rules = election("b")
    released = lease("", renew=0.0, duration=1)
    decision = rules.decide(released, 0.5)
    assert isinstance(decision, Update)
    assert decision.body["spec"]["holderIdentity"] == "b"


def test_release_gives_up_only_our_own_lease() -> None:
    rules = election("a")
    assert rules.release(lease("b"), 1.0) is None
    release = rules.release(lease("a", transitions=2), 1.0)
    assert release is not None
    assert release.body["spec"]["holderIdentity"] == ""
    assert release.body["spec"]["leaseDurationSeconds"] == 1
    assert release.body["spec"]["leaseTransitions"] == 2


def test_step_down_after_the_renew_deadline_before_the_lease_expires() -> None:
    rules = election("a")
    rules.written(None, 100.0)
    assert rules.leading
    assert not rules.must_step_down(109.9)
    assert rules.must_step_down(110.0)
    assert 110.0 < 100.0 + rules.timing.lease_duration


@pytest.mark.parametrize(("lease_duration", "renew_deadline", "retry_period"),
                         [(10, 10, 2), (15, 2, 2), (15, 10, 0)])
def test_timing_is_checked_as_client_go_does(lease_duration: float, renew_deadline: float,
                                             retry_period: float) -> None:
    with pytest.raises(ValueError):
        ElectionTiming(lease_duration, renew_deadline, retry_period)


# -- the driver ----------------------------------------------------------------------------

class Child(Service):
    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.starts += 1

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.stops += 1


def elector(clock: Any, api: Any, identity: str, child: Any = None) -> LeaderElector:
    return LeaderElector(clock, api, election(identity), child, random=lambda: 0.5)


def test_the_first_replica_leads_and_runs_its_child() -> None:
    clock, store = Clock(), LeaseStore()
    child = Child()
    a = elector(clock, StoreAPI(clock, store), "a", child)
    a.startService()
    clock.advance(0)
    assert a.leading and child.running and child.starts == 1
    assert store.objects["edgemesh-router"]["spec"]["holderIdentity"] == "a"
    for _ in range(10):  # renews every retry period
        clock.advance(2)
    assert a.leading
    assert store.version == 11
    assert a.status()["leader"] is True


def test_a_second_replica_waits_then_takes_over_when_the_leader_is_cut_off() -> None:
    clock, store = Clock(), LeaseStore()
    api_a = StoreAPI(clock, store)
    child_a, child_b = Child(), Child()
    a = elector(clock, api_a, "a", child_a)
    b = elector(clock, StoreAPI(clock, store), "b", child_b)
    a.startService()
    clock.advance(0)
    b.startService()
    for _ in range(20):
        clock.advance(1)
    assert a.leading and not b.leading and not child_b.running
    api_a.partitioned = True
    cut = clock.seconds()
    stepped_down = took_over = None
    for _ in range(400):
        clock.advance(0.1)
        if stepped_down is None and not a.leading:
            stepped_down = clock.seconds() - cut
        if took_over is None and b.leading:
            took_over = clock.seconds() - cut
        assert not (a.leading and b.leading)
    assert stepped_down is not None and took_over is not None
    assert stepped_down <= 10.0 + 0.2
    assert not child_a.running and child_b.running
    # Within lease duration + one (jittered) retry period of the last renewal.
    assert took_over <= 15.0 + 2.0 * (1 + 1.2) + 0.2
    assert store.objects["edgemesh-router"]["spec"]["leaseTransitions"] == 1


def test_a_clean_stop_releases_the_lease_and_a_successor_leads_at_once() -> None:
    clock, store = Clock(), LeaseStore()
    a = elector(clock, StoreAPI(clock, store), "a")
    b = elector(clock, StoreAPI(clock, store), "b")
    a.startService()
    clock.advance(0)
    b.startService()
    clock.advance(5)
    assert a.leading and not b.leading
    a.stopService()
    assert not a.leading
    assert store.objects["edgemesh-router"]["spec"]["holderIdentity"] == ""
    stopped = clock.seconds()
    for _ in range(50):
        clock.advance(0.1)
        if b.leading:
            break
    assert b.leading
    assert clock.seconds() - stopped <= 2.0 * (1 + 1.2) + 0.1


def test_api_errors_keep_a_candidate_trying_and_are_reported() -> None:
    clock = Clock()

    class Failing:
        calls = 0

        def get(self, *args: Any) -> Deferred[Any]:
            self.calls += 1
            return fail(APIError(403, "Forbidden", 'leases "x" is forbidden'))

    api = Failing()
    a = elector(clock, api, "a")
    a.startService()
    for _ in range(10):
        clock.advance(3.5)
    assert not a.leading
    assert api.calls >= 8
    assert "403" in a.status()["last_error"]  # type: ignore[operator]


def test_a_hanging_renewal_cannot_keep_a_leader_past_its_deadline() -> None:
    clock, store = Clock(), LeaseStore()
    api = StoreAPI(clock, store)
    a = elector(clock, api, "a")
    a.startService()
    clock.advance(0)
    assert a.leading
    last = clock.seconds()
    api.partitioned = True
    while a.leading and clock.seconds() - last < 30:
        clock.advance(0.05)
    assert clock.seconds() - last == pytest.approx(10.0, abs=0.1)


# -- racing replicas -------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.floats(-3600, 3600), min_size=2, max_size=3),
    latencies=st.lists(st.sampled_from([0.0, 0.01, 0.3, 1.5]), min_size=3, max_size=3),
    events=st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.integers(1, 40)),
                    max_size=12),
)
def test_never_two_leaders_whatever_the_skew_races_and_partitions(
        offsets: list[float], latencies: list[float],
        events: list[tuple[int, bool, int]]) -> None:
    clock, store = Clock(), LeaseStore()
    apis = [StoreAPI(clock, store, latencies[i]) for i in range(len(offsets))]
    replicas = [LeaderElector(SkewedClock(clock, offset), api, election(f"r{i}"),
                              random=lambda: 0.3)
                for i, (offset, api) in enumerate(zip(offsets, apis, strict=True))]
    for replica in replicas:
        replica.startService()
    ever_led = False
    for who, partitioned, steps in [*events, (0, False, 200)]:
        apis[who % len(apis)].partitioned = partitioned
        for _ in range(steps):
            clock.advance(0.25)
            leaders = [r for r in replicas if r.leading]
            assert len(leaders) <= 1, [r.status() for r in replicas]
            ever_led = ever_led or bool(leaders)
    # With every replica reachable for 50 s, someone leads.
    for api in apis:
        api.partitioned = False
    for _ in range(200):
        clock.advance(0.25)
    assert sum(r.leading for r in replicas) == 1
    assert ever_led
