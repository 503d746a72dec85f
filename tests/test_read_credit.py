"""
A pod connection that answers over a link stream reads no more than the stream's credit
(issue 15, p2 /big at 32 connections: edge-2 held the rest of one cut read per stream,
32 x ~62 KiB).  Deterministic: a real pod connection (HTTPUpstreamTarget on a
MemoryReactorClock, its socket a StringTransport with Twisted's read-size knob) answering
through a real InboundExchange of two links joined by hand (test_links.Pair).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_links import Pair
from test_upstream import GET, ROUTE, Harness, SizedTransport, Upstream

from edgemesh.exchange import READ_LIMITERS, ISizedProducer
from edgemesh.testing import RecordingResponder
from edgemesh.transports._halves import InboundExchange, OutboundExchange
from edgemesh.transports._io import SMALL_BUFFER, SPLICE_MIN, SPLICE_PIPE_SIZE
from edgemesh.transports._upconnection import (
    LINKED_READ,
    MAX_READ,
    MIN_READ,
    RAMP_READS,
    READ_BUDGET,
    ROOM_READ,
    SPLICED_READ,
    ReadBudget,
)
from edgemesh.transports._upexchange import _UpstreamExchange
from edgemesh.wire import Connection, Limits
from edgemesh.wire._connection import SEND_FLOOR

WINDOW = Limits().initial_window
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


class World:
    """edge-1 (the pair's client) asks edge-2 (its server), whose inbound exchange is the
    responder of a pod connection of edge-2's upstream target."""

    def __init__(self, **limits: Any) -> None:
        self.pair = Pair(limits=Limits(**limits)) if limits else Pair()
        self.exchange, self.responder = self.pair.open(content_length=0, method=b"GET")
        self.pair.pump()
        self.inbound: InboundExchange = self.pair.inbound().exchange
        self.h = Harness()
        self.h.target.open(ROUTE, GET, self.inbound)
        self.pod: Upstream = self.h.accept(transport=SizedTransport())
        self.pod.received()
        self.transport: SizedTransport = self.pod.transport
        self.sent = 0

    @property
    def reading(self) -> bool:
        return bool(self.transport.producerState == "producing")

    def pod_reads(self, left: int) -> int:
        """The kernel hands the pod connection what it asks for (a socket with ``left``
        bytes waiting) until it stops reading; returns what is left."""
        while left and self.reading:
            size = min(left, self.transport.bufferSize)
            self.pod.send(b"b" * size)
            self.sent += size
            left -= size
            self.pair.pump()
        return left

    @property
    def queued(self) -> int:
        return self.inbound.queued


def test_the_upstream_exchange_is_a_sized_producer() -> None:
    assert ISizedProducer.implementedBy(_UpstreamExchange)
    assert READ_LIMITERS[_UpstreamExchange] is _UpstreamExchange.limit_reads
    assert READ_LIMITERS[RecordingResponder] is None


def test_send_floor_is_at_most_half_the_peers_initial_window() -> None:
    """Below it a sender waits for credit: the peer grants more once half its target (never
    below its initial window) is due, so waiting there cannot deadlock."""
    for window, floor in ((WINDOW, SEND_FLOOR), (16 * 1024, 8 * 1024), (1, 0)):
        peer = Connection(client=True, limits=Limits(initial_window=window))
        conn = Connection(client=False)
        assert conn.send_floor == 0  # no hello yet
        conn.receive(peer.hello("edge-1", "edge"))
        assert conn.send_floor == floor


def test_a_stalled_stream_holds_nothing_of_its_pod_connections_reads() -> None:
    """The client stops reading: edge-1 returns no credit.  The pod connection reads the
    stream's credit and then stops; nothing waits in the stream's queue (main: the next
    64 KiB read, all of it queued behind the empty window)."""
    w = World()
    w.exchange.pauseProducing()  # edge-1's client is slow: no credit comes back
    w.pod.send(HEAD % (4 * 1024 * 1024))
    left = w.pod_reads(4 * 1024 * 1024)
    assert not w.reading
    assert w.queued == 0
    assert w.sent == WINDOW  # what the credit allowed, no more
    assert len(w.responder.body) == WINDOW
    # The client reads again: credit comes back and the reads resume at a link stream's
    # full size (not shrunk, nor ramped: the credit is plentiful and bounds them).
    w.exchange.resumeProducing()
    w.pair.pump()
    assert w.reading
    window = w.pair.server.connection.send_window(w.inbound.sid)
    assert window >= WINDOW
    assert w.transport.bufferSize == min(LINKED_READ, window)
    w.pod_reads(left)
    assert w.queued == 0
    assert w.responder.ended and len(w.responder.body) == 4 * 1024 * 1024


def _ramped(window: int, size: int = 4 * 1024 * 1024) -> World:
    """A world whose edge-1 announces ``window`` of credit per stream, its client stalled,
    and a pod connection at a link stream's full read size (LINKED_READ) after RAMP_READS
    whole 64 KiB reads (the credit bounds its reads: no ramp)."""
    w = World(initial_window=window)
    w.exchange.pauseProducing()
    w.pod.send(HEAD % size)
    for _ in range(RAMP_READS):
        w.pod.send(b"b" * SMALL_BUFFER)
        w.pair.pump()
    conn: Any = w.pod.protocol._wrappedProtocol
    assert conn.want == LINKED_READ
    return w


def test_a_read_is_cut_to_the_credit_left_not_below_a_room_read() -> None:
    w = _ramped(RAMP_READS * SMALL_BUFFER + LINKED_READ + 100_000)
    assert w.transport.bufferSize == LINKED_READ
    w.pod.send(b"b" * LINKED_READ)
    w.pair.pump()
    assert w.reading and w.transport.bufferSize == 100_000  # the credit left
    w.pod.send(b"b" * 60_000)  # 40 000 left: above the floor, so a room read (64 KiB)
    w.pair.pump()
    assert w.reading and w.transport.bufferSize == ROOM_READ
    w.pod.send(b"b" * ROOM_READ)
    w.pair.pump()
    assert not w.reading
    assert w.queued == ROOM_READ - 40_000 <= ROOM_READ - SEND_FLOOR
    w.exchange.resumeProducing()  # credit again: the rest of the body follows
    w.pair.pump()
    w.pod_reads(4 * 1024 * 1024 - w.sent - RAMP_READS * SMALL_BUFFER - LINKED_READ - 60_000
                - ROOM_READ)
    assert w.responder.ended and len(w.responder.body) == 4 * 1024 * 1024


def test_a_credit_pause_keeps_the_ramped_read_size() -> None:
    """A link stream paused for credit is not a slow client: once credit is back the pod
    connection reads LINKED_READ again at once, not 64 KiB and a new ramp (main before: ~9 more
    reads and frames per p2 4 MiB transfer)."""
    w = _ramped(RAMP_READS * SMALL_BUFFER + 2 * LINKED_READ)
    conn: Any = w.pod.protocol._wrappedProtocol
    for _ in range(2):
        w.pod.send(b"b" * LINKED_READ)
        w.pair.pump()
    assert not w.reading and w.queued == 0  # out of credit: paused, nothing read ahead
    w.exchange.resumeProducing()
    w.pair.pump()
    assert w.reading
    assert w.pair.server.connection.send_window(w.inbound.sid) >= LINKED_READ
    assert conn.want == LINKED_READ and w.transport.bufferSize == LINKED_READ


def test_the_read_size_goes_back_to_the_ramp_after_the_exchange() -> None:
    """The next exchange on the pooled connection may not limit anything: its reads are the
    ramp's again, not the last stream's credit."""
    size = RAMP_READS * SMALL_BUFFER + 100_000 + 50_000
    w = _ramped(RAMP_READS * SMALL_BUFFER + 100_000, size)
    assert w.transport.bufferSize == 100_000
    w.pod.send(b"b" * 100_000)
    w.pair.pump()
    assert not w.reading and w.queued == 0
    w.exchange.resumeProducing()
    w.pair.pump()
    w.pod_reads(50_000)
    assert w.responder.ended and len(w.responder.body) == size
    assert w.h.idle() == 1 and w.reading
    conn: Any = w.pod.protocol._wrappedProtocol
    assert conn.room is None and w.transport.bufferSize == conn.want  # the ramp after a pause
    assert conn.want == MAX_READ  # LINKED_READ was the stream's: not the next responder's


def test_a_linked_read_is_the_budgets_share_at_most() -> None:
    """LINKED_READ for a lone stream (or up to 8 busy connections), then the ReadBudget's
    share as for any other responder: what the target's connections read at once together
    stays within READ_BUDGET (32 busy: 64 KiB each, as before)."""
    budget = ReadBudget()
    for busy, unlinked, linked in ((0, MAX_READ, LINKED_READ), (1, MAX_READ, LINKED_READ),
                                   (8, MAX_READ, LINKED_READ), (9, MAX_READ, READ_BUDGET // 9),
                                   (16, MAX_READ, MAX_READ), (32, READ_BUDGET // 32,
                                                              READ_BUDGET // 32)):
        budget.busy = busy
        assert (budget.cap(), budget.cap(True)) == (unlinked, linked)
        assert max(busy, 1) * budget.cap(True) <= READ_BUDGET
    assert MAX_READ < LINKED_READ < 256 * 1024  # under the C heap's mmap threshold (roles/_heap)


def test_a_splice_is_the_budgets_share_up_to_spliced_read() -> None:
    """How far a splice may grow past its connection's read cap when the credit allows:
    SPLICED_READ for a lone stream, else the budget's share (below it, a spliced read's cap
    is LINKED_READ and the credit: test_a_spliced_read_is_not_cut_to_the_share)."""
    budget = ReadBudget()
    for busy, spliced in ((0, SPLICED_READ), (1, SPLICED_READ), (2, SPLICED_READ),
                          (3, READ_BUDGET // 3), (16, READ_BUDGET // 16), (32, READ_BUDGET // 32)):
        budget.busy = busy
        assert budget.spliced_cap() == spliced
        assert max(busy, 1) * budget.spliced_cap() <= READ_BUDGET
    assert SPLICED_READ < SPLICE_PIPE_SIZE  # one splice fills no more than the pipe holds


def test_the_budgets_share_is_between_min_read_and_the_largest_read_at_any_busy_count() -> None:
    """cap() without builtins (a pod read's rule): the share, within MIN_READ and the
    largest read of its kind, for every busy count and a small budget too."""
    for total in (READ_BUDGET, 1024 * 1024, 3 * MIN_READ, 1):
        budget = ReadBudget(total)
        for busy in range(300):
            budget.busy = busy
            for linked, most in ((False, MAX_READ), (True, LINKED_READ)):
                share = most if busy <= 1 else max(MIN_READ, min(most, total // busy))
                assert budget.cap(linked) == share, (total, busy, linked)
                assert budget.cap(linked, spliced=True) == most


def test_a_spliced_read_is_not_cut_to_the_share() -> None:
    """A read whose body goes on by splice (to a plain TCP link) is LINKED_READ at most (and
    its credit, limit_reads), however many connections are busy: the share, 64 KiB at 32
    busy, would take it below SPLICE_MIN, and the piece would be read into the process
    instead (the copied reads of a TLS link's streams keep the share)."""
    budget = ReadBudget()
    for busy in (0, 1, 8, 9, 16, 32, 1000):
        budget.busy = busy
        assert budget.cap(True, spliced=True) == LINKED_READ
        assert budget.cap(True) == (LINKED_READ if busy <= 1 else
                                    max(MIN_READ, min(LINKED_READ, READ_BUDGET // busy)))
    assert MIN_READ < READ_BUDGET // 32 < SPLICE_MIN <= LINKED_READ


def test_a_lone_stream_keeps_reading_whole_linked_reads() -> None:
    """A lone stream whose client keeps up: its credit never runs dry (the pod connection
    never stops reading), every read but the first (sized before the stream said anything)
    and the last is LINKED_READ, and none waits in the stream's queue; one DATA frame per
    read (main: 128 KiB reads, 33 per 4 MiB, after a ramp from 64 KiB)."""
    size = 4 * 1024 * 1024
    w = World()
    w.pod.send(HEAD % size)
    w.pair.pump()
    reads = []
    left = size
    while left:
        assert w.reading  # never paused for credit
        read = min(left, w.transport.bufferSize)
        reads.append(read)
        w.pod.send(b"b" * read)
        left -= read
        w.pair.pump()
        assert w.queued == 0
    assert w.responder.ended and len(w.responder.body) == size
    assert reads[0] == SMALL_BUFFER and set(reads[1:-1]) == {LINKED_READ}
    assert len(reads) <= 2 + size // LINKED_READ


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 600_000),
    steps=st.lists(st.tuples(st.sampled_from(["pause", "resume", "full", "drained"]),
                             st.integers(1, 200_000)), min_size=1, max_size=40),
    window=st.sampled_from([4096, 16 * 1024, WINDOW]),
)
def test_bodies_cross_whole_and_nothing_waits_for_credit(
    size: int, steps: list[tuple[str, int]], window: int
) -> None:
    """Whatever the client's pauses, edge-2's link socket filling and draining, the pod's
    pace, and whatever initial window edge-1 announces (small ones make the floor smaller):
    the body crosses whole, a read waits for credit at most by what the floor allows, and
    reading never stalls for good."""
    w = World(initial_window=window)
    client: OutboundExchange = w.exchange
    w.pod.send(HEAD % size)
    w.pair.pump()
    left = size
    first = True
    link = w.pair.server
    for action, pace in steps:
        if action == "pause":
            client.pauseProducing()
        elif action == "resume":
            client.resumeProducing()
        elif action == "full":
            link.pauseProducing()  # as Twisted does past the link's write buffer size
        else:
            link.resumeProducing()
        w.pair.pump()
        while left and w.reading and pace > 0:
            chunk = min(left, w.transport.bufferSize, pace)
            w.pod.send(b"b" * chunk)
            left -= chunk
            pace -= chunk
            w.pair.pump()
            # A read never exceeds the credit by more than the floor allows, but the first
            # (sized before the stream said anything: 64 KiB, a default initial window).
            if not first and not link.paused:
                assert w.queued <= max(0, ROOM_READ - link.connection.send_floor)
            first = False
    client.resumeProducing()
    link.resumeProducing()
    w.pair.pump()
    left = w.pod_reads(left)
    assert left == 0
    assert w.responder.ended and len(w.responder.body) == size


def test_a_response_that_ends_below_the_floor_leaves_its_pod_connection_reading() -> None:
    """The last read of a body leaves less credit than the floor: the stream ends, and the
    pod connection goes back to the pool reading (a server's close is noticed while idle)."""
    w = World()
    w.exchange.pauseProducing()
    w.pod.send(HEAD % (WINDOW - 1000))
    w.pod_reads(WINDOW - 1000)
    assert w.responder.body == b"b" * (WINDOW - 1000) or not w.responder.ended
    w.exchange.resumeProducing()
    w.pair.pump()
    assert w.responder.ended and len(w.responder.body) == WINDOW - 1000
    assert w.h.idle() == 1 and w.reading


def test_a_full_link_stops_the_pod_connections_at_once() -> None:
    """edge-2's link socket is full: its pod connections stop reading now, rather than each
    take one more read to queue whole (main: 64 KiB per stream)."""
    w = World()
    w.pod.send(HEAD % (1024 * 1024))
    w.pod.send(b"b" * 1000)
    w.pair.pump()
    assert w.reading
    w.pair.server.pauseProducing()  # as Twisted does past the link's write buffer size
    assert not w.reading and w.queued == 0
    w.pair.server.resumeProducing()
    w.pair.pump()
    assert w.reading
    w.pod_reads(1024 * 1024 - 1000)
    assert w.responder.ended and len(w.responder.body) == 1024 * 1024
