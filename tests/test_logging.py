"""
Logs: the JSON-lines observer, ``--log-format`` with twistd, the access log (on, off, its
fields) and what must never be logged (request bodies, Authorization, query strings).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_metrics import request
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.scripts._twistd_unix import ServerOptions
from zope.interface.verify import verifyObject

import edgemesh.observability._logs as logs
from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import MeshError, Reason, Role, SourceKind, TargetKind
from edgemesh.observability import (
    ACCESS_NAMESPACE,
    MAX_FIELD,
    JSONLinesObserver,
    MeshObserver,
    ObservabilityConfig,
    json_log_line,
    safe_uri,
)
from edgemesh.roles import EdgeConfig, build_edge, edge_tap, router_tap
from edgemesh.routing import Pipeline
from edgemesh.testing import RecordingResponder, ScriptedTarget
from edgemesh.transports import HTTPFrontFactory

SECRET = "Bearer s3cr3t-t0ken-do-not-log"
BODY = b"card=4111111111111111&pin=0000"


@contextmanager
def captured() -> Iterator[list[LogEvent]]:
    """Every event published while the block runs."""
    events: list[LogEvent] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def lines_of(observer_output: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in observer_output.getvalue().splitlines()]


# -- the JSON-lines observer ------------------------------------------------------------


def test_json_lines_have_the_fields_of_the_event() -> None:
    out = io.StringIO()
    observer = JSONLinesObserver(out)
    from twisted.logger import ILogObserver

    assert verifyObject(ILogObserver, observer)
    log = Logger(namespace="edgemesh.test", observer=observer)
    log.info("edge {node} connected after {seconds:.1f}s", node="edge-1", seconds=1.25, ratio=0.5,
             raw=b"\xffbytes", thing=object(), none=None, flag=True)
    (line,) = lines_of(out)
    assert line["level"] == "info" and line["namespace"] == "edgemesh.test"
    assert line["message"] == "edge edge-1 connected after 1.2s"
    assert line["node"] == "edge-1" and line["seconds"] == 1.25 and line["ratio"] == 0.5
    assert line["raw"] == "\\xffbytes" and line["none"] is None and line["flag"] is True
    assert line["thing"].startswith("<object object")
    assert not [key for key in line if key.startswith("log_")]
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-01-01T00:00:00.000Z")
    assert out.getvalue().count("\n") == 1


def test_json_time_is_utc_with_milliseconds() -> None:
    event = {"log_time": 86400.0 + 3661.25, "log_level": LogLevel.warn, "log_format": "x",
             "log_namespace": "n"}
    line = json.loads(json_log_line(event))
    assert line["time"] == "1970-01-02T01:01:01.250Z" and line["level"] == "warn"


def test_json_failures_long_fields_and_reserved_names() -> None:
    out = io.StringIO()
    log = Logger(namespace="t", observer=JSONLinesObserver(out))
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("it failed: {what}", what="x" * (MAX_FIELD + 10), message="not the message",
                    namespace="not the namespace")
    (line,) = lines_of(out)
    assert line["level"] == "critical"
    assert line["message"].startswith("it failed: xxx") and line["message"].endswith("...")
    assert "ValueError: boom" in line["traceback"]
    assert len(line["what"]) == MAX_FIELD + 3
    # An event's own field never replaces the record's.
    assert line["namespace"] == "t" and not line["message"].startswith("not")


def test_json_legacy_events() -> None:
    out = io.StringIO()
    observer = JSONLinesObserver(out)
    globalLogPublisher.addObserver(observer)
    try:
        legacy_log.msg("a legacy line", system="old")
    finally:
        globalLogPublisher.removeObserver(observer)
    (line,) = [ln for ln in lines_of(out) if "legacy" in ln["message"]]
    assert line["message"] == "a legacy line"
    assert "isError" not in line and "system" not in line


def test_an_unloggable_event_still_gives_a_line() -> None:
    out = io.StringIO()

    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("no")

    JSONLinesObserver(out)({"log_format": "{w}", "w": Weird(), "log_level": LogLevel.info})
    (line,) = lines_of(out)
    assert line["level"] == "error" and "unloggable" in line["message"]


# -- twistd: --log-format ----------------------------------------------------------------


@pytest.fixture
def restore_twistd_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_twistd_options", None)


def edge_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["edgemesh-edge", "--insecure", "--node", "edge-1", "--state-dir", str(tmp_path), *extra]


@pytest.mark.usefixtures("restore_twistd_options")
def test_log_format_json_makes_twistd_log_json_lines(tmp_path: Path) -> None:
    logfile = tmp_path / "edge.log"
    config = ServerOptions()
    config.parseOptions(["--nodaemon", "--logfile", str(logfile),
                         *edge_argv(tmp_path, "--log-format", "json")])
    assert config["logger"] is logs.json_logger
    observer = config["logger"]()
    assert isinstance(observer, JSONLinesObserver)
    Logger(namespace="edgemesh.test", observer=observer).info("hello {who}", who="ops")
    observer.stream.close()
    (line,) = [json.loads(text) for text in logfile.read_text().splitlines()]
    assert line["message"] == "hello ops" and line["who"] == "ops"


@pytest.mark.usefixtures("restore_twistd_options")
def test_json_logger_writes_to_stdout_without_a_logfile(tmp_path: Path) -> None:
    import sys

    config = ServerOptions()
    config.parseOptions(["--nodaemon", *edge_argv(tmp_path, "--log-format=json")])
    assert config["logger"]().stream is sys.stdout
    assert logs.twistd_log_file({"logfile": "-", "nodaemon": True}) is sys.stdout


@pytest.mark.usefixtures("restore_twistd_options")
def test_log_format_text_leaves_twistd_alone(tmp_path: Path) -> None:
    config = ServerOptions()
    config.parseOptions(["--nodaemon", *edge_argv(tmp_path)])
    assert config["logger"] is None and config.subOptions["log-format"] == "text"


@pytest.mark.usefixtures("restore_twistd_options")
def test_log_format_json_and_twistd_logger_conflict(tmp_path: Path) -> None:
    config = ServerOptions()
    with pytest.raises(usage.UsageError, match="--logger"):
        config.parseOptions(["--nodaemon", "--logger", "twisted.logger.textFileLogObserver",
                             *edge_argv(tmp_path, "--log-format", "json")])


def test_log_options_of_both_roles(tmp_path: Path) -> None:
    edge = edge_tap.Options()  # type: ignore[no-untyped-call]
    edge.parseOptions(edge_argv(tmp_path, "--log-format", "json", "--access-log", "on",
                                "--metrics-max-services", "50")[1:])
    assert edge["log-format"] == "json"  # no twistd around: nothing else happens
    assert edge.observability_config() == ObservabilityConfig(access_log=True, max_services=50)
    catalog = tmp_path / "c.yaml"
    catalog.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: edge-1}\n")
    router = router_tap.Options()  # type: ignore[no-untyped-call]
    router.parseOptions(["--insecure", "--catalog", str(catalog)])
    assert router.observability_config() == ObservabilityConfig()
    assert router.observability_config().access_log is False, "off by default (costly)"
    for bad in (
            ["--log-format", "xml"], ["--access-log", "maybe"], ["--metrics-max-services", "0"]):
        with pytest.raises(usage.UsageError):
            router_tap.Options().parseOptions(  # type: ignore[no-untyped-call]
                ["--insecure", "--catalog", str(catalog), *bad])


# -- the access log ---------------------------------------------------------------------

HTTP = ServicePort("http", 80, 8080)
POD = Endpoint("10.1.0.1", 8080, "edge-1", pod="shop/web-0")


def catalog() -> Catalog:
    return Catalog(
        [Service("shop", "web", "10.96.0.10", (HTTP,), {"http": (POD,)}),
         Service("shop", "down", "10.96.0.11", (HTTP,), {"http": ()})],
        [Node("edge-1", True, "192.0.2.1", 7701)],
        revision=3,
    )


def access_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == ACCESS_NAMESPACE]


def connect(factory: HTTPFrontFactory) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return protocol, transport


def edge_node(tmp_path: Path, access_log: bool) -> tuple[Any, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    edge = build_edge(reactor, EdgeConfig(node="edge-1", state_dir=str(tmp_path), catalog=catalog(),
                                          router=None, hub=None,
                                          observability=ObservabilityConfig(access_log=access_log)))
    return edge, reactor


def pod_answers(reactor: MemoryReactorClock, response: bytes) -> tuple[Any, StringTransport]:
    """The pod connection the upstream pool opened: accept it and answer ``response``."""
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    assert (host, port) == (POD.host, POD.port)
    protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(response)
    return protocol, transport


def test_access_log_event_per_exchange(tmp_path: Path) -> None:
    edge, reactor = edge_node(tmp_path, access_log=True)
    front, client = connect(edge.listeners["proxy"].factory)
    with captured() as events:
        front.dataReceived(b"POST /orders/7?user=me HTTP/1.1\r\nHost: web.shop\r\n"
                           b"Content-Length: 5\r\n\r\nhello")
        reactor.advance(0.25)
        pod_answers(reactor, b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc")
        front.dataReceived(b"GET /x HTTP/1.1\r\nHost: down.shop\r\n\r\n")
    assert b"201 Created" in client.value() and b"503" in client.value()
    first, second = access_events(events)
    assert {k: v for k, v in first.items() if not k.startswith("log_")} == {
        "method": "POST", "uri": "/orders/7", "service": "shop/web", "path": "local",
        "source": "service-bus", "target": "service-bus", "status": 201, "duration": 0.25,
        "bytes_in": 5, "bytes_out": 3,
        "endpoint": "10.1.0.1:8080", "peer": None, "error": None, "client": "10.0.0.9",
    }
    assert first["log_level"] is LogLevel.info
    assert formatEvent(first).startswith("POST shop/web /orders/7 201 0.2500s local in=5 out=3")
    assert second["status"] == 503 and second["error"] == "no-endpoint"
    assert second["service"] == "shop/down" and second["endpoint"] is None


def test_access_log_off(tmp_path: Path) -> None:
    edge, reactor = edge_node(tmp_path, access_log=False)
    front, client = connect(edge.listeners["proxy"].factory)
    with captured() as events:
        front.dataReceived(b"GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n")
        pod_answers(reactor, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert b"200 OK" in client.value()
    assert access_events(events) == []
    assert edge.observer.tables["shop/web", "local"].codes[2] == 1, "metrics still count"


def test_access_log_failures_and_aborts() -> None:
    pipeline = Pipeline(Role.edge, "edge-1", catalog())
    observer = MeshObserver(MemoryReactorClock(), Role.edge, "edge-1",
                            ObservabilityConfig(access_log=True))
    observer.attach(pipeline)
    target = ScriptedTarget(TargetKind.service_bus)
    pipeline.add_target(target)
    with captured() as events:
        pipeline.dispatch(SourceKind.service_bus, request(), RecordingResponder())
        target.opened[-1].responder.fail(MeshError(Reason.upstream_refused, "refused"))
        body = pipeline.dispatch(SourceKind.service_bus, request(), RecordingResponder())
        body.abort("client connection lost")
    refused, aborted = access_events(events)
    assert (refused["status"], refused["error"]) == (502, "upstream-refused")
    assert (aborted["status"], aborted["error"]) == (None, "aborted")


def test_safe_uri() -> None:
    assert safe_uri(b"/a/b?token=x") == "/a/b"
    assert safe_uri(b"/a\r\nforged: line") == "/a\\x0d\\x0aforged: line"
    assert safe_uri(b"/\xff") == "/\\xff"
    long = safe_uri(b"/" + b"a" * 1000)
    assert len(long) == 256 + 3 and long.endswith("...")


# -- never logged ------------------------------------------------------------------------


def test_bodies_and_secrets_are_never_logged(tmp_path: Path) -> None:
    """A request with an Authorization header, a secret query and a body, through the front,
    the pipeline and the pod pool, answered, refused by the pod, or too large: every event
    published meanwhile, as text and as JSON, holds none of them."""
    edge, reactor = edge_node(tmp_path, access_log=True)
    factory = edge.listeners["proxy"].factory
    request = (b"POST /pay?session=" + SECRET.split()[1].encode()
               + b" HTTP/1.1\r\nHost: web.shop\r\n"
               b"Authorization: " + SECRET.encode() + b"\r\nCookie: id=" + SECRET.encode() + b"\r\n"
               b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    with captured() as events:
        front, _ = connect(factory)
        front.dataReceived(request)
        pod, sent = pod_answers(reactor, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert SECRET.encode() in sent.value() and BODY in sent.value(), "the pod got them"
        front.dataReceived(request)  # the same connection, the pooled pod connection
        other, _ = connect(factory)
        other.dataReceived(request)  # while it is busy: a new pod connection, refused
        _host, _port, pool, _timeout, _bind = reactor.tcpClients[-1]
        pool.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
        pod.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        front, _ = connect(factory)
        front.dataReceived(request.replace(b"Content-Length: %d" % len(BODY), b"Content-Length: x"))
        front, _ = connect(factory)
        front.dataReceived(b"GET / HTTP/1.1\r\nHost: web.shop\r\nAuthorization: " + SECRET.encode()
                           + b"\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n")
    statuses = sorted(event["status"] for event in access_events(events))
    assert statuses == [200, 200, 400, 431, 502], statuses  # the front's rejections too
    assert edge.observer.errors["bad-request"] == 1
    assert edge.observer.errors["headers-too-large"] == 1
    texts = [formatEvent(event) for event in events] + [json_log_line(event) for event in events]
    for needle in (SECRET, SECRET.split()[1], BODY.decode(), "card=", "Cookie"):
        assert not [text for text in texts if needle in text], needle
