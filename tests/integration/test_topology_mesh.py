"""Traffic topology end to end (issue 14): a router and three edges (real ``twistd``) reading a
catalog file whose Nodes carry zone and pool labels and whose Services carry
``trafficDistribution`` and ``internalTrafficPolicy``; real pods, a real HTTP client.

edge-1 and edge-2 are one pool (``edgemesh.io/pool: site-a``), edge-3 another (OpenYurt's
``apps.openyurt.io/nodepool: site-b``); all three are in zone z1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import LOOPBACK, Mesh, Response, Topology, request, write_catalog

EDGES = ("edge-1", "edge-2", "edge-3")
PODS = ("pod-2", "pod-3")
"""pod-2 runs on edge-2, pod-3 on edge-3; nothing runs on edge-1."""
POOL_LABELS = {"edge-1": ("edgemesh.io/pool", "site-a"), "edge-2": ("edgemesh.io/pool", "site-a"),
               "edge-3": ("apps.openyurt.io/nodepool", "site-b")}


def _node(name: str, topology: Topology) -> dict[str, Any]:
    key, pool = POOL_LABELS[name]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name,
        "labels": {"node-role.kubernetes.io/edge": "", "topology.kubernetes.io/zone": "z1",
                   key: pool},
        "annotations": {"edgemesh.io/hub-address": f"{LOOPBACK}:{topology.edges[name]['hub']}"},
    }}


def _service(name: str, ip: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                     **spec}}


def _slices(service: str, topology: Topology, *pods: tuple[str, str]) -> list[dict[str, Any]]:
    """One EndpointSlice per (pod, node): the pods listen on different loopback ports, and a
    slice lists one port number for all its endpoints."""
    return [
        {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-{index}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": topology.pods[pod], "protocol": "TCP"}],
            "endpoints": [{"addresses": [LOOPBACK], "nodeName": node, "zone": "z1",
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}}],
        }
        for index, (pod, node) in enumerate(pods)
    ]


def catalog(topology: Topology) -> list[dict[str, Any]]:
    both = (("pod-2", "edge-2"), ("pod-3", "edge-3"))
    return [
        *(_node(name, topology) for name in EDGES),
        _service("near", "10.96.1.1", trafficDistribution="PreferSameZone"),
        *_slices("near", topology, *both),
        _service("plain", "10.96.1.2"),
        *_slices("plain", topology, *both),
        _service("zonal", "10.96.1.3", trafficDistribution="PreferClose"),
        *_slices("zonal", topology, *both),
        _service("node-local", "10.96.1.4", internalTrafficPolicy="Local"),
        *_slices("node-local", topology, ("pod-2", "edge-2")),
    ]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory: Path = tmp_path_factory.mktemp("topology")
    topology = Topology.allocate(EDGES, PODS, [])
    path = directory / "catalog.yaml"
    write_catalog(path, catalog(topology))
    instance = Mesh(directory, topology, path, tls=False)
    try:
        instance.start_pods(wait=False)
        instance.start_router(wait=False)
        for name in EDGES:
            instance.start_edge(name, wait=False)
        instance.wait_pods()
        instance.wait_healthy(instance.procs["router"])
        instance.wait_edges_acked(EDGES)
        yield instance
    finally:
        instance.stop_all()


def get(mesh: Mesh, via: str, service: str) -> Response:
    return request(mesh.proxy(via), "GET", "/", [("Host", service)], timeout=10)


def pods_answering(mesh: Mesh, via: str, service: str, count: int = 12) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = get(mesh, via, service)
        assert response.status == 200, (response.status, response.body[:200])
        seen[response.header("X-Pod") or "?"] += 1
    return seen


@pytest.mark.parametrize("service", ["near", "zonal", "plain"])
def test_the_same_pool_is_chosen_before_the_rest_of_the_zone(mesh: Mesh, service: str) -> None:
    """edge-1 has no pod: of the two pods in its zone, only the one in its pool answers
    (PreferSameZone, PreferClose, and the default); edge-3 keeps to its own pool."""
    assert pods_answering(mesh, "edge-1", service) == Counter({"pod-2": 12})
    assert pods_answering(mesh, "edge-3", service) == Counter({"pod-3": 12})


def test_local_traffic_policy_answers_503_no_endpoint_off_the_node(mesh: Mesh) -> None:
    for via in ("edge-1", "edge-3"):
        response = get(mesh, via, "node-local")
        assert response.status == 503
        assert response.header("X-Edgemesh-Error") == "no-endpoint"
        assert b"internalTrafficPolicy: Local" in response.body
    assert pods_answering(mesh, "edge-2", "node-local", count=3) == Counter({"pod-2": 3})
