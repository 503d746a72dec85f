"""The exchange contract's doubles in edgemesh.testing: they provide their interfaces, record
what they are told and catch every broken rule; and the optional ``complete`` is found by class."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from edgemesh.catalog import Endpoint, Service, ServicePort
from edgemesh.exchange import (
    COMPLETERS,
    ICompletingResponder,
    IRequestBody,
    IResponder,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    ResponseHead,
    SourceKind,
    TargetKind,
)
from edgemesh.routing import GuardedExchange, Route
from edgemesh.testing import (
    CompletingResponder,
    ContractViolation,
    Opened,
    RecordingBody,
    RecordingResponder,
    ScriptedTarget,
    TrailerBody,
    TrailerResponder,
)
from edgemesh.transports._front import _Exchange
from edgemesh.transports._halves import InboundExchange

HEAD = RequestHead(b"GET", b"/x", b"web", (), 0)
OK = ResponseHead(200, b"OK", (), 2)
ERROR = MeshError(Reason.upstream_lost, "gone")


def test_doubles_provide_their_interfaces() -> None:
    assert verifyObject(IRequestBody, RecordingBody())
    assert verifyObject(IResponder, RecordingResponder())
    assert not ICompletingResponder.providedBy(RecordingResponder())
    assert verifyObject(ICompletingResponder, CompletingResponder())
    assert verifyObject(ITarget, ScriptedTarget(TargetKind.hub))


@pytest.mark.parametrize("cls", [GuardedExchange, _Exchange, InboundExchange])
def test_the_mesh_responders_declare_complete(cls: type) -> None:
    """The classes that offer ``complete`` say so: a target finds it through COMPLETERS."""
    assert verifyClass(ICompletingResponder, cls)
    assert COMPLETERS[cls] is cls.complete  # type: ignore[attr-defined]


def test_completers_learns_each_class_once() -> None:
    @implementer(IResponder)
    class Undeclared(RecordingResponder):
        def complete(self, head: ResponseHead, body: bytes) -> None:
            raise AssertionError("not declared, never called")

    assert COMPLETERS[RecordingResponder] is None
    assert COMPLETERS[Undeclared] is None  # a method alone is no declaration
    assert COMPLETERS[CompletingResponder] is CompletingResponder.complete
    assert COMPLETERS[CompletingResponder] is COMPLETERS[CompletingResponder]


# -- the recording body ---------------------------------------------------------------------


def test_body_records() -> None:
    body = RecordingBody()
    seen: list[bytes] = []
    body.on_write = seen.append
    body.write(b"ab")
    body.write(b"c")
    body.end()
    body.abort("client gone while waiting")  # allowed after end
    assert (body.data, body.chunks, seen) == (b"abc", [b"ab", b"c"], [b"ab", b"c"])
    assert body.ended and body.aborted == "client gone while waiting"


BODY_VIOLATIONS: dict[str, tuple[Callable[[RecordingBody], None], str]] = {
    "empty write": (lambda b: b.write(b""), "empty request body write"),
    "write after end": (lambda b: (b.end(), b.write(b"x")), "write after end()"),
    "end twice": (lambda b: (b.end(), b.end()), "end() after end()"),
    "write after abort": (lambda b: (b.abort("r"), b.write(b"x")), "write after abort('r')"),
    "end after abort": (lambda b: (b.abort("r"), b.end()), "end() after abort('r')"),
    "abort twice": (lambda b: (b.abort("r"), b.abort("s")), "abort('s') after abort('r')"),
}


@pytest.mark.parametrize("case", sorted(BODY_VIOLATIONS))
def test_body_catches(case: str) -> None:
    act, message = BODY_VIOLATIONS[case]
    with pytest.raises(ContractViolation, match=re.escape(message)):
        act(RecordingBody())


# -- the recording responders ---------------------------------------------------------------


def test_responder_records() -> None:
    responder = RecordingResponder()
    heads: list[ResponseHead] = []
    responder.on_head = heads.append
    responder.head(OK)
    responder.write(b"o")
    responder.write(b"k")
    responder.end()
    assert (responder.status, responder.body, responder.calls) == (
        200, b"ok", ["head", "write", "write", "end"])
    assert heads == [OK] and responder.ended and responder.error is None


def test_responder_fail_after_head_is_allowed() -> None:
    responder = RecordingResponder()
    responder.head(OK)
    responder.fail(ERROR)  # a truncated response
    assert responder.calls == ["head", "fail"] and responder.error is ERROR


def test_completing_responder_records() -> None:
    responder = CompletingResponder()
    responder.complete(OK, b"ok")
    assert (responder.response, responder.body, responder.ended, responder.calls) == (
        OK, b"ok", True, ["complete"])
    empty = CompletingResponder()
    empty.complete(ResponseHead(204, b"No Content", (), 0), b"")
    assert empty.chunks == [] and empty.ended


RESPONDER_VIOLATIONS: dict[str, tuple[Callable[[CompletingResponder], object], str]] = {
    "head twice": (lambda r: (r.head(OK), r.head(OK)), "a head was given already"),
    "write before head": (lambda r: r.write(b"x"), "write before the head"),
    "end before head": (lambda r: r.end(), "end() before the head"),
    "empty write": (lambda r: (r.head(OK), r.write(b"")), "empty response body write"),
    "write after end": (lambda r: (r.head(OK), r.end(), r.write(b"x")), "write after end()"),
    "end twice": (lambda r: (r.head(OK), r.end(), r.end()), "end() after end()"),
    "head after fail": (lambda r: (r.fail(ERROR), r.head(OK)), "head after fail"),
    "write after fail": (lambda r: (r.head(OK), r.fail(ERROR), r.write(b"x")), "write after fail"),
    "end after fail": (lambda r: (r.head(OK), r.fail(ERROR), r.end()), "end() after fail"),
    "fail twice": (lambda r: (r.fail(ERROR), r.fail(ERROR)), "after fail"),
    "fail after end": (lambda r: (r.head(OK), r.end(), r.fail(ERROR)), "after end()"),
    "complete after head": (lambda r: (r.head(OK), r.complete(OK, b"ok")),
                            "complete: a head was given already"),
    "complete twice": (lambda r: (r.complete(OK, b"ok"), r.complete(OK, b"ok")),
                       "complete after end()"),
    "complete after fail": (lambda r: (r.fail(ERROR), r.complete(OK, b"ok")),
                            "complete after fail"),
    "write after complete": (lambda r: (r.complete(OK, b"ok"), r.write(b"x")),
                             "write after end()"),
}


@pytest.mark.parametrize("case", sorted(RESPONDER_VIOLATIONS))
def test_responder_catches(case: str) -> None:
    act, pattern = RESPONDER_VIOLATIONS[case]
    with pytest.raises(ContractViolation, match=re.escape(pattern)):
        act(CompletingResponder())


def test_a_violation_is_an_assertion_error() -> None:
    """So that a test runner reports it as a failed assertion, and ``pytest.raises``
    of AssertionError still catches it."""
    assert issubclass(ContractViolation, AssertionError)


# -- the scripted target --------------------------------------------------------------------


PORT = ServicePort("http", 80, 8080)
ROUTE = Route(TargetKind.hub, Service("shop", "web", "10.0.0.1", (PORT,)), PORT,
              Endpoint("10.1.0.5", 8080, "edge-2"), peer="edge-2")


def test_target_records_and_answers() -> None:
    target = ScriptedTarget(TargetKind.hub, answer=lambda call: call.respond(201, b"made"))
    responder = RecordingResponder()
    body = target.open(ROUTE, HEAD, responder)
    [call] = target.opened
    assert isinstance(call, Opened)
    assert (call.route, call.head, call.responder, call.body) == (ROUTE, HEAD, responder, body)
    assert call.endpoint == ROUTE.endpoint and target.paths == [b"/x"]
    assert (responder.status, responder.body, responder.calls) == (
        201, b"made", ["head", "write", "end"])
    assert responder.response is not None and responder.response.content_length == 4


def test_target_as_a_dispatch_and_answers_later() -> None:
    target = ScriptedTarget()
    responder = RecordingResponder()
    target(SourceKind.service_bus, HEAD, responder)
    [call] = target.opened
    assert call.route is None and call.endpoint is None and responder.calls == []
    call.respond(200, b"", length=None)
    assert responder.response == ResponseHead(200, b"OK", (), None) and responder.ended


def test_target_completes_whole_where_the_responder_can() -> None:
    target = ScriptedTarget(answer=lambda call: call.complete(body=b"whole"))
    whole, parts = CompletingResponder(), RecordingResponder()
    target(SourceKind.service_bus, HEAD, whole)
    target(SourceKind.service_bus, HEAD, parts)
    assert (whole.calls, whole.body) == (["complete"], b"whole")
    assert (parts.calls, parts.body) == (["head", "write", "end"], b"whole")


def test_target_fails_and_raises() -> None:
    target = ScriptedTarget(answer=lambda call: call.fail(Reason.upstream_refused, unsent=True))
    responder = RecordingResponder()
    target(SourceKind.service_bus, HEAD, responder)
    assert responder.error is not None and responder.error.unsent
    assert responder.error.reason is Reason.upstream_refused
    target.raises = RuntimeError("broken target")
    with pytest.raises(RuntimeError, match="broken target"):
        target.open(ROUTE, HEAD, RecordingResponder())
    assert len(target.opened) == 1


def test_a_target_script_that_breaks_the_contract_is_caught() -> None:
    def twice(call: Opened) -> None:
        call.respond()
        call.respond()

    with pytest.raises(ContractViolation, match="after end"):
        ScriptedTarget(answer=twice)(SourceKind.service_bus, HEAD, RecordingResponder())


@implementer(IPushProducer)
class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_producers_are_recorded() -> None:
    producer = _Producer()
    body, responder = RecordingBody(), RecordingResponder()
    body.setProducer(producer)
    responder.setProducer(producer)
    assert body.producer is producer and responder.producer is producer


# -- the optional trailers ------------------------------------------------------------------

FIELDS = ((b"X-Checksum", b"abc"),)


def test_trailer_doubles_record() -> None:
    body, responder = TrailerBody(), TrailerResponder()
    body.write(b"x")
    body.trailers(FIELDS)
    body.end()
    responder.head(OK)
    responder.trailers(FIELDS)
    responder.end()
    assert body.trailer_fields == FIELDS and responder.trailer_fields == FIELDS
    assert responder.calls == ["head", "trailers", "end"]
    assert verifyObject(IRequestBody, body) and verifyObject(IResponder, responder)


TRAILER_VIOLATIONS: dict[str, tuple[Callable[[TrailerBody, TrailerResponder], object], str]] = {
    "body trailers twice": (lambda b, r: (b.trailers(FIELDS), b.trailers(FIELDS)),
                            "request body trailers twice"),
    "body trailers after end": (lambda b, r: (b.end(), b.trailers(FIELDS)),
                                "request body trailers after end()"),
    "response trailers before head": (lambda b, r: r.trailers(FIELDS),
                                      "response trailers before the head"),
    "response trailers twice": (lambda b, r: (r.head(OK), r.trailers(FIELDS), r.trailers(FIELDS)),
                                "response trailers twice"),
    "response trailers after end": (lambda b, r: (r.head(OK), r.end(), r.trailers(FIELDS)),
                                    "response trailers after end()"),
}


@pytest.mark.parametrize("case", sorted(TRAILER_VIOLATIONS))
def test_trailer_doubles_catch(case: str) -> None:
    act, message = TRAILER_VIOLATIONS[case]
    with pytest.raises(ContractViolation, match=re.escape(message)):
        act(TrailerBody(), TrailerResponder())
