"""
Response bodies spliced from a pod's socket to a plaintext link's (issue 15): the process's
pipe (transports/_io.SplicePipe), a DATA frame's head sent before its spliced body
(``splice_after``), and a real pod connection answering through a real link, both on real
sockets (socket pairs; Twisted's TCP transports on a MemoryReactor, driven by hand).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gathered_writes import drain, transport_over
from test_links import Handler, make_link
from test_upstream import GET, ROUTE, Harness
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgemesh.exchange import (
    PIPE_WRITERS,
    IBodyPipe,
    IPipeResponder,
    RequestHead,
    ResponseHead,
    can_take_pipes,
    write_pipe,
)
from edgemesh.routing._guard import GuardedExchange
from edgemesh.testing import RecordingResponder
from edgemesh.transports import spliced_bytes
from edgemesh.transports._halves import InboundExchange
from edgemesh.transports._io import SplicePipe, buffered, splice_after, splice_pipe
from edgemesh.transports._upconnection import LINKED_READ, READ_BUDGET, SPLICE_MIN, SPLICED_READ
from edgemesh.wire import DATA_HEAD_MAX, FrameDecoder, Limits, data_head_at

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux's")


def pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection on 127.0.0.1, non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    theirs.setblocking(False)
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    return ours, theirs


@pytest.fixture
def pipe() -> Iterator[SplicePipe]:
    made = SplicePipe()
    yield made
    made.close()


DEADLINE = 10.0
"""Seconds a test waits for bytes still on their way over loopback (a small receive
buffer lets the sender's queue go on only as its window reopens, delayed ACKs and all)."""


def wait_readable(sock: socket.socket, until: float) -> None:
    left = until - time.monotonic()
    if left <= 0:
        raise AssertionError("nothing came before the deadline")
    select.select([sock], [], [], left)


def drain_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``, polled for until DEADLINE."""
    until = time.monotonic() + DEADLINE
    got = bytearray(drain(sock))
    while len(got) < size:
        wait_readable(sock, until)
        got += drain(sock)
    return bytes(got)


# --- the pipe -------------------------------------------------------------------------------


def test_the_pipe_is_a_body_pipe(pipe: SplicePipe) -> None:
    from zope.interface.verify import verifyObject

    assert verifyObject(IBodyPipe, pipe)
    assert splice_pipe() is splice_pipe()  # one per process


def test_bytes_go_from_socket_to_socket_unchanged(pipe: SplicePipe) -> None:
    source, pod = pair()
    link, peer = pair()
    body = os.urandom(100_000)
    pod.sendall(body)
    before = pipe.spliced
    moved = pipe.fill_from(source.fileno(), 1 << 20)
    assert moved == len(body) and pipe.held == len(body)
    assert pipe.drain_to(link.fileno(), moved) == moved
    assert pipe.held == 0 and pipe.spliced - before == moved
    assert drain(peer) == body


def test_nothing_to_read_raises_and_the_end_reads_nothing(pipe: SplicePipe) -> None:
    source, pod = pair()
    with pytest.raises(BlockingIOError):
        pipe.fill_from(source.fileno(), 4096)
    pod.close()
    assert pipe.fill_from(source.fileno(), 4096) == 0
    assert pipe.held == 0


def test_what_the_socket_does_not_take_is_taken_as_bytes(pipe: SplicePipe) -> None:
    source, pod = pair()
    link, peer = pair(sndbuf=16384)
    body = os.urandom(150_000)
    pod.sendall(body)
    moved = pipe.fill_from(source.fileno(), len(body))
    went = pipe.drain_to(link.fileno(), moved)
    assert 0 < went < moved  # the small socket took part
    rest = pipe.take(moved - went)
    assert pipe.held == 0
    assert drain_exactly(peer, went) + rest == body[:moved]


def test_a_socket_the_peer_closed_takes_nothing_and_raises_nothing(pipe: SplicePipe) -> None:
    source, pod = pair()
    link, peer = pair()
    peer.close()
    pod.sendall(b"x" * 5000)
    moved = pipe.fill_from(source.fileno(), 5000)
    for _ in range(3):  # the first send may still go (the reset comes back after it)
        pipe.drain_to(link.fileno(), pipe.held)
    rest = splice_after(transport_over(link), b"head", pipe, pipe.held)
    assert pipe.held == 0 and sum(map(len, rest)) <= moved + 4


def test_discard_empties_the_pipe(pipe: SplicePipe) -> None:
    source, pod = pair()
    pod.sendall(b"x" * 70_000)
    drain_exactly_into(pipe, source, 70_000)
    pipe.discard()
    assert pipe.held == 0
    with pytest.raises(BlockingIOError):
        os.read(pipe.read_fd, 1)


def drain_exactly_into(pipe: SplicePipe, source: socket.socket, size: int) -> None:
    until = time.monotonic() + DEADLINE
    while pipe.held < size:
        wait_readable(source, until)
        pipe.fill_from(source.fileno(), size - pipe.held)


# --- a frame's head, then its body from the pipe --------------------------------------------


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 200_000), sndbuf=st.sampled_from([None, 16384, 65536]),
       waiting=st.booleans())
def test_head_and_body_arrive_in_order_whatever_the_socket_takes(
        size: int, sndbuf: int | None, waiting: bool) -> None:
    pipe = SplicePipe()
    source, pod = pair()
    ours, peer = pair(sndbuf)
    try:
        transport = transport_over(ours)
        first = b"waiting:" if waiting else b""
        if waiting:
            transport.write(first)  # in Twisted's buffer: the head must not pass it
        body = os.urandom(size)
        head = b"HEAD%d:" % size
        got = bytearray()
        sent = taken = 0
        until = time.monotonic() + DEADLINE
        while taken < size:  # the pod's socket holds at most its buffer
            assert time.monotonic() < until, f"{taken} of {size} bytes read"
            if sent < size:
                try:
                    sent += pod.send(body[sent:])
                except BlockingIOError:
                    pass
            try:
                moved = pipe.fill_from(source.fileno(), size)
            except BlockingIOError:
                continue
            held = buffered(transport)
            rest = splice_after(transport, head, pipe, moved)
            taken += moved
            assert pipe.held == 0
            if held:  # nothing went: all of it waits, after what waited
                assert rest == [head, body[taken - moved: taken]]
            head = b""
            if rest:
                transport.writeSequence(rest)
            until = time.monotonic() + DEADLINE
            got += drain(peer)
            while buffered(transport):
                transport.doWrite()
                if buffered(transport):
                    wait_readable(peer, until)
                got += drain(peer)
        expected = first + b"HEAD%d:" % size + body
        got += drain_exactly(peer, len(expected) - len(got))
        assert bytes(got) == expected
    finally:
        pipe.close()
        for sock in (source, pod, ours, peer):
            sock.close()


def test_another_transport_gets_the_bytes_to_write(pipe: SplicePipe) -> None:
    source, pod = pair()
    pod.sendall(b"body")
    moved = pipe.fill_from(source.fileno(), 100)
    assert splice_after(StringTransport(), b"head", pipe, moved) == [b"head", b"body"]
    assert pipe.held == 0


# --- who takes pipes ------------------------------------------------------------------------


def test_the_link_exchange_and_the_guard_take_pipes() -> None:
    assert IPipeResponder.implementedBy(InboundExchange)
    assert IPipeResponder.implementedBy(GuardedExchange)
    assert PIPE_WRITERS[InboundExchange] is InboundExchange.write_pipe
    assert PIPE_WRITERS[RecordingResponder] is None
    assert not can_take_pipes(RecordingResponder(), True)


def test_a_responder_without_pipes_gets_bytes(pipe: SplicePipe) -> None:
    source, pod = pair()
    pod.sendall(b"abc")
    responder = RecordingResponder()
    responder.head(ResponseHead(200, b"OK", (), None))
    write_pipe(responder, pipe, pipe.fill_from(source.fileno(), 10))
    assert responder.body == b"abc" and pipe.held == 0


# --- a pod connection answering through a link, on real sockets -----------------------------


class World:
    """edge-2's side of path 2: a pod connection (HTTPUpstreamTarget) whose responder is an
    InboundExchange of a link to edge-1.  The link's socket and the pod's are socket pairs;
    edge-1 is an EnvelopeLink on a StringTransport, fed by hand from the link's peer."""

    def __init__(self, splice: bool = True, link_sndbuf: int | None = None,
                 edge1_limits: Limits | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.edge1 = make_link(self.clock, Handler(), True,
                               **({"limits": edge1_limits} if edge1_limits else {}))
        self.edge1_transport = StringTransport()
        self.edge1.makeConnection(self.edge1_transport)
        self.handler = handler = Handler()
        self.edge2 = make_link(self.clock, handler, False, splice=splice)
        link_ours, self.link_peer = pair(link_sndbuf)
        self.link = tcp.Server(link_ours, self.edge2, ("127.0.0.1", 1), None, 1, self.clock)  # type: ignore[arg-type]
        self.edge2.makeConnection(self.link)
        self.decoder = FrameDecoder(Limits())
        self.from_edge2: list[Any] = []
        self.raw = bytearray()
        """Every byte edge-2 sent on the link."""
        self.pump()
        self.responder = RecordingResponder()
        head = RequestHead(b"GET", b"/big", b"web.shop", (), 0, client="10.0.0.9")
        self.edge1.open(head, "shop/web", 80, ("10.4.0.12", 8080), self.responder)
        self.pump()
        [entry] = handler.inbounds
        self.inbound: InboundExchange = entry.exchange
        self.h = Harness()
        self.h.target.open(ROUTE, GET, self.inbound)
        host, port, factory, _timeout, _bind = self.h.reactor.tcpClients[-1]
        pod_ours, self.pod = pair()
        self.upstream = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.pod_transport = tcp.Server(pod_ours, self.upstream, ("127.0.0.1", 2), None, 2,  # type: ignore[arg-type]
                                        self.h.reactor)
        self.upstream.makeConnection(self.pod_transport)
        self.pod_transport.doWrite()  # the request to the pod
        assert drain(self.pod).startswith(b"GET ")

    def again(self) -> None:
        """A second exchange over the same link, on the pooled pod connection."""
        self.responder = RecordingResponder()
        head = RequestHead(b"GET", b"/big", b"web.shop", (), 0, client="10.0.0.9")
        self.edge1.open(head, "shop/web", 80, ("10.4.0.12", 8080), self.responder)
        self.pump()
        self.inbound = self.handler.inbounds[-1].exchange
        assert self.h.idle() == 1
        self.h.target.open(ROUTE, GET, self.inbound)
        assert self.h.idle() == 0  # (taken from the pool: no new connection)
        self.pod_transport.doWrite()
        assert drain(self.pod).startswith(b"GET ")

    def pump(self) -> None:
        """Carry frames both ways until nothing moves and nothing waits to be sent."""
        until = time.monotonic() + DEADLINE
        while True:
            self.clock.advance(0)
            moved = False
            data = drain(self.link_peer)
            if data:
                self.raw += data
                self.from_edge2 += self.decoder.feed(data)
                self.edge1.dataReceived(data)
                moved = True
            out = self.edge1_transport.value()
            if out:
                self.edge1_transport.clear()
                self.link_peer.sendall(out)
                self.link.doRead()
                moved = True
            waiting = buffered(self.link)
            if waiting:
                self.link.doWrite()
                moved = moved or buffered(self.link) < waiting
            if not moved:
                if not buffered(self.link):
                    return
                wait_readable(self.link_peer, until)  # the rest is on its way

    def answer(self, response: bytes, close: bool = False) -> None:
        """The pod sends ``response`` (as fast as its socket takes it); the pod connection
        reads whenever it reads, the link carries what it sends."""
        sent = 0
        for _ in range(100_000):
            if sent < len(response):
                try:
                    sent += self.pod.send(response[sent:sent + 1 << 20])
                except BlockingIOError:
                    pass
            elif close:
                self.pod.close()
                close = False
            if self.pod_transport in self.h.reactor.readers:
                result = self.pod_transport.doRead()
                if result is not None:
                    self.pod_transport.connectionLost(Failure(result))  # as the reactor would
                    self.pump()
                    return
            self.pump()
            if sent == len(response) and not close and self.responder.ended:
                return
            if getattr(self.pod_transport, "_aborting", False):
                return  # the pod connection gave up (an error on our side)
        raise AssertionError("the response never ended")


def response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


# Reads are spliced once the stream's credit lets them be SPLICE_MIN or more: its first
# 64 KiB window is read as before, then the credit grows (up to --max-window).
@pytest.mark.parametrize(("size", "least"), [(300_000, 1), (SPLICE_MIN * 3 + 1, 1),
                                             (4 << 20, (4 << 20) // 2)])
def test_a_body_goes_by_splice_and_arrives_unchanged(size: int, least: int) -> None:
    world = World()
    assert world.edge2.splices
    body = os.urandom(size)
    before = spliced_bytes()
    world.answer(response(body))
    assert world.responder.status == 200 and world.responder.ended
    assert world.responder.body == body
    assert spliced_bytes() - before >= least
    assert splice_pipe().held == 0  # type: ignore[union-attr]
    # The connection is back in the pool, reading as Twisted does.
    assert "doRead" not in vars(world.pod_transport)
    assert world.h.idle() == 1


def data_frame_bodies(raw: bytes | bytearray) -> list[int]:
    """The body size of every DATA frame in ``raw``, a link's bytes, in order."""
    sizes, pos = [], 0
    while pos < len(raw):
        _sid, head, body = data_head_at(bytes(raw[pos : pos + DATA_HEAD_MAX]))
        if head:
            sizes.append(body)
        pos += 4 + int.from_bytes(raw[pos : pos + 4], "big")
    return sizes


@pytest.mark.parametrize(("peer", "largest"), [
    (None, SPLICED_READ),
    (Limits(max_data_frame=256 * 1024), 256 * 1024 - 64),  # as a peer of every version before
])
def test_a_lone_stream_splices_frames_as_large_as_the_peer_takes(
        peer: Limits | None, largest: int) -> None:
    """A lone stream's spliced pod reads take what the credit allows, up to SPLICED_READ
    (not a copied read's LINKED_READ), each one DATA frame: a few frames per 4 MiB, not
    ~17; a peer that takes no larger DATA frame than 256 KiB gets none larger."""
    world = World(edge1_limits=peer)
    world.pod.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    world.pod_transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    body = os.urandom(4 << 20)
    world.answer(response(body))
    assert world.responder.body == body
    sizes = data_frame_bodies(world.raw)
    assert max(sizes) <= largest
    assert max(sizes) > (LINKED_READ if peer is None else largest // 2)
    assert len(sizes) < (16 if peer is None else 40), sizes


def test_the_read_after_the_head_is_spliced() -> None:
    """Only the read that carried the head goes through the process (its size the stream's
    first window); before, the read after it did too, and splicing began with the third."""
    world = World()
    body = os.urandom(4 << 20)
    before = spliced_bytes()
    world.answer(response(body))
    assert world.responder.body == body
    assert len(body) - (spliced_bytes() - before) <= Limits().initial_window


def test_after_a_head_read_alone_the_body_is_spliced() -> None:
    """A pod that writes its head apart from its body: the connection asks at the end of
    the head's read, and the body's reads are spliced once the credit allows (only the
    first window is read; before, a second read went through the process too)."""
    world = World()
    body = os.urandom(1 << 20)
    whole = response(body)
    head_size = whole.index(b"\r\n\r\n") + 4
    world.pod.sendall(whole[:head_size])
    world.pod_transport.doRead()  # the head, and nothing after it
    world.pump()
    before = spliced_bytes()
    world.answer(whole[head_size:])
    assert world.responder.body == body
    assert len(body) - (spliced_bytes() - before) <= Limits().initial_window


def test_a_pod_connection_asks_each_response_whether_it_splices() -> None:
    """Each response on a pooled pod connection is asked anew whether it splices: one whose
    responder took no pipes does not stop the next from splicing (whichever read asks)."""
    world = World()
    # This response's responder takes no pipes (as a client of the same node's front, or a
    # TLS link's stream, would not).
    world.inbound.can_take_pipes = lambda from_pod: False  # type: ignore[method-assign]
    first = os.urandom(1 << 20)
    before = spliced_bytes()
    world.answer(response(first))
    assert world.responder.body == first and spliced_bytes() == before
    world.again()
    second = os.urandom(1 << 20)
    world.answer(response(second))
    assert world.responder.body == second
    assert spliced_bytes() - before >= len(second) // 2


def test_a_busy_targets_body_is_spliced_in_credit_sized_pieces_and_copied_in_shares() -> None:
    """32 busy pod connections (the budget's share 64 KiB, below SPLICE_MIN): a body that
    goes to a plain TCP link is still spliced, in pieces of LINKED_READ at most (and the
    credit); one whose responder takes no pipes (a TLS link's stream) is read in the share,
    as before."""
    world = World()
    world.h.target.reads.busy += 31
    assert world.h.target.reads.busy == 32
    body = os.urandom(1 << 20)
    before = spliced_bytes()
    world.answer(response(body))
    assert world.responder.body == body
    assert spliced_bytes() - before >= len(body) // 2
    sizes = data_frame_bodies(world.raw)
    assert max(sizes) <= LINKED_READ, sizes
    world.again()
    world.inbound.can_take_pipes = lambda from_pod: False  # type: ignore[method-assign]
    start = len(world.raw)
    before = spliced_bytes()
    world.answer(response(body))
    assert world.responder.body == body and spliced_bytes() == before
    assert max(data_frame_bodies(world.raw[start:])) <= READ_BUDGET // 32


def test_a_full_link_socket_keeps_the_rest_as_bytes_in_order() -> None:
    world = World(link_sndbuf=16384)
    body = os.urandom(2 << 20)
    world.answer(response(body))
    assert world.responder.body == body


def test_no_splice_copies_the_same_body() -> None:
    world = World(splice=False)
    assert not world.edge2.splices
    body = os.urandom(1 << 20)
    before = spliced_bytes()
    world.answer(response(body))
    assert world.responder.body == body
    assert spliced_bytes() == before


def test_a_tls_link_takes_no_pipes() -> None:
    link = make_link(MemoryReactorClock(), Handler(), False)
    link.makeConnection(StringTransport())  # any transport but Twisted's plain TCP
    assert not link.splices


def test_a_pod_that_closes_mid_body_fails_the_exchange_and_leaves_the_pipe_empty() -> None:
    world = World()
    body = os.urandom(1 << 20)
    world.answer(response(body)[: 600_000], close=True)
    assert not world.responder.ended  # truncated: never a clean end
    assert len(world.responder.body) < len(body)
    assert splice_pipe().held == 0  # type: ignore[union-attr]


def test_a_responder_that_fails_mid_body_leaves_the_pipe_empty() -> None:
    world = World()
    calls = []

    def broken(pipe: Any, size: int) -> None:
        calls.append(size)
        raise RuntimeError("a bug in a responder")

    world.inbound.send_pipe = broken  # type: ignore[method-assign]
    body = os.urandom(2 << 20)
    world.answer(response(body)[: 1 << 20], close=True)
    assert calls  # the bug was met on a spliced read
    assert splice_pipe().held == 0  # type: ignore[union-attr]
    assert not world.responder.ended


def test_a_link_that_fills_stops_splicing_until_it_drains() -> None:
    world = World()
    world.inbound.link.paused = True
    assert not world.inbound.takes_pipe_now()
    world.inbound.link.paused = False
    assert world.inbound.takes_pipe_now()
    world.link.write(b"x" * 10)  # something waits in the link's buffer
    assert buffered(world.link) and not world.inbound.takes_pipe_now()
