"""The hot-path shortcuts of the wire layer say exactly what the general code says."""

from __future__ import annotations

from hypothesis import given
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
