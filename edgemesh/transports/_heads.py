"""
Validation of HTTP/1.1 heads beyond what llhttp enforces, as pure functions (no parser, no
connection): the front's request fields, framing and target, and the response heads it
writes.  Each refusal raises ``HeadError`` with the reason the client is answered and a
one-line detail; the front turns it into its answer (tests/test_heads.py, h11-style).
"""

from __future__ import annotations

import re
from typing import Final

from ..exchange import HOPS_HEADER, Headers, Reason
from ._http1 import HOP_BY_HOP

__all__ = [
    "FRAMING",
    "HeadError",
    "check_authority",
    "check_transfer_encoding",
    "hop_count",
    "request_framing",
    "request_target",
    "response_fields",
    "unbroken_lines",
]


class HeadError(Exception):
    """A head the mesh refuses: the reason it answers, and a one-line detail."""

    def __init__(self, reason: Reason, detail: str, *, for_method: bool = True) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.for_method = for_method
        """False: answered as for any method (even HEAD's answer carries its text)."""

    def __repr__(self) -> str:
        return f"HeadError({self.reason.code}, {self.detail!r})"


FRAMING: Final = HOP_BY_HOP | {b"content-length"}
"""Hop-by-hop and framing fields: never passed on, in either direction (framing is ours)."""

TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://")
_AUTHORITY_END = re.compile(rb"[/?#]")

_authorities: set[bytes] = set()
"""Authorities already found well-formed (a few services, asked for over and over)."""
_AUTHORITIES_BOUND = 4096

_response_names: dict[bytes, bool] = {}
"""Response field names already checked: name → whether it is a framing field to drop."""
_RESPONSE_NAMES_BOUND = 1024


# -- request fields ----------------------------------------------------------------------


def content_length(value: bytes) -> int:
    """A Content-Length value.  llhttp already refuses duplicates, signs, hex and lists; it
    keeps trailing whitespace, which is optional whitespace here."""
    digits = value.rstrip(b" \t")
    if not digits.isdigit():
        raise HeadError(Reason.bad_request, "malformed Content-Length")
    return int(digits)


def check_transfer_encoding(value: bytes, seen: bool) -> None:
    """A Transfer-Encoding field (``seen``: one came before): exactly ``chunked``, once."""
    if seen:
        raise HeadError(Reason.bad_request, "more than one Transfer-Encoding field")
    if value.lower() != b"chunked":
        # llhttp accepts "gzip, chunked", "chunked " and several fields.
        for coding in value.split(b","):
            coding = coding.strip(b" \t").lower()
            if coding != b"chunked" and TOKEN.fullmatch(coding):
                raise HeadError(
                    Reason.not_implemented,
                    f"transfer coding {coding.decode('ascii')!r} is not supported",
                )
        raise HeadError(Reason.bad_request, "Transfer-Encoding must be exactly 'chunked'")


def hop_count(value: bytes) -> int:
    """The mesh's hop count field (at most three digits)."""
    digits = value.strip(b" \t")
    if not digits.isdigit() or len(digits) > 3:
        raise HeadError(Reason.bad_request, f"malformed {HOPS_HEADER.decode()}")
    return int(digits)


def check_authority(authority: bytes) -> bytes:
    """A Host value or a target's authority, well-formed (cached: a few services are asked
    for over and over)."""
    if authority in _authorities:
        return authority
    if _AUTHORITY.fullmatch(authority) is None:
        if not authority:
            raise HeadError(Reason.bad_request, "empty Host")
        if b"@" in authority:
            raise HeadError(Reason.bad_request, "user information in the authority")
        raise HeadError(Reason.bad_request, f"malformed Host {authority.decode('latin-1')!r}")
    if len(_authorities) >= _AUTHORITIES_BOUND:
        _authorities.clear()
    _authorities.add(authority)
    return authority


# -- the request head as a whole ---------------------------------------------------------


def request_framing(
    version: str,
    method: bytes,
    chunked: bool,
    length: int | None,
    max_body: int | None,
    upgrade: bool,
) -> tuple[bool, int | None]:
    """Whether the request is HTTP/1.0, and its body's length (None: chunked), from the
    version, the method, whether Transfer-Encoding was given, the Content-Length value
    (None: none), the body cap (None: none) and whether llhttp would treat it as an
    upgrade."""
    if version == "1.1":
        http10 = False
    elif version == "1.0":
        http10 = True
    else:
        raise HeadError(Reason.bad_request, f"HTTP version {version} is not supported",
                        for_method=False)
    if method == b"CONNECT":
        raise HeadError(Reason.not_implemented, "CONNECT tunnels are not supported")
    body: int | None
    if chunked:
        if http10:
            raise HeadError(Reason.bad_request, "Transfer-Encoding in an HTTP/1.0 request")
        body = None
    else:
        body = length or 0
        if max_body is not None and body > max_body:
            raise HeadError(
                Reason.payload_too_large,
                f"request body of {body} bytes exceeds the limit of {max_body} bytes",
            )
    if body != 0 and upgrade:
        # llhttp would skip this body and parse it as the next request.
        raise HeadError(Reason.not_implemented, "protocol upgrade with a request body")
    return http10, body


def request_target(
    url: bytes, method: bytes, host: bytes | None, http10: bool
) -> tuple[bytes, bytes, bool]:
    """The path and authority of a request target (origin, asterisk or absolute form) and
    its Host field (None: none), and whether the authority came from an absolute-form
    target (RFC 9112 §3.2.2: it replaces any Host field)."""
    if url[:1] == b"/" or url == b"*":
        if url == b"*" and method != b"OPTIONS":
            raise HeadError(Reason.bad_request, "'*' target for a method other than OPTIONS",
                            for_method=False)
        path = url
        if host is None:
            if not http10:
                raise HeadError(Reason.bad_request, "missing Host header")
            authority = b""
        else:
            authority = check_authority(host)
        absolute = False
    elif url[:7].lower() == b"http://":
        end = _AUTHORITY_END.search(url, 7)
        if end is None:
            authority, path = url[7:], b"/"
        else:
            authority, path = url[7 : end.start()], url[end.start() :]
            if path[:1] != b"/":
                path = b"/" + path
        authority = check_authority(authority)
        absolute = True
    else:
        scheme = _SCHEME.match(url)
        if scheme is not None and scheme.group(1).lower() == b"https":
            raise HeadError(
                Reason.not_implemented,
                "https:// request targets are not supported: "
                "send http:// to the mesh, which secures the hops itself",
            )
        if scheme is not None:
            name = scheme.group(1).decode("ascii")
            raise HeadError(Reason.bad_request, f"unsupported URI scheme {name!r}")
        raise HeadError(Reason.bad_request, "unsupported request target")
    if path.find(b"#") >= 0:  # not "in": see unbroken_lines
        raise HeadError(Reason.bad_request, "fragment in the request target")
    return path, authority, absolute


# -- response heads ----------------------------------------------------------------------


def response_fields(status: int, headers: Headers, length: int | None) -> Headers:
    """A response head's fields without the framing ones (the front frames the body
    itself), once its status, field names and length are found usable."""
    if not 200 <= status <= 999:
        # A 1xx as the final answer would make the client read the next
        # response as this one's: refuse it rather than desynchronise.
        raise HeadError(Reason.upstream_bad_response, f"unusable status {status}")
    dropped = False
    names = _response_names
    for name, _value in headers:
        drop = names.get(name)
        if drop is None:
            if TOKEN.fullmatch(name) is None:
                raise HeadError(Reason.upstream_bad_response, "invalid header name")
            drop = name.lower() in FRAMING
            if len(names) < _RESPONSE_NAMES_BOUND:
                names[name] = drop
        if drop:
            dropped = True
    if dropped:
        headers = tuple(kv for kv in headers if not names.get(kv[0], True))
    if length is not None and length < 0:
        raise HeadError(Reason.upstream_bad_response, "negative content length")
    return headers


def unbroken_lines(data: bytes, lines: int) -> None:
    """A serialized head has exactly ``lines`` CRLF-ended lines and no NUL: the reason and
    the field values held no CR, LF or NUL (cheaper than scanning each)."""
    # find, not "in": bytes.__contains__ tries the argument as an int first and formats a
    # TypeError (~1.8 k instructions per check).
    if data.count(b"\n") != lines or data.count(b"\r") != lines or data.find(b"\0") >= 0:
        raise HeadError(Reason.upstream_bad_response, "invalid response header value")
