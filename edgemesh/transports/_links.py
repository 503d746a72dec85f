"""
Envelope links: a wire.Connection adapted to a Twisted transport.

The same protocol serves the edge→router tunnel, the router's end of it, and the
hub connections between edges.  A link carries many exchanges as streams in
both directions; each stream's body flows with credit (the peer's window) and
with push-producer pauses (our transport's buffer), so neither a large body nor
a slow reader grows a buffer beyond a bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    COMPLETERS,
    Headers,
    IByteStream,
    ICompletingResponder,
    IRequestBody,
    IResponder,
    IStreamSource,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    drop_trailers,
    hand_trailers,
)
from ..wire import (
    REFUSED,
    RETRY_AFTER_SETTING,
    Ack,
    CatalogPush,
    Connection,
    Data,
    EdgeSet,
    Frame,
    GoAway,
    Hello,
    Limits,
    Pong,
    ProtocolError,
    Request,
    Reset,
    Response,
    StreamAccept,
    StreamOpen,
    Window,
    encode_ping,
    encode_refusal,
    encode_request,
)
from ._io import use_large_buffer, write_now
from ._wheel import TimerWheel, WheelTimer, wheel_for

if TYPE_CHECKING:
    from ._linkstreams import _LinkStream

_PENDING_BOUND = 64 * 1024
"""Body bytes a stream holds while it waits for credit, before it pauses its producer."""
_CORK_LIMIT = 16 * 1024
"""Response body held with a corked head before the head is sent anyway."""
_COALESCE_LIMIT = 64 * 1024
"""Frames held for the end of the reactor turn before they are written anyway."""
_REFUSAL_GRACE = 5.0
"""Seconds a refused peer has to read the GOAWAY before its connection is aborted."""


class LinkHandler(TypingProtocol):
    """What a role does with a link: the node-level side of the protocol."""

    def link_ready(self, link: EnvelopeLink) -> None:
        """The hello exchange is done; ``link.peer`` says who is there."""

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        """The link is gone (after link_ready, or during the handshake)."""

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        """The peer starts an exchange; route it (may raise MeshError)."""

    def control(self, link: EnvelopeLink, frame: CatalogPush | Ack | GoAway | EdgeSet) -> None:
        """A control frame: catalog push, ack, goaway."""


class _Sender:
    """The body-sending half of a stream: credit, a bounded queue, and the
    producer (source or target) it pauses when it cannot send."""

    __slots__ = (
        "done", "ending", "link", "producer", "producer_paused", "queue", "queued", "sid", "trailers",
    )

    def __init__(self, link: EnvelopeLink, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.queue: deque[bytes] | None = None
        """Body waiting for credit or for the link (made when first needed: most exchanges
        never queue anything)."""
        self.queued = 0
        self.ending = False
        self.producer: IPushProducer | None = None
        self.producer_paused = False
        self.done = False
        self.trailers: Headers = ()
        """Trailer fields for the last frame."""

    def send(self, data: bytes) -> None:
        if self.done or self.ending:
            return
        if not self.queue and not self.link.paused:
            data = self._send_now(data)
            if not data:
                return
        if self.queue is None:
            self.queue = deque()
        self.queue.append(data)
        self.queued += len(data)
        self.update()

    def finish(self) -> None:
        if self.done or self.ending:
            return
        self.ending = True
        self.flush()

    def _send_now(self, data: bytes) -> bytes:
        """Send what the window allows; return the rest."""
        link = self.link
        conn = link.connection
        chunk = link.connection.limits.max_data_chunk
        while data:
            allowed = min(conn.send_window(self.sid), chunk)
            if allowed <= 0:
                break
            if allowed < len(data):
                piece, data = data[:allowed], data[allowed:]
            else:
                piece, data = data, b""
            link.write_parts(conn.send_data_head(self.sid, len(piece), False), piece)
        return data

    def flush(self) -> None:
        """Send queued body as far as credit allows, then the end if it is due."""
        if self.done:
            return
        link = self.link
        queue = self.queue
        while queue and not link.paused:
            head = queue.popleft()
            self.queued -= len(head)
            rest = self._send_now(head)
            if rest:
                queue.appendleft(rest)
                self.queued += len(rest)
                break
        if self.ending and not self.queue:
            self.done = True
            trailers = self.trailers
            if trailers and not link.connection.peer_takes_trailers:
                drop_trailers(trailers, f"{link.peer_name} takes no trailers (an older version)")
                trailers = ()
            link.write(link.connection.send_data(self.sid, b"", True, trailers))
        self.update()

    def update(self) -> None:
        producer = self.producer
        if producer is None:
            return
        blocked = not self.done and (self.link.paused or self.queued >= _PENDING_BOUND)
        if blocked and not self.producer_paused:
            self.producer_paused = True
            producer.pauseProducing()
        elif not blocked and self.producer_paused:
            self.producer_paused = False
            producer.resumeProducing()

    def attach(self, producer: IPushProducer) -> None:
        self.producer = producer
        self.producer_paused = False
        self.update()


class _Receiver:
    """The body-receiving half of a stream: credit goes back only for what the
    consumer accepted while it was not paused."""

    __slots__ = ("held", "link", "paused", "sid")

    def __init__(self, link: EnvelopeLink, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.paused = False
        self.held = 0

    def delivered(self, size: int) -> None:
        if not size:
            return
        if self.paused:
            self.held += size
        else:
            self.link.write(self.link.connection.consumed(self.sid, size))

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self.held:
            held, self.held = self.held, 0
            self.link.write(self.link.connection.consumed(self.sid, held))


@implementer(IRequestBody, IPushProducer)
class OutboundExchange:
    """An exchange this node sends over the link: request out, response back."""

    def __init__(self, link: EnvelopeLink, sid: int, responder: IResponder) -> None:
        self.link = link
        self.sid = sid
        self.responder = responder
        self.sender = _Sender(link, sid)
        self.receiver = _Receiver(link, sid)
        self.finished = False
        responder.setProducer(self)

    # IRequestBody: the source pushes request body
    def write(self, data: bytes) -> None:
        self.sender.send(data)

    def trailers(self, fields: Headers) -> None:
        self.sender.trailers = fields

    def end(self) -> None:
        self.sender.finish()

    def abort(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self.sender.done = True
            self.link.write(self.link.connection.send_reset(self.sid, "cancelled", reason))
            self.link.forget(self.sid)

    def setProducer(self, producer: IPushProducer) -> None:
        self.sender.attach(producer)

    # IPushProducer: the source pauses the response
    def pauseProducing(self) -> None:
        self.receiver.pause()

    def resumeProducing(self) -> None:
        self.receiver.resume()

    def stopProducing(self) -> None:
        self.abort("response consumer went away")

    # from the link
    def on_frame(self, frame: Frame) -> None:
        responder = self.responder
        if type(frame) is Response:
            assert isinstance(frame, Response)
            head = ResponseHead(frame.status, frame.reason, frame.headers, frame.content_length)
            # One dict lookup: 73 ns against 85 ns for the getattr probe (bench/complete_probe.py).
            complete = COMPLETERS[type(responder)]
            if frame.end and complete is not None:
                # The whole response in one frame: hand it over whole (one write downstream).
                self._done()
                complete(responder, head, frame.body)
                self.receiver.delivered(len(frame.body))
                return
            responder.head(head)
            if frame.body:
                responder.write(frame.body)
                self.receiver.delivered(len(frame.body))
            if frame.end:
                self._done()
                responder.end()
        elif type(frame) is Data:
            assert isinstance(frame, Data)
            if frame.data:
                responder.write(frame.data)
                self.receiver.delivered(len(frame.data))
            if frame.end:
                self._done()
                if frame.trailers:
                    hand_trailers(responder, frame.trailers, "the source takes no trailers")
                responder.end()
        elif type(frame) is Reset:
            assert isinstance(frame, Reset)
            self._done()
            responder.fail(MeshError(Reason.from_code(frame.code), frame.detail))
        elif type(frame) is Window:
            self.sender.flush()

    def on_link_state(self) -> None:
        self.sender.flush()

    def on_lost(self, reason: str) -> None:
        if not self.finished:
            self._done()
            self.responder.fail(MeshError(Reason.peer_unavailable, f"link to {self.link.peer_name} lost: {reason}"))

    def _done(self) -> None:
        self.finished = True
        if not self.sender.done:
            # The response is over before the request body: abandon the rest of it.
            self.sender.done = True
            self.link.write(self.link.connection.send_reset(self.sid, "cancelled", "response complete"))
        self.link.forget(self.sid)
        self.sender.producer = None  # the source's: it points back here through the responder


@implementer(ICompletingResponder, IPushProducer)
class InboundExchange:
    """An exchange the peer sends us: the request flows into a local target, the
    response flows back over the link."""

    def __init__(self, link: EnvelopeLink, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.body: IRequestBody | None = None
        self.sender = _Sender(link, sid)
        self.receiver = _Receiver(link, sid)
        self.headed = False
        self.finished = False
        self.corked: ResponseHead | None = None
        self.cork_body: list[bytes] = []
        self.cork_size = 0
        self.request_ended = False
        self.target_paused = False
        self.held: deque[bytes] | None = None
        """Request body that arrived while the target was paused.  The peer may lawfully
        send all the credit it holds (up to a window, 512 KiB) before it learns of a pause,
        which is more than a target may have to keep (the pod client refuses a source that
        keeps writing past a pause: 503).  So the stream keeps it and delivers it on resume:
        bounded by the credit it granted (the connection refuses a frame beyond it), and no
        credit goes back for it until the target took it."""
        self.held_end = False
        """The peer's end came after held body: it goes to the target after that body."""
        self.request_trailers: Headers = ()

    def _release(self) -> None:
        """Forget the stream once both directions are over (a response may end before
        its request body: the peer may still send that body, or reset it)."""
        if self.finished and self.sender.done and self.request_ended:
            self.link.forget(self.sid)
            # Both directions are over: break the cycles with the target's objects (they
            # point back here), so that reference counting frees the exchange.
            self.body = None
            self.sender.producer = None

    def request_end(self) -> None:
        if self.held:
            self.held_end = True  # after the held body
            return
        self.request_ended = True
        body = self.body
        if body is not None:
            if self.request_trailers:
                hand_trailers(body, self.request_trailers, "the target takes no trailers")
            body.end()
        self._release()

    def request_body(self, data: bytes) -> None:
        """Request body from the peer: to the target, or held while it is paused."""
        body = self.body
        if body is None or not data:
            return
        if self.target_paused or self.held:
            held = self.held
            if held is None:
                held = self.held = deque()
            held.append(data)
            return
        body.write(data)
        self.receiver.delivered(len(data))

    # IPushProducer: the target pauses the request body
    def pauseProducing(self) -> None:
        self.target_paused = True
        self.receiver.pause()

    def resumeProducing(self) -> None:
        self.target_paused = False
        self.receiver.resume()
        held = self.held
        while held and not self.target_paused:
            body = self.body
            if body is None:  # over meanwhile (reset, link lost)
                held.clear()
                break
            data = held.popleft()
            body.write(data)  # may pause the target again
            self.receiver.delivered(len(data))
        if not held and self.held_end:
            self.held_end = False
            self.request_end()

    def stopProducing(self) -> None:
        self.fail(MeshError(Reason.upstream_lost, "request consumer went away"))

    # IResponder: the target answers.  The head is corked: most responses arrive
    # whole (head, body and end from one read of the pod's socket), and holding
    # the head until the end of that reactor turn sends one frame instead of three.
    def head(self, head: ResponseHead) -> None:
        if self.finished or self.headed:
            return
        self.headed = True
        self.corked = head
        self.link.cork(self)

    def uncork(self) -> None:
        """Send the held head with the body held so far (the link calls this at the
        end of the reactor turn)."""
        head = self.corked
        if head is None:
            return
        self.corked = None
        body = b"".join(self.cork_body)
        self.cork_body = []
        self.cork_size = 0
        conn = self.link.connection
        allowed = min(len(body), conn.send_window(self.sid))
        self.link.write(
            conn.send_response(
                self.sid, head.status, head.reason, head.headers, head.content_length, body[:allowed], False
            )
        )
        if allowed < len(body):
            self.sender.send(body[allowed:])

    def write(self, data: bytes) -> None:
        if self.finished:
            return
        if self.corked is not None:
            if self.cork_size + len(data) <= _CORK_LIMIT:
                self.cork_body.append(data)
                self.cork_size += len(data)
                return
            self.uncork()
        self.sender.send(data)

    def trailers(self, fields: Headers) -> None:
        """Trailer fields of the response: on the stream's last DATA frame."""
        if not self.finished:
            self.sender.trailers = fields

    def end(self) -> None:
        if self.finished:
            return
        self.finished = True
        head = self.corked
        if head is not None:
            conn = self.link.connection
            if self.cork_size <= conn.send_window(self.sid) and not self.sender.trailers:
                body = b"".join(self.cork_body)
                self.corked = None
                self.cork_body = []
                self._send_whole(head, body)
                return
            self.uncork()
        self.sender.finish()
        self._release()

    def complete(self, head: ResponseHead, body: bytes) -> None:
        """A whole response at once: one frame when the window allows."""
        if self.finished or self.headed:
            return
        link = self.link
        conn = link.connection
        size = len(body)
        if size <= _CORK_LIMIT and not link.paused and size <= conn.send_window(self.sid):
            # No cork needed: head, body and end leave now, as one frame.
            self.headed = self.finished = True
            self._send_whole(head, body)
            return
        self.head(head)
        if body:
            self.write(body)
        self.end()

    def _send_whole(self, head: ResponseHead, body: bytes) -> None:
        """The response in one frame, ending the stream (the window holds ``body``)."""
        self.sender.done = True
        self.link.write(
            self.link.connection.send_response(
                self.sid, head.status, head.reason, head.headers, head.content_length, body, True
            )
        )
        self._release()  # after the write: a draining link closes on the last release

    def fail(self, error: MeshError) -> None:
        if self.finished:
            return
        self.finished = True
        self.corked = None
        self.held = None  # the target is over: held body has nowhere to go
        self.sender.done = True
        self.link.write(self.link.connection.send_reset(self.sid, error.reason.code, error.detail))
        self.link.forget(self.sid)

    def setProducer(self, producer: IPushProducer) -> None:
        self.sender.attach(producer)

    # from the link
    def on_frame(self, frame: Frame) -> None:
        body = self.body
        if body is None:
            return
        if type(frame) is Data:
            assert isinstance(frame, Data)
            if frame.data:
                self.request_body(frame.data)
            if frame.end:
                self.request_trailers = frame.trailers
                self.request_end()
        elif type(frame) is Reset:
            assert isinstance(frame, Reset)
            self.held = None
            self.held_end = False
            answered = self.finished
            self.finished = True
            self.sender.done = True
            self.link.forget(self.sid)
            if not self.request_ended or not answered:
                # The peer gave up (a timeout, its client gone): the target stops too, also
                # when the request body was complete (the pod connection is cancelled).
                self.request_ended = True
                body.abort(f"peer reset: {frame.code}")
        elif type(frame) is Window:
            self.on_link_state()

    def on_link_state(self) -> None:
        self.sender.flush()
        self._release()

    def on_lost(self, reason: str) -> None:
        if not (self.finished and self.request_ended):
            # Whatever is unfinished, the request body or the response, the target stops.
            self.finished = self.request_ended = True
            self.sender.done = True
            self.held = None
            self.held_end = False
            if self.body is not None:
                self.body.abort(f"link lost: {reason}")


@implementer(IRequestBody, IByteStream)
class _NoBody:
    """The source's side of an exchange or a byte stream that was refused before it
    started (the source was told): whatever still comes is dropped."""

    def write(self, data: bytes) -> None:
        pass

    def end(self) -> None:
        pass

    def abort(self, reason: object) -> None:
        pass

    def setProducer(self, producer: IPushProducer) -> None:
        pass


_NO_BODY = _NoBody()


class EnvelopeLink(Protocol):
    """One envelope connection, either side."""

    log = Logger()
    identity_check: Callable[[EnvelopeLink], str | None] | None = None
    """Set by the role (edgemesh.security): says why the peer's hello may not be trusted
    (e.g. it names another node than its TLS certificate); the link is then closed before
    any envelope after the hello is processed."""

    def __init__(
        self,
        reactor: IReactorTime,
        handler: LinkHandler,
        *,
        node: str,
        role: str,
        client: bool,
        limits: Limits | None = None,
        handshake_timeout: float = 10.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        wheel: TimerWheel | None = None,
    ) -> None:
        self.reactor = reactor
        self.wheel = wheel if wheel is not None else wheel_for(reactor)
        """Drives the handshake deadline and the heartbeats (one reactor timer per node)."""
        self.handler = handler
        self.node = node
        self.role = role
        self.connection = Connection(client=client, limits=limits)
        self.exchanges: dict[int, OutboundExchange | InboundExchange | _LinkStream] = {}
        self.paused = False
        self.closed = False
        self.handshake_timeout = handshake_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._timer: WheelTimer | None = None
        self._last_heard = 0.0
        self._ping_sent: dict[int, float] = {}
        self.rtt: float | None = None
        self._ready_waiters: list[Deferred[EnvelopeLink]] = []
        self._corked: list[InboundExchange] = []
        self._out: list[bytes] = []
        """Frames written during this reactor turn: they leave together at its end."""
        self._out_size = 0
        self._turn_call: IDelayedCall | None = None
        self.draining = False
        """No new exchanges: close once those in flight are over."""
        self._refusal_timer: IDelayedCall | None = None
        self.hello_settings: dict[str, int] = {}
        """More settings for our hello (set before the connection is made)."""

    @property
    def peer(self) -> Hello | None:
        return self.connection.peer

    def when_ready(self) -> Deferred[EnvelopeLink]:
        """Fires with this link once the hello exchange is done (for ClientService's
        prepareConnection), or fails if the link is lost before."""
        if self.closed:
            return fail(ConnectionLost("link closed before its hello"))
        if self.connection.ready:
            return succeed(self)
        waiter: Deferred[EnvelopeLink] = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    @property
    def peer_name(self) -> str:
        peer = self.connection.peer
        return peer.node if peer is not None else "?"

    # --- transport side --------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        use_large_buffer(transport)
        transport.registerProducer(self, True)
        self._last_heard = self.reactor.seconds()
        self.write(self.connection.hello(self.node, self.role, self.hello_settings))
        self._timer = self.wheel.call_later(self.handshake_timeout, self._tick)

    # Frames are coalesced per reactor turn (as Twisted's TLS transport does with small
    # writes): the heads of the many exchanges one turn starts or answers leave in one
    # write, one send() on plain TCP, instead of a transport write each.

    def write(self, data: bytes) -> None:
        if data and not self.closed:
            self._out.append(data)
            self._out_size += len(data)
            if self._out_size >= _COALESCE_LIMIT:
                self.flush()
            elif self._turn_call is None:
                self._turn_call = self.reactor.callLater(0, self._end_of_turn)

    def write_parts(self, head: bytes, data: bytes) -> None:
        if self.closed:
            return
        if len(data) < _COALESCE_LIMIT:
            self.write(head + data)
            return
        # Bulk body data: no copy into the turn's buffer.
        self.flush()
        assert self.transport is not None
        self.transport.writeSequence((head, data))

    def flush(self) -> None:
        """Write what this turn has held so far."""
        out = self._out
        if not out or self.closed:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_size = 0
        assert self.transport is not None
        write_now(self.transport, data)

    def _end_of_turn(self) -> None:
        self._turn_call = None
        if self._corked:
            corked, self._corked = self._corked, []
            for exchange in corked:
                exchange.uncork()
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        was_ready = self.connection.ready
        try:
            frames = self.connection.receive(data)
        except ProtocolError as error:
            self.log.warn(
                "closing link with {peer}: protocol error: {error}", peer=self.peer_name, error=str(error)
            )
            self.close_now(f"protocol error: {error}")
            return
        self._last_heard = self.reactor.seconds()
        self.write(self.connection.data_to_send())
        for frame in frames:
            if self._is_closed():  # a frame's handler may have closed the link
                return
            try:
                self._handle(frame, was_ready)
            except Exception:  # noqa: BLE001 -- one bad exchange must not take the link down
                # A bug in one exchange must not take the link (or the reactor) down.
                self.log.failure("unexpected error handling {frame}", frame=type(frame).__name__)
            was_ready = True

    def _is_closed(self) -> bool:
        return self.closed

    def _handle(self, frame: Frame, was_ready: bool) -> None:
        kind = type(frame)
        if kind is Request:
            assert isinstance(frame, Request)
            self._inbound(frame)
            return
        if kind in (Response, Data, Reset, Window, StreamAccept):
            exchange = self.exchanges.get(frame.stream)  # type: ignore[union-attr]
            if exchange is not None:
                exchange.on_frame(frame)
            return
        if kind is StreamOpen:
            assert isinstance(frame, StreamOpen)
            self._inbound_stream(frame)
            return
        if kind is Hello:
            assert isinstance(frame, Hello)
            problem = self.identity_check(self) if self.identity_check is not None else None
            if problem is not None:
                self.log.warn("refusing link: {problem}", problem=problem)
                self.refuse(REFUSED, problem)
                return
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = self.wheel.call_later(self.heartbeat_interval, self._tick)
            self.handler.link_ready(self)
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(self)
            return
        if kind is Pong:
            assert isinstance(frame, Pong)
            sent = self._ping_sent.pop(frame.opaque, None)
            if sent is not None:
                self.rtt = self.reactor.seconds() - sent
            return
        if kind in (CatalogPush, Ack, GoAway, EdgeSet):
            self.handler.control(self, frame)  # type: ignore[arg-type]

    def _inbound(self, request: Request) -> None:
        exchange = InboundExchange(self, request.stream)
        self.exchanges[request.stream] = exchange
        try:
            body = self.handler.inbound(self, request, exchange)
        except MeshError as error:
            exchange.fail(error)
            return
        except Exception:  # noqa: BLE001 -- one bad exchange must not take the link down
            self.log.failure("routing an exchange from {peer} raised", peer=self.peer_name)
            exchange.fail(MeshError(Reason.upstream_lost, "internal error"))
            return
        exchange.body = body
        body.setProducer(exchange)
        if request.body:
            exchange.request_body(request.body)
        if request.end:
            exchange.request_end()

    def _inbound_stream(self, frame: StreamOpen) -> None:
        """The peer opens a byte stream: the handler's ``inbound_stream(link, frame,
        source)`` routes it (transports/_linkstreams.py); a handler without one refuses it."""
        route = getattr(self.handler, "inbound_stream", None)
        if route is None:
            refusal = self.connection.send_reset(
                frame.stream, Reason.not_implemented.code, f"{self.node} takes no byte streams"
            )
            self.write(refusal)
            return
        from ._linkstreams import InboundStream

        stream = InboundStream(self, frame.stream)
        self.exchanges[frame.stream] = stream
        try:
            target = route(self, frame, stream)
        except MeshError as error:
            stream.abort(error)
            return
        except Exception:  # noqa: BLE001 -- one bad stream must not take the link down
            self.log.failure("routing a byte stream from {peer} raised", peer=self.peer_name)
            stream.abort(MeshError(Reason.upstream_lost, "internal error"))
            return
        stream.attach(target, frame.data, frame.end)

    def open_stream(
        self,
        service: str,
        port: int,
        endpoint: tuple[str, int] | None,
        client: str,
        source: IStreamSource,
    ) -> IByteStream:
        """Open a byte stream to the peer (refused through ``source`` if it cannot)."""
        from ._linkstreams import open_link_stream

        return open_link_stream(self, service, port, endpoint, client, source)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        timer, self._refusal_timer = self._refusal_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._shutdown(reason.getErrorMessage())

    def _shutdown(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._turn_call is not None:
            self._turn_call.cancel()
            self._turn_call = None
        self._corked = []
        self._out = []
        self._out_size = 0
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange.on_lost(why)
        self.handler.link_lost(self, why)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(ConnectionLost(why))

    def refuse(self, code: str, detail: str, retry_after: int | None = None) -> None:
        """Refuse the peer after its hello: a GOAWAY says why (and, to a peer that reads
        it, when to come back), then the connection closes.  Nothing more is processed."""
        transport: Any = self.transport
        peer = self.connection.peer
        if self.closed or transport is None:
            return
        if peer is None or not peer.settings.get(RETRY_AFTER_SETTING):
            retry_after = None  # an older peer: its decoder refuses the third field
        self.flush()
        write_now(transport, encode_refusal(code, detail, retry_after))
        self._shutdown(f"{code}: {detail}")
        if hasattr(transport, "unregisterProducer"):
            transport.unregisterProducer()  # TLS sends its close alert only without one
        transport.loseConnection()
        # A peer that never reads could hold the connection open: not for long.
        self._refusal_timer = self.reactor.callLater(_REFUSAL_GRACE, transport.abortConnection)

    def close_now(self, why: str) -> None:
        transport = self.transport
        self._shutdown(why)
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    # --- IPushProducer: our transport's buffer ----------------------------------

    def pauseProducing(self) -> None:
        # Lazily: a stream that tries to send while the link is paused queues its
        # piece and pauses its own producer then.  Pausing every stream's producer
        # here would cost a pause/resume (epoll changes) per stream per buffer-full.
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        for exchange in list(self.exchanges.values()):
            sender = exchange.sender
            if sender.queue or sender.producer_paused or (sender.ending and not sender.done):
                exchange.on_link_state()

    def stopProducing(self) -> None:
        self.close_now("transport stopped")

    # --- heartbeats --------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.reactor.seconds()
        if not self.connection.ready:
            self.log.warn("closing link: no hello within {timeout}s", timeout=self.handshake_timeout)
            self.close_now("handshake timeout")
            return
        if now - self._last_heard >= self.heartbeat_timeout:
            self.log.warn("closing link with {peer}: silent for {silence:.1f}s",
                          peer=self.peer_name, silence=now - self._last_heard)
            self.close_now("heartbeat timeout")
            return
        opaque = int(now * 1000) & ((1 << 62) - 1)
        if len(self._ping_sent) < 8:
            self._ping_sent[opaque] = now
        if self._out or self.transport is None:
            self.write(encode_ping(opaque))
        else:
            # Nothing else to send this turn: no end-of-turn call just for the ping
            # (bench/edges_connect.py --idle: one reactor timer call per link and beat less).
            write_now(self.transport, encode_ping(opaque))
        self._timer = self.wheel.call_later(self.heartbeat_interval, self._tick)

    # --- starting exchanges --------------------------------------------------------

    def open(
        self,
        head: RequestHead,
        service: str,
        port: int,
        endpoint: tuple[str, int] | None,
        responder: IResponder,
    ) -> IRequestBody:
        """Send a request to the peer.  A request without a body goes as one frame."""
        conn = self.connection
        if conn.exhausted or self.closed:
            # Out of stream ids (after 2**30 exchanges): finish what is in flight, then
            # close, so that the link is made anew; this exchange goes elsewhere.
            self.draining = True
            self._close_if_drained()
            responder.fail(
                MeshError(Reason.peer_unavailable, f"link to {self.peer_name} is closing", unsent=True)
            )
            return _NO_BODY
        sid = conn.open_stream()
        exchange = OutboundExchange(self, sid, responder)
        self.exchanges[sid] = exchange
        no_body = head.content_length == 0
        self.write(
            encode_request(
                sid, no_body, head.method, head.path, head.authority, head.headers,
                head.content_length, head.client, service, port, endpoint, b"",
                head.hops if conn.peer_hops else None,
            )
        )
        if no_body:
            conn.sent(sid, 0, True)
            exchange.sender.done = True
        return exchange

    def cork(self, exchange: InboundExchange) -> None:
        self._corked.append(exchange)
        if self._turn_call is None:
            self._turn_call = self.reactor.callLater(0, self._end_of_turn)

    def forget(self, sid: int) -> None:
        self.exchanges.pop(sid, None)
        if self.draining:
            self._close_if_drained()

    def close_when_idle(self) -> None:
        """Start no more exchanges on this link; close it once those in flight are over."""
        self.draining = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if not self.exchanges and not self.closed and self.transport is not None:
            self.flush()
            self.transport.loseConnection()

    def send_control(self, data: bytes) -> None:
        self.write(data)


LinkFactory = Callable[[], EnvelopeLink]



def ready_or_lost(link: Any) -> Deferred[object]:
    """ClientService's prepareConnection for links: waits for the hello.  A link lost
    during its hello counts as a connection made and then lost (ClientService has no
    transition for a disconnect after a failed prepareConnection); whoever gets such a
    link from whenConnected must check ``link.closed``."""
    waiting: Deferred[object] = link.when_ready()
    return waiting.addErrback(lambda _: None)
