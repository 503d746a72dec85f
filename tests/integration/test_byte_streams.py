"""Byte streams through real ``twistd`` processes (issue 12): ``CONNECT`` on an edge's
proxy port to a TCP echo origin, with socat as the client (``PROXY:`` address: it sends
the CONNECT, then relays stdin/stdout and half-closes on stdin's EOF).

A mesh of its own: a router, edge-1 and edge-2 (mutual TLS), and the echo origins."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import (
    LOOPBACK,
    Mesh,
    RawConnection,
    Topology,
    _connects,
    _node,
    request,
    timed,
    write_catalog,
)

HERE = Path(__file__).resolve().parent
ECHOSERVER = HERE / "echoserver.py"
WSSERVER = HERE / "wsserver.py"
GRPCSERVER = HERE / "grpcserver.py"
EDGES = ("edge-1", "edge-2")
SOCAT = shutil.which("socat")
try:
    import grpc

    GRPC = True
except ImportError:  # pragma: no cover - the test extra installs it
    GRPC = False
needs_socat = pytest.mark.skipif(
    SOCAT is None, reason="socat is not installed (.ci/run installs it)")


def _stream_service(name: str, node: str, port: int, pod_port: int, cluster_ip: str,
                    port_name: str = "tcp-echo") -> list[dict[str, Any]]:
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip,
                 "ports": [{"name": port_name, "port": port, "targetPort": pod_port,
                            "protocol": "TCP"}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-{node}", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": pod_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [LOOPBACK], "conditions": {"ready": True},
                       "nodeName": node,
                       "targetRef": {"kind": "Pod", "name": f"{name}-0", "namespace": "default"}}],
    }
    return [service, endpoints]


@pytest.fixture(scope="module")
def streams_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("streams")
    topology = Topology.allocate(EDGES, ["echo-1", "echo-2", "echo-c", "ws-1", "grpc-1"],
                                 ["refused"])
    t = topology
    objects = [_node("cloud-1", False, None),
               *(_node(name, True, t.edges[name]["hub"]) for name in EDGES),
               *_stream_service("echo", "edge-1", 7, t.pods["echo-1"], "10.96.1.7"),
               *_stream_service("echo-two", "edge-2", 7, t.pods["echo-2"], "10.96.1.8"),
               *_stream_service("gone", "edge-1", 7, t.dead["refused"], "10.96.1.9"),
               # A cloud service: the router reaches it at clusterIP:port (here the origin
               # itself, as the session mesh's pod-cloud).
               *_stream_service("echo-cloud", "cloud-1", t.pods["echo-c"], t.pods["echo-c"],
                                LOOPBACK),
               # An HTTP port (named http) whose origin speaks WebSocket after an Upgrade.
               *_stream_service("ws", "edge-1", 80, t.pods["ws-1"], "10.96.1.10", "http"),
               *_stream_service("grpc-echo", "edge-1", 50051, t.pods["grpc-1"], "10.96.1.11",
                                "grpc")]
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, objects)
    mesh = Mesh(directory, topology, catalog)
    try:
        mesh._spawn("echo",
                    [str(ECHOSERVER), *(str(t.pods[p]) for p in ("echo-1", "echo-2", "echo-c"))],
                    None, mesh=False)
        mesh._spawn("ws", [str(WSSERVER), str(t.pods["ws-1"])], None, mesh=False)
        if GRPC:
            mesh._spawn("grpc", [str(GRPCSERVER), str(t.pods["grpc-1"])], None, mesh=False)
        mesh.start_router(wait=False)
        mesh.start_edge("edge-1", wait=False)
        mesh.start_edge("edge-2", "--outbound", "allow", wait=False)
        mesh.wait_healthy(mesh.procs["router"])
        mesh.wait_edges_acked(EDGES)
        origins = ["echo-1", "echo-2", "echo-c", "ws-1", *(["grpc-1"] if GRPC else [])]
        mesh.wait_for("the origins to listen", lambda: all(_connects(t.pods[p]) for p in origins),
                      [mesh.procs[name] for name in ("echo", "ws", "grpc") if name in mesh.procs])
        yield mesh
    finally:
        mesh.stop_all()


SOCAT_HALF_CLOSE_WAIT = 15
"""socat's -t: after its stdin's EOF it waits this long for the far end's FIN, then exits 0
anyway.  The transfers below must end well before: the FIN travelled back."""


def socat_through(mesh: Mesh, via: str, target: str, data: bytes, timeout: float = 60.0) -> bytes:
    """``data`` to ``target`` (host:port) through ``via``'s proxy port by CONNECT; what came
    back once both directions closed (asserted: by the far end's FIN, not socat's timer)."""
    host, _, port = target.rpartition(":")
    assert SOCAT is not None
    with timed() as took:
        result = subprocess.run(
            [SOCAT, "-t", str(SOCAT_HALF_CLOSE_WAIT), "-T", "30", "-",
             f"PROXY:{LOOPBACK}:{host}:{port},proxyport={mesh.proxy(via)}"],
            input=data, capture_output=True, timeout=timeout, check=False,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert took() < SOCAT_HALF_CLOSE_WAIT - 5, f"the far end's FIN did not arrive ({took():.1f}s)"
    return result.stdout


@needs_socat
@pytest.mark.parametrize("name", ["echo:7", "echo.default:7", "echo.default.svc.cluster.local:7"])
def test_connect_to_a_local_pod_echoes_and_half_closes(streams_mesh: Mesh, name: str) -> None:
    """socat sends 1 MiB and half-closes; the echo origin sends it all back and half-closes
    when it sees the client's FIN: socat exits 0 only when both directions ended."""
    data = os.urandom(1 << 20)
    assert socat_through(streams_mesh, "edge-1", name, data) == data


@needs_socat
@pytest.mark.parametrize(
    ("via", "target", "path"),
    [
        ("edge-2", "echo:7", "edge -> edge: edge-2's hub link to edge-1"),
        ("edge-1", "echo-two:7", "edge -> edge, the other way"),
        ("router", "echo:7", "cloud -> edge: the router's listener, down edge-1's tunnel"),
        ("edge-1", "echo-cloud:{cloud}", "edge -> cloud: up the tunnel, the router's TCP out"),
    ],
)
def test_connect_across_links(streams_mesh: Mesh, via: str, target: str, path: str) -> None:
    """1 MiB each way and both half-closes, over mutual-TLS links, on every path."""
    data = os.urandom(1 << 20)
    target = target.format(cloud=streams_mesh.topology.pods["echo-c"])
    assert socat_through(streams_mesh, via, target, data) == data, path


websockets = pytest.importorskip("websockets")


def ws_connect(mesh: Mesh, via: str, uri: str = "ws://ws.default/chat") -> Any:
    """A real WebSocket client (the ``websockets`` package) on a TCP connection to ``via``'s
    proxy port: the Host of ``uri`` routes it, as for any request."""
    from websockets.sync.client import connect

    sock = socket.create_connection((LOOPBACK, mesh.proxy(via)), timeout=30)
    return connect(uri, sock=sock, max_size=32 << 20, compression=None, open_timeout=30,
                   close_timeout=10)


@pytest.mark.parametrize(("via", "path"), [
    ("edge-1", "local"),
    ("edge-2", "edge -> edge"),
    ("router", "cloud -> edge"),
])
def test_websocket_upgrade_echoes_10000_messages_and_16_mib(streams_mesh: Mesh, via: str,
                                                            path: str) -> None:
    """After the origin's 101 the exchange is a byte stream both ways: 10 000 messages
    echoed in order, then one of 16 MiB, then a clean close (both directions)."""
    with ws_connect(streams_mesh, via) as ws:
        for start in range(0, 10_000, 500):  # pipelined in batches: bounded, and quick
            for i in range(start, start + 500):
                ws.send(f"message {i}")
            for i in range(start, start + 500):
                assert ws.recv(timeout=30) == f"message {i}", path
        big = os.urandom(16 << 20)
        ws.send(big)
        assert ws.recv(timeout=60) == big, path
    assert ws.close_code == 1000


def test_a_non_101_answer_to_an_upgrade_is_an_ordinary_response(streams_mesh: Mesh) -> None:
    """The echo origin answers a WebSocket handshake without the right headers with a 4xx:
    the client gets it as it is."""
    with RawConnection(streams_mesh.proxy("edge-1")) as conn:
        conn.send(b"GET /chat HTTP/1.1\r\nHost: ws.default\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n")
        response = conn.read_response()
        assert 400 <= response.status < 500
        assert response.header("X-Edgemesh-Error") is None  # the origin's answer


def test_an_upgrade_to_an_unknown_service_is_the_mesh_404(streams_mesh: Mesh) -> None:
    with RawConnection(streams_mesh.proxy("edge-1")) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: nope\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n")
        response = conn.read_response()
        assert response.status == 404
        assert response.header("X-Edgemesh-Error") == "unknown-service"


@pytest.mark.skipif(not GRPC, reason="grpcio is not installed (the test extra has it)")
@pytest.mark.parametrize(("via", "path"), [
    ("edge-1", "local"),
    ("edge-2", "edge -> edge"),
    ("router", "cloud -> edge"),
])
def test_grpc_through_connect(streams_mesh: Mesh, via: str, path: str) -> None:
    """A real gRPC client (grpcio, through its http_proxy support: CONNECT) to a real gRPC
    server: unary, server streaming of 10 000 messages, client streaming, bidi, a deadline
    that expires and a status code, all intact."""
    proxy = f"http://{LOOPBACK}:{streams_mesh.proxy(via)}"
    channel = grpc.insecure_channel("grpc-echo.default:50051",
                                    options=[("grpc.http_proxy", proxy),
                                             ("grpc.enable_retries", 0)])
    with channel:
        def method(kind: str, name: str) -> Any:
            return getattr(channel, kind)(f"/echo.Echo/{name}")

        assert method("unary_unary", "Unary")(b"hello", timeout=30) == b"hello", path
        got = list(method("unary_stream", "ServerStream")(b"10000", timeout=60))
        assert got == [b"%d" % i for i in range(10_000)], path
        sent = [b"x" * 100] * 2000
        assert method("stream_unary", "ClientStream")(iter(sent), timeout=30) == b"2000 200000"
        replies = list(method("stream_stream", "Bidi")(iter([b"a", b"bb", b"ccc"]), timeout=30))
        assert replies == [b"a", b"bb", b"ccc"], path
        with pytest.raises(grpc.RpcError) as expired:
            method("unary_unary", "Slow")(b"late", timeout=0.5)
        assert expired.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as failed:
            method("unary_unary", "Fail")(b"x", timeout=30)
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "no such thing: x"


@needs_socat
def test_outbound_allow_connects_to_names_outside_the_catalog(streams_mesh: Mesh) -> None:
    """edge-2 runs with --outbound allow: CONNECT localhost:PORT (no such service) goes
    straight to that port from edge-2; edge-1 (the default, deny) answers the mesh's 404."""
    port = streams_mesh.topology.pods["echo-1"]
    assert socat_through(streams_mesh, "edge-2", f"localhost:{port}", b"outside") == b"outside"
    with RawConnection(streams_mesh.proxy("edge-1")) as conn:
        conn.send(b"CONNECT localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port)
        response = conn.read_response()
        assert response.status == 404
        assert response.header("X-Edgemesh-Error") == "unknown-service"


def test_connect_to_an_unknown_name_is_the_mesh_404(streams_mesh: Mesh) -> None:
    with RawConnection(streams_mesh.proxy("edge-1")) as conn:
        conn.send(b"CONNECT nope:7 HTTP/1.1\r\nHost: nope:7\r\n\r\n")
        response = conn.read_response()
        assert response.status == 404
        assert response.header("X-Edgemesh-Error") == "unknown-service"
        assert b"nope" in response.body
        assert conn.closed_by_peer(5)


def test_connect_to_a_refused_endpoint_is_a_502(streams_mesh: Mesh) -> None:
    with RawConnection(streams_mesh.proxy("edge-1")) as conn:
        conn.send(b"CONNECT gone:7 HTTP/1.1\r\nHost: gone:7\r\n\r\n")
        response = conn.read_response()
        assert response.status == 502
        assert response.header("X-Edgemesh-Error") == "upstream-refused"
        assert conn.closed_by_peer(5)


def test_bytes_sent_before_the_200_are_delivered(streams_mesh: Mesh) -> None:
    """A client that does not wait for the 200 (one write: head and payload) loses nothing."""
    with RawConnection(streams_mesh.proxy("edge-1")) as conn, timed() as took:
        conn.send(b"CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\nhello, early bytes")
        response_line = conn._line()
        assert response_line == b"HTTP/1.1 200 Connection established"
        assert conn._line() == b""
        while len(conn.buffer) < len(b"hello, early bytes"):
            assert conn._fill()
        assert conn.buffer == b"hello, early bytes"
        assert took() < 10


def test_http_still_works_on_the_proxy_port(streams_mesh: Mesh) -> None:
    """The same port still answers plain HTTP (here the mesh's own 404)."""
    with RawConnection(streams_mesh.proxy("edge-1")) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: nope\r\n\r\n")
        assert conn.read_response().status == 404


BIG_STREAM = 256 << 20
RSS_BUDGET_KIB = 100 * 1024


def echo_through(port: int, connect: bytes | None, size: int) -> float:
    """``size`` bytes up and echoed back at once on a connection to ``port`` (through the
    mesh when ``connect`` names a CONNECT target): every byte back in order; the seconds."""
    import hashlib
    import threading

    chunk = os.urandom(1 << 20)
    sock = socket.create_connection((LOOPBACK, port), timeout=60)
    with sock:
        if connect is not None:
            sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (connect, connect))
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += sock.recv(1)
            assert head.startswith(b"HTTP/1.1 200 ")
        sent = hashlib.sha256()

        def send() -> None:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
                sent.update(chunk)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        with timed() as took:
            sender.start()
            received = hashlib.sha256()
            got = 0
            while data := sock.recv(1 << 20):
                received.update(data)
                got += len(data)
            sender.join(60)
        assert got == size and received.digest() == sent.digest()
        return took()


@pytest.mark.slow
def test_256_mib_each_way_edge_to_edge_in_bounded_memory(streams_mesh: Mesh) -> None:
    """256 MiB up and 256 MiB echoed back at once, edge-2 → edge-1 over the hub link (mutual
    TLS): every byte back in order, and no process's peak RSS above 100 MiB (every buffer on
    the way is bounded: socket buffers, credit windows, link pauses).  Printed: the same
    transfer straight to the origin, for scale."""
    direct = echo_through(streams_mesh.topology.pods["echo-1"], None, BIG_STREAM)
    meshed = echo_through(streams_mesh.proxy("edge-2"), b"echo:7", BIG_STREAM)
    rate = 2 * BIG_STREAM / (1 << 20)
    print(f"\n256 MiB each way: direct {direct:.1f}s ({rate / direct:.0f} MiB/s), "
          f"edge-2 -> edge-1 {meshed:.1f}s ({rate / meshed:.0f} MiB/s)")
    for name in ("edge-1", "edge-2", "router"):
        peak = streams_mesh.procs[name].status_kib("VmHWM")
        print(f"{name}: peak RSS {peak} KiB")
        assert peak is not None and peak < RSS_BUDGET_KIB, (name, peak)


def test_zz_streams_are_in_the_metrics(streams_mesh: Mesh) -> None:
    """edge-1 counts its streams: opened, closed ok or refused, bytes."""
    for target in (b"echo:7", b"gone:7"):
        with RawConnection(streams_mesh.proxy("edge-1")) as conn:
            conn.send(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
            if conn.read_response(head_request=True).status == 200:
                conn.send(b"ping")
                conn.sock.shutdown(socket.SHUT_WR)
            assert conn.closed_by_peer(10)
    admin = streams_mesh.topology.edges["edge-1"]["admin"]
    text = request(admin, "GET", "/metrics", [("Host", "admin")]).body.decode()
    opened = [line for line in text.splitlines()
              if line.startswith('edgemesh_byte_streams_opened_total'
                                 '{path="local",service="default/echo"}')]
    assert opened and float(opened[0].split()[-1]) >= 1
    assert 'result="ok",service="default/echo"' in text
    assert 'result="upstream-refused",service="default/gone"' in text


def test_zz_no_crash_in_the_logs(streams_mesh: Mesh) -> None:
    """Last: whatever the tests above did, no process logged a traceback or died."""
    streams_mesh.check_alive()
    assert streams_mesh.new_problems({}) == []
