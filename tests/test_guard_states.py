"""
The guarded exchange's states (routing/_guard.py): the written tables of legal transitions,
and random event sequences from both sides driven against a real Pipeline and guard, whose
source and target are the contract-checking doubles of edgemesh.testing.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet.task import Clock
from zope.interface import implementer

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import (
    IHeadEndedBody,
    IRequestBody,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    Role,
    SourceKind,
    TargetKind,
)
from edgemesh.routing import GuardedExchange, Pipeline, Resilience
from edgemesh.routing._guard import (
    ABORTED,
    BODY,
    COMPLETE,
    DATA,
    DONE,
    END,
    ENDED,
    GAVE_UP,
    HEAD,
    REQUEST_EVENTS,
    REQUEST_STATES,
    REQUEST_TRANSITIONS,
    RESPONSE_EVENTS,
    RESPONSE_STATES,
    RESPONSE_TRANSITIONS,
    RETRY,
    SENDING,
    STREAMING,
    WAITING,
    GuardStateError,
)

RESPONSE = range(len(RESPONSE_STATES))
REQUEST = range(len(REQUEST_STATES))
from edgemesh.testing import (
    CompletingResponder,
    Opened,
    RecordingBody,
    RecordingResponder,
    ScriptedTarget,
)

# --- the tables ------------------------------------------------------------------------------

_RESPONSE_RANK = {WAITING: 0, STREAMING: 1, DONE: 2, GAVE_UP: 2}
_REQUEST_RANK = {SENDING: 0, ENDED: 1, ABORTED: 2}


def test_every_pair_is_in_a_table_or_raises_a_clear_error() -> None:
    """What the guard looks up (one column of a table per event) is the written table, and
    a pair missing from it raises an error naming the event and the state."""
    for state in RESPONSE:
        for event, name in enumerate(RESPONSE_EVENTS):
            if (state, event) in RESPONSE_TRANSITIONS:
                continue
            with pytest.raises(GuardStateError, match=f"{name} .* {RESPONSE_STATES[state]}$"):
                _guard_response_column(event)[state]
    for request in REQUEST:
        for qevent, name in enumerate(REQUEST_EVENTS):
            if (request, qevent) not in REQUEST_TRANSITIONS:
                with pytest.raises(GuardStateError, match=f"{name} .* {REQUEST_STATES[request]}$"):
                    _guard_request_column(qevent)[request]


def _guard_response_column(event: int) -> dict[int, int]:
    from edgemesh.routing import _guard

    columns = (_guard._ON_HEAD, _guard._ON_COMPLETE, _guard._ON_DATA, _guard._ON_END,
               _guard._ON_RETRY, _guard._ON_FAIL, _guard._ON_EXPIRE, _guard._ON_CLOSE,
               _guard._ON_GIVE_UP)
    return columns[event]


def _guard_request_column(event: int) -> dict[int, int]:
    from edgemesh.routing import _guard

    return (_guard._ON_BODY, _guard._ON_TRAILERS, _guard._ON_BODY_END, _guard._ON_ABORT)[event]


def test_the_columns_are_the_tables() -> None:
    for event in range(len(RESPONSE_EVENTS)):
        assert dict(_guard_response_column(event)) == {
            state: after for (state, on), after in RESPONSE_TRANSITIONS.items() if on == event}
    for event in range(len(REQUEST_EVENTS)):
        assert dict(_guard_request_column(event)) == {
            state: after for (state, on), after in REQUEST_TRANSITIONS.items() if on == event}


def test_the_illegal_events_are_the_contract_violations() -> None:
    missing = {key for key in ((s, e) for s in RESPONSE for e in range(len(RESPONSE_EVENTS)))
               if key not in RESPONSE_TRANSITIONS}
    assert missing == {
        (WAITING, DATA),  # a body before the head
        (WAITING, END),  # an end before the head
        (STREAMING, HEAD),  # a head twice
        (STREAMING, COMPLETE),  # a whole response after a head
        (STREAMING, RETRY),  # a retry once the source has part of an answer
    }
    assert {key for key in ((s, e) for s in REQUEST for e in range(len(REQUEST_EVENTS)))
            if key not in REQUEST_TRANSITIONS} == {(ENDED, BODY)}


@given(st.lists(st.sampled_from(range(len(RESPONSE_EVENTS))), max_size=30))
def test_response_states_only_move_forward(events: list[int]) -> None:
    state = WAITING
    for event in events:
        after = RESPONSE_TRANSITIONS.get((state, event))
        if after is None:
            continue  # illegal: the state stays as it was
        assert _RESPONSE_RANK[after] >= _RESPONSE_RANK[state]
        if state >= DONE:
            assert after == state  # over is over: late events go nowhere
        state = after


@given(st.lists(st.sampled_from(range(len(REQUEST_EVENTS))), max_size=30))
def test_request_states_only_move_forward(events: list[int]) -> None:
    state = SENDING
    for event in events:
        after = REQUEST_TRANSITIONS.get((state, event))
        if after is None:
            continue
        assert _REQUEST_RANK[after] >= _REQUEST_RANK[state]
        if state == ABORTED:
            assert after == ABORTED
        state = after


# --- one guarded exchange, driven at random ----------------------------------------------------

HTTP = ServicePort("http", 80, 8080)
ENDPOINTS = tuple(Endpoint(f"10.1.0.{i}", 8080, "edge-1") for i in (1, 2, 3))
REQUEST_TIMEOUT = 5.0
IDLE_TIMEOUT = 20.0


class Observer:
    """Counts what the pipeline tells the observability layer."""

    def __init__(self) -> None:
        self.opens = 0
        self.closes = 0

    def opened(self, exchange: GuardedExchange) -> None:
        self.opens += 1
        exchange.stats = _Stats()

    def closed(self, exchange: GuardedExchange) -> None:
        self.closes += 1


class _Stats:
    bytes_in = 0
    bytes_out = 0


class GuardMachine(RuleBasedStateMachine):
    """Source and target events in any order; illegal ones must raise GuardStateError and
    change nothing; legal ones must keep the doubles' contract and the pipeline's counts."""

    clock: Clock
    pipeline: Pipeline
    pods: ScriptedTarget
    client: RecordingResponder
    body: IRequestBody
    guard: GuardedExchange
    observer: Observer

    @initialize(
        completing=st.booleans(),
        method=st.sampled_from([b"GET", b"POST"]),
        length=st.sampled_from([None, 0]),
        policy=st.sampled_from(["round-robin", "least-request"]),
    )
    def start(self, completing: bool, method: bytes, length: int | None, policy: str) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        service = Service("shop", "web", None, (HTTP,), {"http": ENDPOINTS},
                          {"edgemesh.io/lb-policy": policy})
        catalog = Catalog([service], (Node("edge-1", True, "192.0.2.1", 7701),), revision=1)
        self.pipeline = Pipeline(
            Role.edge, "edge-1", catalog, clock=self.clock,
            settings=Resilience(request_timeout=REQUEST_TIMEOUT, stream_idle_timeout=IDLE_TIMEOUT,
                                retries=2),
        )
        self.observer = Observer()
        self.pipeline.observer = self.observer
        self.pods = ScriptedTarget(TargetKind.service_bus)
        self.pipeline.add_target(self.pods)
        self.client = CompletingResponder() if completing else RecordingResponder()
        head = RequestHead(method, b"/", b"web.shop", (), length, "10.0.0.9")
        self.body = self.pipeline.dispatch(SourceKind.service_bus, head, self.client)
        guard = self.pods.opened[0].responder
        assert isinstance(guard, GuardedExchange)
        self.guard = guard

    # -- helpers --------------------------------------------------------------------------

    def _states(self) -> tuple[int, int]:
        return self.guard.response, self.guard.request_state

    def _response_event(self, event: int, call: Any, *args: Any) -> None:
        before = self._states()
        if (before[0], event) in RESPONSE_TRANSITIONS:
            call(*args)
        else:
            with pytest.raises(GuardStateError):
                call(*args)
            assert self._states() == before

    # -- the source -------------------------------------------------------------------------

    @rule(data=st.binary(min_size=1, max_size=64))
    def source_writes(self, data: bytes) -> None:
        before = self._states()
        if (before[1], BODY) in REQUEST_TRANSITIONS:
            self.body.write(data)
        else:
            with pytest.raises(GuardStateError):
                self.body.write(data)
            assert self._states() == before

    @rule()
    def source_ends(self) -> None:
        self.body.end()

    @rule()
    def source_gives_up(self) -> None:
        self.body.abort("client gone")

    # -- the target (its current attempt) ---------------------------------------------------

    @rule(status=st.sampled_from([200, 404, 503]))
    def target_heads(self, status: int) -> None:
        self._response_event(HEAD, self.guard.head,
                             ResponseHead(status, b"X", (), None))

    @rule(data=st.binary(min_size=1, max_size=64))
    def target_writes(self, data: bytes) -> None:
        self._response_event(DATA, self.guard.write, data)

    @rule()
    def target_ends(self) -> None:
        self._response_event(END, self.guard.end)

    @rule(status=st.sampled_from([200, 502]), body=st.binary(max_size=16))
    def target_completes(self, status: int, body: bytes) -> None:
        self._response_event(COMPLETE, self.guard.complete,
                             ResponseHead(status, b"X", (), len(body)), body)

    @rule(reason=st.sampled_from([Reason.upstream_refused, Reason.upstream_lost,
                                  Reason.upstream_timeout]), unsent=st.booleans())
    def target_fails(self, reason: Reason, unsent: bool) -> None:
        self.guard.fail(MeshError(reason, "boom", unsent=unsent))  # legal in every state

    @rule(seconds=st.sampled_from([1.0, REQUEST_TIMEOUT, IDLE_TIMEOUT]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- what must always hold --------------------------------------------------------------

    @invariant()
    def counts_follow_the_state(self) -> None:
        guard = self.guard
        over = guard.response >= DONE
        assert self.pipeline.in_flight == (0 if over else 1)
        assert guard.state.active == (0 if over else 1)
        assert self.observer.opens == 1
        assert self.observer.closes == (1 if over else 0)
        if over:
            assert not self.pipeline.balancer.loads  # the endpoint's load given back

    @invariant()
    def the_source_sees_what_the_state_says(self) -> None:
        guard, client = self.guard, self.client
        answered = client.ended or client.error is not None
        if guard.response == WAITING:
            assert client.response is None and not answered
        elif guard.response == STREAMING:
            assert client.response is not None and not answered
        elif guard.response == DONE:
            assert answered
        else:  # GAVE_UP: the source left; it is told nothing more
            assert not answered
        assert guard.headed == (client.response is not None)
        assert guard.gave_up == (guard.response == GAVE_UP)

    @invariant()
    def the_request_state_follows_the_source(self) -> None:
        guard = self.guard
        assert guard.ended == (guard.request_state == ENDED)
        assert guard.aborted == (guard.request_state == ABORTED)


TestGuardMachine = GuardMachine.TestCase
TestGuardMachine.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)


@given(st.data())
@settings(max_examples=20, deadline=None)
def test_a_late_head_after_the_source_gave_up_goes_nowhere(data: st.DataObject) -> None:
    """The GIVE_UP path explicitly: whatever the target does after, the client sees nothing."""
    clock = Clock()
    service = Service("shop", "web", None, (HTTP,), {"http": ENDPOINTS[:1]})
    catalog = Catalog([service], (Node("edge-1", True, "192.0.2.1", 7701),), revision=1)
    pipeline = Pipeline(Role.edge, "edge-1", catalog, clock=clock)
    pods = ScriptedTarget(TargetKind.service_bus)
    pipeline.add_target(pods)
    client = RecordingResponder()
    body = pipeline.dispatch(SourceKind.service_bus,
                             RequestHead(b"GET", b"/", b"web.shop", (), 0, "10.0.0.9"), client)
    body.abort("gone")
    guard = pods.opened[0].responder
    assert isinstance(guard, GuardedExchange) and guard.response == GAVE_UP
    late = data.draw(st.sampled_from(["respond", "complete", "fail"]))
    opened = pods.opened[0]
    if late == "respond":
        opened.respond()
    elif late == "complete":
        opened.complete()
    else:
        opened.fail(Reason.upstream_lost)
    assert client.calls == [] and pipeline.in_flight == 0 and guard.gave_up


@pytest.mark.parametrize("then", ["end", "abort"])
def test_after_a_timeout_the_target_hears_nothing_more(then: str) -> None:
    """Found by GuardMachine: an idle timeout aborts the target's request body; the source's
    later end (or abort) of its body went to the target after that abort."""
    clock = Clock()
    service = Service("shop", "web", None, (HTTP,), {"http": ENDPOINTS[:1]})
    catalog = Catalog([service], (Node("edge-1", True, "192.0.2.1", 7701),), revision=1)
    pipeline = Pipeline(Role.edge, "edge-1", catalog, clock=clock,
                        settings=Resilience(stream_idle_timeout=IDLE_TIMEOUT))
    pods = ScriptedTarget(TargetKind.service_bus)
    pipeline.add_target(pods)
    client = RecordingResponder()
    body = pipeline.dispatch(SourceKind.service_bus,
                             RequestHead(b"POST", b"/", b"web.shop", (), None, "10.0.0.9"), client)
    clock.advance(IDLE_TIMEOUT)
    target_body = pods.opened[0].body
    assert target_body.aborted is not None and client.error is not None
    assert client.error.reason is Reason.client_timeout
    if then == "end":
        body.end()  # the RecordingBody raises ContractViolation on an end after its abort
    else:
        body.abort("client gone")
    assert not target_body.ended and pipeline.in_flight == 0


@implementer(IHeadEndedBody)
class _HeadEndedBody(RecordingBody):
    """A target's body that takes a bodiless head as the whole request (as the pod client's
    and the link's do): the guard may leave out its end."""


@pytest.mark.parametrize(
    ("method", "length", "declares", "target_ends"),
    [
        (b"GET", 0, True, False),  # bodiless, and the target says its head ended it
        (b"GET", 0, False, True),  # a target that does not say so still gets its end
        (b"POST", 3, True, True),  # a body: its end always goes to the target
        (b"POST", None, True, True),  # chunked: the end is what ends it
    ],
)
def test_a_bodiless_head_ends_the_request_at_open(
    method: bytes, length: int | None, declares: bool, target_ends: bool
) -> None:
    """A bodiless head ends the guard's request side when it opens (so a source may leave
    out its end, IHeadEndedBody), and the target's with it unless the target declares
    IHeadEndedBody; a request with a body ends with the source's end.  The request timeout
    runs either way."""
    clock = Clock()
    service = Service("shop", "web", None, (HTTP,), {"http": ENDPOINTS[:1]})
    catalog = Catalog([service], (Node("edge-1", True, "192.0.2.1", 7701),), revision=1)
    pipeline = Pipeline(Role.edge, "edge-1", catalog, clock=clock,
                        settings=Resilience(request_timeout=REQUEST_TIMEOUT))

    def with_body(call: Opened) -> None:
        call.body = _HeadEndedBody() if declares else RecordingBody()

    pods = ScriptedTarget(TargetKind.service_bus, with_body)
    pipeline.add_target(pods)
    client = RecordingResponder()
    body = pipeline.dispatch(SourceKind.service_bus,
                             RequestHead(method, b"/", b"web.shop", (), length, "10.0.0.9"), client)
    opened = pods.opened[0]
    guard = opened.responder
    assert isinstance(guard, GuardedExchange)
    # A bodiless head is the whole request: ended at open, the target's body with it.
    assert guard.ended is (length == 0) and opened.body.ended is (length == 0 and target_ends)
    if length:
        body.write(b"abc")
    body.end()  # the source's end: changes nothing more for a bodiless head
    assert guard.ended
    assert opened.body.ended is target_ends and opened.body.aborted is None
    # The request timeout runs from the end of the request either way.
    clock.advance(REQUEST_TIMEOUT)
    assert client.error is not None and client.error.reason is Reason.upstream_timeout
    assert opened.body.aborted is not None and pipeline.in_flight == 0
