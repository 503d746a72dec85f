"""
One persistent HTTP/1.1 connection of the pooled upstream target (see _upstream):
responses are parsed with httptools (llhttp).

A response whose head, body and end all come in one read (the common small one)
goes to the responder in one call, ``complete(head, body)``, when it offers that
optional method (the front, the guard, the links do); otherwise, and for anything
longer, as ``head``, ``write`` and ``end``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)
from twisted.internet import main
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    Headers,
    MeshError,
    Reason,
    ResponseHead,
    can_take_pipes,
    write_pipe,
)
from ._heads import FRAMING
from ._http1 import (
    connection_tokens,
    end_to_end,
    trailer_field,
)
from ._io import SMALL_BUFFER, SPLICE_MIN, TCP_READ, reads_as_twisted, splice_pipe
from ._upexchange import _address_text, _one_line

if TYPE_CHECKING:
    from ._upexchange import _UpstreamExchange
    from ._upstream import HTTPUpstreamTarget

__all__ = [
    "HELD_BODY_LIMIT", "LINKED_READ", "MAX_READ", "MIN_READ", "RAMP_READS", "READ_BUDGET",
    "ROOM_READ", "SPLICED_READ", "ReadBudget",
]

MAX_READ: Final = 128 * 1024
"""The pod connections' largest read (and write-buffer threshold), but for a link stream's
(LINKED_READ).  With the front's
immediate writes, 128 KiB reads take fewer instructions per 1 MiB body than the 256 KiB
reads of before (callgrind, 10 x 1 MiB on p1-local: 27.4 M against 30.5-31.0 M) and hold
half as much per connection behind a slow client."""

READ_BUDGET: Final = 2 * 1024 * 1024
"""What one target's busy pod connections may read at once, together: each reads at most
READ_BUDGET / busy (between MIN_READ and MAX_READ).  A response read but not yet sent
waits in its link stream's queue when the link is full: with 32 busy connections, 64 KiB
reads instead of 128 KiB.  2 MiB, not 1: at 1 MiB (32 KiB reads) p1-local /big cost
+35-40 % CPU at 32 connections (bench/run.sh, same hour: 1154-1279 against 866 µs per
request) for ~1.4 MiB less VmHWM growth; 2 MiB costs ~6 % (bench/results-2026-12-03.md
section 11).  Not a read whose body is spliced to a plain TCP link: its credit bounds it
(ReadBudget.cap)."""

LINKED_READ: Final = 256 * 1024 - 64
"""The largest read of a pod connection whose responder sizes the reads by its credit (a link
stream: ``limit_reads``), while the ReadBudget's share allows it (8 busy connections or
fewer): half the reads, frames and reactor turns per MiB of a lone p2 transfer (4 MiB:
edge-2 ~33 -> ~18 pod reads; callgrind, both edges 1.37 -> 1.01 M instructions per MiB;
results 2026-12-04 §30).  A link stream's reads need no ramp: its credit bounds what a read
leaves queued.  Below the C heap's mmap threshold with the bytes object's header
(roles/_heap.py): no mapping and page faults per read."""

SPLICED_READ: Final = 1024 * 1024 - 64
"""The largest splice of a pod's body into the process's pipe (LINKED_READ's bytes come into
the process; these never do: no heap to mind), while the credit, the link's frames and the
ReadBudget's share allow it: a lone 4 MiB transfer in ~8 DATA frames (4 of ~1 MiB), not
~17 (both edges' CPU 0.85-0.88 paired; bench/results-2026-12-06.md §10)."""

MIN_READ: Final = 16 * 1024
"""The smallest read the budget shrinks a busy connection to."""

ROOM_READ: Final = 64 * 1024
"""The smallest read a responder's room (``limit_reads``) cuts a read to: a read smaller
than loopback's MSS (~64 KiB) from a full socket buffer does not reopen the pod's TCP window
(the receiver's silly-window avoidance), and the pod waits for its persist timer: 16 KiB
floors made p2 /big at 32 connections fall to 0-73 req/s, mesh CPU 7-17 % (bench/run.sh)."""


class ReadBudget:
    """The read budget shared by the pod connections of one HTTPUpstreamTarget."""

    __slots__ = ("busy", "total")

    def __init__(self, total: int = READ_BUDGET) -> None:
        self.total = total
        self.busy = 0
        """Connections in an exchange (counted by _UpstreamExchange.connected/_detach)."""

    def cap(self, linked: bool = False, spliced: bool = False) -> int:
        """The largest read of one busy connection now; ``linked``: its responder sizes
        the reads by its credit (LINKED_READ at most, not MAX_READ); ``spliced``: its body
        goes on to a plain TCP link by splices, which the share does not cut."""
        most = LINKED_READ if linked else MAX_READ
        busy = self.busy
        if busy <= 1 or spliced:
            # The credit bounds each read (limit_reads), and a spliced piece is not the
            # process's to hold.  What the link leaves of one, or a piece read because the
            # link holds bytes (takes_pipe_now), passes the link's buffer threshold, which
            # stops every pod read behind it (EnvelopeLink.pauseProducing) before the next:
            # they do not add up per connection.  Cut to the share (64 KiB at 32 busy), every
            # piece fell below SPLICE_MIN and was read into the process: p2 /big at 32
            # connections, both edges' CPU per request x 0.76 (paired rounds, bench/
            # bimodal.py; bench/results-2026-12-06.md section 13).
            return most
        # Conditionals, not max(min()): two builtin calls with argument parsing (~750
        # instructions each) per pod read of a busy target (p2 /big at 32 connections).
        share = self.total // busy
        if share >= most:
            return most
        return share if share > MIN_READ else MIN_READ

    def spliced_cap(self) -> int:
        """How far a splice of one busy connection may grow past its read cap when the
        credit allows (SPLICED_READ, or the budget's share: a larger splice is a larger rest
        that a link which takes only part of it holds as bytes)."""
        busy = self.busy
        if busy <= 1:
            return SPLICED_READ
        share = self.total // busy
        return share if share < SPLICED_READ else SPLICED_READ


RAMP_READS: Final = 4
"""Whole reads in a row, taken by the responder without a pause, before the read size doubles."""

_MAX_INTERIM_RESPONSES: Final = 16
"""1xx responses tolerated before the final one (a flood of them is an attack)."""
HELD_BODY_LIMIT: Final = 16 * 1024
"""Body held with a response head in the hope that the whole response is in the read:
beyond it, the head goes and the body streams (a large body must not be held)."""

_FRAMING_SIZES: Final = frozenset(len(name) for name in FRAMING)


def _end_to_end(kept: list[tuple[bytes, bytes]], connection: list[bytes] | None) -> Headers:
    """The response's end-to-end fields: those kept (framing and hop-by-hop ones already
    left out) but any that its Connection fields name."""
    if connection:
        listed = connection_tokens(connection)
        if not listed <= FRAMING:
            return end_to_end(kept, listed)
    return tuple(kept)

_PHRASES: Final[dict[int, bytes]] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


class _ResponseError(Exception):
    """The upstream's response is unacceptable; the message is the detail."""


class _UnexpectedData(Exception):
    """The upstream sent bytes when no response was due."""


_Whole = tuple[int, bool, ResponseHead]
"""A head after which a Content-Length body may be taken without llhttp: the body's length,
llhttp's keep-alive verdict on it, and the ResponseHead every such response gets (made once:
nothing in the mesh changes a ResponseHead; a dataclass __init__ less per exchange)."""
_HeadParsed = tuple[
    bytes, tuple[tuple[bytes, bytes], ...], int, int, "tuple[bytes, ...] | None", "bytes | None",
    Headers, "_Whole | None",
]
_heads_parsed: dict[bytes, _HeadParsed] = {}
"""Response heads (final, no Transfer-Encoding, whole in a first read) parsed lately, by
their bytes: reason, kept fields, field count, field bytes, Connection values,
Content-Length, and the end-to-end fields (the kept ones but those the Connection values
name), worked out once: one tuple for every response with that head, which the wire's
and the front's memories of heads then find by identity (with the ready-link shortcut in
_peers: p2 438 -> 427 k, p1 181 -> 176 k instructions per /small exchange, callgrind A/B)."""
_HEADS_PARSED_BOUND = 64
_RAW_HEAD_LENGTH = 2048


class _QuickCallbacks:
    """The connection's httptools callbacks but for on_header and on_status: llhttp makes no
    bytes objects and no Python call per field (a head parsed before, see _begin)."""

    __slots__ = (
        "on_body",
        "on_chunk_header",
        "on_headers_complete",
        "on_message_begin",
        "on_message_complete",
    )

    def __init__(self, conn: _UpstreamConnection) -> None:
        self.on_message_begin = conn.on_message_begin
        self.on_headers_complete = conn.on_headers_complete
        self.on_body = conn.on_body
        self.on_chunk_header = conn.on_chunk_header
        self.on_message_complete = conn.on_message_complete


@implementer(IPushProducer)
class _UpstreamConnection(Protocol):
    """One persistent connection.  The httptools parser calls the ``on_*`` methods;
    registered with its own transport as the request body's producer, it relays
    the transport's pauses to the current exchange's source."""

    # Its state in slots, as the front's (_front.HTTPFrontProtocol): past 30 names in the
    # instance dict, CPython 3.11 leaves every self.method lookup unspecialized.
    __slots__ = (
        "address",
        "body_left",
        "bypassed",
        "chunk_pending",
        "close_delimited",
        "connection_values",
        "content_length",
        "dropped",
        "exchange",
        "finished",
        "full_parser",
        "full_reads",
        "got_bytes",
        "head_done",
        "head_end",
        "head_size",
        "header_bytes",
        "headers",
        "held",
        "held_body",
        "held_size",
        "idle",
        "idle_since",
        "idle_timer",
        "interim",
        "interim_count",
        "keep_alive",
        "known_fields",
        "lost",
        "max_header_bytes",
        "max_header_count",
        "opening",
        "parser",
        "quick_parser",
        "raw_head",
        "read_gate",
        "reading_paused",
        "reason",
        "reusable",
        "room",
        "splicing",
        "stalled",
        "target",
        "trailer_count",
        "trailers",
        "transfer_encoding",
        "waiters",
        "want",
    )

    transport: Any  # an ITCPTransport once connected: pause/resume, producers, abort

    def __init__(self, target: HTTPUpstreamTarget, exchange: _UpstreamExchange) -> None:
        self.target = target
        self.address = (exchange.host, exchange.port)
        self.opening: _UpstreamExchange | None = exchange
        self.exchange: _UpstreamExchange | None = None
        self.parser = self.full_parser = HttpResponseParser(self)
        self.quick_parser: HttpResponseParser | None = None
        """llhttp without per-field callbacks, for a head parsed before (see _begin)."""
        self.raw_head: bytes | None = None
        """The head of the response in parse, when it came whole in its first read."""
        self.known_fields: Headers | None = None
        """The end-to-end fields of a head parsed before (``_begin``)."""
        self.head_end = 0
        """Where the last response head that ``_begin`` found ended (its blank line), or 0."""
        self.max_header_bytes = target.max_response_header_bytes
        self.max_header_count = target.max_response_header_count
        self.lost = False
        self.idle = False
        self.idle_since = 0.0
        self.idle_timer: IDelayedCall | None = None
        self.reading_paused = False
        """The responder paused the response (``pause_reading``)."""
        self.read_gate = False
        """Paused lazily: the transport still waits for reads, and its next read event stops
        reading instead (``pause_reading``)."""
        self.want = SMALL_BUFFER
        """The read size the ramp and the target's ReadBudget allow (see dataReceived)."""
        self.room: int | None = None
        """What the responder takes at once, if it says (``limit_reads``: a link stream's
        credit); the read size is then at most that (not below ROOM_READ)."""
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
        """The per-response state, reset: by ``connected`` only when a read of the last
        response went past ``_begin``'s whole delivery (``got_bytes``), which sets none."""
        self.got_bytes = False
        """Bytes of this exchange's response came (no retry then); also: this state needs a
        reset before the next response."""
        self.head_done = False
        self.head_size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        """The end-to-end fields (framing and hop-by-hop ones are left out as they come)."""
        self.dropped = 0
        """Fields left out of ``headers`` (they count against the limit all the same)."""
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
        self.body_left = 0
        """Bytes still due of a Content-Length body whose head was delivered: later reads
        go to the responder as they are, past llhttp (see dataReceived)."""
        self.keep_alive = False
        """llhttp's verdict on reuse, taken at the head (its parser is replaced when a body
        bypassed it)."""
        self.bypassed = False
        self.splicing: bool | None = None
        """This response's body goes by splice (see _start_splicing); None: not asked yet."""

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
        self.want = want = min(SMALL_BUFFER, self.target.reads.cap())
        self._read_size(want)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        exchange = self.opening
        self.opening = None
        if exchange is None or exchange.done:
            self.reusable = True  # a fresh connection nobody waits for: keep it
            self.target._release(self)
            return
        try:
            exchange.connected(self)
        except Exception as problem:  # noqa: BLE001 - never raise into the reactor
            self._internal_error(problem)

    def dataReceived(self, data: bytes) -> None:
        # The parse (try) and the read-size rule (finally) in one method: the parse was a
        # method of its own, one Python call more per pod read.
        read = len(data)  # the parse may cut data to what follows a body
        try:
            if self.exchange is None:
                # Idle, or closing after its exchange: a server has nothing to say now.
                self.target._discard(self)
                return
            if self.body_left and self.held is None:
                # A read of a Content-Length body goes on as it is: llhttp would hand it over
                # as a new bytes object (a copy of every body byte: 1.0 of the sending edge's
                # ~1.1 copies per byte of a 1 MiB body, callgrind).
                left = self.body_left
                if read < left:
                    self.body_left = left - read
                    # _body's case here, known: an exchange (checked above), nothing held,
                    # no chunk framing, a read is never empty (one call less per pod read).
                    self.exchange.responder.write(data)
                    if self.splicing is None:
                        self._start_splicing()
                    return
                self.body_left = 0
                self._body(data if len(data) == left else data[:left])
                if self._exchange_gone():  # the responder gave up on it meanwhile
                    return
                self._bypassed_end()
                data = data[left:]
                if not data:
                    if self.finished:
                        self.target._release(self)
                    return
            if not self.head_done:
                if not self.head_size and self._begin(data):  # this read starts it
                    return  # a whole response of a head seen before: delivered
                self.head_size += len(data)
            elif self.chunk_pending:
                self.stalled += len(data)
            # Only here, past _begin's whole delivery: it stays False for a response
            # delivered so, whose connection has no per-response state to reset (connected).
            # (A body read past llhttp above had its head parsed after this was set.)
            self.got_bytes = True
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
                self.target._release(self)
                return
            exchange = self.exchange
            if exchange is not None:
                if self.held is not None:
                    # The response goes on in later reads: deliver what this one carried
                    # and stream the rest.
                    self._release_held(exchange)
                    if self.exchange is not exchange:
                        return
                if self.body_left and self.splicing is None:
                    # The rest of a Content-Length body: spliced from the very next read,
                    # not from the one after it (which took 256 KiB of a p2 4 MiB transfer
                    # through both edges' memory).
                    self._start_splicing()
                limit = self.max_header_bytes
                if not self.head_done:
                    if self.head_size > limit:
                        self._bad(exchange, f"response head larger than {limit} bytes")
                elif self.chunk_pending and self.stalled > limit:
                    self._bad(exchange, f"chunk framing or trailers larger than {limit} bytes")
        except Exception as problem:  # noqa: BLE001 - never raise into the reactor
            self._internal_error(problem)
        finally:
            # The read size follows the consumer: MAX_READ while the responder takes every
            # read, 64 KiB after it paused us, doubling again after RAMP_READS whole reads
            # taken without a pause.  A slow client holds ~64 KiB per connection, not a
            # 256 KiB read (VmHWM growth at 32 connections of 1 MiB bodies: +9-11 MiB before).
            # A responder that sizes our reads by its credit (limit_reads: a link stream)
            # keeps the size when it pauses: its room already bounds what a read leaves
            # queued, and the restart at 64 KiB after each credit pause cost a p2 4 MiB
            # transfer ~7 more pod reads (results 2026-12-04 §10).
            # Never above the target's ReadBudget share: many busy connections read less each.
            # Nor above the responder's room (limit_reads), without a ramp back: when a link
            # stream's credit is plentiful again, so are the reads.
            transport = self.transport
            size = getattr(transport, "bufferSize", None)
            if size is not None:
                want = self.want
                room = self.room
                cap = self.target.reads.cap(room is not None, self.splicing is True)
                if room is not None:
                    # The credit (room) bounds what a read leaves queued: the budget's share
                    # at once, no ramp (p2 4 MiB: 8 ramp reads of 64-128 KiB each transfer).
                    self.full_reads = 0
                    want = cap
                elif self.reading_paused:
                    self.full_reads = 0
                    want = min(SMALL_BUFFER, cap)
                elif want > cap:
                    self.full_reads = 0
                    want = cap
                elif read >= size and want < cap:
                    self.full_reads += 1
                    if self.full_reads >= RAMP_READS:
                        self.full_reads = 0
                        want = min(want * 2, cap)
                self.want = want
                if room is not None and room < want and want > ROOM_READ:
                    want = room if room > ROOM_READ else ROOM_READ  # (not max(): see cap)
                if size != want:
                    transport.bufferSize = want

    def _bypassed_end(self) -> None:
        """A Content-Length body that went past llhttp is over: the message ends."""
        # llhttp saw only part of this body: a fresh parser for whatever follows.
        if self.parser is self.full_parser:
            self.parser = self.full_parser = HttpResponseParser(self)
        else:
            self.parser = self.quick_parser = HttpResponseParser(_QuickCallbacks(self))
        self.bypassed = True
        self.on_message_complete()

    # Splicing: the rest of a Content-Length body goes from the pod's socket to a plain TCP
    # link's by os.splice, through the process's pipe, never copied into the process
    # (the kernel moves page references).  Only when the responder takes pipes (a link
    # stream over plain TCP: IPipeResponder); it is asked once per response, at the end of
    # the read that carried the head (or, if the connection was paused then, when it
    # resumes), so that the next read is spliced.

    def _start_splicing(self) -> None:
        if self.reading_paused:
            return  # (asked again at the next read)
        self.splicing = False
        exchange = self.exchange
        transport = self.transport
        if (exchange is None or not reads_as_twisted(transport)
                or not can_take_pipes(exchange.responder, True) or splice_pipe() is None):
            return
        self.splicing = True
        transport.doRead = self._splice_read

    def _stop_splicing(self) -> None:
        self.splicing = None
        transport = self.transport
        # Only our own: an aborted connection's transport has a no-op doRead of its own.
        if transport.doRead == self._splice_read:  # (not __dict__: see _io)
            del transport.doRead

    def _splice_read(self) -> object:
        """The transport's doRead while the body is spliced (tcp.Connection.doRead's
        answers: connection lost or done, or nothing)."""
        transport = self.transport
        exchange = self.exchange
        left = self.body_left
        if exchange is None or not left or self.held is not None:
            self._stop_splicing()
            return transport.doRead()  # Twisted's own, for whatever this is
        responder: Any = exchange.responder  # an IPipeResponder's (_start_splicing)
        size = transport.bufferSize  # the credit's and the budget's (limit_reads)
        room = self.room
        if room is not None and room > size:
            # A splice brings nothing into the process: as much as the credit (cut to one
            # frame: limit_reads), not a read's LINKED_READ.
            most = self.target.reads.spliced_cap()
            if most > size:
                size = room if room < most else most
        if size < SPLICE_MIN or not responder.takes_pipe_now():
            return TCP_READ(transport)  # read as Twisted does, this once
        pipe = splice_pipe()
        assert pipe is not None  # (_start_splicing had one)
        try:
            moved = pipe.fill_from(transport.fileno(), size if size < left else left)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not moved:
            return main.CONNECTION_DONE
        try:
            if moved < left:
                self.body_left = left - moved
                write_pipe(responder, pipe, moved)
                return None
            self.body_left = 0
            self._stop_splicing()
            write_pipe(responder, pipe, moved)
            if self._exchange_gone():
                return None
            self._bypassed_end()
            if self.finished:
                self.target._release(self)
        except Exception as problem:  # noqa: BLE001 - never raise into the reactor
            self._internal_error(problem)
        finally:
            if pipe.held:  # whatever happened above, the pipe is left empty
                pipe.discard()
        return None

    def limit_reads(self, room: int) -> None:
        """The responder takes ``room`` more bytes at once: the next read is no larger
        (nor below ROOM_READ), so that little of it waits in the responder's queue."""
        if self.room is None:
            # The credit bounds what a read leaves queued from now on: the budget's share at
            # once, no ramp, even after a pause that came first (see dataReceived).
            self.want = self.target.reads.cap(True, self.splicing is True)
        self.room = room
        want = self.want
        if room < want and want > ROOM_READ:
            want = room if room > ROOM_READ else ROOM_READ  # (not max(): see cap)
        transport = self.transport
        if getattr(transport, "bufferSize", want) != want:
            transport.bufferSize = want

    def unlimit_reads(self) -> None:
        """The responder that limited the reads is done with this connection: the next
        one's reads are at most MAX_READ until it says otherwise (LINKED_READ is a link
        stream's)."""
        self.room = None
        want = self.want
        if want > MAX_READ:
            self.want = want = MAX_READ
        self._read_size(want)

    # A pause of the pod's reads is lazy on plain TCP: no epoll change until a read event
    # comes while paused, which stops reading instead of reading (as the eager pause did);
    # only those connections start again.  Stricter than before: a read event polled before
    # the pause came no longer reads.  A link pauses every pod connection behind it when it
    # fills and lets them go a batch at a time (EnvelopeLink._admit): those it holds cost
    # nothing now (edge-2 of p2 /big at 32 connections: 122 -> 38 epoll_ctl per MiB, the
    # two together; the lazy pause alone, 120).

    def pause_reading(self) -> None:
        """Stop reading the pod's socket: the responder takes no more for now."""
        if self.reading_paused:
            return
        self.reading_paused = True
        transport = self.transport
        if reads_as_twisted(transport):
            self.read_gate = True
            transport.doRead = self._read_while_paused
        else:
            transport.pauseProducing()

    def resume_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        if self.read_gate:
            self._close_gate()  # never stopped: nothing to start
        else:
            self.transport.resumeProducing()
        if self.splicing is None and self.body_left and self.held is None:
            self._start_splicing()  # (a paused connection was not asked: its gate reads)

    def _read_while_paused(self) -> None:
        """The transport's doRead while the gate is up: stop reading, without a read."""
        self._close_gate()
        self.transport.stopReading()

    def _close_gate(self) -> None:
        self.read_gate = False
        transport = self.transport
        # Only our own: an aborted connection's transport has a no-op doRead of its own.
        if transport.doRead == self._read_while_paused:  # (not __dict__: see _io)
            del transport.doRead

    def _read_size(self, size: int) -> None:
        """Twisted's FileDescriptor reads this much at once (and pauses a producer past it
        in its write buffer); other transports have no such knob."""
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = size

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self.read_gate:
            self._close_gate()  # the transport's reference back here
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

    def _begin(self, data: bytes) -> bool:
        """A read that starts a response: choose its parser, or deliver it whole (True).

        A head seen before, byte for byte (a pod repeats its fields but for a Date that
        changes once a second), takes the fields parsed then, and llhttp only validates and
        frames it: no Python call per field: 234 → 209 k instructions per /small exchange on
        path 1 (callgrind A/B).

        When the read is such a head and its whole Content-Length body, it is delivered
        here: what llhttp's callbacks would make of it, without llhttp (the parser is
        between messages before and after it, so it need not see it).  A head seen before
        is llhttp's verdict on the same bytes; a body with a Content-Length is opaque to it:
        p1 177 -> 166 k, p2 edge-2 222 -> 213 k instructions per /small exchange (callgrind
        A/B, same load; one method since, not two: one call less)."""
        end = self.head_end
        known = None
        if end and data.startswith(b"\r\n\r\n", end):
            # Where this connection's last head ended, tried before a scan for the blank line
            # (a pod repeats its head, at the same length while only its Date changes).  A
            # known head followed by the blank line is what the scan would find: each known
            # head is what a scan found before a read's first "\r\n\r\n", and any read that
            # begins with it and the blank line has its first one there too (p1 /small -0.6 k
            # instructions per exchange, callgrind: a scan of nginx's ~230-byte head ~1.2 k).
            raw = data[:end]
            known = _heads_parsed.get(raw)
        if known is None:
            end = data.find(b"\r\n\r\n")
            if end < 0 or end + 4 > _RAW_HEAD_LENGTH:
                self.raw_head = self.known_fields = None
                self.parser = self.full_parser
                return False
            self.head_end = end
            raw = data[:end]
            known = _heads_parsed.get(raw)
        if known is None or known[2] > self.max_header_count or known[3] > self.max_header_bytes:
            self.raw_head = raw  # remembered by on_headers_complete if it parses
            self.known_fields = None
            self.parser = self.full_parser
            return False
        whole = known[7]
        end += 4
        exchange = self.exchange
        if (whole is not None and len(data) - end == whole[0]
                and exchange is not None and not exchange.is_head):
            # Delivered whole: nothing of the connection's per-response state is touched
            # (got_bytes stays False, so connected need not reset it: begin_response's 22
            # stores and a call less per exchange).
            _length, keep_alive, head = whole
            exchange.got_head = True
            if exchange.waiting is not None:
                exchange._unwait()
            exchange.complete_whole(head, data[end:], exchange.body_done and keep_alive)
            if self.finished:
                self.target._release(self)
            return True
        self.raw_head = None
        # Kept fields and Connection values need no copies: on_headers_complete takes the
        # end-to-end fields worked out from them before (no field callback comes).
        (self.reason, _, _, self.header_bytes, _, self.content_length,
         self.known_fields, _) = known
        parser = self.quick_parser
        if parser is None:
            parser = self.quick_parser = HttpResponseParser(_QuickCallbacks(self))
        self.parser = parser
        return False

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.exchange is None:
            raise _UnexpectedData()

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            # A trailer field (bounded like the head: see dataReceived): relayed with the end.
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
        if len(headers) + self.dropped >= self.max_header_count:
            raise _ResponseError(f"more than {self.max_header_count} header fields")
        size = len(name)
        # Locals rather than attributes: this runs once per field of every response.
        total = self.header_bytes + size + len(value) + 4
        self.header_bytes = total
        if total > self.max_header_bytes:
            raise _ResponseError(f"response head larger than {self.max_header_bytes} bytes")
        if size in _FRAMING_SIZES:  # cheap pre-check for the framing and hop-by-hop fields
            lower = name.lower()
            if lower in FRAMING:
                # Left out here rather than by end_to_end over every field at the end
                # (see _front._heads_made for the figure).
                self.dropped += 1
                if lower == b"connection":
                    if self.connection_values is None:
                        self.connection_values = [value]
                    else:
                        self.connection_values.append(value)
                elif lower == b"content-length":
                    self.content_length = value
                elif lower == b"transfer-encoding":
                    self.transfer_encoding = value
                return
        headers.append((name, value))

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
        raw = self.raw_head
        fields = self.known_fields
        if fields is None:
            fields = _end_to_end(self.headers, self.connection_values)
        if raw is not None:
            self.raw_head = None
            if not self.interim_count and coding is None:  # no trailers to parse later
                if len(_heads_parsed) >= _HEADS_PARSED_BOUND:
                    _heads_parsed.clear()
                values = self.connection_values
                declared = self.content_length
                whole: _Whole | None = None
                if (declared is not None and status != 204 and status != 304
                        and int(declared) <= HELD_BODY_LIMIT):
                    whole = (int(declared), self.parser.should_keep_alive(), ResponseHead(
                        status, self.reason or _PHRASES.get(status, b"Unknown"), fields,
                        int(declared)))
                _heads_parsed[raw] = (
                    self.reason, tuple(self.headers), len(self.headers) + self.dropped,
                    self.header_bytes, None if values is None else tuple(values),
                    declared, fields, whole,
                )
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
            self.body_left = length  # on_body counts down what llhttp delivers itself
            self.keep_alive = self.parser.should_keep_alive()
        else:
            length = None
            self.close_delimited = True
        head = ResponseHead(
            status, self.reason or _PHRASES.get(status, b"Unknown"), fields, length
        )
        # The request timeout stops at the head, delivered now or held.
        exchange.got_head = True
        if exchange.waiting is not None:
            exchange._unwait()
        if exchange.is_head:
            # llhttp does not know the request was HEAD and would take any body
            # framing literally: end here, and never reuse this connection.
            exchange.complete_whole(head, b"", False)
        else:
            self.held = head  # delivered at the message's end or at the end of this read

    def on_body(self, body: bytes) -> None:
        if self.body_left:
            self.body_left -= len(body)
        held = self.held
        if held is not None and body and self.held_size + len(body) <= HELD_BODY_LIMIT:
            # _body's common case inlined: a small body held with its head (one call less).
            self.chunk_pending = False
            self.stalled = 0
            if self.exchange is not None:
                self.held_body.append(body)
                self.held_size += len(body)
            return
        self._body(body)

    def _body(self, body: bytes) -> None:
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
            self.dropped = 0
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
            reusable = exchange.body_done and (
                self.keep_alive if self.bypassed else self.parser.should_keep_alive()
            )  # _keep_alive() inlined
            exchange.complete_whole(head, body, reusable)
            return
        self.finished = True
        self.reusable = exchange.body_done and self._keep_alive()
        exchange.complete(tuple(trailers) if trailers else ())

    # internals

    def _exchange_gone(self) -> bool:
        return self.exchange is None

    def _keep_alive(self) -> bool:
        return self.keep_alive if self.bypassed else self.parser.should_keep_alive()

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
