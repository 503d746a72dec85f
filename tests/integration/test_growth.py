"""Issue 15: what 32 concurrent 1 MiB responses edge → edge add to each edge's peak RSS.

A fresh mesh (router, two edges, plaintext links as bench/run.sh's p2 row), 32 curl clients
at once through edge-1 to a pod on edge-2: small responses first, then 1 MiB ones.  The
VmHWM of each edge after the 1 MiB round minus after the small round is what the bodies
cost at the peak; bench/run.sh measures the same ("growth (last − first body)", target
≤ +4 MiB).  The bound here is half as much again, for a loaded CI machine: what it guards
against is the old order of magnitude (a 512 KiB window per stream held by edge-1, a 256 KiB
read per pod connection held by edge-2: +9 to +12 MiB) and a read per stream waiting for
credit again (edge-2 holds at most 32 KiB of each: 2.2-3.3 MiB here, 3.1-3.3 before,
bench/results-2026-12-04.md section 1).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from meshkit import LOOPBACK, Mesh, ServiceSpec, Topology, catalog_objects, write_catalog

EDGES = ["edge-1", "edge-2"]
CONNECTIONS = 32
ROUNDS = 4
BIG = 1 << 20
GROWTH_BOUND_KIB = 6 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]


@pytest.fixture(scope="module")
def growth_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("growth")
    topology = Topology.allocate(EDGES, ["big-e2-0"], [])
    spec = ServiceSpec("big", "edge-2", "big-e2-0", "10.96.15.1", 80,
                       topology.pods["big-e2-0"])
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, catalog_objects(topology, EDGES, [spec]))
    mesh = Mesh(directory, topology, catalog, tls=False)
    try:
        mesh.start_all(EDGES)
        yield mesh
    finally:
        mesh.stop_all()


def _round(mesh: Mesh, size: int) -> None:
    """CONNECTIONS curl processes at once, each ROUNDS GETs of ``size`` bytes on one
    keep-alive connection; every response complete and 200."""
    url = f"http://{LOOPBACK}:{mesh.proxy('edge-1')}/bytes?n={size}"
    written = "%{http_code} %{size_download}\\n"
    command = ["curl", "-sS", "--max-time", "120", "-H", "Host: big", "-w", written]
    for _ in range(ROUNDS):
        command += ["-o", "/dev/null", url]
    clients = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(CONNECTIONS)]
    try:
        for client in clients:
            out, err = client.communicate(timeout=300)
            assert client.returncode == 0, f"curl: {client.returncode} {err}\n{mesh.tails()}"
            assert out.split("\n")[:ROUNDS] == [f"200 {size}"] * ROUNDS, out
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()


def test_thirty_two_1mib_bodies_edge_to_edge_grow_peak_rss_by_a_bounded_amount(
        growth_mesh: Mesh) -> None:
    _round(growth_mesh, 13)
    _round(growth_mesh, 13)
    small = {name: growth_mesh.procs[name].status_kib("VmHWM") for name in EDGES}
    _round(growth_mesh, BIG)
    big = {name: growth_mesh.procs[name].status_kib("VmHWM") for name in EDGES}
    growth = {}
    for name in EDGES:
        before, after = small[name], big[name]
        assert before is not None and after is not None, growth_mesh.tails()
        growth[name] = after - before
    assert all(kib <= GROWTH_BOUND_KIB for kib in growth.values()), growth
    # The bodies went through (the round checked each size): the figure is not that of an
    # idle mesh, which would pass any bound.
    assert growth_mesh.procs["edge-1"].alive() and growth_mesh.procs["edge-2"].alive()
