"""
The two halves of a stream on an envelope link (see _links): the body-sending half (credit,
a bounded queue, the producer it pauses) and the receiving half, and the exchanges that
ride them: ``OutboundExchange`` (this node asked the peer) and ``InboundExchange`` (the
peer asked this node).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..exchange import (
    COMPLETERS,
    READ_LIMITERS,
    Headers,
    IBodyPipe,
    IByteStream,
    ICompletingResponder,
    IHeadEndedBody,
    IPipeResponder,
    IRequestBody,
    IResponder,
    MeshError,
    ReadLimiter,
    Reason,
    ResponseHead,
    can_take_pipes,
    drop_trailers,
    hand_trailers,
    write_parts,
    write_pipe,
)
from ..wire import (
    Data,
    Frame,
    Reset,
    Response,
    Window,
)
from ._io import SPLICE_MIN, buffered

if TYPE_CHECKING:
    from ._links import EnvelopeLink

__all__ = ["InboundExchange", "OutboundExchange"]

_PENDING_BOUND = 64 * 1024
"""Body bytes a stream holds while it waits for credit, before it pauses its producer."""
_CORK_LIMIT = 16 * 1024
"""Response body held with a corked head before the head is sent anyway."""
AWAIT_MIN = 1024 * 1024
"""A response body announced this large, to a client that takes pipes, is awaited on its
link (EnvelopeLink.awaited) while few streams are open on it (AWAIT_STREAMS): its small
frames are read alone, the large ones spliced.  One-off 1 MiB transfers along p2: both
edges' CPU 0.74-0.80 paired (ab_transfer.py --path big; results 2026-12-06 §10).  Not on
a busy link: at 32 connections frames are 42-64 KiB, and reading those alone would only
add system calls (+2.3 per MiB on edge-1 when 1 MiB bodies were awaited there)."""
AWAIT_SMALL_FRAMES = 4
"""Small frames of an awaited body read alone, at most (two system calls each, instead of
a share of one read): past them the body is not awaited any more."""
AWAIT_STREAMS = 4
"""Bodies awaited on one link at once, at most."""


class _Sender:
    """The body-sending half of a stream: credit, a bounded queue, and the producer (source or
    target) it pauses when it cannot send.  A base class of what sends on a link (the two
    exchanges, the byte streams) rather than an object of its own: no object, ``__init__`` and
    11 stores per exchange and edge (its state starts as the class defaults below; with the
    rest of bench/results-2026-12-04.md section 24, p2 /small 340 -> 324 k instructions)."""

    link: EnvelopeLink
    sid: int
    queue: deque[bytes | memoryview] | None = None
    """Body waiting for credit or for the link (made when first needed: most exchanges
    never queue anything)."""
    queued = 0
    ending = False
    producer: IPushProducer | None = None
    producer_paused = False
    limit: ReadLimiter | None = None
    """The producer's ``limit_reads`` (an ISizedProducer's): told the credit left."""
    done = False
    send_trailers: Headers = ()
    """Trailer fields for the last frame."""
    link_held = False
    """A sized producer the link paused and has not let go again yet (its turn comes in
    EnvelopeLink._admit): it stays paused whatever the credit says."""

    def send(self, data: bytes) -> None:
        if self.done or self.ending or not data:
            return  # (nothing sent: no credit of this stream's to read in window_left below)
        rest: bytes | memoryview = data
        if not self.queue and not self.link.paused:
            rest = self._send_now(data)
            if not rest:
                if self.limit is not None:
                    self._sized_sent()
                return
        if self.queue is None:
            self.queue = deque()
        self.queue.append(rest)
        self.queued += len(rest)
        self.update()

    def send_pipe(self, pipe: IBodyPipe, size: int) -> None:
        """``send(pipe.take(size))``, with what the credit allows now spliced to the link's
        socket (the link takes pipes: ``EnvelopeLink.splices``)."""
        if self.done or self.ending:
            pipe.take(size)
            return
        link = self.link
        if not self.queue and not link.paused:
            conn = link.connection
            head, allowed = conn.data_head_within(self.sid, size, conn.data_chunk)
            if allowed:
                link.splice_parts(head, pipe, allowed)
                size -= allowed
            if not size:
                if self.limit is not None:
                    self._sized_sent()
                return
        self.send(pipe.take(size))

    def _sized_sent(self) -> None:
        """All of a sized producer's read went: its next read fits the credit left, or it
        waits.  The credit left: data_head_within's (not a send_window call per pod read)."""
        conn = self.link.connection
        window = conn.window_left
        if window < conn.send_floor:
            self.update()
        else:
            # (At most a frame: a pod's splice of more would take the rest as bytes.)
            chunk = conn.data_chunk
            self.limit(self.producer, window if window < chunk else chunk)  # type: ignore[misc]

    def finish(self) -> None:
        if self.done or self.ending:
            return
        self.ending = True
        self.flush()

    def _send_now(self, data: bytes | memoryview) -> bytes | memoryview:
        """Send what the window allows; return the rest."""
        link = self.link
        conn = link.connection
        chunk = conn.data_chunk
        while data:
            head, allowed = conn.data_head_within(self.sid, len(data), chunk)
            if not allowed:
                break
            if allowed < len(data):
                # Views, not slices: a piece cut by the window or the chunk size is not
                # copied (0.2 of the sending edge's 0.3 copies per byte left, callgrind).
                view = data if type(data) is memoryview else memoryview(data)
                piece: bytes | memoryview = view[:allowed]
                data = view[allowed:]
            else:
                piece, data = data, b""
            link.write_parts(head, piece)
        if type(data) is memoryview:  # (not isinstance: a builtin call per DATA frame sent)
            # A queued rest is a copy: a view would hold the whole write while the queue's
            # bound counts only the rest (VmHWM growth at 32 connections, issue 15).
            data = bytes(data)
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
            trailers = self.send_trailers
            if trailers and not link.connection.peer_takes_trailers:
                drop_trailers(trailers, f"{link.peer_name} takes no trailers (an older version)")
                trailers = ()
            link.write(link.connection.send_data(self.sid, b"", True, trailers))
        self.update()

    def update(self) -> None:
        producer = self.producer
        if producer is None:
            return
        if self.done:
            blocked = False
            window = 0
        else:
            link = self.link
            queued = self.queued
            if link.paused or self.link_held or queued >= _PENDING_BOUND:
                # Blocked whatever the credit: no send_window call (the link's pause
                # updates every sized sender it holds: edge-2 of p2 /big at 32 connections,
                # ~52 -> ~33 send_window calls per MiB, cProfile).
                blocked = True
                window = 0
            else:
                conn = link.connection
                window = conn.send_window(self.sid)
                # Out of credit, or nearly (below the floor: the peer is bound to grant
                # more): stop the producer rather than let it read what it cannot send, and
                # tell a sized one (the pod connection) the credit left, so that its next
                # read fits it: a read cut by the credit waited in the queue, one per stream
                # (p2 /big at 32 connections: 32 x ~62 KiB on edge-2, issue 15; see results
                # 2026-12-04 §1).  Only for a sized producer: another (a client's request
                # body) keeps the old rule, and so does a stream whose end is due (its
                # credit reads 0 once sent).
                blocked = (queued > 0 and window <= 0) or (
                    window < conn.send_floor and self.limit is not None and not self.ending)
        if blocked:
            if not self.producer_paused:
                self.producer_paused = True
                producer.pauseProducing()
            return
        limit = self.limit
        if limit is not None and window:
            chunk = self.link.connection.data_chunk
            limit(producer, window if window < chunk else chunk)
        if self.producer_paused:
            self.producer_paused = False
            producer.resumeProducing()

    def setProducer(self, producer: IPushProducer) -> None:
        """The producer of the body this side sends (IRequestBody's, IResponder's and
        IByteStream's ``setProducer``).  One whose body is over already is not kept: there
        is nothing left to pause it for."""
        if self.done:
            return
        self.producer = producer
        self.producer_paused = False
        self.limit = READ_LIMITERS[type(producer)]
        if self.queued or self.link.paused:
            self.update()
        # else a fresh stream: not blocked (its credit is the peer's initial window, twice
        # the floor at least), and no send_window lookup per /small exchange.


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


@implementer(IHeadEndedBody, IPushProducer)
class OutboundExchange(_Sender):
    """An exchange this node sends over the link: request out (its own sender), response
    back."""

    _receiver: _Receiver | None = None  # (a class default: a whole response needs none)
    _pipes: bool | None = None
    """The responder takes body pieces in a pipe (asked at the first spliceable piece)."""
    _small_left = 0
    """Small frames of this body the link may still read alone (0: not awaited)."""

    def __init__(self, link: EnvelopeLink, sid: int, responder: IResponder) -> None:
        self.link = link
        self.sid = sid
        self.responder = responder
        self.finished = False

    @property
    def receiver(self) -> _Receiver:
        """Made when first needed: a response that comes whole returns no credit."""
        receiver = self._receiver
        if receiver is None:
            receiver = self._receiver = _Receiver(self.link, self.sid)
        return receiver

    # IRequestBody: the source pushes request body (setProducer: the sender's)
    write = _Sender.send
    end = _Sender.finish  # (done already for a request without a body: link.open)

    def trailers(self, fields: Headers) -> None:
        self.send_trailers = fields

    def abort(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self.done = True
            self.link.write(self.link.connection.send_reset(self.sid, "cancelled", reason))
            self.link.forget(self.sid)

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
            # The decoder's head, shared by the frames that repeat it (an init less: −2.2 k instr.).
            head = frame.head or ResponseHead(
                frame.status, frame.reason, frame.headers, frame.content_length)
            # One dict lookup: 73 ns against 85 ns for the getattr probe (bench/complete_probe.py).
            complete = COMPLETERS[type(responder)]
            if frame.end and complete is not None:
                # The whole response in one frame: hand it over whole (one write downstream).
                # No credit to return: the connection forgot the stream at its end.
                self._done()
                complete(responder, head, frame.body)
                return
            # The response flows from here: only now has the source something to pause (a
            # whole response never gets a producer: p2 edge-1, two Python calls less).
            responder.setProducer(self)
            responder.head(head)
            if frame.body:
                responder.write(frame.body)
                self.receiver.delivered(len(frame.body))
            if frame.end:
                self._done()
                responder.end()
            elif (head.content_length is not None and head.content_length >= AWAIT_MIN
                    and self.link.splices):
                self._await()
        elif type(frame) is Data:
            assert isinstance(frame, Data)
            data = frame.data
            if data:
                # A view of the link's read where the responder takes one (no copy).
                write_parts(responder, [data])
                self.receiver.delivered(len(data))
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
            self.flush()

    def on_data_run(self, run: list[Data]) -> None:
        """Consecutive DATA frames of this stream from one read of the link (a large body
        comes 2-3 per read, pieces of frames cut by the reads among them), only the last
        one may end it: one write of them all (views of the read), one credit update."""
        if len(run) == 1:
            data = run[0].data
            parts = [data] if data else []
            size = largest = len(data)
        else:
            # A loop, not a list comprehension and sum(map(len)): a Python call and two
            # builtin calls less per run of frames.
            parts = []
            size = largest = 0
            for frame in run:
                data = frame.data
                if data:
                    parts.append(data)
                    size += len(data)
                    if len(data) > largest:
                        largest = len(data)
        last = run[-1]
        if parts:
            write_parts(self.responder, parts)
            if (largest >= SPLICE_MIN and not last.end and self._pipes is not False
                    and self.link.splices):
                # A large frame read with the frames around it (a receiver behind its
                # sender): the next read looks for the next frame's head, to splice it.
                link = self.link
                link.splicing = link.piping = True
            receiver = self._receiver or self.receiver  # the property's call when needed only
            if receiver.paused:
                receiver.held += size
            else:
                # _Receiver.delivered inlined (bulk body path: one call less per read).
                window = self.link.connection.consumed(self.sid, size)
                if window:
                    self.link.write(window)
        if last.end:
            self._done()
            if last.trailers:
                hand_trailers(self.responder, last.trailers, "the source takes no trailers")
            self.responder.end()

    def takes_pipe_now(self) -> bool:
        """Whether a piece of the response body would go on to the responder through a
        pipe now (the link asks before it splices one from its socket)."""
        if self.finished:
            return False
        receiver = self._receiver
        if receiver is not None and receiver.paused:
            return False
        responder: Any = self.responder  # an IPipeResponder's (can_take_pipes said so)
        return self._takes_pipes() and bool(responder.takes_pipe_now())

    def _takes_pipes(self) -> bool:
        """Whether the responder takes body pieces in a pipe at all (asked once)."""
        pipes = self._pipes
        if pipes is None:
            pipes = self._pipes = can_take_pipes(self.responder, False)
        return pipes

    def _await(self) -> None:
        """A large body for a client that takes pipes: its link awaits it."""
        link = self.link
        awaited = link.awaited
        if (self.finished or len(awaited) >= AWAIT_STREAMS
                or link.connection.active_streams > AWAIT_STREAMS):
            # (finished: the client went away as the head reached it; a busy link's credit
            # is shared out in frames too small to splice: its streams open, not only those
            # receiving already, as at the start of a burst of requests)
            return
        if self._takes_pipes():
            self._small_left = AWAIT_SMALL_FRAMES
            awaited.add(self.sid)
            link.piping = True

    def small_frame_alone(self) -> bool:
        """Whether the link may read one more small frame of this awaited body alone."""
        left = self._small_left
        if left > 1:
            self._small_left = left - 1
            return True
        self._small_left = 0
        self.link.awaited.discard(self.sid)
        return left == 1

    def on_pipe(self, pipe: IBodyPipe, size: int, end: bool) -> None:
        """``size`` bytes of the response body waiting in ``pipe`` (spliced from the link's
        socket), the last of it when ``end``: as on_data_run, without the bytes."""
        write_pipe(self.responder, pipe, size)
        (self._receiver or self.receiver).delivered(size)  # (a call per 128-256 KiB)
        if end:
            self._done()
            self.responder.end()

    on_link_state = _Sender.flush

    def on_lost(self, reason: str) -> None:
        if not self.finished:
            self._done()
            self.responder.fail(MeshError(Reason.peer_unavailable,
                                          f"link to {self.link.peer_name} lost: {reason}"))

    def _done(self) -> None:
        self.finished = True
        if not self.done:
            # The response is over before the request body: abandon the rest of it.
            self.done = True
            self.link.write(
                self.link.connection.send_reset(self.sid, "cancelled", "response complete")
            )
        self.link.forget(self.sid)
        self.producer = None  # the source's: it points back here through the responder


@implementer(ICompletingResponder, IPipeResponder, IPushProducer)
class InboundExchange(_Sender):
    """An exchange the peer sends us: the request flows into a local target, the
    response flows back over the link (the exchange is its sender)."""

    # What a /small exchange never reads starts as class defaults (no store per exchange);
    # ``__init__`` sets what it reads.
    _receiver: _Receiver | None = None
    corked: ResponseHead | None = None
    cork_body: list[bytes]
    """The body held with a corked head (made by ``head``)."""
    cork_size = 0
    target_paused = False
    held: deque[bytes] | None = None
    """Request body that arrived while the target was paused.  The peer may lawfully
    send all the credit it holds (up to ``Limits.max_window``) before it learns of a pause,
    which is more than a target may have to keep (the pod client refuses a source that
    keeps writing past a pause: 503).  So the stream keeps it and delivers it on resume:
    bounded by the credit it granted (the connection refuses a frame beyond it), and no
    credit goes back for it until the target took it."""
    held_end = False
    """The peer's end came after held body: it goes to the target after that body."""
    request_trailers: Headers = ()

    def __init__(self, link: EnvelopeLink, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.body: IRequestBody | None = None
        self.headed = False
        self.finished = False
        self.request_ended = False

    @property
    def receiver(self) -> _Receiver:
        """Made when first needed: a request without a body returns no credit."""
        receiver = self._receiver
        if receiver is None:
            receiver = self._receiver = _Receiver(self.link, self.sid)
        return receiver

    def _release(self) -> None:
        """Forget the stream once both directions are over (a response may end before
        its request body: the peer may still send that body, or reset it)."""
        if self.finished and self.done and self.request_ended:
            self.link.forget(self.sid)
            # Both directions are over: break the cycles with the target's objects (they
            # point back here), so that reference counting frees the exchange.
            self.body = None
            self.producer = None

    def request_end(self, head_ended: bool = False) -> None:
        """The peer's request is over.  ``head_ended``: its head was the whole request and
        the target's body took it so (IHeadEndedBody): no end for it (a GET: one Python
        call less per exchange on edge-2).  (Not called for a GET still unanswered when
        routed: the link notes ``request_ended`` itself, all this would do.)"""
        if self.held:
            self.held_end = True  # after the held body
            return
        self.request_ended = True
        body = self.body
        if body is not None and not head_ended:
            if self.request_trailers:
                hand_trailers(body, self.request_trailers, "the target takes no trailers")
            body.end()
        if self.finished:  # else the response's end releases (no call per exchange here)
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
        self.cork_body = []
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
                self.sid, head.status, head.reason, head.headers, head.content_length,
                body[:allowed], False,
            )
        )
        if allowed < len(body):
            self.send(body[allowed:])

    def write(self, data: bytes) -> None:
        if self.finished:
            return
        if self.corked is not None:
            if self.cork_size + len(data) <= _CORK_LIMIT:
                self.cork_body.append(data)
                self.cork_size += len(data)
                return
            self.uncork()
        self.send(data)

    def can_take_pipes(self, from_pod: bool) -> bool:
        return self.link.splices and not self.finished

    def takes_pipe_now(self) -> bool:
        # Nothing waits (in this stream's queue, with a corked head, in the link's buffer):
        # else the piece would wait too, as bytes, after a splice into the pipe and a read
        # out of it (p2 /big at 32 connections: edge-2 64.6 -> 75.4 syscalls per MiB).
        link = self.link
        return (not self.finished and self.corked is None and not self.queue
                and not link.paused and not buffered(link.transport))

    def write_pipe(self, pipe: IBodyPipe, size: int) -> None:
        """``write`` of body bytes waiting in a pipe (a pod's, spliced)."""
        if self.finished:
            pipe.take(size)
            return
        if self.corked is not None:
            self.write(pipe.take(size))  # held with the head, as bytes
            return
        self.send_pipe(pipe, size)

    def trailers(self, fields: Headers) -> None:
        """Trailer fields of the response: on the stream's last DATA frame."""
        if not self.finished:
            self.send_trailers = fields

    def end(self) -> None:
        if self.finished:
            return
        self.finished = True
        head = self.corked
        if head is not None:
            conn = self.link.connection
            if self.cork_size <= conn.send_window(self.sid) and not self.send_trailers:
                body = b"".join(self.cork_body)
                self.corked = None
                self.cork_body = []
                self._send_whole(head, body)
                return
            self.uncork()
        self.finish()
        self._release()

    def complete(self, head: ResponseHead, body: bytes) -> None:
        """A whole response at once: one frame when the window allows."""
        if self.finished or self.headed:
            return
        link = self.link
        conn = link.connection
        size = len(body)
        # The peer's initial window first (see Connection.peer_window): no send_window
        # call for a small response (one Python call less per exchange on edge-2 of p2).
        if size <= _CORK_LIMIT and not link.paused and (
                size <= conn.peer_window or size <= conn.send_window(self.sid)):
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
        self.done = True
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
        self.done = True
        self.link.write(self.link.connection.send_reset(self.sid, error.reason.code, error.detail))
        self.link.forget(self.sid)

    # from the link
    def on_frame(self, frame: Frame) -> None:
        body = self.body
        if body is None:
            return
        if type(frame) is Data:
            assert isinstance(frame, Data)
            data = frame.data
            if data:
                self.request_body(data if type(data) is bytes else bytes(data))
            if frame.end:
                self.request_trailers = frame.trailers
                self.request_end()
        elif type(frame) is Reset:
            assert isinstance(frame, Reset)
            self.held = None
            self.held_end = False
            answered = self.finished
            self.finished = True
            self.done = True
            self.link.forget(self.sid)
            if not self.request_ended or not answered:
                # The peer gave up (a timeout, its client gone): the target stops too, also
                # when the request body was complete (the pod connection is cancelled).
                self.request_ended = True
                body.abort(f"peer reset: {frame.code}")
        elif type(frame) is Window:
            self.on_link_state()

    def on_link_state(self) -> None:
        self.flush()
        self._release()

    def on_lost(self, reason: str) -> None:
        if not (self.finished and self.request_ended):
            # Whatever is unfinished, the request body or the response, the target stops.
            self.finished = self.request_ended = True
            self.done = True
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
