"""How long N edges take to connect to a router that has just started (issue 11, item 7).

    PYTHONPATH=. /work/main/.venv/bin/python bench/edges_connect.py --edges 5000
        [--backlog 50] [--router-path DIR] [--idle SECONDS] [--json FILE]

What runs:
- the router, a real ``twistd edgemesh-router --catalog FILE --insecure`` process, whose
  catalog lists the ``--edges`` edge nodes (it refuses edges it does not know);
- ``--edges`` simulated edges in this process, each a ClientService with the edge's own
  retry policy (``backoffPolicy(0.5, 30)``, the TunnelClient's) dialling the tunnel over
  loopback.  A simulated edge speaks just enough of the protocol: its hello, pongs for the
  router's pings, and it counts as *connected* when the router's first catalog push
  arrives (the router pushes a snapshot to each edge it accepts).  It does not decode the
  catalog (5000 decodes in one process would measure this process, not the router).

What is measured (wall clock, monotonic):
- ``listening_s``: from the router's spawn until its tunnel accepts a connection;
- then every edge dials at once (a router restart: every edge's tunnel was cut together);
  ``all_connected_s`` is from that moment until the last edge has its snapshot,
  ``from_router_start_s`` the same from the router's spawn; p50/p99 of the edges' times;
- ``redials``: connection attempts beyond one per edge (timeouts, resets);
- ``ListenOverflows_during`` / ``ListenDrops_during``: the kernel's count of connections
  dropped because an accept queue was full, over the run (whole network namespace).

With ``--api-down SECONDS`` (issue 11, item 8) the router's catalog source is a Kubernetes
API that is down (a kubeconfig naming a closed loopback port), so it never lists; the
edges knock for that long, and the bench counts their connections and the router's log
lines.  ``--edge-policy old`` makes the simulated edges retry as edges did before
ReconnectBackoff (ClientService's ``backoffPolicy``, whose count starts over at every
connection made); ``new`` (the default) as they do now (ReconnectBackoff, reset only by a
catalog push, with the GOAWAY's retry-after as a floor).

``--backlog 50`` passes ``backlog=50`` in the tunnel's endpoint string: Twisted's default,
what every listener had before DEFAULT_BACKLOG.  ``--router-path`` runs the router from
another checkout (e.g. the unmodified main) while the edges stay this one's.

File descriptors: the router and this process each hold one per edge (plus a few); the
soft RLIMIT_NOFILE is raised to the hard limit here, and the router inherits it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgemesh.testing import make_node
from edgemesh.transports import ReconnectBackoff
from edgemesh.wire import RETRY_AFTER_SETTING, Limits, encode_hello, encode_pong

TWISTD = [sys.executable, "-c",
          ("import ctypes, signal\n"
           "try:\n"
           "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # die with the benchmark (Linux)\n"
           "except Exception:\n"
           "    pass\n"
           "from twisted.scripts.twistd import run\nrun()")]
HELLO_FRAME, PING_FRAME, CATALOG_FRAME, GOAWAY_FRAME = 0, 6, 8, 10


def say(*parts: object) -> None:
    print(*parts, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < wanted:
        raise SystemExit(
            f"RLIMIT_NOFILE hard limit {hard} < {wanted} needed: raise it (ulimit -Hn)")
    return hard


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def ctxt_switches(pid: int) -> int:
    """Voluntary context switches: each is the process blocking (for a reactor, in
    epoll_wait), so their count is its wake-ups, whatever else loads the machine."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def listen_drops() -> dict[str, int]:
    """This network namespace's TcpExt ListenOverflows / ListenDrops (SYNs or handshakes
    dropped because an accept queue was full); others' listeners count too."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            return {key: table.get(key, 0) for key in ("ListenOverflows", "ListenDrops")}
    return {}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class SimEdge(Protocol):
    """One simulated edge's tunnel: hello out, pongs back, the first catalog noted."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.buffer = bytearray()

    def connectionMade(self) -> None:
        self.edge.attempts += 1
        limits = Limits()
        settings = {"initial_window": limits.initial_window, "max_frame": limits.max_frame,
                    "max_streams": limits.max_streams}
        if self.edge.backoff is not None:
            settings[RETRY_AFTER_SETTING] = 1
        self.transport.write(encode_hello(self.edge.name, "edge", settings))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">I", buffer)
            if len(buffer) < 4 + size:
                if size > 1 << 16 and len(buffer) >= 6 and buffer[5] == CATALOG_FRAME:
                    self.edge.accepted()  # a snapshot is coming: the router took this edge
                return
            kind = buffer[5] if size >= 2 else -1
            if kind == CATALOG_FRAME:
                self.edge.accepted()
            elif kind == PING_FRAME:
                self.transport.write(encode_pong(msgpack.unpackb(bytes(buffer[4:4 + size]))[1]))  # type: ignore[union-attr]
            elif kind == GOAWAY_FRAME:
                refusal = msgpack.unpackb(bytes(buffer[4:4 + size]))[1:]
                self.edge.refusals.append(refusal)
                if self.edge.backoff is not None and len(refusal) > 1:
                    self.edge.backoff.retry_after(refusal[1])
            del buffer[:4 + size]


class Edge:
    def __init__(self, name: str, bench: Bench) -> None:
        self.name = name
        self.bench = bench
        self.attempts = 0
        self.connected_at: float | None = None
        self.refusals: list[Any] = []
        self.backoff: ReconnectBackoff | None = None

    def accepted(self) -> None:
        if self.backoff is not None:
            self.backoff.reset()
        if self.connected_at is None:
            self.connected_at = time.monotonic()
            self.bench.connected += 1
            if self.bench.connected == len(self.bench.edges) and not self.bench.all_in.called:
                self.bench.all_in.callback(None)


class Bench:
    def __init__(self) -> None:
        self.edges: list[Edge] = []
        self.connected = 0
        self.all_in: defer.Deferred[None] = defer.Deferred()


def write_catalog(path: Path, edges: int) -> None:
    nodes = [make_node(f"edge-{i}", edge=True,
                       internal_ip=f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}")
             for i in range(edges)]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))


async def probe(reactor: Any, port: int, deadline: float) -> None:
    """Poll (bounded) until the tunnel accepts a TCP connection."""
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        await task.deferLater(reactor, 0.02)
    raise TimeoutError("the router's tunnel never listened")


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="edgemesh-connect-bench-"))
    catalog = workdir / "catalog.json"
    write_catalog(catalog, args.edges)
    tunnel, admin = free_port(), free_port()
    tunnel_endpoint = f"tcp:{tunnel}:interface=127.0.0.1"
    if args.backlog is not None:
        tunnel_endpoint += f":backlog={args.backlog}"
    if args.api_down:
        # A Kubernetes API that is down: the router starts, and its catalog never lists.
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "down",
            "clusters": [{"name": "down",
                          "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
            "users": [{"name": "down", "user": {}}],
            "contexts": [{"name": "down", "context": {"cluster": "down", "user": "down"}}]}))
        source = ["--kubeconfig", str(kubeconfig), "--no-controller"]
    else:
        source = ["--catalog", str(catalog)]
    log = workdir / "router.log"
    stderr = (workdir / "router.stderr").open("wb")
    router_path = Path(args.router_path).resolve()
    profile = ([f"--profile={args.router_profile}", "--profiler=cprofile", "--savestats"]
               if args.router_profile else [])
    spawned = time.monotonic()
    router = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurements
        [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", *profile, "edgemesh-router",
         *source, "--insecure", "--tunnel", tunnel_endpoint,
         "--http", f"tcp:{free_port()}:interface=127.0.0.1",
         "--admin", f"tcp:{admin}:interface=127.0.0.1"],
        env={**os.environ, "PYTHONPATH": str(router_path)}, cwd=str(router_path),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    services: list[ClientService] = []
    bench = Bench()
    result: dict[str, Any] = {"edges": args.edges, "backlog": args.backlog or "default",
                              "router_path": str(router_path)}
    try:
        await probe(reactor, tunnel, spawned + 60)
        listening = time.monotonic()
        result["listening_s"] = round(listening - spawned, 3)
        say(f"router listening {result['listening_s']}s after its spawn; {args.edges} edges dial")
        started = time.monotonic()
        drops = listen_drops()
        cpu = proc_cpu(router.pid)
        for i in range(args.edges):
            edge = Edge(f"edge-{i}", bench)
            bench.edges.append(edge)
            factory = Factory.forProtocol(lambda edge=edge: SimEdge(edge))  # type: ignore[misc]
            policy: Any = backoffPolicy(initialDelay=0.5, maxDelay=30.0)
            if args.edge_policy == "new":
                policy = edge.backoff = ReconnectBackoff(initial=0.5, maximum=30.0)
            service = ClientService(
                TCP4ClientEndpoint(reactor, "127.0.0.1", tunnel, timeout=args.connect_timeout),
                factory, retryPolicy=policy, clock=reactor)
            service.startService()
            services.append(service)
        if args.api_down:
            await task.deferLater(reactor, args.api_down)
            attempts = sum(e.attempts for e in bench.edges)
            # twistd rotates its log file at 1 MB: count router.log and router.log.N.
            lines = [line for path in sorted(log.parent.glob(log.name + "*"))
                     for line in path.read_text(errors="replace").splitlines()]
            result.update({
                "api_down_s": args.api_down, "edge_policy": args.edge_policy,
                "connections": attempts,
                "connections_per_s": round(attempts / args.api_down, 1),
                "refusals": sum(len(e.refusals) for e in bench.edges),
                "router_log_lines": len(lines),
                "router_refusal_lines": sum("refusing" in line for line in lines),
                "sample_refusal_line": next((line for line in lines if "refusing" in line), None),
            })
            say(json.dumps(result))
            return result
        bench.all_in.addTimeout(args.timeout, reactor)
        try:
            await bench.all_in
        except defer.TimeoutError:
            say(f"timeout: {bench.connected}/{args.edges} edges connected after {args.timeout}s")
        done = [e.connected_at - started for e in bench.edges if e.connected_at is not None]
        result.update({
            "connected": len(done),
            "all_connected_s": round(max(done), 3) if len(done) == args.edges else None,
            "from_router_start_s": round(max(done) + started - spawned, 3)
            if len(done) == args.edges else None,
            "p50_s": round(percentile(done, 50), 3) if done else None,
            "p99_s": round(percentile(done, 99), 3) if done else None,
            "mean_s": round(statistics.mean(done), 3) if done else None,
            "redials": sum(e.attempts for e in bench.edges) - args.edges,
            "router_cpu_s": round(proc_cpu(router.pid) - cpu, 2),
            **{f"{key}_during": value - drops.get(key, 0) for key, value in listen_drops().items()},
            "refused": sum(len(e.refusals) for e in bench.edges),
        })
        if args.idle and len(done) == args.edges:
            # The router with every edge connected and nothing to route: its heartbeats
            # (pings sent, pongs read, timers) are what it spends.  CPU seconds of one
            # process, usable on a loaded machine when the effect is large.
            await task.deferLater(reactor, 2.0)
            before, switches = proc_cpu(router.pid), ctxt_switches(router.pid)
            await task.deferLater(reactor, args.idle)
            idle_cpu = proc_cpu(router.pid) - before
            wakeups = ctxt_switches(router.pid) - switches
            result.update({"idle_s": args.idle, "idle_router_cpu_s": round(idle_cpu, 2),
                           "idle_router_cpu_pct": round(100 * idle_cpu / args.idle, 1),
                           "idle_router_wakeups_per_s": round(wakeups / args.idle, 1)})
        say(json.dumps(result))
    finally:
        router.send_signal(signal.SIGTERM)
        for service in services:
            service.stopService()
        try:
            router.wait(20)
        except subprocess.TimeoutExpired:
            router.kill()
            router.wait(5)
    result["router_log"] = str(log)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=None,
                        help="backlog= in the tunnel's endpoint string (50: Twisted's default)")
    parser.add_argument("--router-path", default=str(REPO),
                        help="the checkout the router runs from (PYTHONPATH)")
    parser.add_argument("--connect-timeout", type=float, default=30.0,
                        help="the simulated edges' TCP connect timeout")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="give up waiting for the last edge after this many seconds")
    parser.add_argument("--api-down", type=float, default=0.0,
                        help="the router's Kubernetes API is down: knock for this many seconds")
    parser.add_argument("--edge-policy", choices=["old", "new"], default="new",
                        help="how the simulated edges retry (see the docstring)")
    parser.add_argument("--router-profile", default=None,
                        help="run the router under cProfile, its stats written to this file")
    parser.add_argument("--idle", type=float, default=0.0,
                        help="then measure the router's CPU seconds over this many idle seconds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    raise_fd_limit(2 * args.edges + 256)

    def main_(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            outcome = await run(reactor, args)
            if args.json:
                Path(args.json).write_text(json.dumps(outcome, indent=1) + "\n")

        return defer.Deferred.fromCoroutine(go())

    task.react(main_)


if __name__ == "__main__":
    main()
