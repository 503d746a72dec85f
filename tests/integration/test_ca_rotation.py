"""Rotating the mesh's CA with traffic flowing (issue 11 item 13): the three steps of
docs/security.md, run with the ``edgemesh certs`` command on real ``twistd`` nodes.

Each node has its own ``--tls-dir`` (as in production, not one shared directory).  A
bounded loop of requests runs the whole time on the edge → edge, edge → cloud and
cloud → edge paths; every step is applied node by node with the documented reload (SIGHUP
for the router, edge-1 and the newcomers; the periodic check for edge-2).  New nodes join
at three moments so that new links are made in every state of the rotation:

- edge-3 after step 1, already with a certificate of the new CA (its peers: old);
- edge-4 half-way through step 2, still with a certificate of the old CA (router and
  edge-1 already new: a re-issued node must still accept it, and be accepted by it);
- edge-5 after step 3, new CA only.

Not one request may fail, and no TLS handshake may fail until the old CA is gone.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from meshkit import (
    LOOPBACK,
    REPO_ROOT,
    Mesh,
    ServiceSpec,
    Topology,
    admin_get,
    catalog_objects,
    request,
    write_catalog,
)

from edgemesh.security import Issued, make_node_cert

EDGES = ("edge-1", "edge-2", "edge-3", "edge-4", "edge-5")
SIGHUP_NODES = {"router", "edge-1", "edge-3", "edge-4", "edge-5"}
"""Reloaded by SIGHUP (--tls-reload-interval 0); edge-2 by its periodic check."""
PERIODIC = 0.5
"""edge-2's --tls-reload-interval."""
LOOP_MAX_REQUESTS = 20_000
LOOP_MAX_SECONDS = 300.0
"""Bounds of the traffic loop (it normally stops long before, when the test says so)."""
RELOAD_DEADLINE = 20.0
PACE = 0.005
"""Seconds between two requests of the loop: steady traffic without starving the mesh."""


def quiet_ports(count: int) -> list[int]:
    """``count`` free ports below the kernel's ephemeral range.  The newcomers listen only
    minutes after the ports are chosen, while the traffic loop opens thousands of client
    connections: ports from the ephemeral range (meshkit's free_ports) may be taken by
    then.  The choice is checked by binding them all at once."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = random.Random().sample(range(10_000, max(low, 10_000 + 4 * count)), 4 * count)
    chosen: list[int] = []
    sockets = []
    try:
        for port in candidates:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    finally:
        for sock in sockets:
            sock.close()
    raise AssertionError(f"fewer than {count} free ports below {low}")


def certs(*argv: str) -> str:
    """``edgemesh certs ...`` as an operator runs it; its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", "edgemesh", "certs", *argv], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, (
        f"edgemesh certs {' '.join(argv)}:\n{result.stdout}{result.stderr}")
    return result.stdout


def serial_of(path: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@dataclass
class Traffic:
    """A bounded loop of requests in a thread, over paths (via, service host, pod) that
    the test adds to as nodes join.  Each request is a fresh client connection."""

    mesh: Mesh
    paths: list[tuple[str, str, str]]
    done: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def one(self, via: str, host: str, pod: str) -> None:
        try:
            response = request(self.mesh.proxy(via), "GET", "/", [("Host", host)], timeout=10)
            problem = None if (response.status, response.header("X-Pod")) == (200, pod) else (
                f"{response.status} {response.header('X-Edgemesh-Error')} "
                f"{response.body[:120]!r}")
        except OSError as error:
            problem = f"{type(error).__name__}: {error}"
        with self.lock:
            self.done[(via, host)] += 1
            if problem is not None:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {via} -> {host}: {problem}")

    def total(self) -> int:
        with self.lock:
            return sum(self.done.values())

    def run(self) -> None:
        started = time.monotonic()
        index = 0
        while (not self.stop.is_set() and index < LOOP_MAX_REQUESTS
               and time.monotonic() - started < LOOP_MAX_SECONDS):
            with self.lock:
                path = self.paths[index % len(self.paths)]
            self.one(*path)
            index += 1
            self.stop.wait(PACE)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="traffic", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive(), "the traffic loop did not stop"

    def flowing(self, at_least: int = 12, deadline: float = 30.0) -> None:
        """Wait until ``at_least`` more requests are done: each step is applied while
        traffic flows, never in a lull."""
        target = self.total() + at_least
        end = time.monotonic() + deadline
        while self.total() < target:
            assert self.thread is not None and self.thread.is_alive(), "the traffic loop ended"
            assert time.monotonic() < end, f"traffic stalled at {self.total()} requests"
            time.sleep(0.05)

    def join(self, paths: list[tuple[str, str, str]]) -> None:
        """Paths through a node that just joined: each tried at once (they make its first
        links), then part of the loop."""
        for path in paths:
            self.one(*path)
        with self.lock:
            self.paths.extend(paths)


@pytest.fixture
def rotation_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("ca-rotation")
    pods = [f"pod-e{i}-0" for i in range(1, 6)] + ["pod-cloud-0"]
    ports = iter(quiet_ports(3 + 3 * len(EDGES) + len(pods)))
    topology = Topology(next(ports), next(ports), next(ports),
                        {e: {"proxy": next(ports), "hub": next(ports), "admin": next(ports)}
                         for e in EDGES},
                        {p: next(ports) for p in pods}, {})
    topology.cloud_port = topology.pods["pod-cloud-0"]
    services = [ServiceSpec(f"pod-e{i}", f"edge-{i}", f"pod-e{i}-0", f"10.96.0.{30 + i}", 80,
                            topology.pods[f"pod-e{i}-0"]) for i in range(1, 6)]
    services.append(ServiceSpec("pod-cloud", "cloud-1", "pod-cloud-0", "127.0.0.1",
                                topology.cloud_port, topology.cloud_port))
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, catalog_objects(topology, EDGES, services))
    mesh = Mesh(directory, topology, catalog)
    try:
        yield mesh
    finally:
        mesh.stop_all()


class Rotation:
    """The operator's side: CA directories, one TLS directory per node, reloads."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.old = mesh.directory / "old-ca"
        self.new = mesh.directory / "new-ca"

    def tls(self, node: str) -> Path:
        return self.mesh.directory / f"{node}-tls"

    def issue(self, node: str, ca: Path, *extra: str) -> int:
        router = ("--router",) if node == "router" else ()
        certs("issue", "--dir", str(ca), "--name", node, *router, "--out", str(self.tls(node)),
              *extra)
        return serial_of(self.tls(node) / f"{node}.pem")

    def trust(self, node: str, action: str, ca: Path) -> None:
        """``certs trust --dir NODE-TLS --add|--remove CA-DIR/ca.pem``."""
        certs("trust", "--dir", str(self.tls(node)), action, str(ca / "ca.pem"))

    def args(self, node: str) -> tuple[str, ...]:
        interval = PERIODIC if node not in SIGHUP_NODES else 0
        return ("--tls-dir", str(self.tls(node)), "--tls-reload-interval", f"{interval:g}")

    def apply(self, node: str, change: Callable[[], int | None], *, cas: int) -> None:
        """Change ``node``'s files (``change`` returns the new certificate's serial, if
        any), reload it as documented, and wait for its log to say it uses them now."""
        proc = self.mesh.procs[node]
        since = proc.log.stat().st_size  # before the change: the periodic check may be quick
        serial = change()
        if node in SIGHUP_NODES:
            proc.popen.send_signal(signal.SIGHUP)
        wanted = [
            f"TLS files reloaded: now {node} (", f"trusting {cas} CA{'' if cas == 1 else 's'}:"]
        if serial is not None:
            wanted.append(f"serial {serial:x},")
        end = time.monotonic() + RELOAD_DEADLINE
        while True:
            with proc.log.open("rb") as handle:
                handle.seek(since)
                lines = handle.read().decode("utf-8", "replace").splitlines()
            if any(all(w in line for w in wanted) for line in lines):
                return
            assert time.monotonic() < end, (
                f"{node} did not reload {wanted}:\n" + "\n".join(lines[-20:]))
            time.sleep(0.05)

    def start_newcomer(self, node: str, traffic: Traffic, peers: list[str]) -> None:
        self.mesh.start_edge(node, *self.args(node))  # waits until the router acked it
        pod = f"pod-e{node[-1]}"
        paths = [(node, "pod-cloud", "pod-cloud-0"), ("router", pod, f"{pod}-0")]
        for peer in peers:
            peer_pod = f"pod-e{peer[-1]}"
            paths += [(node, peer_pod, f"{peer_pod}-0"), (peer, pod, f"{pod}-0")]
        traffic.join(paths)


def handshake_failures(mesh: Mesh, since: dict[str, int]) -> list[str]:
    found = []
    for proc in mesh.procs.values():
        if not proc.mesh:
            continue
        with proc.log.open("rb") as handle:
            handle.seek(since.get(proc.name, 0))
            text = handle.read().decode("utf-8", "replace")
        found += [f"{proc.name}: {line}" for line in text.splitlines()
                  if "TLS handshake" in line or "refusing link" in line]
    return found


def test_ca_rotation_with_traffic_flowing(rotation_mesh: Mesh) -> None:
    mesh = rotation_mesh
    op = Rotation(mesh)
    certs("init", "--dir", str(op.old))
    for node in ("router", "edge-1", "edge-2"):
        op.issue(node, op.old)
    mesh.start_pods(wait=False)
    mesh.start_router(*op.args("router"), wait=False)
    for node in ("edge-1", "edge-2"):
        mesh.start_edge(node, *op.args(node), wait=False)
    mesh.wait_pods()
    mesh.wait_healthy(mesh.procs["router"])
    mesh.wait_edges_acked(["edge-1", "edge-2"])
    tunnels = {
        e["node"]: e["connected_since"] for e in admin_get(mesh.topology.router_admin, "/edges")[1]}
    since = mesh.log_sizes()

    traffic = Traffic(mesh, [
        ("edge-1", "pod-e2", "pod-e2-0"), ("edge-2", "pod-e1", "pod-e1-0"),       # edge → edge
        ("edge-1", "pod-cloud", "pod-cloud-0"), ("edge-2", "pod-cloud", "pod-cloud-0"),  # → cloud
        ("router", "pod-e1", "pod-e1-0"), ("router", "pod-e2", "pod-e2-0"),       # cloud → edge
    ])
    traffic.start()
    try:
        traffic.flowing()
        certs("init", "--dir", str(op.new))

        # Step 1: every node trusts the new CA too.
        for node in ("router", "edge-1", "edge-2"):
            op.apply(node, partial(op.trust, node, "--add", op.new), cas=2)
            traffic.flowing()
        # edge-3 joins with a certificate of the new CA; everyone else is still on the old.
        op.issue("edge-3", op.new)
        op.trust("edge-3", "--add", op.old)
        op.start_newcomer("edge-3", traffic, ["edge-1", "edge-2"])
        traffic.flowing()

        # Step 2: each node re-issued from the new CA (its bundle keeps the old one).
        for node in ("router", "edge-1"):
            op.apply(node, partial(op.issue, node, op.new, "--force"), cas=2)
            traffic.flowing()
        # edge-4 joins with a certificate of the old CA: router and edge-1 are new already.
        op.issue("edge-4", op.old)
        op.trust("edge-4", "--add", op.new)
        op.start_newcomer("edge-4", traffic, ["edge-1", "edge-2", "edge-3"])
        traffic.flowing()
        for node in ("edge-2", "edge-4"):
            op.apply(node, partial(op.issue, node, op.new, "--force"), cas=2)
            traffic.flowing()

        # Step 3: the old CA leaves every bundle.
        for node in ("router", "edge-1", "edge-2", "edge-3", "edge-4"):
            op.apply(node, partial(op.trust, node, "--remove", op.old), cas=1)
            traffic.flowing()
        # edge-5 joins knowing only the new CA.
        op.issue("edge-5", op.new)
        op.start_newcomer("edge-5", traffic, ["edge-1", "edge-2", "edge-3", "edge-4"])
        traffic.flowing(at_least=60)
    finally:
        traffic.finish()

    assert not traffic.failures, (
        f"{len(traffic.failures)} of {traffic.total()} requests failed:\n"
        + "\n".join(traffic.failures[:30]))
    print(f"\nCA rotation: {traffic.total()} requests over {len(traffic.done)} paths, none failed")
    assert len(traffic.done) == 6 + 6 + 8 + 10
    assert min(traffic.done.values()) >= 1
    # The tunnels made before the rotation are the same ones, undisturbed by every reload.
    after = {e["node"]: e for e in admin_get(mesh.topology.router_admin, "/edges")[1]}
    assert set(after) == set(EDGES)
    for node in ("edge-1", "edge-2"):
        assert after[node]["connected_since"] == tunnels[node], node
    assert not handshake_failures(mesh, since), handshake_failures(mesh, since)
    problems = mesh.new_problems({})
    assert not problems, "\n".join(problems[:40])

    # And the old CA is really gone: a certificate of it is refused at the router.
    old_ca = Issued((op.old / "ca.key").read_bytes(), (op.old / "ca.pem").read_bytes())
    stale = make_node_cert(old_ca, "edge-1")
    (mesh.directory / "stale.pem").write_bytes(stale.cert_pem)
    (mesh.directory / "stale.key").write_bytes(stale.key_pem)
    context = ssl.create_default_context(cafile=str(op.new / "ca.pem"))
    context.load_cert_chain(mesh.directory / "stale.pem", mesh.directory / "stale.key")
    assert refused(mesh.topology.router_tunnel, context, "router")


def refused(port: int, context: ssl.SSLContext, server: str) -> bool:
    """The node refuses our certificate: the handshake fails (with TLS 1.3 the client
    learns it at its first read), or the node closes without a word."""
    try:
        raw = socket.create_connection((LOOPBACK, port), timeout=5)
        with context.wrap_socket(raw, server_hostname=server) as sock:
            sock.sendall(b"\0\0\0\0")
            return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
