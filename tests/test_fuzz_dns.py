"""The edge's DNS server against hostile queries: datagrams and TCP streams of random bytes
and of valid queries mutated byte by byte (docs/fuzzing.md).

Any pod on the node can send the DNS server anything.  Whatever it sends, nothing escapes
the protocol (twisted.names' parsing, our resolvers and factory), nothing is logged as an
unhandled failure, a datagram gets at most one reply, every reply is a well-formed DNS
response (QR set: never a query that another server would answer) sent back to the sender,
no UDP reply is over 1232 bytes (512 to an intact query without EDNS), and an intact query
is answered (a mesh name from the catalog, each query of a TCP stream to its id).
"""

from __future__ import annotations

import struct
from typing import Any

from fuzzkit import FUZZ, Mutation, mutate, mutations, split
from hypothesis import given
from hypothesis import strategies as st
from test_dns import a_records, server
from test_front import captured_log
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns

NAMES = [b"web.default.svc.cluster.local", b"web", b"web.default", b"example.org",
         b"hang.example.org", b"nx.example.org", b"servfail.example.org",
         b"many.example.org",  # (60 addresses: more than 512 bytes)
         b"_http._tcp.web.default.svc.cluster.local", b"11.0.96.10.in-addr.arpa"]
TYPES = [dns.A, dns.AAAA, dns.SRV, dns.PTR, dns.TXT, dns.ANY, dns.MX, 0, 65535]

_MUTATION = mutations([b"\xc0\x0c", b"\x3f", b"\xff" * 4, b"\x00\x01\x00\x01", b"."])

def _query(name: bytes, kind: int, ident: int, edns: bool) -> bytes:
    message = dns.Message(id=ident, recDes=True)
    message.queries = [dns.Query(name, kind, dns.IN)]
    if edns:
        return dns._EDNSMessage._fromMessage(message).toStr()  # type: ignore[attr-defined]
    return message.toStr()  # type: ignore[no-any-return]


class _Datagrams:
    """A UDP port's transport: what the server sent, to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))


def _failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events logged with a failure, or at error level or above."""
    return [e for e in events
            if "log_failure" in e or e.get("isError")
            or getattr(e.get("log_level"), "name", "") in ("error", "critical")]


def _answers(sent: list[bytes]) -> list[dns.Message]:
    """Every reply decodes as a DNS response."""
    replies = []
    for data in sent:
        reply = dns.Message()
        reply.fromStr(data)
        assert reply.answer  # the QR bit: a response, never a query sent out by mistake
        replies.append(reply)
    return replies


def _datagram(data: bytes) -> list[dns.Message]:
    clock = Clock()
    factory, _upstream = server(clock)
    protocol = dns.DNSDatagramProtocol(factory, reactor=clock)
    transport = _Datagrams()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    protocol.datagramReceived(data, ("127.0.0.1", 5353))
    clock.advance(60)  # forwarded queries that hang time out
    assert len(transport.sent) <= 1
    assert all(addr == ("127.0.0.1", 5353) for _, addr in transport.sent)
    assert all(len(reply) <= 1232 for reply, _ in transport.sent), "over the UDP limit"
    return _answers([data for data, _ in transport.sent])


def _stream(reads: list[bytes]) -> list[dns.Message]:
    clock = Clock()
    factory, _upstream = server(clock)
    protocol = factory.buildProtocol(("127.0.0.1", 5353))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    for data in reads:
        if transport.disconnecting:
            break
        protocol.dataReceived(data)
    clock.advance(factory.tcp_idle_timeout + 1)  # the idle timeout ends every connection
    assert transport.disconnecting
    out, replies = transport.value(), []
    while len(out) >= 2:
        (size,) = struct.unpack("!H", out[:2])
        replies.append(out[2:2 + size])
        out = out[2 + size:]
    assert out == b""
    return _answers(replies)


@FUZZ
@given(st.sampled_from(NAMES), st.sampled_from(TYPES), st.integers(0, 65535), st.booleans(),
       st.lists(_MUTATION, min_size=1, max_size=4))
def test_mutated_queries_over_udp(
    name: bytes, kind: int, ident: int, edns: bool, changes: list[Mutation],
) -> None:
    valid = _query(name, kind, ident, edns)
    data = mutate(valid, changes)
    with captured_log() as events:
        replies = _datagram(data)
    assert _failures(events) == []
    if data == valid and name.startswith(b"web") and kind == dns.A:
        [reply] = replies
        assert (reply.id, reply.rCode, a_records(reply)) == (ident, dns.OK, ["10.96.0.11"])
    if data == valid and name.startswith(b"many") and kind == dns.A and not edns:
        [reply] = replies
        assert reply.trunc and 0 < len(reply.answers) < 60  # the records that fit, and TC


@FUZZ
@given(st.binary(max_size=600))
def test_random_datagrams(data: bytes) -> None:
    with captured_log() as events:
        _datagram(data)
    assert _failures(events) == []


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(TYPES)), min_size=1,
                max_size=4),
       st.lists(_MUTATION, max_size=4), st.lists(st.integers(0, 400), max_size=6))
def test_mutated_query_streams_over_tcp(
    queries: list[tuple[bytes, int]], changes: list[Mutation], cuts: list[int],
) -> None:
    messages = [_query(name, kind, index, False) for index, (name, kind) in enumerate(queries)]
    valid = b"".join(struct.pack("!H", len(m)) + m for m in messages)
    data = mutate(valid, changes)
    with captured_log() as events:
        replies = _stream(split(data, cuts))
    assert _failures(events) == []
    if data == valid:  # intact: an answer per query, to its id (hang.*: upstream never answers)
        answered = [i for i, (name, _kind) in enumerate(queries) if not name.startswith(b"hang.")]
        assert sorted(reply.id for reply in replies) == answered
