"""The Reflector's state machine (list, watch, 410, bookmarks, timeouts, backoff) on a Clock
with a scripted KubeAPI: every transition of the module docstring's diagram."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sources_fakes import FakeAPI, gone, status
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from edgemesh.sources import NODES, SERVICES, APIError, Reflector, Resource, State, WatchTiming


def svc(name: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": version},
            "spec": {"ports": [{"port": 80}]}}


@dataclass
class Recorder:
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def replace(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        self.calls.append(("replace", [i["metadata"]["name"] for i in items]))

    def upsert(self, resource: Resource, obj: dict[str, Any]) -> None:
        self.calls.append(("upsert", obj["metadata"]["name"]))

    def delete(self, resource: Resource, obj: dict[str, Any]) -> None:
        self.calls.append(("delete", obj["metadata"]["name"]))


TIMING = WatchTiming(min_watch_timeout=300, deadline_grace=30, backoff_initial=1.0,
                     backoff_max=30.0, backoff_factor=2.0, backoff_jitter=1.0, page_size=2)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def handler() -> Recorder:
    return Recorder()


def make(clock: Clock, api: FakeAPI, handler: Recorder, random: float = 0.5,
         **kwargs: Any) -> Reflector:
    reflector = Reflector(clock, api, SERVICES, handler, timing=TIMING,
                          random=lambda: random, **kwargs)
    reflector.start()
    return reflector


def listed(api: FakeAPI, names: list[str], version: str) -> None:
    api.last_list().answer([svc(n) for n in names], version)


# -- list, then watch -----------------------------------------------------------------------


def test_list_then_watch_from_the_lists_version(clock: Clock, api: FakeAPI,
                                                handler: Recorder) -> None:
    reflector = make(clock, api, handler, namespace="prod", label_selector="a!=b")
    assert reflector.state is State.listing
    request = api.last_list()
    assert (request.namespace, request.label_selector, request.limit) == ("prod", "a!=b", 2)
    assert request.continue_token is None
    synced: list[bool] = []
    reflector.on_synced = lambda: synced.append(True)
    listed(api, ["a", "b"], "10")
    assert handler.calls == [("replace", ["a", "b"])]
    assert synced == [True] and reflector.synced
    watch = api.last_watch()
    assert reflector.state is State.watching
    assert (watch.resource_version, watch.namespace, watch.label_selector) == ("10", "prod",
                                                                               "a!=b")
    # client-go's timeout: [min, 2 * min]; random() = 0.5 → 1.5 * min.
    assert watch.timeout_seconds == 450


def test_events_reach_the_handler_and_move_the_version(clock: Clock, api: FakeAPI,
                                                       handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    watch = api.last_watch()
    watch.send("ADDED", svc("a", "11"))
    watch.send("MODIFIED", svc("a", "12"))
    watch.send("DELETED", svc("a", "13"))
    assert handler.calls[1:] == [("upsert", "a"), ("upsert", "a"), ("delete", "a")]
    assert reflector.resource_version == "13"


def test_pages_are_handed_over_at_once(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    make(clock, api, handler)
    api.last_list().answer([svc("a"), svc("b")], "20", token="page-2")
    assert handler.calls == [], "nothing is replaced by half a list"
    second = api.last_list()
    assert second.continue_token == "page-2" and second.limit == 2
    second.answer([svc("c")], "20")
    assert handler.calls == [("replace", ["a", "b", "c"])]
    assert api.last_watch().resource_version == "20"


def test_expired_continue_token_restarts_the_list(clock: Clock, api: FakeAPI,
                                                  handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    api.last_list().answer([svc("a")], "20", token="old")
    api.last_list().fail(gone("The provided continue parameter is too old"))
    fresh = api.last_list()
    assert fresh.continue_token is None
    fresh.answer([svc("b")], "25")
    assert handler.calls == [("replace", ["b"])]
    assert reflector.counts["lists"] == 2


# -- 410 in both forms -----------------------------------------------------------------------


def test_error_event_410_relists_at_once(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, ["a", "b"], "10")
    watch = api.last_watch()
    with capturedLogs() as events:
        watch.send("ERROR", status(410))
    assert watch.cancelled
    assert reflector.state is State.listing and api.open_watches() == []
    listed(api, ["b"], "30")
    assert handler.calls == [("replace", ["a", "b"]), ("replace", ["b"])]
    assert api.last_watch().resource_version == "30"
    assert reflector.counts["relists_gone"] == 1
    assert any("410" in str(e.get("log_format", "")) for e in events)


def test_http_410_at_watch_start_relists(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, ["a"], "10")
    api.last_watch().fail(gone())
    assert reflector.state is State.listing
    listed(api, [], "40")
    assert handler.calls[-1] == ("replace", [])
    assert api.last_watch().resource_version == "40"


def test_410_twice_in_a_row_backs_off(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    api.last_watch().send("ERROR", status(410, "Gone"))
    listed(api, [], "10")
    api.last_watch().send("ERROR", status(410))
    # The second 410 within a moment: wait before listing again (a server stuck in 410).
    assert reflector.state is State.backoff and api.open_lists() == []
    clock.advance(1.5)
    assert reflector.state is State.listing


def test_other_error_events_relist_after_a_backoff(clock: Clock, api: FakeAPI,
                                                   handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    api.last_watch().send("ERROR", status(500, "InternalError"))
    assert reflector.state is State.backoff
    clock.advance(1.5)
    assert reflector.state is State.listing


# -- bookmarks, normal ends, timeouts ---------------------------------------------------------


def test_bookmark_then_end_rewatches_from_the_bookmark_without_a_list(
        clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, ["a"], "10")
    watch = api.last_watch()
    clock.advance(60)
    watch.send("BOOKMARK", {"kind": "Service", "apiVersion": "v1",
                            "metadata": {"resourceVersion": "77"}})
    assert handler.calls == [("replace", ["a"])], "a bookmark changes no object"
    watch.end()
    assert api.last_watch().resource_version == "77"
    assert reflector.counts["lists"] == 1 and reflector.counts["bookmarks"] == 1


def test_watch_that_outlives_its_timeout_is_replaced(clock: Clock, api: FakeAPI,
                                                     handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    first = api.last_watch()
    clock.advance(first.timeout_seconds + TIMING.deadline_grace - 1)
    assert not first.cancelled
    clock.advance(1)
    assert first.cancelled
    assert api.last_watch().resource_version == "10"
    assert reflector.counts["lists"] == 1


def test_watch_ending_at_once_with_nothing_does_not_spin(clock: Clock, api: FakeAPI,
                                                         handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    api.last_watch().end()
    assert reflector.state is State.backoff and api.open_watches() == []
    clock.advance(1.5)
    assert api.last_watch().resource_version == "10"


# -- backoff: 429, 5xx, refused ---------------------------------------------------------------


@pytest.mark.parametrize("error", [APIError(500, "InternalError"), APIError(503),
                                   ConnectionRefusedError()], ids=["500", "503", "refused"])
def test_transient_watch_failure_rewatches_after_a_backoff(
        clock: Clock, api: FakeAPI, handler: Recorder, error: Exception) -> None:
    reflector = make(clock, api, handler)
    listed(api, ["a"], "10")
    api.last_watch().fail(error)
    assert reflector.state is State.backoff
    # backoff_initial 1 s, jitter 1.0 * random() 0.5: 1.5 s.
    clock.advance(1.49)
    assert api.open_watches() == []
    clock.advance(0.01)
    assert api.last_watch().resource_version == "10"
    assert reflector.counts["lists"] == 1, "no relist: the watch resumes"
    assert handler.calls == [("replace", ["a"])], "the cache is untouched meanwhile"


def test_429_honours_retry_after(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    make(clock, api, handler)
    listed(api, [], "10")
    api.last_watch().fail(APIError(429, "TooManyRequests", retry_after=7))
    clock.advance(6.9)
    assert api.open_watches() == []
    clock.advance(0.1)
    assert len(api.open_watches()) == 1


def test_list_failures_back_off_exponentially_with_jitter(clock: Clock, api: FakeAPI,
                                                          handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    delays = []
    for _ in range(7):
        api.last_list().fail(APIError(500))
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1.5, 3.0, 6.0, 12.0, 24.0, 45.0, 45.0]
    listed(api, [], "5")
    assert reflector.failures == 7, "a good list alone does not reset the backoff"


# -- one backoff across list + watch cycles (client-go's reflector) ----------------------------


def next_delay(clock: Clock) -> float:
    (call,) = clock.getDelayedCalls()
    return call.getTime() - clock.seconds()


def watch_refused_cycle(clock: Clock, api: FakeAPI, how: str) -> float:
    """List fine, then the watch fails (403, or a non-410 ERROR event): the delay until the
    next list, waited out."""
    listed(api, ["a"], "10")
    watch = api.last_watch()
    if how == "403":
        watch.fail(APIError(403, "Forbidden", 'services is forbidden: User "x" cannot watch'))
    else:
        watch.accept()
        watch.send("ERROR", status(500, "InternalError"))
    delay = next_delay(clock)
    clock.advance(delay)
    return delay


@pytest.mark.parametrize("how", ["403", "error-event"])
def test_list_allowed_watch_refused_backs_off_to_the_cap(clock: Clock, api: FakeAPI,
                                                          handler: Recorder, how: str) -> None:
    reflector = make(clock, api, handler)
    with capturedLogs() as events:
        delays = [watch_refused_cycle(clock, api, how) for _ in range(30)]
    # Doubling from 1 s (jitter 1.0 * 0.5 → x1.5) to the 30 s cap, though every list succeeds.
    assert delays[:7] == [1.5, 3.0, 6.0, 12.0, 24.0, 45.0, 45.0]
    assert set(delays[7:]) == {45.0}
    assert reflector.counts["lists"] == 31
    warnings = [e for e in events if e["log_level"].name == "warn"]
    # The first, one per longer delay (6 of them), then one per warn_interval (300 s) at the
    # cap: about 30 x 45 s = 1350 s of them.
    assert 6 <= len(warnings) <= 12, [e["log_format"] for e in warnings]
    assert "times since the last warning" in warnings[-1]["again"]
    assert warnings[-1]["count"] >= 5


def test_backoff_resets_only_after_a_long_lived_watch(clock: Clock, api: FakeAPI,
                                                       handler: Recorder) -> None:
    make(clock, api, handler)
    for _ in range(8):
        watch_refused_cycle(clock, api, "403")
    listed(api, ["a"], "10")
    assert next_delay_after_watch_failure(clock, api, lived=60) == 45.0, \
        "a watch up for a minute is not yet healthy"
    clock.advance(45.0)
    # client-go: more than 2 min since the last backoff began.
    assert next_delay_after_watch_failure(clock, api, lived=130) == 1.5


def next_delay_after_watch_failure(clock: Clock, api: FakeAPI, lived: float) -> float:
    watch = api.last_watch()
    watch.accept()
    clock.advance(lived)
    watch.fail(APIError(500, "InternalError"))
    return next_delay(clock)


def test_410_relists_at_once_even_at_the_longest_backoff(clock: Clock, api: FakeAPI,
                                                           handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    for _ in range(8):
        watch_refused_cycle(clock, api, "403")
    listed(api, ["a"], "10")
    clock.advance(5)
    api.last_watch().send("ERROR", status(410))
    assert reflector.state is State.listing and clock.getDelayedCalls() == []
    listed(api, ["a"], "20")
    clock.advance(5)
    api.last_watch().fail(gone())
    assert reflector.state is State.listing, "an HTTP 410 too"


def test_problem_names_the_verb_and_lasts_until_a_watch_is_up(
        clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    changes: list[str | None] = []
    reflector.on_problem = lambda: changes.append(reflector.problem)
    api.last_list().fail(APIError(403, "Forbidden", "cannot list services"))
    assert reflector.problem == "list services: 403 Forbidden: cannot list services"
    assert reflector.problem_persistent
    clock.advance(next_delay(clock))
    listed(api, [], "10")
    assert reflector.problem is not None, "a list alone does not clear it"
    api.last_watch().fail(APIError(403, "Forbidden", "cannot watch services"))
    assert reflector.problem == "watch services: 403 Forbidden: cannot watch services"
    clock.advance(next_delay(clock))
    listed(api, [], "11")
    api.last_watch().accept()
    assert reflector.problem is None and not reflector.problem_persistent
    api.last_watch().fail(ConnectionRefusedError())
    assert reflector.problem is not None and not reflector.problem_persistent
    assert len(changes) == 4


@pytest.mark.parametrize("error", [
    APIError(403, "Forbidden"),
    APIError(504, "Timeout", "Too large resource version"),
    APIError(0, "BadEvent", "watch event is not JSON"),
    APIError(0, "TooLarge", "watch event over 8388608 bytes"),
], ids=["403", "504-too-large-version", "bad-event", "huge-event"])
def test_watch_that_cannot_resume_relists_after_a_backoff(
        clock: Clock, api: FakeAPI, handler: Recorder, error: APIError) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    api.last_watch().fail(error)
    assert reflector.state is State.backoff
    clock.advance(1.5)
    assert reflector.state is State.listing


def test_jitter_spreads_the_delays(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    seen = set()
    for value in (0.0, 0.25, 0.99):
        local, other = Clock(), FakeAPI()
        make(local, other, Recorder(), random=value)
        other.last_list().fail(APIError(500))
        (call,) = local.getDelayedCalls()
        seen.add(call.getTime())
    assert seen == {1.0, 1.25, 1.99}


# -- stopping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["listing", "watching", "backoff"])
def test_stop_leaves_nothing_running(clock: Clock, api: FakeAPI, handler: Recorder,
                                     when: str) -> None:
    reflector = make(clock, api, handler)
    if when != "listing":
        listed(api, [], "10")
    if when == "backoff":
        api.last_watch().fail(APIError(500))
    reflector.stop()
    assert reflector.state is State.stopped
    assert clock.getDelayedCalls() == []
    assert api.open_lists() == [] and api.open_watches() == []
    clock.advance(1000)
    assert reflector.state is State.stopped


def test_unknown_event_types_are_ignored(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = make(clock, api, handler)
    listed(api, [], "10")
    api.last_watch().send("SURPRISE", svc("a"))
    assert handler.calls == [("replace", [])] and reflector.state is State.watching


def test_nodes_are_watched_cluster_wide(clock: Clock, api: FakeAPI, handler: Recorder) -> None:
    reflector = Reflector(clock, api, NODES, handler, timing=TIMING)
    reflector.start()
    assert api.last_list().resource is NODES and api.last_list().namespace is None


# -- any sequence of faults: the reflector always comes back to watching ------------------------

_faults = st.sampled_from(["ok", "500", "429", "410", "refused", "error-event", "end",
                           "bookmark"])


@settings(max_examples=60, deadline=None)
@given(st.lists(_faults, max_size=25))
def test_any_fault_sequence_converges(faults: list[str]) -> None:
    clock, api, handler = Clock(), FakeAPI(), Recorder()
    reflector = make(clock, api, handler)
    version = 1
    for fault in faults:
        clock.advance(61)  # past any backoff (at most 30 s, jittered up to twice)
        pending = api.open_lists()
        if pending:
            (request,) = pending
            if fault in ("500", "429", "refused"):
                request.fail(APIError(int(fault)) if fault != "refused"
                             else ConnectionRefusedError())
            else:
                version += 1
                request.answer([svc("a")], str(version))
            continue
        (watch,) = api.open_watches()
        if fault == "ok":
            version += 1
            watch.send("MODIFIED", svc("a", str(version)))
        elif fault in ("500", "429"):
            watch.fail(APIError(int(fault)))
        elif fault == "refused":
            watch.fail(ConnectionRefusedError())
        elif fault == "410":
            watch.fail(gone())
        elif fault == "error-event":
            watch.send("ERROR", status(410))
        elif fault == "end":
            watch.end()
        else:
            watch.send("BOOKMARK", {"metadata": {"resourceVersion": str(version)}})
        assert len(api.open_lists()) + len(api.open_watches()) <= 1
        assert len(clock.getDelayedCalls()) <= 1
    for _ in range(5):
        clock.advance(100)
        for request in api.open_lists():
            request.answer([svc("final")], "999")
    assert reflector.state is State.watching
    assert len(api.open_watches()) == 1
    assert reflector.synced and handler.calls[0][0] == "replace"
    assert clock.getDelayedCalls() != [], "the watch's deadline is armed"


def test_a_failure_after_a_healthy_spell_is_warned_again(clock: Clock, api: FakeAPI,
                                                         handler: Recorder) -> None:
    make(clock, api, handler)
    with capturedLogs() as events:
        for _ in range(8):
            watch_refused_cycle(clock, api, "403")
        listed(api, ["a"], "10")
        watch = api.last_watch()
        watch.accept()
        clock.advance(200)  # healthy for longer than backoff_reset
        watch.fail(APIError(403, "Forbidden", 'services is forbidden: User "x" cannot watch'))
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert "again" not in warnings[-1], "the first failure after the reset, said plainly"
    assert next_delay(clock) == 1.5
