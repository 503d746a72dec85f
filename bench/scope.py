"""Need-based push: what each edge receives with and without a scope.

    PYTHONPATH=. /work/main/.venv/bin/python bench/scope.py [--services 1000]
        [--endpoints 5] [--edges 1000] [--pools 10] [--changes 200] [--rss]

The cluster: ``--services`` Services in ``--pools`` namespaces (``site-0`` ...), each with
``--endpoints`` endpoints on edge nodes of its own pool (an edge site runs its own apps);
``--edges`` edge nodes spread over the pools; 2 % of the Services exported to every edge.

The router's own pusher (``roles/_push.py``) pushes to ``--edges`` edges through links
that count bytes, once with ``--edge-scope all`` (every edge gets everything, as before) and
once with ``local`` (each edge: its site's namespace, the exported Services and those of
its own pods), and each of these again with trimmed endpoints (``--edge-endpoints
trimmed``: other edge nodes' pods as one aggregate per node).  Then ``--changes`` single
changes, each to one random Service's endpoints: a pod replaced (its address changes), or
with ``--change scale`` a pod added to a node that already runs one.

Printed: the snapshot bytes per edge, the bytes one change sends per edge (inside and
outside its view) and to all edges together, and the router's CPU time to push one change
to every edge.  With ``--rss`` (that only): the RssAnon of a real ``twistd edgemesh-edge``
holding the whole catalog, one site's view, and each trimmed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet.task import Clock

from edgemesh.catalog import (
    EXPORT_ANNOTATION,
    Catalog,
    Endpoint,
    Node,
    Scope,
    Service,
    ServicePort,
    scope_view,
)
from edgemesh.roles._pusher import CatalogPusher, EdgeState


class CountingLink:
    closed = False

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0

    def send_control(self, data: bytes) -> None:
        self.bytes += len(data)
        self.frames += 1


def cluster(args: argparse.Namespace, revision: int = 1) -> Catalog:
    rng = random.Random(7)
    per_pool = max(1, args.edges // args.pools)
    nodes = [Node(f"edge-{i}", True, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 7701,
                  zone=f"site-{i % args.pools}") for i in range(args.edges)]
    services = []
    for s in range(args.services):
        pool = s % args.pools
        hosts = [f"edge-{pool + args.pools * rng.randrange(per_pool)}"
                 for _ in range(args.endpoints)]
        endpoints = tuple(Endpoint(f"172.{16 + s // 65536}.{s // 256 % 256}.{j + 1}", 8080, h,
                                   pod=f"site-{pool}/svc-{s}-{j}")
                          for j, h in enumerate(hosts))
        annotations = {EXPORT_ANNOTATION: "true"} if s % 50 == 0 else {}
        services.append(Service(f"site-{pool}", f"svc-{s}", f"10.96.{s // 256}.{s % 256}",
                                (ServicePort("http", 80, 8080),), {"http": endpoints},
                                annotations))
    return Catalog(services, nodes, revision)


def changed(catalog: Catalog, index: int, revision: int, kind: str = "replace") -> Catalog:
    key = list(catalog.services)[index]
    old = catalog.services[key]
    (first, *rest) = old.endpoints["http"]
    moved = Endpoint(f"192.168.{revision // 256 % 256}.{revision % 256}", first.port,
                     first.node, pod=first.pod)
    endpoints = (moved, *rest) if kind == "replace" else (first, *rest, moved)
    new = Service(old.namespace, old.name, old.cluster_ip, old.ports,
                  {"http": endpoints}, old.annotations)
    return Catalog({**catalog.services, key: new}, catalog.nodes, revision)


def measure(args: argparse.Namespace, scope: Scope, trim: bool = False) -> dict[str, Any]:
    clock = Clock()
    state: dict[str, Catalog] = {"catalog": cluster(args)}
    pusher = CatalogPusher(clock, lambda: state["catalog"], 0.0, lambda node, _: scope)
    edges = []
    for i in range(args.edges):
        link = CountingLink()
        edge = EdgeState(f"edge-{i}", 0.0, link, trim=trim)  # type: ignore[arg-type]
        pusher.snapshot(edge)
        edges.append((edge, link))
    snapshots = [link.bytes for _, link in edges]
    rng = random.Random(11)
    inside, outside, totals, cpu = [], [], [], []
    for change in range(args.changes):
        before = [link.bytes for _, link in edges]
        state["catalog"] = changed(state["catalog"], rng.randrange(args.services), 2 + change,
                                   args.change)
        started = time.process_time()
        pusher.changed([e for e, _ in edges])
        cpu.append((time.process_time() - started) * 1000)
        sent = [link.bytes - b for (_, link), b in zip(edges, before, strict=True)]
        totals.append(sum(sent))
        inside.extend(s for s in sent if s)
        outside.append(sum(1 for s in sent if not s))
    return {
        "scope": str(scope) + (" trimmed" if trim else ""),
        "snapshot_bytes_per_edge_mean": round(statistics.mean(snapshots)),
        "snapshot_bytes_per_edge_max": max(snapshots),
        "change_bytes_to_an_edge_that_needs_it_median": round(statistics.median(inside))
        if inside else 0,
        "edges_sent_nothing_per_change_median": statistics.median(outside),
        "change_bytes_per_edge_mean": round(statistics.mean(totals) / args.edges, 1),
        "change_bytes_to_all_edges_median": round(statistics.median(totals)),
        "router_cpu_ms_per_change_median": round(statistics.median(cpu), 2),
    }


def edge_rss(catalog: Catalog, workdir: Path) -> float:
    """RssAnon (MiB) of a real edge process started from ``catalog`` (its state file)."""
    from edgemesh.catalog import CatalogStore

    state = workdir / f"state-{len(catalog.services)}"
    CatalogStore(str(state)).save(catalog)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", f"--logfile={workdir / 'edge.log'}", "edgemesh-edge", "--node",
         "edge-0", "--state-dir", str(state), "--insecure", "--proxy",
         "tcp:0:interface=127.0.0.1", "--hub", "tcp:0:interface=127.0.0.1"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:  # until its log says the catalog is loaded
            time.sleep(0.2)
            if (workdir / "edge.log").exists():
                text = (workdir / "edge.log").read_text(errors="replace")
            if "services" in text and "Site starting" in text or "listening" in text:
                break
        time.sleep(1.0)
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024
        return float("nan")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--change", choices=("replace", "scale"), default="replace")
    parser.add_argument("--rss", action="store_true")
    args = parser.parse_args()
    if args.rss:
        whole = cluster(args)
        with tempfile.TemporaryDirectory() as tmp:
            for name, scope, trim in (("all", "all", False), ("all trimmed", "all", True),
                                      ("local", "local", False),
                                      ("local trimmed", "local", True)):
                view = scope_view(whole, "edge-0", Scope.parse(scope), trim)
                print(f"edge RssAnon, {name:>13}: {edge_rss(view, Path(tmp)):.1f} MiB holding "
                      f"{len(view.services)} services")
        return
    results = {name: measure(args, Scope.parse(scope), trim)
               for name, scope, trim in (("all", "all", False), ("local", "local", False),
                                         ("all trimmed", "all", True),
                                         ("local trimmed", "local", True))}
    print(json.dumps(results, indent=1))
    base = results["all"]["snapshot_bytes_per_edge_mean"]
    for name, result in results.items():
        print(f"{name:>14}: snapshot per edge {result['snapshot_bytes_per_edge_mean']} B "
              f"({result['snapshot_bytes_per_edge_mean'] / base:.1%} of 'all'), per change "
              f"{result['change_bytes_per_edge_mean']} B per edge on average")


if __name__ == "__main__":
    main()
