"""Need-based push through real processes: a router started with ``--edge-scope shop``, an
edge that takes it (edge-2) and one whose Node says ``edgemesh.io/scope: local`` (edge-1).
Each edge holds, serves and persists its view only (plus the Services of its own pods, which
other nodes send it); names outside it answer 404 ``unknown-service``; an exported Service
reaches both; the router still routes cloud apps to every edge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import Mesh, ServiceSpec, Topology, admin_get, catalog_objects, request, write_catalog

from edgemesh.catalog import CatalogStore

pytestmark = pytest.mark.slow

EDGES = ("edge-1", "edge-2")
NAMESPACE = {"own": "team1", "web": "shop", "other": "team2", "shared": "infra"}


def objects(topology: Topology) -> list[dict[str, Any]]:
    pods = topology.pods
    specs = [
        ServiceSpec("own", "edge-1", "pod-e1-0", "10.96.1.1", 80, pods["pod-e1-0"]),
        ServiceSpec("web", "edge-2", "pod-e2-0", "10.96.1.2", 80, pods["pod-e2-0"]),
        ServiceSpec("other", "edge-2", "pod-e2-0", "10.96.1.3", 80, pods["pod-e2-0"]),
        ServiceSpec("shared", "edge-2", "pod-e2-0", "10.96.1.4", 80, pods["pod-e2-0"]),
    ]
    result = catalog_objects(topology, EDGES, specs)
    for obj in result:
        meta = obj["metadata"]
        if obj["kind"] == "Node" and meta["name"] == "edge-1":
            meta.setdefault("annotations", {})["edgemesh.io/scope"] = "local"
        service = meta.get("labels", {}).get("kubernetes.io/service-name", meta["name"])
        if obj["kind"] in ("Service", "EndpointSlice"):
            meta["namespace"] = NAMESPACE[service]
        if obj["kind"] == "Service" and service == "shared":
            meta["annotations"] = {"edgemesh.io/export": "true"}
    return result


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("scope")
    topology = Topology.allocate(EDGES, ["pod-e1-0", "pod-e2-0"], [])
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, objects(topology))
    mesh = Mesh(directory, topology, catalog, tls=False)
    try:
        mesh.start_all(EDGES, "--edge-scope", "shop")
        yield mesh
    finally:
        mesh.stop_all()


@pytest.mark.parametrize(("via", "name", "status"), [
    ("edge-1", "own.team1", 200),       # local: the namespace of its own pod
    ("edge-1", "shared.infra", 200),    # exported: everywhere (edge → edge)
    ("edge-1", "web.shop", 404),        # not edge-1's
    ("edge-1", "other.team2", 404),
    ("edge-2", "web.shop", 200),        # --edge-scope shop
    ("edge-2", "shared.infra", 200),
    ("edge-2", "other.team2", 200),     # not in its scope, but its own pod's
    ("edge-2", "own.team1", 404),
    ("router", "other.team2", 200),     # the router routes with the whole catalog
])
def test_names_outside_an_edges_scope_are_unknown_there(
        scoped: Mesh, via: str, name: str, status: int) -> None:
    response = request(scoped.proxy(via), "GET", "/", [("Host", name)])
    assert response.status == status, response.body[:200]
    if status == 404:
        assert response.header("X-Edgemesh-Error") == "unknown-service"


def test_each_edge_holds_and_persists_its_view_only(scoped: Mesh) -> None:
    expected = {"edge-1": {"team1/own", "infra/shared"},
                "edge-2": {"shop/web", "infra/shared", "team2/other"}}
    for edge in EDGES:
        stored, problems = CatalogStore(str(scoped.directory / f"state-{edge}")).load()
        assert problems == []
        assert stored is not None and set(stored.services) == expected[edge]
    edges = {e["node"]: e for e in admin_get(scoped.topology.router_admin, "/edges")[1]}
    assert all(edges[e]["lag"] == 0 for e in EDGES), edges


def test_the_persisted_view_is_what_the_edge_serves_offline(scoped: Mesh, tmp_path: Path) -> None:
    scoped.stop("router")
    try:
        assert request(scoped.proxy("edge-2"), "GET", "/", [("Host", "web.shop")]).status == 200
        assert request(scoped.proxy("edge-1"), "GET", "/",
                       [("Host", "web.shop")]).status == 404
    finally:
        scoped.start_router("--edge-scope", "shop")
