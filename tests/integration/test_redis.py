"""Redis through the mesh (issue 12): a real ``redis-server`` as the pod behind a ``redis``
port (a byte-stream port) on edge-2, the real ``redis-cli`` on the client side.  redis-cli
has no proxy support, so each client reaches the mesh through a socat bridge that opens a
``CONNECT redis.default:6379`` on a proxy port for every connection (what an app does with
``socat``, or what capture does without one).  Edge → edge through edge-1 and cloud → edge
through the router's listener; SET/GET of a 1 MiB value and PUBLISH/SUBSCRIBE across both."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit import LOOPBACK, Mesh, Topology, _connects, _node, free_ports, write_catalog

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
SOCAT = shutil.which("socat")
pytestmark = pytest.mark.skipif(
    None in (REDIS_SERVER, REDIS_CLI, SOCAT),
    reason="redis-server, redis-cli or socat is not installed (.ci/run installs them)")
EDGES = ("edge-1", "edge-2")
DEADLINE = 30.0


def redis_objects(port: int) -> list[dict[str, object]]:
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "redis", "namespace": "default"},
         "spec": {"clusterIP": "10.96.3.1",
                  "ports": [{"name": "redis", "port": 6379, "targetPort": port,
                             "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "redis-edge-2", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": "redis"}},
         "addressType": "IPv4",
         "ports": [{"name": "redis", "port": port, "protocol": "TCP"}],
         "endpoints": [{"addresses": [LOOPBACK], "conditions": {"ready": True},
                        "nodeName": "edge-2",
                        "targetRef": {"kind": "Pod", "name": "redis-0",
                                      "namespace": "default"}}]},
    ]


class Processes:
    """Non-mesh processes of this module (redis-server, socat bridges), stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(argv, cwd=self.directory, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        self.started.append(popen)
        return popen

    def stop_all(self) -> None:
        for popen in reversed(self.started):
            if popen.poll() is None:
                popen.terminate()
                try:
                    popen.wait(10)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(10)


@pytest.fixture(scope="module")
def redis_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """The mesh, redis-server on edge-2, and the bridges: name → local port for redis-cli."""
    directory = tmp_path_factory.mktemp("redis")
    topology = Topology.allocate(EDGES, ["redis-0"], [])
    bridges = dict(zip(("edge-1", "router"), free_ports(2)))
    t = topology
    objects = [_node("cloud-1", False, None),
               *(_node(name, True, t.edges[name]["hub"]) for name in EDGES),
               *redis_objects(t.pods["redis-0"])]
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, objects)
    mesh = Mesh(directory, topology, catalog)
    others = Processes(directory)
    try:
        assert REDIS_SERVER is not None and SOCAT is not None
        server = others.start("redis-server", [
            REDIS_SERVER, "--port", str(t.pods["redis-0"]), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(directory)])
        for via, port in bridges.items():
            others.start(f"socat-{via}", [
                SOCAT, f"TCP-LISTEN:{port},bind={LOOPBACK},reuseaddr,fork",
                f"PROXY:{LOOPBACK}:redis.default:6379,proxyport={mesh.proxy(via)}"])
        mesh.start_router(wait=False)
        for edge in EDGES:
            mesh.start_edge(edge, wait=False)
        mesh.wait_healthy(mesh.procs["router"])
        mesh.wait_edges_acked(EDGES)
        deadline = time.monotonic() + DEADLINE
        ports = [t.pods["redis-0"], *bridges.values()]
        while not all(_connects(port) for port in ports):
            assert server.poll() is None, (directory / "redis-server.log").read_text()
            assert time.monotonic() < deadline, "redis-server or a bridge does not listen"
            time.sleep(0.1)
        yield bridges
        mesh.check_alive()
        assert mesh.new_problems({}) == []
    finally:
        others.stop_all()
        mesh.stop_all()


def cli(port: int, *args: str, data: bytes | None = None) -> bytes:
    assert REDIS_CLI is not None
    done = subprocess.run([REDIS_CLI, "-h", LOOPBACK, "-p", str(port), *args], input=data,
                          capture_output=True, timeout=DEADLINE, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


class Lines:
    """Lines from a process's stdout, each within a deadline (never a blocking read)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        self.fd = popen.stdout.fileno()
        self.buffer = b""

    def take(self, count: int, timeout: float = DEADLINE) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{count} lines not there in {timeout}s: {self.buffer!r}"
            if select.select([self.fd], [], [], left)[0]:
                data = os.read(self.fd, 65536)
                assert data, f"closed after {self.buffer!r}"
                self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n", count)
        return [line.strip() for line in lines]


@pytest.mark.parametrize("via", ["edge-1", "router"])
def test_set_and_get_a_1_mib_value(redis_mesh: dict[str, int], via: str) -> None:
    """``-x`` reads the value from stdin; GET prints it raw (a pipe) with a newline."""
    value = os.urandom(1 << 19).hex().encode()  # 1 MiB of text
    key = f"big-{via}"
    assert cli(redis_mesh[via], "-x", "SET", key, data=value).strip() == b"OK"
    assert cli(redis_mesh[via], "STRLEN", key).strip() == b"%d" % len(value)
    assert cli(redis_mesh[via], "GET", key) == value + b"\n"


def test_publish_and_subscribe_across_the_mesh(redis_mesh: dict[str, int]) -> None:
    """A subscriber through edge-1 (edge → edge) gets what a publisher sends through the
    router (cloud → edge): both long-lived streams to the same pod."""
    assert REDIS_CLI is not None
    subscriber = subprocess.Popen(
        [REDIS_CLI, "-h", LOOPBACK, "-p", str(redis_mesh["edge-1"]), "SUBSCRIBE", "news"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = Lines(subscriber)
        # Its confirmation: "subscribe", "news", "1", one per line.
        assert lines.take(3) == [b"subscribe", b"news", b"1"]
        for i in range(3):
            receivers = cli(redis_mesh["router"], "PUBLISH", "news", f"hello {i}").strip()
            assert receivers == b"1"
            assert lines.take(3) == [b"message", b"news", b"hello %d" % i]
    finally:
        subscriber.terminate()
        try:
            subscriber.wait(10)
        except subprocess.TimeoutExpired:
            subscriber.kill()
            subscriber.wait(10)
