"""The control plane end to end: a router (real ``twistd``) watching the test Kubernetes API
server (``edgemesh.testing``, in this process) through ``--kubeconfig``, real edges, real pods.

One mesh for the module: edge-1 and edge-2 (each with a pod), the API server holding their
Nodes and the Services.  Tests change objects through the API server and measure until every
edge has acked the router's revision and requests follow; they break the watch (410 in both
forms, bookmarks, timeouts, restarts, 429/500), stop edges and the router, and kill -9 an
edge while it writes.  The router is started with ``--advertise``, so its controller writes
the EndpointSlices that send cloud traffic to it.
"""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import LOOPBACK, Mesh, Topology, admin_get, request

from edgemesh.catalog import CatalogStore
from edgemesh.testing import (
    ThreadedKubeApiServer,
    make_endpoint_slice,
    make_namespace,
    make_node,
    make_service,
)

EDGES = ("edge-1", "edge-2")
PODS = ("pod-1", "pod-2", "pod-3")
"""pod-1 runs on edge-1, pod-2 and pod-3 on edge-2."""
CONVERGE = 1.0
"""Seconds from an API change to every edge's ack (the issue's target)."""


class KubeMesh(Mesh):
    """meshkit's Mesh with a router that watches the API server instead of reading a file."""

    kubeconfig: Path

    def start_router(self, *extra: str, wait: bool = True) -> Any:
        t = self.topology
        argv = [
            "edgemesh-router",
            "--kubeconfig", str(self.kubeconfig),
            "--tunnel", f"tcp:{t.router_tunnel}:interface={LOOPBACK}",
            "--http", f"tcp:{t.router_http}:interface={LOOPBACK}",
            "--admin", f"tcp:{t.router_admin}:interface={LOOPBACK}",
            "--advertise", LOOPBACK,
            *self._tls_args("router", extra, True, t.router_tunnel),
            *extra,
        ]
        proc = self._spawn("router", argv, t.router_admin, mesh=True)
        if wait:
            self.wait_healthy(proc)
            self.wait_for("the router's first catalog", lambda: admin_get(
                t.router_admin, "/status")[1]["catalog_revision"] > 0, [proc])
        return proc


def node(name: str, topology: Topology) -> dict[str, Any]:
    hub = topology.edges[name]["hub"]
    return make_node(name, edge=True, internal_ip=LOOPBACK, hub_address=f"{LOOPBACK}:{hub}")


def backend(service: str, pod: str, topology: Topology, on: str,
            slice_name: str | None = None) -> dict[str, Any]:
    """An EndpointSlice for ``service``: the pod ``pod`` (on loopback) on node ``on``."""
    return make_endpoint_slice(service, [LOOPBACK], name=slice_name or f"{service}-slice",
                               port=80, port_name="http", node_name=on,
                               ports=[{"name": "http", "port": topology.pods[pod],
                                       "protocol": "TCP"}])


def http_service(name: str) -> dict[str, Any]:
    obj = make_service(name)
    obj["spec"]["ports"] = [{"name": "http", "port": 80, "protocol": "TCP"}]
    return obj


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadedKubeApiServer]:
    with ThreadedKubeApiServer(token="edgemesh-test", bookmark_interval=1.0) as server:
        yield server


@pytest.fixture(scope="module")
def kmesh(tmp_path_factory: pytest.TempPathFactory,
          api: ThreadedKubeApiServer) -> Iterator[KubeMesh]:
    directory = tmp_path_factory.mktemp("control-plane")
    topology = Topology.allocate(EDGES, PODS, [])
    for name in EDGES:
        api.create(node(name, topology))
    api.create(make_node("cloud-1", internal_ip="10.0.0.9"))
    api.create(http_service("web"))
    api.create(backend("web", "pod-1", topology, "edge-1"))
    mesh = KubeMesh(directory, topology, directory / "unused.yaml")
    mesh.kubeconfig = Path(api.write_kubeconfig(directory / "kubeconfig"))
    try:
        mesh.start_pods(wait=False)
        mesh.start_router()
        for name in EDGES:
            mesh.start_edge(name, wait=False)
        mesh.wait_pods()
        mesh.wait_edges_acked(EDGES)
        yield mesh
    finally:
        mesh.stop_all()


# -- helpers ----------------------------------------------------------------------------------


def router_revision(mesh: Mesh) -> int:
    revision: int = admin_get(mesh.topology.router_admin, "/status")[1]["catalog_revision"]
    return revision


def edge_catalog(mesh: Mesh, name: str) -> dict[str, Any]:
    catalog: dict[str, Any] = admin_get(mesh.topology.edges[name]["admin"], "/catalog")[1]
    return catalog


def services_on(mesh: Mesh, name: str) -> set[str]:
    return {f"{s[0]}/{s[1]}" for s in edge_catalog(mesh, name)["services"]}


def ready_on(mesh: Mesh, name: str, service: str) -> bool:
    """``service`` is in the edge's catalog with an endpoint."""
    return any(s[1] == service and any(s[4].values()) for s in edge_catalog(mesh, name)["services"])


def converged(mesh: Mesh, check: Callable[[str], bool], names: tuple[str, ...] = EDGES,
              deadline: float = 30.0) -> float:
    """Seconds until ``check(edge)`` holds on every edge and each has acked the router's
    revision (fails after ``deadline``)."""
    start = time.monotonic()

    def done() -> bool:
        revision = router_revision(mesh)
        rows = {e["node"]: e for e in admin_get(mesh.topology.router_admin, "/edges")[1]}
        return all(n in rows and rows[n]["acked_revision"] == revision and check(n)
                   for n in names)

    mesh.wait_for("the edges to converge", done, list(mesh.procs.values()), deadline)
    return time.monotonic() - start


def via(mesh: Mesh, edge: str, host: str) -> tuple[int, str | None]:
    response = request(mesh.proxy(edge), "GET", "/", [("Host", host)])
    return response.status, response.header("X-Pod")


# -- tests ------------------------------------------------------------------------------------


def test_create_change_delete_reach_every_edge_within_a_second(
        kmesh: KubeMesh, api: ThreadedKubeApiServer) -> None:
    t = kmesh.topology
    api.create(http_service("shop"))
    api.create(backend("shop", "pod-2", t, "edge-2"))
    took = converged(kmesh, lambda n: ready_on(kmesh, n, "shop"))
    assert took < CONVERGE, f"create took {took:.3f}s"
    assert via(kmesh, "edge-1", "shop") == (200, "pod-2"), "edge-1 → hub → edge-2's pod"

    changed = backend("shop", "pod-3", t, "edge-2")
    changed["metadata"]["resourceVersion"] = api.get("endpointslices", "shop-slice")[
        "metadata"]["resourceVersion"]
    api.replace(changed)

    def follows(n: str) -> bool:
        for s in edge_catalog(kmesh, n)["services"]:
            if s[1] == "shop":
                return bool(s[4]["http"][0][1] == t.pods["pod-3"])
        return False

    took = converged(kmesh, follows)
    assert took < CONVERGE, f"change took {took:.3f}s"
    assert via(kmesh, "edge-1", "shop") == (200, "pod-3"), "the new endpoint is used"

    api.delete("services", "shop")
    took = converged(kmesh, lambda n: "default/shop" not in services_on(kmesh, n))
    assert took < CONVERGE, f"delete took {took:.3f}s"
    status, _ = via(kmesh, "edge-1", "shop")
    assert status == 404


def test_cloud_apps_reach_edge_services_through_the_router(
        kmesh: KubeMesh, api: ThreadedKubeApiServer) -> None:
    """The controller's EndpointSlice points at the router; the router routes by name and
    by clusterIP:port."""
    t = kmesh.topology
    web = api.get("services", "web")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        slices = [s for s in api.list("endpointslices")
                  if s["metadata"]["name"] == "web-edgemesh"]
        if slices:
            break
        time.sleep(0.05)
    (own,) = slices
    labels = own["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "web"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "router.edgemesh.io"
    assert own["endpoints"][0]["addresses"] == [LOOPBACK]
    assert own["ports"] == [{"name": "http", "port": t.router_http, "protocol": "TCP"}]
    assert own["metadata"]["ownerReferences"][0]["uid"] == web["metadata"]["uid"]
    # Not part of the catalog: the service's endpoints are the pod's only.
    assert via(kmesh, "edge-2", "web") == (200, "pod-1")
    cluster_ip = web["spec"]["clusterIP"]
    for host in ("web", "web.default.svc.cluster.local", f"{cluster_ip}:80", cluster_ip):
        response = request(t.router_http, "GET", "/", [("Host", host)])
        assert (response.status, response.header("X-Pod")) == (200, "pod-1"), host


@pytest.mark.parametrize("fault", [
    "410-event", "410-status", "bookmark-then-end", "watch-timeout", "429", "500",
    "restart", "restart-compacted",
])
def test_watch_faults_converge(kmesh: KubeMesh, api: ThreadedKubeApiServer, fault: str) -> None:
    t = kmesh.topology
    name = f"f-{fault}"
    marker = mark(api)
    if fault == "410-event":
        api.compact()
        api.expire_watches()
    elif fault == "410-status":
        api.set_expired_form("status")
        api.set_bookmark_interval(None)  # the watches' versions stay where they are...
        api.create(make_namespace("elsewhere"))  # ...while the server's moves on
        api.compact()
        api.close_watches()  # re-watch from a compacted version: HTTP 410
    elif fault == "bookmark-then-end":
        api.send_bookmarks()
        api.close_watches()
    elif fault == "watch-timeout":
        api.close_watches()
    elif fault in ("429", "500"):
        api.fail_next(4, int(fault), match=lambda method, uri: "watch=" in uri)
        api.close_watches()
    elif fault == "restart":
        api.restart(down_for=0.5)
    else:
        # As for 410-status: the watches' versions must fall behind the compaction, or a
        # bookmark that just brought them up to date lets them resume without a 410.
        api.set_bookmark_interval(None)
        api.create(make_namespace("elsewhere-restart"))
        api.restart(down_for=0.5, compact=True)
    api.create(http_service(name))
    api.create(backend(name, "pod-1", t, "edge-1"))
    # A restart or relist backs the watch off with jitter: converge within a bound, not at once.
    # The backoff spans these cases (as client-go's, it resets only after 2 minutes without
    # one), so by the last ones a delay may be at its cap: 30 s, jittered up to 60 s.
    converged(kmesh, lambda n: ready_on(kmesh, n, name), deadline=75)
    kmesh.wait_for(f"edge-2 → {name}", lambda: via(kmesh, "edge-2", name) == (200, "pod-1"),
                   list(kmesh.procs.values()), deadline=15)
    api.set_expired_form("event")
    api.set_bookmark_interval(1.0)
    api.clear_faults()
    kmesh.check_alive()
    relisted = [uri for method, uri in since(api, marker)
                if uri.startswith("/api/v1/services?") and "watch=" not in uri]
    if fault in ("bookmark-then-end", "watch-timeout", "429", "500", "restart"):
        # A watch that ends, or fails with a transient error, resumes from its version.
        assert relisted == [], relisted
    else:
        assert relisted, "410 (or a compacted restart) relists"


def mark(api: ThreadedKubeApiServer) -> str:
    """Put a recognisable request in the API server's request log."""
    token = f"marker-{random.random()}"
    url = f"{api.url}/version?{token}"
    urllib.request.urlopen(urllib.request.Request(
        url, headers={"Authorization": f"Bearer {api.token}"}), timeout=5).read()
    return token


def since(api: ThreadedKubeApiServer, marker: str) -> list[tuple[str, str]]:
    log = api.request_log()
    (at,) = [i for i, (_, uri) in enumerate(log) if marker in uri]
    return log[at + 1:]


def test_edge_offline_while_services_change_converges_with_deletes(
        kmesh: KubeMesh, api: ThreadedKubeApiServer) -> None:
    t = kmesh.topology
    api.create(http_service("doomed"))
    api.create(backend("doomed", "pod-1", t, "edge-1"))
    converged(kmesh, lambda n: ready_on(kmesh, n, "doomed"))
    kmesh.stop("edge-2")
    api.delete("services", "doomed")
    api.create(http_service("newcomer"))
    api.create(backend("newcomer", "pod-1", t, "edge-1"))
    converged(kmesh, lambda n: ready_on(kmesh, n, "newcomer"), names=("edge-1",))
    kmesh.start_edge("edge-2")
    converged(kmesh, lambda n: ready_on(kmesh, n, "newcomer")
              and "default/doomed" not in services_on(kmesh, n))
    assert via(kmesh, "edge-2", "doomed")[0] == 404
    assert via(kmesh, "edge-2", "newcomer") == (200, "pod-1")


def test_router_down_edges_serve_edge_to_edge_and_restart_from_disk(
        kmesh: KubeMesh, api: ThreadedKubeApiServer) -> None:
    t = kmesh.topology
    api.create(http_service("local"))
    api.create(backend("local", "pod-2", t, "edge-2"))
    converged(kmesh, lambda n: ready_on(kmesh, n, "local"))
    # edge-2 may have restarted in an earlier test: let edge-1's hub dialer find it again
    # (meanwhile edge-1 relays through the router, which is about to go).
    kmesh.wait_for("edge-1 → edge-2 directly",
                   lambda: via(kmesh, "edge-1", "local") == (200, "pod-2")
                   and admin_get(
                       t.edges["edge-1"]["admin"], "/resilience")[1]["peers"].get("edge-2")
                   == "direct", list(kmesh.procs.values()), deadline=15)
    kmesh.stop("router")
    assert via(kmesh, "edge-1", "local") == (200, "pod-2"), "edge ↔ edge without the router"
    kmesh.stop("edge-1")
    kmesh.start_edge("edge-1", wait=False)
    kmesh.wait_healthy(kmesh.procs["edge-1"])
    assert "default/local" in services_on(kmesh, "edge-1"), "restarted from its disk"
    assert via(kmesh, "edge-1", "local") == (200, "pod-2")
    # Changes made while the router is down arrive once it is back.
    api.delete("services", "local")
    kmesh.start_router()
    converged(kmesh, lambda n: "default/local" not in services_on(kmesh, n), deadline=45)


def test_kill_9_during_writes_always_leaves_a_valid_catalog(
        kmesh: KubeMesh, api: ThreadedKubeApiServer) -> None:
    t = kmesh.topology
    state = kmesh.directory / "state-edge-1"
    rng = random.Random(7)
    for round_ in range(5):
        for i in range(20):
            api.apply(backend("web", ("pod-1",)[0], t, "edge-1", slice_name=f"churn-{i % 4}"))
            api.apply(http_service(f"churn-{round_}-{i}"))
        time.sleep(rng.uniform(0.0, 0.3))
        proc = kmesh.procs["edge-1"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(5)
        kmesh.procs.pop("edge-1")
        catalog, problems = CatalogStore(str(state)).load()
        assert catalog is not None and problems == [], problems
        kmesh.start_edge("edge-1", wait=False)
        kmesh.wait_healthy(kmesh.procs["edge-1"])
        assert edge_catalog(kmesh, "edge-1")["revision"] >= catalog.revision
    converged(kmesh, lambda n: "default/churn-4-19" in services_on(kmesh, n))
