"""edgemesh's reactor (transports/_reactor.py): epoll dispatch without Twisted's log-context
layers, and its end-of-turn queue.  Real sockets on 127.0.0.1, one uninstalled reactor per
test, every wait bounded."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error, tcp
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import provider
from zope.interface.verify import verifyObject

from edgemesh.transports import EnvelopeLink, _io
from edgemesh.transports._reactor import EdgemeshReactor

REPO = Path(__file__).resolve().parent.parent
DONE = Failure(error.ConnectionDone())


@pytest.fixture
def reactor() -> Iterator[EdgemeshReactor]:
    r = EdgemeshReactor()
    yield r
    for selectable in r.removeAll():
        selectable.connectionLost(Failure(error.ConnectionDone()))
    for call in r.getDelayedCalls():
        call.cancel()
    r._poller.close()
    r.waker.connectionLost(None)


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def failure_of(event: LogEvent) -> Failure | None:
    """The failure of a log event (log.err's legacy events carry it as "failure")."""
    found = event.get("log_failure", event.get("failure"))
    return found if isinstance(found, Failure) else None


def spin(r: EdgemeshReactor, until: Callable[[], bool], seconds: float = 10.0) -> None:
    """Turn the reactor (as its main loop does) until ``until()``, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "timed out"
        r.runUntilCurrent()
        timeout = r.timeout()
        r.doIteration(0.05 if timeout is None else min(timeout, 0.05))


class Echo(Protocol):
    """Echoes; ``boom`` raises from dataReceived (inside doRead)."""

    systems: list[object]

    def dataReceived(self, data: bytes) -> None:
        self.systems.append(context.get(log.ILogContext)["system"])
        if b"boom" in data:
            raise RuntimeError("application bug")
        assert self.transport is not None
        self.transport.write(data)


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = DONE) -> None:
        self.lost = reason


def connect(r: EdgemeshReactor, port: int) -> Client:
    client = Client()
    factory = ClientFactory.forProtocol(lambda: client)
    r.connectTCP("127.0.0.1", port, factory, timeout=5)
    spin(r, lambda: client.transport is not None)
    return client


def listen(r: EdgemeshReactor, systems: list[object]) -> int:
    def build() -> Echo:
        echo = Echo()
        echo.systems = systems
        return echo

    port = r.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
    return int(port.getHost().port)


def test_it_is_a_full_reactor() -> None:
    r = EdgemeshReactor()
    try:
        for interface in (IReactorCore, IReactorTime, IReactorTCP, IReactorFDSet):
            assert verifyObject(interface, r)
    finally:
        r._poller.close()
        r.waker.connectionLost(None)


def test_reads_and_writes_over_loopback_without_the_log_context(
        reactor: EdgemeshReactor) -> None:
    systems: list[object] = []
    client = connect(reactor, listen(reactor, systems))
    assert client.transport is not None
    client.transport.write(b"ping")
    spin(reactor, lambda: client.received == b"ping")
    # What the fast dispatch gives up: doRead runs without the connection's "system"
    # (Twisted's own reactors give "Echo,0,127.0.0.1" here).
    assert systems == ["-"]


def test_an_error_in_doRead_closes_only_that_connection(
        reactor: EdgemeshReactor, logged: list[LogEvent]) -> None:
    systems: list[object] = []
    port = listen(reactor, systems)
    bad, good = connect(reactor, port), connect(reactor, port)
    assert bad.transport is not None and good.transport is not None
    bad.transport.write(b"boom")
    spin(reactor, lambda: bad.lost is not None)
    good.transport.write(b"still here")
    spin(reactor, lambda: good.received == b"still here")
    assert good.lost is None
    failures = [e for e in logged if failure_of(e) is not None]
    assert [failure_of(e).type for e in failures] == [RuntimeError]  # type: ignore[union-attr]
    # The failure is still logged under the connection's prefix.
    assert failures[0]["system"].startswith("Echo,")


def test_a_hang_up_reaches_the_protocol(reactor: EdgemeshReactor) -> None:
    lost: list[Failure] = []

    class Watch(Protocol):
        def connectionLost(self, reason: Failure = DONE) -> None:
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Watch), interface="127.0.0.1")
    client = connect(reactor, port.getHost().port)
    assert client.transport is not None
    client.transport.loseConnection()
    spin(reactor, lambda: bool(lost) and client.lost is not None)
    assert lost[0].check(error.ConnectionDone)


class FakeSelectable:
    """A descriptor for a hand-fed poll: records reads, may raise or hand back a reason."""

    def __init__(self, fd: int, order: list[str], read: Callable[[], object] | None = None,
                 ) -> None:
        self.fd = fd
        self.order = order
        self.read = read
        self.lost: Failure | None = None

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"fake-{self.fd}"

    def doRead(self) -> object:
        self.order.append(f"read {self.fd}")
        return self.read() if self.read is not None else None

    def doWrite(self) -> object:
        self.order.append(f"write {self.fd}")
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class FakePoller:
    def __init__(self, events: list[tuple[int, int]]) -> None:
        self.events = events

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        return self.events

    def unregister(self, fd: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_one_poll_dispatch_errors_and_end_of_turn() -> None:
    """Reads and writes of one poll in order; a doRead that raises disconnects only its
    selectable (logged under its prefix); the end-of-turn queue runs after them all."""
    r = EdgemeshReactor()
    real_poller = r._poller
    order: list[str] = []

    def queue_end() -> None:
        r.callAtEndOfTurn(lambda: order.append("end"))

    def boom() -> None:
        raise RuntimeError("application bug")

    first = FakeSelectable(1001, order, queue_end)
    broken = FakeSelectable(1002, order, boom)
    last = FakeSelectable(1003, order)
    for s in (first, broken, last):
        r._selectables[s.fd] = s
        r._reads.add(s.fd)
    r._writes.add(last.fd)
    r._poller = FakePoller([(1001, r._POLL_IN), (1002, r._POLL_IN), (9999, r._POLL_IN),
                            (1003, r._POLL_IN | r._POLL_OUT)])
    logged: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        logged.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        r.doPoll(0)
    finally:
        globalLogPublisher.removeObserver(observe)
        r._poller = real_poller
        r._poller.close()
        r.waker.connectionLost(None)
    assert order == ["read 1001", "read 1002", "read 1003", "write 1003", "end"]
    assert broken.lost is not None and broken.lost.check(RuntimeError)
    assert first.lost is None and last.lost is None
    assert 1002 not in r._selectables and 1001 in r._selectables
    failures = [e for e in logged if failure_of(e) is not None]
    assert [failure_of(e).type for e in failures] == [RuntimeError]  # type: ignore[union-attr]
    assert failures[0]["system"] == "fake-1002"


def test_end_of_turn_queued_by_a_timer_does_not_wait_for_io(
        reactor: EdgemeshReactor) -> None:
    ran: list[float] = []
    reactor.callLater(0.01, reactor.callAtEndOfTurn, lambda: ran.append(time.monotonic()))
    give_up = reactor.callLater(30, reactor.stop)
    reactor.callLater(0.01, reactor.callAtEndOfTurn, reactor.stop)
    started = time.monotonic()
    reactor.run(installSignalHandlers=False)
    # Without the timeout() override the poll would sleep until the 30 s timer.
    assert ran and ran[0] - started < 5.0
    assert give_up.active()


def test_one_failing_end_of_turn_call_does_not_stop_the_others(
        reactor: EdgemeshReactor, logged: list[LogEvent]) -> None:
    ran: list[int] = []

    def broken() -> None:
        raise ValueError("bug")

    reactor.callAtEndOfTurn(broken)
    reactor.callAtEndOfTurn(lambda: ran.append(1))
    spin(reactor, lambda: ran == [1])
    assert [f.type for f in map(failure_of, logged) if f is not None] == [ValueError]


def test_end_of_turn_calls_queued_while_the_queue_runs_wait_for_the_next_poll() -> None:
    """The queue is one list, cleared in place (callAtEndOfTurn is its append): a call
    queued by an end-of-turn call runs after the next poll, not in the same loop, and
    every poll after that still runs what is queued."""
    r = EdgemeshReactor()
    real_poller = r._poller
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        r.callAtEndOfTurn(lambda: ran.append("queued by first"))

    try:
        r._poller = FakePoller([])
        r.callAtEndOfTurn(first)
        r.doPoll(0)
        assert ran == ["first"]
        r.doPoll(0)
        assert ran == ["first", "queued by first"]
        r.doPoll(0)
        assert ran == ["first", "queued by first"]
        r.callAtEndOfTurn(lambda: ran.append("later"))
        r.doPoll(0)
        assert ran == ["first", "queued by first", "later"]
    finally:
        r._poller = real_poller
        r._poller.close()
        r.waker.connectionLost(None)


# -- writes held for the end of the turn (_io.write_now's hold) -------------------------


class _Peer:
    """A real TCP transport (tcp.Server, on a memory reactor) over one end of a socket
    pair, and a non-blocking read of the other end."""

    def __init__(self) -> None:
        self.left, self.right = socket.socketpair()
        self.right.setblocking(False)
        self.transport = tcp.Server(self.left, Protocol(), ("127.0.0.1", 1), None, 1,
                                    MemoryReactor())  # type: ignore[arg-type]

    def received(self) -> bytes:
        try:
            return self.right.recv(1 << 16)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self.left.close()
        self.right.close()


@pytest.fixture
def peers() -> Iterator[list[_Peer]]:
    made = [_Peer() for _ in range(3)]
    yield made
    for peer in made:
        peer.close()
    _io._turn_sends.clear()
    _io.sends_now = False


def _one_poll(r: EdgemeshReactor, selectables: list[FakeSelectable],
              events: list[tuple[int, int]], writing: tuple[int, ...] = ()) -> None:
    """One turn of ``r`` (doPoll) on a hand-fed poll of ``events``; then its poller and
    waker are closed."""
    for s in selectables:
        r._selectables[s.fd] = s
        r._reads.add(s.fd)
    r._writes.update(writing)
    real = r._poller
    r._poller = FakePoller(events)
    try:
        r.doPoll(0)
    finally:
        r._poller = real
        r._poller.close()
        r.waker.connectionLost(None)


def test_held_sends_leave_after_a_polls_events_and_before_the_end_of_turn_queue(
        peers: list[_Peer]) -> None:
    """Each event holds a write to its own peer: none arrives while the poll's events are
    dispatched, all of them before the end-of-turn queue runs."""
    r = EdgemeshReactor()
    order: list[str] = []
    seen: list[list[bytes]] = []

    def holds(index: int) -> Callable[[], None]:
        def read() -> None:
            seen.append([peer.received() for peer in peers])
            _io.write_now(peers[index].transport, b"answer %d" % index, hold=True)
        return read

    selectables = [FakeSelectable(2001 + i, order, holds(i)) for i in range(3)]
    r.callAtEndOfTurn(lambda: seen.append([peer.received() for peer in peers]))
    _one_poll(r, selectables, [(s.fd, r._POLL_IN) for s in selectables])
    assert seen[:3] == [[b"", b"", b""]] * 3  # held while the events ran
    assert seen[3] == [b"answer 0", b"answer 1", b"answer 2"]  # sent before the queue
    assert not _io._turn_sends


def test_a_poll_of_one_event_sends_at_once(peers: list[_Peer]) -> None:
    r = EdgemeshReactor()
    got: list[bytes] = []

    def read() -> None:
        _io.write_now(peers[0].transport, b"now", hold=True)
        got.append(peers[0].received())

    only = FakeSelectable(2101, [], read)
    _one_poll(r, [only], [(only.fd, r._POLL_IN)])
    assert got == [b"now"]


def test_held_sends_leave_before_a_lost_connection_closes_and_before_a_dowrite(
        peers: list[_Peer]) -> None:
    """A read that ends its connection, and a descriptor the poll found writable, come
    after the held sends of the events before them (either may be that connection's)."""
    r = EdgemeshReactor()
    order: list[str] = []
    at_close: list[bytes] = []
    at_write: list[bytes] = []

    def hold_then_done() -> object:
        _io.write_now(peers[0].transport, b"before the close", hold=True)
        return error.ConnectionDone()

    class Closing(FakeSelectable):
        def connectionLost(self, reason: Failure) -> None:
            at_close.append(peers[0].received())
            super().connectionLost(reason)

    class Writable(FakeSelectable):
        def doRead(self) -> object:
            _io.write_now(peers[1].transport, b"before the write", hold=True)
            return None

        def doWrite(self) -> object:
            at_write.append(peers[1].received())
            return super().doWrite()

    closing = Closing(2201, order, hold_then_done)
    writable = Writable(2202, order)
    _one_poll(r, [closing, writable],
              [(closing.fd, r._POLL_IN), (writable.fd, r._POLL_IN | r._POLL_OUT)],
              writing=(writable.fd,))
    assert at_close == [b"before the close"]
    assert at_write == [b"before the write"]
    assert closing.lost is not None


def test_a_send_held_by_a_timer_does_not_wait_for_io(reactor: EdgemeshReactor) -> None:
    """Held outside of a poll's dispatch (a timer's callback): the next poll does not block
    (without the timeout() clause it would sleep until the 30 s timer), and its turn sends
    it."""
    accepted: list[Protocol] = []

    class Accept(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    class Stopping(Client):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            reactor.stop()

    port = reactor.listenTCP(0, Factory.forProtocol(Accept), interface="127.0.0.1")
    stopping = Stopping()
    reactor.connectTCP("127.0.0.1", port.getHost().port,
                       ClientFactory.forProtocol(lambda: stopping), timeout=5)
    spin(reactor, lambda: bool(accepted) and stopping.transport is not None)

    def hold() -> None:
        _io.sends_now = False  # as after a poll of several events
        _io.write_now(accepted[0].transport, b"from a timer", hold=True)
        assert _io._turn_sends

    give_up = reactor.callLater(30, reactor.stop)
    reactor.callLater(0.01, hold)
    started = time.monotonic()
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        _io._turn_sends.clear()
        _io.sends_now = False
    assert time.monotonic() - started < 5.0
    assert stopping.received == b"from a timer"
    assert give_up.active()


class TurnClock(MemoryReactorClock):
    """A memory reactor with edgemesh's end-of-turn queue."""

    def __init__(self) -> None:
        super().__init__()
        self.turn_end: list[Callable[[], object]] = []

    def callAtEndOfTurn(self, func: Callable[[], object]) -> None:
        self.turn_end.append(func)

    def end_turn(self) -> None:
        queued, self.turn_end = self.turn_end, []
        for func in queued:
            func()


class _Handler:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def test_a_link_coalesces_a_turns_writes_through_the_end_of_turn_queue() -> None:
    clock = TurnClock()
    link = EnvelopeLink(clock, _Handler(), node="edge-1", role="edge", client=True)
    transport = StringTransport()
    link.makeConnection(transport)
    assert transport.value() == b""  # the hello waits for the end of the turn
    link.write(b"one")
    link.write(b"two")
    assert len(clock.turn_end) == 1  # queued once for the turn
    assert [c for c in clock.getDelayedCalls() if c.func == link._end_of_turn] == []
    clock.end_turn()
    assert transport.value().endswith(b"onetwo")
    link.write(b"three")
    assert len(clock.turn_end) == 1
    # A flush inside the turn writes, but the turn is not over: its end stays queued (once)
    # and the bulk bytes sent straight this turn still count.
    link._direct = 1000
    link.flush()
    assert transport.value().endswith(b"three") and link._turn_queued and link._direct == 1000
    link.write(b"four")
    assert len(clock.turn_end) == 1
    clock.end_turn()
    assert transport.value().endswith(b"four") and not link._turn_queued and link._direct == 0
    link.write(b"five")
    assert len(clock.turn_end) == 1
    link.connectionLost(Failure(error.ConnectionDone()))
    clock.end_turn()  # a queued end of turn after the link closed writes nothing
    assert not transport.value().endswith(b"five")


def test_twistd_offers_the_reactor(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    listing = subprocess.run([*twistd, "--help-reactors"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, check=False)
    assert "edgemesh" in listing.stdout, listing.stdout + listing.stderr
    probe = subprocess.run(
        [sys.executable, "-c",
         ("from edgemesh.transports._reactor import install; install()\n"
          "from twisted.internet import reactor\n"
          "print(type(reactor).__name__)")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert probe.stdout.strip() == "EdgemeshReactor", probe.stderr


def test_the_main_loop_runs_timers_in_order_and_calls_from_threads(
        reactor: EdgemeshReactor) -> None:
    """The loop's shortcut (no timer due: straight to the poll) still wakes for timers,
    for cancelled and moved ones, for calls from threads, and stops."""
    import threading

    ran: list[str] = []
    started = time.monotonic()
    reactor.callLater(0.2, ran.append, "late")
    cancelled = reactor.callLater(0.1, ran.append, "cancelled")
    moved = reactor.callLater(5.0, ran.append, "moved")
    reactor.callLater(0.05, cancelled.cancel)
    reactor.callLater(0.05, moved.reset, 0.1)
    reactor.callLater(0.01, ran.append, "early")

    def from_thread() -> None:
        reactor.callFromThread(ran.append, "thread")

    reactor.callLater(0.25, threading.Thread(target=from_thread).start)

    def stop_when_done() -> None:
        if "thread" in ran or time.monotonic() - started > 10:
            reactor.stop()
        else:
            reactor.callLater(0.01, stop_when_done)

    reactor.callLater(0.3, stop_when_done)
    reactor.run(installSignalHandlers=False)
    assert ran == ["early", "moved", "late", "thread"]
    assert time.monotonic() - started < 5.0  # the moved timer did not wait its first 5 s


class InterruptedPoller:
    """The reactor's poller, whose first polls raise the given errors."""

    def __init__(self, real: Any, errors: list[int]) -> None:
        self.real = real
        self.errors = errors

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.real.poll(timeout, most)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_the_main_loop_turns_without_doIteration_and_survives_poll_errors(
        reactor: EdgemeshReactor, logged: list[LogEvent]) -> None:
    """run() turns in one frame (_turns), not through doIteration, with I/O and timers; a
    poll interrupted by a signal is a turn without events (not logged); another poll error
    is logged and the loop goes on."""
    systems: list[object] = []
    client = connect(reactor, listen(reactor, systems))
    assert client.transport is not None

    def no_iteration(timeout: float | None) -> None:
        raise AssertionError("the main loop called doIteration")

    reactor.doIteration = no_iteration  # type: ignore[method-assign]
    real = reactor._poller
    reactor._poller = InterruptedPoller(real, [errno.EINTR, errno.EBADF])
    started = time.monotonic()

    def stop_when_echoed() -> None:
        if client.received == b"ping" or time.monotonic() - started > 10:
            reactor.stop()
        else:
            reactor.callLater(0.01, stop_when_echoed)

    client.transport.write(b"ping")
    reactor.callLater(0.01, stop_when_echoed)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        reactor._poller = real
    assert client.received == b"ping"
    failures = [f for f in map(failure_of, logged) if f is not None]
    assert [f.type for f in failures] == [OSError]
    assert failures[0].value.errno == errno.EBADF  # type: ignore[union-attr]


@pytest.mark.parametrize("through_service", [False, True])
def test_direct_reads_skip_the_endpoint_forwarders(
        reactor: EdgemeshReactor, through_service: bool) -> None:
    """A client endpoint (and ClientService) wrap the protocol in forwarders; direct_reads
    lets the transport call the protocol's dataReceived itself, and the loss still reaches
    the protocol (and ClientService) through them."""
    from twisted.application.internet import ClientService
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from edgemesh.transports._io import direct_reads

    systems: list[object] = []
    port = listen(reactor, systems)
    client = Client()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    factory = Factory.forProtocol(lambda: client)
    connected: list[object] = []
    service = None
    if through_service:
        service = ClientService(endpoint, factory, clock=reactor)
        service.startService()
        service.whenConnected().addCallback(connected.append)
    else:
        endpoint.connect(factory).addCallback(connected.append)
    spin(reactor, lambda: bool(connected))
    transport: Any = client.transport
    outer = transport.protocol
    assert outer is not client  # wrapped
    assert direct_reads(client) is client
    assert outer.dataReceived == client.dataReceived  # the transport's call goes straight in
    transport.write(b"ping")
    spin(reactor, lambda: client.received == b"ping")
    transport.loseConnection()
    spin(reactor, lambda: client.lost is not None)
    if service is not None:
        lost = service.stopService()
        assert lost is not None


def test_direct_reads_leaves_other_transports_alone() -> None:
    from edgemesh.transports._io import direct_reads

    protocol = Client()
    protocol.makeConnection(StringTransport())
    assert direct_reads(protocol) is protocol
    assert "dataReceived" not in vars(protocol)


def test_a_reset_is_a_lost_connection_and_an_orderly_close_a_done_one(
        reactor: EdgemeshReactor) -> None:
    """The inlined read of a plain TCP connection keeps Twisted's answers: recv's error
    (a reset) is CONNECTION_LOST, an empty read CONNECTION_DONE."""
    import socket
    import struct

    lost: list[Failure] = []

    class Watch(Protocol):
        def connectionLost(self, reason: Failure = DONE) -> None:
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Watch), interface="127.0.0.1")
    for want, reset in ((1, True), (2, False)):
        raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        spin(reactor, lambda: len(reactor.getReaders()) >= 3)  # port, waker, this one
        if reset:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        spin(reactor, lambda want=want: len(lost) == want)  # type: ignore[misc]
    assert lost[0].check(error.ConnectionLost) and not lost[0].check(error.ConnectionDone)
    assert lost[1].check(error.ConnectionDone)


def test_a_refused_connect_is_refused_and_an_aborted_connection_reads_nothing(
        reactor: EdgemeshReactor) -> None:
    """Twisted sets doRead on the instance while a client connects (doConnect) and after
    abortConnection (a no-op): the inlined read must leave those alone."""
    import socket

    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    closed_port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    failed: list[Failure] = []

    class Refused(ClientFactory):
        def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
            failed.append(reason)

    reactor.connectTCP("127.0.0.1", closed_port, Refused(), timeout=5)
    spin(reactor, lambda: bool(failed))
    assert failed[0].check(error.ConnectionRefusedError)

    systems: list[object] = []
    client = connect(reactor, listen(reactor, systems))
    transport: Any = client.transport
    transport.write(b"ping")
    spin(reactor, lambda: client.received == b"ping")
    transport.abortConnection()
    spin(reactor, lambda: client.lost is not None)
    assert client.lost is not None and client.lost.check(error.ConnectionAborted)


def test_a_doRead_set_on_the_instance_is_called_and_its_removal_reads_inline_again(
        reactor: EdgemeshReactor) -> None:
    """Twisted's own doRead is told by the bound method (not the instance's __dict__): one
    set on a plain TCP transport (edgemesh's read gate, pooled reads) is what a read event
    calls, and once deleted the read is inline again."""
    systems: list[object] = []
    client = connect(reactor, listen(reactor, systems))
    transport: Any = client.transport
    transport.write(b"one")
    spin(reactor, lambda: client.received == b"one")
    events: list[str] = []

    def gate() -> None:
        events.append("gate")
        transport.stopReading()

    transport.doRead = gate
    transport.write(b"two")  # echoed: the client's read event finds the gate
    spin(reactor, lambda: bool(events))
    assert events == ["gate"] and client.received == b"one"
    del transport.doRead
    transport.startReading()
    spin(reactor, lambda: client.received == b"onetwo")
    assert events == ["gate"]


# --- the listening port's accept (_Port) --------------------------------------------------


class Accepted(Protocol):
    """Records its transport's peer; echoes."""

    def __init__(self, made: list[Accepted]) -> None:
        self.made = made

    def connectionMade(self) -> None:
        self.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def echoes(reactor: EdgemeshReactor, raw: Any) -> bool:
    """``raw`` (a client socket) gets back what it sends, the reactor turning meanwhile."""
    raw.sendall(b"ping")
    raw.settimeout(0)
    got = bytearray()

    def back() -> bool:
        try:
            got.extend(raw.recv(16))
        except BlockingIOError:
            pass
        return len(got) >= 4

    spin(reactor, back)
    return bytes(got) == b"ping"


def accepting(reactor: EdgemeshReactor, interface: str = "127.0.0.1",
              ) -> tuple[Any, list[Accepted]]:
    made: list[Accepted] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Accepted(made)),
                             interface=interface)
    return port, made


def test_an_ipv4_port_accepts_with_twisteds_transports_addresses_and_sessions(
        reactor: EdgemeshReactor) -> None:
    import socket

    from twisted.internet import tcp
    from twisted.internet.address import IPv4Address

    from edgemesh.transports._reactor import _Port

    port, made = accepting(reactor)
    assert isinstance(port, _Port) and port.numberAccepts == 100
    number = port.getHost().port
    # Twisted's scaling, one connection at a time: as many as came (1) after a batch that
    # ended short, 20 more after a full one.
    singles = []
    for want in (1, 21, 1):
        singles.append(socket.create_connection(("127.0.0.1", number), timeout=5))
        spin(reactor, lambda: len(made) == len(singles))
        assert port.numberAccepts == want
    burst = [socket.create_connection(("127.0.0.1", number), timeout=5) for _ in range(28)]
    spin(reactor, lambda: len(made) == 31)
    clients = [*singles, *burst]
    try:
        by_port = {c.getsockname()[1]: c for c in clients}
        assert [p.transport.sessionno for p in made] == list(range(31))  # type: ignore[union-attr]
        for protocol in made:
            transport: Any = protocol.transport
            assert type(transport) is tcp.Server
            peer = transport.getPeer()
            assert isinstance(peer, IPv4Address) and peer.host == "127.0.0.1"
            assert peer.port in by_port
            assert transport.socket.gettimeout() == 0.0  # non-blocking, as Twisted makes it
            assert transport.socket.family == socket.AF_INET
        assert echoes(reactor, by_port[made[7].transport.getPeer().port])  # type: ignore[union-attr]
    finally:
        for c in clients:
            c.close()


def test_a_port_whose_factory_builds_nothing_closes_the_connection(
        reactor: EdgemeshReactor) -> None:
    import socket

    class Nothing(Factory):
        def buildProtocol(self, addr: Any) -> None:  # type: ignore[override]
            return None

    port = reactor.listenTCP(0, Nothing(), interface="127.0.0.1")
    raw = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    raw.settimeout(0)
    got: list[bytes] = []

    def closed() -> bool:
        try:
            got.append(raw.recv(1))
        except BlockingIOError:
            return False
        return True

    try:
        spin(reactor, closed)
        assert got == [b""] and port.sessionno == 0
    finally:
        raw.close()


class _FailingAccepts:
    """A listening socket whose accepts fail with ``errno`` ``times`` times (the accept
    of _Port and of Twisted's doRead), then are the socket's own."""

    def __init__(self, real: Any, code: int, times: int) -> None:
        self.real, self.code, self.left = real, code, times

    def _fail(self) -> None:
        if self.left:
            self.left -= 1
            raise OSError(self.code, os.strerror(self.code))

    def _accept(self) -> Any:
        self._fail()
        return self.real._accept()

    def accept(self) -> Any:
        self._fail()
        return self.real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_an_accept_error_gets_twisteds_answer_emfile_recovery(
        reactor: EdgemeshReactor, logged: list[LogEvent]) -> None:
    """EMFILE from the shorter accept goes to Twisted's doRead, whose own accept fails the
    same way: it frees its reserved descriptor, accepts and closes what waits, and the port
    serves the next connection."""
    import socket

    port, made = accepting(reactor)
    port.socket = _FailingAccepts(port.socket, errno.EMFILE, times=2)
    number = port.getHost().port
    refused = socket.create_connection(("127.0.0.1", number), timeout=5)
    refused.settimeout(5)
    try:
        spin(reactor, lambda: any("EMFILE recovery" in str(e.get("log_format", ""))
                                  for e in logged))
        assert refused.recv(1) == b"" and made == []
        served = socket.create_connection(("127.0.0.1", number), timeout=5)
        spin(reactor, lambda: len(made) == 1)
        assert echoes(reactor, served)
        served.close()
    finally:
        refused.close()


def test_an_ipv6_port_is_twisteds(reactor: EdgemeshReactor) -> None:
    import socket

    from twisted.internet.address import IPv6Address

    try:
        port, made = accepting(reactor, interface="::1")
    except error.CannotListenError:
        pytest.skip("no IPv6 loopback here")
    raw = socket.create_connection(("::1", port.getHost().port), timeout=5)
    try:
        spin(reactor, lambda: len(made) == 1)
        peer = made[0].transport.getPeer()  # type: ignore[union-attr]
        assert isinstance(peer, IPv6Address) and peer.host == "::1"
        assert peer.port == raw.getsockname()[1]
    finally:
        raw.close()


# --- a new connection's first read, right after its accept --------------------------------


class FirstReads(Protocol):
    """Records what it reads and how it ends; ``boom`` raises from dataReceived."""

    def __init__(self, made: list[FirstReads]) -> None:
        self.got: list[bytes] = []
        self.lost: Failure | None = None
        made.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)
        if b"boom" in data:
            raise RuntimeError("application bug")

    def connectionLost(self, reason: Failure = DONE) -> None:
        self.lost = reason


def test_a_connection_whose_client_sent_at_once_is_read_in_its_accept_turn(
        reactor: EdgemeshReactor) -> None:
    """The request a client sends with its connection is read in the turn that accepts it,
    not one turn later; the client's close then ends it as a done connection.  (On loopback
    the bytes are queued on the server's socket before ``sendall`` returns, but nothing
    promises it: a few connections are tried, and one is enough.)"""
    import socket

    made: list[FirstReads] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: FirstReads(made)),
                             interface="127.0.0.1")
    number = port.getHost().port
    clients = []
    try:
        for attempt in range(10):
            raw = socket.create_connection(("127.0.0.1", number), timeout=5)
            clients.append(raw)
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            raw.shutdown(socket.SHUT_WR)
            spin(reactor, lambda n=attempt + 1: len(made) == n)  # up to the accept's turn
            if made[-1].got:
                break
        protocol = made[-1]
        assert protocol.got == [b"GET / HTTP/1.1\r\n\r\n"], (attempt, protocol.got)
        spin(reactor, lambda: protocol.lost is not None)
        assert protocol.lost is not None and protocol.lost.check(error.ConnectionDone)
    finally:
        for raw in clients:
            raw.close()


def test_a_first_read_that_raises_closes_only_that_connection(
        reactor: EdgemeshReactor, logged: list[LogEvent]) -> None:
    """An application error in the first read (right after the accept) is logged and loses
    that connection only: the port accepts the next one, which is read and answered; a
    client that has sent nothing is accepted and read later, as before."""
    import socket

    made: list[FirstReads] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: FirstReads(made)),
                             interface="127.0.0.1")
    number = port.getHost().port
    bad = socket.create_connection(("127.0.0.1", number), timeout=5)
    quiet = socket.create_connection(("127.0.0.1", number), timeout=5)
    try:
        bad.sendall(b"boom")
        spin(reactor, lambda: len(made) == 2 and made[0].lost is not None)
        assert made[0].got == [b"boom"]
        assert made[0].lost is not None and made[0].lost.check(RuntimeError)
        assert any((f := failure_of(e)) is not None and f.check(RuntimeError) for e in logged)
        assert made[1].got == [] and made[1].lost is None
        bad.settimeout(5)
        assert bad.recv(1) == b""  # closed by the mesh
        quiet.sendall(b"later")
        spin(reactor, lambda: made[1].got == [b"later"])
        assert made[1].lost is None
    finally:
        bad.close()
        quiet.close()
