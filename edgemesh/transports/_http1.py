"""
HTTP/1.1 pieces shared by the front (server side) and the pod client: which header
fields are hop-by-hop, and how heads are serialized.  No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..exchange import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""RFC 9110 §7.6.1 plus the legacy ones; ``content-length`` is framing and is
re-derived from ``content_length`` on each hop, so it is dropped as well."""

_FRAMING = HOP_BY_HOP | {b"content-length"}


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-cased option names listed in ``Connection`` header values."""
    values = tuple(values)
    if len(values) == 1:
        cached = _tokens_of.get(values[0])
        if cached is not None:
            return cached
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    listed = frozenset(tokens)
    if len(values) == 1 and len(_tokens_of) < _CACHE_BOUND:
        _tokens_of[values[0]] = listed  # most peers send one of a few values: "keep-alive"
    return listed


def end_to_end(
    raw: Iterable[tuple[bytes, bytes]], listed: frozenset[bytes] = frozenset(),
) -> Headers:
    """Drop hop-by-hop and framing fields, and those named in ``Connection``."""
    drop = _FRAMING
    if listed and not listed <= _FRAMING:
        cached = _drop_sets.get(listed)
        if cached is None:
            cached = _FRAMING | listed
            if len(_drop_sets) < _CACHE_BOUND:
                _drop_sets[listed] = cached
        drop = cached
    return tuple([(name, value) for name, value in raw if name.lower() not in drop])


_CACHE_BOUND = 256
_tokens_of: dict[bytes, frozenset[bytes]] = {}
_drop_sets: dict[frozenset[bytes], frozenset[bytes]] = {}


def request_head_bytes(
    method: bytes, path: bytes, headers: Headers, content_length: int | None
) -> bytes:
    """An HTTP/1.1 request head for a persistent upstream connection."""
    parts = [method, b" ", path, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    if content_length is None:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif content_length or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        parts += [b"Content-Length: ", b"%d" % content_length, b"\r\n\r\n"]
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def response_head_bytes(
    status: int,
    reason: bytes,
    headers: Headers,
    framing: bytes,
    keep_alive: bool,
) -> bytes:
    """An HTTP/1.1 response head; ``framing`` is the complete framing field line(s)
    (``Content-Length: n\\r\\n``, ``Transfer-Encoding: chunked\\r\\n`` or empty)."""
    parts = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(framing)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

_TRAILER_DROP = _FRAMING | {b"host"}
"""Fields never passed on from a trailer section: framing and routing (RFC 9110 §6.5.1)."""

def trailer_field(name: bytes) -> bool:
    """Whether a trailer field of this name is passed on."""
    return name.lower() not in _TRAILER_DROP


def last_chunk(trailers: Headers) -> bytes:
    """The end of a chunked body, with its trailer section."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    for name, value in trailers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)



def error_body(status: int, reason_code: str, detail: str) -> tuple[bytes, Headers]:
    """The mesh's own one-line text answer: body and headers (reflected values are
    made safe: control characters dropped; the body is text/plain, never HTML)."""
    safe = "".join(ch if ch.isprintable() else "?" for ch in detail)[:512]
    body = f"{status} {reason_code}: {safe}\n".encode("utf-8", "replace")
    headers: Headers = (
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Edgemesh-Error", reason_code.encode("ascii")),
    )
    return body, headers
