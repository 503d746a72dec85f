"""
Securing envelope links: mutual TLS on the wire, and the peer's hello checked against
its certificate before any envelope is processed.

``link_security(reactor, tls, node=..., role=...)`` (in ``_plaintext``) gives a role what it
needs, whether links are secured (``MutualTLS``) or explicitly plaintext (``Plaintext``,
``--insecure``):

- ``server_factory(factory)``: the factory to listen with (TLS server side: our
  certificate, a client certificate from the CA required);
- ``client_endpoint(endpoint, peer)``: the endpoint to dial ``peer`` with (TLS client
  side: the server's certificate must name ``peer``, checked by service_identity);
- ``guard(link, role=..., expect=..., known=...)``: installs the hello check on a link;
- ``service``: starts with the node (the plaintext warning; file reloading).

New connections always use the material loaded last; a reload swaps it and leaves
established connections alone (each keeps the SSL context it was made with).
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import WantReadError, ZeroReturnError
from service_identity import VerificationError
from twisted.application.service import Service
from twisted.internet import main
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..transports import (
    REFCOUNT_SEES_VIEWS,
    EnvelopeLink,
    gathered_writes,
    give_pooled,
    reads_as_twisted,
    take_pooled,
    write_all_now,
    write_now,
)
from . import _sockettls
from ._config import TLSConfig, TLSFileError
from ._material import (
    CIPHERS,
    MINIMUM_TLS,
    IdentityError,
    TLSMaterial,
    check_identity,
    file_signature,
    identity_of,
    load_material,
    names_match,
    quiet_pyopenssl,
)
from ._plaintext import ANY_PEER, _fail_closed, _hello_problem

log = Logger(namespace="edgemesh.security")

_CLIENT_CACHE = 256
"""Client contexts kept (one per peer name dialled); beyond this the cache starts over."""


# --- the TLS handshake deadline ---------------------------------------------------------------


@implementer(IHandshakeListener)
class _HandshakeGuard(ProtocolWrapper):
    """Between the TLS layer and the link: drops a peer that has not completed the TLS
    handshake in time (including one that never sends a ClientHello), and logs a failed
    handshake in one line."""

    factory: _GuardFactory

    def __init__(self, factory: _GuardFactory, wrapped: IProtocol) -> None:
        super().__init__(factory, wrapped)
        self._deadline: IDelayedCall | None = None
        self.handshake_done = False
        self.timed_out = False

    def makeConnection(self, transport: Any) -> None:
        self._deadline = self.factory.reactor.callLater(self.factory.timeout, self._expired)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self._cancel()
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def loseConnection(self) -> None:
        # Twisted's TLS sends its close alert only once no producer is registered; a link
        # stays registered as its transport's producer for its whole life, and it asks to
        # close when it has nothing more to send.  Without this, the TLS connection would
        # stay open (and ClientService.stopService would wait for it forever).
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()
        super().loseConnection()  # type: ignore[no-untyped-call]

    def _expired(self) -> None:
        self._deadline = None
        if self.handshake_done:
            return
        self.timed_out = True
        log.warn(
            "closing {side} connection with {peer}: TLS handshake not complete after {timeout:g}s",
            side=self.factory.side, peer=_address(self), timeout=self.factory.timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        if not self.handshake_done and not self.timed_out:
            log.warn(
                "TLS handshake ({side}) with {peer} failed: {reason}",
                side=self.factory.side, peer=_address(self), reason=_tls_reason(reason),
            )
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


def _address(protocol: ProtocolWrapper) -> str:
    try:
        peer = protocol.transport.getPeer()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 -- only for a log line
        return "?"
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


def _tls_reason(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, VerificationError):
        # service_identity refused the server's certificate: say which name was wanted.
        wanted = ", ".join(
            repr(getattr(getattr(e, "mismatched_id", None), "hostname", b"?")
                 .decode("ascii", "replace"))
            for e in value.errors
        )
        return f"the server's certificate does not name {wanted}"
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(item[-1]) for item in value.args[0] if isinstance(item, tuple) and item]
        if parts:
            return "; ".join(parts)
    return reason.getErrorMessage() or type(value).__name__


class _GuardFactory(WrappingFactory[_HandshakeGuard]):
    protocol = _HandshakeGuard
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, reactor: IReactorTime,
                 timeout: float, side: str) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.timeout = timeout
        self.side = side


@implementer(IStreamClientEndpoint)
class _GuardedClientEndpoint:
    """``wrapClientTLS`` with the handshake deadline between TLS and the application."""

    def __init__(self, tls: IStreamClientEndpoint, reactor: IReactorTime, timeout: float) -> None:
        self.tls = tls
        self.reactor = reactor
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        guarded = _GuardFactory(factory, self.reactor, self.timeout, "outgoing")
        connecting: Deferred[Any] = self.tls.connect(guarded)
        return connecting.addCallback(lambda guard: guard.wrappedProtocol)


# --- the TLS layer of a link: whole writes and whole reads ----------------------------------------

_RECORD = 16 * 1024
"""The largest plaintext of a TLS record."""

_BIO_SLICE = 64 * 1024
"""Most bytes given to OpenSSL's receive memory BIO at a time (see dataReceived)."""

_READ_SIZE = 256 * 1024
"""Read size of the TCP connection under a link's TLS (the links' LARGE_BUFFER; Twisted's
64 KiB default would cut every 256 KiB of body into four reads)."""

_SLACK = _RECORD + 1024
"""Plaintext a read may yield beyond its own size: a record begun in the read before."""


def _c_calls() -> tuple[Any, Any] | None:
    """pyOpenSSL's cffi binding of OpenSSL (its ``ffi`` and ``lib``), when it has what
    ``_Direct`` needs; None and the public API otherwise."""
    try:
        from OpenSSL._util import ffi, lib
    except ImportError:
        return None
    wanted = ("SSL_read", "BIO_read", "BIO_get_mem_data", "SSL_clear_mode",
              "SSL_MODE_ENABLE_PARTIAL_WRITE", "BIO_new_mem_buf", "BIO_set_mem_eof_return",
              "SSL_set_bio", "BIO_new", "BIO_s_mem")
    if not all(hasattr(lib, name) for name in wanted) or not hasattr(ffi, "new_allocator"):
        return None
    return ffi, lib


_C = _c_calls()
_ALLOCATE: Any = _C[0].new_allocator(should_clear_after_alloc=False) if _C else None
"""malloc without the memset: every byte of these buffers is written before it is read."""

_PLAINTEXT = _READ_SIZE + _SLACK
"""Size of the buffers a read is decrypted into (the most one read can yield)."""

_NOTHING = memoryview(b"")

_LEND_MIN = 4096
"""Reads up to this size (credit frames, heads) are copied into the receive BIO (one
pyOpenSSL bio_write) instead of lent as one (a BIO made, swapped in and freed: eight C
calls): bench/tls_call_cost.py, 56.0 -> 49.1 k instructions per one-record read."""

_VIEW_MIN = 64 * 1024
"""Plaintext below this goes up as a copy, not as a view that would hold a whole buffer."""

_POOL_MAX = 3 if REFCOUNT_SEES_VIEWS else 0
_pool: list[Any] = []
"""Plaintext buffers for the next reads, process-wide (at most _POOL_MAX of them: one the
frame decoder may still hold views of while it gathers a large body, one to read into).

A buffer malloc'd and freed per read (~270 KiB) made glibc give the top of its heap back
and take it again: the receiving edge page-faulted 21-199 times per MiB; reused, 0-16
(tls_cost.py --measure perf, edge-1: 4.25 -> 3.75 ms CPU per MiB, medians; results §20)."""


def _new_buffer() -> Any:
    return _ALLOCATE("char[]", _PLAINTEXT)


_ciphertext: tuple[memoryview, memoryview] | None = None
"""The one buffer every link's TCP read lands in, process-wide (writable, read-only views):
made at the first read (see _LinkTLS._read_socket)."""


def _ciphertext_buffer() -> tuple[memoryview, memoryview]:
    global _ciphertext
    if _ciphertext is None:
        # malloc'd without the bytearray's zero fill: untouched until a read writes to it,
        # so an idle node's heartbeats make a page resident, not 256 KiB (idle mTLS edge,
        # RssAnon: 31.9 -> 31.6 MiB, bench/idle_memory.py --tls).
        view = memoryview(_C[0].buffer(_ALLOCATE("char[]", _READ_SIZE)) if _C
                          else bytearray(_READ_SIZE))
        _ciphertext = view, view.toreadonly()
    return _ciphertext


class _Direct:
    """A link's SSL connection driven through pyOpenSSL's own C binding, where its public
    API copies once more than needed: ``recv`` and ``bio_read`` return a new bytes per
    call, copied out of a temporary buffer, and the records of a read were then joined.
    Here ``SSL_read`` decrypts into one buffer per read and ``BIO_read`` drains the send
    BIO into a buffer of its own, and those buffers go on as they are (with whole writes:
    tls_cost.py, both edges, 27.8 -> 21.5 M instructions per MiB; results §15).  The
    checks are pyOpenSSL's (``_raise_ssl_error`` after every ``SSL_read``, as ``recv``
    does); the contexts, suites, versions and verification are untouched."""

    def __init__(self, connection: SSL.Connection) -> None:
        assert _C is not None
        self.ffi, self.lib = _C
        self.connection = connection
        self.ssl = connection._ssl
        self.send_bio = connection._from_ssl

    @staticmethod
    def usable(connection: SSL.Connection) -> bool:
        return (_C is not None and getattr(connection, "_from_ssl", None) is not None
                and getattr(connection, "_into_ssl", None) is not None
                and hasattr(connection, "_ssl") and hasattr(connection, "_raise_ssl_error"))

    def whole_writes(self) -> None:
        # Without partial writes one SSL_write makes all the records it is given (a memory
        # BIO always takes them), instead of one Python call per 16 KiB record (the
        # sending edge's interpreter: 1.16 -> 0.72 M instructions per MiB).
        self.lib.SSL_clear_mode(self.ssl, self.lib.SSL_MODE_ENABLE_PARTIAL_WRITE)

    def write_from(self, pinned: Any, offset: int, size: int) -> int:
        """SSL_write ``size`` bytes of ``pinned`` (an ``ffi.from_buffer``) from ``offset``:
        how many it took; raises as ``Connection.send`` does.  Its error check (a Python
        call, ``_raise_ssl_error``) only when SSL_write fails, and no slice and pin of the
        bytes per call (bench/tls_call_cost.py: 616.5 -> 598.0 k instructions per 75 KiB
        write, 8.42 -> 8.16 M per MiB; results 2026-12-04 §4)."""
        result: int = self.lib.SSL_write(self.ssl, pinned + offset, size)
        if result > 0:  # (SSL_get_error would say SSL_ERROR_NONE: nothing to raise)
            return result
        self.connection._raise_ssl_error(self.ssl, result)
        raise SSL.Error(f"SSL_write returned {result}")  # (not reached: it raised)

    def read_into(self, buffer: Any, offset: int, size: int) -> int:
        """SSL_read up to ``size`` bytes into ``buffer[offset:]``: how many, or -1 when
        OpenSSL wants more bytes (what ends every read: no WantReadError made, raised and
        caught each time); raises as ``recv`` otherwise."""
        lib, ssl = self.lib, self.ssl
        result: int = lib.SSL_read(ssl, buffer + offset, size)
        if result > 0:  # (SSL_get_error would say SSL_ERROR_NONE: nothing to raise)
            return result
        if lib.SSL_get_error(ssl, result) == lib.SSL_ERROR_WANT_READ:
            return -1
        self.connection._raise_ssl_error(ssl, result)
        return result  # (not reached: _raise_ssl_error raised)

    def lend(self, data: bytes | memoryview) -> bool:
        """Make ``data`` itself OpenSSL's receive BIO (a read-only memory BIO over it) until
        ``take_back``: no copy into a growing BIO, nor its memset; False (nothing done)
        while the BIO in use still holds bytes."""
        lib, ffi = self.lib, self.ffi
        if lib.BIO_get_mem_data(self.connection._into_ssl, ffi.NULL) != 0:
            return False
        pinned = ffi.from_buffer(data)
        bio = lib.BIO_new_mem_buf(pinned, len(data))
        if bio == ffi.NULL:
            return False
        lib.BIO_set_mem_eof_return(bio, -1)  # its end means "no more yet", not the peer's EOF
        lib.SSL_set_bio(self.ssl, bio, self.send_bio)  # frees the receive BIO in use
        self.connection._into_ssl = bio  # pyOpenSSL's bio_write/bio_shutdown: never freed
        self._pinned = pinned
        return True

    def take_back(self) -> None:
        """A new, empty receive BIO of OpenSSL's own, as pyOpenSSL made it (what a record
        begun in the lent bytes needs, OpenSSL keeps in its record buffer)."""
        lib = self.lib
        bio = lib.BIO_new(lib.BIO_s_mem())
        if bio == self.ffi.NULL:
            raise MemoryError("BIO_new")
        lib.SSL_set_bio(self.ssl, bio, self.send_bio)  # frees the lent one
        self.connection._into_ssl = bio
        self._pinned = None

    _pinned: Any = None

    def drain(self) -> memoryview | None:
        """Everything in the send BIO, in one buffer of its own (None: nothing)."""
        lib, bio = self.lib, self.send_bio
        pending: int = lib.BIO_get_mem_data(bio, self.ffi.NULL)
        if pending <= 0:
            return None
        buffer = _ALLOCATE("char[]", pending)
        got: int = lib.BIO_read(bio, buffer, pending)
        if got <= 0:
            return None
        return memoryview(self.ffi.buffer(buffer, got))


def _pieces(parts: Iterable[bytes | memoryview]) -> list[bytes | memoryview]:
    """``parts`` as the pieces _LinkTLS._send gives OpenSSL: every part larger than a record
    as it is, but for its first bytes, which fill a record with the small parts before it
    (joined: a record each would cost its overhead); small parts at the end joined.  With
    gathered writes under TLS: run.sh p2 /big mTLS 3364 -> 3276 µs/req (results 2026-12-04
    §11)."""
    pieces: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    small_size = 0
    for part in parts:
        size = len(part)
        if size <= _RECORD:
            small.append(part)
            small_size += size
            continue
        if small:
            if small_size < _RECORD:
                body = memoryview(part)
                cut = _RECORD - small_size
                small.append(body[:cut])
                part = body[cut:]
            pieces.append(b"".join(small))
            small = []
            small_size = 0
        pieces.append(part)
    if small:
        pieces.append(small[0] if len(small) == 1 else b"".join(small))
    return pieces


class _LinkTLS(TLSMemoryBIOProtocol):
    """Twisted's TLS layer, with fewer trips through Python and fewer copies
    (bench/tls_cost.py, both edges of p2-edge-edge-tls: 38.7 -> 32.0 M instructions per
    MiB, 20.5 -> 14.8 M without memcpy/memset, and in a third pass 27.8 -> 19.2 M;
    bench/results-2026-12-03.md sections 3, 5 and 15):

    - a write goes into OpenSSL 64 KiB per ``SSL_write`` (no partial writes, no 16 KiB
      slices), what OpenSSL made of each leaves the send BIO in one read into a buffer of
      its own, and all of them are sent with one ``sendmsg`` when the socket has nothing
      queued (one transport write otherwise), instead of a slice, ``bio_read`` and
      transport write per record;
    - a read of the socket becomes OpenSSL's receive BIO itself (``_Direct.lend``), and
      what it decrypts to goes up to the link in one piece, decrypted straight into it,
      instead of one ``dataReceived`` per 16 KiB record;
    - no second coalescing of small writes (Twisted's BufferingTLSTransport holds them for a
      reactor turn with a ``callLater(0)``): a link already writes once per turn;
    - a frame head and its bulk body (``writeSequence``) are not joined into a copy.
    """

    sends_at_once = True
    """Every write is encrypted and sent at once (no buffer where writes wait for one gathered
    send): the link holds its bulk DATA frames for fewer, larger writes (EnvelopeLink)."""

    _direct: _Direct | None = None
    _incoming = 0
    """Size of the read being decrypted (to size the buffer its plaintext goes to)."""

    def makeConnection(self, transport: Any) -> None:
        if hasattr(transport, "bufferSize"):  # Twisted's FileDescriptor transports
            transport.bufferSize = _READ_SIZE
        super().makeConnection(transport)  # type: ignore[no-untyped-call]
        connection = self._tlsConnection
        if _Direct.usable(connection):
            self._direct = _Direct(connection)
            self._direct.whole_writes()
        if reads_as_twisted(transport):  # (not vars(): that slows the transport, see _io)
            # Reads land in one reused buffer instead of a new bytes per read (256 KiB:
            # mmap'd, shrunk, faulted in page by page, unmapped): nothing keeps a read's
            # ciphertext once it is decrypted.  tls_cost.py --measure strace, edge-1: mmap +
            # mremap + munmap 21.8 -> 0 and faults 247 -> 0.2 per MiB (results 2026-12-04 §4).
            transport.doRead = self._read_socket
            self._reading = transport
        # What waits in the TCP buffer (records of a full link) leaves by sendmsg as it is,
        # not joined into one copy per doWrite, as a plaintext link's: tls_cost.py --measure
        # strace --parallel 32, edge-2 epoll_ctl 7.3 -> 4.7 per MiB (CPU within noise).
        gathered_writes(transport)

    _reading: Any = None
    """The TCP transport whose doRead is _read_socket (until the connection is lost)."""

    def _read_socket(self) -> object:
        """The TCP transport's ``doRead``: Twisted's ``tcp.Connection.doRead``, with
        ``recv_into`` the process's ciphertext buffer.  What is handed up is a read-only
        view of it, valid during the call only: the TLS layer gives OpenSSL the bytes
        (lent as its receive BIO, or copied into it) and OpenSSL keeps what it has not
        decrypted yet in its own record buffer."""
        transport: Any = self._reading
        buffer, readonly = _ciphertext or _ciphertext_buffer()
        try:
            got = transport.socket.recv_into(buffer, _READ_SIZE)
        except OSError as se:
            if se.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not got:
            return main.CONNECTION_DONE
        try:
            transport.protocol.dataReceived(readonly[:got])
        finally:
            self._unfed = _NOTHING  # never a view of the buffer past this read
        return None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        transport = self._reading
        if transport is not None:
            self._reading = None
            if transport.doRead == self._read_socket:
                del transport.doRead  # (the cycle through the bound method)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        # A link writes (frame head, bulk body), or a turn's held frames and bulk bodies
        # (EnvelopeLink._bulk): each body goes to OpenSSL as it is, the small parts before it
        # in its first record, instead of joining them all, a copy of every body
        # (tls_cost.py: 32.3 -> 31.1 M/MiB for one pair; held turns: see _pieces).
        if self.disconnecting and self._producer is None:
            return
        self._send(_pieces(iovec))

    def _write(self, bytes: bytes) -> None:
        self._send((bytes,))

    def _send(self, pieces: Sequence[bytes | memoryview]) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        direct = self._direct
        # With _Direct: 64 KiB per SSL_write, each drained at once, and all of them sent with
        # one sendmsg: the send BIO, which keeps 4/3 of the most it ever held, never holds
        # more than that (idle links after 256 KiB each way: 309 -> 106 KiB per link, for
        # +2 % instructions per MiB).
        step = _BIO_SLICE if direct is not None else _RECORD
        out: list[memoryview] = []
        for index, piece in enumerate(pieces):
            view = memoryview(piece)
            done = 0
            total = len(view)
            try:
                if direct is not None:
                    pinned = direct.ffi.from_buffer(view)
                    while done < total:
                        done += direct.write_from(pinned, done, min(step, total - done))
                        drained = direct.drain()
                        if drained is not None:
                            out.append(drained)
                else:
                    while done < total:
                        # (One record per call: partial writes.)
                        done += connection.send(view[done:done + step])
            except WantReadError:
                # OpenSSL wants the same bytes again (and may have taken records of them).
                rest = [view[done:].tobytes(), *(bytes(p) for p in pieces[index + 1:])]
                self._bufferedWrite(b"".join(rest))  # type: ignore[no-untyped-call]
                break
            except SSL.Error:
                self._emit(out)
                self._flushSendBIO()  # the records of what was sent before
                self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
                return
        self._emit(out)
        self._flushSendBIO()

    def _emit(self, out: list[memoryview]) -> None:
        if len(out) == 1:
            write_now(self.transport, out[0])
        elif out:
            write_all_now(self.transport, out)

    def _flushSendBIO(self) -> None:
        transport: Any = self.transport
        direct = self._direct
        if direct is not None:
            # No bytes object and no join per write (see _Direct), and no reactor turn
            # when the socket has nothing queued.
            data = direct.drain()
            if data is not None:
                write_now(transport, data)
            return
        connection = self._tlsConnection
        chunks = []
        size = _READ_SIZE + 16 * 1024  # a full write's records and their overhead
        while True:
            try:
                chunk = connection.bio_read(size)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < size:
                break
        if chunks:
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def dataReceived(self, data: bytes) -> None:
        self._incoming = len(data)
        direct = self._direct
        if (direct is not None and len(data) > _LEND_MIN and self._handshakeDone
                and not self._appSendBuffer and not self._lostTLSConnection
                and direct.lend(data)):
            # OpenSSL reads the records from the read itself, and the receive BIO never
            # grows (tls_cost.py, the receiving edge: 11.6 -> 9.2 M instructions per MiB).
            try:
                self._flushReceiveBIO()
            finally:
                direct.take_back()
            return
        if len(data) <= _BIO_SLICE or not self._handshakeDone or self._appSendBuffer:
            super().dataReceived(data)  # type: ignore[no-untyped-call]
            return
        # OpenSSL's memory BIO keeps 4/3 of the most it ever held for the connection's
        # life: fed 64 KiB at a time, a link that once read 256 KiB keeps ~85 KiB there, not
        # ~340 (100 connection pairs: 592 -> 452 KiB each; bench/results-2026-12-03.md §5).
        view = memoryview(data)
        self._tlsConnection.bio_write(view[:_BIO_SLICE])
        self._unfed = view[_BIO_SLICE:]
        self._flushReceiveBIO()

    _unfed = _NOTHING
    """What this read has not yet given the receive BIO."""

    def _flushReceiveBIO(self) -> None:
        # As Twisted's, with the records of one read delivered together.
        chunks: list[bytes | memoryview] = []
        failure: Failure | None = None
        end = False
        connection = self._tlsConnection
        direct = self._direct
        buffer: Any = None
        filled = size = 0
        while not self._lostTLSConnection:
            try:
                if direct is None:
                    chunks.append(connection.recv(_READ_SIZE))
                    continue
                if buffer is None:
                    buffer = take_pooled(_pool, _new_buffer)
                    size = len(buffer)
                got = direct.read_into(buffer, filled, size - filled)
                if got < 0:
                    if not self._feed_unfed():
                        break
                    continue
                filled += got
                if filled == size:
                    chunks.append(self._plaintext(direct, buffer, filled))
                    give_pooled(_pool, buffer, _POOL_MAX)
                    buffer = None
                    filled = 0
            except WantReadError:
                if not self._feed_unfed():
                    break
            except ZeroReturnError:
                end = True
                break
            except SSL.Error:
                failure = Failure()
                break
        if filled:
            chunks.append(self._plaintext(direct, buffer, filled))
        if buffer is not None:
            give_pooled(_pool, buffer, _POOL_MAX)
            buffer = None
        self._unfed = _NOTHING  # all fed, or the connection is ending
        if chunks and not self._aborted:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            ProtocolWrapper.dataReceived(self, data)
        if end:
            self._shutdownTLS()  # type: ignore[no-untyped-call]
            self._tlsShutdownFinished(None)  # type: ignore[no-untyped-call]
        elif failure is not None:
            self._tlsShutdownFinished(failure)  # type: ignore[no-untyped-call]
        self._flushSendBIO()

    def _feed_unfed(self) -> bool:
        """Give the receive BIO the next slice of this read (False: nothing is left)."""
        unfed = self._unfed
        if not unfed:
            return False
        self._tlsConnection.bio_write(unfed[:_BIO_SLICE])
        self._unfed = unfed[_BIO_SLICE:]
        return True

    @staticmethod
    def _plaintext(direct: Any, buffer: Any, filled: int) -> bytes | memoryview:
        """What a read decrypted: the buffer itself, read-only (the link's frame decoder
        may keep views of it: pieces of a large body), when it holds at least _VIEW_MIN
        bytes; a copy of the bytes otherwise, so that views never hold more than ~4 times
        what they show (a pooled buffer is the largest read's size)."""
        data = direct.ffi.buffer(buffer, filled)
        if filled >= _VIEW_MIN:
            return memoryview(data).toreadonly()
        copy: bytes = data[:]
        return copy


class _LinkTLSFactory(TLSMemoryBIOFactory):
    protocol = _LinkTLS


@implementer(IStreamClientEndpoint)
class _LinkTLSClientEndpoint:
    """``wrapClientTLS`` with the links' TLS layer."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator, endpoint: IStreamClientEndpoint,
                 clock: IReactorTime) -> None:
        self.creator = creator
        self.endpoint = endpoint
        self.clock = clock

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        wrapper = _LinkTLSFactory(self.creator, True, factory, clock=self.clock)
        connecting: Deferred[Any] = self.endpoint.connect(wrapper)
        return connecting.addCallback(lambda tls: tls.wrappedProtocol)


# --- connection creators that follow reloads --------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, tls: MutualTLS) -> None:
        self.tls = tls

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        # The context of the material loaded last; a reload never touches connections made.
        return SSL.Connection(self.tls.material.server_options.getContext(), None)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, tls: MutualTLS, peer: str) -> None:
        self.tls = tls
        self.peer = peer

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        if self.peer == ANY_PEER:
            # Any certificate of the CA, as a server takes its clients; the link's guard
            # then checks the hello against the certificate's name and role.
            return SSL.Connection(self.tls.material.server_options.getContext(), None)
        creator = self.tls.client_options(self.peer)
        with quiet_pyopenssl():  # the first connection makes the context
            connection: SSL.Connection = creator.clientConnectionForTLS(tlsProtocol)
        return connection


# --- mutual TLS ---------------------------------------------------------------------------------


class MutualTLS:
    """Mutual TLS for one node: every link is TLS 1.2+ with a certificate on both sides,
    signed by the CA bundle; the peer's hello must name the node its certificate names."""

    def __init__(self, reactor: Any, config: TLSConfig, *, node: str | None = None,
                 role: str | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.node = node
        self.role = role
        self.material = self._checked(load_material(config))
        self.generation = 1
        """How many times material was loaded (1 at start)."""
        self._clients: dict[str, IOpenSSLClientConnectionCreator] = {}
        self._failed_signature: object = None
        self.service: Service = _TLSService(self)
        self.service.setName("tls")  # type: ignore[no-untyped-call]

    def _checked(self, material: TLSMaterial) -> TLSMaterial:
        return check_identity(material, self.config, self.node, self.role)

    # -- what the roles use --

    def server_factory(self, factory: IProtocolFactory) -> IProtocolFactory:
        guarded = _GuardFactory(factory, self.reactor, self.config.handshake_timeout, "incoming")
        if self.config.link_io == "socket":
            return _sockettls.server_factory(guarded, self._context)
        return _LinkTLSFactory(_ServerCreator(self), False, guarded, clock=self.reactor)

    def client_endpoint(self, endpoint: IStreamClientEndpoint, peer: str) -> IStreamClientEndpoint:
        tls: IStreamClientEndpoint
        if self.config.link_io == "socket":
            # The server's context serves a client as well (mutual: our certificate, the
            # CA's required); the name is checked as optionsForClientTLS checks it.
            tls = _sockettls.ClientEndpoint(endpoint, self._context,
                                            None if peer == ANY_PEER else peer)
        else:
            tls = _LinkTLSClientEndpoint(_ClientCreator(self, peer), endpoint, self.reactor)
        return _GuardedClientEndpoint(tls, self.reactor, self.config.handshake_timeout)

    def _context(self) -> SSL.Context:
        """The SSL context of the material loaded last (a reload leaves connections be)."""
        context: SSL.Context = self.material.server_options.getContext()
        return context

    def client_options(self, peer: str) -> IOpenSSLClientConnectionCreator:
        """Client TLS options for dialling ``peer`` with the current material (cached)."""
        creator = self._clients.get(peer)
        if creator is None:
            material = self.material
            with quiet_pyopenssl():
                creator = optionsForClientTLS(
                    peer,
                    trustRoot=material.trust_root,  # type: ignore[arg-type]
                    clientCertificate=material.private_certificate,
                    extraCertificateOptions={
                        "raiseMinimumTo": MINIMUM_TLS,
                        "acceptableCiphers": CIPHERS,
                        "extraCertChain": list(material.extra_chain),
                    },
                )
            if len(self._clients) >= _CLIENT_CACHE:
                self._clients.clear()
            self._clients[peer] = creator
        return creator

    def guard(
        self,
        link: EnvelopeLink,
        *,
        role: str,
        expect: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> EnvelopeLink:
        link.identity_check = _fail_closed(
            lambda link: peer_problem(link, role=role, expect=expect, known=known)
        )
        return link

    # -- rotation --

    def reload(self) -> bool:
        """Load the files again; new connections use them.  On any problem the material in
        use stays, and the problem is logged.  Returns whether new material is in use."""
        try:
            material = self._checked(load_material(self.config))
        except Exception as error:  # noqa: BLE001 -- whatever is wrong with the new files, keep the old
            problem = (str(error) if isinstance(error, TLSFileError)
                       else f"{type(error).__name__}: {error}")
            log.warn("TLS files not reloaded, still using {identity}: {error}",
                     identity=self.material.identity.describe(), error=problem)
            return False
        self.material = material
        self._clients = {}
        self.generation += 1
        self._failed_signature = None
        log.info("TLS files reloaded: now {identity}", identity=material.describe())
        return True

    def check_files(self) -> bool:
        """Reload when the files changed since the last load (a rotation that is still
        half-written fails its checks and is tried again at the next change)."""
        signature = file_signature(self.config)
        if signature == self.material.signature or signature == self._failed_signature:
            return False
        if self.reload():
            return True
        self._failed_signature = signature
        return False


def peer_problem(
    link: EnvelopeLink, *, role: str, expect: str | None, known: Callable[[str], bool] | None
) -> str | None:
    """Why the peer of a TLS link may not be who its hello says (None: it is).  Its
    identity is its certificate's; the hello must say the same name and role."""
    hello = link.peer
    if hello is None:
        return "no hello"
    transport: Any = link.transport
    getter = getattr(transport, "getPeerCertificate", None)
    x509 = getter() if getter is not None else None
    if x509 is None:
        return f"peer {hello.node!r} presented no certificate"
    cert = x509.to_cryptography()
    try:
        identity = identity_of(cert)
    except IdentityError as error:
        return f"peer {hello.node!r}: {error}"
    if not names_match(cert, hello.node):
        return f"hello says {hello.node!r} but the certificate is for {identity.name!r}"
    if identity.role is not None and identity.role != hello.role:
        return (f"hello says {hello.node!r} has role {hello.role!r}, "
                f"its certificate says {identity.role!r}")
    return _hello_problem(link, role, expect, known)


class _TLSService(Service):
    """Watches the files (every ``reload_interval`` seconds, and on SIGHUP when asked)."""

    def __init__(self, tls: MutualTLS) -> None:
        self.tls = tls
        self._loop: LoopingCall | None = None
        self._previous_handler: Any = None
        self._hooked = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        tls = self.tls
        log.info("mTLS on node links as {identity}", identity=tls.material.describe())
        interval = tls.config.reload_interval
        if interval > 0:
            self._loop = LoopingCall(tls.check_files)
            self._loop.clock = tls.reactor
            self._loop.start(interval, now=False).addErrback(
                lambda failure: log.failure("TLS file check stopped", failure)
            )
        if tls.config.reload_on_sighup and hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(signal.SIGHUP, self._sighup)
            self._hooked = True

    def _sighup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes: hand over to the reactor.
        self.tls.reactor.callFromThread(self._reload_from_signal)

    def _reload_from_signal(self) -> None:
        log.info("SIGHUP: reloading the TLS files")
        self.tls.reload()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._hooked:
            signal.signal(signal.SIGHUP, self._previous_handler or signal.SIG_DFL)
            self._hooked = False
