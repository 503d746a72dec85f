"""The pod client against hostile responses (hardening scenario 16's other side): a pod's
responses mutated byte by byte and read in random pieces (docs/fuzzing.md).

A pod is not trusted to speak HTTP well.  Whatever it sends, nothing escapes the pod
connection's ``dataReceived``; the exchange ends exactly once (a response, or the mesh's
own error with an upstream reason; a body that stalls is stopped by its source); and a
connection goes back to the pool only in a clean state: the next exchange on it reads the
next response, not the rest of a mangled one (no response desync).
"""

from __future__ import annotations

from fuzzkit import FUZZ, Mutation, mutate, mutations, split
from hypothesis import event, given
from hypothesis import strategies as st
from test_upstream import GET, OK_HELLO, Harness
from twisted.internet import error

from edgemesh.exchange import Reason, RequestHead

HEAD = RequestHead(method=b"HEAD", path=b"/h", authority=b"web",
                   headers=((b"Host", b"web"),), content_length=0)

RESPONSES = [
    OK_HELLO,
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n4\r\nbody\r\n0\r\n"
     b"X-T: 1\r\n\r\n"),
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
     b"X-Long: " + b"v" * 200 + b"\r\n\r\nno"),
]
"""Valid pod responses: each framing (Content-Length, chunked with an extension and with
trailers, bodiless statuses, read until close), an interim response before the final one."""

_MUTATION = mutations([
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"Content-Length: 3\r\n",
    b"Content-Length: 99999999999999999999\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n", b"Connection: close\r\n", b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
])

_UPSTREAM_REASONS = {Reason.upstream_bad_response, Reason.upstream_lost,
                     Reason.upstream_timeout}

def _exercise(reads: list[bytes], head: RequestHead, close: bool) -> None:
    h = Harness(max_response_header_bytes=1024, max_response_header_count=16)
    _body, responder = h.open(head)
    upstream = h.accept()
    upstream.received()
    for data in reads:
        if upstream.closed or upstream.aborted:
            break  # the pod client hung up: the rest would go nowhere
        upstream.send(data)
    if close and not (upstream.closed or upstream.aborted):
        upstream.close(error.ConnectionDone())
    if not (responder.ended or responder.error is not None):
        h.reactor.advance(h.target.request_timeout + 1)  # a head that never comes
    if not (responder.ended or responder.error is not None):
        # A body that stalls after its head: the request timeout ends at the head, and the
        # source's own idle timeout stops the exchange (its producer), as here.
        assert responder.response is not None and responder.producer is not None
        responder.producer.stopProducing()
        assert upstream.aborted or upstream.closed
        assert h.idle() == 0
        event("a body that stalls")
        return
    # The RecordingResponder enforces the call order: nothing after end() or fail().
    assert responder.ended != (responder.error is not None), responder.calls
    if responder.error is not None:
        assert responder.error.reason in _UPSTREAM_REASONS, responder.error
        assert h.idle() == 0
        event(f"failed: {responder.error.reason.code}")
    if h.idle() == 0:
        if responder.ended:
            event("a response, then the connection closed")
        return
    event("a response, then the connection reused")
    # Pooled: the connection must be clean.  The next exchange reuses it and reads exactly
    # the next response.
    assert not (upstream.closed or upstream.aborted)
    _body, after = h.open(GET)
    assert h.connections() == 1
    assert upstream.received().startswith(b"GET /hello?x=1 HTTP/1.1\r\n")
    upstream.send(OK_HELLO)
    assert after.ended and after.error is None, after.calls
    assert (after.status, after.body) == (200, b"hello")


@FUZZ
@given(
    st.sampled_from(RESPONSES),
    st.lists(_MUTATION, min_size=1, max_size=4),
    st.lists(st.integers(0, 2000), max_size=6),
    st.integers(1, 2),
    st.sampled_from([GET, HEAD]),
    st.booleans(),
)
def test_mutated_pod_responses(
    seed: bytes, changes: list[Mutation], cuts: list[int], copies: int, head: RequestHead,
    close: bool,
) -> None:
    _exercise(split(mutate(seed * copies, changes), cuts), head, close)


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6), st.booleans())
def test_random_bytes_as_a_pod_response(data: bytes, cuts: list[int], close: bool) -> None:
    _exercise(split(data, cuts), GET, close)
