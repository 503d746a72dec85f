"""The front pauses a response's producer past FRONT_HIGH_WATER bytes waiting for a slow
client, not past Twisted's 64 KiB (issue 15: 32 slow clients held ~100 KiB each)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgemesh.exchange import IResponder, RequestHead, ResponseHead, SourceKind
from edgemesh.testing import RecordingBody
from edgemesh.transports._front import HTTPFrontProtocol
from edgemesh.transports._io import (
    FRONT_HIGH_WATER,
    buffered,
    pause_past,
    write_all_now,
    write_now,
)

PIECE = 32 * 1024
BODY = bytes(range(256)) * 4096  # 1 MiB


@implementer(IPushProducer)
class Producer:
    """A pod connection as the front sees it: it stops writing while paused."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True


def _server(sock: socket.socket, protocol: Protocol) -> tcp.Server:
    """A real Twisted TCP transport (pause_past acts on those only) on a memory reactor:
    nothing is written to the socket unless the test calls doWrite."""
    return tcp.Server(sock, protocol, ("127.0.0.1", 1), None, 1, MemoryReactor())  # type: ignore[arg-type]


def _drain(sock: socket.socket) -> bytes:
    got = bytearray()
    for _ in range(10_000):  # bounded
        try:
            piece = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not piece:
            break
        got += piece
    return bytes(got)


@dataclass
class FrontOverSocket:
    """A front on a real Twisted TCP transport over one end of a socket pair; the test
    reads what the client would from `client`, and each request's responder lands in
    `responders`."""

    transport: tcp.Server
    front: HTTPFrontProtocol
    client: socket.socket
    responders: list[IResponder] = field(default_factory=list)


@pytest.fixture
def served() -> Iterator[FrontOverSocket]:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    responders: list[IResponder] = []

    def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> RecordingBody:
        responders.append(responder)
        return RecordingBody()

    front = HTTPFrontProtocol(MemoryReactorClock(), SourceKind.service_bus, dispatch)
    transport = _server(left, front)
    try:
        front.makeConnection(transport)
        yield FrontOverSocket(transport, front, right, responders)
    finally:
        left.close()
        right.close()


def test_pause_past_pauses_beyond_the_high_water_and_twisted_resumes() -> None:
    left, right = socket.socketpair()
    right.setblocking(False)
    try:
        transport = _server(left, Protocol())
        producer = Producer()
        transport.registerProducer(producer, True)
        transport.write(b"x" * FRONT_HIGH_WATER)
        pause_past(transport, FRONT_HIGH_WATER)
        assert not producer.paused  # at the mark, not beyond it
        transport.write(b"y")
        assert not producer.paused  # Twisted's own rule: only past 64 KiB
        pause_past(transport, FRONT_HIGH_WATER)
        assert producer.paused and transport.producerPaused
        pause_past(transport, FRONT_HIGH_WATER)
        assert producer.pauses == 1  # once
        for _ in range(100):  # bounded: Twisted writes, the peer reads
            if not buffered(transport):
                break
            transport.doWrite()
            _drain(right)
        assert not producer.paused  # the buffer emptied: Twisted's doWrite resumed it
    finally:
        left.close()
        right.close()


def test_write_now_says_whether_all_of_it_went_to_the_socket_now() -> None:
    """The front judges a pause (pause_past) only after a write that left something in
    Twisted's buffer: True means nothing waits there."""
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    try:
        transport = _server(left, Protocol())
        assert write_now(transport, b"a" * 100) is True
        assert write_all_now(transport, (b"b" * 10, memoryview(b"c" * 10))) is True
        assert buffered(transport) == 0
        assert _drain(right) == b"a" * 100 + b"b" * 10 + b"c" * 10
        # The kernel's buffer full: what it does not take waits in Twisted's.
        sent_all = True
        for _ in range(10_000):  # bounded
            sent_all = write_now(transport, BODY)
            if not sent_all:
                break
        assert not sent_all and buffered(transport) > 0
        assert write_now(transport, b"d") is False  # behind what waits: buffered too
        assert write_all_now(transport, (b"e", b"f")) is False
        assert write_all_now(transport, ()) is False  # nothing sent now, something waits
    finally:
        left.close()
        right.close()


@pytest.mark.parametrize("parts", [False, True], ids=["write", "write_parts"])
def test_a_slow_client_holds_at_most_the_high_water_and_one_piece(
    served: FrontOverSocket, parts: bool,
) -> None:
    transport, front, right = served.transport, served.front, served.client
    front.dataReceived(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
    (responder,) = served.responders
    producer = Producer()
    verifyObject(IPushProducer, producer)
    responder.head(ResponseHead(200, b"OK", (), len(BODY)))
    responder.setProducer(producer)
    received = bytearray()
    held = []
    sent = 0
    for _ in range(10_000):  # bounded
        if sent == len(BODY):
            break
        if producer.paused:
            # The client reads what the kernel holds; Twisted writes on.
            received += _drain(right)
            transport.doWrite()
            continue
        if parts:  # a link's views (edge-1 of path 2)
            responder.write_parts([memoryview(BODY)[sent : sent + PIECE]])  # type: ignore[attr-defined]
        else:
            responder.write(BODY[sent : sent + PIECE])
        sent += PIECE
        held.append(buffered(transport))
    responder.end()
    for _ in range(10_000):
        if not buffered(transport):
            break
        transport.doWrite()
        received += _drain(right)
    received += _drain(right)
    assert received.endswith(BODY)
    assert producer.pauses > 1
    # Twisted alone lets 64 KiB wait before it pauses, and the piece that passes it
    # comes on top (a 32 KiB piece: up to ~96 KiB).
    assert max(held) <= FRONT_HIGH_WATER + PIECE + 256, max(held)


def test_the_first_body_piece_leaves_with_the_waiting_head_at_once(
    served: FrontOverSocket,
) -> None:
    """The head waits in Twisted's buffer (for the body of the same turn); the first body
    write takes it along in one sendmsg now, rather than waiting whole in the buffer behind
    it until the next reactor turn (32 x 64 KiB at p1 /big's start, edge-1's peak)."""
    transport, front, right = served.transport, served.front, served.client
    responders = served.responders
    for parts in (False, True):
        front.dataReceived(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
        responder = responders[-1]
        responder.head(ResponseHead(200, b"OK", (), 2 * PIECE))
        assert buffered(transport) > 0  # the head, for now
        if parts:
            responder.write_parts([memoryview(BODY[:PIECE])])  # type: ignore[attr-defined]
        else:
            responder.write(BODY[:PIECE])
        assert buffered(transport) == 0
        got = _drain(right)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(BODY[:PIECE])
        responder.write(BODY[PIECE : 2 * PIECE])
        responder.end()
        assert _drain(right) == BODY[PIECE : 2 * PIECE]
    # A chunked response: the first chunk takes the head along too.
    front.dataReceived(b"GET /stream HTTP/1.1\r\nHost: web\r\n\r\n")
    responder = responders[-1]
    responder.head(ResponseHead(200, b"OK", (), None))
    assert buffered(transport) > 0
    responder.write(BODY[:PIECE])
    assert buffered(transport) == 0
    got = _drain(right)
    assert b"Transfer-Encoding: chunked\r\n" in got
    assert got.endswith(b"%x\r\n" % PIECE + BODY[:PIECE] + b"\r\n")
    responder.end()
    transport.doWrite()  # the last chunk is buffered, as it was
    assert _drain(right) == b"0\r\n\r\n"
