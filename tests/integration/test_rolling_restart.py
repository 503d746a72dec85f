"""A rolling restart of three router replicas under a steady 200 req/s edge → cloud load (issue
13): each replica in turn gets SIGTERM, exits after its drain, and is started again (as a
Deployment's rolling update does), while two edges' apps send paced requests to a cloud pod
through their edge proxies.  Every request must be answered 200 by the pod (none was in flight
to a pod that died: the pod never dies here), and the achieved rate must stay at 180/s or more.

The mesh is ``test_router_replicas``'s (three replicas with router links and mutual TLS, two
edges each listing all three, a file catalog), started anew for this module.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from meshkit import admin_get
from test_router_replicas import ROUTERS, Replicas, pod_of, replicas

__all__ = ["replicas"]  # the fixture, used by name

pytestmark = pytest.mark.slow

RATE = 200.0
"""Requests a second, paced over both edges."""
MIN_RATE = 180.0
WORKERS = 24
MAX_REQUESTS = 12000
"""A bound on the load (60 s at RATE)."""
RESTART_DEADLINE = 20.0


class PacedLoad:
    """Request i leaves at ``start + i / RATE`` (from whichever worker is free), each on a
    fresh connection to an edge proxy; every outcome is kept."""

    def __init__(self, targets: list[tuple[int, str, str]]) -> None:
        self.targets = targets
        self.outcomes: list[object] = []
        self.lock = threading.Lock()
        self.next = 0
        self.stop = threading.Event()
        self.start = 0.0
        self.ended = 0.0
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(WORKERS)]

    def _take(self) -> int | None:
        with self.lock:
            if self.stop.is_set() or self.next >= MAX_REQUESTS:
                return None
            index, self.next = self.next, self.next + 1
            return index

    def _work(self) -> None:
        while (index := self._take()) is not None:
            due = self.start + index / RATE
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing, not readiness
            port, host, pod = self.targets[index % len(self.targets)]
            try:
                outcome: object = pod_of(port, host, timeout=10.0)
                if outcome == (200, pod):
                    outcome = "ok"
            except OSError as error:
                outcome = repr(error)
            with self.lock:
                self.outcomes.append(outcome)

    def run(self) -> None:
        self.start = time.monotonic()
        for thread in self.threads:
            thread.start()

    def finish(self) -> float:
        """Stop sending, wait for the answers; the achieved rate (answers a second)."""
        self.stop.set()
        sent_until = time.monotonic()
        for thread in self.threads:
            thread.join(15)
        self.ended = sent_until
        return len(self.outcomes) / (sent_until - self.start)


def test_rolling_restart_under_load_loses_nothing(replicas: Replicas) -> None:
    mesh = replicas.mesh
    targets = [(mesh.proxy(edge), "pod-cloud", "pod-cloud-0") for edge in ("edge-a", "edge-b")]
    # Warm the path (first requests pay for connection pools and TLS links).
    for port, host, pod in targets:
        assert pod_of(port, host) == (200, pod)
    load = PacedLoad(targets)
    steps: list[tuple[str, float]] = []
    load.run()
    try:
        time.sleep(1.0)  # steady load before the first step
        for name in ROUTERS:
            began = time.monotonic()
            proc = mesh.procs[name]
            proc.popen.send_signal(signal.SIGTERM)
            proc.popen.wait(RESTART_DEADLINE)
            del mesh.procs[name]
            mesh.stopped.append(proc)
            replicas.start_router(name)
            mesh.wait_healthy(mesh.procs[name])

            def linked() -> bool:
                return all(replicas.admin(r, "/readyz")["routers"]["peers"] == len(ROUTERS) - 1
                           for r in ROUTERS)

            mesh.wait_for(f"{name} back and linked to every replica", linked,
                          mesh.procs.values(), deadline=RESTART_DEADLINE)
            steps.append((name, round(time.monotonic() - began, 2)))
        time.sleep(1.0)  # and after the last
    finally:
        rate = load.finish()
    failures = [o for o in load.outcomes if o != "ok"]
    duration = round(load.ended - load.start, 1)
    print(f"rolling restart {steps}: {len(load.outcomes)} requests in {duration}s "
          f"({rate:.0f}/s), {len(failures)} failed")
    assert failures == [], (failures[:5], mesh.tails())
    assert rate >= MIN_RATE, f"{rate:.0f} requests/s"
    # Every edge is still held and known to every replica, and the edges did move.
    for router in ROUTERS:
        assert set(replicas.holders(router)) == {"edge-a", "edge-b"}
    moves = {edge: admin_get(mesh.topology.edges[edge]["admin"], "/status")[1]["tunnel"]["moves"]
             for edge in ("edge-a", "edge-b")}
    assert sum(moves.values()) >= 2 and all(moves.values()), moves
