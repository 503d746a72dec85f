#!/usr/bin/env python3
"""A long run of the bench mesh under mixed load, with faults: does anything grow?

Starts harness.py's mesh (a router and two edges on MESH_CPU, the origin nginx on
LOADGEN_CPU) and drives it for ``--minutes`` in rounds of ``--round`` seconds.  In every round
four wrk processes run at once, one per request path (p1 edge-1 → pod, p2 edge-1 → edge-2,
p3 edge-1 → router, p4 router → edge-2), half of them on /small and half on /big (swapped
each round), and one 4 MiB transfer crosses p2 with curl.  Every ``--fault-every``-th round
has a fault in its middle, in turn:

- ``restart``: edge-2 is stopped (SIGTERM) and started again on its state directory, so it
  serves from its stored catalog while it reconnects to the router;
- ``pause``: edge-2 is frozen (SIGSTOP) for ``--pause`` seconds, past the heartbeat timeout,
  then let go (SIGCONT): a peer that vanishes without a FIN.

The router and edge-1 live through the whole run and see every fault from the other side,
which is where a leak per reconnect or per failed exchange would show.  After a fault round
the script waits (bounded) until both edges have acked the catalog again; the next round
must be clean.  At the end of every round it samples each mesh process's RssAnon, VmRSS,
open file descriptors and CPU time from /proc.

It prints a table a round and a verdict: no errors outside fault rounds, every 4 MiB
transfer whole, and, for the processes that lived through the run, RssAnon and file
descriptors after the warm-up against the end (the least-squares slope over the rounds, per
hour).  Everything goes to ``RESULTS_DIR/soak-<UTC stamp>/`` too.

    python bench/soak.py --minutes 40            # harness.py's settings (env) apply
    python bench/soak.py --minutes 20 --tls      # mutual-TLS links

Stdlib only; every process it starts is stopped by its PID.  Needs wrk, curl, nginx and
taskset (bench/run.sh installs them).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import harness as h

# (target, the body of even rounds): odd rounds swap /small and /big.
LOADS = (("p1-local", "/small"), ("p2-edge-edge", "/big"), ("p3-edge-cloud", "/small"),
         ("p4-cloud-edge", "/big"))
FAULTS = ("restart", "pause")
LIVES_THROUGH = ("router", "edge-1")  # the processes no fault restarts


@dataclass
class Round:
    index: int
    fault: str  # "" for a steady round
    started: float  # s since the run began
    loads: dict[str, dict[str, Any]] = field(default_factory=dict)  # "target path" → wrk's
    transfer_ms: float | None = None  # the 4 MiB transfer (None: it failed)
    transfer_error: str = ""
    samples: dict[str, dict[str, int]] = field(default_factory=dict)  # process → figures
    recovered_s: float | None = None  # after a fault: until both edges acked again

    def errors(self) -> int:
        return sum(load["non_2xx"] + load["socket_errors"] for load in self.loads.values())


def descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(procs: dict[str, h.Proc]) -> dict[str, dict[str, int]]:
    return {name: {"pid": proc.pid,
                   "anon_kib": h.status_kib(proc.pid, "RssAnon"),
                   "rss_kib": h.status_kib(proc.pid, "VmRSS"),
                   "fds": descriptors(proc.pid),
                   "cpu_ticks": h.cpu_ticks(proc.pid)}
            for name, proc in procs.items()}


def router_trims() -> str:
    """The router's heap trims (--malloc-trim-interval), from its /metrics."""
    try:
        _, body = h.get(h.PORTS["router-admin"], "/metrics", None)
    except (OSError, http.client.HTTPException) as error:
        return f"- router heap trims: /metrics unreadable ({error})"
    found = dict(re.findall(rb"^edgemesh_heap_(trims|released_bytes)_total ([0-9.e+]+)$",
                            body, re.MULTILINE))
    if not found:
        return "- router heap trims: none (no trimmer)"
    return (f"- router heap trims: {float(found[b'trims']):.0f}, giving back "
            f"{float(found[b'released_bytes']) / (1 << 20):.1f} MiB of RssAnon in all")


def start_wrk(target: h.Target, path: str, conns: int, seconds: int) -> subprocess.Popen[str]:
    cmd = [*h.pin(h.CFG["LOADGEN_CPU"]), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
           "--timeout", h.CFG["WRK_TIMEOUT"], "--latency"]
    if target.host:
        cmd += ["-H", "Host: " + target.host]
    cmd.append(f"http://127.0.0.1:{h.PORTS[target.port]}{path}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of (seconds, value) points, per hour; None for fewer than 3."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def restart(name: str, procs: dict[str, h.Proc], tmp: str, tls: bool) -> None:
    h.stop(procs[name])
    plugin, args = h.mesh_argv(tmp, 0, tls)[name]
    procs[name] = h.twistd(name, plugin, args, tmp)
    h.wait_port(h.PORTS[name + "-proxy"], procs[name])


def fault(kind: str, procs: dict[str, h.Proc], tmp: str, tls: bool, pause: float) -> None:
    if kind == "restart":
        restart("edge-2", procs, tmp, tls)
    elif kind == "pause":
        pid = procs["edge-2"].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(pause)  # the fault itself: a peer silent past the heartbeat timeout
        finally:
            os.kill(pid, signal.SIGCONT)


def run_round(index: int, kind: str, args: argparse.Namespace, procs: dict[str, h.Proc],
              tmp: str, began: float) -> Round:
    result = Round(index, kind, time.monotonic() - began)
    swap = {"/small": "/big", "/big": "/small"}
    running = []
    for name, path in LOADS:
        path = path if index % 2 == 0 else swap[path]
        running.append((f"{name} {path}",
                        start_wrk(h.TARGETS[name], path, args.conns, args.round)))
    half = time.monotonic() + args.round / 2
    time.sleep(max(0.0, half - time.monotonic() - 1))  # the transfer and fault mid-round
    try:
        timing = h.timed_transfer(h.PORTS["edge-1-proxy"], h.TARGETS["p2-edge-edge"].host)
        result.transfer_ms = timing.wall * 1e3
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        result.transfer_error = str(error)[:200]
    if kind:
        fault(kind, procs, tmp, args.tls, args.pause)
    for label, popen in running:
        out, err = popen.communicate(timeout=args.round + 60)
        if popen.returncode != 0 or "requests in" not in out:
            raise RuntimeError(f"wrk {label}: rc {popen.returncode}: {err.strip()[:300]}")
        result.loads[label] = h.parse_wrk(out)
    if kind:
        waited = time.monotonic()
        h.wait_acked()
        result.recovered_s = time.monotonic() - waited
    result.samples = sample(procs)
    return result


def row(r: Round) -> str:
    figures = " | ".join(
        f"{s['anon_kib'] / 1024:.1f} / {s['fds']}" for s in r.samples.values())
    rps = sum(load["rps"] or 0 for load in r.loads.values())
    transfer = f"{r.transfer_ms:.1f}" if r.transfer_ms is not None else "FAILED"
    return (f"| {r.index} | {r.started / 60:.1f} | {r.fault or '-'} | {rps:.0f} | {r.errors()} "
            f"| {transfer} | {figures} |")


def verdict(rounds: list[Round], warmup: int) -> tuple[list[str], bool]:
    lines, ok = [], True
    steady = [r for r in rounds if not r.fault]
    errors = sum(r.errors() for r in steady)
    after_fault = [r for prev, r in itertools.pairwise(rounds) if prev.fault and not r.fault]
    lines.append(f"- errors in steady rounds: {errors} (in {len(steady)} rounds; the rounds "
                 f"right after a fault: {sum(r.errors() for r in after_fault)})")
    ok &= errors == 0
    in_faults = [r for r in rounds if r.fault]
    by_load: dict[str, int] = {}
    for r in in_faults:
        for label, load in r.loads.items():
            target = label.split()[0]
            by_load[target] = by_load.get(target, 0) + load["non_2xx"] + load["socket_errors"]
    lines.append(f"- errors in fault rounds: {sum(r.errors() for r in in_faults)} (in "
                 f"{len(in_faults)} rounds; by path: "
                 + ", ".join(f"{target} {count}" for target, count in by_load.items())
                 + "; recovery to both edges acked: "
                 + ", ".join(f"{r.recovered_s:.1f}" for r in in_faults if r.recovered_s is not None)
                 + " s)")
    # A fault on edge-2 must not fail exchanges that never cross it (p1, p3).
    untouched = sum(count for target, count in by_load.items()
                    if target in ("p1-local", "p3-edge-cloud"))
    ok &= untouched == 0
    failed = [r for r in rounds if r.transfer_ms is None]
    lines.append(f"- 4 MiB transfers through p2: {len(rounds) - len(failed)} whole, "
                 f"{len(failed)} failed"
                 + "".join(f"; round {r.index} ({r.fault or 'steady'}): {r.transfer_error}"
                           for r in failed))
    ok &= all(r.fault for r in failed)
    kept = rounds[warmup:]
    for name in LIVES_THROUGH:
        if len(kept) < 3 or any(r.samples[name]["pid"] != kept[0].samples[name]["pid"]
                                for r in kept):
            continue
        first, last = kept[0].samples[name], kept[-1].samples[name]
        anon = slope_per_hour([(r.started, r.samples[name]["anon_kib"] / 1024) for r in kept])
        fds = slope_per_hour([(r.started, r.samples[name]["fds"]) for r in kept])
        peak = max(r.samples[name]["anon_kib"] for r in kept) / 1024
        lines.append(
            f"- {name}: RssAnon {first['anon_kib'] / 1024:.1f} → {last['anon_kib'] / 1024:.1f} "
            f"MiB (peak {peak:.1f}; slope {anon:+.2f} MiB/h), fds {first['fds']} → "
            f"{last['fds']} (slope {fds:+.1f}/h), CPU "
            f"{(last['cpu_ticks'] - first['cpu_ticks']) / h.CLK_TCK:.0f} s")
    return lines, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--round", type=int, default=60, help="seconds per round")
    parser.add_argument("--conns", type=int, default=8, help="wrk connections per path")
    parser.add_argument("--fault-every", type=int, default=3,
                        help="every Nth round has a fault (0: none)")
    parser.add_argument("--pause", type=float, default=9.0,
                        help="seconds edge-2 stays frozen (past the 6 s heartbeat timeout)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="rounds left out of the growth figures (default: the first "
                        "quarter: a router's heap fills for its first ~10 minutes)")
    parser.add_argument("--tls", action="store_true", help="mutual-TLS links")
    args = parser.parse_args()
    if args.round < 10:
        parser.error("--round: at least 10 seconds")
    rounds_wanted = max(1, int(args.minutes * 60 // args.round))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    outdir = os.path.join(h.CFG["RESULTS_DIR"], f"soak-{stamp}")
    os.makedirs(outdir, exist_ok=True)
    rounds: list[Round] = []
    base = tempfile.mkdtemp(prefix="edgemesh-soak-")
    header = ("| round | min | fault | req/s | errors | 4 MiB ms | "
              + " | ".join(f"{name} RssAnon MiB / fds" for name in h.MESH_PROCS) + " |")
    try:
        bodies = h.bench_bodies()
        tmp = h.run_dir(base, "mesh", bodies)
        h.start_origin(tmp)
        procs = h.start_mesh(tmp, 0, args.tls)
        for name, _ in LOADS:
            h.check_until_ready(h.TARGETS[name], bodies, ["/small", "/big"])
        print(f"soak: {rounds_wanted} rounds of {args.round} s, {args.conns} connections per "
              f"path, {'mTLS' if args.tls else 'plaintext'} links, a fault every "
              f"{args.fault_every or 'never'} rounds; {outdir}", flush=True)
        print(header + "\n" + "|---" * (6 + len(h.MESH_PROCS)) + "|", flush=True)
        began = time.monotonic()
        for index in range(rounds_wanted):
            kind = ""
            if args.fault_every and index % args.fault_every == args.fault_every - 1:
                kind = FAULTS[(index // args.fault_every) % len(FAULTS)]
            rounds.append(run_round(index, kind, args, procs, tmp, began))
            print(row(rounds[-1]), flush=True)
            with open(os.path.join(outdir, "rounds.json"), "w") as f:
                json.dump([r.__dict__ for r in rounds], f, indent=1)
        warmup = len(rounds) // 4 if args.warmup is None else args.warmup
        lines, ok = verdict(rounds, warmup)
        lines.insert(0, f"- growth figures from round {warmup} on (the rounds before: warm-up)")
        lines.append(router_trims())
        text = "\n".join(lines)
        print(text, flush=True)
        with open(os.path.join(outdir, "verdict.md"), "w") as f:
            f.write(text + "\n")
        sys.exit(0 if ok else 1)
    finally:
        h.stop_all()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
