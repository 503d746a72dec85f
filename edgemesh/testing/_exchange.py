"""
Doubles for the exchange contract (edgemesh.exchange), shipped for tests of targets,
sources and pipelines, in the spirit of ``treq.testing.StubTreq``: they record what they
are told and raise :class:`ContractViolation` the moment a party breaks a rule.

- :class:`RecordingBody` (IRequestBody): no empty writes; nothing but ``abort`` after
  ``end``; nothing at all after ``abort``.
- :class:`RecordingResponder` (IResponder): ``head`` once and before any body; no empty
  writes; nothing after ``end`` or ``fail``.  :class:`CompletingResponder` also takes
  ``complete(head, body)`` (ICompletingResponder) under the same rules.
- :class:`TrailerBody` and :class:`TrailerResponder` also take the optional
  ``trailers(fields)``: at most once, before ``end`` (and, for a response, after the head).
- :class:`ScriptedTarget` (ITarget): records each exchange it opens as an :class:`Opened`
  and runs a script (``answer``) on it; also callable as a front's dispatch
  ``(source, head, responder)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..exchange import (
    COMPLETERS,
    Headers,
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

if TYPE_CHECKING:
    from ..catalog import Endpoint
    from ..routing import Route


class ContractViolation(AssertionError):
    """A party broke a rule of the exchange contract (the message says which)."""


@implementer(IRequestBody)
class RecordingBody:
    """The target's side of a request body: records what the source delivers, enforcing
    the rules.  ``on_write`` (if set) sees each piece after it is recorded."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False
        self.aborted: str | None = None
        """The reason of the first ``abort``, if any."""
        self.producer: IPushProducer | None = None
        self.on_write: Callable[[bytes], None] | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def _open(self, call: str) -> None:
        if self.aborted is not None:
            raise ContractViolation(f"request body {call} after abort({self.aborted!r})")
        if self.ended:
            raise ContractViolation(f"request body {call} after end()")

    def write(self, data: bytes) -> None:
        if not data:
            raise ContractViolation("empty request body write")
        self._open("write")
        self.chunks.append(data)
        if self.on_write is not None:
            self.on_write(data)

    def end(self) -> None:
        self._open("end()")
        self.ended = True

    def abort(self, reason: str) -> None:
        # Allowed after end(): the client may go while it waits for the response.
        if self.aborted is not None:
            raise ContractViolation(f"request body abort({reason!r}) after abort({self.aborted!r})")
        self.aborted = reason

    def setProducer(self, producer: IPushProducer) -> None:
        self.producer = producer


class TrailerBody(RecordingBody):
    """A :class:`RecordingBody` that also takes trailer fields (``trailer_fields``)."""

    def __init__(self) -> None:
        super().__init__()
        self.trailer_fields: Headers | None = None

    def trailers(self, fields: Headers) -> None:
        self._open("trailers")
        if self.trailer_fields is not None:
            raise ContractViolation("request body trailers twice")
        self.trailer_fields = fields


@implementer(IResponder)
class RecordingResponder:
    """The source's side of a response: records what the target delivers, enforcing the
    rules.  ``calls`` names every call in order; ``on_head`` (if set) sees the head."""

    def __init__(self) -> None:
        self.response: ResponseHead | None = None
        self.chunks: list[bytes] = []
        self.ended = False
        self.error: MeshError | None = None
        self.producer: IPushProducer | None = None
        self.calls: list[str] = []
        self.on_head: Callable[[ResponseHead], None] | None = None

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def _open(self, call: str) -> None:
        if self.error is not None:
            raise ContractViolation(f"response {call} after fail({self.error})")
        if self.ended:
            raise ContractViolation(f"response {call} after end()")

    def _head(self, call: str, head: ResponseHead) -> None:
        self._open(call)
        if self.response is not None:
            raise ContractViolation(f"response {call}: a head was given already")
        self.calls.append(call)
        self.response = head

    def head(self, head: ResponseHead) -> None:
        self._head("head", head)
        if self.on_head is not None:
            self.on_head(head)

    def write(self, data: bytes) -> None:
        if not data:
            raise ContractViolation("empty response body write")
        self._open("write")
        if self.response is None:
            raise ContractViolation("response write before the head")
        self.calls.append("write")
        self.chunks.append(data)

    def end(self) -> None:
        self._open("end()")
        if self.response is None:
            raise ContractViolation("response end() before the head")
        self.calls.append("end")
        self.ended = True

    def fail(self, error: MeshError) -> None:
        self._open(f"fail({error})")
        self.calls.append("fail")
        self.error = error

    def setProducer(self, producer: IPushProducer) -> None:
        self.producer = producer


@implementer(ICompletingResponder)
class CompletingResponder(RecordingResponder):
    """A :class:`RecordingResponder` that also takes a whole response in one call."""

    def complete(self, head: ResponseHead, body: bytes) -> None:
        self._head("complete", head)
        if body:
            self.chunks.append(body)
        self.ended = True


class TrailerResponder(RecordingResponder):
    """A :class:`RecordingResponder` that also takes trailer fields (``trailer_fields``);
    combine it with :class:`CompletingResponder` by subclassing both."""

    def __init__(self) -> None:
        super().__init__()
        self.trailer_fields: Headers | None = None

    def trailers(self, fields: Headers) -> None:
        self._open("trailers")
        if self.response is None:
            raise ContractViolation("response trailers before the head")
        if self.trailer_fields is not None:
            raise ContractViolation("response trailers twice")
        self.calls.append("trailers")
        self.trailer_fields = fields


@dataclass
class Opened:
    """One exchange a :class:`ScriptedTarget` opened: what it was given, and ways to answer."""

    route: Route | None
    """None when opened as a front's dispatch."""
    head: RequestHead
    responder: IResponder
    body: RecordingBody = field(default_factory=RecordingBody)
    """What :meth:`ScriptedTarget.open` returned: the request body as it arrives."""

    @property
    def endpoint(self) -> Endpoint | None:
        return None if self.route is None else self.route.endpoint

    def respond(
        self,
        status: int = 200,
        body: bytes = b"ok",
        headers: Headers = (),
        length: int | None | Literal["auto"] = "auto",
        reason: bytes = b"OK",
    ) -> None:
        """A whole response as head, write (if any body), end; Content-Length framed
        unless ``length`` says otherwise (None: unknown length)."""
        self.responder.head(ResponseHead(status, reason, headers, _length(body, length)))
        if body:
            self.responder.write(body)
        self.responder.end()

    def complete(
        self, status: int = 200, body: bytes = b"ok", headers: Headers = (), reason: bytes = b"OK"
    ) -> None:
        """A whole response in one ``complete`` call if the responder offers it, as a
        target that has it whole does; else as :meth:`respond`."""
        complete = COMPLETERS[type(self.responder)]
        if complete is None:
            self.respond(status, body, headers, reason=reason)
        else:
            complete(self.responder, ResponseHead(status, reason, headers, len(body)), body)

    def fail(self, reason: Reason, detail: str = "boom", unsent: bool = False) -> None:
        self.responder.fail(MeshError(reason, detail, unsent=unsent))


def _length(body: bytes, length: int | None | Literal["auto"]) -> int | None:
    return len(body) if length == "auto" else length


@implementer(ITarget)
class ScriptedTarget:
    """An ITarget that records every exchange it opens (``opened``) and runs ``answer``
    (if set) on it before ``open`` returns; ``raises`` (if set) is raised by ``open``
    instead (a broken target).  Calling it, ``(source, head, responder)``, opens an
    exchange without a route: a front's dispatch (the source kind is not kept)."""

    def __init__(
        self,
        kind: TargetKind = TargetKind.service_bus,
        answer: Callable[[Opened], None] | None = None,
    ) -> None:
        self.kind = kind
        self.answer = answer
        self.raises: BaseException | None = None
        self.opened: list[Opened] = []

    @property
    def paths(self) -> list[bytes]:
        return [call.head.path for call in self.opened]

    def open(self, route: Route | None, head: RequestHead, responder: IResponder) -> IRequestBody:
        if self.raises is not None:
            raise self.raises
        call = Opened(route, head, responder)
        self.opened.append(call)
        if self.answer is not None:
            self.answer(call)
        return call.body

    def __call__(
        self, source: SourceKind, head: RequestHead, responder: IResponder
    ) -> IRequestBody:
        return self.open(None, head, responder)
