"""
The hardened HTTP/1.1 front: where apps' requests enter the mesh (the edge's
service-bus listener, the router's listener for cloud apps).

One ``httptools`` (llhttp) parser per connection; its callbacks build a
``RequestHead`` per request and hand it to ``dispatch`` with an ``IResponder``.
llhttp is strict about most framing (CL+TE, duplicate CL, number syntax, bare
CR/LF, control characters, obs-fold); this module adds what it lets through:
transfer codings other than exactly ``chunked``, TE on HTTP/1.0, versions other
than 1.0/1.1, Host/authority syntax, fragments, CONNECT and ``https://`` targets,
upgrade requests with a body (llhttp would skip that body), header count and
size limits counted as bytes arrive, body caps, and slow heads.

Exchanges run one at a time per connection, in request order: later pipelined
requests are parsed (httptools cannot stop mid-feed), queued with their small
bodies, and the transport is paused until they can start.  Bodies stream both
ways with push-producer flow control; nothing buffers a whole body.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol as Structural

import httptools
from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    HEAD_ENDED,
    HOPS_HEADER,
    Headers,
    IBodyPipe,
    ICompletingResponder,
    IPipeResponder,
    IRequestBody,
    IResponder,
    IViewResponder,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    SourceKind,
    drop_trailers,
    hand_trailers,
)
from ._heads import (
    FRAMING,
    HeadError,
    check_authority,
    check_transfer_encoding,
    content_length,
    hop_count,
    request_framing,
    request_target,
    response_fields,
    unbroken_lines,
)
from ._http1 import (
    LAST_CHUNK,
    connection_tokens,
    end_to_end,
    error_body,
    last_chunk,
    response_head_bytes,
    trailer_field,
)
from ._io import (
    FRONT_HIGH_WATER,
    PLAIN_TCP,
    buffered,
    pause_past,
    splice_after,
    write_all_after_waiting,
    write_all_now,
    write_now,
)
from ._wheel import WheelTimer, wheel_for

__all__ = ["Dispatch", "FrontLimits", "HTTPFrontFactory", "HTTPFrontProtocol", "Rejected"]


@dataclass(frozen=True)
class FrontLimits:
    """The HTTP front's bounds and timeouts: header sizes and counts, body cap, idle and head
    timeouts."""

    max_header_count: int = 100
    """More header fields than this in one request head (or trailer section) → 431."""
    max_header_bytes: int = 60 * 1024
    """A request head (or trailer section) larger than this → 431."""
    max_body_bytes: int | None = 1 << 30
    """A request body larger than this → 413 (declared, or streamed past it); None: no cap."""
    header_timeout: float = 10.0
    """From the first byte of a request until its head is complete; then the connection closes."""
    idle_timeout: float = 60.0
    """A keep-alive connection idle between requests this long is closed."""
    max_pipelined: int = 16
    """Parsed-but-not-started requests held per connection; one more → 503 and close."""


Dispatch = Callable[[SourceKind, RequestHead, IResponder], IRequestBody]
"""Start an exchange from a listener of that kind (``Pipeline.dispatch`` itself): may raise
MeshError, or call ``responder.fail``.  The front passes its kind with each head: a bound
method's call, not a ``functools.partial``'s (p1 edge-1 -0.35 k instructions per /small
exchange, callgrind)."""

Rejected = Callable[[Reason, SourceKind, "RequestHead | None", "IRequestBody | None"], None]
"""Told of each request the front answers itself (``MeshObserver.rejected``): the reason,
the listener's kind, and either the head of a request never dispatched (as much as was
read) or the request body of one dispatched (aborted right after the call; None when it
is over already: then only the reason counts)."""

# Exchange states.
_QUEUED = 0  # parsed, waiting for earlier exchanges on the connection
_STARTED = 1  # dispatched (or being answered by the front), no response head yet
_HEAD_SENT = 2  # response head written, body flowing
_DONE = 3  # finished, failed or abandoned: every later call is a no-op

_HOPS = HOPS_HEADER.lower()
_SPECIAL = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect", _HOPS}
)
"""Request fields the front interprets (the hop count is taken out of the head: it seeds
the exchange's own, see edgemesh.routing's loop guard)."""
_REQUEST_DROP = FRAMING | {b"expect"}
"""Request fields never passed on (``Expect: 100-continue`` is answered here)."""
_WATCHED = _SPECIAL | _REQUEST_DROP

_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE_HEADER = ((b"Connection", b"keep-alive"),)


_HeadKey = tuple[int, bytes, Headers, "int | None", bool, bool, bool]
_heads_made: dict[_HeadKey, bytes] = {}
"""Response heads serialized lately, by everything they are made of: a pod answers with the
same fields but for its Date, which changes once a second.  One lookup instead of the
checks and the serialization (with the pod client's fields left out as they come: 278 → 250 k
instructions per /small exchange on path 1, callgrind).  The key holds the body's framing
as the chunked flag, not as its field: the field is made on a miss only (a bytes format
less per exchange, ~0.1 µs)."""
_HEADS_MADE_BOUND = 64
_HEAD_MADE_LENGTH = 2048


def _response_head(key: _HeadKey) -> bytes:
    """The response head ``key`` describes, checked and serialized (HeadError: unusable);
    remembered in ``_heads_made``."""
    status, reason, fields, length, chunked, persist, http10 = key
    # Framing as _Exchange._head_bytes chose it: chunked; none for a close-delimited body
    # (no length) or a 204; else the length (a HEAD's or 304's too, as the origin gave it).
    framing = (
        b"Transfer-Encoding: chunked\r\n" if chunked
        else b"" if length is None or status == 204
        else b"Content-Length: %d\r\n" % length
    )
    headers = response_fields(status, fields, length)
    if persist and http10:
        headers = headers + _KEEP_ALIVE_HEADER
    data = response_head_bytes(status, reason, headers, framing, persist)
    unbroken_lines(data, len(headers) + 2 + (framing != b"") + (not persist))
    if len(data) <= _HEAD_MADE_LENGTH:  # a few KiB at most, whatever the heads
        if len(_heads_made) >= _HEADS_MADE_BOUND:
            _heads_made.clear()
        try:
            _heads_made[key] = data
        except TypeError:  # unhashable fields (see _Exchange._head_bytes)
            pass
    return data


_Parsed = tuple[bytes, bool, bool, Headers, bytes, bytes, int]
"""A request head without a body as ``on_headers_complete`` worked it out: method,
HTTP/1.0, keep-alive, the fields passed on, path, authority, hop count."""
_requests_seen: dict[bytes, tuple[FrontLimits, _Parsed]] = {}
"""Reads that held exactly one whole request without a body, by their bytes, with the
limits they were checked against: a client repeats the same request head.  One lookup
instead of llhttp and its callbacks (parsing is a function of the bytes and the limits;
the parser is between messages before and after such a read, so it need not see it):
path 1 209 -> 181 k instructions per /small exchange (callgrind A/B)."""
_REQUESTS_SEEN_BOUND = 64
_REQUEST_SEEN_LENGTH = 2048


_ABSOLUTE_PREFIX = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")


def _target_path(url: bytes) -> bytes:
    """The path of a request target (as far as it was read), for the log of its refusal:
    an absolute form's scheme and authority left out (user information may be there);
    empty for any other form (CONNECT's authority, garbage)."""
    if url[:1] == b"/" or url == b"*":
        return url
    prefix = _ABSOLUTE_PREFIX.match(url)
    if prefix is None:
        return b""
    return url[prefix.end():] or b"/"


def _warn(message: str) -> None:
    HTTPFrontProtocol.log.warn(message)


class _Stop(Exception):
    """Raised inside parser callbacks to stop llhttp; the reason is already handled."""


class ByteSink(Structural):
    """Where a connection's bytes go once it became a byte stream (the streaming front's
    CONNECT and Upgrade tunnels)."""

    def received(self, data: bytes) -> None: ...


_FAR_SIDE_GONE = frozenset({Reason.upstream_lost, Reason.peer_unavailable,
                            Reason.upstream_timeout, Reason.draining})
"""Failures of the far side after a response head: the client did nothing wrong."""


@implementer(ICompletingResponder, IViewResponder, IPipeResponder, IPushProducer)
class _Exchange:
    """One request/response on a front connection.  It is the ``IResponder`` the
    target answers through, and the ``IPushProducer`` the target pauses while it
    cannot take more request body."""

    __slots__ = (
        "body",
        "chunked",
        "error",
        "expect_continue",
        "front",
        "head_waiting",
        "http10",
        "keep_alive",
        "method",
        "no_body",
        "pending",
        "persist",
        "producer",
        "received",
        "remaining",
        "request",
        "request_done",
        "request_trailers",
        "response_trailers",
        "state",
    )

    def __init__(self, front: HTTPFrontProtocol, method: bytes, http10: bool, keep_alive: bool):
        self.front = front
        self.request: RequestHead | None = None
        self.method = method
        self.http10 = http10
        self.keep_alive = keep_alive
        """The client allows the connection to persist after this exchange."""
        self.error: MeshError | None = None
        """Set when the front answers this request itself (it is never dispatched)."""
        self.body: IRequestBody | None = None
        self.pending: list[bytes] | None = None
        """Request body received while queued (bounded by the read that carried it)."""
        self.request_done = False
        self.received = 0
        self.state = _QUEUED
        self.remaining: int | None = None
        self.chunked = False
        self.no_body = False
        self.persist = False
        self.producer: IPushProducer | None = None
        self.expect_continue = False
        self.request_trailers: list[tuple[bytes, bytes]] | None = None
        """Trailer fields of the chunked request body, passed on before its end."""
        self.response_trailers: Headers = ()
        self.head_waiting = False
        """The response head waits in Twisted's buffer: the first body write takes it along."""

    # -- IResponder -------------------------------------------------------------

    def head(self, head: ResponseHead) -> None:
        data = self._head_bytes(head)
        if data is not None:
            # Buffered: the body usually follows in the same turn and leaves with it (the
            # first body write takes it along: write_all_after_waiting).
            self.front.transport.write(data)  # type: ignore[union-attr]
            self.head_waiting = True

    def complete(self, head: ResponseHead, body: bytes) -> None:
        """A whole response at once (the common small one): one write to the client."""
        data = self._head_bytes(head)
        if data is None:
            return
        if body and not self.no_body and not self.chunked and self.remaining == len(body):
            self.remaining = 0
            front = self.front
            write_now(front.transport, data + body, front._hold_sends)
            # All of it sent, no chunk or trailers to end it with (trailers() takes none
            # before the head): end() would only pass on to _exchange_done (one call less).
            front._exchange_done(self)
            return
        write_now(self.front.transport, data)
        if body:
            self.write(body)
        self.end()

    def _head_bytes(self, head: ResponseHead) -> bytes | None:
        """Validate the head and serialize it; None when the exchange failed instead."""
        if self.state != _STARTED:
            if self.state != _DONE:
                _warn("response head out of order; ignored")
            return None
        front = self.front
        status = head.status
        length = head.content_length
        persist = self.keep_alive and self.request_done and not front._closing
        # The framing field itself is _response_head's (on a miss): the key's chunked flag,
        # length and status say which.
        if self.method == b"HEAD" or status == 204 or status == 304:
            self.no_body = True  # the length (none for a 204) as the origin gave it
        elif length is not None:
            self.remaining = length
        elif not self.http10:
            self.chunked = True
        else:
            persist = False  # close-delimited: the end of the body is the end of the connection
        # Framed by its length on a persistent HTTP/1.1 connection: the common case, the
        # only one _response_made remembers.
        plain = persist and self.remaining is not None and not self.http10
        last = front._response_made
        data: bytes | None
        if plain and last is not None and last[0] is head:
            # The head object of this connection's last response again (a pod's or a link's
            # repeated head is one object until its Date changes): its bytes, without the
            # key's hash of every field (p1 /small -1.6 k instructions per exchange, p2 edge-1
            # about -1 k; callgrind).
            data = last[1]
        else:
            key = (status, head.reason, head.headers, length, self.chunked, persist, self.http10)
            try:
                data = _heads_made.get(key)
            except TypeError:  # fields not in tuples (a target's bug): checked, not remembered
                data = None
            if data is None:
                try:
                    data = _response_head(key)
                except HeadError as error:
                    self.fail(MeshError(error.reason, error.detail))
                    return None
            if plain:
                front._response_made = (head, data)
        self.persist = persist
        self.state = _HEAD_SENT
        return data

    def write(self, data: bytes) -> None:
        if self.state != _HEAD_SENT:
            if self.state == _STARTED:
                self.fail(MeshError(Reason.upstream_bad_response, "response body before head"))
            return
        if not data or self.no_body:
            return
        transport = self.front.transport
        assert transport is not None
        if self.chunked:
            if self.head_waiting:
                self.head_waiting = False
                write_all_after_waiting(transport, (b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
            pause_past(transport, FRONT_HIGH_WATER)
            return
        if self.remaining is not None and not self._counted(len(data)):
            return
        # Sent at once when nothing is buffered: a 256 KiB chunk buffered for the next turn
        # always passed the 64 KiB threshold and paused the pod connection, fast client or not.
        if self.head_waiting:
            self.head_waiting = False
            sent = write_all_after_waiting(transport, (data,))
        else:
            sent = write_now(transport, data)
        if not sent:  # all sent now: nothing buffered, no pause to judge (a call less per read)
            pause_past(transport, FRONT_HIGH_WATER)

    def write_parts(self, parts: list[bytes | memoryview]) -> None:
        """``write`` of pieces off a link without copying them: one sendmsg of them all
        (edge-1 of path 2 made a send per DATA frame, 2.4 per read of its link); what
        the socket does not take now is copied into Twisted's buffer (write_all_now)."""
        if self.chunked or self.state != _HEAD_SENT or self.no_body:
            self.write(b"".join(parts))
            return
        if self.remaining is not None and not self._counted(sum(map(len, parts))):
            return
        transport = self.front.transport
        assert transport is not None
        if self.head_waiting:
            self.head_waiting = False
            sent = write_all_after_waiting(transport, parts)
        elif len(parts) == 1:
            sent = write_now(transport, parts[0])
        else:
            sent = write_all_now(transport, parts)
        if not sent:  # all sent now: nothing buffered, no pause to judge (a call less per read)
            pause_past(transport, FRONT_HIGH_WATER)

    def _counted(self, size: int) -> bool:
        """``size`` more bytes of a body framed by its Content-Length: False (and the
        client's connection aborted) when they run past it."""
        remaining = self.remaining
        assert remaining is not None
        if size > remaining:
            _warn("response body longer than its Content-Length; aborting")
            self._abort_client()
            return False
        self.remaining = remaining - size
        return True

    def can_take_pipes(self, from_pod: bool) -> bool:
        # A body framed by its length, to a plain TCP client: its bytes go as they are.
        # From a link only: a pod's body spliced to the client made the 4 MiB transfer of
        # path 1 1.2 -> 1.5 x direct (bench/results-2026-12-06.md): the edge's copy ran
        # beside the client's, which then reads pages nobody touched before.
        return (not from_pod and self.state == _HEAD_SENT and self.remaining is not None
                and not self.chunked and not self.no_body
                and type(self.front.transport) in PLAIN_TCP)

    def takes_pipe_now(self) -> bool:
        # Nothing waits in Twisted's buffer (the head, a piece the socket did not take):
        # else the piece would wait there too, as bytes.
        return self.state == _HEAD_SENT and not buffered(self.front.transport)

    def write_pipe(self, pipe: IBodyPipe, size: int) -> None:
        """``write`` of body bytes waiting in a pipe (a link's, spliced): spliced on to the
        client's socket as far as it takes them, the rest written as bytes."""
        if self.state != _HEAD_SENT or self.chunked or self.no_body or self.remaining is None:
            self.write(pipe.take(size))
            return
        if size > self.remaining:
            pipe.take(size)  # the pipe left empty, before the client's connection is aborted
        if not self._counted(size):
            return
        self.head_waiting = False  # (a head still waiting goes first: splice_after)
        transport = self.front.transport
        rest = splice_after(transport, b"", pipe, size)
        if rest:
            transport.writeSequence(rest)  # type: ignore[union-attr]
            pause_past(transport, FRONT_HIGH_WATER)

    def trailers(self, fields: Headers) -> None:
        """Trailer fields of the response: they go with the last chunk."""
        if self.state == _HEAD_SENT and fields:
            self.response_trailers = fields

    def end(self) -> None:
        if self.state != _HEAD_SENT:
            if self.state == _STARTED:
                self.fail(MeshError(Reason.upstream_bad_response, "response ended before head"))
            return
        if self.remaining:
            _warn("response body shorter than its Content-Length; aborting")
            self._abort_client()
            return
        trailers = self.response_trailers
        if self.chunked:
            self.front.transport.write(  # type: ignore[union-attr]
                last_chunk(trailers) if trailers else LAST_CHUNK
            )
        elif trailers:
            drop_trailers(
                trailers, "the response to this client is not chunked (HTTP/1.0, or no body)"
            )
        self.front._exchange_done(self)

    def fail(self, error: MeshError) -> None:
        state = self.state
        if state == _STARTED:
            self.front._answer_error(self, error)
        elif state == _HEAD_SENT:
            # Too late for an error answer: make the truncation visible.
            self.front.log.info(
                "exchange failed after its response head: {error}", error=str(error)
            )
            if (self.head_waiting and (self.remaining or self.chunked)
                    and error.reason in _FAR_SIDE_GONE):
                # The head still waits in Twisted's buffer (a peer lost in the turn that
                # brought it): an abort would drop it and the client would get a reset and
                # not a byte.  Sent, then the connection closed: its framing (a length, or
                # no last chunk) shows the body cut short.  A close-delimited body would not,
                # so it is still aborted, as is the connection of a client whose own request
                # failed (a malformed chunk, a body over the cap).
                self._abort_client(graceful=True)
                return
            self._abort_client()

    def setProducer(self, producer: IPushProducer) -> None:
        if self.state == _STARTED or self.state == _HEAD_SENT:
            self.producer = producer
            if self.front._write_paused:
                producer.pauseProducing()

    # -- IPushProducer (the target pausing the client's request body) -----------

    def pauseProducing(self) -> None:
        if self.front._active is self:
            self.front._target_pause(True)

    def resumeProducing(self) -> None:
        if self.front._active is self:
            self.front._target_pause(False)

    def stopProducing(self) -> None:
        """The target's side is gone; it fails the exchange through ``fail``."""

    # -- internals -----------------------------------------------------------

    def _abort_client(self, graceful: bool = False) -> None:
        """End the exchange and the client's connection: reset, or (``graceful``) closed
        once what is buffered for it is sent."""
        self.state = _DONE
        reason = "response cut short" if graceful else "response aborted"
        self._abort_body(reason)
        self.front._close(abort=not graceful, reason=reason)

    def _abort_body(self, reason: str) -> None:
        body = self.body
        if body is not None:
            self.body = None
            try:
                body.abort(reason)
            except Exception:  # noqa: BLE001 -- contain any failure of target code
                self.front.log.failure("request body abort raised")


@implementer(IPushProducer)
class HTTPFrontProtocol(Protocol):
    """One client connection.  It is also the streaming producer registered with
    its transport, so a slow client pauses the current response's producer.

    It is deliberately not half-closeable: as in common proxies, a client's
    FIN ends the connection and aborts the exchange in flight (the target
    cancels the upstream request) rather than waiting for a response nobody
    may read."""

    # Its own state in slots; the instance dict keeps Twisted's and the subclasses' few.
    # CPython 3.11 shares a class's instance keys up to 30 names: past them the dict is
    # materialized, and every self.method lookup stays unspecialized (~300 instructions).
    __slots__ = (
        "_active",
        "_begun",
        "_body_seen",
        "_client",
        "_closing",
        "_completed",
        "_connection",
        "_content_length",
        "_dispatch",
        "_expect",
        "_head_bytes",
        "_head_carry",
        "_head_since",
        "_header_count",
        "_headers",
        "_hold_sends",
        "_hops",
        "_host",
        "_idle_since",
        "_in_head",
        "_kind",
        "_last_request",
        "_limits",
        "_max_body",
        "_max_count",
        "_max_head",
        "_msg_open",
        "_parsed",
        "_parser",
        "_parsing",
        "_paused_by_target",
        "_queue",
        "_reactor",
        "_read_stopped",
        "_reading_paused",
        "_registered",
        "_response_made",
        "_starting",
        "_tail_carry",
        "_timer",
        "_trailer_bytes",
        "_trailer_count",
        "_transfer_encoding",
        "_upgrade",
        "_url",
        "_wheel",
        "_write_paused",
    )

    log = Logger()
    _tunnel: ByteSink | None = None
    """Set (by the streaming front) when the connection became a byte stream: the rest of
    its bytes go there, not to the parser.  Checked here rather than in the streaming
    front's overrides of dataReceived, _feed and on_message_complete: three Python calls
    less per request."""

    def __init__(
        self,
        reactor: IReactorTime,
        kind: SourceKind,
        dispatch: Dispatch,
        limits: FrontLimits = FrontLimits(),
    ) -> None:
        self._reactor = reactor
        self._hold_sends: bool = getattr(reactor, "sends_at_turn_end", False)
        """A whole response's send may wait for the end of the reactor's turn, with the
        turn's others (write_now's ``hold``): on edgemesh's reactor."""
        self._wheel = wheel_for(reactor)
        """The node's timer wheel, for this connection's one timer: no DelayedCall, heap
        push and reset per connection (see _arm)."""
        self._kind = kind
        """The listener's kind, passed to ``dispatch`` with each request."""
        self._dispatch = dispatch
        self._limits = limits
        self._max_count = limits.max_header_count
        self._max_head = limits.max_header_bytes
        self._max_body = limits.max_body_bytes
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._client = ""

        # The message being parsed.
        self._in_head = False
        self._msg_open = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        """The fields to pass on (hop-by-hop ones are dropped as they arrive)."""
        self._header_count = 0
        self._head_bytes = 0
        self._trailer_count = 0
        self._trailer_bytes = 0
        self._content_length: int | None = None
        self._transfer_encoding: bytes | None = None
        self._host: bytes | None = None
        self._connection: list[bytes] | None = None
        self._expect: bytes | None = None
        self._hops = 0
        self._upgrade: bytes | None = None
        """The Upgrade field of the request being parsed (dropped from the head; the
        byte-stream front upgrades with it)."""
        self._parsed: _Parsed | None = None
        """The request being parsed, when it may be remembered (no body, no upgrade)."""
        self._last_request: tuple[_Parsed, RequestHead] | None = None
        """The last remembered request this connection repeated, and its head (see _begin)."""
        self._response_made: tuple[ResponseHead, bytes] | None = None
        """The last response head written here as a persistent, Content-Length framed,
        HTTP/1.1 one, and its bytes (see _Exchange._head_bytes)."""
        self._parsing: _Exchange | None = None
        # Byte accounting across reads (httptools accumulates a header's pieces
        # internally, so a never-ending header must be caught by counting reads).
        self._begun = 0
        self._completed = 0
        self._body_seen = 0
        self._head_carry = 0
        self._tail_carry = 0

        # Exchanges: the one running and the parsed ones waiting behind it.
        self._active: _Exchange | None = None
        self._queue: deque[_Exchange] = deque()
        self._starting = False

        # Connection state.
        self._read_stopped = False  # no more requests are parsed
        self._closing = False
        self._registered = False
        self._reading_paused = False
        self._paused_by_target = False
        self._write_paused = False
        self._timer: WheelTimer | None = None
        self._idle_since: float | None = None
        self._head_since: float | None = None

    # -- Protocol --------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer: IAddress = transport.getPeer()
        self._client = getattr(peer, "host", "") or ""
        # A response head and its body may leave in two writes: without TCP_NODELAY the
        # second waits for the client's delayed ACK (40 ms).
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._registered = True
        self._become_idle()

    def dataReceived(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.received(data)
            return
        try:
            if not self._msg_open and not self._read_stopped:
                seen = _requests_seen.get(data)
                if seen is not None and seen[0] is self._limits:
                    # A request head parsed before: what llhttp's callbacks would do with it,
                    # without llhttp (here, not in _feed or a method: two calls less).
                    parsed = seen[1]
                    method, http10, keep_alive, headers, path, authority, hops = parsed
                    self._begun += 1
                    self._msg_open = True
                    self._idle_since = None
                    self._head_since = None
                    self._tail_carry = 0
                    try:
                        self._begin(method, http10, keep_alive, headers, 0, False, path,
                                    authority, hops, parsed)
                    except _Stop:
                        return  # rejected: llhttp would stop before the message's end
                    self.on_message_complete()
                    return
            while data and not self._read_stopped:
                data = self._feed(data)
                tunnel = self._tunnel
                if tunnel is not None:
                    # The parser is done with this connection: the rest of it is the stream.
                    self._read_stopped = True
                    tunnel.received(data)
                    return
        except Exception:  # noqa: BLE001 -- a bug here must cost one connection, not the reactor
            self.log.failure("HTTP front failed on input from {client}", client=self._client)
            self._close(abort=True, reason="internal error")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._read_stopped = True
        self._closing = True
        self._cancel_timer()
        active = self._active
        self._active = None
        self._queue.clear()
        if active is not None and active.state != _DONE:
            active.state = _DONE
            active._abort_body("client connection lost")
        self._parsing = None
        self._parser = None  # drop the parser ↔ protocol cycle

    # -- IPushProducer (our transport's write buffer) --------------------------

    def pauseProducing(self) -> None:
        self._write_paused = True
        active = self._active
        if active is not None and active.producer is not None:
            active.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._write_paused = False
        active = self._active
        if active is not None and active.producer is not None:
            active.producer.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going away; ``connectionLost`` cleans up."""

    def refuse(self, reason: Reason, detail: str) -> None:
        """Answer ``reason`` once, in request order, log it and close: for a subclass that
        finds the connection unusable before or instead of parsing (e.g. not HTTP)."""
        self._reject(reason, detail)

    # -- feeding the parser ----------------------------------------------------

    def _feed(self, data: bytes) -> bytes:
        """Parse one read; return what is left to parse after an upgrade request."""
        parser = self._parser
        if parser is None:
            return b""
        msg_open = self._msg_open
        in_head = self._in_head
        begun = self._begun
        completed = self._completed
        body_seen = self._body_seen
        rest = b""
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp pauses after a request carrying "Connection: upgrade".  We
            # do not upgrade; the request (never with a body, see
            # on_headers_complete) was an ordinary one, so parse on.
            rest = data[upgrade.args[0] :]
        except httptools.HttpParserError as error:
            cause = error.__context__
            if cause is not None and not isinstance(cause, _Stop):
                raise cause from None
            if not self._read_stopped:
                self._reject(Reason.bad_request, f"malformed request: {error}")
            return b""
        if self._read_stopped:
            return b""
        parsed = self._parsed
        if (
            parsed is not None and not msg_open and not self._msg_open and not rest
            and self._begun == begun + 1 and self._completed == completed + 1
            and len(data) <= _REQUEST_SEEN_LENGTH
        ):
            # Exactly one whole request without a body, from the parser's start state.
            if len(_requests_seen) >= _REQUESTS_SEEN_BOUND:
                _requests_seen.clear()
            _requests_seen[data] = (self._limits, parsed)
        if self._in_head:
            if in_head and begun == self._begun:
                self._head_carry += len(data)
            elif completed == self._completed:
                self._head_carry = len(data)  # at most a few CRLFs before the head
            else:
                self._head_carry = 0
            if self._head_carry > self._max_head:
                self._reject(
                    Reason.headers_too_large,
                    f"request head larger than {self._max_head} bytes",
                )
                return b""
            if self._head_since is None and not self._reading_paused:
                self._head_since = now = self._reactor.seconds()
                self._arm(now + self._limits.header_timeout)
        elif self._msg_open and begun == self._begun and completed == self._completed:
            # Inside a chunked body: bytes that carried no body data are chunk
            # framing or trailers, which httptools also buffers.
            if body_seen == self._body_seen:
                self._tail_carry += len(data)
                if self._tail_carry > self._max_head:
                    self._reject(
                        Reason.headers_too_large,
                        f"request trailers larger than {self._max_head} bytes",
                    )
                    return b""
            else:
                self._tail_carry = 0
        return rest

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        if self._read_stopped:
            raise _Stop()
        self._begun += 1
        self._in_head = True
        self._msg_open = True
        self._idle_since = None
        self._head_since = None
        self._url = b""
        self._headers = []
        self._header_count = 0
        self._head_bytes = 0
        self._trailer_count = 0
        self._trailer_bytes = 0
        self._tail_carry = 0
        self._content_length = None
        self._transfer_encoding = None
        self._host = None
        self._connection = None
        self._expect = None
        self._hops = 0
        self._upgrade = None
        self._parsed = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            raise self._reject(
                Reason.headers_too_large, f"request head larger than {self._max_head} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer field: counted against the same limits, passed on with the body's end.
            self._trailer_count += 1
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_count > self._max_count or self._trailer_bytes > self._max_head:
                raise self._reject(Reason.headers_too_large, "request trailer section too large")
            exchange = self._parsing
            if exchange is not None and trailer_field(name):
                if exchange.request_trailers is None:
                    exchange.request_trailers = [(name, value)]
                else:
                    exchange.request_trailers.append((name, value))
            return
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._header_count > self._max_count:
            raise self._reject(
                Reason.headers_too_large, f"more than {self._max_count} request header fields"
            )
        if self._head_bytes > self._max_head:
            raise self._reject(
                Reason.headers_too_large, f"request head larger than {self._max_head} bytes"
            )
        lower = name.lower()
        if lower in _WATCHED:
            if lower in _SPECIAL and self._special_header(lower, value):
                return
            if lower in _REQUEST_DROP:
                if lower == b"upgrade":
                    # Noted here rather than in a subclass's on_header: one Python call
                    # less per request field.
                    self._upgrade = value
                return
        self._headers.append((name, value))

    def _special_header(self, lower: bytes, value: bytes) -> bool:
        """Note a field the front interprets; True: leave it out of the forwarded head."""
        if lower == b"content-length":
            try:
                self._content_length = content_length(value)
            except HeadError as error:
                raise self._reject(error.reason, error.detail) from None
        elif lower == b"transfer-encoding":
            try:
                check_transfer_encoding(value, self._transfer_encoding is not None)
            except HeadError as error:
                raise self._reject(error.reason, error.detail) from None
            self._transfer_encoding = value
        elif lower == b"host":
            if self._host is not None:
                raise self._reject(Reason.bad_request, "more than one Host field")
            self._host = value.rstrip(b" \t")
            # With an absolute-form target the URI's authority is the Host.
            first = self._url[:1]
            return first != b"/" and first != b"*"
        elif lower == b"connection":
            if self._connection is None:
                self._connection = [value]
            else:
                self._connection.append(value)
        elif lower == _HOPS:
            try:
                self._hops = max(self._hops, hop_count(value))
            except HeadError as error:
                raise self._reject(error.reason, error.detail) from None
            return True
        else:  # expect
            self._expect = value.rstrip(b" \t").lower()
        return False

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_since = None
        parser = self._parser
        assert parser is not None
        method = parser.get_method()
        try:
            http10, length = request_framing(
                parser.get_http_version(), method, self._transfer_encoding is not None,
                self._content_length, self._max_body, parser.should_upgrade(),
            )
        except HeadError as error:
            raise self._reject(error.reason, error.detail,
                               method if error.for_method else b"") from None

        # Hop-by-hop fields were dropped in on_header; now those Connection lists.
        if self._connection is None:
            keep_alive = not http10
            headers = tuple(self._headers)
        else:
            tokens = connection_tokens(self._connection)
            keep_alive = b"close" not in tokens and (not http10 or b"keep-alive" in tokens)
            if tokens <= _REQUEST_DROP:  # e.g. "keep-alive": those fields are gone already
                headers = tuple(self._headers)
            else:
                headers = end_to_end(self._headers, tokens)
        expect_continue = self._expect == b"100-continue"

        try:
            path, authority, absolute = request_target(self._url, method, self._host, http10)
        except HeadError as error:
            raise self._reject(error.reason, error.detail,
                               method if error.for_method else b"") from None
        if absolute:
            # RFC 9112 §3.2.2: the target's authority replaces any Host field
            # (on_header already left those out).
            headers = ((b"Host", authority), *headers)
        if length == 0 and not expect_continue and self._upgrade is None:
            self._parsed = (method, http10, keep_alive, headers, path, authority, self._hops)
        self._begin(method, http10, keep_alive, headers, length, expect_continue, path,
                    authority, self._hops)

    def _begin(
        self, method: bytes, http10: bool, keep_alive: bool, headers: Headers,
        length: int | None, expect_continue: bool, path: bytes, authority: bytes, hops: int,
        parsed: _Parsed | None = None,
    ) -> None:
        """A request head is complete: queue its exchange, or start it.  ``parsed``: the
        remembered request it repeats (``_requests_seen``), if it is one."""
        queue = self._queue
        if len(queue) >= self._limits.max_pipelined:
            raise self._reject(
                Reason.overloaded,
                f"more than {self._limits.max_pipelined} pipelined requests",
                method,
                path,
            )
        exchange = _Exchange(self, method, http10, keep_alive)
        starts = (self._active is None and not queue and not self._starting
                  and not self._closing)
        last = self._last_request
        if parsed is not None and last is not None and last[0] is parsed:
            # The last request of this connection, repeated: its RequestHead again (the same
            # fields, client and received hop count; nothing writes a RequestHead): a class
            # instantiation less per exchange (-1.8 k instructions per p1 /small exchange,
            # callgrind; results 2026-12-04 §25).
            head = last[1]
        else:
            head = RequestHead(method, path, authority, headers, length, self._client, hops)
            if parsed is not None:
                self._last_request = (parsed, head)
        exchange.request = head
        exchange.expect_continue = expect_continue and not http10
        if length == 0:
            exchange.request_done = True
        self._parsing = exchange
        if starts:
            # _start_next's loop for the one request in hand (no queue round trip).
            self._active = exchange
            self._starting = True
            try:
                self._start(exchange)
            finally:
                self._starting = False
            if queue:  # answered at once, and later ones queued meanwhile: start those
                self._start_next()
                if queue:
                    self._update_reading()
            elif self._reading_paused or self._paused_by_target:
                self._update_reading()
            return
        queue.append(exchange)
        if self._active is None:
            self._start_next()
        if queue:
            self._update_reading()

    def _check_authority(self, authority: bytes, method: bytes) -> bytes:
        """A well-formed authority, else the request is rejected (the byte-stream front's
        CONNECT and Upgrade use it too)."""
        try:
            return check_authority(authority)
        except HeadError as error:
            raise self._reject(error.reason, error.detail, method) from None

    def on_body(self, body: bytes) -> None:
        self._body_seen += 1
        exchange = self._parsing
        if exchange is None:
            return
        received = exchange.received + len(body)
        exchange.received = received
        max_body = self._max_body
        if max_body is not None and received > max_body:
            raise self._reject(
                Reason.payload_too_large, f"request body exceeds the limit of {max_body} bytes"
            )
        state = exchange.state
        if state == _QUEUED:
            if exchange.pending is None:
                exchange.pending = [body]
            else:
                exchange.pending.append(body)
        elif state != _DONE and exchange.body is not None:
            try:
                exchange.body.write(body)
            except Exception:  # noqa: BLE001 -- contain any failure of target code
                self._target_raised(exchange, "request body write")

    def on_message_complete(self) -> None:
        self._completed += 1
        self._msg_open = False
        exchange = self._parsing
        if exchange is None:
            return
        self._parsing = None
        if not exchange.keep_alive:
            self._read_stopped = True  # nothing after this request is read
        if not exchange.request_done:
            exchange.request_done = True
            state = exchange.state
            if state != _QUEUED and state != _DONE and exchange.body is not None:
                try:
                    if exchange.request_trailers:
                        hand_trailers(exchange.body, tuple(exchange.request_trailers),
                                      "the target takes no trailers")
                    exchange.body.end()
                except Exception:  # noqa: BLE001 -- contain any failure of target code
                    self._target_raised(exchange, "request body end")
        if self._active is None and not self._queue and not self._closing:
            self._become_idle()

    # -- exchanges ---------------------------------------------------------------

    def _start_next(self) -> None:
        if self._starting:
            return  # an exchange finished synchronously inside the loop below
        self._starting = True
        try:
            queue = self._queue
            while self._active is None and queue and not self._closing:
                exchange = queue.popleft()
                self._active = exchange
                self._start(exchange)
        finally:
            self._starting = False
        if not self._queue:
            self._update_reading()
            if self._active is None and not self._msg_open and not self._closing:
                self._become_idle()

    def _start(self, exchange: _Exchange) -> None:
        exchange.state = _STARTED
        if exchange.error is not None:
            self._answer_error(exchange, exchange.error)
            return
        head = exchange.request
        assert head is not None
        try:
            body = self._dispatch(self._kind, head, exchange)
        except MeshError as error:
            exchange.fail(error)
            return
        except Exception:  # noqa: BLE001 -- contain any failure of target code
            self.log.failure(
                "dispatch raised for {method} {authority}{path}",
                method=head.method,
                authority=head.authority,
                path=head.path,
            )
            exchange.fail(MeshError(Reason.upstream_lost, "internal error in the mesh"))
            return
        exchange.body = body
        if exchange.state == _DONE:
            # Answered inside dispatch: still close the request stream properly.
            if exchange.request_done and exchange.error is None:
                try:
                    for data in exchange.pending or ():
                        body.write(data)
                    if exchange.request_trailers:
                        hand_trailers(body, tuple(exchange.request_trailers),
                                      "the target takes no trailers")
                    body.end()
                except Exception:  # noqa: BLE001 -- contain any failure of target code
                    self.log.failure("target raised in request body")
            else:
                exchange._abort_body("exchange over before the request body was read")
            return
        try:
            if not exchange.request_done or exchange.pending is not None:
                # Only a request with a body has a flow to pause: a bodiless one (a GET) gives
                # its target no producer (p1 edge-1: four Python calls, ~2 k instructions less
                # per exchange; callgrind).
                body.setProducer(exchange)
            if (
                exchange.expect_continue
                and not exchange.request_done
                and exchange.state == _STARTED
                and not exchange.received
            ):
                self.transport.write(_CONTINUE)  # type: ignore[union-attr]
            pending = exchange.pending
            if pending is not None:
                exchange.pending = None
                for data in pending:
                    if exchange.state == _DONE:
                        return
                    body.write(data)
            if exchange.request_done and exchange.state != _DONE and (
                    head.content_length != 0 or not HEAD_ENDED[type(body)]):
                # A body that took a bodiless head as the whole request (IHeadEndedBody) needs
                # no end: the guard's and the pod exchange's end calls less per GET (p1 ~-0.5 k).
                if exchange.request_trailers:
                    hand_trailers(body, tuple(exchange.request_trailers),
                                  "the target takes no trailers")
                body.end()
        except Exception:  # noqa: BLE001 -- contain any failure of target code
            self._target_raised(exchange, "request body")

    def _target_raised(self, exchange: _Exchange, what: str) -> None:
        self.log.failure("target raised in {what}", what=what)
        exchange._abort_body("target failed")
        exchange.fail(MeshError(Reason.upstream_lost, "internal error in the mesh"))

    def _answer_error(self, exchange: _Exchange, error: MeshError) -> None:
        """The front's own answer to a request that has no response head yet."""
        status = error.status
        body, headers = error_body(status, error.reason.code, error.detail)
        persist = exchange.keep_alive and exchange.request_done and not self._closing
        if persist and exchange.http10:
            headers = headers + _KEEP_ALIVE_HEADER
        head = response_head_bytes(
            status,
            _PHRASES.get(status, b"Error"),
            headers,
            b"Content-Length: %d\r\n" % len(body),
            persist,
        )
        transport = self.transport
        assert transport is not None
        if exchange.method == b"HEAD":
            transport.write(head)
        else:
            transport.writeSequence((head, body))
        exchange.persist = persist
        exchange.error = error
        self._exchange_done(exchange)

    def _exchange_done(self, exchange: _Exchange) -> None:
        """``exchange`` is over (DONE here): let the connection go on or close."""
        exchange.state = _DONE
        if exchange is not self._active:
            return
        exchange.producer = None
        if not exchange.request_done:
            exchange._abort_body("response complete before the request body")
        if not exchange.persist or self._closing:
            self._close(abort=False, reason="response complete")
            return
        self._active = None
        self._paused_by_target = False
        if self._queue or self._starting:
            self._start_next()
        else:
            # _start_next with nothing queued, inlined (one call less per exchange).
            if self._reading_paused:
                self._update_reading()
            if not self._msg_open and not self._closing:
                self._become_idle()

    def _reject(
        self, reason: Reason, detail: str, method: bytes = b"", path: bytes | None = None
    ) -> _Stop:
        """Stop parsing this connection; answer ``reason`` in request order and
        close.  Returns the exception a parser callback raises to stop llhttp.  ``method``:
        the one the answer is for (a HEAD's has no body); ``path``: the request's, when the
        parser's is not this request's (the fast path of ``dataReceived``)."""
        self._read_stopped = True
        self._in_head = False
        self._head_since = None
        error = MeshError(reason, detail)
        self.log.info(
            "rejected a request from {client}: {code}: {detail}",
            client=self._client,
            code=reason.code,
            detail=detail,
        )
        exchange = self._parsing
        rejected: Rejected | None = getattr(self.factory, "rejected", None)
        if rejected is not None:
            # Counted and logged by the node's observer, as the exchange it was: before the
            # body is aborted below, so that a routed one is not taken for a client gone.
            if exchange is not None and exchange.state != _QUEUED:
                rejected(reason, self._kind, None, exchange.body)
            else:
                rejected(reason, self._kind, self._rejected_head(exchange, method, path), None)
        self._parsing = None
        if exchange is not None and exchange.state != _QUEUED:
            # Already dispatched: the target loses the body; the client gets the
            # error if nothing was written yet, else a visible truncation.
            exchange._abort_body(detail)
            exchange.fail(error)
            return _Stop()
        if exchange is not None:
            method = exchange.method
            self._queue.remove(exchange)
        answer = _Exchange(self, method, False, False)
        answer.error = error
        self._queue.append(answer)
        self._start_next()
        return _Stop()

    def _rejected_head(
        self, exchange: _Exchange | None, method: bytes, path: bytes | None
    ) -> RequestHead:
        """What the metrics and the access log see of a request refused before it was
        routed: its head when it was parsed whole, else its method and target as far as
        they were read (no fields, no authority: none are logged)."""
        if exchange is not None and exchange.request is not None:
            return exchange.request
        parser = self._parser
        if path is None:
            path = b""
            # The request line of the message being parsed: llhttp read its method before
            # the first piece of its target (before it, get_method() says DELETE).
            if self._msg_open and self._url and parser is not None:
                path = _target_path(self._url)
                if not method:
                    method = parser.get_method()
        return RequestHead(method, path, b"", (), 0, self._client)

    # -- flow control ------------------------------------------------------------

    def _target_pause(self, paused: bool) -> None:
        self._paused_by_target = paused
        self._update_reading()

    def _update_reading(self) -> None:
        if self._closing:
            return
        pause = self._paused_by_target or bool(self._queue)
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        transport = self.transport
        assert transport is not None
        if pause:
            transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            transport.resumeProducing()  # type: ignore[attr-defined]
            if self._in_head:
                # The head-timeout clock stops while we are the ones not reading.
                self._head_since = now = self._reactor.seconds()
                self._arm(now + self._limits.header_timeout)

    # -- timeouts ----------------------------------------------------------------

    def _become_idle(self) -> None:
        self._idle_since = now = self._reactor.seconds()
        if self._timer is None:
            self._arm(now + self._limits.idle_timeout)

    def _arm(self, deadline: float) -> None:
        """Make sure the single timer fires no later than ``deadline`` (or the wheel's
        resolution after it); when it fires it works out which deadline (if any) applies
        then.  On the wheel, not ``callLater``: a new-connection /small exchange on path 1,
        292 -> 287 k instructions (callgrind), and no heap of cancelled DelayedCalls whose
        pushes compare in Python as connections come and go."""
        timer = self._timer
        if timer is None:
            self._timer = self._wheel.call_at(deadline, self._on_timer)
        elif timer.deadline > deadline:
            timer.cancel()
            self._timer = self._wheel.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        if self._in_head and self._head_since is not None and not self._reading_paused:
            deadline = self._head_since + self._limits.header_timeout
            why = "request head not complete within the header timeout"
        elif self._idle_since is not None:
            deadline = self._idle_since + self._limits.idle_timeout
            why = "idle timeout"
        else:
            return  # busy with an exchange: re-armed when idle again
        now = self._reactor.seconds()
        if now >= deadline:
            self.log.info("closing connection from {client}: {why}", client=self._client, why=why)
            self._close(abort=self._write_paused, reason=why)
        else:
            self._timer = self._wheel.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    # -- closing -------------------------------------------------------------------

    def _close(self, abort: bool, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._read_stopped = True
        self._cancel_timer()
        transport = self.transport
        assert transport is not None
        if self._registered:
            # A registered, paused producer would keep loseConnection waiting.
            self._registered = False
            transport.unregisterProducer()  # type: ignore[attr-defined]
        active = self._active
        if active is not None and active.state != _DONE:
            active.state = _DONE
            active._abort_body(reason)
        self._queue.clear()
        if abort:
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            # A client that never reads would hold a graceful close open forever.
            self._timer = self._wheel.call_later(self._limits.idle_timeout, self._linger_over)
            transport.loseConnection()

    def _linger_over(self) -> None:
        self._timer = None
        self.log.info("aborting connection from {client}: close not completed", client=self._client)
        self.transport.abortConnection()  # type: ignore[union-attr]


class HTTPFrontFactory(Factory):
    """Builds an ``HTTPFrontProtocol`` per accepted connection."""

    def __init__(
        self,
        reactor: IReactorTime,
        kind: SourceKind,
        dispatch: Dispatch,
        limits: FrontLimits = FrontLimits(),
    ) -> None:
        self.reactor = reactor
        self.kind = kind
        self.dispatch = dispatch
        self.limits = limits
        self.rejected: Rejected | None = None
        """Told of every request the front answers itself (malformed, too large): see
        ``Rejected``."""

    def buildProtocol(self, addr: IAddress | None) -> HTTPFrontProtocol:
        protocol = HTTPFrontProtocol(self.reactor, self.kind, self.dispatch, self.limits)
        protocol.factory = self
        return protocol
