"""Helpers for the integration tests: real ``twistd`` processes on 127.0.0.1.

``Mesh`` starts a router, edges and the sample pods (``podserver.py``) as separate
processes, writes their catalog, waits until they are ready and stops them all by PID.
The HTTP helpers are deliberately plain (``http.client`` and raw sockets): the client side
of these tests shares no code with the mesh.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PODSERVER = HERE / "podserver.py"
LOOPBACK = "127.0.0.1"

START_DEADLINE = 30.0
"""Seconds for a process to become ready (twistd takes one to a few seconds to start,
more on a loaded machine)."""
STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL at teardown."""
LOG_TAIL_LINES = 25
HEADER_TIMEOUT = 2.0
"""--header-timeout of the session mesh, so that half-sent heads are closed quickly."""
HANDSHAKE_TIMEOUT = 10.0
"""The envelope link's hello deadline (EnvelopeLink's default; no option sets it yet)."""
PROBLEM_MARKS = ("Traceback", "Unhandled", "#critical", "#error")
_DIE_WITH_PARENT = (
    "import ctypes, signal\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)\n"
    "except Exception:\n"
    "    pass\n"
)
"""Run first in every child: a killed test runner leaves no mesh processes behind."""
TWISTD = [sys.executable, "-c",
          _DIE_WITH_PARENT + "from twisted.scripts.twistd import run\nrun()"]
"""``twistd`` of this interpreter (``python -m twisted`` is ``twist``, which has no -n)."""
REACTOR = (["--reactor", os.environ["EDGEMESH_TEST_REACTOR"]]
           if os.environ.get("EDGEMESH_TEST_REACTOR") else [])
"""twistd's reactor for the mesh processes: EDGEMESH_TEST_REACTOR=edgemesh runs the
integration tests on edgemesh's own (transports/_reactor.py); unset, twistd's default."""


TLS_OPTIONS = ("--insecure", "--ca", "--cert", "--key", "--tls-dir")
TLS_PEER = "garbage-peer"
"""The made-up edge whose certificate RawConnection presents on TLS envelope ports."""
TLS_PORTS: dict[int, tuple[ssl.SSLContext, str]] = {}
"""Envelope ports that speak mutual TLS → a client context (the mesh's CA, and a certificate
for TLS_PEER) and the node name the listener's certificate must carry.  RawConnection wraps
its socket for these ports, so the garbage tests reach the envelope decoder behind TLS."""


def issue_certs(directory: Path, *names: str, router: str | None = None) -> Path:
    """A CA in ``directory`` (made on first use) and a certificate for each name, by the
    project's own tooling (``edgemesh certs``).  Returns the directory (``--tls-dir``)."""
    from edgemesh.security._certs import init_ca_dir, issue_into_dir

    if not (directory / "ca.pem").exists():
        init_ca_dir(str(directory))
    for name in [*names, *([router] if router else [])]:
        if not (directory / f"{name}.pem").exists():
            issue_into_dir(str(directory), name, router=name == router)
    return directory


PORT_FLOOR, PORT_CEILING = 20000, 32768
"""Ports handed to the mesh's listeners: below Linux's ephemeral range (32768-60999 by
default), so that no outgoing connection of this or another test takes one of them between
the choice and the listen (a late ``start_edge`` listens minutes after the choice)."""


_RECENT = 4096
"""How many ports handed out lately free_ports remembers (a test takes ~10-30)."""
_handed_out: dict[int, None] = {}
"""Ports handed out lately, oldest first: a later call skips them.  They are free when
handed out and nobody listens on them yet, so a second call (a test's own ports after its
topology's) could hand out the same ones again: a router that then found its port taken by
the test's socat bridge (test_redis, one CI run in several hundred)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all bound at once, then released),
    none of them handed out by a recent call."""
    sockets: list[socket.socket] = []
    start = random.randrange(PORT_FLOOR, PORT_CEILING)
    try:
        for offset in range(PORT_CEILING - PORT_FLOOR):
            if len(sockets) == count:
                break
            port = PORT_FLOOR + (start - PORT_FLOOR + offset) % (PORT_CEILING - PORT_FLOOR)
            if port in _handed_out:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        if len(sockets) < count:
            raise RuntimeError(f"fewer than {count} free ports in {PORT_FLOOR}-{PORT_CEILING}")
        ports = [sock.getsockname()[1] for sock in sockets]
        for port in ports:
            _handed_out[port] = None
        while len(_handed_out) > _RECENT:
            del _handed_out[next(iter(_handed_out))]
        return ports
    finally:
        for sock in sockets:
            sock.close()


# -- processes -------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    admin: int | None = None
    mesh: bool = True
    """A mesh process (router/edge), as opposed to a sample pod server."""
    peak_rss_kib: int | None = None
    """VmHWM read just before the process was stopped."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def status_kib(self, field_name: str) -> int | None:
        """A ``/proc/PID/status`` memory figure (VmHWM, VmRSS) in KiB, None once gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return None

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after a bounded wait."""
        if not self.alive():
            return
        if self.mesh:
            self.peak_rss_kib = self.status_kib("VmHWM")
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(STOP_GRACE)


@dataclass
class Topology:
    """Every port of the test mesh (chosen free at session start) and its catalog."""

    router_tunnel: int
    router_http: int
    router_admin: int
    edges: dict[str, dict[str, int]]
    """edge name → {"proxy", "hub", "admin"}."""
    pods: dict[str, int]
    """pod name → port."""
    dead: dict[str, int]
    """Ports where nothing listens: refused endpoints and a hub of a node never started."""
    cloud_port: int = 0

    @classmethod
    def allocate(cls, edge_names: Iterable[str], pod_names: Iterable[str],
                 dead_names: Iterable[str]) -> Topology:
        edge_names, pod_names, dead_names = list(edge_names), list(pod_names), list(dead_names)
        ports = iter(free_ports(3 + 3 * len(edge_names) + len(pod_names) + len(dead_names)))
        topology = cls(
            router_tunnel=next(ports),
            router_http=next(ports),
            router_admin=next(ports),
            edges={e: {"proxy": next(ports), "hub": next(ports), "admin": next(ports)}
                   for e in edge_names},
            pods={p: next(ports) for p in pod_names},
            dead={d: next(ports) for d in dead_names},
        )
        return topology


@dataclass
class Mesh:
    """The processes of one test mesh, and where their logs and state live."""

    directory: Path
    topology: Topology
    catalog: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    stopped: list[Proc] = field(default_factory=list)
    tls: bool = True
    """Nodes get ``--tls-dir`` with certificates made by ``edgemesh certs`` (unless a test
    passes TLS options of its own); False: ``--insecure``."""

    def _tls_args(self, name: str, extra: tuple[str, ...], router: bool, port: int) -> list[str]:
        if any(arg.split("=")[0] in TLS_OPTIONS for arg in extra):
            TLS_PORTS.pop(port, None)
            return []
        if not self.tls:
            TLS_PORTS.pop(port, None)
            return ["--insecure"]
        directory = self.directory / "tls"
        if router:
            issue_certs(directory, TLS_PEER, router=name)
        else:
            issue_certs(directory, name, TLS_PEER)
        context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        context.load_cert_chain(directory / f"{TLS_PEER}.pem", directory / f"{TLS_PEER}.key")
        TLS_PORTS[port] = (context, name)
        return ["--tls-dir", str(directory)]

    # -- addresses --------------------------------------------------------------------

    def proxy(self, via: str) -> int:
        """Where apps send HTTP: an edge's service bus, or (``"router"``) the router's
        listener for cloud apps."""
        if via == "router":
            return self.topology.router_http
        return self.topology.edges[via]["proxy"]

    def envelope(self, node: str) -> int:
        """Where nodes connect: an edge's hub, or (``"router"``) the router's tunnel."""
        if node == "router":
            return self.topology.router_tunnel
        return self.topology.edges[node]["hub"]

    # -- starting ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, argv: list[str], admin: int | None, mesh: bool) -> Proc:
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"{name} is already running")
        log = self.directory / f"{name}.log"
        if mesh:
            command = [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", *REACTOR, *argv]
        else:
            command = [sys.executable, "-c", _DIE_WITH_PARENT + "import runpy, sys\n"
                       "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')",
                       *argv]
        # twistd logs to the same file; its stderr catches what happens before logging starts.
        with log.open("ab") as output:
            shown = f"twistd -n --pidfile= --logfile={log}" if mesh else "python"
            output.write(f"# {shown} {' '.join(argv)}\n".encode())
            output.flush()
            popen = subprocess.Popen(
                command,
                cwd=self.directory,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if mesh else output,
                stderr=output,
            )
        proc = Proc(name, popen, log, admin, mesh)
        self.procs[name] = proc
        return proc

    def start_pods(self, wait: bool = True) -> Proc:
        specs = [f"{name}={port}" for name, port in self.topology.pods.items()]
        proc = self._spawn("pods", [str(PODSERVER), *specs], None, mesh=False)
        if wait:
            self.wait_pods()
        return proc

    def wait_pods(self) -> None:
        self.wait_for("pods to listen", lambda: all(
            _connects(port) for port in self.topology.pods.values()), [self.procs["pods"]])

    def start_router(self, *extra: str, wait: bool = True) -> Proc:
        t = self.topology
        argv = [
            "edgemesh-router",
            "--catalog", str(self.catalog),
            "--tunnel", f"tcp:{t.router_tunnel}:interface={LOOPBACK}",
            "--http", f"tcp:{t.router_http}:interface={LOOPBACK}",
            "--admin", f"tcp:{t.router_admin}:interface={LOOPBACK}",
            *self._tls_args("router", extra, True, t.router_tunnel),
            *extra,
        ]
        proc = self._spawn("router", argv, t.router_admin, mesh=True)
        if wait:
            self.wait_healthy(proc)
        return proc

    def start_edge(self, name: str, *extra: str, wait: bool = True) -> Proc:
        ports = self.topology.edges[name]
        state = self.directory / f"state-{name}"
        argv = [
            "edgemesh-edge",
            "--node", name,
            "--router", f"tcp:{LOOPBACK}:{self.topology.router_tunnel}",
            "--proxy", f"tcp:{ports['proxy']}:interface={LOOPBACK}",
            "--hub", f"tcp:{ports['hub']}:interface={LOOPBACK}",
            "--state-dir", str(state),
            "--admin", f"tcp:{ports['admin']}:interface={LOOPBACK}",
            *self._tls_args(name, extra, False, ports["hub"]),
            *extra,
        ]
        proc = self._spawn(name, argv, ports["admin"], mesh=True)
        if wait:
            self.wait_edges_acked([name])
        return proc

    # -- readiness --------------------------------------------------------------------

    def wait_for(self, what: str, check: Callable[[], bool], procs: Iterable[Proc],
                 deadline: float = START_DEADLINE) -> None:
        procs = list(procs)
        end = time.monotonic() + deadline
        delay = 0.02
        while True:
            for proc in procs:
                if not proc.alive():
                    raise AssertionError(
                        f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}\n"
                        + self.tails(procs))
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                if check():
                    return
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {deadline}s waiting for {what}\n"
                                     + self.tails(procs))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def wait_healthy(self, proc: Proc) -> None:
        assert proc.admin is not None
        port = proc.admin
        self.wait_for(f"{proc.name} /healthz", lambda: admin_get(port, "/healthz")[0] == 200,
                      [proc])

    def wait_edges_acked(self, names: Iterable[str]) -> None:
        """Every named edge is healthy, connected to the router and has acked the router's
        catalog revision."""
        names = list(names)
        procs = [self.procs["router"], *(self.procs[n] for n in names)]
        for name in names:
            self.wait_healthy(self.procs[name])

        def acked() -> bool:
            revision = admin_get(self.topology.router_admin, "/status")[1]["catalog_revision"]
            edges = {e["node"]: e for e in admin_get(self.topology.router_admin, "/edges")[1]}
            return all(n in edges and edges[n]["acked_revision"] == revision for n in names)

        self.wait_for(f"{', '.join(names)} to ack the router's catalog", acked, procs)

    def start_all(self, edges: Iterable[str], *router_args: str,
                  edge_args: Mapping[str, Sequence[str]] | None = None) -> None:
        """The pod server, the router (with ``router_args``) and ``edges`` (each with its
        ``edge_args``), started at once; returns when the pods listen and every edge has
        acked the router's catalog."""
        edges = list(edges)
        self.start_pods(wait=False)
        self.start_router(*router_args, wait=False)
        for name in edges:
            self.start_edge(name, *(edge_args or {}).get(name, ()), wait=False)
        self.wait_pods()
        self.wait_healthy(self.procs["router"])
        self.wait_edges_acked(edges)

    # -- stopping and diagnostics -------------------------------------------------------

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()
            self.stopped.append(proc)

    def stop_all(self) -> None:
        # Edges first, so that the router's log ends with their disconnections.
        for name in sorted(self.procs, key=lambda n: (n == "pods", n == "router")):
            self.stop(name)

    def tails(self, procs: Iterable[Proc] | None = None, lines: int = LOG_TAIL_LINES) -> str:
        chosen = list(self.procs.values()) if procs is None else list(procs)
        parts = []
        for proc in chosen:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"----- {proc.name} (pid {proc.pid}, {state}) {proc.log} -----\n"
                         f"{proc.tail(lines)}")
        return "\n".join(parts)

    def peak_rss(self) -> dict[str, int | None]:
        """VmHWM in KiB of every running mesh process."""
        return {p.name: p.status_kib("VmHWM") for p in self.procs.values() if p.mesh}

    def log_sizes(self) -> dict[str, int]:
        return {p.name: p.log.stat().st_size for p in self.procs.values()
                if p.mesh and p.log.exists()}

    def new_problems(self, since: dict[str, int]) -> list[str]:
        """Log lines written after ``since`` that show a crash-like failure: a traceback,
        an unhandled error or a critical message (the mesh logs bad input in one line)."""
        problems = []
        for proc in self.procs.values():
            if not proc.mesh or not proc.log.exists():
                continue
            with proc.log.open("rb") as handle:
                handle.seek(since.get(proc.name, 0))
                text = handle.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if any(mark in line for mark in PROBLEM_MARKS):
                    problems.append(f"{proc.name}: {line}")
        return problems

    def check_alive(self) -> None:
        dead = [p for p in self.procs.values() if not p.alive()]
        assert not dead, "process(es) died: " + ", ".join(p.name for p in dead) + "\n" + \
            self.tails(dead)


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
        return True
    return False


# -- catalog ---------------------------------------------------------------------------


def _node(name: str, edge: bool, hub_port: int | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if edge:
        metadata["labels"]["node-role.kubernetes.io/edge"] = ""
        metadata["annotations"] = {"edgemesh.io/hub-address": f"{LOOPBACK}:{hub_port}"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata}


def _service(name: str, cluster_ip: str, port: int, target_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip,
                 "ports": [{"name": "http", "port": port, "targetPort": target_port,
                            "protocol": "TCP"}]},
    }


def _slice(service: str, node: str, port: int, pod: str, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{node}", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [LOOPBACK],
                       "conditions": {"ready": ready, "serving": ready, "terminating": False},
                       "nodeName": node,
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}],
    }


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    node: str
    pod: str
    """The X-Pod name its endpoint answers with (or a name for a dead endpoint)."""
    cluster_ip: str
    port: int
    """The service port."""
    pod_port: int
    ready: bool = True


def catalog_objects(topology: Topology, edge_nodes: Iterable[str],
                    services: Iterable[ServiceSpec]) -> list[dict[str, Any]]:
    objects = [_node("cloud-1", False, None)]
    for name in edge_nodes:
        hub = topology.edges[name]["hub"] if name in topology.edges else topology.dead[name]
        objects.append(_node(name, True, hub))
    for spec in services:
        objects.append(_service(spec.name, spec.cluster_ip, spec.port, spec.pod_port))
        objects.append(_slice(spec.name, spec.node, spec.pod_port, spec.pod, spec.ready))
    return objects


def write_catalog(path: Path, objects: list[dict[str, Any]]) -> None:
    # JSON is YAML: one document per object, separated by '---'.
    path.write_text("".join(f"---\n{json.dumps(o, indent=1)}\n" for o in objects))


# -- HTTP clients ----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)
    """The trailer fields of a chunked body (RawConnection only)."""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self.headers if k.lower() == lower]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection to 127.0.0.1:port.  ``target`` is origin-form
    (pass a Host header) or absolute-form (http.client derives Host from it)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        return send(conn, method, target, headers, body)
    finally:
        conn.close()


def send(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
) -> Response:
    headers = list(headers)
    names = {k.lower() for k, _ in headers}
    conn.putrequest(method, target, skip_host="host" in names, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if isinstance(body, bytes):
        if "content-length" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
    elif body is not None:
        chunked = "content-length" not in names
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for piece in body:
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
    else:
        conn.endheaders()
    response = conn.getresponse()
    data = response.read()
    return Response(response.status, response.reason, list(response.getheaders()), data)


def dns_query(server: str, port: int, name: str, kind: int = 1,
              timeout: float = 8.0) -> tuple[int, list[str]]:
    """(rcode, A records) of one query for ``name`` over UDP to ``server:port``; raises
    TimeoutError when no reply comes within ``timeout``."""
    from twisted.names import dns

    message = dns.Message(id=4242, recDes=True)
    message.queries = [dns.Query(name.encode(), kind, dns.IN)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message.toStr(), (server, port))
        data, _ = sock.recvfrom(65535)
    reply = dns.Message()
    reply.fromStr(data)
    assert reply.id == 4242
    return reply.rCode, [a.payload.dottedQuad() for a in reply.answers if a.type == dns.A]


def admin_get(port: int, path: str) -> tuple[int, Any]:
    response = request(port, "GET", path, [("Host", "admin")], timeout=5)
    return response.status, json.loads(response.body)


def sha256_of(pieces: Iterable[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    for piece in pieces:
        digest.update(piece)
        total += len(piece)
    return total, digest.hexdigest()


# -- raw sockets -----------------------------------------------------------------------


class RawConnection:
    """A socket speaking bytes, with a small HTTP/1.1 response reader for the cases
    http.client cannot express (pipelining, malformed requests, garbage)."""

    def __init__(self, port: int, timeout: float = 10.0, tls: bool | None = None) -> None:
        """``tls``: None speaks TLS on the ports in TLS_PORTS; False never; True must."""
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        peer = TLS_PORTS.get(port) if tls is not False else None
        if tls and peer is None:
            raise ValueError(f"port {port} does not speak TLS")
        if peer is not None:
            context, server = peer
            self.sock = context.wrap_socket(self.sock, server_hostname=server)
        self.buffer = b""

    def __enter__(self) -> RawConnection:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except ssl.SSLEOFError as error:
            # A TLS peer that aborted: for the tests, the same as a reset.
            raise ConnectionResetError(str(error)) from error

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ssl.SSLEOFError:
            return False
        if not data:
            return False
        self.buffer += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed mid-line; got {self.buffer[:200]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("closed mid-body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_response(self, head_request: bool = False) -> Response:
        status_line = self._line()
        version, status, reason = (status_line.decode("latin-1").split(" ", 2) + [""])[:3]
        assert version == "HTTP/1.1", status_line
        headers: list[tuple[str, str]] = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        response = Response(int(status), reason, headers, b"")
        if head_request or response.status in (204, 304):
            return response
        if (response.header("Transfer-Encoding") or "").lower() == "chunked":
            body = []
            while size := int(self._line().split(b";")[0], 16):
                body.append(self._exactly(size))
                self._exactly(2)
            while line := self._line():
                name, _, value = line.decode("latin-1").partition(":")
                response.trailers.append((name, value.strip()))
            response.body = b"".join(body)
        elif (length := response.header("Content-Length")) is not None:
            response.body = self._exactly(int(length))
        else:
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response

    def closed_by_peer(self, timeout: float) -> bool:
        """Read (and drop) whatever comes until the peer closes; False if it is still open
        after ``timeout`` seconds.  A reset counts as closed."""
        self.sock.settimeout(timeout)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                if not self._fill():
                    return True
                self.buffer = self.buffer[-4096:]
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            # A TLS connection aborted without a close_notify is closed too.
            return True
        return False


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start
