"""Uploads of 64 KiB to 64 MiB on every path (issue 11, item 1).

A peer that respects the credit a link stream granted it (a window: 512 KiB) must never be
refused.  Before the fix, a body over ~256 KiB sent with its head in one write through a link
to a pod the mesh had no pooled connection to answered ``503 overloaded`` most of the time
(the destination's pod client refused what the stream lawfully delivered while it connected).

Each upload is one request on a fresh client connection, head and body in one write (as
``http.client`` sends a bytes body), checked by the pod's sha256 of what it received.  The
``close-*`` origins answer with ``Connection: close`` (never a pooled connection); the
``pod-*`` ones keep alive, and a first request makes sure one is pooled.

On loopback the pod connection is usually made before much of the body has arrived, so the
failure needs an origin slow to accept to show every time: ``gate-*`` pods are served by the
test itself, with a full accept queue until the mesh's connection attempt was dropped (the
kernel retries it about a second later).  Before the fix every upload over a link to them
answered 503 overloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from meshkit import LOOPBACK, Mesh, request
from podserver import PodHandler, PodServer

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
    """Many at once, each to a pod the mesh has no pooled connection to."""
    via, where = PATHS[path]
    with ThreadPoolExecutor(16) as pool:
        for done in [pool.submit(upload, live, via, f"close-{where}", 512 * KiB)
                     for _ in range(24)]:
            done.result()


# -- an origin slow to accept: deterministic (the case that failed) ------------------------


def connecting_to(address: str, port: int) -> bool:
    """Whether a connection to address:port waits in SYN-SENT (its SYN was dropped)."""
    host = socket.inet_aton(address)[::-1].hex().upper()  # /proc/net/tcp's little-endian form
    wanted = f"{host}:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return any(fields[2] == wanted and fields[3] == "02"
                   for fields in (line.split() for line in table))


@contextlib.contextmanager
def gated_pod(name: str, address: str, port: int) -> Iterator[threading.Event]:
    """A pod whose accept queue is full until the event is set: the mesh's connection
    attempt is dropped and retried by the kernel after about a second, so the whole
    request body reaches the destination node while it has no connection to the pod."""
    handler = type("GatePod", (PodHandler,), {"pod": name})
    server = PodServer((address, port), handler, bind_and_activate=False)
    server.server_bind()
    server.socket.listen(0)  # one pending connection fills the queue
    filler = socket.create_connection((address, port), timeout=5)
    gate = threading.Event()

    def serve() -> None:
        gate.wait(30)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        gate.set()
        filler.close()
        server.shutdown()
        server.server_close()
        thread.join(5)


GATED = {
    "local": ("edge-2", "gate-e2", LOOPBACK),
    "edge-to-edge": ("edge-1", "gate-e2", LOOPBACK),
    "edge-to-cloud": ("edge-1", "gate-cloud", "127.0.0.3"),
    "cloud-to-edge": ("router", "gate-e2", LOOPBACK),
}


@pytest.mark.parametrize("size", [512 * KiB, 4 * MiB], ids=["512KiB", "4MiB"])
@pytest.mark.parametrize("path", list(GATED))
def test_upload_to_an_origin_slow_to_accept(live: Mesh, path: str, size: int) -> None:
    """The destination node holds the body the peer sent within its credit until the pod
    connection is made (before: 503 overloaded, "request body kept coming while paused for
    a connection", as soon as more than 256 KiB had arrived over a link)."""
    via, service, address = GATED[path]
    port = live.topology.dead[service]
    body = body_of(size)
    # "close-": it answers with Connection: close, so no test finds a connection pooled.
    pod = f"close-{service}-0"
    with gated_pod(pod, address, port) as gate, ThreadPoolExecutor(1) as pool:
        sent = pool.submit(request, live.proxy(via), "POST", "/upload", [("Host", service)],
                           body, 30)
        deadline = time.monotonic() + 10
        while not connecting_to(address, port) and not sent.done():  # the mesh's SYN dropped
            assert time.monotonic() < deadline, "the mesh never tried to connect to the pod"
            time.sleep(0.02)
        gate.set()  # the kernel's retry (about a second later) gets through
        response = sent.result(30)
    assert response.status == 200, (response.status, response.header("X-Edgemesh-Error"),
                                    response.body[:300])
    seen = response.json()
    assert (seen["pod"], seen["body_length"]) == (pod, size)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
