"""Garbage on every listening port: random bytes, half frames, frames out of order.  Each
time that connection is closed, and the process goes on serving normal requests.

Ports: the edges' service-bus proxies and the router's HTTP listener (HTTP/1.1), the
edges' hubs and the router's tunnel (length-prefixed msgpack envelopes)."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import pytest
from meshkit import (
    HANDSHAKE_TIMEOUT,
    HEADER_TIMEOUT,
    Mesh,
    RawConnection,
    admin_get,
    request,
)

HELLO, PING = 0, 6


@dataclass(frozen=True)
class Port:
    name: str
    node: str
    envelope: bool

    def number(self, mesh: Mesh) -> int:
        number: int = mesh.envelope(self.node) if self.envelope else mesh.proxy(self.node)
        return number


PORTS = [
    Port("edge-1-proxy", "edge-1", False),
    Port("edge-2-proxy", "edge-2", False),
    Port("router-http", "router", False),
    Port("edge-1-hub", "edge-1", True),
    Port("edge-2-hub", "edge-2", True),
    Port("router-tunnel", "router", True),
]
HTTP_PORTS = [p for p in PORTS if not p.envelope]
ENVELOPE_PORTS = [p for p in PORTS if p.envelope]
IDS = [p.name for p in PORTS]


# -- envelope helpers (msgpack directly: the tests do not use the mesh's codec) ----------


def frame(*fields: object) -> bytes:
    payload: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def read_hello(conn: RawConnection) -> list[object]:
    """The hello a node sends as soon as a connection is made."""
    header = conn._exactly(4)
    (length,) = struct.unpack(">I", header)
    assert length < 4096, length
    fields = msgpack.unpackb(conn._exactly(length), raw=False)
    assert isinstance(fields, list) and fields[0] == HELLO and fields[1] == 1, fields
    return fields


def our_hello(server_hello: list[object]) -> bytes:
    """A well-formed hello from a made-up edge (never a real node's name: without TLS a
    hello naming edge-1 would replace edge-1's own link)."""
    settings = server_hello[4]
    return frame(HELLO, 1, "garbage-peer", "edge", settings)


# -- what "still serves" means ------------------------------------------------------------


def assert_mesh_serves(mesh: Mesh) -> None:
    """Every process alive; every listener answers; the four paths work."""
    mesh.check_alive()
    for port in ENVELOPE_PORTS:
        with RawConnection(port.number(mesh), timeout=5) as conn:
            hello = read_hello(conn)
            assert hello[2] == port.node, hello
    for via, host, pod in [
        (mesh.proxy("edge-1"), "pod-e1", "pod-e1-0"),
        (mesh.proxy("edge-1"), "pod-e2", "pod-e2-0"),
        (mesh.proxy("edge-2"), "pod-e1", "pod-e1-0"),
        (mesh.proxy("edge-1"), "pod-cloud", "pod-cloud-0"),
        (mesh.proxy("router"), "pod-e1", "pod-e1-0"),
        (mesh.proxy("router"), "pod-e2", "pod-e2-0"),
    ]:
        response = request(via, "POST", "/after-garbage", [("Host", host)], b"ok" * 100)
        assert response.status == 200 and response.header("X-Pod") == pod, \
            (host, response.status, response.body[:300])
    edges = {e["node"]: e for e in admin_get(mesh.topology.router_admin, "/edges")[1]}
    assert edges["edge-1"]["acked_revision"] is not None, edges
    assert edges["edge-2"]["acked_revision"] is not None, edges


@pytest.fixture(autouse=True)
def _serves_after_each_test(live: Mesh) -> object:
    yield
    assert_mesh_serves(live)


# -- random bytes ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 4096, 70_000])
@pytest.mark.parametrize("port", PORTS, ids=IDS)
def test_random_bytes_close_the_connection(live: Mesh, port: Port, size: int) -> None:
    for seed in range(3):
        data = random.Random(f"{port.name}/{size}/{seed}").randbytes(size)
        with RawConnection(port.number(live), timeout=5) as conn:
            if port.envelope:
                read_hello(conn)
            with_reply = _send_ignoring_reset(conn, data)
            assert conn.closed_by_peer(5), f"seed {seed}: still open after {size} random bytes"
            if not port.envelope and with_reply:
                # An HTTP listener may first say why: a 400 from the mesh, nothing else.
                assert conn.buffer[:12] in (b"", b"HTTP/1.1 400"), conn.buffer[:200]


def _send_ignoring_reset(conn: RawConnection, data: bytes) -> bool:
    """Send; the peer may close (even reset) before it has read everything."""
    try:
        conn.send(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


@pytest.mark.parametrize("port", PORTS, ids=IDS)
def test_many_garbage_connections_at_once(live: Mesh, port: Port) -> None:
    """Fifty connections sending garbage concurrently: all closed."""
    still_open: list[int] = []

    def one(index: int) -> None:
        data = random.Random(f"{port.name}/many/{index}").randbytes(512)
        with RawConnection(port.number(live), timeout=5) as conn:
            _send_ignoring_reset(conn, data)
            if not conn.closed_by_peer(8):
                still_open.append(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not still_open, f"left open: {still_open}"


# -- half frames ---------------------------------------------------------------------------


HTTP_HALVES = {
    "half-request-line": b"GE",
    "half-head": b"GET / HTTP/1.1\r\nHost: pod-e1\r\nX-Half: abc",
    "head-without-final-crlf": b"GET / HTTP/1.1\r\nHost: pod-e1\r\n",
}
ENVELOPE_HALVES = {
    "half-length-prefix": b"\x00\x00",
    "prefix-only": struct.pack(">I", 40),
    "half-hello": frame(HELLO, 1, "garbage-peer", "edge", {"initial_window": 65536})[:9],
    "prefix-claims-1-mib": struct.pack(">I", 1 << 20) + b"\x95\x00" + b"\x00" * 100,
}


def _silent_half_cases(mesh: Mesh) -> list[tuple[str, int, bytes, float]]:
    cases = []
    for port in PORTS:
        halves = ENVELOPE_HALVES if port.envelope else HTTP_HALVES
        deadline = HANDSHAKE_TIMEOUT + 4 if port.envelope else HEADER_TIMEOUT + 4
        for name, data in halves.items():
            cases.append((f"{port.name}/{name}", port.number(mesh), data, deadline))
    return cases


def test_half_frames_then_silence_are_closed_at_the_deadline(live: Mesh) -> None:
    """Half a request head, or half an envelope frame, then nothing: the HTTP listeners
    close at the header timeout, the envelope listeners at the handshake timeout.  All the
    cases run at once, so the test lasts about one handshake timeout."""
    outcome: dict[str, bool] = {}

    def one(name: str, number: int, data: bytes, deadline: float) -> None:
        with RawConnection(number, timeout=5) as conn:
            conn.send(data)
            outcome[name] = conn.closed_by_peer(deadline)

    cases = _silent_half_cases(live)
    threads = [threading.Thread(target=one, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANDSHAKE_TIMEOUT + 10)
    still_open = sorted(name for name, closed in outcome.items() if not closed)
    assert len(outcome) == len(cases)
    assert not still_open, f"not closed at the deadline: {still_open}"


@pytest.mark.parametrize("port", PORTS, ids=IDS)
def test_half_frame_then_eof(live: Mesh, port: Port) -> None:
    """Half a frame, then the client closes its side: the node closes too, at once."""
    halves = ENVELOPE_HALVES if port.envelope else HTTP_HALVES
    for name, data in halves.items():
        with RawConnection(port.number(live), timeout=5) as conn:
            conn.send(data)
            # The node may have closed first (an oversized prefix is refused at once): over
            # TLS the socket then says so at shutdown.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            assert conn.closed_by_peer(3), name


@pytest.mark.parametrize("port", HTTP_PORTS, ids=[p.name for p in HTTP_PORTS])
def test_half_body_then_eof(live: Mesh, port: Port) -> None:
    """A request whose body stops halfway (the client goes): the exchange is abandoned,
    the pod's connection with it, and nothing else is affected."""
    for host in ("pod-e1", "pod-e2"):
        with RawConnection(port.number(live), timeout=5) as conn:
            conn.send(f"POST /half HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n"
                      .encode() + b"x" * 30000)
            conn.sock.shutdown(socket.SHUT_WR)
            assert conn.closed_by_peer(5), host
        with RawConnection(port.number(live), timeout=5) as conn:
            conn.send(f"POST /half HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                      f"\r\n1000\r\nabc".encode())
            conn.sock.shutdown(socket.SHUT_WR)
            assert conn.closed_by_peer(5), host


# -- well-formed frames where they do not belong ----------------------------------------------


@pytest.mark.parametrize("port", ENVELOPE_PORTS, ids=[p.name for p in ENVELOPE_PORTS])
def test_frames_out_of_order(live: Mesh, port: Port) -> None:
    cases: dict[str, Callable[[list[object]], bytes]] = {
        "ping-before-hello": lambda hello: frame(PING, 1),
        "wrong-version": lambda hello: frame(HELLO, 99, "garbage-peer", "edge", hello[4]),
        "hello-twice": lambda hello: our_hello(hello) + our_hello(hello),
        "hello-then-random": lambda hello: our_hello(hello)
        + random.Random(port.name).randbytes(3000),
        "hello-then-unknown-type": lambda hello: our_hello(hello) + frame(99, 1, 2, 3),
        "hello-then-data-on-unknown-stream": lambda hello: our_hello(hello)
        + frame(2, 12345, 0, b"x"),
        "hello-then-nested": lambda hello: our_hello(hello)
        + struct.pack(">I", 2001) + b"\x91" * 2000 + b"\x00",
        "hello-then-huge-map-header": lambda hello: our_hello(hello)
        + struct.pack(">I", 6) + b"\x92\x06\xdf\xff\xff\xff",
    }
    for name, build in cases.items():
        with RawConnection(port.number(live), timeout=5) as conn:
            hello = read_hello(conn)
            _send_ignoring_reset(conn, build(hello))
            assert conn.closed_by_peer(5), name


@pytest.mark.parametrize("port", ENVELOPE_PORTS, ids=[p.name for p in ENVELOPE_PORTS])
def test_oversized_frame_before_hello_is_refused_at_once(live: Mesh, port: Port) -> None:
    """A stranger that claims a 60 MiB catalog frame before saying hello: refused without
    reading it, so a handful of such connections cannot use up the node's memory."""
    node = port.node
    before = live.procs[node].status_kib("VmRSS") or 0
    with RawConnection(port.number(live), timeout=5) as conn:
        read_hello(conn)
        conn.send(struct.pack(">I", 60 << 20) + msgpack.packb([8]))
        sent = 0
        try:
            for _ in range(4):  # enough to tell; more would only raise the node's VmHWM
                conn.send(b"\x00" * (1 << 20))
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        grown = ((live.procs[node].status_kib("VmRSS") or 0) - before) // 1024
        assert conn.closed_by_peer(1), f"{node} took {sent} MiB of it and grew by {grown} MiB"
