"""
Envelope links (EnvelopeLink and its exchanges) and the targets that use them
(LinkTarget, HubDialer).  Deterministic: two links joined by StringTransports and
pumped by hand, on one MemoryReactorClock.
"""

# The links change state behind mypy's back (``assert not link.closed`` ... ``assert
# link.closed``), which it would call unreachable.
# mypy: disable-error-code="unreachable"

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IPushProducer, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgemesh.catalog import Endpoint, Service, ServicePort
from edgemesh.exchange import (
    IHeadEndedBody,
    IRequestBody,
    IResponder,
    ITarget,
    IViewResponder,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    TargetKind,
)
from edgemesh.routing import Route

# The package __init__ pulls in the HTTP front and upstream: import the modules directly.
from edgemesh.testing import (
    CompletingResponder,
    RecordingBody,
    RecordingResponder,
    TrailerBody,
    TrailerResponder,
)
from edgemesh.transports._halves import InboundExchange, OutboundExchange
from edgemesh.transports._links import EnvelopeLink
from edgemesh.transports._peers import HubDialer, LinkTarget
from edgemesh.wire import (
    CatalogPush,
    Data,
    Frame,
    FrameDecoder,
    Limits,
    Ping,
    Pong,
    ProtocolError,
    Request,
    Reset,
    Response,
    Window,
    encode_ack,
    encode_catalog,
    encode_goaway,
)

WINDOW = Limits().initial_window
MAX_WINDOW = Limits().max_window
CHUNK = Limits().max_data_chunk
PENDING_BOUND = 64 * 1024  # _links._PENDING_BOUND: queued body before the producer pauses


# --- fakes ------------------------------------------------------------------------------


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


@dataclass
class Inbound:
    request: Request
    exchange: InboundExchange
    body: RecordingBody


@dataclass
class Handler:
    """A role: records what the link tells it; inbound exchanges get a RecordingBody."""

    ready: list[EnvelopeLink] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    controls: list[Frame] = field(default_factory=list)
    inbounds: list[Inbound] = field(default_factory=list)
    on_inbound: Callable[[Inbound], None] | None = None
    """Runs inside inbound(), before it returns (may answer or raise)."""

    def link_ready(self, link: EnvelopeLink) -> None:
        self.ready.append(link)

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        self.lost.append(reason)

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        assert isinstance(responder, InboundExchange)
        entry = Inbound(request, responder, RecordingBody())
        self.inbounds.append(entry)
        if self.on_inbound is not None:
            self.on_inbound(entry)
        return entry.body

    def control(self, link: EnvelopeLink, frame: Any) -> None:
        self.controls.append(frame)


def connect(protocol: Any, transport: StringTransport) -> None:
    """makeConnection, which Twisted leaves untyped."""
    protocol.makeConnection(transport)


def make_link(clock: MemoryReactorClock, handler: Handler, client: bool, **kw: Any) -> EnvelopeLink:
    if client:
        return EnvelopeLink(clock, handler, node="edge-1", role="edge", client=True, **kw)
    return EnvelopeLink(clock, handler, node="router", role="router", client=False, **kw)


class Pair:
    """An edge (client) link and a router (server) link, joined by hand."""

    def __init__(self, handshake: bool = True, **kw: Any) -> None:
        self.clock = MemoryReactorClock()
        self.client_handler = Handler()
        self.server_handler = Handler()
        self.client = make_link(self.clock, self.client_handler, True, **kw)
        self.server = make_link(self.clock, self.server_handler, False, **kw)
        self.client_transport = StringTransport()
        self.server_transport = StringTransport()
        connect(self.client, self.client_transport)
        connect(self.server, self.server_transport)
        # What each side put on the wire, decoded (every frame, in order).
        self.from_client: list[Frame] = []
        self.from_server: list[Frame] = []
        self._client_frames = FrameDecoder(Limits())
        self._server_frames = FrameDecoder(Limits())
        self.largest_body_flight = 0
        if handshake:
            self.pump()

    def client_to_server(self) -> bool:
        data = self.client_transport.value()
        self.client_transport.clear()
        if not data:
            return False
        frames = record(self._client_frames, data)
        self.from_client += frames
        self.largest_body_flight = max(self.largest_body_flight, body_bytes(frames))
        self.server.dataReceived(data)
        return True

    def server_to_client(self) -> bool:
        data = self.server_transport.value()
        self.server_transport.clear()
        if not data:
            return False
        frames = record(self._server_frames, data)
        self.from_server += frames
        self.largest_body_flight = max(self.largest_body_flight, body_bytes(frames))
        self.client.dataReceived(data)
        return True

    def pump(self) -> None:
        for _ in range(10_000):
            self.clock.advance(0)  # the end of a reactor turn: calls scheduled "soon" run
            moved = self.client_to_server()
            moved = self.server_to_client() or moved
            if not moved:
                return
        raise AssertionError("the links never went quiet")

    def open(
        self,
        content_length: int | None = None,
        endpoint: tuple[str, int] | None = ("10.4.0.12", 8080),
        method: bytes = b"POST",
    ) -> tuple[OutboundExchange, RecordingResponder]:
        responder = RecordingResponder()
        head = RequestHead(method, b"/upload?x=1", b"web.shop", ((b"Content-Type", b"text/plain"),),
                           content_length, client="10.0.0.9")
        exchange = self.client.open(head, "shop/web", 80, endpoint, responder)
        return exchange, responder

    def inbound(self) -> Inbound:
        [entry] = self.server_handler.inbounds
        return entry


def record(decoder: FrameDecoder, data: bytes) -> list[Frame]:
    """The frames in ``data`` for the test's eyes (garbage is the receiving link's business)."""
    try:
        return decoder.feed(data)
    except ProtocolError:
        return []


def body_bytes(frames: list[Frame]) -> int:
    total = 0
    for frame in frames:
        if isinstance(frame, Data):
            total += len(frame.data)
        elif isinstance(frame, (Request, Response)):
            total += len(frame.body)
    return total


def frames_of(frames: list[Frame], kind: type) -> list[Any]:
    return [frame for frame in frames if isinstance(frame, kind)]


# --- handshake and heartbeats -----------------------------------------------------------


def test_hello_exchange_and_link_ready() -> None:
    pair = Pair(handshake=False)
    assert pair.client.peer is None and pair.client.peer_name == "?"
    ready = pair.client.when_ready()
    pair.pump()
    assert pair.client_handler.ready == [pair.client]
    assert pair.server_handler.ready == [pair.server]
    assert pair.client.peer is not None and pair.client.peer.node == "router"
    assert pair.server.peer is not None and pair.server.peer.role == "edge"
    assert pair.server.peer_name == "edge-1"
    assert pair.client.when_ready().result is pair.client
    assert ready.result is pair.client
    assert not pair.client.closed and not pair.server.closed
    assert pair.client_transport.producer is pair.client  # registered for pause/resume


def test_handshake_timeout_closes() -> None:
    clock = MemoryReactorClock()
    handler = Handler()
    link = make_link(clock, handler, True, handshake_timeout=10.0)
    transport = StringTransport()
    connect(link, transport)
    waiting = link.when_ready()
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    clock.advance(9.9)
    assert not link.closed
    with capturedLogs() as events:
        clock.advance(0.1)
    assert link.closed and transport.disconnecting
    assert handler.lost == ["handshake timeout"] and handler.ready == []
    assert len(failures) == 1 and failures[0].check(ConnectionLost)
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert link.when_ready().result.check(ConnectionLost)
    link.when_ready().addErrback(lambda _: None)
    # A hello arriving afterwards changes nothing.
    peer = make_link(clock, Handler(), False)
    peer_transport = StringTransport()
    connect(peer, peer_transport)
    link.dataReceived(peer_transport.value())
    assert handler.ready == []


def test_partial_hello_does_not_stop_the_handshake_timer() -> None:
    pair = Pair(handshake=False, handshake_timeout=5.0)
    hello = pair.server_transport.value()
    pair.client.dataReceived(hello[:-1])
    pair.clock.advance(5.0)
    assert pair.client.closed and pair.client_handler.lost == ["handshake timeout"]


def test_hello_cancels_the_handshake_timeout() -> None:
    pair = Pair(handshake_timeout=10.0)
    for _ in range(12):
        pair.clock.advance(5.0)
        pair.pump()
    assert not pair.client.closed and not pair.server.closed
    assert pair.client_handler.lost == [] and pair.server_handler.lost == []


def test_heartbeat_keeps_a_live_link_and_measures_rtt() -> None:
    pair = Pair(heartbeat_interval=5.0, heartbeat_timeout=15.0)
    assert pair.client.rtt is None
    for _ in range(20):
        pair.clock.advance(5.0)
        pair.pump()
    assert not pair.client.closed and not pair.server.closed
    assert pair.client.rtt == 0.0 and pair.server.rtt == 0.0  # the clock stood still
    assert len(pair.client._ping_sent) <= 8


def test_heartbeat_timeout_closes_a_silent_peer() -> None:
    pair = Pair(heartbeat_interval=5.0, heartbeat_timeout=15.0)
    # From now on the server's bytes never arrive (a blackholed peer); the client's do.
    with capturedLogs() as events:
        for _ in range(2):
            pair.clock.advance(5.0)
            pair.client_to_server()
            pair.server_transport.clear()
        assert not pair.client.closed
        pair.clock.advance(5.0)
    assert pair.client.closed and pair.client_transport.disconnecting
    assert pair.client_handler.lost == ["heartbeat timeout"]
    assert not pair.server.closed  # it hears the client's pings
    assert len([e for e in events if e["log_level"] == LogLevel.warn]) == 1


def test_pings_are_answered() -> None:
    pair = Pair(heartbeat_interval=5.0)
    pair.clock.advance(5.0)
    pair.pump()
    pings = frames_of(pair.from_client, Ping)
    pongs = frames_of(pair.from_server, Pong)
    assert pings and [p.opaque for p in pings] == [p.opaque for p in pongs]


# --- exchanges --------------------------------------------------------------------------


def test_exchange_end_to_end() -> None:
    pair = Pair()
    exchange, responder = pair.open()
    assert responder.producer is None  # given with a response that flows, not before
    verifyObject(IRequestBody, exchange)
    verifyObject(IPushProducer, exchange)
    exchange.write(b"hello ")
    exchange.write(b"world")
    exchange.end()
    pair.pump()
    entry = pair.inbound()
    request = entry.request
    assert (request.method, request.path, request.authority) == (
        b"POST", b"/upload?x=1", b"web.shop")
    assert request.headers == ((b"Content-Type", b"text/plain"),)
    assert request.content_length is None and request.client == "10.0.0.9"
    assert (request.service, request.port, request.endpoint) == (
        "shop/web", 80, ("10.4.0.12", 8080))
    assert entry.body.data == b"hello world" and entry.body.ended
    assert entry.body.producer is entry.exchange
    verifyObject(IResponder, entry.exchange)

    entry.exchange.head(ResponseHead(201, b"Created", ((b"X-Id", b"7"),), 4))
    entry.exchange.write(b"do")
    entry.exchange.write(b"ne")
    entry.exchange.end()
    pair.pump()
    assert responder.response == ResponseHead(201, b"Created", ((b"X-Id", b"7"),), 4)
    assert responder.body == b"done" and responder.ended and responder.error is None
    assert responder.producer is exchange  # no complete(): head, write, end, with a producer
    # Nothing left behind on either side.
    assert pair.client.exchanges == {} and pair.server.exchanges == {}
    assert pair.client.connection.active_streams == pair.server.connection.active_streams == 0
    assert frames_of(pair.from_client, Reset) == frames_of(pair.from_server, Reset) == []


def test_only_a_response_that_flows_gives_the_source_a_producer() -> None:
    """A whole response (one frame, to a responder with complete) has nothing to pause: no
    producer.  A response whose body follows its head gives it before the head, and the
    source's pause holds the peer's body back (no credit returned)."""
    pair = Pair()
    whole = CompletingResponder()
    exchange = pair.client.open(RequestHead(b"GET", b"/", b"web.shop", (), 0, "10.0.0.9"),
                                "shop/web", 80, None, whole)
    pair.pump()
    pair.inbound().exchange.complete(ResponseHead(200, b"OK", (), 2), b"ok")
    pair.pump()
    assert whole.body == b"ok" and whole.ended and whole.producer is None
    pair.server_handler.inbounds.clear()
    flowing = CompletingResponder()
    seen: list[object] = []
    flowing.on_head = lambda head: seen.append(flowing.producer)
    exchange = pair.client.open(RequestHead(b"GET", b"/", b"web.shop", (), 0, "10.0.0.9"),
                                "shop/web", 80, None, flowing)
    pair.pump()
    served = pair.inbound().exchange
    served.head(ResponseHead(200, b"OK", (), None))
    pair.pump()
    assert seen == [exchange] and not flowing.ended
    exchange.pauseProducing()  # the client is slow: the peer's body waits for credit
    body = b"b" * (2 * MAX_WINDOW)
    for offset in range(0, len(body), 16_384):
        served.write(body[offset : offset + 16_384])
        pair.pump()
    assert len(flowing.body) <= MAX_WINDOW
    exchange.resumeProducing()
    pair.pump()
    served.end()
    pair.pump()
    assert flowing.body == body and flowing.ended


def test_request_without_body_is_one_frame() -> None:
    pair = Pair()
    before = len(pair.from_client)
    pair.open(content_length=0, endpoint=None, method=b"GET")
    pair.pump()
    [request] = pair.from_client[before:]
    assert isinstance(request, Request) and request.end and request.endpoint is None
    entry = pair.inbound()
    assert entry.body.ended and entry.body.chunks == []
    assert entry.body.producer is None  # nothing to pause: the target gets no producer


def test_only_an_inbound_request_with_a_body_gives_its_target_a_producer() -> None:
    """A bodiless request (its head frame ends it) registers no producer with its target;
    one with a body does, and the target's pause holds the peer's body back."""
    pair = Pair()
    pair.open(content_length=0, method=b"GET")
    pair.pump()
    get = pair.inbound()
    assert get.body.ended and get.body.producer is None
    pair.server_handler.inbounds.clear()
    exchange, _ = pair.open(content_length=4)
    pair.pump()
    post = pair.inbound()
    assert post.body.producer is post.exchange and not post.body.ended
    post.exchange.pauseProducing()  # the target is full: the body waits on the link side
    exchange.write(b"body")
    exchange.end()
    pair.pump()
    assert post.body.chunks == [] and not post.body.ended
    post.exchange.resumeProducing()
    assert post.body.data == b"body" and post.body.ended


@implementer(IHeadEndedBody)
class _HeadEndedBody(RecordingBody):
    """A target's body that takes a bodiless head as the whole request (as the guard's)."""


def test_a_get_is_released_whether_answered_while_routed_or_after() -> None:
    """A bodiless request to a body that takes its head as all is over once routed: the
    stream is forgotten (and the exchange lets the target's body go) when the response
    ends, whether the target answered inside the routing or in a later turn."""
    pair = Pair()

    def answer_now(entry: Inbound) -> None:
        entry.body = _HeadEndedBody()
        entry.exchange.complete(ResponseHead(204, b"", (), 0), b"")

    pair.server_handler.on_inbound = answer_now
    _, now = pair.open(content_length=0, method=b"GET")
    pair.pump()
    first = pair.inbound()
    assert first.exchange.request_ended and first.exchange.body is None
    assert pair.server.exchanges == {} and not first.body.ended
    assert now.ended and now.status == 204

    pair.server_handler.inbounds.clear()
    pair.server_handler.on_inbound = lambda entry: setattr(entry, "body", _HeadEndedBody())
    _, later = pair.open(content_length=0, method=b"GET")
    pair.pump()
    second = pair.inbound()
    assert second.exchange.request_ended and list(pair.server.exchanges) == [
        second.exchange.sid]
    second.exchange.complete(ResponseHead(200, b"OK", (), 2), b"hi")
    pair.pump()
    assert pair.server.exchanges == {} and second.exchange.body is None
    assert later.ended and later.body == b"hi" and not second.body.ended


def test_a_bodiless_request_ends_no_body_that_took_its_head_as_all() -> None:
    """The stream's request side is over either way; only a body declaring IHeadEndedBody
    is left without its end, and only for a bodiless head."""
    pair = Pair()

    def head_ended(entry: Inbound) -> None:
        entry.body = _HeadEndedBody()

    pair.server_handler.on_inbound = head_ended
    pair.open(content_length=0, method=b"GET")
    pair.pump()
    get = pair.inbound()
    assert isinstance(get.body, _HeadEndedBody) and not get.body.ended
    assert get.exchange.request_ended and get.body.producer is None
    pair.server_handler.inbounds.clear()
    exchange, _ = pair.open(content_length=2)
    exchange.write(b"ok")
    exchange.end()
    pair.pump()
    post = pair.inbound()
    assert isinstance(post.body, _HeadEndedBody) and post.body.ended and post.body.data == b"ok"


def test_a_request_without_body_keeps_no_producer_and_ignores_more_body() -> None:
    """Its head ended it: the source's producer is not taken (a link pause does not pause
    it, and nothing points back at it), and a late write or end sends nothing."""
    pair = Pair()
    exchange, responder = pair.open(content_length=0, method=b"GET")
    producer = Producer()
    exchange.setProducer(producer)
    assert exchange.done and exchange.producer is None
    pair.client.pauseProducing()
    pair.client.resumeProducing()
    exchange.write(b"late")
    exchange.end()
    pair.pump()
    assert producer.pauses == producer.resumes == 0
    [request] = [frame for frame in pair.from_client if isinstance(frame, Request)]
    assert request.end and not [f for f in pair.from_client if isinstance(f, (Data, Reset))]
    entry = pair.inbound()
    assert entry.body.ended and entry.body.chunks == []
    entry.exchange.complete(ResponseHead(200, b"OK", (), 2), b"ok")
    pair.pump()
    assert responder.body == b"ok" and responder.ended
    assert pair.client.exchanges == {} and pair.server.exchanges == {}


def test_complete_fast_path_is_one_frame() -> None:
    pair = Pair()

    def answer(entry: Inbound) -> None:
        entry.exchange.complete(ResponseHead(200, b"OK", (), 5), b"hello")

    pair.server_handler.on_inbound = answer
    _, responder = pair.open(content_length=0, method=b"GET")
    before = len(pair.from_server)
    pair.pump()
    [response] = pair.from_server[before:]
    assert response == Response(1, True, 200, b"OK", (), 5, b"hello")
    assert responder.response == ResponseHead(200, b"OK", (), 5)
    assert responder.body == b"hello" and responder.ended
    assert pair.client.exchanges == {} and pair.server.exchanges == {}
    assert pair.client.connection.active_streams == pair.server.connection.active_streams == 0


def test_a_whole_response_in_one_reactor_turn_is_one_frame() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    entry = pair.inbound()
    before = len(pair.from_server)
    entry.exchange.head(ResponseHead(200, b"OK", (), 4))
    entry.exchange.write(b"ab")
    entry.exchange.write(b"cd")
    entry.exchange.end()
    pair.pump()
    assert pair.from_server[before:] == [Response(1, True, 200, b"OK", (), 4, b"abcd")]
    assert responder.body == b"abcd" and responder.ended
    assert pair.server.exchanges == {} and pair.server.connection.active_streams == 0


def test_a_head_alone_goes_out_at_the_end_of_the_reactor_turn() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    entry = pair.inbound()
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    assert pair.server_transport.value() == b""  # held until the turn ends
    pair.pump()
    assert responder.response == ResponseHead(200, b"OK", (), None)
    entry.exchange.write(b"streamed")
    pair.pump()
    assert responder.body == b"streamed"
    assert frames_of(pair.from_server, Data) == [Data(1, False, b"streamed")]


def test_a_large_write_sends_the_held_head_at_once() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    entry = pair.inbound()
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    entry.exchange.write(b"s" * 1000)
    entry.exchange.write(b"l" * 20_000)
    # Beyond the cork limit: the head leaves with what was held, not with the rest of the
    # body (which follows in DATA frames), at the end of this turn.
    pair.clock.advance(0)
    [head, *_] = FrameDecoder(Limits()).feed(pair.server_transport.value())
    assert isinstance(head, Response) and head.body == b"s" * 1000 and not head.end
    pair.pump()
    assert responder.body == b"s" * 1000 + b"l" * 20_000


def test_a_held_body_beyond_a_small_window_is_sent_within_it() -> None:
    pair = Pair(limits=Limits(initial_window=4096, receive_budget=0))
    _, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    entry = pair.inbound()
    body = bytes(range(256)) * 40  # 10 KiB: under the cork limit, over the window
    entry.exchange.head(ResponseHead(200, b"OK", (), len(body)))
    entry.exchange.write(body)
    entry.exchange.end()
    pair.pump()
    assert responder.body == body and responder.ended
    assert pair.largest_body_flight <= 4096
    assert not pair.client.closed and not pair.server.closed


def test_complete_falls_back_to_streaming_beyond_the_window() -> None:
    pair = Pair()
    big = bytes(range(256)) * ((WINDOW + 1000) // 256 + 1)
    pair.server_handler.on_inbound = (
        lambda entry: entry.exchange.complete(ResponseHead(200, b"OK", (), len(big)), big)
    )
    _, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    assert responder.body == big and responder.ended
    [head] = frames_of(pair.from_server, Response)
    assert head.body == b"" and not head.end
    assert all(len(d.data) <= CHUNK for d in frames_of(pair.from_server, Data))


def test_complete_while_the_transport_is_paused_holds_a_large_body() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    pair.server.pauseProducing()
    big = b"b" * (100 * 1024)
    pair.inbound().exchange.complete(ResponseHead(200, b"OK", (), len(big)), big)
    pair.pump()
    # The head may go; the body waits for the transport (at most a small corked part).
    assert responder.response is not None
    assert len(responder.body) <= 16 * 1024 and not responder.ended
    pair.server.resumeProducing()
    pair.pump()
    assert responder.body == big and responder.ended


def test_large_request_body_crosses_in_pieces_bounded_by_the_window() -> None:
    pair = Pair()
    exchange, _ = pair.open()
    source = Producer()
    exchange.setProducer(source)
    body = bytes(range(251)) * (4 * WINDOW // 251)
    exchange.write(body)
    pair.clock.advance(0)  # the end of the turn: what the link coalesced is written
    # Before any credit came back: exactly one window is on the wire, the rest waits and
    # the source is paused.
    sent = FrameDecoder(Limits()).feed(pair.client_transport.value())
    assert sum(len(d.data) for d in frames_of(sent, Data)) == WINDOW
    assert source.paused
    exchange.end()
    pair.pump()
    entry = pair.inbound()
    assert entry.body.data == body and entry.body.ended
    data_frames = frames_of(pair.from_client, Data)
    assert all(len(d.data) <= CHUNK for d in data_frames) and len(data_frames) > len(body) // CHUNK
    # The stream's credit grew as it consumed, never beyond its maximum.
    assert pair.largest_body_flight <= MAX_WINDOW
    assert not source.paused and source.resumes == 1
    windows = frames_of(pair.from_server, Window)
    assert windows and all(w.increment >= WINDOW // 2 for w in windows)


def test_slow_source_client_pauses_the_response() -> None:
    """The client behind the source is slow: it pauses the exchange, no credit goes back,
    and the target's producer is paused once the window and the bounded queue are full."""
    pair = Pair()
    exchange, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    entry = pair.inbound()
    target = Producer()
    entry.exchange.setProducer(target)
    exchange.pauseProducing()  # what the source does when its client is slow
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    body = b"r" * (WINDOW + PENDING_BOUND + 1000)
    for offset in range(0, len(body), 10_000):
        entry.exchange.write(body[offset : offset + 10_000])
        pair.pump()
    assert len(responder.body) == WINDOW
    assert target.paused
    assert frames_of(pair.from_client, Window) == []
    exchange.resumeProducing()
    pair.pump()
    assert responder.body == body
    assert not target.paused
    entry.exchange.end()
    pair.pump()
    assert responder.ended


def test_a_stream_out_of_credit_pauses_its_producer_before_the_queue_bound() -> None:
    """Waiting for the peer's credit, a stream holds the write that found no credit, not
    the queue's 64 KiB bound more (issue 15: with small windows the waiting moved to the
    sending edge's queues)."""
    pair = Pair()
    exchange, responder = pair.open(content_length=0, method=b"GET")
    pair.pump()
    entry = pair.inbound()
    target = Producer()
    entry.exchange.setProducer(target)
    exchange.pauseProducing()  # the client stops reading: no credit comes back
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    for _ in range(20):
        if target.paused:
            break
        entry.exchange.write(b"r" * 10_000)
        pair.pump()
    assert target.paused
    assert len(responder.body) == WINDOW
    assert 0 < entry.exchange.queued <= 10_000
    exchange.resumeProducing()
    pair.pump()
    assert not target.paused and entry.exchange.queued == 0


def test_slow_target_pauses_the_request_source() -> None:
    pair = Pair()
    exchange, _ = pair.open()
    source = Producer()
    exchange.setProducer(source)
    exchange.write(b"x")
    pair.pump()
    entry = pair.inbound()
    assert entry.body.producer is entry.exchange
    entry.exchange.pauseProducing()  # the local target cannot take more
    granted = len(frames_of(pair.from_server, Window))  # for the byte it took
    body = b"q" * (2 * MAX_WINDOW)
    for offset in range(0, len(body), 16_384):
        if not source.paused:
            exchange.write(body[offset : offset + 16_384])
        pair.pump()
    assert source.paused
    assert len(entry.body.data) <= WINDOW
    held = sum(len(piece) for piece in entry.exchange.held or ())
    assert 0 < held <= MAX_WINDOW  # within the credit granted, no more
    assert len(frames_of(pair.from_server, Window)) == granted
    entry.exchange.resumeProducing()
    pair.pump()
    assert not source.paused
    assert len(frames_of(pair.from_server, Window)) > granted


def test_transport_pause_pauses_stream_producers() -> None:
    pair = Pair()
    exchange, responder = pair.open()
    source = Producer()
    exchange.setProducer(source)
    pair.pump()
    entry = pair.inbound()
    target = Producer()
    entry.exchange.setProducer(target)
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    pair.pump()

    pair.server.pauseProducing()  # the server's socket buffer is full
    # Lazily: a stream's producer is paused when it tries to send on the paused link.
    assert not target.paused and not source.paused
    entry.exchange.write(b"held")
    pair.pump()
    assert target.paused and not source.paused
    assert responder.body == b""
    pair.client.pauseProducing()
    exchange.write(b"queued")
    assert source.paused
    pair.pump()
    assert entry.body.data == b""

    pair.server.resumeProducing()
    pair.client.resumeProducing()
    pair.pump()
    assert not target.paused and not source.paused
    assert responder.body == b"held" and entry.body.data == b"queued"


def test_a_paused_stream_does_not_block_the_others() -> None:
    pair = Pair()
    slow_exchange, slow = pair.open(content_length=0)
    _, fast = pair.open(content_length=0)
    pair.pump()
    slow_entry, fast_entry = pair.server_handler.inbounds
    slow_exchange.pauseProducing()
    big = b"s" * (3 * WINDOW)
    for entry in (slow_entry, fast_entry):
        entry.exchange.setProducer(Producer())
        entry.exchange.head(ResponseHead(200, b"OK", (), len(big)))
        entry.exchange.write(big)
        entry.exchange.end()
    pair.pump()
    assert fast.body == big and fast.ended
    assert len(slow.body) == WINDOW and not slow.ended
    slow_exchange.resumeProducing()
    pair.pump()
    assert slow.body == big and slow.ended


class _StallingResponder(RecordingResponder):
    """A source whose client reads ``reads`` bytes, then stops (its socket buffer is full):
    it pauses the exchange from within the write that crossed the mark, as a front does."""

    def __init__(self, reads: int) -> None:
        super().__init__()
        self.reads = reads

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.body) >= self.reads:
            self.reads = 1 << 62
            self.producer.pauseProducing()


def test_thirty_two_stalled_responses_hold_the_budget_not_a_window_each() -> None:
    """Issue 15: 32 responses over one link whose clients read 16 KiB and stall.  What
    the link's node then holds beyond what the clients read is what the peer may send
    before it learns of the pauses: with the defaults at most the receive budget (2 MiB)
    plus an initial window (64 KiB) per stream, 4 MiB; it was 32 × 496 KiB (15.5 MiB)."""
    pair = Pair()
    reads = 16 * 1024
    opened = []
    for _ in range(32):
        responder = _StallingResponder(reads)
        head = RequestHead(b"GET", b"/big", b"web.shop", (), 0, client="10.0.0.9")
        opened.append(pair.client.open(head, "shop/web", 80, None, responder))
    pair.pump()
    targets = []
    for entry in pair.server_handler.inbounds:
        target = Producer()
        targets.append(target)
        entry.exchange.setProducer(target)
        entry.exchange.head(ResponseHead(200, b"OK", (), None))
    chunk = b"p" * (CHUNK // 2)
    for _ in range(1000):
        for entry, target in zip(pair.server_handler.inbounds, targets, strict=True):
            if not target.paused:
                entry.exchange.write(chunk)
        pair.pump()
        if all(target.paused for target in targets):
            break
    assert all(target.paused for target in targets)
    responders = [exchange.responder for exchange in opened]
    assert all(len(r.body) >= reads for r in responders)  # type: ignore[attr-defined]
    held = sum(len(r.body) - reads for r in responders)  # type: ignore[attr-defined]
    limits = Limits()
    assert held <= limits.receive_budget + 32 * limits.initial_window


def test_streams_that_grew_then_stalled_do_not_starve_a_late_one() -> None:
    """Three responses grow their credit to the maximum, then their clients stall with
    the link's budget in their hands: a fourth response still crosses whole, on the
    credit every stream keeps, and the link never holds more than the budget allows."""
    limits = Limits(initial_window=WINDOW, max_window=MAX_WINDOW, receive_budget=2 * MAX_WINDOW)
    pair = Pair(limits=limits)
    opened = [pair.open(content_length=0, method=b"GET") for _ in range(3)]
    pair.pump()
    chunk = b"g" * (CHUNK // 2)
    targets = []
    for entry in pair.server_handler.inbounds:
        target = Producer()
        targets.append(target)
        entry.exchange.setProducer(target)
        entry.exchange.head(ResponseHead(200, b"OK", (), None))
    for entry in pair.server_handler.inbounds:
        for _ in range(2 * MAX_WINDOW // len(chunk)):  # grows to the maximum
            entry.exchange.write(chunk)
            pair.pump()
    assert pair.client.connection._extra > MAX_WINDOW  # most of the budget
    for exchange, _ in opened:
        exchange.pauseProducing()  # the clients stop reading
    for _ in range(100):
        for entry, target in zip(pair.server_handler.inbounds, targets, strict=True):
            if not target.paused:
                entry.exchange.write(chunk)
        pair.pump()
        if all(target.paused for target in targets):
            break
    assert all(target.paused for target in targets)
    _late_exchange, late = pair.open(content_length=0, method=b"GET")
    pair.pump()
    late_entry = pair.server_handler.inbounds[-1]
    late_target = Producer()
    late_entry.exchange.setProducer(late_target)
    late_entry.exchange.head(ResponseHead(200, b"OK", (), None))
    body = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    offset = 0
    for _ in range(10_000):
        if offset >= len(body):
            break
        if not late_target.paused:
            late_entry.exchange.write(body[offset : offset + len(chunk)])
            offset += len(chunk)
        pair.pump()
        credit = pair.client.connection.receive_credit
        assert credit <= limits.receive_budget + 4 * limits.initial_window
    late_entry.exchange.end()
    pair.pump()
    assert late.body == body and late.ended
    assert not any(responder.ended for _, responder in opened)
    # The stalled clients read again: everything they were sent comes through.
    for (exchange, responder), entry in zip(opened, pair.server_handler.inbounds, strict=False):
        exchange.resumeProducing()
        entry.exchange.end()
        pair.pump()
        assert responder.ended and len(responder.body) % len(chunk) == 0


def test_streams_beyond_the_peers_limit_are_refused_as_overloaded() -> None:
    pair = Pair(limits=Limits(max_streams=1))
    _, first = pair.open(content_length=0)
    _, second = pair.open(content_length=0)
    pair.pump()
    assert len(pair.server_handler.inbounds) == 1
    error = second.error
    assert error is not None
    assert error.reason is Reason.overloaded and error.status == 503
    assert first.error is None and not pair.client.closed and not pair.server.closed
    assert pair.client.exchanges.keys() == {1}


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(Reason), ids=[r.code for r in Reason])
def test_reset_from_the_peer_fails_the_responder_with_its_reason(reason: Reason) -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0)
    pair.pump()
    pair.inbound().exchange.fail(MeshError(reason, "it went wrong"))
    pair.pump()
    error = responder.error
    assert error is not None
    assert error.reason is reason and error.detail == "it went wrong"
    assert responder.response is None and not responder.ended
    assert pair.client.exchanges == {} and pair.server.exchanges == {}
    assert pair.client.connection.active_streams == pair.server.connection.active_streams == 0


def test_failure_after_the_head_went_out_fails_the_responder() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0)
    pair.pump()
    entry = pair.inbound()
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    entry.exchange.write(b"partial")
    pair.pump()
    entry.exchange.fail(MeshError(Reason.upstream_lost, "pod died"))
    pair.pump()
    assert responder.response is not None and responder.body == b"partial" and not responder.ended
    assert responder.error is not None and responder.error.reason == Reason.upstream_lost


def test_failure_before_the_head_went_out_is_a_clean_error() -> None:
    """A head still held (corked) in the same reactor turn is dropped with the failure:
    the source can still answer with an error page instead of a truncated response."""
    pair = Pair()
    _, responder = pair.open(content_length=0)
    pair.pump()
    entry = pair.inbound()
    entry.exchange.head(ResponseHead(200, b"OK", (), None))
    entry.exchange.write(b"partial")
    entry.exchange.fail(MeshError(Reason.upstream_lost, "pod died"))
    pair.pump()
    assert responder.response is None and responder.body == b""
    assert responder.error is not None and responder.error.reason == Reason.upstream_lost
    assert frames_of(pair.from_server, Response) == []


def test_unknown_reset_code_maps_to_upstream_lost() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0)
    pair.pump()
    sid = pair.inbound().request.stream
    pair.client.dataReceived(pair.server.connection.send_reset(sid, "martian", "?"))
    assert responder.error is not None and responder.error.reason == Reason.upstream_lost


def test_inbound_mesh_error_resets_the_stream_with_its_reason() -> None:
    pair = Pair()

    def refuse(entry: Inbound) -> None:
        raise MeshError(Reason.no_endpoint, "no ready endpoint of shop/web")

    pair.server_handler.on_inbound = refuse
    exchange, responder = pair.open()
    exchange.write(b"body that nobody reads")
    pair.pump()
    error = responder.error
    assert error is not None
    assert error.reason is Reason.no_endpoint and "shop/web" in error.detail
    assert pair.server.exchanges == {} and pair.server.connection.active_streams == 0
    # The rest of the body is dropped quietly; the link stays up.
    exchange.write(b"more")
    exchange.end()
    pair.pump()
    assert not pair.client.closed and not pair.server.closed


def test_target_stops_producing_resets_the_stream() -> None:
    pair = Pair()
    _, responder = pair.open(content_length=0)
    pair.pump()
    pair.inbound().exchange.stopProducing()
    pair.pump()
    assert responder.error is not None and responder.error.reason == Reason.upstream_lost


def test_source_abort_sends_reset() -> None:
    pair = Pair()
    exchange, responder = pair.open()
    exchange.write(b"start")
    pair.pump()
    exchange.abort("client went away")
    assert pair.client.exchanges == {}
    pair.pump()
    [reset] = frames_of(pair.from_client, Reset)
    assert (reset.code, reset.detail) == ("cancelled", "client went away")
    entry = pair.inbound()
    assert entry.body.aborted == "peer reset: cancelled"
    assert pair.server.exchanges == {} and pair.server.connection.active_streams == 0
    assert responder.error is None  # the source gave up; nobody to tell
    # A late answer from the target goes nowhere and breaks nothing.
    entry.exchange.complete(ResponseHead(200, b"OK", (), 0), b"")
    pair.pump()
    assert responder.response is None and not pair.client.closed


def test_source_stops_consuming_aborts_the_exchange() -> None:
    pair = Pair()
    exchange, _ = pair.open()
    pair.pump()
    exchange.stopProducing()
    pair.pump()
    assert pair.inbound().body.aborted == "peer reset: cancelled"


def test_response_before_the_request_ends_cancels_the_rest_of_the_request() -> None:
    pair = Pair()
    exchange, responder = pair.open()
    source = Producer()
    exchange.setProducer(source)
    exchange.write(b"x" * 100)
    pair.pump()
    pair.inbound().exchange.complete(ResponseHead(413, b"Payload Too Large", (), 0), b"")
    pair.pump()
    assert responder.ended
    [reset] = frames_of(pair.from_client, Reset)
    assert reset.code == "cancelled"
    exchange.write(b"ignored")  # the source has not noticed yet
    exchange.end()
    pair.pump()
    assert len(pair.inbound().body.data) == 100
    assert pair.client.connection.active_streams == pair.server.connection.active_streams == 0


def test_link_lost_fails_pending_exchanges() -> None:
    pair = Pair()
    _, first = pair.open()
    _, second = pair.open(content_length=0)
    pair.pump()
    bodies = [entry.body for entry in pair.server_handler.inbounds]
    lost = Failure(ConnectionLost("tunnel cut"))
    why = lost.getErrorMessage()
    pair.client.connectionLost(lost)
    pair.server.connectionLost(lost)
    for responder in (first, second):
        error = responder.error
        assert error is not None
        assert error.reason is Reason.peer_unavailable
        assert "router" in error.detail and "tunnel cut" in error.detail
    assert [body.aborted for body in bodies] == [f"link lost: {why}"] * 2
    assert pair.client_handler.lost == [why] and pair.server_handler.lost == [why]
    assert pair.client.exchanges == {} and pair.client.closed
    # Only once, whatever comes after.
    pair.client.connectionLost(Failure(ConnectionLost("again")))
    pair.client.dataReceived(b"\x00")
    assert pair.client_handler.lost == [why] and first.error is not None


def test_finished_exchanges_are_not_failed_when_the_link_goes() -> None:
    pair = Pair()
    pair.server_handler.on_inbound = lambda e: e.exchange.complete(
        ResponseHead(204, b"", (), 0), b"")
    _, responder = pair.open(content_length=0)
    pair.pump()
    pair.client.connectionLost(Failure(ConnectionLost()))
    assert responder.ended and responder.error is None


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00\x00\x02\xc1\xc1", b"\xff\xff\xff\xff\x94\x02", b"\x00\x00\x00\x03\x92\x06\xa1"],
)
def test_protocol_garbage_closes_the_link(garbage: bytes) -> None:
    pair = Pair()
    _, responder = pair.open()
    pair.pump()
    with capturedLogs() as events:
        pair.client.dataReceived(garbage)
        pair.client.connectionLost(Failure(ConnectionLost("aborted")))  # what the abort leads to
    assert pair.client.closed and pair.client_transport.disconnecting
    assert len(pair.client_handler.lost) == 1 and pair.client_handler.lost[0].startswith(
        "protocol error")
    assert responder.error is not None and responder.error.reason == Reason.peer_unavailable
    # One clear line, no traceback.
    assert len(events) == 1
    assert events[0]["log_level"] == LogLevel.warn and "log_failure" not in events[0]
    assert events[0]["peer"] == "router"


def test_protocol_violation_by_the_peer_closes_the_link() -> None:
    pair = Pair()
    # A well-formed frame for a stream that never existed.
    pair.client.dataReceived(pair.server.connection.send_data(99, b"x", False))
    assert pair.client.closed and pair.client_handler.lost[0].startswith("protocol error")


def test_control_frames_reach_the_handler() -> None:
    pair = Pair()
    pair.server.send_control(encode_catalog(3, "snapshot", {"nodes": []}))
    pair.client.send_control(encode_ack(3))
    pair.server.send_control(encode_goaway("draining"))
    pair.pump()
    assert [type(f).__name__ for f in pair.client_handler.controls] == ["CatalogPush", "GoAway"]
    push = pair.client_handler.controls[0]
    assert isinstance(push, CatalogPush) and push.payload == {"nodes": []}
    assert [type(f).__name__ for f in pair.server_handler.controls] == ["Ack"]


def test_a_bug_in_one_exchange_does_not_take_the_link_down() -> None:
    pair = Pair()
    _, broken = pair.open(content_length=0)
    _, healthy = pair.open(content_length=0)
    pair.pump()
    first, second = pair.server_handler.inbounds

    def explode(head: ResponseHead) -> None:
        raise RuntimeError("bug in a source")

    broken.head = explode  # type: ignore[method-assign]
    with capturedLogs() as events:
        first.exchange.complete(ResponseHead(200, b"OK", (), 0), b"")
        second.exchange.complete(ResponseHead(200, b"OK", (), 0), b"")
        pair.pump()
    assert healthy.ended and not pair.client.closed
    assert any("log_failure" in e for e in events)


def test_inbound_bug_still_answers_the_peer() -> None:
    pair = Pair()

    def explode(entry: Inbound) -> None:
        raise RuntimeError("bug in a role")

    pair.server_handler.on_inbound = explode
    _, responder = pair.open(content_length=0)
    pair.pump()
    assert responder.error is not None and responder.error.status == 502
    assert pair.server.exchanges == {} and pair.server.connection.active_streams == 0


def test_early_response_then_peer_reset_aborts_the_request_body() -> None:
    pair = Pair()
    exchange, responder = pair.open()
    exchange.write(b"x" * 100)
    pair.pump()
    entry = pair.inbound()
    entry.exchange.complete(ResponseHead(413, b"Payload Too Large", (), 0), b"")
    pair.pump()
    assert responder.ended
    assert entry.body.ended or entry.body.aborted is not None


def test_running_out_of_stream_ids_spares_the_exchanges_in_flight() -> None:
    pair = Pair()
    pair.client.connection._next_local = (1 << 31) - 1  # the last odd id a peer accepts
    _, last = pair.open(content_length=0)
    pair.pump()
    _, beyond = pair.open(content_length=0)
    pair.pump()
    assert not pair.server.closed
    pair.inbound().exchange.complete(ResponseHead(200, b"OK", (), 0), b"")
    pair.pump()
    assert last.ended and last.error is None
    assert beyond.error is not None and beyond.error.status in (502, 503)


def test_open_after_the_link_closed() -> None:
    """A closed link answers at once (502) and sends nothing."""
    pair = Pair()
    pair.client.connectionLost(Failure(ConnectionLost()))
    before = pair.client_transport.value()
    _, responder = pair.open(content_length=0)
    assert responder.error is not None and responder.error.status == 502
    assert pair.client_transport.value() == before


# --- LinkTarget -------------------------------------------------------------------------

PORT = ServicePort("http", 80, 8080)
SERVICE = Service("shop", "web", "10.96.0.10", (PORT,))
ENDPOINT = Endpoint("10.4.0.12", 8080, "edge-2")
HEAD = RequestHead(b"PUT", b"/x", b"web.shop", (), None, client="10.0.0.9")


def route(peer: str | None = "edge-2", endpoint: Endpoint | None = ENDPOINT) -> Route:
    return Route(TargetKind.hub, SERVICE, PORT, endpoint, peer)


def test_link_target_provides_itarget() -> None:
    assert verifyObject(ITarget, LinkTarget(TargetKind.hub, {}))
    assert verifyObject(ITarget, LinkTarget(TargetKind.tunnel, {}, dial=lambda peer: None))


def test_link_target_uses_the_peers_link() -> None:
    pair = Pair()
    target = LinkTarget(TargetKind.hub, {"edge-2": pair.client})
    responder = RecordingResponder()
    body = target.open(route(), HEAD, responder)
    assert isinstance(body, OutboundExchange) and responder.producer is None
    body.write(b"abc")
    body.end()
    pair.pump()
    request = pair.inbound().request
    assert (request.service, request.port, request.endpoint) == (
        "shop/web", 80, ("10.4.0.12", 8080))
    assert request.method == b"PUT" and pair.inbound().body.data == b"abc"


def test_link_target_sends_each_route_to_its_own_address() -> None:
    """The same Route again (the pipeline keeps a one-endpoint service's) and then others:
    each exchange goes where its own route says, none where the previous one went."""
    pair = Pair()
    target = LinkTarget(TargetKind.hub, {"edge-2": pair.client, "router": pair.client})
    kept = route()
    other = Endpoint("10.4.0.13", 8081, "edge-2")
    for sent in (kept, kept, route(endpoint=other), kept, route("router", None), kept):
        target.open(sent, HEAD, RecordingResponder()).end()
    pair.pump()
    assert [entry.request.endpoint for entry in pair.server_handler.inbounds] == [
        ("10.4.0.12", 8080), ("10.4.0.12", 8080), ("10.4.0.13", 8081), ("10.4.0.12", 8080),
        None, ("10.4.0.12", 8080)]


def test_link_target_without_an_endpoint_sends_no_hint() -> None:
    pair = Pair()
    LinkTarget(TargetKind.tunnel, {"router": pair.client}).open(
        route("router", None), HEAD, RecordingResponder()
    )
    pair.pump()
    assert pair.inbound().request.endpoint is None


@pytest.mark.parametrize("closed", [False, True])
def test_link_target_without_a_link(closed: bool) -> None:
    links: dict[str, EnvelopeLink] = {}
    if closed:
        pair = Pair()
        pair.client.connectionLost(Failure(ConnectionLost()))
        links["edge-2"] = pair.client
    with pytest.raises(MeshError) as caught:
        LinkTarget(TargetKind.hub, links).open(route(), HEAD, RecordingResponder())
    assert caught.value.reason is Reason.peer_unavailable and "edge-2" in caught.value.detail
    with pytest.raises(MeshError):
        LinkTarget(TargetKind.hub, links, dial=lambda peer: None).open(
            route(), HEAD, RecordingResponder())


def test_link_target_waits_for_the_dial_with_a_bounded_buffer() -> None:
    pair = Pair(limits=Limits(initial_window=128 * 1024))  # the held body fits the credit
    dialled: list[str] = []
    connecting: Deferred[EnvelopeLink] = Deferred()

    def dial(peer: str) -> Deferred[EnvelopeLink]:
        dialled.append(peer)
        return connecting

    responder = RecordingResponder()
    body = LinkTarget(TargetKind.hub, {}, dial=dial).open(route(), HEAD, responder)
    source = Producer()
    body.setProducer(source)
    body.write(b"a" * 40_000)
    assert not source.paused
    body.write(b"b" * 40_000)
    assert source.paused  # beyond the bound it holds
    body.end()
    assert dialled == ["edge-2"] and pair.client_transport.value() == b""
    connecting.callback(pair.client)
    assert not source.paused and source.resumes == 1
    pair.pump()
    entry = pair.inbound()
    assert entry.body.data == b"a" * 40_000 + b"b" * 40_000 and entry.body.ended
    entry.exchange.complete(ResponseHead(200, b"OK", (), 0), b"")
    pair.pump()
    assert responder.ended and not source.paused
    # Later writes go straight to the exchange.
    assert responder.producer is not None


def test_link_target_dial_failure_fails_the_responder() -> None:
    responder = RecordingResponder()
    connecting: Deferred[EnvelopeLink] = Deferred()
    body = LinkTarget(TargetKind.hub, {}, dial=lambda peer: connecting).open(
        route(), HEAD, responder)
    body.write(b"x")
    connecting.errback(ConnectionRefusedError("nope"))
    error = responder.error
    assert error is not None
    assert error.reason is Reason.peer_unavailable and "edge-2" in error.detail


def test_link_target_abort_while_dialling_opens_nothing() -> None:
    pair = Pair()
    before = len(pair.from_client)
    responder = RecordingResponder()
    connecting: Deferred[EnvelopeLink] = Deferred()
    body = LinkTarget(TargetKind.hub, {}, dial=lambda peer: connecting).open(
        route(), HEAD, responder)
    body.write(b"x")
    body.abort("client gone")
    connecting.callback(pair.client)
    pair.pump()
    assert pair.from_client[before:] == [] and pair.server_handler.inbounds == []
    assert responder.error is None


def test_link_target_already_connected_dial() -> None:
    pair = Pair()
    responder = RecordingResponder()
    body = LinkTarget(TargetKind.hub, {}, dial=lambda peer: succeed(pair.client)).open(
        route(), HEAD, responder
    )
    body.write(b"now")
    body.end()
    pair.pump()
    assert pair.inbound().body.data == b"now" and pair.inbound().body.ended


# --- HubDialer --------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connections complete (or fail) when the test says so."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[Any]]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((protocolFactory, attempt))
        return attempt


class DialerWorld:
    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.handler = Handler()
        self.made: list[str] = []
        self.proxies: list[Any] = []
        """What the transports talk to: ClientService's wrappers around our links."""
        self.dialer = HubDialer(self.clock, self.make_endpoint, self.make_link)

    def make_endpoint(self, peer: str) -> IStreamClientEndpoint | None:
        return self.endpoint if peer.startswith("edge") else None

    def make_link(self, peer: str) -> EnvelopeLink:
        self.made.append(peer)
        return make_link(self.clock, self.handler, True)

    def accept(self, index: int = -1) -> tuple[EnvelopeLink, StringTransport, EnvelopeLink]:
        """Complete a connection attempt; returns our link, its transport and the peer."""
        factory, attempt = self.endpoint.attempts[index]
        proxy = factory.buildProtocol(IPv4Address("TCP", "192.0.2.2", 7701))
        assert proxy is not None
        self.proxies.append(proxy)
        transport = StringTransport()
        connect(proxy, transport)
        attempt.callback(proxy)
        peer = EnvelopeLink(self.clock, Handler(), node="edge-2", role="edge", client=False)
        connect(peer, StringTransport())
        self.clock.advance(0)  # the end of the turn: both hellos are written
        return proxy._protocol, transport, peer  # type: ignore[attr-defined]  # ClientService wraps it


def test_hub_dialer_unknown_peer() -> None:
    world = DialerWorld()
    assert world.dialer("cloud-1") is None
    assert world.endpoint.attempts == []


def test_hub_dialer_fires_after_the_hello() -> None:
    world = DialerWorld()
    waiting = world.dialer("edge-2")
    assert waiting is not None and len(world.endpoint.attempts) == 1
    got: list[EnvelopeLink] = []
    waiting.addCallback(got.append)
    link, transport, peer = world.accept()
    assert world.made == ["edge-2"] and got == []  # connected, but no hello yet
    link.dataReceived(peer.transport.value())  # type: ignore[union-attr]
    assert got == [link] and link.peer is not None and link.peer.node == "edge-2"
    assert transport.value().startswith(b"\x00")  # our hello went out
    # One persistent connection per peer: the next exchange reuses it.
    again = world.dialer("edge-2")
    assert again is not None and again.result is link
    assert len(world.endpoint.attempts) == 1
    world.dialer.stop()


def test_hub_dialer_failure_fails_the_waiter() -> None:
    world = DialerWorld()
    waiting = world.dialer("edge-2")
    assert waiting is not None
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    world.endpoint.attempts[0][1].errback(ConnectionRefusedError())
    assert len(failures) == 1 and failures[0].check(ConnectionRefusedError)
    # It keeps trying in the background, with backoff (0.2 s x 1.5, plus up to 1 s jitter).
    world.clock.advance(0.2)
    assert len(world.endpoint.attempts) == 1
    world.clock.advance(2.0)
    assert len(world.endpoint.attempts) == 2
    world.dialer.stop()


def test_hub_link_lost_during_its_handshake() -> None:
    """The waiter gets the link, closed (ClientService has no transition for a failed
    prepareConnection followed by the disconnect); LinkTarget checks ``closed``."""
    world = DialerWorld()
    waiting = world.dialer("edge-2")
    assert waiting is not None
    got: list[EnvelopeLink] = []
    waiting.addCallback(got.append)
    link, _, _ = world.accept()
    world.clock.advance(link.handshake_timeout)
    assert got == [link] and link.closed
    # What the transport does once the link has aborted it: no NoTransition, a retry.
    world.proxies[-1].connectionLost(Failure(ConnectionLost("aborted")))
    world.clock.advance(12.0)
    assert len(world.endpoint.attempts) == 2
    world.dialer.stop()


def test_link_target_fails_when_the_dialled_link_was_lost_in_its_hello() -> None:
    world = DialerWorld()
    responder = RecordingResponder()
    target = LinkTarget(TargetKind.hub, {}, dial=world.dialer)
    body = target.open(route(), HEAD, responder)
    body.write(b"x")
    link, _, _ = world.accept()
    world.clock.advance(link.handshake_timeout)
    error = responder.error
    assert error is not None
    assert error.reason is Reason.peer_unavailable and "edge-2" in error.detail
    world.dialer.stop()


def test_hub_dialer_fails_fast_while_the_peer_is_down() -> None:
    world = DialerWorld()
    first = world.dialer("edge-2")
    assert first is not None
    first.addErrback(lambda _: None)
    world.endpoint.attempts[0][1].errback(ConnectionRefusedError())
    # Until a connection succeeds again, every request fails at once, without a new
    # attempt of its own (ClientService retries in the background).
    failures: list[Failure] = []
    for _ in range(3):
        again = world.dialer("edge-2")
        assert again is not None
        again.addErrback(failures.append)
    assert len(failures) == 3 and len(world.endpoint.attempts) == 1
    # What routing reads to relay through the router meanwhile.
    assert world.dialer.unreachable == {"edge-2"}
    assert world.dialer.paths() == {"edge-2": "relayed"}
    world.clock.advance(12.0)
    link, _, peer = world.accept()
    assert world.dialer.unreachable == set()
    link.dataReceived(peer.transport.value())  # type: ignore[union-attr]
    back = world.dialer("edge-2")
    assert back is not None and back.result is link
    assert world.dialer.paths() == {"edge-2": "direct"}
    world.dialer.stop()
    assert world.dialer.unreachable == set() and world.dialer.paths() == {}


def test_hub_dialer_stop() -> None:
    world = DialerWorld()
    world.dialer("edge-2")
    world.dialer("edge-3")
    assert set(world.dialer.services) == {"edge-2", "edge-3"}
    for attempt in world.endpoint.attempts:
        attempt[1].addErrback(lambda _: None)
    stopped = world.dialer.stop()
    assert world.dialer.services == {}
    assert isinstance(stopped, Deferred)
    # Stopping cancelled the pending attempts.
    assert all(attempt.called for _, attempt in world.endpoint.attempts)


# -- frames coalesced per reactor turn ---------------------------------------------------


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_the_frames_of_one_turn_leave_in_one_write() -> None:
    pair = Pair()
    counting = CountingTransport()
    pair.client.transport = counting
    opened = [pair.open(content_length=0, method=b"GET") for _ in range(5)]
    # Nothing is written while the turn goes on...
    assert counting.value() == b"" and counting.writes == 0
    pair.clock.advance(0)
    # ...then all five requests leave together, in the order they were opened.
    frames = FrameDecoder(Limits()).feed(counting.value())
    assert counting.writes == 1
    assert [f.stream for f in frames_of(frames, Request)] == [ex.sid for ex, _ in opened]


def test_a_bulk_body_write_leaves_with_what_the_turn_held_at_its_end() -> None:
    pair = Pair(limits=Limits(initial_window=128 * 1024))  # credit for the whole write
    exchange, _ = pair.open(content_length=None)
    body = b"x" * 100_000
    exchange.write(body)  # large: not copied into the turn's buffer
    assert pair.client._out[-1] is body  # held as it is, no copy
    assert pair.client_transport.value() == b""
    pair.clock.advance(0)  # the end of the turn: the request head, then the body
    frames = FrameDecoder(Limits()).feed(pair.client_transport.value())
    assert [type(f) for f in frames] == [Request, Data]
    assert frames_of(frames, Data)[0].data == body


def test_a_bulk_view_of_another_buffer_leaves_at_once() -> None:
    """A view of a buffer that is not bytes (a pooled read's, reused by the next read) is
    never held past the write."""
    pair = Pair(limits=Limits(initial_window=128 * 1024))
    pair.open(content_length=None)
    pair.pump()
    buffer = bytearray(b"y" * 50_000)
    pair.client.write_parts(b"head", memoryview(buffer))
    assert pair.client_transport.value() == b"head" + b"y" * 50_000
    buffer[:] = b"z" * 50_000
    pair.clock.advance(0)
    assert pair.client_transport.value() == b"head" + b"y" * 50_000


def test_bulk_writes_past_the_turns_direct_budget_go_to_the_transport_in_order() -> None:
    pair = Pair(limits=Limits(initial_window=1024 * 1024, max_window=1024 * 1024))
    exchange, _ = pair.open(content_length=None)
    pieces = [bytes([65 + n]) * 60_000 for n in range(5)]  # 300 000: past 128 KiB a turn
    for piece in pieces:
        exchange.write(piece)
    pair.clock.advance(0)
    frames = FrameDecoder(Limits()).feed(pair.client_transport.value())
    assert b"".join(f.data for f in frames_of(frames, Data)) == b"".join(pieces)


def test_a_held_frame_is_written_before_a_drained_link_closes() -> None:
    pair = Pair()
    pair.open(content_length=0, method=b"GET")
    pair.pump()
    pair.server.draining = True
    entry = pair.inbound()
    entry.exchange.complete(ResponseHead(200, b"OK", (), 2), b"ok")
    # The last exchange is over: the link closes, but not before its response is written.
    assert pair.server_transport.disconnecting
    [response] = FrameDecoder(Limits()).feed(pair.server_transport.value())
    assert isinstance(response, Response) and response.body == b"ok" and response.end


def test_finished_exchanges_are_freed_without_the_cyclic_gc() -> None:
    pair = Pair()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        exchange, responder = pair.open(content_length=0, method=b"GET")
        pair.pump()
        entry = pair.server_handler.inbounds.pop()
        # The target takes the response's producer role, as the pod client does.
        entry.exchange.setProducer(entry.body)  # type: ignore[arg-type]
        entry.exchange.complete(ResponseHead(200, b"OK", (), 2), b"ok")
        pair.pump()
        assert responder.body == b"ok" and responder.ended
        responder.producer = None  # as the front lets go of it once its exchange is done
        outbound, inbound = weakref.ref(exchange), weakref.ref(entry.exchange)
        del exchange, entry, responder
        assert outbound() is None and inbound() is None
    finally:
        if was_enabled:
            gc.enable()


# --- credit vs. a paused target (issue 11, item 1) ----------------------------------------


def _pod_behind_the_link(pair: Pair) -> tuple[MemoryReactorClock, list[Any]]:
    """The server side routes every inbound exchange to a real pod client whose
    connection is not made yet (no pooled connection: the origin closes)."""
    from edgemesh.transports._upstream import HTTPUpstreamTarget

    clock = MemoryReactorClock()
    pod = HTTPUpstreamTarget(clock, TargetKind.service_bus)
    opened: list[Any] = []

    def inbound(link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        body = pod.open(route(None, ENDPOINT), RequestHead(
            request.method, request.path, request.authority, request.headers,
            request.content_length), responder)
        opened.append(body)
        return body

    pair.server_handler.inbound = inbound  # type: ignore[method-assign]
    return clock, opened


@pytest.mark.parametrize("size", [260 * 1024, WINDOW, 4 * WINDOW])
def test_a_peer_within_its_credit_is_never_refused_by_a_pod_still_connecting(size: int) -> None:
    """The peer may lawfully send a whole window (512 KiB) before the pod client's pause
    takes effect: the stream holds it (bounded by that credit) rather than pushing it
    into a pod client that refuses a source that keeps writing (503 overloaded)."""
    pair = Pair()
    clock, opened = _pod_behind_the_link(pair)
    exchange, responder = pair.open(content_length=size)
    source = Producer()
    exchange.setProducer(source)
    body = bytes(range(251)) * (size // 251) + b"z" * (size % 251)
    exchange.write(body)  # head and body in one write, as curl does
    exchange.end()
    pair.pump()
    assert responder.error is None
    [pod_body] = opened
    assert not pod_body.done
    # Bounded: the pod client holds its buffer, the stream at most the credit it granted.
    assert pod_body.buffered <= 64 * 1024 + CHUNK
    # Now the pod accepts: everything arrives, in order.
    host, port, factory, _timeout, _bind = clock.tcpClients[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    for _ in range(100):
        pair.pump()
        if transport.value().endswith(body[-1000:]):
            break
    sent = transport.value()
    assert sent.split(b"\r\n\r\n", 1)[1] == body
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    pair.pump()
    assert responder.error is None and responder.ended and responder.body == b"ok"


# --- trailers across a link (issue 11, item 5) --------------------------------------------


TRAILERS = ((b"X-Checksum", b"sha256=abc"), (b"Server-Timing", b"db;dur=53"))


@pytest.mark.parametrize("paused", [False, True], ids=["flowing", "target-paused"])
def test_trailer_fieldscross_the_link_both_ways(paused: bool) -> None:
    pair = Pair()
    pair.server_handler.inbound = (  # type: ignore[method-assign]
        lambda link, request, responder: bodies.append(TrailerBody()) or bodies[-1])
    bodies: list[TrailerBody] = []
    responder = TrailerResponder()
    exchange = pair.client.open(
        RequestHead(b"POST", b"/", b"web", (), None), "shop/web", 80, None, responder)
    exchange.write(b"first")
    pair.pump()
    [body] = bodies
    inbound: Any = pair.server.exchanges[exchange.sid]
    if paused:
        inbound.pauseProducing()
    exchange.write(b"second")
    exchange.trailers(TRAILERS)
    exchange.end()
    pair.pump()
    if paused:
        assert body.data == b"first" and body.trailer_fields is None and not body.ended
        inbound.resumeProducing()
    assert body.data == b"firstsecond" and body.trailer_fields == TRAILERS and body.ended
    inbound.head(ResponseHead(200, b"OK", (), None))
    inbound.write(b"answer")
    inbound.trailers(((b"X-Done", b"1"),))
    inbound.end()
    pair.pump()
    assert responder.body == b"answer" and responder.ended
    assert responder.trailer_fields == ((b"X-Done", b"1"),)


def test_a_peer_without_trailer_fieldsgets_none_and_the_drop_is_logged() -> None:
    pair = Pair()
    # An older peer: its hello did not offer trailers.
    assert pair.client.connection.peer is not None
    pair.client.connection.peer.settings.pop("trailers")
    responder = RecordingResponder()
    exchange = pair.client.open(RequestHead(b"POST", b"/", b"web", (), None), "s/web", 80, None,
                                responder)
    exchange.write(b"x")
    exchange.trailers(TRAILERS)
    with capturedLogs() as events:
        exchange.end()
        pair.pump()
    assert all(not (isinstance(f, Data) and f.trailers) for f in pair.from_client)
    assert pair.inbound().body.ended and pair.inbound().body.data == b"x"
    assert any(event.get("names") == "X-Checksum, Server-Timing" for event in events)


def test_trailer_fieldswait_with_the_body_for_the_dial() -> None:
    pair = Pair()
    bodies: list[TrailerBody] = []
    pair.server_handler.inbound = (  # type: ignore[method-assign]
        lambda link, request, responder: bodies.append(TrailerBody()) or bodies[-1])
    connecting: Deferred[EnvelopeLink] = Deferred()
    body: Any = LinkTarget(TargetKind.hub, {}, dial=lambda peer: connecting).open(
        route(), HEAD, RecordingResponder())
    body.write(b"abc")
    body.trailers(TRAILERS)
    body.end()
    connecting.callback(pair.client)
    pair.pump()
    [received] = bodies
    assert received.data == b"abc" and received.trailer_fields == TRAILERS and received.ended


def test_a_body_cut_by_the_window_queues_only_its_rest() -> None:
    """A write beyond the window: its pieces go as views (issue 15), but what waits for
    credit is a copy of exactly the rest, not a view holding the whole write (the queue's
    bound counts the rest); the bytes arrive unchanged."""
    pair = Pair()
    exchange, _ = pair.open()
    large = bytes(range(251)) * (2 * WINDOW // 251 + 1)  # the window, then more than that
    exchange.write(large)
    queued = exchange.queue
    assert queued is not None and len(queued) == 1
    [rest] = queued
    assert type(rest) is bytes and rest == large[WINDOW:]
    exchange.end()
    pair.pump()
    assert pair.inbound().body.data == large


# --- issue 15: a large body's DATA frames of one read, handed on as views at once ---------


@implementer(IViewResponder)
class _ViewResponder(RecordingResponder):
    """Takes body pieces as views (IViewResponder): records each write_parts call."""

    def __init__(self) -> None:
        super().__init__()
        self.part_calls: list[list[bytes | memoryview]] = []

    def write_parts(self, parts: list[bytes | memoryview]) -> None:
        self.part_calls.append(list(parts))
        self.write(b"".join(parts))


def _answer_in_one_turn(pair: Pair, responder: RecordingResponder, pieces: list[bytes]) -> None:
    head = RequestHead(b"GET", b"/big", b"web.shop", (), 0, client="10.0.0.9")
    pair.client.open(head, "shop/web", 80, None, responder)
    pair.pump()
    entry = pair.inbound()
    entry.exchange.head(ResponseHead(200, b"OK", (), sum(map(len, pieces))))
    for piece in pieces:
        entry.exchange.write(piece)
    entry.exchange.end()
    pair.clock.advance(0)  # the server's turn ends: everything leaves as one read


def test_the_data_frames_of_one_read_reach_a_view_responder_in_one_call() -> None:
    """Three 20 KiB DATA frames and the end in one read of the link: one write_parts call
    with three views of that read (no copy), then the end (before: a write per frame, each
    a copy of its body out of the read)."""
    pair = Pair()
    responder = _ViewResponder()
    pieces = [bytes([n]) * 20_000 for n in (1, 2, 3)]
    _answer_in_one_turn(pair, responder, pieces)
    read = pair.server_transport.value()
    assert len(frames_of(FrameDecoder(Limits()).feed(read), Data)) == 4
    pair.server_to_client()
    [parts] = responder.part_calls
    assert [bytes(part) for part in parts] == pieces
    assert all(type(part) is memoryview and part.obj is not None for part in parts)
    assert responder.body == b"".join(pieces) and responder.ended
    pair.pump()
    assert pair.client.exchanges == {}


def test_a_responder_without_views_gets_the_run_as_one_bytes_write() -> None:
    pair = Pair()
    responder = RecordingResponder()
    pieces = [bytes([n]) * 20_000 for n in (4, 5, 6)]
    _answer_in_one_turn(pair, responder, pieces)
    pair.server_to_client()
    assert len(responder.chunks) == 1 and type(responder.chunks[0]) is bytes
    assert responder.body == b"".join(pieces) and responder.ended


def test_exchanges_keep_their_sending_state_apart() -> None:
    """The exchanges are their own senders, their state starting as class defaults: what one
    queues, corks or holds is its own, never another's nor the next one's."""
    pair = Pair()
    first, _ = pair.open(content_length=4)
    second, _ = pair.open(content_length=4)
    pair.client.paused = True  # the transport is full: body waits in the stream's queue
    first.write(b"body")
    assert first.queued == 4 and first.queue is not None and list(first.queue) == [b"body"]
    assert second.queue is None and second.queued == 0 and OutboundExchange.queue is None
    second.trailers(((b"x-t", b"1"),))
    assert first.send_trailers == () and OutboundExchange.send_trailers == ()
    one, two = InboundExchange(pair.server, 2), InboundExchange(pair.server, 4)
    one.head(ResponseHead(200, b"OK", (), None))
    one.write(b"corked")
    two.head(ResponseHead(200, b"OK", (), None))
    assert one.cork_body == [b"corked"] and two.cork_body == [] and two.cork_size == 0
    one.body = RecordingBody()
    one.target_paused = True
    one.request_body(b"held")
    assert one.held is not None and list(one.held) == [b"held"]
    assert two.held is None and InboundExchange.held is None and not two.target_paused


def test_a_link_keeps_its_own_state_out_of_its_instance_dict() -> None:
    """As the front's (test_front): past CPython 3.11's 30 shared instance keys every
    ``self.method`` lookup of the link stays unspecialized (several per exchange and
    edge).  Its state is in slots; the dict holds Twisted's names only, either side."""
    pair = Pair()
    exchange, responder = pair.open(content_length=2)
    exchange.write(b"hi")
    exchange.end()
    pair.pump()
    pair.inbound().exchange.complete(ResponseHead(200, b"OK", (), 2), b"ok")
    pair.pump()
    assert responder.body == b"ok" and responder.ended
    for link in (pair.client, pair.server):
        names = set(vars(link))
        assert names <= {"transport", "connected", "factory"}, names


def test_a_links_read_hands_on_its_frames_with_nothing_held() -> None:
    """While a link's read hands on its frames, write_now holds none of the sends they make
    (``_io.sends_now``: the read's frames are one batch already); before and after the read
    the flag is what it was."""
    from edgemesh.transports import _io

    pair = Pair()
    seen: list[bool] = []
    pair.server_handler.on_inbound = lambda entry: seen.append(_io.sends_now)
    _io.sends_now = False
    try:
        pair.open(content_length=0, method=b"GET")
        pair.pump()
        assert seen == [True]
        assert _io.sends_now is False
    finally:
        _io.sends_now = False
