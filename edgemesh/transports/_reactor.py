"""
edgemesh's reactor: Twisted's epoll reactor with a shorter way from ``epoll_wait`` to
``doRead``, and an end-of-turn queue.

    twistd --reactor edgemesh edgemesh-edge ...      (the plugin: twisted/plugins/)
    from edgemesh.transports._reactor import install; install()   (before anything else
                                                                   imports a reactor)

Twisted dispatches every ready descriptor through ``log.callWithLogger`` (the
connection's ``logPrefix()``, then two ``callWithContext`` layers that push a "system"
context) and ``_doReadOrWrite``: about 11 Python calls per read, two or three reads per
exchange and process, some 10 % of a /small exchange's instructions.  :class:`EdgemeshReactor`
calls ``doRead``/``doWrite`` directly for read and write events, with the same error
handling: an exception from either is logged and disconnects that selectable only (the
reactor goes on with the next descriptor).  Hang-ups without input go through Twisted's
own ``_doReadOrWrite`` unchanged.  A plain TCP connection (``tcp.Server``/``tcp.Client``,
not a subclass, and no ``doRead`` of the instance's own) is read inline: its ``recv`` and
``protocol.dataReceived``, with Twisted's answers (an error from ``recv``: lost; an empty
read: done).  The main loop goes straight to the poll when no timer is due and nothing
else is pending.  Its TCP listeners accept IPv4 connections without the log buffering,
generator and enum conversions around ``accept`` (:class:`_Port`), and read what a new
connection brought at once, not a turn later (``_first_read``).

What is lost: legacy ``twisted.python.log`` lines emitted from inside ``doRead`` (Twisted's
own, e.g. a protocol's unhandled error) no longer carry the connection's log prefix as
their "system" (they show "-"); failures escaping ``doRead``/``doWrite`` are still logged
with it.  edgemesh's own lines come from ``twisted.logger`` and never used that context.

:meth:`EdgemeshReactor.callAtEndOfTurn` runs a callable once the events of this poll are
dispatched: what ``callLater(0, f)`` does for a link's coalesced writes, without a
DelayedCall in the timer heap.  Nothing here is imported unless this reactor is chosen.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable
from types import MethodType
from typing import Any

from twisted.internet import epollreactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST, installReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

from . import _io
from ._io import PLAIN_TCP as _PLAIN_TCP
from ._io import TCP_READ as _TCP_READ
from ._io import _turn_sends as _TURN_SENDS
from ._io import flush_turn_sends as _flush_turn_sends
from ._io import reads_as_twisted


class EdgemeshReactor(epollreactor.EPollReactor):
    """An epoll reactor that dispatches ready descriptors without log-context layers."""

    sends_at_turn_end = True
    """It makes the writes held for the end of the turn (``_io.write_now``'s ``hold``) once
    the events of a poll are dispatched (before the end-of-turn queue), and polls without
    blocking while any wait."""

    callAtEndOfTurn: Callable[[Callable[[], object]], None]
    """Run ``func()`` after the I/O events of the current (or, outside of one, the next)
    poll are dispatched; once, in the order queued.  Not cancellable: ``func`` checks its
    own state."""

    def __init__(self) -> None:
        # The queue is one list for the reactor's life (cleared in place once run), so that
        # callAtEndOfTurn is its append: a C call, not a Python method's (a link queues its
        # flush once per turn; callgrind p2 385 -> 382 k per exchange, with doPoll running
        # the queue inline).
        self._turn_end: list[Callable[[], object]] = []
        self.callAtEndOfTurn = self._turn_end.append
        super().__init__()  # type: ignore[no-untyped-call]

    def timeout(self) -> float | None:
        # Something queued outside of an I/O dispatch (a timer's callback): the next
        # poll must not block, its end of turn runs it.
        if self._turn_end or _TURN_SENDS:
            return 0.0
        return super().timeout()

    def mainLoop(self) -> None:
        """Twisted's loop (timers due, then one poll): the turns run in ``_turns``."""
        while self._started:
            try:
                self.runUntilCurrent()
                self._turns(self.timeout() if self.running else 0, True)
            except BaseException:  # noqa: BLE001 -- as Twisted's: log, go on
                log.err(None, "Unexpected error in main loop")
        log.msg("Main loop terminated.")

    def doPoll(self, timeout: float | None) -> None:
        """One poll, its dispatch and end of turn (Twisted's ``iterate``, tests)."""
        self._turns(timeout, False)

    def _turns(self, timeout: float | None, loop: bool) -> None:
        """Poll with ``timeout``, dispatch, run the end-of-turn queue; with ``loop``, again
        while the reactor runs.  The main loop's turns in one Python frame: no doIteration
        call per turn (-1 Python call per turn, 2 per /small exchange and edge).  Between
        turns, a shortcut for the common one where no timer is due: no runUntilCurrent or
        timeout() calls (-11 k instructions per /small exchange on path 1, -3 %)."""
        pending = self._pendingTimedCalls
        poll = self._poller.poll
        selectables = self._selectables
        disconnected, readable, writable = (
            self._POLL_DISCONNECTED, self._POLL_IN, self._POLL_OUT)
        turn_end = self._turn_end
        turn_sends = _TURN_SENDS
        while True:
            try:
                events = poll(-1 if timeout is None else timeout, len(selectables))
            except OSError as err:
                if err.errno != errno.EINTR:
                    raise
                events = []
            # One event: its sends have no other to go with, so none is held (_io.write_now).
            _io.sends_now = len(events) == 1
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                if event & disconnected and not event & readable:
                    # A hang-up: Twisted's own path, as rare as connections end (after the
                    # writes held for the turn's end: one may be to this connection).
                    if turn_sends:
                        _flush_turn_sends()
                    log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                    continue
                # Twisted's _doReadOrWrite, minus its log context (-33 k instructions per
                # /small exchange on path 1, -10 %; bench/exchange_cost.py).
                try:
                    why: BaseException | None = None
                    in_read = False
                    try:
                        if selectable.fileno() == -1:
                            why = _NO_FILEDESC
                        else:
                            if event & readable:
                                in_read = True
                                # Twisted's doRead told by its bound method, not by
                                # "doRead" in __dict__: reading __dict__ made every later
                                # attribute read of the transport ~5x slower (timeit) and cost
                                # p1 /small ~1.3 k, p2 ~5 k instructions per exchange (callgrind).
                                do_read = selectable.doRead
                                if (type(do_read) is _METHOD and do_read.__func__ is _TCP_READ
                                        and type(selectable) in _PLAIN_TCP):
                                    # tcp.Connection.doRead and _dataReceived, inlined (two
                                    # Python calls less per read: -4 k instructions per /small
                                    # exchange on path 1 in one pair of runs; ±2 % spread).
                                    try:
                                        data = selectable.socket.recv(selectable.bufferSize)
                                    except OSError as se:
                                        if se.args[0] != errno.EWOULDBLOCK:
                                            why = CONNECTION_LOST
                                    else:
                                        if data:
                                            selectable.protocol.dataReceived(data)
                                        else:
                                            why = CONNECTION_DONE
                                else:
                                    why = do_read()
                            if not why and event & writable:
                                if turn_sends:
                                    _flush_turn_sends()  # they go before what waits here
                                why = selectable.doWrite()
                                in_read = False
                    except BaseException:  # noqa: BLE001
                        # As Twisted: the application's error disconnects this selectable.
                        why = sys.exc_info()[1]
                        log.err(system=_prefix(selectable))
                    if why:
                        if turn_sends:
                            _flush_turn_sends()  # (as above: before the socket closes)
                        self._disconnectSelectable(  # type: ignore[no-untyped-call]
                            selectable, why, in_read)
                except KeyboardInterrupt:
                    raise
                except BaseException:  # noqa: BLE001 -- as callWithLogger: logged, go on
                    log.err(system=_prefix(selectable))
            if turn_sends:
                # The small sends this poll's events held (write_now's hold), together: each
                # peer woken once per turn.
                try:
                    _flush_turn_sends()
                except Exception:  # noqa: BLE001 -- a bug there must not stop the reactor
                    log.err(None, "held sends failed")
            if turn_end:
                # What is queued while these run waits for the next turn (which then polls
                # without blocking): the loop is bounded by the queue's length now.
                queued = turn_end.copy()
                turn_end.clear()
                for func in queued:
                    try:
                        func()
                    except KeyboardInterrupt:
                        raise
                    except BaseException:  # noqa: BLE001 -- one must not stop the others
                        log.err(None, "end-of-turn call failed")
            if not loop or not self._started:
                return
            # The next turn's timeout, as runUntilCurrent and timeout() would have it.
            if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                    or self._cancellations > 50 or turn_end or turn_sends
                    or pending is not self._pendingTimedCalls):
                pending = self._pendingTimedCalls  # (compaction replaces it)
                self.runUntilCurrent()
                timeout = self.timeout()
            elif pending:
                delay = pending[0].time - self.seconds()
                if delay <= 0:
                    self.runUntilCurrent()
                    timeout = self.timeout()
                else:
                    # Not min(): a builtin call with argument parsing, ~750
                    # instructions, twice per /small exchange (callgrind).
                    timeout = delay if delay < _LONGEST else _LONGEST
            else:
                timeout = None
            if not self.running:
                timeout = 0

    doIteration = doPoll

    def _first_read(self, selectable: Any) -> None:
        """A connection's first read, right after its accept (by :class:`_Port`), as the
        main loop's inline read would make it a turn later: a client sends its request as
        soon as it is connected, so it is usually there already, and waiting for its read
        event costs an ``epoll_wait`` and a dispatch (callgrind, a /small exchange on a new
        connection: p1 242 -> 237 k instructions, p2's edge-1 267 -> 262 k; the CPU of one
        after an idle pause did not move, paired).  Nothing there yet (or a protocol where
        the server speaks first): one ``recv`` more, and the connection waits for its read
        event as before.  Only a plain TCP transport still reading with Twisted's own
        ``doRead``; an error gets the main loop's answer to the same read (the protocol's
        exception logged, that connection lost, the port accepts on)."""
        if not reads_as_twisted(selectable):
            return
        why: BaseException | None
        try:
            why = selectable.doRead()  # (Twisted's: the main loop's inline read, as a call)
        except BaseException:  # noqa: BLE001 -- as the main loop: this connection only
            why = sys.exc_info()[1]
            log.err(system=_prefix(selectable))
        if why:
            if _TURN_SENDS:
                _flush_turn_sends()
            self._disconnectSelectable(selectable, why, True)  # type: ignore[no-untyped-call]

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,
                  interface: str = "") -> IListeningPort:
        """Twisted's, with :class:`_Port`."""
        listening = _Port(port, factory, backlog, interface, self)
        listening.startListening()
        return listening


class _Port(tcp.Port):
    """Twisted's TCP listening port; an IPv4 one accepts in a shorter way.

    Twisted's ``doRead`` runs each accept through a log-buffering context (two ``Logger``
    objects made per call), a generator, and ``socket.accept``, whose ``family`` and
    ``type`` convert to enums to make the new socket object.  Here: ``_accept`` on the
    listener, the socket made with the listener's numbers, and the same protocol, transport,
    session numbers and ``numberAccepts`` scaling (callgrind, a /small exchange on a new
    connection, path 1: 290 -> 251 k instructions).  Any accept error but "none left"
    (EPERM, EMFILE with its reserved descriptor, ENFILE, ...) goes to Twisted's ``doRead``
    and its answers; IPv6 listeners (scope ids through getnameinfo) are Twisted's
    throughout."""

    def doRead(self) -> None:
        if self.addressFamily != _AF_INET:
            tcp.Port.doRead(self)
            return
        listener: Any = self.socket  # (_accept: socket.socket's, not in its stubs)
        accept = listener._accept
        factory: Any = self.factory
        build = factory.buildProtocol
        wanted = self.numberAccepts
        reactor: Any = self.reactor
        reads = reactor._reads
        first_read = reactor._first_read
        accepted = 0
        try:
            while accepted < wanted:
                try:
                    fd, addr = accept()
                except OSError as err:
                    if err.args[0] == errno.EAGAIN:  # (EWOULDBLOCK on Linux)
                        break
                    tcp.Port.doRead(self)
                    return
                accepted += 1
                skt = socket.socket(_AF_INET, _SOCK_STREAM, 0, fd)
                protocol = build(IPv4Address("TCP", *addr))
                if protocol is None:
                    skt.close()
                    continue
                session = self.sessionno
                self.sessionno = session + 1
                transport = self.transport(skt, protocol, addr, self, session, reactor)
                protocol.makeConnection(transport)
                if fd in reads:  # (the fds read; not if makeConnection closed it)
                    first_read(transport)
            # Twisted's scaling: more next time after a full batch, else as many as came.
            if accepted == wanted:
                self.numberAccepts = wanted + 20
            else:
                self.numberAccepts = accepted if accepted > 1 else 1
        except BaseException:  # noqa: BLE001 -- as Twisted's: logged, the port goes on
            log.deferr()


_AF_INET = int(socket.AF_INET)
_SOCK_STREAM = int(socket.SOCK_STREAM)

# The main loop reads Twisted's own TCP connections (_PLAIN_TCP, not subclasses) inline
# while their doRead is Twisted's (_TCP_READ), not one set on the instance (a connecting
# client's doConnect, an aborted connection's no-op, edgemesh's pooled reads and read gate):
# _io.reads_as_twisted's test, written out there to save its call per read.
_METHOD = MethodType

_LONGEST = 2147483.0
"""The longest poll timeout, as Twisted's: epoll_wait takes milliseconds in a C int."""


def _prefix(selectable: object) -> str:
    try:
        return str(selectable.logPrefix())  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001 -- as callWithLogger
        return "(buggy logPrefix method)"


def install() -> EdgemeshReactor:
    """Install :class:`EdgemeshReactor` as ``twisted.internet.reactor``."""
    reactor = EdgemeshReactor()
    installReactor(reactor)
    return reactor


__all__ = ["EdgemeshReactor", "install"]
