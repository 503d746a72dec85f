"""
Two or more checkouts' meshes up at once, one-off transfers through each interleaved.

CPU times and wall times of single transfers move by ±30 % from one minute to the next on
this shared machine, and a bench that runs one tree, then the other, compares those
minutes as much as the trees.  Here every tree's mesh (an origin, a router, two edges, on
their own ports: ``BASE_PORT`` 19000, 19020, …) is up at once, and each round makes one
transfer through path 2 of every tree, in turn (the order reversed every other round),
then one direct to the first tree's origin.  Per round, each tree's transfer is compared
with the first tree's: the medians of those paired ratios say what a change did, and a
tree given twice (two copies of one checkout) says what the method itself reads (an A/A
control: ±3 % in the runs of 2026-12-06).

For each transfer: curl's wall time, and the CPU time of each edge (``schedstat``: ns,
kernel and user, whatever the tick), which on this bench's placement (both edges on one
CPU) sets the wall time of a 4 MiB transfer.  ``--path small|big|huge`` (13 bytes, 1 MiB,
4 MiB): the difference between sizes tells the fixed cost of an exchange on a new
connection from the cost per byte.

``--env I:VAR=VALUE`` (repeatable) runs the mesh processes of the I-th tree (from 0) with that
variable set (harness.py's ``MESH_ENV``): one checkout given twice, once with an interpreter
or allocator setting, compares the setting (results 2026-12-06 §12).

``--kept``: curl makes two GETs on one connection, and the second one's wall time is what is
timed, direct's too (then TCP knows the connection, as it knows the mesh's own links and pod
connections; under BBR a new connection is paced from its first byte, results 2026-12-06
§14).  The edges' CPU is then that of both GETs.

``--relay-nginx`` adds bench/run.sh's ``relay-nginx`` (nginx's hop twice in a chain, on the
edges' CPU, in front of the first tree's origin) to every round, in turn with the meshes: each
tree's wall time and CPU are then also paired with two nginx hops', the 4 MiB row's floor
(its "edge-1" and "edge-2" are the first and the second nginx hop).

usage: ab_transfer.py [--rounds N] [--path huge] [--gap S] [--kept] [--env I:VAR=VALUE]
                      [--relay-nginx] TREE_A [TREE_B ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import harness

SIZES = {"small": len(harness.SMALL_BODY), "big": harness.BIG_SIZE, "huge": harness.HUGE_SIZE}
PORT_STEP = 20
"""Ports between two trees' meshes (each uses nine from its BASE_PORT)."""
START_TIMEOUT = 240.0


def serve(tree: str, base_port: int, info_file: str, env: str) -> None:
    """In a child process: one tree's origin and mesh on ports from ``base_port``, up until
    stdin closes; what the parent needs (edges' pids, ports) written to ``info_file``.
    ``env``: the mesh processes' extra environment ("VAR=VALUE ...")."""
    harness.CFG["BASE_PORT"] = str(base_port)
    harness.CFG["MESH_ENV"] = env
    harness.PORTS.update(harness.ports())
    harness.REPO = os.path.abspath(tree)
    out = tempfile.mkdtemp(prefix="edgemesh-ab-")
    harness.OUTDIR = out
    harness.CFG.update(IDLE_WAIT="0")
    bodies = harness.bench_bodies()
    tmp = harness.run_dir(out, "run", bodies)
    target = harness.TARGETS["p2-edge-edge"]
    try:
        harness.start_origin(tmp)
        mesh = harness.start_mesh(tmp, 0, False)
        harness.check_until_ready(target, bodies, ["/small", "/big"])
        for _ in range(5):  # warm-up: pooled connections, the link's TCP window
            harness.transfer(harness.PORTS[target.port], target.host)
        with open(info_file + ".tmp", "w") as f:
            json.dump({"edges": [mesh["edge-1"].pid, mesh["edge-2"].pid],
                       "port": harness.PORTS[target.port], "host": target.host,
                       "origin": harness.PORTS["origin"]}, f)
        os.rename(info_file + ".tmp", info_file)
        sys.stdin.read()
    finally:
        harness.stop_all()


def transfer(port: int, host: str | None, path: str, kept: bool = False) -> float:
    """harness.transfer of ``/path`` (its size from SIZES): curl's wall time, s."""
    return harness.transfer(port, host, "/" + path, SIZES[path], kept)


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", help="checkouts (a copy of one twice: A/A)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--path", choices=sorted(SIZES), default="huge")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds of idle before each transfer (bench/run.sh idles "
                             "at least 0.5 s: its transfers meet cold processes)")
    parser.add_argument("--kept", action="store_true",
                        help="time a second GET on curl's connection (direct's too): TCP "
                             "then knows the connection, as it knows the mesh's own")
    parser.add_argument("--python", default="/work/main/.venv/bin/python")
    parser.add_argument("--env", action="append", default=[], metavar="I:VAR=VALUE",
                        help="an environment variable of the I-th tree's mesh processes")
    parser.add_argument("--relay-nginx", action="store_true",
                        help="two nginx hops in a chain in every round too (the floor)")
    parser.add_argument("--serve", nargs=4, metavar=("TREE", "BASE_PORT", "INFO", "ENV"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    harness.CFG.update(PYTHON=args.python)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2], args.serve[3])
        return
    if not args.trees:
        parser.error("give at least one tree")
    envs: list[list[str]] = [[] for _ in args.trees]
    for item in args.env:
        index, _, setting = item.partition(":")
        if not index.isdigit() or int(index) >= len(args.trees) or "=" not in setting:
            parser.error(f"--env {item}: I:VAR=VALUE, I the index of a tree given")
        envs[int(index)].append(setting)
    names = [f"{i}:{tree}" + "".join(f" {s}" for s in envs[i])
             for i, tree in enumerate(args.trees)]
    base = int(harness.CFG["BASE_PORT"])
    children, infos = [], []
    for i, tree in enumerate(args.trees):
        info = tempfile.mktemp(prefix="edgemesh-ab-info-")
        children.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--python", args.python, "--serve",
             tree, str(base + 40 + PORT_STEP * i), info, " ".join(envs[i])],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        infos.append(info)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(os.path.exists(info) for info in infos):  # poll: each mesh's own pace
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                sys.exit("a mesh did not come up (run one tree with big_cost.py to see why)")
            time.sleep(0.2)
        meshes = []
        for info in infos:
            with open(info) as f:
                meshes.append(json.load(f))
        if args.relay_nginx:
            # In this process, on ports after the trees', in front of the first tree's origin;
            # measured like a mesh: its two workers' CPU in place of the edges'.
            first_port = base + 40 + PORT_STEP * len(args.trees)
            harness.PORTS.update({"origin": meshes[0]["origin"], "edge-1-proxy": first_port,
                                  "edge-2-proxy": first_port + 1})
            out = tempfile.mkdtemp(prefix="edgemesh-ab-relay-")
            harness.OUTDIR = out
            relays = harness.start_relays(out, "nginx")
            workers = [harness.tree(proc.pid)[-1] for proc in relays]
            port = harness.PORTS["edge-1-proxy"]
            for _ in range(5):
                transfer(port, None, args.path)
            names.append("relay-nginx")
            meshes.append({"edges": workers, "port": port, "host": None})
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        direct: list[float] = []
        # Each edge's user/system split over the run (clock ticks), beside the schedstat CPU
        # per transfer: an idle pause's cost is mostly user time (results 2026-12-06 §11).
        ticks = [[harness.user_system_ticks(pid) for pid in mesh["edges"]] for mesh in meshes]
        for round_ in range(args.rounds):
            order = range(len(names)) if round_ % 2 == 0 else reversed(range(len(names)))
            for i in order:
                mesh = meshes[i]
                if args.gap:
                    time.sleep(args.gap)  # not readiness: the idle time is what is measured
                before = [cpu_ns(pid) for pid in mesh["edges"]]
                wall[names[i]].append(transfer(mesh["port"], mesh["host"], args.path, args.kept))
                after = [cpu_ns(pid) for pid in mesh["edges"]]
                one, two = ((a - b) / 1e6 for b, a in zip(before, after))
                cpu[names[i]].append((one, two))
            if args.gap:
                time.sleep(args.gap)
            direct.append(transfer(meshes[0]["origin"], None, args.path, args.kept))
        split = {name: [(u1 - u0, s1 - s0) for (u0, s0), (u1, s1) in zip(
            ticks[i], (harness.user_system_ticks(pid) for pid in meshes[i]["edges"]))]
            for i, name in enumerate(names)}
        report(names, wall, cpu, direct, args, split)
    finally:
        harness.stop_all()  # the relays, if any (the meshes are their children's)
        for child in children:
            if child.stdin:
                child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()


def report(names: list[str], wall: dict[str, list[float]],
           cpu: dict[str, list[tuple[float, float]]], direct: list[float],
           args: argparse.Namespace, split: dict[str, list[tuple[int, int]]]) -> None:
    med = statistics.median
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    method = f", {args.gap:g} s idle before each transfer" if args.gap else ""
    if args.kept:  # (the edges' CPU is read around curl's whole run: both GETs)
        method += "; wall: the second GET on one connection; CPU: both GETs"
    print(f"/{args.path}, {args.rounds} rounds{method}: direct {med(direct) * 1e3:.2f} ms "
          f"(median); load average {load}")
    for name in names:
        runs = cpu[name]
        print(f"  {name}: wall {med(wall[name]) * 1e3:.2f} ms = "
              f"{med(wall[name]) / med(direct):.2f} x direct; CPU ms edge-1 "
              f"{med(c[0] for c in runs):.3f}, edge-2 {med(c[1] for c in runs):.3f}, "
              f"both {med(c[0] + c[1] for c in runs):.3f}")
        shares = ", ".join(
            f"edge-{n} {100 * user / max(user + system, 1):.0f} % user of {user + system}"
            for n, (user, system) in enumerate(split[name], 1))
        print(f"    over the run: {shares} clock ticks (/proc/PID/stat)")
    trees = [name for name in names if name != "relay-nginx"]
    against = [(name, trees[0]) for name in trees[1:]]
    if "relay-nginx" in names:
        against += [(name, "relay-nginx") for name in trees]
    for name, first in against:
        pairs = list(zip(cpu[first], cpu[name]))
        print(f"  paired {name} / {first}: wall "
              f"{med(b / a for a, b in zip(wall[first], wall[name])):.3f}, CPU both "
              f"{med((b[0] + b[1]) / (a[0] + a[1]) for a, b in pairs):.3f}, edge-1 "
              f"{med(b[0] / a[0] for a, b in pairs):.3f}, edge-2 "
              f"{med(b[1] / a[1] for a, b in pairs):.3f}")


if __name__ == "__main__":
    main()
