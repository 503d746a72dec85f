"""
The guarded exchange: the pipeline's own responder between a source and a target.

It sees every exchange of the node from start to end, which is what resilience needs:

- accounting: requests in progress per service (overload limit), per endpoint (for the
  least-request and bounded consistent-hash policies), and the drain;
- outlier detection: the outcome of each attempt (connect errors, resets, timeouts, 5xx);
- timeouts, where the exchange entered the mesh: the request timeout until the response
  head and the idle timeout of the streams, cancelling the exchange on every hop (the
  target's ``abort`` resets the link stream, which aborts the pod connection beyond it);
- retries, where the exchange entered the mesh: while no response head was delivered, the
  request body is still replayable (at most 64 KiB kept) and the failure is one that a
  retry may cure: the connection was refused (nothing was sent: any method), or it was
  reset before any response byte (idempotent methods only).  Another endpoint is chosen;
  a retry budget caps the retries of a service when everything fails.

Exchanges that arrive from another node are only accounted for: the node where the
exchange entered the mesh owns its timeouts and retries (no retry storms across hops).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from ..exchange import (
    COMPLETERS,
    HEAD_ENDED,
    Headers,
    IBodyPipe,
    ICompletingResponder,
    IHeadEndedBody,
    IPipeResponder,
    IRequestBody,
    IResponder,
    ITarget,
    IViewResponder,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    SourceKind,
    can_take_pipes,
    hand_trailers,
    write_parts,
    write_pipe,
)
from ._decide import Route

if TYPE_CHECKING:
    from ..catalog import Catalog, Endpoint, Service, ServicePort
    from ._balance import Balancer
    from ._health import OutlierDetector, Resilience, ServiceState
    from ._policy import EndpointKey, ServicePolicy

__all__ = [
    "IDEMPOTENT_METHODS",
    "REPLAY_LIMIT",
    "REQUEST_TRANSITIONS",
    "RESPONSE_TRANSITIONS",
    "GuardHost",
    "GuardStateError",
    "GuardedBody",
    "GuardedExchange",
]

REPLAY_LIMIT: Final = 64 * 1024
"""Request body kept for a retry; a longer body is never retried."""

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_NOT_DELIVERED: Final = frozenset({Reason.upstream_refused, Reason.draining, Reason.overloaded})
"""Failures (also when another node reports them) that mean no request byte reached the
application: refused connections, a node that refused a stream while draining or overloaded."""
_RESET: Final = frozenset({Reason.upstream_lost, Reason.peer_unavailable})
"""Failures before any response byte that may follow a delivered request."""
_ENDPOINT_FAILURES: Final = frozenset({
    Reason.upstream_refused,
    Reason.upstream_lost,
    Reason.peer_unavailable,
    Reason.upstream_timeout,
    Reason.upstream_bad_response,
})
"""What counts against an endpoint for outlier ejection (besides 5xx answers)."""

INFINITY: Final = math.inf

log = Logger(namespace="edgemesh.routing.retry")


class GuardHost(Protocol):
    """What a guarded exchange needs of the pipeline that runs it (Pipeline implements it)."""

    settings: Resilience
    outliers: OutlierDetector
    balancer: Balancer
    """Its ``loads`` (exchanges in progress per endpoint) the guard keeps up to date."""

    @property
    def catalog(self) -> Catalog: ...

    def now(self) -> float:
        """The clock's time (0.0 without a clock)."""

    def arm(self, guard: GuardedExchange) -> None:
        """The guard's request deadline is set: wake up for it."""

    def finished(self, guard: GuardedExchange, counted: MeshError | None = None) -> None:
        """The exchange is over (every way it ends, once): one less in progress for its
        service (``guard.state.active``) and its endpoint (``guard.unload``), no longer in
        progress here, and observed.  ``counted``: the
        error it ended with inside the first ``open``, already reported to the observer
        (the source that gets it raised must not count it again as refused)."""

    def relay(
        self, route: Route, error: MeshError, source: SourceKind
    ) -> tuple[Route, ITarget] | None:
        """After a failed hub dial: the same endpoint through the router (None: no such way)."""

    def reroute(
        self, guard: GuardedExchange, exclude: set[EndpointKey]
    ) -> tuple[Route, ITarget] | None:
        """A route for a retry to another endpoint than ``exclude`` (None: there is none)."""


# -- the guard's states (h11's style: explicit states, a table of legal transitions) -------


class GuardStateError(RuntimeError):
    """An event that is illegal in the guard's state: a bug in a target or a source (e.g.
    a response head twice), never a network condition."""


# Plain ints, not enum members: an enum member's lookup, hash and comparison each cost
# several times an int's, and the guard moves a state at every event of every exchange.

WAITING: Final = 0
"""No response head yet: an attempt (or a retry) is under way."""
STREAMING: Final = 1
"""The head went to the source; the body follows."""
DONE: Final = 2
"""Over: answered, failed, timed out, or refused inside the first ``open``."""
GAVE_UP: Final = 3
"""Over: the source gave up (client or peer gone) before the response was.  From DONE on,
the exchange is over and late calls go nowhere."""
RESPONSE_STATES: Final = ("WAITING", "STREAMING", "DONE", "GAVE_UP")

HEAD: Final = 0
COMPLETE: Final = 1
"""A whole response in one call."""
DATA: Final = 2
"""Response body bytes or trailers."""
END: Final = 3
RETRY: Final = 4
"""A failed attempt that another attempt takes over."""
FAIL: Final = 5
EXPIRE: Final = 6
"""The request or idle timeout."""
CLOSE: Final = 7
"""The first ``open`` raised: the source answers what was raised to it."""
GIVE_UP: Final = 8
"""The source aborted its request."""
RESPONSE_EVENTS: Final = ("HEAD", "COMPLETE", "DATA", "END", "RETRY", "FAIL", "EXPIRE",
                          "CLOSE", "GIVE_UP")

SENDING: Final = 0
"""The source's request body is still coming."""
ENDED: Final = 1
ABORTED: Final = 2
REQUEST_STATES: Final = ("SENDING", "ENDED", "ABORTED")

BODY: Final = 0
"""Request body bytes."""
TRAILERS: Final = 1
BODY_END: Final = 2
ABORT: Final = 3
REQUEST_EVENTS: Final = ("BODY", "TRAILERS", "BODY_END", "ABORT")

RESPONSE_TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (WAITING, HEAD): STREAMING,
    (WAITING, COMPLETE): DONE,
    (WAITING, RETRY): WAITING,
    (WAITING, FAIL): DONE,
    (WAITING, EXPIRE): DONE,
    (WAITING, CLOSE): DONE,
    (WAITING, GIVE_UP): GAVE_UP,
    (STREAMING, DATA): STREAMING,
    (STREAMING, END): DONE,
    (STREAMING, FAIL): DONE,
    (STREAMING, EXPIRE): DONE,
    # A target that sent a head and then raised in ``open``: over, as before.
    (STREAMING, CLOSE): DONE,
    (STREAMING, GIVE_UP): GAVE_UP,
    # Over: whatever comes late goes nowhere (a target may still be winding down).
    **{(over, event): over for over in (DONE, GAVE_UP) for event in range(len(RESPONSE_EVENTS))},
}
"""The response side's legal transitions, (state, event) → state.  Illegal: a head twice,
a whole response after a head, a body or an end before a head, a retry after a head (the
source has part of an answer)."""

REQUEST_TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (SENDING, BODY): SENDING,
    (SENDING, TRAILERS): SENDING,
    (SENDING, BODY_END): ENDED,
    (SENDING, ABORT): ABORTED,
    (ENDED, TRAILERS): ENDED,  # late trailers: ignored, as before
    (ENDED, BODY_END): ENDED,
    (ENDED, ABORT): ABORTED,  # the client left while waiting for the response
    **{(ABORTED, event): ABORTED for event in range(len(REQUEST_EVENTS))},
}
"""The request side's legal transitions.  Illegal: body bytes after the end."""


class _Next(dict[int, int]):
    """One event's column of a table, state → next state (what the guard looks up: one
    dict lookup by an int); a state missing raises GuardStateError."""

    def __init__(self, side: str, states: tuple[str, ...], events: tuple[str, ...],
                 table: dict[tuple[int, int], int], event: int) -> None:
        super().__init__({state: after for (state, on), after in table.items() if on == event})
        self.side = side
        self.states = states
        self.event = events[event]

    def __missing__(self, state: int) -> int:
        raise GuardStateError(f"guarded exchange: {self.event} is illegal on the {self.side} "
                              f"side in state {self.states[state]}")


def _columns(
    side: str, states: tuple[str, ...], events: tuple[str, ...],
    table: dict[tuple[int, int], int],
) -> tuple[_Next, ...]:
    return tuple(_Next(side, states, events, table, event) for event in range(len(events)))


(_ON_HEAD, _ON_COMPLETE, _ON_DATA, _ON_END, _ON_RETRY, _ON_FAIL, _ON_EXPIRE, _ON_CLOSE,
 _ON_GIVE_UP) = _columns("response", RESPONSE_STATES, RESPONSE_EVENTS, RESPONSE_TRANSITIONS)
_ON_BODY, _ON_TRAILERS, _ON_BODY_END, _ON_ABORT = _columns(
    "request", REQUEST_STATES, REQUEST_EVENTS, REQUEST_TRANSITIONS)


class ByteCounters(Protocol):
    """The byte counters an observer gives an exchange (its ``stats``)."""

    bytes_in: int
    bytes_out: int


@implementer(IResponder)
class _Gone:
    """The responder of a guard whose exchange is over: late calls go nowhere."""

    def head(self, head: ResponseHead) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def end(self) -> None:
        pass

    def fail(self, error: MeshError) -> None:
        pass

    def setProducer(self, producer: IPushProducer) -> None:
        pass


GONE: Final = _Gone()


@implementer(IHeadEndedBody)
class GuardedBody:
    """The request side the source writes to: the guard's request half, working on the
    guard's state (its own methods, not forwarders to the guard's: one Python call less
    per request event, two per bodiless exchange).  A bodiless head ended the request when
    the guard opened it (GuardedExchange.__init__): its ``end`` then changes nothing."""

    __slots__ = ("guard",)

    guard: GuardedExchange
    """Set by the pipeline once it made the body: no ``__init__``, so that making one is no
    Python call (~770 instructions less per exchange; callgrind micro-benchmark)."""

    def write(self, data: bytes) -> None:
        guard = self.guard
        guard.request_state = _ON_BODY[guard.request_state]
        if guard.response >= DONE:
            return
        size = len(data)
        guard.received += size
        stats = guard.stats
        if stats is not None:
            stats.bytes_in += size
        replay = guard.replay
        if replay is not None:
            guard.replayed += size
            if guard.replayed <= REPLAY_LIMIT:
                replay.append(data)
            else:
                guard.replay = None
        guard.active_at = guard.pipeline.now()
        inner = guard.inner
        if inner is not None:
            inner.write(data)

    def end(self) -> None:
        guard = self.guard
        before = guard.request_state
        guard.request_state = _ON_BODY_END[before]
        if before != SENDING:
            return
        # The request timeout runs from the end of the body (unless it already does).
        if guard.origin and guard.deadline == INFINITY and guard.response == WAITING:
            pipeline = guard.pipeline
            guard.deadline = pipeline.now() + guard.timeout
            pipeline.arm(guard)
        inner = guard.inner
        if inner is not None:
            inner.end()
            if guard.response >= DONE:
                guard.inner = None

    def trailers(self, fields: Headers) -> None:
        guard = self.guard
        before = guard.request_state
        guard.request_state = _ON_TRAILERS[before]
        if before != SENDING or guard.response >= DONE:
            return
        guard.request_trailers = fields  # kept for a retry with the rest of the replay
        inner = guard.inner
        if inner is not None:
            hand_trailers(inner, fields, "the target takes no trailers")

    def abort(self, reason: str) -> None:
        guard = self.guard
        guard.request_state = _ON_ABORT[guard.request_state]
        before = guard.response
        guard.response = _ON_GIVE_UP[before]
        if before < DONE:
            guard.pipeline.finished(guard)
        inner = guard.inner
        if inner is not None:
            inner.abort(reason)
        guard._let_go()

    def setProducer(self, producer: IPushProducer) -> None:
        guard = self.guard
        inner = guard.inner
        if guard.replay is None and not guard.status and not guard.origin:
            # No retry possible, and no idle timeout to judge here (which needs to know
            # whether the target paused the source): the target pauses the source directly.
            guard.producer = None
            if inner is not None:
                inner.setProducer(producer)
            return
        guard.producer = producer
        guard.producer_paused = False
        if inner is not None:
            inner.setProducer(guard)


@implementer(ICompletingResponder, IViewResponder, IPipeResponder, IPushProducer)
class GuardedExchange:
    """The responder the target answers through.  As IPushProducer it stands for the
    source's producer towards the target (so that a retry can undo the pauses of a
    failed attempt).

    Its life is two states, one per direction (``response`` and ``request``), moved only
    through RESPONSE_TRANSITIONS and REQUEST_TRANSITIONS.

    Hot path: no __slots__, so that the many attributes that most exchanges never change
    are class defaults rather than stores in ``__init__``."""

    origin = False
    """The exchange entered the mesh here: this node owns its timeouts and retries."""
    response = WAITING
    request_state = SENDING
    inner: IRequestBody | None = None
    route: Route | None = None
    load_key: tuple[str, int] | None = None
    tries = 0
    tried: list[tuple[str, int]] | None = None
    producer: IPushProducer | None = None
    producer_paused = False
    """Flow control, not the exchange's life: the target paused the source."""
    replay: list[bytes] | None = None
    replayed = 0
    request_trailers: Headers = ()
    deadline = INFINITY
    """The request timeout (finite from the end of the request body until the head)."""
    idle_deadline = INFINITY
    active_at = 0.0
    """When data last moved, either way (the idle timeout runs from it)."""
    timeout = 0.0
    # What the pipeline's observer (metrics, access log) reads; it sets ``stats`` and
    # ``started`` when the exchange opens and is told when it closes.
    stats: ByteCounters | None = None
    started = 0.0
    status = 0
    """The response's status, once its head went to the source (0: none did)."""
    error: Reason | None = None
    """Why the exchange failed, once it did for good."""
    received = 0
    sent = 0

    def __init__(
        self,
        pipeline: GuardHost,
        source: SourceKind,
        head: RequestHead,
        responder: IResponder,
        service: Service,
        port: ServicePort,
        state: ServiceState,
        policy: ServicePolicy,
        origin: bool,
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.request = head
        self.responder = responder
        self.service = service
        self.port = port
        self.state = state
        self.policy = policy
        # Read on every exchange before any write (here, by the pipeline and the observer):
        # stored, as a class default read through an instance stays unspecialized in
        # CPython 3.11 (~220 instructions a read against ~45 a store; p1 -0.7 k).
        self.response = WAITING
        self.tries = 0
        self.load_key = None
        self.error = None
        if head.content_length == 0:
            # The head is the whole request: ended now, so that the source need not end it
            # (IHeadEndedBody; a GET: two Python calls less per exchange on edge-1).
            self.request_state = ENDED
        if origin:
            self.origin = True
            settings = pipeline.settings
            retries = policy.retries
            length = head.content_length
            if (settings.retries if retries is None else retries) > 0 and (
                length is None or length <= REPLAY_LIMIT
            ):
                self.replay = []
            self.timeout = policy.timeout or settings.request_timeout

    def __repr__(self) -> str:
        return (f"<GuardedExchange {self.service.key} try {self.tries} "
                f"{RESPONSE_STATES[self.response]}/{REQUEST_STATES[self.request_state]}>")

    # -- the states, as the observer and the pipeline read them --------------------------

    @property
    def done(self) -> bool:
        """Over for the source: answered, failed, timed out or given up."""
        return self.response >= DONE

    @property
    def headed(self) -> bool:
        """A response head went to the source."""
        return self.status != 0

    @property
    def ended(self) -> bool:
        return self.request_state == ENDED

    @property
    def aborted(self) -> bool:
        return self.request_state == ABORTED

    @property
    def gave_up(self) -> bool:
        """The source gave up (client or peer gone) before the response was over."""
        return self.response == GAVE_UP

    @property
    def endpoint_key(self) -> tuple[str, int] | None:
        """The endpoint of the current attempt (None: the target chooses)."""
        route = self.route
        endpoint = route.endpoint if route is not None else None
        return None if endpoint is None else (endpoint.host, endpoint.port)

    # -- attempts ----------------------------------------------------------------------

    def _attempt(self, route: Route, target: ITarget) -> None:
        attempt = self.tries = self.tries + 1
        self.route = route
        if self.policy.tracks_load:
            endpoint = route.endpoint
            if endpoint is not None:
                key = self.load_key = (endpoint.host, endpoint.port)
                loads = self.pipeline.balancer.loads
                loads[key] = loads.get(key, 0) + 1
        try:
            inner = target.open(route, self.request, self)
        except MeshError as error:
            if self.tries != attempt or self.response >= DONE:
                return
            # Raised before anything was sent.
            unsent = error if error.unsent else MeshError(error.reason, error.detail, unsent=True)
            if attempt > 1:
                self.fail(unsent)
            elif not (self._may_retry(unsent) and self._retry(unsent)):
                # The first attempt, inside dispatch: the source answers what was raised.
                self._count_failure(error.reason)
                self._close(error.reason, error)
                raise
            return
        except Exception:
            if self.tries != attempt or self.response >= DONE:
                return
            if attempt > 1:
                log.failure("target {target!r} raised in open", target=target)
                self.fail(MeshError(Reason.upstream_lost, "internal error in the mesh"))
                return
            self._close(Reason.upstream_lost, None)  # the source answers it as such
            raise
        if self.tries != attempt:
            return  # it failed inside open and a retry took over
        if attempt == 1 and self.request_state == ENDED and not HEAD_ENDED[type(inner)]:
            inner.end()  # a bodiless head ended the request (see __init__): the target's too
            if self.tries != attempt:
                return
        over = self.response >= DONE
        if over and self.request_state != SENDING:
            return  # answered inside open, and the request is over: nothing more to send
        self.inner = inner
        if attempt == 1 or over:
            return
        # A retry: hand over what the source already gave.
        producer = self.producer
        was_paused = self.producer_paused
        self.producer_paused = False
        if producer is not None:
            inner.setProducer(self)
        for data in list(self.replay or ()):
            if self.tries != attempt or self.response >= DONE:
                return
            inner.write(data)
        if (self.request_state == ENDED and self.tries == attempt
                and self.response < DONE):
            if self.request_trailers:
                hand_trailers(inner, self.request_trailers, f"{target!r} takes no trailers")
            inner.end()
        if was_paused and not self.producer_paused and producer is not None:
            producer.resumeProducing()

    def unload(self) -> None:
        """The endpoint's count of exchanges in progress, when it was counted: one less."""
        key = self.load_key
        if key is not None:
            self.load_key = None
            loads = self.pipeline.balancer.loads
            left = loads.get(key, 1) - 1
            if left > 0:
                loads[key] = left
            else:
                loads.pop(key, None)

    # -- IPushProducer: the target pausing the source ----------------------------------

    def pauseProducing(self) -> None:
        producer = self.producer
        if producer is not None and not self.producer_paused:
            self.producer_paused = True
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        producer = self.producer
        if producer is not None and self.producer_paused:
            self.producer_paused = False
            producer.resumeProducing()

    def stopProducing(self) -> None:
        producer = self.producer
        if producer is not None:
            producer.stopProducing()

    # -- IResponder: the target answering ----------------------------------------------

    def head(self, head: ResponseHead) -> None:
        before = self.response
        self.response = _ON_HEAD[before]
        if before >= DONE:
            return
        self.replay = None
        self.deadline = INFINITY
        self.active_at = self.pipeline.now()
        self.status = status = head.status
        if status >= 500 or self.pipeline.outliers.known:
            self._outcome(status)
        self.responder.head(head)

    def complete(self, head: ResponseHead, body: bytes) -> None:
        """A whole response at once (links deliver most responses so)."""
        before = self.response
        self.response = _ON_COMPLETE[before]
        if before >= DONE:
            return
        self.status = status = head.status
        if status >= 500 or self.pipeline.outliers.known:
            self._outcome(status)
        stats = self.stats
        if stats is not None:
            size = len(body)
            self.sent = size
            stats.bytes_out += size
        self.pipeline.finished(self)
        responder = self.responder
        # One dict lookup: 73 ns against 85 ns for the getattr probe (bench/complete_probe.py).
        complete = COMPLETERS[type(responder)]
        if complete is not None:
            complete(responder, head, body)
        else:
            responder.head(head)
            if body:
                responder.write(body)
            responder.end()
        self._let_go()

    def write(self, data: bytes) -> None:
        if self._body(len(data)):
            self.responder.write(data)

    def _body(self, size: int) -> bool:
        """``size`` bytes of the response's body go on to the responder (counted, and the
        exchange active now): False when the response is over and they must not."""
        before = self.response
        self.response = _ON_DATA[before]
        if before >= DONE:
            return False
        self.active_at = self.pipeline.now()
        stats = self.stats
        if stats is not None:
            self.sent += size
            stats.bytes_out += size
        return True

    def can_take_pipes(self, from_pod: bool) -> bool:
        return self.response < DONE and can_take_pipes(self.responder, from_pod)

    def takes_pipe_now(self) -> bool:
        responder: Any = self.responder  # an IPipeResponder's (can_take_pipes said so)
        return self.response < DONE and bool(responder.takes_pipe_now())

    def write_pipe(self, pipe: IBodyPipe, size: int) -> None:
        """``write`` of body bytes waiting in a pipe (a pod's, spliced): passed on as they
        are where the next responder takes them (a plain TCP link)."""
        if self._body(size):
            write_pipe(self.responder, pipe, size)
        else:
            pipe.take(size)  # the pipe is left empty whatever comes of them

    def write_parts(self, parts: list[bytes | memoryview]) -> None:
        """``write`` of pieces off a link (views of its reads), passed on uncopied where the
        next responder takes them (issue 15: edge-1 of path 2 copied every body byte)."""
        if self._body(sum(map(len, parts))):
            write_parts(self.responder, parts)

    def trailers(self, fields: Headers) -> None:
        before = self.response
        self.response = _ON_DATA[before]
        if before < DONE:
            hand_trailers(self.responder, fields, "the source takes no trailers")

    def end(self) -> None:
        before = self.response
        self.response = _ON_END[before]
        if before >= DONE:
            return
        self.pipeline.finished(self)
        self.responder.end()
        self._let_go()

    def fail(self, error: MeshError) -> None:
        before = self.response
        if before >= DONE:
            return
        if before == WAITING and self._may_retry(error) and self._retry(error):
            return
        self._count_failure(error.reason)
        self.response = _ON_FAIL[before]
        self.error = error.reason
        self.pipeline.finished(self)
        self.responder.fail(error)
        self._let_go()

    def setProducer(self, producer: IPushProducer) -> None:
        self.responder.setProducer(producer)

    def _let_go(self) -> None:
        """Over: drop the source's objects, and the target's once the request is over too.
        They point back at this guard, so keeping them would leave a reference cycle per
        exchange, freed only by the cyclic GC (measured: ~8 µs per exchange per node)."""
        self.responder = GONE
        self.producer = None
        if self.request_state != SENDING:
            self.inner = None  # else the body's end or abort still goes to the target

    # -- outcomes ----------------------------------------------------------------------

    def _outcome(self, status: int) -> None:
        key = self.endpoint_key
        if key is not None:
            outliers = self.pipeline.outliers
            if status >= 500:
                outliers.failure(key, self.pipeline.now(), self._peers())
            else:
                outliers.success(key)

    def _peers(self) -> tuple[Endpoint, ...]:
        return self.pipeline.catalog.ready_endpoints(self.service, self.port)

    def _count_failure(self, reason: Reason) -> None:
        key = self.endpoint_key
        if key is not None and reason in _ENDPOINT_FAILURES:
            self.pipeline.outliers.failure(key, self.pipeline.now(), self._peers())

    def _close(self, reason: Reason, raised: MeshError | None) -> None:
        """Over inside the first ``open``: the source answers what is raised to it."""
        self.response = _ON_CLOSE[self.response]
        self.error = reason
        # Counted here (when observed): not again as refused.
        self.pipeline.finished(self, raised if self.stats is not None else None)

    # -- retries -----------------------------------------------------------------------

    def _may_retry(self, error: MeshError) -> bool:
        if not self.origin or self.request_state == ABORTED or self.replay is None:
            return False
        retries = self.policy.retries
        if self.tries > (self.pipeline.settings.retries if retries is None else retries):
            return False
        reason = error.reason
        return error.unsent or reason in _NOT_DELIVERED or (
            reason in _RESET and self.request.method in IDEMPOTENT_METHODS
        )

    def _retry(self, error: MeshError) -> bool:
        """Start the next attempt; False when there is nowhere else to go or the budget
        says no (the caller then fails the exchange)."""
        route = self.route
        assert route is not None
        pipeline = self.pipeline
        # A peer that cannot be dialled directly: the same endpoint through the router.
        relayed = pipeline.relay(route, error, self.source)
        tried = self.tried
        if tried is None:
            tried = self.tried = []
        key = self.endpoint_key
        if key is not None:
            tried.append(key)
        chosen = relayed or pipeline.reroute(self, set(tried))
        if chosen is None:
            return False
        state = self.state
        if not state.budget.try_retry(pipeline.now()):
            state.retries_denied += 1
            log.info("{service}: retry budget exhausted; not retrying {code}",
                     service=self.service.key, code=error.reason.code)
            return False
        self.response = _ON_RETRY[self.response]
        if relayed is None:
            self._count_failure(error.reason)  # the endpoint itself failed
        self.unload()
        next_route, target = chosen
        self.state.retries += 1
        log.debug("{service}: {code} from {previous}; retrying on {endpoint} ({target})",
                  service=self.service.key, code=error.reason.code, previous=_where(route),
                  endpoint=_where(next_route), target=next_route.target.value)
        self.inner = None
        self._attempt(next_route, target)
        return True

    # -- timeouts (called by the pipeline's sweep) ---------------------------------------

    def expire(self, why: str, detail: str) -> None:
        before = self.response
        self.response = _ON_EXPIRE[before]
        if before >= DONE:
            return
        reason = Reason.upstream_timeout
        if why == "drain":
            # The node is stopping (its drain deadline passed): no timeout, nobody's fault.
            reason = Reason.draining
        else:
            if why == "request":
                self._count_failure(Reason.upstream_timeout)
            elif (self.request_state == SENDING and before == WAITING
                  and not self.producer_paused):
                # Silent mid-upload while the target was ready for more: the client stalled,
                # not the upstream (408, and no mark against the endpoint).
                reason = Reason.client_timeout
                detail = f"{self.service.key}: request body stalled: {detail.split(': ', 1)[-1]}"
            self.state.timeouts += 1
        self.error = reason
        self.pipeline.finished(self)
        inner = self.inner
        if inner is not None:
            # Cancels the exchange on every hop; the target hears nothing after its abort
            # (not the end or abort of a body the source is still sending).
            self.inner = None
            inner.abort(detail)
        self.responder.fail(MeshError(reason, detail))
        self._let_go()


def _where(route: Route) -> str:
    endpoint = route.endpoint
    return endpoint.address if endpoint is not None else f"{route.service.key} (cluster IP)"
