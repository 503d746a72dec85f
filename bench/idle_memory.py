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
    python bench/idle_memory.py --launcher edgemesh --edge-catalog none --bytecode compiled

How the nodes start (each a choice of deployment, not of the code; this script's defaults are
the old harness.py's; harness.py now starts nodes as the last line above does):

- ``--launcher``: ``twistd`` (``twistd edgemesh-edge``: every dropin is unpickled, which
  imports unittest and twisted.trial) or ``edgemesh`` (``edgemesh twistd edgemesh-edge``:
  the same twistd with only edgemesh's plugins).
- ``--edge-catalog``: ``yaml`` (the edges get the bench's YAML catalog: harness.py's
  EDGE_CATALOG=yaml) or ``none`` (as examples/kubernetes/edge.yaml: the router pushes it,
  the edge persists it as msgpack, and PyYAML is never imported).
- ``--bytecode``: ``source`` (PYTHONDONTWRITEBYTECODE on a checkout without __pycache__:
  every start compiles edgemesh; harness.py's BYTECODE=source) or ``compiled`` (compileall
  first, into the checkout's gitignored __pycache__, as pip does at install; the nodes
  still write none).

With ``--wrk`` the load is wrk (``-c CONNS``, DURATION s per body, as harness.py) instead of
CONNS Python threads; ``--tls`` runs the links in mutual TLS.  ``--load`` also times 20
sequential 1 MiB GETs through path 2 on one connection (wall time, same run).

Stdlib only; every process it starts is stopped by its PID.  Interpreter of the mesh: env
PYTHON (default: this one).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
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


def drive_wrk(port: int, host: str, path: str, conns: int, seconds: int) -> float:
    """wrk -c CONNS for SECONDS (harness.py's load); fails on any non-2xx or socket error;
    returns wrk's requests per second."""
    argv = ["taskset", "-c", harness.CFG["LOADGEN_CPU"], "wrk", "-t1", f"-c{conns}",
            f"-d{seconds}s", "--timeout", "10s", "-H", f"Host: {host}",
            f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk {path}: {out}")
    return float(out.split("Requests/sec:")[1].split()[0])


def timed_big(port: int, host: str, count: int) -> float:
    """Wall seconds of COUNT sequential 1 MiB GETs on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.monotonic()
        for _ in range(count):
            conn.request("GET", "/big", headers={"Host": host})
            response = conn.getresponse()
            if response.status != 200 or len(response.read()) != harness.BIG_SIZE:
                raise RuntimeError(f"/big: {response.status}")
        return time.monotonic() - started
    finally:
        conn.close()


def one_run(tmp: str, generation: int, args: argparse.Namespace, hosts: tuple[str, ...] = (),
            ) -> dict[str, dict[str, int]]:
    origin = start_origin(tmp)
    mesh: dict[str, harness.Proc] = {}
    conns = args.conns
    try:
        mesh = harness.start_mesh(tmp, generation, tls=args.tls)
        time.sleep(SETTLE)  # a fixed settle after readiness, not a readiness wait
        found = {f"{name} idle": sample(proc.pid) for name, proc in mesh.items()}
        if hosts:
            port = harness.PORTS["edge-1-proxy"]
            for host in hosts:
                if args.wrk:
                    drive_wrk(port, host, "/small", conns, args.seconds)
                else:
                    drive(port, host, "/small", conns, 20, len(harness.SMALL_BODY))
                small = {name: sample(mesh[name].pid) for name in ("edge-1", "edge-2")}
                if args.wrk:
                    rate = drive_wrk(port, host, "/big", conns, args.seconds)
                    found[f"{host} /big wrk"] = {"req/s": round(rate)}
                else:
                    drive(port, host, "/big", conns, 4, harness.BIG_SIZE)
                big = {name: sample(mesh[name].pid) for name in ("edge-1", "edge-2")}
                for name in small:
                    found[f"{name} {host} growth"] = {
                        key: big[name][key] - small[name][key] for key in KEYS}
        if "svc-edge2" in hosts:
            # The throughput cost next to each memory figure, measured in the same run.
            found["20 x 1 MiB p2"] = {"wall ms": round(1000 * timed_big(port, "svc-edge2", 20))}
        for name, proc in mesh.items():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died:\n{harness.tail(proc.log)}")
        return found
    finally:
        for proc in [*(mesh[n] for n in reversed(harness.MESH_PROCS) if n in mesh), origin]:
            harness.stop(proc, grace=5.0)


def setup(tmp: str, args: argparse.Namespace) -> None:
    """The node start-up choices of --launcher, --edge-catalog and --bytecode (harness.py's
    LAUNCHER, EDGE_CATALOG and BYTECODE)."""
    harness.CFG["LAUNCHER"] = args.launcher
    harness.CFG["EDGE_CATALOG"] = "yaml" if args.edge_catalog == "yaml" else "router"
    harness.CFG["BYTECODE"] = args.bytecode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="also /small → /big growth")
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--wrk", action="store_true", help="load with wrk, as harness.py")
    parser.add_argument("--seconds", type=int, default=5, help="wrk run per body (--wrk)")
    parser.add_argument("--tls", action="store_true", help="mutual TLS links")
    parser.add_argument("--launcher", choices=("twistd", "edgemesh"), default="twistd")
    parser.add_argument("--edge-catalog", choices=("yaml", "none"), default="yaml")
    parser.add_argument("--bytecode", choices=("source", "compiled"), default="source")
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
        setup(tmp, args)
        for run in range(args.runs):
            # Each path on a fresh mesh, as harness.py: the first /big sets each peak.
            found = one_run(tmp, 6 * run, args)
            if args.load:
                for at, host in enumerate(("svc-local", "svc-edge2")):
                    grown = one_run(tmp, 6 * run + 2 * (at + 1), args, (host,))
                    found.update((k, v) for k, v in grown.items() if "idle" not in k)
            runs.append(found)
            print(f"run {run}: " + "; ".join(
                f"{name} " + " ".join(f"{k} {show(k, v)}" for k, v in vals.items())
                for name, vals in found.items()), flush=True)
    finally:
        harness.stop_all()
    print(f"\nmedians of {len(runs)} runs (MiB; wall ms):")
    for name in runs[0]:
        print(f"  {name:<24} " + "  ".join(
            f"{key} {show(key, statistics.median(r[name][key] for r in runs)):>6}"
            for key in runs[0][name]))


def show(key: str, value: float) -> str:
    return f"{value:.0f}" if key in ("wall ms", "req/s") else f"{value / 1024:.1f}"


if __name__ == "__main__":
    main()
