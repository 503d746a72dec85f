"""Fixtures for the integration tests: one mesh of real ``twistd`` processes per session.

The session mesh is a router, edge-1 to edge-4 and one process of sample pods, all on
127.0.0.1 with free ports, started at once and waited for (healthz, then every edge's ack of
the router's catalog).  The catalog is generated into the session's tmp directory, beside
the logs and state directories.  Every process is stopped by PID at the end (SIGTERM, then
SIGKILL); when a test fails, the tails of every process log are added to its report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit import HEADER_TIMEOUT, Mesh, ServiceSpec, Topology, catalog_objects, write_catalog

EDGES = ("edge-1", "edge-2", "edge-3", "edge-4")
"""edge-1, edge-2: the mesh most tests use.  edge-3: runs the slow pod, with
--request-timeout 1 and --stream-idle-timeout 2.  edge-4: killed by the peer-down test."""
EDGE_ARGS = {"edge-3": ("--request-timeout", "1", "--stream-idle-timeout", "2")}
NEVER_STARTED_EDGE = "edge-5"
"""In the catalog, its hub address a port where nothing listens."""

_current: Mesh | None = None
_finished: list[Mesh] = []


def services(t: Topology) -> list[ServiceSpec]:
    pods, dead = t.pods, t.dead
    return [
        ServiceSpec("pod-e1", "edge-1", "pod-e1-0", "10.96.0.11", 80, pods["pod-e1-0"]),
        ServiceSpec("pod-e2", "edge-2", "pod-e2-0", "10.96.0.12", 80, pods["pod-e2-0"]),
        # The router reaches a cloud service at clusterIP:port, as a real ClusterIP: here
        # the pod itself, so the service port is the pod's port.
        ServiceSpec("pod-cloud", "cloud-1", "pod-cloud-0", "127.0.0.1", t.cloud_port,
                    t.cloud_port),
        ServiceSpec("slow-e3", "edge-3", "slow-e3-0", "10.96.0.13", 80, pods["slow-e3-0"]),
        ServiceSpec("pod-e4", "edge-4", "pod-e4-0", "10.96.0.14", 80, pods["pod-e4-0"]),
        ServiceSpec("pod-e5", NEVER_STARTED_EDGE, "pod-e5-0", "10.96.0.15", 80,
                    dead["refused-e1"]),
        ServiceSpec("no-ready", "edge-2", "pod-e2-0", "10.96.0.20", 80, pods["pod-e2-0"],
                    ready=False),
        ServiceSpec("refused-e1", "edge-1", "gone-e1", "10.96.0.21", 80, dead["refused-e1"]),
        ServiceSpec("refused-e2", "edge-2", "gone-e2", "10.96.0.22", 80, dead["refused-e2"]),
        # Origins that answer with "Connection: close": the mesh never has one pooled.
        ServiceSpec("close-e1", "edge-1", "close-e1-0", "10.96.0.31", 80, pods["close-e1-0"]),
        ServiceSpec("close-e2", "edge-2", "close-e2-0", "10.96.0.32", 80, pods["close-e2-0"]),
        ServiceSpec("close-cloud", "cloud-1", "close-cloud-0", "127.0.0.2",
                    pods["close-cloud-0"], pods["close-cloud-0"]),
        # Pods a test serves itself, slow to accept (test_uploads.py): nothing listens there
        # otherwise.
        ServiceSpec("gate-e2", "edge-2", "gate-e2-0", "10.96.0.41", 80, dead["gate-e2"]),
        ServiceSpec("gate-cloud", "cloud-1", "gate-cloud-0", "127.0.0.3", dead["gate-cloud"],
                    dead["gate-cloud"]),
    ]


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    global _current
    directory = tmp_path_factory.mktemp("mesh")
    topology = Topology.allocate(
        EDGES,
        ["pod-e1-0", "pod-e2-0", "pod-cloud-0", "slow-e3-0", "pod-e4-0",
         "close-e1-0", "close-e2-0", "close-cloud-0"],
        ["refused-e1", "refused-e2", NEVER_STARTED_EDGE, "gate-e2", "gate-cloud"],
    )
    topology.cloud_port = topology.pods["pod-cloud-0"]
    catalog = directory / "catalog.yaml"
    write_catalog(catalog, catalog_objects(topology, [*EDGES, NEVER_STARTED_EDGE],
                                           services(topology)))
    instance = Mesh(directory, topology, catalog)
    _current = instance
    try:
        # All at once (each twistd takes about a second to import); the edges retry
        # their tunnel until the router listens.
        instance.start_pods(wait=False)
        instance.start_router("--header-timeout", f"{HEADER_TIMEOUT:g}", wait=False)
        for name in EDGES:
            instance.start_edge(name, "--header-timeout", f"{HEADER_TIMEOUT:g}",
                                *EDGE_ARGS.get(name, ()), wait=False)
        instance.wait_pods()
        instance.wait_healthy(instance.procs["router"])
        instance.wait_edges_acked(EDGES)
        yield instance
    finally:
        instance.stop_all()
        _current = None
        _finished.append(instance)


@pytest.fixture
def live(mesh: Mesh) -> Iterator[Mesh]:
    """The session mesh, checked to be still running before and after the test, and its
    logs free of tracebacks and critical errors written during the test."""
    mesh.check_alive()
    sizes = mesh.log_sizes()
    yield mesh
    mesh.check_alive()
    problems = mesh.new_problems(sizes)
    assert not problems, "the mesh logged failures:\n" + "\n".join(problems[:40])


# -- reporting -----------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything here spawns processes: that is what the project's `slow` marker means.
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _current is not None:
        report.sections.append(("mesh process logs (tails)", _current.tails()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = [(p.name, p.peak_rss_kib) for m in _finished for p in m.stopped if p.mesh]
    if not rows:
        return
    terminalreporter.section("edgemesh processes: peak RSS (VmHWM)")
    for name, kib in rows:
        shown = "?" if kib is None else f"{kib / 1024:.1f} MiB"
        terminalreporter.write_line(f"{name:10} {shown}")
    if os.environ.get("EDGEMESH_KEEP_LOGS"):
        for m in _finished:
            terminalreporter.write_line(f"logs in {m.directory}")
