"""A link's socket is read into a pooled buffer (transports/_io.pooled_reads): no new bytes
object per read, which glibc mapped and page-faulted in when its heap had no hole for it
(p2 /big's bimodal slow state, bench/results-2026-12-04.md section 2)."""

from __future__ import annotations

import errno
import mmap
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import main, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgemesh.transports import _io
from edgemesh.transports._io import LARGE_BUFFER, POOLED_READ, READS_PER_TURN, pooled_reads
from edgemesh.transports._links import EnvelopeLink
from edgemesh.wire import Data, FrameDecoder, Limits, encode_data


class Keeper(Protocol):
    """Notes every read; keeps the views it is told to keep (a consumer that breaks the
    contract), copies the rest."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.kept: list[memoryview] = []
        self.reads: list[bytes] = []
        self.buffers: list[int] = []
        self.kinds: list[type] = []

    def dataReceived(self, data: Any) -> None:
        self.kinds.append(type(data))
        self.reads.append(bytes(data))
        if type(data) is memoryview:
            assert data.readonly
            self.buffers.append(id(data.obj))
            if self.keep:
                self.kept.append(data)


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    saved = list(_io._read_pool)
    _io._read_pool.clear()
    yield
    _io._read_pool[:] = saved


def server(sock: socket.socket, protocol: Protocol, reactor: Any = None) -> tcp.Server:
    """A Twisted TCP transport over ``sock`` (a reactor that is never run: the test calls
    doRead itself, as the reactor would once the socket is readable)."""
    transport = tcp.Server(sock, protocol, ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                           reactor or MemoryReactorClock())
    protocol.makeConnection(transport)
    return transport


def test_reads_go_into_one_reused_buffer(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = socket_pair
    protocol = Keeper()
    transport = server(ours, protocol)
    transport.bufferSize = LARGE_BUFFER
    pooled_reads(transport)
    for chunk in (b"first read", b"x" * 70_000, b"third"):
        theirs.sendall(chunk)
        assert transport.doRead() is None
    assert protocol.reads == [b"first read", b"x" * 70_000, b"third"]
    assert protocol.kinds == [memoryview] * 3
    assert len(set(protocol.buffers)) == 1  # the same buffer every time
    assert len(_io._read_pool) == 1


def test_a_kept_view_is_never_overwritten(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    """A consumer that keeps a view past dataReceived (against the contract) holds its
    buffer: the next reads go elsewhere and the kept bytes stay as they were."""
    ours, theirs = socket_pair
    protocol = Keeper(keep=True)
    transport = server(ours, protocol)
    pooled_reads(transport)
    for index in range(5):
        theirs.sendall(bytes([index]) * 1000)
        transport.doRead()
    assert [bytes(view) for view in protocol.kept] == [bytes([i]) * 1000 for i in range(5)]
    assert len(set(protocol.buffers)) == 5
    assert len(_io._read_pool) == 3  # bounded: the oldest ones left the pool
    protocol.kept.clear()
    theirs.sendall(b"again")
    transport.doRead()
    assert protocol.buffers[-1] in protocol.buffers[2:5]  # a released one is reused


def test_this_interpreter_counts_a_view_as_a_reference() -> None:
    """The pools reuse a buffer only where ``getrefcount(pool[i]) == 2`` means nobody else
    holds it; CPython 3.11 (what CI runs) is such an interpreter."""
    assert _io.REFCOUNT_SEES_VIEWS
    assert _io._refcount_sees_views()


def test_without_that_no_buffer_is_pooled(
        socket_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where reference counts cannot tell (REFCOUNT_SEES_VIEWS false: the pool's size is 0),
    every read gets a buffer of its own, even when no view of the last one is alive."""
    monkeypatch.setattr(_io, "_READ_POOL_MAX", 0)
    ours, theirs = socket_pair
    protocol = Keeper()
    transport = server(ours, protocol)
    pooled_reads(transport)
    for index in range(4):
        theirs.sendall(bytes([index]) * 1000)
        transport.doRead()
    assert protocol.reads == [bytes([i]) * 1000 for i in range(4)]
    assert _io._read_pool == []
    assert len(protocol.buffers) == 4


def test_reads_are_a_link_read_at_most(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    """POOLED_READ per read, the pool's buffer size (not the link's bufferSize,
    use_large_buffer's LARGE_BUFFER: its write buffer's threshold)."""
    ours, theirs = socket_pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 << 20)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 << 20)
    protocol = Keeper()
    transport = server(ours, protocol)
    pooled_reads(transport)
    total = POOLED_READ + 1000
    theirs.sendall(b"y" * total)
    while sum(map(len, protocol.reads)) < total:
        transport.doRead()
    assert max(map(len, protocol.reads)) <= POOLED_READ
    assert b"".join(protocol.reads) == b"y" * total


@pytest.fixture
def epoll_reactor() -> Iterator[EPollReactor]:
    """An epoll reactor that is never run: its set of watched fds is what the read loop
    consults (a test calls doRead itself, as the reactor would on a readable event)."""
    reactor = EPollReactor()
    yield reactor
    reactor.waker.connectionLost(None)
    reactor._poller.close()


def big_pair(
    socket_pair: tuple[socket.socket, socket.socket],
) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket_pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    theirs.settimeout(5)
    return ours, theirs


def test_full_reads_go_on_in_the_same_event(socket_pair: tuple[socket.socket, socket.socket],
                                            epoll_reactor: EPollReactor) -> None:
    """A read that fills its buffer is followed by another (the link fell behind), up to
    READS_PER_TURN of them; a read that does not fill it ends the event."""
    ours, theirs = big_pair(socket_pair)
    protocol = Keeper()
    transport = server(ours, protocol, epoll_reactor)
    pooled_reads(transport)
    transport.startReading()
    theirs.sendall(b"a" * (2 * POOLED_READ + 100))
    assert transport.doRead() is None
    assert list(map(len, protocol.reads)) == [POOLED_READ, POOLED_READ, 100]
    protocol.reads.clear()
    theirs.sendall(b"b" * ((READS_PER_TURN + 1) * POOLED_READ))
    transport.doRead()
    assert list(map(len, protocol.reads)) == [POOLED_READ] * READS_PER_TURN  # bounded
    transport.doRead()
    assert len(protocol.reads) == READS_PER_TURN + 1
    transport.stopReading()


def test_no_read_after_the_protocol_paused_the_transport(
        socket_pair: tuple[socket.socket, socket.socket], epoll_reactor: EPollReactor) -> None:
    ours, theirs = big_pair(socket_pair)

    class Stopping(Keeper):
        """Pauses its transport after each read, or closes it."""

        close = False

        def dataReceived(self, data: Any) -> None:
            super().dataReceived(data)
            if self.close:
                self.transport.loseConnection()  # type: ignore[union-attr]
            else:
                self.transport.pauseProducing()  # type: ignore[union-attr]

    protocol = Stopping()
    transport = server(ours, protocol, epoll_reactor)
    pooled_reads(transport)
    transport.startReading()
    theirs.sendall(b"c" * (2 * POOLED_READ))
    transport.doRead()
    assert list(map(len, protocol.reads)) == [POOLED_READ]
    # ...nor after it closed the connection.
    transport.resumeProducing()
    protocol.close = True
    theirs.sendall(b"d" * POOLED_READ)
    transport.doRead()
    assert list(map(len, protocol.reads)) == [POOLED_READ, POOLED_READ]
    transport.stopReading()


def test_nothing_to_read_end_and_error(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = socket_pair
    protocol = Keeper()
    transport = server(ours, protocol)
    pooled_reads(transport)
    assert transport.doRead() is None  # EWOULDBLOCK: nothing yet
    assert protocol.reads == []
    theirs.close()
    assert transport.doRead() is main.CONNECTION_DONE
    assert len(_io._read_pool) == 1  # the buffer went back either way

    class Failing:
        def recv_into(self, buffer: Any) -> int:
            raise OSError(errno.ECONNRESET, "reset")

    other = server(socket.socket(), Keeper())
    other.socket = Failing()  # type: ignore[assignment]
    pooled_reads(other)
    assert other.doRead() is main.CONNECTION_LOST
    other.socket = ours


def test_other_transports_keep_their_reads() -> None:
    transport = StringTransport()
    pooled_reads(transport)
    assert "doRead" not in vars(transport)


def test_a_link_on_plain_tcp_reads_into_the_pool(
        socket_pair: tuple[socket.socket, socket.socket]) -> None:
    """What fixes the slow state: a link's TCP transport reads into the pool, not into a
    new bytes object per read (on the code before, the link got bytes)."""
    ours, theirs = socket_pair
    seen: list[Any] = []

    class Recording(EnvelopeLink):
        def dataReceived(self, data: Any) -> None:
            seen.append(data)
            super().dataReceived(data)

    class Handler:
        def link_ready(self, link: Any) -> None: ...
        def link_lost(self, link: Any, reason: str) -> None: ...

    link = Recording(MemoryReactorClock(), Handler(), node="edge-2",  # type: ignore[arg-type]
                     role="edge", client=False)
    transport = server(ours, link)
    peer = EnvelopeLink(MemoryReactorClock(), Handler(), node="edge-1",  # type: ignore[arg-type]
                        role="edge", client=True)
    theirs.sendall(peer.connection.hello("edge-1", "edge"))
    transport.doRead()
    assert link.connection.ready
    assert [type(data) for data in seen] == [memoryview]
    assert isinstance(seen[0].obj, mmap.mmap) and seen[0].readonly
    link.close_now("test over")


# --- the decoder keeps nothing of a read past feed() -----------------------------------


_frames = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=2**20),
        st.booleans(),
        st.one_of(
            st.binary(max_size=40),
            st.integers(min_value=3_000, max_value=140_000).map(lambda n: bytes([n % 251]) * n),
        ),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(_frames, st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=30))
def test_decoding_from_one_overwritten_buffer(frames: list[tuple[int, bool, bytes]],
                                              cuts: list[int]) -> None:
    """Every read lands in the same buffer, overwritten by the next one (what a pooled
    buffer is when nothing holds a view), and the frames' bodies are taken as soon as each
    feed returns, as a link's consumers do: the same frames as from bytes.  A decoder
    that kept a view of a read (an unfinished frame, a small piece) would yield bytes of a
    later read."""
    wire = b"".join(encode_data(stream, end, data) for stream, end, data in frames)
    decoder = FrameDecoder(Limits())
    buffer = bytearray(LARGE_BUFFER)
    got: list[tuple[int, bool, bytes]] = []
    position = 0
    for cut in [max(cut, 200) for cut in cuts] * (len(wire) // (200 * len(cuts)) + 1):
        piece = wire[position : position + cut]
        buffer[: len(piece)] = piece
        read = memoryview(buffer)[: len(piece)].toreadonly()
        for frame in decoder.feed(read):
            assert type(frame) is Data
            got.append((frame.stream, frame.end, bytes(frame.data)))
        del read
        buffer[:] = b"\xee" * len(buffer)  # the next read's bytes, before it arrives
        position += cut
        if position >= len(wire):
            break
    assert _merged(got) == _merged([(stream, end, data) for stream, end, data in frames])


def test_a_large_body_in_a_pooled_read_is_a_view_of_it() -> None:
    """No copy of a body from a pooled read either (read-only views go on as views)."""
    buffer = mmap.mmap(-1, LARGE_BUFFER)
    wire = encode_data(5, True, b"v" * 100_000)
    buffer[: len(wire)] = wire
    frames = FrameDecoder(Limits()).feed(memoryview(buffer)[: len(wire)].toreadonly())
    assert len(frames) == 1
    frame = frames[0]
    assert type(frame) is Data and type(frame.data) is memoryview
    assert frame.data.obj is buffer and bytes(frame.data) == b"v" * 100_000


def _merged(frames: list[tuple[int, bool, bytes]]) -> list[tuple[int, bool, bytes]]:
    out: list[tuple[int, bool, bytes]] = []
    for stream, end, data in frames:
        if out and out[-1][0] == stream and not out[-1][1]:
            out[-1] = (stream, end, out[-1][2] + data)
        else:
            out.append((stream, end, data))
    return out
