"""A frame head and its bulk body leave in one sendmsg, not joined by Twisted (issue 15)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor

from edgemesh.transports._io import write_all_after_waiting, write_parts_now


def _server_over(sock: socket.socket) -> tcp.Server:
    """A real Twisted TCP transport (the class the fast path checks for) around one end of
    a socket pair, on a memory reactor: nothing runs unless the test calls it."""
    return tcp.Server(sock, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactor())  # type: ignore[arg-type]


Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A connected socket pair (left: the transport's end, right: the peer's), closed after."""
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def _drain(sock: socket.socket, size: int) -> bytes:
    sock.setblocking(False)
    got = bytearray()
    for _ in range(100_000):  # bounded
        try:
            piece = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not piece:
            break
        got += piece
        if len(got) >= size:
            break
    return bytes(got)


def test_head_and_body_leave_at_once_when_the_transport_is_idle(pair: Pair) -> None:
    left, right = pair
    transport = _server_over(left)
    head, body = b"HEAD", bytes(range(256)) * 256
    write_parts_now(transport, head, body)
    # Nothing was handed to Twisted (whose doWrite would join head and body).
    assert transport._tempDataLen == 0
    assert transport._tempDataBuffer == []
    assert _drain(right, len(head) + len(body)) == head + body


def test_what_the_kernel_does_not_take_is_buffered_in_order(pair: Pair) -> None:
    left, right = pair
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = _server_over(left)
    head, body = b"H" * 10, bytes(range(256)) * 8192  # 2 MiB: more than the buffer
    write_parts_now(transport, head, body)
    pending = transport._tempDataLen
    assert 0 < pending < len(body)
    # Only the rest of the body is held, as one piece (no join of head and body).
    assert len(transport._tempDataBuffer) == 1
    got = bytearray()
    for _ in range(10_000):  # bounded: each round the peer reads, Twisted writes
        got += _drain(right, len(head) + len(body) - len(got))
        if len(got) >= len(head) + len(body):
            break
        transport.doWrite()
    assert bytes(got) == head + body


def test_a_busy_transport_keeps_the_order(pair: Pair) -> None:
    """With bytes already waiting in Twisted's buffer, nothing may overtake them."""
    left, right = pair
    transport = _server_over(left)
    transport.write(b"first ")
    write_parts_now(transport, b"head ", b"body")
    assert transport._tempDataLen == len(b"first head body")
    transport.doWrite()
    assert _drain(right, 15) == b"first head body"


def test_a_buffered_head_taken_along_leaves_nothing_to_write(pair: Pair) -> None:
    """A response head the front buffered (Twisted then wants the socket writable) leaves
    with the first body piece; with nothing left, the transport stops writing at once, not
    in a doWrite of its own a turn later (an empty send)."""
    left, right = pair
    transport = _server_over(left)
    reactor: Any = transport.reactor
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport in reactor.writers
    assert write_all_after_waiting(transport, [b"body"])
    assert transport not in reactor.writers
    assert _drain(right, 23) == b"HTTP/1.1 200 OK\r\n\r\nbody"
    # What the kernel does not take is buffered: the transport keeps writing.
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport.write(b"head ")
    assert not write_all_after_waiting(transport, [b"x" * (4 << 20)])
    assert transport in reactor.writers and transport._tempDataLen > 0


def test_a_write_half_close_asked_meanwhile_is_left_to_twisteds_dowrite(pair: Pair) -> None:
    left, right = pair
    transport = _server_over(left)
    reactor: Any = transport.reactor
    transport.write(b"head ")
    transport.loseWriteConnection()
    assert write_all_after_waiting(transport, [b"body"])
    assert transport in reactor.writers  # its doWrite still has the half-close to do
    transport.doWrite()
    right.settimeout(5)
    assert right.recv(64) == b"head body" and right.recv(64) == b""  # then the FIN


def _link_over(sock: socket.socket) -> tuple[Any, Any, tcp.Server]:
    """An edge's EnvelopeLink on a plain TCP transport over ``sock``, on a memory clock:
    (clock, link, transport)."""
    from twisted.internet.testing import MemoryReactorClock

    from edgemesh.transports._links import EnvelopeLink

    class Handler:
        def link_ready(self, link: object) -> None: ...
        def link_lost(self, link: object, reason: str) -> None: ...

    clock = MemoryReactorClock()
    link = EnvelopeLink(clock, Handler(), node="edge-1", role="edge", client=True)  # type: ignore[arg-type]
    transport = tcp.Server(sock, link, ("127.0.0.1", 1), None, 1, clock)  # type: ignore[arg-type]
    transport.setTcpNoDelay = lambda enabled: None  # type: ignore[method-assign]  # AF_UNIX
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    return clock, link, transport


def test_a_link_sends_128_kib_of_bulk_frames_per_turn_straight_to_the_socket(pair: Pair) -> None:
    """The first 128 KiB of DATA frames of a turn leave at once; the next ones go through
    Twisted's buffer, whose threshold pauses the link's producers as before (issue 15:
    unlimited direct sends never paused them, and edge-2's VmHWM grew by 2 MiB more)."""
    left, right = pair
    clock, link, transport = _link_over(left)
    clock.advance(0)  # the hello leaves at the end of the turn
    _drain(right, 1 << 20)
    body = b"b" * (64 * 1024)
    link.write_parts(b"HEAD", body)
    link.write_parts(b"HEAD", body)
    assert transport._tempDataLen == 0  # both straight to the socket
    link.write_parts(b"HEAD", body)
    assert transport._tempDataLen == len(b"HEAD") + len(body)  # through Twisted
    clock.advance(0)  # the next turn
    transport.doWrite()
    assert len(_drain(right, 1 << 20)) == 3 * (4 + len(body))
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""
    link.write_parts(b"HEAD", body)
    assert transport._tempDataLen == 0  # straight again


def test_a_link_queues_frames_past_its_budget_in_the_tcp_buffer(pair: Pair) -> None:
    """Past the turn's 128 KiB, frames wait in the plain TCP transport's buffer (the
    gathered queue): bytes as they are, a view (a piece the credit cut, a pooled read's)
    copied, as Twisted's writeSequence had them."""
    left, right = pair
    clock, link, transport = _link_over(left)
    clock.advance(0)
    _drain(right, 1 << 20)
    body = bytes(range(256)) * 512  # 128 KiB: the turn's budget at once
    link.write_parts(b"HEAD", body)
    assert transport._tempDataLen == 0
    piece = memoryview(body)[:50_000]
    link.write_parts(b"HEAD", piece)
    assert type(transport._tempDataBuffer[-1]) is bytes
    whole = bytes(body[:40_000])
    link.write_parts(b"HEAD", whole)
    assert transport._tempDataBuffer[-1] is whole
    assert transport._tempDataLen == 2 * 4 + 90_000
    clock.advance(0)
    for _ in range(1000):
        transport.doWrite()
        if not transport._tempDataLen and not transport.dataBuffer:
            break
    got = _drain(right, 1 << 20)
    assert got == b"HEAD" + body + b"HEAD" + body[:50_000] + b"HEAD" + body[:40_000]
