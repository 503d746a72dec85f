"""An edge out of file descriptors: the connections it cannot accept are closed (Twisted's
reserved-descriptor recovery for EMFILE, which edgemesh's reactor's shorter accept hands
over to; CI runs this file under both reactors), the connections it holds go on working,
and once descriptors are free it serves new connections again.  The edge is a real twistd
process; its limit is lowered from outside (prlimit) and restored whatever happens."""

from __future__ import annotations

import http.client
import os
import resource
import select
import socket
import time

import pytest
from meshkit import LOOPBACK, Mesh, request

HEADROOM = 6
"""Descriptors the squeezed edge has left: a few accepted connections, then EMFILE."""
CONNECTIONS = HEADROOM + 24
DEADLINE = 10.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(sock: socket.socket) -> bool:
    """The edge closed ``sock`` (a FIN or a reset is waiting), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def get_pod_e1(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/fd-check", headers={"Host": "pod-e1"})
    response = conn.getresponse()
    response.read()
    return response.status


def test_an_edge_out_of_descriptors_sheds_new_connections_and_recovers(live: Mesh) -> None:
    edge = live.procs["edge-1"]
    port = live.proxy("edge-1")
    kept = http.client.HTTPConnection(LOOPBACK, port, timeout=DEADLINE)
    clients: list[socket.socket] = []
    try:
        assert get_pod_e1(kept) == 200  # (and its pod connection now pooled)
        before = open_fds(edge.pid)
        soft, hard = resource.prlimit(edge.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(edge.pid, resource.RLIMIT_NOFILE, (before + HEADROOM, hard))
        try:
            for _ in range(CONNECTIONS):  # the kernel completes them all (backlog 4096)
                clients.append(socket.create_connection((LOOPBACK, port), timeout=DEADLINE))
            end = time.monotonic() + DEADLINE
            shed: list[socket.socket] = []
            while len(shed) < CONNECTIONS - HEADROOM:
                assert time.monotonic() < end, (
                    f"{len(shed)} of {CONNECTIONS} connections closed by the edge")
                shed += [c for c in clients if c not in shed and closed_by_peer(c)]
                time.sleep(0.02)
            assert edge.alive()
            assert get_pod_e1(kept) == 200  # a connection it holds still works
        finally:
            resource.prlimit(edge.pid, resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        kept.close()
        for client in clients:
            client.close()
    # Descriptors free again: new connections are served, and none is left behind.
    end = time.monotonic() + DEADLINE
    while True:
        try:
            status = request(port, "GET", "/after", [("Host", "pod-e1")]).status
        except (ConnectionError, http.client.HTTPException) as error:
            status = repr(error)
        if status == 200 and open_fds(edge.pid) <= before + 1:
            break
        assert time.monotonic() < end, (
            f"after the squeeze: {status}, {open_fds(edge.pid)} descriptors (before: {before})")
        time.sleep(0.05)
    assert "EMFILE" in edge.log.read_text(errors="replace")


@pytest.fixture(autouse=True)
def _needs_prlimit() -> None:
    if not hasattr(resource, "prlimit"):
        pytest.skip("resource.prlimit is Linux's")
