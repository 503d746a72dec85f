"""The hot-path shortcuts of the wire layer say exactly what the general code says."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemesh.wire import (
    Data,
    FrameDecoder,
    Limits,
    ProtocolError,
    Window,
    decode_payload,
    encode_data,
)
from edgemesh.wire._frames import (
    PREFIX_SIZE,
    _data_fast,
    _window_fast,
    encode_data_head,
    encode_window,
)

streams = st.integers(min_value=1, max_value=(1 << 31) - 1)
bodies = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=0, max_value=70_000).map(lambda n: b"x" * n),
)


@given(streams, st.booleans(), bodies)
def test_data_head_plus_data_is_the_encoded_frame(stream: int, end: bool, data: bytes) -> None:
    assert encode_data_head(stream, end, len(data)) + data == encode_data(stream, end, data)


def test_data_heads_at_the_stream_id_encodings_edges() -> None:
    """encode_data_head writes the stream id itself (no msgpack call): every width."""
    for stream in (1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, (1 << 31) - 1):
        for size in (0, 0xFF, 0x100, 0xFFFF, 0x10000):
            data = b"d" * size
            assert encode_data_head(stream, False, size) + data == encode_data(stream, False, data)


@given(streams, st.booleans(), bodies)
def test_fast_data_decoding_agrees_with_msgpack(stream: int, end: bool, data: bytes) -> None:
    frame = bytearray(encode_data(stream, end, data))
    fast = _data_fast(frame, PREFIX_SIZE, len(frame))
    assert fast == decode_payload(bytes(frame[PREFIX_SIZE:]), Limits()) == Data(stream, end, data)


@given(st.binary(min_size=5, max_size=40))
def test_fast_path_declines_what_it_does_not_recognise(payload: bytes) -> None:
    """Whatever it accepts is a valid DATA frame; everything else goes to decode_payload."""
    buffer = bytearray(payload)
    fast = _data_fast(buffer, 0, len(buffer))
    if fast is not None:
        assert decode_payload(payload, Limits()) == fast


@given(streams, streams)
def test_fast_window_decoding_agrees_with_msgpack(stream: int, increment: int) -> None:
    frame = bytearray(encode_window(stream, increment))
    fast = _window_fast(frame, PREFIX_SIZE, len(frame))
    assert fast == decode_payload(bytes(frame[PREFIX_SIZE:]), Limits()) == Window(stream, increment)
    assert FrameDecoder(Limits()).feed(memoryview(bytes(frame * 2)).toreadonly()) == [fast, fast]


@given(st.one_of(
    st.binary(min_size=4, max_size=16).map(lambda tail: b"\x93\x05" + tail[2:]),
    st.binary(min_size=4, max_size=16),
))
def test_fast_window_path_declines_what_it_does_not_recognise(payload: bytes) -> None:
    """Whatever it accepts decode_payload accepts the same; a WINDOW frame it declines (zero
    credit, a stream id past 2**31, a 64-bit integer, extra bytes) decode_payload judges."""
    fast = _window_fast(bytearray(payload), 0, len(payload))
    if fast is not None:
        assert decode_payload(payload, Limits()) == fast


def test_unusual_windows_go_to_the_general_decoder() -> None:
    for payload in (b"\x93\x05\x01\x00", b"\x93\x05\xce\x80\x00\x00\x00\x01"):
        frame = len(payload).to_bytes(4, "big") + payload
        assert _window_fast(bytearray(frame), PREFIX_SIZE, len(frame)) is None
        with pytest.raises(ProtocolError):
            FrameDecoder(Limits()).feed(frame)
    # A 64-bit encoding of a small value is valid msgpack: declined here, accepted there.
    payload = b"\x93\x05\xcf" + (7).to_bytes(8, "big") + b"\x09"
    assert _window_fast(bytearray(payload), 0, len(payload)) is None
    assert decode_payload(payload, Limits()) == Window(7, 9)


def test_split_frames_decode_the_same_through_the_fast_path() -> None:
    frames = b"".join(encode_data(s, s % 2 == 0, bytes([s]) * s * 100) for s in range(1, 40))
    decoder = FrameDecoder(Limits())
    got = []
    for index in range(0, len(frames), 997):
        got += decoder.feed(frames[index : index + 997])
    assert got == [Data(s, s % 2 == 0, bytes([s]) * s * 100) for s in range(1, 40)]


# --- issue 15: large DATA bodies handed on as they arrive, views of the reads ----------


def _merged(frames: list[Data]) -> list[tuple[int, bool, bytes]]:
    """Consecutive DATA frames of one stream as one (the decoder hands a large body on a
    piece per read): what a receiver makes of them, the stream's bytes and end in order."""
    out: list[tuple[int, bool, bytes]] = []
    for frame in frames:
        assert type(frame) is Data and not frame.trailers
        if out and out[-1][0] == frame.stream and not out[-1][1]:
            out[-1] = (frame.stream, frame.end, out[-1][2] + bytes(frame.data))
        else:
            out.append((frame.stream, frame.end, bytes(frame.data)))
    return out

_big_frames = st.lists(
    st.tuples(
        streams,
        st.booleans(),
        st.one_of(
            st.binary(max_size=40),
            st.integers(min_value=15_000, max_value=140_000).map(lambda n: bytes([n % 251]) * n),
        ),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(_big_frames, st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=30))
def test_large_data_frames_in_any_pieces(frames: list[tuple[int, bool, bytes]],
                                         cuts: list[int]) -> None:
    """Large DATA frames (gathered) among small ones, cut anywhere: the same frames."""
    wire = b"".join(encode_data(stream, end, data) for stream, end, data in frames)
    decoder = FrameDecoder(Limits())
    got = []
    position = 0
    # Pieces of at least 200 bytes (a few thousand reads at most); 1-byte and 100-byte
    # reads are tested on their own.
    for cut in [max(cut, 200) for cut in cuts] * (len(wire) // (200 * len(cuts)) + 1):
        got += decoder.feed(wire[position : position + cut])
        position += cut
        if position >= len(wire):
            break
    assert _merged(got) == _merged([Data(stream, end, data) for stream, end, data in frames])


def test_a_large_body_is_not_copied_through_the_bytearray() -> None:
    """A 200 KiB DATA frame in 64 KiB reads: the decoder's bytearray never holds more
    than a frame's head, each read's piece of the body is handed on at once as a view of
    that read (no copy, nothing held), the end on the last piece."""
    body = bytes(range(256)) * 800
    wire = encode_data(7, True, body)
    decoder = FrameDecoder(Limits())
    got: list[Data] = []
    largest = 0
    for index in range(0, len(wire), 65_536):
        read = wire[index : index + 65_536]
        pieces = decoder.feed(read)
        assert len(pieces) == 1
        piece = pieces[0]
        assert type(piece) is Data and type(piece.data) is memoryview
        assert piece.data.obj is read  # the read itself, not a copy
        got += pieces
        largest = max(largest, len(decoder._buffer))
    assert _merged(got) == [(7, True, body)]
    assert [frame.end for frame in got] == [False] * (len(got) - 1) + [True]
    assert largest <= 32


def test_a_whole_large_frame_in_a_read_is_a_view_of_it() -> None:
    body = b"v" * 100_000
    read = encode_data(5, False, body) + encode_data(5, True, b"small")
    frames = FrameDecoder(Limits()).feed(read)
    assert frames == [Data(5, False, body), Data(5, True, b"small")]
    first = frames[0]
    assert type(first) is Data and type(first.data) is memoryview and first.data.obj is read
    second = frames[1]
    assert type(second) is Data and type(second.data) is bytes


def test_a_body_in_tiny_reads_is_handed_on_in_few_pieces() -> None:
    """Pieces below 4 KiB are coalesced: a body read 100 bytes at a time is not handed on
    as hundreds of frames, and less than 4 KiB of it is held at any time."""
    body = b"y" * 60_000
    wire = encode_data(3, False, body)
    decoder = FrameDecoder(Limits())
    got = []
    most = 0
    for index in range(0, len(wire), 100):
        got += decoder.feed(wire[index : index + 100])
        most = max(most, len(decoder._small))
    assert _merged(got) == [(3, False, body)]
    assert len(got) <= 60_000 // 4096 + 1
    assert all(len(frame.data) >= 4096 for frame in got[:-1])  # type: ignore[union-attr]
    assert most < 4096


def test_large_data_frames_byte_by_byte() -> None:
    """Every cut, including inside the heads, of frames around a gathered body."""
    frames = [(1, False, b"a"), (3, False, bytes(range(256)) * 80), (3, True, b""),
              (5, True, b"z" * 17_000)]
    wire = b"".join(encode_data(stream, end, data) for stream, end, data in frames)
    decoder = FrameDecoder(Limits())
    got = []
    for index in range(len(wire)):
        got += decoder.feed(wire[index : index + 1])
    assert _merged(got) == _merged([Data(stream, end, data) for stream, end, data in frames])


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=12))
def test_any_short_payload_decodes_in_place_as_decode_payload_judges_it(payload: bytes) -> None:
    """A frame a read holds whole goes to _data_fast only when its type byte says DATA
    (else straight to decode_payload): whatever the payload, even of 0 or 1 bytes, the
    decoder gives what decode_payload gives, or a ProtocolError where it raises one."""
    from edgemesh.wire import ProtocolError

    framed = len(payload).to_bytes(PREFIX_SIZE, "big") + payload
    try:
        expected = [decode_payload(payload, Limits())]
    except ProtocolError:
        expected = None
    decoder = FrameDecoder(Limits())
    try:
        got = decoder.feed(framed)
    except ProtocolError:
        got = None
    assert got == expected
