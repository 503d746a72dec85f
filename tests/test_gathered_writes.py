"""A link's buffered writes leave by sendmsg as they are, not joined by Twisted's doWrite
(transports/_io.gathered_writes): same bytes, same order, same producer and close rules."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor

from edgemesh.transports._io import buffered, gathered_writes


class Producer:
    def __init__(self) -> None:
        self.paused = False
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        pass


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield ours, theirs
    ours.close()
    theirs.close()


def transport_over(sock: socket.socket) -> tcp.Server:
    transport = tcp.Server(sock, Protocol(), ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                           MemoryReactor())
    gathered_writes(transport)
    return transport


def drain(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            piece = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not piece:
            return bytes(got)
        got += piece


def write_out(transport: tcp.Server, theirs: socket.socket) -> bytes:
    """Let ``transport`` send what waits (its doWrite, as the reactor would), bounded; what
    ``theirs`` received."""
    got = bytearray()
    for _ in range(10_000):
        transport.doWrite()
        got += drain(theirs)
        if not buffered(transport):
            break
    return bytes(got + drain(theirs))


def test_waiting_writes_leave_in_order_without_a_join(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = transport_over(ours)
    producer = Producer()
    transport.registerProducer(producer, True)
    writes = [bytes([n]) * (3000 + 997 * n) for n in range(40)]
    for data in writes:
        transport.write(data)
    assert producer.paused  # past Twisted's bufferSize, as before
    got = write_out(transport, theirs)
    assert got == b"".join(writes)
    # The write a send cut was kept as it is, never joined with others.
    assert transport.dataBuffer == b""
    assert not producer.paused and producer.resumes == 1
    assert transport not in transport.reactor.getWriters()  # type: ignore[attr-defined]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40_000), st.booleans()), min_size=1, max_size=30))
def test_any_writes_and_partial_sends_keep_the_bytes(writes: list[tuple[int, bool]]) -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        theirs.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = transport_over(ours)
        expected = bytearray()
        got = bytearray()
        for n, (size, send_now) in enumerate(writes):
            data = bytes([n % 251]) * size
            expected += data
            transport.write(data)
            if send_now:
                transport.doWrite()
                got += drain(theirs)
            pending = buffered(transport)
            assert 0 <= pending <= len(expected) - len(got)
        for _ in range(100_000):
            if not buffered(transport):
                break
            transport.doWrite()
            got += drain(theirs)
        got += drain(theirs)
        assert bytes(got) == bytes(expected)
    finally:
        ours.close()
        theirs.close()


def test_a_close_after_the_last_write_happens_once_it_is_sent(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = transport_over(ours)
    transport.write(b"x" * 100_000)
    transport.loseConnection()
    result: object = None
    got = bytearray()
    for _ in range(10_000):
        result = transport.doWrite()
        got += drain(theirs)
        if result is not None:
            break
    assert result is main.CONNECTION_DONE
    assert bytes(got) == b"x" * 100_000


def test_a_send_error_loses_the_connection(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = transport_over(ours)
    transport.write(b"x" * 100_000)
    theirs.close()
    results = {transport.doWrite() for _ in range(3)}
    assert main.CONNECTION_LOST in results


def test_other_transports_keep_their_own_write() -> None:
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    gathered_writes(transport)
    assert "doWrite" not in transport.__dict__


def test_the_queue_is_twisteds_write_sequence_in_one_call(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    """gathered_writes' queue: Twisted's writeSequence (a link's bulk frames past its turn's
    budget), its pause rule and its write interest; bytes kept as they are, a view copied
    (what waits is what the buffer counts)."""
    ours, theirs = sockets
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                           MemoryReactor())
    queue = gathered_writes(transport)
    assert queue is not None
    producer = Producer()
    transport.registerProducer(producer, True)
    body = bytes(range(256)) * 1024
    pieces = [b"HEAD", memoryview(body)[:100_000], b"HEAD", memoryview(body)[100_000:]]
    queue(pieces[:2])
    assert transport._tempDataBuffer[0] is pieces[0]
    assert type(transport._tempDataBuffer[1]) is bytes  # a copy: not the whole body held
    assert transport._tempDataLen == 100_004
    assert transport in transport.reactor.getWriters()  # type: ignore[attr-defined]
    assert producer.paused  # past bufferSize (64 KiB), as Twisted's writeSequence
    producer.paused = False
    queue(pieces[2:])
    assert transport._tempDataLen == 8 + len(body)
    assert producer.paused
    got = write_out(transport, theirs)
    assert got == b"HEAD" + body[:100_000] + b"HEAD" + body[100_000:]
    assert transport not in transport.reactor.getWriters()  # type: ignore[attr-defined]
    assert producer.resumes == 1


def test_the_queue_takes_nothing_once_the_connection_is_lost(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = sockets
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                           MemoryReactor())
    queue = gathered_writes(transport)
    assert queue is not None
    transport.connected = False
    queue((b"HEAD", b"body"))
    assert transport._tempDataLen == 0 and transport._tempDataBuffer == []


def test_write_all_now_with_the_queue_joins_nothing(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    """What the kernel does not take of a sendmsg waits in the queue part by part: the bytes
    parts the send did not reach as they are, not joined with the views (which are copied)."""
    from edgemesh.transports._io import write_all_now

    ours, theirs = sockets
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                           MemoryReactor())
    queue = gathered_writes(transport)
    body = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes
    tail = bytes(range(256)) * 64
    view = memoryview(body)[:1000]
    assert not write_all_now(transport, (b"HEAD", body, b"HEAD", tail, view), queue)
    rest, head, kept, copied = transport._tempDataBuffer
    assert 0 < len(rest) < len(body) and head == b"HEAD" and kept is tail
    assert type(copied) is bytes and copied == view
    assert transport._tempDataLen == len(rest) + 4 + len(tail) + 1000
    got = bytearray()
    for _ in range(100_000):
        got += drain(theirs)
        if not buffered(transport):
            break
        transport.doWrite()
    got += drain(theirs)
    assert bytes(got) == b"HEAD" + body + b"HEAD" + tail + body[:1000]


def test_other_transports_have_no_queue() -> None:
    from twisted.internet.testing import StringTransport

    assert gathered_writes(StringTransport()) is None
