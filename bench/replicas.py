"""Router replicas: per-change all-acked latency with many edges over several replicas, and
how long the edges of a killed replica take to be reachable again.

    PYTHONPATH=. /work/main/.venv/bin/python bench/replicas.py [--edges 1000] [--replicas 3]
        [--services 100] [--changes 100] [--json FILE]

What runs:
- the test API server (``edgemesh.testing.KubeApiServer``) in this process: ``--edges`` edge
  Nodes and ``--services`` Services, one EndpointSlice each;
- ``--replicas`` real ``twistd edgemesh-router`` processes on 127.0.0.1, each watching it
  (``--kubeconfig``, ``--no-controller``, ``--insecure``, ``--peer-listen`` /
  ``--peer-router``): each numbers its own revisions;
- ``--edges`` simulated edges in this process, each the edge's own tunnel code (a
  TunnelClient over a RotatingEndpoint with every replica, edge i listing replica i mod N
  first) with an EnvelopeLink whose hello says which catalog it holds (as a real edge's
  does, for a rebase) and that applies pushes with the edge's own code and acks them at once
  (no disk, no pods).  The work of applying one push is shared by the edges that receive the
  same push on the same catalog (real edges each do it on their own machine).

What is measured:
1. initial sync: from starting the edges until every replica's ``/edges`` lists every edge;
2. ``--changes`` single changes, one at a time (a random slice's address replaced, 0.1-0.3 s
   apart): from the API write until the last of all edges (on every replica) holds it; p50,
   p90, p99, max;
3. re-home: kill -9 of replica 0; from the kill until every surviving replica's ``/edges``
   lists every edge, none on the dead replica (the edges see the connection close, wait the
   tunnel's jittered backoff, dial the next replica; it announces them to the others), and
   what the moved edges were sent first (rebases or snapshots).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgemesh.catalog import Catalog, apply_delta, catalog_from_wire, delta_from_wire
from edgemesh.roles._node import RotatingEndpoint, TunnelClient
from edgemesh.roles._push import catalog_digest, held_settings
from edgemesh.testing import KubeApiServer, make_endpoint_slice, make_node, make_service
from edgemesh.transports import EnvelopeLink
from edgemesh.wire import CatalogPush, encode_ack

TWISTD = [sys.executable, "-c",
          ("import ctypes, signal\n"
           "try:\n"
           "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # die with the benchmark (Linux)\n"
           "except Exception:\n"
           "    pass\n"
           "from twisted.scripts.twistd import run\nrun()")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def say(*parts: object) -> None:
    print(*parts, flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Shared:
    """What the simulated edges share: pushes applied once per (catalog, push), digests,
    the changes waited for, the kinds of the first pushes received."""

    def __init__(self) -> None:
        self.applied: dict[tuple[int, str, int, str], tuple[Catalog | None, Catalog]] = {}
        self.digests: dict[int, tuple[Catalog, bytes]] = {}
        self.pending: dict[int, tuple[str, str, float, set[str]]] = {}
        """change id → (service key, new address, t0, edges still without it)."""
        self.done: dict[int, float] = {}
        self.waiters: dict[int, defer.Deferred[None]] = {}
        self.first_kinds: dict[str, int] = {}
        """The kind of the first push on each new link (a snapshot, or a rebase delta)."""

    def digest(self, catalog: Catalog) -> bytes:
        known = self.digests.get(id(catalog))
        if known is None or known[0] is not catalog:
            known = self.digests[id(catalog)] = (catalog, catalog_digest(catalog))
        return known[1]

    def edge_has(self, edge: str, catalog: Catalog) -> None:
        now = time.monotonic()
        for change, (key, address, t0, missing) in list(self.pending.items()):
            if edge not in missing:
                continue
            service = catalog.services.get(key)
            if service is None or not any(e.host == address for endpoints in
                                          service.endpoints.values() for e in endpoints):
                continue
            missing.discard(edge)
            if not missing:
                del self.pending[change]
                self.done[change] = now - t0
                waiter = self.waiters.pop(change, None)
                if waiter is not None:
                    waiter.callback(None)


class SimEdge:
    """A tunnel's LinkHandler that applies every catalog push and acks it at once."""

    def __init__(self, name: str, shared: Shared) -> None:
        self.name = name
        self.shared = shared
        self.catalog: Catalog | None = None
        self.synced: EnvelopeLink | None = None

    def held(self) -> dict[str, int]:
        """The hello settings of a real edge: which catalog it holds."""
        if self.catalog is None:
            return {}
        return held_settings(self.catalog.revision, self.shared.digest(self.catalog))

    def link_ready(self, link: EnvelopeLink) -> None:
        pass

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        pass

    def inbound(self, link: EnvelopeLink, request: Any, responder: Any) -> Any:
        raise RuntimeError("no exchanges in this benchmark")

    def control(self, link: EnvelopeLink, frame: Any) -> None:
        if not isinstance(frame, CatalogPush):
            return
        if link is not self.synced:
            self.synced = link
            kind = "rebase" if frame.kind == "delta" else frame.kind
            self.shared.first_kinds[kind] = self.shared.first_kinds.get(kind, 0) + 1
        key = (id(self.catalog), frame.kind, frame.revision, link.peer_name)
        made = self.shared.applied.get(key)
        if made is None or made[0] is not self.catalog:
            if frame.kind == "snapshot":
                catalog = catalog_from_wire(frame.payload).with_revision(frame.revision)
            else:
                assert self.catalog is not None
                catalog = apply_delta(self.catalog, delta_from_wire(frame.payload))
            made = self.shared.applied[key] = (self.catalog, catalog)
        self.catalog = made[1]
        link.send_control(encode_ack(frame.revision))
        self.shared.edge_has(self.name, self.catalog)


def populate(server: KubeApiServer, edges: int, services: int) -> None:
    for i in range(edges):
        address = f"10.0.{i // 250}.{i % 250 + 1}"
        server.create(make_node(f"edge-{i}", edge=True, internal_ip=address,
                                hub_address=f"{address}:7701"))
    for i in range(services):
        server.create(make_service(f"svc-{i}", cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}"))
        server.create(make_endpoint_slice(f"svc-{i}", [f"10.{100 + i // 250}.{i % 250}.1"],
                                          node_name=f"edge-{i % edges}"))


def change(server: KubeApiServer, shared: Shared, index: int, generation: int,
           edges: set[str]) -> int:
    """Give svc-index's slice a new address; returns the change id."""
    name = f"svc-{index}"
    current = server.get("endpointslices", f"{name}-slice")
    address = f"172.{16 + generation // 62500}.{generation // 250 % 250}.{generation % 250 + 1}"
    current["endpoints"][0]["addresses"] = [address]
    shared.pending[generation] = (f"default/{name}", address, time.monotonic(), set(edges))
    server.replace(current)
    return generation


def revision_of(admin: int) -> int:
    """A replica's catalog revision (0 before its first catalog, or unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=1) as response:
            revision: int = json.loads(response.read())["catalog_revision"]
            return revision
    except OSError:
        return 0


def edges_view(admin: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/edges", timeout=5) as response:
        rows: list[dict[str, Any]] = json.loads(response.read())
        return rows


def settled(admins: list[int], edges: int, dead: str | None) -> bool:
    for admin in admins:
        try:
            rows = edges_view(admin)
        except OSError:
            return False
        if len(rows) != edges or any(row["replica"] == dead for row in rows):
            return False
    return True


async def wait_settled(reactor: Any, admins: list[int], edges: int, dead: str | None,
                       limit: float) -> float:
    start = time.monotonic()
    while not settled(admins, edges, dead):
        if time.monotonic() - start > limit:
            raise TimeoutError(f"not settled after {limit}s")
        await task.deferLater(reactor, 0.05)
    return time.monotonic() - start


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    workdir = Path(tempfile.mkdtemp(prefix="edgemesh-replicas-bench-"))
    server = KubeApiServer(reactor, history_size=5000, bookmark_interval=60.0)
    await server.start()
    populate(server, args.edges, args.services)
    kubeconfig = server.write_kubeconfig(str(workdir / "kubeconfig"))
    shared = Shared()
    names = [f"router-{i}" for i in range(args.replicas)]
    ports = {n: {k: free_port() for k in ("tunnel", "http", "admin", "peer")} for n in names}
    peers = [f"--peer-router={n}=tcp:127.0.0.1:{ports[n]['peer']}" for n in names]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {"edges": args.edges, "replicas": args.replicas,
                              "services": args.services}
    clients: list[TunnelClient] = []
    try:
        for name in names:
            p = ports[name]
            procs[name] = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [*TWISTD, "-n", "--pidfile=", f"--logfile={workdir / name}.log", "edgemesh-router",
                 "--node", name, "--kubeconfig", kubeconfig, "--no-controller",
                 "--no-peer-discovery", "--insecure",
                 "--tunnel", f"tcp:{p['tunnel']}:interface=127.0.0.1:backlog=4096",
                 "--http", f"tcp:{p['http']}:interface=127.0.0.1",
                 "--admin", f"tcp:{p['admin']}:interface=127.0.0.1",
                 "--peer-listen", f"tcp:{p['peer']}:interface=127.0.0.1", *peers],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=(workdir / f"{name}.stderr").open("wb"))
        admins = [ports[n]["admin"] for n in names]
        for _ in range(1200):  # every replica has listed the API
            if all(revision_of(a) > 0 for a in admins):
                break
            await task.deferLater(reactor, 0.05)
        started = time.monotonic()
        for i in range(args.edges):
            order = names[i % args.replicas:] + names[:i % args.replicas]
            rotating = RotatingEndpoint([
                (n, TCP4ClientEndpoint(reactor, "127.0.0.1", ports[n]["tunnel"], timeout=5))
                for n in order])
            handler = SimEdge(f"edge-{i}", shared)

            def make(name: str = f"edge-{i}", handler: SimEdge = handler) -> EnvelopeLink:
                link = EnvelopeLink(reactor, handler, node=name, role="edge", client=True)
                link.hello_extra = handler.held
                return link

            # The edge's own TunnelClient: the same ClientService, backoff and hello wait.
            client = TunnelClient(reactor, "bench", make, endpoint=rotating)
            client.startService()
            clients.append(client)
        await wait_settled(reactor, admins, args.edges, None, 120)
        result["initial_sync_s"] = round(time.monotonic() - started, 3)
        say(f"{args.edges} edges over {args.replicas} replicas, known to every replica in "
            f"{result['initial_sync_s']}s")
        await task.deferLater(reactor, 1.0)

        if args.changes:
            rng = random.Random(1)
            everyone = {f"edge-{i}" for i in range(args.edges)}
            for generation in range(1, args.changes + 1):
                made = change(server, shared, rng.randrange(args.services), generation,
                              everyone)
                waiter: defer.Deferred[None] = defer.Deferred()
                shared.waiters[made] = waiter
                waiter.addTimeout(20, reactor)
                await waiter
                await task.deferLater(reactor, rng.uniform(0.1, 0.3))
            latencies = [shared.done[c] * 1000 for c in sorted(shared.done)]
            result["single"] = {
                "changes": len(latencies),
                "p50_ms": round(percentile(latencies, 50), 1),
                "p90_ms": round(percentile(latencies, 90), 1),
                "p99_ms": round(percentile(latencies, 99), 1),
                "max_ms": round(max(latencies), 1),
            }
            say(f"single changes, every one of {args.edges} edges on {args.replicas} replicas "
                "holds it:", json.dumps(result["single"]))
            await task.deferLater(reactor, 0.5)

        victim = names[0]
        first_before = dict(shared.first_kinds)
        held = sum(1 for row in edges_view(ports[victim]["admin"]) if row["local"])
        killed = time.monotonic()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(5)
        survivors = [ports[n]["admin"] for n in names[1:]]
        took = await wait_settled(reactor, survivors, args.edges, victim, 60)
        for _ in range(100):  # every moved edge has read its first push (bounded: 5 s)
            if sum(shared.first_kinds.values()) - sum(first_before.values()) >= held:
                break
            await task.deferLater(reactor, 0.05)
        result["rehome"] = {"killed": victim, "edges_moved": held,
                            "all_reachable_s": round(took, 3),
                            "since_kill_s": round(time.monotonic() - killed, 3),
                            "first_pushes": {k: v - first_before.get(k, 0)
                                             for k, v in shared.first_kinds.items()}}
        say(f"kill -9 {victim} ({held} edges): every edge on a live replica, known to every "
            f"survivor, after {result['rehome']['all_reachable_s']}s; first pushes to the "
            f"moved edges: {result['rehome']['first_pushes']}")
    finally:
        for client in clients:
            # ClientService (automat) may raise NoTransition when stopped while a connection
            # it made is still being prepared: teardown only, nothing is measured here.
            with contextlib.suppress(Exception):
                client.stopService()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        await server.stop()
    result["logs"] = str(workdir)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--changes", type=int, default=100,
                        help="single changes to time (0: none)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    async def main_async(reactor: Any) -> None:
        outcome = await run(reactor, args)
        say(json.dumps(outcome))
        if args.json:
            Path(args.json).write_text(json.dumps(outcome, indent=1) + "\n")

    task.react(lambda reactor: defer.ensureDeferred(main_async(reactor)))  # exits


if __name__ == "__main__":
    main()
