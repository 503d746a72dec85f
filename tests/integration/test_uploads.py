"""Uploads of 64 KiB to 64 MiB on every path (issue 11, item 1).

A peer that respects the credit a link stream granted it (a window: 512 KiB) must never be
refused.  Before the fix, a body over ~256 KiB sent with its head in one write through a link
to a pod the mesh had no pooled connection to answered ``503 overloaded`` most of the time
(the destination's pod client refused what the stream lawfully delivered while it connected).

Each upload is one request on a fresh client connection, head and body in one write (as
``http.client`` sends a bytes body), checked by the pod's sha256 of what it received.  The
``close-*`` origins answer with ``Connection: close`` (never a pooled connection); the
``pod-*`` ones keep alive, and a first request makes sure one is pooled.
"""

from __future__ import annotations

import hashlib

import pytest
from meshkit import Mesh, request

KiB = 1 << 10
MiB = 1 << 20

PATHS = {
    "local": ("edge-1", "e1"),
    "edge-to-edge": ("edge-1", "e2"),
    "edge-to-cloud": ("edge-1", "cloud"),
    "cloud-to-edge": ("router", "e2"),
}
SIZES = [64 * KiB, 300 * KiB, 512 * KiB, 4 * MiB]


def body_of(size: int) -> bytes:
    block = hashlib.sha256(b"upload %d" % size).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def upload(live: Mesh, via: str, host: str, size: int) -> None:
    body = body_of(size)
    response = request(live.proxy(via), "POST", "/upload", [("Host", host)], body, timeout=60)
    assert response.status == 200, (response.status, response.header("X-Edgemesh-Error"),
                                    response.body[:300])
    seen = response.json()
    assert seen["pod"] == f"{host}-0"
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s // KiB}KiB")
@pytest.mark.parametrize("origin", ["close", "pod"], ids=["origin-closes", "pooled"])
@pytest.mark.parametrize("path", list(PATHS))
def test_upload(live: Mesh, path: str, origin: str, size: int) -> None:
    via, where = PATHS[path]
    host = f"{origin}-{where}"
    if origin == "pod":
        # A keep-alive origin: after this exchange the pod client has a pooled connection.
        assert request(live.proxy(via), "GET", "/", [("Host", host)]).status == 200
    upload(live, via, host, size)


@pytest.mark.parametrize("path", ["edge-to-edge", "cloud-to-edge"])
def test_64_mib_upload_to_an_origin_that_closes(live: Mesh, path: str) -> None:
    via, where = PATHS[path]
    upload(live, via, f"close-{where}", 64 * MiB)


@pytest.mark.parametrize("path", ["edge-to-edge", "cloud-to-edge"])
def test_concurrent_uploads_to_an_origin_that_closes(live: Mesh, path: str) -> None:
    """Many at once keep the destination's reactor busy, so that its link reads carry a
    whole window of body before its pod connections are made: the case that failed."""
    from concurrent.futures import ThreadPoolExecutor

    via, where = PATHS[path]
    with ThreadPoolExecutor(16) as pool:
        for done in [pool.submit(upload, live, via, f"close-{where}", 512 * KiB)
                     for _ in range(24)]:
            done.result()
