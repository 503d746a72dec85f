"""
The pure head checks of transports/_heads.py, as h11 tests its readers: valid heads and
what they give, invalid ones and the exact refusal (reason and detail).
"""

from __future__ import annotations

import pytest

from edgemesh.exchange import Reason
from edgemesh.transports._heads import (
    HeadError,
    check_authority,
    check_transfer_encoding,
    content_length,
    hop_count,
    request_framing,
    request_target,
    response_fields,
    unbroken_lines,
)


def refused(reason: Reason, detail: str, *, for_method: bool = True) -> tuple[Reason, str, bool]:
    return reason, detail, for_method


def check(error: pytest.ExceptionInfo[HeadError], want: tuple[Reason, str, bool]) -> None:
    assert (error.value.reason, error.value.detail, error.value.for_method) == want


# -- fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "length"), [(b"0", 0), (b"42", 42), (b"7 \t", 7)])
def test_content_length_valid(value: bytes, length: int) -> None:
    assert content_length(value) == length


@pytest.mark.parametrize("value", [b"", b" 1", b"-1", b"+1", b"0x10", b"1,1", b"1.0"])
def test_content_length_invalid(value: bytes) -> None:
    with pytest.raises(HeadError) as error:
        content_length(value)
    check(error, refused(Reason.bad_request, "malformed Content-Length"))


def test_transfer_encoding_valid() -> None:
    check_transfer_encoding(b"chunked", False)
    check_transfer_encoding(b"Chunked", False)


@pytest.mark.parametrize(("value", "seen", "want"), [
    (b"chunked", True, refused(Reason.bad_request, "more than one Transfer-Encoding field")),
    (b"gzip, chunked", False,
     refused(Reason.not_implemented, "transfer coding 'gzip' is not supported")),
    (b"chunked, br", False,
     refused(Reason.not_implemented, "transfer coding 'br' is not supported")),
    (b"chunked ", False,
     refused(Reason.bad_request, "Transfer-Encoding must be exactly 'chunked'")),
    (b"chunked, chunked", False,
     refused(Reason.bad_request, "Transfer-Encoding must be exactly 'chunked'")),
    (b"", False, refused(Reason.bad_request, "Transfer-Encoding must be exactly 'chunked'")),
])
def test_transfer_encoding_invalid(
    value: bytes, seen: bool, want: tuple[Reason, str, bool]
) -> None:
    with pytest.raises(HeadError) as error:
        check_transfer_encoding(value, seen)
    check(error, want)


@pytest.mark.parametrize(("value", "hops"), [(b"0", 0), (b" 3 ", 3), (b"999", 999)])
def test_hop_count_valid(value: bytes, hops: int) -> None:
    assert hop_count(value) == hops


@pytest.mark.parametrize("value", [b"", b"1000", b"-1", b"a", b"1 1"])
def test_hop_count_invalid(value: bytes) -> None:
    with pytest.raises(HeadError) as error:
        hop_count(value)
    check(error, refused(Reason.bad_request, "malformed X-Edgemesh-Hops"))


@pytest.mark.parametrize("value", [b"web", b"web.shop:8080", b"10.96.0.10:80", b"[::1]:80"])
def test_authority_valid(value: bytes) -> None:
    assert check_authority(value) == value
    assert check_authority(value) == value  # from the cache too


@pytest.mark.parametrize(("value", "want"), [
    (b"", refused(Reason.bad_request, "empty Host")),
    (b"user@web", refused(Reason.bad_request, "user information in the authority")),
    (b"web shop", refused(Reason.bad_request, "malformed Host 'web shop'")),
    (b"web/x", refused(Reason.bad_request, "malformed Host 'web/x'")),
])
def test_authority_invalid(value: bytes, want: tuple[Reason, str, bool]) -> None:
    with pytest.raises(HeadError) as error:
        check_authority(value)
    check(error, want)


# -- a request head ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "want"), [
    (("1.1", b"GET", False, None, None, False), (False, 0)),
    (("1.0", b"GET", False, None, None, False), (True, 0)),
    (("1.1", b"POST", True, None, 10, False), (False, None)),
    (("1.1", b"POST", False, 10, 10, False), (False, 10)),
    (("1.1", b"GET", False, None, None, True), (False, 0)),  # an upgrade without a body
])
def test_request_framing_valid(args: tuple[object, ...], want: tuple[bool, int | None]) -> None:
    assert request_framing(*args) == want  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "want"), [
    (("2.0", b"GET", False, None, None, False),
     refused(Reason.bad_request, "HTTP version 2.0 is not supported", for_method=False)),
    (("1.1", b"CONNECT", False, None, None, False),
     refused(Reason.not_implemented, "CONNECT tunnels are not supported")),
    (("1.0", b"POST", True, None, None, False),
     refused(Reason.bad_request, "Transfer-Encoding in an HTTP/1.0 request")),
    (("1.1", b"POST", False, 11, 10, False),
     refused(Reason.payload_too_large,
             "request body of 11 bytes exceeds the limit of 10 bytes")),
    (("1.1", b"POST", True, None, None, True),
     refused(Reason.not_implemented, "protocol upgrade with a request body")),
    (("1.1", b"POST", False, 5, None, True),
     refused(Reason.not_implemented, "protocol upgrade with a request body")),
])
def test_request_framing_invalid(args: tuple[object, ...], want: tuple[Reason, str, bool]) -> None:
    with pytest.raises(HeadError) as error:
        request_framing(*args)  # type: ignore[arg-type]
    check(error, want)


@pytest.mark.parametrize(("url", "method", "host", "http10", "want"), [
    (b"/a?b", b"GET", b"web", False, (b"/a?b", b"web", False)),
    (b"*", b"OPTIONS", b"web", False, (b"*", b"web", False)),
    (b"/", b"GET", None, True, (b"/", b"", False)),
    (b"http://web.shop:8080/x", b"GET", b"other", False, (b"/x", b"web.shop:8080", True)),
    (b"HTTP://web", b"GET", None, False, (b"/", b"web", True)),
    (b"http://web?q", b"GET", None, False, (b"/?q", b"web", True)),
])
def test_request_target_valid(
    url: bytes, method: bytes, host: bytes | None, http10: bool,
    want: tuple[bytes, bytes, bool],
) -> None:
    assert request_target(url, method, host, http10) == want


@pytest.mark.parametrize(("url", "method", "host", "http10", "want"), [
    (b"*", b"GET", b"web", False,
     refused(Reason.bad_request, "'*' target for a method other than OPTIONS", for_method=False)),
    (b"/", b"GET", None, False, refused(Reason.bad_request, "missing Host header")),
    (b"/", b"GET", b"", False, refused(Reason.bad_request, "empty Host")),
    (b"http://u@web/", b"GET", None, False,
     refused(Reason.bad_request, "user information in the authority")),
    (b"https://web/", b"GET", None, False,
     refused(Reason.not_implemented, "https:// request targets are not supported: "
             "send http:// to the mesh, which secures the hops itself")),
    (b"ftp://web/", b"GET", None, False,
     refused(Reason.bad_request, "unsupported URI scheme 'ftp'")),
    (b"web/", b"GET", None, False, refused(Reason.bad_request, "unsupported request target")),
    (b"/a#b", b"GET", b"web", False,
     refused(Reason.bad_request, "fragment in the request target")),
    (b"http://web#b", b"GET", None, False,
     refused(Reason.bad_request, "fragment in the request target")),
])
def test_request_target_invalid(
    url: bytes, method: bytes, host: bytes | None, http10: bool, want: tuple[Reason, str, bool],
) -> None:
    with pytest.raises(HeadError) as error:
        request_target(url, method, host, http10)
    check(error, want)


# -- a response head ---------------------------------------------------------------------------


def test_response_fields_drop_framing_only() -> None:
    headers = ((b"Content-Type", b"text/plain"), (b"Content-Length", b"3"),
               (b"Transfer-Encoding", b"chunked"), (b"Connection", b"close"), (b"X-A", b"1"))
    assert response_fields(200, headers, 3) == ((b"Content-Type", b"text/plain"), (b"X-A", b"1"))
    untouched = ((b"X-B", b"2"),)
    assert response_fields(204, untouched, None) is untouched


@pytest.mark.parametrize(("status", "headers", "length", "want"), [
    (101, (), None, refused(Reason.upstream_bad_response, "unusable status 101")),
    (1000, (), None, refused(Reason.upstream_bad_response, "unusable status 1000")),
    (200, ((b"Bad Name", b"x"),), None,
     refused(Reason.upstream_bad_response, "invalid header name")),
    (200, ((b"X:", b"x"),), None, refused(Reason.upstream_bad_response, "invalid header name")),
    (200, (), -1, refused(Reason.upstream_bad_response, "negative content length")),
])
def test_response_fields_invalid(
    status: int, headers: tuple[tuple[bytes, bytes], ...], length: int | None,
    want: tuple[Reason, str, bool],
) -> None:
    with pytest.raises(HeadError) as error:
        response_fields(status, headers, length)
    check(error, want)


def test_unbroken_lines() -> None:
    unbroken_lines(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n", 3)
    for broken in (b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n", b"HTTP/1.1 200 O\rK\r\nA: b\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nA: \0\r\n\r\n"):
        with pytest.raises(HeadError) as error:
            unbroken_lines(broken, 3)
        check(error, refused(Reason.upstream_bad_response, "invalid response header value"))
