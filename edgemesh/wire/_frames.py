"""
Envelope frames between two nodes: a 4-byte big-endian length, then one msgpack
array ``[type, ...fields]``.  Encoding and strict decoding; no state, no I/O.

Every field of every frame is checked on the way in: a frame from a peer is
untrusted input, and an HTTP head decoded here is later written to a socket.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from ..exchange import Headers, RequestHead, ResponseHead

PROTOCOL_VERSION = 1
ROUTER_ROLE = "router"
"""The role (in the hello) of the only peer that may send catalogs larger than max_frame."""

# Frame types.  Values are part of the wire format: never renumber.
HELLO = 0
REQUEST = 1
DATA = 2
RESPONSE = 3
RESET = 4
WINDOW = 5
PING = 6
PONG = 7
CATALOG = 8
ACK = 9
GOAWAY = 10
EDGES = 11
"""Router ↔ router only: which edges hold a tunnel to the sender (never sent to an edge, so
older edges never see it)."""
MAX_EDGES_PER_FRAME = 512
"""Edge names in one EDGES frame (a full set takes several frames)."""

# Byte streams (docs/protocols.md): numbered apart from the HTTP frames' range so that new
# HTTP-level frame types can take 11-15.  Sent only to peers whose hello says byte_streams.
STREAM_OPEN = 16
STREAM_ACCEPT = 17

HOPS_SETTING = "hops"
"""Hello setting: the sender reads the REQUEST frame's hop field (send it only to such peers:
an older decoder refuses a REQUEST with one more field)."""
MAX_HOPS = 255
MOVE_SETTING = "move"
"""Hello setting: the sender reads GOAWAY's optional move-to hint."""
HELD_REVISION_SETTING = "catalog_revision"
HELD_DIGEST_SETTINGS = ("catalog_digest_hi", "catalog_digest_lo")
"""Hello settings of an edge: the revision and the digest (120 bits, as two 60-bit halves)
of the catalog it holds.  An edge that sends them takes a first push on the link that is a
delta from that revision (a rebase, ``roles/_push.py``); routers that do not know them
ignore them and send a snapshot."""
TRIM_SETTING = "trimmed"
"""Hello setting (an edge's): it reads trimmed catalog views (aggregates of other nodes'
endpoints, ``catalog/_trim.py``) and sends a REQUEST whose endpoint is an aggregate's tag."""

FLAG_END = 1
"""The sender's side of the stream ends with this frame."""

_LENGTH = struct.Struct(">I")
PREFIX_SIZE = _LENGTH.size


class ProtocolError(Exception):
    """The peer broke the protocol: the connection must be closed."""


@dataclass(frozen=True)
class Limits:
    """Caps enforced on every connection (the peer learns ours in its hello)."""

    max_frame: int = 256 * 1024
    """Largest frame of any type but CATALOG, in bytes."""
    max_catalog_frame: int = 64 << 20
    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    max_streams: int = 1024
    """Concurrent streams the peer may open towards us."""
    initial_window: int = 64 * 1024
    """Body bytes a stream may send before it is granted more credit (the hello's
    ``initial_window``), and the credit every stream keeps however busy the link is."""
    max_window: int = 1024 * 1024
    """The most credit (granted, not yet consumed) one stream may hold when the link's
    ``receive_budget`` allows it; not below ``initial_window``."""
    receive_budget: int = 2 * 1024 * 1024
    """Credit beyond ``initial_window`` that all streams of a link may hold together: the
    receiver's own policy (no setting on the wire), so what a link's streams can make
    it hold is at most this plus ``initial_window`` per stream.  64 KiB / 2 MiB rather
    than 32 KiB / 1 MiB: p2 /big 2718 against 3010 µs of CPU per request for +4.1 against
    +5.4 MiB of growth (bench/run.sh, same hour; 512 KiB windows: 2440 µs, +7.3 MiB)."""
    max_data_frame: int = 1024 * 1024
    """Largest DATA frame of a plain body (no trailer fields), in bytes: above ``max_frame``
    because no such body is held whole (the decoder hands it on as it arrives, or the link
    splices it past the process).  Announced in the hello (``MAX_DATA_SETTING``)."""
    max_data_chunk: int = 1024 * 1024 - 64
    """Largest body one DATA frame carries, and less where the peer takes less
    (``Connection.data_chunk``): a lone stream's spliced pod read (1 MiB) goes as one frame,
    not four (one 4 MiB transfer edge -> edge: both edges' CPU 0.85-0.88, wall 0.87-0.89,
    paired; bench/results-2026-12-06.md §10)."""


# --- events (what a peer said) -------------------------------------------------------


@dataclass(slots=True)
class Hello:
    """The first frame each way: protocol version, node name, role and the sender's settings."""

    version: int
    node: str
    role: str
    settings: dict[str, int]


@dataclass(slots=True)
class Request:
    """Opens an exchange: the request head, the resolved service and port, the chosen endpoint."""

    stream: int
    end: bool
    method: bytes
    path: bytes
    authority: bytes
    headers: Headers
    content_length: int | None
    client: str
    service: str
    """``namespace/name`` of the resolved service."""
    port: int
    """The service port number."""
    endpoint: tuple[str, int] | None
    """The endpoint the sender chose, when it chose one."""
    body: bytes
    hops: int = 0
    """Mesh pipelines the exchange passed (an optional last field: a peer that does not
    send it means 0)."""
    head: RequestHead | None = dataclasses.field(default=None, compare=False, repr=False)
    """The head as the mesh carries it (method, path, authority, fields, length, client,
    hops), made by the decoder once per distinct head (the decoded-heads key covers every
    field past the stream id and flags, client and hops included) and shared by the frames
    that repeat it (nothing writes a RequestHead): p2 edge-2, a dataclass init and a call
    less per exchange; None in a frame built by hand."""


@dataclass(slots=True)
class Data:
    """A piece of a body (either way), the last one flagged, with trailer fields when there are."""

    stream: int
    end: bool
    data: bytes | memoryview
    """From a FrameDecoder, a large body is a read-only view of the read that carried it
    (no copy): valid for the call that handles the frame; whoever keeps it copies it."""
    trailers: Headers = ()
    """Trailer fields of the body, on its last frame only: an optional fifth field, sent
    only to a peer whose hello offered ``trailers`` (older decoders refuse it)."""


@dataclass(slots=True)
class Response:
    """The response head of an exchange."""

    stream: int
    end: bool
    status: int
    reason: bytes
    headers: Headers
    content_length: int | None
    body: bytes
    head: ResponseHead | None = dataclasses.field(default=None, compare=False, repr=False)
    """The head as the mesh carries it (status, reason, fields, length), made by the decoder
    once per distinct head and shared by the frames that repeat it (nothing changes a
    ResponseHead): p2 edge-1, a dataclass init less per exchange (−2.2 k instructions).
    None in a frame built by hand."""


@dataclass(slots=True)
class Reset:
    """A stream ends without a clean end, with the reason."""

    stream: int
    code: str
    detail: str


@dataclass(slots=True)
class Window:
    """Credit returned: the receiver took this many more bytes of a stream."""

    stream: int
    increment: int


@dataclass(slots=True)
class Ping:
    """A heartbeat asking for a Pong (round trip, and a link that still answers)."""

    opaque: int


@dataclass(slots=True)
class Pong:
    """The answer to a Ping, echoing its payload."""

    opaque: int


@dataclass(slots=True)
class CatalogPush:
    """The router's catalog for an edge: a snapshot or a delta, at a revision."""

    revision: int
    kind: str
    """``snapshot`` (replaces everything) or ``delta``."""
    payload: dict[str, Any]
    """Validated by the catalog layer, which owns its schema."""


@dataclass(slots=True)
class StreamOpen:
    """Open an opaque bidirectional byte stream to a resolved service port.  The opener
    may send data (this frame's, then DATA) before the accept, within its window."""

    stream: int
    end: bool
    """The opener's direction is already over (half-closed)."""
    client: str
    service: str
    """``namespace/name`` of the resolved service."""
    port: int
    endpoint: tuple[str, int] | None
    data: bytes


@dataclass(slots=True)
class StreamAccept:
    """The far end is connected: DATA may now flow back to the opener."""

    stream: int


@dataclass(slots=True)
class Ack:
    """An edge's acknowledgement that a catalog revision is stored on its disk."""

    revision: int


@dataclass(slots=True)
class GoAway:
    """The sender stops taking new streams (draining, or refusing the peer), maybe with a
    retry-after."""

    reason: str
    retry_after: int | None = None
    """Seconds the peer should wait before it connects again (a refusal's hint); None:
    no hint.  An optional third field: frames from older peers have none."""
    move_to: str | None = None
    """A router that drains: the replica its edges should move to (its node name).  An
    optional fourth field, sent only to peers whose hello has MOVE_SETTING (older decoders
    refuse it)."""

    @property
    def refusal(self) -> bool:
        """The peer refused this link after the hello (see ``encode_refusal``), as opposed
        to a drain of a link it had accepted."""
        return self.reason.partition(":")[0] in REFUSAL_CODES


@dataclass(slots=True)
class EdgeSet:
    """Edges whose tunnel is on the sending router: ``reset`` replaces what the receiver
    knew of the sender's edges (the first frame of a full set), else a change."""

    reset: bool
    added: tuple[str, ...]
    removed: tuple[str, ...]


Frame = (
    Hello | Request | Data | Response | Reset | Window | Ping | Pong | CatalogPush | Ack | GoAway
    | StreamOpen | StreamAccept | EdgeSet
)


# --- encoding ------------------------------------------------------------------------

# buf_size: msgpack's default preallocates 256 KiB in every process; the buffer grows on demand.
_packb = msgpack.Packer(use_bin_type=True, autoreset=True, buf_size=16 * 1024).pack


def _framed(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def encode_hello(node: str, role: str, settings: dict[str, int]) -> bytes:
    return _framed(_packb((HELLO, PROTOCOL_VERSION, node, role, settings)))


_packed: dict[tuple[object, ...], bytes] = {}
"""The msgpack encoding of the fields of a head frame past its stream id and flags (a
response's status, reason, fields and length; a request's all but a large body), by those
fields: a pod answers with the same head but for its Date (once a second), a client sends
the same request.  One lookup instead of packing them (msgpack's packer spends ~1 k
instructions per field pair).  Bound like the decoder's memories."""
_PACKED_BOUND = 64
_PACKED_LENGTH = 2048


_PACKED_BODY = 256
"""A request body (the frame's first piece) up to this size is part of what is remembered."""


def _head_frame(start: bytes, stream: int, end: bool, fields: tuple[object, ...],
                remember: bool, tail: bytes = b"") -> bytes:
    """A head frame: ``start`` (the array's marker and the frame's type), the stream id and
    the flags, then ``fields`` (at most 15 with them: the elements of a fixarray), their
    encodings remembered in ``_packed`` when ``remember``, then ``tail`` (packed already).
    One helper for the whole frame: a Python call less per head than a helper each for
    the fields and the stream id; the stream id by msgpack's packer (timeit: 0.02 against
    0.08 us for the hand-made encoding, which needed a Python call)."""
    packed = None
    if remember:
        try:
            packed = _packed.get(fields)
        except TypeError:  # an unhashable field list: packed each time
            remember = False
    if packed is None:
        packed = _packb(fields)[1:]
        if remember and len(packed) <= _PACKED_LENGTH:
            if len(_packed) >= _PACKED_BOUND:
                _packed.clear()
            _packed[fields] = packed
    payload = b"".join((start, _packb(stream), b"\x01" if end else b"\x00", packed, tail))
    return _LENGTH.pack(len(payload)) + payload


def encode_request(
    stream: int,
    end: bool,
    method: bytes,
    path: bytes,
    authority: bytes,
    headers: Headers,
    content_length: int | None,
    client: str,
    service: str,
    port: int,
    endpoint: tuple[str, int] | None,
    body: bytes,
    hops: int | None = None,
) -> bytes:
    """``hops``: None leaves the field out (for a peer whose hello lacks HOPS_SETTING).
    The fields past the stream id and flags are packed once per head (``_packed``): edge-1's
    encode of a /small request: 216 -> 212 k instructions per exchange (callgrind A/B)."""
    host, ep_port = endpoint if endpoint is not None else (None, None)
    fields: tuple[object, ...]
    if hops is None:
        marker = b"\x9e\x01"
        fields = (method, path, authority, headers, content_length, client, service, port,
                  host, ep_port, body)
    else:
        marker = b"\x9f\x01"
        fields = (method, path, authority, headers, content_length, client, service, port,
                  host, ep_port, body,
                  hops if hops < MAX_HOPS else MAX_HOPS)  # (not min(): ~750 instr.)
    return _head_frame(marker, stream, end, fields, len(body) <= _PACKED_BODY)


def encode_data(stream: int, end: bool, data: bytes, trailers: Headers = ()) -> bytes:
    if trailers:
        if not end:
            raise ValueError("trailers go on the last frame of a body")
        return _framed(_packb((DATA, stream, FLAG_END, data, trailers)))
    return _framed(_packb((DATA, stream, FLAG_END if end else 0, data)))


def encode_data_head(stream: int, end: bool, size: int) -> bytes:
    """Everything of a DATA frame but its data, so a large body is never copied into a
    frame (the same bytes as ``encode_data``: a 4-element array, then bin 8/16/32)."""
    # msgpack's own encoding of the stream id, without a call into the packer (one per
    # DATA frame on the sending edge).
    if stream < 0x80:
        sid = _SMALL_INTS[stream]
    elif stream < 0x100:
        sid = b"\xcc" + bytes((stream,))
    elif stream < 0x10000:
        sid = b"\xcd" + stream.to_bytes(2, "big")
    else:
        sid = b"\xce" + stream.to_bytes(4, "big")
    if size < 0x100:
        bin_head = b"\xc4" + bytes((size,))
    elif size < 0x10000:
        bin_head = b"\xc5" + size.to_bytes(2, "big")
    else:
        bin_head = b"\xc6" + size.to_bytes(4, "big")
    head = b"\x94\x02" + sid + (b"\x01" if end else b"\x00") + bin_head
    return _LENGTH.pack(len(head) + size) + head


_SMALL_INTS = tuple(bytes((value,)) for value in range(0x80))


def encode_response(
    stream: int,
    end: bool,
    status: int,
    reason: bytes,
    headers: Headers,
    content_length: int | None,
    body: bytes,
) -> bytes:
    """The same bytes as packing the whole array, with status, reason, fields and length
    packed once per head (``_packed``): edge-2's encode of a /small response, -5 k
    instructions (252 -> 247 k, callgrind A/B)."""
    return _head_frame(b"\x98\x03", stream, end, (status, reason, headers, content_length),
                       True, _packb(body))


def encode_reset(stream: int, code: str, detail: str) -> bytes:
    return _framed(_packb((RESET, stream, code, detail[:512])))


def encode_window(stream: int, increment: int) -> bytes:
    return _framed(_packb((WINDOW, stream, increment)))


def encode_ping(opaque: int) -> bytes:
    return _framed(_packb((PING, opaque)))


def encode_pong(opaque: int) -> bytes:
    return _framed(_packb((PONG, opaque)))


def encode_catalog(revision: int, kind: str, payload: dict[str, Any]) -> bytes:
    return _framed(_packb((CATALOG, revision, kind, payload)))


def encode_stream_open(
    stream: int,
    end: bool,
    client: str,
    service: str,
    port: int,
    endpoint: tuple[str, int] | None,
    data: bytes,
) -> bytes:
    host, ep_port = endpoint if endpoint is not None else (None, None)
    return _framed(
        _packb((STREAM_OPEN, stream, FLAG_END if end else 0, client, service, port, host, ep_port,
                data))
    )


def encode_stream_accept(stream: int) -> bytes:
    return _framed(_packb((STREAM_ACCEPT, stream)))


def encode_ack(revision: int) -> bytes:
    return _framed(_packb((ACK, revision)))


def encode_goaway(reason: str, retry_after: int | None = None,
                  move_to: str | None = None) -> bytes:
    """``retry_after``: only for a peer whose hello has RETRY_AFTER_SETTING; ``move_to``:
    only for one whose hello has MOVE_SETTING (fourth, after a retry-after or nil)."""
    after = None if retry_after is None else min(max(retry_after, 1), MAX_RETRY_AFTER)
    if move_to:
        return _framed(_packb((GOAWAY, reason[:512], after, move_to[:253])))
    if after is None:
        return _framed(_packb((GOAWAY, reason[:512])))
    return _framed(_packb((GOAWAY, reason[:512], after)))


REFUSED = "refused"
"""Refusal code: the peer is not accepted (its identity, its role, a node the catalog
does not know)."""
NOT_READY = "not-ready"
"""Refusal code: the node cannot accept peers yet (a router whose catalog source has not
listed); the peer should come back after the GOAWAY's retry-after."""
REFUSAL_CODES = frozenset({REFUSED, NOT_READY})
MAX_RETRY_AFTER = 3600
MAX_DATA_SETTING = "max_data_frame"
"""Hello setting: the largest plain DATA frame the sender takes (``Limits.max_data_frame``);
a peer without it takes none above its ``max_frame``."""
RETRY_AFTER_SETTING = "goaway_retry_after"
"""Hello setting (1) of a peer that decodes GOAWAY's optional retry-after field; peers
without it get the two-field frame (older decoders refuse a third field)."""


def encode_refusal(code: str, detail: str, retry_after: int | None = None) -> bytes:
    """A GOAWAY that refuses a link after its hello: ``"<code>: <detail>"``, with a
    retry-after hint in seconds when given (only for peers whose hello has
    ``RETRY_AFTER_SETTING``: the caller decides)."""
    return encode_goaway(f"{code}: {detail}", retry_after)


def encode_edges(reset: bool, added: list[str], removed: list[str]) -> bytes:
    """One or more EDGES frames (MAX_EDGES_PER_FRAME names each; only the first resets)."""
    names = [(name, True) for name in added] + [(name, False) for name in removed]
    out = []
    first = True
    while first or names:
        chunk, names = names[:MAX_EDGES_PER_FRAME], names[MAX_EDGES_PER_FRAME:]
        out.append(_framed(_packb((EDGES, 1 if reset and first else 0,
                                   [n for n, up in chunk if up],
                                   [n for n, up in chunk if not up]))))
        first = False
    return b"".join(out)


# --- decoding ------------------------------------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*\Z")
_REQUEST_TARGET = re.compile(rb"[!-~]+\Z")
_heads_seen: dict[tuple[tuple[bytes, bytes], ...], int] = {}
"""Header sections checked lately (fields well-formed), with their size for the byte limit
of the link at hand: a peer relays the same pod's fields but for its Date.  A lookup instead
of the checks: path 2 edge-1 273 → 264 k instructions per /small exchange (callgrind A/B)."""
_HEADS_SEEN_BOUND = 64
_HEAD_SEEN_BYTES = 2048
_NOT_IN_VALUE = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
"""The bytes _FIELD_VALUE refuses (controls but HTAB, and DEL)."""
_MAX_U31 = (1 << 31) - 1
_KNOWN_NAMES: set[bytes] = set()
"""Field names already found to be tokens: a set lookup instead of a regex per field
(most exchanges carry the same few names)."""
_KNOWN_NAMES_BOUND = 4096
_MAX_BODY_LENGTH = 1 << 62


def frame_type(payload: bytes | bytearray) -> int | None:
    """The type of a frame from its first payload bytes (None: not enough bytes yet)."""
    if len(payload) < 2:
        return None
    # A frame is a fixarray (0x90-0x9f) whose first element is a positive fixint.
    if not 0x91 <= payload[0] <= 0x9F or payload[1] > 0x7F:
        raise ProtocolError("frame is not an array starting with a frame type")
    return payload[1]


def _int(value: object, what: str, low: int = 0, high: int = _MAX_U31) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(f"{what}: expected an integer in [{low}, {high}]")
    return value


def _bytes(value: object, what: str, pattern: re.Pattern[bytes] | None = None) -> bytes:
    if type(value) is not bytes or (pattern is not None and pattern.match(value) is None):
        raise ProtocolError(f"{what}: expected valid bytes")
    return value


def _str(value: object, what: str, limit: int = 1024) -> str:
    if type(value) is not str or len(value) > limit:
        raise ProtocolError(f"{what}: expected a string of at most {limit} characters")
    return value


def _optional_length(value: object, what: str) -> int | None:
    return None if value is None else _int(value, what, 0, _MAX_BODY_LENGTH)


def _headers(value: object, limits: Limits) -> Headers:
    if type(value) is not tuple or len(value) > limits.max_header_count:
        raise ProtocolError(f"headers: expected at most {limits.max_header_count} fields")
    try:
        seen = _heads_seen.get(value)
    except TypeError:  # an unhashable piece (a map): the checks below refuse it
        seen = None
    if seen is not None:
        if seen > limits.max_header_bytes:
            raise ProtocolError(f"headers: more than {limits.max_header_bytes} bytes")
        return value
    total = 0
    known = _KNOWN_NAMES
    contents: list[bytes] = []
    for field in value:
        if type(field) is not tuple or len(field) != 2:
            raise ProtocolError("headers: each field must be a [name, value] pair")
        name, content = field
        if type(name) is not bytes or type(content) is not bytes:
            raise ProtocolError("headers: invalid field name or value")
        if name not in known:
            if _TOKEN.match(name) is None:
                raise ProtocolError("headers: invalid field name or value")
            if len(known) < _KNOWN_NAMES_BOUND:
                known.add(name)
        total += len(name) + len(content)
        contents.append(content)
    if total > limits.max_header_bytes:
        raise ProtocolError(f"headers: more than {limits.max_header_bytes} bytes")
    # Every value in one C pass that deletes the bytes _FIELD_VALUE refuses: ~4.5 k
    # instructions less than the regex over a pod's six response fields (callgrind).
    if contents:
        joined = b"".join(contents)
        if len(joined.translate(None, _NOT_IN_VALUE)) != len(joined):
            raise ProtocolError("headers: invalid field name or value")
    if total <= _HEAD_SEEN_BYTES:
        if len(_heads_seen) >= _HEADS_SEEN_BOUND:
            _heads_seen.clear()
        _heads_seen[value] = total
    return value  # checked field by field above


def _arity(fields: tuple[object, ...], count: int, name: str) -> None:
    if len(fields) != count:
        raise ProtocolError(f"{name} frame: expected {count} fields, got {len(fields)}")


MAX_CATALOG_CONTAINERS = 1 << 19
"""Arrays and maps in one catalog frame (a record per node, service, port and endpoint)."""


class _ContainerBudget:
    """msgpack hooks that cap how many arrays and maps one frame may build, and allow only
    string map keys: one byte of input (an empty map) would otherwise become a dict of
    ~64 bytes, a million times over in a frame under the size cap."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def _spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("frame holds too many arrays and maps")

    def array(self, value: Any) -> Any:
        self._spend()
        return value

    def map(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self._spend()
        for key in value:
            if type(key) is not str:
                raise ProtocolError("map keys must be strings")
        return value


def _no_map(value: object) -> object:
    raise ProtocolError("too many arrays and maps: no map belongs in this frame")


def _no_ext(code: int, data: bytes) -> object:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")


_HeadFields = tuple[Any, ...]
_heads_decoded: dict[bytes, tuple[Limits, int, _HeadFields]] = {}
"""REQUEST and RESPONSE frames decoded and checked lately, by their bytes after the stream
id and flags (the limits they were checked against, the array's marker and the frame's
type with them): a peer sends the same heads over and over but for the stream.  One lookup
instead of msgpack and the checks: path 2 483 -> 447 k instructions per /small exchange,
both edges (unpackb alone was ~5 k per frame; callgrind A/B)."""
_HEADS_DECODED_BOUND = 64
_STREAM32 = struct.Struct(">I")
_HEAD_DECODED_LENGTH = 2048


def _decode_head(payload: bytes, limits: Limits) -> Frame:
    """decode_payload of a payload whose type byte says REQUEST or RESPONSE: from
    ``_heads_decoded`` when its fields past the stream id and flags were decoded before
    (anything out of the ordinary, a short payload, a stream id or flags, goes to msgpack
    and the checks).  The frame decoder calls it directly (a Python call less per head)."""
    if len(payload) < 9 or not 0x91 <= payload[0] <= 0x9F:  # shorter than any head frame
        return _decode_payload(payload, limits)
    marker = payload[2]
    if marker <= 0x7F:
        stream, pos = marker, 3
    elif marker == 0xCD:
        # Not int.from_bytes of a slice (~1.96 k instructions): 0.66 k here, 0.96 k for the
        # struct below (callgrind micro-benchmark); once per head frame.
        stream, pos = payload[3] << 8 | payload[4], 5
    elif marker == 0xCE:
        stream, pos = _STREAM32.unpack_from(payload, 3)[0], 7
    elif marker == 0xCC:
        stream, pos = payload[3], 4
    else:
        return _decode_payload(payload, limits)
    flags = payload[pos]
    if not 1 <= stream <= _MAX_U31 or flags > 0x7F:
        return _decode_payload(payload, limits)
    key = payload[pos + 1 :]
    # The array's marker and the frame's type are part of what was decoded: a REQUEST never
    # takes a RESPONSE's fields (nor one of another arity).
    form = payload[0] << 8 | payload[1]
    seen = _heads_decoded.get(key)
    if seen is not None and seen[1] == form and (seen[0] is limits or seen[0] == limits):
        if payload[1] == RESPONSE:
            return Response(stream, bool(flags & FLAG_END), *seen[2])
        return Request(stream, bool(flags & FLAG_END), *seen[2])
    frame = _decode_payload(payload, limits)
    if len(key) <= _HEAD_DECODED_LENGTH:
        if type(frame) is Response:
            fields: _HeadFields = (frame.status, frame.reason, frame.headers,
                                   frame.content_length, frame.body, frame.head)
        else:
            assert type(frame) is Request
            fields = (frame.method, frame.path, frame.authority, frame.headers,
                      frame.content_length, frame.client, frame.service, frame.port,
                      frame.endpoint, frame.body, frame.hops, frame.head)
        if len(_heads_decoded) >= _HEADS_DECODED_BOUND:
            _heads_decoded.clear()
        _heads_decoded[key] = (limits, form, fields)
    return frame


def decode_payload(payload: bytes | bytearray, limits: Limits) -> Frame:
    """Decode and validate one frame payload (without its length prefix)."""
    if type(payload) is bytes and len(payload) >= 2 and (
            payload[1] == RESPONSE or payload[1] == REQUEST):
        return _decode_head(payload, limits)
    return _decode_payload(payload, limits)


def _decode_payload(payload: bytes | bytearray, limits: Limits) -> Frame:
    kind = frame_type(payload)
    catalog = kind == CATALOG
    try:
        if kind == HELLO or catalog:
            # The only frames with maps: count every container and check every key.
            # A head has the frame array, the header array and one pair per header (hello: one
            # settings map); only catalogs hold many records.
            budget = _ContainerBudget(
                MAX_CATALOG_CONTAINERS if catalog else limits.max_header_count + 8
            )
            fields = msgpack.unpackb(
                payload,
                # A catalog payload is a plain structure with lists (catalog_from_wire's
                # schema); everything else is checked here, where tuples are cheaper.
                use_list=catalog,
                raw=False,
                strict_map_key=True,
                max_str_len=limits.max_frame,
                max_bin_len=limits.max_catalog_frame if catalog else limits.max_frame,
                max_array_len=(1 << 20) if catalog else max(16, limits.max_header_count),
                max_map_len=(1 << 20) if catalog else 16,
                max_ext_len=0,
                ext_hook=_no_ext,
                list_hook=budget.array,
                object_hook=budget.map,
            )
        else:
            # The hot frames (heads, data, credit) hold no maps: the first one is refused,
            # and arrays are short tuples (empty ones shared), so the frame cap bounds what
            # decoding can allocate with no per-array callback.
            fields = msgpack.unpackb(
                payload,
                use_list=False,
                raw=False,
                max_str_len=limits.max_frame,
                max_bin_len=limits.max_frame,
                max_array_len=(MAX_EDGES_PER_FRAME if kind == EDGES
                               else max(16, limits.max_header_count)),
                max_map_len=0,
                max_ext_len=0,
                ext_hook=_no_ext,
                object_hook=_no_map,
            )
    except ProtocolError:
        raise
    except Exception as error:  # noqa: BLE001  msgpack raises a zoo: ValueError, StackError...
        raise ProtocolError(f"undecodable frame: {type(error).__name__}") from None
    if type(fields) is list:
        fields = tuple(fields)
    if type(fields) is not tuple or not fields:
        raise ProtocolError("frame is not an array")
    decoder = _DECODERS.get(kind, _unknown) if kind is not None else _unknown
    return decoder(fields, limits)


def _unknown(fields: tuple[object, ...], limits: Limits) -> Frame:
    raise ProtocolError(f"unknown frame type {fields[0]!r}")


def _hello(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 5, "hello")
    settings = f[4]
    if type(settings) is not dict or len(settings) > 16:
        raise ProtocolError("hello: settings must be a small map")
    for key, value in settings.items():
        _str(key, "hello: setting name", 64)
        _int(value, f"hello: setting {key}", 0, _MAX_BODY_LENGTH)
    return Hello(_int(f[1], "hello: version"), _str(f[2], "hello: node", 253),
                 _str(f[3], "hello: role", 32), settings)


def _request(f: tuple[object, ...], limits: Limits) -> Frame:
    # The hot path: one pass of plain type and range checks; anything unusual goes to
    # _request_checked, which checks field by field and names the bad one.
    count = len(f)
    if count == 14 or count == 15:
        if count == 14:
            (_, stream, flags, method, path, authority, headers, length, client, service, port,
             host, ep_port, body) = f
            hops: object = 0
        else:
            (_, stream, flags, method, path, authority, headers, length, client, service, port,
             host, ep_port, body, hops) = f
        if (
            type(stream) is int and 1 <= stream <= _MAX_U31
            and type(flags) is int and 0 <= flags <= 255
            and type(method) is bytes and type(path) is bytes and type(authority) is bytes
            and type(body) is bytes
            and type(client) is str and len(client) <= 64
            and type(service) is str and len(service) <= 512
            and type(port) is int and 1 <= port <= 65535
            and (length is None or (type(length) is int and 0 <= length <= _MAX_BODY_LENGTH))
            and (
                host is None
                or (type(host) is str and len(host) <= 253
                    and type(ep_port) is int and 1 <= ep_port <= 65535)
            )
            and _TOKEN.match(method) is not None
            and _REQUEST_TARGET.match(path) is not None
            and _REQUEST_TARGET.match(authority) is not None
            and type(hops) is int and 0 <= hops <= MAX_HOPS
        ):
            fields = _headers(headers, limits)
            return Request(stream, bool(flags & FLAG_END), method, path, authority, fields,
                           length, client, service, port,
                           None if host is None else (host, ep_port), body,  # type: ignore[arg-type]
                           hops, RequestHead(method, path, authority, fields, length, client, hops))
    return _request_checked(f, limits)


def _request_checked(f: tuple[object, ...], limits: Limits) -> Frame:
    if len(f) != 15:
        _arity(f, 14, "request")
    host, ep_port = f[11], f[12]
    endpoint = None
    if host is not None:
        endpoint = (
            _str(host, "request: endpoint host", 253),
            _int(ep_port, "request: endpoint port", 1, 65535))
    # Checked in the frame's order (the first bad field is the one named).
    stream = _int(f[1], "request: stream", 1)
    end = bool(_int(f[2], "request: flags", 0, 255) & FLAG_END)
    method = _bytes(f[3], "request: method", _TOKEN)
    path = _bytes(f[4], "request: path", _REQUEST_TARGET)
    authority = _bytes(f[5], "request: authority", _REQUEST_TARGET)
    headers = _headers(f[6], limits)
    length = _optional_length(f[7], "request: content length")
    client = _str(f[8], "request: client", 64)
    service = _str(f[9], "request: service", 512)
    port = _int(f[10], "request: port", 1, 65535)
    body = _bytes(f[13], "request: body")
    hops = _int(f[14], "request: hops", 0, MAX_HOPS) if len(f) == 15 else 0
    return Request(stream, end, method, path, authority, headers, length, client, service, port,
                   endpoint, body, hops,
                   RequestHead(method, path, authority, headers, length, client, hops))


def _data(f: tuple[object, ...], limits: Limits) -> Frame:
    if len(f) == 5:
        end = bool(_int(f[2], "data: flags", 0, 255) & FLAG_END)
        trailers = _headers(f[4], limits)
        if not end or not trailers:
            raise ProtocolError("data: trailers only on the last frame, and never empty")
        return Data(_int(f[1], "data: stream", 1), end, _bytes(f[3], "data: data"), trailers)
    _arity(f, 4, "data")
    return Data(_int(f[1], "data: stream", 1), bool(_int(f[2], "data: flags", 0, 255) & FLAG_END),
                _bytes(f[3], "data: data"))


def _response(f: tuple[object, ...], limits: Limits) -> Frame:
    # The hot path, as for requests: _response_checked names whatever is wrong.
    if len(f) == 8:
        _, stream, flags, status, reason, headers, length, body = f
        if (
            type(stream) is int and 1 <= stream <= _MAX_U31
            and type(flags) is int and 0 <= flags <= 255
            and type(status) is int and 100 <= status <= 999
            and type(reason) is bytes and type(body) is bytes
            and (length is None or (type(length) is int and 0 <= length <= _MAX_BODY_LENGTH))
            and _FIELD_VALUE.match(reason) is not None
        ):
            fields = _headers(headers, limits)
            return Response(stream, bool(flags & FLAG_END), status, reason, fields, length, body,
                            ResponseHead(status, reason, fields, length))
    return _response_checked(f, limits)


def _response_checked(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 8, "response")
    stream = _int(f[1], "response: stream", 1)
    end = bool(_int(f[2], "response: flags", 0, 255) & FLAG_END)
    head = ResponseHead(
        status=_int(f[3], "response: status", 100, 999),
        reason=_bytes(f[4], "response: reason", _FIELD_VALUE),
        headers=_headers(f[5], limits),
        content_length=_optional_length(f[6], "response: content length"),
    )
    return Response(stream, end, head.status, head.reason, head.headers, head.content_length,
                    _bytes(f[7], "response: body"), head)


def _reset(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 4, "reset")
    return Reset(
        _int(f[1], "reset: stream", 1), _str(f[2], "reset: code", 64),
        _str(f[3], "reset: detail", 512))


def _window(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 3, "window")
    return Window(_int(f[1], "window: stream", 1), _int(f[2], "window: increment", 1))


def _ping(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 2, "ping")
    return Ping(_int(f[1], "ping: opaque", 0, (1 << 63) - 1))


def _pong(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 2, "pong")
    return Pong(_int(f[1], "pong: opaque", 0, (1 << 63) - 1))


def _catalog(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 4, "catalog")
    kind = _str(f[2], "catalog: kind", 16)
    if kind not in ("snapshot", "delta"):
        raise ProtocolError("catalog: kind must be snapshot or delta")
    if type(f[3]) is not dict:
        raise ProtocolError("catalog: payload must be a map")
    return CatalogPush(_int(f[1], "catalog: revision", 0, (1 << 63) - 1), kind, f[3])


def _stream_open(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 9, "stream open")
    host, ep_port = f[6], f[7]
    endpoint = None
    if host is not None:
        endpoint = (_str(host, "stream open: endpoint host", 253),
                    _int(ep_port, "stream open: endpoint port", 1, 65535))
    elif ep_port is not None:
        raise ProtocolError("stream open: endpoint port without a host")
    return StreamOpen(
        stream=_int(f[1], "stream open: stream", 1),
        end=bool(_int(f[2], "stream open: flags", 0, 255) & FLAG_END),
        client=_str(f[3], "stream open: client", 64),
        service=_str(f[4], "stream open: service", 512),
        port=_int(f[5], "stream open: port", 1, 65535),
        endpoint=endpoint,
        data=_bytes(f[8], "stream open: data"),
    )


def _stream_accept(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 2, "stream accept")
    return StreamAccept(_int(f[1], "stream accept: stream", 1))


def _ack(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 2, "ack")
    return Ack(_int(f[1], "ack: revision", 0, (1 << 63) - 1))


def _goaway(f: tuple[object, ...], limits: Limits) -> Frame:
    if len(f) == 4:
        return _goaway4(f)
    if len(f) != 3:
        _arity(f, 2, "goaway")  # the retry-after and move-to fields are optional
        return GoAway(_str(f[1], "goaway: reason", 512))
    return GoAway(_str(f[1], "goaway: reason", 512),
                  _int(f[2], "goaway: retry-after", 1, MAX_RETRY_AFTER))


def _goaway4(f: tuple[object, ...]) -> Frame:
    """GOAWAY with a move-to hint: (type, reason, retry-after or nil, move-to)."""
    after = None if f[2] is None else _int(f[2], "goaway: retry-after", 1, MAX_RETRY_AFTER)
    move_to = _str(f[3], "goaway: move-to", 253)
    return GoAway(_str(f[1], "goaway: reason", 512), after, move_to or None)


def _edges(f: tuple[object, ...], limits: Limits) -> Frame:
    _arity(f, 4, "edges")
    lists = []
    for value in f[2:]:
        if type(value) is not tuple or len(value) > MAX_EDGES_PER_FRAME:
            raise ProtocolError("edges: names must be a short array")
        lists.append(tuple(_str(name, "edges: name", 253) for name in value))
    return EdgeSet(_int(f[1], "edges: reset", 0, 1) == 1, lists[0], lists[1])


_DECODERS: dict[int, Callable[[tuple[object, ...], Limits], Frame]] = {
    HELLO: _hello, REQUEST: _request, DATA: _data, RESPONSE: _response, RESET: _reset,
    WINDOW: _window, PING: _ping, PONG: _pong, CATALOG: _catalog, ACK: _ack, GOAWAY: _goaway,
    STREAM_OPEN: _stream_open, STREAM_ACCEPT: _stream_accept,
    EDGES: _edges,
}


_Buffer = bytes | bytearray | memoryview


def _data_head(buffer: _Buffer, start: int, end: int, avail: int) -> tuple[int, bool, int] | None:
    """The stream, end flag and body offset of a well-formed DATA frame whose payload is
    ``buffer[start:end]``, judged from its head alone (``buffer`` holds bytes up to
    ``avail`` only); None for anything unusual, which decode_payload judges."""
    if avail - start < 5 or buffer[start] != 0x94 or buffer[start + 1] != DATA:
        return None
    pos = start + 2
    marker = buffer[pos]
    if marker <= 0x7F:
        stream = marker
        pos += 1
    elif marker == 0xCD:
        stream = int.from_bytes(buffer[pos + 1 : pos + 3], "big")
        pos += 3
    elif marker == 0xCE:
        stream = int.from_bytes(buffer[pos + 1 : pos + 5], "big")
        pos += 5
    elif marker == 0xCC:
        stream = buffer[pos + 1]
        pos += 2
    else:
        return None
    if not 1 <= stream <= _MAX_U31 or pos + 2 > end or pos + 2 > avail:
        return None
    flags = buffer[pos]
    kind = buffer[pos + 1]
    pos += 2
    if flags > 0x7F:
        return None
    if kind == 0xC4:
        width = 1
    elif kind == 0xC5:
        width = 2
    elif kind == 0xC6:
        width = 4
    else:
        return None
    if pos + width > avail:
        return None
    size = int.from_bytes(buffer[pos : pos + width], "big")
    pos += width
    if pos + size != end:
        return None
    return stream, bool(flags & FLAG_END), pos


def data_head_at(peeked: bytes) -> tuple[int, int, int]:
    """The stream, the head's length (prefix included) and the body's when ``peeked``, the
    next bytes of a link, starts a DATA frame (without trailers): a reader may take the
    head alone, or the frame alone.  (0, 0, 0) for anything else."""
    if len(peeked) < PREFIX_SIZE:
        return 0, 0, 0
    end = PREFIX_SIZE + _LENGTH.unpack_from(peeked, 0)[0]
    head = _data_head(peeked, PREFIX_SIZE, end, len(peeked))
    if head is None:
        return 0, 0, 0
    return head[0], head[2], end - head[2]


DATA_HEAD_MAX = 32
"""Bytes enough to hold the head of any DATA frame (``data_head_at``)."""


def _data_fast(buffer: _Buffer, start: int, end: int) -> Data | None:
    """A well-formed DATA frame without msgpack (one copy of its data instead of
    three, none for a large body in a read-only view of a read); anything unusual is left
    to decode_payload, which judges it."""
    head = _data_head(buffer, start, end, end)
    if head is None:
        return None
    stream, fin, pos = head
    if end - pos >= _VIEW_MIN and type(buffer) is memoryview and buffer.readonly:
        # A view of the read, not a copy: edge-1 of path 2 copied every body byte here
        # (0.63 of its 1.0 copies per byte, callgrind, bench/tls_cost.py --plain).
        return Data(stream, fin, buffer[pos:end])
    with memoryview(buffer) as view:
        data = bytes(view[pos:end])
    return Data(stream, fin, data)


_UINTS = {0xCC: struct.Struct(">B"), 0xCD: struct.Struct(">H"), 0xCE: struct.Struct(">I")}
"""msgpack's unsigned integers of up to 32 bits, by their marker."""


def _uint_at(buffer: _Buffer, pos: int, end: int) -> tuple[int, int] | None:
    """The msgpack unsigned integer of up to 32 bits at ``pos`` and the position after it,
    or None for anything else (a negative or 64-bit integer, a truncated one)."""
    if pos >= end:
        return None
    marker = buffer[pos]
    if marker <= 0x7F:
        return marker, pos + 1
    uint = _UINTS.get(marker)
    if uint is None or pos + 1 + uint.size > end:
        return None
    return uint.unpack_from(buffer, pos + 1)[0], pos + 1 + uint.size


def _window_fast(buffer: _Buffer, start: int, end: int) -> Window | None:
    """A well-formed WINDOW frame without msgpack: 0.7 us against 0.9 us for decode_payload
    and its slice's copy besides (timeit), 5 Python calls less; edge-2 of p2 /big at 32
    connections gets one per ~75 KiB (results 2026-12-04 §13).  Anything unusual is left
    to decode_payload, which judges it."""
    if end - start < 4 or buffer[start] != 0x93:
        return None
    stream_at = _uint_at(buffer, start + 2, end)
    if stream_at is None:
        return None
    stream, pos = stream_at
    increment_at = _uint_at(buffer, pos, end)
    if increment_at is None:
        return None
    increment, pos = increment_at
    if pos != end or not 1 <= stream <= _MAX_U31 or not 1 <= increment <= _MAX_U31:
        return None
    return Window(stream, increment)


_GATHER_MIN = 16 * 1024
"""A DATA frame at least this large that a read leaves unfinished has its body handed on
as it arrives, a DATA frame per piece (the last one with the frame's end flag), instead of
passing through the decoder's bytearray: no copy of a piece that is a view of a read,
and nothing of the body held between reads but a small piece."""
_HEAD_MAX = DATA_HEAD_MAX
"""Bytes taken into the bytearray to judge an unfinished frame: more than the head of any
DATA frame (prefix 4, array and type 2, stream id 5, flags 1, bin header 5)."""
_VIEW_MIN = 4096
"""Smaller pieces of a body are copied (coalesced until they reach this size or the
frame ends) rather than handed on as views: a body that arrives a few bytes per read is
not passed on as thousands of frames."""


class FrameDecoder:
    """Split a byte stream into validated frames.  One per connection; after a
    ProtocolError it refuses everything (the connection must be closed).

    With ``hello_first`` (what a Connection uses) the stream must open with a hello:
    any other first frame is refused from its first bytes, so that nobody who has
    not said hello gets a large catalog frame buffered.

    Frames that a read holds whole are decoded in place (large DATA bodies as views of the
    read).  The rest of a read goes to a bytearray, except the body of a large DATA frame:
    each read's piece of it is handed on at once as a DATA frame of its own (the frame's
    end flag on the last piece), a view of the read, small pieces coalesced.  The memory
    held is one unfinished frame's head, or less than 4 KiB of an unfinished body."""

    def __init__(self, limits: Limits, *, hello_first: bool = False) -> None:
        self._limits = limits
        self._buffer = bytearray()
        """The beginning of an unfinished frame (none while a body is gathered)."""
        self._small = bytearray()
        """Small pieces of the DATA body being handed on, not yet passed on."""
        self.body_need = 0
        """Bytes still missing from the DATA body being gathered (0: none is): a link's
        read looks here before it asks ``body_waiting`` (an attribute, not a call)."""
        self._body_frame = (0, False)
        self._failed = False
        self._greeted = not hello_first
        # Only a router sends catalogs: nobody else gets a frame above max_frame buffered.
        self._large_catalogs = not hello_first

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        if self._failed:
            raise ProtocolError("decoder already failed")
        frames: list[Frame] = []
        size = len(data)
        # Not released: a gathered body may hold views of it.  A link's read is a view
        # already (transports/_io.pooled_reads): no view of it per read (~680 instructions).
        view = data if type(data) is memoryview else memoryview(data)
        pos = 0
        try:
            while pos < size:
                if self.body_need:
                    pos = self._gather(view, pos, size, frames)
                elif self._buffer:
                    pos = self._complete(view, pos, size, frames)
                else:
                    self._in_place(view, pos, size, frames)
                    pos = size
        except ProtocolError:
            self._failed = True
            self._buffer = bytearray()
            self._small = bytearray()
            self.body_need = 0
            raise
        return frames

    def _in_place(self, buffer: memoryview, pos: int, size: int, frames: list[Frame]) -> None:
        """Decode the frames ``buffer[pos:size]`` holds whole; keep the unfinished rest."""
        limits = self._limits
        while size - pos >= PREFIX_SIZE:
            (length,) = _LENGTH.unpack_from(buffer, pos)
            start = pos + PREFIX_SIZE
            if length >= 2 and (length > limits.max_frame or not self._greeted):
                # The type is in the first payload bytes: judge the frame before
                # buffering it.  Only a catalog frame may be larger than max_frame.
                kind = frame_type(buffer[start : start + 2].tobytes())
                if kind is None:
                    break
                if not self._greeted and kind != HELLO:
                    raise ProtocolError("the first frame must be a hello")
                if length > limits.max_frame and not (
                    kind == DATA and length <= limits.max_data_frame
                ) and (
                    kind != CATALOG
                    or not self._large_catalogs
                    or length > limits.max_catalog_frame
                ):
                    raise ProtocolError(f"frame of {length} bytes exceeds the cap")
            end = start + length
            if size < end:
                if length >= _GATHER_MIN and self._greeted:
                    head = _data_head(buffer, start, end, size)
                    if head is not None:
                        self._body_frame = head[:2]
                        self.body_need = end - head[2]
                        self._gather(buffer, head[2], size, frames)
                        return
                    if length > limits.max_frame and size - start >= _HEAD_MAX - PREFIX_SIZE:
                        # Only a plain body may be above max_frame: it is handed on as it
                        # comes, never held whole.
                        raise ProtocolError(
                            f"DATA frame of {length} bytes is more than a plain body")
                break
            kind = buffer[start + 1] if length >= 2 else None
            if kind == DATA:
                frame = _data_fast(buffer, start, end) or decode_payload(
                    buffer[start:end].tobytes(), limits
                )
            elif kind == WINDOW:
                frame = _window_fast(buffer, start, end) or decode_payload(
                    buffer[start:end].tobytes(), limits
                )
            elif kind == RESPONSE or kind == REQUEST:
                # Straight to the heads' decoder: not through decode_payload, nor
                # _data_fast and _data_head, which would only find out it is no DATA frame.
                # (tobytes: ~620 instructions less than bytes() of the slice, callgrind.)
                frame = _decode_head(buffer[start:end].tobytes(), limits)
            else:
                frame = decode_payload(buffer[start:end].tobytes(), limits)
            if not self._greeted and type(frame) is Hello:
                self._large_catalogs = frame.role == ROUTER_ROLE
            frames.append(frame)
            self._greeted = True
            pos = end
        if pos < size:  # else it stays empty, as on entry (a bytearray of nothing: ~1.7 k instr.)
            self._buffer = bytearray(buffer[pos:size])

    def _complete(self, view: memoryview, pos: int, size: int, frames: list[Frame]) -> int:
        """Add to the unfinished frame in the bytearray only what it lacks: its head first
        (enough to judge it, or to gather a large DATA body from there), then the rest."""
        buffer = self._buffer
        have = len(buffer)
        if have < _HEAD_MAX:
            want = _HEAD_MAX - have
        else:
            want = PREFIX_SIZE + _LENGTH.unpack_from(buffer, 0)[0] - have
        take = min(want, size - pos)
        buffer += view[pos : pos + take]
        self._buffer = bytearray()
        with memoryview(buffer) as held:
            # Pieces of a body gathered from here are copies (below _VIEW_MIN).
            self._in_place(held, 0, len(buffer), frames)
        return pos + take

    @property
    def mid_frame(self) -> bool:
        """Part of a frame waits here (not a gathered body's pieces): the next bytes of the
        stream are that frame's rest, whatever they look like, not the start of a frame."""
        return bool(self._buffer)

    def body_waiting(self) -> tuple[int, int, int]:
        """The stream, the bytes still to come of the large DATA body being gathered (which
        a reader may move past the decoder: ``body_passed``) and the bytes of it that came
        but wait here, coalesced (``take_held``, first): (0, 0, 0) when none is."""
        if self._failed or not self.body_need:
            return 0, 0, 0
        return self._body_frame[0], self.body_need, len(self._small)

    def take_held(self) -> bytes:
        """The pieces of the body being gathered that wait here (under 4 KiB), handed over
        rather than as a DATA frame: the reader passes them on before the rest."""
        held = bytes(self._small)
        self._small = bytearray()
        return held

    def body_passed(self, size: int) -> bool:
        """``size`` bytes of the body being gathered (at most what ``body_waiting`` said)
        were taken past the decoder (spliced): whether they end the frame, and the frame
        its stream."""
        if not 0 < size <= self.body_need:
            raise ValueError("more body passed than the frame holds")
        self.body_need -= size
        return not self.body_need and self._body_frame[1]

    def _gather(self, buffer: _Buffer, pos: int, size: int, frames: list[Frame]) -> int:
        """Take what the DATA body being gathered still lacks from ``buffer[pos:size]`` and
        hand it on as a DATA frame (small pieces coalesced first)."""
        # Not min(): a builtin call with argument parsing per read of a gathered body.
        take = self.body_need
        if size - pos < take:
            take = size - pos
        self.body_need -= take
        stream, fin = self._body_frame
        last = not self.body_need
        small = self._small
        if take >= _VIEW_MIN and type(buffer) is memoryview and buffer.readonly:
            if small:
                frames.append(Data(stream, False, bytes(small)))
                self._small = bytearray()
            # A view of the read (bytes): no copy, and nothing held after this read (the
            # join of a gathered body was 0.37 of edge-1's 1.0 copies per byte, callgrind).
            frames.append(Data(stream, fin and last, buffer[pos : pos + take]))
        else:
            small += buffer[pos : pos + take]
            if last or len(small) >= _VIEW_MIN:
                frames.append(Data(stream, fin and last, bytes(small)))
                self._small = bytearray()
        return pos + take
