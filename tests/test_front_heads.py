"""The HTTP front's memory of request heads (issue 15, fourth pass): a read that holds
exactly one whole request without a body, seen before, goes to its exchange without llhttp.

Driven as test_front.py drives the front (its helpers)."""

from __future__ import annotations

from typing import Any

from test_front import Conn, answer_ok, get

from edgemesh.testing import ScriptedTarget
from edgemesh.transports._front import FrontLimits


def _feeds(conn: Conn) -> list[bytes]:
    """Record what reaches the connection's llhttp parser from now on."""
    fed: list[bytes] = []
    parser = conn.protocol._parser
    assert parser is not None
    real = parser.feed_data

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(parser, name)

        def feed_data(self, data: bytes) -> None:
            fed.append(bytes(data))
            real(data)

    conn.protocol._parser = Spy()  # type: ignore[assignment]
    return fed


def test_a_request_head_seen_before_is_not_parsed_again() -> None:
    from edgemesh.transports import _front

    _front._requests_seen.clear()
    target = ScriptedTarget(answer=answer_ok)
    conn = Conn(target)
    fed = _feeds(conn)
    request = get(b"/r", b"X-Edgemesh-Hops: 2\r\nConnection: keep-alive, x-drop\r\n"
                        b"X-Drop: 1\r\nX-Keep: 2\r\n")
    for _ in range(3):
        conn.send(request)
    assert fed == [request]  # llhttp saw the first read only
    first, second, third = (call.head for call in target.opened)
    assert first == second == third
    assert first.headers == ((b"Host", b"web"), (b"X-Keep", b"2")) and first.hops == 2
    assert second is not first  # each exchange has its own head (the pipeline changes hops)
    assert [r.body for r in conn.responses()] == [b"ok:/r"] * 3
    assert not conn.closed
    # Another client on the same listener: its own address in the head.
    other = Conn(target)
    other.protocol._client = "10.9.9.9"
    other.send(request)
    assert target.opened[3].head.client == "10.9.9.9" and first.client == "10.1.2.3"


def test_request_heads_remembered_only_whole_alone_and_without_a_body() -> None:
    from edgemesh.transports import _front

    _front._requests_seen.clear()
    post = b"POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi"
    two = get(b"/1") + get(b"/2")
    split = get(b"/split")
    for reads in ([post], [two], [split[:10], split[10:]]):
        target = ScriptedTarget()
        conn = Conn(target)
        fed = _feeds(conn)
        answered = 0
        for _ in range(2):
            conn.send(*reads)
            while answered < len(target.opened):  # a pipelined one starts after the first
                target.opened[answered].respond(body=b"ok")
                answered += 1
        assert fed == reads * 2, reads  # llhttp parsed every one of them
        assert len(conn.responses()) == len(target.opened) and not conn.closed
    assert [call.head.path for call in target.opened] == [b"/split"] * 2
    assert not _front._requests_seen


def test_a_remembered_request_head_is_judged_by_the_limits_at_hand() -> None:
    from edgemesh.transports import _front

    _front._requests_seen.clear()
    target = ScriptedTarget(answer=answer_ok)
    request = get(b"/", b"X-A: 1\r\nX-B: 2\r\n")
    Conn(target).send(request)
    assert request in _front._requests_seen
    strict = Conn(target, FrontLimits(max_header_count=2))
    strict.send(request)
    [response] = strict.responses()
    assert response.status == 431 and strict.closed
    assert len(target.opened) == 1


def test_a_remembered_request_head_still_closes_and_rejects_as_parsed() -> None:
    from edgemesh.transports import _front

    _front._requests_seen.clear()
    target = ScriptedTarget(answer=answer_ok)
    closing = get(b"/c", b"Connection: close\r\n")
    for _ in range(2):
        conn = Conn(target)
        conn.send(closing, get(b"/after"))
        assert [r.body for r in conn.responses()] == [b"ok:/c"] and conn.closed
    bad = b"GET /x HTTP/1.1\r\n\r\n"  # no Host: refused, never remembered
    for _ in range(2):
        conn = Conn(target)
        conn.send(bad)
        assert conn.responses()[0].status == 400
    assert bad not in _front._requests_seen
    # Past max_pipelined queued requests, a remembered head is refused as a parsed one is:
    # the same transcript with the memory and without it.
    request = get(b"/q")

    def pipelined(forget: bool) -> tuple[list[tuple[int, bytes]], bool, int]:
        waiting = ScriptedTarget()
        conn = Conn(waiting, FrontLimits(max_pipelined=1))
        for _ in range(3):
            if forget:
                _front._requests_seen.clear()
            else:
                assert request in _front._requests_seen
            conn.send(request)
        answered = 0
        while answered < len(waiting.opened):
            waiting.opened[answered].respond(body=b"ok")
            answered += 1
        return [(r.status, r.body) for r in conn.responses()], conn.closed, answered

    Conn(target).send(request)
    remembered = pipelined(False)
    assert remembered == pipelined(True)
    assert remembered[0][-1][0] == 503 and remembered[1]
    # Bounded in count and size.
    for i in range(3 * _front._REQUESTS_SEEN_BOUND):
        Conn(target).send(get(b"/n%d" % i))
    Conn(target).send(get(b"/", b"X-Big: " + b"x" * 4096 + b"\r\n"))
    assert len(_front._requests_seen) <= _front._REQUESTS_SEEN_BOUND
    assert all(len(k) <= _front._REQUEST_SEEN_LENGTH for k in _front._requests_seen)
