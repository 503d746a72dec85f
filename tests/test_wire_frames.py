"""
Envelope frames: encode/decode round trips, strict validation and hostile input
(hardening scenarios 16-21).  Plain Python: no reactor.

The seed corpus in ``tests/corpus/wire`` is the encoding of a few fixed frames; it pins
the wire format (a test compares it with the encoders) and seeds the mutation fuzzing.
Regenerate it with ``python tests/test_wire_frames.py`` after a deliberate format change.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgemesh.catalog import (
    Catalog,
    Endpoint,
    Node,
    Service,
    ServicePort,
    catalog_from_wire,
    catalog_to_wire,
)
from edgemesh.wire import (
    DATA_HEAD_MAX,
    PROTOCOL_VERSION,
    Ack,
    CatalogPush,
    Data,
    Frame,
    FrameDecoder,
    GoAway,
    Hello,
    Limits,
    Ping,
    Pong,
    ProtocolError,
    Request,
    Reset,
    Response,
    Window,
    decode_payload,
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
    encode_stream_accept,
    encode_stream_open,
    encode_window,
)

CORPUS_DIR = Path(__file__).resolve().parent / "corpus" / "wire"
LIMITS = Limits()
FUZZ = settings(
    # CI runs a modest number; a longer run: EDGEMESH_FUZZ_EXAMPLES=200000 (docs/fuzzing.md).
    max_examples=int(os.environ.get("EDGEMESH_FUZZ_EXAMPLES", "200")),
    deadline=timedelta(milliseconds=500),
    suppress_health_check=[HealthCheck.too_slow],
)

# Frame type numbers, repeated here on purpose: they are the wire format.
HELLO, REQUEST, DATA, RESPONSE, RESET, WINDOW, PING, PONG, CATALOG, ACK, GOAWAY = range(11)


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def raw_frame(*fields: Any) -> bytes:
    """A frame built with plain msgpack, bypassing the encoders' types."""
    return framed(msgpack.packb(list(fields), use_bin_type=True))


def decode_all(data: bytes, limits: Limits = LIMITS) -> list[Frame]:
    return FrameDecoder(limits).feed(data)


def rejected(data: bytes, limits: Limits = LIMITS) -> ProtocolError:
    """Feed ``data`` to a fresh decoder, which must refuse it (and then refuse anything)."""
    decoder = FrameDecoder(limits)
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.feed(encode_ping(1))
    return caught.value


# --- the seed corpus --------------------------------------------------------------------

REQUEST_HEADERS = ((b"Accept", b"*/*"), (b"X-Trace", b"a\tb \x80\xff"))


def corpus_frames() -> dict[str, bytes]:
    """One valid frame per file: every type, with and without optional parts."""
    return {
        "hello.bin": encode_hello(
            "edge-1", "edge", {"initial_window": 262144, "max_frame": 1 << 20, "max_streams": 1024}
        ),
        "request-get.bin": encode_request(
            1, True, b"GET", b"/items?id=7", b"web.shop:8080", REQUEST_HEADERS, 0,
            "10.1.2.3", "shop/web", 8080, None, b"",
        ),
        "request-post.bin": encode_request(
            3, False, b"POST", b"/upload", b"[fd00::1]:80", ((b"Content-Type", b"text/plain"),),
            None, "fd00::9", "shop/upload", 80, ("10.4.0.12", 8080), b"first part",
        ),
        "data.bin": encode_data(3, False, b"\x00\x01\x02 body bytes"),
        "data-end.bin": encode_data(3, True, b""),
        "response.bin": encode_response(
            1, False, 200, b"OK", ((b"Content-Length", b"5"),), 5, b"hel"
        ),
        "response-end.bin": encode_response(3, True, 404, b"Not Found", (), 0, b""),
        "reset.bin": encode_reset(5, "upstream-timeout", "no answer in 15 s"),
        "window.bin": encode_window(3, 131072),
        "ping.bin": encode_ping(1234567890123),
        "pong.bin": encode_pong(1234567890123),
        "catalog.bin": encode_catalog(7, "snapshot", catalog_to_wire(_sample_catalog())),
        "ack.bin": encode_ack(7),
        "goaway.bin": encode_goaway("draining"),
        "stream-open.bin": encode_stream_open(
            5, False, "10.1.2.3", "shop/redis", 6379, ("10.4.0.12", 6379), b"PING\r\n"
        ),
        "stream-open-end.bin": encode_stream_open(7, True, "", "shop/echo", 7, None, b""),
        "stream-accept.bin": encode_stream_accept(5),
    }


def _sample_catalog() -> Catalog:
    port = ServicePort("http", 80, 8080)
    endpoints = (
        Endpoint("10.4.0.12", 8080, "edge-1", pod="shop/web-1"),
        Endpoint("10.4.1.7", 8080, "cloud-1", ready=False, zone="z1"),
    )
    service = Service("shop", "web", "10.96.0.10", (port,), {"http": endpoints}, {"a/b": "c"})
    nodes = (Node("edge-1", True, "192.0.2.1", 7701), Node("cloud-1", False, None, 7701, "z1"))
    return Catalog([service], nodes, revision=7)


def load_corpus() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(CORPUS_DIR.glob("*.bin"))}


CORPUS = load_corpus()
CORPUS_ITEMS = sorted(CORPUS.items())


def test_corpus_is_the_current_encoding() -> None:
    """The wire format is stable: the checked-in frames are what the encoders produce."""
    assert CORPUS == corpus_frames()


@pytest.mark.parametrize(("name", "data"), CORPUS_ITEMS, ids=[n for n, _ in CORPUS_ITEMS])
def test_corpus_frames_decode(name: str, data: bytes) -> None:
    frames = decode_all(data)
    assert len(frames) == 1


def test_corpus_values() -> None:
    """Spot checks of what the corpus frames decode to (optional parts included)."""
    post = decode_all(CORPUS["request-post.bin"])[0]
    assert post == Request(
        3, False, b"POST", b"/upload", b"[fd00::1]:80", ((b"Content-Type", b"text/plain"),),
        None, "fd00::9", "shop/upload", 80, ("10.4.0.12", 8080), b"first part",
    )
    get = decode_all(CORPUS["request-get.bin"])[0]
    assert isinstance(get, Request) and get.end and get.endpoint is None
    assert get.headers == REQUEST_HEADERS
    hello = decode_all(CORPUS["hello.bin"])[0]
    assert hello == Hello(PROTOCOL_VERSION, "edge-1", "edge",
                          {"initial_window": 262144, "max_frame": 1 << 20, "max_streams": 1024})


def test_catalog_payload_is_what_the_catalog_layer_reads() -> None:
    """A pushed catalog decodes to the plain structure catalog_from_wire accepts (lists,
    not tuples) and round-trips to the same catalog."""
    frame = decode_all(CORPUS["catalog.bin"])[0]
    assert isinstance(frame, CatalogPush)
    assert frame.payload == catalog_to_wire(_sample_catalog())
    assert catalog_from_wire(frame.payload) == _sample_catalog()


# --- round trips ------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FIELD_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=16).map(str.encode)
field_values = st.lists(st.sampled_from(FIELD_BYTES), max_size=24).map(bytes)
targets = st.lists(st.integers(0x21, 0x7E), min_size=1, max_size=32).map(bytes)
headers = st.lists(st.tuples(tokens, field_values), max_size=8).map(tuple)
streams = st.integers(1, (1 << 31) - 1)
u63 = st.integers(0, (1 << 63) - 1)
lengths = st.none() | st.integers(0, 1 << 62)
bodies = st.binary(max_size=300)
ports = st.integers(1, 65535)


def texts(limit: int) -> st.SearchStrategy[str]:
    return st.text(max_size=min(limit, 40))


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

Built = tuple[bytes, Frame]


@st.composite
def hello_frames(draw: st.DrawFn) -> Built:
    node, role = draw(texts(253)), draw(texts(32))
    settings_ = draw(st.dictionaries(texts(64), st.integers(0, 1 << 62), max_size=16))
    return encode_hello(node, role, settings_), Hello(PROTOCOL_VERSION, node, role, settings_)


@st.composite
def request_frames(draw: st.DrawFn) -> Built:
    endpoint = draw(st.none() | st.tuples(texts(253), ports))
    args = (
        draw(streams), draw(st.booleans()), draw(tokens), draw(targets), draw(targets),
        draw(headers), draw(lengths), draw(texts(64)), draw(texts(512)), draw(ports),
        endpoint, draw(bodies),
    )
    return encode_request(*args), Request(*args)


@st.composite
def response_frames(draw: st.DrawFn) -> Built:
    sid, end, status = draw(streams), draw(st.booleans()), draw(st.integers(100, 999))
    reason, fields, length, body = draw(field_values), draw(headers), draw(lengths), draw(bodies)
    return (encode_response(sid, end, status, reason, fields, length, body),
            Response(sid, end, status, reason, fields, length, body))


@st.composite
def other_frames(draw: st.DrawFn) -> Built:
    choice = draw(st.sampled_from(
        ["data", "reset", "window", "ping", "pong", "catalog", "ack", "goaway"]))
    if choice == "data":
        sid, end, data = draw(streams), draw(st.booleans()), draw(bodies)
        return encode_data(sid, end, data), Data(sid, end, data)
    if choice == "reset":
        sid, code, detail = draw(streams), draw(texts(64)), draw(st.text(max_size=600))
        # The encoder truncates the detail to what the decoder accepts.
        return encode_reset(sid, code, detail), Reset(sid, code, detail[:512])
    if choice == "window":
        sid, increment = draw(streams), draw(st.integers(1, (1 << 31) - 1))
        return encode_window(sid, increment), Window(sid, increment)
    if choice in ("ping", "pong"):
        opaque = draw(u63)
        if choice == "ping":
            return encode_ping(opaque), Ping(opaque)
        return encode_pong(opaque), Pong(opaque)
    if choice == "catalog":
        revision, kind = draw(u63), draw(st.sampled_from(["snapshot", "delta"]))
        payload = draw(st.dictionaries(st.text(max_size=8), plain, max_size=5))
        return encode_catalog(revision, kind, payload), CatalogPush(revision, kind, payload)
    if choice == "ack":
        revision = draw(u63)
        return encode_ack(revision), Ack(revision)
    reason = draw(st.text(max_size=600))
    return encode_goaway(reason), GoAway(reason[:512])


any_frame = hello_frames() | request_frames() | response_frames() | other_frames()


@given(built=any_frame)
@settings(max_examples=150)
def test_round_trip(built: Built) -> None:
    data, expected = built
    assert decode_all(data) == [expected]
    assert decode_payload(data[4:], LIMITS) == expected


@given(frames=st.lists(any_frame, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 1 << 16)))
@settings(max_examples=100)
def test_round_trip_in_random_pieces(frames: list[Built], cuts: list[int]) -> None:
    stream = b"".join(data for data, _ in frames)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    decoder = FrameDecoder(LIMITS)
    decoded: list[Frame] = []
    for start, end in pairwise(points):
        decoded.extend(decoder.feed(stream[start:end]))
    assert decoded == [frame for _, frame in frames]


def test_byte_by_byte() -> None:
    stream = b"".join(data for _, data in CORPUS_ITEMS)
    decoder = FrameDecoder(LIMITS)
    decoded: list[Frame] = []
    for index in range(len(stream)):
        decoded.extend(decoder.feed(stream[index : index + 1]))
    assert decoded == [decode_all(data)[0] for _, data in CORPUS_ITEMS]


# --- garbage ----------------------------------------------------------------------------


def only_protocol_errors(feed: Callable[[], object]) -> None:
    try:
        feed()
    except ProtocolError:
        pass


@given(data=st.binary(max_size=2048), more=st.binary(max_size=64))
@FUZZ
def test_random_bytes(data: bytes, more: bytes) -> None:
    decoder = FrameDecoder(LIMITS)
    try:
        decoder.feed(data)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decoder.feed(more)


@given(kind=st.integers(0, 0x7F), size=st.integers(0, 14), rest=st.binary(max_size=512))
@FUZZ
def test_random_payloads_of_every_frame_type(kind: int, size: int, rest: bytes) -> None:
    """A correct prefix and array header, a known type, then noise: reaches the field checks."""
    payload = bytes([0x91 + size, kind]) + rest
    only_protocol_errors(lambda: decode_all(framed(payload)))
    only_protocol_errors(lambda: decode_payload(payload, LIMITS))


@given(
    name=st.sampled_from(sorted(CORPUS)),
    edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255),
                             st.sampled_from(["set", "insert", "delete", "xor"])),
                   min_size=1, max_size=6),
    fix_prefix=st.booleans(),
)
@FUZZ
def test_mutated_corpus(name: str, edits: list[tuple[int, int, str]], fix_prefix: bool) -> None:
    data = bytearray(CORPUS[name])
    for position, value, how in edits:
        index = position % (len(data) + 1)
        if how == "insert":
            data[index:index] = bytes([value])
        elif index < len(data):
            if how == "set":
                data[index] = value
            elif how == "xor":
                data[index] ^= 1 << (value % 8)
            else:
                del data[index]
    if fix_prefix and len(data) >= 4:
        # Keep the length consistent so that the mutation reaches the payload decoder.
        data[:4] = struct.pack(">I", len(data) - 4)
    only_protocol_errors(lambda: decode_all(bytes(data)))


@pytest.mark.parametrize(("name", "data"), CORPUS_ITEMS, ids=[n for n, _ in CORPUS_ITEMS])
def test_truncations(name: str, data: bytes) -> None:
    for size in range(len(data)):
        # An incomplete frame is only incomplete: nothing yet, no error.
        assert FrameDecoder(LIMITS).feed(data[:size]) == []
        # A payload cut short under a length prefix that says so is an error.
        if size > 4:
            rejected(framed(data[4:size]))


# --- strict decoding --------------------------------------------------------------------


VALID_FIELDS: dict[str, tuple[Any, ...]] = {
    "hello": (HELLO, 1, "n", "edge", {"initial_window": 1}),
    "request": (REQUEST, 1, 0, b"GET", b"/", b"a", [], 0, "", "ns/s", 80, None, None, b""),
    "data": (DATA, 1, 0, b"x"),
    "response": (RESPONSE, 1, 0, 200, b"OK", [], 0, b""),
    "reset": (RESET, 1, "cancelled", ""),
    "window": (WINDOW, 1, 1),
    "ping": (PING, 0),
    "pong": (PONG, 0),
    "catalog": (CATALOG, 0, "delta", {}),
    "ack": (ACK, 0),
    "goaway": (GOAWAY, "bye"),
}
OPTIONAL_FIELDS: dict[str, tuple[Any, ...]] = {"request": (3,)}
"""Trailing fields a frame may carry (the request's hop count): one more is refused."""


@pytest.mark.parametrize("name", sorted(VALID_FIELDS))
def test_raw_fields_are_valid(name: str) -> None:
    """The base of the mutations below decodes: each rejection is the mutation's doing."""
    assert len(decode_all(raw_frame(*VALID_FIELDS[name]))) == 1


@pytest.mark.parametrize("name", sorted(VALID_FIELDS))
def test_missing_or_extra_fields(name: str) -> None:
    fields = VALID_FIELDS[name]
    for cut in range(1, len(fields)):
        error = rejected(raw_frame(*fields[:cut]))
        assert "fields" in str(error) or "array" in str(error)
    optional = OPTIONAL_FIELDS.get(name, ())
    rejected(raw_frame(*fields, *optional, 0))


def _replace(fields: tuple[Any, ...], index: int, value: Any) -> tuple[Any, ...]:
    return fields[:index] + (value,) + fields[index + 1 :]


WRONG_FIELDS: list[tuple[str, int, Any]] = [
    ("hello", 1, "1"), ("hello", 1, -1), ("hello", 2, b"n"), ("hello", 2, "n" * 254),
    ("hello", 3, None), ("hello", 4, []), ("hello", 4, {"w": "1"}), ("hello", 4, {"w": True}),
    ("hello", 4, {"w": 1.0}), ("hello", 4, {f"k{i}": 1 for i in range(17)}),
    ("request", 1, 0), ("request", 1, 1 << 31), ("request", 1, True), ("request", 1, 1.0),
    ("request", 2, 256), ("request", 3, "GET"), ("request", 3, b"GE T"), ("request", 3, b""),
    ("request", 4, b"/a b"), ("request", 4, b""), ("request", 4, "/"), ("request", 5, b"a\r\nb"),
    ("request", 6, [[b"a"]]), ("request", 6, [[b"a", b"b", b"c"]]), ("request", 6, [b"ab"]),
    ("request", 6, [[b"a", "b"]]), ("request", 6, {"a": "b"}),
    ("request", 7, -1), ("request", 7, (1 << 62) + 1), ("request", 7, b"5"),
    ("request", 8, "x" * 65), ("request", 8, None), ("request", 9, "s" * 513),
    ("request", 10, 0), ("request", 10, 65536), ("request", 11, 7),
    ("request", 13, "body"), ("request", 13, None),
    ("data", 1, -1), ("data", 1, None), ("data", 2, -1), ("data", 2, False),
    ("data", 3, "text"), ("data", 3, None),
    ("response", 3, 99), ("response", 3, 1000), ("response", 3, "200"),
    ("response", 4, b"O\nK"), ("response", 4, "OK"), ("response", 5, None),
    ("response", 6, "0"), ("response", 7, []),
    ("reset", 1, 0), ("reset", 2, b"cancelled"), ("reset", 2, "c" * 65), ("reset", 3, "d" * 513),
    ("window", 1, 0), ("window", 2, 0), ("window", 2, 1 << 31), ("window", 2, -5),
    ("ping", 1, -1), ("ping", 1, 1 << 63), ("ping", 1, b"\x00"), ("pong", 1, None),
    ("catalog", 1, -1), ("catalog", 2, "full"), ("catalog", 2, b"delta"), ("catalog", 3, []),
    ("catalog", 3, None), ("ack", 1, "7"), ("goaway", 1, b"bye"), ("goaway", 1, "x" * 513),
]


@pytest.mark.parametrize(("name", "index", "value"), WRONG_FIELDS)
def test_wrong_field_types_and_ranges(name: str, index: int, value: Any) -> None:
    rejected(raw_frame(*_replace(VALID_FIELDS[name], index, value)))


def test_request_endpoint_port_checked_only_with_a_host() -> None:
    base = VALID_FIELDS["request"]
    rejected(raw_frame(*_replace(_replace(base, 11, "10.0.0.1"), 12, None)))
    rejected(raw_frame(*_replace(_replace(base, 11, "10.0.0.1"), 12, 0)))
    frame = decode_all(raw_frame(*_replace(_replace(base, 11, "10.0.0.1"), 12, 8080)))[0]
    assert isinstance(frame, Request) and frame.endpoint == ("10.0.0.1", 8080)


@pytest.mark.parametrize(
    "value", [b"x\r", b"x\ny", b"\x00", b"a\x00b", b"x\rContent-Length: 44", b"\x7f", b"\x0b"]
)
def test_header_values_with_control_characters(value: bytes) -> None:
    for name, index in (("request", 6), ("response", 5)):
        rejected(
            raw_frame(*_replace(VALID_FIELDS[name], index, [[b"X-Ok", b"1"], [b"Foo", value]])))


@pytest.mark.parametrize("name", [b"Foo Bar", b" Foo", b"Foo ", b"Foo:", b"", b"F\x00", b"F\xe9"])
def test_header_names_must_be_tokens(name: bytes) -> None:
    rejected(raw_frame(*_replace(VALID_FIELDS["request"], 6, [[name, b"v"]])))


def test_header_value_may_hold_tab_and_high_bytes() -> None:
    fields = _replace(VALID_FIELDS["request"], 6, [[b"X", b"a\tb\x80\xff"]])
    frame = decode_all(raw_frame(*fields))[0]
    assert isinstance(frame, Request) and frame.headers == ((b"X", b"a\tb\x80\xff"),)


@pytest.mark.parametrize("bad", [b"\r", b"\n", b"\x00", b"\x1f", b"\x7f"])
def test_header_values_checked_in_one_pass_still_check_each(bad: bytes) -> None:
    # The values are matched joined by HTAB: a tab at a value's edge must not hide
    # anything, and a bad byte in any value (first, middle, last) is still refused.
    good = [[b"A", b"x\t"], [b"B", b"\ty"], [b"C", b"\t"]]
    frame = decode_all(raw_frame(*_replace(VALID_FIELDS["response"], 5, good)))[0]
    assert isinstance(frame, Response)
    assert frame.headers == ((b"A", b"x\t"), (b"B", b"\ty"), (b"C", b"\t"))
    for where in range(len(good) + 1):
        fields = [*good[:where], [b"D", b"v" + bad], *good[where:]]
        rejected(raw_frame(*_replace(VALID_FIELDS["response"], 5, fields)))


def test_header_count_and_size_caps() -> None:
    limits = Limits(max_header_count=4, max_header_bytes=20)
    base = VALID_FIELDS["request"]
    ok = [[b"a", b"1"]] * 4
    assert len(decode_all(raw_frame(*_replace(base, 6, ok)), limits)) == 1
    rejected(raw_frame(*_replace(base, 6, ok + [[b"b", b"2"]])), limits)
    rejected(raw_frame(*_replace(base, 6, [[b"a", b"x" * 20]])), limits)


@pytest.mark.parametrize("kind", [12, 13, 50, 0x7F])
def test_unknown_frame_types(kind: int) -> None:
    assert "unknown frame type" in str(rejected(raw_frame(kind, 1)))


@pytest.mark.parametrize(
    "payload",
    [
        b"",                                   # empty
        b"\x90",                               # empty array
        b"\x01\x02",                           # not an array
        b"\xdc\x00\x02\x06\x00",               # array16 for a short frame
        b"\x92\xcc\x80\x00",                   # frame type not a positive fixint
        b"\x92\x06\x00\xc0",                   # trailing bytes after the array
        b"\x92\x06\xc1",                       # reserved byte 0xc1
        b"\x92\x06",                           # fewer elements than announced
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    rejected(framed(payload))
    with pytest.raises(ProtocolError):
        decode_payload(payload, LIMITS)


# --- hardening scenarios 17-21 ----------------------------------------------------------


def test_17_oversized_frame_rejected_from_its_prefix() -> None:
    limits = Limits(max_frame=1024, max_catalog_frame=4096, max_data_frame=1024)
    decoder = FrameDecoder(limits)
    # The prefix and the first payload bytes are enough: nothing else is buffered.
    with pytest.raises(ProtocolError, match="exceeds the cap"):
        decoder.feed(struct.pack(">I", 1025) + bytes([0x94, DATA]))
    assert len(decoder._buffer) == 0
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode_ping(1))


def test_17_huge_length_prefix() -> None:
    error = rejected(struct.pack(">I", 0xFFFFFFFF) + bytes([0x94, DATA]))
    assert "exceeds the cap" in str(error)
    # A prefix that is not even a frame array is refused as soon as it is seen.
    rejected(struct.pack(">I", 0xFFFFFFFF) + b"\xff\xff")


def test_17_oversized_frame_waits_only_for_its_type() -> None:
    limits = Limits(max_frame=1024, max_catalog_frame=4096)
    decoder = FrameDecoder(limits)
    assert decoder.feed(struct.pack(">I", 1025) + bytes([0x94])) == []
    with pytest.raises(ProtocolError):
        decoder.feed(bytes([WINDOW]))


def test_17_catalog_frames_have_their_own_cap() -> None:
    limits = Limits(max_frame=1024, max_catalog_frame=4096)
    payload = {"blob": ["x" * 500] * 4}
    big = encode_catalog(1, "snapshot", payload)
    assert len(big) > 1024 + 4
    assert decode_all(big, limits) == [CatalogPush(1, "snapshot", payload)]
    decoder = FrameDecoder(limits)
    # Between the two caps, a catalog frame is awaited.
    assert decoder.feed(big[:100]) == []
    rejected(encode_catalog(1, "snapshot", {"blob": ["x" * 500] * 9}), limits)
    # Any other type above max_frame is refused (DATA above max_data_frame too).
    rejected(encode_data(1, False, b"x" * 1100), Limits(
        max_frame=1024, max_catalog_frame=4096, max_data_frame=1024))


def test_frame_exactly_at_the_cap() -> None:
    limits = Limits(max_frame=1024, max_data_frame=1024)
    body = b"x" * (1024 - 7)  # [type, stream, flags, bin16 header (3 bytes) + body]
    data = encode_data(1, False, body)
    assert len(data) - 4 == 1024
    assert decode_all(data, limits) == [Data(1, False, body)]
    rejected(encode_data(1, False, body + b"x"), limits)


def test_plain_data_frames_may_exceed_max_frame_up_to_max_data_frame() -> None:
    """A DATA frame of a plain body above max_frame (up to max_data_frame) is handed on as
    it arrives, never held whole; with trailer fields, or above max_data_frame, it is
    refused, before anything of it is buffered."""
    limits = Limits(max_frame=1024, max_data_frame=64 * 1024)
    body = bytes(range(256)) * 160  # 40 960 bytes: gathered (above 16 KiB)
    frame = encode_data(3, True, body)
    assert decode_all(frame, limits) == [Data(3, True, body)]
    decoder = FrameDecoder(limits)
    pieces: list[Data] = []
    for cut in range(0, len(frame), 1000):  # a read of 1000 bytes at a time
        out = decoder.feed(frame[cut : cut + 1000])
        assert all(type(piece) is Data for piece in out)
        pieces += out  # type: ignore[arg-type]
        assert len(decoder._buffer) <= DATA_HEAD_MAX and len(decoder._small) < 4096
    assert b"".join(bytes(piece.data) for piece in pieces) == body
    assert [piece.end for piece in pieces][-1] and not any(p.end for p in pieces[:-1])
    assert decoder.feed(encode_ping(7)) == [Ping(7)]
    # Above max_data_frame: refused from its prefix and type.
    over = encode_data(3, False, b"x" * (64 * 1024))
    rejected(over[:6], limits)
    # Trailer fields make it more than a plain body: refused once its head is there.
    with_trailers = encode_data(3, True, body, ((b"grpc-status", b"0"),))
    decoder = FrameDecoder(limits)
    with pytest.raises(ProtocolError, match="more than a plain body"):
        for cut in range(0, len(with_trailers), 10):
            decoder.feed(with_trailers[cut : cut + 10])
            assert len(decoder._buffer) <= DATA_HEAD_MAX
    # Any other type keeps max_frame.
    rejected(struct.pack(">I", 2000) + bytes([0x93, RESPONSE]), limits)


def test_17_before_the_hello_nothing_large_is_buffered() -> None:
    """A stranger claiming a 60 MiB catalog before its hello is refused at the 6th byte."""
    decoder = FrameDecoder(LIMITS, hello_first=True)
    with pytest.raises(ProtocolError, match="first frame must be a hello"):
        decoder.feed(struct.pack(">I", 60 << 20) + bytes([0x91, CATALOG]))
    assert len(decoder._buffer) == 0
    # Any first frame but a hello is refused as early, whatever its size.
    for first in (encode_ping(1)[:6], CORPUS["data.bin"], CORPUS["catalog.bin"]):
        with pytest.raises(ProtocolError, match="first frame must be a hello"):
            FrameDecoder(LIMITS, hello_first=True).feed(first)


def test_17_after_the_hello_large_catalogs_are_accepted() -> None:
    limits = Limits(max_frame=1024, max_catalog_frame=4096)
    payload = {"blob": ["x" * 500] * 4}
    router_hello = encode_hello("router", "router", {"initial_window": 65536})
    stream = router_hello + encode_catalog(1, "snapshot", payload) + encode_ping(3)
    decoder = FrameDecoder(limits, hello_first=True)
    # In one read (a router sends its hello and its snapshot back to back) or in pieces.
    assert [type(f) for f in decoder.feed(stream)] == [Hello, CatalogPush, Ping]
    decoder = FrameDecoder(limits, hello_first=True)
    frames: list[Frame] = []
    for index in range(0, len(stream), 7):
        frames += decoder.feed(stream[index : index + 7])
    assert [type(f) for f in frames] == [Hello, CatalogPush, Ping]
    # A tiny first frame is refused as it is decoded.
    with pytest.raises(ProtocolError):
        FrameDecoder(limits, hello_first=True).feed(framed(b"\x00"))


def test_17_only_a_router_may_send_large_catalogs() -> None:
    limits = Limits(max_frame=1024, max_catalog_frame=4096)
    edge_hello = encode_hello("edge-1", "edge", {"initial_window": 65536})
    big = encode_catalog(1, "snapshot", {"blob": ["x" * 500] * 4})
    with pytest.raises(ProtocolError, match="exceeds the cap"):
        FrameDecoder(limits, hello_first=True).feed(edge_hello + big)


@pytest.mark.parametrize("header", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                                    b"\xdc\xff\xff", b"\xde\xff\xff"])
@pytest.mark.parametrize("kind", [DATA, REQUEST, CATALOG])
def test_18_container_headers_claiming_huge_sizes(header: bytes, kind: int) -> None:
    started = time.perf_counter()
    rejected(framed(bytes([0x94, kind, 0x01, 0x00]) + header))
    assert time.perf_counter() - started < 0.5


def _array32(items: list[bytes]) -> bytes:
    return b"\xdd" + struct.pack(">I", len(items)) + b"".join(items)


def test_18_a_million_empty_maps_in_a_catalog() -> None:
    payload = (bytes([0x94, CATALOG, 0x01]) + msgpack.packb("snapshot")
               + b"\x81" + msgpack.packb("x") + _array32([b"\x80"] * 1_000_000))
    started = time.perf_counter()
    error = rejected(framed(payload))
    assert time.perf_counter() - started < 2.0
    assert "too many arrays and maps" in str(error)


def test_18_a_million_empty_maps_in_a_head() -> None:
    # 100 x 25 x 100 maps nested in the header list of a request frame, under the frame cap.
    inner = b"\xdc\x00\x64" + b"\x80" * 100
    headers = b"\xdc\x00\x64" + (b"\xdc\x00\x19" + inner * 25) * 100
    payload = (bytes([0x9E, REQUEST, 1, 0]) + msgpack.packb(b"GET") + msgpack.packb(b"/")
               + msgpack.packb(b"a") + headers
               + msgpack.packb([0, "", "ns/s", 80, None, None, b""])[1:])
    assert len(payload) < LIMITS.max_frame
    started = time.perf_counter()
    error = rejected(framed(payload))
    assert time.perf_counter() - started < 1.0
    assert "too many arrays and maps" in str(error)


def test_catalog_of_a_realistic_size_is_accepted() -> None:
    """The container cap leaves room for a large cluster: 2000 services x 20 endpoints."""
    endpoints = [["10.0.0.1", 80, "n", True, True, False, None, None]] * 20
    services = [["ns", f"s{i}", None, [["", 80, 80, "TCP"]], {"": endpoints}, {}, "None"]
                for i in range(2000)]
    payload = {"format": "edgemesh.catalog", "version": 1, "revision": 1, "nodes": [],
               "services": services}
    frame = decode_all(encode_catalog(1, "snapshot", payload))[0]
    assert isinstance(frame, CatalogPush) and frame.payload == payload


@pytest.mark.parametrize("kind", [DATA, CATALOG])
def test_19_deep_nesting(kind: int) -> None:
    payload = bytes([0x94, kind, 0x01]) + msgpack.packb("delta") + b"\x91" * 2000 + b"\xc0"
    started = time.perf_counter()
    rejected(framed(payload))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "settings_map",
    [b"\x81\x01\x01", b"\x81\xc4\x01k\x01", b"\x81\xc0\x01", b"\x81\x91\x01\x01", b"\x81\xc3\x01"],
    ids=["int", "bytes", "nil", "array", "bool"],
)
def test_20_non_string_map_keys(settings_map: bytes) -> None:
    hello = bytes([0x95, HELLO, 1]) + msgpack.packb("n") + msgpack.packb("edge") + settings_map
    rejected(framed(hello))
    catalog = bytes([0x94, CATALOG, 1]) + msgpack.packb("delta") + b"\x81\xa1a" + settings_map
    rejected(framed(catalog))


def test_20_invalid_utf8() -> None:
    for text in (b"\xa2\xc3\x28", b"\xa1\xff", b"\xa3\xed\xa0\x80"):  # bad, 0xff, surrogate
        rejected(framed(bytes([0x92, GOAWAY]) + text))
        rejected(
            framed(bytes([0x94, CATALOG, 1]) + msgpack.packb("delta") + b"\x81" + text + b"\x01"))


@pytest.mark.parametrize(
    "ext",
    [b"\xd4\x05\x00", b"\xd6\xff\x00\x00\x00\x01", b"\xc7\x00\x05", b"\xc7\x00\xff",
     b"\xc8\x00\x00\x05", b"\xd8\x01" + b"\x00" * 16],
    ids=["fixext1", "timestamp32", "ext8-empty", "ext8-empty-timestamp", "ext16-empty", "fixext16"],
)
def test_20_ext_types(ext: bytes) -> None:
    rejected(framed(bytes([0x94, DATA, 1, 0]) + ext))
    # Nowhere, not even inside a catalog payload that the wire layer does not interpret.
    rejected(framed(bytes([0x94, CATALOG, 1]) + msgpack.packb("delta") + b"\x81\xa1a" + ext))


def test_20_floats_and_bools_are_not_integers() -> None:
    rejected(raw_frame(WINDOW, 1.0, 1))
    rejected(raw_frame(WINDOW, True, 1))
    rejected(raw_frame(PING, False))


def test_21_decoder_refuses_everything_after_an_error() -> None:
    decoder = FrameDecoder(LIMITS)
    with pytest.raises(ProtocolError):
        decoder.feed(encode_ping(1) + raw_frame(PING, "x"))
    for data in (encode_ping(2), b"", CORPUS["hello.bin"]):
        with pytest.raises(ProtocolError, match="already failed"):
            decoder.feed(data)


def test_partial_frame_then_error_in_a_later_feed() -> None:
    decoder = FrameDecoder(LIMITS)
    good = encode_data(1, False, b"abc")
    assert decoder.feed(good + good[:3]) == [Data(1, False, b"abc")]
    assert decoder.feed(good[3:]) == [Data(1, False, b"abc")]
    with pytest.raises(ProtocolError):
        decoder.feed(raw_frame(DATA, 0, 0, b""))


@given(data=st.binary(min_size=1, max_size=64))
@FUZZ
def test_garbage_after_valid_frames(data: bytes) -> None:
    decoder = FrameDecoder(LIMITS)
    assert decoder.feed(CORPUS["ping.bin"]) == [Ping(1234567890123)]
    only_protocol_errors(lambda: decoder.feed(data))


def _write_corpus() -> None:  # pragma: no cover - a maintenance helper
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in corpus_frames().items():
        (CORPUS_DIR / name).write_bytes(data)


if __name__ == "__main__":  # pragma: no cover
    _write_corpus()
    print(f"wrote {len(corpus_frames())} frames to {CORPUS_DIR}", file=sys.stderr)


# --- trailers on the last DATA frame (issue 11, item 5) -----------------------------------


def test_data_with_trailers_round_trips() -> None:
    trailers = ((b"X-Checksum", b"sha256=abc"), (b"Server-Timing", b"db;dur=53"))
    frame = encode_data(7, True, b"tail", trailers)
    [decoded] = FrameDecoder(Limits()).feed(frame)
    assert decoded == Data(7, True, b"tail", trailers)
    # Without trailers, the frame is the 4-field one older peers know, byte for byte.
    assert encode_data(7, True, b"tail", ()) == encode_data(7, True, b"tail")
    [plain] = FrameDecoder(Limits()).feed(encode_data(7, True, b"tail"))
    assert plain == Data(7, True, b"tail") and plain.trailers == ()


@pytest.mark.parametrize(
    "fields",
    [
        (DATA, 7, 0, b"x", ((b"X-T", b"1"),)),  # not the last frame
        (DATA, 7, 1, b"x", ()),  # empty trailers
        (DATA, 7, 1, b"x", ((b"Bad Name", b"1"),)),  # not a token
        (DATA, 7, 1, b"x", ((b"X-T", b"a\r\nb"),)),  # CR LF in a value
        (DATA, 7, 1, b"x", ((b"X-T", b"1"),), 0),  # six fields
    ],
    ids=["not-last", "empty", "bad-name", "crlf", "six-fields"],
)
def test_data_with_bad_trailers_is_a_protocol_error(fields: tuple[object, ...]) -> None:
    payload = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(ProtocolError):
        FrameDecoder(Limits()).feed(struct.pack(">I", len(payload)) + payload)


def test_trailers_are_never_encoded_on_a_frame_that_does_not_end() -> None:
    with pytest.raises(ValueError, match="last frame"):
        encode_data(7, False, b"x", ((b"X-T", b"1"),))


@given(sid=streams, data=bodies, trailers=headers.filter(bool))
@settings(max_examples=100)
def test_data_with_any_trailers_round_trips(
    sid: int, data: bytes, trailers: tuple[tuple[bytes, bytes], ...]
) -> None:
    frame = encode_data(sid, True, data, trailers)
    assert decode_all(frame) == [Data(sid, True, data, trailers)]


# -- header values checked without a regex (issue 15, third pass) ------------------------------

_REGEX_FIELD_VALUE = __import__("re").compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*\Z")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=5))
def test_header_values_accepted_exactly_as_the_regex_would(values: list[bytes]) -> None:
    from edgemesh.wire._frames import _headers

    fields = tuple((b"X-%d" % i, value) for i, value in enumerate(values))
    expected = all(_REGEX_FIELD_VALUE.match(value) is not None for value in values)
    try:
        _headers(fields, LIMITS)
    except ProtocolError:
        accepted = False
    else:
        accepted = True
    assert accepted is expected
    # Every refused byte, alone, is refused; HTAB and obs-text pass.
    for byte in [*range(0x09), *range(0x0A, 0x20), 0x7F]:
        with pytest.raises(ProtocolError):
            _headers(((b"X", b"a" + bytes([byte])),), LIMITS)
    assert _headers(((b"X", b"a\tb\x80\xff"),), LIMITS)


def test_header_sections_checked_once_still_meet_each_links_limits() -> None:
    from edgemesh.wire import _frames

    fields = ((b"Server", b"origin"), (b"X-Long", b"v" * 200))
    assert _frames._headers(fields, LIMITS) is fields
    assert fields in _frames._heads_seen
    # Remembered as well-formed, but a link with a smaller byte limit still refuses it.
    with pytest.raises(ProtocolError, match="more than 100 bytes"):
        _frames._headers(fields, Limits(max_header_bytes=100))
    with pytest.raises(ProtocolError, match="at most 1 fields"):
        _frames._headers(fields, Limits(max_header_count=1))
    # An unhashable piece is a protocol error like any malformed field, not a TypeError.
    with pytest.raises(ProtocolError):
        _frames._headers(((b"X", b"1"), {"a": 1}), LIMITS)
    # A bad value is never remembered, and the memory is bounded.
    with pytest.raises(ProtocolError):
        _frames._headers(((b"X", b"a\r\nb"),), LIMITS)
    assert ((b"X", b"a\r\nb"),) not in _frames._heads_seen
    for i in range(3 * _frames._HEADS_SEEN_BOUND):
        _frames._headers(((b"X-N", b"%d" % i),), LIMITS)
    assert len(_frames._heads_seen) <= _frames._HEADS_SEEN_BOUND


# --- heads packed and decoded once (issue 15, fourth pass) ------------------------------------

edge_streams = st.sampled_from(
    [1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, (1 << 31) - 1]) | streams


@given(sid=edge_streams, other=edge_streams, end=st.booleans(), status=st.integers(100, 999),
       reason=field_values, fields=headers, length=lengths, body=bodies)
@settings(max_examples=150)
def test_response_heads_packed_once_are_msgpacks_bytes(
    sid: int, other: int, end: bool, status: int, reason: bytes, fields: Any, length: Any,
    body: bytes,
) -> None:
    whole = [RESPONSE, sid, int(end), status, reason, fields, length, body]
    assert encode_response(sid, end, status, reason, fields, length, body) == raw_frame(*whole)
    # Again (remembered), on another stream: the same bytes as msgpack's.
    again = encode_response(other, not end, status, reason, fields, length, body)
    assert again == raw_frame(RESPONSE, other, int(not end), *whole[3:])
    frame = decode_all(again)[0]
    assert frame == Response(other, not end, status, reason, fields, length, body)


@given(sid=edge_streams, end=st.booleans(), method=tokens, path=targets, fields=headers,
       length=lengths, client=texts(64), endpoint=st.none() | st.tuples(texts(253), ports),
       body=st.binary(max_size=400), hops=st.none() | st.integers(0, 300))
@settings(max_examples=150)
def test_request_heads_packed_once_are_msgpacks_bytes(
    sid: int, end: bool, method: bytes, path: bytes, fields: Any, length: Any, client: str,
    endpoint: Any, body: bytes, hops: int | None,
) -> None:
    host, port = endpoint if endpoint is not None else (None, None)
    args = (method, path, b"web", fields, length, client, "ns/web", 80, endpoint, body)
    expected = [REQUEST, sid, int(end), method, path, b"web", fields, length, client, "ns/web",
                80, host, port, body]
    if hops is not None:
        expected.append(min(hops, 255))
    for _ in range(2):  # packed, then remembered (small bodies)
        assert encode_request(sid, end, *args, hops) == raw_frame(*expected)


def test_heads_decoded_once_take_each_frames_stream_and_flags() -> None:
    from edgemesh.wire import _frames

    fields = ((b"Server", b"origin"),)
    first = encode_response(5, True, 200, b"OK", fields, 2, b"hi")
    assert decode_payload(first[4:], LIMITS) == Response(5, True, 200, b"OK", fields, 2, b"hi")
    assert first[8:] in _frames._heads_decoded  # past the prefix, array, type, stream, flags
    for sid, end in ((0x80, False), (0x1234, True), ((1 << 31) - 1, False)):
        frame = decode_payload(encode_response(sid, end, 200, b"OK", fields, 2, b"hi")[4:],
                               LIMITS)
        assert frame == Response(sid, end, 200, b"OK", fields, 2, b"hi")
    decoded = []
    for sid in (3, 301, 70000):
        request = encode_request(sid, True, b"GET", b"/", b"web", fields, 0, "1.2.3.4",
                                 "ns/web", 80, ("10.0.0.1", 8080), b"", 2)
        frame = decode_payload(request[4:], LIMITS)
        assert isinstance(frame, Request) and frame.stream == sid and frame.hops == 2
        assert frame.endpoint == ("10.0.0.1", 8080) and frame.end and frame.headers == fields
        decoded.append(frame.headers)
    assert decoded[1] is decoded[0] and decoded[2] is decoded[0]  # remembered: one tuple


def test_a_decoded_response_carries_its_head_made_once_per_distinct_head() -> None:
    from edgemesh import ResponseHead

    fields = ((b"Server", b"origin"), (b"X-Made", b"once"))
    frames = [decode_payload(encode_response(sid, sid % 2 == 0, 203, b"Made", fields, 2,
                                             b"hi")[4:], LIMITS) for sid in (11, 12, 400)]
    heads = [frame.head for frame in frames if isinstance(frame, Response)]
    assert heads[0] == ResponseHead(203, b"Made", fields, 2) and len(heads) == 3
    assert heads[1] is heads[0] and heads[2] is heads[0]  # remembered with the fields
    assert [frame.stream for frame in frames] == [11, 12, 400]  # the frame's own, not shared
    other = decode_payload(encode_response(13, True, 404, b"Made", fields, 2, b"hi")[4:], LIMITS)
    assert isinstance(other, Response) and other.head == ResponseHead(404, b"Made", fields, 2)
    # A head packed by hand, decoded anew (not remembered): one too.
    odd = decode_payload(msgpack.packb([3, 14, 1, 200, b"OK", [[b"A", b"b"]], None, b""]),
                         LIMITS)
    assert isinstance(odd, Response)
    assert odd.head == ResponseHead(200, b"OK", ((b"A", b"b"),), None)


def test_a_decoded_request_carries_its_head_made_once_per_distinct_head() -> None:
    from edgemesh import RequestHead

    fields = ((b"Host", b"web"), (b"X-Made", b"once"))

    def request(sid: int, client: str = "10.0.0.9", hops: int | None = 3) -> Frame:
        return decode_payload(encode_request(sid, sid % 2 == 0, b"GET", b"/r", b"web", fields, 0,
                                             client, "shop/web", 80, None, b"", hops)[4:], LIMITS)

    frames = [request(sid) for sid in (21, 22, 500)]
    heads = [frame.head for frame in frames if isinstance(frame, Request)]
    assert heads[0] == RequestHead(b"GET", b"/r", b"web", fields, 0, "10.0.0.9", 3)
    assert len(heads) == 3 and heads[1] is heads[0] and heads[2] is heads[0]
    assert [frame.stream for frame in frames] == [21, 22, 500]  # the frame's own, not shared
    # The client and the hop count are the head's: another of either, another head.
    for other, want in ((request(23, client="10.0.0.8"), ("10.0.0.8", 3)),
                        (request(24, hops=4), ("10.0.0.9", 4)),
                        (request(25, hops=None), ("10.0.0.9", 0))):
        assert isinstance(other, Request) and other.head is not None
        assert other.head is not heads[0] and (other.head.client, other.head.hops) == want
    # A request packed by hand, checked field by field (a list of fields): one too.
    odd = decode_payload(msgpack.packb([1, 14, 1, b"GET", b"/", b"web", [[b"A", b"b"]], None,
                                        "", "shop/web", 80, None, None, b"", 2]), LIMITS)
    assert isinstance(odd, Request)
    assert odd.head == RequestHead(b"GET", b"/", b"web", ((b"A", b"b"),), None, "", 2)


def test_heads_decoded_once_still_meet_each_links_limits_and_checks() -> None:
    from edgemesh.wire import _frames

    fields = ((b"X-A", b"1"), (b"X-B", b"2"))
    frame = encode_response(7, True, 200, b"OK", fields, 0, b"")
    decode_all(frame)
    assert frame[8:] in _frames._heads_decoded
    # Remembered under the default limits, refused under a link's smaller ones.
    with pytest.raises(ProtocolError, match="at most 1 fields"):
        decode_all(frame, Limits(max_header_count=1))
    # Equal limits (another Limits object) share what was checked.
    assert decode_all(frame, Limits())[0] == Response(7, True, 200, b"OK", fields, 0, b"")
    # A stream id of 0, beyond 31 bits, or flags that are not a fixint: judged by msgpack
    # and the checks, never taken from the memory.
    for sid in (b"\x00", b"\xce\x80\x00\x00\x00"):
        rejected(framed(b"\x98\x03" + sid + frame[7:]))
    assert decode_all(framed(b"\x98\x03\x07\xcc\x01" + frame[8:]))[0].end
    # A malformed head is never remembered; the memory is bounded.
    bad = framed(b"\x98\x03\x07\x01" + msgpack.packb(
        [200, b"OK", [[b"X", b"a\r\nb"]], 0, b""], use_bin_type=True)[1:])
    rejected(bad)
    assert bad[8:] not in _frames._heads_decoded
    for i in range(3 * _frames._HEADS_DECODED_BOUND):
        decode_all(encode_response(9, True, 200, b"OK", ((b"X-N", b"%d" % i),), 0, b""))
    assert len(_frames._heads_decoded) <= _frames._HEADS_DECODED_BOUND
    big = encode_response(9, True, 200, b"OK", fields, 3000, b"x" * 3000)
    decode_all(big)
    assert big[8:] not in _frames._heads_decoded


def test_a_head_decoded_once_is_never_taken_for_another_type() -> None:
    from edgemesh.wire import _frames

    response = encode_response(7, True, 200, b"OK", ((b"X-A", b"1"),), 0, b"")
    decode_all(response)
    assert response[8:] in _frames._heads_decoded
    # The same bytes but for the type: a REQUEST of eight fields, refused as ever.
    rejected(response[:5] + bytes([REQUEST]) + response[6:])
