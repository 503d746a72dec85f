"""Instructions per /small exchange for each mesh process, with a per-layer budget (issue 15).

    PYTHONPATH=. /work/main/.venv/bin/python bench/exchange_cost.py [--path p1|p2|both]
        [--exchanges 400] [--warmup 100] [--tree DIR] [--no-layers] [--top 0]
        [--sends CONNS [--sends-duration 3s] [--all-syscalls]] [--opcodes N]

CPU seconds are noise on a shared machine; instruction counts are not.  For each path
(p1-local: wrk's client → edge-1 → origin; p2-edge-edge: edge-1 → hub link → edge-2 →
origin, plaintext links) this runs the bench mesh (harness.py's router, two edges and the
origin nginx) twice:

1. the edges under ``valgrind --tool=callgrind --instr-atstart=no``: after ``--warmup``
   exchanges on one keep-alive connection, instrumentation goes on in both edges, the same
   connection makes ``--exchanges`` more GETs of /small (13 bytes), and the dumps give the
   instructions per exchange of each edge (the process off the path shows ~0);
2. the edges under cProfile with a CPU-time clock, switched on and off by signals around
   the same exchanges: its self time per function, grouped into layers, splits each
   edge's instruction count into a per-layer budget.  (Python 3.11 has no perf trampoline,
   so callgrind sees only the interpreter's C functions, not which Python file runs; the
   profiler's own overhead inflates small Python calls, so read the split as approximate.)

``--sends CONNS`` counts instead the ``send`` syscalls per exchange of each edge on the
path (``strace -c -f`` while wrk drives CONNS connections for ``--sends-duration``): a
change that saves instructions must not add sends (e.g. by flushing a link's writes
earlier than the end of the reactor's turn).

``--opcodes N`` counts instead the Python bytecodes each function of the edges on the path
executes per exchange (``sys.settrace`` with ``f_trace_opcodes``, switched on and off by the
same signals), and prints the N functions that execute most.  Deterministic, like
callgrind's count, and it names Python functions, which callgrind on 3.11 cannot; about half
of a /small exchange's instructions are the eval loop's (callgrind), so a bytecode less is
a few dozen instructions less.

``--tree`` runs the mesh from another checkout (e.g. ``git archive`` of an old commit).
Needs valgrind, nginx, taskset; ports BASE_PORT (default here 18580) and the next eight.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("BASE_PORT", "18580")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
from tls_cost import totals  # callgrind's total of one dump

HERE = os.path.abspath(__file__)
WRAPPER = """#!/bin/sh
# The edges under {mode}; anything else as it is.
case "$*" in
  *--help*) exec "{python}" "$@" ;;
  *edgemesh-edge*) {edge} ;;
  *) exec "{python}" "$@" ;;
esac
"""
CALLGRIND = ('exec valgrind --tool=callgrind --instr-atstart=no --dump-instr=no '
             '--callgrind-out-file={out}/callgrind.%p "{python}" "$@"')
CPROFILE = 'exec "{python}" "{here}" --boot {out} "$@"'
OPCODES = 'exec "{python}" "{here}" --boot-opcodes {out} "$@"'

PATHS = {"p1": "p1-local", "p2": "p2-edge-edge"}
# Layers by file (Python functions) or by name (C functions, which cProfile files under "~").
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("HTTP front parsing", ("transports/_front.py", "transports/_http1.py",
                            "transports/_heads.py", "httptools")),
    ("routing", ("edgemesh/routing/",)),
    ("envelope / wire / link", ("edgemesh/wire/", "transports/_links.py",
                                "transports/_halves.py", "transports/_linkstreams.py",
                                "transports/_peers.py", "msgpack")),
    ("pod client", ("transports/_upstream.py", "transports/_upexchange.py",
                    "transports/_upconnection.py")),
    ("Twisted reactor + socket syscalls", ("twisted/", "transports/_reactor.py",
                                           "'send' of '_socket", "'recv",
                                           "'poll' of 'select.epoll", "epoll")),
]
OTHER = "other (logging, metrics, stdlib, interpreter)"


def turn_per_call() -> None:
    """The edgemesh reactor's main loop as Twisted's: one ``doIteration`` call per turn.
    Its own loop runs every turn in one frame (``_turns``), which a profiler switched on
    and off inside it never sees return (its self time would be charged to no layer), and
    which a probe that wraps ``doIteration`` would never enter.  Each turn here also runs
    ``runUntilCurrent`` and ``timeout()``, which the real loop skips when no timer is due."""
    from twisted.python import log

    from edgemesh.transports import _reactor

    def main_loop(self: _reactor.EdgemeshReactor) -> None:
        while self._started:
            try:
                while self._started:
                    self.runUntilCurrent()
                    self.doIteration(self.timeout() if self.running else 0)
            except BaseException:  # noqa: BLE001 -- as Twisted's: log, go on
                log.err(None, "Unexpected error in main loop")

    _reactor.EdgemeshReactor.mainLoop = main_loop  # type: ignore[method-assign]


Handler = Callable[[int, object], None]


def boot_args() -> tuple[str, list[str], bool]:
    """The wrapper's ``--boot OUT <interpreter arguments>``: OUT, twistd's arguments, and
    whether they came through edgemesh's launcher (harness.launcher_args())."""
    out = sys.argv[2]
    args = sys.argv[3:]
    launcher = args[:3] == ["-m", "edgemesh", "twistd"]
    if args[:1] == ["-c"] or launcher:
        args = args[3:] if launcher else args[2:]
    return out, args, launcher


def run_twistd(args: list[str], launcher: bool, usr1: Handler, usr2: Handler) -> None:
    """twistd with ``args`` in this process, SIGUSR1 and SIGUSR2 handled by the probe."""
    signal.signal(signal.SIGUSR1, usr1)
    signal.signal(signal.SIGUSR2, usr2)
    sys.argv = ["twistd", *args]
    if launcher:
        from edgemesh.roles import twistd_main

        raise SystemExit(twistd_main(args))
    from twisted.scripts.twistd import run

    run()


def boot() -> None:
    """twistd under a cProfile that SIGUSR1 switches on and SIGUSR2 off and dumps."""
    import cProfile

    turn_per_call()
    out, args, launcher = boot_args()
    # CPU time of this thread: waiting for the shared core is not charged to a function.
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9)

    def on(signum: int, frame: object) -> None:
        profiler.enable()

    def off(signum: int, frame: object) -> None:
        profiler.disable()
        path = os.path.join(out, f"cprofile.{os.getpid()}")
        profiler.dump_stats(path + ".part")
        os.replace(path + ".part", path)  # whole once it exists (harness.wait_file)

    run_twistd(args, launcher, on, off)


def boot_opcodes() -> None:
    """twistd with a bytecode counter per code object that SIGUSR1 switches on and SIGUSR2
    off and dumps (JSON: "file:line(name)" -> bytecodes executed)."""
    import json
    from types import CodeType, FrameType

    out, args, launcher = boot_args()
    counts: dict[CodeType, int] = {}

    def local(frame: FrameType, event: str, arg: object) -> object:
        if event == "opcode":
            code = frame.f_code
            counts[code] = counts.get(code, 0) + 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> object:
        frame.f_trace_opcodes = True
        return local

    def on(signum: int, frame: object) -> None:
        # The frames already running (the reactor's turn loop) count too: new calls get
        # `calls` from settrace, these get `local` now.
        running = frame if isinstance(frame, FrameType) else None
        while running is not None:
            running.f_trace_opcodes = True
            running.f_trace = local
            running = running.f_back
        sys.settrace(calls)

    def off(signum: int, frame: object) -> None:
        sys.settrace(None)
        running = frame if isinstance(frame, FrameType) else None
        while running is not None:
            running.f_trace = None
            running = running.f_back
        path = os.path.join(out, f"opcodes.{os.getpid()}")
        with open(path + ".part", "w") as f:
            json.dump({f"{c.co_filename}:{c.co_firstlineno}({c.co_name})": n
                       for c, n in counts.items()}, f)
        os.replace(path + ".part", path)  # whole once it exists (harness.wait_file)

    run_twistd(args, launcher, on, off)


def layer_of(filename: str, name: str) -> str:
    key = filename + " " + name
    for layer, marks in LAYERS:
        if any(mark in key for mark in marks):
            return layer
    return OTHER


def layer_split(path: str) -> tuple[dict[str, float], list[tuple[float, str]]]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    by_layer: dict[str, float] = {}
    funcs: list[tuple[float, str]] = []
    for (filename, line, name), (_cc, _nc, tottime, _ct, callers) in stats.items():
        layer = layer_of(filename, name)
        if filename == "~" and layer == OTHER and callers:
            # A C builtin (len, dict.get, bytes.lower...) counts for the layer that calls it.
            whole_calls = sum(c[3] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                owner = layer_of(caller[0], caller[2])
                by_layer[owner] = by_layer.get(owner, 0.0) + tottime * c[3] / whole_calls
        else:
            by_layer[layer] = by_layer.get(layer, 0.0) + tottime
        funcs.append((tottime, f"{filename.split('site-packages/')[-1]}:{line}({name})"))
    whole = sum(by_layer.values()) or 1.0
    return {k: v / whole for k, v in by_layer.items()}, sorted(funcs, reverse=True)


def exchange(conn: http.client.HTTPConnection, host: str | None) -> None:
    conn.request("GET", "/small", headers={"Host": host} if host else {})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or body != harness.SMALL_BODY:
        raise RuntimeError(f"/small: {response.status} {body[:80]!r}")


def run_dir(out: str) -> str:
    """The origin's files and the bench catalog under OUT/run (returned)."""
    tmp = os.path.join(out, "run")
    os.makedirs(os.path.join(tmp, "www"))
    for d in (out, tmp):
        os.chmod(d, 0o755)  # nginx's workers read www/
    with open(os.path.join(tmp, "www", "small"), "wb") as f:
        f.write(harness.SMALL_BODY)
    with open(os.path.join(tmp, "www", "big"), "wb") as f:
        f.write(b"x")
    ports = harness.PORTS
    harness.render("catalog.yaml.in", os.path.join(tmp, "catalog.yaml"),
                   ORIGIN_PORT=ports["origin"], EDGE1_HUB_PORT=ports["edge-1-hub"],
                   EDGE2_HUB_PORT=ports["edge-2-hub"])
    return tmp


def run_mesh(mode: str, target: harness.Target, args: argparse.Namespace, out: str,
             ) -> dict[str, str]:
    """Starts the mesh with the edges under ``mode``; returns the edge names' output files."""
    wrapper = os.path.join(out, "python")
    edge = {"callgrind": CALLGRIND, "cprofile": CPROFILE, "opcodes": OPCODES}[mode].format(
        out=out, python=args.python, here=HERE)
    with open(wrapper, "w") as f:
        f.write(WRAPPER.format(mode=mode, edge=edge, python=args.python))
    os.chmod(wrapper, 0o755)
    harness.CFG.update(PYTHON=wrapper, READY_TIMEOUT="300", IDLE_WAIT="0")
    if not hasattr(harness, "plain_wait_port"):  # valgrind starts slowly: wait up to 300 s
        harness.plain_wait_port = harness.wait_port  # type: ignore[attr-defined]
        harness.wait_port = (  # type: ignore[assignment]
            lambda port, proc, timeout=300.0: harness.plain_wait_port(port, proc, timeout))
    tmp = run_dir(out)
    try:
        harness.start_origin(tmp)
        mesh = harness.start_mesh(tmp, 0, False)
        harness.check_until_ready(target, {"/small": harness.SMALL_BODY}, ["/small"])
        edges = {name: mesh[name].pid for name in ("edge-1", "edge-2")}
        conn = http.client.HTTPConnection("127.0.0.1", harness.PORTS[target.port], timeout=60)
        for _ in range(args.warmup):
            exchange(conn, target.host)
        for pid in edges.values():
            if mode == "callgrind":
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                               capture_output=True, timeout=120)
            else:
                os.kill(pid, signal.SIGUSR1)
        time.sleep(0.5)  # not readiness: lets the signal's handler run before traffic
        for _ in range(args.exchanges):
            if args.new_connections:  # one connection per exchange, as curl's one-offs
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", harness.PORTS[target.port],
                                                  timeout=60)
            exchange(conn, target.host)
        for pid in edges.values():
            if mode == "callgrind":
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                               capture_output=True, timeout=300)
            else:
                os.kill(pid, signal.SIGUSR2)
        conn.close()
        if mode != "callgrind":
            for pid in edges.values():  # the dump is written by the edge: poll for it
                harness.wait_file(os.path.join(out, f"{mode}.{pid}"))
        return {name: os.path.join(out, f"{mode}.{pid}") for name, pid in edges.items()}
    finally:
        harness.stop_all()
        harness.started.clear()


SEND_CALLS = ("sendto", "sendmsg", "write", "writev", "send")


def count_sends(target: harness.Target, args: argparse.Namespace) -> None:
    """``send`` syscalls per exchange of each edge, under ``strace -c -f`` during a wrk run
    of ``--sends`` connections (the mesh runs plainly: no valgrind, no profiler)."""
    out = tempfile.mkdtemp(prefix="edgemesh-exchange-sends-")
    harness.OUTDIR = out
    harness.CFG.update(PYTHON=args.python, IDLE_WAIT="0", CONNS=str(args.sends))
    tmp = run_dir(out)
    tracers: list[subprocess.Popen[bytes]] = []
    try:
        harness.start_origin(tmp)
        mesh = harness.start_mesh(tmp, 0, False)
        harness.check_until_ready(target, {"/small": harness.SMALL_BODY}, ["/small"])
        harness.wrk(target, "/small", "1s")  # warm-up: pooled connections, links
        files = {name: os.path.join(out, f"strace.{name}") for name in target.hops}
        for name, path in files.items():
            tracers.append(subprocess.Popen(
                ["strace", "-c", "-f", "-o", path,
                 *(() if args.all_syscalls else ("-e", "trace=" + ",".join(SEND_CALLS))),
                 "-p", str(mesh[name].pid)], stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # not readiness: strace attaches to every thread meanwhile
        _cmd, text = harness.wrk(target, "/small", args.sends_duration)
        requests = harness.parse_wrk(text)["requests"]
        for tracer in tracers:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
        print(f"\n{target.name}: wrk -c{args.sends} -d{args.sends_duration} /small, "
              f"{requests} requests ({args.tree})\n| process | sends per exchange |\n|---|---:|")
        others: dict[str, dict[str, int]] = {}
        for name, path in files.items():
            calls = 0
            others[name] = {}
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
                        others[name][fields[-1]] = int(fields[3])  # %, s, us/call, calls
                    if fields and fields[-1] in SEND_CALLS:
                        calls += int(fields[3])
            print(f"| {name} | {calls / max(requests, 1):.3f} |", flush=True)
        if args.all_syscalls:
            print("\nevery syscall per exchange\n"
                  "| process | syscall | per exchange |\n|---|---|---:|")
            for name, counts in others.items():
                for call, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                    print(f"| {name} | {call} | {n / max(requests, 1):.3f} |")
                print(f"| {name} | all | {sum(counts.values()) / max(requests, 1):.3f} |")
    finally:
        for tracer in tracers:
            if tracer.poll() is None:
                tracer.kill()
        harness.stop_all()
        harness.started.clear()


def count_opcodes(target: harness.Target, args: argparse.Namespace) -> None:
    """Bytecodes per exchange of each edge on the path, by function (``--opcodes N``)."""
    import json

    out = tempfile.mkdtemp(prefix="edgemesh-exchange-opcodes-")
    harness.OUTDIR = out
    files = run_mesh("opcodes", target, args, out)
    for name in target.hops:
        with open(files[name]) as f:
            counts: dict[str, int] = json.load(f)
        whole = sum(counts.values())
        print(f"\n{target.name}, {name}: {whole / args.exchanges:,.0f} bytecodes per /small "
              f"exchange ({args.exchanges} after {args.warmup}, {args.tree}); the top "
              f"{args.opcodes} functions\n| bytecodes per exchange | function |\n|---:|---|")
        for func, n in sorted(counts.items(), key=lambda kv: -kv[1])[: args.opcodes]:
            short = func.split("site-packages/")[-1].replace(harness.REPO + "/", "")
            print(f"| {n / args.exchanges:,.1f} | {short} |")
        sys.stdout.flush()


def main() -> None:
    if sys.argv[1:2] == ["--boot"]:
        boot()
        return
    if sys.argv[1:2] == ["--boot-opcodes"]:
        boot_opcodes()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", choices=["p1", "p2", "both"], default="both")
    parser.add_argument("--tree", default=harness.REPO, help="checkout the mesh runs from")
    parser.add_argument("--exchanges", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--no-layers", action="store_true", help="callgrind totals only")
    parser.add_argument("--new-connections", action="store_true",
                        help="each measured exchange on a new client connection")
    parser.add_argument("--top", type=int, default=0, help="the N costliest functions (cProfile)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--sends", type=int, default=0, metavar="CONNS",
                        help="instead: send syscalls per exchange (strace -c) at CONNS "
                             "connections of wrk")
    parser.add_argument("--sends-duration", default="3s", help="wrk -d of --sends")
    parser.add_argument("--opcodes", type=int, default=0, metavar="N",
                        help="instead: Python bytecodes per exchange, the N costliest "
                             "functions of each edge on the path")
    parser.add_argument("--all-syscalls", action="store_true",
                        help="with --sends: every syscall per exchange, not only sends")
    args = parser.parse_args()
    harness.REPO = os.path.abspath(args.tree)
    paths = ["p1", "p2"] if args.path == "both" else [args.path]
    for key in paths:
        target = harness.TARGETS[PATHS[key]]
        if args.sends:
            count_sends(target, args)
            continue
        if args.opcodes:
            count_opcodes(target, args)
            continue
        out = tempfile.mkdtemp(prefix="edgemesh-exchange-cost-")
        harness.OUTDIR = out
        files = run_mesh("callgrind", target, args, out)
        counts: dict[str, float] = {}
        for name, prefix in files.items():
            dumps = sorted(glob.glob(prefix + ".*")) or sorted(glob.glob(prefix))
            counts[name] = sum(totals(path) for path in dumps) / args.exchanges
        on_path = [name for name in counts if name in target.hops]
        how = ("each on a new connection" if args.new_connections
               else "on one keep-alive connection")
        print(f"\n{target.name}: {args.exchanges} x /small {how} "
              f"after {args.warmup} ({args.tree})")
        print("| process | instructions per exchange |\n|---|---:|")
        for name, count in counts.items():
            print(f"| {name} | {count / 1e3:,.0f} k |")
        print(f"| on the path ({' + '.join(on_path)}) | "
              f"{sum(counts[n] for n in on_path) / 1e3:,.0f} k |", flush=True)
        if args.no_layers:
            continue
        out2 = tempfile.mkdtemp(prefix="edgemesh-exchange-layers-")
        harness.OUTDIR = out2
        profiles = run_mesh("cprofile", target, args, out2)
        print(f"\nper layer (cProfile CPU-time share x callgrind count), k instructions "
              f"per exchange\n| layer | {' | '.join(on_path)} |\n|---|" + "---:|" * len(on_path))
        splits = {name: layer_split(profiles[name]) for name in on_path}
        for layer in [name for name, _ in LAYERS] + [OTHER]:
            cells = [f"{splits[n][0].get(layer, 0.0) * counts[n] / 1e3:,.0f} "
                     f"({splits[n][0].get(layer, 0.0):.0%})" for n in on_path]
            print(f"| {layer} | {' | '.join(cells)} |")
        for name in on_path if args.top else ():
            print(f"\n{name}: top {args.top} functions by self CPU time")
            whole = sum(t for t, _ in splits[name][1]) or 1.0
            for t, func in splits[name][1][: args.top]:
                print(f"  {t / whole:6.1%}  {func}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
