"""The hot-path shortcuts of the wire layer say exactly what the general code says."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgemesh.wire import Data, FrameDecoder, Limits, decode_payload, encode_data
from edgemesh.wire._frames import PREFIX_SIZE, _data_fast, encode_data_head

streams = st.integers(min_value=1, max_value=(1 << 31) - 1)
bodies = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=0, max_value=70_000).map(lambda n: b"x" * n),
)


@given(streams, st.booleans(), bodies)
def test_data_head_plus_data_is_the_encoded_frame(stream: int, end: bool, data: bytes) -> None:
    assert encode_data_head(stream, end, len(data)) + data == encode_data(stream, end, data)


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


def test_split_frames_decode_the_same_through_the_fast_path() -> None:
    frames = b"".join(encode_data(s, s % 2 == 0, bytes([s]) * s * 100) for s in range(1, 40))
    decoder = FrameDecoder(Limits())
    got = []
    for index in range(0, len(frames), 997):
        got += decoder.feed(frames[index : index + 997])
    assert got == [Data(s, s % 2 == 0, bytes([s]) * s * 100) for s in range(1, 40)]


# --- issue 15: large DATA bodies gathered from the reads, joined once ----------------

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
    assert got == [Data(stream, end, data) for stream, end, data in frames]


def test_a_large_body_is_not_copied_through_the_bytearray() -> None:
    """A 200 KiB DATA frame in 64 KiB reads: the decoder's bytearray never holds more
    than a frame's head, and the body it returns is whole (before: the bytearray held
    every read, then the body was sliced out of it)."""
    body = bytes(range(256)) * 800
    wire = encode_data(7, True, body)
    decoder = FrameDecoder(Limits())
    got = []
    largest = 0
    for index in range(0, len(wire), 65_536):
        got += decoder.feed(wire[index : index + 65_536])
        largest = max(largest, len(decoder._buffer))
    assert got == [Data(7, True, body)]
    assert largest <= 32


def test_a_body_in_tiny_reads_is_held_in_few_pieces() -> None:
    """Pieces below 4 KiB are coalesced: a body read 100 bytes at a time is not held as
    thousands of objects."""
    body = b"y" * 60_000
    wire = encode_data(3, False, body)
    decoder = FrameDecoder(Limits())
    got = []
    most = 0
    for index in range(0, len(wire), 100):
        got += decoder.feed(wire[index : index + 100])
        most = max(most, len(decoder._body))
    assert got == [Data(3, False, body)]
    assert most <= 2


def test_large_data_frames_byte_by_byte() -> None:
    """Every cut, including inside the heads, of frames around a gathered body."""
    frames = [(1, False, b"a"), (3, False, bytes(range(256)) * 80), (3, True, b""),
              (5, True, b"z" * 17_000)]
    wire = b"".join(encode_data(stream, end, data) for stream, end, data in frames)
    decoder = FrameDecoder(Limits())
    got = []
    for index in range(len(wire)):
        got += decoder.feed(wire[index : index + 1])
    assert got == [Data(stream, end, data) for stream, end, data in frames]
