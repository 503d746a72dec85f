"""The C heap's trims in real twistd processes (roles/_heap.HeapTrimmer,
``--malloc-trim-interval``).

A fresh plaintext mesh: a router and edge-1 trimming once an hour (so any trim seen here is
one a closed link brought), edge-2 with trims off.  Bodies of 1 MiB go edge-1 → edge-2; then
edge-2 stops, and the router (its tunnel closed) and edge-1 (its hub link closed) each count a
trim within seconds, in ``edgemesh_heap_trims_total`` on their admin API.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from meshkit import LOOPBACK, Mesh, ServiceSpec, Topology, catalog_objects, request, write_catalog

EDGES = ["edge-1", "edge-2"]
HOURLY = ("--malloc-trim-interval", "3600")
DEADLINE = 30.0
"""Seconds for a trim to show after edge-2 stops: the trim comes 2 s after the link closes
(TRIM_SETTLE); the rest is for a loaded CI machine."""

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def trim_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("trims")
    topology = Topology.allocate(EDGES, ["big-e2-0"], [])
    spec = ServiceSpec("big", "edge-2", "big-e2-0", "10.96.17.1", 80, topology.pods["big-e2-0"])
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, catalog_objects(topology, EDGES, [spec]))
    mesh = Mesh(directory, topology, catalog, tls=False)
    try:
        mesh.start_all(EDGES, *HOURLY, edge_args={
            "edge-1": HOURLY, "edge-2": ("--malloc-trim-interval", "0")})
        yield mesh
    finally:
        mesh.stop_all()


def heap_metrics(mesh: Mesh, node: str) -> dict[str, float]:
    proc = mesh.procs[node]
    assert proc.admin is not None
    text = request(proc.admin, "GET", "/metrics", [("Host", "admin")]).body.decode()
    return {name: float(value) for name, value in
            re.findall(r"^(edgemesh_heap_[a-z_]+) ([0-9.e+]+)$", text, re.MULTILINE)}


def test_a_closed_link_brings_a_trim_on_both_sides(trim_mesh: Mesh) -> None:
    assert heap_metrics(trim_mesh, "edge-2") == {}  # --malloc-trim-interval 0: no trimmer
    url = f"http://{LOOPBACK}:{trim_mesh.proxy('edge-1')}/bytes?n={1 << 20}"
    command = ["curl", "-sS", "--max-time", "60", "-H", "Host: big",
               "-w", "%{http_code}\\n", "-o", "/dev/null"]
    clients = [subprocess.Popen([*command, url, "-o", "/dev/null", url],
                                stdout=subprocess.PIPE, text=True) for _ in range(8)]
    for client in clients:
        out, _ = client.communicate(timeout=120)
        assert out.split() == ["200", "200"], trim_mesh.tails()
    before = {node: heap_metrics(trim_mesh, node) for node in ("router", "edge-1")}
    for metrics in before.values():
        assert set(metrics) == {"edgemesh_heap_trims_total",
                                "edgemesh_heap_released_bytes_total"}

    trim_mesh.stop("edge-2")
    deadline = time.monotonic() + DEADLINE
    waiting = {"router", "edge-1"}
    while waiting and time.monotonic() < deadline:
        waiting = {node for node in waiting
                   if heap_metrics(trim_mesh, node)["edgemesh_heap_trims_total"]
                   <= before[node]["edgemesh_heap_trims_total"]}
        if waiting:
            time.sleep(0.2)  # polling the metrics, with a deadline
    assert not waiting, f"no trim after edge-2's links closed: {waiting}\n{trim_mesh.tails()}"
