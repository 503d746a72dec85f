"""Cloud apps reach an edge stream service by its clusterIP (issue 12, ``--stream-ports``):
the router (real ``twistd``) watches the test API server, its controller gives the Service's
``redis`` port a router port from the range and writes it into the managed EndpointSlice;
the real ``redis-cli`` connects to 127.0.0.1:<that port> (what kube-proxy's DNAT to the
slice's endpoint amounts to) and reaches the real ``redis-server`` behind edge-1.  Deleting
the Service closes the listener."""

from __future__ import annotations

import random
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import LOOPBACK, PORT_FLOOR, Topology, _connects, admin_get
from test_control_plane import KubeMesh, node
from test_redis import Processes, cli

from edgemesh.testing import ThreadedKubeApiServer, make_endpoint_slice, make_service

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(
    None in (REDIS_SERVER, REDIS_CLI),
    reason="redis-server or redis-cli is not installed (.ci/run installs them)")
DEADLINE = 30.0


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive free ports on loopback (a bounded number of tries)."""
    rng = random.Random()
    for _ in range(200):
        # Below meshkit.free_ports' range: the topology's ports are released until their
        # processes listen, and must not fall in the router's stream-port range.
        low = rng.randrange(10000, PORT_FLOOR - size)
        sockets: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                s = socket.socket()
                sockets.append(s)
                s.bind((LOOPBACK, port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free port range")


def redis_service() -> dict[str, Any]:
    obj = make_service("redis", cluster_ip="10.96.3.1")
    obj["spec"]["ports"] = [{"name": "http", "port": 80, "protocol": "TCP"},
                            {"name": "redis", "port": 6379, "protocol": "TCP"}]
    return obj


def wait(what: str, check: Any, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < end, f"{what}: not within {deadline}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stream_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[KubeMesh, ThreadedKubeApiServer, tuple[int, int]]]:
    directory = tmp_path_factory.mktemp("stream-ports")
    topology = Topology.allocate(["edge-1"], ["redis-0"], [])
    ports = free_range(3)
    others = Processes(directory)
    with ThreadedKubeApiServer(token="edgemesh-test", bookmark_interval=1.0) as api:
        api.create(node("edge-1", topology))
        api.create(redis_service())
        api.create(make_endpoint_slice(
            "redis", [LOOPBACK], name="redis-edge-1", port=topology.pods["redis-0"],
            port_name="redis", node_name="edge-1"))
        mesh = KubeMesh(directory, topology, directory / "unused.yaml")
        mesh.kubeconfig = Path(api.write_kubeconfig(directory / "kubeconfig"))
        try:
            assert REDIS_SERVER is not None
            server = others.start("redis-server", [
                REDIS_SERVER, "--port", str(topology.pods["redis-0"]), "--bind", LOOPBACK,
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(directory)])
            mesh.start_router("--stream-ports", f"{ports[0]}-{ports[1]}")
            mesh.start_edge("edge-1", wait=False)
            mesh.wait_edges_acked(["edge-1"])
            wait("redis-server to listen",
                 lambda: server.poll() is None and _connects(topology.pods["redis-0"]))
            yield mesh, api, ports
            mesh.check_alive()
        finally:
            others.stop_all()
            mesh.stop_all()


def managed_ports(api: ThreadedKubeApiServer) -> dict[str, int] | None:
    try:
        obj = api.get("endpointslices", "redis-edgemesh")
    except Exception:  # noqa: BLE001 -- not written yet
        return None
    return {p["name"]: p["port"] for p in obj.get("ports") or []}


def test_redis_cli_reaches_the_edge_pod_through_the_allocated_port(
        stream_mesh: tuple[KubeMesh, ThreadedKubeApiServer, tuple[int, int]]) -> None:
    mesh, api, (low, high) = stream_mesh
    t = mesh.topology
    written = wait("the managed EndpointSlice", lambda: managed_ports(api))
    assert written["http"] == t.router_http, "an HTTP port keeps the router's HTTP port"
    port = written["redis"]
    assert low <= port <= high, f"the stream port got {port}, not one of {low}-{high}"
    wait("the router to listen on the stream port", lambda: _connects(port))
    status = admin_get(t.router_admin, "/status")[1]["stream_ports"]
    assert status["listening"] == [port]

    assert cli(port, "PING").strip() == b"PONG"
    value = ("x" * (1 << 20)).encode()
    assert cli(port, "-x", "SET", "big", data=value).strip() == b"OK"
    assert cli(port, "STRLEN", "big").strip() == b"%d" % len(value)
    # The bytes went through the pod on edge-1: redis-server saw the key, directly.
    assert cli(t.pods["redis-0"], "STRLEN", "big").strip() == b"%d" % len(value)

    api.delete("services", "redis")
    wait("the listener to close", lambda: not _connects(port))
    wait("the slice to go", lambda: managed_ports(api) is None)
