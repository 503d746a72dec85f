"""
The link pause made cheap (issue 15, p2 /big at 32 connections: edge-2 made 122 epoll changes
per MiB, the link pausing and resuming all its pod connections about 3 times per read).

A pod connection's pause is lazy on plain TCP (_UpstreamConnection.pause_reading): no epoll
change until a read event comes while it is paused, which stops reading instead of reading.
A link that drains lets its held pod connections go a batch at a time, oldest first
(EnvelopeLink._admit), the others at the end of a later turn.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from test_links import Pair
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from edgemesh.exchange import ISizedProducer, ResponseHead
from edgemesh.transports._links import _ADMIT_BYTES, _ADMIT_READ
from edgemesh.transports._upconnection import _UpstreamConnection
from edgemesh.wire import Limits

WINDOW = Limits().initial_window


# --- the pod connection's lazy pause ----------------------------------------------------


class Reads(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def pod_connection(sock: socket.socket) -> tuple[Any, tcp.Server, MemoryReactorClock, Reads]:
    """An _UpstreamConnection's pause state over a real Twisted TCP transport (a reactor that
    is never run: the test calls doRead as the reactor would on a read event)."""
    reactor = MemoryReactorClock()
    reads = Reads()
    transport = tcp.Server(sock, reads, ("127.0.0.1", 1), None, 1,  # type: ignore[arg-type]
                           reactor)
    reads.makeConnection(transport)
    conn: Any = object.__new__(_UpstreamConnection)
    conn.transport = transport
    conn.reading_paused = False
    conn.read_gate = False
    conn.splicing = None  # (no response under way: nothing to splice at a resume)
    conn.body_left = 0
    conn.held = None
    return conn, transport, reactor, reads


def test_a_pause_resumed_before_a_read_event_changes_no_epoll_interest(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn, transport, reactor, reads = pod_connection(socket_pair[0])
    assert transport in reactor.readers
    conn.pause_reading()
    assert conn.reading_paused and transport in reactor.readers  # no epoll change
    conn.resume_reading()
    assert not conn.reading_paused and transport in reactor.readers
    assert "doRead" not in transport.__dict__  # Twisted's own read again
    socket_pair[1].sendall(b"body")
    transport.doRead()
    assert reads.data == b"body"


def test_a_read_event_while_paused_stops_reading_without_a_read(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn, transport, reactor, reads = pod_connection(socket_pair[0])
    socket_pair[1].sendall(b"body")
    conn.pause_reading()
    transport.doRead()  # the reactor: the socket is readable
    assert reads.data == b""  # nothing read: it waits in the socket, not in a queue
    assert transport not in reactor.readers  # stopped now, as the eager pause did
    assert "doRead" not in transport.__dict__
    conn.resume_reading()
    assert transport in reactor.readers
    transport.doRead()
    assert reads.data == b"body"


def test_pauses_and_resumes_repeat(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    conn, transport, reactor, reads = pod_connection(socket_pair[0])
    for round_ in range(3):
        socket_pair[1].sendall(b"%d" % round_)
        conn.pause_reading()
        conn.pause_reading()  # twice: one pause
        transport.doRead()
        assert transport not in reactor.readers
        conn.resume_reading()
        conn.resume_reading()
        assert transport in reactor.readers
        transport.doRead()
    assert reads.data == b"012"


def test_an_aborted_connections_own_read_is_kept(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Twisted's abortConnection puts a no-op doRead on the transport: a resume must not take
    it away (only the gate's own is removed)."""
    conn, transport, _reactor, _reads = pod_connection(socket_pair[0])
    conn.pause_reading()

    def no_op() -> None:
        pass

    transport.doRead = no_op  # type: ignore[method-assign]
    conn.resume_reading()
    assert transport.__dict__["doRead"] is no_op


def test_a_connection_lost_while_paused_drops_the_gate(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    """The gate is a bound method of the connection on its transport: dropped at the loss, so
    that the two do not keep each other alive."""
    conn, transport, _reactor, _reads = pod_connection(socket_pair[0])
    conn.pause_reading()
    assert conn.read_gate
    conn._close_gate()
    assert "doRead" not in transport.__dict__ and not conn.read_gate


def test_another_transport_is_paused_at_once() -> None:
    """TLS, a test's transport: Twisted's pause as before."""
    conn: Any = object.__new__(_UpstreamConnection)
    conn.transport = StringTransport()
    conn.reading_paused = False
    conn.read_gate = False
    conn.splicing = None
    conn.body_left = 0
    conn.pause_reading()
    assert conn.transport.producerState == "paused" and not conn.read_gate
    conn.resume_reading()
    assert conn.transport.producerState == "producing"


# --- the link lets its held pod connections go a batch at a time ------------------------


@implementer(ISizedProducer)
class Sized:
    """A pod connection as the link's streams see it: a push producer that takes a read
    limit (an ISizedProducer)."""

    order: ClassVar[list[Sized]] = []

    def __init__(self) -> None:
        self.paused = False
        self.resumes = 0
        self.room = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        Sized.order.append(self)

    def stopProducing(self) -> None:
        pass

    def limit_reads(self, room: int) -> None:
        self.room = room


class TurnClock(MemoryReactorClock):
    """A reactor with edgemesh's end-of-turn queue, run a turn at a time by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.turn_end: list[Callable[[], object]] = []
        self.callAtEndOfTurn = self.turn_end.append

    def end_turn(self) -> None:
        queued, self.turn_end[:] = list(self.turn_end), []
        for func in queued:
            func()


def streams(count: int) -> tuple[Pair, list[Sized]]:
    """``count`` responses from the pair's server (edge-2), each from a sized producer."""
    pair = Pair()
    for _ in range(count):
        pair.open(content_length=0, method=b"GET")
    pair.pump()
    producers = []
    for entry in pair.server_handler.inbounds:
        producer = Sized()
        entry.exchange.setProducer(producer)
        entry.exchange.head(ResponseHead(200, b"OK", (), None))
        producers.append(producer)
    pair.pump()
    clock = TurnClock()
    pair.server.reactor = clock
    pair.server._turn_hook = clock.callAtEndOfTurn
    Sized.order = []
    return pair, producers


def test_a_drained_link_lets_a_batch_of_its_held_producers_go_oldest_first() -> None:
    pair, producers = streams(10)
    link = pair.server
    clock: Any = link.reactor
    batch = _ADMIT_BYTES // min(WINDOW, _ADMIT_READ)
    assert 0 < batch < len(producers)
    link.pauseProducing()  # the link's write buffer is full
    assert all(p.paused for p in producers)
    link.resumeProducing()  # drained
    assert [p.paused for p in producers] == [False] * batch + [True] * (10 - batch)
    assert Sized.order == producers[:batch]
    # A held one stays paused whatever credit comes: its turn comes from the link.
    held = producers[batch]
    sender = pair.server_handler.inbounds[batch].exchange
    sender.update()
    assert held.paused
    # The end of this turn: those let go have yet to read, so none more now.
    clock.end_turn()
    assert [p.paused for p in producers[batch:]] == [True] * (10 - batch)
    # The end of the next: the link sent what it was given, so the next batch goes.
    clock.end_turn()
    assert not any(p.paused for p in producers)
    assert Sized.order == producers
    assert all(p.resumes == 1 for p in producers)


def test_the_next_fill_lets_those_that_waited_go_first() -> None:
    pair, producers = streams(10)
    link = pair.server
    batch = _ADMIT_BYTES // min(WINDOW, _ADMIT_READ)
    link.pauseProducing()
    link.resumeProducing()
    link.pauseProducing()  # filled again before the end of the turn
    Sized.order = []
    link.resumeProducing()
    # Round robin: the ones held back last time, then the oldest of the others.
    assert Sized.order == (producers[batch:] + producers[: 2 * batch - 10])[:batch]


def test_a_busy_link_lets_one_more_go_per_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data waits in the link's transport buffer (the link keeps up, not paused): one held
    producer more every other turn (after the last one let go had a turn to read), so that
    none waits for good behind busy ones."""
    pair, producers = streams(10)
    link = pair.server
    clock: Any = link.reactor
    batch = _ADMIT_BYTES // min(WINDOW, _ADMIT_READ)
    link.pauseProducing()
    link.resumeProducing()
    monkeypatch.setattr("edgemesh.transports._links.buffered", lambda transport: 1)
    clock.end_turn()  # those let go read
    clock.end_turn()
    assert sum(not p.paused for p in producers) == batch + 1
    clock.end_turn()
    assert sum(not p.paused for p in producers) == batch + 1
    clock.end_turn()
    assert sum(not p.paused for p in producers) == batch + 2


def test_held_producers_are_forgotten_when_the_link_is_lost() -> None:
    pair, _producers = streams(10)
    link = pair.server
    link.pauseProducing()
    assert len(link._held) == 10
    link.connectionLost()
    assert not link._held
