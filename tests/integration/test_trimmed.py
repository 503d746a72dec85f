"""Trimmed endpoints through real processes: a router started with ``--edge-endpoints
trimmed``; edge-a runs no pod of ``spread``, edge-b runs three.  edge-a's catalog (in
memory and on disk) holds one aggregate for edge-b, no address of its pods; exchanges from
edge-a still reach them, spread by edge-b; a consistent-hash key lands on the same pod from
either edge."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from meshkit import LOOPBACK, Mesh, Topology, admin_get, request, write_catalog

from edgemesh.catalog import CatalogStore

pytestmark = pytest.mark.slow

EDGES = ("edge-a", "edge-b")
B_PODS = ("pod-b-0", "pod-b-1", "pod-b-2")


def _node(name: str, hub: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"kubernetes.io/hostname": name,
                                 "node-role.kubernetes.io/edge": ""},
        "annotations": {"edgemesh.io/hub-address": f"{LOOPBACK}:{hub}"}}}


def _service(name: str, ip: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80,
                                                 "targetPort": 80, "protocol": "TCP"}]}}


def _slice(service: str, node: str, pod: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-{pod}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [LOOPBACK], "nodeName": node,
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}]}


def objects(topology: Topology) -> list[dict[str, Any]]:
    result = [_node(e, topology.edges[e]["hub"]) for e in EDGES]
    hashed = {"edgemesh.io/lb-policy": "consistent-hash", "edgemesh.io/hash-key": "header:x-user"}
    for name, ip, notes in (("spread", "10.96.7.1", {}), ("sticky", "10.96.7.2", hashed)):
        result.append(_service(name, ip, notes))
        result += [_slice(name, "edge-b", pod, topology.pods[pod]) for pod in B_PODS]
    result.append(_service("own", "10.96.7.3", {}))
    result.append(_slice("own", "edge-a", "pod-a-0", topology.pods["pod-a-0"]))
    return result


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("trimmed")
    topology = Topology.allocate(EDGES, ["pod-a-0", *B_PODS], [])
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, objects(topology))
    mesh = Mesh(directory, topology, catalog, tls=False)
    try:
        mesh.start_all(EDGES, "--edge-endpoints", "trimmed")
        yield mesh
    finally:
        mesh.stop_all()


def test_edge_a_persists_no_address_of_edge_b_pods(trimmed: Mesh) -> None:
    stored, problems = CatalogStore(str(trimmed.directory / "state-edge-a")).load()
    assert problems == [] and stored is not None
    b_ports = {trimmed.topology.pods[p] for p in B_PODS}
    for key in ("default/spread", "default/sticky"):
        (entry,) = stored.services[key].endpoints["http"]
        assert (entry.node, entry.pods, entry.port in b_ports) == ("edge-b", 3, True)
        assert entry.host.startswith("*")  # a tag, not an address
    addresses = {(e.host, e.port) for s in stored.services.values()
                 for es in s.endpoints.values() for e in es}
    assert not {(LOOPBACK, port) for port in b_ports} & addresses
    # edge-b's own pods stay exact in its own catalog.
    own, _ = CatalogStore(str(trimmed.directory / "state-edge-b")).load()
    assert own is not None and len(own.services["default/spread"].endpoints["http"]) == 3
    edges = {e["node"]: e for e in admin_get(trimmed.topology.router_admin, "/edges")[1]}
    assert all(edges[e]["lag"] == 0 for e in EDGES), edges


def test_exchanges_from_edge_a_reach_every_pod_of_edge_b(trimmed: Mesh) -> None:
    seen: Counter[str] = Counter()
    for _ in range(30):
        response = request(trimmed.proxy("edge-a"), "GET", "/", [("Host", "spread")])
        assert response.status == 200, response.body[:200]
        seen[response.header("X-Pod") or ""] += 1
    assert set(seen) == set(B_PODS), seen
    assert min(seen.values()) >= 5, seen  # edge-b balances its own pods (round robin)


def test_a_hash_key_lands_on_the_same_pod_from_either_edge(trimmed: Mesh) -> None:
    landed: dict[str, set[str]] = {}
    for user in range(12):
        for via in EDGES:
            response = request(trimmed.proxy(via), "GET", "/",
                               [("Host", "sticky"), ("X-User", f"user-{user}")])
            assert response.status == 200, response.body[:200]
            landed.setdefault(f"user-{user}", set()).add(response.header("X-Pod") or "")
    assert all(len(pods) == 1 for pods in landed.values()), landed
    assert len(set().union(*landed.values())) >= 2, landed  # the keys do spread
