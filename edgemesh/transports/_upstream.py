"""
The pooled HTTP/1.1 upstream target: delivers an exchange to a pod (edge,
``TargetKind.service_bus``) or to a cloud service's ClusterIP (router,
``TargetKind.cluster_ip``).

One persistent connection carries one exchange at a time (no pipelining); idle
connections wait in a LIFO pool per address.  Requests are written with the
shared serializers of ``_http1``; responses are parsed with httptools (llhttp).
Both bodies stream with push-producer flow control:

    request:  source producer  ◄─pause─  upstream transport's write buffer
    response: upstream reads   ◄─pause─  the responder (a slow client)

A response whose head, body and end all come in one read (the common small one)
goes to the responder in one call, ``complete(head, body)``, when it offers that
optional method (the front, the guard, the links do); otherwise, and for anything
longer, as ``head``, ``write`` and ``end``.

Each exchange's request timeout runs from the end of its request body (its start, for
one without a body) to its response head: the upload's own pace is the source's business
(the idle timeout where the exchange entered the mesh).  Rather
than a DelayedCall each, the target keeps the waiting exchanges in start order (per
timeout value, that is deadline order) and one timer for the soonest deadline.

Failures never raise: they reach ``IResponder.fail`` as a ``MeshError`` whose
detail names the upstream address.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)
from twisted.internet import error as neterror
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    COMPLETERS,
    HOPS_HEADER,
    Completer,
    Headers,
    IRequestBody,
    IResponder,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    TargetKind,
    drop_trailers,
    hand_trailers,
)
from ..routing import Route
from ._http1 import (
    LAST_CHUNK,
    chunk,
    connection_tokens,
    end_to_end,
    last_chunk,
    request_head_bytes,
    trailer_field,
)
from ._io import SMALL_BUFFER, write_now

__all__ = ["REQUEST_BODY_BUFFER", "HTTPUpstreamTarget"]

MAX_READ: Final = 128 * 1024
"""The pod connections' largest read (and write-buffer threshold).  With the front's
immediate writes, 128 KiB reads take fewer instructions per 1 MiB body than the 256 KiB
reads of before (callgrind, 10 x 1 MiB on p1-local: 27.4 M against 30.5-31.0 M) and hold
half as much per connection behind a slow client."""

RAMP_READS: Final = 4
"""Whole reads in a row, taken by the responder without a pause, before the read size doubles."""

REQUEST_BODY_BUFFER: Final = 64 * 1024
"""Request body bytes held while no connection is ready before the source is paused;
also the most body a request may have sent on a pooled connection and still be
retried on a fresh one."""

_REQUEST_BODY_CAP: Final = 4 * REQUEST_BODY_BUFFER
"""A source that keeps writing this far while paused (or never gave a producer) fails
its exchange: the buffer stays bounded whatever the source does.  Lawful sources stay
well below it: the front delivers at most the rest of one read after a pause, and a link
stream holds what its peer sends within its credit (up to a window, more than this cap)
until it is resumed (see InboundExchange.held).  One write of an unpaused source is not
refused for its size: it is bounded by that source's read or frame size."""

_MAX_INTERIM_RESPONSES: Final = 16
HELD_BODY_LIMIT: Final = 16 * 1024
"""Body held with a response head in the hope that the whole response is in the read:
beyond it, the head goes and the body streams (a large body must not be held)."""
"""1xx responses tolerated before the final one (a flood of them is an attack)."""

_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_PHRASES: Final[dict[int, bytes]] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def connect_error(address: str, failure: Failure) -> MeshError:
    """A connection to a pod or ClusterIP that could not be made, as the mesh answers it.
    Nothing was sent on it: ``unsent`` lets routing retry elsewhere."""
    problem = failure.value
    if isinstance(problem, (neterror.TimeoutError, DeferredTimeoutError)):
        return MeshError(Reason.upstream_timeout, f"{address}: connect timed out", unsent=True)
    if isinstance(problem, neterror.ConnectionRefusedError):
        return MeshError(Reason.upstream_refused, f"{address}: connection refused", unsent=True)
    message = _one_line(failure.getErrorMessage())
    return MeshError(Reason.upstream_refused, f"{address}: cannot connect: {message}",
                     unsent=True)


class _ResponseError(Exception):
    """The upstream's response is unacceptable; the message is the detail."""


class _UnexpectedData(Exception):
    """The upstream sent bytes when no response was due."""


@implementer(ITarget)
class HTTPUpstreamTarget:
    """Exchanges over pooled HTTP/1.1 connections to ``route.endpoint`` or, without
    one, to the service's ClusterIP.

    ``reactor`` provides ``IReactorTime`` and, unless ``endpoint_factory`` is given,
    ``IReactorTCP``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        kind: TargetKind,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        max_idle_per_address: int = 64,
        idle_timeout: float = 60.0,
        max_response_header_bytes: int = 64 * 1024,
        max_response_header_count: int = 100,
        endpoint_factory: Callable[[str, int], IStreamClientEndpoint] | None = None,
    ) -> None:
        self.kind = kind
        self._clock = reactor
        self._connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_idle_per_address = max_idle_per_address
        self.idle_timeout = idle_timeout
        self.max_response_header_bytes = max_response_header_bytes
        self.max_response_header_count = max_response_header_count
        if endpoint_factory is None:
            self._tcp = IReactorTCP(reactor)
            endpoint_factory = self._tcp_endpoint
        self._endpoint_factory = endpoint_factory
        self._idle: dict[tuple[str, int], list[_UpstreamConnection]] = {}
        self._closed = False
        # Request timeouts without a DelayedCall per exchange: the exchanges waiting for
        # a response head, per timeout value, each in start order (so in deadline order:
        # insertion order is the queue, deletion is O(1)), and one timer for the soonest.
        self._waiting: dict[float, dict[_UpstreamExchange, float]] = {}
        self._waiting_count = 0
        self._sweep_timer: IDelayedCall | None = None
        self._sweep_at = 0.0

    def __repr__(self) -> str:
        return f"<HTTPUpstreamTarget {self.kind.value}>"

    # ITarget

    def open(self, route: Route, head: RequestHead, responder: IResponder) -> IRequestBody:
        endpoint = route.endpoint
        if endpoint is not None:
            host, port = endpoint.host, endpoint.port
        else:
            host, port = route.service.cluster_ip or "", route.port.port
        if self.kind is TargetKind.cluster_ip:
            # The cluster's proxy may lead back into the mesh (a loop): carry the hop
            # count (a pod on an edge never gets it).
            head = RequestHead(
                head.method, head.path, head.authority,
                (*head.headers, (HOPS_HEADER, b"%d" % head.hops)),
                head.content_length, head.client, head.hops,
            )
        exchange = _UpstreamExchange(self, host, port, head, responder)
        if route.timeout is not None:
            exchange.timeout = route.timeout  # the service's own (edgemesh.io/timeout)
        if not host:
            exchange.fail(
                MeshError(
                    Reason.no_endpoint,
                    f"{route.service.key}: no endpoint chosen and no cluster IP",
                )
            )
        else:
            exchange.start()
        return exchange

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections; later exchanges still work, but their
        connections are closed rather than pooled.  Fires when all are closed."""
        self._closed = True
        timer = self._sweep_timer
        if timer is not None:
            # Exchanges still waiting keep their place and are timed again once
            # another exchange starts.
            self._sweep_timer = None
            timer.cancel()
        idle = [conn for conns in self._idle.values() for conn in conns]
        waits = [conn.when_lost() for conn in idle]
        for conn in idle:
            self._discard(conn)
        return gatherResults(waits).addCallback(lambda _: None)

    # introspection (admin API, tests)

    def idle_connections(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), ()))

    def waiting_exchanges(self) -> int:
        """Exchanges waiting for a response head (their request timeout runs)."""
        return self._waiting_count

    # request timeouts (exchanges add and remove themselves: see _UpstreamExchange.start
    # and _unwait)

    def _arm(self) -> None:
        """(Re)arm the timer at the soonest deadline of those waiting."""
        timer = self._sweep_timer
        if timer is not None:
            self._sweep_timer = None
            timer.cancel()
        fronts: list[float] = []
        for timeout, waiting in list(self._waiting.items()):
            if waiting:
                fronts.append(next(iter(waiting.values())))  # the soonest of its value
            else:
                del self._waiting[timeout]  # a timeout value no exchange waits with now
        if not fronts:
            return
        soonest = min(fronts)
        self._sweep_at = soonest
        self._sweep_timer = self._clock.callLater(
            max(0.0, soonest - self._clock.seconds()), self._sweep
        )

    def _sweep(self) -> None:
        """Fail every exchange whose deadline passed, then wait for the next one."""
        self._sweep_timer = None
        # Everything up to the deadline this timer was armed for is due, even if the
        # clock reads a hair earlier (float arithmetic of the delay).
        due = max(self._clock.seconds(), self._sweep_at)
        expired: list[_UpstreamExchange] = []
        for waiting in self._waiting.values():
            for exchange, deadline in waiting.items():
                if deadline > due:
                    break
                expired.append(exchange)
        try:
            for exchange in expired:
                if exchange.waiting is not None:  # not ended by an earlier one's failure
                    exchange.timed_out()
        finally:
            if self._sweep_timer is None and self._waiting_count:
                self._arm()

    # the pool

    def _tcp_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        if isIPv6Address(host):
            return TCP6ClientEndpoint(
                self._tcp, host, port, timeout=self._connect_timeout
            )
        return TCP4ClientEndpoint(self._tcp, host, port, timeout=self._connect_timeout)

    def _acquire(self, address: tuple[str, int]) -> _UpstreamConnection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()  # LIFO: the most recently used is the least likely stale
            if not idle:
                del self._idle[address]
            conn.idle = False
            if not conn.lost:
                return conn
        return None

    def _connect(self, exchange: _UpstreamExchange) -> None:
        factory = _ConnectionFactory(self, exchange)
        try:
            connecting: Deferred[Any] = self._endpoint_factory(exchange.host, exchange.port).connect(
                factory
            )
        except Exception:  # noqa: BLE001 - a bad address or factory fails this exchange only
            connecting = fail()
        exchange.connecting = connecting
        connecting.addErrback(exchange.connect_failed)

    def _release(self, conn: _UpstreamConnection) -> None:
        """A connection whose exchange ended cleanly: pool it, or close it."""
        if self._closed or conn.lost or self.max_idle_per_address <= 0:
            conn.transport.loseConnection()
            return
        if conn.reading_paused:
            conn.reading_paused = False
            conn.transport.resumeProducing()
        address = conn.address
        idle = self._idle.get(address)
        if idle is None:
            idle = self._idle[address] = []
        elif len(idle) >= self.max_idle_per_address:
            self._discard(idle[0])  # the oldest is the most likely to be stale
            if not idle:
                idle = self._idle[address] = []
        conn.idle = True
        idle.append(conn)
        # The idle timer is lazy: re-armed from idle_since when it fires, so a busy
        # connection costs no timer calls per request.
        conn.idle_since = self._clock.seconds()
        if conn.idle_timer is None:
            conn.idle_timer = self._clock.callLater(self.idle_timeout, self._idle_check, conn)

    def _idle_check(self, conn: _UpstreamConnection) -> None:
        conn.idle_timer = None
        if not conn.idle:
            return
        remaining = conn.idle_since + self.idle_timeout - self._clock.seconds()
        if remaining > 0:
            conn.idle_timer = self._clock.callLater(remaining, self._idle_check, conn)
        else:
            self._discard(conn)

    def _forget(self, conn: _UpstreamConnection) -> None:
        """Take a connection out of the pool (it is closing or closed)."""
        if conn.idle:
            conn.idle = False
            idle = self._idle.get(conn.address)
            if idle is not None and conn in idle:
                idle.remove(conn)
                if not idle:
                    del self._idle[conn.address]
        if conn.idle_timer is not None:
            if conn.idle_timer.active():
                conn.idle_timer.cancel()
            conn.idle_timer = None

    def _discard(self, conn: _UpstreamConnection) -> None:
        self._forget(conn)
        if not conn.lost:
            conn.transport.loseConnection()


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, target: HTTPUpstreamTarget, exchange: _UpstreamExchange) -> None:
        self._target = target
        self._exchange = exchange

    def buildProtocol(self, addr: IAddress | None) -> _UpstreamConnection:
        return _UpstreamConnection(self._target, self._exchange)


@implementer(IRequestBody, IPushProducer)
class _UpstreamExchange:
    """One exchange to one upstream address.  As IRequestBody it takes the request
    body from the source; as IPushProducer (given to the responder) it pauses
    reading the response from the upstream."""

    __slots__ = (
        "aborted",
        "body_done",
        "body_sent",
        "buffer",
        "buffered",
        "conn",
        "connecting",
        "done",
        "got_head",
        "head",
        "host",
        "is_head",
        "port",
        "registered",
        "replay",
        "request_trailers",
        "responder",
        "reused",
        "source",
        "source_paused",
        "target",
        "timeout",
        "transport_paused",
        "waiting",
    )

    def __init__(
        self,
        target: HTTPUpstreamTarget,
        host: str,
        port: int,
        head: RequestHead,
        responder: IResponder,
    ) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.head = head
        self.responder = responder
        self.timeout = target.request_timeout
        self.is_head = head.method == b"HEAD"
        self.conn: _UpstreamConnection | None = None
        self.connecting: Deferred[Any] | None = None
        self.waiting: dict[_UpstreamExchange, float] | None = None
        """The target's queue of exchanges with this timeout while the request
        timeout runs (started, no response head yet)."""
        self.buffer: list[bytes] = []
        """Framed body bytes waiting for a connection."""
        self.buffered = 0
        self.body_sent = 0
        """Body bytes (unframed) taken from the source."""
        self.body_done = head.content_length == 0
        self.request_trailers: Headers = ()
        self.replay: list[bytes] | None = None
        """Framed body bytes sent on a pooled connection, kept for one retry on a
        fresh connection while they fit the bound; None: not retryable."""
        self.reused = False
        self.source: IPushProducer | None = None
        self.source_paused = False
        self.transport_paused = False
        self.registered = False
        self.got_head = False
        self.done = False
        """The exchange is over for the responder (ended, failed or aborted)."""
        self.aborted = False

    @property
    def address(self) -> str:
        return _address_text(self.host, self.port)

    def start(self) -> None:
        if self.body_done:
            self._wait()
        target = self.target
        conn = target._acquire((self.host, self.port))
        if conn is None:
            target._connect(self)
        else:
            self.reused = True
            self.replay = []
            self.connected(conn)

    def _wait(self) -> None:
        """The request timeout runs from the end of the request body (a slow upload is
        not the upstream's fault; a stalled one is the source's to time out) until the
        response head: join the target's queue."""
        target = self.target
        timeout = self.timeout
        waiting = target._waiting.get(timeout)
        if waiting is None:
            waiting = target._waiting[timeout] = {}
        deadline = target._clock.seconds() + timeout
        waiting[self] = deadline
        self.waiting = waiting
        target._waiting_count += 1
        if target._sweep_timer is None:
            if target._waiting_count == 1:  # the only exchange waiting: arm for it
                target._sweep_at = deadline
                target._sweep_timer = target._clock.callLater(timeout, target._sweep)
            else:  # a sweep is running
                target._arm()
        elif deadline < target._sweep_at:  # a shorter timeout than those waiting
            target._arm()

    # IRequestBody

    def write(self, data: bytes) -> None:
        if self.done or self.body_done:
            return  # the response ended first (or a source bug): discard
        self.body_sent += len(data)
        length = self.head.content_length
        if length is None:
            wire = chunk(data)
        elif self.body_sent > length:
            self.fail(
                MeshError(
                    Reason.bad_request,
                    f"{self.address}: request body longer than its Content-Length {length}",
                )
            )
            return
        else:
            wire = data
        conn = self.conn
        if conn is not None:
            conn.transport.write(wire)
            replay = self.replay
            if replay is not None:
                if self.body_sent <= REQUEST_BODY_BUFFER:
                    replay.append(wire)
                else:
                    self.replay = None
            return
        self.buffer.append(wire)
        self.buffered += len(data)
        if self.buffered >= REQUEST_BODY_BUFFER:
            if self.buffered > _REQUEST_BODY_CAP and (self.source is None or self.source_paused):
                self.fail(
                    MeshError(
                        Reason.overloaded,
                        f"{self.address}: request body kept coming while paused for a connection",
                    )
                )
                return
            self._update_source()

    def trailers(self, fields: Headers) -> None:
        """Trailer fields of the request body: they go with its last chunk."""
        if not (self.done or self.body_done):
            self.request_trailers = fields

    def end(self) -> None:
        if self.done or self.body_done:
            self.body_done = True
            return
        length = self.head.content_length
        if length is not None and self.body_sent < length:
            self.fail(
                MeshError(
                    Reason.bad_request,
                    f"{self.address}: request body ended at {self.body_sent} of {length} bytes",
                )
            )
            return
        self.body_done = True
        if not self.got_head and self.waiting is None:
            self._wait()
        conn = self.conn
        trailers = self.request_trailers
        if length is None:
            end = last_chunk(trailers) if trailers else LAST_CHUNK
            if conn is None:
                self.buffer.append(end)
            else:
                conn.transport.write(end)
                if self.replay is not None:
                    self.replay.append(end)
        elif trailers:
            drop_trailers(trailers, f"{self.address}: the request body has a Content-Length")
        if conn is not None and self.registered:
            self.registered = False
            conn.transport.unregisterProducer()
        self._update_source()

    def abort(self, reason: str) -> None:
        if self.aborted:
            return
        self.aborted = True
        self.body_done = True
        if self.done:
            return
        self.done = True
        self.target.log.debug(
            "{address}: exchange aborted by the source: {reason}",
            address=self.address,
            reason=reason,
        )
        self._stop_waiting()
        conn = self._detach()
        if conn is not None:
            conn.transport.abortConnection()

    def setProducer(self, producer: IPushProducer) -> None:
        self.source = producer
        self.source_paused = False
        if self.done:
            return
        conn = self.conn
        if conn is not None and not self.body_done and not self.registered:
            self.registered = True
            conn.transport.registerProducer(conn, True)
        self._update_source()

    # IPushProducer (the response flow, given to the responder)

    def pauseProducing(self) -> None:
        conn = self.conn
        if conn is not None and not conn.reading_paused:
            conn.reading_paused = True
            conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        conn = self.conn
        if conn is not None and conn.reading_paused:
            conn.reading_paused = False
            conn.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort("the response consumer stopped")

    # from the connection

    def connected(self, conn: _UpstreamConnection) -> None:
        self.connecting = None
        self.conn = conn
        conn.exchange = self
        conn.begin_response()
        transport = conn.transport
        if self.source is not None and not self.body_done:
            # Registered before the buffered body is written, so that a large one
            # already pauses the source through the transport.
            self.registered = True
            transport.registerProducer(conn, True)
        head_bytes = request_head_bytes(
            self.head.method, self.head.path, self.head.headers, self.head.content_length
        )
        if self.buffer:
            write_now(transport, b"".join([head_bytes, *self.buffer]))
            self.buffer = []
            self.buffered = 0
        else:
            write_now(transport, head_bytes)
        self._update_source()

    def connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        problem = failure.value
        if self.done or isinstance(problem, CancelledError):
            return
        self.fail(connect_error(self.address, failure))

    def response_head(self, head: ResponseHead) -> None:
        self.got_head = True
        if self.waiting is not None:
            self._unwait()
        responder = self.responder
        responder.setProducer(self)
        responder.head(head)

    def complete(self, trailers: Headers = ()) -> None:
        """The response ended cleanly (the connection has decided about reuse)."""
        self.done = True
        self._stop_waiting()
        self._detach()
        self._update_source()
        if trailers:
            hand_trailers(self.responder, trailers, f"{self.address}: the source takes no trailers")
        self.responder.end()

    def complete_whole(
        self, head: ResponseHead, body: bytes, complete: Completer
    ) -> None:
        """The whole response at once, through the responder's ``complete`` (the
        connection has decided about reuse)."""
        self.got_head = True
        self.done = True
        if self.waiting is not None or self.connecting is not None:
            self._stop_waiting()
        self._detach()
        if self.source is not None:
            self._update_source()
        responder = self.responder
        responder.setProducer(self)
        complete(responder, head, body)

    def connection_lost(self, conn: _UpstreamConnection, reason: Failure) -> None:
        if self.done:
            return
        address = self.address
        if self.got_head:
            if conn.close_delimited and isinstance(reason.value, neterror.ConnectionDone):
                self.complete()
            else:
                self.fail(
                    MeshError(Reason.upstream_lost, f"{address}: connection lost in the response body")
                )
        elif self.reused and self.replay is not None and not conn.got_bytes:
            self._retry()
        else:
            message = _one_line(reason.getErrorMessage())
            self.fail(
                MeshError(
                    Reason.upstream_lost,
                    f"{address}: connection lost before the response head ({message})",
                )
            )

    def fail(self, error: MeshError) -> None:
        if self.done:
            return
        self.done = True
        self._stop_waiting()
        conn = self._detach()
        if conn is not None:
            conn.transport.abortConnection()  # never reused after an error
        self._update_source()
        self.target.log.info(
            "{code} {method} {address}: {detail}",
            code=error.reason.code,
            method=self.head.method.decode("ascii", "replace"),
            address=self.address,
            detail=error.detail,
        )
        try:
            self.responder.fail(error)
        except Exception as problem:  # noqa: BLE001 - a failing responder must not stop us
            self.target.log.error(
                "{address}: the responder raised on fail: {problem!r}",
                address=self.address,
                problem=problem,
            )

    # internals

    def _retry(self) -> None:
        """The pooled connection was stale: send it all again on a fresh one."""
        replay = self.replay
        assert replay is not None
        self._detach()
        self.reused = False
        self.replay = None
        self.transport_paused = False
        self.buffer = replay
        self.buffered = self.body_sent
        self.target.log.debug("{address}: stale pooled connection, retrying", address=self.address)
        self.target._connect(self)
        self._update_source()

    def timed_out(self) -> None:
        self.fail(
            MeshError(
                Reason.upstream_timeout,
                f"{self.address}: no response within {self.timeout:g}s",
            )
        )

    def _unwait(self) -> None:
        """Stop the request timeout: leave the target's queue."""
        waiting = self.waiting
        if waiting is not None:
            self.waiting = None
            del waiting[self]
            target = self.target
            target._waiting_count -= 1
            if not target._waiting_count:  # nothing waits any more: no timer
                timer = target._sweep_timer
                if timer is not None:
                    target._sweep_timer = None
                    timer.cancel()
                if len(target._waiting) > 1:
                    target._waiting.clear()  # all empty: keep no stale timeout values

    def _stop_waiting(self) -> None:
        if self.waiting is not None:
            self._unwait()
        connecting = self.connecting
        if connecting is not None:
            self.connecting = None
            connecting.cancel()

    def _detach(self) -> _UpstreamConnection | None:
        conn = self.conn
        if conn is None:
            return None
        self.conn = None
        conn.exchange = None
        if self.registered:
            self.registered = False
            conn.transport.unregisterProducer()
        self.transport_paused = False
        return conn

    def _update_source(self) -> None:
        """Pause the source while its body has nowhere to go; resume it otherwise
        (also once the exchange is over, so that it can drain and discard)."""
        source = self.source
        if source is None or self.aborted:
            return
        paused = not (self.body_done or self.done) and (
            self.transport_paused or (self.conn is None and self.buffered >= REQUEST_BODY_BUFFER)
        )
        if paused != self.source_paused:
            self.source_paused = paused
            if paused:
                source.pauseProducing()
            else:
                source.resumeProducing()


@implementer(IPushProducer)
class _UpstreamConnection(Protocol):
    """One persistent connection.  The httptools parser calls the ``on_*`` methods;
    registered with its own transport as the request body's producer, it relays
    the transport's pauses to the current exchange's source."""

    transport: Any  # an ITCPTransport once connected: pause/resume, producers, abort

    def __init__(self, target: HTTPUpstreamTarget, exchange: _UpstreamExchange) -> None:
        self.target = target
        self.address = (exchange.host, exchange.port)
        self.opening: _UpstreamExchange | None = exchange
        self.exchange: _UpstreamExchange | None = None
        self.parser = HttpResponseParser(self)
        self.max_header_bytes = target.max_response_header_bytes
        self.max_header_count = target.max_response_header_count
        self.lost = False
        self.idle = False
        self.idle_since = 0.0
        self.idle_timer: IDelayedCall | None = None
        self.reading_paused = False
        self.full_reads = 0
        """Whole reads in a row that the responder took without pausing (see dataReceived)."""
        self.waiters: list[Deferred[None]] = []
        self.held: ResponseHead | None = None
        """A final response head parsed in the current read and not yet delivered:
        if its body and end come in the same read, it all goes to the responder in
        one call; otherwise it is flushed when the read is parsed."""
        self.held_body: list[bytes] = []
        self.held_size = 0
        """Body pieces of the held head (at most what one read carried)."""
        self.begin_response()

    def begin_response(self) -> None:
        self.got_bytes = False
        self.head_done = False
        self.head_size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.reason = b""
        self.connection_values: list[bytes] | None = None
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.interim = False
        self.interim_count = 0
        self.close_delimited = False
        self.chunk_pending = False
        self.stalled = 0
        self.trailer_count = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.finished = False
        self.reusable = False

    def when_lost(self) -> Deferred[None]:
        if self.lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self.waiters.append(waiter)
        return waiter

    # Protocol

    def connectionMade(self) -> None:
        # Small first reads, doubling as the responder takes them (dataReceived): 32 new
        # connections behind one busy link each held a 128 KiB read (p2 /big, edge-2's
        # VmHWM growth at 32 connections: +5.45 -> +4.34 MiB; 20 x 1 MiB wall time unchanged).
        self._read_size(SMALL_BUFFER)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        exchange = self.opening
        self.opening = None
        if exchange is None or exchange.done:
            self.target._release(self)  # a fresh connection nobody waits for: keep it
            return
        try:
            exchange.connected(self)
        except Exception as problem:  # noqa: BLE001 - never raise into the reactor
            self._internal_error(problem)

    def dataReceived(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception as problem:  # noqa: BLE001 - never raise into the reactor
            self._internal_error(problem)
        # The read size follows the consumer: MAX_READ while the responder takes every
        # read, 64 KiB after it paused us, doubling again after RAMP_READS whole reads
        # taken without a pause.  A slow client holds ~64 KiB per connection, not a
        # 256 KiB read (VmHWM growth at 32 connections of 1 MiB bodies: +9-11 MiB before).
        size = getattr(self.transport, "bufferSize", None)
        if size is None:
            return
        if self.reading_paused:
            self.full_reads = 0
            if size != SMALL_BUFFER:
                self._read_size(SMALL_BUFFER)
        elif len(data) >= size and size < MAX_READ:
            self.full_reads += 1
            if self.full_reads >= RAMP_READS:
                self.full_reads = 0
                self._read_size(min(size * 2, MAX_READ))

    def _read_size(self, size: int) -> None:
        """Twisted's FileDescriptor reads this much at once (and pauses a producer past it
        in its write buffer); other transports have no such knob."""
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = size

    def _receive(self, data: bytes) -> None:
        if self.exchange is None:
            # Idle, or closing after its exchange: a server has nothing to say now.
            self.target._discard(self)
            return
        self.got_bytes = True
        if not self.head_done:
            self.head_size += len(data)
        elif self.chunk_pending:
            self.stalled += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as exc:
            self._drop_held()
            cause = exc.__context__
            self._parse_failed(cause if isinstance(cause, Exception) else exc)
            return
        except (HttpParserError, HttpParserUpgrade) as exc:
            # A head still held was never delivered: the responder gets a clean
            # failure rather than a head and a truncated body.
            self._drop_held()
            self._parse_failed(exc)
            return
        if self.finished:
            self._after_response()
            return
        exchange = self.exchange
        if exchange is not None:
            if self.held is not None:
                # The response goes on in later reads: deliver what this one carried
                # and stream the rest.
                self._release_held(exchange)
                if self.exchange is not exchange:
                    return
            limit = self.max_header_bytes
            if not self.head_done:
                if self.head_size > limit:
                    self._bad(exchange, f"response head larger than {limit} bytes")
            elif self.chunk_pending and self.stalled > limit:
                self._bad(exchange, f"chunk framing or trailers larger than {limit} bytes")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.connected = False
        self.target._forget(self)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)
        exchange = self.exchange
        if exchange is not None:
            try:
                exchange.connection_lost(self, reason)
            except Exception as problem:  # noqa: BLE001 - never raise into the reactor
                self._internal_error(problem)

    # IPushProducer: the transport's write buffer pauses the request body's source

    def pauseProducing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.transport_paused = True
            exchange._update_source()

    def resumeProducing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.transport_paused = False
            exchange._update_source()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost deals with the exchange
        (the source is not stopped: it gets an answer through its responder)."""

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.exchange is None:
            raise _UnexpectedData()

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            # A trailer field (bounded like the head: see _receive): relayed with the end.
            self.trailer_count += 1
            if self.trailer_count > self.max_header_count:
                raise _ResponseError(f"more than {self.max_header_count} trailer fields")
            if trailer_field(name):
                if self.trailers is None:
                    self.trailers = [(name, value)]
                else:
                    self.trailers.append((name, value))
            return
        headers = self.headers
        if len(headers) >= self.max_header_count:
            raise _ResponseError(f"more than {self.max_header_count} header fields")
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes:
            raise _ResponseError(f"response head larger than {self.max_header_bytes} bytes")
        headers.append((name, value))
        size = len(name)
        if size == 10 or size == 14 or size == 17:  # cheap pre-check for the framing fields
            lower = name.lower()
            if lower == b"connection":
                if self.connection_values is None:
                    self.connection_values = [value]
                else:
                    self.connection_values.append(value)
            elif lower == b"content-length":
                self.content_length = value
            elif lower == b"transfer-encoding":
                self.transfer_encoding = value

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _ResponseError("101 Switching Protocols is not supported")
            self.interim = True
            self.interim_count += 1
            if self.interim_count > _MAX_INTERIM_RESPONSES:
                raise _ResponseError(f"more than {_MAX_INTERIM_RESPONSES} interim responses")
            return
        self.head_done = True
        coding = self.transfer_encoding
        chunked = coding is not None and coding.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        length: int | None
        if status == 204:
            length = 0
        elif exchange.is_head or status == 304:
            # No body follows, but the length is the one the origin announced for
            # the representation: pass it on unchanged (RFC 9110 §8.6).
            declared = self.content_length
            length = int(declared) if declared is not None and coding is None else None
        elif coding is not None:
            length = None
            self.close_delimited = not chunked
        elif self.content_length is not None:
            length = int(self.content_length)  # llhttp accepted it: digits only
        else:
            length = None
            self.close_delimited = True
        values = self.connection_values
        head = ResponseHead(
            status,
            self.reason or _PHRASES.get(status, b"Unknown"),
            end_to_end(self.headers, connection_tokens(values) if values else _NO_TOKENS),
            length,
        )
        # The request timeout stops at the head, delivered now or held.
        exchange.got_head = True
        if exchange.waiting is not None:
            exchange._unwait()
        if exchange.is_head:
            # llhttp does not know the request was HEAD and would take any body
            # framing literally: end here, and never reuse this connection.
            self._deliver(exchange, head, b"", False)
        else:
            self.held = head  # delivered at the message's end or at the end of this read

    def on_body(self, body: bytes) -> None:
        self.chunk_pending = False
        self.stalled = 0
        exchange = self.exchange
        if exchange is not None and body:
            if self.held is not None:
                if self.held_size + len(body) <= HELD_BODY_LIMIT:
                    self.held_body.append(body)
                    self.held_size += len(body)
                    return
                self._release_held(exchange)  # too large to hold: stream it
                if self.exchange is not exchange:
                    return
            exchange.responder.write(body)

    def on_chunk_header(self) -> None:
        self.chunk_pending = True

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.reason = b""
            self.headers = []
            self.header_bytes = 0
            self.connection_values = None
            self.content_length = None
            self.transfer_encoding = None
            return
        exchange = self.exchange
        if exchange is None:
            return
        head = self.held
        trailers = self.trailers
        if head is not None and trailers:
            # Trailers do not fit the whole-response call: head and body, then the end.
            self._release_held(exchange)
            if self.exchange is not exchange:
                return
            head = None
        if head is not None:
            # The whole response in one read (the common small one).
            self.held = None
            pieces = self.held_body
            if pieces:
                self.held_body = []
                self.held_size = 0
                body = b"".join(pieces)  # one piece: that very object, no copy
            else:
                body = b""
            reusable = exchange.body_done and self.parser.should_keep_alive()
            # One dict lookup: 73 ns against 85 ns for the getattr probe (bench/complete_probe.py).
            complete = COMPLETERS[type(exchange.responder)]
            if complete is not None:
                self.finished = True
                self.reusable = reusable
                exchange.complete_whole(head, body, complete)
            else:
                self._deliver(exchange, head, body, reusable)
            return
        self.finished = True
        self.reusable = exchange.body_done and self.parser.should_keep_alive()
        exchange.complete(tuple(trailers) if trailers else ())

    # internals

    def _deliver(
        self, exchange: _UpstreamExchange, head: ResponseHead, body: bytes, reusable: bool
    ) -> None:
        """A whole response: in one call to the responder's ``complete`` if it has one,
        else as head, write and end."""
        complete = COMPLETERS[type(exchange.responder)]
        if complete is not None:
            self.finished = True
            self.reusable = reusable
            exchange.complete_whole(head, body, complete)
            return
        exchange.response_head(head)
        if body and self.exchange is exchange:
            exchange.responder.write(body)
        if self.exchange is exchange:  # not aborted from inside head() or write()
            self.finished = True
            self.reusable = reusable
            exchange.complete()

    def _release_held(self, exchange: _UpstreamExchange) -> None:
        """Deliver the held head and the body held with it; the rest streams."""
        head = self.held
        assert head is not None
        self.held = None
        exchange.response_head(head)
        pieces = self.held_body
        if pieces:
            self.held_body = []
            self.held_size = 0
            for piece in pieces:
                if self.exchange is not exchange:  # aborted from inside head() or write()
                    return
                exchange.responder.write(piece)

    def _drop_held(self) -> None:
        self.held = None
        if self.held_body:
            self.held_body = []
            self.held_size = 0

    def _after_response(self) -> None:
        self.finished = False
        if self.reusable and not self.lost and self.exchange is None:
            self.target._release(self)
        elif not self.lost:
            self.transport.loseConnection()

    def _bad(self, exchange: _UpstreamExchange, detail: str) -> None:
        exchange.fail(MeshError(Reason.upstream_bad_response, f"{exchange.address}: {detail}"))

    def _parse_failed(self, cause: Exception) -> None:
        exchange = self.exchange
        if exchange is None:
            # After the response (bytes beyond it) or after an abort: just close.
            self.finished = False
            self.target._forget(self)
            if not self.lost:
                self.transport.abortConnection()
            return
        if isinstance(cause, _ResponseError):
            self._bad(exchange, str(cause))
        elif isinstance(cause, (HttpParserError, HttpParserUpgrade)):
            self._bad(exchange, f"malformed response: {_one_line(str(cause))}")
        else:
            # Raised by the responder (a source bug), not by the upstream.
            self._internal_error(cause)

    def _internal_error(self, problem: Exception) -> None:
        """A bug (most likely in a responder or source): log it, end the exchange
        with an error and drop the connection."""
        self.target.log.error(
            "{address}: internal error in an upstream exchange: {problem!r}",
            address=_address_text(*self.address),
            problem=problem,
        )
        self.finished = False
        exchange = self.exchange
        if exchange is not None:
            exchange.fail(
                MeshError(Reason.upstream_lost, f"{exchange.address}: internal error")
            )
        self.target._forget(self)
        if not self.lost:
            self.transport.abortConnection()
