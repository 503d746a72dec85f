#!/usr/bin/env python3
"""Memory of real mesh processes: anonymous memory at idle, and its growth under 1 MiB bodies.

Starts the benchmark mesh of harness.py (``twistd edgemesh-router`` and two
``twistd edgemesh-edge`` with the bench catalog, the edges without --admin as in run.sh) in
front of an origin ``python -m http.server`` serving /small (13 bytes) and /big (1 MiB), waits
until both edges acked the catalog, lets them settle, and prints RssAnon and VmRSS from
/proc/PID/status.  With --load it then drives CONNS concurrent keep-alive clients through
edge-1 (p1-local: edge-1 → origin; p2: edge-1 → edge-2 → origin), first /small then /big, and
prints the RssAnon/VmHWM growth of each edge.  Repeats RUNS times and prints medians.

    python bench/idle_memory.py                 # idle only, 3 runs
    python bench/idle_memory.py --load --runs 1 # + growth /small → /big at 32 connections

Stdlib only; every process it starts is stopped by its PID.  Interpreter of the mesh: env
PYTHON (default: this one).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("PYTHON", sys.executable)
os.environ.setdefault("BASE_PORT", "18380")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # after the environment it reads

SETTLE = 3.0
"""Seconds after readiness before sampling (the first heartbeats, the catalog ack)."""
KEYS = ("RssAnon", "VmRSS", "VmHWM")


def start_origin(tmp: str) -> harness.Proc:
    www = os.path.join(tmp, "www")
    proc = harness.spawn("origin", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                    "--directory", www, str(harness.PORTS["origin"])],
                         harness.CFG["LOADGEN_CPU"], tmp)
    harness.wait_port(harness.PORTS["origin"], proc)
    return proc


def sample(pid: int) -> dict[str, int]:
    return {key: harness.status_kib(pid, key) for key in KEYS}


def drive(port: int, host: str, path: str, conns: int, per_conn: int, size: int) -> None:
    """CONNS threads, each PER_CONN GETs on its own keep-alive connection; checks sizes."""
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(per_conn):
                conn.request("GET", path, headers={"Host": host})
                response = conn.getresponse()
                got = len(response.read())
                if response.status != 200 or got != size:
                    errors.append(f"{path}: {response.status}, {got} bytes")
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"{path}: {error!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")


def one_run(tmp: str, generation: int, load: bool, conns: int) -> dict[str, dict[str, int]]:
    origin = start_origin(tmp)
    mesh: dict[str, harness.Proc] = {}
    try:
        mesh = harness.start_mesh(tmp, generation, tls=False)
        time.sleep(SETTLE)  # a fixed settle after readiness, not a readiness wait
        found = {f"{name} idle": sample(proc.pid) for name, proc in mesh.items()}
        if load:
            port = harness.PORTS["edge-1-proxy"]
            for host in ("svc-local", "svc-edge2"):
                drive(port, host, "/small", conns, 20, len(harness.SMALL_BODY))
                small = {name: sample(mesh[name].pid) for name in ("edge-1", "edge-2")}
                drive(port, host, "/big", conns, 4, harness.BIG_SIZE)
                big = {name: sample(mesh[name].pid) for name in ("edge-1", "edge-2")}
                for name in small:
                    found[f"{name} {host} growth"] = {
                        key: big[name][key] - small[name][key] for key in KEYS}
        for name, proc in mesh.items():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died:\n{harness.tail(proc.log)}")
        return found
    finally:
        for proc in [*(mesh[n] for n in reversed(harness.MESH_PROCS) if n in mesh), origin]:
            harness.stop(proc, grace=5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="also /small → /big growth")
    parser.add_argument("--conns", type=int, default=32)
    args = parser.parse_args()
    busy = [p for p in harness.PORTS.values() if harness.port_open(p)]
    if busy:
        sys.exit(f"ports already in use: {busy}: set BASE_PORT")
    tmp = tempfile.mkdtemp(prefix="edgemesh-mem-")
    runs: list[dict[str, dict[str, int]]] = []
    try:
        os.makedirs(os.path.join(tmp, "www"))
        with open(os.path.join(tmp, "www", "small"), "wb") as f:
            f.write(harness.SMALL_BODY)
        with open(os.path.join(tmp, "www", "big"), "wb") as f:
            f.write(os.urandom(harness.BIG_SIZE))
        harness.render("catalog.yaml.in", os.path.join(tmp, "catalog.yaml"),
                       ORIGIN_PORT=harness.PORTS["origin"],
                       EDGE1_HUB_PORT=harness.PORTS["edge-1-hub"],
                       EDGE2_HUB_PORT=harness.PORTS["edge-2-hub"])
        for run in range(args.runs):
            found = one_run(tmp, 2 * run, args.load, args.conns)
            runs.append(found)
            print(f"run {run}: " + "; ".join(
                f"{name} " + " ".join(f"{k} {v / 1024:.1f}" for k, v in vals.items())
                for name, vals in found.items()), flush=True)
    finally:
        harness.stop_all()
    print(f"\nmedians of {len(runs)} runs (MiB):")
    for name in runs[0]:
        print(f"  {name:<24} " + "  ".join(
            f"{key} {statistics.median(r[name][key] for r in runs) / 1024:6.1f}" for key in KEYS))


if __name__ == "__main__":
    main()
