"""Router replicas: how long the edges of a killed replica take to be reachable again.

    PYTHONPATH=. /work/main/.venv/bin/python bench/replicas.py [--edges 1000] [--replicas 3]
        [--json FILE]

What runs:
- ``--replicas`` real ``twistd edgemesh-router`` processes on 127.0.0.1 (file catalog with
  ``--edges`` edge Nodes, ``--insecure``, ``--peer-listen`` / ``--peer-router``);
- ``--edges`` simulated edges in this process, each the edge's own tunnel code (a
  TunnelClient over a RotatingEndpoint with every replica, edge i listing replica i mod N
  first) with an EnvelopeLink that acks catalog pushes at once (no disk, no pods).

What is measured:
1. initial sync: from starting the edges until every replica's ``/edges`` lists every edge;
2. re-home: kill -9 of replica 0; from the kill until every surviving replica's ``/edges``
   lists every edge, none on the dead replica (the edges see the connection close, wait the
   tunnel's jittered backoff, dial the next replica; it announces them to the others).
"""

from __future__ import annotations

import argparse
import json
import os
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

from edgemesh.roles._node import RotatingEndpoint, TunnelClient
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


class SimEdge:
    """A tunnel's LinkHandler that acks every catalog push at once."""

    def link_ready(self, link: EnvelopeLink) -> None:
        pass

    def link_lost(self, link: EnvelopeLink, reason: str) -> None:
        pass

    def inbound(self, link: EnvelopeLink, request: Any, responder: Any) -> Any:
        raise RuntimeError("no exchanges in this benchmark")

    def control(self, link: EnvelopeLink, frame: Any) -> None:
        if isinstance(frame, CatalogPush):
            link.send_control(encode_ack(frame.revision))


def write_catalog(path: Path, edges: int) -> None:
    docs = []
    for i in range(edges):
        docs.append({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": f"edge-{i}", "labels": {"node-role.kubernetes.io/edge": ""},
            "annotations": {"edgemesh.io/hub-address": f"10.0.{i // 250}.{i % 250 + 1}:7701"}}})
    path.write_text("".join(f"---\n{json.dumps(d)}\n" for d in docs))


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
    catalog = workdir / "catalog.yaml"
    write_catalog(catalog, args.edges)
    names = [f"router-{i}" for i in range(args.replicas)]
    ports = {n: {k: free_port() for k in ("tunnel", "http", "admin", "peer")} for n in names}
    peers = [f"--peer-router={n}=tcp:127.0.0.1:{ports[n]['peer']}" for n in names]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {"edges": args.edges, "replicas": args.replicas}
    clients: list[TunnelClient] = []
    try:
        for name in names:
            p = ports[name]
            procs[name] = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [*TWISTD, "-n", "--pidfile=", f"--logfile={workdir / name}.log", "edgemesh-router",
                 "--node", name, "--catalog", str(catalog), "--insecure",
                 "--tunnel", f"tcp:{p['tunnel']}:interface=127.0.0.1:backlog=4096",
                 "--http", f"tcp:{p['http']}:interface=127.0.0.1",
                 "--admin", f"tcp:{p['admin']}:interface=127.0.0.1",
                 "--peer-listen", f"tcp:{p['peer']}:interface=127.0.0.1", *peers],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=(workdir / f"{name}.stderr").open("wb"))
        admins = [ports[n]["admin"] for n in names]
        for _ in range(600):
            try:
                if all(edges_view(a) == [] for a in admins):
                    break
            except OSError:
                pass
            await task.deferLater(reactor, 0.05)
        started = time.monotonic()
        for i in range(args.edges):
            order = names[i % args.replicas:] + names[:i % args.replicas]
            rotating = RotatingEndpoint([
                (n, TCP4ClientEndpoint(reactor, "127.0.0.1", ports[n]["tunnel"], timeout=5))
                for n in order])
            handler = SimEdge()

            def make(name: str = f"edge-{i}", handler: SimEdge = handler) -> EnvelopeLink:
                return EnvelopeLink(reactor, handler, node=name, role="edge", client=True)

            # The edge's own TunnelClient: the same ClientService, backoff and hello wait.
            client = TunnelClient(reactor, "bench", make, endpoint=rotating)
            client.startService()
            clients.append(client)
        await wait_settled(reactor, admins, args.edges, None, 120)
        result["initial_sync_s"] = round(time.monotonic() - started, 3)
        say(f"{args.edges} edges over {args.replicas} replicas, known to every replica in "
            f"{result['initial_sync_s']}s")
        await task.deferLater(reactor, 1.0)
        victim = names[0]
        held = sum(1 for row in edges_view(ports[victim]["admin"]) if row["local"])
        killed = time.monotonic()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(5)
        survivors = [ports[n]["admin"] for n in names[1:]]
        took = await wait_settled(reactor, survivors, args.edges, victim, 60)
        result["rehome"] = {"killed": victim, "edges_moved": held,
                            "all_reachable_s": round(took, 3),
                            "since_kill_s": round(time.monotonic() - killed, 3)}
        say(f"kill -9 {victim} ({held} edges): every edge on a live replica, known to every "
            f"survivor, after {result['rehome']['all_reachable_s']}s")
    finally:
        for client in clients:
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
    result["logs"] = str(workdir)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
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
