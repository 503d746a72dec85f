"""
Writing without a detour through the reactor.

Twisted's ``transport.write`` only buffers: the bytes go out on the next reactor
turn, after an ``epoll_ctl`` to watch for writability and before another to stop.
For a proxy that writes one small head per request that detour is a measurable
share of the CPU, so when a plain TCP transport has nothing buffered we send at
once and hand Twisted only what the kernel did not take.  Any other transport
(TLS, UNIX, a test's StringTransport) takes the ordinary path.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
from collections.abc import Callable, Sequence
from errno import ENOBUFS, EWOULDBLOCK
from socket import MSG_MORE, socket
from types import MethodType
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol

from twisted.application._client_service import _ReconnectingProtocolProxy
from twisted.internet import main, tcp
from twisted.internet.endpoints import _WrappingProtocol
from twisted.internet.protocol import connectionDone
from zope.interface import implementer

from ..exchange import IBodyPipe

PLAIN_TCP = (tcp.Server, tcp.Client)
"""Twisted's own TCP transports (not subclasses): the ones whose internals these helpers use."""

_TCP_READ = tcp.Connection.doRead
TCP_READ = _TCP_READ
"""Twisted's own read of a TCP transport (for a doRead of ours that reads as it does)."""


def reads_as_twisted(transport: Any) -> bool:
    """A plain TCP transport whose doRead is Twisted's own: none set on the instance (a
    connecting client's doConnect, an aborted one's no-op, pooled reads, a read gate).
    Told by the bound method, not by the instance's ``__dict__``: reading that makes every
    later attribute read of the transport slower (7 -> 36 ns, timeit; see _reactor)."""
    if type(transport) not in PLAIN_TCP:
        return False
    do_read = transport.doRead
    return type(do_read) is MethodType and do_read.__func__ is _TCP_READ


def close_on_fin(transport: Any) -> None:
    """The peer's FIN ends this connection (a protocol that is half-closeable only for
    tunnels): closed now, as Twisted closes one of a protocol without half-close, with its
    ready-made ConnectionDone failure.  ``abortConnection`` instead costs a reactor turn
    (``callLater(0)``), a new Failure and a RST: a new-connection /small exchange on path 1,
    363 -> 292 k instructions (callgrind, bench/exchange_cost.py --new-connections)."""
    if _turn_sends:
        flush_turn_sends()  # what was written to it this turn leaves before it closes
    if type(transport) in PLAIN_TCP and not transport.disconnected:
        transport.connectionLost(connectionDone)
    else:
        transport.abortConnection()


def write_parts_now(transport: Any, head: bytes, data: bytes | memoryview) -> None:
    """``transport.writeSequence((head, data))``, as one ``sendmsg`` of both when that is
    safe: Twisted would join them into one new bytes object first (a copy of the body;
    1.1 of the ~2.4 copies per byte of the edge that sends a 1 MiB body over a link)."""
    write_all_now(transport, (head, data))


def _open_plain_tcp(transport: Any) -> bool:
    """Twisted's own TCP transport, open for writing, with no write half sent: what it holds
    (``_tempDataBuffer``) has not started to leave, so a send now may go before or with it."""
    return (
        type(transport) in PLAIN_TCP
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and transport.offset == len(transport.dataBuffer)
    )


TURN_SEND_MAX = 16 * 1024
"""The largest write held for the end of the turn (write_now's ``hold``); a larger one goes
now."""
TURN_SENDS_MAX = 64
"""Writes held for the end of the turn at most (then they go at once): with TURN_SEND_MAX,
at most 1 MiB held one turn longer than a send now would hold it."""

sends_now = False
"""True while holding a send would gain nothing (write_now's ``hold`` then sends at once):
while a link's read hands on its frames (set by the link: its sends leave together anyway,
one after the other in that call), and in a turn whose poll brought one event (set by the
reactor: no other event's sends to go with)."""

_turn_sends: list[tuple[Any, bytes]] = []
"""The writes held for the end of the reactor's turn (write_now's ``hold``), in order;
process-wide, as one reactor runs.  Nothing that writes to a socket overtakes them: every
direct send (write_now, write_all_now, splice_after), every close that does not wait for a
doWrite (close_on_fin, the reactor's lost connections) and the reactor's doWrite calls make
them first; Twisted's own ``write`` only buffers for such a doWrite."""


def flush_turn_sends() -> None:
    """Send the held writes now, in order.  What a socket does not take goes first in its
    transport's buffer: only what was written after it can be there (its doWrite has not run
    since: the reactor makes the held sends before one)."""
    sends = _turn_sends.copy()
    _turn_sends.clear()
    # Transports whose socket stopped taking: how many held writes wait first in their
    # buffer (a later one of the same transport goes after them, not to the socket).
    behind: dict[Any, int] | None = None
    for transport, data in sends:
        if not transport.connected:
            continue  # lost meanwhile (closed after these were sent): as a write would be
        if behind is not None and transport in behind:
            place = behind[transport]
            transport._tempDataBuffer.insert(place, data)
            transport._tempDataLen += len(data)
            behind[transport] = place + 1
            continue
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full, or an error Twisted meets on its own path (it closes)
        if sent != len(data):
            rest = data[sent:]
            transport._tempDataBuffer.insert(0, rest)
            transport._tempDataLen += len(rest)
            transport.startWriting()
            if behind is None:
                behind = {}
            behind[transport] = 1


def write_now(transport: Any, data: bytes | memoryview, hold: bool = False) -> bool:
    """``transport.write(data)``, sending immediately when that is safe.  True when all of
    it went to the socket now (nothing was or is buffered: no producer to pause).

    ``hold``: the send may wait for the end of the reactor's turn, made then with the turn's
    other held sends (the caller's reactor makes them after each poll's events:
    ``sends_at_turn_end``; True is returned as for a send now).  For the small writes that
    end one direction of an exchange (a whole response, a bodiless request): a process that
    sends each as it is made wakes a peer's ``epoll_wait`` on the other CPU once per send,
    one that sends them together once per turn.  p1 /small at 32 connections, mesh CPU per
    request 21.9-22.9 -> 19.0-19.1 µs in whole bench/run.sh runs, the kernel's part
    10.0-10.6 -> 7.5-8.1 (results 2026-12-07 §7).  Not held: a write while ``sends_now``
    (a link's read hands on its frames: held, p2 /small cost both edges +1.4-2.4 µs per
    request; a turn of one event), one past TURN_SEND_MAX or past TURN_SENDS_MAX of them."""
    # A plain TCP transport with nothing buffered: a send now keeps the byte order (after
    # the held sends, which may be to this transport).  Checked inline, not by
    # _open_plain_tcp (and not _tempDataLen): one Python call less per write (two per
    # /small exchange).
    if (
        type(transport) in PLAIN_TCP
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        # (Held as bytes only: a view's buffer may be reused before the turn ends.)
        if (hold and not sends_now and type(data) is bytes and len(data) <= TURN_SEND_MAX
                and len(_turn_sends) < TURN_SENDS_MAX):
            _turn_sends.append((transport, data))
            return True
        if _turn_sends:
            flush_turn_sends()
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own path (it closes the connection).
            sent = 0
        if sent == len(data):
            return True
        data = data[sent:]
    transport.write(data if type(data) is bytes else bytes(data))  # Twisted takes bytes only
    return False


Queue = Callable[[Sequence[bytes | memoryview]], None]
"""A transport's writeSequence that takes views as well (gathered_writes' answer)."""


def write_all_now(
    transport: Any, parts: Sequence[bytes | memoryview], queue: Queue | None = None
) -> bool:
    """``transport.writeSequence(parts)``, as one ``sendmsg`` of them all when that is safe
    (no join: a frame's head and bulk body, a link's TLS records drained 64 KiB at a time).
    True when all of it went to the socket now (as write_now).  With ``queue`` (the
    transport's, from gathered_writes): what the kernel does not take waits there, bytes as
    they are (no join), views copied."""
    # The same check as write_now's (_open_plain_tcp and nothing held), inline: one Python
    # call less per bulk DATA frame a link sends.
    if _turn_sends:
        flush_turn_sends()
    if (
        type(transport) in PLAIN_TCP
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own path (it closes the connection).
            sent = 0
        rest = []
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
                continue
            rest.append(part[sent:])
            sent = 0
        if not rest:
            return True
        parts = rest
    elif not parts:
        return False  # (nothing to write, nothing sent: the caller's buffer rule as before)
    if queue is not None:
        queue(parts)
        return False
    # Twisted's transports take bytes only.  Bytes parts go as they are (joined once, in its
    # doWrite); views are joined here, one copy instead of a bytes() each and the join.
    if all(type(part) is bytes for part in parts):
        transport.writeSequence(parts)
    else:
        transport.write(b"".join(parts))
    return False


LARGE_BUFFER = 256 * 1024
"""Read size and write-buffer threshold for connections that carry bodies in bulk
(links, pod connections): Twisted's 64 KiB default makes every 64 KiB of a large body
a separate read, frame, and pause/resume of the producers behind it."""


SMALL_BUFFER = 64 * 1024
"""Twisted's own read size and write-buffer threshold."""


FRONT_HIGH_WATER = 16 * 1024
"""Bytes a client connection may have waiting in its write buffer before the response's
producer is paused.  Twisted pauses past ``bufferSize`` (64 KiB, also its read size): with a
read arriving on top, 32 slow clients of 1 MiB bodies held ~100 KiB each on path 1 (edge-1's
VmHWM growth /small → /big +3.4-3.7 MiB; +2.1-2.5 at 16 KiB, bench/results-2026-12-03.md
section 19), and every doWrite joined the whole buffer anew."""


_WAITING_TAKEN = 16 * 1024
"""At most this much waiting in Twisted's buffer is taken along by write_all_after_waiting."""


def write_all_after_waiting(transport: Any, parts: Sequence[bytes | memoryview]) -> bool:
    """``write_all_now(transport, parts)`` after the few bytes that wait in Twisted's buffer
    (a response head the front buffered): one sendmsg of them all now.  Written after them,
    the body's first piece waited whole in the buffer for the next reactor turn (p1 /big at
    32 connections: 32 pod reads of 64 KiB at once, edge-1's VmHWM peak)."""
    if _open_plain_tcp(transport) and 0 < transport._tempDataLen <= _WAITING_TAKEN:
        waiting = transport._tempDataBuffer
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
        if write_all_now(transport, (*waiting, *parts)):
            if not (transport.producerPaused or transport.disconnecting
                    or transport._writeDisconnecting):
                # All sent, nothing buffered: stop writing now, as the doWrite that the
                # buffered head asked for would (a poll event, an empty send and this
                # epoll_ctl a turn later, per response head the front buffers); that
                # doWrite's other duties (resume a paused producer, finish a close) are
                # left to it.
                transport.stopWriting()
            return True
        return False
    return write_all_now(transport, parts)


def pause_past(transport: Any, high_water: int) -> None:
    """Pause ``transport``'s streaming producer now if more than ``high_water`` bytes wait
    in its buffer, as Twisted does past ``bufferSize``: its doWrite resumes the producer once
    the buffer is empty.  Plain TCP transports only (others keep their own rule)."""
    if (
        type(transport) in PLAIN_TCP
        and transport.streamingProducer
        and not transport.producerPaused
        and transport.producer is not None
        and len(transport.dataBuffer) - transport.offset + transport._tempDataLen > high_water
    ):
        transport.producerPaused = True
        transport.producer.pauseProducing()


def buffered(transport: Any) -> int:
    """Bytes waiting in a plain TCP transport's write buffer (0 for other transports)."""
    if type(transport) in PLAIN_TCP:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[no-any-return]
    return 0


def socket_under(transport: Any) -> socket | None:
    """The TCP socket a protocol's bytes come from: its transport's when that is one of
    Twisted's TCP transports, or under a TLS layer (and other protocol wrappers, each of
    which has the next transport down) the TCP transport's there; None for any other."""
    for _ in range(4):
        if type(transport) in PLAIN_TCP:
            sock: socket = transport.socket
            return sock
        transport = getattr(transport, "transport", None)
    return None


def use_large_buffer(transport: Any) -> None:
    if hasattr(transport, "bufferSize"):  # Twisted's FileDescriptor transports
        transport.bufferSize = LARGE_BUFFER


POOLED_READ = 512 * 1024
"""A pooled read's buffer and largest read (a link's).  Twice LARGE_BUFFER: a link that carries
a transfer in bulk takes half the reads, frame runs and client writes per MiB (edge-1 of a
p2 4 MiB transfer: ~20 -> ~15 link reads, callgrind 0.50-0.53 -> 0.44 M instructions per
MiB; results 2026-12-04 §30).  One buffer is in use at a time (reads hand out views kept by
nobody): +256 KiB of pages at most once a read filled it; a small read touches only its own."""


def _refcount_sees_views() -> bool:
    """Whether ``getrefcount(pool[i]) == 2`` says that only the pool holds a buffer, and a
    view of it makes the count larger, on this interpreter.  CPython promises no reference
    counts from one version to the next (3.14 borrows references on its stack), and a
    buffer reused while a view of it is alive would overwrite bytes someone still reads:
    where the idiom does not hold, the pools below never reuse a buffer."""
    pool = [bytearray(1)]
    alone = sys.getrefcount(pool[0]) == 2
    view = memoryview(pool[0])
    held = sys.getrefcount(pool[0]) == 3
    view.release()
    return alone and held


REFCOUNT_SEES_VIEWS = _refcount_sees_views()

_Buffer = TypeVar("_Buffer")


def take_pooled(pool: list[_Buffer], make: Callable[[], _Buffer]) -> _Buffer:
    """A buffer of ``pool`` that nothing else refers to any more, or ``make()``'s."""
    for index in range(len(pool)):
        # The pool's reference and getrefcount's argument only: no view of it is alive
        # (every view of it holds one, a memoryview through its managed buffer, a cffi
        # buffer through its cdata; REFCOUNT_SEES_VIEWS).
        if sys.getrefcount(pool[index]) == 2:
            return pool.pop(index)
    return make()


def give_pooled(pool: list[_Buffer], buffer: _Buffer, most: int) -> None:
    """``buffer`` back to ``pool`` (``most`` buffers at the most), views of it alive or not
    (take_pooled checks)."""
    if not most:
        return  # this interpreter's reference counts cannot tell (REFCOUNT_SEES_VIEWS)
    if len(pool) >= most:
        del pool[0]  # the oldest: held by views since it went in, or it would be taken
    pool.append(buffer)


_READ_POOL_MAX = 3 if REFCOUNT_SEES_VIEWS else 0
_read_pool: list[mmap.mmap] = []
"""Buffers that pooled reads go into, process-wide: at most _READ_POOL_MAX of them (one to
read into, others still held by views that someone kept past the read's dataReceived)."""


def _new_read_buffer() -> mmap.mmap:
    # Anonymous memory, untouched until a read writes to it: an idle node's small reads
    # make only their first pages resident.
    return mmap.mmap(-1, POOLED_READ)


class _Gathering(TypingProtocol):
    @property
    def body_need(self) -> int: ...


class PipedReader(TypingProtocol):
    """A protocol that reads past ``dataReceived`` at times (``pooled_reads``): a link,
    splicing DATA bodies on (transports/_links.py).  Plain attributes, read per read."""

    @property
    def piping(self) -> bool:
        """Its next read is its own (a body being spliced)."""
        ...

    @property
    def gathering(self) -> _Gathering:
        """Its frame decoder: a DATA body is being gathered while ``body_need``."""
        ...

    def read_piped(self) -> object:
        """Asked before a read when ``piping`` or a body is gathered: it moved bytes on by
        itself (True), leaves the read to the transport (False), or ends the readable
        event as a doRead does (None, or the reason the connection is lost)."""
        ...


def pooled_reads(transport: Any, piped: PipedReader | None = None) -> None:
    """Read ``transport``'s socket into a pooled buffer, reused read after read, and hand
    its protocol read-only views of it (``dataReceived(memoryview)``): for a protocol that
    takes views and keeps none past the call (a link: transports/_links.py).  A plain TCP
    transport only; others keep their own reads.

    ``recv(LARGE_BUFFER)`` allocated a new bytes per read, 33 bytes above glibc's mmap
    threshold (roles/_heap.py): it came from a hole of the C heap when one was free, else
    it was mapped, page-faulted in (zeroed) 4 KiB at a time and unmapped after the read.
    Which one a process got depended on its heap's history and changed as it ran: path 2
    /big at 32 connections then cost edge-1 ~260 page faults per MiB and twice the system
    time, the bimodal "slow state" (bench/results-2026-12-04.md section 2)."""
    if type(transport) not in PLAIN_TCP:
        return
    transport.doRead = _pooled_read(transport, piped)


READS_PER_TURN = 4
"""Reads one readable event of a link takes at most, while each fills its buffer: a link
that fell behind (its peer wrote more than POOLED_READ meanwhile) catches up without a
reactor turn (epoll_wait, dispatch) per POOLED_READ: edge-1 of a p2 4 MiB transfer, 31.5-32.6
-> 18.3-21.5 epoll_wait per transfer (bench/big_cost.py --counts; results 2026-12-04 §8)."""


def _pooled_read(transport: Any, piped: PipedReader | None) -> Callable[[], object]:
    """tcp.Connection.doRead, reading into a pooled buffer (its answers: an error from
    recv_into, connection lost; nothing read, done).  Reads are POOLED_READ at most, the
    pool's buffers (not the transport's bufferSize); after a read that filled its
    buffer, another (READS_PER_TURN at most) while the transport still reads."""
    recv_into = transport.socket.recv_into
    pool = _read_pool
    getrefcount = sys.getrefcount
    # The reactor's watched fds (epoll and poll reactors): a protocol that paused the
    # transport (stopReading) gets no further read.  Without it, one read per event.
    readers = getattr(transport.reactor, "_reads", None)
    fd = transport.fileno()
    most = READS_PER_TURN
    full = POOLED_READ
    gathering = piped.gathering if piped is not None else None

    def doRead() -> object:
        reads = most
        while True:
            # Two attributes, not a call per read (p2 /small, callgrind: +1 k instructions
            # per exchange and edge with the call).
            if piped is not None and (piped.piping or gathering.body_need):  # type: ignore[union-attr]
                moved = piped.read_piped()
                if moved is not False:
                    if moved is not True:
                        return moved
                    reads -= 1
                    if (not reads or readers is None or fd not in readers
                            or transport.disconnecting):
                        return None
                    continue
            # The pool's last buffer, when only the pool refers to it (and getrefcount's
            # argument), inline; the rest is take_pooled's (callgrind, one 200-byte
            # read: 12.0 -> 8.8 k instructions; Twisted's doRead, 5.6 k; p2 /small 430 ->
            # 424 k).
            if pool and getrefcount(pool[-1]) == 2:
                buffer = pool.pop()
            else:
                buffer = take_pooled(pool, _new_read_buffer)
            try:
                size = recv_into(buffer)
            except OSError as error:
                give_pooled(pool, buffer, _READ_POOL_MAX)
                if error.args[0] == EWOULDBLOCK:
                    return None
                return main.CONNECTION_LOST
            if not size:
                give_pooled(pool, buffer, _READ_POOL_MAX)
                return main.CONNECTION_DONE
            try:
                transport.protocol.dataReceived(memoryview(buffer)[:size].toreadonly())
            finally:
                if len(pool) < _READ_POOL_MAX:
                    pool.append(buffer)
                else:
                    give_pooled(pool, buffer, _READ_POOL_MAX)
            reads -= 1
            if (size < full or not reads or readers is None or fd not in readers
                    or transport.disconnecting):
                return None

    return doRead


SPLICE_PIPE_SIZE = 1024 * 1024
"""The splice pipe's capacity: a lone link stream's pod read (SPLICED_READ), one DATA frame,
in one splice (a pipe of 256 KiB has 64 slots: ~240 KiB per splice from a socket)."""

SPLICE_MIN = 128 * 1024
"""The smallest piece of a body that is spliced rather than read: a splice costs three
system calls per piece (into the pipe, the frame's head, out of it) against a read and a
share of one gathered send; at 32 connections (pod reads of 64 KiB) splicing cost both
edges of p2 /big +5-15 % CPU per MiB."""

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


@implementer(IBodyPipe)
class SplicePipe:
    """A pipe that body bytes pass through between two sockets by ``os.splice`` (Linux),
    never copied into the process: the kernel moves references to the pages.

    One per process is enough: whoever fills it empties it before returning to the
    reactor (``drain_to`` what the socket takes, ``take`` the rest as bytes), so it holds
    nothing between two reactor calls and no one waits on it."""

    __slots__ = ("held", "read_fd", "spliced", "write_fd")

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, SPLICE_PIPE_SIZE)
        except OSError:
            pass  # the user's pipe pages are used up: smaller splices, same result
        self.held = 0
        """Bytes in the pipe (filled, not yet drained or taken)."""
        self.spliced = 0
        """Bytes moved on to sockets so far (``edgemesh_spliced_bytes``)."""

    def fill_from(self, fd: int, size: int) -> int:
        """Move up to ``size`` bytes from socket ``fd`` into the pipe: how many (0: the
        peer's end).  Raises BlockingIOError when the socket has none, OSError otherwise."""
        moved = os.splice(fd, self.write_fd, size, flags=_SPLICE_FLAGS)
        self.held += moved
        return moved

    def drain_to(self, fd: int, size: int) -> int:
        """Move up to ``size`` of the bytes held to socket ``fd``, as many as it takes now:
        how many went (they leave the pipe).  An error stops it (a full socket, or one the
        peer closed: what is left is taken as bytes, and the transport meets the error on
        its own path)."""
        moved = 0
        while moved < size:
            try:
                sent = os.splice(self.read_fd, fd, size - moved, flags=_SPLICE_FLAGS)
            except OSError:
                break
            if not sent:
                break
            moved += sent
        self.held -= moved
        self.spliced += moved
        return moved

    def put(self, data: bytes) -> None:
        """Bytes from the process into the empty pipe, ahead of what is spliced in after
        them (a few bytes of a body that came with a read: at most 4 KiB, which an empty
        pipe always takes whole)."""
        written = os.write(self.write_fd, data)
        if written != len(data):  # pragma: no cover -- a pipe of at least one page
            raise OSError("the splice pipe took only part of a small piece")
        self.held += written

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes held, out of the pipe as bytes (what a consumer that
        cannot splice, or a socket that took only part, gets)."""
        pieces = []
        left = size
        while left:
            piece = os.read(self.read_fd, left)
            pieces.append(piece)
            left -= len(piece)
        self.held -= size
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def discard(self) -> None:
        """Empty the pipe, whatever it holds (after a failure on the way)."""
        while True:
            try:
                if not os.read(self.read_fd, SPLICE_PIPE_SIZE):
                    break
            except BlockingIOError:
                break
        self.held = 0

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def spliced_bytes() -> int:
    """Body bytes this process moved between sockets by splice (0 before the first)."""
    return _splice_pipe[0].spliced if _splice_pipe else 0


def splice_after(transport: Any, head: bytes, pipe: IBodyPipe, size: int) -> list[bytes]:
    """Write ``head`` and then ``size`` bytes held in ``pipe`` to a plain TCP transport:
    the head sent and the body spliced at once when nothing waits in Twisted's buffer (so
    the byte order holds), as far as the socket takes them.  Returns what is left to write
    (in order, as bytes: the pipe is empty on return)."""
    if _turn_sends:
        flush_turn_sends()
    if not _open_plain_tcp(transport) or transport._tempDataLen:
        return [head, pipe.take(size)] if head else [pipe.take(size)]
    if not head:  # a body only (to a client: the front)
        size -= pipe.drain_to(transport.fileno(), size)
        return [pipe.take(size)] if size else []
    try:
        # MSG_MORE: the head leaves in one segment with the body's first pages.
        sent = transport.socket.send(head, MSG_MORE)
    except OSError:
        sent = 0  # (an error other than a full socket: Twisted meets it on its own path)
    if sent < len(head):
        return [head[sent:], pipe.take(size)]
    size -= pipe.drain_to(transport.fileno(), size)
    return [pipe.take(size)] if size else []


_splice_pipe: list[SplicePipe] = []


def splice_pipe() -> SplicePipe | None:
    """The process's SplicePipe, made when first asked for; None where ``os.splice`` is
    missing (not Linux) or no pipe can be had."""
    if _splice_pipe:
        return _splice_pipe[0]
    if not hasattr(os, "splice"):
        return None
    try:
        pipe = SplicePipe()
    except OSError:
        return None
    _splice_pipe.append(pipe)
    return pipe


_GATHER_BYTES = LARGE_BUFFER
"""What one sendmsg of a link's buffered writes offers the kernel at most."""
_GATHER_PARTS = 64
"""Buffered writes one sendmsg takes at most (far below the kernel's IOV_MAX)."""


def sends_at_once(transport: Any) -> bool:
    """Whether ``transport`` sends every write at once, with no buffer where writes wait for
    one gathered send (a transport says so with ``sends_at_once = True``: a link's TLS
    layer; through ProtocolWrapper's attribute lookup as well)."""
    return getattr(transport, "sends_at_once", False) is True


def gathered_writes(transport: Any) -> Queue | None:
    """Send ``transport``'s buffered writes as they are, several in one ``sendmsg``, rather
    than Twisted's doWrite: it joins its list of writes into one new bytes object (a copy of
    every byte that waits, and again of what one send leaves) and sends 128 KiB at most per
    call.  A link's DATA frames wait there whenever the link is full (edge-2 of p2 /big at
    32 connections: most of the body).  A plain TCP transport only; others keep their own.

    Returns the transport's queue (None for another transport): its ``writeSequence``,
    which takes views as well."""
    if type(transport) not in PLAIN_TCP:
        return None
    transport.doWrite = _gathered_write(transport)
    return _gathered_queue(transport)


def _gathered_queue(transport: Any) -> Queue:
    """abstract.FileDescriptor.writeSequence for a transport whose doWrite is
    _gathered_write, in one call instead of Twisted's layers (tcp's and abstract's
    writeSequence, a bytes check per part, _maybePauseProducer, _isSendBufferFull,
    startWriting, addWriter, _add).  Twisted's rules kept: past ``bufferSize`` the producer
    pauses; what waits is bytes, and exactly what it counts (a view is copied: kept as it is,
    it would keep its whole read alive, or see a pooled buffer reused)."""
    # The reactor's write-watched fds (epoll and poll reactors): a transport already
    # watched needs no startWriting (Twisted's _add finds it there and does nothing).
    writers = getattr(transport.reactor, "_writes", None)
    fd = transport.fileno()

    def queue(parts: Sequence[bytes | memoryview]) -> None:
        if not transport.connected or transport._writeDisconnected or not parts:
            return
        waiting = transport._tempDataBuffer  # (write_all_after_waiting may replace it)
        size = 0
        for part in parts:
            waiting.append(part if type(part) is bytes else bytes(part))
            size += len(part)
        transport._tempDataLen += size
        producer = transport.producer
        if (producer is not None and transport.streamingProducer
                and len(transport.dataBuffer) + transport._tempDataLen > transport.bufferSize):
            transport.producerPaused = True
            producer.pauseProducing()
        if writers is None or fd not in writers:
            transport.startWriting()

    return queue


def _gathered_write(transport: Any) -> Callable[[], object]:
    """abstract.FileDescriptor.doWrite with tcp.Connection.writeSomeData's answers, sending
    the waiting writes by sendmsg.  Twisted's fields keep their meaning: ``dataBuffer`` from
    ``offset`` goes first (here: the write a send cut, not a join), then ``_tempDataBuffer``
    (``_tempDataLen`` bytes)."""
    sendmsg = transport.socket.sendmsg

    def doWrite() -> object:
        head = transport.dataBuffer
        offset = transport.offset
        waiting = transport._tempDataBuffer
        parts: list[bytes | memoryview] = []
        size = 0
        if offset < len(head):
            parts.append(memoryview(head)[offset:] if offset else head)
            size = len(head) - offset
        taken = 0
        count = len(waiting)
        while taken < count and size < _GATHER_BYTES and len(parts) < _GATHER_PARTS:
            part = waiting[taken]
            parts.append(part)
            size += len(part)
            taken += 1
        try:
            sent = sendmsg(parts) if parts else 0
        except OSError as error:
            if error.args[0] not in (EWOULDBLOCK, ENOBUFS):
                return main.CONNECTION_LOST
            sent = 0
        if offset < len(head):
            left = len(head) - offset
            if sent < left:
                transport.offset = offset + sent
                return None
            sent -= left
        # The head is out; the rest of what went comes from the waiting list.
        index = 0
        while index < taken and sent >= len(waiting[index]):
            sent -= len(waiting[index])
            transport._tempDataLen -= len(waiting[index])
            index += 1
        if index < count:
            part = waiting[index]
            transport._tempDataLen -= len(part)
            index += 1
            # A write the send cut: it goes on from where it was cut, as the head (no copy).
            transport.dataBuffer = part
            transport.offset = sent
        else:
            transport.dataBuffer = b""
            transport.offset = 0
        del waiting[:index]
        if transport.offset < len(transport.dataBuffer) or transport._tempDataLen:
            return None
        # All sent: Twisted's doWrite from here.
        transport.dataBuffer = b""
        transport.offset = 0
        transport.stopWriting()
        producer = transport.producer
        if producer is not None and (not transport.streamingProducer
                                     or transport.producerPaused):
            transport.producerPaused = False
            producer.resumeProducing()
        elif transport.disconnecting:
            return transport._postLoseConnection()
        elif transport._writeDisconnecting:
            transport._writeDisconnected = True
            return transport._closeWriteConnection()
        return None

    return doWrite


DEFAULT_BACKLOG = 4096
"""Listen queue of every listener whose endpoint string names none.  Twisted's default
is 50: a router restart that brings back thousands of edges at once would drop most of
their SYNs, and each retransmits only after 1, 3, 7... seconds (~110 s for 5000 edges).
The kernel caps it at ``net.core.somaxconn`` (4096 by default since Linux 5.4)."""

_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})
"""Twisted's server endpoint types that take ``backlog=``."""


def _segments(description: str) -> list[str]:
    """``description`` split at its unescaped colons (Twisted's ``\\:`` escape kept)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """A server endpoint string with ``backlog=`` added when its type takes one and it
    names none (``tcp:7700`` → ``tcp:7700:backlog=4096``); an explicit one wins."""
    parts = _segments(description.strip())
    if len(parts) < 2 or parts[0].lower() not in _BACKLOG_TYPES:
        return description
    if any(part.strip().startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description.strip()}:backlog={backlog}"


def direct_reads(protocol: Any) -> Any:
    """Let ``protocol``'s TCP transport hand reads straight to it, past the forwarders a
    client endpoint (``_WrappingProtocol``) and ClientService (its proxy, through
    ``__getattr__``) put in between: they only pass ``dataReceived`` on, so the
    transport may call the inner one itself (-1 to -3 Python calls per read).  Connection
    and loss notifications still go through them.  Returns ``protocol`` (a callback)."""
    transport = getattr(protocol, "transport", None)
    outer = getattr(transport, "protocol", None)
    if type(outer) is _WrappingProtocol:
        inner = outer._wrappedProtocol
        if inner is protocol or (type(inner) is _ReconnectingProtocolProxy
                                 and inner._protocol is protocol):
            outer.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
    return protocol
