"""
Byte streams at the sockets (issue 12, docs/protocols.md): the CONNECT way in on the HTTP
front, and the target that carries a stream to a pod or a cluster IP over TCP.

Each end relays between a TCP transport and the other side of the stream (an
``IByteStream``): bytes read go to the other side, bytes written go to the socket, a FIN
is a half-close carried as ``end()``, and each side pauses the other's producer while its
socket's buffer is full (or, before the far end is connected, once a bound is queued).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..exchange import (
    IByteStream,
    IStreamSource,
    IStreamTarget,
    MeshError,
    Reason,
    SourceKind,
    TargetKind,
)
from ..routing import Route
from ._front import Dispatch, FrontLimits, HTTPFrontFactory, HTTPFrontProtocol, _Stop
from ._http1 import connection_tokens, end_to_end, error_body, response_head_bytes
from ._io import buffered, close_on_fin
from ._upstream import connect_error

__all__ = ["OpenStream", "StreamingFrontFactory", "StreamingFrontProtocol", "TCPStreamTarget"]

QUEUE_BOUND = 64 * 1024
"""Bytes an end holds before its far end is connected, before it pauses the writer."""

_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

OpenStream = Callable[[bytes, str, IStreamSource], IByteStream]
"""Open a byte stream to the service port an authority names (may raise MeshError)."""

_log = Logger(namespace="edgemesh.streams")


def _is_ipv6(host: str) -> bool:
    return ":" in host


def _half_close(transport: Any) -> None:
    """Send a FIN (TCP's half-close); a transport that cannot closes altogether."""
    if transport is None:
        return
    # Nothing more is written this way: the producer goes (a registered producer that the
    # buffer paused is resumed instead of the FIN being sent once the buffer drains).
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


@implementer(IPushProducer)
class _Reading:
    """Pauses a transport's reading: the producer the other side of a stream pauses."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.abortConnection()


# --- the client's end: CONNECT on the HTTP front -------------------------------------------


@implementer(IStreamSource)
class _ClientEnd:
    """The client connection of a CONNECT tunnel, once its head is read."""

    __slots__ = (
        "announce", "front", "is_connected", "over", "producer", "raw", "read_ended", "up",
        "write_ended",
    )

    def __init__(
        self, front: StreamingFrontProtocol, raw: bool = False, announce: bool = True
    ) -> None:
        self.front = front
        self.raw = raw
        """A captured connection, a stream from its first byte: no HTTP answer either way."""
        self.announce = announce
        """CONNECT: the client gets ``200 Connection established`` once the far end is
        connected (an Upgrade gets the origin's own answer, 101 or not)."""
        self.over = False
        self.up: IByteStream | None = None
        self.producer: IPushProducer | None = None
        self.is_connected = False
        self.read_ended = False
        self.write_ended = False

    # from the client socket
    def received(self, data: bytes) -> None:
        if data and self.up is not None and not self.read_ended:
            self.up.write(data)

    def client_fin(self) -> None:
        if self.read_ended:
            return
        self.read_ended = True
        if self.up is not None:
            self.up.end()
        self._close_if_over()

    def lost(self) -> None:
        up, self.up = self.up, None
        if up is not None and not (self.read_ended and self.write_ended):
            up.abort(MeshError(Reason.upstream_lost, "client connection lost"))

    # IStreamSource: the far end answers
    def connected(self) -> None:
        if self.is_connected:
            return
        self.is_connected = True
        transport = self.front.transport
        if transport is not None and self.announce and not self.raw:
            transport.write(_ESTABLISHED)

    def write(self, data: bytes) -> None:
        transport = self.front.transport
        if transport is not None and not self.write_ended:
            transport.write(data)

    def end(self) -> None:
        if self.write_ended:
            return
        self.write_ended = True
        _half_close(self.front.transport)
        self._close_if_over()

    def abort(self, error: MeshError) -> None:
        self.up = None
        self.over = True
        front = self.front
        _log.info("byte stream from {client} closed: {code}: {detail}",
                  client=front.client_address, code=error.reason.code, detail=error.detail)
        if not self.is_connected and not self.raw:
            front.refuse_tunnel(error)
        elif front.transport is not None:
            front.transport.abortConnection()  # type: ignore[attr-defined]

    def setProducer(self, producer: IPushProducer) -> None:
        self.producer = producer

    def _close_if_over(self) -> None:
        transport: Any = self.front.transport
        if self.read_ended and self.write_ended and transport is not None:
            self.up = None
            if getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()
            transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class StreamingFrontProtocol(HTTPFrontProtocol):
    """The HTTP front, plus ``CONNECT host:port`` as the first request of a connection: the
    connection then becomes a byte stream to that service port (200 once the far end is
    connected; the mesh's own error answer if it is refused).  Half-closeable: in a tunnel
    a FIN ends the client's direction only; for HTTP it ends the connection, as before."""

    def __init__(
        self,
        reactor: IReactorTime,
        kind: SourceKind,
        dispatch: Dispatch,
        limits: FrontLimits,
        open_stream: OpenStream,
    ) -> None:
        super().__init__(reactor, kind, dispatch, limits)
        self._open_stream = open_stream
        self._tunnel: _ClientEnd | None = None

    @property
    def client_address(self) -> str:
        return self._client

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        if self._active is not None or self._queue:
            if parser.get_method() == b"CONNECT":
                # Behind requests still in progress the connection cannot become a tunnel.
                raise self._reject(
                    Reason.not_implemented,
                    "CONNECT behind other requests of the connection: send it once they "
                    "are answered, or on a connection of its own", b"CONNECT")
            super().on_headers_complete()
            return
        if parser.get_method() != b"CONNECT":
            if (
                parser.should_upgrade() and self._upgrade and self.upgrades_as_streams()
                and self._content_length in (None, 0) and self._transfer_encoding is None
                and parser.get_http_version() == "1.1" and self._url[:1] == b"/"
                and self._host is not None
            ):
                self._start_upgrade(parser.get_method())
                return
            super().on_headers_complete()
            return
        self._in_head = False
        self._head_since = None
        if parser.get_http_version() not in ("1.0", "1.1"):
            raise self._reject(Reason.bad_request, "HTTP version not supported", b"CONNECT")
        authority = self._check_authority(self._url, b"CONNECT")
        if b":" not in authority.rpartition(b"]")[2]:
            raise self._reject(Reason.bad_request, "CONNECT needs a host:port target", b"CONNECT")
        tunnel = _ClientEnd(self)
        self._tunnel = tunnel
        self._cancel_timer()
        try:
            try:
                up = self._open_stream(authority, self._client, tunnel)
            except MeshError as error:
                outbound = getattr(self.factory, "outbound", None)
                if error.reason is not Reason.unknown_service or outbound is None:
                    raise
                # --outbound allow: a name outside the catalog, straight out of this node.
                up = outbound(authority, self._client, tunnel)
        except MeshError as error:
            self._tunnel = None
            raise self._reject(error.reason, error.detail, b"CONNECT") from None
        if self._tunnel is None:  # refused inside open_stream
            raise _Stop()
        tunnel.up = up
        up.setProducer(_Reading(self.transport))

    def _start_upgrade(self, method: bytes) -> None:
        """An HTTP/1.1 Upgrade (WebSocket...) on an idle connection: the connection becomes a
        byte stream to the service the Host names, carrying this request head first; the
        origin's answer (its 101, or any other response) and all that follows are relayed as
        they come.  The mesh's own answer when the stream is refused before it connects."""
        self._in_head = False
        self._head_since = None
        assert self._host is not None and self._upgrade is not None
        authority = self._check_authority(self._host, method)
        tokens = connection_tokens(self._connection or ())
        fields = end_to_end(self._headers, tokens)
        head = b"".join((
            b"%s %s HTTP/1.1\r\n" % (method, self._url),
            *(b"%s: %s\r\n" % field for field in fields),
            b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % self._upgrade,
        ))
        tunnel = _ClientEnd(self, announce=False)
        self._tunnel = tunnel
        self._cancel_timer()
        try:
            up = self.open_upgrade(authority, tunnel)
        except MeshError as error:
            self._tunnel = None
            raise self._reject(error.reason, error.detail, method) from None
        if self._tunnel is None:
            raise _Stop()
        tunnel.up = up
        up.setProducer(_Reading(self.transport))
        up.write(head)

    def upgrades_as_streams(self) -> bool:
        """Whether an Upgrade request becomes a byte stream (else: an ordinary request)."""
        return True

    def open_upgrade(self, authority: bytes, source: IStreamSource) -> IByteStream:
        """The stream an Upgrade request opens (may raise MeshError)."""
        return self._open_stream(authority, self._client, source)

    def become_stream(self, open_stream: Callable[[IStreamSource], IByteStream]) -> None:
        """This connection is a byte stream from its first byte (a captured connection to a
        stream port): nothing is parsed, nothing answered; a refusal closes it (logged)."""
        tunnel = _ClientEnd(self, raw=True)
        self._tunnel = tunnel
        self._read_stopped = True
        self._cancel_timer()
        try:
            up = open_stream(tunnel)
        except MeshError as error:
            tunnel.abort(error)
            return
        if tunnel.over:
            return
        tunnel.up = up
        up.setProducer(_Reading(self.transport))

    def readConnectionLost(self) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.client_fin()
        elif self.transport is not None:
            # Not a tunnel: as without half-close, the client's FIN ends the connection.
            # With an exchange in flight, by a reset: a response cut short must not look
            # whole to a client that reads it to the close.  Else in order: at once (a
            # keep-alive client done), or once the last response has left (a client that
            # half-closed after its request), lingering the idle timeout at most.
            if self._closing:
                return  # closing in order already (after a last response): it goes on
            if self._active is not None or self._queue:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            elif buffered(self.transport):
                self._close(abort=False, reason="the client closed its side")
            else:
                close_on_fin(self.transport)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.lost()
        super().connectionLost(reason)

    def pauseProducing(self) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            if tunnel.producer is not None:
                tunnel.producer.pauseProducing()
            return
        super().pauseProducing()

    def resumeProducing(self) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            if tunnel.producer is not None:
                tunnel.producer.resumeProducing()
            return
        super().resumeProducing()

    def refuse_tunnel(self, error: MeshError) -> None:
        """The stream was refused before it was connected: the mesh's own answer, then close."""
        self._tunnel = None
        transport: Any = self.transport
        if transport is None or self._closing:
            return
        # (Counted by the pipeline's stream guard, which routed it: not as a front rejection.)
        body, headers = error_body(error.status, error.reason.code, error.detail)
        phrase = error.reason.code.replace("-", " ").encode("ascii")
        head = response_head_bytes(
            error.status, phrase, headers, b"Content-Length: %d\r\n" % len(body), False
        )
        transport.writeSequence((head, body))
        self._closing = True
        self._read_stopped = True
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        transport.loseConnection()


class StreamingFrontFactory(HTTPFrontFactory):
    """Builds a ``StreamingFrontProtocol`` per accepted connection."""

    def __init__(
        self,
        reactor: IReactorTime,
        kind: SourceKind,
        dispatch: Dispatch,
        open_stream: OpenStream,
        limits: FrontLimits | None = None,
    ) -> None:
        super().__init__(reactor, kind, dispatch, limits or FrontLimits())
        self.open_stream = open_stream
        self.outbound: OpenStream | None = None
        """CONNECT to a name the catalog does not know (``--outbound allow``); None: the
        mesh's 404 (``deny``)."""

    def buildProtocol(self, addr: IAddress | None) -> StreamingFrontProtocol:
        protocol = StreamingFrontProtocol(
            self.reactor, self.kind, self.dispatch, self.limits, self.open_stream)
        protocol.factory = self
        return protocol


# --- the far end: a TCP connection to a pod or a cluster IP --------------------------------


@implementer(IByteStream, IPushProducer)
class _PodEnd:
    """The target's side of a stream: bytes from the source go to the pod's socket (queued,
    bounded, until it is connected); bytes from the pod go back to the source."""

    __slots__ = (
        "address", "connecting", "done", "paused_source", "pod", "producer", "queue", "queued",
        "source", "up_ended",
    )

    def __init__(self, source: IStreamSource, address: str) -> None:
        self.source = source
        self.address = address
        self.pod: _PodProtocol | None = None
        self.connecting: Deferred[Any] | None = None
        self.queue: list[bytes] = []
        self.queued = 0
        self.producer: IPushProducer | None = None
        """The source's flow (its client socket's reading)."""
        self.paused_source = False
        self.up_ended = False
        self.done = False

    # IByteStream: from the source
    def write(self, data: bytes) -> None:
        if self.done or self.up_ended:
            return
        pod = self.pod
        if pod is not None and pod.transport is not None:
            pod.transport.write(data)
            return
        self.queue.append(data)
        self.queued += len(data)
        if self.queued >= QUEUE_BOUND and self.producer is not None and not self.paused_source:
            self.paused_source = True
            self.producer.pauseProducing()

    def end(self) -> None:
        if self.done or self.up_ended:
            return
        self.up_ended = True
        pod = self.pod
        if pod is not None:
            pod.half_close()

    def abort(self, error: MeshError) -> None:
        if self.done:
            return
        self.done = True
        self.queue = []
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()
        pod, self.pod = self.pod, None
        if pod is not None and pod.transport is not None:
            pod.transport.abortConnection()  # type: ignore[attr-defined]

    def setProducer(self, producer: IPushProducer) -> None:
        self.producer = producer

    # IPushProducer: the source pauses the pod's socket
    def pauseProducing(self) -> None:
        pod = self.pod
        if pod is not None and pod.transport is not None:
            pod.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        pod = self.pod
        if pod is not None and pod.transport is not None:
            pod.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self.abort(MeshError(Reason.upstream_lost, "stream consumer went away"))

    # from the pod connection
    def pod_connected(self, pod: _PodProtocol) -> None:
        self.connecting = None
        if self.done:
            if pod.transport is not None:
                pod.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.pod = pod
        self.source.setProducer(self)
        self.source.connected()
        transport = pod.transport
        assert transport is not None
        queue, self.queue = self.queue, []
        self.queued = 0
        if queue:
            transport.writeSequence(queue)
        if self.paused_source and self.producer is not None:
            self.paused_source = False
            self.producer.resumeProducing()
        if self.up_ended:
            pod.half_close()

    def connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        problem = failure.value
        if self.done or isinstance(problem, CancelledError):
            return
        error = connect_error(self.address, failure)
        self.done = True
        self.queue = []
        self.source.abort(error)

    def pod_fin(self) -> None:
        if not self.done:
            self.source.end()

    def pod_lost(self, clean: bool) -> None:
        self.pod = None
        if self.done:
            return
        self.done = True
        if clean:
            return  # both directions ended (the guard has seen both ends)
        self.source.abort(MeshError(Reason.upstream_lost, f"{self.address}: connection lost"))


@implementer(IHalfCloseableProtocol)
class _PodProtocol(Protocol):
    def __init__(self, end: _PodEnd) -> None:
        self.end = end
        self.read_ended = False
        self.write_ended = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        transport.registerProducer(self, True)
        self.end.pod_connected(self)

    def dataReceived(self, data: bytes) -> None:
        end = self.end
        if not end.done:
            end.source.write(data)

    def half_close(self) -> None:
        if self.write_ended or self.transport is None:
            return
        self.write_ended = True
        _half_close(self.transport)
        if self.read_ended:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.read_ended = True
        self.end.pod_fin()
        if self.write_ended and self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.end.pod_lost(self.read_ended and self.write_ended)

    # IPushProducer: the pod's socket buffer pauses the source
    def pauseProducing(self) -> None:
        producer = self.end.producer
        if producer is not None:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        producer = self.end.producer
        if producer is not None:
            producer.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _PodFactory(Factory):
    noisy = False

    def __init__(self, end: _PodEnd) -> None:
        self.end = end

    def buildProtocol(self, addr: IAddress | None) -> _PodProtocol:
        return _PodProtocol(self.end)


@implementer(IStreamTarget)
class TCPStreamTarget:
    """Byte streams out of this node over plain TCP: to the chosen pod (edge: the service
    bus) or to the service's cluster IP (router: cluster-ip)."""

    def __init__(self, reactor: Any, kind: TargetKind, connect_timeout: float = 10.0) -> None:
        self._reactor: IReactorTCP = reactor
        self.kind = kind
        self._connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return f"<TCPStreamTarget {self.kind.value}>"

    def open_stream(self, route: Route, client: str, source: IStreamSource) -> IByteStream:
        endpoint = route.endpoint
        if endpoint is not None:
            host, port = endpoint.host, endpoint.port
        else:
            host, port = route.service.cluster_ip or "", route.port.port
        address = f"[{host}]:{port}" if _is_ipv6(host) else f"{host}:{port}"
        end = _PodEnd(source, address)
        if not host:
            end.done = True
            source.abort(MeshError(Reason.no_endpoint,
                                   f"{route.service.key}: no endpoint chosen and no cluster IP"))
            return end
        kind = TCP6ClientEndpoint if _is_ipv6(host) else TCP4ClientEndpoint
        connecting = kind(self._reactor, host, port, timeout=self._connect_timeout).connect(
            _PodFactory(end)
        )
        if end.pod is None and not end.done:
            end.connecting = connecting
        connecting.addErrback(end.connect_failed)
        return end
