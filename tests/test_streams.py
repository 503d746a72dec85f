"""
Byte streams on the Twisted side: links, the CONNECT way in, the stream targets
(issue 12).  Deterministic: MemoryReactorClock and StringTransport.
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_fuzz_links import CORPUS, FRAMES, FUZZ, Handler, mutate, pieces
from test_links import Handler as RoleHandler
from test_links import Pair
from test_splice import DEADLINE, drain_exactly, pair, wait_readable
from twisted.internet import main, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    IStreamSource,
    IStreamTarget,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    Role,
    SourceKind,
    TargetKind,
)
from edgemesh.routing import Pipeline, Resilience, Route
from edgemesh.testing import RecordingBody
from edgemesh.transports import EnvelopeLink
from edgemesh.transports._io import buffered
from edgemesh.transports._streams import StreamingFrontFactory, TCPStreamTarget
from edgemesh.wire import Connection, FrameDecoder, Limits, Reset, StreamOpen


def test_a_link_without_a_stream_handler_refuses_byte_streams() -> None:
    """The stream is reset with not-implemented; the link and its HTTP exchanges go on."""
    clock = MemoryReactorClock()
    link = EnvelopeLink(clock, Handler(True), node="router", role="router", client=False)
    transport = StringTransport()
    protocol: Any = link
    protocol.makeConnection(transport)
    clock.advance(0)
    peer = Connection(client=True)
    peer.receive(transport.value())
    transport.clear()
    sid = peer.open_stream(byte_stream=True)
    link.dataReceived(peer.hello("edge-1", "edge")
                      + peer.send_stream_open(sid, "", "ns/s", 7, None, b"x", False))
    clock.advance(0)
    frames = [
        f for f in FrameDecoder(Limits()).feed(transport.value()) if not isinstance(f, StreamOpen)]
    assert Reset(sid, "not-implemented", "router takes no byte streams") in frames
    assert not link.closed


# --- helpers --------------------------------------------------------------------------


@implementer(IStreamSource, IByteStream)
class Side:
    """Either end of a stream as a test sees it: records what it is told."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended = False
        self.errors: list[MeshError] = []
        self.is_connected = False
        self.producer: IPushProducer | None = None

    def connected(self) -> None:
        self.is_connected = True

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def end(self) -> None:
        self.ended = True

    def abort(self, error: MeshError) -> None:
        self.errors.append(error)

    def setProducer(self, producer: IPushProducer) -> None:
        self.producer = producer


@implementer(IStreamTarget)
class FakeTarget:
    kind = TargetKind.service_bus

    def __init__(self) -> None:
        self.opened: list[tuple[Route, str, IStreamSource, Side]] = []

    def open_stream(self, route: Route, client: str, source: IStreamSource) -> IByteStream:
        side = Side()
        self.opened.append((route, client, source, side))
        return side


def echo_catalog() -> Catalog:
    port = ServicePort("tcp-echo", 7, 7007)
    service = Service("default", "echo", "10.96.1.7", (port,),
                      {"tcp-echo": (Endpoint("10.0.0.5", 7007, "edge-1"),)})
    return Catalog([service], [Node("edge-1", True, "127.0.0.1", 7701)], revision=1)


def stream_pipeline(**settings: Any) -> tuple[Pipeline, FakeTarget, MemoryReactorClock]:
    clock = MemoryReactorClock()
    pipeline = Pipeline(Role.edge, "edge-1", echo_catalog(), clock=clock,
                        settings=Resilience(**settings))
    target = FakeTarget()
    pipeline.add_stream_target(target)
    return pipeline, target, clock


# --- the guard in the pipeline ----------------------------------------------------------


def test_a_stream_is_routed_to_the_chosen_endpoint_and_relayed_both_ways() -> None:
    pipeline, target, _ = stream_pipeline()
    client = Side()
    up = pipeline.dispatch_stream(SourceKind.service_bus, b"echo.default:7", "10.1.1.1", client)
    [(route, who, down, pod)] = target.opened
    assert route.target is TargetKind.service_bus and route.endpoint is not None
    assert (route.endpoint.host, route.endpoint.port, who) == ("10.0.0.5", 7007, "10.1.1.1")
    down.connected()
    assert client.is_connected
    up.write(b"ping")
    down.write(b"pong!")
    assert pod.data == [b"ping"] and client.data == [b"pong!"]
    [guard] = pipeline.streams
    assert (guard.bytes_up, guard.bytes_down) == (4, 5)
    # Half-close each way: over only once both have ended.
    up.end()
    assert pod.ended and not client.ended and pipeline.streams
    down.write(b"after")
    down.end()
    assert client.ended and client.data[-1] == b"after"
    assert not pipeline.streams and guard.error is None


def test_the_per_service_cap_applies_to_streams() -> None:
    pipeline, target, _ = stream_pipeline(max_requests_per_service=2)
    for _ in range(2):
        pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", Side())
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", Side())
    assert caught.value.reason is Reason.overloaded
    assert len(target.opened) == 2  # nothing was sent towards a pod for the refused one
    target.opened[0][2].abort(MeshError(Reason.upstream_lost, "gone"))
    pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", Side())
    assert len(target.opened) == 3


def test_unknown_names_and_ports_are_refused_before_any_target() -> None:
    pipeline, target, _ = stream_pipeline()
    for authority in (b"nope:7", b"echo:8"):
        with pytest.raises(MeshError) as caught:
            pipeline.dispatch_stream(SourceKind.service_bus, authority, "", Side())
        assert caught.value.reason is Reason.unknown_service
    assert target.opened == []


def test_an_idle_stream_is_cut_both_ways() -> None:
    pipeline, target, clock = stream_pipeline(stream_idle_timeout=30)
    client = Side()
    up = pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", client)
    [(_, _, down, pod)] = target.opened
    down.connected()
    for _ in range(5):  # traffic keeps it alive
        clock.advance(20)
        up.write(b"x")
    assert not client.errors
    clock.advance(30)  # (a Clock reschedules from the end of an advance: two steps)
    clock.advance(30)
    assert [e.reason for e in client.errors] == [Reason.upstream_timeout]
    assert [e.reason for e in pod.errors] == [Reason.upstream_timeout]
    assert not pipeline.streams and clock.getDelayedCalls() == []


def test_a_closed_stream_leaves_no_timer_and_is_reported_once() -> None:
    pipeline, target, clock = stream_pipeline()
    closed: list[object] = []
    pipeline.stream_closed = closed.append
    up = pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", Side())
    [(_, _, down, _)] = target.opened
    up.abort(MeshError(Reason.upstream_lost, "client connection lost"))
    down.abort(MeshError(Reason.upstream_lost, "late"))
    assert len(closed) == 1 and clock.getDelayedCalls() == []


def test_no_stream_target_is_not_implemented() -> None:
    pipeline = Pipeline(Role.edge, "edge-1", echo_catalog(), clock=MemoryReactorClock())
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", Side())
    assert caught.value.reason is Reason.not_implemented


# --- CONNECT on the front -----------------------------------------------------------------


class Opener:
    def __init__(self, refuse: MeshError | None = None) -> None:
        self.refuse = refuse
        self.calls: list[tuple[bytes, str, IStreamSource]] = []
        self.up = Side()

    def __call__(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        self.calls.append((authority, client, source))
        if self.refuse is not None:
            raise self.refuse
        return self.up


def no_http(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
    raise MeshError(Reason.unknown_service, "no HTTP in this test")


def front(opener: Opener) -> tuple[Any, HalfCloseTransport, MemoryReactorClock]:
    clock = MemoryReactorClock()
    factory = StreamingFrontFactory(clock, SourceKind.service_bus, no_http, opener)
    protocol: Any = factory.buildProtocol(None)
    transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5555))
    protocol.makeConnection(transport)
    return protocol, transport, clock


class HalfCloseTransport(StringTransport):
    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def answer_now(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
    responder.head(ResponseHead(200, b"OK", ((b"Content-Length", b"2"),), 2))
    responder.write(b"ok")
    responder.end()
    return RecordingBody()


def test_a_clients_fin_closes_its_connection_at_once_and_in_order() -> None:
    """Not a tunnel: the client's FIN ends the connection as Twisted ends one of a protocol
    without half-close, in the same turn and with a FIN of ours, not a RST a turn later
    (abortConnection's callLater(0) and new Failure: 363 -> 292 k instructions per
    new-connection exchange on path 1)."""
    ours, theirs = pair()
    clock = MemoryReactorClock()
    factory = StreamingFrontFactory(clock, SourceKind.service_bus, answer_now, Opener())
    protocol: Any = factory.buildProtocol(None)
    transport = tcp.Server(ours, protocol, ("127.0.0.1", 1), None, 1, clock)  # type: ignore[arg-type]
    protocol.makeConnection(transport)
    theirs.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    wait_readable(ours, time.monotonic() + DEADLINE)
    assert transport.doRead() is None
    assert drain_exactly(theirs, 40).endswith(b"\r\n\r\nok")
    theirs.shutdown(socket.SHUT_WR)
    wait_readable(ours, time.monotonic() + DEADLINE)
    why = transport.doRead()
    assert why is main.CONNECTION_DONE
    # What the reactor does with it (posixbase._disconnectSelectable, half-closeable).
    transport.readConnectionLost(Failure(why))
    assert transport.disconnected and protocol._closing
    assert clock.getDelayedCalls() == []
    wait_readable(theirs, time.monotonic() + DEADLINE)
    assert theirs.recv(16) == b""  # a FIN: a RST would raise ConnectionResetError
    theirs.close()


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_a_client_that_half_closed_gets_the_rest_of_its_last_response(version: bytes) -> None:
    """The response was complete but waits in the transport's buffer (the client does not
    read yet) when the client's FIN comes: it leaves first, then the connection closes in
    order (before, a reset cut it short).  HTTP/1.0: the front was closing in order already;
    HTTP/1.1: the connection was idle, kept alive."""
    ours, theirs = pair(sndbuf=16384)
    clock = MemoryReactorClock()
    body = os.urandom(1 << 20)

    def answer_big(source: SourceKind, head: RequestHead, responder: IResponder,
                   ) -> IRequestBody:
        responder.head(ResponseHead(200, b"OK", ((b"Content-Length", b"%d" % len(body)),),
                                    len(body)))
        responder.write(body)
        responder.end()
        return RecordingBody()

    factory = StreamingFrontFactory(clock, SourceKind.service_bus, answer_big, Opener())
    protocol: Any = factory.buildProtocol(None)
    transport = tcp.Server(ours, protocol, ("127.0.0.1", 1), None, 1, clock)  # type: ignore[arg-type]
    protocol.makeConnection(transport)
    theirs.sendall(b"GET / HTTP/" + version + b"\r\nHost: web\r\n\r\n")
    theirs.shutdown(socket.SHUT_WR)
    until = time.monotonic() + DEADLINE
    why = None
    while why is None:  # the request, then the FIN
        assert time.monotonic() < until
        wait_readable(ours, until)
        why = transport.doRead()
    assert buffered(transport)  # answered, not all sent
    assert protocol._closing == (version == b"1.0")
    transport.readConnectionLost(Failure(why))
    got = bytearray()
    while True:
        assert time.monotonic() < until
        clock.advance(0)
        if not transport.disconnected and transport.doWrite() is not None:
            transport.connectionLost(Failure(main.CONNECTION_DONE))
        select.select([theirs], [], [], 0.01)  # (bounded: the loop's deadline above)
        try:
            piece = theirs.recv(1 << 20)
        except BlockingIOError:
            continue
        if not piece:
            break  # a FIN, after all of it
        got += piece
    assert bytes(got).partition(b"\r\n\r\n")[2] == body
    theirs.close()


def test_a_clients_fin_with_a_response_in_flight_resets_the_connection() -> None:
    """A response cut short by the client's FIN ends with a reset, not a FIN: read to the
    close (an HTTP/1.0 body without a length), it would look whole."""
    ours, theirs = pair()
    clock = MemoryReactorClock()
    pending: list[IResponder] = []

    def answer_later(source: SourceKind, head: RequestHead, responder: IResponder,
                     ) -> IRequestBody:
        pending.append(responder)
        return RecordingBody()

    factory = StreamingFrontFactory(clock, SourceKind.service_bus, answer_later, Opener())
    protocol: Any = factory.buildProtocol(None)
    transport = tcp.Server(ours, protocol, ("127.0.0.1", 1), None, 1, clock)  # type: ignore[arg-type]
    protocol.makeConnection(transport)
    theirs.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
    theirs.shutdown(socket.SHUT_WR)
    until = time.monotonic() + DEADLINE
    why = None
    while why is None:  # the request, then (maybe in the same read) the FIN
        assert time.monotonic() < until
        wait_readable(ours, until)
        why = transport.doRead()
    assert pending
    pending[0].head(ResponseHead(200, b"OK", (), None))
    pending[0].write(b"the first part")
    transport.readConnectionLost(Failure(why))
    clock.advance(0)
    assert transport.disconnected
    with pytest.raises(ConnectionResetError):
        while True:  # what was sent before the reset may come first
            wait_readable(theirs, until)
            assert theirs.recv(1 << 16), "a FIN: the cut response would look whole"
    theirs.close()


def test_connect_becomes_a_byte_stream() -> None:
    opener = Opener()
    protocol, transport, clock = front(opener)
    protocol.dataReceived(b"CONNECT echo.default:7 HTTP/1.1\r\nHost: echo.default:7\r\n\r\nearly")
    [(authority, client, source)] = opener.calls
    assert (authority, client) == (b"echo.default:7", "10.1.1.1")
    assert opener.up.data == [b"early"] and transport.value() == b""
    source.connected()
    assert transport.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    transport.clear()
    # Whatever follows is bytes, not HTTP.
    protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    source.write(b"\x00\x01binary")
    assert opener.up.data[-1] == b"GET / HTTP/1.1\r\n\r\n"
    assert transport.value() == b"\x00\x01binary"
    # Backpressure: the client socket's buffer pauses the far end's producer.
    far = Side()
    producer = Producer()
    source.setProducer(producer)
    protocol.pauseProducing()
    assert producer.paused
    protocol.resumeProducing()
    assert not producer.paused
    # The client half-closes: its direction ends, the stream goes on.
    protocol.readConnectionLost()
    assert opener.up.ended and not transport.disconnecting
    source.write(b"still")
    source.end()
    assert transport.value().endswith(b"still") and transport.write_closed
    assert transport.disconnecting  # both ways over: closed
    assert far.errors == [] and clock.getDelayedCalls() == []


def test_a_refused_connect_gets_the_mesh_answer_and_is_closed() -> None:
    opener = Opener(MeshError(Reason.unknown_service, "no service default/nope"))
    protocol, transport, _ = front(opener)
    protocol.dataReceived(b"CONNECT nope:7 HTTP/1.1\r\nHost: nope:7\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert b"X-Edgemesh-Error: unknown-service" in answer
    assert b"no service default/nope" in answer
    assert transport.disconnecting


def test_a_connect_refused_after_it_started_gets_the_mesh_answer() -> None:
    opener = Opener()
    protocol, transport, _ = front(opener)
    rejected: list[Reason] = []
    protocol.factory.rejected = rejected.append
    protocol.dataReceived(b"CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\n")
    [(_, _, source)] = opener.calls
    source.abort(MeshError(Reason.upstream_refused, "10.0.0.5:7007: connection refused"))
    assert rejected == []  # routed: its stream guard counts it, not the front
    assert transport.value().startswith(b"HTTP/1.1 502 ")
    assert b"X-Edgemesh-Error: upstream-refused" in transport.value()
    assert transport.disconnecting


def test_a_stream_cut_after_the_200_aborts_the_client() -> None:
    opener = Opener()
    protocol, transport, _ = front(opener)
    protocol.dataReceived(b"CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\n")
    [(_, _, source)] = opener.calls
    source.connected()
    source.abort(MeshError(Reason.upstream_timeout, "idle"))
    assert transport.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert transport.disconnecting  # StringTransport's abortConnection


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT echo HTTP/1.1\r\nHost: echo\r\n\r\n", b"400"),
        (b"CONNECT a@b:7 HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    ],
)
def test_bad_connects(head: bytes, status: bytes) -> None:
    opener = Opener()
    _, transport, _ = front_with(head, opener)
    assert b"HTTP/1.1 " + status in transport.value()
    assert opener.calls == []


def test_connect_after_an_answered_request_on_the_same_connection() -> None:
    opener = Opener()
    _, transport, _ = front_with(
        b"GET / HTTP/1.1\r\nHost: echo\r\n\r\nCONNECT echo:7 HTTP/1.1\r\nHost: e\r\n\r\n",
        opener,
    )
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert [authority for authority, _, _ in opener.calls] == [b"echo:7"]


def test_a_connect_pipelined_behind_a_request_says_why_it_is_refused() -> None:
    answers: list[IResponder] = []

    def answer_later(source: SourceKind, head: RequestHead, responder: IResponder) -> Any:
        answers.append(responder)
        return RecordingBody()

    opener = Opener()
    factory = StreamingFrontFactory(MemoryReactorClock(), SourceKind.service_bus,
                                    answer_later, opener)
    protocol: Any = factory.buildProtocol(None)
    transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5555))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n"
                          b"CONNECT echo:7 HTTP/1.1\r\nHost: e\r\n\r\n")
    [responder] = answers
    responder.head(ResponseHead(200, b"OK", ((b"Content-Length", b"2"),), 2))
    responder.write(b"ok")
    responder.end()
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 501 " in answer
    assert b"CONNECT behind other requests of the connection" in answer
    assert opener.calls == []


def front_with(data: bytes, opener: Opener) -> tuple[Any, HalfCloseTransport, MemoryReactorClock]:
    protocol, transport, clock = front(opener)
    protocol.dataReceived(data)
    return protocol, transport, clock


def test_a_client_gone_mid_stream_aborts_the_far_end() -> None:
    opener = Opener()
    protocol, _, _ = front(opener)
    protocol.dataReceived(b"CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\n")
    opener.calls[0][2].connected()
    protocol.connectionLost(Failure(ConnectionDone()))
    assert [e.detail for e in opener.up.errors] == ["client connection lost"]


# --- the TCP target ---------------------------------------------------------------------


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def _route() -> Route:
    catalog = echo_catalog()
    service = catalog.services["default/echo"]
    port = service.ports[0]
    return Route(TargetKind.service_bus, service, port, service.endpoints["tcp-echo"][0])


def test_the_tcp_target_queues_until_connected_then_relays() -> None:
    reactor = MemoryReactorClock()
    target = TCPStreamTarget(reactor, TargetKind.service_bus, connect_timeout=3)
    verifyObject(IStreamTarget, target)
    source = Side()
    end = target.open_stream(_route(), "10.1.1.1", source)
    [(host, port, factory, timeout, _)] = reactor.tcpClients
    assert (host, port, timeout) == ("10.0.0.5", 7007, 3)
    producer = Producer()
    end.setProducer(producer)
    end.write(b"a" * 40000)
    end.write(b"b" * 40000)  # past the bound: the client's reading is paused
    assert producer.paused and not source.is_connected
    pod = factory.buildProtocol(None)
    transport = HalfCloseTransport()
    pod.makeConnection(transport)
    assert source.is_connected and not producer.paused
    assert transport.value() == b"a" * 40000 + b"b" * 40000
    pod.dataReceived(b"reply")
    assert source.data == [b"reply"]
    # The pod's socket buffer pauses the client, and back.
    transport.producer.pauseProducing()
    assert producer.paused
    transport.producer.resumeProducing()
    assert not producer.paused
    end.end()
    assert transport.write_closed and not transport.disconnecting
    pod.readConnectionLost()
    assert source.ended and transport.disconnecting


def test_the_tcp_target_reports_a_refused_connection() -> None:
    reactor = MemoryReactorClock()
    target = TCPStreamTarget(reactor, TargetKind.service_bus)
    source = Side()
    target.open_stream(_route(), "", source)
    [(_, _, factory, _, _)] = reactor.tcpClients
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert [e.reason for e in source.errors] == [Reason.upstream_refused]
    assert "10.0.0.5:7007" in source.errors[0].detail


# --- transparent capture of a stream port ------------------------------------------------


def captured(original: tuple[str, int], dispatch_stream: Any) -> tuple[Any, HalfCloseTransport]:
    import ipaddress

    from edgemesh.capture import TransparentFrontFactory
    from edgemesh.capture._vips import ServiceAddresses, VirtualIPs

    def catalog() -> Catalog:
        web = Service("default", "web", "10.96.1.80", (ServicePort("http", 80, 8080),))
        return Catalog([*echo_catalog().services.values(), web], echo_catalog().nodes.values(), 1)

    addresses = ServiceAddresses(catalog, VirtualIPs(ipaddress.IPv4Network("240.240.0.0/16")))

    def http(*args: Any) -> IRequestBody:
        raise MeshError(Reason.unknown_service, "HTTP path")

    factory = TransparentFrontFactory(MemoryReactorClock(), addresses, http,
                                      lookup=lambda transport: original,
                                      dispatch_stream=dispatch_stream)
    protocol: Any = factory.buildProtocol(None)
    transport = HalfCloseTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 15001),
                                   peerAddress=IPv4Address("TCP", "10.1.1.1", 4000))
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_captured_stream_port_is_a_byte_stream_from_the_first_byte() -> None:
    calls: list[tuple[Any, ...]] = []
    up = Side()

    def dispatch_stream(*args: Any) -> IByteStream:
        calls.append(args)
        return up

    protocol, transport = captured(("10.96.1.7", 7), dispatch_stream)
    [(source_kind, key, port, hint, client, source)] = calls
    assert (source_kind, key, port, hint, client) == (
        SourceKind.service_bus, "default/echo", 7, None, "10.1.1.1")
    # Server-speaks-first works: the far end may talk before the client; no HTTP either way.
    source.connected()
    source.write(b"220 greetings\r\n")
    assert transport.value() == b"220 greetings\r\n"
    protocol.dataReceived(b"\x16\x03\x01 not http at all")
    assert up.data == [b"\x16\x03\x01 not http at all"]


def test_a_refused_captured_stream_is_closed_without_an_http_answer() -> None:
    def dispatch_stream(*args: Any) -> IByteStream:
        raise MeshError(Reason.no_endpoint, "no ready endpoint of default/echo")

    protocol, transport = captured(("10.96.1.7", 7), dispatch_stream)
    assert transport.value() == b"" and transport.disconnecting
    protocol.dataReceived(b"ignored")


def test_a_captured_http_port_is_still_http() -> None:
    calls: list[object] = []
    protocol, transport = captured(("10.96.1.80", 80), lambda *args: calls.append(args))
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    assert calls == [] and transport.value().startswith(b"HTTP/1.1 404 ")


# --- byte streams over links ---------------------------------------------------------------


class StreamHandler(RoleHandler):
    """test_links' role, taking byte streams: each gets a Side as its target."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[tuple[StreamOpen, Any, Side]] = []

    def inbound_stream(self, link: EnvelopeLink, frame: StreamOpen, source: Any) -> IByteStream:
        target = Side()
        self.streams.append((frame, source, target))
        return target


def stream_pair() -> Any:
    pair = Pair(handshake=False)
    pair.server_handler = pair.server.handler = StreamHandler()
    pair.pump()
    return pair


def test_a_byte_stream_across_a_link_both_ways_within_the_windows() -> None:
    pair = stream_pair()
    source = Side()
    producer = Producer()
    stream = pair.client.open_stream("default/echo", 7, ("10.0.0.5", 7007), "10.1.1.1", source)
    stream.setProducer(producer)
    stream.write(b"early")
    pair.pump()
    [(frame, inbound, pod)] = pair.server.handler.streams
    assert (frame.service, frame.port, frame.endpoint, frame.client) == (
        "default/echo", 7, ("10.0.0.5", 7007), "10.1.1.1")
    assert pod.data == [b"early"] and not source.is_connected
    inbound.connected()
    pair.pump()
    assert source.is_connected
    # 2 MiB each way: whole, in order, never more in flight than a window.
    up = [bytes([i]) * 65536 for i in range(32)]
    for piece in up:
        stream.write(piece)
        inbound.write(piece)
        pair.pump()
    assert b"".join(pod.data) == b"early" + b"".join(up)
    assert b"".join(source.data) == b"".join(up)
    assert pair.largest_body_flight <= Limits().max_window
    # Half-close one way, then the other: both links forget the stream.
    stream.end()
    pair.pump()
    assert pod.ended and not source.ended
    inbound.write(b"last words")
    inbound.end()
    pair.pump()
    assert source.ended and source.data[-1] == b"last words"
    assert pair.client.exchanges == {} and pair.server.exchanges == {}
    assert not pair.client.connection.stream_ids() and not pair.server.connection.stream_ids()


def test_a_target_that_stops_reading_pauses_the_source_across_the_link() -> None:
    pair = stream_pair()
    source = Side()
    producer = Producer()
    stream = pair.client.open_stream("default/echo", 7, None, "", source)
    stream.setProducer(producer)
    pair.pump()
    [(_, inbound, pod)] = pair.server.handler.streams
    inbound.connected()
    inbound.pauseProducing()  # the pod's socket is full: no credit goes back
    for _ in range(40):
        stream.write(b"x" * 65536)
        pair.pump()
        if producer.paused:
            break
    assert producer.paused
    held = sum(len(d) for d in pod.data)
    assert held <= Limits().initial_window
    inbound.resumeProducing()
    pair.pump()
    assert not producer.paused


def test_a_refused_stream_reaches_the_source_with_its_reason() -> None:
    pair = stream_pair()
    source = Side()
    pair.client.open_stream("default/echo", 7, None, "", source)
    pair.pump()
    [(_, inbound, _)] = pair.server.handler.streams
    inbound.abort(MeshError(Reason.upstream_refused, "10.0.0.5:7007: connection refused"))
    pair.pump()
    assert [(e.reason, e.detail) for e in source.errors] == [
        (Reason.upstream_refused, "10.0.0.5:7007: connection refused")]
    assert pair.client.exchanges == {} and pair.server.exchanges == {}


def test_a_routing_refusal_resets_the_stream() -> None:
    pair = stream_pair()

    def refuse(link: Any, frame: Any, source: Any) -> IByteStream:
        raise MeshError(Reason.no_endpoint, "no ready endpoint of default/echo on node router")

    pair.server.handler.inbound_stream = refuse
    source = Side()
    pair.client.open_stream("default/echo", 7, None, "", source)
    pair.pump()
    assert [e.reason for e in source.errors] == [Reason.no_endpoint]


def test_a_lost_link_aborts_its_streams_both_sides() -> None:
    pair = stream_pair()
    source = Side()
    pair.client.open_stream("default/echo", 7, None, "", source)
    pair.pump()
    [(_, _, pod)] = pair.server.handler.streams
    pair.client.connectionLost(Failure(ConnectionDone()))
    pair.server.connectionLost(Failure(ConnectionDone()))
    assert [e.reason for e in source.errors] == [Reason.peer_unavailable]
    assert [e.reason for e in pod.errors] == [Reason.peer_unavailable]


def test_no_byte_stream_to_an_older_peer() -> None:
    """A peer whose hello does not offer byte streams gets none (its decoder would close
    the link on the unknown frame type): the source is refused, the link goes on."""
    pair = Pair(handshake=False)
    pair.pump()
    pair.client.connection.peer.settings.pop("byte_streams")
    source = Side()
    pair.client.open_stream("default/echo", 7, None, "", source)
    assert [e.reason for e in source.errors] == [Reason.not_implemented]
    pair.pump()
    assert not pair.client.closed and not pair.server.closed


# --- fuzzing a link that takes byte streams ------------------------------------------------


class FuzzStreams(Handler):
    """test_fuzz_links' role, also taking byte streams: accepts each, writes back, ends."""

    def inbound_stream(self, link: EnvelopeLink, frame: StreamOpen, source: Any) -> IByteStream:
        target = Side()
        if self.answer:
            source.connected()
            source.write(b"y" * 3000)
            source.end()
        return target


@given(
    frames=st.lists(st.sampled_from(FRAMES), max_size=24),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
    answer=st.booleans(),
)
@FUZZ
def test_fuzz_frames_in_any_order_with_streams(frames: list[str], cuts: list[int],
                                               answer: bool) -> None:
    run_fuzz(CORPUS["hello"] + b"".join(CORPUS[name] for name in frames), cuts, answer)


@given(
    frames=st.lists(st.sampled_from(FRAMES), min_size=1, max_size=16),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
    answer=st.booleans(),
)
@FUZZ
def test_fuzz_mutated_frames_with_streams(frames: list[str], edits: list[tuple[int, int]],
                                          answer: bool) -> None:
    run_fuzz(CORPUS["hello"] + mutate(b"".join(CORPUS[name] for name in frames), edits), [],
             answer)


def run_fuzz(stream: bytes, cuts: list[int], answer: bool) -> None:
    clock = MemoryReactorClock()
    link = EnvelopeLink(clock, FuzzStreams(answer), node="router", role="router", client=False)
    transport = StringTransport()
    protocol: Any = link
    with capturedLogs() as events:
        protocol.makeConnection(transport)
        for piece in pieces(stream, cuts):
            link.dataReceived(piece)
            if link.closed:
                break
            clock.advance(0)
        clock.advance(0)
        link.connectionLost()
    unexpected = [e for e in events if "log_failure" in e]
    assert unexpected == [], unexpected
    assert clock.getDelayedCalls() == [], "a closed link left a timer behind"


def test_the_stream_corpus_reaches_the_handler() -> None:
    opened: list[StreamOpen] = []

    class Recording(FuzzStreams):
        def inbound_stream(self, link: EnvelopeLink, frame: StreamOpen, source: Any) -> IByteStream:
            opened.append(frame)
            return super().inbound_stream(link, frame, source)

    link = EnvelopeLink(MemoryReactorClock(), Recording(True), node="router", role="router",
                        client=False)
    protocol: Any = link
    protocol.makeConnection(StringTransport())
    link.dataReceived(CORPUS["hello"] + CORPUS["stream-open"] + CORPUS["stream-open-end"])
    assert [(f.service, f.end) for f in opened] == [("shop/redis", False), ("shop/echo", True)]


# --- HTTP/1.1 Upgrade ---------------------------------------------------------------------


def test_an_upgrade_becomes_a_byte_stream_carrying_its_head() -> None:
    opener = Opener()
    protocol, transport, _ = front(opener)
    protocol.dataReceived(
        b"GET /chat?x=1 HTTP/1.1\r\nHost: ws.default\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n"
        b"Keep-Alive: 5\r\n\r\nframe bytes"
    )
    [(authority, client, source)] = opener.calls
    assert (authority, client) == (b"ws.default", "10.1.1.1")
    head, frame = opener.up.data
    assert head == (
        b"GET /chat?x=1 HTTP/1.1\r\nHost: ws.default\r\nSec-WebSocket-Key: abc\r\n"
        b"Sec-WebSocket-Version: 13\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert frame == b"frame bytes"
    source.connected()
    assert transport.value() == b""  # no 200 of ours: the origin answers (101 or not)
    source.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


def test_an_upgrade_to_an_unknown_service_gets_the_mesh_answer() -> None:
    opener = Opener(MeshError(Reason.unknown_service, "no service default/nope"))
    _, transport, _ = front_with(
        b"GET / HTTP/1.1\r\nHost: nope\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        opener,
    )
    assert transport.value().startswith(b"HTTP/1.1 404 ")


@pytest.mark.parametrize("head", [
    # Not an upgrade for llhttp: Upgrade without "Connection: upgrade".
    b"GET / HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\n\r\n",
    # HTTP/1.0 has no Upgrade.
    b"GET / HTTP/1.0\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
])
def test_what_is_not_an_upgrade_stays_an_ordinary_request(head: bytes) -> None:
    opener = Opener()
    _, transport, _ = front_with(head, opener)
    assert opener.calls == [] and transport.value().startswith(b"HTTP/1.")
    assert b" 404 " in transport.value()[:20]  # no_http's answer: dispatched as HTTP


# --- metrics and the access log -------------------------------------------------------------


def test_streams_are_counted_and_logged() -> None:
    from prometheus_client import generate_latest

    from edgemesh.observability import MeshObserver, ObservabilityConfig
    from edgemesh.observability._collector import MeshCollector, node_registry

    pipeline, target, clock = stream_pipeline(stream_idle_timeout=30)
    observer = MeshObserver(clock, Role.edge, "edge-1", ObservabilityConfig(access_log=True))
    observer.attach(pipeline)
    registry = node_registry(MeshCollector(observer, lambda: pipeline.catalog), process=False)
    with capturedLogs() as events:
        # One closed cleanly, one cut by the idle timeout, one the client left.
        for _ in range(3):
            pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "10.1.1.1", Side())
        (_, _, ok_down, _), (_, _, idle_down, _), (_, _, gone_down, _) = target.opened
        ok_up, gone_up = ok_down.guard, gone_down.guard  # the guards, from their down sides
        for down in (ok_down, idle_down, gone_down):
            down.connected()
        ok_down.write(b"x" * 100)
        gone_down.write(b"y" * 10)
        gone_up.up.abort(MeshError(Reason.upstream_lost, "client connection lost"))
        ok_up.up.write(b"z" * 7)
        ok_up.up.end()
        ok_down.end()
        clock.advance(30)
        clock.advance(30)
    text = generate_latest(registry).decode()
    labels = 'path="local",service="default/echo"'
    assert f'edgemesh_byte_streams_opened_total{{{labels}}} 3.0' in text
    assert f'edgemesh_byte_streams_active{{{labels}}} 0.0' in text
    for result in ("ok", "aborted", "upstream-timeout"):
        closed = f'path="local",result="{result}",service="default/echo"'
        assert f"edgemesh_byte_streams_closed_total{{{closed}}} 1.0" in text
    assert f'edgemesh_byte_stream_bytes_total{{direction="up",{labels}}} 7.0' in text
    assert f'edgemesh_byte_stream_bytes_total{{direction="down",{labels}}} 110.0' in text
    assert 'edgemesh_errors_total{reason="upstream-timeout"} 1.0' in text
    lines = [e for e in events if e.get("log_namespace") == "edgemesh.access"]
    assert sorted(e["result"] for e in lines) == ["aborted", "ok", "upstream-timeout"]
    assert all(e["log_format"].startswith("STREAM ") and e["client"] == "10.1.1.1" for e in lines)


# --- --outbound allow -------------------------------------------------------------------------


def test_outbound_allow_takes_unknown_names_straight_out() -> None:
    opener = Opener(MeshError(Reason.unknown_service, "no service default/example"))
    protocol, transport, _ = front(opener)
    calls: list[tuple[bytes, str]] = []
    far = Side()

    def outbound(authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        calls.append((authority, client))
        source.connected()
        return far

    protocol.factory.outbound = outbound
    protocol.dataReceived(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\nhi")
    assert calls == [(b"example.org:443", "10.1.1.1")]
    assert transport.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert far.data == [b"hi"]


def test_outbound_allow_does_not_hide_other_refusals() -> None:
    opener = Opener(MeshError(Reason.overloaded, "default/echo: 1024 in progress"))
    protocol, transport, _ = front(opener)
    protocol.factory.outbound = lambda *args: pytest.fail("not for a known service")
    protocol.dataReceived(b"CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503 ")


def test_the_pipeline_guards_outbound_streams_as_one_service() -> None:
    pipeline, target, _ = stream_pipeline(max_requests_per_service=1)
    client = Side()
    pipeline.dispatch_outbound(SourceKind.service_bus, "example.org", 443, "10.1.1.1", client)
    [(route, _, _, _)] = target.opened
    assert route.endpoint is not None
    assert (route.endpoint.host, route.endpoint.port) == ("example.org", 443)
    assert route.service.key == "outbound/passthrough"
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch_outbound(SourceKind.service_bus, "example.net", 443, "", Side())
    assert caught.value.reason is Reason.overloaded


# --- the guard as a state machine ------------------------------------------------------------


class GuardMachine(RuleBasedStateMachine):
    """Either side writes, half-closes or aborts, the far end connects, time passes, in any
    order: the guard reports the stream exactly once, frees its slot in the service's cap,
    leaves no timer, and after the end passes nothing on and tells each side at most one
    ending."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline, self.target, self.clock = stream_pipeline(stream_idle_timeout=10)
        self.closed: list[object] = []
        self.pipeline.stream_closed = self.closed.append
        self.client = Side()
        self.up = self.pipeline.dispatch_stream(SourceKind.service_bus, b"echo:7", "", self.client)
        [(_, _, self.down, self.pod)] = self.target.opened
        self.guard = self.down.guard  # type: ignore[attr-defined]

    @rule(size=st.integers(1, 100))
    def client_writes(self, size: int) -> None:
        before = len(self.pod.data)
        self.up.write(b"u" * size)
        if self.guard.done or self.guard.up_ended:
            assert len(self.pod.data) == before

    @rule(size=st.integers(1, 100))
    def far_end_writes(self, size: int) -> None:
        before = len(self.client.data)
        self.down.write(b"d" * size)
        if self.guard.done or self.guard.down_ended:
            assert len(self.client.data) == before

    @rule()
    def far_end_connects(self) -> None:
        self.down.connected()

    @rule()
    def client_ends(self) -> None:
        self.up.end()

    @rule()
    def far_end_ends(self) -> None:
        self.down.end()

    @rule()
    def client_aborts(self) -> None:
        self.up.abort(MeshError(Reason.upstream_lost, "client connection lost"))

    @rule()
    def far_end_aborts(self) -> None:
        self.down.abort(MeshError(Reason.upstream_lost, "pod gone"))

    @rule(seconds=st.sampled_from([1, 5, 10, 11]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def reported_once_and_freed(self) -> None:
        guard = self.guard
        assert len(self.closed) == (1 if guard.done else 0)
        assert self.pipeline.streams == (set() if guard.done else {guard})
        assert guard.state.active == (0 if guard.done else 1)
        if guard.done:
            assert self.clock.getDelayedCalls() == []
        assert len(self.client.errors) <= 1 and len(self.pod.errors) <= 1
        # An ending reached each side at most once, and a clean end is an end, no abort.
        if guard.done and guard.error is None:
            assert self.client.ended and self.pod.ended
            assert not self.client.errors and not self.pod.errors
        # Bytes are counted as they pass.
        assert guard.bytes_up == sum(map(len, self.pod.data))
        assert guard.bytes_down == sum(map(len, self.client.data))


GuardMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_guard_state_machine = GuardMachine.TestCase
