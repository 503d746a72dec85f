"""A link's TLS over real loopback sockets, under both ``--link-tls-io`` settings: memory
(Twisted's TLS over memory BIOs) and socket (OpenSSL on the socket, security/_sockettls.py).

The socket path reads and writes a file descriptor, which the memory reactors of test_tls.py
do not have: these run on the real reactor (trial), on 127.0.0.1 only, with MutualTLS as the
roles build it.  Every wait is a Deferred with a deadline; every port and connection is
closed by the end of each test.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from OpenSSL import SSL
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgemesh.security import MutualTLS, TLSConfig
from edgemesh.security._certs import init_ca_dir, issue_into_dir
from edgemesh.security._links import ANY_PEER, _LinkTLS
from edgemesh.security._sockettls import _SocketTLSMixin, _SocketTLSProtocol

reactor: Any = global_reactor
DEADLINE = 30.0
"""Seconds any one wait of these tests may take (a loaded machine), then it fails."""


def make_pki(directory: Path) -> Path:
    init_ca_dir(str(directory))
    issue_into_dir(str(directory), "router", router=True)
    issue_into_dir(str(directory), "edge-1")
    return directory


@implementer(IHandshakeListener)
class Peer(Protocol):
    """Records what arrives; ``until(n)`` fires once n bytes are in, ``lost`` at the end."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.reason: Failure | None = None
        self.handshake: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._waiting: tuple[int, Deferred[None]] | None = None

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self._waiting is not None and self.size >= self._waiting[0]:
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(None)

    def until(self, size: int) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        if self.size >= size:
            waiting.callback(None)
        else:
            self._waiting = (size, waiting)
        return timed(waiting)

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)  # (a Failure given to callback would fire the errbacks)


async def ended(peer: Peer) -> Failure:
    """Why ``peer``'s connection ended, once it has."""
    await timed(peer.lost)
    assert peer.reason is not None
    return peer.reason


def timed(waiting: Deferred[Any]) -> Deferred[Any]:
    return waiting.addTimeout(DEADLINE, reactor)


class Cases:
    """The tests; each TestCase below runs them with one ``--link-tls-io`` setting."""

    link_io: ClassVar[str] = ""
    addCleanup: Any
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any
    assertIsInstance: Any
    assertLessEqual: Any
    assertGreater: Any
    assertLess: Any

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="edgemesh-tls-socket-"))
        self.pki = make_pki(self.directory / "pki")
        self.servers: list[Peer] = []
        self.port: Any = None

    def config(self, node: str, pki: Path | None = None) -> TLSConfig:
        return TLSConfig.from_directory(str(pki or self.pki), node, link_io=self.link_io,
                                        handshake_timeout=DEADLINE)

    def listen(self) -> int:
        tls = MutualTLS(reactor, self.config("router"), node="router", role="router")

        def build() -> Peer:
            peer = Peer()
            self.servers.append(peer)
            return peer

        self.port = reactor.listenTCP(0, tls.server_factory(Factory.forProtocol(build)),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        port: int = self.port.getHost().port
        return port

    async def dial(self, port: int, expect: str = "router", node: str = "edge-1",
                   pki: Path | None = None) -> Peer:
        tls = MutualTLS(reactor, self.config(node, pki), node=node, role="edge")
        endpoint = tls.client_endpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), expect)
        peer: Peer = await timed(endpoint.connect(Factory.forProtocol(Peer)))
        return peer

    async def server(self) -> Peer:
        for _ in range(int(DEADLINE * 100)):
            if self.servers:
                return self.servers[-1]
            await timed(sleep(0.01))
        raise AssertionError("no connection accepted")

    def tls_layer(self, peer: Peer) -> Any:
        """What sits between the link (under the handshake guard) and TCP."""
        transport: Any = peer.transport
        while not isinstance(transport, (_LinkTLS, _SocketTLSProtocol)):
            transport = transport.transport
        return transport

    async def test_large_transfer_both_ways(self) -> None:
        """4 MiB each way in 1 MiB writes (and a head + body writeSequence) arrive intact,
        over the TLS layer the setting names."""
        client = await self.dial(self.listen())
        await client.handshake
        server = await self.server()
        upload = os.urandom(4 << 20)
        assert client.transport is not None
        for start in range(0, len(upload), 1 << 20):
            client.transport.writeSequence([upload[start:start + 9], upload[start + 9:
                                                                            start + (1 << 20)]])
        await server.until(len(upload))
        download = os.urandom(4 << 20)
        assert server.transport is not None
        for start in range(0, len(download), 1 << 20):
            server.transport.write(download[start:start + (1 << 20)])
        await client.until(len(download))
        self.assertEqual(hashlib.sha256(server.received).hexdigest(),
                         hashlib.sha256(upload).hexdigest())
        self.assertEqual(hashlib.sha256(client.received).hexdigest(),
                         hashlib.sha256(download).hexdigest())
        # Each read is handed up whole: at most the read size at a time.
        self.assertLessEqual(max(map(len, server.chunks)), 256 * 1024 + 16 * 1024)
        for peer in (client, server):
            layer = self.tls_layer(peer)
            expected = _SocketTLSProtocol if self.link_io == "socket" else _LinkTLS
            self.assertIsInstance(layer, expected)
            self.assertTrue(verifyObject(ISSLTransport, layer))
            if self.link_io == "socket":
                self.assertIsInstance(layer.transport, _SocketTLSMixin)
                self.assertTrue(verifyObject(ISSLTransport, layer.transport))
                self.assertTrue(verifyObject(ITCPTransport, layer.transport))
            else:
                # The records that waited for the socket (4 MiB at once) left by the gathered
                # sendmsg doWrite, as a plaintext link's.
                self.assertIn("doWrite", vars(layer.transport))
        client.transport.loseConnection()
        await timed(client.lost)
        reason = await ended(server)
        # The client's close_notify arrived: a clean end on the server.
        self.assertTrue(reason.check(ConnectionDone), reason)

    async def test_written_and_closed_before_the_handshake_is_done(self) -> None:
        """What a peer writes before the handshake completes, and its close, take effect
        once it has: the server gets the bytes and a clean end."""
        port = self.listen()
        tls = MutualTLS(reactor, self.config("edge-1"), node="edge-1", role="edge")
        endpoint = tls.client_endpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), "router")

        class Hasty(Peer):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"early")
                self.transport.loseConnection()

        client: Peer = await timed(endpoint.connect(Factory.forProtocol(Hasty)))
        await ended(client)
        server = await self.server()
        reason = await ended(server)
        self.assertEqual(server.received, b"early")
        self.assertTrue(reason.check(ConnectionDone), reason)

    async def test_a_reader_that_pauses(self) -> None:
        """The server stops reading until the client's socket is full (its writes then
        stop half-way through records, and are retried from Twisted's buffer): after it
        resumes, every byte arrives in order."""
        client = await self.dial(self.listen())
        await client.handshake
        server = await self.server()
        assert server.transport is not None and client.transport is not None
        server.transport.pauseProducing()
        upload = os.urandom(8 << 20)
        for start in range(0, len(upload), 1 << 20):
            client.transport.write(upload[start:start + (1 << 20)])
        tcp: Any = self.tls_layer(client).transport
        for _ in range(int(DEADLINE * 100)):
            # The socket took part, then no more (the memory path sends directly while
            # Twisted's buffer is empty: the rest waits in its list).
            if tcp.offset or tcp.dataBuffer or tcp._tempDataLen:
                break
            await timed(sleep(0.01))
        pending = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        self.assertGreater(pending, 0)
        self.assertLess(server.size, len(upload))
        server.transport.resumeProducing()
        await server.until(len(upload))
        self.assertEqual(hashlib.sha256(server.received).hexdigest(),
                         hashlib.sha256(upload).hexdigest())
        client.transport.loseConnection()
        await ended(server)
        await ended(client)

    async def test_certificates_are_those_of_the_peers(self) -> None:
        """Both ends see the other's certificate after the handshake (mutual TLS)."""
        client = await self.dial(self.listen())
        await client.handshake
        server = await self.server()
        await server.handshake
        for peer, name in ((client, "router"), (server, "edge-1")):
            transport: Any = peer.transport
            cert = transport.getPeerCertificate().to_cryptography()
            self.assertIn(name, str(cert.subject))
        assert client.transport is not None
        client.transport.loseConnection()
        await timed(server.lost)
        await timed(client.lost)

    async def test_client_refuses_a_server_with_another_name(self) -> None:
        """The client expects edge-9; the router's certificate names the router: refused
        after the handshake, before the client's bytes leave, with the reason logged."""
        port = self.listen()
        with capturedLogs() as events:
            client = await self.dial(port, expect="edge-9")
            client.transport.write(b"secret")  # type: ignore[union-attr]
            reason = await ended(client)
        self.assertFalse(reason.check(ConnectionDone))
        self.assertFalse(client.handshake.called)
        server = await self.server()
        await timed(server.lost)
        self.assertEqual(server.received, b"")
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("does not name 'edge-9'", text)

    async def test_any_peer_accepts_any_certificate_of_the_ca(self) -> None:
        client = await self.dial(self.listen(), expect=ANY_PEER)
        await client.handshake
        assert client.transport is not None
        client.transport.loseConnection()
        await timed(client.lost)
        await timed((await self.server()).lost)

    async def test_server_refuses_a_certificate_of_another_ca(self) -> None:
        """A client whose certificate another CA signed is refused by the server; neither
        side sees a byte of the other."""
        port = self.listen()
        other = make_pki(self.directory / "other")
        with capturedLogs() as events:
            client = await self.dial(port, pki=other, expect=ANY_PEER)
            client.transport.write(b"hello")  # type: ignore[union-attr]
            reason = await ended(client)
            server = await self.server()
            server_reason = await ended(server)
        self.assertFalse(reason.check(ConnectionDone))
        self.assertFalse(server_reason.check(ConnectionDone))
        self.assertEqual(server.received, b"")
        self.assertFalse(server.handshake.called)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("TLS handshake (incoming)", text)
        self.assertIn("certificate verify failed", text)

    async def test_a_peer_that_closes_mid_record(self) -> None:
        """Half a TLS record, then the TCP connection closes: the server loses the
        connection with an error (no close_notify), hands up nothing of the half record,
        and goes on serving the next client."""
        port = self.listen()
        # The hostile client: the memory path, whose records it writes to TCP itself.
        client_config = TLSConfig.from_directory(str(self.pki), "edge-1", link_io="memory")
        tls = MutualTLS(reactor, client_config, node="edge-1", role="edge")
        endpoint = tls.client_endpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), "router")
        client: Peer = await timed(endpoint.connect(Factory.forProtocol(Peer)))
        await client.handshake
        client.transport.write(b"whole")  # type: ignore[union-attr]
        server = await self.server()
        await server.until(5)
        layer = self.tls_layer(client)
        connection: SSL.Connection = layer._tlsConnection
        connection.send(b"x" * 10000)
        record = connection.bio_read(65536)
        tcp = layer.transport
        tcp.write(record[: len(record) // 2])
        tcp.loseConnection()
        reason = await ended(server)
        self.assertFalse(reason.check(ConnectionDone), reason)
        self.assertEqual(server.received, b"whole")
        await timed(client.lost)
        # The reactor and the listener are fine: the next client gets through.
        again = await self.dial(port)
        await again.handshake
        again.transport.write(b"again")  # type: ignore[union-attr]
        await (await self.server()).until(5)
        again.transport.loseConnection()  # type: ignore[union-attr]
        await timed(again.lost)
        await timed(self.servers[-1].lost)


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class MemoryBIO(Cases, TestCase):
    link_io = "memory"

    async def test_records_leave_within_the_write_when_nothing_is_queued(self) -> None:
        """With nothing queued on the socket, a write's records are sent within the write:
        no reactor turn, nothing copied into Twisted's buffer; once the socket has a
        backlog, writes queue behind it (test_a_reader_that_pauses: in order)."""
        client = await self.dial(self.listen())
        await client.handshake
        server = await self.server()
        assert client.transport is not None
        tcp: Any = self.tls_layer(client).transport
        client.transport.write(b"x" * 1000)
        self.assertEqual((tcp._tempDataLen, len(tcp.dataBuffer) - tcp.offset), (0, 0))
        await server.until(1000)
        self.assertEqual(server.received, b"x" * 1000)
        client.transport.loseConnection()
        await ended(server)
        await ended(client)


class SocketBIO(Cases, TestCase):
    link_io = "socket"


def test_socket_io_refuses_a_transport_without_a_socket(tmp_path: Path) -> None:
    """Under a memory reactor there is no socket: the connection is closed before the link
    can write, and the log says to use --link-tls-io memory."""
    from twisted.internet.testing import MemoryReactorClock

    pki = make_pki(tmp_path / "pki")
    config = TLSConfig.from_directory(str(pki), "router", link_io="socket")
    clock = MemoryReactorClock()
    tls = MutualTLS(clock, config, node="router", role="router")
    greeted: list[bytes] = []

    class Greeter(Protocol):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"hello")
            greeted.append(b"hello")

    factory = tls.server_factory(Factory.forProtocol(Greeter))
    transport = StringTransport()
    with capturedLogs() as events:
        protocol = factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        protocol.makeConnection(transport)
    assert transport.disconnecting
    assert greeted == [] and transport.value() == b""
    protocol.connectionLost(Failure(ConnectionDone()))  # the end of a refused one is quiet
    assert any("--link-tls-io memory" in formatEvent(e) for e in events)
