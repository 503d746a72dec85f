"""
The 4 MiB row with each node in a network namespace of its own, joined by a veth pair.

    sudo PYTHONPATH=. .venv/bin/python bench/netns_transfer.py [--rounds 60] [--mtu 1500]
        [--rate 1gbit] [--tls] [--placement one-cpu|two-nodes] [--kept]
        [--tree DIR]

bench/run.sh runs every process on 127.0.0.1: direct to the origin is one loopback
connection, edge → edge three.  Here, as on two nodes, the client's node (namespace A:
curl, edge-1, the router) and the pod's (namespace B: the origin nginx, edge-2) are joined
by a veth pair (10.213.0.1 and 10.213.0.2, ``--mtu``; no route out of either), so direct
crosses it once and the mesh's link crosses it once too:

    direct    curl (A) ──veth──▶ origin (B)
    p2        curl (A) → edge-1 proxy (A) ──veth, the link──▶ edge-2 hub (B) → origin (B)
    nginx×2   curl (A) → nginx hop (A) ──veth──▶ nginx hop (B) → origin (B)

Each round makes one transfer of each, in turn (the order rotated every round), each a new
curl process and connection (``--kept``: the second GET on curl's connection, as
ab_transfer.py's).  Printed: the medians of the wall time and of the first byte's (a
relay's fixed cost: the new connection, the request and the response's head), each path's
ratio to the same round's direct (median and quartiles), and the CPU per transfer
(schedstat) of both edges and of both nginx hops (their workers).

``--rate 100mbit``: the veth held to that rate (tc's token bucket on both ends), as a
network between edge nodes (bench/results-2026-12-07.md §2).  ``--tls``: mutual TLS across
the veth, the mesh's links and between the nginx hops (as bench/run.sh's relay-nginx-tls).
``--placement one-cpu`` (bench/run.sh's): curl and the origin on LOADGEN_CPU, every other
process on MESH_CPU.  ``two-nodes``: A's processes on LOADGEN_CPU, B's on MESH_CPU (a CPU a
node).  Needs root (``ip netns``); the namespaces are deleted at the end.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import harness

A_ADDR, B_ADDR = "10.213.0.1", "10.213.0.2"
READY_TIMEOUT = 90.0


def ip(*argv: str, netns: str | None = None) -> None:
    done = subprocess.run([*harness.in_netns(netns), "ip", *argv], capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def make_nodes(a: str, b: str, mtu: int, rate: str) -> None:
    """Namespaces ``a`` and ``b``, each with its loopback and one end of a veth pair (each
    end's sending shaped to ``rate`` by a token bucket, if given)."""
    for name in (a, b):
        ip("netns", "add", name)
        ip("link", "set", "lo", "up", netns=name)
    ip("link", "add", "emv-a", "mtu", str(mtu), "netns", a, "type", "veth",
       "peer", "name", "emv-b", "mtu", str(mtu), "netns", b)
    for name, dev, addr in ((a, "emv-a", A_ADDR), (b, "emv-b", B_ADDR)):
        ip("addr", "add", addr + "/30", "dev", dev, netns=name)
        ip("link", "set", dev, "up", netns=name)
        if rate:  # a burst of two 64 KiB TSO segments; a queue of ~2 MiB
            subprocess.run([*harness.in_netns(name), "tc", "qdisc", "add", "dev", dev, "root",
                            "tbf", "rate", rate, "burst", "128kb", "limit", "2mb"],
                           check=True, capture_output=True, text=True, timeout=30)


def delete_nodes(*names: str) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False,
                       timeout=30)


def curl_code(netns: str, url: str, host: str | None = None) -> str:
    cmd = [*harness.in_netns(netns), "curl", "-s", "-o", "/dev/null", "--max-time", "5",
           "-w", "%{http_code}", *(["-H", "Host: " + host] if host else []), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip()


def wait_ok(netns: str, url: str, procs: list[harness.Proc], host: str | None = None) -> None:
    """Poll ``url`` from ``netns`` until it answers 200 (a deadline; any process exiting
    first fails it, with its log's tail)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited: {harness.tail(proc.log)}")
        if curl_code(netns, url, host) == "200":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} (Host {host}) from {netns}: no 200 in {READY_TIMEOUT:.0f}s")


def start(tmp: str, a: str, b: str, cpu_a: str, cpu_b: str,
          tls: bool) -> dict[str, harness.Proc]:
    """The origin, two nginx hops in a chain, a router and two edges, across the nodes;
    ``tls``: mutual TLS on the veth (the mesh's links, and between the nginx hops)."""
    ports = harness.PORTS
    ca = harness.mesh_ca(tmp) if tls else ""
    hop_tls = {"nginx-hop-a": harness.nginx_tls(ca, "edge-1", accept=False, dial="edge-2"),
               "nginx-hop-b": harness.nginx_tls(ca, "edge-2", accept=True, dial=None),
               } if tls else {}
    procs: dict[str, harness.Proc] = {}
    procs["origin"] = harness.start_origin(
        tmp, harness.CFG["LOADGEN_CPU"] if cpu_a == cpu_b else cpu_b, b,
        listen_host="*")  # loopback (edge-2's pod connections) and the veth (direct)
    # The anchor: nginx's hop on each node, the second one's port is edge-2's hub port + 100.
    hop2 = ports["edge-2-hub"] + 100
    for name, netns, cpu, port, listen, upstream, upstream_port in (
            ("nginx-hop-b", b, cpu_b, hop2, B_ADDR, "127.0.0.1", ports["origin"]),
            ("nginx-hop-a", a, cpu_a, ports["nginx"], "127.0.0.1", B_ADDR, hop2)):
        [procs[name]] = harness.start_nginx_proxy(
            tmp, port, upstream_port, name, hop_tls.get(name), cpu, netns,
            listen_host=listen, upstream_host=upstream)
    harness.compile_tree()
    catalog = os.path.join(tmp, "catalog.yaml")
    router = f"tcp:{A_ADDR}:{ports['router-tunnel']}"
    security = harness.mesh_security(tmp, tls)
    procs["router"] = harness.twistd("router", "edgemesh-router", [
        *security, "--catalog", catalog, "--node", "router",
        "--tunnel", f"tcp:{ports['router-tunnel']}:interface={A_ADDR}",
        "--http", f"tcp:{ports['router-http']}:interface=127.0.0.1",
        "--admin", f"tcp:{ports['router-admin']}:interface=127.0.0.1"], tmp, cpu_a, a)
    for edge, netns, cpu, addr in (("edge-1", a, cpu_a, A_ADDR), ("edge-2", b, cpu_b, B_ADDR)):
        procs[edge] = harness.twistd(edge, "edgemesh-edge", [
            *security, "--node", edge, "--state-dir", os.path.join(tmp, "state-" + edge),
            *(["--catalog", catalog] if harness.CFG["EDGE_CATALOG"] == "yaml" else []),
            "--router", router,
            "--proxy", f"tcp:{ports[edge + '-proxy']}:interface=127.0.0.1",
            "--hub", f"tcp:{ports[edge + '-hub']}:interface={addr}"], tmp, cpu, netns)
    every = list(procs.values())
    wait_ok(b, f"http://{B_ADDR}:{ports['origin']}/small", every)
    wait_ok(a, f"http://127.0.0.1:{ports['nginx']}/small", every)
    wait_ok(a, f"http://127.0.0.1:{ports['edge-1-proxy']}/small", every, "svc-edge2")
    return procs


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.3f} ({q[0]:.3f}-{q[2]:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--mtu", type=int, default=1500, help="the veth pair's (a NIC's)")
    parser.add_argument("--rate", default="",
                        help="shape the veth pair to this rate (tc tbf: 1gbit, 100mbit)")
    parser.add_argument("--placement", choices=("one-cpu", "two-nodes"), default="one-cpu")
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS across the veth: the mesh's links, and between the "
                             "nginx hops (as relay-nginx-tls)")
    parser.add_argument("--kept", action="store_true",
                        help="time a second GET on curl's connection (direct's too)")
    parser.add_argument("--tree", default=harness.REPO)
    parser.add_argument("--python", default="/work/main/.venv/bin/python")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("netns_transfer.py: needs root (ip netns)")
    harness.CFG.update(PYTHON=args.python)
    harness.REPO = os.path.abspath(args.tree)
    harness.HOSTS.update(EDGE1_HUB_HOST=A_ADDR, EDGE2_HUB_HOST=B_ADDR)
    load, mesh = harness.CFG["LOADGEN_CPU"], harness.CFG["MESH_CPU"]
    cpu_a, cpu_b = (mesh, mesh) if args.placement == "one-cpu" else (load, mesh)
    suffix = f"{os.getpid()}"
    a, b = f"emn-a-{suffix}", f"emn-b-{suffix}"
    out = tempfile.mkdtemp(prefix="edgemesh-netns-")
    harness.OUTDIR = out
    tmp = harness.run_dir(out, "run", harness.bench_bodies())
    ports = harness.PORTS
    curl_cpu = load if args.placement == "one-cpu" else cpu_a
    paths = {  # name → (port, address, Host)
        "direct": (ports["origin"], B_ADDR, None),
        "p2": (ports["edge-1-proxy"], "127.0.0.1", "svc-edge2"),
        "nginx×2": (ports["nginx"], "127.0.0.1", None),
    }
    try:
        make_nodes(a, b, args.mtu, args.rate)
        procs = start(tmp, a, b, cpu_a, cpu_b, args.tls)
        # Whose CPU each path's transfer costs besides curl's and the origin's (nginx's
        # worker is its master's child).
        relays = {"p2": [procs["edge-1"].pid, procs["edge-2"].pid],
                  "nginx×2": [pid for hop in ("nginx-hop-a", "nginx-hop-b")
                              for pid in harness.tree(procs[hop].pid)]}

        def one(name: str) -> harness.Timing:
            port, address, host = paths[name]
            return harness.timed_transfer(port, host, kept=args.kept, address=address,
                                          cpu=curl_cpu, netns=a)

        for name in itertools.islice(itertools.cycle(paths), 5 * len(paths)):
            one(name)  # warm-up: pooled connections, the link's window
        walls: dict[str, list[float]] = {name: [] for name in paths}
        firsts: dict[str, list[float]] = {name: [] for name in paths}
        ratios: dict[str, list[float]] = {name: [] for name in paths if name != "direct"}
        cpu: dict[str, list[list[float]]] = {name: [] for name in relays}
        order = list(paths)
        for round_ in range(args.rounds):
            this: dict[str, harness.Timing] = {}
            for name in order[round_ % 3:] + order[:round_ % 3]:
                before = [cpu_ns(pid) for pid in relays.get(name, ())]
                this[name] = one(name)
                if name in relays:
                    cpu[name].append([(cpu_ns(pid) - was) / 1e6
                                      for pid, was in zip(relays[name], before)])
            for name, timing in this.items():
                walls[name].append(timing.wall)
                firsts[name].append(timing.first_byte)
                if name in ratios:
                    ratios[name].append(timing.wall / this["direct"].wall)
        setup = [f"{args.rounds} rounds", "4 MiB", f"veth mtu {args.mtu}",
                 *([f"held to {args.rate}"] if args.rate else []),
                 *(["mTLS"] if args.tls else []), f"placement {args.placement}",
                 f"{'kept' if args.kept else 'new'} connection",
                 harness.versions().get("tcp_congestion_control", "?")]
        print(f"# netns_transfer.py: {', '.join(setup)}")
        for name in paths:
            line = (f"{name:8} wall {statistics.median(walls[name]) * 1e3:.2f} ms, first byte "
                    f"{statistics.median(firsts[name]) * 1e3:.2f} ms")
            if name in ratios:
                line += f"   ÷ direct, paired: {quartiles(ratios[name])}"
            print(line)
        for name, per_transfer in cpu.items():
            parts = [statistics.median(column) for column in zip(*per_transfer)]
            print(f"{name} CPU per transfer{' (both GETs)' if args.kept else ''}: "
                  f"{statistics.median(sum(row) for row in per_transfer):.2f} ms "
                  f"({' + '.join(f'{part:.2f}' for part in parts)}: "
                  f"{'edge-1 + edge-2' if name == 'p2' else 'its processes'})")
    finally:
        harness.stop_all()
        delete_nodes(a, b)


if __name__ == "__main__":
    main()
