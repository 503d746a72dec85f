"""
Byte streams in the envelope protocol (issue 12): STREAM_OPEN / STREAM_ACCEPT frames, their
strict decoding, and the stream states in the sans-IO Connection (accept, data both ways
under the credit windows, half-close each way, reset), alone and mixed with HTTP exchanges
in a state machine.  Plain Python: no reactor.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from test_wire_connection import TwoConnections, _Flight, connected, open_request
from test_wire_frames import FUZZ, LIMITS, decode_all, ports, raw_frame, rejected, streams, texts

from edgemesh.wire import (
    Connection,
    Data,
    FrameDecoder,
    Hello,
    Limits,
    ProtocolError,
    Reset,
    StreamAccept,
    StreamOpen,
    decode_payload,
    encode_data,
    encode_hello,
    encode_response,
    encode_stream_accept,
    encode_stream_open,
)

STREAM_OPEN, STREAM_ACCEPT = 16, 17
"""The frame type numbers, repeated on purpose: they are the wire format."""


# --- frames -----------------------------------------------------------------------------


@st.composite
def stream_open_frames(draw: st.DrawFn) -> tuple[bytes, StreamOpen]:
    args = (
        draw(streams), draw(st.booleans()), draw(texts(64)), draw(texts(512)), draw(ports),
        draw(st.none() | st.tuples(texts(253), ports)), draw(st.binary(max_size=300)),
    )
    return encode_stream_open(*args), StreamOpen(*args)


@given(built=stream_open_frames())
@settings(max_examples=150)
def test_stream_open_round_trip(built: tuple[bytes, StreamOpen]) -> None:
    data, expected = built
    assert decode_all(data) == [expected]
    assert decode_payload(data[4:], LIMITS) == expected


@given(sid=streams)
def test_stream_accept_round_trip(sid: int) -> None:
    assert decode_all(encode_stream_accept(sid)) == [StreamAccept(sid)]


VALID_OPEN: tuple[Any, ...] = (STREAM_OPEN, 1, 0, "10.0.0.1", "ns/s", 6379, None, None, b"")


def _replace(fields: tuple[Any, ...], index: int, value: Any) -> tuple[Any, ...]:
    return fields[:index] + (value,) + fields[index + 1 :]


def test_valid_raw_fields_decode() -> None:
    assert decode_all(raw_frame(*VALID_OPEN)) == [
        StreamOpen(1, False, "10.0.0.1", "ns/s", 6379, None, b"")
    ]
    assert decode_all(raw_frame(STREAM_ACCEPT, 3)) == [StreamAccept(3)]
    with_endpoint = _replace(_replace(VALID_OPEN, 6, "10.4.0.1"), 7, 6380)
    [frame] = decode_all(raw_frame(*with_endpoint))
    assert isinstance(frame, StreamOpen) and frame.endpoint == ("10.4.0.1", 6380)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (1, 0), (1, 1 << 31), (1, True), (1, "1"), (2, 256), (2, -1), (3, b"ip"), (3, "x" * 65),
        (4, None), (4, "s" * 513), (5, 0), (5, 65536), (6, 7), (6, "h" * 254), (7, 6379),
        (8, "text"), (8, None),
    ],
)
def test_stream_open_wrong_fields(index: int, value: Any) -> None:
    rejected(raw_frame(*_replace(VALID_OPEN, index, value)))


def test_stream_open_endpoint_needs_a_valid_port() -> None:
    rejected(raw_frame(*_replace(_replace(VALID_OPEN, 6, "10.0.0.1"), 7, None)))
    rejected(raw_frame(*_replace(_replace(VALID_OPEN, 6, "10.0.0.1"), 7, 0)))


@pytest.mark.parametrize("fields", [(STREAM_ACCEPT, 0), (STREAM_ACCEPT, "1"), (STREAM_ACCEPT,),
                                    (STREAM_ACCEPT, 1, 0), VALID_OPEN[:-1], (*VALID_OPEN, 0)])
def test_malformed_stream_frames(fields: tuple[Any, ...]) -> None:
    rejected(raw_frame(*fields))


@given(kind=st.sampled_from([STREAM_OPEN, STREAM_ACCEPT]), size=st.integers(0, 14),
       rest=st.binary(max_size=512))
@FUZZ
def test_random_stream_payloads(kind: int, size: int, rest: bytes) -> None:
    payload = bytes([0x91 + size, kind]) + rest
    try:
        decode_payload(payload, LIMITS)
    except ProtocolError:
        pass


# --- the connection ---------------------------------------------------------------------


def open_byte_stream(
    client: Connection, server: Connection, data: bytes = b"", end: bool = False
) -> int:
    sid = client.open_stream(byte_stream=True)
    [event] = server.receive(
        client.send_stream_open(sid, "10.0.0.1", "ns/s", 6379, None, data, end))
    assert event == StreamOpen(sid, end, "10.0.0.1", "ns/s", 6379, None, data)
    return sid


def test_both_sides_say_they_take_byte_streams() -> None:
    client, server = connected()
    assert client.peer_byte_streams and server.peer_byte_streams


def test_no_byte_stream_to_a_peer_that_does_not_take_them() -> None:
    """An older peer (no byte_streams in its hello) would close the link on the frame."""
    client = Connection(client=True)
    client.receive(encode_hello("old", "edge", {"initial_window": 1024}))
    assert client.ready and not client.peer_byte_streams
    sid = client.open_stream(byte_stream=True)
    with pytest.raises(ValueError, match="does not take byte streams"):
        client.send_stream_open(sid, "", "ns/s", 1, None, b"", False)


def test_open_accept_data_both_ways_half_close_each_way() -> None:
    client, server = connected()
    sid = open_byte_stream(client, server, b"hello")
    # The opener may go on before the accept; the acceptor may not send before it.
    assert server.receive(client.send_data(sid, b" more", False)) == [Data(sid, False, b" more")]
    with pytest.raises(ValueError, match="before the response head"):
        server.send_data(sid, b"x", False)
    assert client.receive(server.send_stream_accept(sid)) == [StreamAccept(sid)]
    assert client.receive(server.send_data(sid, b"back", False)) == [Data(sid, False, b"back")]
    # Half-close: the opener's direction ends, the other one goes on.
    assert server.receive(client.send_data(sid, b"", True)) == [Data(sid, True, b"")]
    assert client.is_open(sid) and server.is_open(sid)
    assert client.receive(server.send_data(sid, b"after the half-close", False))
    assert client.receive(server.send_data(sid, b"", True)) == [Data(sid, True, b"")]
    assert not client.is_open(sid) and not server.is_open(sid)


def test_the_acceptor_may_half_close_first() -> None:
    client, server = connected()
    sid = open_byte_stream(client, server)
    client.receive(server.send_stream_accept(sid) + server.send_data(sid, b"bye", True))
    assert server.is_open(sid)
    assert server.receive(client.send_data(sid, b"still talking", False))
    server.receive(client.send_data(sid, b"", True))
    assert not client.is_open(sid) and not server.is_open(sid)


def test_opened_half_closed() -> None:
    client, server = connected()
    sid = open_byte_stream(client, server, b"GET", end=True)
    with pytest.raises(ProtocolError, match="out of order"):
        server.receive(encode_data(sid, False, b"more"))


def test_data_before_the_accept_is_a_protocol_error() -> None:
    client, server = connected()
    sid = open_byte_stream(client, server)
    with pytest.raises(ProtocolError, match="out of order"):
        client.receive(encode_data(sid, False, b"too early"))


def test_accept_only_for_our_byte_streams_and_once() -> None:
    client, server = connected()
    http = open_request(client, server)
    with pytest.raises(ProtocolError, match="unexpected stream accept"):
        client.receive(encode_stream_accept(http))
    client, server = connected()
    sid = open_byte_stream(client, server)
    client.receive(server.send_stream_accept(sid))
    with pytest.raises(ProtocolError, match="unexpected stream accept"):
        client.receive(encode_stream_accept(sid))
    client, server = connected()
    theirs = open_byte_stream(client, server)
    with pytest.raises(ProtocolError, match="unexpected stream accept"):
        server.receive(encode_stream_accept(theirs))  # the opener cannot accept its own


def test_no_http_response_on_a_byte_stream() -> None:
    client, server = connected()
    sid = open_byte_stream(client, server)
    with pytest.raises(ValueError):
        server.send_response(sid, 200, b"OK", (), 0, b"", True)
    with pytest.raises(ProtocolError, match="unexpected response"):
        client.receive(encode_response(sid, True, 200, b"OK", (), 0, b""))


def test_no_accept_for_a_request() -> None:
    client, server = connected()
    sid = open_request(client, server)
    with pytest.raises(ValueError):
        server.send_stream_accept(sid)


def test_stream_open_needs_a_fresh_id_of_the_peer() -> None:
    client, server = connected()
    open_request(client, server)
    with pytest.raises(ProtocolError, match="fresh stream id"):
        server.receive(encode_stream_open(1, False, "", "ns/s", 1, None, b""))
    client, server = connected()
    with pytest.raises(ProtocolError, match="fresh stream id"):
        server.receive(encode_stream_open(2, False, "", "ns/s", 1, None, b""))


def test_byte_streams_count_against_max_streams() -> None:
    client, server = connected(server_limits=Limits(max_streams=1))
    open_byte_stream(client, server)
    sid = client.open_stream(byte_stream=True)
    assert server.receive(client.send_stream_open(sid, "", "ns/s", 1, None, b"", False)) == []
    [refusal] = FrameDecoder(LIMITS).feed(server.data_to_send())
    assert refusal == Reset(sid, "overloaded", "too many concurrent streams")


def test_credit_bounds_a_byte_stream_both_ways() -> None:
    client, server = connected(Limits(initial_window=100, receive_budget=0),
                               Limits(initial_window=64, receive_budget=0))
    sid = client.open_stream(byte_stream=True)
    # Opener → acceptor: the acceptor's window (64), the open frame's data included.
    with pytest.raises(ValueError, match="exceed the window"):
        client.send_stream_open(sid, "", "ns/s", 1, None, b"x" * 65, False)
    server.receive(client.send_stream_open(sid, "", "ns/s", 1, None, b"x" * 60, False))
    assert client.send_window(sid) == 4
    with pytest.raises(ProtocolError, match="beyond its flow-control window"):
        server.receive(encode_data(sid, False, b"y" * 5))
    # Acceptor → opener: the opener's window (100).
    client, server = connected(Limits(initial_window=100, receive_budget=0),
                               Limits(initial_window=64, receive_budget=0))
    sid = open_byte_stream(client, server)
    client.receive(server.send_stream_accept(sid))
    assert server.send_window(sid) == 100
    client.receive(server.send_data(sid, b"z" * 100, False))
    assert server.send_window(sid) == 0
    window = client.consumed(sid, 100)
    server.receive(window)
    assert server.send_window(sid) == 100


def test_reset_either_way() -> None:
    client, server = connected()
    sid = open_byte_stream(client, server, b"x")
    [event] = client.receive(server.send_reset(sid, "upstream-refused", "connection refused"))
    assert event == Reset(sid, "upstream-refused", "connection refused")
    assert not client.is_open(sid) and not server.is_open(sid)
    # A late frame for the stream is dropped, not an error.
    assert server.receive(client.send_data(sid, b"late", False)) == []
    sid = open_byte_stream(client, server)
    client.receive(server.send_stream_accept(sid))
    server.receive(client.send_reset(sid, "cancelled", "client gone"))
    assert not server.is_open(sid)
    assert client.receive(encode_stream_accept(sid)) == []


def test_old_hello_settings_are_still_accepted() -> None:
    """A node of this version talks to one without byte streams: HTTP works as before."""
    client = Connection(client=True)
    [hello] = client.receive(encode_hello("old", "router", {"initial_window": 4096}))
    assert isinstance(hello, Hello)
    server = Connection(client=False)
    server.receive(client.hello("new", "edge"))
    sid = open_request(client, server, b"body", end=True)
    [_response] = client.receive(server.send_response(sid, 200, b"OK", (), 0, b"", True))
    assert not client.is_open(sid) and not server.is_open(sid)


# --- the state machine, with byte streams mixed in --------------------------------------


class TwoConnectionsWithByteStreams(TwoConnections):
    """The accounting state machine of test_wire_connection, where either side also opens
    byte streams, accepts the peer's, and half-closes them with the same data/end rules."""

    @rule(client=st.booleans(), body=st.integers(0, 200), end=st.booleans())
    def open_byte_stream(self, client: bool, body: int, end: bool) -> None:
        side, _ = self.sides(client)
        conn = side.conn
        sid = conn.open_stream(byte_stream=True)
        size = min(body, conn.send_window(sid))
        frame = conn.send_stream_open(sid, "", "ns/s", 7, None, b"o" * size, end)
        if end:
            side.ended.add(sid)
        side.outbox.append(_Flight(frame, sid, body=size, opens=True))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16), body=st.integers(0, 200),
          end=st.booleans())
    def respond(self, client: bool, pick: int, body: int, end: bool) -> None:
        """Answer a peer's request with a response, or accept a peer's byte stream."""
        side, _ = self.sides(client)
        waiting = [sid for sid in side.conn.stream_ids()
                   if not self.is_local(side, sid) and sid not in side.responded]
        if not waiting:
            return
        sid = waiting[pick % len(waiting)]
        side.responded.add(sid)
        if side.conn._streams[sid].byte_stream:
            side.outbox.append(_Flight(side.conn.send_stream_accept(sid), sid))
            return
        size = min(body, side.conn.send_window(sid))
        frame = side.conn.send_response(sid, 200, b"OK", (), None, b"y" * size, end)
        if end:
            side.ended.add(sid)
        side.outbox.append(_Flight(frame, sid, body=size))

    def deliver(self, sender: Any, receiver: Any) -> None:
        flight = sender.outbox[0]
        super().deliver(sender, receiver)
        # StreamOpen's data is body too (the base class counts requests' and responses').
        for event in FrameDecoder(LIMITS).feed(flight.data) if flight.opens else ():
            if isinstance(event, StreamOpen) and receiver.conn.is_open(event.stream):
                receiver.unconsumed[event.stream] = (
                    receiver.unconsumed.get(event.stream, 0) + len(event.data)
                )


TwoConnectionsWithByteStreams.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_two_connections_with_byte_streams = TwoConnectionsWithByteStreams.TestCase
