"""Bodies that stream: large uploads and downloads checked by sha256 with the mesh's
memory bounded, chunked bodies both ways, and many concurrent exchanges over one link."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from meshkit import LOOPBACK, Mesh, request, sha256_of, timed
from podserver import pattern

MiB = 1 << 20
BIG = 256 * MiB
RSS_LIMIT_KIB = 100 * 1024
BIG_DEADLINE = 60.0
"""Seconds for each 256 MiB transfer."""


def download(port: int, host: str, target: str, timeout: float) -> tuple[int, str, str | None,
                                                                          str | None]:
    """GET, reading the body in pieces: (length, sha256, X-Pod, Transfer-Encoding)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Host": host})
        response = conn.getresponse()
        assert response.status == 200, response.read(300)
        length, sha = sha256_of(iter(lambda: response.read(MiB), b""))
        return length, sha, response.getheader("X-Pod"), response.getheader("Transfer-Encoding")
    finally:
        conn.close()


@pytest.mark.slow
def test_256_mib_upload_and_download_edge_to_edge(live: Mesh) -> None:
    """256 MiB each way through edge-1 → edge-2 with every mesh process under 100 MiB."""
    expected_length, expected_sha = sha256_of(pattern(11, BIG))
    port = live.proxy("edge-1")

    with timed() as upload_time:
        response = request(port, "POST", "/upload", [("Host", "pod-e2"),
                                                     ("Content-Length", str(BIG))],
                           pattern(11, BIG), timeout=BIG_DEADLINE)
    assert response.status == 200, response.body[:300]
    seen = response.json()
    assert seen["pod"] == "pod-e2-0"
    assert (seen["body_length"], seen["body_sha256"]) == (expected_length, expected_sha)
    assert upload_time() < BIG_DEADLINE

    with timed() as download_time:
        length, sha, pod, _ = download(port, "pod-e2", f"/bytes?n={BIG}&seed=11",
                                       timeout=BIG_DEADLINE)
    assert (length, sha, pod) == (expected_length, expected_sha, "pod-e2-0")
    assert download_time() < BIG_DEADLINE

    peaks = live.peak_rss()
    print(f"\n256 MiB upload {upload_time():.1f}s, download {download_time():.1f}s; "
          f"peak RSS (VmHWM): " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in
                                            sorted(peaks.items()) if v))
    over = {name: kib for name, kib in peaks.items() if kib is None or kib > RSS_LIMIT_KIB}
    assert not over, f"peak RSS over {RSS_LIMIT_KIB // 1024} MiB (KiB): {peaks}"


@pytest.mark.parametrize(
    ("via", "host"),
    [("edge-1", "pod-e1"), ("edge-1", "pod-e2"), ("edge-1", "pod-cloud"), ("router", "pod-e2")],
    ids=["edge-same-node", "edge-to-edge", "edge-to-cloud", "cloud-to-edge"],
)
def test_chunked_both_ways(live: Mesh, via: str, host: str) -> None:
    """A chunked upload (unknown length) and a chunked download of 8 MiB each."""
    port = live.proxy(via)
    size = 8 * MiB + 12345
    expected = sha256_of(pattern(3, size))
    response = request(port, "PUT", "/chunked", [("Host", host)], pattern(3, size), timeout=30)
    assert response.status == 200, response.body[:300]
    seen = response.json()
    assert (seen["body_length"], seen["body_sha256"]) == expected
    # The pod got a chunked body too: the mesh never learnt its length.
    assert seen["body_framing"] == "chunked"

    length, sha, _, coding = download(port, host, f"/bytes?n={size}&seed=3&chunked=1", 30)
    assert (length, sha) == expected
    assert coding == "chunked"
    length, sha, _, coding = download(port, host, f"/bytes?n={size}&seed=3", 30)
    assert (length, sha) == expected
    assert coding is None


def test_200_concurrent_requests_edge_to_edge(live: Mesh) -> None:
    """200 exchanges in flight at once from edge-1 to edge-2's pod: all succeed, each
    with its own body."""
    count = 200
    port = live.proxy("edge-1")
    barrier = threading.Barrier(count, timeout=20)

    def one(index: int) -> tuple[int, int, str, str]:
        body = os.urandom(1024 + index * 37)
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        try:
            conn.connect()
            barrier.wait()  # every connection is open before any request is sent
            conn.request("POST", f"/slow?s=0.3&i={index}", body=body,
                         headers={"Host": "pod-e2"})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, data[:300]
            seen = json.loads(data)
            assert seen["path"] == f"/slow?s=0.3&i={index}"
            assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
            return index, seen["body_length"], seen["pod"], response.getheader("X-Pod") or ""
        finally:
            conn.close()

    with timed() as elapsed, ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count)))
    assert [r[0] for r in results] == list(range(count))
    assert all(r[1] == 1024 + r[0] * 37 and r[2] == r[3] == "pod-e2-0" for r in results)
    # Concurrent, not one after another: 200 × 0.3 s would take a minute.
    assert elapsed() < 20, elapsed()


def test_slow_reader_does_not_grow_memory(live: Mesh) -> None:
    """A client that reads a 64 MiB download slowly: the mesh holds back the pod (flow
    control) instead of buffering the body."""
    port = live.proxy("edge-1")
    size = 64 * MiB
    before = {name: live.procs[name].status_kib("VmRSS") for name in ("edge-1", "edge-2")}
    digest = hashlib.sha256()
    received = 0
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("GET", f"/bytes?n={size}&seed=9", headers={"Host": "pod-e2"})
        response = conn.getresponse()
        assert response.status == 200
        first = response.read(MiB)
        digest.update(first)
        received += len(first)
        time.sleep(1.0)  # the client stalls: whatever the mesh would buffer, it buffers now
        during = {name: live.procs[name].status_kib("VmRSS") for name in before}
        for piece in iter(lambda: response.read(MiB), b""):
            digest.update(piece)
            received += len(piece)
    finally:
        conn.close()
    assert (received, digest.hexdigest()) == sha256_of(pattern(9, size))
    for name, kib in during.items():
        start = before[name]
        assert kib is not None and start is not None
        assert kib - start < 32 * 1024, f"{name} grew by {(kib - start) // 1024} MiB"
