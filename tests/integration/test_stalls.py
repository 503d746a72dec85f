"""A client that stalls mid-upload (issue 11, items 2 and 4).

edge-3 runs with ``--stream-idle-timeout 2``: a client that sends a request head and part of
its body, then nothing, gets ``408 client-timeout`` (it is not the upstream's fault: before,
504 upstream-timeout), two to three seconds after its last byte (the idle deadline runs from
the last activity: before, N to 2N seconds).
"""

from __future__ import annotations

import time

import pytest
from meshkit import Mesh, RawConnection, request, timed

IDLE = 2.0
SLACK = 0.5
"""Allowance for a loaded machine on top of the documented bound (N + 1 s)."""


@pytest.mark.parametrize("host", ["slow-e3", "pod-e1", "close-e2", "pod-cloud"],
                         ids=["local", "edge-to-edge", "edge-to-edge-closing", "edge-to-cloud"])
def test_a_client_stalling_mid_upload_gets_408(live: Mesh, host: str) -> None:
    with RawConnection(live.proxy("edge-3"), timeout=15) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n\r\n"
                  % host.encode() + b"x" * 1000)
        with timed() as elapsed:
            response = conn.read_response()
        assert response.status == 408, (response.status, response.body[:300])
        assert response.header("X-Edgemesh-Error") == "client-timeout"
        assert b"request body" in response.body
        print(f"\n{host}: 408 {elapsed():.2f}s after the last byte (--stream-idle-timeout 2)")
        assert IDLE - 0.1 <= elapsed() <= IDLE + 1 + SLACK, elapsed()
        assert conn.closed_by_peer(5), "the half-read request cannot leave the connection usable"
    # The mesh is fine afterwards.
    assert request(live.proxy("edge-3"), "GET", "/", [("Host", host)]).status == 200


def test_a_slow_but_steady_upload_is_not_cut(live: Mesh) -> None:
    """A piece every 0.7 s for 3.5 s: longer than both edge-3's request timeout (1 s) and
    its idle timeout (2 s), yet never silent for long."""
    with RawConnection(live.proxy("edge-3"), timeout=15) as conn:
        conn.send(b"POST /upload HTTP/1.1\r\nHost: pod-e1\r\nContent-Length: 5000\r\n\r\n")
        for _ in range(5):
            conn.send(b"x" * 1000)
            time.sleep(0.7)  # the client's pace: what the test is about, not a readiness wait
        response = conn.read_response()
    assert response.status == 200, (response.status, response.body[:300])
    assert response.json()["body_length"] == 5000
