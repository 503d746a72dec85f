"""The router against an API server it cannot use, and through a proxy: real ``twistd``
routers with a kubeconfig pointing at real servers on 127.0.0.1.

In front of the test API server (``edgemesh.testing``, plain HTTP, in this process) stands a
small HTTPS server of this file's own (stdlib ``ssl`` in threads, certificates made by the
project's ``edgemesh.security`` tooling): it either answers a request itself (401, 403 on a
list or on a watch only) or passes it on.  Each broken setup (a CA that did not sign the
server's certificate, a certificate for another name, refused credentials, RBAC that forbids
the list or only the watch) must be named in the router's log and in ``/readyz`` (503 with a
reason): the server URL, the CA file or kubeconfig context, what to check.

A kubeconfig's ``proxy-url`` is honoured: an HTTP CONNECT proxy of this file's own (with a
password) counts the tunnels the router opened through it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from meshkit import LOOPBACK, Mesh, Proc, Topology, admin_get

from edgemesh.security._certs import Issued, make_ca, make_node_cert
from edgemesh.testing import ThreadedKubeApiServer, make_node, make_service

MAX_HEAD = 64 * 1024
IO_TIMEOUT = 30.0
CONTEXT = "kube-errors"
TOKEN = "kube-errors-token"

Rule = Callable[[str, str], "tuple[int, str, str] | None"]
"""(method, target) → (status, reason, Status message) to answer, or None to pass on."""


# -- small servers of this test's own ------------------------------------------------------------


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """(head, what came after it) of one HTTP message, bounded."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > MAX_HEAD:
            raise ConnectionError("no complete head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides are done."""
    other = threading.Thread(target=_pipe, args=(b, a), daemon=True)
    other.start()
    _pipe(a, b)
    other.join(IO_TIMEOUT)


@dataclass
class _Server:
    """A threaded TCP server on 127.0.0.1 that closes everything it opened on ``stop``."""

    listener: socket.socket = field(init=False)
    open: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT)
            with self.lock:
                self.open.append(conn)
            threading.Thread(target=self._guarded, args=(conn,), daemon=True).start()

    def _guarded(self, conn: socket.socket) -> None:
        try:
            self.serve(conn)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            conn.close()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def track(self, conn: socket.socket) -> socket.socket:
        with self.lock:
            self.open.append(conn)
        return conn

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self.open:
                with contextlib.suppress(OSError):
                    conn.close()


@dataclass
class HTTPSFront(_Server):
    """TLS with ``cert``, then the rule's answer or the request passed on to the API server
    (with ``Connection: close``, so that every request meets the rule)."""

    cert: Path = Path()
    key: Path = Path()
    upstream: int = 0
    rule: Rule = lambda method, target: None
    requests: list[str] = field(default_factory=list)

    def serve(self, raw: socket.socket) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        conn = self.track(context.wrap_socket(raw, server_side=True))
        head, rest = _read_head(conn)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        self.requests.append(f"{method} {target}")
        answer = self.rule(method, target)
        if answer is not None:
            status, reason, message = answer
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": message, "reason": reason, "code": status}).encode()
            conn.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            return
        kept = [line for line in lines if not line.lower().startswith("connection:")]
        # The request's body (Content-Length: the Kubernetes client's), then the response
        # to its end, in this one thread: an SSL socket read in one thread and written in
        # another, as _splice would, broke a watch at once now and then ("connection lost
        # in a non-clean fashion").
        sizes = [int(line.split(":", 1)[1]) for line in kept
                 if line.lower().startswith("content-length:")]
        body = rest
        while len(body) < sum(sizes):
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the request's body was cut short")
            body += chunk
        upstream = self.track(socket.create_connection((LOOPBACK, self.upstream), IO_TIMEOUT))
        upstream.sendall("\r\n".join([*kept, "Connection: close"]).encode("latin-1")
                         + b"\r\n\r\n" + body)
        _pipe(upstream, conn)


@dataclass
class ConnectProxy(_Server):
    """An HTTP CONNECT proxy to 127.0.0.1 only, that wants a password."""

    user: str = "mesh"
    password: str = "s3cret"
    tunnels: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def serve(self, conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        wanted = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        given = [line.split(":", 1)[1].strip() for line in lines[1:]
                 if line.lower().startswith("proxy-authorization:")]
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host != LOOPBACK:
            self.refused.append(lines[0])
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        if given != [wanted]:
            self.refused.append(lines[0])
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = self.track(socket.create_connection((LOOPBACK, int(port)), IO_TIMEOUT))
        self.tunnels.append(target)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + b"")
        if rest:
            upstream.sendall(rest)
        _splice(conn, upstream)


# -- certificates, kubeconfigs, routers ---------------------------------------------------------


@dataclass
class Certs:
    directory: Path
    ca: Path
    wrong_ca: Path
    good: tuple[Path, Path]
    """A certificate for ``localhost`` (the kubeconfigs' tls-server-name) by ``ca``."""
    other_name: tuple[Path, Path]
    """A certificate for ``other-name`` by ``ca``."""


def _write_pair(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("kube-certs")
    ca, wrong = make_ca("kube test CA"), make_ca("some other CA")
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "wrong-ca.pem").write_bytes(wrong.cert_pem)
    return Certs(directory, directory / "ca.pem", directory / "wrong-ca.pem",
                 _write_pair(directory, "localhost", make_node_cert(ca, "localhost")),
                 _write_pair(directory, "other-name", make_node_cert(ca, "other-name")))


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadedKubeApiServer]:
    # The kubeconfigs carry this token through the fronts: the server takes it (an unknown
    # bearer token is a 401, as from a real API server).
    with ThreadedKubeApiServer(token=TOKEN, bookmark_interval=1.0) as server:
        server.create(make_node("cloud-1", internal_ip="10.0.0.9"))
        server.create(make_service("web"))
        yield server


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    started: list[_Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def routers(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, Topology.allocate([], [], []), tmp_path / "unused.yaml", tls=False)
    try:
        yield mesh
    finally:
        mesh.stop_all()


def write_kubeconfig(path: Path, server: str, ca: Path, *, proxy: str | None = None) -> Path:
    cluster: dict[str, Any] = {"server": server, "certificate-authority": str(ca),
                               "tls-server-name": "localhost"}
    if proxy:
        cluster["proxy-url"] = proxy
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT,
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": {"token": TOKEN}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT}}],
    }))
    return path


def start_router(mesh: Mesh, kubeconfig: Path) -> Proc:
    t = mesh.topology
    argv = ["edgemesh-router", "--kubeconfig", str(kubeconfig), "--no-controller",
            "--tunnel", f"tcp:{t.router_tunnel}:interface={LOOPBACK}",
            "--http", f"tcp:{t.router_http}:interface={LOOPBACK}",
            "--admin", f"tcp:{t.router_admin}:interface={LOOPBACK}", "--insecure"]
    proc = mesh._spawn("router", argv, t.router_admin, mesh=True)
    mesh.wait_healthy(proc)
    return proc


def front(servers: list[_Server], certs: Certs, api: ThreadedKubeApiServer,
          pair: tuple[Path, Path] | None = None, rule: Rule | None = None) -> HTTPSFront:
    cert, key = pair or certs.good
    server = HTTPSFront(cert=cert, key=key, upstream=api.port,
                        rule=rule or (lambda method, target: None))
    servers.append(server)
    return server


def not_ready_because(mesh: Mesh, proc: Proc, *needles: str) -> str:
    """Wait until /readyz is 503 with a reason naming every needle; the reason."""
    seen: list[Any] = []

    def check() -> bool:
        status, body = admin_get(mesh.topology.router_admin, "/readyz")
        seen[:] = [status, body]
        reason = str(body.get("reason", ""))
        return status == 503 and all(n in reason for n in needles)

    with contextlib.suppress(AssertionError):
        mesh.wait_for("/readyz to say why", check, [proc], deadline=20.0)
        return str(seen[1]["reason"])
    raise AssertionError(f"/readyz never named {needles}: last {seen}")


def logged(proc: Proc, *needles: str) -> list[str]:
    """The router's log lines that contain every needle."""
    return [line for line in proc.log.read_text(errors="replace").splitlines()
            if all(n in line for n in needles)]


# -- item 10: errors that name their cause --------------------------------------------------------


def test_wrong_ca_is_named_with_the_server_and_the_ca_file(
        routers: Mesh, servers: list[_Server], certs: Certs, api: ThreadedKubeApiServer,
        tmp_path: Path) -> None:
    server = front(servers, certs, api)
    url = f"https://{LOOPBACK}:{server.port}"
    proc = start_router(routers, write_kubeconfig(tmp_path / "kc", url, certs.wrong_ca))
    needles = (f"the certificate of {url} is not signed by CA file {certs.wrong_ca}",
               f"context '{CONTEXT}'")
    reason = not_ready_because(routers, proc, *needles)
    assert "OpenSSL" not in reason and "SSL routines" not in reason
    assert logged(proc, *needles), proc.tail()
    assert not logged(proc, "SSL routines"), "no raw OpenSSL tuple"


def test_name_mismatch_names_the_expected_name(
        routers: Mesh, servers: list[_Server], certs: Certs, api: ThreadedKubeApiServer,
        tmp_path: Path) -> None:
    server = front(servers, certs, api, pair=certs.other_name)
    url = f"https://{LOOPBACK}:{server.port}"
    proc = start_router(routers, write_kubeconfig(tmp_path / "kc", url, certs.ca))
    needles = (f"the certificate of {url} is not valid for the name 'localhost'",
               "tls-server-name")
    not_ready_because(routers, proc, *needles)
    assert logged(proc, *needles), proc.tail()
    assert not logged(proc, "VerificationError"), "no raw VerificationError"


def test_401_names_the_server_and_the_kubeconfig(
        routers: Mesh, servers: list[_Server], certs: Certs, api: ThreadedKubeApiServer,
        tmp_path: Path) -> None:
    server = front(servers, certs, api, rule=lambda m, t: (401, "Unauthorized", "Unauthorized"))
    url = f"https://{LOOPBACK}:{server.port}"
    kubeconfig = write_kubeconfig(tmp_path / "kc", url, certs.ca)
    proc = start_router(routers, kubeconfig)
    needles = ("401 Unauthorized", f"{url} refused the credentials of kubeconfig {kubeconfig}",
               f"context '{CONTEXT}'")
    not_ready_because(routers, proc, *needles)
    assert logged(proc, *needles), proc.tail()


def forbid(verb: str, plural: str) -> Rule:
    def rule(method: str, target: str) -> tuple[int, str, str] | None:
        watching = "watch=1" in target
        if target.startswith(f"/api/v1/{plural}") and watching == (verb == "watch"):
            message = (f'{plural} is forbidden: User "edge" cannot {verb} resource '
                       f'"{plural}" in API group "" at the cluster scope')
            return 403, "Forbidden", message
        return None

    return rule


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_403_names_the_verb_and_the_resource(
        routers: Mesh, servers: list[_Server], certs: Certs, api: ThreadedKubeApiServer,
        tmp_path: Path, verb: str) -> None:
    server = front(servers, certs, api, rule=forbid(verb, "services"))
    url = f"https://{LOOPBACK}:{server.port}"
    proc = start_router(routers, write_kubeconfig(tmp_path / "kc", url, certs.ca))
    needles = (f"{verb} services: 403 Forbidden", f"{verb} /api/v1/services forbidden",
               f"context '{CONTEXT}'")
    reason = not_ready_because(routers, proc, *needles)
    assert "nodes" not in reason, "the nodes' list and watch work"
    assert logged(proc, "403 Forbidden", f"{verb} /api/v1/services forbidden"), proc.tail()
    if verb == "watch":
        # Listed, then refused the watch: the backoff spans the cycles (0.8 s, 1.6 s,
        # 3.2 s..., each up to twice that), not a relist per second: 8 s hold 3 at most.
        lists = [r for r in server.requests if r.startswith("GET /api/v1/services?")
                 and "watch=1" not in r]
        first = len(lists)
        time.sleep(8.0)  # a measurement window on real time, not a readiness wait
        lists = [r for r in server.requests if r.startswith("GET /api/v1/services?")
                 and "watch=1" not in r]
        assert len(lists) - first <= 3, server.requests


# -- item 11: proxy-url ----------------------------------------------------------------------------


def test_proxy_url_is_honoured(routers: Mesh, servers: list[_Server], certs: Certs,
                               api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    server = front(servers, certs, api)
    proxy = ConnectProxy()
    servers.append(proxy)
    url = f"https://{LOOPBACK}:{server.port}"
    proxy_url = f"http://{proxy.user}:{proxy.password}@{LOOPBACK}:{proxy.port}"
    proc = start_router(routers, write_kubeconfig(tmp_path / "kc", url, certs.ca,
                                                  proxy=proxy_url))
    routers.wait_for("the router's first catalog", lambda: admin_get(
        routers.topology.router_admin, "/status")[1]["catalog_revision"] > 0, [proc])
    assert admin_get(routers.topology.router_admin, "/readyz")[0] == 200
    assert proxy.tunnels, "the router's requests went through the proxy"
    assert set(proxy.tunnels) == {f"{LOOPBACK}:{server.port}"}
    # Every request the API server's front saw came through one of those tunnels.
    assert len(server.requests) >= 3 and not proxy.refused


def test_proxy_refusal_is_named(routers: Mesh, servers: list[_Server], certs: Certs,
                                api: ThreadedKubeApiServer, tmp_path: Path) -> None:
    server = front(servers, certs, api)
    proxy = ConnectProxy()
    servers.append(proxy)
    url = f"https://{LOOPBACK}:{server.port}"
    proxy_url = f"http://{proxy.user}:wrong@{LOOPBACK}:{proxy.port}"
    proc = start_router(routers, write_kubeconfig(tmp_path / "kc", url, certs.ca,
                                                  proxy=proxy_url))
    shown = f"http://{proxy.user}:***@{LOOPBACK}:{proxy.port}"
    needles = (f"proxy {shown} would not tunnel to {url}", "407 Proxy Authentication Required")
    not_ready_because(routers, proc, *needles)
    assert logged(proc, *needles), proc.tail()
    assert not logged(proc, "wrong@"), "the password is not logged"
    assert not server.requests
