"""What makes /small's p99 at saturation (issue 15): wrk's latency distribution next to the
edges' per-turn batch sizes.

    BASE_PORT=24280 PYTHONPATH=. /work/main/.venv/bin/python bench/tail_probe.py
        [--target p2-edge-edge] [--conns 32] [--duration 5s] [--reps 2] [--tree DIR]

Runs the bench mesh (harness.py: origin nginx on LOADGEN_CPU, router and both edges on
MESH_CPU) with each edge's reactor wrapped so that every ``epoll_wait`` records how many
descriptors it returned and how long the turn after it ran (dispatch and end-of-turn
queue), in two bounded histograms dumped on SIGUSR2.  Then wrk (``--latency``) drives
``/small`` at ``--conns`` connections, first straight to the origin (the baseline the
bench's "added p99" subtracts) and then through ``--target``; each edge's histograms cover
the measured runs only (SIGUSR1 clears them after the warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("BASE_PORT", "24280")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
from exchange_cost import CPROFILE, WRAPPER, boot_args, run_dir, run_twistd, turn_per_call

HERE = os.path.abspath(__file__)
MAX_EVENTS = int(os.environ.get("TAIL_MAX_EVENTS", "0"))
"""--max-events: epoll_wait's maxevents at most this (0: as the reactor asks)."""
LINKS_FIRST = os.environ.get("TAIL_LINKS_FIRST") == "1"
"""--links-first: each turn dispatches the links' events before the others' (on edge-1 the
responses before new requests; on edge-2 the requests, sent on to the pod at once,
before the pod's responses, which wait for the turn's end anyway)."""
TURN_US = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400)
"""Turn lengths in µs: bucket upper bounds (the last catches the rest)."""


def boot() -> None:
    """twistd with the edgemesh reactor's poll counted: events per turn, µs per turn."""
    out, args, launcher = boot_args()
    from edgemesh.transports import _reactor

    events: dict[int, int] = {}
    turns = [0] * (len(TURN_US) + 1)
    plain_poll = _reactor.EdgemeshReactor.doPoll
    _reactor._plain_do_poll = plain_poll  # type: ignore[attr-defined]  # unspecialized() sees it
    clock = time.perf_counter

    from edgemesh.transports._links import EnvelopeLink

    def is_link(reactor: _reactor.EdgemeshReactor, fd: int) -> bool:
        selectable = reactor._selectables.get(fd)
        return isinstance(getattr(selectable, "protocol", None), EnvelopeLink)

    def do_poll(self: _reactor.EdgemeshReactor, timeout: float | None) -> None:
        poller = self._poller
        if type(poller).__name__ != "_Counted":
            self._poller = _Counted(poller, events)
            self._poller.reactor = self  # type: ignore[attr-defined]
        started = [0.0]
        self._poller.started = started  # type: ignore[attr-defined]
        plain_poll(self, timeout)
        if started[0]:
            us = (clock() - started[0]) * 1e6
            i = 0
            while i < len(TURN_US) and us > TURN_US[i]:
                i += 1
            turns[i] += 1

    class _Counted:
        def __init__(self, poller: object, counts: dict[int, int]) -> None:
            self.poller = poller
            self.counts = counts
            self.started = [0.0]

        def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
            most = min(most, MAX_EVENTS) if MAX_EVENTS else most
            got = self.poller.poll(timeout, most)  # type: ignore[attr-defined]
            n = len(got)
            if LINKS_FIRST and n > 1:
                links = [e for e in got if is_link(self.reactor, e[0])]
                if links:
                    got = links + [e for e in got if e not in links]
            if n:
                self.counts[n] = self.counts.get(n, 0) + 1
                self.started[0] = clock()
            return got  # type: ignore[no-any-return]

        def __getattr__(self, name: str) -> object:
            return getattr(self.poller, name)

    _reactor.EdgemeshReactor.doPoll = do_poll  # type: ignore[method-assign]
    _reactor.EdgemeshReactor.doIteration = do_poll  # type: ignore[method-assign]
    turn_per_call()  # (else the reactor's own loop never calls doIteration)

    def clear(signum: int, frame: object) -> None:
        events.clear()
        turns[:] = [0] * len(turns)

    def dump(signum: int, frame: object) -> None:
        with open(os.path.join(out, f"adaptive.{os.getpid()}.txt"), "w") as f:
            f.write(unspecialized())
        path = os.path.join(out, f"turns.{os.getpid()}.json")
        with open(path + ".part", "w") as f:
            json.dump({"events": events, "turns": turns}, f)
        os.replace(path + ".part", path)  # whole once it exists (harness.wait_file)

    run_twistd(args, launcher, clear, dump)


def unspecialized() -> str:
    """The attribute loads and calls of edgemesh's quickened code that stayed adaptive
    (CPython 3.11 could not specialize them: class attributes, properties, __getattr__),
    one line each: where and what, for the functions this process ran."""
    import dis
    import gc
    import types

    lines = []
    seen: set[int] = set()
    functions: list[types.FunctionType] = [
        obj for obj in gc.get_objects() if isinstance(obj, types.FunctionType)]
    # What gc.freeze() put away is not in gc.get_objects(): the modules' own functions.
    for name, module in list(sys.modules.items()):
        if not name.startswith("edgemesh"):
            continue
        for value in list(vars(module).values()):
            for member in [value, *vars(value).values()] if isinstance(value, type) else [value]:
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    functions.append(member)
    for obj in functions:
        code = obj.__code__
        if id(code) in seen or "/edgemesh/" not in code.co_filename:
            continue
        seen.add(id(code))
        try:
            instructions = list(dis.get_instructions(code, adaptive=True))
        except (TypeError, ValueError):
            continue
        if not any(i.opname.endswith("_QUICK") for i in instructions):
            continue  # never warm: not quickened
        raw = code._co_code_adaptive  # type: ignore[attr-defined]
        line = None
        for ins in instructions:
            line = ins.positions.lineno if ins.positions else line
            if ins.opname.endswith("_ADAPTIVE") and ins.opname.split("_")[0] in ("LOAD", "STORE"):
                # The inline cache's first entry: a countdown and a backoff exponent (4
                # bits) that grows with each failed specialization.
                counter = int.from_bytes(raw[ins.offset + 2:ins.offset + 4], "little")
                lines.append(f"{code.co_filename.split('/edgemesh/')[-1]}:{line} "
                             f"{code.co_qualname} {ins.opname} {ins.argrepr} "
                             f"backoff={counter & 15} count={counter >> 4}")
    return "\n".join(sorted(lines)) + "\n"


def wrk(target: harness.Target, conns: int, duration: str) -> dict[str, object]:
    cmd = [*harness.pin(harness.CFG["LOADGEN_CPU"]), "wrk", "-t1", f"-c{conns}",
           f"-d{duration}", "--timeout", "10s", "--latency"]
    if target.host:
        cmd += ["-H", "Host: " + target.host]
    cmd.append(f"http://127.0.0.1:{harness.PORTS[target.port]}/small")
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    r = harness.parse_wrk(text)
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    r["avg"], r["stdev"], r["max"] = m.groups() if m else ("?", "?", "?")
    return r


def summary(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    events = {int(k): v for k, v in data["events"].items()}
    turns = sum(events.values()) or 1
    mean = sum(k * v for k, v in events.items()) / turns
    bands = [(1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 10**6)]
    shares = " ".join(
        f"{lo}-{hi if hi < 10**6 else ''}:"
        f"{sum(v for k, v in events.items() if lo <= k <= hi) / turns:.0%}"
        for lo, hi in bands)
    lengths = data["turns"]
    n = sum(lengths) or 1
    cum, p50, p99 = 0, None, None
    for i, c in enumerate(lengths):
        cum += c
        bound = f"≤{TURN_US[i]}" if i < len(TURN_US) else f">{TURN_US[-1]}"
        if p50 is None and cum >= 0.5 * n:
            p50 = bound
        if p99 is None and cum >= 0.99 * n:
            p99 = bound
    return (f"{turns} turns, mean {mean:.1f} events/turn ({shares}); "
            f"turn µs p50 {p50} p99 {p99}")


def switches(pid: int) -> tuple[int, int]:
    """The process's voluntary and involuntary (preempted) context switches so far."""
    counts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                key, value = line.split(":")
                counts[key.strip()] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def main() -> None:
    if sys.argv[1:2] == ["--boot"]:
        boot()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="p2-edge-edge")
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tree", default=harness.REPO)
    parser.add_argument("--max-events", type=int, default=0,
                        help="cap the edges' epoll_wait maxevents (a smaller turn)")
    parser.add_argument("--idle-wait", type=float, default=60.0,
                        help="before each wrk run, wait up to this long for a quiet machine")
    parser.add_argument("--links-first", action="store_true",
                        help="dispatch the links' events first in each turn")
    parser.add_argument("--sched", choices=["other", "batch"], default="other",
                        help="the edges' scheduling policy (batch: no wakeup preemption)")
    parser.add_argument("--python", default="/work/main/.venv/bin/python")
    args = parser.parse_args()
    harness.REPO = os.path.abspath(args.tree)
    os.environ["TAIL_MAX_EVENTS"] = str(args.max_events)
    os.environ["TAIL_LINKS_FIRST"] = "1" if args.links_first else "0"
    out = tempfile.mkdtemp(prefix="edgemesh-tail-")
    wrapper = os.path.join(out, "python")
    with open(wrapper, "w") as f:
        # exchange_cost's wrapper: the edges boot through this file (--boot), as its cProfile.
        edge = CPROFILE.format(python=args.python, here=HERE, out=out)
        f.write(WRAPPER.format(mode="the tail probe", edge=edge, python=args.python))
    os.chmod(wrapper, 0o755)
    harness.CFG.update(PYTHON=wrapper, IDLE_WAIT=str(args.idle_wait))
    harness.OUTDIR = out
    target = harness.TARGETS[args.target]
    tmp = run_dir(out)
    try:
        harness.start_origin(tmp)
        mesh = harness.start_mesh(tmp, 0, False)
        harness.check_until_ready(target, {"/small": harness.SMALL_BODY}, ["/small"])
        edges = {name: mesh[name].pid for name in ("edge-1", "edge-2")}
        if args.sched == "batch":
            for pid in edges.values():
                os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
        wrk(target, args.conns, "1s")  # warm-up
        for pid in edges.values():
            os.kill(pid, signal.SIGUSR1)
        before = {name: switches(pid) for name, pid in edges.items()}
        served = 0
        print(f"{args.target} /small, wrk -c{args.conns} -d{args.duration}, "
              f"max events {args.max_events or 'all'}, sched {args.sched}, "
              f"links first {args.links_first}, load "
              f"{os.getloadavg()[0]:.2f} ({harness.REPO})")
        print("| run | req/s | avg | stdev | p50 ms | p90 ms | p99 ms | max |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
        for rep in range(args.reps):
            for name, t in (("direct", harness.TARGETS["direct"]), (args.target, target)):
                harness.wait_quiet()
                r = wrk(t, args.conns, args.duration)
                if t is target:
                    served += r["requests"]
                print(f"| {name} {rep + 1} (load {os.getloadavg()[0]:.1f}) | {r['rps']:.0f} | "
                      f"{r['avg']} | {r['stdev']} | "
                      f"{r['p50_ms']:.2f} | {r.get('p90_ms') or 0:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['max']} |", flush=True)
        for name, pid in edges.items():
            os.kill(pid, signal.SIGUSR2)
            path = os.path.join(out, f"turns.{pid}.json")
            harness.wait_file(path, 30)
            vol, invol = (a - b for a, b in zip(switches(pid), before[name]))
            print(f"{name}: {summary(path)}; per 1000 exchanges: {vol * 1000 / served:.0f} "
                  f"voluntary and {invol * 1000 / served:.0f} involuntary context switches")
    finally:
        harness.stop_all()
        harness.started.clear()


if __name__ == "__main__":
    main()
