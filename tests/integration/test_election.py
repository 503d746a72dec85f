"""Router replicas elect the EndpointSlice controller's leader through a Lease: three real
``twistd edgemesh-router`` processes against the test API server (``edgemesh.testing``, which
serves Leases with resourceVersion conflicts).  One leads; kill -9 it and another leads within
the lease duration plus a retry; stop the new one cleanly and it releases the Lease, so the
next takes over at once.  Only the leader writes EndpointSlices."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import LOOPBACK, PROBLEM_MARKS, Mesh, Proc, Topology, admin_get, free_ports

from edgemesh.testing import ThreadedKubeApiServer, make_endpoint_slice, make_node, make_service

pytestmark = pytest.mark.slow

REPLICAS = ("r1", "r2", "r3")
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 4.0, 3.0, 0.5
SLACK = 3.0
"""Seconds for process scheduling and the test's polling on a loaded two-core machine."""


class Replicas(Mesh):
    """meshkit's processes, with several routers (one name and three ports each)."""

    kubeconfig: Path
    ports: dict[str, tuple[int, int, int]]

    def start_replica(self, name: str) -> Proc:
        tunnel, http, admin = self.ports[name]
        argv = ["edgemesh-router", "--kubeconfig", str(self.kubeconfig), "--insecure",
                "--tunnel", f"tcp:{tunnel}:interface={LOOPBACK}",
                "--http", f"tcp:{http}:interface={LOOPBACK}",
                "--admin", f"tcp:{admin}:interface={LOOPBACK}",
                "--advertise", LOOPBACK, "--leader-identity", name,
                "--lease-namespace", "edgemesh",
                "--lease-duration", str(LEASE_DURATION), "--renew-deadline", str(RENEW_DEADLINE),
                "--retry-period", str(RETRY_PERIOD)]
        proc = self._spawn(name, argv, admin, mesh=True)
        self.wait_healthy(proc)
        return proc

    def leader_status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = admin_get(self.ports[name][2], "/status")[1]
        return status

    def leaders(self) -> list[str]:
        alive = [n for n in REPLICAS if n in self.procs and self.procs[n].alive()]
        return [n for n in alive if self.leader_status(n)["leader"]["leader"]]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replicas, ThreadedKubeApiServer]]:
    with ThreadedKubeApiServer(token="edgemesh-test") as api:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "edgemesh"}})
        api.create(make_node("edge-1", edge=True, internal_ip=LOOPBACK,
                             hub_address=f"{LOOPBACK}:7701"))
        api.create(make_service("web"))
        api.create(make_endpoint_slice("web", [LOOPBACK], node_name="edge-1"))
        mesh = Replicas(tmp_path, Topology.allocate([], [], []), tmp_path / "unused.yaml",
                        tls=False)
        mesh.kubeconfig = Path(api.write_kubeconfig(tmp_path / "kubeconfig"))
        ports = iter(free_ports(3 * len(REPLICAS)))
        mesh.ports = {n: (next(ports), next(ports), next(ports)) for n in REPLICAS}
        try:
            for name in REPLICAS:
                mesh.start_replica(name)
            yield mesh, api
        finally:
            mesh.stop_all()


def wait_for_one_leader(mesh: Replicas, deadline: float) -> tuple[str, float]:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        leaders = mesh.leaders()
        assert len(leaders) <= 1, leaders
        if leaders:
            return leaders[0], time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"no leader within {deadline}s\n{mesh.tails()}")


def holder(api: ThreadedKubeApiServer) -> str:
    lease = api.get("leases", "edgemesh-router", namespace="edgemesh")
    return str(lease["spec"].get("holderIdentity") or "")


def test_one_leader_takes_over_after_a_kill_and_a_clean_stop_hands_over_at_once(
        replicas: tuple[Replicas, ThreadedKubeApiServer]) -> None:
    mesh, api = replicas
    first, _ = wait_for_one_leader(mesh, LEASE_DURATION + SLACK)
    assert holder(api) == first
    # Only the leader's controller writes: the slice for web exists, written once.
    mesh.wait_for("the leader's EndpointSlice", lambda: any(
        s["metadata"]["name"] == "web-edgemesh"
        for s in api.list("endpointslices", namespace="default")), mesh.procs.values())
    writes = {n: mesh.leader_status(n)["controller"]["create"] for n in REPLICAS}
    assert writes[first] >= 1 and all(writes[n] == 0 for n in REPLICAS if n != first), writes

    os.kill(mesh.procs[first].pid, signal.SIGKILL)
    mesh.procs[first].popen.wait(10)
    second, took = wait_for_one_leader(mesh, LEASE_DURATION + 2 * RETRY_PERIOD * 2.2 + SLACK)
    assert second != first
    assert took <= LEASE_DURATION + 2 * RETRY_PERIOD * 2.2 + SLACK
    assert holder(api) == second
    lease = api.get("leases", "edgemesh-router", namespace="edgemesh")
    assert lease["spec"]["leaseTransitions"] >= 1

    mesh.stop(second)  # SIGTERM: releases the Lease on the way out
    third, took = wait_for_one_leader(mesh, 2 * RETRY_PERIOD * 2.2 + SLACK)
    assert third not in (first, second)
    assert took < LEASE_DURATION, "a released Lease is taken without waiting for it to expire"


def test_a_leader_stops_cleanly_over_https(tmp_path: Path) -> None:
    """The Lease's release is the last API response a stopping leader reads, over TLS.  The
    reactor's shutdown must not go on from inside that read: its disconnectAll would close
    the connection under Twisted's TLS layer, which then failed with an Unhandled Error
    ('NoneType' object has no attribute 'bio_read') at every leader's stop."""
    with ThreadedKubeApiServer(tls=True, bootstrap=True) as api:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "edgemesh"}})
        mesh = Replicas(tmp_path, Topology.allocate([], [], []), tmp_path / "unused.yaml",
                        tls=False)
        mesh.kubeconfig = Path(api.write_kubeconfig(tmp_path / "kubeconfig"))
        mesh.ports = {"r1": tuple(free_ports(3))}  # type: ignore[dict-item]
        try:
            proc = mesh.start_replica("r1")
            wait_for_one_leader(mesh, LEASE_DURATION + SLACK)
            mesh.stop("r1")
            log = proc.log.read_text()
            assert "released lease edgemesh/edgemesh-router" in log, log[-3000:]
            problems = [line for line in log.splitlines()
                        if any(mark in line for mark in PROBLEM_MARKS)]
            assert not problems, "\n".join(problems)
        finally:
            mesh.stop_all()
