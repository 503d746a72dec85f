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
from functools import partial
from socket import MSG_PEEK, SO_RCVLOWAT, SOL_SOCKET
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..exchange import (
    HEAD_ENDED,
    IBodyPipe,
    IByteStream,
    IRequestBody,
    IResponder,
    IStreamSource,
    MeshError,
    Reason,
    RequestHead,
)
from ..wire import (
    DATA_HEAD_MAX,
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
    data_head_at,
    encode_ping,
    encode_refusal,
    encode_request,
)
from . import _io
from ._halves import _NO_BODY, InboundExchange, OutboundExchange
from ._io import (
    LARGE_BUFFER,
    PLAIN_TCP,
    SPLICE_MIN,
    SPLICE_PIPE_SIZE,
    Queue,
    buffered,
    direct_reads,
    gathered_writes,
    pooled_reads,
    sends_at_once,
    socket_under,
    splice_after,
    splice_pipe,
    use_large_buffer,
    write_all_now,
    write_now,
)
from ._wheel import TimerWheel, WheelTimer, wheel_for

if TYPE_CHECKING:
    from ._halves import _Sender
    from ._linkstreams import _LinkStream

_COALESCE_LIMIT = 64 * 1024
"""Frames held for the end of the reactor turn before they are written anyway."""
_BULK_MIN = 16 * 1024
"""A DATA frame's body at least this large is written with its head as it is (sendmsg),
never copied into the turn's buffer: pod reads of 16-64 KiB were copied there (and
joined again) before, 0.1 copies per byte of edge-2 under valgrind (bench/tls_cost.py)."""
_DIRECT_PER_TURN = 128 * 1024
"""Bulk body bytes a link sends straight to the socket per reactor turn (one DATA frame);
beyond that they go through Twisted's buffer, whose threshold pauses every stream's
producer.  Without that limit the kernel's socket buffer took everything, nothing paused,
and edge-2's VmHWM growth at 32 connections of 1 MiB bodies was +4.7-8.3 MiB instead of
+2.4-3.3 (bench/results-2026-12-03.md section 7)."""
_ADMIT_BYTES = _DIRECT_PER_TURN + LARGE_BUFFER
"""What the sized producers a link lets go at once may read together: what the link takes in
a turn before Twisted's buffer pauses it again (see EnvelopeLink._admit)."""
_ADMIT_READ = 64 * 1024
"""What one sized producer let go is counted to read at most (a pod connection's read with
32 busy ones: READ_BUDGET / 32, transports/_upconnection.py), or its credit if less."""
_REFUSAL_GRACE = 5.0
"""Seconds a refused peer has to read the GOAWAY before its connection is aborted."""

_LOWAT_MOST = 256 * 1024
"""While a large DATA frame's rest comes slower than it is taken, the link's socket is
readable only once this much more of it is there (SO_RCVLOWAT; or its last bytes, once all
are), or what comes in _LOWAT_DELAY at the rate the last piece came: edge-1 of a 4 MiB
transfer over a 100 Mbit/s link woke ~90 times, now ~25 (bench/results-2026-12-07.md §2)."""
_LOWAT_LEAST = 64 * 1024
"""A frame whose rest is smaller than this when a read ends inside it is read as it comes,
unless it is paced already: a mark would save a wake-up or two for two setsockopt calls (at
32 connections a link's reads end inside frames of 42-64 KiB, and come fast)."""
_LOWAT_DELAY = 0.02
"""How much later a client gets a large body's bytes than it would at each packet, at the
rate the last piece came (if it slows, the link's next heartbeat ends the wait; the body's
end is never later)."""
_TLS_HOLDS = 16 * 1024 + 256
"""What a TLS layer between the socket and the link may hold of the bytes that came (a
record not yet whole): the frame's rest still to come in the socket is at least its
plaintext less this."""


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


class EnvelopeLink(Protocol):
    """One envelope connection, either side."""

    # Its state in slots, as the front's (_front.HTTPFrontProtocol): past 30 names in the
    # instance dict, CPython 3.11 leaves every self.method lookup unspecialized.
    __slots__ = (
        "_admitted",
        "_at_once",
        "_bulk",
        "_corked",
        "_direct",
        "_end_of_turn",
        "_held",
        "_last_heard",
        "_out",
        "_out_size",
        "_ping_sent",
        "_queue",
        "_ready_waiters",
        "_refusal_timer",
        "_timer",
        "_turn_call",
        "_turn_hook",
        "_turn_queued",
        "awaited",
        "closed",
        "connection",
        "draining",
        "exchanges",
        "gathering",
        "handler",
        "handshake_timeout",
        "heartbeat_interval",
        "heartbeat_timeout",
        "hello_extra",
        "hello_settings",
        "lowat",
        "lowat_slack",
        "lowat_socket",
        "node",
        "paused",
        "piping",
        "reactor",
        "role",
        "rtt",
        "splice_bodies",
        "splices",
        "splicing",
        "wheel",
    )

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
        splice: bool = True,
    ) -> None:
        self.reactor = reactor
        self.wheel = wheel if wheel is not None else wheel_for(reactor)
        """Drives the handshake deadline and the heartbeats (one reactor timer per node)."""
        self.handler = handler
        self.node = node
        self.role = role
        self.connection = Connection(client=client, limits=limits)
        self.gathering = self.connection.decoder
        """Its frame decoder, where ``pooled_reads`` sees a DATA body being gathered."""
        self.exchanges: dict[int, OutboundExchange | InboundExchange | _LinkStream] = {}
        self.paused = False
        self.closed = False
        self.splice_bodies = splice
        """Pod bodies may go to this link's socket by ``os.splice``, never through the
        process, where the transport is plain TCP (``--no-splice``: not)."""
        self.splices = False
        """They do: ``splice_bodies``, a plain TCP transport and a pipe (connectionMade).
        Then large DATA bodies that arrive for a client that takes pipes are spliced from
        this link's socket to the client's too (``read_piped``)."""
        self.piping = False
        """The next read is read_piped's: a DATA body is being spliced (``splicing``) or
        awaited (``awaited``)."""
        self.splicing = False
        """A DATA body is being spliced: the next read takes the frame's rest (however
        short), or looks for the next frame's head."""
        self.lowat = 1
        """The socket's SO_RCVLOWAT: raised while a large frame's rest comes (_pace_reads)."""
        self.lowat_socket: Any = None
        """The TCP socket the link's bytes come from (under its TLS layer too), if any."""
        self.lowat_slack = 0
        """What the layers between that socket and the link may hold (_TLS_HOLDS)."""
        self.awaited: set[int] = set()
        """Streams whose large response bodies (AWAIT_MIN) are under way to clients that
        take pipes: while there are any, every read first looks for the next frame's head
        (``piping``), and their small DATA frames are read alone, so that the large ones
        behind them are spliced rather than read whole with them."""
        self.handshake_timeout = handshake_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._timer: WheelTimer | None = None
        self._last_heard = 0.0
        self._ping_sent: dict[int, float] = {}
        self.rtt: float | None = None
        self._ready_waiters: list[Deferred[EnvelopeLink]] = []
        self._corked: list[InboundExchange] = []
        self._held: deque[_Sender] = deque()
        """Senders of sized producers the link paused, in the order they let go (_admit)."""
        self._admitted = False
        """Some were let go this turn: they read in the next one (see _admit_more)."""
        self._out: list[bytes | memoryview] = []
        """Frames written during this reactor turn: they leave together at its end."""
        self._out_size = 0
        self._direct = 0
        """Bulk bytes sent straight to the socket this turn (see _DIRECT_PER_TURN); over a
        transport that sends at once, since the last send of held frames (write_parts)."""
        self._bulk = False
        """``_out`` holds bulk DATA bodies (not counted in ``_out_size``): sent as parts."""
        self._at_once = False
        """The transport sends every write at once, with no buffer of its own where writes
        wait for one gathered send (a link's TLS layer): see write_parts."""
        self._queue: Queue | None = None
        """The plain TCP transport's writeSequence without Twisted's layers (gathered_writes):
        bulk frames past the turn's budget wait there."""
        self._turn_call: IDelayedCall | None = None
        self._turn_queued = False
        self._end_of_turn: Callable[[], None] = partial(self.flush, True)
        """What _queue_end_of_turn queues: the end of the turn's flush, called straight from
        the reactor's C call (no method in between: a Python call less per link and turn)."""
        # edgemesh's reactor runs the end of a turn from a list, with no DelayedCall
        # (-44 k instructions per /small exchange on path 2, both edges, -6 %: its
        # turns skip the timer bookkeeping too); other reactors: callLater(0).
        self._turn_hook: Callable[[Callable[[], object]], None] | None = getattr(
            reactor, "callAtEndOfTurn", None)
        self.draining = False
        """No new exchanges: close once those in flight are over."""
        self._refusal_timer: IDelayedCall | None = None
        self.hello_settings: dict[str, int] = {}
        """More settings for our hello (set before the connection is made)."""
        self.hello_extra: Callable[[], dict[str, int]] | None = None
        """Settings worked out when the hello leaves (what the edge holds by then)."""

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
        self.splices = (self.splice_bodies and type(transport) in PLAIN_TCP
                        and splice_pipe() is not None)
        pooled_reads(transport, self if self.splices else None)
        self._queue = gathered_writes(transport)
        self._at_once = sends_at_once(transport)
        self.lowat_socket = socket_under(transport)
        self.lowat_slack = 0 if type(transport) in PLAIN_TCP else _TLS_HOLDS
        direct_reads(self)
        transport.registerProducer(self, True)
        self._last_heard = self.reactor.seconds()
        settings = self.hello_settings
        if self.hello_extra is not None:
            settings = {**settings, **self.hello_extra()}
        self.write(self.connection.hello(self.node, self.role, settings))
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
            elif not self._turn_queued:
                self._queue_end_of_turn()

    def write_parts(self, head: bytes, data: bytes | memoryview) -> None:
        if self.closed:
            return
        if len(data) < _BULK_MIN:
            self.write(head + data)
            return
        # Bulk body data: no copy into the turn's buffer, nor into one for the socket; the
        # frames held so far leave in the same sendmsg (one system call, order kept).
        out = self._out
        assert self.transport is not None
        if self._direct >= _DIRECT_PER_TURN:
            if out:
                self.flush()
            if not self._at_once:
                queue = self._queue
                if queue is not None:
                    # One call, not Twisted's writeSequence layers (~10 Python calls per
                    # frame past the budget, ~10 such frames per MiB on edge-2 of p2 /big
                    # at 32 connections: with flush's below, -100 calls per MiB, cProfile).
                    queue((head, data))
                else:
                    self.transport.writeSequence(
                        (head, data if type(data) is bytes else bytes(data)))
                return
            # A TLS layer has no buffer where the frames past the budget would wait for one
            # gathered send, as Twisted's does for a plaintext link: it sent each by itself.
            # What was held has left (one sendmsg); hold afresh, to the next budget or the
            # end of the turn (edge-2 of p2 /big mTLS, 32 connections: 12.7 -> 6.8 link
            # sends per MiB).
            out = self._out
            self._direct = 0
        self._direct += len(data)
        if not self._turn_queued:
            self._queue_end_of_turn()
        if type(data) is bytes or type(data.obj) is bytes:  # type: ignore[union-attr]
            # Held to the end of the turn with the frames before it, as they are: the DATA
            # frames of the turn's pod reads leave in one sendmsg (edge-2 of p2 /big at 32
            # connections: sendmsg 8.8 -> 5.9 per MiB).  Only bytes and views of bytes: a
            # view of a pooled read (a link's) dies with its read.
            out.append(head)
            out.append(data)
            self._bulk = True
            return
        if out:
            self._out = []
            self._out_size = 0
            self._bulk = False
            write_all_now(self.transport, (*out, head, data))
        else:
            write_all_now(self.transport, (head, data))

    def splice_parts(self, head: bytes, pipe: IBodyPipe, size: int) -> None:
        """``write_parts(head, pipe.take(size))``, with the body spliced from the pipe to
        the socket as far as it takes it (``splices``: a plain TCP transport): the frames
        held this turn go first; what the socket does not take waits as bytes."""
        if self.closed:
            pipe.take(size)
            return
        if self._out:
            self.flush()
        # Not counted in the turn's _direct budget: that bounds what the process holds, and
        # spliced bytes never are in the process.
        rest = splice_after(self.transport, head, pipe, size)
        if rest:
            queue = self._queue
            if queue is not None:
                queue(rest)
            else:
                self.transport.writeSequence(rest)  # type: ignore[union-attr]

    def flush(self, turn_over: bool = False) -> None:
        """Write what this turn has held so far.  ``turn_over``: the reactor's turn is over
        (the call _queue_end_of_turn queued): the turn's own work comes first, held producers'
        turns and corked heads."""
        if turn_over:
            self._turn_call = None
            self._turn_queued = False
            self._direct = 0
            if self._held:
                self._admit_more()
            if self._corked:
                corked, self._corked = self._corked, []
                for exchange in corked:
                    exchange.uncork()
        out = self._out
        if not out or self.closed:
            return
        self._out = []
        self._out_size = 0
        assert self.transport is not None
        if self._bulk:
            self._bulk = False
            if self._at_once:
                # The TLS layer takes views as they are (write_all_now would join them).
                self.transport.writeSequence(out)  # type: ignore[arg-type]
                return
            # What the socket does not take waits in the queue (one call), its bytes not
            # joined with the views (which it copies, as the join did).
            write_all_now(self.transport, out, self._queue)
            return
        write_now(self.transport, out[0] if len(out) == 1 else b"".join(out))

    def _queue_end_of_turn(self) -> None:
        self._turn_queued = True
        hook = self._turn_hook
        if hook is not None:
            hook(self._end_of_turn)
        else:
            self._turn_call = self.reactor.callLater(0, self._end_of_turn)

    def dataReceived(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        was_ready = self.connection.peer is not None  # .ready, without a property call
        try:
            frames = self.connection.receive(data)
        except ProtocolError as error:
            self.log.warn(
                "closing link with {peer}: protocol error: {error}",
                peer=self.peer_name, error=str(error),
            )
            self.close_now(f"protocol error: {error}")
            return
        now = self.reactor.seconds()
        need = self.gathering.body_need
        if need:
            # The rest of a large frame is on its way: read it in large pieces (not after a
            # frame's head read alone: read_piped paces the splice that follows).
            if len(data) > DATA_HEAD_MAX:
                self._pace_reads(len(data), need - self.lowat_slack, now - self._last_heard)
        elif self.lowat != 1:
            self._set_lowat(1)
        self._last_heard = now
        if self.connection.outbox:  # rarely (a pong): no call otherwise
            self.write(self.connection.data_to_send())
        # The frames of one read are a batch: what they send to pods and clients goes as
        # they make it (write_now holds none meanwhile), one after the other in this call,
        # not at the turn's end (p2 /small held to the turn's end: both edges' CPU per
        # request +1.4-2.4 µs; results 2026-12-07 §7).
        before = _io.sends_now
        _io.sends_now = True
        try:
            count = len(frames)
            index = 0
            while index < count:
                frame = frames[index]
                index += 1
                if self.closed:  # a frame's handler may have closed the link
                    return  # type: ignore[unreachable]  # (mypy keeps the check above's narrowing)
                try:
                    if type(frame) is Data:
                        exchange = self.exchanges.get(frame.stream)
                        if type(exchange) is OutboundExchange:
                            # A large body comes 1-3 DATA frames per read (pieces of frames cut
                            # by the reads among them): one call, one send to the client and
                            # one credit update for them all.
                            stop = index
                            if not frame.end and index < count:
                                stop = _run_end(frames, index, frame.stream)
                            # (No typing.cast: a Python call per run at runtime.)
                            run: list[Data] = frames[index - 1 : stop]  # type: ignore[assignment]
                            index = stop
                            exchange.on_data_run(run)
                            was_ready = True
                            continue
                    # _handle's dispatch of the two head frames and of credit, inline (one
                    # Python call less per exchange and edge; callgrind p2 389 -> 385 k per
                    # exchange; a WINDOW per ~75 KiB on edge-2 of p2 /big at 32 connections).
                    if type(frame) is Response or type(frame) is Window:
                        answered = self.exchanges.get(frame.stream)
                        if answered is not None:
                            answered.on_frame(frame)
                    elif type(frame) is Request:
                        self._inbound(frame)
                    else:
                        self._handle(frame, was_ready)
                except Exception:  # noqa: BLE001 -- one bad exchange must not take the link down
                    # A bug in one exchange must not take the link (or the reactor) down.
                    self.log.failure("unexpected error handling {frame}",
                                     frame=type(frame).__name__)
                was_ready = True
        finally:
            _io.sends_now = before

    def read_piped(self) -> object:
        """Before each read of the socket (``pooled_reads``): the rest of a large DATA body
        whose client takes pipes is spliced into the pipe and on to the client's socket,
        never copied into the process (True; the connection charges it as a DATA frame's).
        Once one is, the frame's rest is too, and the next frame's head is peeked at (also
        after a read passed a large frame on whole: OutboundExchange.on_data_run sets
        ``splicing``; and while a large body is ``awaited``): when it starts another such
        body it is read alone, and that body spliced; a small frame of an awaited body is
        read alone.  The few bytes of a frame that came with a read go first.  False: the
        transport reads as usual.  (edge-1 of a p2 4 MiB transfer: −18 % CPU, medians of 16
        paired runs; bench/results-2026-12-06.md §2.)"""
        connection = self.connection
        heard = self._last_heard
        splicing = self.splicing
        self.splicing = False
        awaited = self.awaited
        # Looking goes on while a large body is under way to a client that takes pipes.
        self.piping = bool(awaited)
        exchange: OutboundExchange | None = None
        peeked_sid = 0
        decoder = connection.decoder
        if not decoder.body_need:
            if decoder.mid_frame:
                # The socket's next bytes are the rest of a frame the last read cut: never
                # peeked at as a head (a pod's body bytes can look like one, naming another
                # client's stream).
                return False
            transport: Any = self.transport
            try:
                peeked = transport.socket.recv(DATA_HEAD_MAX, MSG_PEEK)
            except BlockingIOError:
                self.splicing = splicing
                self.piping = True  # (nothing came yet: look again at the next read)
                return None
            except OSError:
                return False  # the transport's read meets it
            peeked_sid, head_size, body_size = data_head_at(peeked)
            if not head_size:
                return False
            if body_size < SPLICE_MIN:
                # A small frame of an awaited body is read alone: a read as usual would take
                # the large frames behind it whole, into the process (edge-1 of a p2 4 MiB
                # transfer copied ~40 % of the body so).
                if peeked_sid not in awaited:
                    return False
                return self._read_frame_alone(peeked_sid, head_size + body_size)
            exchange = self._piped_exchange(peeked_sid)
            if exchange is None:
                return False
            try:
                head = transport.socket.recv(head_size)  # (peeked: it is all there)
            except OSError:
                return CONNECTION_LOST
            self.dataReceived(head)
            if self.closed:
                return True
        sid, need = connection.body_to_pipe()
        # A frame's short rest is read as before (as a pod's short reads), unless the
        # frame is being spliced already.
        if not need or (need < SPLICE_MIN and not splicing):
            return False
        if exchange is None or sid != peeked_sid:
            # (Asked already when the head was read alone: its stream's, which the decoder
            # must now be gathering; checked all the same.)
            exchange = self._piped_exchange(sid)
            if exchange is None:
                return False
        pipe = splice_pipe()
        assert pipe is not None  # (splices: there is one)
        # A few bytes of the frame that came with the last read (under 4 KiB, held in the
        # decoder) go first, through the pipe: a read that ended just past a frame's head
        # (reads of 512 KiB, frames of 256 KiB: every one, for a receiver behind).
        held = connection.held_piece(sid)
        if held:
            pipe.put(held)
        moved = 0
        try:
            moved = pipe.fill_from(
                self.transport.fileno(),  # type: ignore[union-attr]
                need if need < SPLICE_PIPE_SIZE else SPLICE_PIPE_SIZE)
        except BlockingIOError:
            pass  # nothing more yet: the held piece goes alone, if there is one
        except OSError:
            pipe.discard()
            return CONNECTION_LOST
        else:
            if not moved:
                pipe.discard()
                return CONNECTION_DONE
            self._last_heard = self.reactor.seconds()
        end = False
        if held or moved:
            if moved:
                end = connection.body_piped(sid, moved)
                if moved < need or self.lowat != 1:
                    self._pace_reads(moved, need - moved, self._last_heard - heard)
            try:
                exchange.on_pipe(pipe, len(held) + moved, end)
            except Exception:  # noqa: BLE001 -- one bad exchange must not take the link down
                self.log.failure("unexpected error handling spliced data")
            finally:
                if pipe.held:
                    pipe.discard()
        # The frame's rest, or (its end, not its stream's) the next frame's head, likely
        # more of the body.
        self.splicing = not end
        self.piping = not end or bool(awaited)
        return True if moved else None

    def _pace_reads(self, got: int, rest: int, since: float) -> None:
        """The socket is readable again once a larger piece of the frame's rest is there,
        not at each packet (``read_lowat``)."""
        lowat = read_lowat(got, rest, since, self.lowat != 1)
        if lowat != self.lowat:
            self._set_lowat(lowat)

    def _set_lowat(self, lowat: int) -> None:
        sock = self.lowat_socket
        if sock is not None:
            self.lowat = lowat
            sock.setsockopt(SOL_SOCKET, SO_RCVLOWAT, lowat)

    def _read_frame_alone(self, sid: int, size: int) -> object:
        """Read the next frame, a small DATA frame of awaited stream ``sid`` (``size``
        bytes, prefix included), alone: True, or as read_piped answers."""
        exchange = self.exchanges.get(sid)
        if type(exchange) is not OutboundExchange or not exchange.small_frame_alone():
            return False
        transport: Any = self.transport
        try:
            data = transport.socket.recv(size)  # (what came of it: the decoder keeps a part)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self.dataReceived(data)
        return True

    def _piped_exchange(self, sid: int) -> OutboundExchange | None:
        """The exchange of stream ``sid`` when its body would go on through a pipe now."""
        exchange = self.exchanges.get(sid)
        if type(exchange) is OutboundExchange and exchange.takes_pipe_now():
            return exchange
        return None

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
        if request.body or not request.end:
            # Only a request with a body has a flow to pause: a bodiless one (a GET) gives its
            # target no producer, as the front does (edge-2 of p2: two Python calls less).
            body.setProducer(exchange)
        if request.body:
            exchange.request_body(request.body)
        if request.end:
            head_ended = request.content_length == 0 and HEAD_ENDED[type(body)]
            if head_ended and not request.body and not exchange.finished:
                # A GET whose answer is still to come: request_end would only note that the
                # request is over (edge-2 of p2: a Python call less per exchange).
                exchange.request_ended = True
            else:
                exchange.request_end(head_ended)

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
        # (A queued end-of-turn hook still runs: it finds the link closed.)
        self._turn_queued = False
        self._corked = []
        self._held.clear()
        self._out = []
        self._out_size = 0
        self._bulk = False
        exchanges, self.exchanges = self.exchanges, {}
        self.awaited.clear()
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
        # Lazily for most: a stream that tries to send while the link is paused queues its
        # piece and pauses its own producer then.  Pausing every stream's producer
        # here would cost a pause/resume (epoll changes) per stream per buffer-full.
        # But a sized producer (a pod connection) now: else each one's next read waits
        # whole in its queue (edge-2 of p2 /big at 32 connections, see results 2026-12-04 §1).
        # Its pause is cheap (_UpstreamConnection.pause_reading): the connections the link
        # holds but has not let go again do not read, so they cost no epoll change.
        self.paused = True
        held = self._held
        for sender in self.exchanges.values():
            if sender.limit is not None and not sender.link_held and not sender.done:
                sender.link_held = True
                held.append(sender)
                if not sender.producer_paused:
                    sender.update()

    def resumeProducing(self) -> None:
        self.paused = False
        for sender in list(self.exchanges.values()):
            if (sender.queue or (sender.producer_paused and not sender.link_held)
                    or (sender.ending and not sender.done)):
                sender.on_link_state()
        if self._held:
            self._admit()

    def _admit(self, room: int = _ADMIT_BYTES) -> None:
        """Let the sized producers the link holds go, oldest first, until what they may read
        together is ``room``: by default what the link takes before it pauses again.  Letting
        all 32 pod connections of p2 /big go at once made each stop again at its next read
        event before most of them had read: 122 epoll changes per MiB on edge-2, about 3
        pause/resume pairs per read (bench/results-2026-12-04.md section 6)."""
        held = self._held
        conn = self.connection
        while held and room > 0 and not self.paused:
            sender = held.popleft()
            sender.link_held = False
            if sender.done or sender.producer is None:
                continue
            sender.update()
            if not sender.producer_paused:
                self._admitted = True
                room -= min(conn.send_window(sender.sid), _ADMIT_READ)
        if held and not self._turn_queued:
            self._queue_end_of_turn()

    def _admit_more(self) -> None:
        """At the end of a turn, with producers still held: none more if some were let go
        this turn (they have yet to read), a batch if the link sent all it was given (its
        buffer is empty), else one, so that every held one gets its turn however busy the
        others keep the link."""
        if self._admitted:
            self._admitted = False
            if not self._turn_queued:
                self._queue_end_of_turn()  # look again after the next turn
        elif not self.paused:
            self._admit(_ADMIT_BYTES if not buffered(self.transport) else 1)

    def stopProducing(self) -> None:
        self.close_now("transport stopped")

    # --- heartbeats --------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.reactor.seconds()
        if self.lowat != 1:
            # A large frame's rest that came slower than its mark counted on is read as it
            # comes: whatever came by now proves the peer alive before its silence is judged.
            self._set_lowat(1)
        if not self.connection.ready:
            self.log.warn("closing link: no hello within {timeout}s",
                          timeout=self.handshake_timeout)
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
        hops: int | None = None,  # the count sent (LinkTarget's: head.hops + 1); None: head.hops
    ) -> IRequestBody:
        """Send a request to the peer.  A request without a body goes as one frame."""
        conn = self.connection
        if conn.exhausted or self.closed:
            # Out of stream ids (after 2**30 exchanges): finish what is in flight, then
            # close, so that the link is made anew; this exchange goes elsewhere.
            self.draining = True
            self._close_if_drained()
            responder.fail(
                MeshError(Reason.peer_unavailable, f"link to {self.peer_name} is closing",
                          unsent=True)
            )
            return _NO_BODY
        no_body = head.content_length == 0
        sid = conn.open_stream(sent_end=no_body)
        exchange = OutboundExchange(self, sid, responder)
        self.exchanges[sid] = exchange
        self.write(
            encode_request(
                sid, no_body, head.method, head.path, head.authority, head.headers,
                head.content_length, head.client, service, port, endpoint, b"",
                (head.hops if hops is None else hops) if conn.peer_hops else None,
            )
        )
        if no_body:
            exchange.done = True
        return exchange

    def cork(self, exchange: InboundExchange) -> None:
        self._corked.append(exchange)
        if not self._turn_queued:
            self._queue_end_of_turn()

    def forget(self, sid: int) -> None:
        self.exchanges.pop(sid, None)
        if self.awaited:  # (however the exchange ended: done, aborted, reset)
            self.awaited.discard(sid)
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


def _run_end(frames: list[Frame], start: int, stream: int) -> int:
    """Where the run of DATA frames of ``stream`` that goes on at ``frames[start]`` ends
    (after its first frame that ends the stream)."""
    count = len(frames)
    while start < count:
        frame = frames[start]
        if type(frame) is not Data or frame.stream != stream:
            break
        start += 1
        if frame.end:
            break
    return start



def read_lowat(got: int, rest: int, since: float, paced: bool = False) -> int:
    """The low-water mark of a link's socket after ``got`` bytes of a large DATA frame came
    in the ``since`` seconds after its last read, with ``rest`` surely on their way (the
    sender wrote the frame whole, so they come): _LOWAT_MOST, or the rest when less, or what
    comes in _LOWAT_DELAY at this rate when that is less; 1 (every byte) once the frame is
    in, or for a rest under _LOWAT_LEAST unless the frame is ``paced`` already (its tail
    too: a frame's last 64 KiB is many wake-ups on a slow link)."""
    if rest <= 0 or (rest < _LOWAT_LEAST and not paced):
        return 1
    lowat = rest if rest < _LOWAT_MOST else _LOWAT_MOST
    if since * lowat > got * _LOWAT_DELAY:  # it would take longer at this rate
        lowat = int(got * _LOWAT_DELAY / since) or 1
    return lowat


def ready_or_lost(link: Any) -> Deferred[object]:
    """ClientService's prepareConnection for links: waits for the hello.  A link lost
    during its hello counts as a connection made and then lost (ClientService has no
    transition for a disconnect after a failed prepareConnection); whoever gets such a
    link from whenConnected must check ``link.closed``."""
    waiting: Deferred[object] = link.when_ready()
    return waiting.addErrback(lambda _: None)
