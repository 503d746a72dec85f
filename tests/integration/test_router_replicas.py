"""Router replicas through real processes (issue 13): three ``twistd edgemesh-router`` with a
file catalog, mutual TLS, ``--peer-listen``/``--peer-router`` on distinct loopback ports,
and two edges, each with all three replicas as ``--router`` (a different one first).

- cloud → edge through every replica's ``--http`` reaches every edge (forwarded over the
  router link when the edge's tunnel is on another replica);
- edge-b → edge-a, whose hub address in the catalog is dead, is relayed through edge-b's
  replica and forwarded to edge-a's;
- kill -9 of the replica that holds edge-a's tunnel: edge-a is reachable again from the
  other replicas' ``--http`` and from edge-b within 5 s (the documented bound, docs/ha.md),
  and its new replica sent it a rebase, not a snapshot (it held the same catalog).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from meshkit import (
    LOOPBACK,
    Mesh,
    Proc,
    ServiceSpec,
    Topology,
    admin_get,
    catalog_objects,
    free_ports,
    issue_certs,
    request,
    write_catalog,
)

pytestmark = pytest.mark.slow

ROUTERS = ("router-a", "router-b", "router-c")
EDGES = ("edge-a", "edge-b")
FIRST = {"edge-a": "router-a", "edge-b": "router-b"}
FAILOVER_BOUND = 5.0


class Replicas:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        # Apart from the topology's: free_ports skips the ports it handed out lately.
        ports = iter(free_ports(4 * len(ROUTERS)))
        self.ports = {r: {k: next(ports) for k in ("tunnel", "http", "admin", "peer")}
                      for r in ROUTERS}

    def start_router(self, name: str) -> Proc:
        p = self.ports[name]
        peers = [f"--peer-router={r}=tcp:{LOOPBACK}:{self.ports[r]['peer']}" for r in ROUTERS]
        argv = [
            "edgemesh-router", "--node", name, "--catalog", str(self.mesh.catalog),
            "--tunnel", f"tcp:{p['tunnel']}:interface={LOOPBACK}",
            "--http", f"tcp:{p['http']}:interface={LOOPBACK}",
            "--admin", f"tcp:{p['admin']}:interface={LOOPBACK}",
            "--peer-listen", f"tcp:{p['peer']}:interface={LOOPBACK}",
            *peers, "--tls-dir", str(self.tls),
        ]
        return self.mesh._spawn(name, argv, p["admin"], mesh=True)

    def start_edge(self, name: str) -> Proc:
        ports = self.mesh.topology.edges[name]
        first = ROUTERS.index(FIRST[name])
        order = ROUTERS[first:] + ROUTERS[:first]
        routers = [f"--router={r}=tcp:{LOOPBACK}:{self.ports[r]['tunnel']}" for r in order]
        argv = [
            "edgemesh-edge", "--node", name, *routers,
            "--proxy", f"tcp:{ports['proxy']}:interface={LOOPBACK}",
            # edge-a's hub is not where the catalog says: edge-b relays through the routers.
            "--hub", f"tcp:{ports['hub']}:interface={LOOPBACK}",
            "--state-dir", str(self.mesh.directory / f"state-{name}"),
            "--admin", f"tcp:{ports['admin']}:interface={LOOPBACK}",
            "--tls-dir", str(self.tls),
        ]
        return self.mesh._spawn(name, argv, ports["admin"], mesh=True)

    @property
    def tls(self) -> Any:
        return self.mesh.directory / "tls"

    def admin(self, router: str, path: str) -> Any:
        return admin_get(self.ports[router]["admin"], path)[1]

    def holders(self, router: str) -> dict[str, str]:
        return {row["node"]: row["replica"] for row in self.admin(router, "/edges")}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    directory = tmp_path_factory.mktemp("replicas")
    topology = Topology.allocate(EDGES, ["pod-a-0", "pod-b-0", "pod-cloud-0"], ["hub-a"])
    pods = topology.pods
    specs = [ServiceSpec("pod-a", "edge-a", "pod-a-0", "10.96.3.1", 80, pods["pod-a-0"]),
             ServiceSpec("pod-b", "edge-b", "pod-b-0", "10.96.3.2", 80, pods["pod-b-0"]),
             # A cloud service: its clusterIP is the pod itself, as in tests/integration/conftest.
             ServiceSpec("pod-cloud", "cloud-1", "pod-cloud-0", LOOPBACK, pods["pod-cloud-0"],
                         pods["pod-cloud-0"])]
    objects = catalog_objects(topology, EDGES, specs)
    for obj in objects:
        if obj["kind"] == "Node" and obj["metadata"]["name"] == "edge-a":
            obj["metadata"]["annotations"]["edgemesh.io/hub-address"] = \
                f"{LOOPBACK}:{topology.dead['hub-a']}"
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, objects)
    mesh = Mesh(directory, topology, catalog)
    setup = Replicas(mesh)
    issue_certs(setup.tls, *EDGES)
    for name in ROUTERS:
        issue_certs(setup.tls, router=name)
    try:
        mesh.start_pods(wait=False)
        for name in ROUTERS:
            setup.start_router(name)
        for name in ROUTERS:  # before the edges: each edge's first dial goes to its FIRST
            mesh.wait_healthy(mesh.procs[name])
        for name in EDGES:
            setup.start_edge(name)
        mesh.wait_pods()

        def settled() -> bool:
            for router in ROUTERS:
                if setup.admin(router, "/readyz")["routers"]["peers"] != len(ROUTERS) - 1:
                    return False
                if setup.holders(router) != {"edge-a": "router-a", "edge-b": "router-b"}:
                    return False
            return True

        mesh.wait_for("router links up and every edge known to every replica", settled,
                      mesh.procs.values())
        yield setup
    finally:
        mesh.stop_all()


def pod_of(port: int, host: str, timeout: float = 3.0) -> tuple[int, str | None]:
    response = request(port, "GET", "/", [("Host", host)], timeout=timeout)
    return response.status, response.header("X-Pod")


@pytest.mark.parametrize("router", ROUTERS)
def test_cloud_to_every_edge_through_every_replica(replicas: Replicas, router: str) -> None:
    http = replicas.ports[router]["http"]
    assert pod_of(http, "pod-a") == (200, "pod-a-0")
    assert pod_of(http, "pod-b") == (200, "pod-b-0")
    status = replicas.admin(router, "/readyz")
    assert status["leader"] is None and status["routers"]["peers"] == 2
    forwarded = status["routers"]["forwarded_out"]
    assert forwarded >= (0 if router in ("router-a", "router-b") else 2), status


def test_edge_to_edge_relay_is_forwarded_between_replicas(replicas: Replicas) -> None:
    before = replicas.admin("router-b", "/readyz")["routers"]["forwarded_out"]
    assert pod_of(replicas.mesh.proxy("edge-b"), "pod-a") == (200, "pod-a-0")
    assert replicas.admin("router-b", "/readyz")["routers"]["forwarded_out"] > before
    metrics = request(replicas.ports["router-b"]["admin"], "GET", "/metrics",
                      [("Host", "admin")]).body.decode()
    assert "edgemesh_router_links 2.0" in metrics
    assert 'edgemesh_router_forwarded_exchanges_total{direction="out"}' in metrics


def poll(check: Callable[[], bool], deadline: float) -> bool:
    delay = 0.02
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    return False


def test_kill_the_replica_holding_edge_a(replicas: Replicas) -> None:
    mesh = replicas.mesh
    holder = replicas.holders("router-b")["edge-a"]
    assert holder == "router-a"
    survivors = [r for r in ROUTERS if r != holder]
    pushes = {r: replicas.admin(r, "/readyz")["routers"]["catalog_pushes"] for r in survivors}
    proc = mesh.procs[holder]
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.popen.wait(5)
    deadline = killed + FAILOVER_BOUND
    reached: dict[str, float] = {}
    sources = {f"{r} --http": replicas.ports[r]["http"] for r in ROUTERS if r != holder}
    sources["edge-b"] = mesh.proxy("edge-b")
    for name, port in sources.items():
        def ok(port: int = port) -> bool:
            return pod_of(port, "pod-a", timeout=1.0) == (200, "pod-a-0")

        assert poll(ok, deadline), f"edge-a not reachable from {name} within {FAILOVER_BOUND}s\n" \
            + mesh.tails()
        reached[name] = round(time.monotonic() - killed, 3)
    print(f"edge-a reachable again after kill -9 of {holder}: {reached}")
    new_holder = replicas.holders("router-b")["edge-a"]
    assert new_holder != holder
    assert replicas.holders("router-c")["edge-a"] == new_holder
    assert replicas.admin("router-b", "/readyz")["routers"]["peers"] == 1
    # edge-a held what its new replica would send it: a rebase (here empty), not a snapshot.
    after = replicas.admin(new_holder, "/readyz")["routers"]["catalog_pushes"]
    before = pushes[new_holder]
    assert (after["rebase"] - before["rebase"], after["snapshot"] - before["snapshot"]) == (1, 0)
    metrics = request(replicas.ports[new_holder]["admin"], "GET", "/metrics",
                      [("Host", "admin")]).body.decode()
    assert f'edgemesh_router_catalog_pushes_total{{kind="rebase"}} {after["rebase"]}.0' \
        in metrics


def test_sigterm_of_a_replica_moves_its_edges_and_loses_nothing(replicas: Replicas) -> None:
    """A rolling update step: SIGTERM the replica that now holds both edges' tunnels while
    edge → cloud, cloud → edge (forwarded) and edge → edge (relayed) requests keep coming."""
    mesh = replicas.mesh
    holders = replicas.holders("router-c")
    victim = holders["edge-a"]
    assert victim != "router-c" and holders["edge-b"] == victim, holders
    other = next(r for r in ROUTERS if r not in (victim, "router-a"))
    flows = {
        "edge-a → cloud": (mesh.proxy("edge-a"), "pod-cloud", "pod-cloud-0"),
        "router-c → edge-a": (replicas.ports[other]["http"], "pod-a", "pod-a-0"),
        "edge-b → edge-a": (mesh.proxy("edge-b"), "pod-a", "pod-a-0"),
    }
    results: dict[str, list[object]] = {name: [] for name in flows}
    stop = threading.Event()

    def load(name: str, port: int, host: str, pod: str) -> None:
        while not stop.is_set() and len(results[name]) < 2000:
            try:
                outcome: object = pod_of(port, host, timeout=5.0)
            except OSError as error:
                outcome = repr(error)
            results[name].append(outcome)
            time.sleep(0.005)

    threads = [threading.Thread(target=load, args=(name, *flow), daemon=True)
               for name, flow in flows.items()]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # steady load before the SIGTERM
        proc = mesh.procs[victim]
        os.kill(proc.pid, signal.SIGTERM)
        proc.popen.wait(15)
        assert poll(lambda: replicas.holders(other) == {"edge-a": other, "edge-b": other},
                    time.monotonic() + FAILOVER_BOUND)
        time.sleep(1.0)  # and after
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    for name, (_, _, pod) in flows.items():
        failures = [r for r in results[name] if r != (200, pod)]
        print(f"{name}: {len(results[name])} requests, {len(failures)} failed")
        assert len(results[name]) >= 20 and failures == [], (name, failures[:5], mesh.tails())
