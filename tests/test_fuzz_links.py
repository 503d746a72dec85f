"""Fuzzing one level above the frame decoder: an EnvelopeLink (wire.Connection, streams,
credit, the role's handler) fed a hello and then sequences of valid frames from the seed
corpus in any order, mutated, cut at random points (hardening scenarios 16 and 20).

Whatever arrives: nothing escapes ``dataReceived``, nothing is logged as an unexpected
failure (a traceback), a closed link leaves no timer behind, and each input takes bounded
time (hypothesis' deadline).  CI runs a modest number of inputs; ``EDGEMESH_FUZZ_EXAMPLES``
raises it (docs/fuzzing.md).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from zope.interface import implementer

from edgemesh.exchange import IRequestBody, IResponder, ResponseHead
from edgemesh.transports import EnvelopeLink
from edgemesh.wire import Request

CORPUS_DIR = Path(__file__).resolve().parent / "corpus" / "wire"
CORPUS = {p.stem: p.read_bytes() for p in sorted(CORPUS_DIR.glob("*.bin"))}
FRAMES = sorted(name for name in CORPUS if name != "hello")
FUZZ = settings(
    max_examples=int(os.environ.get("EDGEMESH_FUZZ_EXAMPLES", "150")),
    deadline=timedelta(milliseconds=1000),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@implementer(IRequestBody)
class Body:
    """A target's request body: answers the exchange once the request is over."""

    def __init__(self, responder: IResponder, answer: bool) -> None:
        self.responder = responder
        self.answer = answer
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def end(self) -> None:
        if self.answer:
            self.responder.head(ResponseHead(200, b"OK", ((b"X-Got", b"%d" % self.size),), None))
            self.responder.write(b"x" * 3000)
            self.responder.end()

    def abort(self, reason: str) -> None:
        pass

    def setProducer(self, producer: IPushProducer) -> None:
        pass


@dataclass
class Handler:
    answer: bool
    requests: list[Request] = field(default_factory=list)

    def link_ready(self, link: EnvelopeLink) -> None:
        pass

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        pass

    def inbound(self, link: EnvelopeLink, request: Request, responder: IResponder) -> IRequestBody:
        self.requests.append(request)
        return Body(responder, self.answer)

    def control(self, link: EnvelopeLink, frame: object) -> None:
        pass


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def exercise(stream: bytes, cuts: list[int], answer: bool, paused: bool) -> None:
    clock = MemoryReactorClock()
    handler = Handler(answer)
    link = EnvelopeLink(clock, handler, node="router", role="router", client=False)
    transport = StringTransport()
    protocol: Any = link
    with capturedLogs() as events:
        protocol.makeConnection(transport)
        if paused:
            link.pauseProducing()
        for piece in pieces(stream, cuts):
            link.dataReceived(piece)
            if link.closed:
                break
            clock.advance(0)
        if paused:
            link.resumeProducing()
        clock.advance(0)
        link.connectionLost()
    unexpected = [e for e in events if "log_failure" in e]
    assert unexpected == [], unexpected
    assert clock.getDelayedCalls() == [], "a closed link left a timer behind"


@given(
    frames=st.lists(st.sampled_from(FRAMES), max_size=24),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
    answer=st.booleans(),
    paused=st.booleans(),
)
@FUZZ
def test_frames_in_any_order(frames: list[str], cuts: list[int], answer: bool,
                             paused: bool) -> None:
    exercise(CORPUS["hello"] + b"".join(CORPUS[name] for name in frames), cuts, answer, paused)


@given(
    frames=st.lists(st.sampled_from(FRAMES), min_size=1, max_size=16),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    answer=st.booleans(),
)
@FUZZ
def test_mutated_frames_after_a_hello(frames: list[str],
                                      edits: list[tuple[int, int]], cuts: list[int],
                                      answer: bool) -> None:
    body = mutate(b"".join(CORPUS[name] for name in frames), edits)
    exercise(CORPUS["hello"] + body, cuts, answer, False)


@given(data=st.binary(max_size=1024), cuts=st.lists(st.integers(0, 1100), max_size=6))
@FUZZ
def test_random_bytes_after_a_hello(data: bytes, cuts: list[int]) -> None:
    exercise(CORPUS["hello"] + data, cuts, True, False)


def test_the_corpus_reaches_the_handler() -> None:
    """The fuzzed streams are meaningful: the corpus requests are routed as they are."""
    clock = MemoryReactorClock()
    handler = Handler(True)
    link = EnvelopeLink(clock, handler, node="router", role="router", client=False)
    protocol: Any = link
    protocol.makeConnection(StringTransport())
    link.dataReceived(
        CORPUS["hello"] + CORPUS["request-get"] + CORPUS["request-post"] + CORPUS["data"])
    assert [r.method for r in handler.requests] == [b"GET", b"POST"]
    assert not link.closed
