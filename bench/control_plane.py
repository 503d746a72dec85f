"""Control-plane benchmark: from a change in the Kubernetes API to every edge's ack.

    PYTHONPATH=. /work/venv/bin/python bench/control_plane.py [--services 1000]
        [--endpoints 5] [--edges 50] [--changes 200] [--rollout 500] [--json FILE]
        [--pools 1] [--edge-scope all] [--trim]

What runs:
- the test API server (``edgemesh.testing.KubeApiServer``) in this process, holding
  ``--services`` Services, one EndpointSlice each with ``--endpoints`` endpoints spread over
  ``--edges`` edge Nodes;
- the router, a real ``twistd edgemesh-router --kubeconfig ... --insecure --no-controller``
  process (its CPU and RSS are what we report, read from /proc);
- ``--edges`` simulated edges in this process: EnvelopeLinks to the router's tunnel that
  apply snapshots and deltas with the edge's own code (``catalog_from_wire``,
  ``delta_from_wire``, ``apply_delta``) and ack at once (no disk: that is the edges' cost,
  not the control plane's).

What is measured:
1. ``--changes`` single changes, one at a time (a random slice's first address is replaced,
   0.1-0.3 s apart): the time from the API write to the moment the last edge acks a catalog
   that holds it; p50, p90, p99, max.
2. A rollout: ``--rollout`` slices changed back to back; the time until every edge has all
   of them, and the pushes each edge received (coalescing).
3. The router's CPU seconds over each phase and its RSS (VmRSS, VmHWM).

Need-based push (issue 14): ``--pools N`` puts Service ``i`` in namespace ``site-{i % N}``;
``--edge-scope`` and ``--trim`` (``--edge-endpoints trimmed``, the edges announce it) go to
the router.  A change then counts as acked when every edge that *needs* it holds it: the
edges whose view has the Service (``local``: the edges of its site), and with ``--trim`` only
the edge that runs the pod (the others' aggregate is alike: they receive nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgemesh.catalog import (
    Catalog,
    apply_delta,
    catalog_from_wire,
    delta_from_wire,
)
from edgemesh.testing import (
    KubeApiServer,
    make_endpoint_slice,
    make_node,
    make_service,
)
from edgemesh.transports import EnvelopeLink
from edgemesh.wire import TRIM_SETTING, CatalogPush, encode_ack

TWISTD = [sys.executable, "-c",
          ("import ctypes, signal\n"
          "try:\n"
          "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # die with the benchmark (Linux)\n"
          "except Exception:\n"
          "    pass\n"
          "from twisted.scripts.twistd import run\nrun()")]


def router_revision(admin: int) -> int:
    """The router's catalog revision (0 before its first catalog, or when unreachable);
    a short blocking call on loopback."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=1) as response:
            revision: int = json.loads(response.read())["catalog_revision"]
            return revision
    except OSError:
        return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1]) / 1024
    return out


def say(*parts: object, **kwargs: Any) -> None:
    print(*parts, **kwargs, flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class SimEdge:
    """An edge's catalog follower without the disk: apply, ack, note what it holds."""

    def __init__(self, name: str, bench: Bench) -> None:
        self.name = name
        self.bench = bench
        self.catalog: Catalog | None = None
        self.pushes = 0
        self.ready: defer.Deferred[None] = defer.Deferred()

    def link_ready(self, link: EnvelopeLink) -> None:
        pass

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        if not self.bench.stopping:
            say(f"{self.name}: link lost: {reason}", file=sys.stderr)

    def inbound(self, link: EnvelopeLink, request: Any, responder: Any) -> Any:
        raise RuntimeError("no exchanges in this benchmark")

    def control(self, link: EnvelopeLink, frame: Any) -> None:
        if not isinstance(frame, CatalogPush):
            return
        self.pushes += 1
        # Real edges decode and apply in parallel, each on its own machine; 50 of them in one
        # process would queue 50 times the work.  So every edge receives, and acks, its own
        # push, but the work of turning (what it had, what it got) into a catalog is done
        # once per distinct push and shared (timed: that is one edge's cost).
        base = -1 if self.catalog is None or frame.kind == "snapshot" else self.catalog.revision
        key = (frame.kind, base, frame.revision, self.bench.view_of(self.name))
        made = self.bench.applied.get(key)
        if made is None:
            started = time.perf_counter()
            if frame.kind == "snapshot":
                made = catalog_from_wire(frame.payload).with_revision(frame.revision)
            else:
                assert self.catalog is not None
                made = apply_delta(self.catalog, delta_from_wire(frame.payload))
            self.bench.apply_ms[frame.kind].append((time.perf_counter() - started) * 1000)
            self.bench.applied[key] = made
        self.catalog = made
        link.send_control(encode_ack(frame.revision))
        if not self.ready.called:
            self.ready.callback(None)
        self.bench.edge_has(self, self.catalog)


class Bench:
    def __init__(self, args: argparse.Namespace, reactor: Any) -> None:
        self.args = args
        self.reactor = reactor
        self.rng = random.Random(1)
        self.stopping = False
        self.edges: list[SimEdge] = []
        self.pending: dict[int, tuple[str, str, float, set[str]]] = {}
        """change id → (service key, new address, t0, edges still without it)."""
        self.done: dict[int, float] = {}
        self.applied: dict[tuple[str, int, int, object], Catalog] = {}
        self.apply_ms: dict[str, list[float]] = {"snapshot": [], "delta": []}
        self.waiters: dict[int, defer.Deferred[None]] = {}

    def view_of(self, edge: str) -> object:
        """Edges with equal keys receive the same pushes (their work is shared)."""
        a = self.args
        if a.trim:
            return edge
        return None if a.edge_scope == "all" else int(edge.split("-")[1]) % a.pools

    def needing(self, index: int) -> set[str]:
        """The edges that must hold a change to svc-index."""
        a = self.args
        if a.trim:
            return {f"edge-{index % a.edges}"}
        if a.edge_scope == "all":
            return {e.name for e in self.edges}
        return {e.name for e in self.edges
                if int(e.name.split("-")[1]) % a.pools == index % a.pools}

    # -- the simulated edges report -----------------------------------------------------

    def edge_has(self, edge: SimEdge, catalog: Catalog) -> None:
        now = time.monotonic()
        for change, (key, address, t0, missing) in list(self.pending.items()):
            if edge.name not in missing:
                continue
            service = catalog.services.get(key)
            if service is None:
                continue
            if any(e.host == address for endpoints in service.endpoints.values()
                   for e in endpoints):
                missing.discard(edge.name)
                if not missing:
                    del self.pending[change]
                    self.done[change] = now - t0
                    waiter = self.waiters.pop(change, None)
                    if waiter is not None:
                        waiter.callback(None)

    # -- the API side --------------------------------------------------------------------

    def populate(self, server: KubeApiServer) -> None:
        a = self.args
        for i in range(a.edges):
            server.create(make_node(f"edge-{i}", edge=True,
                                    internal_ip=f"10.0.{i // 250}.{i % 250 + 1}",
                                    hub_address=f"10.0.{i // 250}.{i % 250 + 1}:7701"))
        for i in range(a.services):
            namespace = "default" if a.pools == 1 else f"site-{i % a.pools}"
            server.create(make_service(f"svc-{i}", namespace,
                                       cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}"))
            addresses = [f"10.{100 + i // 250}.{i % 250}.{j + 1}" for j in range(a.endpoints)]
            server.create(make_endpoint_slice(f"svc-{i}", addresses, namespace,
                                              node_name=f"edge-{i % a.edges}"))
        self.generation = 0

    def change(self, server: KubeApiServer, index: int) -> int:
        """Give svc-index's slice a new first address; returns the change id."""
        self.generation += 1
        change = self.generation
        name = f"svc-{index}"
        namespace = "default" if self.args.pools == 1 else f"site-{index % self.args.pools}"
        current = server.get("endpointslices", f"{name}-slice", namespace=namespace)
        address = f"172.{16 + change // 65000}.{change // 250 % 260 % 256}.{change % 250 + 1}"
        current["endpoints"][0]["addresses"] = [address]
        self.pending[change] = (f"{namespace}/{name}", address, time.monotonic(),
                                self.needing(index))
        server.replace(current)
        return change


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args, reactor)
    server = KubeApiServer(reactor, history_size=max(5000, 4 * args.rollout),
                           bookmark_interval=60.0)
    await server.start()
    started = time.monotonic()
    bench.populate(server)
    say(f"API server: {args.services} services x {args.endpoints} endpoints, "
          f"{args.edges} edge nodes ({time.monotonic() - started:.1f}s)")
    workdir = Path(tempfile.mkdtemp(prefix="edgemesh-cp-bench-"))
    kubeconfig = server.write_kubeconfig(str(workdir / "kubeconfig"))
    tunnel, http, admin = free_port(), free_port(), free_port()
    log = workdir / "router.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stderr = (workdir / "router.stderr").open("wb")
    router = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurements
        [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "edgemesh-router",
         "--kubeconfig", kubeconfig, "--insecure", "--no-controller",
         "--tunnel", f"tcp:{tunnel}:interface=127.0.0.1",
         "--http", f"tcp:{http}:interface=127.0.0.1",
         "--admin", f"tcp:{admin}:interface=127.0.0.1", "--edge-scope", args.edge_scope,
         "--edge-endpoints", "trimmed" if args.trim else "all",
         "--heartbeat-timeout", str(args.heartbeat_timeout)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    result: dict[str, Any] = {"services": args.services, "endpoints": args.endpoints,
                              "edges": args.edges, "pools": args.pools,
                              "edge_scope": args.edge_scope, "trim": args.trim}
    try:
        # Wait for the router's first catalog (it refuses edges it does not know yet).
        for _ in range(1200):
            if router.poll() is not None:
                raise RuntimeError(f"the router exited; see {log} and {stderr.name}")
            if router_revision(admin) > 0:
                break
            await task.deferLater(reactor, 0.05)
        t0 = time.monotonic()
        connecting = []
        for i in range(args.edges):
            edge = SimEdge(f"edge-{i}", bench)
            bench.edges.append(edge)
            link = EnvelopeLink(reactor, edge, node=edge.name, role="edge", client=True,
                                heartbeat_timeout=args.heartbeat_timeout)
            if args.trim:
                link.hello_settings = {TRIM_SETTING: 1}
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", tunnel)
            connecting.append(connectProtocol(endpoint, link))
        # All at once: every hello leaves before the snapshots keep this process busy.
        links = await defer.gatherResults(connecting)
        await defer.gatherResults([e.ready for e in bench.edges])
        result["initial_sync_s"] = round(time.monotonic() - t0, 3)
        say(f"{args.edges} edges synced (snapshot of {args.services} services) in "
              f"{result['initial_sync_s']}s")
        await task.deferLater(reactor, 1.0)
        cpu0, wall0 = proc_cpu(router.pid), time.monotonic()

        # 1. single changes, one at a time
        for _ in range(args.changes):
            change = bench.change(server, bench.rng.randrange(args.services))
            waiter: defer.Deferred[None] = defer.Deferred()
            bench.waiters[change] = waiter
            waiter.addTimeout(10, reactor)
            await waiter
            await task.deferLater(reactor, bench.rng.uniform(0.1, 0.3))
        cpu1, wall1 = proc_cpu(router.pid), time.monotonic()
        latencies = [bench.done[c] * 1000 for c in sorted(bench.done)]
        result["single"] = {
            "changes": len(latencies),
            "p50_ms": round(percentile(latencies, 50), 1),
            "p90_ms": round(percentile(latencies, 90), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "max_ms": round(max(latencies), 1),
            "mean_ms": round(statistics.mean(latencies), 1),
            "router_cpu_s": round(cpu1 - cpu0, 2),
            "router_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        }
        say("single changes:", json.dumps(result["single"]))

        # 2. a rollout: many slices changed back to back
        pushes_before = {e.name: e.pushes for e in bench.edges}
        bench.done.clear()
        cpu2, start = proc_cpu(router.pid), time.monotonic()
        changes = [bench.change(server, i % args.services) for i in range(args.rollout)]
        last = changes[-1]
        while len(bench.done) < len(changes):
            await task.deferLater(reactor, 0.01)
            if time.monotonic() - start > 60:
                raise TimeoutError(f"rollout: {len(bench.done)}/{len(changes)} after 60s")
        took = time.monotonic() - start
        cpu3 = proc_cpu(router.pid)
        per_edge = [e.pushes - pushes_before[e.name] for e in bench.edges]
        result["rollout"] = {
            "changes": args.rollout,
            "all_acked_s": round(took, 3),
            "last_change_ms": round(bench.done[last] * 1000, 1),
            "pushes_per_edge_max": max(per_edge),
            "pushes_per_edge_mean": round(statistics.mean(per_edge), 1),
            "router_cpu_s": round(cpu3 - cpu2, 2),
        }
        say("rollout:", json.dumps(result["rollout"]))
        result["edge_apply_ms"] = {
            kind: {"count": len(values), "p50": round(percentile(values, 50), 2),
                   "max": round(max(values), 2)}
            for kind, values in bench.apply_ms.items() if values
        }
        say("one edge's work per push (ms):", json.dumps(result["edge_apply_ms"]))
        result["router_memory_mib"] = {k: round(v, 1) for k, v in proc_mem(router.pid).items()}
        say("router memory (MiB):", json.dumps(result["router_memory_mib"]))
        bench.stopping = True
        for link in links:
            link.close_now("benchmark over")
    finally:
        bench.stopping = True
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(10)
        except subprocess.TimeoutExpired:
            router.kill()
            router.wait(5)
        await server.stop()
    result["router_log"] = str(log)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--rollout", type=int, default=500)
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--pools", type=int, default=1)
    parser.add_argument("--edge-scope", type=str, default="all")
    parser.add_argument("--trim", action="store_true")
    parser.add_argument("--heartbeat-timeout", type=float, default=15.0,
                        help="router's and links': 1000 edges in this one process may be "
                             "busier than 6 s while they sync")
    args = parser.parse_args()

    def main_(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            outcome = await run(reactor, args)
            if args.json:
                Path(args.json).write_text(json.dumps(outcome, indent=1) + "\n")

        return defer.Deferred.fromCoroutine(go())

    task.react(main_)


if __name__ == "__main__":
    main()
