"""
The sans-IO envelope connection: handshake, stream ids, stream order, flow control.
Plain Python: two Connections talk by handing each other bytes.
"""

from __future__ import annotations

import copy
import struct
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from edgemesh.wire import (
    Ack,
    CatalogPush,
    Connection,
    Data,
    FrameDecoder,
    GoAway,
    Hello,
    Limits,
    Pong,
    ProtocolError,
    Request,
    Reset,
    Response,
    Window,
    encode_ack,
    encode_catalog,
    encode_data,
    encode_goaway,
    encode_hello,
    encode_ping,
    encode_pong,
    encode_request,
    encode_reset,
    encode_response,
    encode_window,
)
from edgemesh.wire._connection import MAX_STREAM_ID

HEADERS = ((b"Host", b"web"),)


def request(sid: int, end: bool = False, body: bytes = b"") -> bytes:
    return encode_request(
        sid, end, b"POST", b"/", b"web", HEADERS, None, "10.0.0.1", "default/web", 80, None, body
    )


def response(sid: int, end: bool = False, body: bytes = b"") -> bytes:
    return encode_response(sid, end, 200, b"OK", (), None, body)


def connected(
    client_limits: Limits | None = None, server_limits: Limits | None = None
) -> tuple[Connection, Connection]:
    """A client and a server Connection after both hellos."""
    client = Connection(client=True, limits=client_limits)
    server = Connection(client=False, limits=server_limits)
    assert server.receive(client.hello("edge-1", "edge")) == [
        Hello(1, "edge-1", "edge", {
            "initial_window": client.limits.initial_window,
            "max_frame": client.limits.max_frame,
            "max_data_frame": client.limits.max_data_frame,
            "max_streams": client.limits.max_streams,
            "hops": 1,
            "goaway_retry_after": 1,
            "trailers": 1,
            "byte_streams": 1,
        })
    ]
    assert server.peer_hops and not server.peer_move
    [hello] = client.receive(server.hello("router", "router"))
    assert isinstance(hello, Hello) and hello.node == "router"
    assert client.ready and server.ready
    return client, server


def open_request(client: Connection, server: Connection, body: bytes = b"",
                 end: bool = False) -> int:
    sid = client.open_stream()
    client.sent(sid, len(body), end)
    [event] = server.receive(request(sid, end, body))
    assert isinstance(event, Request) and event.stream == sid
    return sid


# --- handshake --------------------------------------------------------------------------


def test_not_ready_before_hello() -> None:
    conn = Connection(client=True)
    assert not conn.ready and conn.peer is None


@pytest.mark.parametrize(
    "first",
    [request(1), encode_data(1, False, b"x"), encode_ping(1), encode_window(1, 5),
     encode_catalog(1, "snapshot", {}), encode_ack(1), encode_goaway("x"), encode_pong(1),
     encode_reset(1, "cancelled", "")],
)
def test_hello_comes_first(first: bytes) -> None:
    server = Connection(client=False)
    with pytest.raises(ProtocolError, match="first frame must be a hello"):
        server.receive(first)


def test_hello_and_more_in_one_read() -> None:
    client = Connection(client=True)
    server = Connection(client=False)
    events = server.receive(client.hello("edge-1", "edge") + request(1, end=True))
    assert [type(e) for e in events] == [Hello, Request]


def test_a_stranger_cannot_make_us_buffer_a_large_frame() -> None:
    server = Connection(client=False)
    with pytest.raises(ProtocolError, match="first frame must be a hello"):
        server.receive(struct.pack(">I", 60 << 20) + bytes([0x91, 8]))
    assert len(server.decoder._buffer) == 0


def test_hello_and_a_large_catalog_in_one_read() -> None:
    limits = Limits(max_frame=1024, max_catalog_frame=1 << 16)
    edge = Connection(client=True, limits=limits)
    router = Connection(client=False, limits=limits)
    snapshot = {"services": ["s" * 100] * 50}
    events = edge.receive(
        router.hello("router", "router") + encode_catalog(4, "snapshot", snapshot))
    assert events[1:] == [CatalogPush(4, "snapshot", snapshot)]


@pytest.mark.parametrize("version", [0, 2, 99])
def test_version_mismatch(version: int) -> None:
    import msgpack

    payload = msgpack.packb([0, version, "edge-1", "edge", {"initial_window": 1024}])
    server = Connection(client=False)
    with pytest.raises(ProtocolError, match=f"unsupported protocol version {version}"):
        server.receive(len(payload).to_bytes(4, "big") + payload)


@pytest.mark.parametrize("settings_", [{}, {"initial_window": 0}, {"initial_window": 1 << 31}])
def test_hello_needs_a_usable_window(settings_: dict[str, int]) -> None:
    server = Connection(client=False)
    with pytest.raises(ProtocolError, match="initial_window"):
        server.receive(encode_hello("edge-1", "edge", settings_))


def test_second_hello() -> None:
    client, server = connected()
    with pytest.raises(ProtocolError, match="second hello"):
        server.receive(client.hello("edge-1", "edge"))


def test_peer_window_comes_from_its_hello() -> None:
    client, server = connected(Limits(initial_window=1000), Limits(initial_window=3000))
    sid = client.open_stream()
    assert client.send_window(sid) == 3000
    server.receive(request(sid))
    # The server answers within the client's window.
    server.send_response(sid, 200, b"OK", (), None, b"", False)
    assert server.send_window(sid) == 1000


def test_data_frames_are_as_large_as_the_peer_takes() -> None:
    """DATA frames up to our max_data_chunk to a peer whose hello takes them; to one that
    says nothing of them (every version before), no larger than its max_frame allows."""
    client, server = connected(server_limits=Limits(max_data_frame=512 * 1024))
    assert client.data_chunk == 512 * 1024 - 64
    assert server.data_chunk == Limits().max_data_chunk == 1024 * 1024 - 64
    for hello, chunk in (({"max_frame": 262144}, 262144 - 64),  # an older peer
                         ({}, 262144 - 64),
                         ({"max_frame": 262144, "max_data_frame": 4 << 20}, 1024 * 1024 - 64),
                         ({"max_frame": 100}, 16 * 1024)):  # (a floor)
        conn = Connection(client=True)
        assert conn.data_chunk == 262144 - 64  # before any hello
        conn.receive(encode_hello("peer", "edge", {"initial_window": 65536, **hello}))
        assert conn.data_chunk == chunk
    # A frame of the largest chunk is one the peer's decoder takes.
    roomy = Limits(initial_window=1 << 21, max_window=1 << 21)
    client, server = connected(roomy, roomy)
    sid = client.open_stream(sent_end=True)
    server.receive(request(sid, end=True))
    client.receive(server.send_response(sid, 200, b"OK", (), None, b"", False))
    body = b"x" * server.data_chunk
    head, allowed = server.data_head_within(sid, len(body) + 10, server.data_chunk)
    assert allowed == len(body) > roomy.max_frame
    assert client.receive(head + body) == [Data(sid, False, body)]


# --- stream ids -------------------------------------------------------------------------


def test_stream_id_parity() -> None:
    client, server = connected()
    assert [client.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [server.open_stream() for _ in range(3)] == [2, 4, 6]


@pytest.mark.parametrize("client", [True, False])
def test_exhausted_when_the_next_id_is_beyond_what_the_peer_accepts(client: bool) -> None:
    conn = Connection(client=client)
    states = [conn.exhausted]
    conn._next_local = MAX_STREAM_ID - (0 if client else 1)  # the last id of our parity
    states.append(conn.exhausted)
    last = conn.open_stream()
    states.append(conn.exhausted)
    assert states == [False, False, True]
    assert last in (MAX_STREAM_ID, MAX_STREAM_ID - 1)
    # The last id is still one a peer accepts; the next would not be.
    [frame] = FrameDecoder(Limits()).feed(request(last))
    assert isinstance(frame, Request) and frame.stream == last
    with pytest.raises(ProtocolError):
        FrameDecoder(Limits()).feed(request(last + 2))


@pytest.mark.parametrize("sid", [2, 4])
def test_client_may_not_use_even_ids(sid: int) -> None:
    _, server = connected()
    with pytest.raises(ProtocolError, match="not a fresh stream id"):
        server.receive(request(sid))


def test_server_may_not_use_odd_ids() -> None:
    client, _ = connected()
    with pytest.raises(ProtocolError, match="not a fresh stream id"):
        client.receive(request(1))


@pytest.mark.parametrize("second", [5, 3])
def test_stream_ids_must_increase(second: int) -> None:
    _, server = connected()
    server.receive(request(5, end=True))
    with pytest.raises(ProtocolError, match="not a fresh stream id"):
        server.receive(request(second))


def test_stream_ids_may_skip() -> None:
    _, server = connected()
    assert len(server.receive(request(1) + request(9) + request(11))) == 3
    assert server.stream_ids() == [1, 9, 11]


def test_both_sides_open_streams_on_one_connection() -> None:
    client, server = connected()
    up = open_request(client, server)
    down = server.open_stream()
    server.sent(down, 0, False)
    [event] = client.receive(request(down))
    assert isinstance(event, Request) and event.stream == down == 2
    assert sorted(client.stream_ids()) == sorted(server.stream_ids()) == [up, down]


def test_max_concurrent_streams_refused_with_overloaded() -> None:
    client, server = connected(server_limits=Limits(max_streams=2))
    first = open_request(client, server)
    open_request(client, server)
    third = client.open_stream()
    assert server.receive(request(third)) == []
    refusal = server.data_to_send()
    assert FrameDecoder(Limits()).feed(refusal) == [
        Reset(third, "overloaded", "too many concurrent streams")
    ]
    assert server.data_to_send() == b""
    # The client learns it; late frames of the refused stream are dropped, not errors.
    assert client.receive(refusal) == [Reset(third, "overloaded", "too many concurrent streams")]
    assert not client.is_open(third)
    assert server.receive(encode_data(third, True, b"")) == []
    # A finished stream frees a slot.
    server.receive(encode_data(first, True, b""))
    server.send_response(first, 200, b"OK", (), 0, b"", True)
    assert not server.is_open(first)
    fourth = open_request(client, server)
    assert server.is_open(fourth)


def test_refused_streams_do_not_count() -> None:
    client, server = connected(server_limits=Limits(max_streams=1))
    open_request(client, server)
    for _ in range(5):
        server.receive(request(client.open_stream()))
    assert server.active_streams == 1
    assert server.data_to_send().count(b"overloaded") == 5


# --- stream order -----------------------------------------------------------------------


def test_unknown_stream_is_an_error() -> None:
    client, _ = connected()
    for frame in (encode_data(1, False, b"x"), encode_window(1, 5), encode_reset(1, "x", "")):
        _, fresh = connected()
        with pytest.raises(ProtocolError, match="unknown stream"):
            fresh.receive(frame)
    with pytest.raises(ProtocolError, match="unknown stream"):
        client.receive(response(1))


def test_unknown_local_stream_is_an_error() -> None:
    client, server = connected()
    open_request(client, server)  # stream 1 exists; 3 was never opened
    for frame in (response(3), encode_data(3, False, b""), encode_window(3, 1),
                  encode_reset(3, "x", "")):
        _, fresh_client = connected()
        fresh_client.open_stream()
        with pytest.raises(ProtocolError, match="unknown stream"):
            fresh_client.receive(frame)


def test_response_only_on_our_streams_and_only_once() -> None:
    client, server = connected()
    sid = open_request(client, server)
    with pytest.raises(ProtocolError, match="unexpected response"):
        server.receive(response(sid))
    client2, server2 = connected()
    sid = open_request(client2, server2)
    client2.receive(response(sid))
    with pytest.raises(ProtocolError, match="unexpected response"):
        client2.receive(response(sid))


def test_response_body_before_head_is_an_error() -> None:
    client, server = connected()
    sid = open_request(client, server)
    with pytest.raises(ProtocolError, match="data out of order"):
        client.receive(encode_data(sid, False, b"x"))


def test_data_after_end_is_an_error() -> None:
    client, server = connected()
    sid = open_request(client, server)
    server.receive(encode_data(sid, True, b""))
    with pytest.raises(ProtocolError, match="data out of order"):
        server.receive(encode_data(sid, False, b"x"))


def test_request_with_end_then_data_is_an_error() -> None:
    client, server = connected()
    sid = open_request(client, server, end=True)
    with pytest.raises(ProtocolError, match="data out of order"):
        server.receive(encode_data(sid, False, b"x"))


def test_full_exchange_forgets_the_stream_on_both_sides() -> None:
    client, server = connected()
    sid = open_request(client, server, body=b"abc")
    [data] = server.receive(client.send_data(sid, b"def", True))
    assert data == Data(sid, True, b"def")
    assert client.is_open(sid) and server.is_open(sid)
    [head] = client.receive(server.send_response(sid, 200, b"OK", (), 6, b"ghi", False))
    assert head == Response(sid, False, 200, b"OK", (), 6, b"ghi")
    [last] = client.receive(server.send_data(sid, b"jkl", True))
    assert last == Data(sid, True, b"jkl")
    assert client.active_streams == server.active_streams == 0


def test_early_response_then_request_end() -> None:
    client, server = connected()
    sid = open_request(client, server)
    client.receive(server.send_response(sid, 413, b"Too Large", (), 0, b"", True))
    assert client.is_open(sid)  # our side has not ended yet
    server.receive(client.send_data(sid, b"", True))
    assert not client.is_open(sid) and not server.is_open(sid)


# --- reset ------------------------------------------------------------------------------


def test_reset_forgets_and_late_frames_are_ignored() -> None:
    client, server = connected()
    sid = open_request(client, server)
    head = server.send_response(sid, 200, b"OK", (), None, b"", False)
    racing = server.send_data(sid, b"x" * 100, False) + encode_window(sid, 10)
    reset = client.send_reset(sid, "cancelled", "client went away")
    assert not client.is_open(sid)
    # Everything the server sent before it saw the reset is dropped.
    assert client.receive(head + racing + server.send_data(sid, b"", True)) == []
    assert server.receive(reset) == [Reset(sid, "cancelled", "client went away")]
    assert server.active_streams == 0
    # Resetting again is a no-op.
    assert client.send_reset(sid, "cancelled", "again") == b""


def test_reset_from_the_peer_racing_our_reset() -> None:
    client, server = connected()
    sid = open_request(client, server)
    from_client = client.send_reset(sid, "cancelled", "")
    from_server = server.send_reset(sid, "overloaded", "")
    assert server.receive(from_client) == []
    assert client.receive(from_server) == []


def test_reset_frees_a_peer_stream_slot() -> None:
    client, server = connected(server_limits=Limits(max_streams=1))
    sid = open_request(client, server)
    server.receive(client.send_reset(sid, "cancelled", ""))
    open_request(client, server)
    assert server.data_to_send() == b""


# --- flow control -----------------------------------------------------------------------


def test_sending_beyond_the_window_is_a_protocol_error_at_the_receiver() -> None:
    client, server = connected(server_limits=Limits(initial_window=100))
    sid = open_request(client, server, body=b"x" * 40)
    server.receive(encode_data(sid, False, b"x" * 60))  # exactly the window
    with pytest.raises(ProtocolError, match="beyond its flow-control window"):
        server.receive(encode_data(sid, False, b"x"))


def test_request_body_counts_against_the_window() -> None:
    client, server = connected(server_limits=Limits(initial_window=10))
    sid = client.open_stream()
    with pytest.raises(ProtocolError, match="beyond its flow-control window"):
        server.receive(request(sid, body=b"x" * 11))


def test_response_body_counts_against_the_window() -> None:
    client, server = connected(client_limits=Limits(initial_window=10))
    sid = open_request(client, server)
    with pytest.raises(ProtocolError, match="beyond its flow-control window"):
        client.receive(encode_response(sid, False, 200, b"OK", (), None, b"x" * 11))


def test_sender_cannot_exceed_its_window() -> None:
    client, _ = connected(server_limits=Limits(initial_window=100))
    sid = client.open_stream()
    assert client.send_window(sid) == 100
    client.send_data(sid, b"x" * 100, False)
    assert client.send_window(sid) == 0
    with pytest.raises(ValueError, match="exceed the window"):
        client.send_data(sid, b"x", False)


def test_consumed_credits_back_in_batches_of_half_a_window() -> None:
    # Without a receive budget a stream's credit is its initial window, as before.
    client, server = connected(server_limits=Limits(initial_window=100, receive_budget=0))
    sid = open_request(client, server)
    server.receive(client.send_data(sid, b"x" * 100, False))
    assert client.send_window(sid) == 0
    assert server.consumed(sid, 30) == b""
    assert server.consumed(sid, 19) == b""
    credit = server.consumed(sid, 1)
    assert FrameDecoder(Limits()).feed(credit) == [Window(sid, 50)]
    assert client.receive(credit) == [Window(sid, 50)]
    assert client.send_window(sid) == 50
    # The server's window grew back by the same amount: 50 more bytes are fine, 51 not.
    server.receive(client.send_data(sid, b"x" * 50, False))
    with pytest.raises(ProtocolError):
        server.receive(encode_data(sid, False, b"x"))


def test_no_credit_after_the_peer_ended() -> None:
    client, server = connected(server_limits=Limits(initial_window=100))
    sid = open_request(client, server)
    server.receive(client.send_data(sid, b"x" * 100, True))
    assert server.consumed(sid, 100) == b""


def test_consumed_for_a_gone_stream() -> None:
    _, server = connected()
    assert server.consumed(99, 10**6) == b""


def test_window_overflow_is_an_error() -> None:
    client, server = connected()
    sid = open_request(client, server)
    with pytest.raises(ProtocolError, match="window overflow"):
        client.receive(encode_window(sid, (1 << 31) - 1))


def test_window_up_to_the_largest_credit_is_taken_once() -> None:
    """receive's inlined WINDOW (a known stream) credits exactly what _accept would: up to
    2**31 - 1 in all, the increment added once."""
    client, server = connected()
    sid = open_request(client, server)
    before = client.send_window(sid)
    assert client.receive(encode_window(sid, 7)) == [Window(sid, 7)]
    assert client.send_window(sid) == before + 7
    top = (1 << 31) - 1 - before - 7
    assert client.receive(encode_window(sid, top)) == [Window(sid, top)]
    assert client.send_window(sid) == (1 << 31) - 1
    with pytest.raises(ProtocolError, match="window overflow"):
        client.receive(encode_window(sid, 1))


def test_window_for_a_finished_stream_is_ignored() -> None:
    client, server = connected()
    sid = open_request(client, server, end=True)
    client.receive(server.send_response(sid, 204, b"No Content", (), 0, b"", True))
    assert client.active_streams == server.active_streams == 0
    assert client.receive(encode_window(sid, 100)) == []
    assert server.receive(encode_window(sid, 100)) == []


def test_send_window_of_an_ended_or_gone_stream_is_zero() -> None:
    client, server = connected()
    sid = open_request(client, server)
    client.sent(sid, 0, True)
    assert client.send_window(sid) == 0
    assert client.send_window(12345) == 0


# --- the receive budget: credit per link, decided by the receiver ------------------------

KIB = 1024
MIB = 1024 * KIB


def pump_body(client: Connection, server: Connection, sid: int, total: int,
              consume: bool = True) -> tuple[int, int]:
    """The client sends up to ``total`` bytes of request body as credit allows, the server
    consumes each piece at once (or never); returns (bytes sent, WINDOW frames)."""
    sent = windows = 0
    for _ in range(10_000):
        size = min(client.send_window(sid), total - sent, 128 * KIB)
        if size <= 0:
            break
        server.receive(client.send_data(sid, b"b" * size, False))
        sent += size
        if consume:
            credit = server.consumed(sid, size)
            if credit:
                windows += 1
                client.receive(credit)
    return sent, windows


def test_a_stream_starts_with_the_initial_window_and_grows_once_it_consumes() -> None:
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=2 * MIB)
    client, server = connected(server_limits=limits)
    sid = open_request(client, server)
    assert client.send_window(sid) == 64 * KIB
    sent, windows = pump_body(client, server, sid, 4 * MIB)
    assert sent == 4 * MIB
    # To the maximum at the first credit (the link is otherwise idle), then WINDOW frames
    # of half of it: as few as a fixed 1 MiB window would need.
    assert client.send_window(sid) > 512 * KIB
    assert server._streams[sid].target == 1 * MIB
    assert windows <= 4 * MIB // (512 * KIB) + 5


def test_without_budget_a_stream_keeps_the_initial_window() -> None:
    client, server = connected(server_limits=Limits(initial_window=64 * KIB, receive_budget=0))
    sid = open_request(client, server)
    sent, windows = pump_body(client, server, sid, 1 * MIB)
    assert sent == 1 * MIB and client.send_window(sid) <= 64 * KIB
    assert windows == 1 * MIB // (64 * KIB)


def test_the_budget_is_shared_evenly_between_busy_streams() -> None:
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=2 * MIB)
    client, server = connected(server_limits=limits)
    sids = [open_request(client, server) for _ in range(32)]
    for _ in range(8):
        for sid in sids:
            pump_body(client, server, sid, 256 * KIB)
    # 32 streams: at most 2 MiB / 32 each beyond the initial window, however much they
    # consumed; what the peer can make us hold is the budget plus 32 initial windows.
    assert all(server._streams[sid].target <= 128 * KIB for sid in sids)
    assert all(client.send_window(sid) >= 32 * KIB for sid in sids)
    assert server.receive_credit <= 2 * MIB + 32 * 64 * KIB
    assert server._extra <= 2 * MIB


def test_stalled_streams_never_starve_one_that_must_finish() -> None:
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=2 * MIB)
    client, server = connected(server_limits=limits)
    # Three streams grow to the maximum, then their consumers stall with all of their
    # credit used: together they hold more than the budget beyond their initial windows.
    stalled = [open_request(client, server) for _ in range(3)]
    for sid in stalled:
        pump_body(client, server, sid, 2 * MIB)
    for sid in stalled:
        pump_body(client, server, sid, 8 * MIB, consume=False)
        assert client.send_window(sid) == 0
    assert server._extra <= 2 * MIB
    # A fourth stream still gets through, on its own credit (at least the initial window).
    late = open_request(client, server)
    assert client.send_window(late) == 64 * KIB
    sent, _ = pump_body(client, server, late, 4 * MIB)
    assert sent == 4 * MIB
    assert server.receive_credit <= 2 * MIB + 4 * 64 * KIB
    # The stalled ones resume: what they were granted is credited back when consumed.
    for sid in stalled:
        held = server._streams[sid].granted
        credit = server.consumed(sid, held)
        assert credit
        client.receive(credit)
        assert client.send_window(sid) >= 32 * KIB


def test_credit_goes_back_to_the_budget_when_a_stream_ends() -> None:
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=1 * MIB)
    client, server = connected(server_limits=limits)
    first = open_request(client, server)
    pump_body(client, server, first, 4 * MIB)
    assert server._extra > 0
    server.receive(client.send_data(first, b"", True))
    assert server._extra == 0
    second = open_request(client, server)
    pump_body(client, server, second, 4 * MIB)
    assert server._streams[second].target == 1 * MIB


def test_requests_that_end_with_their_head_take_no_share_of_the_budget() -> None:
    """A request opened with its end (most are) is never counted among the streams that
    receive, before its response or after: a streaming one beside 31 of them, unanswered
    then answered, gets the budget's whole share, and sent_end on open_stream is as sent()."""
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=2 * MIB)
    client, server = connected(server_limits=limits)
    ended = [open_request(client, server, end=True) for _ in range(31)]
    assert all(server._streams[sid].received_end for sid in ended)
    body = open_request(client, server)
    pump_body(client, server, body, 2 * MIB)
    assert server._streams[body].target == 1 * MIB
    for sid in ended:
        client.receive(server.send_response(sid, 200, b"OK", (), 0, b"", True))
        assert not server.is_open(sid) and not client.is_open(sid)
    # The client's streams count only once a response says body follows: none has yet.
    assert server._receiving == 1 and client._receiving == 0
    sid = client.open_stream(sent_end=True)
    assert client.send_window(sid) == 0  # ended: no body may follow
    with pytest.raises(ValueError, match="already ended"):
        client.send_data(sid, b"x", False)
    server.receive(request(sid, True))
    client.receive(server.send_response(sid, 200, b"OK", (), 0, b"", True))
    assert not client.is_open(sid) and not server.is_open(sid)
    assert server._receiving == 1 and client._receiving == 0


def test_our_streams_count_as_receiving_from_a_response_that_is_not_whole() -> None:
    """A stream we opened receives nothing before its response head: it counts among the
    receiving streams (the budget's shares) from a response that says body follows, never
    for one that comes whole, and a reset before the response takes nothing off."""
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=1 * MIB)
    client, server = connected(client_limits=limits)
    waiting = [open_request(client, server, end=True) for _ in range(4)]
    assert client._receiving == 0
    assert client.consumed(waiting[0], 10) == b""  # nothing received yet: no credit
    client.receive(server.send_reset(waiting[0], "cancelled", "gone"))
    client.send_reset(waiting[1], "cancelled", "gone")
    assert client._receiving == 0
    client.receive(server.send_response(waiting[2], 200, b"OK", (), 5, b"he", False))
    assert client._receiving == 1  # its body follows
    # The only one receiving: the whole budget's share (half of it if waiting[3], still
    # unanswered, counted; a division by zero if this one did not).
    client.receive(server.send_data(waiting[2], b"llo", False))
    assert client.consumed(waiting[2], 5) != b""
    assert client._streams[waiting[2]].target == 1 * MIB
    client.receive(server.send_data(waiting[2], b"", True))
    assert client._receiving == 0 and client._extra == 0 and not client.is_open(waiting[2])
    client.send_reset(waiting[3], "cancelled", "gone")
    assert client._receiving == 0
    whole = open_request(client, server, end=True)
    client.receive(server.send_response(whole, 200, b"OK", (), 2, b"hi", True))
    assert client._receiving == 0 and not client.is_open(whole)
    # A response that ends while our request body still flows: the stream stays, not receiving.
    flowing = open_request(client, server, body=b"x")
    client.receive(server.send_response(flowing, 200, b"OK", (), 0, b"", True))
    assert client.is_open(flowing) and client._receiving == 0
    server.receive(client.send_data(flowing, b"", True))
    assert not client.is_open(flowing) and client._receiving == 0


def test_beyond_the_grown_credit_is_still_a_protocol_error() -> None:
    limits = Limits(initial_window=64 * KIB, max_window=1 * MIB, receive_budget=2 * MIB)
    client, server = connected(server_limits=limits)
    sid = open_request(client, server)
    pump_body(client, server, sid, 2 * MIB)
    left = server._streams[sid].recv_window
    assert left > 64 * KIB
    server.receive(encode_data(sid, False, b"x" * min(left, 128 * KIB)))
    left -= min(left, 128 * KIB)
    while left > 128 * KIB:
        server.receive(encode_data(sid, False, b"x" * 128 * KIB))
        left -= 128 * KIB
    with pytest.raises(ProtocolError, match="beyond its flow-control window"):
        server.receive(encode_data(sid, False, b"x" * (left + 1)))


# --- local misuse fails locally (the peer would drop the whole connection) -----------------


def test_no_data_after_our_end() -> None:
    client, server = connected()
    sid = open_request(client, server, end=True)
    with pytest.raises(ValueError, match="already ended"):
        client.send_data(sid, b"x", False)


def test_no_response_body_before_the_head() -> None:
    client, server = connected()
    sid = open_request(client, server)
    with pytest.raises(ValueError, match="before the response head"):
        server.send_data(sid, b"x", False)


def test_no_second_response_and_none_on_our_streams() -> None:
    client, server = connected()
    sid = open_request(client, server)
    server.send_response(sid, 200, b"OK", (), None, b"", False)
    with pytest.raises(ValueError):
        server.send_response(sid, 200, b"OK", (), None, b"", False)
    with pytest.raises(ValueError):
        client.send_response(sid, 200, b"OK", (), None, b"", False)


# --- control frames ---------------------------------------------------------------------


def test_ping_is_answered_with_pong() -> None:
    _, server = connected()
    assert server.receive(encode_ping(42) + encode_ping(7)) == []
    assert FrameDecoder(Limits()).feed(server.data_to_send()) == [Pong(42), Pong(7)]
    assert server.data_to_send() == b""


def test_control_frames_are_passed_on() -> None:
    client, _ = connected()
    frames = (encode_pong(3) + encode_catalog(2, "delta", {"a": [1]}) + encode_ack(2)
              + encode_goaway("bye"))
    assert client.receive(frames) == [
        Pong(3), CatalogPush(2, "delta", {"a": [1]}), Ack(2), GoAway("bye")
    ]


def test_connection_is_dead_after_a_protocol_error() -> None:
    _, server = connected()
    with pytest.raises(ProtocolError):
        server.receive(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(ProtocolError):
        server.receive(encode_ping(1))


# --- two connections, driven by hypothesis ------------------------------------------------


@dataclass
class _Flight:
    """A frame on its way, with what it carries for one stream."""

    data: bytes
    sid: int = 0
    body: int = 0
    credit: int = 0
    opens: bool = False


@dataclass
class _Side:
    conn: Connection
    outbox: deque[_Flight] = field(default_factory=deque)
    unconsumed: dict[int, int] = field(default_factory=dict)
    """Body bytes delivered to this side's application and not yet consumed, by stream."""
    responded: set[int] = field(default_factory=set)
    """Peer streams this side has answered."""
    ended: set[int] = field(default_factory=set)
    """Streams this side has ended."""


sizes = st.integers(0, 200)


class TwoConnections(RuleBasedStateMachine):
    """A client and a server open streams, send within their windows, consume, reset and
    end, with frames in flight both ways; the checks are the accounting between them."""

    @initialize(
        client_window=st.integers(1, 300),
        server_window=st.integers(1, 300),
        server_streams=st.integers(1, 4),
        max_windows=st.tuples(st.integers(1, 1000), st.integers(1, 1000)),
        budgets=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
    )
    def start(
        self, client_window: int, server_window: int, server_streams: int,
        max_windows: tuple[int, int], budgets: tuple[int, int],
    ) -> None:
        self.client = _Side(Connection(client=True, limits=Limits(
            initial_window=client_window, max_window=max_windows[0], receive_budget=budgets[0],
        )))
        self.server = _Side(Connection(client=False, limits=Limits(
            initial_window=server_window, max_streams=server_streams,
            max_window=max_windows[1], receive_budget=budgets[1],
        )))
        self.client.outbox.append(_Flight(self.client.conn.hello("edge-1", "edge")))
        self.server.outbox.append(_Flight(self.server.conn.hello("router", "router")))
        self.deliver_all()

    # helpers

    def sides(self, client: bool) -> tuple[_Side, _Side]:
        return (self.client, self.server) if client else (self.server, self.client)

    def deliver(self, sender: _Side, receiver: _Side) -> None:
        flight = sender.outbox.popleft()
        busy = sum(1 for sid in receiver.conn.stream_ids() if not self.is_local(receiver, sid))
        events = receiver.conn.receive(flight.data)
        if flight.opens and not events:
            # Refused: only when the peer already has as many streams as it allows.
            assert busy >= receiver.conn.limits.max_streams
        # Refusals and pongs the receiving connection queued itself.
        own = receiver.conn.data_to_send()
        if own:
            receiver.outbox.append(_Flight(own))
        for event in events:
            if isinstance(event, (Request, Response, Data)):
                size = (len(event.body) if isinstance(event, (Request, Response))
                        else len(event.data))
                receiver.unconsumed[event.stream] = receiver.unconsumed.get(event.stream, 0) + size
            elif isinstance(event, Reset):
                receiver.unconsumed.pop(event.stream, None)

    def deliver_all(self) -> None:
        while self.client.outbox or self.server.outbox:
            if self.client.outbox:
                self.deliver(self.client, self.server)
            if self.server.outbox:
                self.deliver(self.server, self.client)

    def sendable(self, side: _Side) -> list[int]:
        """Streams this side may send body on now."""
        conn = side.conn
        return [
            sid for sid in conn.stream_ids()
            if sid not in side.ended and (self.is_local(side, sid) or sid in side.responded)
        ]

    def is_local(self, side: _Side, sid: int) -> bool:
        return sid % 2 == (1 if side is self.client else 0)

    # rules

    @rule(client=st.booleans(), body=sizes, end=st.booleans())
    def open_stream(self, client: bool, body: int, end: bool) -> None:
        side, _ = self.sides(client)
        conn = side.conn
        sid = conn.open_stream()
        size = min(body, conn.send_window(sid))
        conn.sent(sid, size, end)
        if end:
            side.ended.add(sid)
        frame = encode_request(
            sid, end, b"PUT", b"/", b"a", (), None, "", "ns/s", 80, None, b"x" * size)
        side.outbox.append(_Flight(frame, sid, body=size, opens=True))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16), body=sizes, end=st.booleans())
    def respond(self, client: bool, pick: int, body: int, end: bool) -> None:
        side, _ = self.sides(client)
        waiting = [sid for sid in side.conn.stream_ids()
                   if not self.is_local(side, sid) and sid not in side.responded]
        if not waiting:
            return
        sid = waiting[pick % len(waiting)]
        size = min(body, side.conn.send_window(sid))
        frame = side.conn.send_response(sid, 200, b"OK", (), None, b"y" * size, end)
        side.responded.add(sid)
        if end:
            side.ended.add(sid)
        side.outbox.append(_Flight(frame, sid, body=size))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16), body=sizes, end=st.booleans())
    def send_data(self, client: bool, pick: int, body: int, end: bool) -> None:
        side, _ = self.sides(client)
        streams = self.sendable(side)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        size = min(body, side.conn.send_window(sid))
        if size == 0 and not end:
            return
        frame = side.conn.send_data(sid, b"z" * size, end)
        if end:
            side.ended.add(sid)
        side.outbox.append(_Flight(frame, sid, body=size))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16), body=sizes,
          most=st.integers(0, 250))
    def send_data_within(self, client: bool, pick: int, body: int, most: int) -> None:
        """The sending path's one call per frame (data_head_within): as much as the window,
        the chunk size and the body allow, accounted exactly as send_data would."""
        side, _ = self.sides(client)
        streams = self.sendable(side)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        window = side.conn.send_window(sid)
        head, size = side.conn.data_head_within(sid, body, most)
        assert size == max(0, min(window, most, body))
        assert side.conn.send_window(sid) == window - size
        if not size:
            assert head == b""
            return
        # What the sender reads instead of a send_window call (_Sender.send).
        assert side.conn.window_left == window - size
        side.outbox.append(_Flight(head + b"z" * size, sid, body=size))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16),
          amount=st.integers(1, 16) | st.integers(1, 300))
    def consume(self, client: bool, pick: int, amount: int) -> None:
        side, _ = self.sides(client)
        pending = sorted(sid for sid, size in side.unconsumed.items() if size)
        if not pending:
            return
        sid = pending[pick % len(pending)]
        size = min(amount, side.unconsumed[sid])
        side.unconsumed[sid] -= size
        credit = side.conn.consumed(sid, size)
        if credit:
            [window] = FrameDecoder(Limits()).feed(credit)
            assert isinstance(window, Window) and window.stream == sid
            # Batched: never a dribble below half of our window.
            assert window.increment * 2 >= side.conn.limits.initial_window
            side.outbox.append(_Flight(credit, sid, credit=window.increment))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16))
    def reset(self, client: bool, pick: int) -> None:
        side, _ = self.sides(client)
        streams = side.conn.stream_ids()
        if not streams:
            return
        sid = streams[pick % len(streams)]
        side.unconsumed.pop(sid, None)
        frame = side.conn.send_reset(sid, "cancelled", "")
        assert frame and not side.conn.is_open(sid)
        side.outbox.append(_Flight(frame))

    @rule(client=st.booleans(), pick=st.integers(0, 1 << 16))
    def overrun(self, client: bool, pick: int) -> None:
        """A peer that sends one byte beyond the credit it holds breaks the protocol,
        however much credit the budget granted (checked on a copy: it kills the link)."""
        side, _ = self.sides(client)
        open_ = [sid for sid, stream in side.conn._streams.items()
                 if not stream.received_end and (not self.is_local(side, sid) or stream.responded)]
        if not open_:
            return
        sid = open_[pick % len(open_)]
        receiver = copy.deepcopy(side.conn)
        beyond = receiver._streams[sid].recv_window + 1
        with pytest.raises(ProtocolError, match="beyond its flow-control window"):
            receiver.receive(encode_data(sid, False, b"x" * beyond))

    @rule()
    def drain(self) -> None:
        """Everything received is consumed and delivered: every stream the peer may still
        send on holds credit again (a consumer that takes everything never waits)."""
        self.deliver_all()
        for side in (self.client, self.server):
            for sid in sorted(side.unconsumed):
                size, side.unconsumed[sid] = side.unconsumed[sid], 0
                credit = side.conn.consumed(sid, size)
                if credit:
                    [window] = FrameDecoder(Limits()).feed(credit)
                    assert isinstance(window, Window)
                    side.outbox.append(_Flight(credit, sid, credit=window.increment))
        self.deliver_all()
        for sender, receiver in ((self.client, self.server), (self.server, self.client)):
            for sid, out in sender.conn._streams.items():
                into = receiver.conn._streams[sid]
                if not out.sent_end and not into.received_end:
                    assert out.send_window > 0

    @precondition(lambda self: bool(self.client.outbox))
    @rule()
    def deliver_to_server(self) -> None:
        self.deliver(self.client, self.server)

    @precondition(lambda self: bool(self.server.outbox))
    @rule()
    def deliver_to_client(self) -> None:
        self.deliver(self.server, self.client)

    @rule()
    def quiesce(self) -> None:
        self.deliver_all()
        # With nothing in flight both sides agree on which streams are still open...
        assert sorted(self.client.conn.stream_ids()) == sorted(self.server.conn.stream_ids())
        # ...and on each one's windows, exactly.
        for sid in self.client.conn.stream_ids():
            c = self.client.conn._streams[sid]
            s = self.server.conn._streams[sid]
            assert c.send_window == s.recv_window
            assert s.send_window == c.recv_window

    # invariants

    @invariant()
    def windows_never_negative(self) -> None:
        for side in (self.client, self.server):
            for stream in side.conn._streams.values():
                assert stream.send_window >= 0
                assert stream.recv_window >= 0
                assert stream.granted >= stream.recv_window

    @invariant()
    def credit_within_the_budget(self) -> None:
        """What a peer can make a side hold: at most the budget beyond the initial window
        of every stream, and no stream beyond its maximum."""
        for side in (self.client, self.server):
            limits = side.conn.limits
            streams = side.conn._streams
            top = max(limits.max_window, limits.initial_window)
            extra = 0
            for sid, stream in streams.items():
                if stream.received_end:
                    continue  # its credit went back to the budget
                assert stream.granted <= top and stream.target <= top
                extra += max(0, stream.granted - limits.initial_window)
                # Granted and not yet consumed: the credit left plus what the application
                # holds.
                assert stream.granted - stream.recv_window == side.unconsumed.get(sid, 0)
            assert extra <= limits.receive_budget
            assert side.conn._extra == extra
            assert side.conn.receive_credit <= (
                limits.receive_budget + len(streams) * limits.initial_window)

    @invariant()
    def credit_is_conserved(self) -> None:
        """For a stream both sides know: what the sender may still send, plus its body in
        flight, equals what the receiver still accepts minus the credit it sent that has
        not arrived yet."""
        for sender, receiver in ((self.client, self.server), (self.server, self.client)):
            for sid, out in sender.conn._streams.items():
                into = receiver.conn._streams.get(sid)
                if into is None or out.sent_end:
                    continue
                body = sum(f.body for f in sender.outbox if f.sid == sid)
                credit = sum(f.credit for f in receiver.outbox if f.sid == sid)
                assert out.send_window + body == into.recv_window - credit

    @invariant()
    def peer_streams_within_the_limit(self) -> None:
        limit = self.server.conn.limits.max_streams
        remote = [sid for sid in self.server.conn.stream_ids() if sid % 2 == 1]
        assert len(remote) <= limit


TwoConnections.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_two_connections = TwoConnections.TestCase
