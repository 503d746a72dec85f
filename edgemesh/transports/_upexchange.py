"""
One exchange of the pooled HTTP/1.1 upstream target (see _upstream): the request, written
with the shared serializers of ``_http1``, and the response, handed to the responder.
Both bodies stream with push-producer flow control:

    request:  source producer  ◄─pause─  upstream transport's write buffer
    response: upstream reads   ◄─pause─  the responder (a slow client)

Failures never raise: they reach ``IResponder.fail`` as a ``MeshError`` whose
detail names the upstream address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import (
    IPushProducer,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    COMPLETERS,
    Headers,
    IHeadEndedBody,
    IResponder,
    ISizedProducer,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    drop_trailers,
    hand_trailers,
)
from ._http1 import (
    LAST_CHUNK,
    chunk,
    last_chunk,
    request_head_bytes,
)
from ._io import write_now

if TYPE_CHECKING:
    from ._upconnection import _UpstreamConnection
    from ._upstream import HTTPUpstreamTarget

__all__ = ["REQUEST_BODY_BUFFER", "connect_error"]

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


_heads_made: dict[tuple[bytes, bytes, Headers, int | None], bytes] = {}
"""Request heads serialized lately, by what they are made of (clients repeat theirs):
one lookup instead of the serialization (238 → 235 k instructions per /small exchange on
path 1, one A/B run: within the noise of single runs)."""
_HEADS_MADE_BOUND = 64
_HEAD_MADE_LENGTH = 2048


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


@implementer(IHeadEndedBody, ISizedProducer)
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
        if self.source is not None:
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
        self._stop_waiting(failed=True)
        conn = self._detach()
        if conn is not None:
            conn.transport.abortConnection()

    def setProducer(self, producer: IPushProducer) -> None:
        self.source = producer
        self.source_paused = False
        if self.done or self.body_done:
            # A body that is over is never paused (_update_source): nothing to register or
            # update (one call less per exchange without a request body).
            return
        conn = self.conn
        if conn is not None and not self.body_done and not self.registered:
            self.registered = True
            conn.transport.registerProducer(conn, True)
        self._update_source()

    # IPushProducer (the response flow, given to the responder)

    def pauseProducing(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.pause_reading()

    def resumeProducing(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.resume_reading()

    def stopProducing(self) -> None:
        self.abort("the response consumer stopped")

    def limit_reads(self, room: int) -> None:
        """The responder takes ``room`` more bytes at once (a link stream's credit): the
        connection reads no more than that (see _UpstreamConnection.limit_reads)."""
        conn = self.conn
        if conn is not None:
            conn.limit_reads(room)

    # from the connection

    def connected(self, conn: _UpstreamConnection) -> None:
        self.connecting = None
        self.conn = conn
        conn.exchange = self
        conn.target.reads.busy += 1  # until _detach: the connection reads for us
        if conn.got_bytes:  # else nothing of a response touched its state since the reset
            conn.begin_response()
        transport = conn.transport
        if self.source is not None and not self.body_done:
            # Registered before the buffered body is written, so that a large one
            # already pauses the source through the transport.
            self.registered = True
            transport.registerProducer(conn, True)
        head = self.head
        key = (head.method, head.path, head.headers, head.content_length)
        remember = True
        try:
            head_bytes = _heads_made.get(key)
        except TypeError:  # fields not in tuples (a source's bug): serialized, not remembered
            head_bytes = None
            remember = False
        if head_bytes is None:
            head_bytes = request_head_bytes(*key)
            if remember and len(head_bytes) <= _HEAD_MADE_LENGTH:
                if len(_heads_made) >= _HEADS_MADE_BOUND:
                    _heads_made.clear()
                _heads_made[key] = head_bytes
        # At the turn's end with its other small writes (a body written later goes after it:
        # every direct send makes the held ones first).
        if self.buffer:
            write_now(transport, b"".join([head_bytes, *self.buffer]), conn.target.hold_sends)
            self.buffer = []
            self.buffered = 0
        else:
            write_now(transport, head_bytes, conn.target.hold_sends)
        if self.source is not None:
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

    def complete_whole(self, head: ResponseHead, body: bytes, reusable: bool) -> None:
        """A whole response from the connection: in one call to the responder's
        ``complete`` if it has one, else as head, write and end.  The connection is then
        finished, ``reusable`` or not (its verdict), unless the responder aborted the
        exchange from inside head() or write().  (The connection's _deliver was this
        method's first half: one call less per /small exchange.)"""
        conn = self.conn
        assert conn is not None  # the connection that read the response
        responder = self.responder
        # One dict lookup: 73 ns against 85 ns for the getattr probe (bench/complete_probe.py).
        complete = COMPLETERS[type(responder)]
        if complete is None:
            self.response_head(head)
            if body and self.conn is conn:
                responder.write(body)
            if self.conn is conn:  # not aborted from inside head() or write()
                conn.finished = True
                conn.reusable = reusable
                self.complete()
            return
        conn.finished = True
        conn.reusable = reusable
        self.got_head = True
        self.done = True
        if self.waiting is not None or self.connecting is not None:
            self._stop_waiting()
        self._detach()
        if self.source_paused:  # over: _update_source resumes a paused source only
            self._update_source()
        # The responder gets no producer: the response is read whole and the connection
        # detached, so a pause or stop would have nothing to act on (p1: 2 calls less per
        # /small exchange, guard and front; p2 edge-2: 3, guard, stream half and sender).
        complete(responder, head, body)

    def connection_lost(self, conn: _UpstreamConnection, reason: Failure) -> None:
        if self.done:
            return
        address = self.address
        if self.got_head:
            if conn.close_delimited and isinstance(reason.value, neterror.ConnectionDone):
                self.complete()
            else:
                self.fail(MeshError(Reason.upstream_lost,
                                    f"{address}: connection lost in the response body"))
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
        self._stop_waiting(failed=True)
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

    def _unwait(self, keep_timer: bool = True) -> None:
        """Stop the request timeout: leave the target's queue.  At a response head the
        target's timer stays armed even when nothing waits any more (``keep_timer``): it
        finds nothing due and lapses, and the next exchange to wait needs no timer of its
        own (one callLater + cancel less per exchange; with direct_reads -13 k instructions
        per /small exchange on path 1, -4 %, on twistd's default reactor).  An
        exchange that fails or is aborted cancels it (it may be the target's last)."""
        waiting = self.waiting
        if waiting is not None:
            self.waiting = None
            del waiting[self]
            target = self.target
            target._waiting_count -= 1
            if not target._waiting_count:  # nothing waits any more
                timer = target._sweep_timer
                if timer is not None and not keep_timer:
                    target._sweep_timer = None
                    timer.cancel()
                if len(target._waiting) > 1:
                    target._waiting.clear()  # all empty: keep no stale timeout values

    def _stop_waiting(self, failed: bool = False) -> None:
        if self.waiting is not None:
            self._unwait(keep_timer=False)
        elif failed:
            target = self.target
            timer = target._sweep_timer
            if timer is not None and not target._waiting_count:
                # A failure after the head: drop the timer the head left armed (rare).
                target._sweep_timer = None
                timer.cancel()
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
        conn.target.reads.busy -= 1
        if conn.room is not None:  # the responder's limit is not the next one's
            conn.unlimit_reads()
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
