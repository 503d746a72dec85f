"""Mutual TLS between real ``twistd`` processes: hardening scenarios 22-25, with
certificates made by the project's own tooling (``edgemesh certs``).

A mesh of its own (router, edge-1, edge-2 and the pods), because these tests rotate its
certificates and start nodes that must be refused.  The hostile peers are Python's ``ssl``
module speaking msgpack envelopes directly: they share no code with the mesh.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from meshkit import (
    LOOPBACK,
    TWISTD,
    Mesh,
    RawConnection,
    ServiceSpec,
    Topology,
    admin_get,
    catalog_objects,
    issue_certs,
    request,
    sha256_of,
    write_catalog,
)
from podserver import pattern

from edgemesh.security import Issued, make_ca, make_node_cert

HANDSHAKE_TIMEOUT = 2.0
"""--tls-handshake-timeout of this mesh's router and edges."""
HELLO, REQUEST = 0, 1
UTC = datetime.timezone.utc


@pytest.fixture(scope="module", params=["memory", "socket"])
def tls_mesh(tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """The mesh under each --link-tls-io setting (every test of this module runs twice)."""
    directory = tmp_path_factory.mktemp(f"tls-mesh-{request.param}")
    topology = Topology.allocate(["edge-1", "edge-2", "edge-3", "edge-9"],
                                 ["pod-e1-0", "pod-e2-0", "pod-cloud-0"], [])
    topology.cloud_port = topology.pods["pod-cloud-0"]
    services = [
        ServiceSpec("pod-e1", "edge-1", "pod-e1-0", "10.96.0.11", 80, topology.pods["pod-e1-0"]),
        ServiceSpec("pod-e2", "edge-2", "pod-e2-0", "10.96.0.12", 80, topology.pods["pod-e2-0"]),
        ServiceSpec("pod-cloud", "cloud-1", "pod-cloud-0", "127.0.0.1", topology.cloud_port,
                    topology.cloud_port),
    ]
    catalog = directory / "catalog.yaml"
    # edge-9 has ports and a certificate of the CA, but it is not in the router's catalog.
    write_catalog(catalog, catalog_objects(topology, ["edge-1", "edge-2", "edge-3"], services))
    mesh = Mesh(directory, topology, catalog)
    timeout = ("--tls-handshake-timeout", f"{HANDSHAKE_TIMEOUT:g}",
               "--link-tls-io", request.param)
    try:
        mesh.start_pods(wait=False)
        mesh.start_router(*timeout, wait=False)
        mesh.start_edge("edge-1", *timeout, "--tls-reload-interval", "0.5", wait=False)
        mesh.start_edge("edge-2", *timeout, wait=False)
        mesh.wait_pods()
        mesh.wait_healthy(mesh.procs["router"])
        mesh.wait_edges_acked(["edge-1", "edge-2"])
        yield mesh
    finally:
        mesh.stop_all()


@pytest.fixture
def live_tls(tls_mesh: Mesh) -> Iterator[Mesh]:
    tls_mesh.check_alive()
    sizes = tls_mesh.log_sizes()
    yield tls_mesh
    tls_mesh.check_alive()
    problems = tls_mesh.new_problems(sizes)
    assert not problems, "the mesh logged failures:\n" + "\n".join(problems[:40])


def tls_dir(mesh: Mesh) -> Path:
    directory: Path = mesh.directory / "tls"
    return directory


def log_of(mesh: Mesh, name: str, since: int = 0) -> str:
    with mesh.procs[name].log.open("rb") as handle:
        handle.seek(since)
        text: str = handle.read().decode("utf-8", "replace")
        return text


def wait_for_log(mesh: Mesh, name: str, text: str, since: int, deadline: float = 10.0,
                 count: int = 1) -> str:
    """The log of ``name`` since ``since``, once it holds ``text`` (``count`` times)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        log = log_of(mesh, name, since)
        if log.count(text) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(
        f"{name} did not log {text!r} within {deadline}s:\n{log_of(mesh, name, since)[-3000:]}")


def frame(*fields: object) -> bytes:
    payload: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def hello(node: str, role: str = "edge") -> bytes:
    return frame(HELLO, 1, node, role,
                 {"initial_window": 65536, "max_frame": 65536, "max_streams": 100})


def client_context(directory: Path, cert: Path | None = None,
                   key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def write_pair(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return cert, key


def envelope_over_tls(port: int, context: ssl.SSLContext, server: str, send: bytes = b"",
                      timeout: float = 5.0) -> bytes:
    """Connect, complete the handshake (or fail it: the ssl errors propagate), send
    ``send`` and read until the node closes; returns what it sent back."""
    raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
    with context.wrap_socket(raw, server_hostname=server) as sock:
        if send:
            with contextlib.suppress(ssl.SSLError, ConnectionResetError, BrokenPipeError):
                sock.sendall(send)
        received = b""
        with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
            while data := sock.recv(65536):
                received += data
        return received


def refused(port: int, context: ssl.SSLContext, server: str) -> bool:
    """True when the node refuses the handshake: the TLS layer fails (in TLS 1.3 the
    client learns it at its first read) and no envelope comes back."""
    try:
        received = envelope_over_tls(port, context, server, hello("edge-1"))
    except (ssl.SSLError, ConnectionResetError):
        return True
    return received == b""


# --- the mesh itself ------------------------------------------------------------------------------


def test_the_mesh_runs_on_mutual_tls(live_tls: Mesh) -> None:
    for via, host, pod in [("edge-1", "pod-e2", "pod-e2-0"), ("router", "pod-e1", "pod-e1-0"),
                           ("edge-2", "pod-cloud", "pod-cloud-0")]:
        response = request(live_tls.proxy(via), "GET", "/", [("Host", host)])
        assert (response.status, response.header("X-Pod")) == (200, pod)
    directory = tls_dir(live_tls)
    context = client_context(directory, directory / "edge-1.pem", directory / "edge-1.key")
    raw = socket.create_connection((LOOPBACK, live_tls.envelope("router")), timeout=5)
    with context.wrap_socket(raw, server_hostname="router") as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        peer: Any = sock.getpeercert()
        subject = dict(item[0] for item in peer["subject"])
        assert subject["commonName"] == "router"
    assert "mTLS on node links as router (router" in log_of(live_tls, "router")
    # The tap was given --tls-dir; no node runs in plaintext.
    for name in ("router", "edge-1", "edge-2"):
        assert "PLAINTEXT" not in log_of(live_tls, name)


@pytest.mark.parametrize("via, host", [("edge-1", "pod-e2"), ("edge-2", "pod-cloud")])
def test_a_large_transfer_over_the_tls_links(live_tls: Mesh, via: str, host: str) -> None:
    """32 MiB with curl through the hub link (edge-1 → edge-2) and the tunnel (edge-2 →
    router): every byte arrives, in order (each 64 KiB piece carries its index)."""
    size = 32 << 20
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-H", f"Host: {host}", "-o", "-",
         f"http://{LOOPBACK}:{live_tls.proxy(via)}/bytes?n={size}&seed=7"],
        capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-300:]
    assert sha256_of([done.stdout]) == sha256_of(pattern(7, size))


# --- 22: unknown CA, expired, wrong name, absent --------------------------------------------------


@pytest.mark.parametrize("node", ["router", "edge-2"])
def test_22_refused_certificates(live_tls: Mesh, tmp_path: Path, node: str) -> None:
    port = live_tls.envelope(node)
    directory = tls_dir(live_tls)
    since = live_tls.log_sizes()[node]
    stranger = write_pair(
        tmp_path / "other", "edge-1", make_node_cert(make_ca("another CA"), "edge-1"))
    ca = Issued((directory / "ca.key").read_bytes(), (directory / "ca.pem").read_bytes())
    expired = write_pair(tmp_path / "expired", "edge-1", make_node_cert(
        ca, "edge-1", days=30, valid_from=datetime.datetime(2020, 1, 1, tzinfo=UTC)))
    cases = {
        "unknown CA": client_context(directory, *stranger),
        "expired": client_context(directory, *expired),
        "no certificate": client_context(directory),
    }
    for case, context in cases.items():
        assert refused(port, context, node), case
    log = wait_for_log(live_tls, node, "TLS handshake (incoming)", since, count=len(cases))
    assert "certificate verify failed" in log or "unknown ca" in log, log
    assert "refusing link" not in log, "a hello got through"


def test_22_the_node_name_is_checked_by_the_client(live_tls: Mesh) -> None:
    directory = tls_dir(live_tls)
    context = client_context(directory, directory / "edge-1.pem", directory / "edge-1.key")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match|match"):
        envelope_over_tls(live_tls.envelope("router"), context, "edge-2")


def test_22_an_edge_refuses_a_router_with_another_name(live_tls: Mesh) -> None:
    """edge-3 expects its router to be called cloud-router: the router's certificate says
    router, so edge-3 never connects."""
    proc = live_tls.start_edge("edge-3", "--router-name", "cloud-router",
                               "--tls-handshake-timeout", f"{HANDSHAKE_TIMEOUT:g}", wait=False)
    try:
        live_tls.wait_healthy(proc)
        wait_for_log(live_tls, "edge-3", "the server's certificate does not name 'cloud-router'", 0)
        edges = {e["node"] for e in admin_get(live_tls.topology.router_admin, "/edges")[1]}
        assert "edge-3" not in edges
    finally:
        live_tls.stop("edge-3")


# --- 23: identity from the certificate only; the router's catalog ---------------------------------


def test_23_hello_naming_another_node(live_tls: Mesh) -> None:
    """edge-1's valid certificate, a hello that says edge-2, and a request behind it."""
    before = {e["node"]: e for e in admin_get(live_tls.topology.router_admin, "/edges")[1]}
    since = live_tls.log_sizes()["router"]
    directory = tls_dir(live_tls)
    context = client_context(directory, directory / "edge-1.pem", directory / "edge-1.key")
    # type, stream, flags (1: end), method, path, authority, headers, content length, client,
    # service, port, endpoint host, endpoint port, body
    request_frame = frame(REQUEST, 1, 1, b"GET", b"/", b"pod-cloud", [], 0, "10.0.0.1",
                          "default/pod-cloud", live_tls.topology.cloud_port, None, None, b"")
    received = envelope_over_tls(live_tls.envelope("router"), context, "router",
                                 hello("edge-2") + request_frame)
    # The router's own hello may come first; nothing answers the request.
    assert b"pod-cloud-0" not in received
    log = wait_for_log(
        live_tls, "router",
        "refusing link: hello says 'edge-2' but the certificate is for 'edge-1'", since)
    assert "edge edge-2 connected" not in log
    after = {e["node"]: e for e in admin_get(live_tls.topology.router_admin, "/edges")[1]}
    assert after["edge-2"]["connected_since"] == before["edge-2"]["connected_since"], \
        "edge-2's own tunnel was replaced"


def test_23_an_edge_not_in_the_catalog_is_refused(live_tls: Mesh) -> None:
    """edge-9 has a valid certificate of the CA, but the router's catalog has no edge-9."""
    since = live_tls.log_sizes()["router"]
    proc = live_tls.start_edge("edge-9", wait=False)
    try:
        live_tls.wait_healthy(proc)
        wait_for_log(live_tls, "router",
                     "refusing link: 'edge-9' is not an edge node of the catalog", since)
        edges = {e["node"] for e in admin_get(live_tls.topology.router_admin, "/edges")[1]}
        assert edges == {"edge-1", "edge-2"}
    finally:
        live_tls.stop("edge-9")


# --- 25: silent peers -----------------------------------------------------------------------------


def test_25_silent_peers_are_dropped_at_the_handshake_timeout(live_tls: Mesh) -> None:
    """TCP connections that send nothing, or half a ClientHello, to the router's tunnel and
    to an edge's hub: each closed at the handshake timeout (all at once, to save time)."""
    since = live_tls.log_sizes()
    cases = [(node, send) for node in ("router", "edge-1")
             for send in (b"", b"\x16\x03\x01\x02\x00\x01")]
    started = time.monotonic()
    connections = [
        RawConnection(live_tls.envelope(node), timeout=5, tls=False) for node, _ in cases]
    try:
        for conn, (_, send) in zip(connections, cases):
            if send:
                conn.send(send)
        for conn, case in zip(connections, cases):
            assert conn.closed_by_peer(HANDSHAKE_TIMEOUT + 5), case
            took = time.monotonic() - started
            assert HANDSHAKE_TIMEOUT - 0.5 <= took <= HANDSHAKE_TIMEOUT + 3, (case, took)
    finally:
        for conn in connections:
            conn.close()
    for node in ("router", "edge-1"):
        log = wait_for_log(live_tls, node,
                           f"TLS handshake not complete after {HANDSHAKE_TIMEOUT:g}s",
                           since[node], count=2)
        assert log.count("TLS handshake not complete") == 2, log


@pytest.mark.parametrize("node", ["router", "edge-1"])
def test_garbage_instead_of_a_client_hello(live_tls: Mesh, node: str) -> None:
    """Plaintext envelopes or random bytes where TLS is expected: the handshake fails at
    once, in one log line, and no envelope is read."""
    since = live_tls.log_sizes()[node]
    for data in (hello("edge-1"), random.Random(node).randbytes(5000), b"GET / HTTP/1.1\r\n\r\n"):
        with RawConnection(live_tls.envelope(node), timeout=5, tls=False) as conn:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                conn.send(data)
            assert conn.closed_by_peer(3), data[:20]
            # At most a TLS alert record (type 21) comes back, never an envelope.
            assert conn.buffer[:1] in (b"", b"\x15"), conn.buffer[:40]
    log = wait_for_log(live_tls, node, "TLS handshake (incoming)", since, count=3)
    assert "refusing link" not in log and "protocol error" not in log, log


# --- 24: rotation under traffic -------------------------------------------------------------------


def peer_serial(port: int, server: str, directory: Path) -> int:
    context = client_context(directory, directory / "edge-2.pem", directory / "edge-2.key")
    raw = socket.create_connection((LOOPBACK, port), timeout=5)
    with context.wrap_socket(raw, server_hostname=server) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def file_serial(path: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def rotate(directory: Path, name: str, router: bool = False) -> int:
    """What an operator runs: ``edgemesh certs issue --force`` in place."""
    argv = [sys.executable, "-m", "edgemesh", "certs", "issue", "--dir", str(directory),
            "--name", name, "--force", *(["--router"] if router else [])]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run(argv, check=True, capture_output=True, timeout=60, env=env)
    return file_serial(directory / f"{name}.pem")


def test_24_rotation_under_traffic(live_tls: Mesh) -> None:
    """A 24 MiB upload edge-1 → router (tunnel) → cloud pod is under way while the router's
    certificate is rotated (SIGHUP) and edge-1's too (its periodic check): new connections
    get the new certificates, the upload finishes intact, nothing is logged as an error."""
    directory = tls_dir(live_tls)
    router_port, hub_port = live_tls.envelope("router"), live_tls.envelope("edge-1")
    old_router = peer_serial(router_port, "router", directory)
    old_edge = peer_serial(hub_port, "edge-1", directory)
    before = {e["node"]: e for e in admin_get(live_tls.topology.router_admin, "/edges")[1]}
    since = live_tls.log_sizes()
    piece, pieces = b"r" * (1 << 20), 24
    rotated: dict[str, int] = {}

    def body() -> Iterator[bytes]:
        for index in range(pieces):
            yield piece
            if index == 4:
                rotated["router"] = rotate(directory, "router", router=True)
                live_tls.procs["router"].popen.send_signal(signal.SIGHUP)
                rotated["edge-1"] = rotate(directory, "edge-1")
                end = time.monotonic() + 10
                while time.monotonic() < end and (
                    peer_serial(router_port, "router", directory) != rotated["router"]
                    or peer_serial(hub_port, "edge-1", directory) != rotated["edge-1"]
                ):
                    time.sleep(0.1)

    response = request(live_tls.proxy("edge-1"), "POST", "/upload", [("Host", "pod-cloud")], body(),
                       timeout=60)
    assert response.status == 200, response.body[:300]
    seen = response.json()
    assert (seen["body_length"], seen["body_sha256"]) == sha256_of([piece] * pieces)

    assert rotated["router"] != old_router and rotated["edge-1"] != old_edge
    assert peer_serial(router_port, "router", directory) == rotated["router"]
    assert peer_serial(hub_port, "edge-1", directory) == rotated["edge-1"]
    assert "SIGHUP: reloading the TLS files" in log_of(live_tls, "router", since["router"])
    assert "TLS files reloaded: now edge-1" in log_of(live_tls, "edge-1", since["edge-1"])
    # The tunnels made before the rotation are the same ones, undisturbed.
    after = {e["node"]: e for e in admin_get(live_tls.topology.router_admin, "/edges")[1]}
    for name in ("edge-1", "edge-2"):
        assert after[name]["connected_since"] == before[name]["connected_since"], name
    # And requests keep flowing, old and new connections alike.
    for via, host in [("edge-1", "pod-e2"), ("router", "pod-e1"), ("edge-2", "pod-e1")]:
        assert request(live_tls.proxy(via), "GET", "/", [("Host", host)]).status == 200


# --- start-up -------------------------------------------------------------------------------------


def run_twistd(tmp_path: Path, *argv: str, wait: float = 20.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([*TWISTD, "-n", "--pidfile=", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=wait, check=False)


def test_a_node_without_tls_options_does_not_start(tls_mesh: Mesh, tmp_path: Path) -> None:
    result = run_twistd(tmp_path, "edgemesh-router", "--catalog", str(tls_mesh.catalog),
                        "--tunnel", "tcp:0:interface=127.0.0.1", "--http",
                        "tcp:0:interface=127.0.0.1")
    assert result.returncode != 0
    assert "links between nodes use mutual TLS" in result.stdout + result.stderr


def test_a_node_with_another_nodes_certificate_does_not_start(tls_mesh: Mesh,
                                                              tmp_path: Path) -> None:
    directory = issue_certs(tls_dir(tls_mesh), "edge-2")
    result = run_twistd(tmp_path, "edgemesh-edge", "--node", "edge-1", "--state-dir",
                        str(tmp_path / "s"),
                        "--ca", str(directory / "ca.pem"), "--cert", str(directory / "edge-2.pem"),
                        "--key", str(directory / "edge-2.key"))
    assert result.returncode != 0
    assert "is for 'edge-2', but this node is 'edge-1'" in result.stdout + result.stderr


def test_insecure_warns_at_start(tls_mesh: Mesh, tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "edgemesh-router", "--catalog",
         str(tls_mesh.catalog), "--tunnel", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1", "--insecure"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and proc.poll() is None:
            if log.exists() and "PLAINTEXT" in log.read_text(errors="replace"):
                break
            time.sleep(0.05)
        assert "links between nodes are PLAINTEXT (--insecure)" in log.read_text(errors="replace")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
