"""p2 /big at 32 connections, per mesh start: load-independent counters of each edge.

    BASE_PORT=19280 PYTHONPATH=. /work/main/.venv/bin/python bench/bimodal.py [--starts 6]
        [--duration 5] [--reps 2] [--mesh-args "..."] [--tree DIR] [--huge 3] [--nginx]

Starts harness.py's origin, then ``--starts`` times a fresh router and two edges (pinned as
bench/run.sh pins them: wrk and the origin on LOADGEN_CPU, the mesh on MESH_CPU), checks
the bodies, warms up with wrk, and measures ``--reps`` wrk runs of /big (``-c CONNS``) with
``perf stat`` of each edge: per MiB sent to wrk, its system calls (recvfrom, sendmsg,
sendto, epoll_wait), context switches (voluntary and not, /proc/PID/status) and CPU (utime,
stime); the link's TCP state (``ss -tmi``: rcv_space, the socket buffers, cwnd) after the
runs.  These counts do not depend on the machine's load, so a start's state is classified
by them, not by its req/s.  ``--nginx`` measures the nginx proxy hop once first, for the
per-hop ratio.

``--meshes N --rounds R`` starts N meshes at once and measures them in turn, R rounds (with
``--nginx``, the nginx hop first in each round; ``--tree2 DIR``, every other mesh runs that
tree; ``--tls-pair``, every other mesh has mTLS links).  It ends with the ratios of each
round's own runs, seconds apart: p2's CPU per hop to nginx's hop, and the second kind to
the first (the mTLS row, with ``--tls-pair``), their median and range.  ``--nginx-pairs``
adds two nginx hops in a chain to each round, plain and with mutual TLS between them
(bench/run.sh's relay-nginx and relay-nginx-tls): what TLS costs nginx, paired the same way.
The rows of bench/run.sh compare runs minutes apart, over which nginx's own hop moves by a
quarter.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("BASE_PORT", "19280")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

EVENTS = ["syscalls:sys_enter_recvfrom", "syscalls:sys_enter_sendmsg",
          "syscalls:sys_enter_sendto", "syscalls:sys_enter_epoll_wait",
          "syscalls:sys_enter_epoll_ctl", "syscalls:sys_enter_mmap",
          "syscalls:sys_enter_munmap", "syscalls:sys_enter_mremap", "syscalls:sys_enter_brk",
          "context-switches", "cpu-migrations"]
SHORT = {"syscalls:sys_enter_recvfrom": "recv", "syscalls:sys_enter_sendmsg": "sendmsg",
         "syscalls:sys_enter_sendto": "sendto", "syscalls:sys_enter_epoll_wait": "epoll",
         "syscalls:sys_enter_epoll_ctl": "ctl", "syscalls:sys_enter_mmap": "mmap",
         "syscalls:sys_enter_munmap": "munmap", "syscalls:sys_enter_mremap": "mremap",
         "syscalls:sys_enter_brk": "brk", "context-switches": "cs",
         "cpu-migrations": "migr"}


def status_counts(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                key, value = line.split(":")
                out[key.split("_")[0]] = int(value)
    return out


def cpu_s(pid: int) -> tuple[float, float, int]:
    """utime s, stime s, minflt."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / harness.CLK_TCK, int(fields[12]) / harness.CLK_TCK, int(fields[7])


def link_state(port: int) -> str:
    """``ss -tmi`` of the TCP connections to or from ``port``: one line each."""
    query = f"( sport = :{port} or dport = :{port} )"
    done = subprocess.run(["ss", "-tmiH", "state", "established", query],
                          capture_output=True, text=True, check=False)
    lines = [line.strip() for line in done.stdout.splitlines()]
    joined = []
    for line in lines:
        if re.match(r"^\d", line) or line.startswith(("ESTAB", "0 ")):
            joined.append(line)
        elif joined:
            joined[-1] += " " + line
    keep = ("skmem:", "rcv_space:", "rcvmss:", "cwnd:", "mss:", "rtt:", "rcv_ssthresh:",
            "notsent:", "snd_wnd:", "rcv_wnd:")
    rows = []
    for line in joined:
        parts = line.split()
        ends = [p for p in parts if re.match(r"^127\.0\.0\.1:\d+$", p)]
        picked = [p for p in parts if p.startswith(keep)]
        rows.append(" ".join(ends) + "  " + " ".join(picked))
    return "\n".join(rows)


class QueueSampler(threading.Thread):
    """``ss -tn`` every ``interval`` s while a run lasts: bytes waiting in the link's and the
    clients' sockets of one mesh (Recv-Q: not yet read by the process; Send-Q: not yet
    acknowledged, on loopback mostly what the peer's window does not take)."""

    def __init__(self, ports: dict[str, int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.interval = interval
        self.samples: dict[str, list[int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        hub, proxy = self.ports["edge-2-hub"], self.ports["edge-1-proxy"]
        origin = self.ports["origin"]
        while not self.done.wait(self.interval):
            text = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True,
                                  text=True, check=False).stdout
            got = {"link1_rq": 0, "link2_rq": 0, "link2_sq": 0, "client_sq": 0,
                   "client_rq": 0, "pod_rq": 0}
            for line in text.splitlines():
                f = line.split()
                if len(f) < 4:
                    continue
                rq, sq = int(f[0]), int(f[1])
                local, peer = int(f[2].rsplit(":", 1)[1]), int(f[3].rsplit(":", 1)[1])
                if peer == hub:
                    got["link1_rq"] += rq
                elif local == hub:
                    got["link2_rq"] += rq
                    got["link2_sq"] += sq
                elif local == proxy:
                    got["client_sq"] += sq
                    got["client_rq"] += rq
                elif peer == origin:
                    got["pod_rq"] += rq
            for k, v in got.items():
                self.samples.setdefault(k, []).append(v)

    def summary(self) -> str:
        self.done.set()
        self.join()
        return " ".join(f"{k} {statistics.mean(v) / 1024:.0f}/{max(v) / 1024:.0f}K"
                        for k, v in self.samples.items() if v)


PERF_RECORD: list[str] = []
"""perf record's options (empty: no perf record)."""


def measure(mesh: dict[str, harness.Proc], target: harness.Target, duration: str,
            out: str, label: str) -> dict[str, Any]:
    edges = {name: mesh[name].pid for name in ("edge-1", "edge-2")}
    records = []
    if PERF_RECORD:
        for name, pid in edges.items():
            data = os.path.join(out, f"rec-{label}-{name}.data")
            records.append((name, data, subprocess.Popen(
                ["perf", "record", "-q", *PERF_RECORD, "-o", data, "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    perfs = {}
    for name, pid in edges.items():
        path = os.path.join(out, f"perf-{label}-{name}.txt")
        perfs[name] = (subprocess.Popen(
            ["perf", "stat", "-x", ",", "-o", path, "-e", ",".join(EVENTS), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path)
    time.sleep(0.5)  # perf attaches
    s0 = {n: status_counts(p) for n, p in edges.items()}
    c0 = {n: cpu_s(p) for n, p in edges.items()}
    sampler = QueueSampler(harness.PORTS)
    sampler.start()
    _, text = harness.wrk(target, "/big", duration)
    queues = sampler.summary()
    for name, data, proc in records:
        proc.send_signal(2)
        proc.wait(timeout=60)
        sort = ["--no-children", "-G"] if "-g" in PERF_RECORD else ["--sort", "sym"]
        report = subprocess.run(["perf", "report", "-i", data, "--stdio", *sort],
                                capture_output=True, text=True, check=False).stdout
        with open(os.path.join(out, f"rec-{label}-{name}.txt"), "w") as f:
            f.write(report)
    c1 = {n: cpu_s(p) for n, p in edges.items()}
    s1 = {n: status_counts(p) for n, p in edges.items()}
    r = harness.parse_wrk(text)
    mib = r["requests"] * harness.BIG_SIZE / 2**20
    result: dict[str, Any] = {"rps": r["rps"], "requests": r["requests"], "mib": mib,
                              "queues": queues}
    for name, (proc, path) in perfs.items():
        proc.send_signal(2)
        proc.wait(timeout=30)
        counts = {}
        with open(path) as f:
            for line in f:
                fields = line.strip().split(",")
                if len(fields) > 3 and fields[2] in SHORT:
                    counts[SHORT[fields[2]]] = int(fields[0]) if fields[0].isdigit() else -1
        u = c1[name][0] - c0[name][0]
        s = c1[name][1] - c0[name][1]
        vol = s1[name]["voluntary"] - s0[name]["voluntary"]
        nonvol = s1[name]["nonvoluntary"] - s0[name]["nonvoluntary"]
        result[name] = {**{k: v / mib for k, v in counts.items()},
                        "vol": vol / mib, "invol": nonvol / mib,
                        "flt": (c1[name][2] - c0[name][2]) / mib,
                        "user_ms": u / mib * 1e3, "sys_ms": s / mib * 1e3}
    result["us_per_req"] = sum(result[n]["user_ms"] + result[n]["sys_ms"]
                               for n in edges) * 1e3 * mib / r["requests"] if r["requests"] else 0
    return result


def show(label: str, r: dict[str, Any]) -> str:
    line = f"{label}: {r['rps']:6.1f} req/s, edges {r['us_per_req']:6.0f} us/req |"
    for name in ("edge-1", "edge-2"):
        e = r[name]
        line += (f" {name}: " + " ".join(f"{k} {e[k]:.1f}" for k in
                                         ("recv", "sendmsg", "sendto", "epoll", "ctl", "cs",
                                          "vol", "invol", "migr", "flt", "mmap", "munmap",
                                          "mremap", "brk") if k in e)
                 + f" u {e['user_ms']:.2f} s {e['sys_ms']:.2f} ms |")
    return line + "\n    queues (mean/max): " + r["queues"]


def busy() -> dict[str, tuple[int, int, int]]:
    """Per CPU: total, idle and steal ticks (/proc/stat)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                nums = [int(v) for v in vals]
                out[name] = (sum(nums), nums[3] + nums[4], nums[7])
    return out


def interleaved(args: argparse.Namespace, out: str, bodies: dict[str, bytes]) -> None:
    """``--meshes N``: N meshes started at once (ports BASE_PORT + 10 k), then ``--rounds``
    rounds of one wrk run of each mesh (and of the nginx hop, with ``--nginx``) in turn: a
    state that belongs to a mesh start shows as one mesh staying slow while the others are
    fast in the same round; a state of the machine moves them all together."""
    base_ports = dict(harness.PORTS)
    origin_tmp = harness.run_dir(out, "origin", bodies, base_ports["origin"], base_ports)
    harness.start_origin(origin_tmp)
    meshes = []
    trees = [os.path.abspath(args.tree), *([os.path.abspath(args.tree2)] if args.tree2 else [])]
    # --tls-pair: the meshes alternate plaintext and mTLS links (one tree), so that the mTLS
    # row is a ratio of runs a few seconds apart, round by round.
    kinds = ([f"{trees[0]} plaintext", f"{trees[0]} mTLS"] if args.tls_pair else trees)
    for k in range(args.meshes):
        harness.CFG["BASE_PORT"] = str(int(os.environ["BASE_PORT"]) + 10 * (k + 1))
        ports = harness.ports()
        tmp = harness.run_dir(out, f"mesh{k}", bodies, base_ports["origin"], ports)
        harness.PORTS = ports
        harness.REPO = trees[k % len(trees)]  # --tree2: the meshes alternate the trees
        harness._compiled.clear()
        tls = args.tls_pair and k % 2 == 1
        p2 = harness.TARGETS["p2-edge-edge-tls" if tls else "p2-edge-edge"]
        print(f"mesh {k}: {kinds[k % len(kinds)]}", flush=True)
        mesh = harness.start_mesh(tmp, 0, tls)
        harness.check_until_ready(p2, bodies, ["/small"])
        harness.wrk(p2, "/big", args.warmup)
        meshes.append((ports, mesh, p2))
    # The nginx anchors measured in each round before the meshes (name, ports, pids): its hop
    # (--nginx); two hops in a chain, plain and with mTLS between them (--nginx-pairs:
    # bench/run.sh's relay-nginx and relay-nginx-tls).
    anchors: list[tuple[str, dict[str, int], list[int]]] = []
    if args.nginx:
        harness.PORTS = base_ports
        procs = harness.start_nginx_proxy(origin_tmp)
        harness.check_until_ready(harness.TARGETS["nginx"], bodies, ["/big"])
        anchors.append(("nginx", base_ports, harness.tree(procs[0].pid)))
    for n, mode in enumerate(("nginx", "nginx-tls") if args.nginx_pairs else ()):
        harness.CFG["BASE_PORT"] = str(int(os.environ["BASE_PORT"]) + 10 * (args.meshes + n + 1))
        ports = dict(harness.ports(), origin=base_ports["origin"])
        harness.PORTS = ports
        name = f"relay-{mode}"
        procs = harness.start_relays(harness.run_dir(out, name, bodies, None, ports), mode)
        harness.check_until_ready(harness.TARGETS[name], bodies, ["/big"])
        harness.wrk(harness.TARGETS[name], "/big", args.warmup)
        anchors.append((name, ports, [pid for proc in procs for pid in harness.tree(proc.pid)]))
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    # Per round: each kind's mean edges' CPU per request, and nginx's hop (the paired ratios).
    rounds: list[dict[str, float]] = []
    for rnd in range(args.rounds):
        this: dict[str, list[float]] = {}
        for name, ports, pids in anchors:
            harness.PORTS = ports
            b0 = busy()
            t0 = sum(harness.cpu_ticks(p) for p in pids)
            _, text = harness.wrk(harness.TARGETS[name], "/big", args.duration)
            t1 = sum(harness.cpu_ticks(p) for p in pids)
            b1 = busy()
            r = harness.parse_wrk(text)
            this[name] = [(t1 - t0) / harness.CLK_TCK * 1e6 / r["requests"]]
            print(f"round {rnd} {name}: {r['rps']:6.1f} req/s, {this[name][0]:5.0f} us/req "
                  f"{fmt_busy(b0, b1)}", flush=True)
        for k, (ports, mesh, p2) in enumerate(meshes):
            harness.PORTS = ports
            b0 = busy()
            r = measure(mesh, p2, args.duration, out, f"{k}-{rnd}")
            kind = kinds[k % len(kinds)]
            results[kind].append(r)
            this.setdefault(kind, []).append(r["us_per_req"])
            b1 = busy()
            print(show(f"round {rnd} mesh {k}", r) + " " + fmt_busy(b0, b1), flush=True)
        rounds.append({kind: statistics.mean(v) for kind, v in this.items()})
    paired(rounds, kinds)
    for tree, runs in results.items():
        print(f"{tree}: medians of {len(runs)} runs: edges "
              f"{statistics.median(r['us_per_req'] for r in runs):.0f} us/req; " + "; ".join(
                  f"{name} " + ", ".join(
                      f"{key} {statistics.median(r[name].get(key, 0) for r in runs):.2f}"
                      for key in ("flt", "mmap", "vol", "recv", "user_ms", "sys_ms"))
                  for name in ("edge-1", "edge-2")))
    for ports, _, _ in meshes:
        print("link: " + link_state(ports["edge-2-hub"]).replace("\n", "\n      "))


def paired(rounds: list[dict[str, float]], kinds: list[str]) -> None:
    """The ratios of each round's own runs (seconds apart, the same load), their median and
    range: p2's CPU per hop (half of both edges') to nginx's hop, and the second kind to the
    first (--tree2, --tls-pair)."""
    def line(name: str, values: list[float]) -> None:
        if values:
            print(f"paired {name}, {len(values)} rounds: median {statistics.median(values):.2f} "
                  f"(min {min(values):.2f}, max {max(values):.2f}; "
                  + " ".join(f"{v:.2f}" for v in values) + ")", flush=True)

    for kind in kinds:
        line(f"{kind} per hop / nginx's hop",
             [r[kind] / 2 / r["nginx"] for r in rounds if "nginx" in r and kind in r])
    if len(kinds) == 2:
        line(f"{kinds[1]} / {kinds[0]}",
             [r[kinds[1]] / r[kinds[0]] for r in rounds if kinds[0] in r and kinds[1] in r])
    pair = ("relay-nginx", "relay-nginx-tls")
    line("nginx's two hops, mTLS between them / plain",
         [r[pair[1]] / r[pair[0]] for r in rounds if pair[0] in r and pair[1] in r])
    for kind in kinds:
        line(f"{kind} / relay-nginx (both two processes)",
             [r[kind] / r[pair[0]] for r in rounds if pair[0] in r and kind in r])


def fmt_busy(b0: dict[str, tuple[int, int, int]], b1: dict[str, tuple[int, int, int]]) -> str:
    parts = []
    for cpu in sorted(b1):
        dt = b1[cpu][0] - b0[cpu][0]
        if dt:
            parts.append(f"{cpu} busy {100 * (dt - (b1[cpu][1] - b0[cpu][1])) / dt:.0f}% "
                         f"steal {100 * (b1[cpu][2] - b0[cpu][2]) / dt:.1f}%")
    return "[" + ", ".join(parts) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=harness.REPO)
    parser.add_argument("--tree2", default="",
                        help="with --meshes: every other mesh runs this tree (an A/B in turn)")
    parser.add_argument("--tls-pair", action="store_true",
                        help="with --meshes: every other mesh has mTLS links (the mTLS row, "
                             "paired round by round)")
    parser.add_argument("--starts", type=int, default=6)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--warmup", default="1s")
    parser.add_argument("--huge", type=int, default=0, help="4 MiB transfers per start")
    parser.add_argument("--mesh-args", default="")
    parser.add_argument("--nginx", action="store_true")
    parser.add_argument("--nginx-pairs", action="store_true",
                        help="with --meshes: nginx's hop twice in a chain, plain and with mTLS "
                             "between (relay-nginx, relay-nginx-tls), in each round too")
    parser.add_argument("--meshes", type=int, default=0,
                        help="N meshes at once, measured in turn (see interleaved())")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--perf-record", action="store_true",
                        help="perf record (cpu-clock) of each edge per run: rec-*.txt in out")
    parser.add_argument("--perf-faults", action="store_true",
                        help="perf record -g of each edge's page faults per run: rec-*.txt")
    parser.add_argument("--record", default="",
                        help="perf record's options, e.g. '-e syscalls:sys_enter_mmap -g'")
    parser.add_argument("--python", default="/work/main/.venv/bin/python")
    args = parser.parse_args()
    if args.tls_pair and (args.tree2 or args.meshes < 2):
        parser.error("--tls-pair takes --meshes 2 or more and no --tree2")
    harness.REPO = os.path.abspath(args.tree)
    if args.perf_record:
        PERF_RECORD[:] = ["-e", "cpu-clock", "-F", "1999"]
    if args.perf_faults:
        PERF_RECORD[:] = ["-e", "page-faults", "-g"]
    if args.record:
        PERF_RECORD[:] = args.record.split()
    out = tempfile.mkdtemp(prefix="edgemesh-bimodal-")
    harness.OUTDIR = out
    harness.CFG.update(PYTHON=args.python, IDLE_WAIT="0", MESH_ARGS=args.mesh_args)
    bodies = harness.bench_bodies()
    tmp = harness.run_dir(out, "run", bodies)
    ports = harness.PORTS
    print(f"tree {args.tree}, mesh args {args.mesh_args!r}, out {out}", flush=True)
    try:
        if args.meshes:
            interleaved(args, out, bodies)
            return
        p2 = harness.TARGETS["p2-edge-edge"]
        harness.start_origin(tmp)
        if args.nginx:
            procs = harness.start_nginx_proxy(tmp)
            nginx = harness.TARGETS["nginx"]
            harness.check_until_ready(nginx, bodies, ["/big"])
            harness.wrk(nginx, "/big", args.warmup)
            pids = harness.tree(procs[0].pid)
            for rep in range(args.reps):
                t0 = sum(harness.cpu_ticks(p) for p in pids)
                _, text = harness.wrk(nginx, "/big", args.duration)
                t1 = sum(harness.cpu_ticks(p) for p in pids)
                r = harness.parse_wrk(text)
                print(f"nginx rep {rep}: {r['rps']:.1f} req/s, "
                      f"{(t1 - t0) / harness.CLK_TCK * 1e6 / r['requests']:.0f} us/req",
                      flush=True)
            for proc in procs:
                harness.stop(proc)
        for start in range(args.starts):
            mesh = harness.start_mesh(tmp, start, False)
            harness.check_until_ready(p2, bodies, ["/small"])
            harness.wrk(p2, "/big", args.warmup)
            for rep in range(args.reps):
                r = measure(mesh, p2, args.duration, out, f"{start}-{rep}")
                print(show(f"start {start} rep {rep}", r), flush=True)
            print("  link: " + link_state(ports["edge-2-hub"]).replace("\n", "\n        "),
                  flush=True)
            if args.huge:
                times = [harness.transfer(ports[p2.port], p2.host) for _ in range(args.huge)]
                direct = [harness.transfer(ports["origin"], None) for _ in range(args.huge)]
                print(f"  4 MiB: p2 {statistics.median(times) * 1e3:.1f} ms, direct "
                      f"{statistics.median(direct) * 1e3:.1f} ms", flush=True)
            for name in reversed(harness.MESH_PROCS):
                harness.stop(mesh[name], grace=5.0)
        with open("/proc/loadavg") as f:
            print(f"load average: {f.read().split()[0]}")
    finally:
        harness.stop_all()


if __name__ == "__main__":
    main()
