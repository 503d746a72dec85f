"""A frame head and its bulk body leave in one sendmsg, not joined by Twisted (issue 15)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from edgemesh.transports import _io
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


# -- writes held for the end of the reactor's turn (write_now's hold) --------------------


@pytest.fixture
def held() -> Iterator[list[tuple[Any, bytes]]]:
    """The process's held sends, empty before and after the test."""
    assert not _io._turn_sends
    yield _io._turn_sends
    _io._turn_sends.clear()
    _io.sends_now = False


def test_a_held_write_leaves_at_the_flush_with_the_turns_others(
    held: list[tuple[Any, bytes]],
) -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        first, second = (_server_over(left) for left, _ in pairs)
        assert _io.write_now(first, b"response one", hold=True)
        assert _io.write_now(second, b"request", hold=True)
        assert _io.write_now(first, b" and two", hold=True)
        assert [data for _, data in held] == [b"response one", b"request", b" and two"]
        assert _drain(pairs[0][1], 1) == b""  # nothing sent yet
        _io.flush_turn_sends()
        assert not held
        assert _drain(pairs[0][1], 20) == b"response one and two"
        assert _drain(pairs[1][1], 7) == b"request"
    finally:
        for left, right in pairs:
            left.close()
            right.close()


@pytest.mark.parametrize("later", ["write_now", "write_all_now", "splice_after", "close_on_fin"])
def test_nothing_overtakes_a_held_write(
    pair: Pair, held: list[tuple[Any, bytes]], later: str
) -> None:
    """A send that does not wait for a doWrite (to the same transport or another) makes the
    held ones first, so they keep their place in the byte stream; a close (close_on_fin)
    lets them leave first."""
    left, right = pair
    transport = _server_over(left)
    _io.write_now(transport, b"held ", hold=True)
    if later == "write_now":
        _io.write_now(transport, b"then")
    elif later == "write_all_now":
        _io.write_all_now(transport, (b"th", b"en"))
    elif later == "splice_after":
        pipe = _io.splice_pipe()
        assert pipe is not None
        pipe.put(b"en")
        assert _io.splice_after(transport, b"th", pipe, 2) == []
    else:
        _io.close_on_fin(transport)
        assert not transport.connected
        assert _drain(right, 5) == b"held "
        return
    assert not held
    assert _drain(right, 9) == b"held then"


def test_twisteds_own_write_after_a_held_one_follows_it(
    pair: Pair, held: list[tuple[Any, bytes]]
) -> None:
    """Twisted's write only buffers: its doWrite (at a later poll, after the flush) sends
    what was written after the held write, after it."""
    left, right = pair
    transport = _server_over(left)
    _io.write_now(transport, b"held ", hold=True)
    transport.write(b"buffered")
    _io.flush_turn_sends()
    transport.doWrite()
    assert _drain(right, 13) == b"held buffered"


def test_what_the_socket_does_not_take_at_the_flush_goes_first_in_the_buffer(
    pair: Pair, held: list[tuple[Any, bytes]]
) -> None:
    left, right = pair
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = _server_over(left)
    first = bytes(range(256)) * (_io.TURN_SEND_MAX // 256)
    second = b"\xff" * _io.TURN_SEND_MAX
    for data in (first, second):  # held: each at most TURN_SEND_MAX
        assert _io.write_now(transport, data, hold=True)
    transport.write(b"after")  # buffered by Twisted meanwhile
    _io.flush_turn_sends()
    assert transport._tempDataLen > len(b"after")  # the socket took only part
    reactor: Any = transport.reactor
    assert transport in reactor.writers
    got = bytearray()
    whole = first + second + b"after"
    for _ in range(10_000):  # bounded: each round the peer reads, Twisted writes
        got += _drain(right, len(whole) - len(got))
        if len(got) >= len(whole):
            break
        transport.doWrite()
    assert bytes(got) == whole


def test_a_held_write_to_a_connection_lost_before_the_flush_is_dropped(
    pair: Pair, held: list[tuple[Any, bytes]]
) -> None:
    left, _right = pair
    transport = _server_over(left)
    _io.write_now(transport, b"late", hold=True)
    transport.connectionLost(Failure(ConnectionDone()))
    _io.flush_turn_sends()  # no error, nothing sent on a closed socket
    assert not held


def test_what_is_not_held(pair: Pair, held: list[tuple[Any, bytes]]) -> None:
    """Sent at once: a view (its buffer may be reused before the turn ends), a write past
    TURN_SEND_MAX, one while ``sends_now`` (a link's read, a turn of one event), one to a
    transport with bytes waiting; past TURN_SENDS_MAX held writes, the next one sends them
    all first."""
    left, right = pair
    transport = _server_over(left)
    assert _io.write_now(transport, memoryview(b"view "), hold=True)
    assert _io.write_now(transport, b"L" * (_io.TURN_SEND_MAX + 1), hold=True)
    _io.sends_now = True
    assert _io.write_now(transport, b" now", hold=True)
    _io.sends_now = False
    assert not held
    assert _drain(right, 5 + _io.TURN_SEND_MAX + 1 + 4) == (
        b"view " + b"L" * (_io.TURN_SEND_MAX + 1) + b" now")
    transport.write(b"waiting")
    assert not _io.write_now(transport, b" after", hold=True)  # buffered after it, by Twisted
    assert not held
    transport.doWrite()
    assert _drain(right, 13) == b"waiting after"
    for index in range(_io.TURN_SENDS_MAX):
        assert _io.write_now(transport, b"%d," % index, hold=True)
    assert len(held) == _io.TURN_SENDS_MAX
    assert _io.write_now(transport, b"next", hold=True)
    assert not held
    expected = b"".join(b"%d," % index for index in range(_io.TURN_SENDS_MAX)) + b"next"
    assert _drain(right, len(expected)) == expected


_WRITES = st.one_of(
    st.binary(min_size=1, max_size=64),
    # Up to past TURN_SEND_MAX, and most of them past what the socket takes at once.
    st.integers(1, 20_000).map(lambda size: bytes([size % 251]) * size),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["held", "held", "held", "write_now", "twisted", "write_all_now", "turn",
                     "drain"]),
    st.integers(0, 1), _WRITES), min_size=1, max_size=40))
def test_writes_of_every_kind_reach_each_peer_in_the_order_they_were_made(
    operations: list[tuple[str, int, bytes]],
) -> None:
    """Held writes, direct sends, Twisted's buffered writes and gathered ones, to two
    transports with small send buffers, in any order, with the reactor's ends of turn (the
    held sends made, then a doWrite of each transport that wants one, as the reactor makes
    them first) and the peers' reads between them: each peer gets its transport's writes in
    the order they were made, nothing lost, nothing doubled."""
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for left, _ in pairs:
            left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transports = [_server_over(left) for left, _ in pairs]
        written = [bytearray(), bytearray()]
        got = [bytearray(), bytearray()]

        def turn() -> None:
            _io.flush_turn_sends()
            for transport in transports:
                if transport in transport.reactor.writers:  # type: ignore[attr-defined]
                    transport.doWrite()

        for kind, which, data in operations:
            transport = transports[which]
            if kind == "held":
                _io.write_now(transport, data, hold=True)
            elif kind == "write_now":
                _io.write_now(transport, data)
            elif kind == "twisted":
                transport.write(data)
            elif kind == "write_all_now":
                _io.write_all_now(transport, (data[:1], data[1:]))
            elif kind == "turn":
                turn()
                continue
            else:
                got[which] += _drain(pairs[which][1], 1 << 20)
                continue
            written[which] += data
        for _ in range(10_000):  # bounded: a turn and both peers' reads per round
            turn()
            for which in (0, 1):
                got[which] += _drain(pairs[which][1], 1 << 20)
            if all(len(got[i]) >= len(written[i]) for i in (0, 1)):
                break
        assert got == written
        assert not _io._turn_sends
    finally:
        _io._turn_sends.clear()
        for left, right in pairs:
            left.close()
            right.close()
