"""
Requests the HTTP front answers itself, as the metrics and the access log record them
(docs/operations.md: Metrics, Logs): a refusal at head parsing counts as an exchange of
``service="unknown"`` with its status class and gets an access log event with its status
and reason; a routed request whose body is refused (over ``--max-body``) is recorded as the
413 it got, not as a client that gave up.  Through a real edge node (its front, pipeline
and observer as the roles wire them), on a MemoryReactorClock and StringTransports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_front import Response, captured_log, parse_responses
from test_metrics import make_catalog, parse, samples
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent

from edgemesh.exchange import Reason, ResponseHead, TargetKind
from edgemesh.observability import (
    ACCESS_NAMESPACE,
    MeshCollector,
    ObservabilityConfig,
    exposition,
    node_registry,
)
from edgemesh.roles import EdgeConfig, build_edge
from edgemesh.testing import ScriptedTarget
from edgemesh.transports import HTTPFrontFactory
from edgemesh.transports._front import FrontLimits

CLIENT = IPv4Address("TCP", "10.0.0.9", 40000)
MAX_BODY = 1024
LIMITS = FrontLimits(max_body_bytes=MAX_BODY)
UNKNOWN = (("path", "none"), ("service", "unknown"))
WEB = (("path", "local"), ("service", "shop/web"))


class Edge:
    """An edge node with the access log on, its pods a ScriptedTarget that never answers
    unless told, and the client connections of its proxy listener."""

    def __init__(self, tmp_path: Path, limits: FrontLimits = LIMITS) -> None:
        self.reactor = MemoryReactorClock()
        self.node = build_edge(self.reactor, EdgeConfig(
            node="edge-1", state_dir=str(tmp_path), catalog=make_catalog(), router=None,
            hub=None, front=limits, observability=ObservabilityConfig(access_log=True)))
        self.pods = ScriptedTarget(TargetKind.service_bus)
        self.node.pipeline.targets[TargetKind.service_bus] = self.pods
        factory = self.node.listeners["proxy"].factory
        assert isinstance(factory, HTTPFrontFactory)
        self.factory = factory

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
        return protocol, transport

    def requests(self) -> dict[tuple[tuple[str, str], ...], float]:
        """``edgemesh_requests_total`` as a scrape exposes it, by its sorted labels."""
        registry = node_registry(
            MeshCollector(self.node.observer, lambda: self.node.pipeline.catalog), process=False)
        body, _ = exposition(registry, None)
        return samples(parse(body), "edgemesh_requests_total")

    def errors(self) -> dict[str, int]:
        return {code: count for code, count in self.node.observer.errors.items() if count}


def access_events(events: list[LogEvent]) -> list[dict[str, Any]]:
    return [{k: v for k, v in event.items() if not k.startswith("log_")}
            for event in events if event.get("log_namespace") == ACCESS_NAMESPACE]


def only_response(transport: StringTransport) -> Response:
    [response] = parse_responses(transport.value())
    return response


def answered(response: Response, status: int, reason: Reason) -> None:
    assert (response.status, response.header(b"x-edgemesh-error")) == (
        status, reason.code.encode())


POST = b"POST /up?token=secret HTTP/1.1\r\nHost: web.shop\r\n"
TOO_MANY = b"GET /h HTTP/1.1\r\nHost: web.shop\r\n" + b"X-Field: y\r\n" * 101


@pytest.mark.parametrize(
    ("request_bytes", "reason", "method", "uri"),
    [
        pytest.param(b"GET /a HTTP/1.1\r\n\r\n", Reason.bad_request, "GET", "/a",
                     id="400-no-host"),
        pytest.param(POST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1),
                     Reason.payload_too_large, "POST", "/up", id="413-content-length"),
        # The report's case: the 101st field is refused before the Transfer-Encoding is read.
        pytest.param(TOO_MANY + b"Transfer-Encoding: gzip\r\n\r\n", Reason.headers_too_large,
                     "GET", "/h", id="431-header-count"),
        pytest.param(b"GET /h HTTP/1.1\r\nHost: web.shop\r\nX-Pad: " + b"a" * 70_000
                     + b"\r\n\r\n", Reason.headers_too_large, "GET", "/h", id="431-head-bytes"),
        pytest.param(POST + b"Transfer-Encoding: gzip\r\n\r\n", Reason.not_implemented, "POST",
                     "/up", id="501-te-gzip"),
        pytest.param(POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
                     Reason.not_implemented, "POST", "/up", id="501-te-gzip-chunked"),
        pytest.param(POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n", Reason.bad_request,
                     "POST", "/up", id="400-te-chunked-gzip"),
        pytest.param(b"POST http://web.shop/up HTTP/1.1\r\nHost: web.shop\r\n"
                     b"Transfer-Encoding: identity\r\n\r\n", Reason.not_implemented, "POST",
                     "/up", id="501-te-identity-absolute-form"),
    ],
)
def test_a_rejection_at_head_parsing_is_a_request_of_the_unknown_service(
    tmp_path: Path, request_bytes: bytes, reason: Reason, method: str, uri: str
) -> None:
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(request_bytes)
    answered(only_response(client), reason.status, reason)
    assert client.disconnecting and edge.pods.opened == []
    assert edge.requests() == {(("code_class", f"{reason.status // 100}xx"), *UNKNOWN): 1.0}
    assert edge.errors() == {reason.code: 1}
    [event] = access_events(events)
    assert event == {
        "method": method, "uri": uri, "service": "unknown", "path": "none",
        "source": "service-bus", "target": None, "status": reason.status, "duration": 0.0,
        "bytes_in": 0, "bytes_out": 0, "endpoint": None, "peer": None, "error": reason.code,
        "client": "10.0.0.9",
    }
    assert edge.node.observer.tables["unknown", "none"].active == 0


CHUNKED = (b"POST http://web.shop/up HTTP/1.1\r\nHost: web.shop\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("forwarded", [0, 600], ids=["in-one-chunk", "after-600-bytes"])
def test_a_chunked_body_over_max_body_is_recorded_as_its_413(
    tmp_path: Path, forwarded: int
) -> None:
    """The report's case A: 2000 bytes chunked to an edge with --max-body 1k."""
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(CHUNKED)
        if forwarded:
            front.dataReceived(b"%x\r\n" % forwarded + b"a" * forwarded + b"\r\n")
        rest = 2000 - forwarded
        front.dataReceived(b"%x\r\n" % rest + b"a" * rest + b"\r\n0\r\n\r\n")
    answered(only_response(client), 413, Reason.payload_too_large)
    [pod] = edge.pods.opened
    assert pod.body.aborted is not None and pod.body.data == b"a" * forwarded
    assert edge.requests() == {(("code_class", "4xx"), *WEB): 1.0}, "not 'aborted'"
    assert edge.errors() == {"payload-too-large": 1}
    [event] = access_events(events)
    assert (event["status"], event["error"], event["service"], event["uri"]) == (
        413, "payload-too-large", "shop/web", "/up")
    assert event["bytes_in"] == forwarded
    assert edge.node.observer.tables["shop/web", "local"].active == 0


@pytest.mark.parametrize(
    ("rest", "reason"),
    [
        pytest.param(b"zz\r\n", Reason.bad_request, id="400-malformed-chunk"),
        pytest.param(b"0\r\n" + b"X-Trailer: v\r\n" * 101 + b"\r\n", Reason.headers_too_large,
                     id="431-trailer-section"),
    ],
)
def test_a_body_refused_once_routed_counts_under_its_service(
    tmp_path: Path, rest: bytes, reason: Reason
) -> None:
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(CHUNKED + b"3\r\nabc\r\n")
        front.dataReceived(rest)
    answered(only_response(client), reason.status, reason)
    assert edge.requests() == {(("code_class", "4xx"), *WEB): 1.0}
    assert edge.errors() == {reason.code: 1}
    [event] = access_events(events)
    assert (event["status"], event["error"], event["bytes_in"]) == (reason.status, reason.code, 3)


def test_too_many_pipelined_requests_count_as_unknown_503s(tmp_path: Path) -> None:
    """The refused request repeats an earlier one byte for byte: the front's fast path
    (no llhttp) refuses it, with its own method and path, not the parser's last."""
    edge = Edge(tmp_path, FrontLimits(max_body_bytes=MAX_BODY, max_pipelined=1))
    front, client = edge.connect()
    first = b"GET /first HTTP/1.1\r\nHost: web.shop\r\n\r\n"
    with captured_log() as events:
        front.dataReceived(first)
        front.dataReceived(b"GET /second HTTP/1.1\r\nHost: web.shop\r\n\r\n")
        front.dataReceived(first)
        edge.pods.opened[0].respond(body=b"ok")
        edge.pods.opened[1].respond(body=b"ok")
    assert [r.status for r in parse_responses(client.value())] == [200, 200, 503]
    assert edge.requests() == {
        (("code_class", "2xx"), *WEB): 2.0, (("code_class", "5xx"), *UNKNOWN): 1.0}
    refused = [e for e in access_events(events) if e["error"] is not None]
    assert [(e["method"], e["uri"], e["status"], e["error"]) for e in refused] == [
        ("GET", "/first", 503, "overloaded")]


def test_a_body_refused_after_the_response_head_keeps_its_status(tmp_path: Path) -> None:
    """Too late for the 413: the client's connection is aborted (a visible truncation); the
    exchange counts with the status that went out, and the reason it was cut short."""
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(CHUNKED + b"10\r\n" + b"a" * 16 + b"\r\n")
        [pod] = edge.pods.opened
        pod.responder.head(ResponseHead(200, b"OK", (), None))
        front.dataReceived(b"800\r\n" + b"a" * 0x800 + b"\r\n")
    assert client.disconnected
    assert edge.requests() == {(("code_class", "2xx"), *WEB): 1.0}
    assert edge.errors() == {"payload-too-large": 1}
    [event] = access_events(events)
    assert (event["status"], event["error"]) == (200, "payload-too-large")


def test_a_queued_request_whose_body_is_refused_counts_as_unknown(tmp_path: Path) -> None:
    """Pipelined behind a request in progress, never routed: its own head is recorded."""
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(b"GET /first HTTP/1.1\r\nHost: web.shop\r\n\r\n"
                           b"PUT /second HTTP/1.1\r\nHost: web.shop\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n800\r\n" + b"a" * 0x800)
        [pod] = edge.pods.opened
        pod.respond(body=b"ok")
    assert [r.status for r in parse_responses(client.value())] == [200, 413]
    assert edge.requests() == {
        (("code_class", "2xx"), *WEB): 1.0, (("code_class", "4xx"), *UNKNOWN): 1.0}
    assert edge.errors() == {"payload-too-large": 1}
    refused = [e for e in access_events(events) if e["status"] == 413]
    assert [(e["method"], e["uri"], e["error"]) for e in refused] == [
        ("PUT", "/second", "payload-too-large")]


def test_a_client_that_goes_away_mid_body_is_still_aborted(tmp_path: Path) -> None:
    edge = Edge(tmp_path)
    front, _ = edge.connect()
    with captured_log() as events:
        front.dataReceived(CHUNKED + b"10\r\n" + b"a" * 16 + b"\r\n")
        front.connectionLost()
    assert edge.requests() == {(("code_class", "aborted"), *WEB): 1.0}
    assert edge.errors() == {}
    [event] = access_events(events)
    assert (event["status"], event["error"]) == (None, "aborted")


def test_an_accepted_request_is_recorded_once_and_never_as_rejected(tmp_path: Path) -> None:
    edge = Edge(tmp_path)
    told: list[object] = []
    edge.factory.rejected = lambda *args: told.append(args)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(b"POST /up HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 3\r\n\r\nabc")
        [pod] = edge.pods.opened
        assert pod.body.data == b"abc" and pod.body.ended
        pod.respond(body=b"ok")
    assert only_response(client).status == 200 and told == []
    assert edge.requests() == {(("code_class", "2xx"), *WEB): 1.0}
    [event] = access_events(events)
    assert (event["status"], event["error"], event["bytes_in"]) == (200, None, 3)


def test_a_head_never_completed_is_closed_without_an_answer_or_a_count(tmp_path: Path) -> None:
    """A connection-level failure with no response: the client sees its connection closed,
    and neither requests_total nor errors_total counts it (docs/operations.md says so)."""
    edge = Edge(tmp_path, FrontLimits(max_body_bytes=MAX_BODY, header_timeout=10))
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(b"GET /slow HTTP/1.1\r\nHost: web.sh")
        edge.reactor.advance(11)
    assert client.value() == b"" and client.disconnecting
    assert edge.requests() == {} and edge.errors() == {}
    assert access_events(events) == []
    assert any("header timeout" in str(e.get("why")) for e in events)


def test_user_information_of_a_refused_target_is_never_logged(tmp_path: Path) -> None:
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(b"GET http://alice:s3cret@web.shop/p?q=1 HTTP/1.1\r\n"
                           b"Host: web.shop\r\n\r\n")
    answered(only_response(client), 400, Reason.bad_request)
    [event] = access_events(events)
    assert (event["uri"], event["status"], event["service"]) == ("/p", 400, "unknown")
    assert not [e for e in access_events(events) if "s3cret" in repr(e)]


def test_a_request_line_never_read_is_recorded_without_method_or_uri(tmp_path: Path) -> None:
    edge = Edge(tmp_path)
    front, client = edge.connect()
    with captured_log() as events:
        front.dataReceived(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")  # a TLS hello
    answered(only_response(client), 400, Reason.bad_request)
    [event] = access_events(events)
    assert (event["method"], event["uri"], event["status"]) == ("", "", 400)


def test_the_reason_alone_counts_the_error_only(tmp_path: Path) -> None:
    """A caller that knows nothing of the request (the observer's former contract)."""
    edge = Edge(tmp_path)
    edge.node.observer.rejected(Reason.bad_request)
    assert edge.errors() == {"bad-request": 1} and edge.requests() == {}
