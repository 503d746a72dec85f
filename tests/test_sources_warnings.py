"""What the leader election, the replica discovery and the EndpointSlice controller log when
the API server fails them: whole error texts, repeated failures summarised as the reflector
does (RepeatedWarnings), one line on recovery, and a Lease left behind at stop said."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from test_sources_election import LeaseStore, StoreAPI
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, capturedLogs, formatEvent

from edgemesh.sources import APIError, ListResult
from edgemesh.sources._discovery import ReplicaDiscovery, ReplicaLeases
from edgemesh.sources._election import LeaderElector, LeaseElection
from edgemesh.sources._warnings import TEXT_LIMIT, RepeatedWarnings

TAIL = "forbidden to the user of kubeconfig /etc/k/config, context 'prod'; grant 'get' on " \
       "it in RBAC)"
"""How the texts end (APIError puts the context in parentheses)."""


def long_error(status: int = 403, size: int = 600) -> APIError:
    """An error whose end says what to check, far past 200 characters."""
    return APIError(status, "Forbidden", "x" * size, context=f"get /apis/... {TAIL[:-1]}")


def of(events: Sequence[dict[str, Any]], level: LogLevel,
       source: type | None = None) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] == level
            and (source is None or isinstance(e.get("log_source"), source))]


class Broken:
    """A KubeAPI whose every call fails with ``error`` (settable), or passes to ``inner``
    while ``error`` is None."""

    def __init__(self, inner: Any, error: Exception | None) -> None:
        self.inner = inner
        self.error = error

    def __getattr__(self, verb: str) -> Any:
        def call(*args: Any, **kw: Any) -> Deferred[Any]:
            if self.error is not None:
                return fail(self.error)
            return getattr(self.inner, verb)(*args, **kw)  # type: ignore[no-any-return]
        return call


class ListingAPI(StoreAPI):
    """The Lease store with list and delete, for the replica discovery."""

    def list(self, resource: Any, namespace: Any = None, **_: Any) -> Deferred[Any]:
        return self._call(lambda: ListResult(list(self.store.objects.values()), "1"))

    def delete(self, resource: Any, namespace: Any, name: str, **_: Any) -> Deferred[Any]:
        return self._call(lambda: self.store.objects.pop(name) and None)


def elector(clock: Clock, api: Any, identity: str = "a") -> LeaderElector:
    # random 0: a candidate retries every 2 s exactly.
    return LeaderElector(clock, api, LeaseElection(identity, "edgemesh-router", "edgemesh"),
                         random=lambda: 0.0)


def leading() -> tuple[Clock, Broken, LeaderElector]:
    """An elector that leads, on an API that fails once ``api.error`` is set."""
    clock = Clock()
    api = Broken(StoreAPI(clock, LeaseStore()), None)
    a = elector(clock, api)
    a.startService()
    clock.advance(0)
    assert a.leading
    return clock, api, a


def discovery(clock: Clock, api: Any) -> ReplicaDiscovery:
    return ReplicaDiscovery(clock, api, ReplicaLeases("router-a", "tcp:10.0.0.1:7702",
                                                      "edgemesh", 15.0),
                            lambda peers: None, period=2.0)


SERVICES = {"election": (elector, LeaderElector), "discovery": (discovery, ReplicaDiscovery)}


# -- whole texts ------------------------------------------------------------------------------


def test_a_long_election_error_is_logged_whole_and_bounded_on_status() -> None:
    clock = Clock()
    error = long_error(size=1500)
    a = elector(clock, Broken(None, error))
    with capturedLogs() as events:
        a.startService()
        clock.advance(0)
    (warning,) = of(events, LogLevel.warn, LeaderElector)
    assert warning == f"lease edgemesh/edgemesh-router: {error}"
    assert warning.endswith(TAIL)
    last = a.status()["last_error"]
    assert isinstance(last, str) and len(last) == TEXT_LIMIT and last.endswith("...")


def test_a_long_release_error_is_logged_whole() -> None:
    _, api, a = leading()
    api.error = long_error()
    with capturedLogs() as events:
        a.stopService()
    (warning,) = of(events, LogLevel.warn, LeaderElector)[-1:]
    assert warning.startswith("could not release lease edgemesh/edgemesh-router (403")
    assert f"{TAIL}); it expires in 15s" in warning


def test_a_long_discovery_error_is_logged_whole() -> None:
    clock = Clock()
    error = long_error()
    d = discovery(clock, Broken(None, error))
    with capturedLogs() as events:
        d.startService()
        clock.advance(0)
    assert of(events, LogLevel.warn, ReplicaDiscovery) == [f"router replica Leases: {error}"]
    assert d.status()["last_error"] == str(error)


def test_a_long_controller_error_is_logged_whole() -> None:
    from test_sources_controller import World, catalog, svc

    from edgemesh.sources import desired_slice

    world = World()
    world.own_list([world.stored(desired_slice(svc("web", ["edge-1"]), ["10.9.9.9"], 7780,
                                               None))])
    world.controller.catalog_changed(catalog(svc("web", ["edge-1"])))
    world.settle()
    with capturedLogs() as events:
        world.writes("replace")[0][5].errback(long_error(status=500))
    (warning,) = [w for w in of(events, LogLevel.warn) if "EndpointSlice" in w]
    assert f"{TAIL}); again in" in warning


# -- summarised ------------------------------------------------------------------------------


def run(clock: Clock, service: Any, rounds: int) -> None:
    service.startService()
    clock.advance(0)
    for _ in range(rounds - 1):
        clock.advance(2.0)


def test_ten_identical_failures_warn_once_then_once_per_interval_with_the_count() -> None:
    for make, kind in SERVICES.values():
        clock = Clock()
        service = make(clock, Broken(None, long_error()))
        with capturedLogs() as events:
            run(clock, service, 10)
        assert len(of(events, LogLevel.warn, kind)) == 1, kind
        assert len(of(events, LogLevel.debug, kind)) == 9, kind
        # The first warning was at 0: the next is due at 300 s, with the repeats since.
        with capturedLogs() as events:
            while clock.seconds() < 300.0:
                clock.advance(2.0)
        (summary,) = [e for e in events if e["log_level"] == LogLevel.warn
                      and isinstance(e.get("log_source"), kind)]
        assert summary["count"] == 150, kind
        assert formatEvent(summary).endswith(f"{TAIL} (150 times since the last warning)")
        assert service.errors == 151


def test_a_different_error_is_warned_at_once() -> None:
    for make, kind in SERVICES.values():
        clock = Clock()
        api = Broken(None, long_error())
        service = make(clock, api)
        with capturedLogs() as events:
            run(clock, service, 3)
            api.error = APIError(500, "InternalError", "etcdserver: request timed out")
            clock.advance(2.0)
            clock.advance(2.0)
        warnings = of(events, LogLevel.warn, kind)
        assert len(warnings) == 2, kind
        assert warnings[-1].endswith("500 InternalError: etcdserver: request timed out")


def test_an_election_conflict_stays_debug() -> None:
    clock = Clock()
    a = elector(clock, Broken(None, APIError(409, "Conflict", "the object has been modified")))
    with capturedLogs() as events:
        run(clock, a, 3)
    assert of(events, LogLevel.warn, LeaderElector) == []
    assert len(of(events, LogLevel.debug, LeaderElector)) == 3
    assert a.status()["last_error"] == "conflict"


# -- recovery --------------------------------------------------------------------------------


def test_the_leader_says_once_that_it_renews_again_then_warns_a_new_failure_at_once() -> None:
    clock, api, a = leading()
    with capturedLogs() as events:
        api.error = long_error()
        for _ in range(3):  # 6 s: within the renew deadline
            clock.advance(2.0)
        api.error = None
        clock.advance(2.0)
        clock.advance(2.0)
        api.error = long_error()
        clock.advance(2.0)
    assert a.leading
    assert of(events, LogLevel.info, LeaderElector) == [
        "lease edgemesh/edgemesh-router: renewed again after 3 failures"]
    warnings = of(events, LogLevel.warn, LeaderElector)
    assert len(warnings) == 2, "the failure after the success is new"
    assert "(again)" not in warnings[-1] and "since the last warning" not in warnings[-1]


def test_a_candidate_says_once_that_it_reads_the_lease_again() -> None:
    clock, store = Clock(), LeaseStore()
    b = elector(clock, StoreAPI(clock, store), "b")
    b.startService()
    clock.advance(0)
    api = Broken(StoreAPI(clock, store), long_error())
    a = elector(clock, api)
    with capturedLogs() as events:
        run(clock, a, 4)
        api.error = None
        clock.advance(2.0)
        clock.advance(2.0)
    assert b.leading and not a.leading
    assert of(events, LogLevel.info, LeaderElector) == [
        "lease edgemesh/edgemesh-router: read again after 4 failures; b holds it"]
    assert "last_error" not in a.status()


def test_discovery_says_once_that_it_reads_the_leases_again() -> None:
    clock = Clock()
    api = Broken(ListingAPI(clock, LeaseStore()), long_error())
    d = discovery(clock, api)
    with capturedLogs() as events:
        run(clock, d, 5)
        api.error = None
        clock.advance(2.0)
        clock.advance(2.0)
    assert [i for i in of(events, LogLevel.info, ReplicaDiscovery)
            if "again" in i] == ["router replica Leases: read again after 5 failures"]
    assert "last_error" not in d.status()


# -- the Lease at stop -----------------------------------------------------------------------


def stop_with_delete(answer: Deferred[Any]) -> tuple[list[str], list[object]]:
    clock, store = Clock(), LeaseStore()
    api = ListingAPI(clock, store)
    d = discovery(clock, api)
    d.startService()
    clock.advance(0)
    assert store.objects
    api.delete = lambda *args, **kw: answer  # type: ignore[method-assign]
    stopped: list[object] = []
    with capturedLogs() as events:
        result = d.stopService()
        assert result is not None
        result.addBoth(stopped.append)
    return of(events, LogLevel.warn, ReplicaDiscovery), stopped


def test_a_refused_delete_at_stop_is_warned_and_the_stop_still_succeeds() -> None:
    error = APIError(403, "Forbidden", 'leases "edgemesh-router-router-a" is forbidden',
                     context=TAIL[:-1])
    warnings, stopped = stop_with_delete(fail(error))
    assert warnings == [(f"could not delete router replica Lease edgemesh/edgemesh-router-"
                         f"router-a ({error}); the other replicas drop it within 15s")]
    assert stopped == [None]


def test_a_lease_already_gone_at_stop_is_not_warned() -> None:
    warnings, stopped = stop_with_delete(fail(APIError(404, "NotFound", "not found")))
    assert warnings == [] and stopped == [None]
    warnings, stopped = stop_with_delete(succeed(None))
    assert warnings == [] and stopped == [None]


def test_a_delete_that_hangs_at_stop_is_warned_as_timed_out() -> None:
    clock, store = Clock(), LeaseStore()
    api = ListingAPI(clock, store)
    d = discovery(clock, api)
    d.startService()
    clock.advance(0)
    api.partitioned = True
    stopped: list[object] = []
    with capturedLogs() as events:
        result = d.stopService()
        assert result is not None
        result.addBoth(stopped.append)
        clock.advance(2.0)
    assert of(events, LogLevel.warn, ReplicaDiscovery) == [
        ("could not delete router replica Lease edgemesh/edgemesh-router-router-a "
         "(timed out); the other replicas drop it within 15s")]
    assert stopped == [None]


# -- the rule itself -------------------------------------------------------------------------


def test_repeated_warnings_rule() -> None:
    events: list[dict[str, Any]] = []
    warnings = RepeatedWarnings(Logger(observer=cast(ILogObserver, events.append)),
                                interval=300.0)
    fmt = "{what}; retrying in {delay:.0f}s"
    assert warnings.failed("down", 0.0, fmt, base_delay=1.0, what="down", delay=1)
    assert not warnings.failed("down", 1.0, fmt, base_delay=1.0, what="down", delay=1)
    assert warnings.failed("down", 2.0, fmt, base_delay=2.0, what="down", delay=2), "longer"
    assert formatEvent(events[-1]) == "down; retrying in 2s (2 times since the last warning)"
    assert warnings.failed("down", 3.0, fmt, base_delay=4.0, what="down", delay=4)
    assert formatEvent(events[-1]) == "down; retrying in 4s (again)"
    assert warnings.failed("other", 3.0, fmt, what="other", delay=2), "a new text"
    assert not warnings.failed("other", 4.0, fmt, what="other", delay=2)
    assert warnings.reset() == 6
    assert warnings.failed("other", 5.0, fmt, what="other", delay=2), "new after a success"
    assert [e["log_level"] for e in events] == [
        LogLevel.warn, LogLevel.debug, LogLevel.warn, LogLevel.warn, LogLevel.warn,
        LogLevel.debug, LogLevel.warn]
    assert warnings.reset() == 1 and warnings.reset() == 0
