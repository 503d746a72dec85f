"""
Response bodies spliced from a plaintext link's socket to a client's (issue 15): the
receiving edge of path 2.  The wire's part (a large DATA frame's head read alone, its body
moved past the decoder and charged as a DATA frame's) is sans-IO; the rest runs on real
loopback sockets: a client's connection to a real front, whose exchange goes over a real
link, with Twisted's TCP transports on a MemoryReactor driven by hand and the sending edge
played with the wire's own encoders.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gathered_writes import drain
from test_links import Handler, make_link
from test_splice import DEADLINE, pair, wait_readable
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from edgemesh.exchange import IRequestBody, IResponder, RequestHead, SourceKind
from edgemesh.transports import spliced_bytes
from edgemesh.transports._front import HTTPFrontFactory
from edgemesh.transports._halves import AWAIT_MIN, AWAIT_SMALL_FRAMES, AWAIT_STREAMS
from edgemesh.transports._io import SPLICE_MIN, buffered, socket_under, splice_pipe
from edgemesh.transports._links import read_lowat
from edgemesh.wire import (
    DATA_HEAD_MAX,
    Connection,
    Data,
    FrameDecoder,
    Limits,
    ProtocolError,
    Request,
    data_head_at,
    encode_hello,
    encode_request,
    encode_response,
)
from edgemesh.wire._frames import DATA, encode_data, encode_data_head

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux's")

MiB = 1 << 20
WIDE = Limits(initial_window=8 * MiB, max_window=8 * MiB)
"""edge-1's limits in these tests: a whole test body fits the credit of its hello, so the
hand-played sender needs no WINDOW frames (the integration tests run the real credit)."""


# --- the wire's part ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(stream=st.integers(1, (1 << 31) - 1), size=st.integers(0, 256 * 1024 - 64),
       end=st.booleans())
def test_any_data_head_is_told_with_its_frames_size(stream: int, size: int, end: bool) -> None:
    head = encode_data_head(stream, end, size)
    peeked = (head + b"x" * DATA_HEAD_MAX)[:DATA_HEAD_MAX]
    assert len(head) <= DATA_HEAD_MAX
    assert data_head_at(peeked) == (stream, len(head), size)
    # A frame read alone is what data_head_at says it is: its head and its body.
    framed = encode_data(stream, end, b"y" * size)
    assert len(framed) == len(head) + size


def test_anything_but_a_data_head_is_not_one() -> None:
    assert data_head_at(b"") == (0, 0, 0)
    assert data_head_at(encode_data_head(3, False, 200_000)[:5]) == (0, 0, 0)
    response = encode_response(3, False, 200, b"OK", (), 10, b"")
    trailers = encode_data(3, True, b"x" * 100, ((b"grpc-status", b"0"),))
    assert data_head_at(trailers[:DATA_HEAD_MAX]) == (0, 0, 0)
    assert data_head_at(response[:DATA_HEAD_MAX]) == (0, 0, 0)


def opened(limits: Limits = WIDE) -> tuple[Connection, int]:
    """A client connection (edge-1's side) that sent a request and got a response head
    whose body follows."""
    edge1 = Connection(client=True, limits=limits)
    edge1.hello("edge-1", "edge")
    edge1.receive(encode_hello("edge-2", "edge", {"initial_window": 65536}))
    sid = edge1.open_stream(sent_end=True)
    edge1.receive(encode_response(sid, False, 200, b"OK", (), None, b""))
    return edge1, sid


@settings(max_examples=100, deadline=None)
@given(size=st.integers(SPLICE_MIN, 256 * 1024 - 64), cuts=st.lists(st.integers(1, 100_000)),
       end=st.booleans())
def test_a_body_moved_past_the_decoder_is_charged_as_its_frames_would_be(
        size: int, cuts: list[int], end: bool) -> None:
    edge1, sid = opened()
    head = encode_data_head(sid, end, size)
    assert edge1.receive(head) == []  # the head alone: nothing to pass on yet
    before = edge1._streams[sid].recv_window
    left = size
    ended = False
    for cut in [*cuts, size]:
        assert edge1.body_to_pipe() == (sid, left)
        piece = min(cut, left)
        ended = edge1.body_piped(sid, piece)
        left -= piece
        if not left:
            break
    assert ended == end
    assert edge1.body_to_pipe() == (0, 0)
    if not end:
        assert edge1._streams[sid].recv_window == before - size
        # The frames after it are decoded as ever.
        [frame] = edge1.receive(encode_data(sid, True, b"tail"))
        assert frame == Data(sid, True, b"tail")
    assert sid not in edge1._streams or not end


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 256 * 1024 - 64), min_size=1, max_size=5),
       cut=st.integers(0, 1 << 30))
def test_the_decoder_says_the_next_byte_starts_a_frame_only_where_one_does(
        sizes: list[int], cut: int) -> None:
    """What a link's peek relies on: with no body being gathered, nothing held
    (``mid_frame``) means the bytes fed so far end exactly where a frame ends."""
    edge1, sid = opened()
    wire = bytearray()
    ends = {0}
    for n, size in enumerate(sizes):
        wire += encode_data(sid, n == len(sizes) - 1, os.urandom(size))
        ends.add(len(wire))
    cut %= len(wire) + 1
    edge1.receive(bytes(wire[:cut]))
    decoder = edge1.decoder
    assert (not decoder.mid_frame and not decoder.body_need) == (cut in ends)


def test_a_few_bytes_that_came_with_the_head_are_handed_over_first_and_charged() -> None:
    edge1, sid = opened()
    size = 200_000
    body = os.urandom(size)
    before = edge1._streams[sid].recv_window
    # A read that ended 100 bytes into the body: they wait in the decoder (under 4 KiB).
    assert edge1.receive(encode_data_head(sid, True, size) + body[:100]) == []
    assert edge1.decoder.body_waiting() == (sid, size - 100, 100)
    assert edge1.body_to_pipe() == (sid, size - 100)
    assert edge1.held_piece(sid) == body[:100]
    assert edge1.held_piece(sid) == b""  # handed over once
    assert edge1._streams[sid].recv_window == before - 100
    assert edge1.body_piped(sid, size - 100)  # the end of the stream
    assert edge1.body_to_pipe() == (0, 0)


def test_the_held_bytes_count_against_the_credit_too() -> None:
    edge1, sid = opened(Limits())  # 64 KiB of credit
    edge1.receive(encode_data_head(sid, False, 65_536) + b"x" * 100)
    assert edge1.body_to_pipe() == (sid, 65_436)  # 100 held + 65 436 to come: all of it
    edge1, sid = opened(Limits())
    edge1.receive(encode_data_head(sid, False, 65_537) + b"x" * 100)
    assert edge1.body_to_pipe() == (0, 0)  # one byte past the credit: the decoder's


def test_a_body_beyond_the_credit_is_left_to_the_decoder_which_refuses_it() -> None:
    edge1, sid = opened(Limits())  # 64 KiB of credit
    edge1.receive(encode_data_head(sid, False, 200_000))
    assert edge1.body_to_pipe() == (0, 0)
    with pytest.raises(ProtocolError, match="flow-control window"):
        edge1.receive(b"x" * 200_000)


def test_passing_more_than_the_frame_holds_is_a_bug() -> None:
    decoder = FrameDecoder(Limits())
    assert decoder.body_waiting() == (0, 0, 0)
    with pytest.raises(ValueError):
        decoder.body_passed(1)


# --- a client's connection to a front, its exchange over a link, on real sockets ------------


class Receiver:
    """edge-1 of path 2: a client's connection to a front (a real socket pair; the test
    is the client) whose exchange goes over a link (a real socket pair; the test plays
    edge-2 with the wire's encoders)."""

    def __init__(self, splice: bool = True, client_rcvbuf: int | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.edge1 = make_link(self.clock, Handler(), True, splice=splice, limits=WIDE)
        link_ours, self.edge2 = pair()
        # Room for a few frames that arrived and wait (answer's settle).
        link_ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * MiB)
        self.link = tcp.Server(link_ours, self.edge1, ("127.0.0.1", 1), None, 1, self.clock)  # type: ignore[arg-type]
        self.edge1.makeConnection(self.link)
        self.edge2.sendall(encode_hello("edge-2", "edge", {"initial_window": 65536}))
        self.link.doRead()
        self.decoder = FrameDecoder(Limits(), hello_first=True)
        self.decoder.feed(self.wait_for_link())  # edge-1's hello

        def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
            return self.edge1.open(head, "shop/web", 80, ("10.4.0.12", 8080), responder)

        self.factory = HTTPFrontFactory(self.clock, SourceKind.service_bus, dispatch)
        self.front_transport, self.client = self.connect_client(client_rcvbuf)
        self.front = self.front_transport.protocol
        self.got = bytearray()
        self.reset = False
        self.closed_client = False

    def connect_client(self, rcvbuf: int | None = None) -> tuple[Any, socket.socket]:
        """Another client's connection to the front: its transport and the client's socket."""
        ours, client = pair(rcvbuf)
        if rcvbuf is not None:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        protocol = self.factory.buildProtocol(("127.0.0.1", 3))  # type: ignore[arg-type]
        transport = tcp.Server(ours, protocol, ("127.0.0.1", 3), None, 3,  # type: ignore[arg-type]
                               self.clock)
        protocol.makeConnection(transport)
        return transport, client

    def wait_for_link(self) -> bytes:
        until = time.monotonic() + DEADLINE
        while True:
            self.clock.advance(0)
            data = drain(self.edge2)
            if data:
                return data
            wait_readable(self.edge2, until)

    def request(self, front: tuple[Any, socket.socket] | None = None) -> int:
        """The client (or ``front``'s) asks; edge-1 sends the request over the link: its
        stream id."""
        transport, client = front or (self.front_transport, self.client)
        client.sendall(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
        transport.doRead()
        [request] = [f for f in self.decoder.feed(self.wait_for_link()) if type(f) is Request]
        return request.stream

    def answer(self, sid: int, body: bytes, frame: int | list[int],
               cuts: list[int] | None = None, close_client_at: int | None = None,
               close_link_at: int | None = None, settle: bool = False) -> None:
        """edge-2 answers with ``body`` in DATA frames of ``frame`` bytes (or of these
        sizes), its socket's sends cut at ``cuts`` (repeated); edge-1 reads whenever its
        socket is readable.  ``close_link_at``: edge-2 sends that many bytes and closes.
        ``settle``: edge-1 reads only once all of a send has arrived."""
        wire = bytearray(encode_response(sid, False, 200, b"OK", (), len(body), b""))
        sizes_of_frames = frame if isinstance(frame, list) else [frame] * (len(body) // frame + 1)
        start = 0
        for size in sizes_of_frames:
            piece = body[start:start + size]
            start += len(piece)
            wire += encode_data_head(sid, start >= len(body), len(piece)) + piece
            if start >= len(body):
                break
        if close_link_at is not None:
            wire = wire[:close_link_at]
        sent = 0
        sizes = cuts or [len(wire)]
        until = time.monotonic() + DEADLINE * 3
        turn = 0
        while True:
            assert time.monotonic() < until, f"{len(self.got)} bytes came"
            if sent < len(wire):
                try:
                    went = self.edge2.send(wire[sent:sent + sizes[turn % len(sizes)]])
                except BlockingIOError:
                    went = 0
                sent += went
                turn += 1
                while settle and went and readable(self.link.socket) < went:
                    assert time.monotonic() < until, "a send never arrived whole"
            elif close_link_at is not None:
                self.edge2.close()
                close_link_at = None
            if close_client_at is not None and len(self.got) >= close_client_at:
                self.client.close()
                close_client_at = None
                self.closed_client = True
            if self.front_transport.connected and not self.closed_client:
                self.drain_client()
            self.step(self.link)
            self.step(self.front_transport)
            self.clock.advance(0)
            if self.link.disconnected:
                return
            if sent == len(wire) and self.done(body):
                return

    def wait_for_link_bytes(self, size: int) -> None:
        """Until ``size`` bytes wait in edge-1's link socket (edge-2's send arrived whole)."""
        until = time.monotonic() + DEADLINE
        while readable(self.link.socket) < size:
            assert time.monotonic() < until, "a send never arrived whole"
            wait_readable(self.link.socket, until)

    def drain_client(self) -> None:
        try:
            self.got += drain(self.client)
        except ConnectionResetError:  # the front aborted the connection (a truncated body)
            self.reset = True

    def step(self, transport: Any) -> None:
        if transport.disconnected:
            return
        if transport in self.clock.readers or transport is self.link:
            result = transport.doRead()
            if result is not None:
                transport.connectionLost(Failure(result))  # as the reactor would
                return
        if buffered(transport):
            result = transport.doWrite()
            if result is not None:
                transport.connectionLost(Failure(result))

    def done(self, body: bytes) -> bool:
        if self.closed_client:
            return not self.front_transport.connected
        if buffered(self.front_transport):
            return False
        head_end = self.got.find(b"\r\n\r\n")
        return head_end >= 0 and len(self.got) - head_end - 4 >= len(body)

    def body(self) -> bytes:
        head, _, rest = bytes(self.got).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Length: %d" % len(rest) in head
        return rest


@pytest.mark.parametrize(("size", "frame", "cuts", "least"), [
    # edge-2's frames when it splices a pod's body, its sends cut anywhere.
    (4 * MiB, 256 * 1024 - 64, [300_000, 70_000], 2 * MiB),
    # The first read ends early in the first frame: its rest is spliced, and the second
    # frame, its head read alone.
    (SPLICE_MIN * 2 + 20_007, SPLICE_MIN + 10_000, [5000, 300_000], SPLICE_MIN * 2),
    # The same with a first piece of the body under 4 KiB, held in the decoder (coalesced,
    # _VIEW_MIN): it goes first, through the pipe, then the frame's rest.
    (SPLICE_MIN * 3 + 7, SPLICE_MIN + 5000, [1000, 200_000, 70_000], SPLICE_MIN),
    # Both frames whole in the first read: nothing to splice.
    (SPLICE_MIN * 2 + 7, SPLICE_MIN + 5, [300_000], 0),
    # A receiver behind its sender: each read takes 512 KiB, two whole frames of 256 KiB
    # and a few bytes of the third; after a read with a large frame in it, those few bytes
    # go first through the pipe, then the rest, and the next frames' heads are read alone.
    (4 * MiB, 256 * 1024 - 64, [1_200_000], 2 * MiB),
    (3 * MiB, 64 * 1024, [300_000, 70_000], 0),  # frames below SPLICE_MIN: read as before
])
def test_a_body_goes_from_link_to_client_by_splice_and_arrives_unchanged(
        size: int, frame: int, cuts: list[int], least: int | None) -> None:
    world = Receiver()
    assert world.edge1.splices
    sid = world.request()
    body = os.urandom(size)
    before = spliced_bytes()
    world.answer(sid, body, frame, cuts=cuts)
    assert world.body() == body
    moved = spliced_bytes() - before
    if least is not None:
        assert moved >= least if least else moved == 0
    assert splice_pipe().held == 0  # type: ignore[union-attr]
    assert not world.link.disconnected
    # The link goes on: the next exchange on it is served as ever.
    sid = world.request()
    world.got.clear()
    world.answer(sid, b"small", 100)
    assert world.body() == b"small"


def readable(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_a_receiver_reading_whole_large_frames_splices_the_next_ones() -> None:
    """Each read takes exactly one whole frame of 200 000 bytes (never a rest to splice):
    after one, the link reads the next frame's head alone and splices its body."""
    world = Receiver()
    sid = world.request()
    size, frame = 2_000_000, 200_000
    body = os.urandom(size)
    head = len(encode_response(sid, False, 200, b"OK", (), size, b""))
    framed = len(encode_data_head(sid, False, frame)) + frame
    before = spliced_bytes()
    world.answer(sid, body, frame, cuts=[head + framed] + [framed] * (size // frame),
                 settle=True)
    assert world.body() == body
    assert spliced_bytes() - before >= size // 2


def test_bytes_after_a_read_that_ended_inside_a_head_are_never_taken_for_a_head() -> None:
    """Security: a read may end inside a frame's head; the bytes after it are that frame's
    (the head's rest, then its body: a pod's bytes), whatever they look like.  A pod can
    make them look like the head of a large DATA frame naming another client's stream: had
    the link peeked at them as a head, this frame's body would have been spliced to that
    client."""
    world = Receiver()
    sid_a = world.request()
    other = world.connect_client()
    sid_b = world.request(other)
    announced = 8 * MiB  # both responses stream: their clients take pipes
    world.edge2.sendall(encode_response(sid_a, False, 200, b"OK", (), announced, b"")
                        + encode_response(sid_b, False, 200, b"OK", (), announced, b""))
    world.wait_for_link_bytes(len(encode_response(sid_a, False, 200, b"OK", (), announced, b""))
                              * 2)
    world.link.doRead()
    world.clock.advance(0)
    for transport in (world.front_transport, other[0]):  # the heads leave for the clients
        world.step(transport)
    assert not buffered(world.front_transport) and not buffered(other[0])
    # A large frame read whole (the link then peeks before its next read), and all of the
    # next frame's head but its last byte.
    first = os.urandom(SPLICE_MIN + 1000)
    size = 200_001
    head = encode_data_head(sid_a, False, size)
    last = head[-1]
    assert last and sid_b < 0x80
    # From ``last`` on, the bytes announce a frame of last << 24 bytes: a DATA frame of
    # stream B (0x94, DATA, B, no flags, bin 32) whose body fills it.
    fake = (last << 24) - 9
    forged = bytes([0, 0, 0, 0x94, DATA, sid_b, 0, 0xC6]) + fake.to_bytes(4, "big")
    looks_like, _, announced_body = data_head_at(bytes([last]) + forged + b"x" * 32)
    assert looks_like == sid_b and announced_body >= SPLICE_MIN
    second = forged + os.urandom(size - len(forged))
    sent = encode_data_head(sid_a, False, len(first)) + first + head[:-1]
    world.edge2.sendall(sent)
    world.wait_for_link_bytes(len(sent))
    world.link.doRead()
    world.clock.advance(0)
    world.edge2.sendall(head[-1:] + second)
    got = {sid_a: bytearray(), sid_b: bytearray()}
    clients = {sid_a: world.client, sid_b: other[1]}

    def body_of(sid: int) -> bytes:
        return bytes(got[sid]).partition(b"\r\n\r\n")[2]

    until = time.monotonic() + DEADLINE
    while len(body_of(sid_a)) < len(first) + size:
        assert time.monotonic() < until, {sid: len(data) for sid, data in got.items()}
        for transport in (world.link, world.front_transport, other[0]):
            world.step(transport)
        world.clock.advance(0)
        for sid, client in clients.items():
            got[sid] += drain(client)
    assert got[sid_b].endswith(b"\r\n\r\n") and body_of(sid_b) == b""
    assert body_of(sid_a) == first + second
    assert splice_pipe().held == 0  # type: ignore[union-attr]


def test_the_small_frames_of_an_awaited_body_are_read_alone_and_the_large_ones_spliced(
        ) -> None:
    """A response body announced AWAIT_MIN or larger, to a client that takes pipes, is
    awaited on its link: a small frame is read alone, so the large frame behind it is
    spliced, not read whole with it (before, each small frame cost the next large one)."""
    world = Receiver()
    sid = world.request()
    small, large = 60_000, 250_000
    frames = [small, small, large, large, small, large, large, small, large] + [large] * 4
    body = os.urandom(sum(frames))
    assert len(body) >= AWAIT_MIN
    head = len(encode_response(sid, False, 200, b"OK", (), len(body), b""))
    sends = [head + len(encode_data_head(sid, False, frames[0])) + frames[0]] + [
        len(encode_data_head(sid, False, size)) + size for size in frames[1:]]
    before = spliced_bytes()
    world.answer(sid, body, frames, cuts=sends, settle=True)
    assert world.body() == body
    # Every large frame but the last few bytes read with a head (under 4 KiB each).
    assert spliced_bytes() - before >= frames.count(large) * (large - 4096)
    assert sid not in world.edge1.awaited  # its end forgot it


def test_an_awaited_body_of_small_frames_stops_being_awaited() -> None:
    """Reading small frames alone costs a system call each more: past AWAIT_SMALL_FRAMES
    of them, a body is read as usual."""
    world = Receiver()
    sid = world.request()
    response = encode_response(sid, False, 200, b"OK", (), 2 * AWAIT_MIN, b"")
    world.edge2.sendall(response)
    world.wait_for_link_bytes(len(response))
    world.step(world.link)
    world.clock.advance(0)
    assert sid in world.edge1.awaited and world.edge1.piping
    for n in range(1, AWAIT_SMALL_FRAMES + 1):
        frame = encode_data_head(sid, False, 60_000) + os.urandom(60_000)
        world.edge2.sendall(frame)
        world.wait_for_link_bytes(len(frame))
        world.step(world.link)
        world.clock.advance(0)
        world.drain_client()
        assert (sid in world.edge1.awaited) == (n < AWAIT_SMALL_FRAMES)
    assert sid in world.edge1.exchanges


def test_a_large_body_is_not_awaited_on_a_busy_link() -> None:
    """A link with more than AWAIT_STREAMS streams open shares its credit out in frames too
    small to splice: a large body there is read as usual (awaiting 1 MiB bodies cost edge-1
    +2.3 reads per MiB at 32 connections), also when its response is the first of a burst
    to arrive (the others' still to come: one stream receiving, six open); a 1 MiB body is
    awaited on a quiet link."""
    world = Receiver()
    clients = [(world.front_transport, world.client)]
    clients += [world.connect_client() for _ in range(AWAIT_STREAMS + 1)]
    sids = [world.request(client) for client in clients]
    assert world.edge1.connection.active_streams == AWAIT_STREAMS + 2
    response = encode_response(sids[0], False, 200, b"OK", (), 4 * AWAIT_MIN, b"")
    world.edge2.sendall(response)
    world.wait_for_link_bytes(len(response))
    world.step(world.link)
    world.clock.advance(0)
    assert world.edge1.connection._receiving == 1  # (the first response of the burst)
    assert not world.edge1.awaited
    # On a quiet link, a body of AWAIT_MIN (1 MiB) is awaited.
    quiet = Receiver()
    sid = quiet.request()
    response = encode_response(sid, False, 200, b"OK", (), AWAIT_MIN, b"")
    quiet.edge2.sendall(response)
    quiet.wait_for_link_bytes(len(response))
    quiet.step(quiet.link)
    quiet.clock.advance(0)
    assert AWAIT_MIN == 1 << 20 and quiet.edge1.awaited == {sid}


def test_an_aborted_awaited_body_is_forgotten() -> None:
    world = Receiver()
    sid = world.request()
    body = os.urandom(AWAIT_MIN)
    world.answer(sid, body, 256 * 1024 - 64, close_client_at=300_000)
    assert not world.edge1.awaited
    assert not world.link.disconnected


@settings(max_examples=15, deadline=None)
@given(frames=st.lists(st.integers(1, 256 * 1024 - 64), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 400_000), min_size=1, max_size=4))
def test_whatever_the_frames_and_the_reads_the_body_arrives_unchanged(
        frames: list[int], cuts: list[int]) -> None:
    world = Receiver()
    sid = world.request()
    body = os.urandom(sum(frames))
    world.answer(sid, body, frames, cuts=cuts)
    assert world.body() == body
    assert splice_pipe().held == 0  # type: ignore[union-attr]


def test_a_link_lost_mid_body_truncates_the_client_visibly() -> None:
    world = Receiver()
    sid = world.request()
    body = os.urandom(2 * MiB)
    before = spliced_bytes()
    world.answer(sid, body, 256 * 1024 - 64, cuts=[5000, 300_000], close_link_at=700_000)
    assert spliced_bytes() > before  # it was splicing when the link went
    assert world.link.disconnected
    assert splice_pipe().held == 0  # type: ignore[union-attr]
    # The client's connection is closed under it: a body shorter than its Content-Length.
    until = time.monotonic() + DEADLINE
    while world.front_transport.connected:
        assert time.monotonic() < until
        world.step(world.front_transport)
        world.clock.advance(0)
    world.drain_client()
    head, _, rest = bytes(world.got).partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head
    assert len(rest) < len(body) and body.startswith(rest)
    assert world.reset or not drain(world.client)  # reset, or closed after what came


def test_a_slow_client_gets_the_rest_as_bytes_in_order() -> None:
    world = Receiver(client_rcvbuf=16384)
    sid = world.request()
    body = os.urandom(2 * MiB)
    world.answer(sid, body, 256 * 1024 - 64)
    assert world.body() == body


def test_no_splice_copies_the_same_body() -> None:
    world = Receiver(splice=False)
    assert not world.edge1.splices
    sid = world.request()
    body = os.urandom(MiB)
    before = spliced_bytes()
    world.answer(sid, body, 256 * 1024 - 64)
    assert world.body() == body
    assert spliced_bytes() == before


def test_a_client_gone_mid_body_leaves_the_pipe_empty_and_the_link_up() -> None:
    world = Receiver()
    sid = world.request()
    body = os.urandom(4 * MiB)
    world.answer(sid, body, 256 * 1024 - 64, close_client_at=600_000)
    assert splice_pipe().held == 0  # type: ignore[union-attr]
    assert not world.link.disconnected
    assert sid not in world.edge1.exchanges


def test_a_client_that_takes_no_pipes_gets_the_bytes() -> None:
    world = Receiver()
    sid = world.request()
    [exchange] = world.edge1.exchanges.values()
    exchange._pipes = False  # as for a chunked or TLS client
    body = os.urandom(MiB)
    before = spliced_bytes()
    world.answer(sid, body, 256 * 1024 - 64)
    assert world.body() == body
    assert spliced_bytes() == before


# --- a frame's rest that comes slowly: the link wakes for large pieces (SO_RCVLOWAT) ---------


@settings(max_examples=500, deadline=None)
@given(moved=st.integers(1, MiB), rest=st.integers(0, MiB), since=st.floats(0, 100),
       paced=st.booleans())
def test_the_link_waits_for_a_large_piece_of_the_rest_but_never_long_at_its_rate(
        moved: int, rest: int, since: float, paced: bool) -> None:
    mark = read_lowat(moved, rest, since, paced)
    if not rest or (rest < 64 * 1024 and not paced):
        assert mark == 1  # none, or a short rest of a frame not paced yet: as it comes
        return
    assert 1 <= mark <= min(rest, 256 * 1024)  # never more than is on its way
    # At the rate the last piece came, the mark is there within 20 ms (or is one byte).
    assert mark == 1 or since * mark <= moved * 0.02 * (1 + 1e-9)
    if since * min(rest, 256 * 1024) <= moved * 0.02:
        assert mark == min(rest, 256 * 1024)  # fast enough: the whole piece


def lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


class SlowFrame:
    """A 1 MiB response body (its client takes pipes) in a DATA frame of all but its last
    64 bytes (``FRAME``, the largest a plain body's may be) whose bytes edge-2 sends piece by
    piece (``send``: each piece arrives whole before edge-1 reads), then one of those 64."""

    FRAME = MiB - 64

    def __init__(self, splice: bool = True) -> None:
        self.world = world = Receiver(splice=splice)
        self.sid = world.request()
        self.body = os.urandom(MiB)
        self.sent = 0
        response = encode_response(self.sid, False, 200, b"OK", (), MiB, b"")
        world.edge2.sendall(response)
        world.wait_for_link_bytes(len(response))
        world.step(world.link)  # a large body to a client that takes pipes: awaited
        world.clock.advance(0)
        world.step(world.front_transport)  # the head goes: the client takes pipes now
        world.drain_client()
        assert world.edge1.piping == splice
        head = encode_data_head(self.sid, False, self.FRAME)
        world.edge2.sendall(head)
        self.head = len(head)

    def send(self, size: int, after: float = 0.0) -> bool:
        """``size`` more bytes of the body arrive ``after`` seconds after the last read, and
        edge-1 reads: whether its socket polled readable once they were there."""
        world = self.world
        world.clock.advance(after)
        piece = self.body[self.sent:self.sent + size]
        world.edge2.sendall(piece)
        self.arrived(len(piece) + (self.head if not self.sent else 0))
        self.sent += len(piece)
        polled = bool(select.select([world.link.socket], [], [], 0)[0])
        world.step(world.link)
        world.step(world.front_transport)
        world.clock.advance(0)
        return polled

    def arrived(self, size: int) -> None:
        """Until ``size`` bytes wait in edge-1's link socket, polled for (not select(): the
        socket is not readable below its low-water mark)."""
        until = time.monotonic() + DEADLINE
        while readable(self.world.link.socket) < size:
            assert time.monotonic() < until, "a send never arrived whole"
            time.sleep(0.001)

    def finish(self) -> None:
        world = self.world
        world.edge2.sendall(self.body[self.sent:self.FRAME])
        world.edge2.sendall(encode_data(self.sid, True, self.body[self.FRAME:]))
        until = time.monotonic() + DEADLINE
        while not world.done(self.body):
            assert time.monotonic() < until, f"{len(world.got)} bytes came"
            world.drain_client()
            world.step(world.link)
            world.step(world.front_transport)
            world.clock.advance(0)
            select.select([world.client], [], [], 0.001)
        assert world.body() == self.body


def test_a_frames_rest_wakes_the_link_once_a_large_piece_of_it_is_there() -> None:
    slow = SlowFrame()
    world = slow.world
    before = spliced_bytes()
    slow.send(150_000)  # came at once (no time passed): the next wake-up is 256 KiB away
    assert spliced_bytes() - before >= 150_000
    assert world.edge1.lowat == lowat(world.link.socket) == 256 * 1024
    # 10 kB came in the second since: not a wake-up (what the mark saves), then what comes
    # in 20 ms at that rate
    assert not slow.send(10_000, after=1.0)
    assert world.edge1.lowat == lowat(world.link.socket) == 200
    slow.send(slow.FRAME - slow.sent - 1000)  # fast again, 1000 bytes to come: all of them
    assert world.edge1.lowat == lowat(world.link.socket) == 1000
    slow.finish()  # the frame's end: readable at every byte again
    assert world.edge1.lowat == lowat(world.link.socket) == 1
    assert splice_pipe().held == 0  # type: ignore[union-attr]
    sid = world.request()  # and the next exchange on the link is served as ever
    world.got.clear()
    world.answer(sid, b"small", 100)
    assert world.body() == b"small"


def test_a_short_rest_of_a_frame_not_paced_yet_is_read_as_it_comes() -> None:
    slow = SlowFrame()
    world = slow.world
    slow.send(slow.FRAME - 50_000)  # (as at 32 connections: a read ends near a frame's end)
    assert world.edge1.lowat == lowat(world.link.socket) == 1
    slow.finish()


def test_a_frames_rest_read_as_usual_is_read_in_large_pieces_too() -> None:
    """Its splice given up (a client that no longer takes pipes), the frame's rest is read
    into the process, and still in large pieces; every byte again at the frame's end."""
    slow = SlowFrame()
    world = slow.world
    slow.send(150_000)
    assert lowat(world.link.socket) == 256 * 1024
    [exchange] = world.edge1.exchanges.values()
    exchange._pipes = False  # type: ignore[union-attr]  # (as for a client that stopped taking them)
    before = spliced_bytes()
    slow.send(5000, after=0.5)  # 10 kB a second: what comes in 20 ms
    assert spliced_bytes() == before
    assert world.edge1.lowat == lowat(world.link.socket) == 200
    slow.finish()
    assert world.edge1.lowat == lowat(world.link.socket) == 1


def test_a_frames_rest_is_read_in_large_pieces_without_splice() -> None:
    """A link that does not splice (``--no-splice``; under TLS the same, less a record:
    test_tls.py) gathers the body in the process, in large pieces."""
    slow = SlowFrame(splice=False)
    world = slow.world
    before = spliced_bytes()
    slow.send(150_000)
    assert world.edge1.lowat == lowat(world.link.socket) == 256 * 1024
    slow.send(10_000, after=1.0)
    assert world.edge1.lowat == lowat(world.link.socket) == 200
    slow.finish()
    assert world.edge1.lowat == lowat(world.link.socket) == 1
    assert spliced_bytes() == before


def test_the_socket_under_a_links_layers_is_found_and_nothing_else_is() -> None:
    ours, theirs = pair()
    try:
        tcp_transport = tcp.Server(ours, Handler(), ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                                   MemoryReactorClock())
        tls = SimpleNamespace(transport=tcp_transport)  # (a TLS layer: a protocol wrapper)
        guard = SimpleNamespace(transport=tls)  # (the handshake guard above it)
        assert socket_under(tcp_transport) is ours
        assert socket_under(guard) is ours
        assert socket_under(StringTransport()) is None
        assert socket_under(None) is None
    finally:
        ours.close()
        theirs.close()


def test_a_heartbeat_leaves_the_link_readable_at_every_byte_before_judging_silence() -> None:
    """A frame's rest that came at a good rate and then slows to a trickle must not leave
    the link unread until its heartbeat timeout: each beat takes what came."""
    slow = SlowFrame()
    world = slow.world
    slow.send(150_000)
    assert lowat(world.link.socket) == 256 * 1024
    world.clock.advance(world.edge1.heartbeat_interval)
    assert world.edge1.lowat == lowat(world.link.socket) == 1
    assert not world.link.disconnected
    slow.finish()


# --- the router relaying: from one link's socket to another's -------------------------------


class Relay:
    """The router relaying edge-4's response to edge-1 (edge-1 cannot reach edge-4's hub):
    the link from edge-4 (a real socket pair; the test plays edge-4) answers an exchange
    whose responder is an InboundExchange of the link from edge-1 (a real socket pair; the
    test plays edge-1 with a sans-IO Connection that grants 8 MiB of credit)."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.from_edge4 = make_link(self.clock, Handler(), True, limits=WIDE)
        ours, self.edge4 = pair()
        self.edge4_side = tcp.Server(ours, self.from_edge4, ("127.0.0.1", 4), None, 4,  # type: ignore[arg-type]
                                     self.clock)
        self.from_edge4.makeConnection(self.edge4_side)
        self.edge4.sendall(encode_hello("edge-4", "edge", {"initial_window": 65536}))
        self.edge4_side.doRead()
        self.edge4_frames = FrameDecoder(Limits(), hello_first=True)
        handler = Handler()
        self.from_edge1 = make_link(self.clock, handler, False)
        ours, self.edge1 = pair()
        self.edge1_side = tcp.Server(ours, self.from_edge1, ("127.0.0.1", 5), None, 5,  # type: ignore[arg-type]
                                     self.clock)
        self.from_edge1.makeConnection(self.edge1_side)
        self.edge1_conn = Connection(client=True, limits=WIDE)
        hello = self.edge1_conn.hello("edge-1", "edge")
        self.sid1 = self.edge1_conn.open_stream(sent_end=True)
        self.edge1.sendall(hello + encode_request(
            self.sid1, True, b"GET", b"/big", b"relayed", (), None, "10.0.0.9", "shop/relayed",
            80, None, b""))
        until = time.monotonic() + DEADLINE
        while not handler.inbounds:
            assert time.monotonic() < until
            self.edge1_side.doRead()
        self.inbound = handler.inbounds[0].exchange
        self.body = bytearray()
        self.ended = False

    def open(self) -> int:
        """The router sends the request on to edge-4: its stream id there."""
        head = RequestHead(b"GET", b"/big", b"relayed", (), 0, client="10.0.0.9")
        self.from_edge4.open(head, "shop/relayed", 80, ("10.4.0.13", 8080), self.inbound)
        until = time.monotonic() + DEADLINE
        while True:
            self.clock.advance(0)
            frames = self.edge4_frames.feed(drain(self.edge4))
            requests = [f for f in frames if type(f) is Request]
            if requests:
                return requests[0].stream
            wait_readable(self.edge4, until)

    def answer(self, sid: int, body: bytes, frame: int) -> None:
        wire = bytearray(encode_response(sid, False, 200, b"OK", (), len(body), b""))
        for start in range(0, len(body), frame):
            piece = body[start:start + frame]
            wire += encode_data_head(sid, start + frame >= len(body), len(piece)) + piece
        sent = 0
        until = time.monotonic() + DEADLINE * 3
        while not self.ended:
            assert time.monotonic() < until, f"{len(self.body)} bytes came"
            if sent < len(wire):
                try:
                    sent += self.edge4.send(wire[sent:sent + 100_000])
                except BlockingIOError:
                    pass
            for side in (self.edge4_side, self.edge1_side):
                side.doRead()
                if buffered(side):
                    side.doWrite()
            self.clock.advance(0)
            data = drain(self.edge1)
            if data:
                for got in self.edge1_conn.receive(data):
                    if type(got) is Data:
                        self.body += got.data
                        self.ended = got.end


def test_the_router_relays_a_body_from_link_to_link_by_splice() -> None:
    relay = Relay()
    assert relay.from_edge4.splices and relay.from_edge1.splices
    sid = relay.open()
    body = os.urandom(4 * MiB)
    before = spliced_bytes()
    relay.answer(sid, body, 256 * 1024 - 64)
    assert bytes(relay.body) == body
    # Spliced in from edge-4's link and on to edge-1's (counted once, as the pipe empties).
    assert spliced_bytes() - before >= 2 * MiB
    assert splice_pipe().held == 0  # type: ignore[union-attr]
