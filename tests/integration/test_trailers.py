"""Trailers pass through the mesh (issue 11, item 5): the trailer fields of a chunked
request reach the pod, and those of a chunked response reach the client, on every path
(over the hub and tunnel links too).  Before, both were dropped silently.

The client is RawConnection: http.client cannot send request trailers.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from meshkit import Mesh, RawConnection

PATHS = {
    "local": ("edge-1", "pod-e1"),
    "edge-to-edge": ("edge-1", "close-e2"),
    "edge-to-cloud": ("edge-1", "pod-cloud"),
    "cloud-to-edge": ("router", "pod-e2"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_trailers_both_ways(live: Mesh, path: str) -> None:
    via, host = PATHS[path]
    body = b"x" * 70_000 + b"end"
    with RawConnection(live.proxy(via), timeout=15) as conn:
        conn.send(b"POST /trailers HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n"
                  b"Trailer: X-Checksum\r\n\r\n" % host.encode()
                  + b"%x\r\n%s\r\n" % (len(body), body)
                  + b"0\r\nX-Checksum: sha256=%s\r\nServer-Timing: total;dur=1\r\n\r\n"
                  % hashlib.sha256(body).hexdigest().encode())
        response = conn.read_response()
    assert response.status == 200, (response.status, response.body[:300])
    seen = json.loads(response.body)
    assert seen["body_length"] == len(body)
    assert seen["trailers"] == [["X-Checksum", f"sha256={hashlib.sha256(body).hexdigest()}"],
                                ["Server-Timing", "total;dur=1"]]
    assert response.trailers == [
        ("X-Body-Sha256", hashlib.sha256(body).hexdigest()),
        ("X-Echo-X-Checksum", f"sha256={hashlib.sha256(body).hexdigest()}"),
        ("X-Echo-Server-Timing", "total;dur=1"),
    ]
