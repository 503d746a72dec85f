"""Hardening scenario 31: a load run on loopback (200 connections, 10 000 requests) through
edge → edge: every request answered, p99 and peak RSS within budget, and no connection left
behind on the mesh once the clients are gone."""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from meshkit import LOOPBACK, Mesh

CONNECTIONS = 200
PER_CONNECTION = 50  # 10 000 requests in all
P99_BUDGET = 2.0  # seconds: generous, CI machines are shared and the client is Python
RSS_BUDGET_KIB = 100 * 1024

pytestmark = pytest.mark.slow


def established_on(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the mesh's side of them)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                        count += 1
        except FileNotFoundError:
            continue
    return count


def test_200_connections_10000_requests(live: Mesh) -> None:
    port = live.proxy("edge-1")
    before = established_on(port)
    barrier = threading.Barrier(CONNECTIONS, timeout=30)

    def client(index: int) -> list[float]:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        latencies = []
        try:
            conn.connect()
            barrier.wait()
            for n in range(PER_CONNECTION):
                started = time.perf_counter()
                conn.request("GET", f"/echo?c={index}&n={n}", headers={"Host": "pod-e2"})
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)
        finally:
            conn.close()
        return latencies

    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        results = list(pool.map(client, range(CONNECTIONS)))
    latencies = sorted(t for per_client in results for t in per_client)
    assert len(latencies) == CONNECTIONS * PER_CONNECTION
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < P99_BUDGET, f"p99 {p99:.3f}s"
    for name in ("edge-1", "edge-2"):
        peak = live.procs[name].status_kib("VmHWM")
        assert peak is not None and peak < RSS_BUDGET_KIB, (name, peak)
    # The clients are gone: the mesh closes its side of every one of them.
    deadline = time.monotonic() + 15
    while established_on(port) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert established_on(port) <= before, "client connections left open on the mesh"
