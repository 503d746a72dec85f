"""HTTPFrontProtocol: the HTTP/1.1 listener where apps' requests enter the mesh.

Driven through StringTransport and MemoryReactorClock with a fake dispatch that
records heads and bodies and answers through the responder.  The helpers here
are shared with test_front_hardening.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from edgemesh.exchange import (
    IHeadEndedBody,
    IRequestBody,
    IResponder,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    SourceKind,
)
from edgemesh.testing import Opened, RecordingBody, ScriptedTarget
from edgemesh.transports._front import (
    Dispatch,
    FrontLimits,
    HTTPFrontFactory,
    HTTPFrontProtocol,
)

PEER = IPv4Address("TCP", "10.1.2.3", 40000)
DEFAULTS = FrontLimits()


# -- fakes: the contract-checking doubles of edgemesh.testing ---------------------------------

TEXT = ((b"Content-Type", b"text/plain"),)


def answer_ok(call: Opened) -> None:
    call.respond(body=b"ok:" + call.head.path, headers=TEXT)


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"duplicate {name!r}"
        return values[0] if values else None


def parse_responses(data: bytes, no_body: frozenset[int] = frozenset()) -> list[Response]:
    """Split what the front wrote into responses, independently of the code under
    test.  ``no_body``: indexes of responses to HEAD requests."""
    responses: list[Response] = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n\r\n", at)
        head = data[at : end + 4]
        at = end + 4
        lines = head[:-4].split(b"\r\n")
        version, status_text, reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1"
        status = int(status_text)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b": ")
            headers.append((name, value))
        response = Response(status, reason, headers, b"", head)
        length = response.header(b"content-length")
        if status == 100:
            continue
        if len(responses) in no_body or status in (204, 304):
            body = b""
        elif response.header(b"transfer-encoding") is not None:
            assert response.header(b"transfer-encoding") == b"chunked"
            assert length is None
            pieces = []
            while True:
                line_end = data.index(b"\r\n", at)
                size = int(data[at:line_end], 16)
                at = line_end + 2
                pieces.append(data[at : at + size])
                assert data[at + size : at + size + 2] == b"\r\n"
                at += size + 2
                if size == 0:
                    break
            body = b"".join(pieces)
        elif length is not None:
            body = data[at : at + int(length)]
            assert len(body) == int(length), "truncated body"
            at += int(length)
        else:
            body = data[at:]
            at = len(data)
        response.body = body
        responses.append(response)
    return responses


class Conn:
    """One client connection to a front on a MemoryReactorClock."""

    def __init__(
        self,
        target: ScriptedTarget | Dispatch,
        limits: FrontLimits = DEFAULTS,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.factory = HTTPFrontFactory(self.clock, SourceKind.service_bus, target, limits)
        protocol = self.factory.buildProtocol(PEER)
        assert isinstance(protocol, HTTPFrontProtocol)
        self.protocol = protocol
        self.transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(self.transport)

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.protocol.dataReceived(piece)

    def responses(self, no_body: frozenset[int] = frozenset()) -> list[Response]:
        return parse_responses(self.transport.value(), no_body)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(getattr(self.transport, "disconnected", False))

    @property
    def reading(self) -> str:
        return str(self.transport.producerState)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@contextmanager
def captured_log() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: web.default:8080\r\nAccept: */*\r\n\r\n"


def get(path: bytes = b"/", extra: bytes = b"", host: bytes = b"web") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


# -- basics ----------------------------------------------------------------------------


def test_interfaces_and_factory() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    assert verifyObject(IPushProducer, conn.protocol)
    assert conn.transport.producer is conn.protocol and conn.transport.streaming
    conn.send(GET)
    responder = target.opened[0].responder
    assert verifyObject(IResponder, responder)
    assert verifyObject(IPushProducer, responder)
    assert conn.protocol.factory is conn.factory
    target.opened[0].respond()
    conn.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\n")
    assert target.opened[1].body.producer is target.opened[1].responder


def test_only_a_request_with_a_body_gives_its_target_a_producer() -> None:
    """A bodiless request has no flow to pause (and a pipelined one behind it still stops
    the reading until it starts); one with a body, even all in hand, has."""
    target = ScriptedTarget(answer=None)
    conn = Conn(target)
    conn.send(b"POST /0 HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n" + GET)
    first = target.opened[0]
    assert first.body.producer is None and first.body.ended
    assert conn.reading == "paused" and len(target.opened) == 1  # the GET waits its turn
    first.respond()
    second = target.opened[1]
    assert second.body.producer is None and second.body.ended and conn.reading == "producing"
    second.respond()
    conn.send(b"POST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nok")
    third = target.opened[2]
    assert third.body.producer is third.responder and third.body.data == b"ok"
    assert third.body.ended


@implementer(IHeadEndedBody)
class _HeadEndedBody(RecordingBody):
    """A body that takes a bodiless head as the whole request (as the guard's does)."""


def test_a_bodiless_request_is_not_ended_again_for_a_body_that_took_its_head_as_all() -> None:
    """A GET's target body that declares IHeadEndedBody gets no end() (its head ended it);
    one that does not, and any request with a body, still get theirs."""
    declares = [True, False, True]

    def with_body(call: Opened) -> None:
        call.body = _HeadEndedBody() if declares[len(target.opened) - 1] else RecordingBody()

    target = ScriptedTarget(answer=with_body)
    conn = Conn(target)
    conn.send(get(b"/0"))
    first = target.opened[0]
    assert isinstance(first.body, _HeadEndedBody) and not first.body.ended
    first.respond()
    conn.send(get(b"/1"))
    second = target.opened[1]
    assert not isinstance(second.body, _HeadEndedBody) and second.body.ended
    second.respond()
    conn.send(b"POST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nok")
    third = target.opened[2]
    assert isinstance(third.body, _HeadEndedBody) and third.body.ended
    assert third.body.data == b"ok"


def test_origin_form_get() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    conn.send(GET)
    [call] = target.opened
    assert call.head == RequestHead(
        method=b"GET",
        path=b"/a?b=1",
        authority=b"web.default:8080",
        headers=((b"Host", b"web.default:8080"), (b"Accept", b"*/*")),
        content_length=0,
        client="10.1.2.3",
    )
    assert call.body.ended and call.body.chunks == []
    assert conn.transport.value() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nok:/a?b=1"
    )
    assert not conn.closed


def test_absolute_form_uses_the_uri_authority_and_replaces_host() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    conn.send(
        b"GET http://orders.shop:8080/v1/x?y=2 HTTP/1.1\r\nHost: elsewhere\r\nX-A: 1\r\n\r\n",
        b"GET http://orders.shop HTTP/1.1\r\nX-A: 2\r\n\r\n",
        b"GET HTTP://Orders.Shop?q=1 HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
    )
    heads = [call.head for call in target.opened]
    assert [(h.authority, h.path) for h in heads] == [
        (b"orders.shop:8080", b"/v1/x?y=2"),
        (b"orders.shop", b"/"),
        (b"Orders.Shop", b"/?q=1"),
    ]
    assert heads[0].headers == ((b"Host", b"orders.shop:8080"), (b"X-A", b"1"))
    assert heads[1].headers == ((b"Host", b"orders.shop"), (b"X-A", b"2"))
    assert len(conn.responses()) == 3


def test_keep_alive_serves_requests_one_after_another() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    for n in range(3):
        conn.send(get(b"/%d" % n))
    assert target.paths == [b"/0", b"/1", b"/2"]
    assert [r.body for r in conn.responses()] == [b"ok:/0", b"ok:/1", b"ok:/2"]
    assert all(r.header(b"connection") is None for r in conn.responses())
    assert not conn.closed


def test_connection_close_request() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(get(b"/1", b"Connection: close\r\n") + get(b"/2"))
    assert target.paths == [b"/1"]  # nothing after a close request is read
    target.opened[0].respond()
    [response] = conn.responses()
    assert response.header(b"connection") == b"close"
    assert conn.closed


def test_http10_without_keep_alive_closes() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    conn.send(b"GET /old HTTP/1.0\r\n\r\n")
    [call] = target.opened
    assert call.head.authority == b"" and call.head.path == b"/old"
    [response] = conn.responses()
    assert response.header(b"connection") == b"close"
    assert conn.closed


def test_http10_keep_alive_is_honoured_and_announced() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    conn.send(b"GET /1 HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
    conn.send(b"GET /2 HTTP/1.0\r\nHost: web\r\nConnection: Keep-Alive\r\n\r\n")
    responses = conn.responses()
    assert [r.header(b"connection") for r in responses] == [b"keep-alive", b"keep-alive"]
    assert not conn.closed
    assert all(b"keep-alive" not in name.lower() for name, _ in target.opened[0].head.headers)


def test_http10_unknown_length_response_is_close_delimited() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    responder = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", (), None))
    responder.write(b"part1,")
    responder.write(b"part2")
    assert not conn.closed
    responder.end()
    assert conn.transport.value() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart1,part2"
    assert conn.closed


def test_chunked_response_for_http11() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", ((b"X-Y", b"z"),), None))
    responder.write(b"hello ")
    responder.write(b"")  # never a terminating chunk by accident
    responder.write(b"world")
    responder.end()
    assert conn.transport.value() == (
        b"HTTP/1.1 200 OK\r\nX-Y: z\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    assert not conn.closed


def test_head_request_gets_no_body() -> None:
    def answer(call: Opened) -> None:
        call.responder.head(ResponseHead(200, b"OK", (), 10))
        call.responder.write(b"0123456789")  # dropped: a HEAD response has no body
        call.responder.end()

    target = ScriptedTarget(answer=answer)
    conn = Conn(target)
    conn.send(b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n")
    target.answer = answer_ok
    conn.send(get(b"/next"))
    first, second = conn.responses(no_body=frozenset({0}))
    assert first.header(b"content-length") == b"10" and first.body == b""
    assert second.body == b"ok:/next"
    assert conn.transport.value().count(b"0123456789") == 0


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.head(ResponseHead(status, b"X", ((b"ETag", b'"1"'),), None))
    responder.write(b"ignored")
    responder.end()
    value = conn.transport.value()
    assert value == b"HTTP/1.1 %d X\r\nETag: \"1\"\r\n\r\n" % status
    assert not conn.closed


def test_response_framing_fields_from_the_target_are_replaced() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    headers = (
        (b"Content-Length", b"999"),
        (b"Transfer-Encoding", b"gzip"),
        (b"Connection", b"close"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Kept", b"yes"),
    )
    target.opened[0].respond(headers=headers, body=b"abc")
    [response] = conn.responses()
    assert response.headers == [(b"X-Kept", b"yes"), (b"Content-Length", b"3")]
    assert response.body == b"abc"
    assert not conn.closed


def test_request_body_with_content_length_streams() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\r\nhel")
    [call] = target.opened
    assert call.head.content_length == 11
    assert call.body.chunks == [b"hel"] and not call.body.ended
    conn.send(b"lo ", b"world")
    assert call.body.chunks == [b"hel", b"lo ", b"world"] and call.body.ended
    call.respond()
    assert conn.responses()[0].status == 200 and not conn.closed


def test_chunked_request_body_and_trailers_dropped() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(
        b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6;name=value\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    [call] = target.opened
    assert call.head.content_length is None
    assert all(name.lower() != b"transfer-encoding" for name, _ in call.head.headers)
    assert call.body.data == b"hello world" and call.body.ended
    call.respond()
    conn.send(get(b"/after"))
    assert target.paths == [b"/up", b"/after"]


def test_expect_100_continue_is_answered_and_not_forwarded() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(
        b"PUT /f HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    assert conn.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert all(name.lower() != b"expect" for name, _ in target.opened[0].head.headers)
    conn.send(b"abc")
    target.opened[0].respond()
    [response] = conn.responses()
    assert response.status == 200


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(
        get(b"/1") + get(b"/2") + b"POST /3 HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\n\r\nbody")
    assert target.paths == [b"/1"]
    assert conn.reading == "paused"  # parsed requests are waiting: stop reading
    target.opened[0].respond(body=b"one")
    assert target.paths == [b"/1", b"/2"]
    target.opened[1].respond(body=b"two")
    third = target.opened[2]
    assert third.body.data == b"body" and third.body.ended
    assert conn.reading == "producing"
    third.respond(body=b"three")
    assert [r.body for r in conn.responses()] == [b"one", b"two", b"three"]


def test_pipelined_body_split_across_reads_is_delivered_after_start() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(get(b"/1") + b"POST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\n\r\nab")
    target.opened[0].respond()
    second = target.opened[1]
    assert second.body.chunks == [b"ab"] and not second.body.ended
    conn.send(b"cdef")
    assert second.body.data == b"abcdef" and second.body.ended


def test_too_many_pipelined_requests() -> None:
    target = ScriptedTarget()
    conn = Conn(target, FrontLimits(max_pipelined=2))
    conn.send(get(b"/1") + get(b"/2") + get(b"/3") + get(b"/4") + get(b"/5"))
    target.opened[0].respond()
    target.opened[1].respond()
    target.opened[2].respond()
    assert target.paths == [b"/1", b"/2", b"/3"]
    responses = conn.responses()
    assert [r.status for r in responses] == [200, 200, 200, 503]
    assert responses[3].header(b"x-edgemesh-error") == b"overloaded"
    assert conn.closed


# -- flow control ------------------------------------------------------------------------


def test_target_pauses_and_resumes_reading_the_request_body() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\nxx")
    producer = target.opened[0].body.producer
    assert producer is not None
    producer.pauseProducing()
    assert conn.reading == "paused"
    producer.resumeProducing()
    assert conn.reading == "producing"
    producer.pauseProducing()
    conn.send(b"y" * 98)
    target.opened[0].respond()
    # The exchange is over: its pause no longer holds the connection.
    assert conn.reading == "producing"
    producer.pauseProducing()
    assert conn.reading == "producing"


def test_slow_client_pauses_the_response_producer() -> None:
    @implementer(IPushProducer)
    class Upstream:
        def __init__(self) -> None:
            self.state = "producing"

        def pauseProducing(self) -> None:
            self.state = "paused"

        def resumeProducing(self) -> None:
            self.state = "producing"

        def stopProducing(self) -> None:
            self.state = "stopped"

    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    upstream = Upstream()
    responder = target.opened[0].responder
    responder.setProducer(upstream)
    conn.protocol.pauseProducing()  # what the transport does when its buffer is full
    assert upstream.state == "paused"
    conn.protocol.resumeProducing()
    assert upstream.state == "producing"
    # A producer registered while the client is slow starts paused.
    target.opened[0].respond()
    conn.protocol.pauseProducing()
    conn.send(get(b"/2"))
    late = Upstream()
    target.opened[1].responder.setProducer(late)
    assert late.state == "paused"


# -- failures --------------------------------------------------------------------------------


def test_fail_before_head_answers_and_keeps_the_connection() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    target.opened[0].responder.fail(MeshError(Reason.no_endpoint, "no ready endpoint for web"))
    [response] = conn.responses()
    assert response.status == 503
    assert response.header(b"x-edgemesh-error") == b"no-endpoint"
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert response.body == b"503 no-endpoint: no ready endpoint for web\n"
    assert not conn.closed
    target.answer = answer_ok
    conn.send(get(b"/again"))
    assert conn.responses()[1].body == b"ok:/again"


def test_fail_before_head_with_unread_body_closes_and_aborts_the_body() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc")
    call = target.opened[0]
    call.responder.fail(MeshError(Reason.upstream_refused, "refused"))
    [response] = conn.responses()
    assert response.status == 502 and response.header(b"connection") == b"close"
    assert conn.closed
    assert call.body.aborted is not None


def test_fail_after_head_aborts_the_client_connection() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", (), 100))
    responder.write(b"partial")
    written = conn.transport.value()
    responder.fail(MeshError(Reason.upstream_lost, "reset"))
    assert conn.aborted
    responder.write(b"more")  # no-ops from now on
    responder.end()
    assert conn.transport.value() == written


def test_fail_with_only_the_head_buffered_sends_it_then_closes() -> None:
    """A peer lost in the turn that brought the head: an abort dropped the buffered head and
    the client got a reset and no byte at all.  The head goes out, then a close; the
    length (or the missing last chunk) shows the client the body was cut short."""
    for length, framing in ((100, b"Content-Length: 100"), (None, b"Transfer-Encoding: chunked")):
        target = ScriptedTarget()
        conn = Conn(target)
        conn.send(GET)
        responder = target.opened[0].responder
        responder.head(ResponseHead(200, b"OK", (), length))
        responder.fail(MeshError(Reason.peer_unavailable, "link to edge-2 lost"))
        written = conn.transport.value()
        assert written.startswith(b"HTTP/1.1 200 OK\r\n") and framing in written
        assert written.endswith(b"\r\n\r\n"), "the head, and nothing of a body"
        assert conn.transport.disconnecting and not conn.aborted
        assert target.opened[0].body.aborted is not None
        responder.write(b"late")  # no-ops from now on
        assert conn.transport.value() == written


def test_the_front_passes_its_listeners_kind_with_each_request() -> None:
    kinds: list[SourceKind] = []
    target = ScriptedTarget(answer=answer_ok)

    def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        kinds.append(source)
        return target(source, head, responder)

    factory = HTTPFrontFactory(MemoryReactorClock(), SourceKind.router, dispatch)
    protocol = factory.buildProtocol(PEER)
    protocol.makeConnection(StringTransport(peerAddress=PEER))
    protocol.dataReceived(GET + GET)
    assert kinds == [SourceKind.router, SourceKind.router]
    assert len(target.opened) == 2


def test_dispatch_raising_mesh_error() -> None:
    def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        raise MeshError(Reason.unknown_service, f"no service {head.authority.decode()}")

    conn = Conn(dispatch)
    conn.send(get(host=b"nope"))
    [response] = conn.responses()
    assert response.status == 404
    assert response.body == b"404 unknown-service: no service nope\n"
    assert not conn.closed


def test_dispatch_raising_anything_else_is_a_logged_502() -> None:
    def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        raise RuntimeError("bug")

    conn = Conn(dispatch)
    with captured_log() as events:
        conn.send(GET)
    [response] = conn.responses()
    assert response.status == 502
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert isinstance(failures[0]["log_failure"].value, RuntimeError)


def test_target_raising_in_body_write_fails_the_exchange() -> None:
    @implementer(IRequestBody)
    class Broken(RecordingBody):
        def write(self, data: bytes) -> None:
            raise ValueError("boom")

    calls: list[IResponder] = []

    def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        calls.append(responder)
        return Broken()

    conn = Conn(dispatch)
    with captured_log() as events:
        conn.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
    assert conn.responses()[0].status == 502
    assert any("log_failure" in e for e in events)


def test_client_disconnect_aborts_the_body_and_later_calls_are_no_ops() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc")
    call = target.opened[0]
    conn.lose()
    assert call.body.aborted is not None
    call.respond()  # must not raise, must not write
    call.responder.fail(MeshError(Reason.upstream_lost, "x"))
    assert conn.transport.value() == b""
    assert conn.clock.getDelayedCalls() == []


def test_disconnect_while_waiting_for_the_response_aborts_too() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    conn.lose()
    assert target.opened[0].body.ended and target.opened[0].body.aborted is not None


def test_response_content_length_mismatches_abort() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", (), 3))
    responder.write(b"abcd")
    assert conn.aborted

    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[1].responder
    responder.head(ResponseHead(200, b"OK", (), 3))
    responder.write(b"ab")
    responder.end()
    assert conn.aborted


@pytest.mark.parametrize("status", [100, 101, 199, 42])
def test_unusable_status_becomes_502(status: int) -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    target.opened[0].responder.head(ResponseHead(status, b"X", (), 0))
    [response] = conn.responses()
    assert response.status == 502
    assert response.header(b"x-edgemesh-error") == b"upstream-bad-response"


def test_responder_misuse_is_harmless() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.end()  # before any head: treated as a bad response
    assert conn.responses()[0].status == 502
    responder.head(ResponseHead(200, b"OK", (), 0))  # after the end: ignored
    responder.end()
    assert len(conn.responses()) == 1


def test_upgrade_without_body_is_an_ordinary_request() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    conn.send(
        get(b"/1", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: x\r\n")
        + get(b"/2")
    )
    assert target.paths == [b"/1", b"/2"]
    assert target.opened[0].head.headers == ((b"Host", b"web"),)
    assert len(conn.responses()) == 2


# -- timeouts -------------------------------------------------------------------------------


def test_idle_timeout_closes_a_quiet_keep_alive_connection() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target, FrontLimits(idle_timeout=30))
    conn.clock.advance(20)
    conn.send(GET)
    conn.clock.advance(20)
    assert not conn.closed  # idle for 20 s only
    conn.send(GET)
    conn.clock.advance(29)
    assert not conn.closed
    conn.clock.advance(1.5)
    assert conn.closed
    conn.lose()  # the transport finishes the close
    assert conn.clock.getDelayedCalls() == []


def test_a_close_the_client_never_completes_is_aborted() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target, FrontLimits(idle_timeout=30))
    conn.send(get(extra=b"Connection: close\r\n"))
    assert conn.closed and not conn.aborted
    conn.clock.advance(29)
    assert not conn.aborted  # still flushing to a client that does not read
    conn.clock.advance(1)
    assert conn.aborted


def test_no_idle_timeout_while_a_response_is_pending() -> None:
    target = ScriptedTarget()
    conn = Conn(target, FrontLimits(idle_timeout=5))
    conn.send(GET)
    conn.clock.advance(60)
    assert not conn.closed  # the target's timeouts govern a pending exchange
    target.opened[0].respond()
    conn.clock.advance(4)
    assert not conn.closed
    conn.clock.advance(2)
    assert conn.closed


def test_a_connection_that_never_speaks_is_closed_at_the_idle_timeout() -> None:
    conn = Conn(ScriptedTarget(), FrontLimits(idle_timeout=7))
    conn.clock.advance(7)
    assert conn.closed


def test_the_timers_of_many_connections_are_one_reactor_call() -> None:
    """Each connection's one timer is on the node's wheel: no DelayedCall, heap push and
    reset per connection; the header timeout and the idle timeout still close on time (up
    to the wheel's quarter of a second late)."""
    clock = MemoryReactorClock()
    factory = HTTPFrontFactory(clock, SourceKind.service_bus, ScriptedTarget(answer=answer_ok),
                               FrontLimits(header_timeout=10, idle_timeout=60))
    transports = []
    for n in range(40):
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        transports.append(transport)
        if n % 2:
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: we")  # a head begun: 10 s
        clock.advance(0.01)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(10.0)
    slow = [t for n, t in enumerate(transports) if n % 2]
    assert all(t.disconnecting for t in slow)
    assert not any(t.disconnecting for t in transports[::2])
    clock.advance(50.5)
    assert all(t.disconnecting for t in transports)


def test_log_events_for_rejections_name_the_client() -> None:
    conn = Conn(ScriptedTarget())
    with captured_log() as events:
        conn.send(b"GET / HTTP/1.1\r\n\r\n")
    messages: list[Any] = [e for e in events if e.get("client") == "10.1.2.3"]
    assert messages and messages[0]["code"] == "bad-request"


# -- less common paths ------------------------------------------------------------------------


def test_error_answers_respect_http10_keep_alive_and_head() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"GET / HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
    target.opened[0].responder.fail(MeshError(Reason.no_endpoint, "none"))
    conn.send(b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n")
    target.opened[1].responder.fail(MeshError(Reason.no_endpoint, "none"))
    first, second = conn.responses(no_body=frozenset({1}))
    assert first.header(b"connection") == b"keep-alive" and first.body
    assert second.status == 503 and second.body == b""
    assert int(second.header(b"content-length") or 0) > 0
    assert not conn.closed


def test_http10_keep_alive_with_close_closes() -> None:
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
    assert conn.responses()[0].header(b"connection") == b"close"
    assert conn.closed


def test_queued_chunked_body_is_held_then_delivered_in_order() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(
        get(b"/1")
        + POST_CHUNKED
        + b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    )
    assert target.paths == [b"/1"]
    target.opened[0].respond()
    second = target.opened[1]
    assert second.body.chunks == [b"abc", b"def"] and second.body.ended


def test_queued_request_answered_inside_dispatch_still_gets_its_body() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(get(b"/1") + b"POST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
    target.answer = answer_ok
    target.opened[0].respond()
    second = target.opened[1]
    assert second.body.data == b"abc" and second.body.ended
    assert [r.status for r in conn.responses()] == [200, 200]
    assert not conn.closed


def test_bad_body_of_a_queued_request_is_answered_in_turn_and_never_dispatched() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(get(b"/1") + POST_CHUNKED + b"3\r\nabc\r\nzz\r\n")
    assert conn.transport.value() == b""
    target.opened[0].respond()
    assert target.paths == [b"/1"]
    first, second = conn.responses()
    assert (first.status, second.status) == (200, 400)
    assert conn.closed


def test_a_stuck_pipelined_head_closes_the_connection_and_aborts_the_exchange() -> None:
    target = ScriptedTarget()
    conn = Conn(target, FrontLimits(header_timeout=10))
    conn.send(get(b"/1"), b"GET /2 HTTP/1.1\r\nHo")
    conn.clock.advance(10)
    assert conn.closed
    assert target.opened[0].body.aborted is not None
    target.opened[0].respond()
    assert conn.transport.value() == b""


POST_CHUNKED = b"POST /2 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_bug_in_the_front_costs_one_connection_not_the_reactor() -> None:
    class Buggy(HTTPFrontProtocol):
        def on_header(self, name: bytes, value: bytes) -> None:
            raise KeyError(name)

    conn = Conn(ScriptedTarget())
    buggy = Buggy(conn.clock, SourceKind.service_bus, ScriptedTarget())
    transport = StringTransport(peerAddress=PEER)
    buggy.makeConnection(transport)
    with captured_log() as events:
        buggy.dataReceived(GET)  # must not raise
    assert transport.disconnected
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert isinstance(failure.value, KeyError)


# -- trailers (issue 11, item 5) ------------------------------------------------------------


class TrailerBody(RecordingBody):
    def __init__(self) -> None:
        super().__init__()
        self.trailers_: tuple[tuple[bytes, bytes], ...] | None = None

    def trailers(self, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        assert not self.ended and self.trailers_ is None
        self.trailers_ = fields


@pytest.mark.parametrize("queued", [False, True], ids=["running", "pipelined"])
def test_request_trailers_reach_the_target_before_the_end(queued: bool) -> None:
    bodies: list[TrailerBody] = []

    def dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        body = TrailerBody()
        bodies.append(body)
        return body

    calls: list[tuple[RequestHead, IResponder]] = []

    def holding(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
        # The first exchange stays open so that the second one queues behind it.
        if not calls:
            calls.append((head, responder))
            return RecordingBody()
        return dispatch(source, head, responder)

    conn = Conn(holding if queued else dispatch)
    if queued:
        conn.send(get(b"/first"))
    conn.send(
        b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nConnection: close\r\nServer-Timing: x\r\n\r\n"
    )
    if queued:
        _head, responder = calls[0]
        responder.head(ResponseHead(200, b"OK", (), 0))
        responder.end()
    [body] = bodies
    assert body.data == b"hello" and body.ended
    assert body.trailers_ == ((b"X-Checksum", b"abc"), (b"Server-Timing", b"x"))


def test_response_trailers_follow_the_last_chunk() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder: Any = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", (), None))
    responder.write(b"hello")
    responder.trailers(((b"X-Checksum", b"abc"),))
    responder.end()
    assert conn.transport.value().endswith(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
    assert not conn.closed


def test_response_trailers_to_an_http10_client_are_dropped_and_logged() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
    responder: Any = target.opened[0].responder
    with captured_log() as events:
        responder.head(ResponseHead(200, b"OK", (), None))
        responder.write(b"hello")
        responder.trailers(((b"X-Checksum", b"abc"),))
        responder.end()
    assert conn.transport.value().endswith(b"\r\n\r\nhello")
    assert any(event.get("names") == "X-Checksum" for event in events)


# -- response heads remembered (issue 15, third pass) -------------------------------------------


def test_remembered_response_heads_are_exact_and_bounded() -> None:
    from edgemesh.transports import _front

    target = ScriptedTarget()
    conn = Conn(target)
    fields = ((b"Server", b"origin"), (b"Content-Length", b"99"), (b"X-Date", b"1"))
    for i, date in enumerate((b"1", b"2", b"1")):
        conn.send(get())
        head = ResponseHead(200, b"OK", ((b"Server", b"origin"), (b"X-Date", date)), 2)
        target.opened[i].responder.head(head)
        target.opened[i].responder.write(b"hi")
        target.opened[i].responder.end()
    responses = conn.responses()
    assert [r.header(b"x-date") for r in responses] == [b"1", b"2", b"1"]
    assert conn.transport.value().count(b"HTTP/1.1 200 OK\r\nServer: origin\r\nX-Date: 1\r\n"
                                         b"Content-Length: 2\r\n\r\nhi") == 2
    # The same head on an HTTP/1.0 keep-alive connection is a different one.
    conn10 = Conn(target)
    conn10.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    target.opened[3].responder.head(ResponseHead(200, b"OK", (fields[0], (b"X-Date", b"1")), 2))
    target.opened[3].responder.write(b"hi")
    target.opened[3].responder.end()
    [response] = conn10.responses()
    assert response.header(b"connection") == b"keep-alive"
    # A bad value next to fields seen before is still refused.
    conn.send(get())
    target.opened[4].responder.head(
        ResponseHead(200, b"OK", ((b"Server", b"origin"), (b"X-Date", b"1\r\nX-Evil: 1")), 2))
    assert b"X-Evil" not in conn.transport.value()
    assert conn.responses()[-1].status == 502
    # Bounded in count, and large heads are never remembered.
    for i in range(3 * _front._HEADS_MADE_BOUND):
        conn.send(get())
        target.opened[5 + i].responder.complete(
            ResponseHead(200, b"OK", ((b"X-N", b"%d" % i),), 0), b"")
    assert len(_front._heads_made) <= _front._HEADS_MADE_BOUND
    assert all(len(v) <= _front._HEAD_MADE_LENGTH for v in _front._heads_made.values())


def test_a_connections_repeated_response_head_object_is_framed_for_each_exchange() -> None:
    """The bytes of a connection's last response head are reused for the same ResponseHead
    object only where the framing is the same: a HEAD request, an HTTP/1.0 keep-alive one,
    the last one before a close and a new head object each get their own."""
    target = ScriptedTarget()
    conn = Conn(target)
    head = ResponseHead(200, b"OK", ((b"Server", b"origin"),), 2)
    for request in (get(), get(), b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n", get()):
        conn.send(request)
        target.opened[-1].responder.complete(head, b"hi")
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    target.opened[-1].responder.complete(head, b"hi")
    conn.send(get())
    other = ResponseHead(200, b"OK", ((b"Server", b"other"),), 2)
    target.opened[-1].responder.complete(other, b"hi")
    conn.send(get(extra=b"Connection: close\r\n"))
    target.opened[-1].responder.complete(head, b"hi")
    responses = parse_responses(conn.transport.value(), no_body=frozenset({2}))
    assert [r.body for r in responses] == [b"hi", b"hi", b"", b"hi", b"hi", b"hi", b"hi"]
    assert [r.header(b"content-length") for r in responses] == [b"2"] * 7
    assert [r.header(b"connection") for r in responses] == [
        None, None, None, None, b"keep-alive", None, b"close"]
    assert [r.header(b"server") for r in responses] == [b"origin"] * 5 + [b"other", b"origin"]
    assert conn.transport.disconnecting


def test_a_repeated_request_gets_its_connections_head_again_as_new() -> None:
    # A connection that repeats a remembered request gets the head of its last one again
    # (session 12): with the hop count as parsed (nothing writes a RequestHead: routing
    # checks the count, a forwarding target sends it + 1), pipelined or not, never another
    # connection's.
    target = ScriptedTarget()
    conn = Conn(target)
    request = get(extra=b"X-Edgemesh-Hops: 2\r\n")
    for i in range(4):
        conn.send(request)
        head = target.opened[i].head
        assert (head.method, head.path, head.authority, head.content_length, head.hops) == (
            b"GET", b"/", b"web", 0, 2)
        target.opened[i].responder.complete(ResponseHead(200, b"OK", (), 0), b"")
    heads = [call.head for call in target.opened]
    assert heads[3] is heads[2]  # remembered from the first read, repeated since
    assert len(conn.responses()) == 4
    # Another connection, same bytes: its own head (its client).
    other = Conn(target)
    other.send(request)
    assert target.opened[4].head is not heads[3]
    target.opened[4].responder.complete(ResponseHead(200, b"OK", (), 0), b"")
    # Pipelined (two reads): the second waits behind the first; both have the same head.
    conn.send(request)
    conn.send(request)
    assert len(target.opened) == 6
    target.opened[5].responder.complete(ResponseHead(200, b"OK", (), 0), b"")
    assert target.opened[5].head is heads[3] and target.opened[6].head is heads[3]
    target.opened[6].responder.complete(ResponseHead(200, b"OK", (), 0), b"")
    # A different request (its own head), then one with another hop count (its own).
    conn.send(get(b"/other"))
    target.opened[7].responder.complete(ResponseHead(200, b"OK", (), 0), b"")
    assert target.opened[7].head.path == b"/other"
    conn.send(get(extra=b"X-Edgemesh-Hops: 3\r\n"))
    assert target.opened[8].head.hops == 3 and heads[3].hops == 2
    target.opened[8].responder.complete(ResponseHead(200, b"OK", (), 0), b"")
    assert [r.status for r in conn.responses()] == [200] * 8


def test_response_fields_in_a_list_are_still_answered() -> None:
    # A target that hands its fields as a list (not the Headers tuple) is not remembered,
    # but is answered as before rather than raising.
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(get())
    target.opened[0].responder.complete(
        ResponseHead(200, b"OK", [(b"X-A", b"1")], 0), b"")  # type: ignore[arg-type]
    [response] = conn.responses()
    assert response.status == 200 and response.header(b"x-a") == b"1"


# --- issue 15: body pieces off a link (views) straight to the client ----------------------


def test_write_parts_sends_views_with_the_content_length_kept() -> None:
    """write_parts (IViewResponder, what the link hands a large body's DATA frames to):
    the bytes of every part in order, counted against the Content-Length."""
    from edgemesh.exchange import VIEW_WRITERS, IViewResponder

    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    assert IViewResponder.providedBy(responder)
    assert VIEW_WRITERS[type(responder)] is not None
    read = b"--" + b"a" * 5000 + b"--" + b"b" * 3000
    view = memoryview(read)
    responder.head(ResponseHead(200, b"OK", (), 8003))
    responder.write_parts([view[2:5002], view[5004:]])  # type: ignore[attr-defined]
    responder.write_parts([b"end"])  # type: ignore[attr-defined]
    responder.end()
    [response] = conn.responses()
    assert response.body == b"a" * 5000 + b"b" * 3000 + b"end"
    assert not conn.aborted


def test_write_parts_beyond_the_content_length_aborts() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", (), 3))
    responder.write_parts([memoryview(b"ab"), memoryview(b"cd")])  # type: ignore[attr-defined]
    assert conn.aborted


def test_write_parts_to_a_chunked_response_frames_them_as_one_chunk() -> None:
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(GET)
    responder = target.opened[0].responder
    responder.head(ResponseHead(200, b"OK", (), None))
    responder.write_parts([memoryview(b"hello "), memoryview(b"world")])  # type: ignore[attr-defined]
    responder.end()
    assert b"b\r\nhello world\r\n0\r\n\r\n" in conn.transport.value()
    [response] = conn.responses()
    assert response.body == b"hello world"


def test_a_whole_response_ends_its_exchange_and_the_connection_goes_on() -> None:
    """complete() with the whole Content-Length body ends the exchange itself (not through
    end()): later calls of the target are no-ops and the next request is dispatched."""
    target = ScriptedTarget()
    conn = Conn(target)
    conn.send(get() + get())  # pipelined: the second waits for the first
    assert len(target.opened) == 1
    responder = target.opened[0].responder
    responder.complete(ResponseHead(200, b"OK", (), 2), b"hi")
    sent = conn.transport.value()
    assert sent.endswith(b"Content-Length: 2\r\n\r\nhi")
    responder.write(b"late")
    responder.end()
    responder.complete(ResponseHead(200, b"OK", (), 2), b"hi")
    assert conn.transport.value() == sent  # over: nothing more for that exchange
    assert len(target.opened) == 2  # the next one started
    # A whole response that is not all of it (a body short of its length) still ends
    # through end(): the client's connection is aborted, not left waiting.
    target.opened[1].responder.complete(ResponseHead(200, b"OK", (), 5), b"hi")
    assert conn.transport.disconnecting or getattr(conn.transport, "aborted", False)


def test_remembered_heads_keep_each_framing_apart() -> None:
    """The same response fields framed five ways, each twice (the second from the memory of
    heads): its framing field (made on a miss only) is the one its request and status call for."""
    fields = ((b"X-Same", b"1"),)
    cases = [
        (get(), ResponseHead(200, b"OK", fields, 2), b"Content-Length: 2\r\n"),
        (get(), ResponseHead(200, b"OK", fields, None), b"Transfer-Encoding: chunked\r\n"),
        (b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n", ResponseHead(200, b"OK", fields, 2),
         b"Content-Length: 2\r\n"),
        (b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n", ResponseHead(200, b"OK", fields, None), b""),
        (get(), ResponseHead(204, b"OK", fields, 0), b""),
        (b"GET / HTTP/1.0\r\nHost: web\r\n\r\n", ResponseHead(200, b"OK", fields, None), b""),
    ]
    for _ in range(2):
        for request, head, framing in cases:
            target = ScriptedTarget()
            conn = Conn(target)
            conn.send(request)
            target.opened[0].responder.head(head)
            sent = conn.transport.value()
            assert sent.split(b"\r\n\r\n")[0].endswith(b"X-Same: 1" + (
                b"\r\n" + framing.rstrip(b"\r\n") if framing else b"")
                + (b"\r\nConnection: close" if b"HTTP/1.0" in request else b"")), sent


def test_a_front_keeps_its_own_state_out_of_its_instance_dict() -> None:
    """CPython 3.11 shares up to 30 instance dict keys per class: past them the dict is
    materialized and every ``self.method`` lookup stays unspecialized (~300 instructions
    each, several per exchange).  The front's state is in slots; its dict holds Twisted's
    few names, after exchanges of every kind (fails if the state goes back to the dict)."""
    target = ScriptedTarget()
    conn = Conn(target)
    for request in (GET, GET, b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi",
                    (b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n")):
        conn.send(request)
        target.opened[-1].respond()
    assert [r.status for r in conn.responses()] == [200, 200, 200, 200] and not conn.closed
    names = set(vars(conn.protocol))
    assert names <= {"transport", "connected", "factory"}, names
    assert "_active" in HTTPFrontProtocol.__slots__
