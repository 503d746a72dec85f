"""
A link's TLS over a socket BIO (``--link-tls-io socket``, issue 15; a prototype).

Twisted's TLS (``TLSMemoryBIOProtocol``) runs OpenSSL over two memory BIOs: every byte is
copied into the receive BIO, out of the send BIO (``bio_read``) and again by the TCP
transport, and the BIOs' buffers grow zeroed (``BUF_MEM_grow_clean``).  Here OpenSSL
reads and writes the link's TCP socket itself: ``SSL.Connection(context, socket)``,
as Twisted's TLS did until 12 (``twisted.internet._oldtls``).

How: the TCP transport (``twisted.internet.tcp.Server``/``Client``) keeps its socket,
buffers and producer logic; its class is swapped for a subclass whose ``doRead``,
``writeSomeData`` and ``doWrite`` go through the SSL connection (what ``_oldtls`` did).
Plaintext goes into the transport's write buffer as on a plain TCP connection, and the
records are made as the socket takes them.  The protocol between the transport and the
link (``_SocketTLSProtocol``) only makes the SSL connection and passes the handshake on.

Verification is the memory path's: the same pyOpenSSL context (the material's, mutual:
a certificate from the CA required both ways), and a client checks the server's name with
service_identity's ``verify_hostname``, as Twisted's ``optionsForClientTLS`` does, before
the link sees the handshake complete or any byte.

It needs Twisted's POSIX TCP transport (a socket with a file descriptor); on anything
else (the memory reactors of the unit tests, IOCP) the connection is refused with a log
line: use ``--link-tls-io memory`` there.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import SysCallError, WantReadError, WantWriteError, ZeroReturnError
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet import error, main, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import classImplements, implementer

log = Logger(namespace="edgemesh.security")

RECORD = 16 * 1024
"""The most plaintext one TLS record carries (SSL_read returns at most one record)."""

READ_SIZE = 256 * 1024
"""Plaintext handed up per read of the socket (the links' LARGE_BUFFER, as the memory path)."""

MakeConnection = Callable[[socket.socket], SSL.Connection]


class _SocketTLSMixin:
    """Mixed into a Twisted TCP transport's class: its socket I/O goes through OpenSSL.

    A WantWrite while reading waits for write readiness (and reads then), a WantRead while
    writing waits for read readiness; the handshake runs on either.  Every read takes at
    most ``bufferSize`` bytes of plaintext (OpenSSL keeps no more than the record it is
    reading: no read-ahead), so the reactor's readiness says all there is to say."""

    # Provided by the transport class this is mixed into.
    socket: socket.socket
    protocol: Any
    bufferSize: int
    SEND_LIMIT: int
    dataBuffer: bytes
    offset: int
    _tempDataLen: int
    startWriting: Callable[[], None]
    stopWriting: Callable[[], None]

    _tls: SSL.Connection
    _tls_peer: str | None = None
    _tls_handshaking = True
    _tls_read_wants_write = False
    _tls_write_wants_read = False
    _tls_close_after_handshake = False

    def _tls_begin(self, connection: SSL.Connection, peer: str | None) -> None:
        self._tls = connection
        self._tls_peer = peer
        self._tls_handshaking = True
        self.startWriting()  # a client speaks first; a server's try just waits for a read

    def getPeerCertificate(self) -> Any:
        """ISSLTransport: the peer's certificate (None before the handshake)."""
        return self._tls.get_peer_certificate()

    # -- the handshake --

    def _tls_handshake(self) -> Exception | None:
        """Takes the handshake a step; returns why the connection is lost, if it is."""
        try:
            self._tls.do_handshake()
        except WantReadError:
            self.stopWriting()  # nothing to write before it is done: wait for the peer
            return None
        except WantWriteError:
            self.startWriting()
            return None
        except SSL.Error as problem:
            return problem
        if self._tls_peer is not None:
            try:
                verify_hostname(self._tls, self._tls_peer)
            except (VerificationError, CertificateError) as problem:
                return problem
        self._tls_handshaking = False
        listener = self.protocol
        if IHandshakeListener.providedBy(listener):
            listener.handshakeCompleted()
        if self._tls_close_after_handshake:
            super().loseConnection()  # type: ignore[misc]
        elif self._tempDataLen or self.offset < len(self.dataBuffer):
            self.startWriting()  # what the link wrote meanwhile
        return None

    # -- reading --

    def doRead(self) -> Exception | None:
        if self._tls_write_wants_read:
            self._tls_write_wants_read = False
            self.startWriting()
        if self._tls_handshaking:
            why = self._tls_handshake()
            if why is not None or self._tls_handshaking:
                return why
        return self._tls_read()

    def _tls_read(self) -> Exception | None:
        tls = self._tls
        chunks: list[bytes] = []
        got = 0
        limit = self.bufferSize
        why: Exception | None = None
        # Past the limit only for what OpenSSL already holds decrypted (at most a record):
        # the reactor would not say so, the socket having nothing more.
        while got < limit or tls.pending():
            try:
                chunk = tls.recv(RECORD)
            except WantReadError:
                break
            except WantWriteError:  # a post-handshake message could not be sent yet
                self._tls_read_wants_write = True
                self.startWriting()
                break
            except ZeroReturnError:  # the peer's close_notify: a clean end
                why = main.CONNECTION_DONE
                break
            except SysCallError as problem:  # a reset, or EOF without close_notify
                code, text = problem.args[0], problem.args[1]
                if code == errno.EWOULDBLOCK:
                    break
                why = error.ConnectionLost(f"TLS: {text}")
                break
            except SSL.Error as problem:
                why = problem
                break
            chunks.append(chunk)
            got += len(chunk)
        if chunks:
            self.protocol.dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return why

    # -- writing --

    def doWrite(self) -> Exception | None:
        if self._tls_handshaking:
            why = self._tls_handshake()
            if why is not None or self._tls_handshaking:
                return why
        if self._tls_read_wants_write:
            self._tls_read_wants_write = False
            why = self._tls_read()
            if why is not None:
                return why
        result: Exception | None = super().doWrite()  # type: ignore[misc]
        return result

    def writeSomeData(self, data: bytes) -> int | Exception:
        # One record per SSL_write (pyOpenSSL sets partial writes, and moving write buffers:
        # Twisted retries from a new buffer with the same bytes).
        view = memoryview(data)[: self.SEND_LIMIT]
        total = len(view)
        sent = 0
        tls = self._tls
        try:
            while sent < total:
                sent += tls.send(view[sent:] if sent else view)
        except WantWriteError:
            pass
        except WantReadError:  # a renegotiation: wait for the peer
            self._tls_write_wants_read = True
            self.stopWriting()
        except SysCallError as problem:
            return error.ConnectionLost(f"TLS: {problem.args[1]}")
        except SSL.Error as problem:
            return problem
        return sent

    # -- closing --

    def loseConnection(self) -> None:
        # Twisted's loseConnection stops reading, and a handshake under way needs to read:
        # finish it first, then send what was written and close (the handshake deadline
        # still holds).
        if self._tls_handshaking:
            self._tls_close_after_handshake = True
            return
        super().loseConnection()  # type: ignore[misc]

    def _tls_close_notify(self) -> None:
        # Best effort, as one record into an idle socket: a peer that reads it ends cleanly.
        try:
            self._tls.shutdown()
        except SSL.Error:
            pass

    def _postLoseConnection(self) -> Exception | None:
        if not self._tls_handshaking:
            self._tls_close_notify()
        result: Exception | None = super()._postLoseConnection()  # type: ignore[misc]
        return result

    def _closeWriteConnection(self) -> None:
        if not self._tls_handshaking:
            self._tls_close_notify()
        super()._closeWriteConnection()  # type: ignore[misc]


_swapped: dict[type, type] = {}


def _tls_class(cls: type) -> type:
    """``cls`` with the socket TLS mixed in (one class per transport class)."""
    swapped = _swapped.get(cls)
    if swapped is None:
        swapped = type(f"SocketTLS{cls.__name__}", (_SocketTLSMixin, cls), {})
        classImplements(swapped, ISSLTransport)  # type: ignore[misc]
        _swapped[cls] = swapped
    return swapped


@implementer(ISSLTransport, IHandshakeListener)
class _SocketTLSProtocol(ProtocolWrapper):
    """Between the TCP transport and the link: makes the SSL connection on the socket and
    tells the link when the handshake is done; the bytes pass through untouched."""

    factory: _SocketTLSFactory

    def makeConnection(self, transport: Any) -> None:
        if not isinstance(transport, tcp.Connection) or not hasattr(transport, "socket"):
            log.error("--link-tls-io socket needs a TCP socket transport, not {kind}: "
                      "closing the connection (use --link-tls-io memory)",
                      kind=type(transport).__name__)
            # The link never starts: nothing it would write can leave in clear.
            self._refused = True
            self.transport = transport
            transport.abortConnection()
            return
        connection = self.factory.make_connection(transport.socket)
        transport.bufferSize = READ_SIZE
        # What _oldtls did: the transport keeps its socket, buffers and producer; its
        # socket I/O goes through OpenSSL from now on.
        transport.__class__ = _tls_class(type(transport))
        swapped: Any = transport
        swapped._tls_begin(connection, self.factory.peer)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    _refused = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._refused:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def handshakeCompleted(self) -> None:
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def getHandle(self) -> SSL.Connection:
        connection: SSL.Connection = self.transport._tls  # type: ignore[union-attr]
        return connection

    def getPeerCertificate(self) -> Any:
        return self.transport.getPeerCertificate()  # type: ignore[union-attr]


class _SocketTLSFactory(WrappingFactory[_SocketTLSProtocol]):
    protocol = _SocketTLSProtocol
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, make_connection: MakeConnection,
                 peer: str | None) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.make_connection = make_connection
        self.peer = peer
        """The name the server's certificate must carry (clients; None: not checked)."""


def server_factory(factory: IProtocolFactory, context: Callable[[], SSL.Context]
                   ) -> IProtocolFactory:
    """Accepts TLS on the socket with ``context()`` (called per connection: reloads)."""

    def make(sock: socket.socket) -> SSL.Connection:
        connection = SSL.Connection(context(), sock)
        connection.set_accept_state()
        return connection

    return _SocketTLSFactory(factory, make, None)


@implementer(IStreamClientEndpoint)
class ClientEndpoint:
    """Dials ``endpoint`` and speaks TLS on the socket with ``context()``; with a ``peer``,
    the server's certificate must name it (service_identity, as Twisted's client TLS)."""

    def __init__(self, endpoint: IStreamClientEndpoint, context: Callable[[], SSL.Context],
                 peer: str | None) -> None:
        self.endpoint = endpoint
        self.context = context
        self.peer = peer

    def _make(self, sock: socket.socket) -> SSL.Connection:
        connection = SSL.Connection(self.context(), sock)
        if self.peer is not None:
            connection.set_tlsext_host_name(self.peer.encode("idna"))
        connection.set_connect_state()
        return connection

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        wrapper = _SocketTLSFactory(factory, self._make, self.peer)
        connecting: Deferred[Any] = self.endpoint.connect(wrapper)
        return connecting.addCallback(lambda tls: tls.wrappedProtocol)

