"""What 1 MiB bodies cost each edge on path 2, plaintext, and one 4 MiB transfer's wall time.

    PYTHONPATH=. /work/main/.venv/bin/python bench/big_cost.py [--tree DIR] [--transfers 40]
        [--huge 7] [--strace] [--perf] [--counts] [--timeline] [--split 5s] [--tls]

Starts harness.py's origin, router and two edges (plaintext links; ``--tls``: mTLS links, and
path 2 is bench/run.sh's p2-edge-edge-tls) from ``--tree``, then:

- ``--transfers`` GETs of /big (1 MiB) along path 2 with curl, one connection; per edge, the
  user and system CPU (utime/stime of /proc/PID/stat) and the minor page faults (minflt)
  that they cost, per MiB;
- with ``--strace``: the same again under ``strace -c -f -p PID`` of each edge, for the
  syscalls per MiB (strace slows the edges: its run gives counts, not times);
- with ``--perf``: ``perf record -e cpu-clock`` of each edge during the transfers, its top
  symbols, kernel and user alike (where a MiB's CPU goes: copies, the interpreter, wake-ups);
- with ``--counts``: ``perf stat`` of both edges (syscall tracepoints, context switches)
  during ``--huge`` more 4 MiB transfers on path 2: the system calls and switches of each
  edge per transfer (and brk, page faults), counts at the edges' own speed (strace stops
  them at every call);
- with ``--pyspy``: ``py-spy record --format raw`` of each edge (both at once, ``--rate``
  samples/s) during ``--huge`` more 4 MiB transfers on path 2, then bench/pyspy_summary.py's
  self and inclusive split of the Python side (results 2026-12-04 section 13);
- with ``--cprofile``: the edges run under exchange_cost.py's cProfile (on and off by
  signals, CPU-time clock) during ``--huge`` more 4 MiB transfers on path 2, or with
  ``--wrk 5s`` during wrk's 32 connections of /big instead: each edge's Python calls per MiB
  by function (counts: the load does not move them) and their self time's share;
  only these figures are printed (the profiler slows the edges); ``--callers REGEX``
  adds pstats' callers of the functions it matches (who calls what per turn);
- with ``--timeline``: one 4 MiB transfer on path 2 under ``perf record`` of both edges'
  reads, writes (their sizes) and epoll_ctl calls (pauses and resumes), printed in time order
  (results 2026-12-04 section 8);
- with ``--split 5s``: only this, then exit: the edges of path 2 and the anchor's nginx hop
  (its worker), each alone, during ``wrk -c32`` of /big for that long and then
  ``--transfers`` GETs of /big on one connection: per MiB, CPU (schedstat), user and system,
  syscalls by name, bytes per read and per write call, switches, page faults, and perf's
  cpu-clock samples by kind (results 2026-12-05 section 7);
- ``--huge`` rounds of one 4 MiB transfer (curl, a new connection each) through path 1, path
  2 and direct, alternating: the medians and the ratios to direct; and for path 2, each
  edge's CPU time and scheduler time slices per transfer (the sum of its threads'
  /proc/PID/task/TID/schedstat: nanoseconds, not clock ticks; the median).

CPU seconds are only comparable between trees measured in the same hour on the same load;
page faults and syscalls are counts.  Ports: BASE_PORT (default here 18580) and the next 8.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

os.environ.setdefault("BASE_PORT", "18580")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> tuple[float, float, int]:
    """utime s, stime s, minflt of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7])


def schedstat(pid: int) -> tuple[int, int]:
    """CPU time (ns) and time slices (runs on a CPU) of a process, its threads summed."""
    cpu = slices = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        cpu += int(fields[0])
        slices += int(fields[2])
    return cpu, slices


COUNTED = ("recvfrom", "sendto", "sendmsg", "splice", "epoll_wait", "epoll_ctl", "mmap", "munmap",
           "brk")


def counts_during(out: str, pids: dict[str, int],
                  work: Callable[[], object]) -> dict[str, dict[str, float]]:
    """``perf stat`` of ``pids`` (their main threads) while ``work()`` runs: per name, the
    count of each syscall in COUNTED, of context switches and of page faults."""
    log = os.path.join(out, "counts.csv")
    events = ",".join([*(f"syscalls:sys_enter_{name}" for name in COUNTED), "context-switches",
                       "page-faults"])
    proc = subprocess.Popen(["perf", "stat", "--per-thread", "-x", ",", "-o", log, "-e", events,
                             "-p", ",".join(map(str, pids.values()))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness.time.sleep(1.0)  # perf attaches; it prints nothing to wait for
    work()
    proc.send_signal(2)
    proc.wait(timeout=60)
    found: dict[str, dict[str, float]] = {name: {} for name in pids}
    for name, event, value in perf_stat_rows(log, pids):
        found[name][event.replace("syscalls:sys_enter_", "")] = value
    return found


def perf_stat_rows(log: str, pids: dict[str, int]) -> Iterator[tuple[str, str, float]]:
    """(process name, event, count) of each counted row of `perf stat --per-thread -x ,`."""
    names = {str(pid): name for name, pid in pids.items()}
    with open(log) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) < 4 or fields[0].rsplit("-", 1)[-1] not in names:
                continue
            try:
                value = float(fields[1])
            except ValueError:  # <not counted>
                continue
            yield names[fields[0].rsplit("-", 1)[-1]], fields[3], value


TRACED = ("syscalls:sys_exit_recvfrom", "syscalls:sys_exit_sendto", "syscalls:sys_exit_sendmsg",
          "syscalls:sys_exit_splice", "syscalls:sys_exit_read", "syscalls:sys_enter_epoll_ctl")


def timeline(out: str, pids: dict[str, int], work: Callable[[], object]) -> list[str]:
    """The edges' reads and writes (sizes) and epoll_ctl calls while ``work()`` runs, in time
    order: "ms since the first, edge, call, bytes (or op and fd)"."""
    data = os.path.join(out, "timeline.data")
    proc = subprocess.Popen(["perf", "record", "-q", *(f"-e{event}" for event in TRACED), "-o",
                             data, "-p", ",".join(map(str, pids.values()))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness.time.sleep(1.0)  # perf attaches; it prints nothing to wait for
    work()
    proc.send_signal(2)
    proc.wait(timeout=60)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "pid,time,event,trace"],
                            capture_output=True, text=True, check=False).stdout
    names = {str(pid): name for name, pid in pids.items()}
    rows: list[tuple[float, str, str, str]] = []
    for line in script.splitlines():
        fields = line.split(None, 3)
        if len(fields) < 4 or fields[0] not in names:
            continue
        call = fields[2].rstrip(":").split("_", 2)[-1]
        if "exit" in fields[2]:
            what = str(int(fields[3].strip(), 16))
        else:
            found = re.search(r"op: (0x[0-9a-f]+), fd: (0x[0-9a-f]+)", fields[3])
            what = (f"op {int(found.group(1), 16)} fd {int(found.group(2), 16)}" if found
                    else fields[3].strip())
        rows.append((float(fields[1].rstrip(":")), names[fields[0]], call, what))
    rows.sort()
    start = rows[0][0] if rows else 0.0
    return [f"{(t - start) * 1e3:8.3f} {name} {call} {what}" for t, name, call, what in rows]


# Where a MiB's CPU goes, by kind (perf's cpu-clock samples; first match wins).
KINDS = (
    ("copy (kernel)", r"kernel", r"(copy_to_iter|copy_from_iter|copy_user|rep_movs|memcpy)"),
    ("irq-off/wake", r"kernel", r"(spin_unlock_irq|finish_task_switch|schedule|wake|softirq)"),
    ("tcp/ip", r"kernel", r"(tcp|ip_|inet|skb|netif|sock|dev_|net_|bbr|loopback)"),
    ("epoll", r"kernel", r"(ep_|epoll|poll)"),
    ("mm", r"kernel", r"(page|slab|kmem|alloc|free|memcg|folio)"),
    ("kernel other", r"kernel", r""),
    ("copy (user)", r"", r"(__mem(cpy|move|set)|memcpy|memmove|memset)"),
    ("malloc", r"", r"(malloc|calloc|realloc|free|_int_|arena)"),
    ("python", r"(python|\.cpython-)", r""),
    ("user other", r"", r""),
)


SYSCALLS = {0: "read", 1: "write", 7: "poll", 19: "readv", 20: "writev", 44: "sendto",
            45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 202: "futex", 232: "epoll_wait",
            233: "epoll_ctl", 281: "epoll_pwait", 40: "sendfile", 3: "close", 288: "accept4",
            9: "mmap", 11: "munmap", 12: "brk", 228: "clock_gettime", 96: "gettimeofday"}
MOVED = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")


def split(out: str, label: str, pids: dict[str, int], work: Callable[[], float]) -> list[str]:
    """Per process of ``pids`` while ``work()`` runs (it returns the MiB it moved): CPU per MiB
    (schedstat), user and system (utime/stime), syscalls, switches and faults per MiB (perf
    stat), the bytes per read and per write call (perf's sys_exit tracepoints) and the CPU by
    kind (perf record's cpu-clock, KINDS).  Counts first; the times are this minute's."""
    log, data = os.path.join(out, f"split-{label}.csv"), os.path.join(out, f"split-{label}.data")
    events = ["task-clock", "context-switches", "page-faults", "raw_syscalls:sys_enter"]
    plist = ",".join(map(str, pids.values()))
    stat_proc = subprocess.Popen(["perf", "stat", "--per-thread", "-x", ",", "-o", log, "-e",
                                  ",".join(events), "-p", plist],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Two records: -F would sample the tracepoints too (every call is wanted).
    recs = [subprocess.Popen(["perf", "record", "-q", *what, "-o", path, "-p", plist],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for what, path in ((["-e", "cpu-clock", "-F", "2999"], data),
                               (["-c", "1", "-eraw_syscalls:sys_enter",
                                 *(f"-esyscalls:sys_exit_{c}" for c in MOVED)],
                                data + ".calls"))]
    harness.time.sleep(1.0)  # perf attaches; it prints nothing to wait for
    before = {name: (stat(pid), schedstat(pid)) for name, pid in pids.items()}
    mib = work()
    after = {name: (stat(pid), schedstat(pid)) for name, pid in pids.items()}
    for proc in (stat_proc, *recs):
        proc.send_signal(2)
    for proc in (stat_proc, *recs):
        proc.wait(timeout=120)
    names = {str(pid): name for name, pid in pids.items()}
    counted: dict[str, dict[str, float]] = {name: {} for name in pids}
    for name, event, value in perf_stat_rows(log, pids):
        row = counted[name]
        row[event] = row.get(event, 0.0) + value
    script = subprocess.run(["perf", "script", "-i", data + ".calls", "-F", "pid,event,trace"],
                            capture_output=True, text=True, check=False).stdout
    moved: dict[str, dict[str, list[int]]] = {name: {"read": [], "write": []} for name in pids}
    by_nr: dict[str, dict[str, int]] = {name: {} for name in pids}
    for line in script.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 3 or fields[0] not in names:
            continue
        if fields[1].startswith("raw_syscalls"):
            number = re.match(r"NR (\d+)", fields[2])
            nr = SYSCALLS.get(int(number[1]), number[1]) if number else "?"
            by_nr[names[fields[0]]][nr] = by_nr[names[fields[0]]].get(nr, 0) + 1
            continue
        ret = int(fields[2].strip(), 16)
        if ret > 0 and ret < 1 << 40:  # not an error (-EAGAIN is a huge unsigned)
            call = fields[1].rstrip(":").rsplit("_", 1)[-1]
            moved[names[fields[0]]]["read" if call.startswith("re") else "write"].append(ret)
    lines = []
    for name, pid in pids.items():
        (u0, s0, _), (c0, _) = before[name]
        (u1, s1, _), (c1, _) = after[name]
        row = counted[name]
        report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--pid", str(pid),
                                 "--sort", "dso,sym", "--percent-limit", "0",
                                 "--percentage", "relative"],
                                capture_output=True, text=True,
                                check=False).stdout
        cpu = (c1 - c0) / 1e6 / mib
        sizes = ", ".join(f"{len(v) / mib:.1f} {k}s/MiB of {sum(v) / max(len(v), 1) / 1024:.0f} "
                          f"KiB" for k, v in moved[name].items())
        lines.append(
            f"  {label} {name}: CPU {cpu:.3f} ms/MiB (user {(u1 - u0) / mib * 1e3:.2f}, system "
            f"{(s1 - s0) / mib * 1e3:.2f}); per MiB: syscalls "
            f"{row.get('raw_syscalls:sys_enter', 0) / mib:.1f}, switches "
            f"{row.get('context-switches', 0) / mib:.1f}, faults "
            f"{row.get('page-faults', 0) / mib:.2f}"
            f"; {sizes}\n    by kind: " + ", ".join(
                f"{kind} {share * cpu:.3f}"
                for kind, share in harness.perf_report_shares(report, KINDS).items()
                if share >= 0.005) + " ms/MiB\n    syscalls/MiB: " + ", ".join(
                f"{nr} {n / mib:.1f}" for nr, n in sorted(by_nr[name].items(),
                                                         key=lambda kv: -kv[1])[:8]))
    return lines


def perf_during(out: str, label: str, pid: int, record: list[str], report: list[str],
                work: Callable[[], None]) -> str:
    """``perf record`` of ``pid`` while ``work()`` runs; perf report's text."""
    data = os.path.join(out, f"{label}.data")
    proc = subprocess.Popen(["perf", "record", "-q", *record, "-o", data, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness.time.sleep(1.0)  # perf attaches; it prints nothing to wait for
    work()
    proc.send_signal(2)
    proc.wait(timeout=60)
    return subprocess.run(["perf", "report", "-i", data, "--stdio", *report],
                          capture_output=True, text=True, check=False).stdout


def pyspy_during(out: str, pids: dict[str, int], rate: int,
                 work: Callable[[], object]) -> dict[str, str]:
    """``py-spy record --format raw`` of each of ``pids`` (at once) while ``work()`` runs: per
    name, the collapsed-stacks file."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = spy if os.path.exists(spy) else "py-spy"
    files = {name: os.path.join(out, f"pyspy-{name}.txt") for name in pids}
    procs = [subprocess.Popen([spy, "record", "--format", "raw", "--rate", str(rate),
                               "--nonblocking", "-o", files[name], "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in pids.items()]
    harness.time.sleep(1.5)  # py-spy attaches; it prints nothing to wait for
    work()
    for proc in procs:
        proc.send_signal(2)
    for proc in procs:
        proc.wait(timeout=60)
    return files


def cprofile_table(path: str, mib: float, top: int) -> str:
    """Calls per MiB and share of the profiled self time, by function, of a cProfile dump."""
    import pstats

    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in stats.items():
        where = re.sub(r".*site-packages/", "", filename)
        where = re.sub(r".*/(edgemesh|twisted)/", r"\1/", where, count=1)
        rows.append((calls, tottime, f"{name} ({where}:{line})" if line else name))
    total = sum(t for _, t, _ in rows) or 1.0
    calls = sum(c for c, _, _ in rows)
    rows.sort(key=lambda row: -row[0])
    lines = [f"    {calls / mib:8.1f} calls/MiB in all ({total / mib * 1e3:.2f} ms/MiB profiled)",
             "     calls/MiB  self%  function"]
    lines += [f"    {c / mib:10.1f} {t / total * 100:6.1f}  {what}" for c, t, what in rows[:top]]
    return "\n".join(lines)


def curl_big(port: int, host: str, count: int) -> None:
    """``count`` GETs of /big on one keep-alive connection."""
    url = f"http://127.0.0.1:{port}/big"
    cmd = ["taskset", "-c", harness.CFG["LOADGEN_CPU"], "curl", "-sS", "-H", f"Host: {host}",
           "-w", "%{http_code}\\n"]
    for _ in range(count):
        cmd += ["-o", "/dev/null", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    codes = done.stdout.split()
    if codes != ["200"] * count:
        raise RuntimeError(f"/big: {codes[:5]}... {done.stderr[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=harness.REPO)
    parser.add_argument("--transfers", type=int, default=40)
    parser.add_argument("--huge", type=int, default=7)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--faults", action="store_true", help="perf record of page faults")
    parser.add_argument("--perf", action="store_true",
                        help="perf record of CPU time during --huge p2 4 MiB transfers: the top "
                             "symbols of each edge")
    parser.add_argument("--counts", action="store_true",
                        help="perf stat of the edges' syscalls per 4 MiB transfer on path 2")
    parser.add_argument("--timeline", action="store_true",
                        help="the edges' reads, writes and epoll_ctl in one p2 4 MiB transfer")
    parser.add_argument("--pyspy", action="store_true",
                        help="py-spy of both edges during --huge p2 4 MiB transfers")
    parser.add_argument("--rate", type=int, default=2000, help="py-spy samples per second")
    parser.add_argument("--cprofile", action="store_true",
                        help="the edges' Python calls per MiB (cProfile), nothing else")
    parser.add_argument("--wrk", default="",
                        help="with --cprofile: wrk's 32 connections of /big for this long")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--callers", default="",
                        help="with --cprofile: also pstats' callers of functions matching this")
    parser.add_argument("--split", default="",
                        help="e.g. 5s: the edges' and nginx's hop's CPU per MiB by where it "
                             "goes, during wrk's connections for that long, then --transfers "
                             "GETs of /big on one connection (split())")
    parser.add_argument("--python", default="/work/main/.venv/bin/python")
    parser.add_argument("--tls", action="store_true",
                        help="mTLS links (with --split: path 2 over them)")
    args = parser.parse_args()
    harness.REPO = os.path.abspath(args.tree)
    out = tempfile.mkdtemp(prefix="edgemesh-big-cost-")
    harness.OUTDIR = out
    harness.CFG.update(PYTHON=args.python, IDLE_WAIT="0")
    if args.cprofile:
        import exchange_cost

        wrapper = os.path.join(out, "python")
        with open(wrapper, "w") as f:
            f.write(exchange_cost.WRAPPER.format(mode="cprofile", python=args.python,
                                                 edge=exchange_cost.CPROFILE.format(
                                                     out=out, python=args.python,
                                                     here=exchange_cost.HERE)))
        os.chmod(wrapper, 0o755)
        harness.CFG.update(PYTHON=wrapper)
    bodies = harness.bench_bodies()
    tmp = harness.run_dir(out, "run", bodies)
    ports = harness.PORTS
    p1 = harness.TARGETS["p1-local"]
    p2 = harness.TARGETS["p2-edge-edge-tls" if args.tls else "p2-edge-edge"]
    try:
        harness.start_origin(tmp)
        mesh = harness.start_mesh(tmp, 0, args.tls)
        harness.check_until_ready(p2, bodies, ["/small", "/big"])
        harness.check_until_ready(p1, bodies, ["/small", "/big"])
        edges = {name: mesh[name].pid for name in ("edge-1", "edge-2")}
        port = ports[p2.port]
        curl_big(port, p2.host, 5)  # warm-up
        if args.cprofile:
            import signal

            for pid in edges.values():
                os.kill(pid, signal.SIGUSR1)
            harness.time.sleep(0.5)  # not readiness: lets the handler run before traffic
            if args.wrk:
                _cmd, text = harness.wrk(p2, "/big", args.wrk)
                mib = harness.parse_wrk(text)["requests"] * harness.BIG_SIZE / 2**20
                what = f"wrk -c{harness.CFG['CONNS']} -d{args.wrk} /big"
            else:
                for _ in range(args.huge):
                    harness.transfer(port, p2.host)
                mib = args.huge * 4.0
                what = f"{args.huge} x 4 MiB"
            for pid in edges.values():
                os.kill(pid, signal.SIGUSR2)
            print(f"tree {args.tree}: cProfile of the edges during {what} on path 2")
            for name, pid in edges.items():
                path = os.path.join(out, f"cprofile.{pid}")
                harness.wait_file(path)
                print(f"  {name}:\n" + cprofile_table(path, mib, args.top))
                if args.callers:
                    import pstats

                    pstats.Stats(path).print_callers(args.callers)
            return
        if args.split:
            nginx = harness.start_nginx_proxy(tmp)[0]
            worker = {"nginx": harness.children(nginx.pid)[0]}
            anchor = harness.TARGETS["nginx"]
            harness.check_until_ready(anchor, bodies, ["/big"])

            def by_wrk(target: harness.Target) -> float:
                _cmd, text = harness.wrk(target, "/big", args.split)
                return float(harness.parse_wrk(text)["requests"] * harness.BIG_SIZE / 2**20)

            def by_curl(target: harness.Target) -> float:
                curl_big(ports[target.port], target.host or "localhost", args.transfers)
                return args.transfers * harness.BIG_SIZE / 2**20

            conns = harness.CFG["CONNS"]
            print(f"tree {args.tree}: CPU per MiB by where it goes (wrk -c{conns} -d{args.split}"
                  f" /big, then {args.transfers} x /big on one connection)")
            for label, work in ((f"wrk-c{conns}", by_wrk), ("curl-1", by_curl)):
                for who, pids, target in (("p2", edges, p2), ("nginx", worker, anchor)):
                    print("\n".join(split(out, f"{label}-{who}", pids,
                                           lambda w=work, t=target: w(t))))
            with open("/proc/loadavg") as f:
                print(f"  load average: {f.read().split()[0]}")
            return
        mib = args.transfers * harness.BIG_SIZE / 2**20
        print(f"tree {args.tree}: {args.transfers} x /big along path 2, one connection, twice")
        for _ in range(2):
            before = {name: (stat(pid), schedstat(pid)) for name, pid in edges.items()}
            curl_big(port, p2.host, args.transfers)
            after = {name: (stat(pid), schedstat(pid)) for name, pid in edges.items()}
            for name in edges:
                ((u0, s0, f0), (c0, _)), ((u1, s1, f1), (c1, _)) = before[name], after[name]
                # User and system split in clock ticks (10 ms: 0 for a few MiB), the CPU in
                # ns (schedstat).
                print(f"  {name}: CPU {(c1 - c0) / 1e6 / mib:.2f} ms/MiB (user "
                      f"{(u1 - u0) / mib * 1e3:.2f}, system {(s1 - s0) / mib * 1e3:.2f} in "
                      f"ticks), minflt {(f1 - f0) / mib:.1f}/MiB")
        if args.strace:
            tracers = {}
            for name, pid in edges.items():
                log = os.path.join(out, f"strace-{name}.txt")
                tracers[name] = (subprocess.Popen(["strace", "-c", "-f", "-o", log, "-p",
                                                   str(pid)], stderr=subprocess.PIPE), log)
            harness.time.sleep(1.0)  # strace attaches; it prints nothing to wait for
            curl_big(port, p2.host, args.transfers)
            for name, (proc, log) in tracers.items():
                proc.terminate()
                _, err = proc.communicate(timeout=30)
                if not os.path.exists(log):
                    print(f"  {name}: strace wrote nothing: {err.decode(errors='replace')[:200]}")
                    continue
                with open(log) as f:
                    lines = f.read().splitlines()
                rows = [line.split() for line in lines[2:] if line and not line.startswith("-")]
                counts = {row[-1]: int(row[3]) for row in rows if len(row) >= 5
                          and row[3].isdigit() and row[-1] != "total"}
                total = sum(counts.values())
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
                print(f"  {name}: {total / mib:.1f} syscalls/MiB: "
                      + ", ".join(f"{k} {v / mib:.1f}" for k, v in top))
        if args.perf:
            # Where the CPU goes, kernel and user alike (perf's cpu-clock; no call graphs).
            for name, pid in edges.items():
                report = perf_during(out, f"cpu-{name}", pid, ["-e", "cpu-clock", "-F", "19999"],
                                     ["--sort", "dso,sym"], lambda: [
                                         harness.transfer(port, p2.host)
                                         for _ in range(args.huge)])
                lines = [line for line in report.splitlines()
                         if line.strip() and not line.startswith("#")]
                print(f"  {name} CPU:\n" + "\n".join(lines[:40]))
        if args.faults:
            # Where the page faults come from (perf's software event; call graphs).
            for name, pid in edges.items():
                report = perf_during(out, f"faults-{name}", pid, ["-e", "page-faults", "-g"],
                                     ["--no-children", "-G"], lambda: curl_big(
                                         port, p2.host, args.transfers))
                print(f"  {name} page faults:\n" + "\n".join(
                    line for line in report.splitlines()[:60] if line.strip()))
        if args.counts:
            found = counts_during(out, edges, lambda: [
                harness.transfer(port, p2.host) for _ in range(args.huge)])
            for name, row in found.items():
                print(f"  {name}: per 4 MiB transfer: " + ", ".join(
                    f"{event} {value / args.huge:.1f}" for event, value in row.items()))
        if args.pyspy:
            files = pyspy_during(out, edges, args.rate, lambda: [
                harness.transfer(port, p2.host) for _ in range(args.huge)])
            summary = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyspy_summary.py")
            for name, path in files.items():
                print(f"  {name} py-spy ({path}):")
                print(subprocess.run([sys.executable, summary, path], capture_output=True,
                                     text=True, check=False).stdout)
        if args.timeline:
            print("  one p2 4 MiB transfer (op 1 add, 2 del, 3 mod; ms):\n" + "\n".join(
                timeline(out, edges, lambda: harness.transfer(port, p2.host))))
        times: dict[str, list[float]] = {"p1": [], "p2": [], "direct": []}
        costs: dict[str, list[tuple[int, int]]] = {name: [] for name in edges}
        for _ in range(args.huge):
            before_sched = {name: schedstat(pid) for name, pid in edges.items()}
            times["p2"].append(harness.transfer(port, p2.host))
            for name, pid in edges.items():
                (c0, n0), (c1, n1) = before_sched[name], schedstat(pid)
                costs[name].append((c1 - c0, n1 - n0))
            times["direct"].append(harness.transfer(ports["origin"], None))
            times["p1"].append(harness.transfer(ports[p1.port], p1.host))
        direct = statistics.median(times["direct"])
        print(f"  4 MiB, median of {args.huge}: direct {direct * 1e3:.1f} ms, "
              + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms "
                          f"({statistics.median(v) / direct:.2f} x)"
                          for k, v in times.items() if k != "direct"))
        print("  p2 4 MiB, median per transfer: " + ", ".join(
            f"{name} CPU {statistics.median(c for c, _ in runs) / 1e6:.2f} ms "
            f"in {statistics.median(n for _, n in runs):.0f} slices"
            for name, runs in costs.items()))
        with open("/proc/loadavg") as f:
            print(f"  load average: {f.read().split()[0]}")
    finally:
        harness.stop_all()


if __name__ == "__main__":
    main()
